//! Opening the HSM over its store (token state, users and objects, each only if its seal
//! verifies) and catching up with the writes other processes make to the same store; the
//! token's status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cryptoki_sys::*;
use dashmap::DashMap;
use parking_lot::RwLock;

use crate::cluster::CloneKey;
use crate::crypto::{KeyMaterial, LoadedKey};
use crate::error::SimResult;
use crate::fault::Faults;
use crate::object::{self, Object};
use crate::store::{Refused, Store};
use crate::timing::{Clock, RealClock, TimingModel};
use crate::types::IdHash;

use super::common::random_id;
use super::{Hsm, HsmConfig, Role, TokenMeta, TokenStatus, User, DEFAULT_SO, DEFAULT_USER};

/// How often finds and logins look for other processes' writes to a shared store.
const CATCH_UP_INTERVAL_MS: u64 = 200;

impl Hsm {
    /// Open the HSM over its store, loading every object whose seal verifies. Objects or users
    /// whose seal does not verify are refused and logged; see [`Hsm::refused`].
    pub fn open(cfg: HsmConfig) -> SimResult<Hsm> {
        let store = Store::open(&cfg.data_dir)?;
        let mut refused = Refused::default();
        let token = read_token_meta(&store)?;
        let users = read_users(&store, &mut refused)?;
        let clock: Arc<dyn Clock> = match &cfg.clock {
            Some(c) => Arc::clone(c),
            None => Arc::new(RealClock::new()),
        };
        let timing = cfg
            .timing
            .clone()
            .map(|t| TimingModel::with_clock(t, Arc::clone(&clock))); // timing hook
        let faults = cfg
            .faults
            .as_ref()
            .map(|f| Faults::with_clock(f, Arc::clone(&clock))); // fault hook
        let clone_key = CloneKey::load(&cfg.data_dir)?;
        let backup_key = crate::backup::BackupKey::load(&cfg.data_dir)?;
        let audit_key = audit_key(&cfg.data_dir)?;
        let hsm = Hsm {
            cfg,
            store,
            token: RwLock::new(token),
            users: RwLock::new(users),
            sessions: DashMap::with_hasher(IdHash),
            objects: DashMap::with_hasher(IdHash),
            index: DashMap::new(),
            // Session numbers start at a random point, so a handle from before a restart of
            // this HSM never names a new session.
            next_session: AtomicU64::new((random_id()? & 0x3fff_ffff) + 1),
            refused: Refused::default(),
            timing,
            faults,
            clone_key,
            backup_key,
            backup_image: parking_lot::Mutex::new(None),
            audit_key,
            seen_version: std::sync::atomic::AtomicI64::new(0),
            checked_ms: AtomicU64::new(0),
            opened: std::time::Instant::now(),
        };
        let mut refused_objects = Vec::new();
        for so in hsm.store.load_objects(&mut refused)? {
            match hsm.revive(so.id, so.owner, &so.attrs, &so.secret) {
                Ok(obj) => hsm.insert(Arc::new(obj)),
                Err(_) => refused_objects.push(so.id),
            }
        }
        refused.objects.extend(refused_objects);
        for id in &refused.objects {
            tracing::error!(object = id, store = %hsm.store.path().display(), "stored object failed its integrity check and is refused");
        }
        for name in &refused.users {
            tracing::error!(user = %name, store = %hsm.store.path().display(), "stored user failed its integrity check and is refused");
        }
        let version = hsm.store.data_version()?;
        hsm.seen_version.store(version, Ordering::Relaxed);
        Ok(Hsm { refused, ..hsm })
    }

    /// Catch up with writes another process made to the same store (a second program using
    /// the embedded default, the `hsmpool` tool adding a user): at most every
    /// [`CATCH_UP_INTERVAL_MS`], and only when SQLite says the file changed. Token objects are
    /// added, replaced or dropped to match the store; users and token state are re-read.
    pub(super) fn catch_up(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < CATCH_UP_INTERVAL_MS
            || self
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Ok(version) = self.store.data_version() else {
            return;
        };
        if version == self.seen_version.swap(version, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.reload() {
            tracing::error!(store = %self.store.path().display(), "catching up with the store failed: {e}");
        }
    }

    fn reload(&self) -> SimResult<()> {
        let mut refused = Refused::default();
        let stored = self.store.load_objects(&mut refused)?;
        let mut in_store = std::collections::HashSet::new();
        for so in stored {
            in_store.insert(so.id);
            let same = self
                .objects
                .get(&so.id)
                .is_some_and(|o| object::encode_attrs(&o.attrs) == so.attrs);
            if same {
                continue;
            }
            if let Ok(obj) = self.revive(so.id, so.owner, &so.attrs, &so.secret) {
                if let Some((_, old)) = self.objects.remove(&so.id) {
                    self.unindex(&old);
                }
                self.insert(Arc::new(obj));
            }
        }
        let gone: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.token && !in_store.contains(&o.id))
            .map(|o| o.value().clone())
            .collect();
        for o in gone {
            self.unindex(&o);
            self.objects.remove(&o.id);
        }
        *self.users.write() = read_users(&self.store, &mut refused)?;
        *self.token.write() = read_token_meta(&self.store)?;
        Ok(())
    }

