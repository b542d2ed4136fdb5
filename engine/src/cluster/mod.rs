//! The cluster: N members behind one token. Pooled authenticated sessions per member,
//! balancing by weighted outstanding work, health probes and a circuit breaker, retries with
//! backoff and full jitter inside a deadline and a global budget, and resynchronisation of a
//! member that was away.
//!
//! # Sessions and login
//! Each member has a pool of member sessions (`sessions_per_member`, default 4). The
//! application's one `C_Login` logs every pool in; the credentials are kept in zeroizing memory
//! until `C_Logout` / `C_Finalize`, so a member that restarts (its sessions answer
//! `CKR_SESSION_HANDLE_INVALID`) or comes back is re-authenticated without the application
//! doing anything. Each re-establishment bumps the member's *epoch*: session objects live in
//! pool session 0 of one member, and an epoch change means they are gone.
//!
//! # Routing
//! `Route::Any` picks the healthy member with the least outstanding work per unit of weight,
//! where work is weighted by operation cost (an RSA-4096 signature is not an HMAC) and weight
//! ramps from 10% to 100% over `slow_start_ms` after a member comes back. A member is skipped
//! while its circuit is open (after `breaker_failures` consecutive device failures, until a
//! probe succeeds), while it is drained, and while it looks stalled (work outstanding and
//! nothing finished for `stall_ms`: a paused HSM). `Route::On` pins a call to one member (its
//! session objects).
//!
//! # Errors and retries
//! Every backend error is classified: *permanent* (the key, the data, the template decided:
//! returned as is), *session lost* (the member restarted: re-authenticate and retry),
//! *transient* (device error, removed, unreachable, timed out: retry elsewhere). Calls made
//! through `Cluster::call` are all safe to repeat: reads and cryptographic operations are
//! idempotent, and creates carry an idempotency id (`CKA_HSMPOOL_OBJECT_ID`). Retries back off
//! exponentially with full jitter, stop at the call's deadline, and draw on a global budget
//! (each retry costs what ten successes earn) so a sick cluster is not hammered.
//!
//! # Locks
//! `Member::pool` (read on every call, written when re-established) and `Member::reauth`
//! (serialises re-establishment) are never held across another member's lock; the pool read
//! guard is dropped before the backend is called. `Cluster::gate` orders replicated creates
//! against the last pass of a resynchronisation (creates take it shared).

//!
//! # Rooms
//! - `mod.rs` (here): the types ([`Cluster`], `Member`, [`Settings`], [`MemberStatus`],
//!   [`Health`]), making and stopping a cluster, the clock and the jitter;
//! - `pool.rs`: member session pools and the application's login on every member;
//! - `balance.rs`: which member takes a call (weights, slow start, stalls, drained members);
//! - `call.rs`: running a call with retries, the error classes, the retry budget;
//! - `health.rs`: probes, the circuit breaker's way back, draining;
//! - `replication.rs`: replicated creates, roll-back, resynchronisation of a member;
//! - `users.rs`: users kept the same on every member that keeps users (changes, bringing
//!   members level, a member found behind at login);
//! - `ceremony.rs`: putting the cluster wrapping key on every member (`hsmpool cluster
//!   wrap-key`, and `C_InitToken` where keys travel by wrapping);
//! - `wrap.rs`: how an object travels (the members' clone path, or wrapping under the cluster
//!   wrapping key) and how members' objects are compared.
//!
//! Rooms call each other through `Cluster` methods; each imports only from this file, and
//! `call.rs` from `balance.rs` (the thread slot), so the imports between files have no circle.

mod balance;
mod call;
pub mod ceremony;
mod health;
mod pool;
mod replication;
mod users;
mod wrap;

pub use users::UserChangeReport;

pub(crate) use wrap::not_copyable;
pub use wrap::CopyPath;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use hsmpool_member::clock::{Clock, RealClock};
use hsmpool_member::Role;
use parking_lot::{Mutex, RwLock};
use zeroize::Zeroizing;

use crate::backend::{Backend, MemberSession};
use crate::error::{Error, Result};

