//! The engine's public surface: one method per PKCS #11 function, in Rust types, and the
//! process-wide instance behind `C_Initialize` / `C_Finalize`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use cryptoki_sys::*;
use dashmap::DashMap;
use hsmpool_sim::hsm::{AttrAnswer, HsmConfig, Role};
use hsmpool_sim::types::{Attr, Mechanism};
use parking_lot::Mutex;

use crate::backend::inproc::InProcess;
use crate::backend::{Backend, MemberId, MemberObject, MemberSession};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::{Op, OpSlots};
use crate::types::*;

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
}

pub(crate) struct FindState {
    pub(crate) results: Vec<ObjectHandle>,
    pub(crate) cursor: usize,
}

/// What the engine keeps for an application object handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ObjEntry {
    pub(crate) member_obj: MemberObject,
    /// The session that created it, for session objects made through this engine.
    pub(crate) session: Option<SessionHandle>,
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
    pub(crate) member: Arc<dyn Backend>,
    /// The application's authentication context on the member.
    pub(crate) ms: MemberSession,
    login: LoginCell,
    sessions: DashMap<SessionHandle, Arc<Mutex<Session>>>,
    next_session: AtomicU64,
    objects: DashMap<ObjectHandle, ObjEntry>,
    by_member: DashMap<MemberObject, ObjectHandle>,
    next_object: AtomicU64,
}

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
        let members = cfg.members();
        let m = members
            .first()
            .ok_or_else(|| Error::Config("no member configured".into()))?;
        let data_dir = cfg.embedded_data_dir();
        let mut hcfg = HsmConfig::new(data_dir);
        if let Some(i) = m.pin_iterations {
            hcfg.pin_iterations = i;
        }
        if let Some(f) = m.max_login_failures {
            hcfg.max_login_failures = f;
        }
        hcfg.timing = match m.timing.as_deref() {
            Some("hsm2m.medium") => Some(hsmpool_sim::timing::TimingConfig::default()),
            Some("hsm1.medium") => Some(hsmpool_sim::timing::TimingConfig::cloudhsm_hsm1_medium()),
            _ => None,
        };
        let member: Arc<dyn Backend> = Arc::new(InProcess::open(MemberId(0), hcfg)?);
        let ms = member.open_session()?;
        tracing::info!(member = %member.describe(), "engine ready");
        Ok(Engine {
            cfg,
            member,
            ms,
            login: LoginCell::new(),
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
            objects: DashMap::new(),
            by_member: DashMap::new(),
            next_object: AtomicU64::new(1),
        })
    }

    fn shutdown(&self) {
        let all: Vec<SessionHandle> = self.sessions.iter().map(|e| *e.key()).collect();
        for s in all {
            let _ = self.close_session(s);
        }
        self.member.close_session(self.ms);
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
    fn handle_for(&self, mo: MemberObject, session: Option<SessionHandle>) -> ObjectHandle {
        *self.by_member.entry(mo).or_insert_with(|| {
            let h = ObjectHandle(self.next_object.fetch_add(1, Ordering::Relaxed));
            self.objects.insert(
                h,
                ObjEntry {
                    member_obj: mo,
                    session,
                },
            );
            h
        })
    }

    fn forget_object(&self, h: ObjectHandle) {
        if let Some((_, e)) = self.objects.remove(&h) {
            self.by_member.remove(&e.member_obj);
        }
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
        let st = self.member.token_status()?;
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
            serial: format!("{:016x}", fnv(self.member.describe().as_bytes())),
            flags,
            max_session_count: CK_EFFECTIVELY_INFINITE,
            session_count: count,
            max_rw_session_count: CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw,
            max_pin_len: hsmpool_sim::hsm::MAX_PIN_LEN as CK_ULONG,
            min_pin_len: hsmpool_sim::hsm::MIN_PIN_LEN as CK_ULONG,
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
        self.member.init_token(so_pin, label)?;
        self.objects.clear();
        self.by_member.clear();
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
        self.member.init_pin(self.ms, pin)
    }

    /// `C_SetPIN`.
    pub fn set_pin(&self, s: SessionHandle, old: &[u8], new: &[u8]) -> Result<()> {
        if !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        self.member.set_pin(self.ms, old, new)
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
                let _ = self.member.destroy_object(self.ms, e.member_obj);
            }
            self.forget_object(h);
        }
        if self.sessions.is_empty() {
            let login = self.login.lock();
            if self.sessions.is_empty() && login.get() != LoginState::Public {
                let _ = self.member.logout(self.ms);
                login.set(LoginState::Public);
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
                // Re-authenticate the same user; the member session stays logged in either way.
                self.member.login(self.ms, role, pin, username)?;
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
                self.member.login(self.ms, role, pin, username)?;
                login.set(wanted);
                tracing::info!(user_type, "application logged in");
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
        self.member.logout(self.ms)?;
        login.set(LoginState::Public);
        // Operations and finds may hold private keys or handles: end them all.
        for e in self.sessions.iter() {
            let mut sess = e.value().lock();
            sess.find = None;
            sess.ops = OpSlots::default();
        }
        Ok(())
    }

    fn check_write(&self, s: SessionHandle, template: &[Attr]) -> Result<()> {
        let token = template.iter().any(|a| a.ty == CKA_TOKEN && a.value == [1]);
        if token && !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        Ok(())
    }

    fn adopt(&self, s: SessionHandle, mo: MemberObject, token: bool) -> Result<ObjectHandle> {
        let owner = if token { None } else { Some(s) };
        let h = self.handle_for(mo, owner);
        if !token {
            if let Some(sess) = self.sessions.get(&s).map(|e| e.value().clone()) {
                sess.lock().objects.push(h);
            }
        }
        Ok(h)
    }

    fn is_token(&self, mo: MemberObject) -> Result<bool> {
        Ok(self.member.key_meta(self.ms, mo)?.token)
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, s: SessionHandle, template: Vec<Attr>) -> Result<ObjectHandle> {
        self.session(s)?;
        self.check_write(s, &template)?;
        let mo = self.member.create_object(self.ms, &template)?;
        let token = self.is_token(mo)?;
        self.adopt(s, mo, token)
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
        let e = self.entry(o)?;
        let mo = self.member.copy_object(self.ms, e.member_obj, &template)?;
        let token = self.is_token(mo)?;
        self.adopt(s, mo, token)
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, s: SessionHandle, o: ObjectHandle) -> Result<()> {
        let rw = self.rw_of(s)?;
        let e = self.entry(o)?;
        if !rw && self.is_token(e.member_obj)? {
            return Err(Error::SessionReadOnly);
        }
        self.member.destroy_object(self.ms, e.member_obj)?;
        self.forget_object(o);
        if let Some(owner) = e.session {
            if let Some(sess) = self.sessions.get(&owner).map(|x| x.value().clone()) {
                sess.lock().objects.retain(|h| *h != o);
            }
        }
        Ok(())
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, s: SessionHandle, o: ObjectHandle) -> Result<u64> {
        self.session(s)?;
        let e = self.entry(o)?;
        self.member.object_size(self.ms, e.member_obj)
    }

    /// `C_GetAttributeValue`: one answer per requested type, in order.
    pub fn get_attribute_value(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrValue>> {
        self.session(s)?;
        let e = self.entry(o)?;
        let answers = self.member.get_attributes(self.ms, e.member_obj, types)?;
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
        let e = self.entry(o)?;
        if !rw && self.is_token(e.member_obj)? {
            return Err(Error::SessionReadOnly);
        }
        self.member.set_attributes(self.ms, e.member_obj, &template)
    }

    /// `C_FindObjectsInit`.
    pub fn find_objects_init(&self, s: SessionHandle, template: Vec<Attr>) -> Result<()> {
        let sess = self.session(s)?;
        if sess.lock().find.is_some() {
            return Err(Error::OperationActive);
        }
        let found = self.member.find(self.ms, &template)?;
        let results: Vec<ObjectHandle> = found
            .into_iter()
            .map(|mo| {
                self.by_member
                    .get(&mo)
                    .map(|h| *h.value())
                    .unwrap_or_else(|| self.handle_for(mo, None))
            })
            .collect();
        let mut g = sess.lock();
        if g.find.is_some() {
            return Err(Error::OperationActive);
        }
        g.find = Some(FindState { results, cursor: 0 });
        Ok(())
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
        let mo = self.member.generate_key(self.ms, &mech, &template)?;
        let token = self.is_token(mo)?;
        self.adopt(s, mo, token)
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
        if mech.mech == CKM_RSA_PKCS_KEY_PAIR_GEN {
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
        let (p, k) = self
            .member
            .generate_key_pair(self.ms, &mech, &public, &private)?;
        let pt = self.is_token(p)?;
        let kt = self.is_token(k)?;
        Ok((self.adopt(s, p, pt)?, self.adopt(s, k, kt)?))
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
        self.member
            .wrap_key(self.ms, &mech, w.member_obj, k.member_obj)
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
        let mo = self
            .member
            .unwrap_key(self.ms, &mech, u.member_obj, wrapped, &template)?;
        let token = self.is_token(mo)?;
        self.adopt(s, mo, token)
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
        let b = self.key_entry(base)?;
        let mo = self
            .member
            .derive_key(self.ms, &mech, b.member_obj, &template)?;
        let token = self.is_token(mo)?;
        self.adopt(s, mo, token)
    }

    /// `C_SeedRandom`: the generator (aws-lc's) takes no seed from applications.
    pub fn seed_random(&self, s: SessionHandle, _seed: &[u8]) -> Result<()> {
        self.session(s)?;
        Err(Error::RandomSeedNotSupported)
    }

    /// `C_GenerateRandom`.
    pub fn generate_random(&self, s: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.session(s)?;
        self.member.random(out)
    }

    /// Take an operation out of its slot (it is put back by the caller if it stays active).
    pub(crate) fn take_op(
        &self,
        s: SessionHandle,
        kind: OpKind,
    ) -> Result<(Arc<Mutex<Session>>, Op)> {
        let sess = self.session(s)?;
        let op = sess
            .lock()
            .ops
            .take(kind)
            .ok_or(Error::OperationNotInitialized)?;
        Ok((sess, op))
    }

    pub(crate) fn put_op(&self, sess: &Mutex<Session>, kind: OpKind, op: Op) {
        sess.lock().ops.put(kind, op);
    }
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