    pub(super) fn revive(
        &self,
        id: u64,
        owner: Option<String>,
        attrs: &[u8],
        secret: &[u8],
    ) -> Result<Object, CK_RV> {
        let attrs = object::decode_attrs(attrs).ok_or(CKR_DEVICE_ERROR)?;
        let get_ulong = |ty| {
            attrs
                .get(&ty)
                .and_then(|v| v.as_slice().try_into().ok())
                .map(CK_ULONG::from_ne_bytes)
        };
        let class = get_ulong(CKA_CLASS).ok_or(CKR_DEVICE_ERROR)?;
        let key_type = get_ulong(CKA_KEY_TYPE);
        let key = if secret.is_empty() {
            None
        } else {
            Some(Arc::new(LoadedKey::load(KeyMaterial::from_bytes(secret)?)?))
        };
        let flag = |ty| attrs.get(&ty).is_some_and(|v| v == &[1]);
        Ok(Object {
            id,
            owner,
            session: None,
            class,
            key_type,
            token: true,
            private: flag(CKA_PRIVATE),
            attrs,
            key,
        })
    }

    /// Objects and users refused at load for failing their integrity check.
    pub fn refused(&self) -> &Refused {
        &self.refused
    }

    /// Token status for `C_GetTokenInfo`.
    pub fn token_status(&self) -> TokenStatus {
        // fault hook: hold and delay apply; this cannot return an injected error.
        let _ = self.fault_check();
        // Failed logins counted by another process sharing the store show in the flags.
        self.catch_up();
        let t = self.token.read();
        let users = self.users.read();
        // A user an officer locked shows as locked (all its tries used).
        let failures = |name: &str| {
            users.get(name).filter(|u| u.live()).map_or(0, |u| {
                if u.meta.locked {
                    u.meta.failures.max(self.cfg.max_login_failures)
                } else {
                    u.meta.failures
                }
            })
        };
        TokenStatus {
            initialized: t.initialized,
            user_pin_initialized: users.get(DEFAULT_USER).is_some_and(User::live),
            label: t.label,
            user_failures: failures(DEFAULT_USER),
            so_failures: failures(DEFAULT_SO),
            max_failures: self.cfg.max_login_failures,
            object_count: self.objects.len(),
        }
    }
}

/// The member's audit signing key: Ed25519 from the 32-byte seed in `audit.key` (mode 0600,
/// made at first open).
fn audit_key(dir: &std::path::Path) -> SimResult<aws_lc_rs::signature::Ed25519KeyPair> {
    let path = dir.join("audit.key");
    let seed = crate::store::read_key_file(&path, true)?
        .ok_or_else(|| crate::error::SimError::Store(format!("{}: missing", path.display())))?;
    aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| {
        crate::error::SimError::Store(format!("{}: not an Ed25519 seed", path.display()))
    })
}

/// The token state as the store has it (label blank when none was ever set).
fn read_token_meta(store: &Store) -> SimResult<TokenMeta> {
    let initialized = store.meta("initialized")?.is_some_and(|v| v == [1]);
    let label = store
        .meta("label")?
        .and_then(|l| <[u8; 32]>::try_from(l.as_slice()).ok())
        .unwrap_or([b' '; 32]);
    let epoch = store
        .meta("epoch")?
        .and_then(|e| <[u8; 8]>::try_from(e.as_slice()).ok())
        .map_or(0, u64::from_be_bytes);
    Ok(TokenMeta {
        initialized,
        label,
        epoch,
    })
}

/// Every user whose sealed record verifies and parses; the others are added to `refused`.
fn read_users(store: &Store, refused: &mut Refused) -> SimResult<HashMap<String, User>> {
    let mut users = HashMap::new();
    for u in store.load_users(refused)? {
        match Role::from_code(u.role)
            .and_then(|role| User::from_record(role, &u.record, u.meta, u.extra))
        {
            Some(user) => {
                users.insert(u.name, user);
            }
            None => refused.users.push(u.name),
        }
    }
    Ok(users)
}
