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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki_sys::*;
use dashmap::DashMap;
use parking_lot::RwLock;
use zeroize::Zeroizing;

use crate::cluster::CloneKey;
use crate::error::{SimError, SimResult};
use crate::fault::{FaultConfig, Faults};
use crate::object::{self, Object};
use crate::store::{Refused, Store};
use crate::timing::{self, OpClass, TimingConfig, TimingModel};
use crate::types::IdHash;

mod clone;
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

fn rv<T>(r: Result<T, CK_RV>) -> SimResult<T> {
    r.map_err(SimError::Rv)
}

fn random_id() -> SimResult<u64> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SimError::Rv(CKR_DEVICE_ERROR))?;
    Ok((u64::from_be_bytes(b) & 0x7fff_ffff_ffff_ffff).max(1))
}

impl Hsm {
    /// The timing model, when on.
    pub fn timing(&self) -> Option<&TimingModel> {
        self.timing.as_ref()
    }

    /// timing hook: start a request; `op` gives its class and whether it creates a persistent
    /// (token) object, and is only called with the model on (off, this is one branch). The
    /// returned timer, held until the operation's end, applies the reply delay when dropped.
    #[inline]
    fn timed(&self, op: impl FnOnce() -> (OpClass, bool)) -> Option<timing::OpTimer<'_>> {
        self.timing.as_ref().map(|t| {
            let (class, token) = op();
            t.begin_op(class, token)
        })
    }

    /// The fault controller, when on. See [`crate::fault`].
    pub fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    /// fault hook: at the start of an operation, the injected error, if any (after any hold
    /// and delay). Off, or on with no fault active, this is one branch and one atomic load.
    #[inline]
    fn fault_check(&self) -> SimResult<()> {
        match &self.faults {
            Some(f) if f.is_active() => self.fault_slow(f),
            _ => Ok(()),
        }
    }

    /// fault hook: the slow path: drop sessions a crash or connection drop invalidated, then
    /// ask the controller.
    #[cold]
    fn fault_slow(&self, f: &Faults) -> SimResult<()> {
        if let Some(generation) = f.take_purge() {
            let stale: Vec<u64> = self
                .sessions
                .iter()
                .filter(|s| s.generation < generation)
                .map(|s| *s.key())
                .collect();
            for ms in stale {
                self.close_session(ms);
            }
        }
        f.before_op().map_err(SimError::Rv)
    }

    fn insert(&self, obj: Arc<Object>) {
        for ty in INDEXED {
            if let Some(v) = obj.attrs.get(&ty) {
                self.index.entry((ty, v.clone())).or_default().push(obj.id);
            }
        }
        self.objects.insert(obj.id, obj);
    }

    fn unindex(&self, obj: &Object) {
        for ty in INDEXED {
            if let Some(v) = obj.attrs.get(&ty) {
                let key = (ty, v.clone());
                let empty = match self.index.get_mut(&key) {
                    Some(mut ids) => {
                        ids.retain(|i| *i != obj.id);
                        ids.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.index.remove_if(&key, |_, ids| ids.is_empty());
                }
            }
        }
    }

    fn persist(&self, obj: &Object) -> SimResult<()> {
        if !obj.token {
            return Ok(());
        }
        let secret = obj
            .key
            .as_ref()
            .map(|k| k.material().to_bytes())
            .unwrap_or_default();
        self.store.put_object(
            obj.id,
            obj.owner.as_deref(),
            &object::encode_attrs(&obj.attrs),
            &secret,
        )
    }

    // ----- sessions and login -------------------------------------------------------------

    /// Open a member session (an authentication context).
    pub fn open_session(&self) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        // fault hook: this cannot return an error: an injected one leaves the session
        // unregistered, so its first use fails.
        let generation = match &self.faults {
            None => 0,
            Some(f) => {
                if self.fault_check().is_err() {
                    return id;
                }
                f.generation()
            }
        };
        self.sessions.insert(
            id,
            SimSession {
                generation,
                ..SimSession::default()
            },
        );
        // fault hook: a crash or connection drop that raced this open invalidates it too.
        if self.faults().is_some_and(|f| f.generation() != generation) {
            self.sessions.remove(&id);
        }
        id
    }

    /// Close a member session and destroy its session objects.
    pub fn close_session(&self, ms: u64) {
        self.sessions.remove(&ms);
        let doomed: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.session == Some(ms))
            .map(|o| o.value().clone())
            .collect();
        for o in doomed {
            self.unindex(&o);
            self.objects.remove(&o.id);
        }
    }

    // ----- objects -------------------------------------------------------------------------

    fn remove(&self, obj: &Object) -> SimResult<()> {
        if obj.token {
            self.store.delete_object(obj.id)?;
        }
        self.unindex(obj);
        self.objects.remove(&obj.id);
        Ok(())
    }
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[first..].to_vec()
}

fn bit_len(b: &[u8]) -> usize {
    let b = &b[b.iter().position(|x| *x != 0).unwrap_or(b.len())..];
    match b.first() {
        Some(f) => b.len() * 8 - f.leading_zeros() as usize,
        None => 0,
    }
}
