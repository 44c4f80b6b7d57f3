//! One memory budget for every body the proxy buffers or decodes for inspection, across all
//! connections (`max_buffered_bytes`). Without it, each request or response under inspection
//! may hold `max_inspect_bytes` (and its decoded copy), so a burst of large uploads from one
//! client could take the proxy's memory anywhere. A body takes its share before the bytes
//! are held; when the budget is spent it waits for others to finish (bounded by the body's
//! read timeout) and is then refused.
//!
//! No client may hold more than its part of the budget (`max_buffered_bytes_per_client`): a
//! host that opens many inspected transfers and does not read them (or reads them slowly)
//! waits for its own memory, and other users' transfers still get theirs.
//!
//! The budget counts KiB (rounded up), so one request can ask for any size in one call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const UNIT: usize = 1024;

/// The shared budget.
#[derive(Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: usize,
    /// What one client address may hold; equal to `units` when clients are not limited.
    client_units: usize,
    /// Each client address's part, while it holds memory: the semaphore lives as long as a
    /// share of that client holds it (the last one removes the entry).
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    /// Most bytes (in whole KiB) held at once since start.
    peak: AtomicU64,
    /// Shares that had to wait for memory.
    pub waits: AtomicU64,
    /// Shares that waited because their client already held its part.
    pub client_waits: AtomicU64,
    /// Shares refused because the memory did not free up in time.
    pub refusals: AtomicU64,
}

/// The budget could not give the memory in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

fn units_of(bytes: u64) -> usize {
    usize::try_from(bytes / UNIT as u64)
        .unwrap_or(usize::MAX)
        .clamp(1, Semaphore::MAX_PERMITS)
}

impl Budget {
    /// `bytes` for all clients together, `per_client` for any one source address.
    pub fn new(bytes: u64, per_client: u64) -> Arc<Budget> {
        let units = units_of(bytes);
        Arc::new(Budget {
            sem: Arc::new(Semaphore::new(units)),
            units,
            client_units: units_of(per_client).min(units),
            clients: Mutex::new(HashMap::new()),
            peak: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            client_waits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        })
    }

    /// Bytes held right now.
    pub fn in_use(&self) -> u64 {
        (self.units.saturating_sub(self.sem.available_permits()) * UNIT) as u64
    }

    /// Most bytes held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// The whole budget, in bytes.
    pub fn capacity(&self) -> u64 {
        (self.units * UNIT) as u64
    }

    /// An empty share of this budget, for a body of `client`'s.
    pub fn share(self: &Arc<Self>, client: IpAddr) -> Share {
        Share {
            budget: self.clone(),
            client,
            client_part: None,
            permit: None,
            client_permit: None,
            units: 0,
        }
    }

    /// `client`'s part of the budget; `None` when clients are not limited.
    fn client_part(&self, client: IpAddr) -> Option<Arc<Semaphore>> {
        if self.client_units >= self.units {
            return None;
        }
        let mut clients = self.clients.lock().ok()?;
        Some(
            clients
                .entry(client)
                .or_insert_with(|| Arc::new(Semaphore::new(self.client_units)))
                .clone(),
        )
    }

    /// A share of `client` let go of its part: the last one removes the entry. Under the
    /// lock, so that no share takes the part between the count and the removal.
    fn release_client_part(&self, client: IpAddr, part: Arc<Semaphore>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        // The map's reference and ours: no share (and no permit) of this client is left.
        if Arc::strong_count(&part) == 2
            && clients.get(&client).is_some_and(|p| Arc::ptr_eq(p, &part))
        {
            clients.remove(&client);
        }
        drop(part);
    }

    /// Client addresses holding inspection memory now.
    pub fn clients_holding(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn note_peak(&self) {
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
    }
}

fn units_for(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

/// Memory held by one body (and its decoded forms); given back when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    client: IpAddr,
    /// The client's part of the budget, taken at the first growth.
    client_part: Option<Arc<Semaphore>>,
    permit: Option<OwnedSemaphorePermit>,
    /// The same units, from the client's part (none when clients are not limited).
    client_permit: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.permit = None;
        self.client_permit = None;
        if let Some(part) = self.client_part.take() {
            self.budget.release_client_part(self.client, part);
        }
    }
}

/// Both permits of one growth: the client's part first, then the whole budget's.
struct Grant {
    client: Option<OwnedSemaphorePermit>,
    all: OwnedSemaphorePermit,
}

