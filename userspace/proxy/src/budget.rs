//! One memory budget for every body the proxy buffers or decodes for inspection, across all
//! connections (`max_buffered_bytes`). Without it, each request or response under inspection
//! may hold `max_inspect_bytes` (and its decoded copy), so a burst of large uploads from one
//! client could take the proxy's memory anywhere. A body takes its share before the bytes
//! are held; when the budget is spent it waits for others to finish (bounded by the body's
//! read timeout) and is then refused.
//!
//! The budget counts KiB (rounded up), so one request can ask for any size in one call.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::upstream::{BoxError, ProxyBody};

const UNIT: usize = 1024;

/// The shared budget.
#[derive(Debug)]
pub struct Budget {
    sem: Arc<Semaphore>,
    units: usize,
    /// Most bytes (in whole KiB) held at once since start.
    peak: AtomicU64,
    /// Shares that had to wait for memory.
    pub waits: AtomicU64,
    /// Shares refused because the memory did not free up in time.
    pub refusals: AtomicU64,
}

/// The budget could not give the memory in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl Budget {
    pub fn new(bytes: u64) -> Arc<Budget> {
        let units = usize::try_from(bytes / UNIT as u64)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Budget {
            sem: Arc::new(Semaphore::new(units)),
            units,
            peak: AtomicU64::new(0),
            waits: AtomicU64::new(0),
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

    /// An empty share of this budget.
    pub fn share(self: &Arc<Self>) -> Share {
        Share {
            budget: self.clone(),
            permit: None,
            units: 0,
        }
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
    permit: Option<OwnedSemaphorePermit>,
    units: usize,
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
        if want > self.budget.units {
            return Err(Exhausted);
        }
        u32::try_from(want - self.units)
            .map(Some)
            .map_err(|_| Exhausted)
    }

    fn add(&mut self, p: OwnedSemaphorePermit) {
        self.units += p.num_permits();
        match &mut self.permit {
            Some(held) => held.merge(p),
            None => self.permit = Some(p),
        }
        self.budget.note_peak();
    }

    /// Grow the share to `total` bytes, waiting for memory as long as the caller lets it.
    pub async fn grow(&mut self, total: usize) -> Result<(), Exhausted> {
        let Some(n) = self.need(total)? else {
            return Ok(());
        };
        let sem = self.budget.sem.clone();
        let p = match sem.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                self.budget.waits.fetch_add(1, Ordering::Relaxed);
                sem.acquire_many_owned(n).await.map_err(|_| Exhausted)?
            }
        };
        self.add(p);
        Ok(())
    }

    /// Grow the share to `total` bytes only if the memory is free now (decoding, on a
    /// blocking thread: a body that already holds memory never waits for more, so two
    /// bodies can never wait for each other).
    pub fn try_grow(&mut self, total: usize) -> Result<(), Exhausted> {
        let Some(n) = self.need(total)? else {
            return Ok(());
        };
        let p = self
            .budget
            .sem
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Exhausted)?;
        self.add(p);
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
        if keep == 0 {
            self.permit = None;
        } else if let Some(p) = &mut self.permit {
            drop(p.split(self.units - keep));
        }
        self.units = keep;
    }

    /// Count a refusal (the caller gives up on this share).
    pub fn refused(&self) {
        self.budget.refusals.fetch_add(1, Ordering::Relaxed);
    }
}

/// A body that holds `guard` until it is dropped (sent or abandoned): a memory share while
/// an inspected body is sent on, an in-flight mark while a response is streamed.
pub struct Holding<G> {
    pub inner: ProxyBody,
    pub guard: G,
}

impl<G: Unpin> Body for Holding<G> {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[tokio::test]
    async fn shares_stay_within_the_budget() {
        let b = Budget::new(10 * 1024);
        let mut a = b.share();
        a.grow(6 * 1024).await.unwrap();
        let mut c = b.share();
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
        let mut d = b.share();
        assert_eq!(d.try_grow(5 * 1024), Err(Exhausted), "no waiting");
        assert!(d.try_grow(4 * 1024).is_ok());
        assert!(b.waits.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn shrink_gives_back_the_excess() {
        let b = Budget::new(8 * 1024);
        let mut a = b.share();
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
        let b = Budget::new(8 * 1024);
        let mut a = b.share();
        a.grow(4 * 1024).await.unwrap();
        let mut c = b.share();
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
        let mut d = b.share();
        assert_eq!(
            d.grow_whole(9 * 1024).await,
            Err(Exhausted),
            "larger than all"
        );
        d.grow_whole(2 * 1024).await.unwrap();
        assert_eq!(b.in_use(), 8 * 1024);
    }
}
