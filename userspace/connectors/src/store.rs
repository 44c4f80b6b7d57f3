//! Where a connector's records and cursor go. The hub implements [`Store`] over its database;
//! [`MemoryStore`] is the reference the tests and the benchmark use.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use tollgate_activity::Activity;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Durable storage for one or more connectors.
pub trait Store: Send + Sync {
    /// The cursor stored last for connector `name` (JSON text), if any.
    fn load_cursor(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Stores `records` (each once per `(name, vendor_id)`: a record already stored is
    /// skipped) and `cursor`, atomically: a crash leaves either both or neither. Returns how
    /// many records were new.
    fn commit(
        &self,
        name: &str,
        records: &[Activity],
        cursor: &str,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

#[derive(Debug, Default)]
struct Inner {
    records: Vec<Activity>,
    keys: HashSet<(String, String)>,
    cursors: HashMap<String, String>,
    offered: u64,
    commits: u64,
    fail_next: u32,
}

/// An in-memory store with the same contract as the hub's database.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn records(&self) -> Vec<Activity> {
        self.lock().records.clone()
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records offered to `commit` (new and already stored).
    pub fn offered(&self) -> u64 {
        self.lock().offered
    }

    pub fn commits(&self) -> u64 {
        self.lock().commits
    }

    pub fn cursor(&self, name: &str) -> Option<String> {
        self.lock().cursors.get(name).cloned()
    }

    /// The next `n` commits fail (a database outage).
    pub fn fail_next_commits(&self, n: u32) {
        self.lock().fail_next = n;
    }
}

impl Store for MemoryStore {
    async fn load_cursor(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock().cursors.get(name).cloned())
    }

    async fn commit(
        &self,
        name: &str,
        records: &[Activity],
        cursor: &str,
    ) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            return Err(StoreError("simulated outage".into()));
        }
        inner.commits += 1;
        inner.offered += records.len() as u64;
        let mut new = 0;
        for r in records {
            let Some(id) = &r.vendor_id else { continue };
            if inner.keys.insert((name.to_string(), id.clone())) {
                inner.records.push(r.clone());
                new += 1;
            }
        }
        inner.cursors.insert(name.to_string(), cursor.to_string());
        Ok(new)
    }
}
