//! Running a call on a member: retries inside a deadline and a budget, the error classes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use cryptoki_sys::*;

use super::{
    ms_at, sample_latency, thread_slot, Cluster, Member, Route, BUDGET_MAX, HEALTH_DOWN, HEALTH_UP,
};
use crate::backend::{Backend, MemberSession};
use crate::error::{Error, Result};

/// How an error is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Permanent,
    SessionLost,
    Transient,
}

pub(super) fn classify(e: &Error, logged_in: bool) -> Class {
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

const RETRY_COST: i64 = 10;

impl Cluster {
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
        // Members a call may never go to: those with a PIN of their own, for a PIN check.
        let excluded: Vec<usize> = match route {
            Route::Checker(role) => self
                .members
                .iter()
                .filter(|m| m.backend.own_pin(role))
                .map(|m| m.index)
                .collect(),
            _ => Vec::new(),
        };
        let mut avoid: Vec<usize> = excluded.clone();
        let mut attempt = 0u32;
        let mut last: Option<Error> = None;
        // CKR_FUNCTION_FAILED is tried once on each member, not until the deadline: a vendor
        // that throttles says it, and so does one that cannot do this call at all.
        let mut function_failed = 0usize;
        // The refusal of what the call asks, on members unlike each other (see below).
        let mut unable: Option<Error> = None;
        let mut refused: Vec<usize> = Vec::new();
        loop {
            let m = match route {
                Route::Member(i) => self
                    .members
                    .get(i)
                    .ok_or(Error::General("no such member".into()))?,
                Route::Pinned(i) => {
                    let m = self.members.get(i).ok_or(Error::KeyHandleInvalid)?;
                    if m.health.load(Ordering::Acquire) == HEALTH_DOWN {
                        return Err(last.unwrap_or_else(|| {
                            Error::DeviceError(format!(
                                "the key lives on member {i} alone (single_member_keys), which \
                                 is down"
                            ))
                        }));
                    }
                    m
                }
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
                Route::Any | Route::AnyHome | Route::Checker(_) => match self
                    .pick(&avoid, cost, t0)
                    .or_else(|| {
                        // Everyone was tried: start over rather than give up before the deadline
                        // (never with a member that refused what the call asks).
                        avoid.clone_from(&excluded);
                        avoid.extend_from_slice(&refused);
                        self.pick(&avoid, cost, t0)
                    }) {
                    Some(m) => m,
                    None if unable.is_some() => {
                        return Err(unable.take().unwrap_or(Error::MechanismInvalid))
                    }
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
                Route::On(..) | Route::AnyHome | Route::Checker(_) | Route::Member(_) => {
                    self.session_for(m, 0)
                }
                Route::Any | Route::Pinned(_) => self.session_for(m, slot),
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
            let refused_call = matches!(
                e,
                Error::Hsm {
                    rv: CKR_FUNCTION_FAILED,
                    ..
                }
            );
            // Members unlike each other (vendors side by side) may differ in what a call asks
            // beyond the mechanism list: SoftHSMv2 takes RSA-OAEP with SHA-1 only, NSS
            // softokn other parameters than ours. Such a call is tried once on each member;
            // when every one refuses, the most telling refusal is the application's.
            if self.unlike
                && matches!(route, Route::Any | Route::AnyHome)
                && matches!(
                    e,
                    Error::Hsm {
                        rv: CKR_MECHANISM_PARAM_INVALID
                            | CKR_ARGUMENTS_BAD
                            | CKR_KEY_SIZE_RANGE
                            | CKR_MECHANISM_INVALID
                            | CKR_FUNCTION_NOT_SUPPORTED,
                        ..
                    }
                )
            {
                // The most telling refusal is kept (SoftHSMv2 answers a parameter it does not
                // take with CKR_ARGUMENTS_BAD where another member names the parameter).
                let rank = |e: &Error| match e {
                    Error::Hsm { rv, .. } => [
                        CKR_MECHANISM_PARAM_INVALID,
                        CKR_KEY_SIZE_RANGE,
                        CKR_MECHANISM_INVALID,
                        CKR_FUNCTION_NOT_SUPPORTED,
                    ]
                    .iter()
                    .position(|r| r == rv)
                    .unwrap_or(4),
                    _ => 5,
                };
                if unable.as_ref().is_none_or(|u| rank(&e) < rank(u)) {
                    unable = Some(e);
                }
                refused.push(m.index);
                avoid.push(m.index);
                continue;
            }
            match (class, route) {
                (Class::Permanent, _) => return Err(e),
                (Class::SessionLost, Route::On(i, _)) => {
                    tracing::warn!(member = i, "session object lost: {e}");
                    let _ = self.establish(m, epoch);
                    return Err(Error::KeyHandleInvalid);
                }
                (
                    Class::SessionLost,
                    Route::Any | Route::AnyHome | Route::Checker(_) | Route::Pinned(_),
                ) => {
                    tracing::info!(
                        member = m.index,
                        "member sessions lost ({e}); re-authenticating"
                    );
                    if let Err(e2) = self.establish(m, epoch) {
                        self.note_failure(m, &e2);
                        avoid.push(m.index);
                    }
                }
                (Class::Transient, Route::On(i, _) | Route::Pinned(i)) => {
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
                (Class::Transient, Route::Any | Route::AnyHome | Route::Checker(_)) => {
                    // A refusal of this one call (CKR_FUNCTION_FAILED) does not count toward
                    // the member's circuit: an application whose call always fails must not
                    // take healthy members out.
                    if !refused_call {
                        self.note_failure(m, &e);
                    }
                    avoid.push(m.index);
                    m.stats.failovers.fetch_add(1, Ordering::Relaxed);
                }
            }
            if refused_call {
                function_failed += 1;
                if function_failed >= self.members.len() {
                    return Err(e);
                }
            }
            let now = clock.now();
            let deadline = deadline_at(now);
            if now >= deadline {
                tracing::warn!(member = m.index, "call deadline passed: {e}");
                return Err(e);
            }
            // A call's first failover to a member it has not tried is free: moving work off
            // one sick member is what the cluster is for (a vendor throttling half the calls
            // on one HSM must not spend the budget the others' successes earn). Retries after
            // that pay, so a sick cluster is not hammered.
            let first_failover = attempt == 0 && avoid.len() < self.members.len();
            if !first_failover && self.budget.fetch_sub(RETRY_COST, Ordering::Relaxed) < RETRY_COST
            {
                self.budget.fetch_add(RETRY_COST, Ordering::Relaxed);
                tracing::warn!("retry budget exhausted: {e}");
                return Err(e);
            }
            m.stats.retries.fetch_add(1, Ordering::Relaxed);
            if !first_failover {
                // (The first failover goes to another member at once.)
                let pause = self.backoff(attempt);
                let left = deadline.saturating_sub(clock.now());
                clock.sleep(pause.min(left));
            }
            attempt += 1;
            t0 = timed.then(|| clock.now());
            last = Some(e);
        }
    }

    /// A device-level failure on `m`: after `breaker_failures` in a row its circuit opens
    /// (health down) until a probe finds it answering again.
    pub(super) fn note_failure(&self, m: &Member, e: &Error) {
        let n = m.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.settings.breaker_failures
            && m.health
                .compare_exchange(HEALTH_UP, HEALTH_DOWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::warn!(member = m.index, failures = n, "circuit opened: {e}");
        }
    }

    /// Run a management call on every up member (token init, destroy of token objects,
    /// attribute changes): the member chosen by `route` decides (its error is returned; a
    /// [`Route::Checker`] where the call checks a PIN the application gave), the others
    /// follow; a member that fails to follow is taken out and brought level when it returns.
    pub(crate) fn on_all_from<E: Into<Error>>(
        &self,
        route: Route,
        mut f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<(), E>,
    ) -> Result<()> {
        let (first, _, ()) = self.call_full(route, 1, &mut f)?;
        self.follow(first, f);
        Ok(())
    }

    /// The other up members repeat a change member `first` made; one that fails to is taken
    /// out and brought level when it returns.
    pub(crate) fn follow<E: Into<Error>>(
        &self,
        first: usize,
        mut f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<(), E>,
    ) {
        for m in self.others(first) {
            let done = self.call(Route::Member(m.index), 1, &mut f);
            if let Err(e) = done {
                self.out_of_date(m, &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
