//! Live tags persisted in the state dir, so that `tollgate app tag` survives restarts.
//!
//! The file is JSON (`{"version":1,"tags":{"dropbox":"unsanctioned"}}`), written to a
//! temporary file with a fresh name (created exclusively, so a planted symlink is never
//! followed), synced, renamed over the old one, and the directory synced: a crash or power
//! loss at any point leaves either the previous version or the new one.
//!
//! A file that cannot be read is never overwritten and never taken as "no tags":
//! - one that is not valid tags (corrupt, unknown version) is moved aside
//!   (`tags.json.unreadable-<unix time>`) and the error says where, so nothing stored is lost;
//! - one that cannot be read at all (permissions, I/O error, a directory in its place) is
//!   left where it is, and [`TagStore::save`] refuses to replace it.
//!
//! Either way the daemon refuses to start, so tags set through the CLI never silently
//! disappear (an unsanctioned app would become allowed).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::Tag;

const FILE_NAME: &str = "tags.json";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TagStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot be read, so it is not replaced ({source})")]
    WontReplace {
        path: PathBuf,
        #[source]
        source: Box<TagStoreError>,
    },
    #[error("{path}: not a tag file ({reason}); moved aside to {moved_to}")]
    Unreadable {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    tags: BTreeMap<String, Tag>,
}

/// The live tags on disk.
#[derive(Debug, Clone)]
pub struct TagStore {
    path: PathBuf,
}

impl TagStore {
    pub fn new(state_dir: &Path) -> TagStore {
        TagStore {
            path: state_dir.join(FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the live tags; a missing file is an empty set. A file that is not valid tags
    /// is moved aside (see the module documentation).
    pub fn load(&self) -> Result<BTreeMap<String, Tag>, TagStoreError> {
        self.read_or(|reason| self.move_aside(reason))
    }

    /// Reads the live tags without touching the file, for commands that only look at them:
    /// a file that is not valid tags is an error, left in place.
    pub fn read(&self) -> Result<BTreeMap<String, Tag>, TagStoreError> {
        self.read_or(|reason| TagStoreError::Io {
            path: self.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
        })
    }

    fn read_or(
        &self,
        invalid: impl FnOnce(String) -> TagStoreError,
    ) -> Result<BTreeMap<String, Tag>, TagStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(TagStoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        match serde_json::from_slice::<FileFormat>(&bytes) {
            Ok(f) if f.version == FORMAT_VERSION => Ok(f.tags),
            Ok(f) => Err(invalid(format!("unknown version {}", f.version))),
            Err(e) => Err(invalid(e.to_string())),
        }
    }

    fn move_aside(&self, reason: String) -> TagStoreError {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let moved_to = self
            .path
            .with_file_name(format!("{FILE_NAME}.unreadable-{secs}"));
        if let Err(source) = std::fs::rename(&self.path, &moved_to) {
            return TagStoreError::Io {
                path: self.path.clone(),
                source,
            };
        }
        TagStoreError::Unreadable {
            path: self.path.clone(),
            reason,
            moved_to,
        }
    }

    /// Writes all live tags atomically and durably. Refuses to replace a file that is there
    /// but cannot be read as tags: whatever it holds is the admin's to recover.
    pub fn save(&self, tags: &BTreeMap<String, Tag>) -> Result<(), TagStoreError> {
        let io = |source| TagStoreError::Io {
            path: self.path.clone(),
            source,
        };
        if let Err(e) = self.read() {
            return Err(TagStoreError::WontReplace {
                path: self.path.clone(),
                source: Box::new(e),
            });
        }
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: FORMAT_VERSION,
            tags: tags.clone(),
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        let (tmp, mut f) = create_temp(&self.path).map_err(io)?;
        let written = f
            .write_all(&body)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        drop(f);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        // The rename is durable only once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
}

/// A new file next to `path` with a name no one can guess ahead (pid, time, a counter),
/// created exclusively (`O_CREAT | O_EXCL`: an existing file or symlink of that name is an
/// error, never followed), mode 0600.
fn create_temp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = path
        .file_name()
        .map_or_else(|| FILE_NAME.into(), |n| n.to_string_lossy().into_owned());
    let mut last = None;
    for _ in 0..16 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = path.with_file_name(format!(
            ".{base}.tmp-{}-{nanos:08x}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name left")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        assert!(store.load().unwrap().is_empty());
        let mut tags = BTreeMap::new();
        tags.insert("dropbox".to_string(), Tag::Unsanctioned);
        tags.insert("slack".to_string(), Tag::Custom("team".into()));
        store.save(&tags).unwrap();
        assert_eq!(store.load().unwrap(), tags);
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        std::fs::write(store.path(), b"{\"version\":1,\"tags\":{\"x\":").unwrap();
        let err = store.load().unwrap_err();
        let TagStoreError::Unreadable { moved_to, .. } = err else {
            panic!("expected Unreadable, got {err}");
        };
        assert_eq!(
            std::fs::read(&moved_to).unwrap(),
            b"{\"version\":1,\"tags\":{\"x\":"
        );
        assert!(!store.path().exists());
    }

    #[test]
    fn unreadable_file_is_an_error_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        // EISDIR stands in for EIO/EACCES (root reads through chmod 000).
        std::fs::create_dir(store.path()).unwrap();
        std::fs::write(store.path().join("keep"), b"x").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, TagStoreError::Io { .. }), "{err}");
        assert!(store.read().is_err());
        let mut tags = BTreeMap::new();
        tags.insert("dropbox".to_string(), Tag::Unsanctioned);
        let err = store.save(&tags).unwrap_err();
        assert!(matches!(err, TagStoreError::WontReplace { .. }), "{err}");
        assert!(store.path().join("keep").exists(), "left as it was");
    }

    #[test]
    fn corrupt_file_is_not_replaced_by_save_and_read_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        std::fs::write(store.path(), b"garbage").unwrap();
        assert!(store.read().is_err());
        assert_eq!(std::fs::read(store.path()).unwrap(), b"garbage");
        assert!(store.save(&BTreeMap::new()).is_err());
        assert_eq!(std::fs::read(store.path()).unwrap(), b"garbage");
    }

    #[test]
    fn save_never_follows_a_planted_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = TagStore::new(dir.path());
        // The old fixed temporary name, pointing elsewhere: must stay untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("tags.json.tmp")).unwrap();
        let mut tags = BTreeMap::new();
        tags.insert("dropbox".to_string(), Tag::Unsanctioned);
        store.save(&tags).unwrap();
        store.save(&tags).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(store.load().unwrap(), tags);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
