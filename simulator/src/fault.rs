//! Seeded fault injection: makes one simulated HSM crash, restart, hang, lose its network,
//! slow down or fail operations at random, on command, so cluster failover can be tested.
//! **Off by default**: an [`crate::hsm::Hsm`] only builds a [`Faults`] controller when its
//! `HsmConfig::faults` is `Some`; without one every operation pays one branch on an `Option`,
//! and with one but no fault active, one atomic load.
//!
//! # Why seeded
//! A failover bug found by a random failure is only worth something if the failure can be
//! replayed. Every random decision here (today: whether [`Faults::fail_with`] fails an
//! operation) is drawn from a small deterministic PRNG (splitmix64) whose stream is derived from
//! a [`FaultSeed`] and the member's id, so:
//! - the same seed and member give the same sequence of decisions, run after run;
//! - different members of one cluster get independent sequences from one seed (a cluster test
//!   takes one seed and replays whole);
//! - the decisions are drawn in the order operations reach the member's fault check, one draw
//!   per operation while `fail_with` is active, and nowhere else.
//!
//! **Threaded runs replay the fault schedule, not thread interleavings**: the n-th operation to
//! reach a member gets the n-th decision, but which thread's operation is the n-th depends on
//! the scheduler. A single-threaded driver replays exactly; a multi-threaded one replays the
//! same failure pattern with possibly different victims.
//!
//! # The verbs
//! Methods on [`Faults`], each logged with `tracing::warn!` so a test log reads like the script:
//! - [`Faults::crash`]: every operation fails with `CKR_DEVICE_REMOVED` until
//!   [`Faults::restart`]. Sessions (and their session objects, and their logins) opened before
//!   the crash are gone: after the restart they give `CKR_SESSION_HANDLE_INVALID`. Token
//!   objects survive (they are in the store).
//! - [`Faults::partition`] / [`Faults::repair`]: the member is unreachable, `CKR_DEVICE_ERROR`,
//!   but its state and sessions survive the partition.
//! - [`Faults::hold`] / [`Faults::release`]: operations block until released. Bounded: a held
//!   operation waits at most [`FaultConfig::max_hold`] (default 30 s), then fails with
//!   `CKR_DEVICE_ERROR`, so a forgotten release never hangs a test. A crash or partition while
//!   held wakes the waiters with their error.
//! - [`Faults::delay`]: extra latency per operation, µs (0 clears). On top of the timing model.
//! - [`Faults::fail_with`]: each operation fails with a given `CK_RV` with a given probability,
//!   drawn from the member's seeded stream (probability 0 clears).
//! - [`Faults::drop_connections`]: counts a connection drop (the future daemon reads
//!   [`Faults::connections_dropped`] and closes its client connections); in process it
//!   invalidates the open sessions as a crash and restart would, without downtime.
//!
//! [`FaultScript`] parses a tiny text script of these verbs with time offsets (parse only; a
//! runner comes later).
//!
//! # How sessions are invalidated
//! Every member session records the session *generation* current when it was opened; crash and
//! drop_connections bump the generation and mark a purge pending (which keeps the slow path
//! on). The next operation on the HSM removes every session of an older generation, with its
//! session objects, before its own fault check, so afterwards the HSM's ordinary session lookup
//! answers `CKR_SESSION_HANDLE_INVALID`. A session opened while crashed is never registered.
//!
//! # Where the hooks are
//! `hsm.rs` marks them `// fault hook`: a `fault_check()` at the start of each operation the
//! engine uses. Two operations cannot return an error today: `open_session` (an injected error
//! leaves the returned session unregistered, so its first use fails) and `token_status`
//! (delay and hold apply, an injected error is dropped).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};

use crate::timing::{Clock, RealClock};
use crate::types::Rv;

/// How long a held operation waits for [`Faults::release`] before failing, by default.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(30);

/// The seed of a fault run; with a member's id it fixes that member's fault decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultSeed(pub u64);

/// Fault injection set-up of one HSM (`HsmConfig::faults`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// The run's seed.
    pub seed: FaultSeed,
    /// This member's id in the cluster: the stream is derived from `(seed, member)`.
    pub member: u64,
    /// Longest a held operation waits before failing with `CKR_DEVICE_ERROR`.
    pub max_hold: Duration,
}

