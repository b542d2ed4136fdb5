//! The `hsmpool` administration tool as a library, so tests and other crates can call what the
//! binary does without spawning it.
//!
//! It owns the cluster's certificate authority flow ([`cluster`]) and the wrapping-key ceremony
//! ([`wrapkey`]). It must never print or log a
//! private key, and it writes every private key file with mode 0600.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod wrapkey;
