//! TLS ClientHello: a tri-state streaming parser over a TCP byte stream (TLS records) or a
//! QUIC CRYPTO stream (bare handshake messages), and the JA4 client fingerprint.
//!
//! Feed the bytes seen so far from the start of the stream; the answer is
//! [`HelloStatus::Parsed`], [`HelloStatus::NeedMore`] (at least that many more bytes) or
//! [`HelloStatus::NotTls`]. A hello split over any number of segments or TLS records parses
//! the same as one fed whole. Malformed hellos (lengths that disagree) are typed errors.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::reader::Reader;

/// Largest ClientHello handshake message we buffer (Suricata-style cap). Real ones are
/// < 3 KB; nDPI's corpus has an 11 KB one.
pub const MAX_HELLO_LEN: usize = 64 * 1024;
/// Largest TLS record we accept as plausibly TLS (2^14 plus the ciphertext expansion).
pub const MAX_RECORD_LEN: usize = 16384 + 2048;
/// Longest server name kept (DNS names are at most 253 characters).
pub const MAX_SNI_LEN: usize = 255;
/// At most this many ALPN protocols are kept.
pub const MAX_ALPN: usize = 16;

pub const EXT_SERVER_NAME: u16 = 0x0000;
pub const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
pub const EXT_ALPN: u16 = 0x0010;
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
pub const EXT_KEY_SHARE: u16 = 0x0033;
pub const EXT_ECH: u16 = 0xfe0d;
pub const EXT_ESNI: u16 = 0xffce;

const CONTENT_HANDSHAKE: u8 = 0x16;
const HS_CLIENT_HELLO: u8 = 0x01;

/// GREASE values (RFC 8701): 0x?a?a with equal bytes.
pub fn is_grease(v: u16) -> bool {
    (v & 0x0f0f) == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// The encrypted_client_hello extension as seen in an outer ClientHello. GREASE ECH
/// (RFC 9849 section 6.2) is built to look exactly like this, so the hello alone cannot
/// tell them apart; the flow table does when DNS HTTPS records for the name were seen
/// (`tollgate_discovery::flow_table::FlowMeta::ech_grease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchInfo {
    /// 0 = outer, 1 = inner (an inner hello should never be seen in clear).
    pub ech_type: u8,
    pub kdf_id: u16,
    pub aead_id: u16,
    pub config_id: u8,
    pub enc_len: usize,
    pub payload_len: usize,
}

/// Everything Tollgate keeps from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHello {
    /// legacy_version of the first TLS record (0 when parsed from a QUIC CRYPTO stream).
    pub record_version: u16,
    pub legacy_version: u16,
    /// server_name host_name, as sent (not lower-cased).
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    /// supported_versions, GREASE included, in order.
    pub supported_versions: Vec<u16>,
    pub cipher_suites: Vec<u16>,
    /// Extension types in the order sent, GREASE included.
    pub extensions: Vec<u16>,
    pub supported_groups: Vec<u16>,
    /// Groups of the key shares offered (e.g. 0x11ec X25519MLKEM768).
    pub key_share_groups: Vec<u16>,
    pub signature_algorithms: Vec<u16>,
    pub ech: Option<EchInfo>,
    /// The legacy draft ESNI extension (0xffce) is present.
    pub esni: bool,
    /// Length of the handshake message (without the 4-byte header).
    pub hello_len: usize,
    /// Extensions whose content did not parse (skipped; the others are kept).
    pub malformed_extensions: u16,
    /// The extension list ended before its announced length (or mid-extension).
    pub extensions_truncated: bool,
}

/// Outcome of feeding the bytes of a stream seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per flow and moved straight into the flow table; boxing costs an allocation on the hot path"
)]
pub enum HelloStatus {
    Parsed(ClientHello),
    /// The hello is incomplete: at least this many more bytes are needed.
    NeedMore(usize),
    /// The stream does not start with a TLS ClientHello.
    NotTls,
}

