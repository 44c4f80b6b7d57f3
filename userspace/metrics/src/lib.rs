//! Tollgate's Prometheus exporter: the names and help of every metric the gateway and the hub
//! export ([`gateway`], [`hub`]), encoded in the Prometheus/OpenMetrics text format with the
//! `prometheus-client` crate, and the small plain-HTTP listener that answers `GET /metrics`
//! ([`serve`]). The gateway's metrics are a projection of the same JSON `tollgate status
//! --json` prints, so nothing is counted twice. Both daemons also set up their log output
//! here ([`logging`]).
#![forbid(unsafe_code)]

pub mod gateway;
pub mod hub;
pub mod logging;
mod server;

pub use server::{Limits, serve};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a labelled metric.
pub type Labels = Vec<(String, String)>;

/// The registry of one scrape, filled from a snapshot of counters: every metric is created,
/// set and registered in one call, so a snapshot maps to text without keeping state.
pub struct Snapshot {
    reg: Registry,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new()
    }
}

impl Snapshot {
    /// An empty snapshot whose metric names start with `tollgate_`, with the
    /// `tollgate_build_info{version}` gauge already in it.
    pub fn new() -> Self {
        let mut s = Snapshot {
            reg: Registry::with_prefix("tollgate"),
        };
        s.gauge_labelled(
            "build_info",
            "Always 1; the version label is the running build",
            &[(&[("version", env!("CARGO_PKG_VERSION"))][..], 1.0)],
        );
        s
    }

    /// A counter; `name` without the `_total` suffix (the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let c: Counter = Counter::default();
        c.inc_by(value);
        self.reg.register(name, help, c);
    }

    /// A counter with one label, one sample per `(label value, count)`.
    pub fn counter_by(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        let f: Family<Labels, Counter> = Family::default();
        for (v, n) in values {
            f.get_or_create(&vec![(label.to_string(), (*v).to_string())])
                .inc_by(*n);
        }
        self.reg.register(name, help, f);
    }

    /// A histogram from counts kept elsewhere: per-bucket (not cumulative) counts with their
    /// upper bounds (the last one `+Inf`), the sum and the count.
    pub fn histogram(&mut self, name: &str, help: &str, h: Buckets) {
        self.reg.register(name, help, h);
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g: Gauge<f64, AtomicU64> = Gauge::default();
        g.set(value);
        self.reg.register(name, help, g);
    }

    /// A gauge with labels, one sample per label set.
    pub fn gauge_labelled(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        let f: Family<Labels, Gauge<f64, AtomicU64>> = Family::default();
        for (labels, v) in samples {
            let labels: Labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            f.get_or_create(&labels).set(*v);
        }
        self.reg.register(name, help, f);
    }

    /// The registry, to add metrics that keep state (histograms).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.reg
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.reg);
        out
    }
}

/// The metric names in an exposition (`# TYPE` lines give the family; a family `x` of type
/// counter is queried as `x_total`, a histogram as `x_bucket`, `x_sum`, `x_count`), for the
/// tests that keep the dashboard and the docs in step with the exporter.
pub fn sample_names(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// A histogram whose counts were kept by someone else (the session proxy's atomics), encoded
/// as a Prometheus histogram.
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    /// (upper bound, count in this bucket alone), ascending; the last bound is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl prometheus_client::encoding::EncodeMetric for Buckets {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}
