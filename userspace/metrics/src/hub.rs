//! The hub's metrics: counters its request handlers bump (requests by path and status,
//! latency, upload records ingested, database errors, polls held) and gauges read from its
//! database at scrape time (the fleet).

use std::sync::atomic::AtomicI64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::{Labels, Snapshot};

/// What the hub counts as it serves.
pub struct HubMetrics {
    requests: Family<Labels, Counter>,
    latency: Family<Labels, Histogram>,
    pub upload_records: Counter,
    pub bundles_published: Counter,
    pub database_errors: Counter,
    /// Admin API requests refused for a missing, unknown, expired or revoked token.
    pub api_token_refused: Counter,
    pub polls_held: Gauge<i64, AtomicI64>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics {
            requests: Family::default(),
            // 1 ms .. ~33 s: a held poll lasts up to 30 s.
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            upload_records: Counter::default(),
            bundles_published: Counter::default(),
            database_errors: Counter::default(),
            api_token_refused: Counter::default(),
            polls_held: Gauge::default(),
        }
    }
}

/// A poll being held (see [`HubMetrics::hold_poll`]).
pub struct PollHeld<'a>(&'a Gauge<i64, AtomicI64>);

impl Drop for PollHeld<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The fleet as the database has it at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fleet {
    pub enrolled: u64,
    pub revoked: u64,
    /// Gateways heard from within the last long poll and a margin.
    pub connected: u64,
    pub bundle_revision: i64,
}

/// One app connector as its saved status has it at scrape time.
#[derive(Debug, Default, Clone)]
pub struct ConnectorSample {
    pub name: String,
    pub kind: String,
    /// 1 when the last poll succeeded (throttled or not), 0 otherwise.
    pub up: bool,
    pub events: u64,
    pub requests: u64,
    pub throttled: u64,
    pub errors: u64,
    pub lag_seconds: Option<f64>,
}

impl HubMetrics {
    /// One answered request: `path` must be one of the hub's routes (or "other"), never a
    /// client's raw path, so that the label set stays small.
    pub fn request(&self, path: &str, status: u16, seconds: f64) {
        let path = path.to_string();
        self.requests
            .get_or_create(&vec![
                ("path".into(), path.clone()),
                ("code".into(), status.to_string()),
            ])
            .inc();
        self.latency
            .get_or_create(&vec![("path".into(), path)])
            .observe(seconds);
    }

    /// Counts a held poll until the guard is dropped.
    pub fn hold_poll(&self) -> PollHeld<'_> {
        self.polls_held.inc();
        PollHeld(&self.polls_held)
    }

    /// The text exposition; `fleet` is `None` when the database did not answer.
    pub fn render(&self, fleet: Option<Fleet>) -> String {
        self.render_with_connectors(fleet, &[])
    }

    /// [`HubMetrics::render`] with the app connectors' counters (one series per connector:
    /// its name is from the hub's own config, so the label set stays small).
    pub fn render_with_connectors(
        &self,
        fleet: Option<Fleet>,
        connectors: &[ConnectorSample],
    ) -> String {
        let mut s = Snapshot::new();
        if !connectors.is_empty() {
            let by = |f: fn(&ConnectorSample) -> u64| -> Vec<(&str, u64)> {
                connectors.iter().map(|c| (c.name.as_str(), f(c))).collect()
            };
            s.counter_by(
                "hub_connector_events",
                "Activity records an app connector stored (each vendor event once)",
                "connector",
                &by(|c| c.events),
            );
            s.counter_by(
                "hub_connector_requests",
                "Requests an app connector sent to its vendor",
                "connector",
                &by(|c| c.requests),
            );
            s.counter_by(
                "hub_connector_rate_limited",
                "Vendor answers that said slow down (429, GitHub 403 secondary limit)",
                "connector",
                &by(|c| c.throttled),
            );
            s.counter_by(
                "hub_connector_errors",
                "Failed polls of an app connector",
                "connector",
                &by(|c| c.errors),
            );
            let up: Vec<(Vec<(&str, &str)>, f64)> = connectors
                .iter()
                .map(|c| {
                    (
                        vec![("connector", c.name.as_str()), ("kind", c.kind.as_str())],
                        if c.up { 1.0 } else { 0.0 },
                    )
                })
                .collect();
            let up: Vec<(&[(&str, &str)], f64)> =
                up.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            s.gauge_labelled(
                "hub_connector_up",
                "1 when the app connector's last poll succeeded",
                &up,
            );
            let lag: Vec<(Vec<(&str, &str)>, f64)> = connectors
                .iter()
                .filter_map(|c| Some((vec![("connector", c.name.as_str())], c.lag_seconds?)))
                .collect();
            let lag: Vec<(&[(&str, &str)], f64)> =
                lag.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            s.gauge_labelled(
                "hub_connector_lag_seconds",
                "How old the newest event of the connector's last storing poll was when stored",
                &lag,
            );
        }
        let r = s.registry();
        r.register(
            "hub_requests",
            "Requests the hub answered, by route and status code",
            self.requests.clone(),
        );
        r.register(
            "hub_request_duration_seconds",
            "Time to answer a request, by route (a poll is held up to its long-poll time)",
            self.latency.clone(),
        );
        r.register(
            "hub_upload_records",
            "Discovery records ingested from gateway uploads",
            self.upload_records.clone(),
        );
        r.register(
            "hub_bundles_published",
            "Bundles published through this hub process's admin API",
            self.bundles_published.clone(),
        );
        r.register(
            "hub_database_errors",
            "Requests answered 503 because the database failed",
            self.database_errors.clone(),
        );
        r.register(
            "hub_api_token_refused",
            "Admin API requests refused for a missing, unknown, expired or revoked token",
            self.api_token_refused.clone(),
        );
        r.register(
            "hub_polls_held",
            "Gateway polls held open now, waiting for a bundle",
            self.polls_held.clone(),
        );
        s.gauge(
            "hub_database_up",
            "1 when the database answered the scrape's fleet query",
            if fleet.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(f) = fleet {
            s.gauge(
                "hub_gateways_enrolled",
                "Gateways enrolled and not revoked",
                f.enrolled as f64,
            );
            s.gauge("hub_gateways_revoked", "Gateways revoked", f.revoked as f64);
            s.gauge(
                "hub_gateways_connected",
                "Gateways heard from within the last long poll and a margin",
                f.connected as f64,
            );
            s.gauge(
                "hub_bundle_revision",
                "The newest bundle revision published",
                f.bundle_revision as f64,
            );
        }
        s.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_latency_are_exported() {
        let m = HubMetrics::default();
        m.request("/v1/poll", 200, 0.004);
        m.request("/v1/poll", 200, 25.0);
        m.upload_records.inc_by(12);
        let text = m.render(Some(Fleet {
            enrolled: 3,
            revoked: 1,
            connected: 2,
            bundle_revision: 9,
        }));
        for line in [
            "tollgate_hub_requests_total{path=\"/v1/poll\",code=\"200\"} 2",
            "tollgate_hub_request_duration_seconds_count{path=\"/v1/poll\"} 2",
            "tollgate_hub_upload_records_total 12",
            "tollgate_hub_gateways_enrolled 3.0",
            "tollgate_hub_database_up 1.0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let down = m.render(None);
        assert!(down.contains("tollgate_hub_database_up 0.0"));
        assert!(!down.contains("tollgate_hub_gateways_enrolled"));
    }
}
