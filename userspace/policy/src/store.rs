//! Live tags persisted in the state dir, so that `tollgate app tag` survives restarts.
//!
//! The file is JSON (`{"version":1,"tags":{"dropbox":"unsanctioned"}}`), written to a
//! temporary file, synced and renamed over the old one, so a crash mid-write leaves the
//! previous version. A file that cannot be read as tags is never overwritten: it is moved
//! aside (`tags.json.unreadable-<unix time>`) and the error is reported, so nothing stored
//! is lost.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

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

    /// Reads the live tags; a missing file is an empty set.
    pub fn load(&self) -> Result<BTreeMap<String, Tag>, TagStoreError> {
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
            Ok(f) => Err(self.move_aside(format!("unknown version {}", f.version))),
            Err(e) => Err(self.move_aside(e.to_string())),
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

    /// Writes all live tags atomically.
    pub fn save(&self, tags: &BTreeMap<String, Tag>) -> Result<(), TagStoreError> {
        let io = |source| TagStoreError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let body = serde_json::to_vec_pretty(&FileFormat {
            version: FORMAT_VERSION,
            tags: tags.clone(),
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
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
}
