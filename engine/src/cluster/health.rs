//! Health: probes, the way back for a member whose circuit opened, draining.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use cryptoki_sys::*;

use super::call::{classify, Class};
use super::{Cluster, Member, HEALTH_DOWN, HEALTH_SYNCING, HEALTH_UP};
use crate::error::{Error, Result};

impl Cluster {
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

    pub(super) fn spawn_probes(c: &Arc<Cluster>) {
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
    pub(super) fn probe(&self, i: usize) {
        let m = &self.members[i];
        if self.refused_now(m).is_some() {
            // Its token refused these credentials: asking again would only count more
            // failures against them. The next login of the application tries it again.
            return;
        }
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
    pub(super) fn revive(&self, m: &Member) -> Result<()> {
        let (s, epoch) = self.session_for(m, 0)?;
        // A find that matches nothing, answered from the label index: cheap, and it fails
        // with CKR_SESSION_HANDLE_INVALID when the member lost its sessions.
        let probe = [hsmpool_member::types::Attr::bytes(
            CKA_LABEL,
            b"\0hsmpool session probe",
        )];
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
    pub(super) fn mark_up(&self, m: &Member) {
        m.fails.store(0, Ordering::Relaxed);
        m.up_since_ms.store(self.now_ms(), Ordering::Relaxed);
        m.health.store(HEALTH_UP, Ordering::Release);
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
}
