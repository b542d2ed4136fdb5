//! The engine's public surface: one method per PKCS #11 function, in Rust types, and the
//! process-wide instance behind `C_Initialize` / `C_Finalize`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use cryptoki_sys::*;
use dashmap::DashMap;
use hsmpool_member::types::{Attr, Mechanism};
use hsmpool_member::{AttrAnswer, Role};
use parking_lot::Mutex;

use crate::backend::{Backend, MemberObject, MemberSession};
use crate::cluster::{Cluster, MemberStatus, Route};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::{Op, OpSlots};
use crate::types::*;
use hsmpool_member::types::{IdHash, CKA_HSMPOOL_OBJECT_ID};
use hsmpool_member::KeyMeta;

/// Arguments of `C_Initialize` that reach the engine.
#[derive(Clone, Debug, Default)]
pub struct InitArgs {
    /// The documented `pReserved` configuration string (after the `hsmpool:` prefix).
    pub config: Option<String>,
}

/// The one slot id this build presents.
pub const SLOT: SlotId = SlotId(0);

/// An application session.
///
/// # Invariants
/// `ops` holds at most one operation per [`OpKind`]; an operation is taken out of its slot
/// while a backend call runs and put back only if it stays active.
pub(crate) struct Session {
    pub(crate) rw: bool,
    pub(crate) find: Option<FindState>,
    pub(crate) ops: OpSlots,
    /// Session objects this session created (destroyed when it closes).
    pub(crate) objects: Vec<ObjectHandle>,
    /// `C_Login(CKU_CONTEXT_SPECIFIC)` was done for the current operation.
    pub(crate) context_authenticated: bool,
    /// The last key this session started an operation with, as checked then: an application
    /// that runs `*Init` on one key again and again (the common case) is answered from here,
    /// without touching the engine's shared maps, while the cache generation is unchanged.
    pub(crate) last_key: Option<KeyMemo>,
}

/// See [`Session::last_key`].
#[derive(Clone, Copy)]
pub(crate) struct KeyMemo {
    pub(crate) handle: ObjectHandle,
    pub(crate) usage: CK_ATTRIBUTE_TYPE,
    pub(crate) mech: CK_MECHANISM_TYPE,
    pub(crate) gen: u64,
    pub(crate) entry: ObjEntry,
    pub(crate) meta: KeyMeta,
}

pub(crate) struct FindState {
    pub(crate) results: Vec<ObjectHandle>,
    pub(crate) cursor: usize,
}

/// What the engine keeps for an application object handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjEntry {
    /// The object's id on the members (cluster-wide for token objects).
    pub(crate) member_obj: MemberObject,
    /// The session that created it, for session objects made through this engine.
    pub(crate) session: Option<SessionHandle>,
    /// For a session object: its member (index) and that member's pool epoch when it was
    /// made. `None` for token objects, which exist on every member.
    pub(crate) home: Option<(usize, u64)>,
}

impl ObjEntry {
    /// Where calls on this object go.
    pub(crate) fn route(&self) -> Route {
        match self.home {
            Some((i, epoch)) => Route::On(i, epoch),
            None => Route::Any,
        }
    }
}

/// The application's login state: read on every call with one atomic load, changed only under
/// its mutex (login, logout, closing the last session), so readers never contend.
struct LoginCell {
    lock: Mutex<()>,
    state: AtomicU8,
}

/// Holds the login mutex; the state can be read and changed through it.
struct LoginGuard<'a> {
    cell: &'a LoginCell,
    _held: parking_lot::MutexGuard<'a, ()>,
}

impl LoginCell {
    fn new() -> Self {
        LoginCell {
            lock: Mutex::new(()),
            state: AtomicU8::new(LoginState::Public as u8),
        }
    }
    fn get(&self) -> LoginState {
        LoginState::from_u8(self.state.load(Ordering::Acquire))
    }
    fn lock(&self) -> LoginGuard<'_> {
        LoginGuard {
            cell: self,
            _held: self.lock.lock(),
        }
    }
}

impl LoginGuard<'_> {
    fn get(&self) -> LoginState {
        self.cell.get()
    }
    fn set(&self, s: LoginState) {
        self.cell.state.store(s as u8, Ordering::Release);
    }
}

/// The login state of the application on the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum LoginState {
    Public = 0,
    User = 1,
    So = 2,
}

impl LoginState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => LoginState::User,
            2 => LoginState::So,
            _ => LoginState::Public,
        }
    }
}

/// The engine: one per initialised process.
///
/// Lock order (never taken the other way round): `login` → a session's mutex. Map guards of
/// `sessions`, `objects` and `by_member` are dropped before any backend call and before any
/// other lock is taken.
pub struct Engine {
    cfg: Config,
    /// The members, their session pools, balancing, retries and replication.
    pub(crate) cluster: Arc<Cluster>,
    login: LoginCell,
    sessions: DashMap<SessionHandle, Arc<Mutex<Session>>, IdHash>,
    next_session: AtomicU64,
    objects: DashMap<ObjectHandle, ObjEntry, IdHash>,
    by_member: DashMap<MemberObject, ObjectHandle, IdHash>,
    next_object: AtomicU64,
    /// Live session objects per member (a find must ask those members too).
    session_objects_on: Vec<AtomicU64>,
    /// Bumped by every create, destroy and attribute change made through the engine, and by
    /// login and logout: cached finds and key checks of an older generation are stale.
    generation: AtomicU64,
    /// Finds answered without a round trip: (template, login state) → handles.
    find_cache: DashMap<FindKey, FindHit>,
    /// How long a cached find may be served (other processes and applications may change the
    /// token too; changes through this engine invalidate at once).
    find_ttl: std::time::Duration,
    /// Key checks of `*Init` answered without a round trip: (object, usage, mechanism) → meta.
    key_cache:
        DashMap<(MemberObject, CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE), (u64, KeyMeta), IdHash>,
    /// `[compat] self_signed_certificates`: the certificates presented for keys without one.
    pub(crate) self_signed: Option<crate::selfsigned::SelfSigned>,
}

