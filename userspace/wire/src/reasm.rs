//! Small per-flow reassemblers with byte caps: a TCP one (sequence numbers, retransmits,
//! out-of-order segments, data that arrives before the segment we first saw) and a
//! QUIC CRYPTO-stream one (offsets). Both expose the contiguous prefix of the stream.
//!
//! They keep at most `cap` bytes of stream and at most [`MAX_PENDING_SEGMENTS`] out-of-order
//! pieces; past that, data is dropped and counted in `dropped_bytes`, never an error.

/// Out-of-order pieces kept per stream.
pub const MAX_PENDING_SEGMENTS: usize = 32;

/// Reassembles the start of one direction of a TCP stream.
#[derive(Debug, Clone)]
pub struct TcpReassembler {
    /// Sequence number of `data[0]`.
    base: Option<u32>,
    /// Whether `base` is known to be the stream start (SYN seen), so no data can precede it.
    anchored: bool,
    data: Vec<u8>,
    pending: Vec<(u32, Vec<u8>)>,
    cap: usize,
    /// Bytes that did not fit under the cap or the pending-piece limit.
    pub dropped_bytes: u64,
}

impl TcpReassembler {
    pub fn new(cap: usize) -> Self {
        TcpReassembler {
            base: None,
            anchored: false,
            data: Vec::new(),
            pending: Vec::new(),
            cap,
            dropped_bytes: 0,
        }
    }

    /// The SYN's sequence number: the stream starts at `isn + 1`.
    pub fn set_isn(&mut self, isn: u32) {
        let start = isn.wrapping_add(1);
        match self.base {
            None => {
                self.base = Some(start);
                self.anchored = true;
            }
            Some(b) if !self.anchored => {
                // Data was seen before the SYN (reordered capture): re-anchor if the
                // earlier data lies after the SYN.
                let off = b.wrapping_sub(start) as i32;
                if off >= 0 {
                    let data = std::mem::take(&mut self.data);
                    self.base = Some(start);
                    self.anchored = true;
                    if !data.is_empty() {
                        self.stash(b, data);
                    }
                    self.drain_pending();
                }
            }
            Some(_) => {}
        }
    }

    /// The contiguous stream bytes from the start.
    pub fn contiguous(&self) -> &[u8] {
        &self.data
    }

    /// Whether the cap was reached.
    pub fn is_full(&self) -> bool {
        self.data.len() >= self.cap
    }

    /// Add one segment's payload. Returns true when the contiguous prefix grew.
    pub fn insert(&mut self, seq: u32, payload: &[u8]) -> bool {
        if payload.is_empty() {
            return false;
        }
        let Some(base) = self.base else {
            self.base = Some(seq);
            let take = payload.len().min(self.cap);
            self.data
                .extend_from_slice(payload.get(..take).unwrap_or(&[]));
            self.dropped_bytes += (payload.len() - take) as u64;
            return true;
        };
        let rel = seq.wrapping_sub(base) as i32;
        if rel < 0 {
            let behind = rel.unsigned_abs() as usize;
            if self.anchored {
                // Data before the known stream start (a retransmit of the SYN's sequence
                // space): keep only what overlaps the stream.
                if behind < payload.len() {
                    return self.insert(base, payload.get(behind..).unwrap_or(&[]));
                }
                return false;
            }
            // We started mid-way (the first segment we saw was not the first sent):
            // rebase on the earlier segment and keep what we had as pending.
            if behind > self.cap {
                self.dropped_bytes += payload.len() as u64;
                return false;
            }
            let old = std::mem::take(&mut self.data);
            self.base = Some(seq);
            let take = payload.len().min(self.cap);
            self.data
                .extend_from_slice(payload.get(..take).unwrap_or(&[]));
            self.dropped_bytes += (payload.len() - take) as u64;
            if !old.is_empty() {
                self.stash(base, old);
            }
            self.drain_pending();
            return true;
        }
        let rel = rel as usize;
        let end = self.data.len();
        if rel > end {
            if rel >= self.cap {
                self.dropped_bytes += payload.len() as u64;
                return false;
            }
            self.stash(seq, payload.to_vec());
            return false;
        }
        let grew = self.append_overlapping(rel, payload);
        if grew {
            self.drain_pending();
        }
        grew
    }

    fn append_overlapping(&mut self, rel: usize, payload: &[u8]) -> bool {
        let end = self.data.len();
        let skip = end - rel;
        let Some(new) = payload.get(skip..) else {
            return false; // retransmit of bytes we have
        };
        if new.is_empty() {
            return false;
        }
        let room = self.cap.saturating_sub(end);
        let take = new.len().min(room);
        self.data.extend_from_slice(new.get(..take).unwrap_or(&[]));
        self.dropped_bytes += (new.len() - take) as u64;
        take > 0
    }

    /// Bytes held: the contiguous prefix plus out-of-order pieces.
    pub fn buffered(&self) -> usize {
        self.data.len() + self.pending.iter().map(|(_, d)| d.len()).sum::<usize>()
    }

