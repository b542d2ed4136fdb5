//! The engine's public surface: one method per PKCS #11 function, in Rust types, and the
//! process-wide instance behind `C_Initialize` / `C_Finalize`.
//!
//! [`Engine`] is one struct whose methods live in rooms by job, each an `impl Engine` block:
//! * `lifecycle`: the [`Engine`] struct itself (its fields and their invariants), building it
//!   ([`Engine::new`], [`Engine::with_backends`]) and shutting it down, the cache generation,
//!   member status, and the process-wide engine ([`initialize`], [`finalize`], [`engine()`],
//!   [`EngineRef`], [`InitArgs`], [`after_fork_in_child`]);
//! * `sessions`: open and close sessions, session info, login and logout;
//! * `objects`: object handles (the `objects` and `by_member` maps), create, copy, destroy,
//!   attribute reads and writes, object size;
//! * `find`: finds and the find cache;
//! * `keys`: generate a key or key pair, wrap, unwrap, derive, and the key-check cache;
//! * `token`: slot and token info, `C_InitToken`, the PINs, the mechanism list and info,
//!   random numbers, and [`SLOT`];
//! * `admin`: administration beyond PKCS #11 (users kept the same on every member), for the
//!   `hsmpool` tool.
//!
//! The cryptographic operations (`C_EncryptInit` ... `C_VerifyFinal`) are an `impl Engine` block
//! of their own in `crate::ops`.
//!
//! # Arrows
//! Every room uses `lifecycle` (the struct, and `CACHE_MAX` for `find` and `keys`); `sessions`
//! also uses `token` (for [`SLOT`]). No room uses this file, and `lifecycle` uses no room. The
//! data the rooms keep (sessions, object entries, the login state, cached finds) is in
//! `crate::state`, below both these rooms and `crate::ops`. Methods of one room call those of
//! another through `self`: they are all methods of the one [`Engine`]. The `[compat]` features
//! are in `crate::compat`, which `lifecycle` (the [`Engine`] holds a `Compat`, and implements
//! `compat::Host` for it) and `objects` use, and which uses no file of the engine: it sees the
//! engine only through `compat::Host`.

mod admin;
mod find;
mod keys;
mod lifecycle;
mod objects;
mod sessions;
mod token;

pub use admin::ObjectDigests;
pub use lifecycle::{
    after_fork_in_child, after_fork_in_parent, before_fork, engine, finalize, initialize, Engine,
    EngineRef, InitArgs,
};
pub use token::SLOT;
