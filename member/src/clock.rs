//! The one clock: every reading of the time and every sleep in the engine (backoff, probes,
//! stall detection, slow start, deadlines, caches) and in the simulator (its timing model and
//! fault delays) goes through a [`Clock`], so a test can run a whole in-process cluster on
//! [`VirtualClock`] time: a fault run is replayed exactly from its seed, in a fraction of the
//! time it simulates.
//!
//! Times are offsets from the clock's own epoch (a `Duration`), so a virtual clock needs no
//! `Instant` it cannot make.

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Where time is read and slept: real, or virtual for tests. Times are offsets from the
/// clock's own epoch.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The time now.
    fn now(&self) -> Duration;
    /// Return at or after `deadline` (at once when it has passed).
    fn sleep_until(&self, deadline: Duration);
    /// Return after `d`.
    fn sleep(&self, d: Duration) {
        self.sleep_until(self.now().saturating_add(d));
    }
    /// Whether time moves only when the program says so: then nothing may wait for time to
    /// pass by itself. The engine starts no background threads on such a clock (its owner
    /// runs the periodic work, `Engine::tick`) and does its work on one thread, so a run is a
    /// function of its seed.
    fn is_virtual(&self) -> bool {
        false
    }
}

/// The real clock: `Instant` and `std::thread::sleep`.
#[derive(Debug)]
pub struct RealClock {
    epoch: Instant,
}

impl RealClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        RealClock {
            epoch: Instant::now(),
        }
    }
}

impl Default for RealClock {
    fn default() -> Self {
        RealClock::new()
    }
}

impl Clock for RealClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
    fn sleep_until(&self, deadline: Duration) {
        // `thread::sleep` never returns early; the loop only guards against the clock's
        // coarseness (sleeping less than asked is never allowed here).
        loop {
            let now = self.now();
            if now >= deadline {
                return;
            }
            std::thread::sleep(deadline - now);
        }
    }
}

/// A virtual clock for tests: time moves only when told ([`VirtualClock::advance`],
/// [`VirtualClock::set`]) or, if built [`VirtualClock::auto_advancing`], when a sleep asks to
/// (as if that sleep happened). Every requested deadline is recorded; nothing really sleeps.
#[derive(Debug, Default)]
pub struct VirtualClock {
    inner: Mutex<VirtualState>,
}

#[derive(Debug, Default)]
struct VirtualState {
    now: Duration,
    auto_advance: bool,
    sleeps: Vec<Duration>,
}

impl VirtualClock {
    /// A clock at zero that moves only when told.
    pub fn new() -> Self {
        VirtualClock::default()
    }
    /// A clock at zero that jumps to each deadline a sleep asks for (one caller's timeline).
    pub fn auto_advancing() -> Self {
        VirtualClock {
            inner: Mutex::new(VirtualState {
                auto_advance: true,
                ..VirtualState::default()
            }),
        }
    }
    /// Move time forward.
    pub fn advance(&self, d: Duration) {
        self.inner.lock().now += d;
    }
    /// Set the time (never backwards).
    pub fn set(&self, t: Duration) {
        let mut s = self.inner.lock();
        s.now = s.now.max(t);
    }
    /// The deadlines asked of [`Clock::sleep_until`] so far, in call order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.inner.lock().sleeps.clone()
    }
}

impl Clock for VirtualClock {
    fn is_virtual(&self) -> bool {
        true
    }
    fn now(&self) -> Duration {
        self.inner.lock().now
    }
    fn sleep_until(&self, deadline: Duration) {
        let mut s = self.inner.lock();
        s.sleeps.push(deadline);
        if s.auto_advance {
            s.now = s.now.max(deadline);
        }
    }
}
