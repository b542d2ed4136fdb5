//! Which member takes a call: weights, slow start, stalls, drained members.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{ms_at, Cluster, Member};

impl Cluster {
    /// The member to use: up, not drained, circuit closed, not stalled, not in `avoid`; least
    /// outstanding weighted work per unit of weight.
    /// `now` is the call's start; `None` with a single member, whose choice needs no clock.
    pub(super) fn pick(
        &self,
        avoid: &[usize],
        cost: u64,
        now: Option<Duration>,
    ) -> Option<&Arc<Member>> {
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
