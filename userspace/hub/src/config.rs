//! The hub's TOML config. Unknown keys and wrong types are refused at load with the file, the
//! line and the key, as the gateway's config is.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The longest the hub holds a gateway's poll; the protocol caps it at 30 s.
pub const DEFAULT_LONG_POLL_SECS: u16 = 25;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    database: Option<String>,
    server_names: Option<Vec<String>>,
    public_urls: Option<Vec<String>>,
    admin_token_file: Option<PathBuf>,
    long_poll_secs: Option<u16>,
    metrics: Option<MetricsFile>,
    connectors: Option<Vec<tollgate_connectors::ConnectorConfig>>,
    activity_policies: Option<Vec<tollgate_activity::ActivityPolicy>>,
    alert_sinks: Option<Vec<tollgate_activity::SinkConfig>>,
    anomaly: Option<tollgate_activity::anomaly::AnomalyConfig>,
    geoip: Option<tollgate_activity::geo::GeoIpConfig>,
}

/// `[metrics]`: the Prometheus listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsFile {
    listen: Option<String>,
}

/// The hub's settings with every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub state_dir: PathBuf,
    pub database: String,
    pub server_names: Vec<String>,
    pub public_urls: Vec<String>,
    pub admin_token_file: PathBuf,
    pub long_poll_secs: u16,
    /// `[metrics] listen`: where plain-HTTP `GET /metrics` is served (none: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[[connectors]]`: the SaaS admin APIs the hub reads activity from.
    pub connectors: Vec<tollgate_connectors::Settings>,
    /// Policies over the connectors' activities (the gateway's `[[activity_policies]]`).
    pub activity_policies: Vec<tollgate_activity::ActivityPolicy>,
    /// Where the hub's alerts and activities go (the gateway's `[[alert_sinks]]`).
    pub alert_sinks: Vec<tollgate_activity::SinkConfig>,
    /// Built-in anomaly detection over the connectors' activities (the gateway's `[anomaly]`).
    pub anomaly: tollgate_activity::anomaly::AnomalyConfig,
    /// The GeoIP database that places the activities (`[geoip] database`).
    pub geoip: tollgate_activity::geo::GeoIpConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}{message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Self::parse("", "<embedded default config>"),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text, &path.display().to_string())
            }
        }
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let located = |offset: Option<usize>, key: String, message: String| {
            let (line, column) = offset.map_or((1, 1), |o| line_column(text, o));
            ConfigError::Invalid {
                file: file.to_string(),
                line,
                column,
                key,
                message,
            }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| located(e.span().map(|s| s.start), String::new(), e.message().into()))?;
        let raw: ConfigFile = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = if path == "." || path.is_empty() {
                String::new()
            } else {
                format!("{path}: ")
            };
            located(inner.span().map(|s| s.start), key, inner.message().into())
        })?;
        let fail = |key: &str, message: String| {
            let offset = text.find(key);
            located(offset, format!("{key}: "), message)
        };
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/tollgate-hub"));
        let database = raw
            .database
            .unwrap_or_else(|| format!("sqlite://{}", state_dir.join("hub.db").display()));
        if !(database.starts_with("sqlite:")
            || database.starts_with("postgres://")
            || database.starts_with("postgresql://"))
        {
            return Err(fail(
                "database",
                "expected sqlite://PATH or postgres://...".into(),
            ));
        }
        let long_poll_secs = raw.long_poll_secs.unwrap_or(DEFAULT_LONG_POLL_SECS);
        if long_poll_secs == 0 || long_poll_secs > tollgate_sync::protocol::MAX_WAIT_SECS {
            return Err(fail(
                "long_poll_secs",
                format!(
                    "must be 1..={} seconds",
                    tollgate_sync::protocol::MAX_WAIT_SECS
                ),
            ));
        }
        let listen = raw.listen.unwrap_or_else(|| "0.0.0.0:9443".into());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(fail("listen", "expected ADDRESS:PORT".into()));
        }
        let metrics_listen = match raw.metrics.and_then(|m| m.listen) {
            None => None,
            Some(l) => match l.parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    return Err(fail(
                        "listen",
                        "[metrics] listen: expected ADDRESS:PORT".into(),
                    ));
                }
            },
        };
        let server_names = match raw.server_names {
            Some(names) if names.is_empty() => {
                return Err(fail("server_names", "needs at least one name".into()));
            }
            Some(names) => names,
            None => {
                let mut names = Vec::new();
                if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                    let host = host.trim();
                    if !host.is_empty() {
                        names.push(host.to_string());
                    }
                }
                names.push("localhost".into());
                names.push("127.0.0.1".into());
                names
            }
        };
        let public_urls = raw.public_urls.unwrap_or_default();
        for url in &public_urls {
            if !url.starts_with("https://") {
                return Err(fail(
                    "public_urls",
                    format!("{url:?} is not an https:// URL"),
                ));
            }
        }
        let mut connectors: Vec<tollgate_connectors::Settings> = Vec::new();
        for (i, c) in raw.connectors.unwrap_or_default().iter().enumerate() {
            let settings = tollgate_connectors::Settings::from_config(c)
                .map_err(|m| fail("[[connectors]]", format!("#{}: {m}", i + 1)))?;
            if settings.run_on != tollgate_connectors::RunOn::Hub {
                return Err(fail(
                    "[[connectors]]",
                    format!(
                        "#{}: run_on = \"gateway\" belongs in a published bundle; the hub's own config runs connectors on the hub",
                        i + 1
                    ),
                ));
            }
            if connectors.iter().any(|o| o.name == settings.name) {
                return Err(fail(
                    "[[connectors]]",
                    format!("#{}: name {:?} is used twice", i + 1, settings.name),
                ));
            }
            connectors.push(settings);
        }
        let activity_policies = raw.activity_policies.unwrap_or_default();
        tollgate_activity::validate(&activity_policies)
            .map_err(|e| fail("[[activity_policies]]", e.to_string()))?;
        let alert_sinks = raw.alert_sinks.unwrap_or_default();
        for (i, sink) in alert_sinks.iter().enumerate() {
            sink.validate(i)
                .map_err(|e| fail("[[alert_sinks]]", e.to_string()))?;
        }
        tollgate_activity::validate_notify(&activity_policies, &alert_sinks)
            .map_err(|e| fail("[[activity_policies]]", e.to_string()))?;
        Ok(Config {
            activity_policies,
            alert_sinks,
            anomaly: raw.anomaly.unwrap_or_default(),
            geoip: raw.geoip.unwrap_or_default(),
            connectors,
            admin_token_file: raw
                .admin_token_file
                .unwrap_or_else(|| state_dir.join("admin.token")),
            listen,
            state_dir,
            database,
            server_names,
            public_urls,
            long_poll_secs,
            metrics_listen,
        })
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::parse("", "x").unwrap();
        assert_eq!(c.listen, "0.0.0.0:9443");
        assert_eq!(c.database, "sqlite:///var/lib/tollgate-hub/hub.db");
        assert_eq!(
            c.admin_token_file,
            PathBuf::from("/var/lib/tollgate-hub/admin.token")
        );
        let e = Config::parse("listen = \"127.0.0.1:1\"\nbogus = 1\n", "hub.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("hub.toml:2:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse("long_poll_secs = 31\n", "hub.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("hub.toml:1:") && e.contains("long_poll_secs"),
            "{e}"
        );
        assert!(Config::parse("database = \"mysql://x\"\n", "h").is_err());
    }

    /// The keys serde says a section has, from its refusal of an unknown key.
    fn keys_of(template: &str) -> std::collections::BTreeSet<String> {
        let text = template.replace('@', "zz_unknown_key = 1");
        let err = Config::parse(&text, "probe.toml").unwrap_err().to_string();
        assert!(err.contains("zz_unknown_key"), "{err}");
        let (_, list) = err.split_once("expected ").expect("a key list");
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// docs/CONFIG.md documents every key of the hub's config and no other.
    #[test]
    fn every_key_is_in_the_reference() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"))
                .unwrap();
        let hub = doc
            .split("\n## ")
            .find(|p| p.starts_with("The hub"))
            .expect("## The hub");
        for (heading, template) in [
            ("top level", "@\n"),
            ("[metrics]", "[metrics]\n@\n"),
            ("[[connectors]]", "[[connectors]]\n@\n"),
        ] {
            let keys = keys_of(template);
            assert!(!keys.is_empty());
            let (_, rest) = hub
                .split_once(&format!("### `{heading}`"))
                .unwrap_or_else(|| panic!("no {heading} in the hub's reference"));
            let body = rest.split("\n### ").next().unwrap_or("");
            let documented: std::collections::BTreeSet<String> = body
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("| `")?
                        .split_once('`')
                        .map(|(k, _)| k.to_string())
                })
                .collect();
            assert_eq!(
                keys, documented,
                "{heading}: the config's keys vs docs/CONFIG.md"
            );
        }
    }

    #[test]
    fn the_example_config_loads_and_metrics_listen_is_checked() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/hub/tollgate-hub.toml"
        );
        let c = Config::load(Some(Path::new(path))).unwrap();
        assert_eq!(
            c.metrics_listen,
            Some("127.0.0.1:9465".parse().unwrap()),
            "{c:?}"
        );
        assert_eq!(Config::parse("", "x").unwrap().metrics_listen, None);
        let e = Config::parse("[metrics]\nlisten = \"nowhere\"\n", "hub.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }
}