impl FaultConfig {
    /// Fault injection for member `member` of a run seeded with `seed`, default `max_hold`.
    pub fn new(seed: FaultSeed, member: u64) -> Self {
        FaultConfig {
            seed,
            member,
            max_hold: DEFAULT_MAX_HOLD,
        }
    }
}

// ----- the PRNG --------------------------------------------------------------------------------

/// splitmix64's finaliser: a good 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64 (Steele, Lea, Flood 2014): tiny, fast, and plenty for fault decisions.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// The stream of `member` under `seed`: the members' streams start far apart.
    fn for_member(seed: FaultSeed, member: u64) -> Self {
        SplitMix64(mix64(seed.0 ^ member.wrapping_add(1).wrapping_mul(GOLDEN)))
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }
    /// Uniform in `[0, 1)`.
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

// ----- the controller --------------------------------------------------------------------------

#[derive(Debug)]
struct FaultState {
    crashed: bool,
    partitioned: bool,
    held: bool,
    /// Bumped by every release, so a waiter from before a release is let go even if a new hold
    /// starts before it wakes.
    hold_gen: u64,
    max_hold: Duration,
    delay_us: u64,
    fail: Option<(Rv, f64)>,
    rng: SplitMix64,
    /// Sessions older than the current generation are still to be removed.
    purge_pending: bool,
}

impl FaultState {
    fn any(&self) -> bool {
        self.crashed
            || self.partitioned
            || self.held
            || self.delay_us > 0
            || self.fail.is_some()
            || self.purge_pending
    }
}

/// The fault controller of one HSM: see the [module documentation](self).
#[derive(Debug)]
pub struct Faults {
    seed: FaultSeed,
    member: u64,
    /// The hot path reads only this: false means no fault and nothing pending.
    any_active: AtomicBool,
    /// Session generation: sessions opened under an older one are invalid.
    generation: AtomicU64,
    /// Connection drops so far (crashes count too: a crash drops every connection).
    dropped: AtomicU64,
    /// Operations failed by injection so far.
    injected: AtomicU64,
    state: Mutex<FaultState>,
    wake: Condvar,
    /// Where `delay` sleeps (a hold waits on the real clock: releasing one takes another
    /// thread, which a virtual-time run does not have).
    clock: Arc<dyn Clock>,
}

impl Faults {
    /// A controller with no fault active, on the real clock.
    pub fn new(cfg: &FaultConfig) -> Self {
        Faults::with_clock(cfg, Arc::new(RealClock::new()))
    }

    /// A controller with no fault active whose delays sleep on `clock`.
    pub fn with_clock(cfg: &FaultConfig, clock: Arc<dyn Clock>) -> Self {
        Faults {
            seed: cfg.seed,
            member: cfg.member,
            any_active: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            state: Mutex::new(FaultState {
                crashed: false,
                partitioned: false,
                held: false,
                hold_gen: 0,
                max_hold: cfg.max_hold,
                delay_us: 0,
                fail: None,
                rng: SplitMix64::for_member(cfg.seed, cfg.member),
                purge_pending: false,
            }),
            wake: Condvar::new(),
            clock,
        }
    }

    /// The run's seed.
    pub fn seed(&self) -> FaultSeed {
        self.seed
    }

    /// This member's id.
    pub fn member(&self) -> u64 {
        self.member
    }

