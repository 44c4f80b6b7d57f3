//! Governance blocks: a user's (or, without a user, a device's) sessions to one app refused
//! for a time. The daemon sets them when an activity policy with `block_sessions_secs` alerts;
//! every request they refuse is an audit record like any other block.
//!
//! Bounded: at most [`MAX_BLOCKS`] at once (expired ones are pruned first); a block that does
//! not fit is refused and the caller says so. Blocks live in memory here; the daemon keeps
//! them on disk with their end times and hands a new proxy those still in force, so that a
//! restart does not lift them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Blocks held at most.
pub const MAX_BLOCKS: usize = 10_000;

/// Whose sessions are blocked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A user name, compared without case.
    User(String),
    /// A device's address (for traffic with no known user).
    Device(IpAddr),
}

impl Actor {
    pub fn user(name: &str) -> Actor {
        Actor::User(name.to_lowercase())
    }
}

#[derive(Debug, Clone)]
struct Block {
    until: Instant,
    policy: String,
}

/// The blocks in force.
#[derive(Debug, Default)]
pub struct SessionBlocks {
    blocks: Mutex<HashMap<(Actor, String), Block>>,
    /// How many blocks are held, so that requests skip the lock when there are none.
    held: AtomicUsize,
}

impl SessionBlocks {
    /// Blocks `actor`'s sessions to `app` for `dur` (a longer block already in force stays).
    /// False when the table is full of blocks still in force.
    pub fn block(&self, actor: Actor, app: &str, dur: Duration, policy: &str) -> bool {
        let now = Instant::now();
        let until = now + dur;
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let key = (actor, app.to_lowercase());
        if !blocks.contains_key(&key) && blocks.len() >= MAX_BLOCKS {
            blocks.retain(|_, b| b.until > now);
            if blocks.len() >= MAX_BLOCKS {
                return false;
            }
        }
        let entry = blocks.entry(key).or_insert_with(|| Block {
            until,
            policy: policy.to_string(),
        });
        if entry.until <= until {
            entry.until = until;
            entry.policy = policy.to_string();
        }
        self.held.store(blocks.len(), Relaxed);
        true
    }

    /// The policy that blocks this request's sessions, and how long it still holds.
    pub fn check(&self, user: Option<&str>, ip: IpAddr, app: &str) -> Option<(String, Duration)> {
        if self.held.load(Relaxed) == 0 {
            return None;
        }
        let now = Instant::now();
        let app = app.to_lowercase();
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = None;
        for actor in [user.map(Actor::user), Some(Actor::Device(ip))]
            .into_iter()
            .flatten()
        {
            let key = (actor, app.clone());
            match blocks.get(&key) {
                Some(b) if b.until > now => {
                    found = Some((b.policy.clone(), b.until - now));
                    break;
                }
                Some(_) => {
                    blocks.remove(&key);
                }
                None => {}
            }
        }
        self.held.store(blocks.len(), Relaxed);
        found
    }

    /// Blocks held (some may have expired since).
    pub fn len(&self) -> usize {
        self.held.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_holds_for_its_user_and_app_only_and_expires() {
        let b = SessionBlocks::default();
        let ip: IpAddr = [10, 0, 0, 7].into();
        assert!(b.block(Actor::user("Alice"), "Box", Duration::from_millis(200), "p"));
        assert_eq!(
            b.check(Some("alice"), ip, "box").map(|x| x.0),
            Some("p".into())
        );
        assert_eq!(b.check(Some("bob"), ip, "box"), None);
        assert_eq!(b.check(Some("alice"), ip, "dropbox"), None);
        assert_eq!(b.check(None, ip, "box"), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(b.check(Some("alice"), ip, "box"), None);
        assert!(b.is_empty());
    }

    #[test]
    fn a_device_block_covers_requests_without_a_user_and_a_longer_block_stays() {
        let b = SessionBlocks::default();
        let ip: IpAddr = [10, 0, 0, 9].into();
        assert!(b.block(Actor::Device(ip), "box", Duration::from_secs(600), "long"));
        assert!(b.block(Actor::Device(ip), "box", Duration::from_secs(5), "short"));
        let (policy, left) = b.check(None, ip, "box").unwrap();
        assert_eq!(policy, "long");
        assert!(left > Duration::from_secs(500));
    }

    #[test]
    fn the_table_is_bounded() {
        let b = SessionBlocks::default();
        for i in 0..MAX_BLOCKS {
            assert!(b.block(
                Actor::user(&format!("u{i}")),
                "box",
                Duration::from_secs(60),
                "p"
            ));
        }
        assert!(!b.block(Actor::user("one-more"), "box", Duration::from_secs(60), "p"));
        assert_eq!(b.len(), MAX_BLOCKS);
    }
}
