//! Enrollment tokens: a one-time secret for the hub and a pin of the hub's CA for the gateway.
//!
//! Written as `tg1-<secret>-<pin>`, both lowercase hex: the secret is 32 random bytes, the pin
//! the SHA-256 of the hub CA certificate's DER. The gateway sends only the secret; it trusts
//! the hub's TLS certificate on first contact only if its chain carries a CA whose hash is the
//! pin, so a machine in the middle cannot take the enrollment. The hub stores only the
//! secret's SHA-256.

use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "tg1-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    pub secret: [u8; 32],
    pub ca_pin: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not an enrollment token (expected tg1-<64 hex>-<64 hex>)")]
    Malformed,
    #[error("no randomness available: {0}")]
    Random(String),
}

impl EnrollmentToken {
    /// A new token pinning the CA whose DER is `ca_der`.
    pub fn generate(ca_der: &[u8]) -> Result<Self, TokenError> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|e| TokenError::Random(e.to_string()))?;
        Ok(Self {
            secret,
            ca_pin: ca_pin(ca_der),
        })
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let rest = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenError::Malformed)?;
        let (secret, pin) = rest.split_once('-').ok_or(TokenError::Malformed)?;
        Ok(Self {
            secret: hex32(secret).ok_or(TokenError::Malformed)?,
            ca_pin: hex32(pin).ok_or(TokenError::Malformed)?,
        })
    }

    /// The secret as the gateway sends it.
    pub fn secret_hex(&self) -> String {
        hex(&self.secret)
    }

    /// What the hub stores and looks the token up by.
    pub fn secret_hash(&self) -> String {
        secret_hash(&self.secret_hex())
    }
}

impl std::fmt::Display for EnrollmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}-{}", hex(&self.secret), hex(&self.ca_pin))
    }
}

/// The hub's lookup key for a secret as sent in an enrollment request.
pub fn secret_hash(secret_hex: &str) -> String {
    hex(digest(&SHA256, secret_hex.as_bytes()).as_ref())
}

/// The pin of a CA certificate: SHA-256 of its DER.
pub fn ca_pin(ca_der: &[u8]) -> [u8; 32] {
    let mut pin = [0u8; 32];
    pin.copy_from_slice(digest(&SHA256, ca_der).as_ref());
    pin
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits (a token part, a key or a pin as stored in a file).
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_junk_is_refused() {
        let token = EnrollmentToken::generate(b"ca der").unwrap();
        let text = token.to_string();
        assert_eq!(EnrollmentToken::parse(&text).unwrap(), token);
        assert_eq!(token.ca_pin, ca_pin(b"ca der"));
        assert_eq!(token.secret_hash(), secret_hash(&token.secret_hex()));
        for bad in [
            "",
            "tg1-",
            &text[..text.len() - 1],
            &text.replace("tg1-", "tg2-"),
            &format!("{text}0"),
            "tg1-zz00000000000000000000000000000000000000000000000000000000000000-0000000000000000000000000000000000000000000000000000000000000000",
            "tg1-é000000000000000000000000000000000000000000000000000000000000000-0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(
                EnrollmentToken::parse(bad),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }
}