    /// Whether any fault is active (or a session purge pending): the hot-path check.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.any_active.load(Ordering::SeqCst)
    }

    /// The current session generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Connection drops so far ([`Faults::drop_connections`] and crashes).
    pub fn connections_dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Operations that failed by injection so far (crash, partition, hold timeout, fail_with).
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Change the longest wait of a held operation (operations already waiting keep theirs).
    pub fn set_max_hold(&self, max: Duration) {
        self.update(|s| s.max_hold = max);
    }

    /// Change the state, then recompute the hot-path flag and wake held operations.
    fn update(&self, f: impl FnOnce(&mut FaultState)) {
        let mut s = self.state.lock();
        f(&mut s);
        self.any_active.store(s.any(), Ordering::SeqCst);
        drop(s);
        self.wake.notify_all();
    }

    /// Bump the session generation: every open session becomes invalid.
    fn invalidate_sessions(&self, s: &mut FaultState) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.dropped.fetch_add(1, Ordering::SeqCst);
        s.purge_pending = true;
    }

    /// Crash: every operation fails with `CKR_DEVICE_REMOVED` until [`Faults::restart`]; the
    /// open sessions are lost.
    pub fn crash(&self) {
        tracing::warn!(member = self.member, "fault: crash");
        self.update(|s| {
            s.crashed = true;
            self.invalidate_sessions(s);
        });
    }

    /// Restart after a crash: operations work again; sessions from before the crash stay
    /// invalid. Token objects are still there.
    pub fn restart(&self) {
        tracing::warn!(member = self.member, "fault: restart");
        self.update(|s| s.crashed = false);
    }

    /// Hold: operations block until [`Faults::release`] (at most `max_hold` each, then
    /// `CKR_DEVICE_ERROR`).
    pub fn hold(&self) {
        tracing::warn!(member = self.member, "fault: hold");
        self.update(|s| s.held = true);
    }

    /// Release held operations.
    pub fn release(&self) {
        tracing::warn!(member = self.member, "fault: release");
        self.update(|s| {
            s.held = false;
            s.hold_gen = s.hold_gen.wrapping_add(1);
        });
    }

    /// Partition: operations fail with `CKR_DEVICE_ERROR` until [`Faults::repair`]; state and
    /// sessions survive.
    pub fn partition(&self) {
        tracing::warn!(member = self.member, "fault: partition");
        self.update(|s| s.partitioned = true);
    }

    /// End a partition.
    pub fn repair(&self) {
        tracing::warn!(member = self.member, "fault: repair");
        self.update(|s| s.partitioned = false);
    }

    /// Add `extra_us` µs of latency to every operation (0 clears).
    pub fn delay(&self, extra_us: u64) {
        tracing::warn!(member = self.member, extra_us, "fault: delay");
        self.update(|s| s.delay_us = extra_us);
    }

    /// Fail each operation with `rv` with probability `probability` (clamped to `[0, 1]`),
    /// drawn from the member's seeded stream. Probability 0 (or NaN, or `rv` `CKR_OK`) clears.
    pub fn fail_with(&self, rv: Rv, probability: f64) {
        let p = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        tracing::warn!(
            member = self.member,
            rv = format_args!("{rv:#x}"),
            probability = p,
            "fault: fail_with"
        );
        self.update(|s| s.fail = (p > 0.0 && rv != CKR_OK).then_some((rv, p)));
    }

    /// Drop every client connection: counted for the daemon; in process the open sessions
    /// become invalid, as after a crash and restart, without downtime.
    pub fn drop_connections(&self) {
        tracing::warn!(member = self.member, "fault: drop_connections");
        self.update(|s| self.invalidate_sessions(s));
    }

    /// Clear every fault (crash, partition, hold, delay, fail_with). Sessions already
    /// invalidated stay invalid.
    pub fn clear(&self) {
        tracing::warn!(member = self.member, "fault: clear");
        self.update(|s| {
            s.crashed = false;
            s.partitioned = false;
            s.held = false;
            s.hold_gen = s.hold_gen.wrapping_add(1);
            s.delay_us = 0;
            s.fail = None;
        });
    }

    /// Apply one script verb.
    pub fn apply(&self, verb: &FaultVerb) {
        match *verb {
            FaultVerb::Crash => self.crash(),
            FaultVerb::Restart => self.restart(),
            FaultVerb::Hold => self.hold(),
            FaultVerb::Release => self.release(),
            FaultVerb::Partition => self.partition(),
            FaultVerb::Repair => self.repair(),
            FaultVerb::Delay(us) => self.delay(us),
            FaultVerb::FailWith { rv, probability } => self.fail_with(rv, probability),
            FaultVerb::DropConnections => self.drop_connections(),
        }
    }

    /// For the HSM: if sessions are to be purged, the generation they must not be older than
    /// (the pending flag is cleared).
    pub(crate) fn take_purge(&self) -> Option<u64> {
        let mut s = self.state.lock();
        if !s.purge_pending {
            return None;
        }
        s.purge_pending = false;
        self.any_active.store(s.any(), Ordering::SeqCst);
        Some(self.generation())
    }

    /// For the HSM, at the start of an operation, only when [`Faults::is_active`]: the
    /// injected error, after any hold and delay.
    pub(crate) fn before_op(&self) -> Result<(), Rv> {
        let r = self.decide();
        if r.is_err() {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn decide(&self) -> Result<(), Rv> {
        let mut s = self.state.lock();
        let entered = s.hold_gen;
        let deadline = Instant::now() + s.max_hold;
        loop {
            if s.crashed {
                return Err(CKR_DEVICE_REMOVED);
            }
            if s.partitioned {
                return Err(CKR_DEVICE_ERROR);
            }
            if !s.held || s.hold_gen != entered {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(member = self.member, "fault: held operation timed out");
                return Err(CKR_DEVICE_ERROR);
            }
            self.wake.wait_until(&mut s, deadline);
        }
        let delay = s.delay_us;
        let st = &mut *s;
        let fail = match st.fail {
            Some((rv, p)) if st.rng.next_unit() < p => Some(rv),
            _ => None,
        };
        drop(s);
        if delay > 0 {
            self.clock.sleep(Duration::from_micros(delay));
        }
        fail.map_or(Ok(()), Err)
    }
}

// ----- scripts ---------------------------------------------------------------------------------

/// One fault verb, as a script names it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultVerb {
    /// `crash`
    Crash,
    /// `restart`
    Restart,
    /// `hold`
    Hold,
    /// `release`
    Release,
    /// `partition`
    Partition,
    /// `repair`
    Repair,
    /// `delay <µs | duration>`: extra latency, µs.
    Delay(u64),
    /// `fail_with <rv> <probability>`
    FailWith {
        /// The `CK_RV` (hex `0x30` or decimal).
        rv: Rv,
        /// In `[0, 1]`.
        probability: f64,
    },
    /// `drop_connections`
    DropConnections,
}