/// A cached find: the encoded template and the login state it was made in.
type FindKey = (Vec<u8>, u8);

/// A cached find result: its cache generation, when it was made, the handles.
struct FindHit {
    gen: u64,
    at: std::time::Instant,
    handles: Arc<Vec<ObjectHandle>>,
}

/// Cached finds and key checks are dropped wholesale past this many entries.
const CACHE_MAX: usize = 100_000;

struct Global {
    /// The fork generation this engine was made in (see [`after_fork_in_child`]).
    generation: u64,
    /// The process that made it.
    pid: u32,
    engine: Engine,
}

/// The process-wide engine. Read on every call without a lock or a shared counter
/// (`arc_swap`'s loads touch only per-thread state), so the entry path does not contend.
static GLOBAL: ArcSwapOption<Global> = ArcSwapOption::const_empty();
/// Serialises `C_Initialize` and `C_Finalize`.
static LIFECYCLE: Mutex<()> = Mutex::new(());
/// Bumped in the child after every `fork()`: an engine from an older generation belongs to the
/// parent.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called in the child after `fork()`; the C ABI registers it with `pthread_atfork`. From then on
/// every call in the child is `CKR_CRYPTOKI_NOT_INITIALIZED` until `C_Initialize`. It only bumps
/// an atomic counter, which is safe in a just-forked child.
pub fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

fn current(g: &Global) -> bool {
    g.generation == FORK_GENERATION.load(Ordering::Acquire) && g.pid == std::process::id()
}

/// A reference to the running engine, good for one call.
pub struct EngineRef(arc_swap::Guard<Option<Arc<Global>>>);

impl std::ops::Deref for EngineRef {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        match self.0.as_ref() {
            Some(g) => &g.engine,
            // `engine()` makes an EngineRef only from a loaded `Some`, and a guard keeps what it
            // loaded alive, so this arm cannot run.
            None => unreachable!("EngineRef holds an engine"),
        }
    }
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("HSMPOOL_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| cfg.log.clone());
    if let Some(f) = filter {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(f))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Initialise the process-wide engine (`C_Initialize`).
pub fn initialize(args: InitArgs) -> Result<()> {
    let _lifecycle = LIFECYCLE.lock();
    if let Some(old) = GLOBAL.load_full() {
        if current(&old) {
            return Err(Error::AlreadyInitialized);
        }
        // A forked child: the parent's engine (its store connection, its sessions) belongs to
        // the parent. Dropping it here could touch the parent's files, so it is leaked.
        std::mem::forget(GLOBAL.swap(None));
    }
    let cfg = match Config::resolve(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            init_logging(&Config::default());
            tracing::error!("C_Initialize: {e}");
            eprintln!("hsmpool: {e}");
            return Err(e);
        }
    };
    init_logging(&cfg);
    let engine = Engine::new(cfg).inspect_err(|e| {
        tracing::error!("C_Initialize: {e}");
    })?;
    GLOBAL.store(Some(Arc::new(Global {
        generation: FORK_GENERATION.load(Ordering::Acquire),
        pid: std::process::id(),
        engine,
    })));
    Ok(())
}

/// Tear down the process-wide engine (`C_Finalize`). Calls already inside the engine finish
/// with the engine they started with.
pub fn finalize() -> Result<()> {
    let _lifecycle = LIFECYCLE.lock();
    match GLOBAL.swap(None) {
        Some(old) if current(&old) => {
            old.engine.shutdown();
            Ok(())
        }
        Some(old) => {
            std::mem::forget(old);
            Err(Error::NotInitialized)
        }
        None => Err(Error::NotInitialized),
    }
}

/// The process-wide engine, or `NotInitialized` (also in a forked child that has not called
/// `C_Initialize` again).
pub fn engine() -> Result<EngineRef> {
    let g = GLOBAL.load();
    match g.as_ref() {
        Some(e) if e.generation == FORK_GENERATION.load(Ordering::Acquire) => Ok(EngineRef(g)),
        _ => Err(Error::NotInitialized),
    }
}

impl Engine {
    /// Build an engine from a configuration (opens every member).
    pub fn new(cfg: Config) -> Result<Engine> {
        let backends = crate::backend::open_members(&cfg)?;
        Engine::with_backends(cfg, backends)
    }

    /// Build an engine over members made elsewhere (tests drive their faults; an embedding
    /// application may bring its own backends). Member `i` of `cfg` is `backends[i]`.
    pub fn with_backends(cfg: Config, backends: Vec<Arc<dyn Backend>>) -> Result<Engine> {
        if backends.is_empty() {
            return Err(Error::Config("no member configured".into()));
        }
        let n = backends.len();
        let find_ttl =
            std::time::Duration::from_millis(cfg.cluster.find_cache_ttl_ms.unwrap_or(100));
        let cluster = Cluster::new(backends, cfg.cluster_settings());
        let self_signed = cfg
            .compat
            .self_signed_certificates
            .then(crate::selfsigned::SelfSigned::new);
        tracing::info!(
            members = n,
            self_signed_certificates = self_signed.is_some(),
            "engine ready"
        );
        Ok(Engine {
            cfg,
            cluster,
            login: LoginCell::new(),
            sessions: DashMap::with_hasher(IdHash),
            next_session: AtomicU64::new(1),
            objects: DashMap::with_hasher(IdHash),
            by_member: DashMap::with_hasher(IdHash),
            next_object: AtomicU64::new(1),
            session_objects_on: (0..n).map(|_| AtomicU64::new(0)).collect(),
            generation: AtomicU64::new(0),
            find_cache: DashMap::new(),
            find_ttl,
            key_cache: DashMap::with_hasher(IdHash),
            self_signed,
        })
    }

    fn shutdown(&self) {
        let all: Vec<SessionHandle> = self.sessions.iter().map(|e| *e.key()).collect();
        for s in all {
            let _ = self.close_session(s);
        }
        self.cluster.shutdown();
    }