/// The cluster wrapping key's label unless the configuration names another.
pub const DEFAULT_WRAP_KEY_LABEL: &str = "hsmpool cluster wrap key";

/// Tunables (config `[cluster]`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Member sessions per member.
    pub sessions_per_member: usize,
    /// Members a token object must reach for its create to succeed.
    pub min_replicas: usize,
    /// Longest a call may go on retrying, from its first failure.
    pub call_deadline: Duration,
    /// Health probe period.
    pub probe_interval: Duration,
    /// Ramp of a member's weight after it comes back.
    pub slow_start: Duration,
    /// Outstanding work with no completion for this long marks a member stalled.
    pub stall: Duration,
    /// Consecutive device failures that open a member's circuit.
    pub breaker_failures: u32,
    /// How long a token create waits for enough members to hold the new object (members
    /// coming back) before it is rolled back.
    pub replicate_wait: Duration,
    /// Where time is read and slept: the real clock, or a virtual one on which a test runs the
    /// cluster (no probe threads then: the owner calls [`Cluster::tick`]; see
    /// `hsmpool_member::clock`).
    pub clock: Arc<dyn Clock>,
    /// The seed of the retry jitter; `None`: drawn from the operating system.
    pub seed: Option<u64>,
    /// The label of the cluster wrapping key, found on each member when token keys are copied
    /// by wrapping (see `cluster::wrap`).
    pub wrap_key_label: String,
    /// Keep a token key that cannot be copied on the member that made it, rather than refuse it.
    pub single_member_keys: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sessions_per_member: 4,
            min_replicas: 2,
            call_deadline: Duration::from_secs(20),
            probe_interval: Duration::from_millis(200),
            slow_start: Duration::from_secs(3),
            stall: Duration::from_millis(750),
            breaker_failures: 3,
            replicate_wait: Duration::from_secs(3),
            clock: Arc::new(RealClock::new()),
            seed: None,
            wrap_key_label: DEFAULT_WRAP_KEY_LABEL.to_owned(),
            single_member_keys: false,
        }
    }
}

/// The application's credentials, kept to re-authenticate members.
pub(crate) struct Credentials {
    /// Which login these are (a member refused by one is tried again with the next).
    pub(crate) gen: u64,
    pub(crate) role: Role,
    pub(crate) pin: Zeroizing<Vec<u8>>,
    pub(crate) username: Option<Zeroizing<String>>,
}

/// Where a call goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Any healthy member (balanced).
    Any,
    /// Any healthy member, its pool session 0 (where a new session object is made).
    AnyHome,
    /// Any healthy member that checks the PIN the application gives for this role (not one
    /// that logs in with a PIN of its own, `pin_from`), its pool session 0.
    Checker(Role),
    /// This member (index), pool session 0, provided its epoch is still this one.
    On(usize, u64),
    /// A token key that lives on this member (index) alone (`single_member_keys`): any of its
    /// pool sessions; while the member is down, `CKR_DEVICE_ERROR` (no other member has it).
    Pinned(usize),
    /// This member (index), whatever its epoch: replication, resynchronisation, roll-back.
    /// Lost sessions are re-established and the call repeated; a device failure is returned
    /// at once (the member is brought level later).
    Member(usize),
}

/// Milliseconds of a clock time.
fn ms_at(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

/// A member's health, one enum from the engine to the C header (`HSMPOOL_MEMBER_*` in
/// include/hsmpool.h are its codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Taking traffic.
    Up = 0,
    /// Circuit open, or unreachable.
    Down = 1,
    /// Answering again, being brought level before it takes traffic.
    Syncing = 2,
    /// Healthy and receiving replication, but out of the balancing (`hsmpool drain`).
    Drained = 3,
    /// Its token refused the application's credentials (a wrong or locked PIN): out, and not
    /// tried again until the application logs in again (`MemberStatus::refused` says why).
    Refused = 4,
}

impl Health {
    /// Its name, as `hsmpool status` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Syncing => "syncing",
            Health::Drained => "drained",
            Health::Refused => "refused",
        }
    }

    /// Its code: the `HSMPOOL_MEMBER_*` value of include/hsmpool.h.
    pub fn code(self) -> u64 {
        self as u64
    }

    /// The health a member's atomic holds (never `Drained`: that is a flag of its own).
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Up,
            2 => Health::Syncing,
            _ => Health::Down,
        }
    }
}