/// Which transport carried the hello (first character of JA4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Quic,
    Dtls,
}

/// Whether `buf` starts like a TLS handshake record holding a ClientHello (content type,
/// major version 3, handshake type; nothing else is checked): a cheap sign, from one
/// segment, that its sender is the client.
pub fn starts_client_hello_record(buf: &[u8]) -> bool {
    buf.len() >= 6
        && buf.first() == Some(&CONTENT_HANDSHAKE)
        && buf.get(1) == Some(&3)
        && buf.get(5) == Some(&HS_CLIENT_HELLO)
}

/// Parse a TCP stream that starts with TLS records. `buf` is every byte the client sent from
/// the start of the stream (or a prefix of it).
pub fn parse_record_stream(buf: &[u8]) -> Result<HelloStatus> {
    // Quick rejection on the first record header, then a fast path when the whole hello
    // sits in the first record, else gather handshake bytes across records.
    let Some(&ct) = buf.first() else {
        return Ok(HelloStatus::NeedMore(5));
    };
    if ct != CONTENT_HANDSHAKE {
        return Ok(HelloStatus::NotTls);
    }
    if buf.get(1).is_some_and(|&m| m != 3) || buf.get(2).is_some_and(|&m| m > 4) {
        return Ok(HelloStatus::NotTls);
    }
    if buf.len() < 5 {
        return Ok(HelloStatus::NeedMore(5 - buf.len()));
    }
    let record_version = u16::from_be_bytes([buf[1], buf[2]]);
    let rec_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if rec_len == 0 || rec_len > MAX_RECORD_LEN {
        return Ok(HelloStatus::NotTls);
    }
    if buf.get(5).is_some_and(|&t| t != HS_CLIENT_HELLO) {
        return Ok(HelloStatus::NotTls);
    }
    if let (Some(rec), Some(hs_hdr)) = (buf.get(5..5 + rec_len), buf.get(5..9)) {
        let hs_len = u32::from_be_bytes([0, hs_hdr[1], hs_hdr[2], hs_hdr[3]]) as usize;
        if let Some(body) = rec.get(4..4 + hs_len) {
            let mut ch = parse_client_hello_body(body)?;
            ch.record_version = record_version;
            return Ok(HelloStatus::Parsed(ch));
        }
    }
    slow_record_stream(buf, record_version)
}

/// The hello spans TLS records (or the buffer ends mid-record): collect handshake bytes.
fn slow_record_stream(buf: &[u8], record_version: u16) -> Result<HelloStatus> {
    let mut hs: Vec<u8> = Vec::new();
    let mut pos = 0usize;
    loop {
        // Need the record header.
        let Some(hdr) = buf.get(pos..pos + 5) else {
            let have = buf.len().saturating_sub(pos);
            return Ok(HelloStatus::NeedMore(5 - have));
        };
        if hdr[0] != CONTENT_HANDSHAKE {
            return Err(Error::BadValue {
                what: "tls: record type inside a fragmented hello",
                value: u64::from(hdr[0]),
            });
        }
        let rl = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if rl == 0 || rl > MAX_RECORD_LEN {
            return Err(Error::BadValue {
                what: "tls: record length",
                value: rl as u64,
            });
        }
        let start = pos + 5;
        let avail_end = buf.len().min(start + rl);
        let frag = buf.get(start..avail_end).unwrap_or(&[]);
        hs.extend_from_slice(frag);
        if hs.len() >= 4 {
            if hs.first() != Some(&HS_CLIENT_HELLO) {
                return Ok(HelloStatus::NotTls);
            }
            let hs_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if hs_len > MAX_HELLO_LEN {
                return Err(Error::Limit {
                    what: "tls: client hello length",
                    max: MAX_HELLO_LEN,
                });
            }
            if let Some(body) = hs.get(4..4 + hs_len) {
                let mut ch = parse_client_hello_body(body)?;
                ch.record_version = record_version;
                return Ok(HelloStatus::Parsed(ch));
            }
            if avail_end < start + rl {
                // Mid-record: the rest of this record or the rest of the hello, whichever
                // is smaller.
                let missing_rec = start + rl - avail_end;
                let missing_hs = 4 + hs_len - hs.len();
                return Ok(HelloStatus::NeedMore(missing_rec.min(missing_hs)));
            }
        } else if avail_end < start + rl {
            return Ok(HelloStatus::NeedMore(
                (start + rl - avail_end).min(4 - hs.len()),
            ));
        }
        pos = start + rl;
    }
}