    /// Per-member status and counters (`hsmpool status`, `HSMPOOL_GetMemberStats`).
    pub fn member_status(&self) -> Vec<MemberStatus> {
        self.cluster.status()
    }

    /// Finds and key checks answered from the engine's caches.
    pub fn cache_hits(&self) -> (u64, u64) {
        (
            self.cluster.find_cache_hits.get(),
            self.cluster.key_cache_hits.get(),
        )
    }

    /// Take a member out of the balancing (or put it back).
    pub fn drain_member(&self, index: usize, drained: bool) -> Result<()> {
        self.cluster.drain(index, drained)
    }

    /// The cache generation: the engine's own changes plus the cluster's resynchronisations.
    pub(crate) fn cache_gen(&self) -> u64 {
        self.generation.load(Ordering::Acquire) + self.cluster.changes()
    }

    /// The cache generation, for caches kept outside this file.
    pub(crate) fn cache_generation(&self) -> u64 {
        self.cache_gen()
    }

    /// How long a find result may be served.
    pub(crate) fn find_ttl(&self) -> std::time::Duration {
        self.find_ttl
    }

    /// Whether the application is logged in as the normal user.
    pub(crate) fn user_logged_in(&self) -> bool {
        self.login_state() == LoginState::User
    }

    /// A fresh application object handle for an object the engine itself presents.
    pub(crate) fn new_object_handle(&self) -> ObjectHandle {
        ObjectHandle(self.next_object.fetch_add(1, Ordering::Relaxed))
    }

    /// A certificate the engine presents (`[compat] self_signed_certificates`) for a handle
    /// that is no member object; else `ObjectHandleInvalid`.
    fn presented(&self, o: ObjectHandle) -> Result<Arc<crate::selfsigned::SelfSignedCert>> {
        self.self_signed_cert(o)?.ok_or(Error::ObjectHandleInvalid)
    }

    /// Something changed objects or visibility: cached finds and key checks are stale.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The key check of an `*Init`, from the cache when this generation has seen it.
    pub(crate) fn checked_key(
        &self,
        entry: &ObjEntry,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
    ) -> Result<KeyMeta> {
        let key = (entry.member_obj, usage, mech.mech);
        let gen = self.cache_gen();
        if let Some(hit) = self.key_cache.get(&key) {
            if hit.0 == gen {
                self.cluster.key_cache_hits.add(1);
                return Ok(hit.1);
            }
        }
        let meta = self
            .cluster
            .call(entry.route(), 1, |b, ms| {
                b.check_key(ms, usage, mech, entry.member_obj)
            })
            .map_err(|e| match e {
                Error::Hsm {
                    rv: CKR_OBJECT_HANDLE_INVALID,
                    ..
                } => Error::KeyHandleInvalid,
                e => e,
            })?;
        if self.key_cache.len() > CACHE_MAX {
            self.key_cache.clear();
        }
        self.key_cache.insert(key, (gen, meta));
        Ok(meta)
    }

    fn check_slot(&self, slot: SlotId) -> Result<()> {
        if slot == SLOT {
            Ok(())
        } else {
            Err(Error::SlotIdInvalid)
        }
    }

