//! DNS messages over UDP and TCP (two-byte length prefix, possibly split): questions and
//! answers, names with compression (pointer-loop and length limits), A, AAAA, CNAME,
//! HTTPS/SVCB (ALPN, ECH config present), TTLs, and a helper that follows CNAME chains so
//! every address maps back to the name the client asked for.
//!
//! Limits follow Suricata's DNS parser: names at most [`MAX_NAME_LEN`] characters and
//! [`MAX_LABELS`] labels, at most [`MAX_POINTER_HOPS`] compression jumps, at most
//! [`MAX_RECORDS`] records kept per section (the rest sets `truncated_records`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::reader::Reader;

pub const MAX_NAME_LEN: usize = 255;
pub const MAX_LABELS: usize = 128;
pub const MAX_POINTER_HOPS: usize = 32;
pub const MAX_RECORDS: usize = 64;
pub const MAX_CNAME_HOPS: usize = 16;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SVCB: u16 = 64;
pub const TYPE_HTTPS: u16 = 65;

/// A decoded name. Shared: the many records whose owner is a compression pointer to the
/// question name share its one allocation.
pub type Name = Arc<str>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// HTTPS / SVCB record data (RFC 9460).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Svcb {
    pub priority: u16,
    pub target: String,
    pub alpn: Vec<String>,
    /// An `ech` SvcParam (ECHConfigList) is present.
    pub ech_config: bool,
    /// public_name values found in the ECHConfigList.
    pub ech_public_names: Vec<String>,
    pub ipv4_hints: Vec<Ipv4Addr>,
    pub ipv6_hints: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
    Svcb(Svcb),
    Other { rtype: u16, len: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RData,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    /// More answers than [`MAX_RECORDS`], or an answer that did not parse (the ones before
    /// it are kept).
    pub truncated_records: bool,
}