/// Parse a QUIC CRYPTO stream (bare handshake messages, no record layer) from offset 0.
pub fn parse_handshake_stream(buf: &[u8]) -> Result<HelloStatus> {
    let Some(&t) = buf.first() else {
        return Ok(HelloStatus::NeedMore(4));
    };
    if t != HS_CLIENT_HELLO {
        return Ok(HelloStatus::NotTls);
    }
    let Some(hdr) = buf.get(..4) else {
        return Ok(HelloStatus::NeedMore(4 - buf.len()));
    };
    let hs_len = u32::from_be_bytes([0, hdr[1], hdr[2], hdr[3]]) as usize;
    if hs_len > MAX_HELLO_LEN {
        return Err(Error::Limit {
            what: "tls: client hello length",
            max: MAX_HELLO_LEN,
        });
    }
    match buf.get(4..4 + hs_len) {
        Some(body) => Ok(HelloStatus::Parsed(parse_client_hello_body(body)?)),
        None => Ok(HelloStatus::NeedMore(4 + hs_len - buf.len())),
    }
}

/// Parse the body of a ClientHello handshake message (after type and 24-bit length).
pub fn parse_client_hello_body(body: &[u8]) -> Result<ClientHello> {
    let mut r = Reader::new(body, "tls: client hello");
    let mut ch = ClientHello {
        hello_len: body.len(),
        legacy_version: r.u16()?,
        ..ClientHello::default()
    };
    r.skip(32)?; // random
    let sid = r.vec8()?;
    if sid.len() > 32 {
        return Err(Error::BadValue {
            what: "tls: session id length",
            value: sid.len() as u64,
        });
    }
    let suites = r.vec16()?;
    if suites.len() % 2 != 0 {
        return Err(Error::BadValue {
            what: "tls: cipher suites length",
            value: suites.len() as u64,
        });
    }
    ch.cipher_suites = u16_list(suites);
    r.vec8()?; // compression methods
    if r.is_empty() {
        return Ok(ch); // SSL 3.0-style hello without extensions
    }
    // Extensions are parsed leniently, as middleboxes must: one whose content does not
    // parse is counted and skipped, and a list cut short keeps the extensions before the
    // cut. The framing before them (version, random, suites) must be sound.
    let ext_len = usize::from(r.u16()?);
    let exts = match r.take(ext_len) {
        Ok(e) => e,
        Err(_) => {
            ch.extensions_truncated = true;
            r.rest()
        }
    };
    let mut er = Reader::new(exts, "tls: extensions");
    ch.extensions.reserve(exts.len() / 8);
    while !er.is_empty() {
        let (Ok(ty), Ok(data)) = (er.u16(), er.vec16()) else {
            ch.extensions_truncated = true;
            break;
        };
        ch.extensions.push(ty);
        if let Err(e) = parse_extension(&mut ch, ty, data) {
            if matches!(e, Error::Limit { .. }) {
                return Err(e);
            }
            ch.malformed_extensions = ch.malformed_extensions.saturating_add(1);
        }
    }
    Ok(ch)
}

