//! The governance blocks of users' sessions (`block_sessions_secs`), kept on disk
//! (`state_dir/session-blocks.json`) so that a restart of the daemon, or of the box, does not
//! lift them: the proxy holds blocks in memory with monotonic deadlines, this ledger holds the
//! same blocks with wall-clock ends and hands the ones still in force to a new proxy.
//!
//! A corrupt file is moved aside and said so (the alerts that set the blocks stay in the alert
//! book). Bounded like the proxy's table ([`tollgate_proxy::governance::MAX_BLOCKS`]): blocks
//! past their end are dropped first, then the ones ending soonest.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_proxy::governance::{Actor, MAX_BLOCKS};

/// The ledger's file in `state_dir`.
pub const SESSION_BLOCKS_FILE: &str = "session-blocks.json";

/// One block as the file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    pub app: String,
    pub policy: String,
    /// When it ends (Unix seconds).
    pub until: i64,
}

impl SavedBlock {
    /// Whose sessions it blocks; `None` for an entry with neither user nor device.
    pub fn actor(&self) -> Option<Actor> {
        match (&self.user, self.ip) {
            (Some(u), _) => Some(Actor::user(u)),
            (None, Some(ip)) => Some(Actor::Device(ip)),
            (None, None) => None,
        }
    }

    fn same_target(&self, other: &SavedBlock) -> bool {
        self.actor() == other.actor() && self.app.eq_ignore_ascii_case(&other.app)
    }
}

#[derive(Debug)]
pub struct BlockLedger {
    dir: PathBuf,
    blocks: Vec<SavedBlock>,
}

impl BlockLedger {
    /// The ledger of `state_dir`; a missing file is an empty one, an unreadable one is moved
    /// to `session-blocks.json.corrupt` with an error that says so.
    pub fn load(state_dir: &Path) -> BlockLedger {
        let path = state_dir.join(SESSION_BLOCKS_FILE);
        let blocks = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<SavedBlock>>(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    let _ = std::fs::rename(&path, &aside);
                    tracing::error!(error = %e, moved_to = %aside.display(), "the session blocks did not read back; starting with none");
                    crate::outln!(
                        "tollgate: {} did not read back ({e}); moved to {}",
                        path.display(),
                        aside.display()
                    );
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        BlockLedger {
            dir: state_dir.to_path_buf(),
            blocks,
        }
    }

    /// The blocks still in force at `now` (Unix seconds).
    pub fn in_force(&self, now: i64) -> impl Iterator<Item = &SavedBlock> {
        self.blocks.iter().filter(move |b| b.until > now)
    }

    /// Records a block (a later end for the same user or device and app replaces an earlier
    /// one) and writes the file.
    pub fn add(&mut self, block: SavedBlock, now: i64) -> std::io::Result<()> {
        self.blocks.retain(|b| b.until > now);
        match self.blocks.iter_mut().find(|b| b.same_target(&block)) {
            Some(b) if b.until >= block.until => {}
            Some(b) => *b = block,
            None => self.blocks.push(block),
        }
        if self.blocks.len() > MAX_BLOCKS {
            self.blocks.sort_by_key(|b| std::cmp::Reverse(b.until));
            self.blocks.truncate(MAX_BLOCKS);
        }
        tollgate_activity::alert::write_json_atomic(&self.dir, SESSION_BLOCKS_FILE, &self.blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(user: &str, app: &str, until: i64) -> SavedBlock {
        SavedBlock {
            user: Some(user.into()),
            ip: None,
            app: app.into(),
            policy: "p".into(),
            until,
        }
    }

    #[test]
    fn blocks_survive_a_reload_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = BlockLedger::load(dir.path());
        l.add(block("Alice", "dropbox", 2_000), 1_000).unwrap();
        l.add(block("bob", "box", 1_500), 1_000).unwrap();
        // A shorter block for the same user and app does not shorten the longer one.
        l.add(block("alice", "Dropbox", 1_200), 1_000).unwrap();
        let l = BlockLedger::load(dir.path());
        let now: Vec<_> = l.in_force(1_100).cloned().collect();
        assert_eq!(now.len(), 2, "{now:?}");
        assert!(now.iter().any(|b| b.until == 2_000));
        assert_eq!(l.in_force(1_600).count(), 1);
        assert_eq!(l.in_force(2_000).count(), 0);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SESSION_BLOCKS_FILE), b"{not json").unwrap();
        let l = BlockLedger::load(dir.path());
        assert_eq!(l.in_force(0).count(), 0);
        assert!(dir.path().join("session-blocks.json.corrupt").exists());
    }
}
