//! The HTTP/1.1 framing guard over arbitrary client bytes, delivered in arbitrary pieces:
//! never a panic; when nothing is rejected the bytes reach hyper unchanged, and when a head
//! is rejected hyper gets a prefix of them followed by the synthetic rejection request only.
#![no_main]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tollgate_proxy::guard::{H1Guard, check_head, chunk_size, head_end};

/// Yields `data` in pieces whose sizes come from `sizes` (cycled).
struct Pieces {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    n: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self
            .sizes
            .get(self.n % self.sizes.len().max(1))
            .copied()
            .unwrap_or(7);
        self.n += 1;
        let end = (self.pos + size.max(1)).min(self.data.len());
        let take = (end - self.pos).min(buf.remaining());
        let s = self.pos;
        buf.put_slice(&self.data[s..s + take]);
        self.pos += take;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let n_sizes = usize::from(k % 8).min(rest.len());
    let (sizes, input) = rest.split_at(n_sizes);
    let _ = check_head(input);
    let _ = head_end(input);
    let _ = chunk_size(input);
    let reader = Pieces {
        data: input.to_vec(),
        pos: 0,
        sizes: sizes.iter().map(|b| usize::from(*b) + 1).collect(),
        n: 0,
    };
    let verdict = Arc::new(std::sync::OnceLock::new());
    let mut g = H1Guard::new(reader, 1024, "tok".into(), verdict);
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 300];
    for _ in 0..100_000 {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut g).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    match g.rejected() {
        None => assert_eq!(out, input, "the guard changed the bytes"),
        Some(_) => {
            let synthetic = b"GET /.tollgate/rejected HTTP/1.1\r\n";
            let at = out
                .windows(synthetic.len())
                .rposition(|w| w == synthetic)
                .expect("a rejection injects its request");
            assert_eq!(
                &out[..at],
                &input[..at],
                "bytes before the rejection changed"
            );
        }
    }
});
