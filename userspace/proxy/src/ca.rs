//! The local certificate authority: created on first start (ECDSA P-256, `ca.pem` and
//! `ca.key` mode 0600 in the state directory) or loaded from files, and the leaf
//! certificates it mints per server name, kept in a bounded LRU cache.
//!
//! All leaves share one ECDSA key generated at start: minting a leaf is then one signature
//! by the CA key (about a millisecond even for an RSA CA), and the cache only bounds memory.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::error::ProxyError;

/// Leaves are re-minted after this long (they are valid for 30 days).
const LEAF_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// File names inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

struct Cached {
    key: Arc<CertifiedKey>,
    used: u64,
    minted: Instant,
}

struct Lru {
    map: HashMap<String, Cached>,
    tick: u64,
    cap: usize,
}

/// The CA and its leaf cache.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<Lru>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

fn ca_err(what: &str, e: impl std::fmt::Display) -> ProxyError {
    ProxyError::Ca(format!("{what}: {e}"))
}

impl CertAuthority {
    /// Load `ca.pem` / `ca.key` from `dir`, or create them (dir 0700, key 0600).
    ///
    /// Creation is crash-safe: both files are written under temporary names, fsynced,
    /// renamed (key first) and the directory fsynced, so a crash leaves either a complete
    /// pair or a state the next start completes: a missing or empty file (an interrupted
    /// write of an older version) means the pair never became usable and it is created
    /// anew. A key or directory readable by group or others is made private again.
    pub fn load_or_create(dir: &Path, cache_size: usize) -> Result<CertAuthority, ProxyError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let usable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0);
        if usable(&cert_path) && usable(&key_path) {
            make_private(dir, 0o700)?;
            make_private(&key_path, 0o600)?;
            return Self::from_files(&cert_path, &key_path, cache_size);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ProxyError::io(dir, e))?;
        make_private(dir, 0o700)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err("generate CA key", e))?;
        let mut params = CertificateParams::default();
        let host = fs::read_to_string("/etc/hostname").unwrap_or_default();
        let host = host.trim();
        let cn = if host.is_empty() {
            "Tollgate local CA".to_string()
        } else {
            format!("Tollgate local CA ({host})")
        };
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Tollgate");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| ca_err("self-sign CA", e))?;
        let key_tmp = write_temp(dir, CA_KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
        let cert_tmp = write_temp(dir, CA_CERT_FILE, cert.pem().as_bytes(), 0o644)?;
        fs::rename(&key_tmp, &key_path).map_err(|e| ProxyError::io(&key_path, e))?;
        fs::rename(&cert_tmp, &cert_path).map_err(|e| ProxyError::io(&cert_path, e))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ProxyError::io(dir, e))?;
        Self::from_pem(&cert.pem(), key, cache_size)
    }

    /// Use an existing CA certificate and PKCS#8 key (PEM).
    pub fn from_files(
        cert: &Path,
        key: &Path,
        cache_size: usize,
    ) -> Result<CertAuthority, ProxyError> {
        let cert_pem = fs::read_to_string(cert).map_err(|e| ProxyError::io(cert, e))?;
        let key_pem = fs::read_to_string(key).map_err(|e| ProxyError::io(key, e))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| ca_err(&key.display().to_string(), e))?;
        Self::from_pem(&cert_pem, key, cache_size)
    }

    fn from_pem(
        cert_pem: &str,
        key: KeyPair,
        cache_size: usize,
    ) -> Result<CertAuthority, ProxyError> {
        use rustls::pki_types::pem::PemObject;
        let ca_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| ca_err("CA certificate", e))?;
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| ca_err("CA certificate", e))?;
        let provider = rustls::crypto::ring::default_provider();
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ca_err("leaf key", e))?;
        let leaf_signer = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                leaf_key.serialize_der(),
            )))
            .map_err(|e| ca_err("leaf key", e))?;
        Ok(CertAuthority {
            issuer,
            ca_pem: pem_of(&ca_der),
            ca_der,
            leaf_key,
            leaf_signer,
            cache: Mutex::new(Lru {
                map: HashMap::new(),
                tick: 0,
                cap: cache_size.max(1),
            }),
        })
    }

    /// The CA certificate (PEM) for clients to trust (`tollgate ca export`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Leaf certificate + key for `name` (a DNS name or an IP address literal).
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, ProxyError> {
        let name = name.to_ascii_lowercase();
        {
            let mut lru = self
                .cache
                .lock()
                .map_err(|_| ProxyError::Ca("leaf cache poisoned".into()))?;
            lru.tick += 1;
            let tick = lru.tick;
            if let Some(c) = lru.map.get_mut(&name)
                && c.minted.elapsed() < LEAF_MAX_AGE
            {
                c.used = tick;
                return Ok(c.key.clone());
            }
        }
        let key = Arc::new(self.mint(&name)?);
        let mut lru = self
            .cache
            .lock()
            .map_err(|_| ProxyError::Ca("leaf cache poisoned".into()))?;
        if lru.map.len() >= lru.cap && !lru.map.contains_key(&name) {
            // O(n) eviction on a miss only; n is the cache size (about a thousand).
            if let Some(oldest) = lru
                .map
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone())
            {
                lru.map.remove(&oldest);
            }
        }
        let tick = lru.tick;
        lru.map.insert(
            name,
            Cached {
                key: key.clone(),
                used: tick,
                minted: Instant::now(),
            },
        );
        Ok(key)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, ProxyError> {
        let mut p = CertificateParams::default();
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().map_err(|e| ca_err("server name", e))?),
        };
        p.subject_alt_names = vec![san];
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(30);
        p.serial_number = Some(random_serial()?);
        let cert = p
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| ca_err("sign leaf", e))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            self.leaf_signer.clone(),
        ))
    }

    /// Cached leaves (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|l| l.map.len()).unwrap_or(0)
    }
}

