//! The engine itself and its life: the [`Engine`] struct, building it over its members and
//! shutting it down, the cache generation, and the process-wide instance behind
//! `C_Initialize` / `C_Finalize` (with fork handling).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE};
use dashmap::DashMap;
use hsmpool_member::clock::Clock;
use hsmpool_member::mechanism::MechRow;
use hsmpool_member::types::IdHash;
use hsmpool_member::KeyMeta;
use parking_lot::Mutex;

use crate::backend::{Backend, MemberObject};
use crate::cluster::{Cluster, MemberStatus, Settings};
use crate::compat::{Compat, Host};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::state::{FindHit, FindKey, LoginCell, LoginState, ObjEntry, Session};
use crate::types::{ObjectHandle, SessionHandle};

/// Arguments of `C_Initialize` that reach the engine.
#[derive(Clone, Debug, Default)]
pub struct InitArgs {
    /// The documented `pReserved` configuration string (after the `hsmpool:` prefix).
    pub config: Option<String>,
}

/// The engine: one per initialised process.
///
/// Lock order (never taken the other way round): `login` → a session's mutex. Map guards of
/// `sessions`, `objects` and `by_member` are dropped before any backend call and before any
/// other lock is taken.
///
/// # Invariants
/// Between calls (a call may be half-way through its own change):
/// - `objects` and `by_member` are inverse maps: handle `h` has the entry of member object `m`
///   exactly when `m` maps to `h`. `handle_for` (the only place that makes a handle for a
///   member object) inserts both, `forget_object` removes both, and `C_InitToken` clears both.
/// - `session_objects_on[i]` counts the `objects` entries whose `home` is member `i` (session
///   objects made there): `handle_for` adds one with each such entry, `forget_object` takes it
///   away with the entry. A find asks every member whose count is not zero.
/// - A session's `objects` lists the handles `adopt` gave it for the session objects it made,
///   less those destroyed since; closing the session destroys and forgets them all.
/// - `next_session` and `next_object` only grow, from 1: a handle is never 0
///   (`CK_INVALID_HANDLE`) and never given twice. The certificates presented under
///   `[compat] self_signed_certificates` draw their handles from `next_object` too, and are
///   never in `objects` or `by_member`.
/// - The cache generation (`cache_generation`: `generation` plus the cluster's
///   resynchronisations) only grows. `generation` is bumped by every change made through this
///   engine to objects (create, copy, generate, unwrap, derive, destroy, attribute change,
///   `C_InitToken`) and to the login state (login, logout, the close of the last session). A
///   cached find (`find_cache`), key check (`key_cache`, a session's `last_key`) or set of
///   presented certificates is served only while the generation it recorded is the current
///   one (finds also only within `find_ttl`); each records the generation read *before* the
///   member calls that filled it, so a change racing a fill leaves the entry stale, never wrong.
/// - `find_cache` and `key_cache` are cleared wholesale when an insert finds them past
///   `CACHE_MAX` entries, so they stay near that size at most.
/// - The login state changes only under the login mutex, and closing the last session sets it
///   back to public (logging the members out).
pub struct Engine {
    pub(super) cfg: Config,
    /// The members, their session pools, balancing, retries and replication.
    pub(crate) cluster: Arc<Cluster>,
    pub(super) login: LoginCell,
    pub(super) sessions: DashMap<SessionHandle, Arc<Mutex<Session>>, IdHash>,
    pub(super) next_session: AtomicU64,
    pub(super) objects: DashMap<ObjectHandle, ObjEntry, IdHash>,
    pub(super) by_member: DashMap<MemberObject, ObjectHandle, IdHash>,
    pub(super) next_object: AtomicU64,
    /// Live session objects per member (a find must ask those members too).
    pub(super) session_objects_on: Vec<AtomicU64>,
    /// Bumped by every create, destroy and attribute change made through the engine, and by
    /// login and logout: cached finds and key checks of an older generation are stale.
    pub(super) generation: AtomicU64,
    /// Finds answered without a round trip: (template, login state) → handles.
    pub(super) find_cache: DashMap<FindKey, FindHit>,
    /// How long a cached find may be served (other processes and applications may change the
    /// token too; changes through this engine invalidate at once).
    pub(super) find_ttl: std::time::Duration,
    /// Whether a login brings the up members level (users, then token objects); off only for
    /// `hsmpool cluster check --dry-run`, which must see the drift it reports.
    pub(super) level_at_login: std::sync::atomic::AtomicBool,
    /// Key checks of `*Init` answered without a round trip: (object, usage, mechanism) → meta.
    pub(super) key_cache:
        DashMap<(MemberObject, CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE), (u64, KeyMeta), IdHash>,
    /// The `[compat]` features: objects the engine presents that no member holds (the
    /// certificates of `[compat] self_signed_certificates`).
    pub(super) compat: Compat,
    /// The mechanism table as this token offers it: the rows every member can do, narrowed
    /// to the functions and key sizes they all take (`MechRow::common`).
    pub(crate) mechanisms: Vec<MechRow>,
}

