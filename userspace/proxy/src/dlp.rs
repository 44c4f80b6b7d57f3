//! Sensitive-data detectors for request and response bodies: pure functions over bytes.
//!
//! Each detector finds candidates with a regex and then validates them (Luhn for card
//! numbers, ISO 7064 mod 97 for IBANs, SSA rules for US SSNs), so that random digit runs do
//! not count. Findings carry only masked evidence (`4111********1111`): the audit log never
//! holds the sensitive value itself.

use std::sync::OnceLock;

use regex::bytes::Regex;
use serde::Serialize;

use crate::config::ContentKind;

/// One validated finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Detector name (`credit_card`, ..., or `custom:<n>`).
    pub kind: String,
    /// Masked evidence.
    pub masked: String,
}

/// Most findings reported per detector and body (the count stops there too).
pub const MAX_FINDINGS: usize = 64;

struct Detectors {
    card: Regex,
    iban: Regex,
    ssn: Regex,
    email: Regex,
    private_key: Regex,
    cloud: Regex,
}

fn detectors() -> &'static Detectors {
    static D: OnceLock<Detectors> = OnceLock::new();
    D.get_or_init(|| {
        // The patterns are constants; a failure here is a programming error caught by tests.
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("built-in regex {p}: {e}"));
        Detectors {
            // 13-19 digits, optionally grouped by single spaces or dashes, not inside a longer
            // digit run.
            // Runs of digit groups separated by single spaces or dashes; card numbers are
            // found inside a run by group boundaries (see `scan`).
            card: re(r"[0-9]+(?:[ -][0-9]+)*"),
            iban: re(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}"),
            ssn: re(r"([0-9]{3})-([0-9]{2})-([0-9]{4})"),
            email: re(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"),
            private_key: re(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----"),
            cloud: re(concat!(
                r"\b(?:(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}",   // AWS access key ids
                r"|gh[pousr]_[A-Za-z0-9]{36,255}",                      // GitHub tokens
                r"|github_pat_[A-Za-z0-9_]{22,255}",
                r"|glpat-[A-Za-z0-9_-]{20}",                            // GitLab
                r"|xox[baprs]-[A-Za-z0-9-]{10,100}",                    // Slack
                r"|AIza[0-9A-Za-z_-]{35}",                              // Google API keys
                r"|sk_live_[0-9A-Za-z]{24,99}",                         // Stripe secret keys
                r"|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})"           // SendGrid
            )),
        }
    })
}

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for &d in digits.iter().rev() {
        let Some(mut v) = (d as char).to_digit(10) else {
            return false;
        };
        if double {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
        double = !double;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// IBAN check (ISO 13616: move the first four characters to the end, letters to numbers,
/// remainder mod 97 must be 1). Input without spaces, upper case.
pub fn iban_valid(iban: &[u8]) -> bool {
    if !(15..=34).contains(&iban.len()) {
        return false;
    }
    let (head, tail) = iban.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ssn_valid(area: &[u8], group: &[u8], serial: &[u8]) -> bool {
    area != b"000"
        && area != b"666"
        && area.first() != Some(&b'9')
        && group != b"00"
        && serial != b"0000"
}

/// Keep the first and last `keep` characters, star the rest.
pub fn mask(s: &str, keep: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n <= keep * 2 {
        return "*".repeat(n);
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < keep || i >= n - keep { *c } else { '*' })
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run one built-in detector over `body`.
pub fn scan(kind: ContentKind, body: &[u8]) -> Vec<Finding> {
    let d = detectors();
    let mut out = Vec::new();
    let name = kind_name(kind);
    let mut push = |masked: String| {
        if out.len() < MAX_FINDINGS {
            out.push(Finding {
                kind: name.to_string(),
                masked,
            });
        }
    };
    match kind {
        ContentKind::CreditCard => {
            for m in d.card.find_iter(body) {
                for digits in card_candidates(m.as_bytes()) {
                    push(mask(&text(&digits), 4));
                }
            }
        }
        ContentKind::Iban => {
            let mut pos = 0;
            while let Some(m) = d.iban.find_at(body, pos) {
                pos = m.end();
                if m.start() > 0
                    && body
                        .get(m.start() - 1)
                        .is_some_and(u8::is_ascii_alphanumeric)
                {
                    continue;
                }
                let raw = m.as_bytes();
                // The pattern may have swallowed following words: shorten until valid, and
                // continue after the valid part.
                let mut n = raw.len();
                while n >= 15 {
                    let cut = raw.get(..n).unwrap_or(&[]);
                    let compact: Vec<u8> = cut.iter().copied().filter(|b| *b != b' ').collect();
                    if compact.len() >= 15 && iban_valid(&compact) {
                        push(mask(&text(&compact), 4));
                        pos = m.start() + n;
                        break;
                    }
                    n -= 1;
                }
            }
        }
        ContentKind::UsSsn => {
            for c in d.ssn.captures_iter(body) {
                let (Some(all), Some(a), Some(g), Some(s)) =
                    (c.get(0), c.get(1), c.get(2), c.get(3))
                else {
                    continue;
                };
                let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_digit() || *b == b'-');
                if all.start() > 0 && edge(body.get(all.start() - 1)) || edge(body.get(all.end())) {
                    continue;
                }
                if ssn_valid(a.as_bytes(), g.as_bytes(), s.as_bytes()) {
                    push(format!("***-**-{}", text(s.as_bytes())));
                }
            }
        }
        ContentKind::Email => {
            for m in d.email.find_iter(body) {
                let t = text(m.as_bytes());
                let masked = match t.split_once('@') {
                    Some((local, domain)) => format!("{}@{}", mask(local, 1), domain),
                    None => mask(&t, 2),
                };
                push(masked);
            }
        }
        ContentKind::PrivateKey => {
            for m in d.private_key.find_iter(body) {
                push(text(m.as_bytes()));
            }
        }
        ContentKind::CloudApiKey => {
            for m in d.cloud.find_iter(body) {
                push(mask(&text(m.as_bytes()), 4));
            }
        }
    }
    out
}

/// Card numbers inside a run of digit groups: consecutive groups holding 13-19 digits in
/// all that pass Luhn. A single group longer than 19 digits is an id, not a card.
fn card_candidates(run: &[u8]) -> Vec<Vec<u8>> {
    let groups: Vec<&[u8]> = run.split(|b| *b == b' ' || *b == b'-').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let mut digits: Vec<u8> = Vec::new();
        let mut found = None;
        for (j, g) in groups.iter().enumerate().skip(i) {
            digits.extend_from_slice(g);
            if digits.len() > 19 {
                break;
            }
            if digits.len() >= 13 && luhn_valid(&digits) {
                found = Some((j, digits.clone()));
            }
        }
        match found {
            Some((j, d)) => {
                out.push(d);
                i = j + 1;
            }
            None => i += 1,
        }
        if out.len() >= MAX_FINDINGS {
            break;
        }
    }
    out
}

/// Run a custom regex; evidence is masked the same way.
pub fn scan_custom(index: usize, re: &Regex, body: &[u8]) -> Vec<Finding> {
    re.find_iter(body)
        .take(MAX_FINDINGS)
        .map(|m| Finding {
            kind: format!("custom:{index}"),
            masked: mask(&text(m.as_bytes()), 2),
        })
        .collect()
}

pub fn kind_name(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::CreditCard => "credit_card",
        ContentKind::Iban => "iban",
        ContentKind::UsSsn => "us_ssn",
        ContentKind::Email => "email",
        ContentKind::PrivateKey => "private_key",
        ContentKind::CloudApiKey => "cloud_api_key",
    }
}

/// Decode `application/x-www-form-urlencoded` so that `4111+1111...` or `%34` is seen as
/// the value the user typed. Invalid escapes are kept as they are.
pub fn form_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |x: u8| (x as char).to_digit(16);
                match (
                    b.get(i + 1).and_then(|x| hex(*x)),
                    b.get(i + 2).and_then(|x| hex(*x)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(c),
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards() {
        let f = scan(ContentKind::CreditCard, b"card=4111 1111 1111 1111&x=1");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].masked, "4111********1111");
        assert_eq!(
            scan(ContentKind::CreditCard, b"4111-1111-1111-1111").len(),
            1
        );
        assert_eq!(scan(ContentKind::CreditCard, b"5500005555555559").len(), 1);
        // Luhn failure
        assert!(scan(ContentKind::CreditCard, b"card=4111 1111 1111 1112").is_empty());
        // part of a longer digit run (e.g. an id)
        assert!(scan(ContentKind::CreditCard, b"id=41111111111111110000000").is_empty());
        assert_eq!(
            scan(
                ContentKind::CreditCard,
                b"4111111111111111 5500005555555559"
            )
            .len(),
            2
        );
        assert_eq!(
            scan(ContentKind::UsSsn, b"123-45-6789 234-56-7890").len(),
            2
        );
        assert_eq!(
            scan(
                ContentKind::Iban,
                b"DE89 3704 0044 0532 0130 00 AND GB82WEST12345698765432"
            )
            .len(),
            2
        );
    }

    #[test]
    fn ibans() {
        assert_eq!(
            scan(ContentKind::Iban, b"to DE89 3704 0044 0532 0130 00 now").len(),
            1
        );
        assert_eq!(scan(ContentKind::Iban, b"GB82WEST12345698765432").len(), 1);
        assert!(scan(ContentKind::Iban, b"GB83WEST12345698765432").is_empty());
    }

    #[test]
    fn ssns() {
        assert_eq!(scan(ContentKind::UsSsn, b"ssn: 123-45-6789.").len(), 1);
        assert_eq!(
            scan(ContentKind::UsSsn, b"ssn: 123-45-6789")[0].masked,
            "***-**-6789"
        );
        assert!(
            scan(
                ContentKind::UsSsn,
                b"000-12-3456 666-12-3456 912-12-3456 123-00-4567"
            )
            .is_empty()
        );
        assert!(scan(ContentKind::UsSsn, b"2024-12-3456").is_empty());
    }

    #[test]
    fn emails_keys_tokens() {
        let f = scan(ContentKind::Email, b"mail alice.smith@example.com please");
        assert_eq!(f[0].masked, "a*********h@example.com");
        assert_eq!(
            scan(
                ContentKind::PrivateKey,
                b"x\n-----BEGIN RSA PRIVATE KEY-----\nMII"
            )
            .len(),
            1
        );
        assert!(scan(ContentKind::PrivateKey, b"-----BEGIN PUBLIC KEY-----").is_empty());
        assert_eq!(
            scan(ContentKind::CloudApiKey, b"key=AKIAIOSFODNN7EXAMPLE;").len(),
            1
        );
        let gh = b"token ghp_0123456789abcdefghijABCDEFGHIJ012345 end";
        assert_eq!(
            scan(ContentKind::CloudApiKey, gh)[0].masked,
            "ghp_********************************2345"
        );
        assert!(scan(ContentKind::CloudApiKey, b"AKIA123").is_empty());
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_decode(b"a=4111+1111%20x%2"),
            b"a=4111 1111 x%2".to_vec()
        );
    }

    #[test]
    fn binary_input_never_panics() {
        let junk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        for k in [
            ContentKind::CreditCard,
            ContentKind::Iban,
            ContentKind::UsSsn,
            ContentKind::Email,
            ContentKind::PrivateKey,
            ContentKind::CloudApiKey,
        ] {
            let _ = scan(k, &junk);
        }
        let _ = form_decode(&junk);
    }
}
