//! hsmpool engine: all behaviour behind the C ABI.
//!
//! # What it owns
//! Application sessions and their operations, the application's login, object handles, the
//! mechanism table, configuration, and the [`backend::Backend`] seam to HSMs. It never reads a
//! raw pointer (the C ABI crate does that) and never holds a lock across a backend call.
//!
//! # Data path
//! C caller → cdylib guard → [`Engine`] method → session / operation state → backend → HSM.
//!
//! # Concurrency model
//! Sessions live in a sharded map of `Arc<Mutex<Session>>`: unrelated sessions never contend.
//! An operation is taken out of its session while the backend works and put back only if it
//! stays active, so no session lock is held during cryptography. Object handles are a sharded
//! map too. The only engine-wide lock is the login state, taken by login/logout/open-session.
//!
//! # LOCK ORDER
//! 1. `Engine::login` (RwLock)
//! 2. one session's `Mutex`
//!
//! Map guards (`sessions`, `objects`, `by_member`) are never held while taking either lock or
//! calling a backend.
//!
//! # Panic consistency
//! `parking_lot` locks do not poison. State changes are computed first and swapped in last, so
//! a panic (caught at the FFI boundary) leaves the previous state intact.
#![deny(unsafe_code)]

pub mod backend;
pub mod config;
pub mod engine;
pub mod error;
pub mod mechanism;
mod ops;
pub mod types;

pub use engine::{engine, finalize, initialize, Engine, InitArgs};
pub use error::{Error, Result};
pub use hsmpool_sim::types::{Attr, MechParam, Mechanism, SignInput};
