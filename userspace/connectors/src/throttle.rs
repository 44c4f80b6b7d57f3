//! Throttling and failure handling: how long to wait after a 429 / GitHub 403 secondary limit
//! (`Retry-After`, then the vendor's rate-limit reset header, then exponential backoff with
//! full jitter), and the per-connector circuit breaker. Pure except for the jitter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

/// Knobs; [`Limits::default`] is what the hub runs with. Tests shrink `wait_scale` so that a
/// storm of `Retry-After: 1` answers takes milliseconds, while still checking it was honoured.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Attempts of one request before the poll gives up (429, 5xx, transport errors).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest wait any header can impose in one go (a hostile `Retry-After: 10^9` does
    /// not park the connector for 30 years).
    pub max_wait: Duration,
    /// GitHub: a secondary-limit refusal without a header waits at least this long (GitHub's
    /// documented "at least one minute").
    pub secondary_min: Duration,
    /// Consecutive failed polls that open the circuit.
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    pub breaker_cooldown_cap: Duration,
    /// Every wait is multiplied by this (1.0 in production).
    pub wait_scale: f64,
    pub request_timeout: Duration,
    /// Pages one poll reads at most (then it commits and yields to the next poll).
    pub max_pages_per_poll: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            max_wait: Duration::from_secs(300),
            secondary_min: Duration::from_secs(60),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(60),
            breaker_cooldown_cap: Duration::from_secs(1800),
            wait_scale: 1.0,
            request_timeout: Duration::from_secs(30),
            max_pages_per_poll: 500,
        }
    }
}

impl Limits {
    pub fn scaled(&self, d: Duration) -> Duration {
        d.mul_f64(self.wait_scale.clamp(0.0, 1.0e6))
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = header(headers, "retry-after")?;
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait until the rate-limit window resets, when the vendor says none is left:
/// Okta `X-Rate-Limit-Remaining`/`X-Rate-Limit-Reset`, GitHub
/// `x-ratelimit-remaining`/`x-ratelimit-reset` (epoch seconds). `force` uses the reset even
/// when `remaining` is absent (a 429 that carries only the reset).
pub fn reset_wait(headers: &HeaderMap, now: SystemTime, force: bool) -> Option<Duration> {
    let remaining = header(headers, "x-rate-limit-remaining")
        .or_else(|| header(headers, "x-ratelimit-remaining"))
        .and_then(|v| v.parse::<u64>().ok());
    if !force && remaining != Some(0) {
        return None;
    }
    let reset = header(headers, "x-rate-limit-reset")
        .or_else(|| header(headers, "x-ratelimit-reset"))?
        .parse::<u64>()
        .ok()?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    // One second more: the reset is a whole second and clocks differ.
    Some(Duration::from_secs(
        reset.saturating_sub(now).saturating_add(1),
    ))
}

/// Exponential backoff with full jitter in [half, full] of `base * 2^attempt`, capped.
pub fn backoff(attempt: u32, limits: &Limits) -> Duration {
    let full = limits
        .backoff_base
        .saturating_mul(1u32 << attempt.min(20))
        .min(limits.backoff_cap);
    let half = full / 2;
    half + full.mul_f64(fastrand::f64() * 0.5)
}

/// Whether a GitHub 403 is a rate limit (primary or secondary) rather than a refusal.
pub fn github_403_is_limit(headers: &HeaderMap, body: &[u8]) -> bool {
    if headers.contains_key("retry-after") {
        return true;
    }
    if header(headers, "x-ratelimit-remaining") == Some("0") {
        return true;
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]).to_ascii_lowercase();
    text.contains("rate limit")
}

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Circuit {
    Closed,
    Open,
    HalfOpen,
}

/// Opens after `breaker_threshold` failed polls in a row; stays open for a cool-down that
/// doubles with each re-open (capped); then lets one poll through (half-open).
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    failures: u32,
    opens: u32,
    open_until: Option<tokio::time::Instant>,
}

impl Breaker {
    pub fn state(&self, now: tokio::time::Instant) -> Circuit {
        match self.open_until {
            None => Circuit::Closed,
            Some(t) if now < t => Circuit::Open,
            Some(_) => Circuit::HalfOpen,
        }
    }

    /// How long until a poll may try again (zero when closed or half-open).
    pub fn wait(&self, now: tokio::time::Instant) -> Duration {
        self.open_until
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.opens = 0;
        self.open_until = None;
    }

    pub fn failure(&mut self, now: tokio::time::Instant, limits: &Limits) {
        self.failures += 1;
        let half_open = self.open_until.is_some();
        if half_open || self.failures >= limits.breaker_threshold {
            self.opens = self.opens.saturating_add(1);
            let cool = limits
                .breaker_cooldown
                .saturating_mul(1u32 << (self.opens - 1).min(16))
                .min(limits.breaker_cooldown_cap);
            self.open_until = Some(now + limits.scaled(cool));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        let mut h = HeaderMap::new();
        h.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
        h.insert("x-rate-limit-reset", HeaderValue::from_static("1700000010"));
        assert_eq!(reset_wait(&h, now, false), Some(Duration::from_secs(11)));
        h.insert("x-rate-limit-remaining", HeaderValue::from_static("5"));
        assert_eq!(reset_wait(&h, now, false), None);
        assert_eq!(reset_wait(&h, now, true), Some(Duration::from_secs(11)));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let l = Limits::default();
        for attempt in 0..30 {
            let d = backoff(attempt, &l);
            assert!(d <= l.backoff_cap, "{attempt} {d:?}");
            let full = l
                .backoff_base
                .saturating_mul(1 << attempt.min(20))
                .min(l.backoff_cap);
            assert!(d >= full / 2, "{attempt} {d:?}");
        }
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let l = Limits::default();
        let t0 = tokio::time::Instant::now();
        let mut b = Breaker::default();
        b.failure(t0, &l);
        b.failure(t0, &l);
        assert_eq!(b.state(t0), Circuit::Closed);
        b.failure(t0, &l);
        assert_eq!(b.state(t0), Circuit::Open);
        assert_eq!(b.wait(t0), Duration::from_secs(60));
        let later = t0 + Duration::from_secs(61);
        assert_eq!(b.state(later), Circuit::HalfOpen);
        b.failure(later, &l);
        assert_eq!(b.wait(later), Duration::from_secs(120), "cool-down doubles");
        b.success();
        assert_eq!(b.state(later), Circuit::Closed);
    }
}
