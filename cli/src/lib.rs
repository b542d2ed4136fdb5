//! The `hsmpool` administration tool as a library, so tests and other crates can call what the
//! binary does without spawning it.
//!
//! It owns the cluster's certificate authority flow ([`cluster`]); `cluster wrap-key` runs the
//! engine's wrapping-key ceremony (`hsmpool_engine::cluster::ceremony`). It must never print or log a
//! private key, and it writes every private key file with mode 0600.

#![forbid(unsafe_code)]

pub mod cluster;
