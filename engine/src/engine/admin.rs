//! Administration, as the `hsmpool` tool and tests reach it: users kept the same on every
//! member (see `crate::cluster` `users.rs`). The application logs in first, as a crypto
//! officer for a change.

use hsmpool_member::backend::{audit, backup, users};
use hsmpool_member::{Approval, AuditLog, KeyService, OwnedObject, UserChange, UserSet};

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
        // A crypto user registers its own approval key (for its keys' quorum); every other
        // change is an officer's.
        let own_key = matches!(change, UserChange::SetApprovalKey { .. })
            && self.login_state() == LoginState::User;
        if self.login_state() != LoginState::So && !own_key {
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
        self.key_change(s, o, "share a key", |b, ms, mo| {
            users(b)?.share_object(ms, mo, user, share)
        })
    }

    /// The owner of token key `o` (a crypto user, on a read-write session) sets the approvals
    /// `service` on it needs to `m` (1: none), on every member; see
    /// `hsmpool_member::Users::set_key_quorum`. Changing it is key management: a key whose
    /// management quorum is above 1 needs an approval in force ([`Engine::approve_key`]).
    pub fn set_key_quorum(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        service: KeyService,
        m: u32,
    ) -> Result<()> {
        self.key_change(s, o, "set a key's quorum", |b, ms, mo| {
            users(b)?.set_key_quorum(ms, mo, service, m)
        })
    }

    /// A quorum token for `service` on key `o`, for the crypto user logged in (the key's
    /// owner; for use, also a user it is shared with). The key's users sign it
    /// (`hsmpool quorum sign`) and [`Engine::approve_key`] presents it.
    pub fn key_quorum_token(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        service: KeyService,
    ) -> Result<Vec<u8>> {
        self.rw_of(s)?;
        let e = self.users_token_key(o)?;
        self.cluster
            .refuse_without_users("make a key quorum token")?;
        self.cluster.call(e.route(&self.cluster), 2, |b, ms| {
            users(b)?.key_quorum_token(ms, e.member_obj, service)
        })
    }

    /// Present a signed key quorum token on every up member: with M valid signatures of the
    /// key's users, the crypto user logged in (the one the token names) may use or manage key
    /// `o`, as the token says, until the token expires (ten minutes). `C_Sign` and the other
    /// calls carry no approval, so this is how a key with a quorum is opened for a while.
    pub fn approve_key(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        approval: &Approval,
    ) -> Result<UserChangeReport> {
        self.rw_of(s)?;
        let e = self.users_token_key(o)?;
        let _gate = self.cluster.gate.read();
        self.cluster.key_approval(e.member_obj, approval)
    }

    /// Token key `o`, for a call of its users' (sharing, quorum): a crypto user must be
    /// logged in, and a session object is no one else's to share or approve.
    fn users_token_key(&self, o: ObjectHandle) -> Result<crate::state::ObjEntry> {
        if self.login_state() != LoginState::User {
            return Err(Error::UserNotLoggedIn);
        }
        let e = self.entry(o)?;
        if e.home.is_some() {
            return Err(Error::ActionProhibited);
        }
        Ok(e)
    }

    /// A change of token key `o`'s sharing or quorum (`f`) made by its owner on one member and
    /// copied to the others (the changed object replaces the old one; a member that misses it
    /// now is brought level when it returns).
    fn key_change(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        what: &str,
        f: impl Fn(
            &dyn crate::backend::Backend,
            crate::backend::MemberSession,
            crate::backend::MemberObject,
        ) -> std::result::Result<(), crate::backend::MemberError>,
    ) -> Result<()> {
        if !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        let e = self.users_token_key(o)?;
        self.cluster.refuse_without_users(what)?;
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self
            .cluster
            .call_full(e.route(&self.cluster), 1, |b, ms| f(b, ms, e.member_obj))?;
        self.invalidate();
        if let Err(err) = self.cluster.replicate(&mut vec![first], &[e.member_obj]) {
            tracing::warn!("a key's change could not be copied: {err}");
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

    /// A backup image of the cluster named `id`, dated `created_ms`, taken by one up member
    /// that takes backups (the first that succeeds, in index order), read out in pieces; with
    /// the index of the member that took it. An image holds everything a member holds, sealed
    /// under keys only HSMs of the fleet have (`hsmpool_member::backup`): this process never
    /// reads inside it. Needs an officer login; the up members are brought level first, so
    /// the image is the cluster's, not one member's lag.
    pub fn export_backup(&self, id: &str, created_ms: u64) -> Result<(usize, Vec<u8>)> {
        if self.login_state() != LoginState::So {
            return Err(Error::UserNotLoggedIn);
        }
        if !hsmpool_member::backup::valid_id(id) {
            return Err(Error::ArgumentsBad(
                "a backup id is 1 to 64 of A-Z a-z 0-9 . _ -",
            ));
        }
        self.cluster.level_all();
        let mut last = Error::DeviceError("no up member takes backups".into());
        for i in self.backup_takers() {
            match self.export_from(i, id, created_ms) {
                Ok(image) => return Ok((i, image)),
                Err(e) => {
                    tracing::warn!(member = i, "backup {id} not taken there: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The cluster's id (what its backups carry), as the first up member that takes backups
    /// says. Needs a login.
    pub fn cluster_id(&self) -> Result<[u8; 16]> {
        if self.login_state() == LoginState::Public {
            return Err(Error::UserNotLoggedIn);
        }
        let i = *self
            .backup_takers()
            .first()
            .ok_or_else(|| Error::DeviceError("no up member takes backups".into()))?;
        self.cluster
            .call(Route::Member(i), 1, |b, s| backup(b)?.cluster_id(s))
    }

    /// The up members that take backups, by index.
    fn backup_takers(&self) -> Vec<usize> {
        self.cluster
            .status()
            .iter()
            .filter(|m| m.health == crate::cluster::Health::Up)
            .map(|m| m.index)
            .filter(|&i| self.cluster.members[i].backend.backup().is_some())
            .collect()
    }

    /// Read backup image `id` out of member `i`, piece by piece.
    fn export_from(&self, i: usize, id: &str, created_ms: u64) -> Result<Vec<u8>> {
        let mut image: Vec<u8> = Vec::new();
        let mut total = None;
        loop {
            let offset = image.len() as u64;
            let (whole, piece) = self.cluster.call(Route::Member(i), 4, |b, s| {
                backup(b)?.export_backup(s, id, created_ms, offset)
            })?;
            if *total.get_or_insert(whole) != whole
                || (piece.is_empty() && offset < whole)
                || offset + piece.len() as u64 > whole
            {
                return Err(Error::DeviceError(format!(
                    "member {i} answered a backup piece that does not fit"
                )));
            }
            image.extend_from_slice(&piece);
            if image.len() as u64 == whole {
                return Ok(image);
            }
        }
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
