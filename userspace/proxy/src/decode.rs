//! Content codings of bodies under inspection. The proxy forwards a body exactly as the
//! origin (or the client) sent it, and inspects its decoded form: gzip, deflate (zlib or raw),
//! brotli and zstd, in the order `Content-Encoding` lists them. Decoding is bounded by the
//! inspection limit, so a compression bomb costs at most that much memory.
//!
//! Requests to steered apps offer only codings the proxy can decode (`Accept-Encoding` is
//! narrowed), so that an origin never answers in one it cannot inspect (for example
//! Chrome's shared-dictionary codings `dcb`/`dcz`).

use std::borrow::Cow;
use std::io::Read;

use http::{HeaderMap, HeaderValue, header};

/// One content coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    fn parse(token: &str) -> Option<Option<Coding>> {
        match token.trim().to_ascii_lowercase().as_str() {
            "" | "identity" => Some(None),
            "gzip" | "x-gzip" => Some(Some(Coding::Gzip)),
            "deflate" => Some(Some(Coding::Deflate)),
            "br" => Some(Some(Coding::Brotli)),
            "zstd" => Some(Some(Coding::Zstd)),
            _ => None,
        }
    }
}

/// The codings a `Content-Encoding` value lists, in the order they were applied; `Err` names
/// one the proxy cannot decode.
pub fn codings(content_encoding: Option<&str>) -> Result<Vec<Coding>, String> {
    let Some(v) = content_encoding else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for token in v.split(',') {
        match Coding::parse(token) {
            Some(Some(c)) => out.push(c),
            Some(None) => {}
            None => return Err(token.trim().to_string()),
        }
    }
    Ok(out)
}

/// The decoded form of a body, for inspection.
#[derive(Debug)]
pub struct Decoded<'a> {
    pub bytes: Cow<'a, [u8]>,
    /// More decoded bytes exist than the limit allowed (or the input was a prefix).
    pub truncated: bool,
}

/// Decodes `body` (`complete`: the whole body; otherwise a prefix, whose decoding stops
/// where the prefix does) into at most `limit` bytes. An error says why the body cannot be
/// inspected (an unknown coding, corrupt data).
pub fn decode<'a>(
    content_encoding: Option<&str>,
    body: &'a [u8],
    complete: bool,
    limit: usize,
) -> Result<Decoded<'a>, String> {
    decode_budgeted(content_encoding, body, complete, limit, &mut |_| true)
}

/// [`decode`], asking `reserve` before holding more decoded bytes: it receives the total
/// decoded so far (every stage of stacked codings counted) and returns false when that
/// memory is not available, which fails the decoding.
pub fn decode_budgeted<'a>(
    content_encoding: Option<&str>,
    body: &'a [u8],
    complete: bool,
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<Decoded<'a>, String> {
    let list = codings(content_encoding).map_err(|c| {
        format!("the body is in the {c:?} content coding, which cannot be inspected")
    })?;
    let mut data: Cow<'a, [u8]> = Cow::Borrowed(body);
    let mut truncated = !complete;
    let mut held = 0usize;
    for coding in list.iter().rev() {
        let (out, cut) = decode_one(*coding, &data, !truncated, limit, &mut |n| {
            reserve(held.saturating_add(n))
        })?;
        held = held.saturating_add(out.len());
        truncated |= cut;
        data = Cow::Owned(out);
    }
    Ok(Decoded {
        bytes: data,
        truncated,
    })
}