/// The codes a member's `health` atomic holds.
const HEALTH_UP: u8 = Health::Up as u8;
const HEALTH_DOWN: u8 = Health::Down as u8;
const HEALTH_SYNCING: u8 = Health::Syncing as u8;

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Latency histogram buckets: bucket i counts calls under 2^i µs (the last is open).
pub const LATENCY_BUCKETS: usize = 24;

/// The counters every call touches, one set per thread slot, each on its own cache line: two
/// threads counting calls on one member would otherwise pass one line back and forth between
/// cores on every call. Readers add the slots up.
const HOT_SHARDS: usize = 16;

/// A counter bumped on hot paths: one cache line per thread slot, summed when read.
pub(crate) struct SlotCounter(Box<[CachePadded<AtomicU64>]>);

impl Default for SlotCounter {
    fn default() -> Self {
        SlotCounter((0..HOT_SHARDS).map(|_| CachePadded::default()).collect())
    }
}

impl SlotCounter {
    pub(crate) fn add(&self, n: u64) {
        self.0[thread_slot() % HOT_SHARDS].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[derive(Default)]
struct HotShard {
    ops: AtomicU64,
    in_flight: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

/// Per-member counters (those of the hot path are in the member's `HotShard`s).
#[derive(Default)]
pub struct Stats {
    /// Calls that failed (any class).
    pub errors: AtomicU64,
    /// Calls repeated on this member or elsewhere after a failure here.
    pub retries: AtomicU64,
    /// Calls that moved away from this member after it failed them.
    pub failovers: AtomicU64,
    /// Pool re-establishments (restarts seen, reconnections).
    pub reauths: AtomicU64,
    /// Objects copied to this member by replication or resynchronisation.
    pub replicated: AtomicU64,
    /// Objects removed from it by resynchronisation or roll-back.
    pub dropped: AtomicU64,
}

/// One member as the cluster drives it.
///
/// # Invariants
/// - `index` is its position in `Cluster::members` and its `MemberId`; it never changes.
/// - `health` holds `HEALTH_UP`, `HEALTH_DOWN` or `HEALTH_SYNCING`, nothing else; "drained" is
///   the separate `drained` flag (a drained member is up for replication).
/// - `pool` is replaced only through [`Member::update_pool`], under `pool_write`; its `epoch`
///   only grows, and session objects made in pool session 0 are valid only while the epoch
///   they were made in is current. `authed` is true only if every pool session was logged in
///   with the cluster's current credentials.
/// - `reauth` is held by whoever re-establishes the pool; no other member's lock is taken
///   while holding it.
/// - `outstanding` is the summed cost of this member's calls in flight (kept only when there
///   is more than one member); `fails` counts device failures since the last success and
///   opens the circuit (`HEALTH_UP` to `HEALTH_DOWN`) at `breaker_failures`.
/// - `last_done_ms` and `up_since_ms` are readings of the cluster's clock, in ms.
pub(crate) struct Member {
    pub(crate) index: usize,
    pub(crate) backend: Arc<dyn Backend>,
    /// (sessions, epoch, logged in): read on every call without a lock (an `ArcSwap` load
    /// writes nothing shared); changed only through [`Member::update_pool`].
    pool: ArcSwap<Pool>,
    /// Serialises the pool's writers (read, modify, store).
    pool_write: Mutex<()>,
    reauth: Mutex<()>,
    health: AtomicU8,
    drained: AtomicBool,
    /// Weighted work in flight (kept only when there is more than one member to balance).
    outstanding: AtomicU64,
    /// Calls, calls in flight and latency, by thread slot.
    hot: Box<[CachePadded<HotShard>]>,
    /// Readings of the cluster's clock, in ms: last completion, and when it last came up.
    last_done_ms: AtomicU64,
    up_since_ms: AtomicU64,
    fails: AtomicU32,
    pub(crate) stats: Stats,
    /// Set when the member's token refused the credentials of login `gen` (their
    /// `Credentials::gen`), with the reason: it is not tried again with them.
    refused: Mutex<Option<(u64, String)>>,
    /// The cluster wrapping key on this member: `None` not looked for yet, `Some(None)` looked
    /// for and absent, `Some(Some(k))` found (copies by wrapping; see `wrap.rs`).
    wrap_key: Mutex<Option<Option<crate::backend::MemberObject>>>,
}

#[derive(Clone)]
struct Pool {
    sessions: Vec<MemberSession>,
    epoch: u64,
    /// The pool sessions are logged in with the current credentials.
    authed: bool,
}

/// A snapshot of one member for `hsmpool status` and the vendor function.
#[derive(Clone, Debug)]
pub struct MemberStatus {
    /// Index in the configuration.
    pub index: usize,
    /// Description.
    pub describe: String,
    /// Up, down, syncing, drained or refused.
    pub health: Health,
    /// Why its token refused the application's credentials, when it did.
    pub refused: Option<String>,
    /// Pool epoch (re-establishments).
    pub epoch: u64,
    /// Calls in flight.
    pub in_flight: u64,
    /// Sessions in the pool.
    pub pool_sessions: usize,
    /// Counters.
    pub ops: u64,
    /// Failed calls.
    pub errors: u64,
    /// Retries.
    pub retries: u64,
    /// Failovers away from it.
    pub failovers: u64,
    /// Re-authentications.
    pub reauths: u64,
    /// Objects copied in.
    pub replicated: u64,
    /// Objects removed.
    pub dropped: u64,
    /// Latency histogram of a sample of the calls (one in [`LATENCY_SAMPLE`] per thread).
    pub latency: [u64; LATENCY_BUCKETS],
}

/// The cluster.
///
/// # Invariants
/// - The members are fixed when it is made: `members[i].index == i`.
/// - `settings.sessions_per_member >= 1` and `1 <= settings.min_replicas <= members.len()`
///   (clamped by [`Cluster::new`]); `clock` is `settings.clock`.
/// - `creds` is `Some` exactly while the application is logged in; a member whose pool is
///   `authed` was logged in with those credentials.
/// - `budget` never exceeds `BUDGET_MAX` and a retry is taken only when it can pay
///   `RETRY_COST` (so it does not stay below zero).
/// - A token object made through the cluster exists on at least `min_replicas` up members
///   when its create returns, or on none (rolled back); members that missed it are marked
///   down and brought level (`resync`) before they take traffic again.
/// - `changes` only grows: every resynchronisation that changed a member's objects bumps it
///   (the engine's find cache keys on it).
pub struct Cluster {
    pub(crate) members: Vec<Arc<Member>>,
    pub(crate) settings: Settings,
    /// How token objects travel between members (fixed by the member kinds).
    pub(crate) copy_path: CopyPath,
    /// Some member wants multi-part hash-and-sign input whole (`Backend::wants_whole_messages`).
    pub(crate) whole_messages: bool,
    /// The members differ in what they can do (vendors side by side): a call a member refuses
    /// for what it asks (a parameter, a key size) is tried on the others (see `call_full`).
    pub(crate) unlike: bool,
    /// One wrapping-key ceremony at a time in this process (`C_InitToken`, `C_InitPIN`).
    pub(crate) wrap_key_ceremony: Mutex<()>,
    /// Token objects removed through this process (destroyed, rolled back): what bringing a
    /// member level may remove from it where objects travel by wrapping (see `level`).
    pub(crate) removed: Mutex<std::collections::HashSet<crate::backend::MemberObject>>,
    /// Token keys that live on one member alone (`single_member_keys`: they cannot be copied
    /// to the others), by the member that holds them; found at creation and when members are
    /// brought level (at login, in a later process).
    pinned: dashmap::DashMap<crate::backend::MemberObject, usize>,
    /// `pinned` is not empty (read on every keyed call, so an empty map costs one load).
    any_pinned: AtomicBool,
    creds: RwLock<Option<Arc<Credentials>>>,
    /// The last `Credentials::gen` given.
    creds_gen: AtomicU64,
    budget: AtomicI64,
    /// Creates (shared) against the final pass of a resynchronisation (exclusive).
    pub(crate) gate: RwLock<()>,
    /// `settings.clock`, at hand.
    clock: Arc<dyn Clock>,
    /// The retry jitter's xorshift state (never zero).
    rng: AtomicU64,
    /// A seeded cluster's object-id counter (`None`: ids come from the OS generator).
    ids: Option<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// Counted by the engine: finds answered from its cache, key checks answered from its cache.
    pub(crate) find_cache_hits: SlotCounter,
    pub(crate) key_cache_hits: SlotCounter,
    /// Bumped whenever resynchronisation changed a member's objects.
    changes: AtomicU64,
}

thread_local! {
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// A per-thread pool slot, so threads spread over the pool without a shared counter.
fn thread_slot() -> usize {
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) as usize);
        }
        s.get()
    })
}

