//! hsmpool simulator: a software HSM modelled on a CloudHSM-style device: crypto officers and
//! crypto users, key ownership, an encrypted persistent store, real cryptography (aws-lc).
//!
//! It never trusts its store (every row is authenticated under the master key) and never
//! panics on input; `unsafe` is confined to `crypto/raw.rs` (raw aws-lc calls).
#![deny(unsafe_code)]

pub mod backup;
pub mod cluster;
pub mod crypto;
pub mod daemon;
pub mod error;
pub mod fault;
pub mod hsm;
pub mod member;
pub mod object;
pub mod store;
pub mod timing;

/// The member vocabulary (attributes, mechanisms, sign inputs), owned by `hsmpool-member`.
pub use hsmpool_member::types;
