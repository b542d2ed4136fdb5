//! Administration, as the `hsmpool` tool and tests reach it: users kept the same on every
//! member (see `crate::cluster` `users.rs`). The application logs in first, as a crypto
//! officer for a change.

use hsmpool_member::backend::{audit, users};
use hsmpool_member::{Approval, AuditLog, OwnedObject, UserChange, UserSet};

use super::lifecycle::Engine;
use crate::cluster::{Route, UserChangeReport};
use crate::error::{Error, Result};
use crate::state::LoginState;
use crate::types::{ObjectHandle, SessionHandle};

/// A member's token objects as (object id, digest), by id.
pub type ObjectDigests = Vec<(u64, [u8; 32])>;

impl Engine {
    /// A crypto officer's change to one user, made as one on every member: refused before
    /// any member is asked when a member keeps no users (a vendor's token); a member that
    /// misses it takes it before it takes traffic again. Needs an officer login.
    pub fn change_user(&self, change: &UserChange) -> Result<UserChangeReport> {
        self.change_user_approved(change, &Approval::default())
    }

    /// [`Engine::change_user`] with the officers' approvals a quorum-protected change needs
    /// (`hsmpool_member::QuorumToken`).
    pub fn change_user_approved(
        &self,
        change: &UserChange,
        approval: &Approval,
    ) -> Result<UserChangeReport> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        let report = self.cluster.user_change(change, approval)?;
        // A deleted or locked user's objects are no longer anyone's to see through cached
        // finds made before.
        self.invalidate();
        Ok(report)
    }

    /// A quorum token for `change` (the officers sign it; see `hsmpool_member::QuorumToken`).
    /// Needs an officer login.
    pub fn quorum_token(&self, change: &UserChange) -> Result<Vec<u8>> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        self.cluster.quorum_token(change)
    }

    /// The users (deleted ones left out), as the first up member that keeps users holds them,
    /// with its lockout threshold and quorum. Needs a login.
    pub fn users(&self) -> Result<UserSet> {
        let (_, set) = self
            .member_users()?
            .into_iter()
            .next()
            .ok_or_else(|| Error::DeviceError("no member that keeps users is up".into()))?;
        let mut set = set?;
        // Records whose name has `:` are the cluster's (the quorum policy), not users.
        set.users.retain(|u| !u.deleted && !u.name.starts_with(':'));
        Ok(set)
    }

    /// Each up member's users as it holds them, without bringing them level first (what
    /// `hsmpool cluster check` compares): the member's index and its answer. Needs a login.
    pub fn member_users(&self) -> Result<Vec<(usize, Result<UserSet>)>> {
        self.each_up_member(|i| {
            self.cluster
                .keeps_users(i)
                .then(|| self.cluster.user_set(i))
        })
    }

    /// `f` of each up member (`None`: that member is left out), with its index. Needs a login.
    fn each_up_member<T>(
        &self,
        f: impl Fn(usize) -> Option<Result<T>>,
    ) -> Result<Vec<(usize, Result<T>)>> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(self
            .cluster
            .status()
            .iter()
            .filter(|m| m.health == crate::cluster::Health::Up)
            .filter_map(|m| f(m.index).map(|r| (m.index, r)))
            .collect())
    }

    /// Bring the up members' users level now (what the module does at each login and when a
    /// member returns): how many records moved.
    pub fn converge_users(&self) -> Result<usize> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        let up: Vec<usize> = self
            .cluster
            .status()
            .iter()
            .filter(|m| m.health == crate::cluster::Health::Up)
            .map(|m| m.index)
            .collect();
        self.cluster.converge_users(&up)
    }

    /// The owner of token key `o`, logged in as a crypto user on a read-write session, shares
    /// it with crypto user `user` (or, `share` false, stops sharing it), on every member. The
    /// user it is shared with may use it as its attributes allow, but not destroy, change, copy,
    /// wrap or share it (`CKR_ACTION_PROHIBITED`). Refused before any member is asked when a
    /// member keeps no users (a vendor's token), and for a session object.
    pub fn share_object(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        user: &str,
        share: bool,
    ) -> Result<()> {
        if !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        if self.login_state() != LoginState::User {
            return Err(Error::UserNotLoggedIn);
        }
        let e = self.entry(o)?;
        if e.home.is_some() {
            return Err(Error::ActionProhibited);
        }
        self.cluster.refuse_without_users("share a key")?;
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self.cluster.call_full(e.route(&self.cluster), 1, |b, ms| {
            users(b)?.share_object(ms, e.member_obj, user, share)
        })?;
        self.invalidate();
        // The changed object replaces the old one on the others; a member that misses it now
        // is brought level when it returns.
        if let Err(err) = self.cluster.replicate(&mut vec![first], &[e.member_obj]) {
            tracing::warn!("a shared key's change could not be copied: {err}");
        }
        Ok(())
    }

    /// Every token object (of `owner` only, when given) with its owner and the users it is
    /// shared with, as an up member that keeps users holds them. Needs an officer login.
    pub fn owned_objects(&self, owner: Option<&str>) -> Result<Vec<OwnedObject>> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        self.cluster.refuse_without_users("list keys by owner")?;
        self.cluster
            .call(Route::Any, 2, |b, s| users(b)?.owned_objects(s, owner))
    }

    /// Up to `limit` records of member `member`'s own audit log from number `from` on, with
    /// their checkpoints and the member's audit public key (see `hsmpool_member::audit`).
    /// Needs an officer login.
    pub fn audit_log(&self, member: usize, from: u64, limit: u32) -> Result<AuditLog> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        if member >= self.cluster.members.len() {
            return Err(Error::ArgumentsBad("no such member"));
        }
        self.cluster.call(Route::Member(member), 2, |b, s| {
            audit(b)?.audit_log(s, from, limit)
        })
    }

    /// Whether a login brings the up members level (on by default). `hsmpool cluster check
    /// --dry-run` turns it off before logging in, to see the drift it reports.
    pub fn set_level_at_login(&self, on: bool) {
        self.level_at_login
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each up member's token objects as (object id, digest), by id: what `hsmpool cluster
    /// check` compares. Needs a login.
    pub fn member_objects(&self) -> Result<Vec<(usize, Result<ObjectDigests>)>> {
        self.each_up_member(|i| {
            let d = self.cluster.object_digests(i);
            Some(d.map(|v| v.into_iter().map(|(o, d)| (o.0, d)).collect()))
        })
    }

    /// Bring the up members level now, as a login does: users (newest record wins), then
    /// token objects (each member takes what another holds and it lacks). How many records and
    /// objects moved.
    pub fn level_now(&self) -> Result<usize> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        let n = self.cluster.level_all();
        self.invalidate();
        Ok(n)
    }
}
