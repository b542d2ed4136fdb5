//! One simulated HSM: token state, users, sessions, objects and their index, over the store.
//!
//! # Layout
//! [`Hsm`] and its fields are declared here; its methods live in rooms, one `impl Hsm` each:
//! - `open`: opening the HSM over its store, catching up with other processes' writes to it,
//!   the token's status;
//! - `users`: users, PINs and lockout, `C_InitToken`, the login state of member sessions;
//! - `objects`: create, copy, destroy, find, attributes, object size, key metadata,
//!   `check_key`;
//! - `keys`: generate (a key, a key pair), wrap, unwrap, derive;
//! - `keyquorum`: a key's own quorum: its values, tokens for it, and approvals (the checks
//!   are in `objects`);
//! - `ops`: sign, verify, encrypt, decrypt, a key's value for `C_DigestKey`, random;
//! - `clone`: the cluster clone path and the health probe;
//! - `audit`: reading the audit log (appending is in `common`, as every room appends);
//! - `backup`: taking a backup image of the store, restoring one into a new HSM, and what a
//!   store holds (its inventory);
//! - `common`: what several rooms share: the timing and fault hooks, opening and closing
//!   member sessions, keeping the object map, its index and the store together, small helpers.
//!
//! A room calls only the rooms before it in the order `common`, `open`, `users`, `objects`,
//! then any of `keys`, `keyquorum`, `ops`, `clone`, `audit` and `backup` (which call none of each other); what a later room
//! calls is `pub(super)`.
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
use crate::store::{Refused, Store, UserMeta};
use crate::timing::{Clock, TimingConfig, TimingModel};
use crate::types::IdHash;

mod audit;
mod backup;
pub use backup::SelfTest;
mod clone;
mod common;
mod keyquorum;
mod keys;
mod objects;
mod open;
mod ops;
mod users;

/// The crypto officer that `C_InitToken` creates.
pub const DEFAULT_SO: &str = "admin";
/// The crypto user that `C_InitPIN` creates.
pub const DEFAULT_USER: &str = "user";
/// The PIN length bounds every member kind shares (the token's `ulMinPinLen`/`ulMaxPinLen`).
pub use hsmpool_member::{MAX_PIN_LEN, MIN_PIN_LEN};

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
    /// The clock the timing model and fault delays read and sleep on; `None` (the default)
    /// is the real one. A cluster run on virtual time gives every member the same clock.
    pub clock: Option<Arc<dyn Clock>>,
}

impl HsmConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        HsmConfig {
            data_dir,
            pin_iterations: 100_000,
            max_login_failures: 5,
            timing: None,
            faults: None,
            clock: None,
        }
    }
}

/// A user: its role, PIN hash (empty for a deleted user's tombstone), and its version, lock
/// and lockout counters (see `hsmpool_member::users`). Its stored form (`record`,
/// `from_record`) is here because `open` reads it and `users` writes it; making and checking a
/// PIN hash is in `users`.
#[derive(Clone)]
struct User {
    role: Role,
    salt: Vec<u8>,
    hash: Zeroizing<Vec<u8>>,
    iterations: u32,
    meta: UserMeta,
    /// Bound to the record by the store's seal and carried with it: an officer's quorum
    /// approval key; the quorum policy in the `:quorum` record.
    extra: Vec<u8>,
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
    fn from_record(role: Role, rec: &[u8], meta: UserMeta, extra: Vec<u8>) -> Option<User> {
        let iterations = u32::from_be_bytes(rec.get(..4)?.try_into().ok()?);
        let salt_len = *rec.get(4)? as usize;
        let salt = rec.get(5..5 + salt_len)?.to_vec();
        let hash = Zeroizing::new(rec.get(5 + salt_len..)?.to_vec());
        Some(User {
            role,
            salt,
            hash,
            iterations,
            meta,
            extra,
        })
    }
    /// Not a tombstone.
    fn live(&self) -> bool {
        !self.meta.deleted
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
    /// Raised by every `C_InitToken` (see `hsmpool_member::users`).
    epoch: u64,
}

/// One simulated HSM.
///
/// # Invariants
/// What holds between its fields whenever no change is in flight (how a change in flight may
/// be seen is said where it matters):
/// - **Object map.** `objects` maps each id to the object with that id. A token object
///   (`token`) has no `session`; a session object has `session == Some(sess)` for the member
///   session `sess` that made it, and `close_session` drops it with the session. A private
///   object has an owner, the crypto user who made it, and only sessions logged in as that
///   user see it.
/// - **Index vs object map.** `index` lists under `(ty, value)`, for `ty` in `INDEXED`
///   (`CKA_LABEL`, `CKA_ID`), exactly the ids of the objects in `objects` whose `attrs` hold
///   that value, and holds no empty list. Every change goes through `insert` (which indexes
///   an object before publishing it) and `unindex` (which every removal and replacement
///   calls first), or clears both maps together (`init_token`). A find running beside a
///   change may meet an entry whose object has just gone or changed (`find` re-reads every
///   candidate from `objects` and matches it again) or miss an object whose attributes are
///   being replaced (`set_attributes` unindexes the old one before inserting the new).
/// - **Store vs memory.** The store is written first: a token object, a user or the token
///   state is put into (or deleted from) the store before memory shows it, so a failed store
///   write leaves memory as it was. Every token object in `objects` has its row in the store
///   (same id, owner, attributes and key material); session objects never reach the store.
///   The one exception to store-first: `login_named` sets a user's failed-login count in
///   memory, then in the store. Memory may lag the store when another process writes to it,
///   until `catch_up` (on finds, logins and `object_digests`, when `seen_version` differs
///   from the store's data version, at most every `CATCH_UP_INTERVAL_MS`) re-reads objects,
///   users and token state.
/// - **Sessions vs users.** A session's `login` is `Some((role, name))` only after
///   `login_named` checked `name`'s PIN for `role` on that very session, and `logout` clears
///   it; it is not checked again, so a session stays logged in when its user's PIN is reset
///   or the token is re-initialised. A user whose `failures` reached `cfg.max_login_failures`,
///   or that an officer locked, cannot log in until an officer unlocks it or sets a new PIN
///   for it (`change_user`, `add_user`, `init_pin`), which clears `failures` and raises
///   `resets`. A deleted user stays as a tombstone (no hash, `deleted`) that no login finds.
/// - **Session ids.** They come from `next_session`, which only grows from a random start, so
///   an id never names two sessions of one `Hsm`.
/// - **Fixed at open.** `cfg`, `refused` (what failed its integrity check when the store was
///   opened), `timing`, `faults`, `clone_key`, `backup_key` and `audit_key` never change afterwards.
/// - **Audit.** Every management event is appended to the store's audit log after it took
///   effect (or was refused), never before: the log says what happened.
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
    /// The fleet's persistent backup key, when this member has been provisioned with one.
    backup_key: Option<crate::backup::BackupKey>,
    /// The backup image being read out in pieces (`export_backup`): its id and bytes.
    backup_image: parking_lot::Mutex<Option<(String, Arc<Vec<u8>>)>>,
    /// The key this member signs its audit checkpoints with (`audit.key`, made at first open).
    audit_key: aws_lc_rs::signature::Ed25519KeyPair,
    /// The store's `data_version` when this HSM last caught up with other processes' writes.
    seen_version: std::sync::atomic::AtomicI64,
    /// When it last looked (ms since `opened`): looking is rate-limited.
    checked_ms: AtomicU64,
    opened: std::time::Instant,
}

/// The attributes `Hsm::index` is kept for.
const INDEXED: [CK_ATTRIBUTE_TYPE; 2] = [CKA_LABEL, CKA_ID];
