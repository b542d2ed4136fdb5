//! Member session pools, and the application's login on every member.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_member::Role;
use zeroize::Zeroizing;

use super::{Cluster, Credentials, Member, Pool, Route, HEALTH_DOWN};
use crate::backend::{MemberError, MemberSession};
use crate::error::{Error, Result};

/// Whether a login failure is the token's answer to the credentials (so trying again with the
/// same ones would only count more failures against them), not a fault of the device.
fn login_refused(rv: CK_RV) -> bool {
    matches!(
        rv,
        CKR_PIN_INCORRECT
            | CKR_PIN_LOCKED
            | CKR_PIN_EXPIRED
            | CKR_PIN_INVALID
            | CKR_PIN_LEN_RANGE
            | CKR_USER_PIN_NOT_INITIALIZED
            | CKR_USER_TYPE_INVALID
    )
}

impl Cluster {
    /// Member `m`'s token refused the credentials of login `gen`: it is out, with the reason in
    /// the log and in its status, and not asked again until the application logs in anew
    /// (a vendor token counts every wrong PIN toward its lockout).
    fn refuse(&self, m: &Member, gen: u64, e: &MemberError) {
        let reason = format!("its token refused the application's login: {e}");
        tracing::error!(member = m.index, "{reason}; out until the next login");
        *m.refused.lock() = Some((gen, reason));
        m.health.store(HEALTH_DOWN, Ordering::Release);
    }

    /// (Re-)establish a member's pool: open its sessions and log them in with the credentials,
    /// if any. `seen` is the epoch the caller saw fail: if the pool has moved on since, another
    /// thread did the work. Returns the current epoch.
    pub(super) fn establish(&self, m: &Member, seen: Option<u64>) -> Result<u64> {
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
                    let username = c.username.as_ref().map(|u| u.as_str());
                    let mut done = m.backend.login(s, c.role, &c.pin, username);
                    // A member that keeps users and refuses what the others accepted was away
                    // when a user changed: it takes the users from one of them, then is asked
                    // again (once).
                    if matches!(&done, Err(MemberError::Rv { rv, .. }) if login_refused(*rv))
                        && self.push_users_into(m, s, &self.user_sources(m.index))
                    {
                        done = m.backend.login(s, c.role, &c.pin, username);
                    }
                    // Where login is the application's, not the session's (PKCS #11's rule,
                    // which vendor modules follow), the sessions after the first are in already.
                    match done {
                        Ok(())
                        | Err(MemberError::Rv {
                            rv: CKR_USER_ALREADY_LOGGED_IN,
                            ..
                        }) => {}
                        Err(e) => {
                            if let MemberError::Rv { rv, .. } = &e {
                                if login_refused(*rv) {
                                    self.refuse(m, c.gen, &e);
                                }
                            }
                            return Err(e.into());
                        }
                    }
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

    pub(super) fn session_for(&self, m: &Member, slot: usize) -> Result<(MemberSession, u64)> {
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

    /// Log the application in: first on one member (which decides whether the PIN is right, so
    /// a wrong PIN counts once, not once per member; never one with a PIN of its own), then
    /// every other pool. Credentials are
    /// kept for re-authentication.
    pub(crate) fn login(&self, role: Role, pin: &[u8], username: Option<&str>) -> Result<()> {
        let creds = Arc::new(Credentials {
            gen: self.creds_gen.fetch_add(1, Ordering::Relaxed) + 1,
            role,
            pin: Zeroizing::new(pin.to_vec()),
            username: username.map(|u| Zeroizing::new(u.to_string())),
        });
        // One member decides, in its pool session 0; a member that fails for a device reason
        // is skipped like any other call.
        let first = match self.call_full(Route::Checker(role), 1, |b, s| {
            b.login(s, role, pin, username)
        }) {
            Ok((first, _, ())) => first,
            Err(e) => self.second_opinion(&e, role, pin, username).ok_or(e)?,
        };
        *self.creds.write() = Some(creds);
        let from_first: Vec<(usize, MemberSession)> = self.members[first]
            .pool
            .load()
            .sessions
            .first()
            .map(|s| (first, *s))
            .into_iter()
            .collect();
        for m in &self.members {
            // Log in the pool sessions as they are (re-opening them would lose the session
            // objects they hold); a member whose sessions are gone is re-established.
            let p = Pool::clone(&m.pool.load());
            let mut done = !p.sessions.is_empty();
            for (i, msess) in p.sessions.iter().enumerate() {
                if m.index == first && i == 0 {
                    continue;
                }
                let mut done_here = m.backend.login(*msess, role, pin, username);
                // Refused what the deciding member accepted: behind on users (see
                // `establish`); it takes them from that member and is asked again.
                if matches!(&done_here, Err(MemberError::Rv { rv, .. }) if login_refused(*rv))
                    && self.push_users_into(m, *msess, &from_first)
                {
                    done_here = m.backend.login(*msess, role, pin, username);
                }
                match done_here {
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

    /// The checker refused a login (`e`). Where members keep users, the checker may be the
    /// one that was away when the user was made or its password changed: every other member
    /// that keeps users is asked too. The first that accepts decides (its index is returned),
    /// and the checker takes the users from it. When none accepts, each member has counted
    /// the failure once: lockout is counted for the whole cluster, however logins are spread
    /// over members and processes.
    fn second_opinion(
        &self,
        e: &Error,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> Option<usize> {
        let &Error::Hsm { member, rv } = e else {
            return None;
        };
        // The error names the member by its own id (which is its index, except where an
        // embedding application brought members of its own in another order).
        let checker = self.members.iter().find(|m| m.backend.id().0 == member)?;
        if !login_refused(rv) || checker.backend.users().is_none() {
            return None;
        }
        for m in self
            .members
            .iter()
            .filter(|m| m.index != checker.index && m.is_up() && m.backend.users().is_some())
        {
            let Ok((s, _)) = self.session_for(m, 0) else {
                continue;
            };
            match m.backend.login(s, role, pin, username) {
                Ok(())
                | Err(MemberError::Rv {
                    rv: CKR_USER_ALREADY_LOGGED_IN,
                    ..
                }) => {
                    if let Ok((cs, _)) = self.session_for(checker, 0) {
                        self.push_users_into(checker, cs, &[(m.index, s)]);
                    }
                    return Some(m.index);
                }
                Err(other) => {
                    tracing::debug!(member = m.index, "login refused here too: {other}");
                }
            }
        }
        None
    }

    /// A context-specific re-authentication: checked by one member.
    pub(crate) fn check_pin(&self, role: Role, pin: &[u8], username: Option<&str>) -> Result<()> {
        self.call(Route::Checker(role), 1, |b, s| {
            b.login(s, role, pin, username)
        })
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
}
