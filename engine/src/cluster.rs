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

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use cryptoki_sys::*;
use hsmpool_member::clock::{Clock, RealClock};
use hsmpool_member::Role;
use parking_lot::{Mutex, RwLock};
use zeroize::Zeroizing;

use crate::backend::{replication, Backend, MemberError, MemberObject, MemberSession};
use crate::error::{Error, Result};

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
        }
    }
}

/// The application's credentials, kept to re-authenticate members.
pub(crate) struct Credentials {
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
    /// This member (index), pool session 0, provided its epoch is still this one.
    On(usize, u64),
    /// This member (index), whatever its epoch: replication, resynchronisation, roll-back.
    /// Lost sessions are re-established and the call repeated; a device failure is returned
    /// at once (the member is brought level later).
    Member(usize),
}

/// How an error is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Permanent,
    SessionLost,
    Transient,
}

fn classify(e: &Error, logged_in: bool) -> Class {
    match e {
        Error::Hsm { rv, .. } => match *rv {
            CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED => Class::SessionLost,
            CKR_USER_NOT_LOGGED_IN if logged_in => Class::SessionLost,
            _ if e.is_retryable() => Class::Transient,
            _ => Class::Permanent,
        },
        e if e.is_retryable() => Class::Transient,
        _ => Class::Permanent,
    }
}

const HEALTH_UP: u8 = 0;
const HEALTH_DOWN: u8 = 1;
const HEALTH_SYNCING: u8 = 2;

