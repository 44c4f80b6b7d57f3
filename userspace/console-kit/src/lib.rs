//! What Tollgate's two web consoles share: the hub's console (`tollgate-hub`, under
//! `/console/`) and the gateway's read-only local console (`tollgate`, `[console] listen`).
//! The gateway may not depend on the hub, so the pieces both render and answer with live
//! here, below both: the security headers every answer carries and the HTML page answer
//! ([`Headers`]), HTML escaping ([`esc`], [`attr`]), the risk badge ([`risk`]), the table
//! ([`table`]), a URL query component ([`q`]), and reading a request's query string
//! ([`query`]) and a cookie ([`cookie`]).
//!
//! It holds no state and does no I/O; each console keeps its own pages, routes, login and
//! policy (which is why [`Headers`] takes the Content-Security-Policy and referrer policy
//! as values: the hub's console runs its own scripts, the gateway's none).

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::Full;

/// Escapes text for a double-quoted attribute value.
pub use html_escape::encode_double_quoted_attribute as attr;
/// Escapes text for an element's content (`&`, `<`, `>`).
pub use html_escape::encode_text as esc;

/// A console's answer: a whole body, never streamed.
pub type Answer = Response<Full<Bytes>>;

/// The security headers a console puts on every answer. The consoles differ only in their
/// Content-Security-Policy and Referrer-Policy; both send `X-Content-Type-Options: nosniff`
/// and `X-Frame-Options: DENY`.
#[derive(Clone, Copy, Debug)]
pub struct Headers {
    /// The `Content-Security-Policy` value.
    pub csp: &'static str,
    /// The `Referrer-Policy` value.
    pub referrer_policy: &'static str,
}

impl Headers {
    /// Adds the security headers to `r` (replacing any of the same name).
    pub fn secure(&self, r: &mut Answer) {
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(self.csp),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static(self.referrer_policy),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }

    /// An HTML page: `text/html; charset=utf-8`, never cached (`no-store`), secured.
    pub fn page(&self, status: StatusCode, html: String) -> Answer {
        let mut r = Response::new(Full::new(Bytes::from(html)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.secure(&mut r);
        r
    }

    /// A file built into the binary (a stylesheet, a script), 200, secured.
    pub fn asset(
        &self,
        body: &'static str,
        content_type: &'static str,
        cache_control: &'static str,
    ) -> Answer {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
        self.secure(&mut r);
        r
    }
}

/// The risk badge of a catalog score (0 to 10, lower is riskier): `high` below 4, `medium`
/// below 7, else `low`; a dash without a score.
pub fn risk(score: Option<f64>) -> String {
    match score {
        Some(r) => {
            let cls = if r < 4.0 {
                "high"
            } else if r < 7.0 {
                "medium"
            } else {
                "low"
            };
            format!("<span class=\"risk {cls}\">{r:.1}</span>")
        }
        None => "<span class=\"risk\">–</span>".into(),
    }
}

/// A table in a horizontally scrolling box. `head` and `rows` are HTML already (the caller
/// escapes what it puts in them); without rows it says "Nothing yet.".
pub fn table(head: &[&str], rows: &[String]) -> String {
    let mut t = String::from("<div class=\"scroll\"><table><thead><tr>");
    for h in head {
        let _ = write!(t, "<th>{h}</th>");
    }
    t.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            t,
            "<tr><td colspan=\"{}\" class=\"empty\">Nothing yet.</td></tr>",
            head.len()
        );
    }
    for r in rows {
        t.push_str(r);
    }
    t.push_str("</tbody></table></div>");
    t
}

/// A URL query component (form-urlencoded).
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The query string's parameters (the last of a repeated name wins; bad escapes are kept as
/// they are, never an error).
pub fn query(uri: &Uri) -> HashMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The value of the cookie `name` in the request's `Cookie` headers, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Headers = Headers {
        csp: "default-src 'none'",
        referrer_policy: "no-referrer",
    };

    #[test]
    fn a_page_is_html_uncached_and_secured() {
        let r = H.page(StatusCode::NOT_FOUND, "<p>x</p>".into());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let h = r.headers();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "cache-control",
                "content-security-policy",
                "x-content-type-options",
                "referrer-policy",
                "x-frame-options"
            ]
        );
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'none'");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    }

    #[test]
    fn risk_badges_by_score() {
        assert_eq!(risk(Some(3.5)), "<span class=\"risk high\">3.5</span>");
        assert_eq!(risk(Some(4.0)), "<span class=\"risk medium\">4.0</span>");
        assert_eq!(risk(Some(7.0)), "<span class=\"risk low\">7.0</span>");
        assert_eq!(risk(None), "<span class=\"risk\">–</span>");
    }

    #[test]
    fn an_empty_table_says_so() {
        assert!(table(&["A", "B"], &[]).contains("<td colspan=\"2\" class=\"empty\">"));
    }

    #[test]
    fn cookies_and_queries() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; tg=xyz"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "tg"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "t"), None);
        let uri: Uri = "/x?app=a%20b&app=c&bad=%zz".parse().unwrap();
        let q = query(&uri);
        assert_eq!(q["app"], "c");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(super::q("a b&c"), "a+b%26c");
    }
}