fn decode_one(
    coding: Coding,
    input: &[u8],
    complete: bool,
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> Result<(Vec<u8>, bool), String> {
    let name = match coding {
        Coding::Gzip => "gzip",
        Coding::Deflate => "deflate",
        Coding::Brotli => "br",
        Coding::Zstd => "zstd",
    };
    let result = match coding {
        Coding::Gzip => read_bounded(
            flate2::read::MultiGzDecoder::new(input),
            complete,
            limit,
            reserve,
        ),
        Coding::Deflate => {
            // RFC 9110 says zlib; some servers send a raw deflate stream.
            read_bounded(
                flate2::read::ZlibDecoder::new(input),
                complete,
                limit,
                reserve,
            )
            .or_else(|_| {
                read_bounded(
                    flate2::read::DeflateDecoder::new(input),
                    complete,
                    limit,
                    reserve,
                )
            })
        }
        Coding::Brotli => read_bounded(
            brotli_decompressor::Decompressor::new(input, 4096),
            complete,
            limit,
            reserve,
        ),
        Coding::Zstd => match ruzstd::decoding::StreamingDecoder::new(input) {
            Ok(d) => read_bounded(d, complete, limit, reserve),
            Err(e) if complete => Err(std::io::Error::other(e.to_string())),
            // A prefix too short to hold the frame header: nothing decoded yet.
            Err(_) => Ok((Vec::new(), true)),
        },
    };
    result.map_err(|e| format!("the {name} body could not be decoded for inspection: {e}"))
}

/// The error text of a decoding stopped by its memory reservation.
pub const BUDGET_ERROR: &str = "the inspection memory budget is exhausted";

/// Reads up to `limit` bytes; `true` when more were there (or the input ended early while
/// `complete` is false).
fn read_bounded(
    mut r: impl Read,
    complete: bool,
    limit: usize,
    reserve: &mut dyn FnMut(usize) -> bool,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok((out, false)),
            Ok(n) => {
                if !reserve(out.len().saturating_add(n).min(limit)) {
                    return Err(std::io::Error::other(BUDGET_ERROR));
                }
                let room = limit.saturating_sub(out.len());
                if n > room {
                    out.extend_from_slice(&buf[..room]);
                    return Ok((out, true));
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A prefix of a body ends inside the stream: what was decoded so far counts.
            Err(_) if !complete => return Ok((out, true)),
            Err(e) => return Err(e),
        }
    }
}

/// Codings offered to origins on behalf of clients of steered apps.
const DECODABLE: [&str; 6] = ["gzip", "x-gzip", "deflate", "br", "zstd", "identity"];

/// Narrows `Accept-Encoding` to the codings the proxy can decode (keeping their order and
/// weights), so that responses stay inspectable. A header that names none of them becomes
/// `identity`.
pub fn narrow_accept_encoding(headers: &mut HeaderMap) {
    let Some(v) = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
    else {
        if headers.contains_key(header::ACCEPT_ENCODING) {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        return;
    };
    let kept: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|t| {
            let name = t.split(';').next().unwrap_or("").trim();
            DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(name))
        })
        .collect();
    let narrowed = if kept.is_empty() {
        "identity".to_string()
    } else {
        kept.join(", ")
    };
    if narrowed != v
        && let Ok(h) = HeaderValue::from_str(&narrowed)
    {
        headers.insert(header::ACCEPT_ENCODING, h);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    const TEXT: &[u8] = b"card 4111 1111 1111 1111 and some more text to compress well, \
        card 4111 1111 1111 1111 again";

    #[test]
    fn identity_is_borrowed() {
        let d = decode(None, TEXT, true, 1 << 20).unwrap();
        assert!(matches!(d.bytes, Cow::Borrowed(_)));
        let d = decode(Some("identity"), TEXT, true, 1 << 20).unwrap();
        assert_eq!(&*d.bytes, TEXT);
    }

    #[test]
    fn gzip_deflate_and_stacked_codings_decode() {
        for (enc, body) in [
            ("gzip", gzip(TEXT)),
            ("x-gzip", gzip(TEXT)),
            ("deflate", zlib(TEXT)),
            ("deflate", raw_deflate(TEXT)),
            ("gzip, gzip", gzip(&gzip(TEXT))),
            ("deflate, GZIP", gzip(&zlib(TEXT))),
        ] {
            let d = decode(Some(enc), &body, true, 1 << 20).unwrap();
            assert_eq!((&*d.bytes, d.truncated), (TEXT, false), "{enc}");
        }
    }

    #[test]
    fn brotli_and_zstd_decode() {
        let mut br = Vec::new();
        brotli::BrotliCompress(
            &mut &TEXT[..],
            &mut br,
            &brotli::enc::BrotliEncoderParams::default(),
        )
        .unwrap();
        let d = decode(Some("br"), &br, true, 1 << 20).unwrap();
        assert_eq!(&*d.bytes, TEXT);
        // `printf 'hello tollgate\n' | zstd -c` (zstd 1.5).
        let zst = [
            0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58, 0x79, 0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
            0x20, 0x74, 0x6f, 0x6c, 0x6c, 0x67, 0x61, 0x74, 0x65, 0x0a, 0xbb, 0xc6, 0xd8, 0xdb,
        ];
        let d = decode(Some("zstd"), &zst, true, 1 << 20).unwrap();
        assert_eq!(&*d.bytes, b"hello tollgate\n");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 << 10);
        let d = decode(Some("gzip"), &bomb, true, 1 << 20).unwrap();
        assert_eq!((d.bytes.len(), d.truncated), (1 << 20, true));
    }

    #[test]
    fn a_prefix_decodes_as_far_as_it_goes() {
        let big: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let z = gzip(&big);
        let d = decode(Some("gzip"), &z[..z.len() / 2], false, 10 << 20).unwrap();
        assert!(d.truncated);
        assert!(!d.bytes.is_empty() && big.starts_with(&d.bytes));
    }

    #[test]
    fn unknown_and_corrupt_bodies_are_errors_not_panics() {
        assert!(decode(Some("dcb"), TEXT, true, 1 << 20).is_err());
        assert!(decode(Some("gzip"), TEXT, true, 1 << 20).is_err());
        assert!(decode(Some("br"), &[0xff; 64], true, 1 << 20).is_err());
        assert!(decode(Some("zstd"), &[0x28, 0xb5, 0x2f, 0xfd, 0xff], true, 1 << 20).is_err());
        let mut cut = gzip(TEXT);
        cut.truncate(cut.len() - 9);
        assert!(decode(Some("gzip"), &cut, true, 1 << 20).is_err());
    }

    #[test]
    fn accept_encoding_keeps_only_what_can_be_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br, zstd, dcb, dcz"),
        );
        narrow_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "gzip, deflate, br, zstd");
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("compress;q=0.5, gzip;q=1.0"),
        );
        narrow_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "gzip;q=1.0");
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("dcz"));
        narrow_accept_encoding(&mut h);
        assert_eq!(h[header::ACCEPT_ENCODING], "identity");
        let mut none = HeaderMap::new();
        narrow_accept_encoding(&mut none);
        assert!(none.is_empty());
    }
}