/// Milliseconds of a clock time.
fn ms_at(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
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
    /// ms since the cluster started: last completion, and when it last came up.
    last_done_ms: AtomicU64,
    up_since_ms: AtomicU64,
    fails: AtomicU32,
    pub(crate) stats: Stats,
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
    /// "up", "down", "syncing", "drained".
    pub health: &'static str,
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
pub struct Cluster {
    pub(crate) members: Vec<Arc<Member>>,
    pub(crate) settings: Settings,
    creds: RwLock<Option<Arc<Credentials>>>,
    budget: AtomicI64,
    /// Creates (shared) against the final pass of a resynchronisation (exclusive).
    pub(crate) gate: RwLock<()>,
    /// `settings.clock`, at hand.
    clock: Arc<dyn Clock>,
    /// The retry jitter's xorshift state (never zero).
    rng: AtomicU64,
    stop: Arc<AtomicBool>,
    /// Counted by the engine: finds answered from its cache, key checks answered from its cache.
    pub(crate) find_cache_hits: SlotCounter,
    pub(crate) key_cache_hits: SlotCounter,
    /// Bumped whenever resynchronisation changed a member's objects.
    changes: AtomicU64,
}

const BUDGET_MAX: i64 = 2000;
/// Workers that copy objects to a member being brought level.
const LEVEL_WORKERS: usize = 8;

/// Run `f` on every item with up to `workers` threads; the first error stops the rest.
fn parallel_each<T: Copy + Send + Sync>(
    items: &[T],
    workers: usize,
    f: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    if items.len() <= 1 || workers <= 1 {
        return items.iter().try_for_each(|i| f(*i));
    }
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|sc| {
        for _ in 0..workers.min(items.len()) {
            sc.spawn(|| loop {
                if failed.lock().is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(item) = items.get(i) else { return };
                if let Err(e) = f(*item) {
                    failed.lock().get_or_insert(e);
                    return;
                }
            });
        }
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
const RETRY_COST: i64 = 10;

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
    /// A cluster over these backends (index = position).
    pub fn new(backends: Vec<Arc<dyn Backend>>, mut settings: Settings) -> Arc<Cluster> {
        settings.sessions_per_member = settings.sessions_per_member.max(1);
        settings.min_replicas = settings.min_replicas.clamp(1, backends.len().max(1));
        let members = backends
            .into_iter()
            .enumerate()
            .map(|(i, b)| Arc::new(Member::new(i, b)))
            .collect();
        let clock = Arc::clone(&settings.clock);
        let rng = AtomicU64::new(settings.seed.map_or_else(os_seed, |s| s | 1));
        let c = Arc::new(Cluster {
            members,
            settings,
            creds: RwLock::new(None),
            budget: AtomicI64::new(BUDGET_MAX),
            gate: RwLock::new(()),
            clock,
            rng,
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

    /// One health probe of every member, in order: what the probe threads do every
    /// `probe_interval` on the real clock. On a virtual clock there are no such threads, and
    /// the owner calls this as time passes.
    pub fn tick(&self) {
        if self.members.len() > 1 {
            for m in &self.members {
                self.probe(m.index);
            }
        }
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

    // ----- pools --------------------------------------------------------------------------

    /// (Re-)establish a member's pool: open its sessions and log them in with the credentials,
    /// if any. `seen` is the epoch the caller saw fail: if the pool has moved on since, another
    /// thread did the work. Returns the current epoch.
    fn establish(&self, m: &Member, seen: Option<u64>) -> Result<u64> {
        let _one = m.reauth.lock();
        let current = Pool::clone(&m.pool.load());
        let creds = self.creds.read().clone();
        if let Some(seen) = seen {
            if current.epoch != seen && !current.sessions.is_empty() {
                return Ok(current.epoch);
            }
        } else if !current.sessions.is_empty() && (current.authed || creds.is_none()) {
            return Ok(current.epoch);
        }
        let mut sessions = Vec::with_capacity(self.settings.sessions_per_member);
        let opened = (|| -> Result<()> {
            for _ in 0..self.settings.sessions_per_member {
                let s = m.backend.open_session()?;
                sessions.push(s);
                if let Some(c) = &creds {
                    m.backend
                        .login(s, c.role, &c.pin, c.username.as_ref().map(|u| u.as_str()))?;
                }
            }
            Ok(())
        })();
        if let Err(e) = opened {
            for s in sessions {
                m.backend.close_session(s);
            }
            return Err(e);
        }
        let old = m.update_pool(|p| {
            let old = std::mem::replace(&mut p.sessions, sessions);
            p.epoch += 1;
            p.authed = creds.is_some();
            old
        });
        for s in old {
            m.backend.close_session(s);
        }
        m.stats.reauths.fetch_add(1, Ordering::Relaxed);
        let epoch = m.epoch();
        tracing::info!(
            member = m.index,
            epoch,
            authenticated = creds.is_some(),
            "member session pool established"
        );
        Ok(epoch)
    }

    fn session_for(&self, m: &Member, slot: usize) -> Result<(MemberSession, u64)> {
        {
            let p = m.pool.load();
            if !p.sessions.is_empty() {
                return Ok((p.sessions[slot % p.sessions.len()], p.epoch));
            }
        }
        self.establish(m, None)?;
        let p = m.pool.load();
        match p.sessions.get(slot % p.sessions.len().max(1)) {
            Some(s) => Ok((*s, p.epoch)),
            None => Err(Error::DeviceError("member has no sessions".into())),
        }
    }

    // ----- login --------------------------------------------------------------------------

    /// Log the application in: first on one member (which decides whether the PIN is right, so
    /// a wrong PIN counts once, not once per member), then every other pool. Credentials are
    /// kept for re-authentication.
    pub(crate) fn login(&self, role: Role, pin: &[u8], username: Option<&str>) -> Result<()> {
        let creds = Arc::new(Credentials {
            role,
            pin: Zeroizing::new(pin.to_vec()),
            username: username.map(|u| Zeroizing::new(u.to_string())),
        });
        // One member decides, in its pool session 0; a member that fails for a device reason
        // is skipped like any other call.
        let (first, _, ()) =
            self.call_full(Route::AnyHome, 1, |b, s| b.login(s, role, pin, username))?;
        *self.creds.write() = Some(creds);
        for m in &self.members {
            // Log in the pool sessions as they are (re-opening them would lose the session
            // objects they hold); a member whose sessions are gone is re-established.
            let p = Pool::clone(&m.pool.load());
            let mut done = !p.sessions.is_empty();
            for (i, ms) in p.sessions.iter().enumerate() {
                if m.index == first && i == 0 {
                    continue;
                }
                match m.backend.login(*ms, role, pin, username) {
                    Ok(())
                    | Err(MemberError::Rv {
                        rv: CKR_USER_ALREADY_LOGGED_IN,
                        ..
                    }) => {}
                    Err(_) => {
                        done = false;
                        break;
                    }
                }
            }
            if done {
                m.update_pool(|w| {
                    if w.epoch == p.epoch {
                        w.authed = true;
                    }
                });
                continue;
            }
            if let Err(e) = self.establish(m, Some(p.epoch)) {
                tracing::warn!(
                    member = m.index,
                    "member not logged in now ({e}); it will be when it answers"
                );
                m.health.store(HEALTH_DOWN, Ordering::Release);
            }
        }
        Ok(())
    }

    /// A context-specific re-authentication: checked by one member.
    pub(crate) fn check_pin(&self, role: Role, pin: &[u8], username: Option<&str>) -> Result<()> {
        self.call(Route::Any, 1, |b, s| b.login(s, role, pin, username))
    }

    /// Log every pool out and forget the credentials.
    pub(crate) fn logout(&self) {
        *self.creds.write() = None;
        for m in &self.members {
            let sessions = m.pool.load().sessions.clone();
            for s in sessions {
                let _ = m.backend.logout(s);
            }
            m.update_pool(|p| p.authed = false);
        }
    }

    // ----- routing ------------------------------------------------------------------------

    /// The member to use: up, not drained, circuit closed, not stalled, not in `avoid`; least
    /// outstanding weighted work per unit of weight.
    /// `now` is the call's start; `None` with a single member, whose choice needs no clock.
    fn pick(&self, avoid: &[usize], cost: u64, now: Option<Duration>) -> Option<&Arc<Member>> {
        let Some(now) = now else {
            return self
                .members
                .iter()
                .find(|m| m.takes_traffic() && !avoid.contains(&m.index));
        };
        let now = ms_at(now);
        let stall = self.settings.stall.as_millis() as u64;
        let ramp = self.settings.slow_start.as_millis().max(1) as u64;
        let mut best: Option<(&Arc<Member>, u64)> = None;
        let mut fallback: Option<&Arc<Member>> = None;
        for m in &self.members {
            if !m.takes_traffic() || avoid.contains(&m.index) {
                continue;
            }
            let stalled = m.outstanding.load(Ordering::Relaxed) > 0
                && now.saturating_sub(m.last_done_ms.load(Ordering::Relaxed)) > stall;
            if stalled {
                fallback.get_or_insert(m);
                continue;
            }
            // Weight in per-mille: 100..=1000 over the slow start.
            let age = now.saturating_sub(m.up_since_ms.load(Ordering::Relaxed));
            let weight = 100 + 900 * age.min(ramp) / ramp;
            let score = (m.outstanding.load(Ordering::Relaxed) + cost) * 1000 / weight;
            if best.is_none_or(|(_, s)| score < s) {
                best = Some((m, score));
            }
        }
        best.map(|(m, _)| m).or(fallback)
    }

    /// The up members other than `except`.
    pub(crate) fn others(&self, except: usize) -> impl Iterator<Item = &Arc<Member>> {
        self.members
            .iter()
            .filter(move |m| m.index != except && m.is_up())
    }

    /// Run `f` on a member with a session, retrying as the error class allows (see the module
    /// documentation). `cost` weighs the call for balancing.
    pub(crate) fn call<T, E: Into<Error>>(
        &self,
        route: Route,
        cost: u64,
        mut f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<T, E>,
    ) -> Result<T> {
        self.call_full(route, cost, |b, s| f(b, s))
            .map(|(_, _, v)| v)
    }

    /// As [`Cluster::call`], also saying which member answered and its pool epoch.
    pub(crate) fn call_full<T, E: Into<Error>>(
        &self,
        route: Route,
        cost: u64,
        mut f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<T, E>,
    ) -> Result<(usize, u64, T)> {
        // The clock is read only where it is needed: by the balancer (slow start, stall
        // detection) when there is more than one member, for the latency histogram on one call
        // in LATENCY_SAMPLE, and for the retry deadline once a call has failed. With one member
        // and no failure, seven calls in eight read no clock at all (at a million calls a
        // second two reads a call were 4% of a 4 KiB AES-GCM encryption).
        let balancing = self.members.len() > 1;
        let sampled = sample_latency();
        let timed = balancing || sampled;
        let clock = &*self.clock;
        let mut t0 = timed.then(|| clock.now());
        let mut deadline: Option<Duration> = None;
        let call_deadline = self.settings.call_deadline;
        let mut deadline_at = |now: Duration| *deadline.get_or_insert(now + call_deadline);
        let slot = thread_slot();
        let mut avoid: Vec<usize> = Vec::new();
        let mut attempt = 0u32;
        let mut last: Option<Error> = None;
        loop {
            let m = match route {
                Route::Member(i) => self
                    .members
                    .get(i)
                    .ok_or(Error::General("no such member".into()))?,
                Route::On(i, epoch) => {
                    let m = self.members.get(i).ok_or(Error::KeyHandleInvalid)?;
                    if m.epoch() != epoch {
                        tracing::warn!(
                            member = i,
                            "session object lost: its member restarted or was reconnected"
                        );
                        return Err(Error::KeyHandleInvalid);
                    }
                    if m.health.load(Ordering::Acquire) == HEALTH_DOWN {
                        tracing::warn!(
                            member = i,
                            "session object unavailable: its member is down"
                        );
                        return Err(Error::KeyHandleInvalid);
                    }
                    m
                }
                Route::Any | Route::AnyHome => match self.pick(&avoid, cost, t0).or_else(|| {
                    // Everyone was tried: start over rather than give up before the deadline.
                    avoid.clear();
                    self.pick(&avoid, cost, t0)
                }) {
                    Some(m) => m,
                    None => {
                        let now = clock.now();
                        if now >= deadline_at(now) {
                            return Err(last.unwrap_or_else(|| {
                                Error::DeviceError("no member of the cluster is reachable".into())
                            }));
                        }
                        clock.sleep(self.backoff(attempt).max(Duration::from_millis(5)));
                        attempt += 1;
                        t0 = timed.then(|| clock.now());
                        continue;
                    }
                },
            };
            let session = match route {
                Route::On(..) | Route::AnyHome | Route::Member(_) => self.session_for(m, 0),
                Route::Any => self.session_for(m, slot),
            };
            let result = match session {
                Ok((s, epoch)) => {
                    // The balancer's shared state is kept only when there is a choice to make.
                    let balancing = self.members.len() > 1;
                    if balancing {
                        m.outstanding.fetch_add(cost, Ordering::Relaxed);
                    }
                    let hot = m.hot(slot);
                    hot.in_flight.fetch_add(1, Ordering::Relaxed);
                    let r = f(m.backend.as_ref(), s)
                        .map(|v| (epoch, v))
                        .map_err(Into::into);
                    hot.in_flight.fetch_sub(1, Ordering::Relaxed);
                    if balancing {
                        m.outstanding.fetch_sub(cost, Ordering::Relaxed);
                    }
                    if let Some(t0) = t0 {
                        // One clock read serves the latency and the stall detector.
                        let end = clock.now();
                        if sampled {
                            m.record_latency(slot, end.saturating_sub(t0));
                        }
                        if balancing {
                            // Written only when the millisecond changed: at a million calls a
                            // second an unconditional store would bounce the line between cores.
                            let done_ms = ms_at(end);
                            if m.last_done_ms.load(Ordering::Relaxed) != done_ms {
                                m.last_done_ms.store(done_ms, Ordering::Relaxed);
                            }
                        }
                    }
                    r.map_err(|e| (e, Some(epoch)))
                }
                Err(e) => Err((e, None)),
            };
            let (e, epoch) = match result {
                Ok((epoch, v)) => {
                    m.hot(slot).ops.fetch_add(1, Ordering::Relaxed);
                    if m.fails.load(Ordering::Relaxed) != 0 {
                        m.fails.store(0, Ordering::Relaxed);
                    }
                    if self.budget.load(Ordering::Relaxed) < BUDGET_MAX {
                        self.budget.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok((m.index, epoch, v));
                }
                Err(x) => x,
            };
            m.stats.errors.fetch_add(1, Ordering::Relaxed);
            let class = classify(&e, self.logged_in());
            match (class, route) {
                (Class::Permanent, _) => return Err(e),
                (Class::SessionLost, Route::On(i, _)) => {
                    tracing::warn!(member = i, "session object lost: {e}");
                    let _ = self.establish(m, epoch);
                    return Err(Error::KeyHandleInvalid);
                }
                (Class::SessionLost, Route::Any | Route::AnyHome) => {
                    tracing::info!(
                        member = m.index,
                        "member sessions lost ({e}); re-authenticating"
                    );
                    if let Err(e2) = self.establish(m, epoch) {
                        self.note_failure(m, &e2);
                        avoid.push(m.index);
                    }
                }
                (Class::Transient, Route::On(i, _)) => {
                    // Only this member can do it: retry it here until its circuit opens.
                    tracing::debug!(member = i, "transient failure on a pinned call: {e}");
                    self.note_failure(m, &e);
                }
                (Class::Transient, Route::Member(_)) => {
                    self.note_failure(m, &e);
                    return Err(e);
                }
                (Class::SessionLost, Route::Member(_)) => {
                    if let Err(e2) = self.establish(m, epoch) {
                        self.note_failure(m, &e2);
                        return Err(e2);
                    }
                }
                (Class::Transient, Route::Any | Route::AnyHome) => {
                    self.note_failure(m, &e);
                    avoid.push(m.index);
                    m.stats.failovers.fetch_add(1, Ordering::Relaxed);
                }
            }
            let now = clock.now();
            let deadline = deadline_at(now);
            if now >= deadline {
                tracing::warn!(member = m.index, "call deadline passed: {e}");
                return Err(e);
            }
            if self.budget.fetch_sub(RETRY_COST, Ordering::Relaxed) < RETRY_COST {
                self.budget.fetch_add(RETRY_COST, Ordering::Relaxed);
                tracing::warn!("retry budget exhausted: {e}");
                return Err(e);
            }
            m.stats.retries.fetch_add(1, Ordering::Relaxed);
            let pause = self.backoff(attempt);
            attempt += 1;
            let left = deadline.saturating_sub(clock.now());
            clock.sleep(pause.min(left));
            t0 = timed.then(|| clock.now());
            last = Some(e);
        }
    }

    /// A device-level failure on `m`: after `breaker_failures` in a row its circuit opens
    /// (health down) until a probe finds it answering again.
    fn note_failure(&self, m: &Member, e: &Error) {
        let n = m.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.settings.breaker_failures
            && m.health
                .compare_exchange(HEALTH_UP, HEALTH_DOWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(member = m.index, failures = n, "circuit opened: {e}");
        }
    }

    // ----- health, resynchronisation ------------------------------------------------------

    fn spawn_probes(c: &Arc<Cluster>) {
        for m in &c.members {
            let weak: Weak<Cluster> = Arc::downgrade(c);
            let stop = c.stop.clone();
            let index = m.index;
            let period = c.settings.probe_interval;
            let clock = Arc::clone(&c.clock);
            let spawned = std::thread::Builder::new()
                .name(format!("hsmpool-probe-{index}"))
                .spawn(move || loop {
                    clock.sleep(period);
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    let Some(c) = weak.upgrade() else { return };
                    c.probe(index);
                });
            if let Err(e) = spawned {
                tracing::error!(member = index, "health probe thread not started: {e}");
            }
        }
    }

    /// One probe of member `i`: a member that is down and answers is re-authenticated, brought
    /// up to date, and let back in with slow start; an up member that does not answer has its
    /// circuit opened.
    fn probe(&self, i: usize) {
        let m = &self.members[i];
        let ok = m.backend.ping().map_err(Error::from);
        match (m.health.load(Ordering::Acquire), ok) {
            (HEALTH_UP, Err(e)) => {
                self.note_failure(m, &e);
            }
            (HEALTH_UP, Ok(())) => {}
            (_, Ok(())) => {
                m.health.store(HEALTH_SYNCING, Ordering::Release);
                let back = self.revive(m).and_then(|_| self.resync(m));
                match back {
                    Ok(()) => {
                        tracing::info!(member = i, "member back in the cluster (slow start)");
                    }
                    Err(e) => {
                        tracing::warn!(member = i, "member answered but is not ready: {e}");
                        m.health.store(HEALTH_DOWN, Ordering::Release);
                    }
                }
            }
            (_, Err(_)) => {}
        }
    }

    /// A member that answers again: keep its pool if the sessions survived (a partition or a
    /// pause keeps them, and the session objects in them), else re-establish it.
    fn revive(&self, m: &Member) -> Result<()> {
        let (s, epoch) = self.session_for(m, 0)?;
        // A find that matches nothing, answered from the label index: cheap, and it fails
        // with CKR_SESSION_HANDLE_INVALID when the member lost its sessions.
        let probe = [crate::Attr::bytes(CKA_LABEL, b"\0hsmpool session probe")];
        match m.backend.find(s, &probe).map_err(Error::from) {
            Ok(_) if m.pool.load().authed == self.logged_in() => Ok(()),
            Ok(_) => self.establish(m, Some(epoch)).map(|_| ()),
            Err(e) if classify(&e, self.logged_in()) == Class::SessionLost => {
                self.establish(m, Some(epoch)).map(|_| ())
            }
            Err(e) => Err(e),
        }
    }

    /// Let a member take traffic again, with slow start.
    fn mark_up(&self, m: &Member) {
        m.fails.store(0, Ordering::Relaxed);
        m.up_since_ms.store(self.now_ms(), Ordering::Relaxed);
        m.health.store(HEALTH_UP, Ordering::Release);
    }

    /// Bring member `m` level with an up member (the reference): copy what it lacks or holds
    /// differently, remove what the reference no longer has. A bulk pass runs unlocked, then a
    /// final pass under the create gate so no create slips between the pass and the member
    /// taking traffic. Without credentials there is nothing to compare (objects are private):
    /// the member joins and is brought level at the next login.
    pub(crate) fn resync(&self, m: &Member) -> Result<()> {
        if !self.logged_in() {
            self.mark_up(m);
            return Ok(());
        }
        let Some(reference) = self
            .members
            .iter()
            .find(|r| r.index != m.index && r.is_up())
        else {
            self.mark_up(m);
            return Ok(());
        };
        self.level(reference, m, true)?;
        let _gate = self.gate.write();
        self.level(reference, m, true)?;
        self.mark_up(m);
        Ok(())
    }

    /// Make `target` hold what `source` holds. With `exact`, objects `source` lacks are removed
    /// from `target`; without, they are kept (a union, used at login when no member is known to
    /// be behind).
    fn level(&self, source: &Member, target: &Member, exact: bool) -> Result<usize> {
        let (src, dst) = (Route::Member(source.index), Route::Member(target.index));
        let want = self.call(src, 5, |b, s| replication(b)?.object_digests(s))?;
        let have = self.call(dst, 5, |b, s| replication(b)?.object_digests(s))?;
        let have_map: std::collections::HashMap<MemberObject, [u8; 32]> =
            have.iter().copied().collect();
        let want_ids: std::collections::HashSet<MemberObject> =
            want.iter().map(|(id, _)| *id).collect();
        let copy: Vec<MemberObject> = want
            .iter()
            .filter(|(id, d)| have_map.get(id) != Some(d))
            .map(|(id, _)| *id)
            .collect();
        let drop: Vec<MemberObject> = if exact {
            have.iter()
                .map(|(id, _)| *id)
                .filter(|id| !want_ids.contains(id))
                .collect()
        } else {
            Vec::new()
        };
        // Each object is a round trip or two: a member that missed thousands of creates is
        // brought level by several workers at once.
        parallel_each(&copy, self.workers(LEVEL_WORKERS), |id| {
            let blob = self.call(src, 5, |b, s| replication(b)?.export_clone(s, id))?;
            self.call(dst, 5, |b, s| replication(b)?.import_clone(s, &blob))?;
            target.stats.replicated.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        parallel_each(&drop, self.workers(LEVEL_WORKERS), |id| {
            self.call(dst, 5, |b, s| replication(b)?.drop_replica(s, id))?;
            target.stats.dropped.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        let changed = copy.len() + drop.len();
        if changed > 0 {
            self.changes.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                from = source.index,
                to = target.index,
                changed,
                "member resynchronised"
            );
        }
        Ok(changed)
    }

    /// At login: bring every up member level with the union of what the up members hold
    /// (nothing is removed: with no member known to be behind, a difference may be a create
    /// that reached some members only while this process was not running).
    pub(crate) fn level_all(&self) -> usize {
        let ups: Vec<&Arc<Member>> = self.members.iter().filter(|m| m.is_up()).collect();
        let mut changed = 0;
        for a in &ups {
            for b in &ups {
                if a.index != b.index {
                    match self.level(a, b, false) {
                        Ok(n) => changed += n,
                        Err(e) => {
                            tracing::warn!(from = a.index, to = b.index, "levelling failed: {e}")
                        }
                    }
                }
            }
        }
        changed
    }

    /// Copy token objects from a member that holds them (`holders`, the first tried first) to
    /// every other up member not in `holders`; the members that got them are added to
    /// `holders`.
    pub(crate) fn replicate(&self, holders: &mut Vec<usize>, ids: &[MemberObject]) {
        let targets: Vec<usize> = self
            .members
            .iter()
            .filter(|m| m.is_up() && !holders.contains(&m.index))
            .map(|m| m.index)
            .collect();
        if targets.is_empty() {
            return;
        }
        let mut blobs = None;
        for src in holders.iter() {
            let exported: Result<Vec<Vec<u8>>> = ids
                .iter()
                .map(|id| {
                    self.call(Route::Member(*src), 5, |b, s| {
                        replication(b)?.export_clone(s, *id)
                    })
                })
                .collect();
            match exported {
                Ok(b) => {
                    blobs = Some(b);
                    break;
                }
                Err(e) => tracing::warn!(member = src, "export for replication failed: {e}"),
            }
        }
        let Some(blobs) = blobs else { return };
        // The members copy at once (each copy is a token-object creation on that HSM).
        let got = Mutex::new(Vec::new());
        let _ = parallel_each(&targets, self.workers(targets.len()), |t| {
            let copied: Result<()> = blobs.iter().try_for_each(|blob| {
                self.call(Route::Member(t), 5, |b, s| {
                    replication(b)?.import_clone(s, blob)
                })
                .map(|_| ())
            });
            match copied {
                Ok(()) => {
                    self.members[t]
                        .stats
                        .replicated
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    got.lock().push(t);
                }
                Err(e) => self.out_of_date(&self.members[t], &e),
            }
            Ok(())
        });
        holders.extend(got.into_inner());
    }

    /// A member missed a change (a copy, a removal) while up: take it out of traffic, so the
    /// health probe brings it level before it serves again.
    pub(crate) fn out_of_date(&self, m: &Member, e: &Error) {
        if m.health
            .compare_exchange(HEALTH_UP, HEALTH_DOWN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            tracing::warn!(
                member = m.index,
                "member missed a cluster-wide change ({e}); out of traffic until brought level"
            );
        }
    }

    /// Remove token objects from every up member but `except` (the member that destroyed them;
    /// none for a roll-back). A member that cannot is taken out of traffic: bringing it level
    /// when it returns removes them there too. Members already down are left to that.
    pub(crate) fn drop_replicas(&self, except: Option<usize>, ids: &[MemberObject]) {
        for m in self
            .members
            .iter()
            .filter(|m| m.is_up() && Some(m.index) != except)
        {
            for id in ids {
                match self.call(Route::Member(m.index), 1, |b, s| {
                    replication(b)?.drop_replica(s, *id)
                }) {
                    Ok(()) => {
                        m.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.out_of_date(m, &e);
                        break;
                    }
                }
            }
        }
    }

    /// Make new token objects, made on member `from`, reach `min_replicas` members: copy them
    /// to every up member, and while too few hold them wait (members come back, with the
    /// create gate released meanwhile) until `replicate_wait` passes; then roll back everywhere
    /// and fail with `CKR_DEVICE_ERROR`.
    pub(crate) fn spread(
        &self,
        from: usize,
        ids: &[MemberObject],
        gate: &mut parking_lot::RwLockReadGuard<'_, ()>,
    ) -> Result<()> {
        let needed = self.settings.min_replicas;
        let until = self.clock.now() + self.settings.replicate_wait;
        let mut holders = vec![from];
        let mut pause = 0u32;
        loop {
            self.replicate(&mut holders, ids);
            if holders.len() >= needed {
                return Ok(());
            }
            if self.clock.now() >= until {
                break;
            }
            parking_lot::RwLockReadGuard::unlocked(gate, || {
                self.clock
                    .sleep(self.backoff(pause + 4).max(Duration::from_millis(5)));
            });
            pause += 1;
        }
        tracing::error!(
            holders = holders.len(),
            needed,
            "token object reached too few members: rolled back everywhere"
        );
        self.drop_replicas(None, ids);
        Err(Error::DeviceError(format!(
            "token object reached {} member(s), {needed} needed",
            holders.len()
        )))
    }

    /// Run a management call on every up member (token init, PINs, destroy of token objects,
    /// attribute changes): the first decides (its error is returned), the others follow; a
    /// member that fails to follow is taken out and brought level when it returns.
    pub(crate) fn on_all<E: Into<Error>>(
        &self,
        mut f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<(), E>,
    ) -> Result<()> {
        let (first, _, ()) = self.call_full(Route::Any, 1, &mut f)?;
        for m in self.others(first) {
            let done = self.call(Route::Member(m.index), 1, &mut f);
            if let Err(e) = done {
                self.out_of_date(m, &e);
            }
        }
        Ok(())
    }

    /// Take a member out of (or back into) the balancing: calls in flight finish, new ones go
    /// elsewhere.
    pub fn drain(&self, index: usize, drained: bool) -> Result<()> {
        let m = self
            .members
            .get(index)
            .ok_or(Error::ArgumentsBad("no such member"))?;
        m.drained.store(drained, Ordering::Release);
        if !drained {
            m.up_since_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        tracing::info!(member = index, drained, "member drain changed");
        Ok(())
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
                    health: if m.drained.load(Ordering::Relaxed) {
                        "drained"
                    } else {
                        match m.health.load(Ordering::Relaxed) {
                            HEALTH_UP => "up",
                            HEALTH_SYNCING => "syncing",
                            _ => "down",
                        }
                    },
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

// A block of its own, kept apart from the main `impl Cluster` so that edits there and here do
// not meet. It sits above the test module rather than after it: clippy
// (`items_after_test_module`) refuses items after `mod tests`.
impl Cluster {
    /// Which member (its index) the balancer would pick now for a call of weight `cost`, or
    /// `None` when no member takes traffic; for diagnostics and benchmarks. Nothing is recorded:
    /// the member's outstanding work is unchanged.
    pub fn next_member(&self, cost: u64) -> Option<usize> {
        self.pick(&[], cost, Some(self.clock.now()))
            .map(|m| m.index)
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

    #[test]
    fn parallel_each_does_every_item_once_and_stops_at_an_error() {
        let seen = Mutex::new(Vec::new());
        let items: Vec<u32> = (0..100).collect();
        parallel_each(&items, 8, |i| {
            seen.lock().push(i);
            Ok(())
        })
        .unwrap();
        let mut v = seen.into_inner();
        v.sort_unstable();
        assert_eq!(v, items);
        let r = parallel_each(&items, 8, |i| {
            if i == 37 {
                Err(Error::DeviceError("boom".into()))
            } else {
                Ok(())
            }
        });
        assert!(matches!(r, Err(Error::DeviceError(m)) if m == "boom"));
        assert!(parallel_each::<u32>(&[], 8, |_| unreachable!()).is_ok());
    }

    #[test]
    fn errors_are_classified() {
        let hsm = |rv| Error::Hsm { member: 0, rv };
        assert_eq!(classify(&hsm(CKR_DEVICE_REMOVED), true), Class::Transient);
        assert_eq!(classify(&hsm(CKR_DEVICE_ERROR), true), Class::Transient);
        assert_eq!(
            classify(&hsm(CKR_SESSION_HANDLE_INVALID), false),
            Class::SessionLost
        );
        assert_eq!(
            classify(&hsm(CKR_USER_NOT_LOGGED_IN), true),
            Class::SessionLost
        );
        assert_eq!(
            classify(&hsm(CKR_USER_NOT_LOGGED_IN), false),
            Class::Permanent
        );
        assert_eq!(
            classify(&hsm(CKR_KEY_HANDLE_INVALID), true),
            Class::Permanent
        );
        assert_eq!(
            classify(&hsm(CKR_SIGNATURE_INVALID), true),
            Class::Permanent
        );
        assert_eq!(
            classify(&Error::DeviceError("x".into()), true),
            Class::Transient
        );
        assert_eq!(classify(&Error::PinIncorrect, true), Class::Permanent);
    }
}