fn u16_list(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

fn parse_extension(ch: &mut ClientHello, ty: u16, data: &[u8]) -> Result<()> {
    let mut r = Reader::new(data, "tls: extension");
    match ty {
        EXT_SERVER_NAME => {
            if data.is_empty() {
                return Ok(()); // a server's empty echo; not expected from a client, harmless
            }
            let list = r.vec16()?;
            let mut lr = Reader::new(list, "tls: server name list");
            while !lr.is_empty() {
                let name_type = lr.u8()?;
                let name = lr.vec16()?;
                if name_type == 0 && ch.sni.is_none() {
                    if name.len() > MAX_SNI_LEN {
                        return Err(Error::Limit {
                            what: "tls: server name length",
                            max: MAX_SNI_LEN,
                        });
                    }
                    if !name.is_empty() {
                        ch.sni = Some(String::from_utf8_lossy(name).into_owned());
                    }
                }
            }
        }
        EXT_ALPN => {
            let list = r.vec16()?;
            let mut lr = Reader::new(list, "tls: alpn list");
            while !lr.is_empty() {
                let p = lr.vec8()?;
                if ch.alpn.len() < MAX_ALPN {
                    ch.alpn.push(String::from_utf8_lossy(p).into_owned());
                }
            }
        }
        EXT_SUPPORTED_VERSIONS => {
            let list = r.vec8()?;
            ch.supported_versions = u16_list(list);
        }
        EXT_SUPPORTED_GROUPS => {
            let list = r.vec16()?;
            ch.supported_groups = u16_list(list);
        }
        EXT_SIGNATURE_ALGORITHMS => {
            let list = r.vec16()?;
            ch.signature_algorithms = u16_list(list);
        }
        EXT_KEY_SHARE => {
            let list = r.vec16()?;
            let mut lr = Reader::new(list, "tls: key share list");
            while !lr.is_empty() {
                let group = lr.u16()?;
                lr.vec16()?;
                ch.key_share_groups.push(group);
            }
        }
        EXT_ECH => {
            let ech_type = r.u8()?;
            let mut info = EchInfo {
                ech_type,
                kdf_id: 0,
                aead_id: 0,
                config_id: 0,
                enc_len: 0,
                payload_len: 0,
            };
            if ech_type == 0 {
                info.kdf_id = r.u16()?;
                info.aead_id = r.u16()?;
                info.config_id = r.u8()?;
                info.enc_len = r.vec16()?.len();
                info.payload_len = r.vec16()?.len();
            }
            ch.ech = Some(info);
        }
        EXT_ESNI => ch.esni = true,
        _ => {}
    }
    Ok(())
}

impl ClientHello {
    /// The highest non-GREASE version offered (supported_versions, else legacy_version).
    pub fn max_version(&self) -> u16 {
        self.supported_versions
            .iter()
            .copied()
            .filter(|v| !is_grease(*v))
            .max()
            .unwrap_or(self.legacy_version)
    }

    /// Offers a post-quantum hybrid key share (X25519MLKEM768 0x11ec, or the draft
    /// X25519Kyber768 0x6399).
    pub fn has_pq_key_share(&self) -> bool {
        self.key_share_groups
            .iter()
            .any(|g| matches!(*g, 0x11ec | 0x6399 | 0x11eb | 0x11ed))
    }

    /// The JA4 client fingerprint (FoxIO JA4 specification), e.g.
    /// `t13d1516h2_8daaf6152771_e5627efa2ab1`.
    pub fn ja4(&self, transport: Transport) -> String {
        let proto = match transport {
            Transport::Tcp => 't',
            Transport::Quic => 'q',
            Transport::Dtls => 'd',
        };
        let ver = match self.max_version() {
            0x0304 => "13",
            0x0303 => "12",
            0x0302 => "11",
            0x0301 => "10",
            0x0300 => "s3",
            0x0002 => "s2",
            0xfeff => "d1",
            0xfefd => "d2",
            0xfefc => "d3",
            _ => "00",
        };
        let sni = if self.extensions.contains(&EXT_SERVER_NAME) {
            'd'
        } else {
            'i'
        };
        let mut ciphers: Vec<u16> = self
            .cipher_suites
            .iter()
            .copied()
            .filter(|c| !is_grease(*c))
            .collect();
        let ext_count = self.extensions.iter().filter(|e| !is_grease(**e)).count();
        let alpn = alpn_chars(self.alpn.first().map(String::as_bytes));
        let a = format!(
            "{proto}{ver}{sni}{:02}{:02}{alpn}",
            ciphers.len().min(99),
            ext_count.min(99)
        );
        ciphers.sort_unstable();
        let b = truncated_hash(&hex_list(&ciphers));
        let mut exts: Vec<u16> = self
            .extensions
            .iter()
            .copied()
            .filter(|e| !is_grease(*e) && *e != EXT_SERVER_NAME && *e != EXT_ALPN)
            .collect();
        exts.sort_unstable();
        let c = if exts.is_empty() {
            "000000000000".to_string()
        } else {
            let mut s = hex_list(&exts);
            let sigs: Vec<u16> = self
                .signature_algorithms
                .iter()
                .copied()
                .filter(|v| !is_grease(*v))
                .collect();
            if !sigs.is_empty() {
                s.push('_');
                s.push_str(&hex_list(&sigs));
            }
            truncated_hash(&s)
        };
        format!("{a}_{b}_{c}")
    }
}

fn alpn_chars(first: Option<&[u8]>) -> String {
    let Some(p) = first else {
        return "00".into();
    };
    let (Some(&f), Some(&l)) = (p.first(), p.last()) else {
        return "00".into();
    };
    if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() {
        format!("{}{}", f as char, l as char)
    } else {
        let hex = |b: u8| char::from_digit(u32::from(b), 16).unwrap_or('0');
        format!("{}{}", hex(f >> 4), hex(l & 0x0f))
    }
}

fn hex_list(v: &[u16]) -> String {
    let mut s = String::with_capacity(v.len() * 5);
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{x:04x}"));
    }
    s
}

