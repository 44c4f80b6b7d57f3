//! HTTP/1 request heads (httparse): method, path, Host, User-Agent. Tri-state like the TLS
//! parser: a head split over segments answers `NeedMore` until its blank line arrives.

use crate::error::{Error, Result};

/// Headers examined per request.
pub const MAX_HEADERS: usize = 64;
/// Largest head buffered before giving up on it.
pub const MAX_HEAD_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Host header, as sent (may carry a port).
    pub host: Option<String>,
    pub user_agent: Option<String>,
    /// Length of the head, blank line included.
    pub head_len: usize,
}

impl RequestHead {
    /// The host name without a port (for CONNECT, the authority in the path).
    pub fn host_name(&self) -> Option<&str> {
        let h = match &self.host {
            Some(h) => h.as_str(),
            None if self.method == "CONNECT" => self.path.as_str(),
            None => return None,
        };
        let h = h.trim();
        let name = if let Some(rest) = h.strip_prefix('[') {
            rest.split(']').next().unwrap_or(rest)
        } else {
            match h.rsplit_once(':') {
                Some((n, p)) if p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => h,
            }
        };
        (!name.is_empty()).then_some(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpStatus {
    Parsed(RequestHead),
    /// At least one more byte is needed (HTTP gives no length for a head).
    NeedMore(usize),
    NotHttp,
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"CONNECT ",
    b"PATCH ",
    b"TRACE ",
];

/// Whether `buf` (a stream prefix) could start an HTTP/1 request.
pub fn looks_like_request(buf: &[u8]) -> bool {
    METHODS.iter().any(|m| {
        let n = m.len().min(buf.len());
        buf.get(..n) == m.get(..n) && !buf.is_empty()
    })
}

/// Parse the request head at the start of a client stream.
pub fn parse_request_head(buf: &[u8]) -> Result<HttpStatus> {
    if buf.is_empty() {
        return Ok(HttpStatus::NeedMore(1));
    }
    if !looks_like_request(buf) {
        return Ok(HttpStatus::NotHttp);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut head = RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                version: req.version.unwrap_or(1),
                host: None,
                user_agent: None,
                head_len: n,
            };
            for h in req.headers.iter() {
                if head.host.is_none() && h.name.eq_ignore_ascii_case("host") {
                    head.host = Some(String::from_utf8_lossy(h.value).trim().to_string());
                } else if head.user_agent.is_none() && h.name.eq_ignore_ascii_case("user-agent") {
                    head.user_agent = Some(String::from_utf8_lossy(h.value).into_owned());
                }
            }
            Ok(HttpStatus::Parsed(head))
        }
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD_LEN {
                Err(Error::Limit {
                    what: "http: head length",
                    max: MAX_HEAD_LEN,
                })
            } else {
                Ok(HttpStatus::NeedMore(1))
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(Error::Limit {
            what: "http: header count",
            max: MAX_HEADERS,
        }),
        Err(e) => Err(Error::Http(error_text(e))),
    }
}

fn error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid new line",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid version",
    }
}

/// For a head that never completed (capture ended, or cap reached): the Host from the
/// complete header lines seen so far.
pub fn partial_host(buf: &[u8]) -> Option<String> {
    if !looks_like_request(buf) {
        return None;
    }
    let mut lines = buf.split(|&b| b == b'\n');
    lines.next()?; // request line
    let mut complete: Vec<&[u8]> = lines.collect();
    complete.pop(); // the last piece has no newline yet
    for line in complete {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let (name, value) = line.split_at(colon);
            if name.eq_ignore_ascii_case(b"host") {
                let v = String::from_utf8_lossy(value.get(1..).unwrap_or(&[]))
                    .trim()
                    .to_string();
                return (!v.is_empty()).then_some(v);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: www.example.com:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

    #[test]
    fn parses_and_every_prefix_needs_more() {
        let HttpStatus::Parsed(h) = parse_request_head(REQ).unwrap() else {
            panic!()
        };
        assert_eq!(h.method, "GET");
        assert_eq!(h.path, "/index.html");
        assert_eq!(h.host_name(), Some("www.example.com"));
        assert_eq!(h.user_agent.as_deref(), Some("curl/8.5.0"));
        assert_eq!(h.head_len, REQ.len());
        for cut in 0..REQ.len() {
            assert!(
                matches!(
                    parse_request_head(&REQ[..cut]).unwrap(),
                    HttpStatus::NeedMore(_)
                ),
                "{cut}"
            );
        }
        assert_eq!(
            partial_host(&REQ[..60]).as_deref(),
            Some("www.example.com:8080")
        );
    }

    #[test]
    fn not_http_and_connect() {
        assert_eq!(
            parse_request_head(b"\x16\x03\x01").unwrap(),
            HttpStatus::NotHttp
        );
        assert_eq!(
            parse_request_head(b"HTTP/1.1 200 OK\r\n").unwrap(),
            HttpStatus::NotHttp
        );
        let HttpStatus::Parsed(h) =
            parse_request_head(b"CONNECT example.org:443 HTTP/1.1\r\n\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(h.host_name(), Some("example.org"));
    }
}