    fn stash(&mut self, seq: u32, data: Vec<u8>) {
        // Out-of-order pieces count against the same cap as the stream.
        if self.pending.len() >= MAX_PENDING_SEGMENTS || self.buffered() + data.len() > self.cap {
            self.dropped_bytes += data.len() as u64;
            return;
        }
        self.pending.push((seq, data));
    }

    fn drain_pending(&mut self) {
        let Some(base) = self.base else { return };
        loop {
            let end = self.data.len();
            let mut progressed = false;
            let mut i = 0;
            while i < self.pending.len() {
                let (seq, _) = self.pending[i];
                let rel = seq.wrapping_sub(base) as i32;
                if rel < 0 || rel as usize <= self.data.len() {
                    let (seq, piece) = self.pending.swap_remove(i);
                    let rel = seq.wrapping_sub(base) as i32;
                    if rel < 0 {
                        let behind = rel.unsigned_abs() as usize;
                        if let Some(rest) = piece.get(behind..) {
                            progressed |= self.append_overlapping(0, rest);
                        }
                    } else {
                        progressed |= self.append_overlapping(rel as usize, &piece);
                    }
                } else {
                    i += 1;
                }
            }
            if !progressed || self.data.len() == end {
                break;
            }
        }
    }
}

/// Reassembles a QUIC CRYPTO stream from (offset, data) frames, in any order.
#[derive(Debug, Clone, Default)]
pub struct CryptoReassembler {
    data: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    cap: usize,
    pub dropped_bytes: u64,
}

impl CryptoReassembler {
    pub fn new(cap: usize) -> Self {
        CryptoReassembler {
            cap,
            ..Default::default()
        }
    }

    pub fn contiguous(&self) -> &[u8] {
        &self.data
    }

    /// Bytes held: the contiguous prefix plus out-of-order frames.
    pub fn buffered(&self) -> usize {
        self.data.len() + self.pending.iter().map(|(_, d)| d.len()).sum::<usize>()
    }

    /// Add one CRYPTO frame. Returns true when the contiguous prefix grew.
    pub fn insert(&mut self, offset: u64, frame: &[u8]) -> bool {
        let Ok(off) = usize::try_from(offset) else {
            self.dropped_bytes += frame.len() as u64;
            return false;
        };
        if off >= self.cap {
            self.dropped_bytes += frame.len() as u64;
            return false;
        }
        if off > self.data.len() {
            if self.pending.len() >= MAX_PENDING_SEGMENTS
                || self.buffered() + frame.len() > self.cap
            {
                self.dropped_bytes += frame.len() as u64;
            } else {
                self.pending.push((offset, frame.to_vec()));
            }
            return false;
        }
        let grew = self.append(off, frame);
        if grew {
            loop {
                let len = self.data.len();
                let mut progressed = false;
                let mut i = 0;
                while i < self.pending.len() {
                    if self.pending[i].0 as usize <= self.data.len() {
                        let (o, piece) = self.pending.swap_remove(i);
                        progressed |= self.append(o as usize, &piece);
                    } else {
                        i += 1;
                    }
                }
                if !progressed || self.data.len() == len {
                    break;
                }
            }
        }
        grew
    }

    fn append(&mut self, off: usize, frame: &[u8]) -> bool {
        let skip = self.data.len() - off;
        let Some(new) = frame.get(skip..) else {
            return false;
        };
        let take = new.len().min(self.cap.saturating_sub(self.data.len()));
        self.data.extend_from_slice(new.get(..take).unwrap_or(&[]));
        self.dropped_bytes += (new.len() - take) as u64;
        take > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_retransmit_and_out_of_order() {
        let mut r = TcpReassembler::new(100);
        r.set_isn(999);
        assert!(!r.insert(1005, b"fgh"));
        assert!(r.insert(1000, b"abc"));
        assert!(!r.insert(1000, b"abc")); // retransmit
        assert!(r.insert(1002, b"cde")); // overlap fills gap and releases "fgh"
        assert_eq!(r.contiguous(), b"abcdefgh");
    }

    #[test]
    fn data_before_first_seen_segment_is_prepended() {
        let mut r = TcpReassembler::new(100);
        r.insert(u32::MAX - 1, b"cd"); // wraps
        r.insert(u32::MAX - 3, b"ab");
        r.insert(0, b"ef");
        assert_eq!(r.contiguous(), b"abcdef");
    }

    #[test]
    fn cap_is_enforced() {
        let mut r = TcpReassembler::new(4);
        r.insert(10, b"abcdef");
        assert_eq!(r.contiguous(), b"abcd");
        assert_eq!(r.dropped_bytes, 2);
        assert!(r.is_full());
        assert!(!r.insert(100_000, b"zz"));
    }

    #[test]
    fn crypto_out_of_order() {
        let mut c = CryptoReassembler::new(64);
        assert!(!c.insert(4, b"efgh"));
        assert!(!c.insert(10, b"kl"));
        assert!(c.insert(0, b"abcd"));
        assert_eq!(c.contiguous(), b"abcdefgh");
        assert!(c.insert(7, b"hij"));
        assert_eq!(c.contiguous(), b"abcdefghijkl");
        assert!(!c.insert(u64::MAX, b"x"));
    }
}