fn truncated_hash(s: &str) -> String {
    if s.is_empty() {
        return "000000000000".into();
    }
    let d = Sha256::digest(s.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_record_is_told_from_its_first_bytes() {
        assert!(starts_client_hello_record(&[0x16, 3, 1, 0, 200, 1]));
        // Another handshake message, another content type, or too short: no.
        assert!(!starts_client_hello_record(&[0x16, 3, 3, 0, 200, 2]));
        assert!(!starts_client_hello_record(&[0x17, 3, 3, 0, 200, 1]));
        assert!(!starts_client_hello_record(&[0x16, 3, 1, 0, 200]));
    }

    /// A TLS 1.3 ClientHello from curl (OpenSSL), SNI example.ulfheim.net, from RFC 8448-like
    /// layout; built here field by field so that every length is exercised.
    pub(crate) fn sample_hello(sni: &str) -> Vec<u8> {
        let mut exts = Vec::new();
        // SNI
        let name = sni.as_bytes();
        let mut sn = Vec::new();
        sn.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        sn.push(0);
        sn.extend_from_slice(&(name.len() as u16).to_be_bytes());
        sn.extend_from_slice(name);
        push_ext(&mut exts, 0x0000, &sn);
        push_ext(&mut exts, 0x0a0a, &[]);
        push_ext(
            &mut exts,
            0x0010,
            &[
                0, 12, 2, b'h', b'2', 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1',
            ],
        );
        push_ext(&mut exts, 0x002b, &[4, 0x03, 0x04, 0x03, 0x03]);
        push_ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
        push_ext(&mut exts, 0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]);
        let mut ks = vec![0, 36, 0x00, 0x1d, 0, 32];
        ks.extend_from_slice(&[7u8; 32]);
        push_ext(&mut exts, 0x0033, &ks);
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[1u8; 32]);
        body.push(32);
        body.extend_from_slice(&[2u8; 32]);
        body.extend_from_slice(&[0, 6, 0x1a, 0x1a, 0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        hs
    }

    fn push_ext(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    pub(crate) fn in_records(hs: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in hs.chunks(chunk) {
            out.extend_from_slice(&[0x16, 0x03, 0x01]);
            out.extend_from_slice(&(c.len() as u16).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    #[test]
    fn parses_fields() {
        let hs = sample_hello("www.example.com");
        let stream = in_records(&hs, 16384);
        let HelloStatus::Parsed(ch) = parse_record_stream(&stream).unwrap() else {
            panic!("not parsed");
        };
        assert_eq!(ch.sni.as_deref(), Some("www.example.com"));
        assert_eq!(ch.alpn, vec!["h2", "http/1.1"]);
        assert_eq!(ch.supported_versions, vec![0x0304, 0x0303]);
        assert_eq!(ch.cipher_suites, vec![0x1a1a, 0x1301, 0x1302]);
        assert_eq!(ch.key_share_groups, vec![0x001d]);
        assert_eq!(ch.max_version(), 0x0304);
        assert_eq!(ch.record_version, 0x0301);
        assert!(ch.ja4(Transport::Tcp).starts_with("t13d0206h2_"));
    }

    #[test]
    fn split_over_records_and_prefixes() {
        let hs = sample_hello("a.example");
        let whole = parse_record_stream(&in_records(&hs, 16384)).unwrap();
        for chunk in [1, 2, 3, 7, 50, 100] {
            let stream = in_records(&hs, chunk);
            assert_eq!(
                parse_record_stream(&stream).unwrap(),
                whole,
                "chunk {chunk}"
            );
            for cut in 0..stream.len() {
                match parse_record_stream(&stream[..cut]).unwrap() {
                    HelloStatus::NeedMore(n) => assert!(n >= 1 && cut + n <= stream.len()),
                    other => panic!("prefix {cut} of chunk {chunk}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn not_tls() {
        assert_eq!(
            parse_record_stream(b"GET / HTTP/1.1\r\n").unwrap(),
            HelloStatus::NotTls
        );
        assert_eq!(
            parse_record_stream(&[0x16, 0x02]).unwrap(),
            HelloStatus::NotTls
        );
        assert_eq!(
            parse_record_stream(&[0x16, 3, 3, 0, 5, 2]).unwrap(),
            HelloStatus::NotTls
        );
        assert_eq!(parse_record_stream(&[]).unwrap(), HelloStatus::NeedMore(5));
    }

    #[test]
    fn bad_lengths_are_flagged_or_errors_not_panics() {
        let mut hs = sample_hello("x.example");
        // Corrupt the extensions length to point past the end: the extensions that are
        // whole are kept and the hello is flagged.
        hs[4 + 2 + 32 + 1 + 32 + 2 + 6 + 2] = 0xff;
        let HelloStatus::Parsed(ch) = parse_record_stream(&in_records(&hs, 16384)).unwrap() else {
            panic!()
        };
        assert!(ch.extensions_truncated);
        assert_eq!(ch.sni.as_deref(), Some("x.example"));
        // Corrupt the cipher suites length: an error.
        let mut hs = sample_hello("x.example");
        hs[4 + 2 + 32 + 1 + 32] = 0xff;
        assert!(parse_record_stream(&in_records(&hs, 16384)).is_err());
    }

    /// The ClientHello of nDPI's tls_invalid_reads.pcap (GTP-tunnelled): its ALPN extension
    /// claims an 0xb889-byte list inside 11 bytes. The SNI before it must still be found.
    #[test]
    fn garbage_alpn_is_skipped() {
        let mut hs = sample_hello("e.crashlytics.com");
        let alpn_at = hs
            .windows(4)
            .position(|w| w == [0x00, 0x10, 0x00, 0x0e])
            .unwrap();
        hs[alpn_at + 4] = 0xb8;
        hs[alpn_at + 5] = 0x89;
        let HelloStatus::Parsed(ch) = parse_record_stream(&in_records(&hs, 16384)).unwrap() else {
            panic!()
        };
        assert_eq!(ch.sni.as_deref(), Some("e.crashlytics.com"));
        assert_eq!(ch.malformed_extensions, 1);
        assert!(ch.alpn.is_empty());
    }

    #[test]
    fn grease() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
    }
}