/// One line of a script: a verb and when, from the script's start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultStep {
    /// Offset from the start of the run.
    pub at: Duration,
    /// What happens.
    pub verb: FaultVerb,
    /// The script line (1-based), for messages.
    pub line: usize,
}

/// A parsed fault script. The syntax, one verb a line:
///
/// ```text
/// # comments and blank lines are ignored
/// at 0s fail_with 0x30 0.01
/// at 10s crash
/// at 12s restart
/// at 12500ms delay 2ms      # delay takes µs (bare number) or a duration
/// drop_connections          # no `at`: same offset as the line before (0 for the first)
/// ```
///
/// Offsets are `<integer><unit>` with unit `us`, `ms`, `s` or `m`, and must not go back in
/// time. Verbs: `crash`, `restart`, `hold`, `release`, `partition`, `repair`, `delay <d>`,
/// `fail_with <rv> <probability>`, `drop_connections`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultScript {
    /// The steps, in script order (offsets non-decreasing).
    pub steps: Vec<FaultStep>,
}

/// A script that does not parse: the line (1-based) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("fault script line {line}: {message}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "us" | "µs" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

fn parse_rv(s: &str) -> Option<Rv> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => Rv::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_verb(words: &[&str]) -> Result<FaultVerb, String> {
    let (name, args) = words.split_first().ok_or("no verb")?;
    let plain = |v: FaultVerb| {
        if args.is_empty() {
            Ok(v)
        } else {
            Err(format!("`{name}` takes no argument"))
        }
    };
    match *name {
        "crash" => plain(FaultVerb::Crash),
        "restart" => plain(FaultVerb::Restart),
        "hold" => plain(FaultVerb::Hold),
        "release" => plain(FaultVerb::Release),
        "partition" => plain(FaultVerb::Partition),
        "repair" => plain(FaultVerb::Repair),
        "drop_connections" => plain(FaultVerb::DropConnections),
        "delay" => match args {
            [d] => d
                .parse::<u64>()
                .ok()
                .or_else(|| parse_duration(d).and_then(|d| u64::try_from(d.as_micros()).ok()))
                .map(FaultVerb::Delay)
                .ok_or_else(|| format!("bad delay `{d}` (µs, or e.g. `5ms`)")),
            _ => Err("`delay` takes one argument: µs or a duration".into()),
        },
        "fail_with" => match args {
            [rv, p] => {
                let rv = parse_rv(rv).ok_or_else(|| format!("bad CK_RV `{rv}`"))?;
                let probability = p
                    .parse::<f64>()
                    .ok()
                    .filter(|p| (0.0..=1.0).contains(p))
                    .ok_or_else(|| format!("bad probability `{p}` (0 to 1)"))?;
                Ok(FaultVerb::FailWith { rv, probability })
            }
            _ => Err("`fail_with` takes two arguments: CK_RV and probability".into()),
        },
        other => Err(format!("unknown verb `{other}`")),
    }
}

