//! One simulated HSM: token state, users, sessions, objects and their index, over the store.
//!
//! # Concurrency
//! Objects live in a `DashMap` of `Arc<Object>`: an operation clones the `Arc` and releases the
//! shard before doing any cryptography, so signing never holds a map lock. A change builds a
//! new `Object`, writes it to the store, then swaps it in. Users and token metadata sit behind
//! `RwLock`s that only management calls (login, PIN changes, token init) take. Store writes are
//! serialised by the store's connection mutex.

pub use hsmpool_member::{AttrAnswer, KeyMeta, Role, TokenStatus};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use cryptoki_sys::*;
use dashmap::DashMap;
use parking_lot::RwLock;
use zeroize::Zeroizing;

use crate::cluster::CloneKey;
use crate::fault::{FaultConfig, Faults};
use crate::object::Object;
use crate::store::{Refused, Store};
use crate::timing::{TimingConfig, TimingModel};
use crate::types::IdHash;

mod clone;
mod common;
mod keys;
mod objects;
mod open;
mod ops;
mod users;

/// The crypto officer that `C_InitToken` creates.
pub const DEFAULT_SO: &str = "admin";
/// The crypto user that `C_InitPIN` creates.
pub const DEFAULT_USER: &str = "user";
/// Shortest PIN accepted.
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted (`name:password` included).
pub const MAX_PIN_LEN: usize = 255;

/// How a simulated HSM is set up.
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// Where its store lives.
    pub data_dir: PathBuf,
    /// PBKDF2-HMAC-SHA256 iterations for new PIN hashes.
    pub pin_iterations: u32,
    /// Consecutive failed logins that lock a user.
    pub max_login_failures: u32,
    /// Timing model (network round trip, service times, cores, serialised token creation);
    /// `None` (the default) is off: full speed. See [`crate::timing`].
    pub timing: Option<TimingConfig>,
    /// fault hook: seeded fault injection (crash, partition, hold, delay, random failures);
    /// `None` (the default) is off. See [`crate::fault`].
    pub faults: Option<FaultConfig>,
}

impl HsmConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        HsmConfig {
            data_dir,
            pin_iterations: 100_000,
            max_login_failures: 10,
            timing: None,
            faults: None,
        }
    }
}

struct User {
    role: Role,
    salt: Vec<u8>,
    hash: Zeroizing<Vec<u8>>,
    iterations: u32,
    failures: u32,
}

impl User {
    fn record(&self) -> Zeroizing<Vec<u8>> {
        let mut r = Zeroizing::new(Vec::new());
        r.extend_from_slice(&self.iterations.to_be_bytes());
        r.push(self.salt.len() as u8);
        r.extend_from_slice(&self.salt);
        r.extend_from_slice(&self.hash);
        r
    }
    fn from_record(role: Role, rec: &[u8], failures: u32) -> Option<User> {
        let iterations = u32::from_be_bytes(rec.get(..4)?.try_into().ok()?);
        let salt_len = *rec.get(4)? as usize;
        let salt = rec.get(5..5 + salt_len)?.to_vec();
        let hash = Zeroizing::new(rec.get(5 + salt_len..)?.to_vec());
        Some(User {
            role,
            salt,
            hash,
            iterations,
            failures,
        })
    }
}

#[derive(Clone, Default)]
struct SimSession {
    login: Option<(Role, String)>,
    /// fault hook: the fault controller's session generation when opened.
    generation: u64,
}

struct TokenMeta {
    initialized: bool,
    label: [u8; 32],
}

/// One simulated HSM.
pub struct Hsm {
    cfg: HsmConfig,
    store: Store,
    token: RwLock<TokenMeta>,
    users: RwLock<HashMap<String, User>>,
    sessions: DashMap<u64, SimSession, IdHash>,
    objects: DashMap<u64, Arc<Object>, IdHash>,
    /// (attribute type, value) → object ids, for `CKA_LABEL` and `CKA_ID`.
    index: DashMap<(CK_ATTRIBUTE_TYPE, Vec<u8>), Vec<u64>>,
    next_session: AtomicU64,
    refused: Refused,
    /// timing hook: the timing model, when `cfg.timing` is set.
    timing: Option<TimingModel>,
    /// fault hook: the fault controller, when `cfg.faults` is set.
    faults: Option<Faults>,
    /// The cluster's clone key, when this member has been provisioned with one.
    clone_key: Option<CloneKey>,
    /// The store's `data_version` when this HSM last caught up with other processes' writes.
    seen_version: std::sync::atomic::AtomicI64,
    /// When it last looked (ms since `opened`): looking is rate-limited.
    checked_ms: AtomicU64,
    opened: std::time::Instant,
}

const INDEXED: [CK_ATTRIBUTE_TYPE; 2] = [CKA_LABEL, CKA_ID];
