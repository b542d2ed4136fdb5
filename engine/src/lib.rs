//! hsmpool engine: all behaviour behind the C ABI.
//!
//! # What it owns
//! Application sessions and their operations, the application's login, object handles, finds
//! and key checks and their caches, digests, configuration, the cluster, and the factory of
//! member backends (the [`backend::Backend`] contract and the mechanism table are the member
//! crate's). It never reads a raw pointer (the C ABI crate does that). On the hot path
//! (operations, finds, attribute reads) it holds no lock across a backend call; the management
//! paths that do are listed under LOCK ORDER.
//!
//! # Rooms
//! `engine/` the [`Engine`] and its rooms (lifecycle, sessions, objects, find, keys, token) over
//! `state.rs` (the data they share); `ops.rs` operations; `digest.rs` digests; `cluster/` the
//! members; `backend/` the member kinds (`module.rs`, a vendor's library, holds the engine's
//! only `unsafe`); `compat/` compatibility features (feature
//! `compat-selfsigned`); `config.rs`, `error.rs`, `types.rs`. See ARCHITECTURE.md.
//!
//! # Data path
//! C caller → cdylib guard → [`Engine`] method → session / operation state → cluster (member
//! choice, retries) → backend → HSM.
//!
//! # Concurrency model
//! The engine itself is reached through a lock-free `arc_swap` load (no shared counter is
//! touched per call). Sessions live in a sharded map of `Arc<Mutex<Session>>`: unrelated
//! sessions never contend. An operation is taken out of its session while the backend works and
//! put back only if it stays active, so no session lock is held during cryptography. Object
//! handles are a sharded map too. The login state is one atomic, read without a lock; its mutex
//! is taken only by login, logout, opening a session and closing the last one.
//!
//! # LOCK ORDER
//! 1. `LIFECYCLE` (`C_Initialize` / `C_Finalize` only)
//! 2. the login mutex (`Engine::login`)
//! 3. one session's `Mutex`
//! 4. the cluster's create gate (`Cluster::gate`: creates shared, the last pass of a
//!    resynchronisation exclusive)
//! 5. one member's `reauth` mutex, then its `pool_write` mutex (never two members' at once;
//!    the pool itself is an `ArcSwap`, read without a lock)
//!
//! The mutex of the presented self-signed certificates (`[compat] self_signed_certificates`,
//! `compat::selfsigned::SelfSigned::current`) is taken with none of these held, and held across
//! the member calls of one refresh (finds, attribute reads, the signatures of new certificates).
//!
//! Map guards (`sessions`, `objects`, `by_member`, the caches) are never held while taking any
//! of these locks or calling a backend (`handle_for` holds a `by_member` shard while it inserts
//! into `objects`: always in that order, so two map guards never wait on each other in a
//! circle).
//!
//! Locks held across backend calls, all off the hot path: the login mutex, around logging the
//! member pools in and out (two application threads logging in at once must not both succeed);
//! the create gate (shared) around a create and its replication; a member's `reauth` around
//! re-opening its pool; the self-signed certificates' mutex around a refresh (option on only;
//! finds of keys never take it).
//!
//! # The cluster
//! [`cluster::Cluster`] drives the members: session pools, balancing, health, retries,
//! replication and resynchronisation; see its module documentation. The engine maps
//! application handles to cluster-wide object ids and keeps the find and key-check caches.
//!
//! # Panic consistency
//! `parking_lot` locks do not poison. State changes are computed first and swapped in last, so
//! a panic (caught at the FFI boundary) leaves the previous state intact.
// Unsafe code is allowed in one place only: `backend/module.rs`, the calls into a vendor's
// PKCS #11 library.
#![deny(unsafe_code)]

pub mod backend;
pub mod cluster;
mod compat;
pub mod config;
mod digest;
pub mod engine;
pub mod error;
mod ops;
mod sha3;
mod state;
pub mod types;

pub use hsmpool_member::{ck, mechanism};

pub use engine::{
    after_fork_in_child, after_fork_in_parent, before_fork, engine, finalize, initialize, Engine,
    EngineRef, InitArgs, ObjectDigests,
};
pub use error::{Error, Result};
pub use hsmpool_member::types::{
    cloudhsm, decode_attr_array, encode_attr_array, is_array_attribute, Attr, KdfSegment,
    MechParam, Mechanism, SignInput,
};