fn random_serial() -> Result<SerialNumber, ProxyError> {
    let mut b = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|e| ca_err("random", format!("{e:?}")))?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte
    Ok(SerialNumber::from_slice(&b))
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in der.as_ref().chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in s.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Writes `data` to a new temporary file next to `name` in `dir` and fsyncs it; returns its
/// path. A temporary file left by an earlier crash is replaced (never followed: the old one
/// is removed and the new one created exclusively).
fn write_temp(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<PathBuf, ProxyError> {
    let path = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ProxyError::io(&path, e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| ProxyError::io(&path, e))?;
    f.write_all(data).map_err(|e| ProxyError::io(&path, e))?;
    f.sync_all().map_err(|e| ProxyError::io(&path, e))?;
    Ok(path)
}

/// Removes group and other permissions from `path` beyond `mode` (a key readable by others
/// is repaired, and said so in the log).
fn make_private(path: &Path, mode: u32) -> Result<(), ProxyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).map_err(|e| ProxyError::io(path, e))?;
    if meta.file_type().is_symlink() {
        return Err(ProxyError::Ca(format!(
            "{} is a symbolic link; the CA must be a plain file",
            path.display()
        )));
    }
    let current = meta.permissions().mode() & 0o777;
    if current & 0o077 & !mode != 0 {
        tracing::warn!(
            "{} had mode {current:o}; setting {mode:o} (the CA key must stay private)",
            path.display()
        );
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| ProxyError::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creation_recovers_from_a_partial_write_and_repairs_modes() {
        let dir = std::env::temp_dir().join(format!("tgp-ca-partial-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        // A crash after the key was (partly) written and before the certificate was.
        fs::write(dir.join(CA_KEY_FILE), b"-----BEGIN PRIV").unwrap();
        fs::write(dir.join(format!(".{CA_CERT_FILE}.tmp")), b"junk").unwrap();
        let ca = CertAuthority::load_or_create(&dir, 2).unwrap();
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        // An empty certificate (an interrupted write) is recovered the same way.
        fs::write(dir.join(CA_CERT_FILE), b"").unwrap();
        let again = CertAuthority::load_or_create(&dir, 2).unwrap();
        assert_ne!(again.ca_pem(), ca.ca_pem());
        // A complete pair whose key became world-readable: repaired on load, same CA.
        fs::set_permissions(dir.join(CA_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        let third = CertAuthority::load_or_create(&dir, 2).unwrap();
        assert_eq!(third.ca_pem(), again.ca_pem());
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_then_reload_and_mint() {
        let dir = std::env::temp_dir().join(format!("tgp-ca-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = CertAuthority::load_or_create(&dir, 2).unwrap();
        let mode = fs::metadata(dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let pem = ca.ca_pem().to_string();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let again = CertAuthority::load_or_create(&dir, 2).unwrap();
        assert_eq!(again.ca_pem(), pem, "reloaded, not regenerated");

        let a = ca.leaf("a.example").unwrap();
        assert_eq!(a.cert.len(), 2);
        assert!(
            Arc::ptr_eq(&a, &ca.leaf("A.example").unwrap()),
            "cached, case-insensitive"
        );
        ca.leaf("b.example").unwrap();
        ca.leaf("10.1.2.3").unwrap();
        assert_eq!(ca.cached(), 2, "LRU bounded");
        // The leaf verifies against the CA with webpki (what real clients do).
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.ca_der().clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("a.example").unwrap();
        verifier
            .verify_server_cert(
                &a.cert[0],
                &a.cert[1..],
                &name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let _ = fs::remove_dir_all(&dir);
    }
}
