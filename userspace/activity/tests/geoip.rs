//! GeoIP from a real MaxMind-format database, built here with the `mmdb-writer` Python package
//! (the test skips without it): addresses get their country and location, the engine places
//! activities with it and finds an impossible travel between two real-looking logins, and a
//! corrupt or truncated database is an error, never a panic.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use chrono::{DateTime, TimeDelta, Utc};
use tollgate_activity::anomaly::AnomalyConfig;
use tollgate_activity::geo::GeoIp;
use tollgate_activity::{Activity, ActivityType, Engine, Source};

const WRITER: &str = r#"
import sys
from mmdb_writer import MMDBWriter, MmdbF64
from netaddr import IPSet
w = MMDBWriter(ip_version=6, database_type='GeoIP2-City', ipv4_compatible=True)
w.insert_network(IPSet(['198.51.100.0/24']), {'country': {'iso_code': 'FR'},
    'location': {'latitude': MmdbF64(48.8566), 'longitude': MmdbF64(2.3522)}})
w.insert_network(IPSet(['203.0.113.0/24', '2001:db8::/32']), {'country': {'iso_code': 'JP'},
    'location': {'latitude': MmdbF64(35.6762), 'longitude': MmdbF64(139.6503)}})
w.insert_network(IPSet(['192.0.2.0/24']), {'registered_country': {'iso_code': 'de'}})
w.insert_network(IPSet(['100.64.0.0/24']), {'country': {'iso_code': '<script>'}})
w.to_db_file(sys.argv[1])
"#;

fn build(path: &Path) -> bool {
    match Command::new("python3")
        .arg("-c")
        .arg(WRITER)
        .arg(path)
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "SKIP: the mmdb-writer Python package is missing ({})",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            false
        }
        Err(e) => {
            eprintln!("SKIP: python3: {e}");
            false
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_real_database_places_addresses_and_finds_a_travel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.mmdb");
    if !build(&path) {
        return;
    }
    let geo = GeoIp::open(&path).expect("opens");
    let paris = geo.lookup(ip("198.51.100.7")).expect("paris");
    assert_eq!(paris.country, "FR");
    let (lat, lon) = paris.location.expect("a location");
    assert!((lat - 48.8566).abs() < 1e-6 && (lon - 2.3522).abs() < 1e-6);
    assert_eq!(geo.lookup(ip("2001:db8::1")).unwrap().country, "JP");
    // Only a registered country, in lower case: upper-cased, no location.
    let de = geo.lookup(ip("192.0.2.1")).unwrap();
    assert_eq!((de.country.as_str(), de.location), ("DE", None));
    // A code that is not one is unknown; so is an address the database does not hold.
    assert!(geo.lookup(ip("100.64.0.1")).is_none());
    assert!(geo.lookup(ip("10.0.0.1")).is_none());

    // The engine places two logins with it: Paris, then Tokyo 40 minutes later.
    let t0: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let cfg = AnomalyConfig::default();
    let mut engine = Engine::new(&[]).with_anomaly(&cfg, Some(std::sync::Arc::new(geo)));
    let login = |t: DateTime<Utc>, addr: &str| {
        let mut a = Activity::new(0, t, "okta", ActivityType::Login, Source::Connector);
        a.user = Some("ana@example.com".into());
        a.ip = Some(ip(addr));
        a
    };
    // Learning: a first login ten days earlier.
    engine.observe(&login(t0 - TimeDelta::days(10), "198.51.100.9"), t0);
    assert!(engine.observe(&login(t0, "198.51.100.7"), t0).is_empty());
    let later = t0 + TimeDelta::minutes(40);
    let events = engine.observe(&login(later, "203.0.113.5"), later);
    let travel = events
        .iter()
        .find(|e| e.alert.policy == "anomaly: impossible travel")
        .expect("an impossible travel");
    assert!(
        travel.alert.reason.contains("FR and JP"),
        "{}",
        travel.alert.reason
    );
    assert_eq!(
        engine.place(&login(later, "203.0.113.5")).unwrap().country,
        "JP"
    );
}

#[test]
fn corrupt_and_truncated_databases_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.mmdb");
    if !build(&path) {
        return;
    }
    let good = std::fs::read(&path).unwrap();
    // Truncated at every length down the file, and bit-flipped at every byte: an error or
    // "unknown", never a panic.
    for cut in (0..good.len()).step_by(7) {
        if let Ok(g) = GeoIp::from_bytes(good[..cut].to_vec()) {
            let _ = g.lookup(ip("198.51.100.7"));
        }
    }
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        if let Ok(g) = GeoIp::from_bytes(bad) {
            for a in ["198.51.100.7", "203.0.113.5", "2001:db8::1", "10.1.2.3"] {
                let _ = g.lookup(ip(a));
            }
        }
    }
    assert!(GeoIp::open(&dir.path().join("missing.mmdb")).is_err());
}
