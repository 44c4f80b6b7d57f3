//! Warnings when the kernel side loses work: first flights dropped because the ring buffer was
//! full, flows the flow map could not take, hellos the hello map could not follow. Each loss
//! means a flow that was not named, learned from or steered by userspace (the kernel's own
//! verdicts still apply), so an admin must hear of it, not only find a counter later; and a
//! flood that causes it must not also flood the log. The daemon feeds the kernel's counters
//! in at every poll; a warning names what grew since the last one, at most once per interval.

use std::time::{Duration, Instant};

/// The kernel counters watched, by name (as in `status --json`).
pub const WATCHED: [&str; 3] = ["ring_drops", "flow_map_full", "hello_map_full"];

/// Least time between two warnings.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The counters seen at the last warning (or at start), and when it was.
#[derive(Debug, Default)]
pub struct PressureWatch {
    reported: Option<[u64; WATCHED.len()]>,
    last_warning: Option<Instant>,
    /// Warnings given since start.
    pub warnings: u64,
}

impl PressureWatch {
    /// The counters now (in [`WATCHED`] order): the text of a warning when some grew since
    /// the last warning and the interval has passed, else `None`. The first reading is the
    /// baseline (losses of an earlier run of the pinned maps are not this run's).
    pub fn observe(&mut self, now: Instant, counters: [u64; WATCHED.len()]) -> Option<String> {
        let Some(before) = self.reported else {
            self.reported = Some(counters);
            return None;
        };
        if self
            .last_warning
            .is_some_and(|t| now.duration_since(t) < WARN_INTERVAL)
        {
            return None;
        }
        let grown: Vec<String> = WATCHED
            .iter()
            .zip(before.iter().zip(counters.iter()))
            .filter(|(_, (b, c))| c > b)
            .map(|(name, (b, c))| format!("{name} +{}", c - b))
            .collect();
        // A counter that went down (pinned maps replaced) is a new baseline, not a loss.
        self.reported = Some(counters);
        if grown.is_empty() {
            return None;
        }
        self.last_warning = Some(now);
        self.warnings += 1;
        Some(format!(
            "the kernel lost work ({}): flows went unnamed by userspace (no learned \
             addresses, steering or userspace verdicts for them); kernel verdicts still apply",
            grown.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_on_growth_at_most_once_per_interval_and_never_for_the_baseline() {
        let t0 = Instant::now();
        let mut w = PressureWatch::default();
        // Counters left by an earlier run: the baseline.
        assert_eq!(w.observe(t0, [500, 0, 0]), None);
        assert_eq!(w.observe(t0 + Duration::from_secs(1), [500, 0, 0]), None);
        let msg = w
            .observe(t0 + Duration::from_secs(2), [520, 3, 0])
            .expect("a warning");
        assert!(msg.contains("ring_drops +20"), "{msg}");
        assert!(msg.contains("flow_map_full +3"), "{msg}");
        assert!(!msg.contains("hello_map_full"), "{msg}");
        // Within the interval: quiet, and the growth is kept for the next warning.
        assert_eq!(w.observe(t0 + Duration::from_secs(5), [600, 3, 0]), None);
        let msg = w
            .observe(t0 + Duration::from_secs(13), [610, 3, 1])
            .expect("a warning after the interval");
        assert!(msg.contains("ring_drops +90"), "{msg}");
        assert!(msg.contains("hello_map_full +1"), "{msg}");
        assert_eq!(w.warnings, 2);
        // No growth, no warning.
        assert_eq!(w.observe(t0 + Duration::from_secs(30), [610, 3, 1]), None);
    }
}