    pub(crate) fn session(&self, s: SessionHandle) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .get(&s)
            .map(|e| e.value().clone())
            .ok_or(Error::SessionHandleInvalid)
    }

    pub(crate) fn entry(&self, o: ObjectHandle) -> Result<ObjEntry> {
        self.objects
            .get(&o)
            .map(|e| *e.value())
            .ok_or(Error::ObjectHandleInvalid)
    }

    pub(crate) fn key_entry(&self, o: ObjectHandle) -> Result<ObjEntry> {
        self.entry(o).map_err(|_| Error::KeyHandleInvalid)
    }

    /// The application handle of a member object, made on first sight and stable after.
    fn handle_for(
        &self,
        mo: MemberObject,
        session: Option<SessionHandle>,
        home: Option<(usize, u64)>,
    ) -> ObjectHandle {
        *self.by_member.entry(mo).or_insert_with(|| {
            let h = ObjectHandle(self.next_object.fetch_add(1, Ordering::Relaxed));
            self.objects.insert(
                h,
                ObjEntry {
                    member_obj: mo,
                    session,
                    home,
                },
            );
            if let Some((i, _)) = home {
                self.session_objects_on[i].fetch_add(1, Ordering::Relaxed);
            }
            h
        })
    }

    fn forget_object(&self, h: ObjectHandle) {
        if let Some((_, e)) = self.objects.remove(&h) {
            self.by_member.remove(&e.member_obj);
            if let Some((i, _)) = e.home {
                self.session_objects_on[i].fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.invalidate();
    }

    fn login_state(&self) -> LoginState {
        self.login.get()
    }

    fn session_state(&self, rw: bool) -> CK_STATE {
        match (self.login_state(), rw) {
            (LoginState::Public, false) => CKS_RO_PUBLIC_SESSION,
            (LoginState::Public, true) => CKS_RW_PUBLIC_SESSION,
            (LoginState::User, false) => CKS_RO_USER_FUNCTIONS,
            (LoginState::User, true) => CKS_RW_USER_FUNCTIONS,
            (LoginState::So, _) => CKS_RW_SO_FUNCTIONS,
        }
    }

    fn rw_of(&self, s: SessionHandle) -> Result<bool> {
        Ok(self.session(s)?.lock().rw)
    }

    /// `C_GetInfo`.
    pub fn library_info(&self) -> LibraryInfo {
        LibraryInfo {
            manufacturer: "hsmpool".into(),
            description: "hsmpool PKCS#11 cluster module".into(),
            version: (0, 1),
        }
    }

    /// `C_GetSlotList`.
    pub fn slot_list(&self, _token_present: bool) -> Vec<SlotId> {
        vec![SLOT]
    }

    /// `C_GetSlotInfo`.
    pub fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        self.check_slot(slot)?;
        Ok(SlotInfo {
            description: self
                .cfg
                .token
                .slot_description
                .clone()
                .unwrap_or_else(|| "hsmpool cluster".into()),
            manufacturer: "hsmpool".into(),
            flags: CKF_TOKEN_PRESENT,
            hardware_version: (0, 1),
            firmware_version: (0, 1),
        })
    }

    /// `C_GetTokenInfo`.
    pub fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        self.check_slot(slot)?;
        let st = self.cluster.call(Route::Any, 1, |b, _| b.token_status())?;
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED;
        if st.initialized {
            flags |= CKF_TOKEN_INITIALIZED;
        }
        if st.user_pin_initialized {
            flags |= CKF_USER_PIN_INITIALIZED;
        }
        let pin_flags = |failures: u32, low, last, locked| -> CK_FLAGS {
            if failures == 0 {
                0
            } else if failures >= st.max_failures {
                locked
            } else if failures + 1 == st.max_failures {
                low | last
            } else {
                low
            }
        };
        flags |= pin_flags(
            st.user_failures,
            CKF_USER_PIN_COUNT_LOW,
            CKF_USER_PIN_FINAL_TRY,
            CKF_USER_PIN_LOCKED,
        );
        flags |= pin_flags(
            st.so_failures,
            CKF_SO_PIN_COUNT_LOW,
            CKF_SO_PIN_FINAL_TRY,
            CKF_SO_PIN_LOCKED,
        );
        let (mut count, mut rw) = (0u64, 0u64);
        for s in self.sessions.iter() {
            count += 1;
            if s.value().lock().rw {
                rw += 1;
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(TokenInfo {
            label: String::from_utf8_lossy(&st.label).trim_end().to_string(),
            manufacturer: "hsmpool".into(),
            model: "hsmpool cluster".into(),
            serial: format!(
                "{:016x}",
                fnv(self.cluster.members[0].backend.describe().as_bytes())
            ),
            flags,
            max_session_count: CK_EFFECTIVELY_INFINITE,
            session_count: count,
            max_rw_session_count: CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw,
            max_pin_len: hsmpool_member::MAX_PIN_LEN as CK_ULONG,
            min_pin_len: hsmpool_member::MIN_PIN_LEN as CK_ULONG,
            total_public_memory: CK_UNAVAILABLE_INFORMATION,
            free_public_memory: CK_UNAVAILABLE_INFORMATION,
            total_private_memory: CK_UNAVAILABLE_INFORMATION,
            free_private_memory: CK_UNAVAILABLE_INFORMATION,
            hardware_version: (0, 1),
            firmware_version: (0, 1),
            utc_time: utc_time(now),
        })
    }

    /// `C_GetMechanismList`.
    pub fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.check_slot(slot)?;
        Ok(crate::mechanism::MECHANISMS
            .iter()
            .map(|r| r.mech)
            .collect())
    }

    /// `C_GetMechanismInfo`.
    pub fn mechanism_info(&self, slot: SlotId, mech: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        self.check_slot(slot)?;
        let r = crate::mechanism::lookup(mech).ok_or(Error::MechanismInvalid)?;
        // CKF_HW: keyed operations are performed by the HSM (the simulator stands for one);
        // digests are computed in this process, so they do not claim it.
        let hw = if r.flags & CKF_DIGEST != 0 { 0 } else { CKF_HW };
        Ok(MechanismInfo {
            min_key_size: r.min,
            max_key_size: r.max,
            flags: r.flags | hw,
        })
    }

    /// `C_InitToken`. `label` is the 32-byte blank-padded label.
    pub fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8]) -> Result<()> {
        self.check_slot(slot)?;
        if !self.sessions.is_empty() {
            return Err(Error::SessionExists);
        }
        let label: &[u8; 32] = label
            .try_into()
            .map_err(|_| Error::ArgumentsBad("label must be 32 bytes"))?;
        self.cluster.on_all(|b, _| b.init_token(so_pin, label))?;
        self.objects.clear();
        self.by_member.clear();
        if let Some(ss) = &self.self_signed {
            ss.clear();
        }
        self.invalidate();
        Ok(())
    }

    /// `C_InitPIN`.
    pub fn init_pin(&self, s: SessionHandle, pin: &[u8]) -> Result<()> {
        let rw = self.rw_of(s)?;
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        if !rw {
            return Err(Error::SessionReadOnly);
        }
        self.cluster.on_all(|b, ms| b.init_pin(ms, pin))
    }

    /// `C_SetPIN`.
    pub fn set_pin(&self, s: SessionHandle, old: &[u8], new: &[u8]) -> Result<()> {
        if !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        self.cluster.on_all(|b, ms| b.set_pin(ms, old, new))?;
        if self.login_state() != LoginState::Public {
            self.cluster.new_pin(new);
        }
        Ok(())
    }

    /// `C_OpenSession`.
    pub fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        self.check_slot(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::SessionParallelNotSupported);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        // Holding the login lock orders this against a concurrent SO login.
        let login = self.login.lock();
        if !rw && login.get() == LoginState::So {
            return Err(Error::SessionReadWriteSoExists);
        }
        let h = SessionHandle(self.next_session.fetch_add(1, Ordering::Relaxed));
        self.sessions.insert(
            h,
            Arc::new(Mutex::new(Session {
                rw,
                find: None,
                ops: OpSlots::default(),
                objects: Vec::new(),
                context_authenticated: false,
                last_key: None,
            })),
        );
        drop(login);
        Ok(h)
    }

    /// `C_CloseSession`.
    pub fn close_session(&self, s: SessionHandle) -> Result<()> {
        let (_, sess) = self
            .sessions
            .remove(&s)
            .ok_or(Error::SessionHandleInvalid)?;
        let objects = std::mem::take(&mut sess.lock().objects);
        for h in objects {
            if let Ok(e) = self.entry(h) {
                let _ = self
                    .cluster
                    .call(e.route(), 1, |b, ms| b.destroy_object(ms, e.member_obj));
            }
            self.forget_object(h);
        }
        if self.sessions.is_empty() {
            let login = self.login.lock();
            if self.sessions.is_empty() && login.get() != LoginState::Public {
                self.cluster.logout();
                login.set(LoginState::Public);
                self.invalidate();
            }
        }
        Ok(())
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.check_slot(slot)?;
        let all: Vec<SessionHandle> = self.sessions.iter().map(|e| *e.key()).collect();
        for s in all {
            let _ = self.close_session(s);
        }
        Ok(())
    }

    /// `C_GetSessionInfo`.
    pub fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
        let rw = self.rw_of(s)?;
        Ok(SessionInfo {
            slot: SLOT,
            state: self.session_state(rw),
            flags: CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 },
            device_error: 0,
        })
    }

    /// `C_Login`. `username` is set by `C_LoginUser`.
    pub fn login(
        &self,
        s: SessionHandle,
        user_type: CK_USER_TYPE,
        pin: &[u8],
        username: Option<&[u8]>,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let username = match username {
            Some(u) => Some(
                std::str::from_utf8(u).map_err(|_| Error::ArgumentsBad("username is not UTF-8"))?,
            ),
            None => None,
        };
        let login = self.login.lock();
        match user_type {
            CKU_CONTEXT_SPECIFIC => {
                let role = match login.get() {
                    LoginState::Public => return Err(Error::UserNotLoggedIn),
                    LoginState::User => Role::User,
                    LoginState::So => Role::Officer,
                };
                drop(login);
                // Re-authenticate the same user; the member sessions stay logged in either way.
                self.cluster.check_pin(role, pin, username)?;
                sess.lock().context_authenticated = true;
                Ok(())
            }
            CKU_SO | CKU_USER => {
                let wanted = if user_type == CKU_SO {
                    LoginState::So
                } else {
                    LoginState::User
                };
                match login.get() {
                    LoginState::Public => {}
                    l if l == wanted => return Err(Error::UserAlreadyLoggedIn),
                    _ => return Err(Error::UserAnotherAlreadyLoggedIn),
                }
                if wanted == LoginState::So {
                    let ro_exists = self.sessions.iter().any(|e| !e.value().lock().rw);
                    if ro_exists {
                        return Err(Error::SessionReadOnlyExists);
                    }
                }
                let role = if wanted == LoginState::So {
                    Role::Officer
                } else {
                    Role::User
                };
                self.cluster.login(role, pin, username)?;
                login.set(wanted);
                self.invalidate();
                tracing::info!(user_type, "application logged in");
                if self.cluster.members.len() > 1 {
                    let n = self.cluster.level_all();
                    if n > 0 {
                        tracing::info!(objects = n, "members brought level at login");
                    }
                }
                Ok(())
            }
            _ => Err(Error::UserTypeInvalid),
        }
    }

    /// `C_Logout`.
    pub fn logout(&self, s: SessionHandle) -> Result<()> {
        self.session(s)?;
        let login = self.login.lock();
        if login.get() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        self.cluster.logout();
        login.set(LoginState::Public);
        self.invalidate();
        // Operations and finds may hold private keys or handles: end them all.
        for e in self.sessions.iter() {
            let mut sess = e.value().lock();
            sess.find = None;
            sess.ops = OpSlots::default();
        }
        Ok(())
    }

    fn check_write(&self, s: SessionHandle, template: &[Attr]) -> Result<()> {
        check_app_template(template)?;
        let token = template.iter().any(|a| a.ty == CKA_TOKEN && a.value == [1]);
        if token && !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        Ok(())
    }

    /// The `CKA_PRIVATE` default of a session object created by an application that has not
    /// logged in: false. PKCS #11 3.0 (§4.4, Table 24) leaves the default to the token; ours is
    /// true for private and secret keys, which such an application could not create at all
    /// (`CKR_USER_NOT_LOGGED_IN`). A session object is seen only by the application that made
    /// it and ends with its session, so nothing is exposed by letting it hand the token a key
    /// to use: OpenSSL's pkcs11-provider imports keys read from files that way. A template
    /// that says `CKA_PRIVATE`, or a token object, keeps the usual rules.
    fn public_session_object(&self, mut template: Vec<Attr>, token: bool) -> Vec<Attr> {
        let says = template.iter().any(|a| a.ty == CKA_PRIVATE);
        if !token && !says && self.login_state() == LoginState::Public {
            template.push(Attr::bool(CKA_PRIVATE, false));
        }
        template
    }

    /// Whether a template asks for a token object (`CKA_TOKEN`, else `default`).
    fn wants_token(template: &[Attr], default: bool) -> bool {
        template
            .iter()
            .rev()
            .find(|a| a.ty == CKA_TOKEN)
            .and_then(|a| a.as_bool())
            .unwrap_or(default)
    }

    /// A template with a fresh cluster-wide object id: where the object will be known on every
    /// member, and the idempotency token that makes a retried create return the first one.
    fn with_new_id(template: &[Attr]) -> Result<(Vec<Attr>, MemberObject)> {
        let mut b = [0u8; 8];
        aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::DeviceError("random".into()))?;
        let id = (u64::from_be_bytes(b) & 0x7fff_ffff_ffff_ffff).max(1);
        let mut t = template.to_vec();
        t.push(Attr::ulong(CKA_HSMPOOL_OBJECT_ID, id as CK_ULONG));
        Ok((t, MemberObject(id)))
    }

    /// Make objects on a member and adopt them. `route` is where the inputs are (`Any` unless
    /// a session key is involved); `token` says whether the new objects are token objects:
    /// those are then copied to every up member and must reach `min_replicas` of them, else
    /// they are removed everywhere and the caller gets `CKR_DEVICE_ERROR`; session objects stay
    /// on the member that made them.
    fn make<E: Into<Error>>(
        &self,
        s: SessionHandle,
        route: Route,
        token: bool,
        cost: u64,
        ids: &[MemberObject],
        f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<Vec<MemberObject>, E>,
    ) -> Result<Vec<ObjectHandle>> {
        let route = match (route, token) {
            // A new session object lives in pool session 0 of the member that makes it.
            (Route::Any, false) => Route::AnyHome,
            (r, _) => r,
        };
        let mut gate = self.cluster.gate.read();
        let (member, epoch, made) = self.cluster.call_full(route, cost, f)?;
        self.invalidate();
        if token {
            self.cluster.spread(member, &made, &mut gate)?;
        }
        if made.iter().zip(ids).any(|(m, i)| m != i) {
            tracing::debug!("a member returned ids other than the ones asked for");
        }
        let home = (!token).then_some((member, epoch));
        Ok(made.into_iter().map(|mo| self.adopt(s, mo, home)).collect())
    }

    fn adopt(
        &self,
        s: SessionHandle,
        mo: MemberObject,
        home: Option<(usize, u64)>,
    ) -> ObjectHandle {
        let owner = home.map(|_| s);
        let h = self.handle_for(mo, owner, home);
        if home.is_some() {
            if let Some(sess) = self.sessions.get(&s).map(|e| e.value().clone()) {
                sess.lock().objects.push(h);
            }
        }
        h
    }

    fn one(v: Vec<ObjectHandle>) -> Result<ObjectHandle> {
        v.into_iter()
            .next()
            .ok_or(Error::General("create made no object".into()))
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, s: SessionHandle, template: Vec<Attr>) -> Result<ObjectHandle> {
        self.session(s)?;
        self.check_write(s, &template)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let (t, id) = Self::with_new_id(&template)?;
        Self::one(self.make(s, Route::Any, token, 5, &[id], |b, ms| {
            b.create_object(ms, &t).map(|o| vec![o])
        })?)
    }

    /// `C_CopyObject`.
    pub fn copy_object(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.check_write(s, &template)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => {
                // A presented certificate has CKA_COPYABLE false (PKCS #11 3.0 §4.4, Table 25; §5.7.2).
                self.presented(o).map_err(|_| err)?;
                return Err(Error::ActionProhibited);
            }
        };
        let token = Self::wants_token(&template, e.home.is_none());
        let (t, id) = Self::with_new_id(&template)?;
        Self::one(self.make(s, e.route(), token, 5, &[id], |b, ms| {
            b.copy_object(ms, e.member_obj, &t).map(|o| vec![o])
        })?)
    }

    /// `C_DestroyObject`. A token object is destroyed on one member (which checks that it may
    /// be) and then removed from every other.
    pub fn destroy_object(&self, s: SessionHandle, o: ObjectHandle) -> Result<()> {
        let rw = self.rw_of(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return self.refuse_presented_change(rw, o, err),
        };
        if !rw && e.home.is_none() {
            return Err(Error::SessionReadOnly);
        }
        // Ordered against the last pass of a resynchronisation, like a create.
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self
            .cluster
            .call_full(e.route(), 1, |b, ms| b.destroy_object(ms, e.member_obj))?;
        if e.home.is_none() {
            self.cluster.drop_replicas(Some(first), &[e.member_obj]);
        }
        self.forget_object(o);
        if let Some(owner) = e.session {
            if let Some(sess) = self.sessions.get(&owner).map(|x| x.value().clone()) {
                sess.lock().objects.retain(|h| *h != o);
            }
        }
        Ok(())
    }

    /// A destroy or attribute change of a certificate the engine presents: a token object, so
    /// not in a read-only session (§5.7.3, §5.7.6), and `CKA_DESTROYABLE` and `CKA_MODIFIABLE`
    /// are false, so `CKR_ACTION_PROHIBITED` (PKCS #11 3.0 §4.4, Table 25). `err` is the answer for a
    /// handle that is no such certificate either.
    fn refuse_presented_change(&self, rw: bool, o: ObjectHandle, err: Error) -> Result<()> {
        self.presented(o).map_err(|_| err)?;
        if !rw {
            return Err(Error::SessionReadOnly);
        }
        Err(Error::ActionProhibited)
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, s: SessionHandle, o: ObjectHandle) -> Result<u64> {
        self.session(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return Ok(self.presented(o).map_err(|_| err)?.size()),
        };
        self.cluster
            .call(e.route(), 1, |b, ms| b.object_size(ms, e.member_obj))
    }

    /// `C_GetAttributeValue`: one answer per requested type, in order.
    pub fn get_attribute_value(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrValue>> {
        self.session(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return Ok(self.presented(o).map_err(|_| err)?.answer(types)),
        };
        let answers = self.cluster.call(e.route(), 1, |b, ms| {
            b.get_attributes(ms, e.member_obj, types)
        })?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                AttrAnswer::Value(v) => AttrValue::Value(v),
                AttrAnswer::Sensitive => AttrValue::Sensitive,
                AttrAnswer::Invalid => AttrValue::Invalid,
            })
            .collect())
    }

    /// `C_SetAttributeValue`.
    pub fn set_attribute_value(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<()> {
        let rw = self.rw_of(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return self.refuse_presented_change(rw, o, err),
        };
        if !rw && e.home.is_none() {
            return Err(Error::SessionReadOnly);
        }
        check_app_template(&template)?;
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self.cluster.call_full(e.route(), 1, |b, ms| {
            b.set_attributes(ms, e.member_obj, &template)
        })?;
        self.invalidate();
        if e.home.is_none() {
            // The changed object replaces the old one on the other members (one that misses it
            // now is brought level when it returns).
            self.cluster.replicate(&mut vec![first], &[e.member_obj]);
        }
        Ok(())
    }

    /// `C_FindObjectsInit`.
    pub fn find_objects_init(&self, s: SessionHandle, template: Vec<Attr>) -> Result<()> {
        let sess = self.session(s)?;
        if sess.lock().find.is_some() {
            return Err(Error::OperationActive);
        }
        let results = self.find_handles(&template)?;
        let mut g = sess.lock();
        if g.find.is_some() {
            return Err(Error::OperationActive);
        }
        g.find = Some(FindState {
            results: results.to_vec(),
            cursor: 0,
        });
        Ok(())
    }

    /// The handles matching a template: from the find cache when nothing changed since the
    /// same find, else from one member (token objects) and from each member holding session
    /// objects of ours.
    fn find_handles(&self, template: &[Attr]) -> Result<Arc<Vec<ObjectHandle>>> {
        let key = (
            hsmpool_member::types::encode_attr_array(template),
            self.login_state() as u8,
        );
        let gen = self.cache_gen();
        if let Some(hit) = self.find_cache.get(&key) {
            if hit.gen == gen && hit.at.elapsed() < self.find_ttl {
                self.cluster.find_cache_hits.add(1);
                return Ok(hit.handles.clone());
            }
        }
        let mut found: Vec<MemberObject> = Vec::new();
        let homes: Vec<usize> = (0..self.session_objects_on.len())
            .filter(|i| self.session_objects_on[*i].load(Ordering::Relaxed) > 0)
            .collect();
        if homes.is_empty() {
            found = self
                .cluster
                .call(Route::Any, 2, |b, ms| b.find(ms, template))?;
        } else {
            // Pool session 0 of each member holding our session objects sees them and every
            // token object; a member that is gone took its session objects with it.
            let mut any = false;
            for i in homes {
                let epoch = self.cluster.members[i].epoch();
                if let Ok(v) = self
                    .cluster
                    .call(Route::On(i, epoch), 2, |b, ms| b.find(ms, template))
                {
                    found.extend(v);
                    any = true;
                }
            }
            if !any {
                found = self
                    .cluster
                    .call(Route::Any, 2, |b, ms| b.find(ms, template))?;
            }
            found.sort_unstable();
            found.dedup();
        }
        let mut results: Vec<ObjectHandle> = found
            .into_iter()
            .map(|mo| {
                self.by_member
                    .get(&mo)
                    .map(|h| *h.value())
                    .unwrap_or_else(|| self.handle_for(mo, None, None))
            })
            .collect();
        if self.self_signed.is_some() && crate::selfsigned::could_match(template) {
            results.extend(
                self.self_signed_certs(true)?
                    .iter()
                    .filter(|c| c.matches(template))
                    .map(|c| c.handle),
            );
        }
        let results = Arc::new(results);
        if self.find_cache.len() > CACHE_MAX {
            self.find_cache.clear();
        }
        self.find_cache.insert(
            key,
            FindHit {
                gen,
                at: std::time::Instant::now(),
                handles: results.clone(),
            },
        );
        Ok(results)
    }

    /// `C_FindObjects`: at most `max` handles.
    pub fn find_objects(&self, s: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let f = g.find.as_mut().ok_or(Error::OperationNotInitialized)?;
        let end = f.results.len().min(f.cursor.saturating_add(max));
        let out = f.results[f.cursor..end].to_vec();
        f.cursor = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_objects_final(&self, s: SessionHandle) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        if g.find.take().is_none() {
            return Err(Error::OperationNotInitialized);
        }
        Ok(())
    }

    /// `C_GenerateKey`.
    pub fn generate_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_GENERATE)?;
        self.check_write(s, &template)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let (t, id) = Self::with_new_id(&template)?;
        Self::one(self.make(s, Route::Any, token, 5, &[id], |b, ms| {
            b.generate_key(ms, &mech, &t).map(|o| vec![o])
        })?)
    }

    /// `C_GenerateKeyPair`: (public, private).
    pub fn generate_key_pair(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        self.session(s)?;
        let row = self.mech_row(&mech, CKF_GENERATE_KEY_PAIR)?;
        self.check_write(s, &public)?;
        self.check_write(s, &private)?;
        let rsa = matches!(
            mech.mech,
            CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN
        );
        if rsa {
            // Generation sizes are the table's (verification of larger imported keys is wider).
            if let Some(bits) = public
                .iter()
                .find(|a| a.ty == CKA_MODULUS_BITS)
                .and_then(|a| a.as_ulong())
            {
                if bits < row.min || bits > row.max {
                    return Err(Error::KeySizeRange);
                }
            }
        }
        let pt = Self::wants_token(&public, false);
        let kt = Self::wants_token(&private, false);
        let private = self.public_session_object(private, kt);
        let (tp, ip) = Self::with_new_id(&public)?;
        let (tk, ik) = Self::with_new_id(&private)?;
        let cost = if rsa { 2000 } else { 20 };
        let gen = |b: &dyn Backend, ms| {
            b.generate_key_pair(ms, &mech, &tp, &tk)
                .map(|(p, k)| vec![p, k])
        };
        if pt == kt {
            let v = self.make(s, Route::Any, pt, cost, &[ip, ik], gen)?;
            return match v[..] {
                [p, k] => Ok((p, k)),
                _ => Err(Error::General("key pair generation made no pair".into())),
            };
        }
        // One half a token object, the other a session object: make the pair as session
        // objects' member does, then spread the token half.
        let mut gate = self.cluster.gate.read();
        let (member, epoch, made) = self.cluster.call_full(Route::AnyHome, cost, gen)?;
        self.invalidate();
        let (p, k) = match made[..] {
            [p, k] => (p, k),
            _ => return Err(Error::General("key pair generation made no pair".into())),
        };
        let token_half = if pt { p } else { k };
        if let Err(e) = self.cluster.spread(member, &[token_half], &mut gate) {
            let _ = self.cluster.call(Route::On(member, epoch), 1, |b, ms| {
                b.destroy_object(ms, if pt { k } else { p })
            });
            return Err(e);
        }
        let home = Some((member, epoch));
        Ok((
            self.adopt(s, p, if pt { None } else { home }),
            self.adopt(s, k, if kt { None } else { home }),
        ))
    }

    /// The table row of a mechanism that offers `flag`, else `MechanismInvalid`.
    pub(crate) fn mech_row(
        &self,
        mech: &Mechanism,
        flag: CK_FLAGS,
    ) -> Result<&'static crate::mechanism::MechRow> {
        let row = crate::mechanism::lookup(mech.mech).ok_or(Error::MechanismInvalid)?;
        if row.flags & flag == 0 {
            return Err(Error::MechanismInvalid);
        }
        Ok(row)
    }

    /// `C_WrapKey`: the wrapped bytes (the C layer applies the output-length rule).
    pub fn wrap_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>> {
        self.session(s)?;
        self.mech_row(&mech, CKF_WRAP)?;
        let w = self
            .entry(wrapping)
            .map_err(|_| Error::WrappingKeyHandleInvalid)?;
        let k = self.key_entry(key)?;
        let route = Self::route_of(&[w, k])?;
        self.cluster
            .call(route, 5, |b, ms| {
                b.wrap_key(ms, &mech, w.member_obj, k.member_obj)
            })
            .map_err(|e| match e {
                Error::Hsm {
                    rv: CKR_OBJECT_HANDLE_INVALID,
                    ..
                } => Error::KeyHandleInvalid,
                e => e,
            })
    }

    /// `C_UnwrapKey`.
    pub fn unwrap_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        unwrapping: ObjectHandle,
        wrapped: &[u8],
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_UNWRAP)?;
        self.check_write(s, &template)?;
        let u = self
            .entry(unwrapping)
            .map_err(|_| Error::UnwrappingKeyHandleInvalid)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let (t, id) = Self::with_new_id(&template)?;
        Self::one(self.make(s, u.route(), token, 10, &[id], |b, ms| {
            b.unwrap_key(ms, &mech, u.member_obj, wrapped, &t)
                .map(|o| vec![o])
        })?)
    }

    /// The route of a call using several objects: pinned if any is a session object (all such
    /// must share a member), else any member.
    fn route_of(entries: &[ObjEntry]) -> Result<Route> {
        let mut route = Route::Any;
        for e in entries {
            match (route, e.route()) {
                (_, Route::Any) => {}
                (Route::Any, r) => route = r,
                (a, b) if a == b => {}
                _ => {
                    tracing::warn!("session objects on different members used together");
                    return Err(Error::KeyHandleInvalid);
                }
            }
        }
        Ok(route)
    }

    /// `C_DeriveKey`.
    pub fn derive_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        base: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_DERIVE)?;
        self.check_write(s, &template)?;
        let base = self.key_entry(base)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let (t, id) = Self::with_new_id(&template)?;
        Self::one(self.make(s, base.route(), token, 10, &[id], |b, ms| {
            b.derive_key(ms, &mech, base.member_obj, &t)
                .map(|o| vec![o])
        })?)
    }

    /// `C_SeedRandom`: the generator (aws-lc's) takes no seed from applications.
    pub fn seed_random(&self, s: SessionHandle, _seed: &[u8]) -> Result<()> {
        self.session(s)?;
        Err(Error::RandomSeedNotSupported)
    }

    /// `C_GenerateRandom`.
    pub fn generate_random(&self, s: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.session(s)?;
        self.cluster.call(Route::Any, 1, |b, _| b.random(out))
    }

    /// Take an operation out of its slot (it is put back by the caller if it stays active).
    pub(crate) fn take_op(
        &self,
        s: SessionHandle,
        kind: OpKind,
    ) -> Result<(Arc<Mutex<Session>>, Box<Op>)> {
        let sess = self.session(s)?;
        let op = sess
            .lock()
            .ops
            .take(kind)
            .ok_or(Error::OperationNotInitialized)?;
        Ok((sess, op))
    }

    pub(crate) fn put_op(&self, sess: &Mutex<Session>, kind: OpKind, op: Box<Op>) {
        sess.lock().ops.put(kind, op);
    }
}

