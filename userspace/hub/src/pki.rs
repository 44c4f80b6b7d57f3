//! The hub's keys: its TLS CA (which signs the hub's server certificate and the gateways'
//! client certificates) and the separate Ed25519 key that signs policy bundles. Both live in
//! the database so every hub process on one PostgreSQL serves with the same CA and signs with
//! the same key.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tollgate_sync::bundle::BundleSigner;

use crate::db::{Db, DbError, HubKeys};

/// How long a gateway's client certificate is valid.
pub const GATEWAY_CERT_DAYS: i64 = 365;
/// How long the hub CA is valid.
const CA_YEARS: i64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("bundle key: {0}")]
    Bundle(#[from] tollgate_sync::bundle::BundleError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no randomness available")]
    Random,
}

pub struct Keys {
    pub ca_der: Vec<u8>,
    pub issuer: Issuer<'static, KeyPair>,
    pub signer: BundleSigner,
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

pub fn random_hex(n: usize) -> Result<String, PkiError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    Ok(tollgate_sync::token::hex(&bytes))
}

fn generate() -> Result<HubKeys, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Tollgate hub CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365 * CA_YEARS);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key)?;
    let (_, bundle_key) = BundleSigner::generate()?;
    Ok(HubKeys {
        ca_cert: cert.der().to_vec(),
        ca_key_pem: key.serialize_pem(),
        bundle_key_pkcs8: bundle_key,
    })
}

/// Loads the hub's keys, making them on the first start (the first of several hub processes
/// to store them wins; the others load the winner's).
pub async fn load_or_create(db: &Db) -> Result<Keys, PkiError> {
    let stored = match db.load_keys().await? {
        Some(k) => k,
        None => db.store_keys(&generate()?).await?,
    };
    let key = KeyPair::from_pem(&stored.ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(stored.ca_cert.clone()), key)?;
    Ok(Keys {
        ca_der: stored.ca_cert,
        issuer,
        signer: BundleSigner::from_pkcs8(&stored.bundle_key_pkcs8)?,
    })
}

impl Keys {
    /// The server TLS config: a fresh server certificate for `server_names`, sent with the CA
    /// (the enrolling gateway pins it); client certificates optional at the TLS layer (the
    /// enrollment has none) and checked per path.
    pub fn server_config(&self, server_names: &[String]) -> Result<rustls::ServerConfig, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Tollgate hub");
        params.subject_alt_names = server_names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(GATEWAY_CERT_DAYS);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca_der.clone()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![
                    cert.der().clone(),
                    CertificateDer::from(self.ca_der.clone()),
                ],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )?;
        Ok(config)
    }

    /// A client certificate for the key in `csr_der`, named `gateway_id`; nothing else of the
    /// request is taken.
    pub fn sign_gateway(&self, csr_der: &[u8], gateway_id: &str) -> Result<Vec<u8>, PkiError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, gateway_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(GATEWAY_CERT_DAYS);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(cert.der().to_vec())
    }
}

/// The SHA-256 of a certificate, as the hub looks gateways up by.
pub fn fingerprint(der: &[u8]) -> String {
    tollgate_sync::token::hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}