impl FaultScript {
    /// Parse a script; the first bad line is the error.
    pub fn parse(text: &str) -> Result<FaultScript, ScriptError> {
        let mut steps = Vec::new();
        let mut last = Duration::ZERO;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |message: String| ScriptError { line, message };
            let content = raw.split('#').next().unwrap_or_default();
            let words: Vec<&str> = content.split_whitespace().collect();
            if words.is_empty() {
                continue;
            }
            let (at, rest) = match words.as_slice() {
                ["at", d, rest @ ..] => {
                    let at = parse_duration(d)
                        .ok_or_else(|| err(format!("bad offset `{d}` (e.g. `10s`, `500ms`)")))?;
                    (at, rest)
                }
                ["at"] => return Err(err("`at` needs an offset and a verb".into())),
                rest => (last, rest),
            };
            if at < last {
                return Err(err(format!("offset {at:?} goes back before {last:?}")));
            }
            if rest.is_empty() {
                return Err(err("no verb after the offset".into()));
            }
            let verb = parse_verb(rest).map_err(err)?;
            last = at;
            steps.push(FaultStep { at, verb, line });
        }
        Ok(FaultScript { steps })
    }
}

impl FromStr for FaultScript {
    type Err = ScriptError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultScript::parse(s)
    }
}

/// One verb without an offset, e.g. `fail_with 0x30 0.01` (what `hsmpool sim fault` sends the
/// daemon). A `#` comment is allowed; `at` is not: a verb given alone runs now.
impl FromStr for FaultVerb {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let content = s.split('#').next().unwrap_or_default();
        let words: Vec<&str> = content.split_whitespace().collect();
        if words.first() == Some(&"at") {
            return Err("a single verb takes no `at` offset".into());
        }
        parse_verb(&words)
    }
}