impl Message {
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0f) as u8
    }
    /// The first question's name.
    pub fn query_name(&self) -> Option<&str> {
        self.questions.first().map(|q| &*q.name)
    }

    /// Every A/AAAA answer (and HTTPS/SVCB address hint) mapped back through CNAME chains
    /// to the name the client asked: (address, asked name, ttl). The TTL is the smallest
    /// along the chain.
    pub fn address_map(&self) -> Vec<(IpAddr, String, u32)> {
        let mut out = Vec::new();
        let Some(qname) = self.query_name() else {
            return out;
        };
        // Names that alias qname (qname itself, then CNAME targets), with the min TTL.
        let mut chain: Vec<(String, u32)> = vec![(qname.to_ascii_lowercase(), u32::MAX)];
        for _ in 0..MAX_CNAME_HOPS {
            let mut added = false;
            for rec in &self.answers {
                if let RData::Cname(target) = &rec.data {
                    let owner = rec.name.to_ascii_lowercase();
                    let t = target.to_ascii_lowercase();
                    if let Some(ttl) = chain.iter().find(|(n, _)| *n == owner).map(|(_, t)| *t)
                        && !chain.iter().any(|(n, _)| *n == t)
                    {
                        chain.push((t, ttl.min(rec.ttl)));
                        added = true;
                    }
                }
            }
            if !added {
                break;
            }
        }
        for rec in &self.answers {
            let owner = rec.name.to_ascii_lowercase();
            let Some(ttl) = chain.iter().find(|(n, _)| *n == owner).map(|(_, t)| *t) else {
                continue;
            };
            let ttl = ttl.min(rec.ttl);
            match &rec.data {
                RData::A(a) => out.push((IpAddr::V4(*a), qname.to_string(), ttl)),
                RData::Aaaa(a) => out.push((IpAddr::V6(*a), qname.to_string(), ttl)),
                RData::Svcb(s) => {
                    for a in &s.ipv4_hints {
                        out.push((IpAddr::V4(*a), qname.to_string(), ttl));
                    }
                    for a in &s.ipv6_hints {
                        out.push((IpAddr::V6(*a), qname.to_string(), ttl));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Parse one DNS message (a UDP payload, or one TCP message without its length prefix).
pub fn parse_message(buf: &[u8]) -> Result<Message> {
    let mut r = Reader::new(buf, "dns: header");
    let id = r.u16()?;
    let flags = r.u16()?;
    let qd = r.u16()? as usize;
    let an = r.u16()? as usize;
    let _ns = r.u16()?;
    let _ar = r.u16()?;
    let mut m = Message {
        id,
        flags,
        ..Default::default()
    };
    if qd > MAX_RECORDS {
        return Err(Error::Limit {
            what: "dns: question count",
            max: MAX_RECORDS,
        });
    }
    let mut pos = r.pos();
    let mut names = NameCache::default();
    m.questions.reserve(qd);
    for _ in 0..qd {
        let (name, next) = names.name_at(buf, pos)?;
        let mut qr = Reader::new(buf.get(next..).unwrap_or(&[]), "dns: question");
        let qtype = qr.u16()?;
        let qclass = qr.u16()?;
        m.questions.push(Question {
            name,
            qtype,
            qclass,
        });
        pos = next + 4;
    }
    m.answers.reserve(an.min(MAX_RECORDS));
    for i in 0..an {
        if i >= MAX_RECORDS {
            m.truncated_records = true;
            break;
        }
        // A record that does not parse (a message cut by IP fragmentation or a snap length,
        // or garbage) ends the answers; the question and the answers before it are kept.
        let Ok((rec, next)) = read_record(buf, pos, &mut names) else {
            m.truncated_records = true;
            break;
        };
        m.answers.push(rec);
        pos = next;
    }
    Ok(m)
}

/// Names already decoded in this message, by start offset (a handful: a message names a
/// few things many times over).
#[derive(Default)]
struct NameCache {
    entries: Vec<(usize, Name)>,
}

impl NameCache {
    fn name_at(&mut self, buf: &[u8], pos: usize) -> Result<(Name, usize)> {
        // The common case: a bare pointer to a name decoded before.
        if let (Some(&hi), Some(&lo)) = (buf.get(pos), buf.get(pos + 1))
            && hi & 0xc0 == 0xc0
        {
            let target = (usize::from(hi & 0x3f) << 8) | usize::from(lo);
            if target < pos
                && let Some((_, n)) = self.entries.iter().find(|(o, _)| *o == target)
            {
                return Ok((n.clone(), pos + 2));
            }
        }
        let mut out = [0u8; NAME_BUF];
        let (len, next) = decode_name(buf, pos, &mut out)?;
        let n: Name = Arc::from(text(&out, len));
        if self.entries.len() < 16 {
            self.entries.push((pos, n.clone()));
        }
        Ok((n, next))
    }
}

fn read_record(buf: &[u8], pos: usize, names: &mut NameCache) -> Result<(Record, usize)> {
    let (name, next) = names.name_at(buf, pos)?;
    let mut r = Reader::new(buf.get(next..).unwrap_or(&[]), "dns: record");
    let rtype = r.u16()?;
    let class = r.u16()?;
    let ttl = r.u32()?;
    let rdata = r.vec16()?;
    let rdata_start = next + 10;
    let end = rdata_start + rdata.len();
    let data = match rtype {
        TYPE_A => match <[u8; 4]>::try_from(rdata) {
            Ok(a) => RData::A(Ipv4Addr::from(a)),
            Err(_) => {
                return Err(Error::BadLength {
                    what: "dns: A rdata",
                    len: rdata.len(),
                    avail: 4,
                });
            }
        },
        TYPE_AAAA => match <[u8; 16]>::try_from(rdata) {
            Ok(a) => RData::Aaaa(Ipv6Addr::from(a)),
            Err(_) => {
                return Err(Error::BadLength {
                    what: "dns: AAAA rdata",
                    len: rdata.len(),
                    avail: 16,
                });
            }
        },
        TYPE_CNAME => RData::Cname(names.name_at(buf, rdata_start)?.0),
        TYPE_HTTPS | TYPE_SVCB => RData::Svcb(parse_svcb(buf, rdata_start, rdata)?),
        _ => RData::Other {
            rtype,
            len: rdata.len(),
        },
    };
    Ok((
        Record {
            name,
            rtype,
            class,
            ttl,
            data,
        },
        end,
    ))
}

fn parse_svcb(msg: &[u8], start: usize, rdata: &[u8]) -> Result<Svcb> {
    let mut r = Reader::new(rdata, "dns: svcb");
    let priority = r.u16()?;
    // The target name is not compressed (RFC 9460) but read_name handles both.
    let (target, next) = read_name(msg, start + 2)?;
    r.skip(next - (start + 2))?;
    let mut s = Svcb {
        priority,
        target,
        ..Default::default()
    };
    while !r.is_empty() {
        let key = r.u16()?;
        let val = r.vec16()?;
        let mut vr = Reader::new(val, "dns: svcparam");
        match key {
            1 => {
                while !vr.is_empty() {
                    let p = vr.vec8()?;
                    if s.alpn.len() < 16 {
                        s.alpn.push(String::from_utf8_lossy(p).into_owned());
                    }
                }
            }
            4 => {
                for c in val.chunks_exact(4) {
                    if s.ipv4_hints.len() < 16 {
                        s.ipv4_hints.push(Ipv4Addr::new(c[0], c[1], c[2], c[3]));
                    }
                }
            }
            5 => {
                s.ech_config = true;
                s.ech_public_names = ech_public_names(val);
            }
            6 => {
                for c in val.chunks_exact(16) {
                    if let Ok(a) = <[u8; 16]>::try_from(c)
                        && s.ipv6_hints.len() < 16
                    {
                        s.ipv6_hints.push(Ipv6Addr::from(a));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// public_name of each ECHConfig (version 0xfe0d) in an ECHConfigList; others skipped.
fn ech_public_names(list: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut r = Reader::new(list, "dns: ech config list");
    let Ok(configs) = r.vec16() else { return out };
    let mut cr = Reader::new(configs, "dns: ech config");
    while let (Ok(version), Ok(body)) = (cr.u16(), cr.vec16()) {
        if version != 0xfe0d {
            continue;
        }
        let mut b = Reader::new(body, "dns: ech config contents");
        let name = (|| -> Result<&[u8]> {
            b.u8()?; // config_id
            b.u16()?; // kem_id
            b.vec16()?; // public_key
            b.vec16()?; // cipher_suites
            b.u8()?; // maximum_name_length
            b.vec8()
        })();
        if let Ok(n) = name
            && out.len() < 8
        {
            out.push(String::from_utf8_lossy(n).into_owned());
        }
    }
    out
}

/// Read a possibly compressed name at `pos`; returns the dotted name (no trailing dot;
/// bytes outside printable ASCII escaped as `\DDD`, as in zone files) and the offset just
/// past the name's in-place bytes.
pub fn read_name(buf: &[u8], pos: usize) -> Result<(String, usize)> {
    let mut out = [0u8; NAME_BUF];
    let (len, next) = decode_name(buf, pos, &mut out)?;
    Ok((text(&out, len).to_string(), next))
}

/// 255 wire bytes escape to at most 4 x 255 characters.
const NAME_BUF: usize = 4 * MAX_NAME_LEN;

fn text(out: &[u8; NAME_BUF], len: usize) -> &str {
    // Only printable ASCII is ever written.
    std::str::from_utf8(out.get(..len).unwrap_or(&[])).unwrap_or("")
}

/// Decode into a stack buffer, so the caller allocates once at the final size (names are
/// the bulk of a DNS message; growing a String label by label reallocates several times).
/// Returns the text length and the offset past the name's in-place bytes.
fn decode_name(buf: &[u8], pos: usize, out: &mut [u8; NAME_BUF]) -> Result<(usize, usize)> {
    let mut len = 0usize;
    let mut cur = pos;
    let mut end: Option<usize> = None;
    let mut hops = 0usize;
    let mut labels = 0usize;
    let mut wire_len = 0usize;
    loop {
        let l = *buf.get(cur).ok_or(Error::Truncated { what: "dns: name" })?;
        match l & 0xc0 {
            0x00 => {
                if l == 0 {
                    if end.is_none() {
                        end = Some(cur + 1);
                    }
                    break;
                }
                let l = usize::from(l);
                let label = buf
                    .get(cur + 1..cur + 1 + l)
                    .ok_or(Error::Truncated { what: "dns: label" })?;
                labels += 1;
                wire_len += l + 1;
                if labels > MAX_LABELS || wire_len > MAX_NAME_LEN {
                    return Err(Error::Limit {
                        what: "dns: name length",
                        max: MAX_NAME_LEN,
                    });
                }
                if len > 0 {
                    push(out, &mut len, b'.');
                }
                for &c in label {
                    if c.is_ascii_graphic() && c != b'.' && c != b'\\' {
                        push(out, &mut len, c);
                    } else {
                        push(out, &mut len, b'\\');
                        push(out, &mut len, b'0' + c / 100);
                        push(out, &mut len, b'0' + (c / 10) % 10);
                        push(out, &mut len, b'0' + c % 10);
                    }
                }
                cur += 1 + l;
            }
            0xc0 => {
                let lo = *buf.get(cur + 1).ok_or(Error::Truncated {
                    what: "dns: pointer",
                })?;
                let target = (usize::from(l & 0x3f) << 8) | usize::from(lo);
                if end.is_none() {
                    end = Some(cur + 2);
                }
                hops += 1;
                // Pointers must point strictly backwards: this alone rules out loops; the
                // hop cap bounds the work.
                if target >= cur || hops > MAX_POINTER_HOPS {
                    return Err(Error::DnsPointerLoop { offset: cur });
                }
                cur = target;
            }
            _ => {
                return Err(Error::BadValue {
                    what: "dns: label type",
                    value: u64::from(l),
                });
            }
        }
    }
    Ok((len, end.unwrap_or(pos + 1)))
}

fn push(out: &mut [u8], len: &mut usize, b: u8) {
    if let Some(slot) = out.get_mut(*len) {
        *slot = b;
        *len += 1;
    }
}

/// Outcome of feeding a DNS-over-TCP stream seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpStatus {
    /// One message parsed, and the bytes it took (prefix included).
    Parsed(Message, usize),
    NeedMore(usize),
}

/// Parse the first length-prefixed message of a DNS-over-TCP stream.
pub fn parse_tcp_stream(buf: &[u8]) -> Result<TcpStatus> {
    let Some(pfx) = buf.get(..2) else {
        return Ok(TcpStatus::NeedMore(2 - buf.len()));
    };
    let len = usize::from(u16::from_be_bytes([pfx[0], pfx[1]]));
    if len < 12 {
        return Err(Error::BadLength {
            what: "dns: tcp message",
            len,
            avail: 12,
        });
    }
    match buf.get(2..2 + len) {
        Some(msg) => Ok(TcpStatus::Parsed(parse_message(msg)?, 2 + len)),
        None => Ok(TcpStatus::NeedMore(2 + len - buf.len())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real response (dig www.github.com A via 1.1.1.1): CNAME www.github.com ->
    /// github.com, github.com A 140.82.121.3, built with compression pointers as servers do.
    pub(crate) fn github_response() -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0];
        m.extend_from_slice(b"\x03www\x06github\x03com\x00\x00\x01\x00\x01");
        // CNAME: name ptr to 12, type 5, class 1, ttl 3600, rdlen 2, ptr to 16 (github.com)
        m.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 0x0e, 0x10, 0, 2, 0xc0, 0x10]);
        // A: name ptr to 16, ttl 60, 140.82.121.3
        m.extend_from_slice(&[0xc0, 0x10, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 140, 82, 121, 3]);
        m
    }

    #[test]
    fn cname_chain_and_ttl() {
        let m = parse_message(&github_response()).unwrap();
        assert!(m.is_response());
        assert_eq!(m.query_name(), Some("www.github.com"));
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].data, RData::Cname("github.com".into()));
        let map = m.address_map();
        assert_eq!(
            map,
            vec![(
                IpAddr::V4(Ipv4Addr::new(140, 82, 121, 3)),
                "www.github.com".into(),
                60
            )]
        );
    }

    #[test]
    fn answers_cut_short_keep_the_question() {
        let full = github_response();
        // Cut inside the A record (as a first IP fragment or a snap length would).
        let m = parse_message(&full[..full.len() - 3]).unwrap();
        assert_eq!(m.query_name(), Some("www.github.com"));
        assert_eq!(m.answers.len(), 1);
        assert!(m.truncated_records);
        // Non-printable label bytes are escaped, dots inside labels too.
        let mut q = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(b"\x03a\x04.\x00\x00\x01\x00\x01");
        assert_eq!(parse_message(&q).unwrap().query_name(), Some("a\\004\\046"));
    }

    #[test]
    fn pointer_loop_is_an_error() {
        let mut m = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(
            parse_message(&m),
            Err(Error::DnsPointerLoop { .. })
        ));
        let mut m2 = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m2.extend_from_slice(&[0xc0, 14, 0xc0, 12]);
        assert!(parse_message(&m2).is_err());
    }

    #[test]
    fn long_names_hit_the_limit() {
        let mut m = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(parse_message(&m), Err(Error::Limit { .. })));
    }

    #[test]
    fn tcp_split() {
        let msg = github_response();
        let mut stream = (msg.len() as u16).to_be_bytes().to_vec();
        stream.extend_from_slice(&msg);
        for cut in 0..stream.len() {
            assert!(matches!(
                parse_tcp_stream(&stream[..cut]).unwrap(),
                TcpStatus::NeedMore(_)
            ));
        }
        assert!(
            matches!(parse_tcp_stream(&stream).unwrap(), TcpStatus::Parsed(_, n) if n == stream.len())
        );
    }

    #[test]
    fn https_record_with_alpn_and_ech() {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        m.extend_from_slice(b"\x02cf\x03com\x00\x00\x41\x00\x01");
        let mut rd = vec![0, 1, 0]; // priority 1, target "."
        rd.extend_from_slice(&[0, 1, 0, 6, 2, b'h', b'3', 2, b'h', b'2']);
        // ech: ECHConfigList with one config, public_name "cloudflare-ech.com"
        let pn = b"cloudflare-ech.com";
        let mut cfg = vec![7, 0, 0x20, 0, 1, 0xaa, 0, 4, 0, 1, 0, 1, 0];
        cfg.push(pn.len() as u8);
        cfg.extend_from_slice(pn);
        cfg.extend_from_slice(&[0, 0]);
        let mut ech = vec![0xfe, 0x0d];
        ech.extend_from_slice(&(cfg.len() as u16).to_be_bytes());
        ech.extend_from_slice(&cfg);
        let mut list = (ech.len() as u16).to_be_bytes().to_vec();
        list.extend_from_slice(&ech);
        rd.extend_from_slice(&[0, 5]);
        rd.extend_from_slice(&(list.len() as u16).to_be_bytes());
        rd.extend_from_slice(&list);
        rd.extend_from_slice(&[0, 4, 0, 4, 104, 16, 1, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 65, 0, 1, 0, 0, 1, 0]);
        m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
        m.extend_from_slice(&rd);
        let msg = parse_message(&m).unwrap();
        let RData::Svcb(s) = &msg.answers[0].data else {
            panic!()
        };
        assert_eq!(s.alpn, vec!["h3", "h2"]);
        assert!(s.ech_config);
        assert_eq!(s.ech_public_names, vec!["cloudflare-ech.com"]);
        assert_eq!(msg.address_map().len(), 1);
    }
}
