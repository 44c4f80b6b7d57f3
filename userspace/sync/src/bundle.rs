//! Policy bundles: the gateway config's own TOML, signed by the hub's Ed25519 key.
//!
//! The signature covers a domain-separation prefix and the postcard bytes of the [`Bundle`]
//! exactly as sent, so the gateway verifies the bytes before it parses anything from them.
//! The bundle-signing key is separate from the hub's TLS CA: whoever can make a TLS
//! certificate still cannot make policy.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The bundle layout this gateway understands. A bundle of another schema is refused.
pub const BUNDLE_SCHEMA: u16 = 1;
/// What the signature covers before the bundle's bytes, so a signature over a bundle can
/// never be taken for a signature over anything else the key might sign.
const SIGNING_CONTEXT: &[u8] = b"tollgate bundle v1\0";
/// The largest bundle body a gateway verifies.
pub const MAX_BUNDLE_BYTES: usize = 4 << 20;

/// A policy bundle as the hub publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub schema: u16,
    /// Monotonic across the hub: a gateway applies only a revision above the one it runs.
    pub revision: u64,
    /// The site it was published for; `None` for every site.
    pub site: Option<String>,
    /// Unix seconds.
    pub published_at: i64,
    /// The policy, in the gateway config's TOML (only the sections a bundle may set).
    pub policy_toml: String,
}

/// A bundle's bytes and the hub's signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedBundle {
    /// `postcard(Bundle)`.
    pub body: Vec<u8>,
    /// Ed25519 over `SIGNING_CONTEXT || body`.
    pub signature: Vec<u8>,
}

/// Why a bundle was refused. Each refusal leaves the running policy as it was.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    #[error("bundle of {0} bytes is over the {MAX_BUNDLE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("bundle signature does not verify with the hub's bundle key")]
    BadSignature,
    #[error("bundle is undecodable: {0}")]
    Malformed(String),
    #[error("bundle schema {0} is not one this gateway understands ({BUNDLE_SCHEMA})")]
    UnknownSchema(u16),
    #[error("bundle revision {revision} is not newer than the applied revision {applied}")]
    Replayed { revision: u64, applied: u64 },
    #[error("bundle is for site {bundle:?}, this gateway is in site {ours:?}")]
    OtherSite { bundle: String, ours: String },
    #[error("signing key unusable: {0}")]
    Key(String),
}

/// The hub's bundle-signing key.
pub struct BundleSigner {
    key: Ed25519KeyPair,
}

impl BundleSigner {
    /// A new key, returned with its PKCS#8 document for the hub to store.
    pub fn generate() -> Result<(Self, Vec<u8>), BundleError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| BundleError::Key(e.to_string()))?;
        let signer = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, BundleError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(|key| Self { key })
            .map_err(|e| BundleError::Key(e.to_string()))
    }

    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    pub fn sign(&self, bundle: &Bundle) -> Result<SignedBundle, BundleError> {
        let body =
            postcard::to_allocvec(bundle).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if body.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(body.len()));
        }
        let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + body.len());
        message.extend_from_slice(SIGNING_CONTEXT);
        message.extend_from_slice(&body);
        let signature = self.key.sign(&message).as_ref().to_vec();
        Ok(SignedBundle { body, signature })
    }
}

impl SignedBundle {
    /// Checks the signature first, then the bundle: its schema, that it is newer than
    /// `applied_revision`, and that it is for `site` (or every site).
    pub fn verify(
        &self,
        bundle_key: &[u8; 32],
        applied_revision: u64,
        site: &str,
    ) -> Result<Bundle, BundleError> {
        if self.body.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge(self.body.len()));
        }
        let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + self.body.len());
        message.extend_from_slice(SIGNING_CONTEXT);
        message.extend_from_slice(&self.body);
        UnparsedPublicKey::new(&ED25519, bundle_key)
            .verify(&message, &self.signature)
            .map_err(|_| BundleError::BadSignature)?;
        let bundle: Bundle =
            postcard::from_bytes(&self.body).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if bundle.schema != BUNDLE_SCHEMA {
            return Err(BundleError::UnknownSchema(bundle.schema));
        }
        if bundle.revision <= applied_revision {
            return Err(BundleError::Replayed {
                revision: bundle.revision,
                applied: applied_revision,
            });
        }
        if let Some(theirs) = &bundle.site
            && theirs != site
        {
            return Err(BundleError::OtherSite {
                bundle: theirs.clone(),
                ours: site.to_string(),
            });
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(revision: u64, site: Option<&str>) -> Bundle {
        Bundle {
            schema: BUNDLE_SCHEMA,
            revision,
            site: site.map(str::to_string),
            published_at: 1_700_000_000,
            policy_toml: "[apps.dropbox]\ntag = \"unsanctioned\"\n".into(),
        }
    }

    #[test]
    fn a_signed_bundle_verifies_and_every_forgery_is_refused() {
        let (signer, pkcs8) = BundleSigner::generate().unwrap();
        let key = signer.public_key();
        let signed = signer.sign(&bundle(5, Some("paris"))).unwrap();
        assert_eq!(
            signed.verify(&key, 4, "paris").unwrap(),
            bundle(5, Some("paris"))
        );

        // The stored key signs the same way.
        let again = BundleSigner::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(again.public_key(), key);

        // Another key.
        let (other, _) = BundleSigner::generate().unwrap();
        let forged = other.sign(&bundle(5, Some("paris"))).unwrap();
        assert_eq!(
            forged.verify(&key, 4, "paris"),
            Err(BundleError::BadSignature)
        );

        // A flipped byte in the body, a truncated body, a truncated signature.
        let mut flipped = signed.clone();
        let last = flipped.body.len() - 1;
        flipped.body[last] ^= 1;
        assert_eq!(
            flipped.verify(&key, 4, "paris"),
            Err(BundleError::BadSignature)
        );
        let mut truncated = signed.clone();
        truncated.body.truncate(truncated.body.len() / 2);
        assert_eq!(
            truncated.verify(&key, 4, "paris"),
            Err(BundleError::BadSignature)
        );
        let mut short_sig = signed.clone();
        short_sig.signature.pop();
        assert_eq!(
            short_sig.verify(&key, 4, "paris"),
            Err(BundleError::BadSignature)
        );

        // Replay of the same or an older revision.
        assert!(matches!(
            signed.verify(&key, 5, "paris"),
            Err(BundleError::Replayed {
                revision: 5,
                applied: 5
            })
        ));
        // Another site's bundle.
        assert!(matches!(
            signed.verify(&key, 0, "lyon"),
            Err(BundleError::OtherSite { .. })
        ));
        // Every-site bundles verify anywhere.
        let all = signer.sign(&bundle(6, None)).unwrap();
        assert!(all.verify(&key, 5, "lyon").is_ok());
    }

    #[test]
    fn an_unknown_schema_is_refused_even_when_signed() {
        let (signer, _) = BundleSigner::generate().unwrap();
        let mut b = bundle(1, None);
        b.schema = BUNDLE_SCHEMA + 1;
        let signed = signer.sign(&b).unwrap();
        assert_eq!(
            signed.verify(&signer.public_key(), 0, "x"),
            Err(BundleError::UnknownSchema(BUNDLE_SCHEMA + 1))
        );
    }
}