impl fmt::Display for FaultVerb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultVerb::Crash => f.write_str("crash"),
            FaultVerb::Restart => f.write_str("restart"),
            FaultVerb::Hold => f.write_str("hold"),
            FaultVerb::Release => f.write_str("release"),
            FaultVerb::Partition => f.write_str("partition"),
            FaultVerb::Repair => f.write_str("repair"),
            FaultVerb::Delay(us) => write!(f, "delay {us}"),
            FaultVerb::FailWith { rv, probability } => {
                write!(f, "fail_with {rv:#x} {probability}")
            }
            FaultVerb::DropConnections => f.write_str("drop_connections"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::hsm::{Hsm, HsmConfig, Role};
    use crate::types::{Attr, Mechanism, SignInput};

    const SO_PIN: &[u8] = b"so-pin-1234";
    const USER_PIN: &[u8] = b"user-pin-1234";

    /// An HSM with fault injection, not initialised.
    fn bare(seed: u64, member: u64) -> (tempfile::TempDir, Hsm) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = HsmConfig::new(dir.path().to_path_buf());
        cfg.pin_iterations = 1;
        cfg.faults = Some(FaultConfig {
            max_hold: Duration::from_secs(5),
            ..FaultConfig::new(FaultSeed(seed), member)
        });
        let hsm = Hsm::open(cfg).unwrap();
        (dir, hsm)
    }

    /// An initialised HSM with a default user.
    fn ready() -> (tempfile::TempDir, Hsm) {
        let (dir, hsm) = bare(42, 0);
        hsm.init_token(SO_PIN, &[b' '; 32]).unwrap();
        let ms = hsm.open_session();
        hsm.login(ms, Role::Officer, SO_PIN).unwrap();
        hsm.init_pin(ms, USER_PIN).unwrap();
        hsm.close_session(ms);
        (dir, hsm)
    }

    fn user_session(hsm: &Hsm) -> u64 {
        let ms = hsm.open_session();
        hsm.login(ms, Role::User, USER_PIN).unwrap();
        ms
    }

    fn hmac_key(hsm: &Hsm, ms: u64, token: bool) -> u64 {
        hsm.generate_key(
            ms,
            &Mechanism::plain(CKM_GENERIC_SECRET_KEY_GEN),
            &[
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_SIGN, true),
                Attr::bool(CKA_TOKEN, token),
            ],
        )
        .unwrap()
    }

    fn sign(hsm: &Hsm, ms: u64, key: u64) -> Result<Vec<u8>, Rv> {
        hsm.sign(
            ms,
            &Mechanism::plain(CKM_SHA256_HMAC),
            key,
            SignInput::Message(b"hello"),
        )
        .map_err(|e| e.ck_rv())
    }

    fn faults(hsm: &Hsm) -> &Faults {
        hsm.faults().expect("fault injection on")
    }

    #[test]
    fn a_single_verb_parses_and_prints_back() {
        for text in [
            "crash",
            "restart",
            "drop_connections",
            "delay 2000",
            "fail_with 0x30 0.5",
        ] {
            let v: FaultVerb = text.parse().unwrap();
            assert_eq!(v.to_string(), text);
        }
        assert_eq!("delay 5ms".parse::<FaultVerb>(), Ok(FaultVerb::Delay(5000)));
        assert_eq!("  hold  # why".parse::<FaultVerb>(), Ok(FaultVerb::Hold));
        for bad in [
            "",
            "at 1s crash",
            "crash now",
            "explode",
            "fail_with 0x30 2",
        ] {
            assert!(bad.parse::<FaultVerb>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn off_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = Hsm::open(HsmConfig::new(dir.path().to_path_buf())).unwrap();
        assert!(hsm.faults().is_none());
        let mut buf = [0u8; 8];
        hsm.random(&mut buf).unwrap();
    }

    #[test]
    fn crash_then_restart_invalidates_old_sessions_keeps_token_keys() {
        let (_dir, hsm) = ready();
        let ms = user_session(&hsm);
        let token_key = hmac_key(&hsm, ms, true);
        let session_key = hmac_key(&hsm, ms, false);
        let before = sign(&hsm, ms, token_key).unwrap();
        assert!(sign(&hsm, ms, session_key).is_ok());

        faults(&hsm).crash();
        assert_eq!(sign(&hsm, ms, token_key), Err(CKR_DEVICE_REMOVED));
        assert_eq!(
            hsm.find(ms, &[]).map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_REMOVED)
        );
        let mut buf = [0u8; 8];
        assert_eq!(
            hsm.random(&mut buf).map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_REMOVED)
        );
        let opened_while_down = hsm.open_session();
        assert_eq!(
            hsm.login(opened_while_down, Role::User, USER_PIN)
                .map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_REMOVED)
        );

        faults(&hsm).restart();
        assert_eq!(sign(&hsm, ms, token_key), Err(CKR_SESSION_HANDLE_INVALID));
        assert_eq!(
            hsm.login(opened_while_down, Role::User, USER_PIN)
                .map_err(|e| e.ck_rv()),
            Err(CKR_SESSION_HANDLE_INVALID)
        );
        let fresh = user_session(&hsm);
        assert_eq!(sign(&hsm, fresh, token_key).unwrap(), before);
        assert_eq!(sign(&hsm, fresh, session_key), Err(CKR_KEY_HANDLE_INVALID));
        assert_eq!(faults(&hsm).connections_dropped(), 1);
        assert!(!faults(&hsm).is_active(), "purge done, nothing left on");
    }

    #[test]
    fn partition_and_repair_keep_sessions() {
        let (_dir, hsm) = ready();
        let ms = user_session(&hsm);
        let key = hmac_key(&hsm, ms, false);
        faults(&hsm).partition();
        assert_eq!(sign(&hsm, ms, key), Err(CKR_DEVICE_ERROR));
        assert_eq!(
            hsm.key_meta(ms, key).map(|_| ()).map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_ERROR)
        );
        faults(&hsm).repair();
        assert!(sign(&hsm, ms, key).is_ok(), "session and its login survive");
        assert_eq!(faults(&hsm).connections_dropped(), 0);
        assert_eq!(faults(&hsm).injected(), 2);
    }

    #[test]
    fn hold_blocks_until_release() {
        let (_dir, hsm) = ready();
        let ms = user_session(&hsm);
        let key = hmac_key(&hsm, ms, false);
        faults(&hsm).hold();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let hsm = &hsm;
            s.spawn(move || tx.send(sign(hsm, ms, key)).unwrap());
            assert_eq!(
                rx.recv_timeout(Duration::from_millis(100)),
                Err(mpsc::RecvTimeoutError::Timeout),
                "held"
            );
            faults(hsm).release();
            let r = rx.recv_timeout(Duration::from_secs(3)).expect("released");
            assert!(r.is_ok(), "{r:?}");
        });
    }

    #[test]
    fn hold_is_bounded() {
        let (_dir, hsm) = bare(1, 0);
        faults(&hsm).set_max_hold(Duration::from_millis(50));
        faults(&hsm).hold();
        let t0 = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(
            hsm.random(&mut buf).map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_ERROR)
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));
        faults(&hsm).release();
        hsm.random(&mut buf).unwrap();
    }

    #[test]
    fn crash_wakes_held_operations() {
        let (_dir, hsm) = bare(1, 0);
        faults(&hsm).hold();
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            let hsm = &hsm;
            s.spawn(move || {
                let mut buf = [0u8; 8];
                tx.send(hsm.random(&mut buf).map_err(|e| e.ck_rv()))
                    .unwrap()
            });
            std::thread::sleep(Duration::from_millis(20));
            faults(hsm).crash();
            let r = rx.recv_timeout(Duration::from_secs(3)).expect("woken");
            assert_eq!(r, Err(CKR_DEVICE_REMOVED));
        });
    }

    #[test]
    fn fail_with_probability_one_always_zero_never() {
        let (_dir, hsm) = ready();
        let ms = user_session(&hsm);
        let key = hmac_key(&hsm, ms, false);
        faults(&hsm).fail_with(CKR_DEVICE_MEMORY, 1.0);
        for _ in 0..50 {
            assert_eq!(sign(&hsm, ms, key), Err(CKR_DEVICE_MEMORY));
        }
        faults(&hsm).fail_with(CKR_DEVICE_MEMORY, 0.0);
        assert!(!faults(&hsm).is_active());
        for _ in 0..50 {
            assert!(sign(&hsm, ms, key).is_ok());
        }
        assert_eq!(faults(&hsm).injected(), 50);
    }

    /// Which of `n` random() calls fail with p = 0.3 on member `member` of seed `seed`.
    fn failures(seed: u64, member: u64, n: usize) -> Vec<bool> {
        let (_dir, hsm) = bare(seed, member);
        faults(&hsm).fail_with(CKR_FUNCTION_FAILED, 0.3);
        let mut buf = [0u8; 4];
        (0..n)
            .map(|_| match hsm.random(&mut buf) {
                Ok(()) => false,
                Err(e) => {
                    assert_eq!(e.ck_rv(), CKR_FUNCTION_FAILED);
                    true
                }
            })
            .collect()
    }

    #[test]
    fn same_seed_replays_members_differ() {
        let a = failures(7, 1, 500);
        assert_eq!(a, failures(7, 1, 500), "same seed and member replay");
        assert_ne!(a, failures(7, 2, 500), "another member, another stream");
        assert_ne!(a, failures(8, 1, 500), "another seed, another stream");
        let rate = a.iter().filter(|f| **f).count() as f64 / a.len() as f64;
        assert!((0.2..0.4).contains(&rate), "rate {rate}");
    }

    #[test]
    fn delay_adds_at_least_the_given_time() {
        let (_dir, hsm) = bare(1, 0);
        faults(&hsm).delay(20_000);
        let t0 = Instant::now();
        let mut buf = [0u8; 8];
        hsm.random(&mut buf).unwrap();
        hsm.random(&mut buf).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t0.elapsed()
        );
        faults(&hsm).delay(0);
        assert!(!faults(&hsm).is_active());
    }

    #[test]
    fn drop_connections_invalidates_sessions_without_downtime() {
        let (_dir, hsm) = ready();
        let ms = user_session(&hsm);
        let key = hmac_key(&hsm, ms, true);
        faults(&hsm).drop_connections();
        assert_eq!(faults(&hsm).connections_dropped(), 1);
        assert_eq!(sign(&hsm, ms, key), Err(CKR_SESSION_HANDLE_INVALID));
        let fresh = user_session(&hsm);
        assert!(sign(&hsm, fresh, key).is_ok());
        assert_eq!(faults(&hsm).injected(), 0, "no injected failure");
    }

    #[test]
    fn script_parses() {
        let text = "\
# a failover drill
at 0s fail_with 0x30 0.01
at 10s crash   # member goes down
at 12s restart

at 12500ms delay 2ms
delay 250
at 1m hold
at 60s release
at 61s partition
repair
at 70s drop_connections
at 70s fail_with 6 0
";
        let script: FaultScript = text.parse().unwrap();
        let got: Vec<(Duration, FaultVerb, usize)> = script
            .steps
            .iter()
            .map(|s| (s.at, s.verb, s.line))
            .collect();
        let s = Duration::from_secs;
        assert_eq!(
            got,
            vec![
                (
                    s(0),
                    FaultVerb::FailWith {
                        rv: CKR_DEVICE_ERROR,
                        probability: 0.01
                    },
                    2
                ),
                (s(10), FaultVerb::Crash, 3),
                (s(12), FaultVerb::Restart, 4),
                (Duration::from_millis(12_500), FaultVerb::Delay(2_000), 6),
                (Duration::from_millis(12_500), FaultVerb::Delay(250), 7),
                (s(60), FaultVerb::Hold, 8),
                (s(60), FaultVerb::Release, 9),
                (s(61), FaultVerb::Partition, 10),
                (s(61), FaultVerb::Repair, 11),
                (s(70), FaultVerb::DropConnections, 12),
                (
                    s(70),
                    FaultVerb::FailWith {
                        rv: CKR_FUNCTION_FAILED,
                        probability: 0.0
                    },
                    13
                ),
            ]
        );
        assert_eq!(FaultScript::parse("").unwrap().steps, vec![]);
        // Display round-trips through the parser.
        for step in &script.steps {
            let again = FaultScript::parse(&step.verb.to_string()).unwrap();
            assert_eq!(again.steps[0].verb, step.verb);
        }
    }

    #[test]
    fn script_errors_name_the_line() {
        let bad = [
            ("crash\nat 5s explode\n", 2, "unknown verb"),
            ("at 5 crash", 1, "bad offset"),
            ("at 5h crash", 1, "bad offset"),
            ("at 10s crash\nat 5s restart", 2, "goes back"),
            ("\n\nat 1s fail_with 0x30 1.5", 3, "bad probability"),
            ("at 1s fail_with zz 0.5", 1, "bad CK_RV"),
            ("at 1s fail_with 0x30", 1, "two arguments"),
            ("at 1s crash now", 1, "takes no argument"),
            ("delay soon", 1, "bad delay"),
            ("at 3s", 1, "no verb"),
            ("at", 1, "needs an offset"),
        ];
        for (text, line, what) in bad {
            let e = FaultScript::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("fault script line {line}:")));
        }
    }

    #[test]
    fn apply_runs_script_verbs() {
        let (_dir, hsm) = bare(3, 0);
        let script = FaultScript::parse("crash\nrestart\nfail_with 0x30 1").unwrap();
        for step in &script.steps {
            faults(&hsm).apply(&step.verb);
        }
        let mut buf = [0u8; 8];
        assert_eq!(
            hsm.random(&mut buf).map_err(|e| e.ck_rv()),
            Err(CKR_DEVICE_ERROR)
        );
        faults(&hsm).clear();
        hsm.random(&mut buf).unwrap();
    }
}