/// Attributes only the token sets: PKCS #11 3.0 §4.2 footnotes 2, 4 and 6 (MUST NOT be given
/// to `C_CreateObject`, `C_GenerateKey(Pair)` or `C_UnwrapKey`) on `CKA_UNIQUE_ID` (§4.4),
/// `CKA_LOCAL` and `CKA_KEY_GEN_MECHANISM` (§4.7), `CKA_ALWAYS_SENSITIVE` and
/// `CKA_NEVER_EXTRACTABLE` (§4.9, §4.10); none is modifiable (no footnote 8), so `C_CopyObject`
/// and `C_SetAttributeValue` may not name them either, and a derived key is made by the token
/// as a generated one is.
const TOKEN_SET: [CK_ATTRIBUTE_TYPE; 5] = [
    CKA_UNIQUE_ID,
    CKA_LOCAL,
    CKA_KEY_GEN_MECHANISM,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
];

/// The one check of every template an application gives to make or change an object
/// (`C_CreateObject`, `C_CopyObject`, `C_SetAttributeValue`, `C_GenerateKey`, both templates of
/// `C_GenerateKeyPair`, `C_UnwrapKey`, `C_DeriveKey`): `CKA_HSMPOOL_OBJECT_ID` is the engine's
/// own attribute (`CKR_ATTRIBUTE_TYPE_INVALID`), and a token-set attribute is
/// `CKR_ATTRIBUTE_READ_ONLY` whatever its value and whatever the object's class: even a value
/// equal to the token's is the application claiming to set it.
///
/// It is made here, on the application's templates, and not in the member: replication copies
/// every attribute of a token object from one member to another (`export_clone` /
/// `import_clone`), `CKA_LOCAL` and the rest included, and must keep doing so.
fn check_app_template(template: &[Attr]) -> Result<()> {
    for a in template {
        if a.ty == CKA_HSMPOOL_OBJECT_ID {
            return Err(Error::AttributeTypeInvalid(a.ty));
        }
        if TOKEN_SET.contains(&a.ty) {
            return Err(Error::AttributeReadOnly(a.ty));
        }
    }
    Ok(())
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn utc_time(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_is_sixteen_characters_of_the_right_date() {
        assert_eq!(utc_time(0), "1970010100000000");
        assert_eq!(utc_time(1_796_000_000), "2026113000532000");
        assert_eq!(utc_time(1_796_000_000).len(), 16);
    }
}
