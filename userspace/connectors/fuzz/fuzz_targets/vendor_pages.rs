//! Every vendor page parser on hostile bytes (the first byte picks the parser): never a
//! panic, and every event kept obeys the caps (an id of 1..=256 bytes without control
//! characters, strings of at most 512 bytes), with kept + dropped = seen.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_connectors::vendors::{
    self, Events, MAX_FIELD_BYTES, MAX_ID_BYTES, box_events, github, m365, okta, slack,
};

fn check(events: &Events) {
    assert_eq!(events.events.len() as u64 + events.dropped, events.seen as u64);
    for m in &events.events {
        assert!(!m.vendor_id.is_empty() && m.vendor_id.len() <= MAX_ID_BYTES);
        assert!(!m.vendor_id.chars().any(char::is_control));
        for s in [&m.user, &m.object, &m.action].into_iter().flatten() {
            assert!(s.len() <= MAX_FIELD_BYTES && !s.chars().any(char::is_control));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 8 {
        0 => {
            if let Ok(e) = okta::parse_page(body) {
                check(&e);
            }
        }
        1 => {
            if let Ok(e) = github::parse_page(body) {
                check(&e);
            }
        }
        2 => {
            if let Ok((blobs, _)) = m365::parse_listing(body) {
                for b in blobs {
                    assert!(!b.content_id.is_empty() && b.content_uri.len() <= 2048);
                }
            }
        }
        3 => {
            if let Ok(e) = m365::parse_blob(body) {
                check(&e);
            }
        }
        4 => {
            if let Ok(slack::Page::Entries { events, next_cursor }) = slack::parse_page(body) {
                check(&events);
                assert!(next_cursor.is_none_or(|c| !c.is_empty() && c.len() <= 4096));
            }
        }
        5 => {
            if let Ok((e, position)) = box_events::parse_page(body) {
                check(&e);
                assert!(!position.is_empty());
            }
        }
        6 => {
            let text = String::from_utf8_lossy(body);
            let _ = tollgate_connectors::http::parse_link_next(&text);
            let _ = vendors::parse_ip(&text);
            let _ = m365::parse_time(&text);
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let _ = tollgate_connectors::vendors::Cursor::parse(&text, tollgate_connectors::Kind::M365);
            let _ = tollgate_connectors::vendors::Cursor::parse(&text, tollgate_connectors::Kind::Okta);
        }
    }
});