/// The retry budget's ceiling (each success earns one, each retry costs `RETRY_COST`).
const BUDGET_MAX: i64 = 2000;

/// The member latency histogram records one call in this many per thread (every call would
/// cost two clock reads).
pub const LATENCY_SAMPLE: u32 = 8;

/// Whether this call is one the latency histogram samples.
fn sample_latency() -> bool {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    N.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        v % LATENCY_SAMPLE == 0
    })
}

/// Full-jitter backoff for attempt `n` (0-based): uniform in [0, min(cap, base·2^n)], drawn
/// from `rng` (an xorshift state shared by the cluster's threads: jitter needs no crypto, and
/// a seeded cluster draws the same pauses run after run).
fn backoff(n: u32, rng: &AtomicU64) -> Duration {
    let cap_us = 100_000u64;
    let ceiling = (1_000u64 << n.min(10)).min(cap_us);
    let step = |mut x: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let prev = rng
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(step(x)))
        .unwrap_or_else(|x| x);
    Duration::from_micros(step(prev) % (ceiling + 1))
}

/// A jitter seed from the operating system's clock (never zero).
fn os_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}

impl Member {
    fn new(index: usize, backend: Arc<dyn Backend>) -> Member {
        Member {
            index,
            backend,
            pool: ArcSwap::from_pointee(Pool {
                sessions: Vec::new(),
                epoch: 0,
                authed: false,
            }),
            pool_write: Mutex::new(()),
            reauth: Mutex::new(()),
            health: AtomicU8::new(HEALTH_UP),
            drained: AtomicBool::new(false),
            outstanding: AtomicU64::new(0),
            hot: (0..HOT_SHARDS).map(|_| CachePadded::default()).collect(),
            last_done_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            stats: Stats::default(),
            wrap_key: Mutex::new(None),
            refused: Mutex::new(None),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.pool.load().epoch
    }

    /// Change the pool: `f` edits a copy, which then replaces it.
    fn update_pool<T>(&self, f: impl FnOnce(&mut Pool) -> T) -> T {
        let _w = self.pool_write.lock();
        let mut p = Pool::clone(&self.pool.load());
        let r = f(&mut p);
        self.pool.store(Arc::new(p));
        r
    }

    /// Healthy: receives replication and cluster-wide changes.
    fn is_up(&self) -> bool {
        self.health.load(Ordering::Acquire) == HEALTH_UP
    }

    /// Healthy and not drained: takes balanced traffic.
    fn takes_traffic(&self) -> bool {
        self.is_up() && !self.drained.load(Ordering::Relaxed)
    }

    fn hot(&self, slot: usize) -> &HotShard {
        &self.hot[slot % HOT_SHARDS]
    }

    fn record_latency(&self, slot: usize, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let b = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.hot(slot).latency[b].fetch_add(1, Ordering::Relaxed);
    }

    /// The sum of one hot counter over the slots.
    fn hot_sum(&self, f: impl Fn(&HotShard) -> &AtomicU64) -> u64 {
        self.hot
            .iter()
            .map(|h| f(h).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl Cluster {
    /// Keep token object `id` on member `m` alone, if the cluster keeps such keys
    /// (`single_member_keys`; else nothing).
    pub(crate) fn pin(&self, id: crate::backend::MemberObject, m: usize) {
        if !self.settings.single_member_keys {
            return;
        }
        if self.pinned.insert(id, m) != Some(m) {
            self.any_pinned.store(true, Ordering::Release);
        }
    }

    /// Object `id` is gone (destroyed): it lives nowhere now.
    pub(crate) fn unpin(&self, id: crate::backend::MemberObject) {
        if self.any_pinned.load(Ordering::Acquire) {
            self.pinned.remove(&id);
        }
    }

    /// The member a token key lives on alone, if it does.
    pub(crate) fn pinned_on(&self, id: crate::backend::MemberObject) -> Option<usize> {
        if !self.any_pinned.load(Ordering::Acquire) {
            return None;
        }
        self.pinned.get(&id).map(|m| *m)
    }

    /// The members that hold keys no other member has.
    pub(crate) fn pinning_members(&self) -> Vec<usize> {
        if !self.any_pinned.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut v: Vec<usize> = self.pinned.iter().map(|e| *e.value()).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A cluster over these backends (index = position).
    pub fn new(backends: Vec<Arc<dyn Backend>>, mut settings: Settings) -> Arc<Cluster> {
        settings.sessions_per_member = settings.sessions_per_member.max(1);
        settings.min_replicas = settings.min_replicas.clamp(1, backends.len().max(1));
        let copy_path = CopyPath::of(&backends);
        // Where objects travel by wrapping (vendor modules among the members), every member
        // names them by content, ours too (see `backend::content`).
        let backends: Vec<Arc<dyn Backend>> = match copy_path {
            CopyPath::Wrap => backends
                .into_iter()
                .map(|b| match b.replication() {
                    Some(_) => Arc::new(crate::backend::content::ContentIds::new(b)) as _,
                    None => b,
                })
                .collect(),
            CopyPath::Clone => backends,
        };
        let whole_messages = backends.iter().any(|b| b.wants_whole_messages());
        let rows: Vec<String> = backends
            .iter()
            .map(|b| format!("{:?}", b.mechanisms().ok().flatten()))
            .collect();
        let unlike = rows.windows(2).any(|w| w[0] != w[1]);
        let members = backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| Arc::new(Member::new(i, b)))
            .collect();
        let clock = Arc::clone(&settings.clock);
        let rng = AtomicU64::new(settings.seed.map_or_else(os_seed, |s| s | 1));
        let ids = settings.seed.map(AtomicU64::new);
        let c = Arc::new(Cluster {
            members,
            settings,
            copy_path,
            whole_messages,
            unlike,
            removed: Mutex::new(std::collections::HashSet::new()),
            pinned: dashmap::DashMap::new(),
            any_pinned: AtomicBool::new(false),
            wrap_key_ceremony: Mutex::new(()),
            creds: RwLock::new(None),
            creds_gen: AtomicU64::new(0),
            budget: AtomicI64::new(BUDGET_MAX),
            gate: RwLock::new(()),
            clock,
            rng,
            ids,
            stop: Arc::new(AtomicBool::new(false)),
            find_cache_hits: SlotCounter::default(),
            key_cache_hits: SlotCounter::default(),
            changes: AtomicU64::new(0),
        });
        for m in &c.members {
            if c.establish(m, None).is_err() {
                m.health.store(HEALTH_DOWN, Ordering::Release);
                tracing::warn!(member = m.index, describe = %m.backend.describe(), "member unreachable at start; it joins when it answers");
            }
        }
        if c.members.len() > 1 && !c.clock.is_virtual() {
            Cluster::spawn_probes(&c);
        }
        c
    }

    fn now_ms(&self) -> u64 {
        ms_at(self.clock.now())
    }

    /// The clock this cluster reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Threads for `n`-way parallel work: one on a virtual clock, whose run must be a
    /// function of its seed (no thread interleaving to replay).
    fn workers(&self, n: usize) -> usize {
        if self.clock.is_virtual() {
            1
        } else {
            n
        }
    }

    /// A fresh cluster-wide object id (63 bits, never 0): from the operating system's random
    /// generator, or, for a seeded cluster, from the seed (a seeded run names its objects the
    /// same way every time).
    pub(crate) fn new_object_id(&self) -> Result<u64> {
        let raw = match &self.ids {
            None => {
                let mut b = [0u8; 8];
                aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::DeviceError("random".into()))?;
                u64::from_be_bytes(b)
            }
            Some(ids) => {
                // splitmix64: distinct outputs for the successive states of a counter.
                let mut z = ids.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^ (z >> 31)
            }
        };
        Ok((raw & 0x7fff_ffff_ffff_ffff).max(1))
    }

    /// A backoff pause for attempt `n` (see [`backoff`]).
    fn backoff(&self, n: u32) -> Duration {
        backoff(n, &self.rng)
    }

    /// Stop the probe threads, forget the credentials, close the pools (`C_Finalize`).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        // The credentials are wiped now (Zeroizing), not when the last reference goes.
        *self.creds.write() = None;
        for m in &self.members {
            let sessions = m.update_pool(|p| std::mem::take(&mut p.sessions));
            for s in sessions {
                m.backend.close_session(s);
            }
        }
    }

    /// Resynchronisations that changed objects so far (the engine's caches watch it).
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The application changed its PIN: re-authentication uses the new one from now on.
    pub(crate) fn new_pin(&self, pin: &[u8]) {
        let mut c = self.creds.write();
        if let Some(old) = c.as_ref() {
            *c = Some(Arc::new(Credentials {
                gen: self.creds_gen.fetch_add(1, Ordering::Relaxed) + 1,
                role: old.role,
                pin: Zeroizing::new(pin.to_vec()),
                username: old.username.clone(),
            }));
        }
    }

    /// Whether the application is logged in (credentials held).
    pub(crate) fn logged_in(&self) -> bool {
        self.creds.read().is_some()
    }

    /// The indexes of the up members other than `but`.
    pub(crate) fn up_members_but(&self, but: usize) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.index != but && m.is_up())
            .map(|m| m.index)
            .collect()
    }

