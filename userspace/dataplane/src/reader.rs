//! The ring buffer of payload events, read asynchronously over tokio's `AsyncFd`.

use std::io;

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::io::unix::AsyncFd;
use tollgate_common as abi;

use crate::{
    PayloadEvent,
    error::{DataplaneError, map_err},
    event::{KernelClock, decode_record},
};

/// Takes the ring buffer out of the object (once).
pub(crate) fn take_reader(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, DataplaneError> {
    let map = ebpf
        .take_map(abi::MAP_EVENTS)
        .ok_or(DataplaneError::MissingMap(abi::MAP_EVENTS))?;
    RingBuf::try_from(map).map_err(map_err(abi::MAP_EVENTS))
}

/// Async reader of [`PayloadEvent`]s.
pub struct EventReader {
    fd: AsyncFd<RingBuf<MapData>>,
    malformed: u64,
}

impl EventReader {
    #[allow(
        unsafe_code,
        reason = "tokio's fd registration is unsafe; invariant stated below"
    )]
    pub(crate) fn new(ring: RingBuf<MapData>) -> Result<Self, DataplaneError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(DataplaneError::NoTokioRuntime);
        }
        // SAFETY: the RingBuf owns its map fd (MapData) for its whole life and `as_raw_fd`
        // always returns that same fd; the AsyncFd owns the RingBuf and nothing swaps it.
        let fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DataplaneError::Io(io::Error::other(e.to_string())))?;
        Ok(Self { fd, malformed: 0 })
    }

    /// The next event; waits until one arrives. Records that cannot be decoded are counted
    /// ([`EventReader::malformed`]) and skipped.
    pub async fn next(&mut self) -> Result<PayloadEvent, DataplaneError> {
        loop {
            if let Some(ev) = self.try_next() {
                return Ok(ev);
            }
            let mut guard = self.fd.readable_mut().await?;
            guard.clear_ready();
        }
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<PayloadEvent> {
        let clock = KernelClock::now();
        let ring = self.fd.get_mut();
        loop {
            let item = ring.next()?;
            match decode_record(&item, &clock) {
                Ok(ev) => return Some(ev),
                Err(e) => {
                    self.malformed += 1;
                    tracing::debug!(error = %e, "undecodable ring-buffer record");
                }
            }
        }
    }

    /// Records skipped because they could not be decoded.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}