/// `n` units of `sem`: at once if they are free, else after a wait counted in `waits`.
async fn take(
    sem: Arc<Semaphore>,
    n: u32,
    waits: &AtomicU64,
) -> Result<OwnedSemaphorePermit, Exhausted> {
    match sem.clone().try_acquire_many_owned(n) {
        Ok(p) => Ok(p),
        Err(_) => {
            waits.fetch_add(1, Ordering::Relaxed);
            sem.acquire_many_owned(n).await.map_err(|_| Exhausted)
        }
    }
}

fn merge(into: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
    match into {
        Some(held) => held.merge(p),
        None => *into = Some(p),
    }
}

impl Share {
    /// Bytes this share holds.
    pub fn bytes(&self) -> usize {
        self.units * UNIT
    }

    fn need(&self, total: usize) -> Result<Option<u32>, Exhausted> {
        let want = units_for(total);
        if want <= self.units {
            return Ok(None);
        }
        if want > self.budget.client_units {
            return Err(Exhausted);
        }
        u32::try_from(want - self.units)
            .map(Some)
            .map_err(|_| Exhausted)
    }

    fn add(&mut self, g: Grant) {
        self.units += g.all.num_permits();
        merge(&mut self.permit, g.all);
        if let Some(c) = g.client {
            merge(&mut self.client_permit, c);
        }
        self.budget.note_peak();
    }

    fn client_part(&mut self) -> Option<Arc<Semaphore>> {
        if self.client_part.is_none() {
            self.client_part = self.budget.client_part(self.client);
        }
        self.client_part.clone()
    }

    /// Grow the share to `total` bytes, waiting for memory as long as the caller lets it.
    pub async fn grow(&mut self, total: usize) -> Result<(), Exhausted> {
        let Some(n) = self.need(total)? else {
            return Ok(());
        };
        let client = match self.client_part() {
            None => None,
            Some(part) => Some(take(part, n, &self.budget.client_waits).await?),
        };
        let all = take(self.budget.sem.clone(), n, &self.budget.waits).await?;
        self.add(Grant { client, all });
        Ok(())
    }