    /// Why member `m`'s token refused the credentials now held, if it did.
    pub(crate) fn refused_now(&self, m: &Member) -> Option<String> {
        let gen = self.creds.read().as_ref().map(|c| c.gen)?;
        match &*m.refused.lock() {
            Some((g, why)) if *g == gen => Some(why.clone()),
            _ => None,
        }
    }

    /// Per-member status and counters.
    pub fn status(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|m| {
                let p = m.pool.load();
                MemberStatus {
                    index: m.index,
                    describe: m.backend.describe(),
                    health: if self.refused_now(m).is_some() {
                        Health::Refused
                    } else if m.drained.load(Ordering::Relaxed) {
                        Health::Drained
                    } else {
                        Health::from_u8(m.health.load(Ordering::Relaxed))
                    },
                    refused: self.refused_now(m),
                    epoch: p.epoch,
                    in_flight: m.hot_sum(|h| &h.in_flight),
                    pool_sessions: p.sessions.len(),
                    ops: m.hot_sum(|h| &h.ops),
                    errors: m.stats.errors.load(Ordering::Relaxed),
                    retries: m.stats.retries.load(Ordering::Relaxed),
                    failovers: m.stats.failovers.load(Ordering::Relaxed),
                    reauths: m.stats.reauths.load(Ordering::Relaxed),
                    replicated: m.stats.replicated.load(Ordering::Relaxed),
                    dropped: m.stats.dropped.load(Ordering::Relaxed),
                    latency: std::array::from_fn(|i| m.hot_sum(|h| &h.latency[i])),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        let rng = AtomicU64::new(os_seed());
        for n in 0..40 {
            let cap = (1_000u64 << n.min(10)).min(100_000);
            for _ in 0..50 {
                assert!(backoff(n, &rng) <= Duration::from_micros(cap));
            }
        }
        // Full jitter: over many draws at a high attempt, some are large and some small.
        let draws: Vec<u128> = (0..500).map(|_| backoff(12, &rng).as_micros()).collect();
        assert!(draws.iter().any(|d| *d > 50_000));
        assert!(draws.iter().any(|d| *d < 50_000));
    }
}
