//! The inline session proxy: terminates TLS for flows steered to it, applies access and
//! session policies to each request and response, and splices everything else.
#![forbid(unsafe_code)]
