//! GeoIP: the country (and, from a City database, the location) of an activity's address, from
//! a MaxMind-format database (`.mmdb`: GeoLite2/GeoIP2 Country or City, DB-IP, IPinfo's
//! MaxMind-format exports) the admin points to with `[geoip] database`.
//!
//! The file is hostile input like any other: it is read whole (at most [`MAX_DB_BYTES`]) and
//! its metadata checked when it opens. The reader (the `maxminddb` crate) panics on some
//! corrupt files instead of returning an error (a test that flips every byte of a database
//! found it), so opening and every lookup run under `catch_unwind`: a lookup walks at most
//! 128 tree levels and decodes one record, so it always ends, and a corrupt part of the file
//! is "unknown", never a panic or an error that stops the daemon. (Walking the whole tree at
//! open would not do: a corrupt tree can point back into itself.)

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The largest database read (GeoLite2-City is about 60 MB).
pub const MAX_DB_BYTES: u64 = 512 * 1024 * 1024;

/// `[geoip]` on the gateway and the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind-format database; none: no countries (and no impossible travel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<PathBuf>,
}

/// Where an address is.
#[derive(Debug, Clone, PartialEq)]
pub struct Place {
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    /// Latitude and longitude in degrees, when the database has them (City databases).
    pub location: Option<(f64, f64)>,
}

#[derive(Deserialize)]
struct Record {
    country: Option<Country>,
    registered_country: Option<Country>,
    location: Option<Location>,
}

#[derive(Deserialize)]
struct Country {
    iso_code: Option<String>,
}

#[derive(Deserialize)]
struct Location {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// An opened database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata.database_type)
            .finish()
    }
}

impl GeoIp {
    /// Opens `path`; the error says what is wrong with the file.
    pub fn open(path: &Path) -> Result<GeoIp, String> {
        let size = std::fs::metadata(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if size > MAX_DB_BYTES {
            return Err(format!(
                "{}: {size} bytes, more than the {MAX_DB_BYTES} a GeoIP database may have",
                path.display()
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        GeoIp::from_bytes(bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, String> {
        let reader = guard(|| maxminddb::Reader::from_source(bytes))
            .ok_or("a corrupt MaxMind-format database")?
            .map_err(|e| format!("not a MaxMind-format database: {e}"))?;
        Ok(GeoIp { reader })
    }

    /// Where `ip` is; `None` for an address the database does not hold, or whose record does
    /// not decode.
    pub fn lookup(&self, ip: IpAddr) -> Option<Place> {
        let r: Record = guard(|| self.reader.lookup(ip)).and_then(|r| r.ok().flatten())?;
        let code = r
            .country
            .and_then(|c| c.iso_code)
            .or_else(|| r.registered_country.and_then(|c| c.iso_code))?;
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let location = r.location.and_then(|l| {
            let (lat, lon) = (l.latitude?, l.longitude?);
            ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)).then_some((lat, lon))
        });
        Some(Place {
            country: code.to_ascii_uppercase(),
            location,
        })
    }
}

/// Runs `f`, turning a panic of the reader into `None`.
fn guard<T>(f: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
}

/// Great-circle distance in km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        let paris = (48.8566, 2.3522);
        let nyc = (40.7128, -74.0060);
        let d = distance_km(paris, nyc);
        assert!((5800.0..5900.0).contains(&d), "{d}");
        assert!(distance_km(paris, paris) < 1e-6);
    }

    #[test]
    fn junk_is_not_a_database() {
        assert!(GeoIp::from_bytes(b"not a database at all".to_vec()).is_err());
        assert!(GeoIp::from_bytes(Vec::new()).is_err());
        let mut fake = vec![0u8; 4096];
        fake.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
        fake.extend_from_slice(&[0xe0; 64]);
        assert!(GeoIp::from_bytes(fake).is_err());
    }
}