/// Cached finds and key checks are dropped wholesale past this many entries.
pub(super) const CACHE_MAX: usize = 100_000;

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
    #[cfg(feature = "module")]
    crate::backend::module::after_fork_in_child();
}

/// Called before `fork()`; the C ABI registers it with `pthread_atfork`. Vendor modules loaded
/// as private copies finish the call they are in and take no other until the fork is done.
pub fn before_fork() {
    #[cfg(feature = "module")]
    crate::backend::module::before_fork();
}

/// Called in the parent after `fork()`; the C ABI registers it with `pthread_atfork`.
pub fn after_fork_in_parent() {
    #[cfg(feature = "module")]
    crate::backend::module::after_fork_in_parent();
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
        let settings = cfg.cluster_settings();
        Engine::with_settings(cfg, backends, settings)
    }

    /// As [`Engine::with_backends`], with the cluster on `clock` and its random choices (retry
    /// jitter, new object ids) drawn from `seed`: how a test runs a whole in-process cluster
    /// on a [`VirtualClock`](hsmpool_member::clock::VirtualClock), replayable from its seed.
    /// On a virtual clock no probe thread runs: call [`Engine::tick`] as time passes.
    pub fn with_backends_on(
        cfg: Config,
        backends: Vec<Arc<dyn Backend>>,
        clock: Arc<dyn Clock>,
        seed: u64,
    ) -> Result<Engine> {
        let settings = Settings {
            clock,
            seed: Some(seed),
            ..cfg.cluster_settings()
        };
        Engine::with_settings(cfg, backends, settings)
    }

    /// One round of the cluster's health probes (what the probe threads do on the real clock).
    pub fn tick(&self) {
        self.cluster.tick();
    }

    fn with_settings(
        cfg: Config,
        backends: Vec<Arc<dyn Backend>>,
        settings: Settings,
    ) -> Result<Engine> {
        if backends.is_empty() {
            return Err(Error::Config("no member configured".into()));
        }
        // Before the cluster starts: a `[compat]` option this build leaves out is refused.
        let compat = Compat::new(&cfg.compat)?;
        let n = backends.len();
        let find_ttl =
            std::time::Duration::from_millis(cfg.cluster.find_cache_ttl_ms.unwrap_or(100));
        // The token offers what every member offers (a member that is down at start and says
        // nothing, as a daemon does before it answers, offers the whole table).
        let lists = backends
            .iter()
            .map(|b| b.mechanisms())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mechanisms = MechRow::common(&lists);
        let cluster = Cluster::new(backends, settings);
        tracing::info!(
            members = n,
            self_signed_certificates = cfg.compat.self_signed_certificates,
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
            level_at_login: std::sync::atomic::AtomicBool::new(true),
            key_cache: DashMap::with_hasher(IdHash),
            compat,
            mechanisms,
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
    pub(crate) fn cache_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire) + self.cluster.changes()
    }

    /// Something changed objects or visibility: cached finds and key checks are stale.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

// Here rather than in config.rs, which backend/ uses: config.rs naming cluster.rs (which uses
// backend/) made a circle.
impl Config {
    /// The cluster settings, defaults filled in.
    pub fn cluster_settings(&self) -> Settings {
        use std::time::Duration;
        let c = &self.cluster;
        let d = Settings::default();
        Settings {
            sessions_per_member: c.sessions_per_member.unwrap_or(d.sessions_per_member),
            min_replicas: c.min_replicas.unwrap_or(d.min_replicas),
            call_deadline: c
                .call_deadline_ms
                .map_or(d.call_deadline, Duration::from_millis),
            probe_interval: c
                .probe_interval_ms
                .map_or(d.probe_interval, Duration::from_millis),
            slow_start: c.slow_start_ms.map_or(d.slow_start, Duration::from_millis),
            stall: c.stall_ms.map_or(d.stall, Duration::from_millis),
            breaker_failures: c.breaker_failures.unwrap_or(d.breaker_failures),
            replicate_wait: c
                .replicate_wait_ms
                .map_or(d.replicate_wait, Duration::from_millis),
            wrap_key_label: c.wrap_key_label.clone().unwrap_or(d.wrap_key_label.clone()),
            single_member_keys: c.single_member_keys.unwrap_or(d.single_member_keys),
            ..d
        }
    }
}

/// What the `compat` room sees of the engine (see `crate::compat`): the accessors it used
/// as `Engine` methods before it moved there.
impl Host for Engine {
    fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn user_logged_in(&self) -> bool {
        self.login.get() == LoginState::User
    }

    fn cache_generation(&self) -> u64 {
        Engine::cache_generation(self)
    }

    fn find_ttl(&self) -> std::time::Duration {
        self.find_ttl
    }

    fn new_object_handle(&self) -> ObjectHandle {
        ObjectHandle(self.next_object.fetch_add(1, Ordering::Relaxed))
    }
}