    /// Grow the share to `total` bytes only if the memory is free now (decoding, on a
    /// blocking thread: a body that already holds memory never waits for more, so two
    /// bodies can never wait for each other).
    pub fn try_grow(&mut self, total: usize) -> Result<(), Exhausted> {
        let Some(n) = self.need(total)? else {
            return Ok(());
        };
        let client = match self.client_part() {
            None => None,
            Some(part) => Some(part.try_acquire_many_owned(n).map_err(|_| Exhausted)?),
        };
        let all = self
            .budget
            .sem
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Exhausted)?;
        self.add(Grant { client, all });
        Ok(())
    }

    /// Grow the share to `total` bytes in one piece: at once if the memory is free now;
    /// otherwise the share gives back what it holds and waits for the whole `total`, so that
    /// it never holds part of the budget while it waits for more (shares doing that could
    /// wait for each other until they time out).
    pub async fn grow_whole(&mut self, total: usize) -> Result<(), Exhausted> {
        if self.need(total)?.is_none() || self.try_grow(total).is_ok() {
            return Ok(());
        }
        self.permit = None;
        self.client_permit = None;
        self.units = 0;
        self.grow(total).await
    }

    /// Give back what the share holds beyond `total` bytes (a reservation larger than the
    /// body turned out to be).
    pub fn shrink(&mut self, total: usize) {
        let keep = units_for(total);
        if keep >= self.units {
            return;
        }
        for permit in [&mut self.permit, &mut self.client_permit] {
            if keep == 0 {
                *permit = None;
            } else if let Some(p) = permit {
                drop(p.split(self.units - keep));
            }
        }
        self.units = keep;
    }

    /// Count a refusal (the caller gives up on this share).
    pub fn refused(&self) {
        self.budget.refusals.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::Ipv4Addr;
    use std::time::Duration;

    const HOST_A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const HOST_B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test]
    async fn shares_stay_within_the_budget() {
        let b = Budget::new(10 * 1024, 10 * 1024);
        let mut a = b.share(HOST_A);
        a.grow(6 * 1024).await.unwrap();
        let mut c = b.share(HOST_A);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), c.grow(6 * 1024))
                .await
                .is_err(),
            "must wait"
        );
        assert_eq!(b.in_use(), 6 * 1024);
        drop(a);
        tokio::time::timeout(Duration::from_millis(50), c.grow(6 * 1024))
            .await
            .unwrap()
            .unwrap();
        assert!(b.peak() <= b.capacity());
        assert_eq!(c.grow(11 * 1024).await, Err(Exhausted), "larger than all");
        let mut d = b.share(HOST_A);
        assert_eq!(d.try_grow(5 * 1024), Err(Exhausted), "no waiting");
        assert!(d.try_grow(4 * 1024).is_ok());
        assert!(b.waits.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn shrink_gives_back_the_excess() {
        let b = Budget::new(8 * 1024, 8 * 1024);
        let mut a = b.share(HOST_A);
        a.grow(8 * 1024).await.unwrap();
        a.shrink(3 * 1024 - 100);
        assert_eq!(a.bytes(), 3 * 1024);
        assert_eq!(b.in_use(), 3 * 1024);
        a.shrink(10 * 1024);
        assert_eq!(b.in_use(), 3 * 1024, "shrinking never grows");
        a.shrink(0);
        assert_eq!((a.bytes(), b.in_use()), (0, 0));
        a.grow(1024).await.unwrap();
        assert_eq!(b.in_use(), 1024, "a shrunk share can grow again");
    }

    /// Two shares that each hold half the budget and want more: with `grow_whole` the one
    /// that waits gives back what it holds, so the other can finish.
    #[tokio::test]
    async fn grow_whole_never_holds_while_waiting() {
        let b = Budget::new(8 * 1024, 8 * 1024);
        let mut a = b.share(HOST_A);
        a.grow(4 * 1024).await.unwrap();
        let mut c = b.share(HOST_A);
        c.grow(4 * 1024).await.unwrap();
        let waiter = {
            let mut c = c;
            tokio::spawn(async move {
                c.grow_whole(6 * 1024).await.unwrap();
                c
            })
        };
        // The waiter let go of its 4 KiB: `a` gets the rest of the budget without waiting.
        a.grow(8 * 1024).await.unwrap();
        assert_eq!(b.in_use(), 8 * 1024);
        assert!(!waiter.is_finished());
        drop(a);
        let c = waiter.await.unwrap();
        assert_eq!((c.bytes(), b.in_use()), (6 * 1024, 6 * 1024));
        let mut d = b.share(HOST_A);
        assert_eq!(
            d.grow_whole(9 * 1024).await,
            Err(Exhausted),
            "larger than all"
        );
        d.grow_whole(2 * 1024).await.unwrap();
        assert_eq!(b.in_use(), 8 * 1024);
    }

    /// One client that holds its part waits for its own memory; another client still gets
    /// the rest of the budget at once, and the client's entry goes when its last share does.
    #[tokio::test]
    async fn one_client_cannot_take_the_whole_budget() {
        let b = Budget::new(8 * 1024, 3 * 1024);
        let mut a1 = b.share(HOST_A);
        a1.grow(2 * 1024).await.unwrap();
        let mut a2 = b.share(HOST_A);
        assert_eq!(a2.try_grow(2 * 1024), Err(Exhausted), "A's part is 3 KiB");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), a2.grow(2 * 1024))
                .await
                .is_err(),
            "A must wait for its own memory"
        );
        assert_eq!(b.client_waits.load(Ordering::Relaxed), 1);
        assert_eq!(b.in_use(), 2 * 1024, "a cancelled wait holds nothing");
        let mut other = b.share(HOST_B);
        other.try_grow(3 * 1024).unwrap();
        assert_eq!(b.in_use(), 5 * 1024);
        assert_eq!(
            b.share(HOST_A).grow(4 * 1024).await,
            Err(Exhausted),
            "larger than a client's part"
        );
        a2.grow(1024).await.unwrap();
        a1.shrink(1024);
        a2.grow(2 * 1024).await.unwrap();
        assert_eq!(b.in_use(), 6 * 1024);
        assert_eq!(b.clients_holding(), 2);
        drop((a1, a2));
        assert_eq!(b.clients_holding(), 1, "A's entry is gone with its shares");
        drop(other);
        assert_eq!((b.clients_holding(), b.in_use()), (0, 0));
    }

    /// Without a per-client limit no client entry is kept at all.
    #[tokio::test]
    async fn unlimited_clients_keep_no_entries() {
        let b = Budget::new(8 * 1024, 8 * 1024);
        let mut a = b.share(HOST_A);
        a.grow(8 * 1024).await.unwrap();
        assert_eq!(b.clients_holding(), 0);
    }
}
