//! Pure protocol parsers: bytes in, typed values or typed errors out. No I/O, no clocks,
//! no global state. The flow table (in `tollgate-discovery`) feeds these parsers with the
//! first flight of each flow, whether it came from the kernel's ring buffer or a pcap file.
//!
//! # How data flows
//!
//! ```text
//! TCP segments ─► reasm::TcpReassembler ─► contiguous client bytes ─┬─► tls::parse_record_stream
//!                                                                   ├─► http::parse_request_head
//!                                                                   └─► dns::parse_tcp_stream
//! UDP datagram ─► quic::parse_client_datagram ─► CRYPTO frames ─► reasm::CryptoReassembler
//!                                                 ─► tls::parse_handshake_stream
//! UDP datagram ─► dns::parse_message ─► Message::address_map (IP -> asked name, TTL)
//! ```
//!
//! # Public API
//!
//! - [`tls`]: [`tls::parse_record_stream`] (TCP, TLS records) and
//!   [`tls::parse_handshake_stream`] (QUIC CRYPTO stream) answer
//!   [`tls::HelloStatus`]: `Parsed(ClientHello)` / `NeedMore(n)` / `NotTls`;
//!   [`tls::ClientHello`] has SNI, ALPN, versions, ciphers, groups, key shares, ECH, and
//!   [`tls::ClientHello::ja4`].
//! - [`quic`]: [`quic::sniff_version`], [`quic::parse_client_datagram`] (v1, v2, drafts,
//!   mvfst, gQUIC Q024..Q050/T050/T051) returning CRYPTO frames or a gQUIC CHLO;
//!   [`quic::parse_client_datagram_with`] for later datagrams of a connection (Initial keys
//!   stay those of the client's first destination connection id);
//!   [`quic::parse_initial_payload`] for an already decrypted payload.
//! - [`dns`]: [`dns::parse_message`], [`dns::parse_tcp_stream`], [`dns::Message::address_map`].
//! - [`http`]: [`http::parse_request_head`] answers `Parsed` / `NeedMore` / `NotHttp`.
//! - [`reasm`]: [`reasm::TcpReassembler`] and [`reasm::CryptoReassembler`], byte-capped.
//! - [`Error`]: the one error type; [`Error::kind`] gives a counter label.
//!
//! Every parser has explicit limits (the `MAX_*` constants in each module) and never
//! panics on input: all reads go through a bounds-checked cursor.
#![forbid(unsafe_code)]

pub mod dns;
mod error;
pub mod http;
pub mod quic;
mod reader;
pub mod reasm;
pub mod tls;

pub use error::{Error, Result};
