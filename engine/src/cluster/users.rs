//! Users kept the same on every member that keeps users (`hsmpool_member::users`): a user
//! change made on one member and carried to the others as sealed records; members brought
//! level by record version and lockout counters; and a member found behind at login brought
//! level before the user is refused there.
//!
//! Members that keep no users (a vendor's PKCS #11 module) take what PKCS #11 can say
//! (`C_InitPIN`, `C_SetPIN`, in `engine/token.rs`); a change they cannot express is refused
//! before any member is asked ([`Cluster::user_change`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use hsmpool_member::backend::users;
use hsmpool_member::{Approval, UserChange, UserSet};

use super::{Cluster, Member, Route};
use crate::backend::{MemberError, MemberSession};
use crate::error::{Error, Result};

/// What a user change reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChangeReport {
    /// Members (indexes) that hold the change now.
    pub applied: Vec<usize>,
    /// Configured members that did not take it now (down, or failed while taking it): each
    /// receives it when it is brought level, before it takes traffic again.
    pub pending: Vec<usize>,
}

impl Cluster {
    /// Whether member `i` keeps users.
    pub(crate) fn keeps_users(&self, i: usize) -> bool {
        self.members[i].backend.users().is_some()
    }

    /// A quorum token for `change`, made by an up member that keeps users once the up ones
    /// are level (so the version it binds is the cluster's).
    pub(crate) fn quorum_token(&self, change: &UserChange) -> Result<Vec<u8>> {
        self.refuse_without_users("make a quorum token")?;
        let keepers = self.user_keepers();
        let _ = self.converge_users(&keepers);
        let first = *self
            .user_keepers()
            .first()
            .ok_or_else(|| Error::DeviceError("no member that keeps users is up".into()))?;
        self.call(Route::Member(first), 2, |b, s| {
            users(b)?.quorum_token(s, change)
        })
    }

    /// `NotSupportedBy` naming the first member that keeps no users (a vendor's token), if
    /// any: what only members that keep users can do (`what`) is refused before any is asked.
    pub(crate) fn refuse_without_users(&self, what: &str) -> Result<()> {
        match self.members.iter().find(|m| m.backend.users().is_none()) {
            Some(m) => Err(Error::NotSupportedBy(format!(
                "member {} ({}) keeps no users of ours: a vendor PKCS #11 token knows only its \
                 SO and user PINs, so it cannot {what}; PINs are set with C_InitPIN and \
                 C_SetPIN, which reach every member",
                m.index,
                m.backend.describe(),
            ))),
            None => Ok(()),
        }
    }

    /// The up members that keep users.
    fn user_keepers(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.is_up() && m.backend.users().is_some())
            .map(|m| m.index)
            .collect()
    }

    /// Member `i`'s users, through its pool (`user_states` needs the application logged in).
    pub(crate) fn user_set(&self, i: usize) -> Result<UserSet> {
        self.call(Route::Member(i), 2, |b, s| users(b)?.user_states(s))
    }

    /// Bring the members `among` (indexes; up, logged in, keeping users) level with each
    /// other: every member takes, for each user, the newest record any of them holds (the
    /// newest epoch first: a member behind on `C_InitToken` is wiped) and the highest lockout
    /// counters. Returns how many records moved. A member that fails to be read or to take
    /// them is taken out of traffic (brought level when it returns), the others are still
    /// brought level, and the first such failure is returned.
    pub(crate) fn converge_users(&self, among: &[usize]) -> Result<usize> {
        let among: Vec<usize> = among
            .iter()
            .copied()
            .filter(|&i| self.keeps_users(i))
            .collect();
        if among.len() < 2 {
            return Ok(0);
        }
        let mut sets = Vec::with_capacity(among.len());
        let mut unread: Option<Error> = None;
        for &i in &among {
            match self.user_set(i) {
                Ok(s) => sets.push((i, s)),
                Err(e) => {
                    tracing::warn!(member = i, "its users could not be read: {e}");
                    self.out_of_date(&self.members[i], &e);
                    unread.get_or_insert(e);
                }
            }
        }
        let epoch = sets.iter().map(|(_, s)| s.epoch).max().unwrap_or(0);
        let current: Vec<&(usize, UserSet)> =
            sets.iter().filter(|(_, s)| s.epoch == epoch).collect();
        // For each user name, what every member must take: each distinct record of the
        // newest version (from the first member holding it: two rivals of one version, made at
        // once or each by its own C_InitToken, are both handed round and every member keeps
        // the same one of them, so which calls are made never depends on their digests), and
        // the highest counters (from the first member holding them).
        let mut wanted: BTreeMap<&str, Wanted> = BTreeMap::new();
        for (i, set) in &current {
            for u in &set.users {
                let Wanted { records, counters } = wanted.entry(u.name.as_str()).or_default();
                let newest = records
                    .first()
                    .and_then(|(j, _)| holder(&current, *j, &u.name))
                    .map_or(0, |r| r.version);
                if u.version > newest {
                    records.clear();
                }
                if u.version >= newest && !records.iter().any(|(_, d)| *d == u.digest) {
                    records.push((*i, u.digest));
                }
                if counters.is_none_or(|(_, c)| u.counter_rank() > c) {
                    *counters = Some((*i, u.counter_rank()));
                }
            }
        }
        let mut moved = 0;
        let mut wiped = false;
        let mut failed: Option<Error> = None;
        for (i, set) in &sets {
            let behind_epoch = set.epoch < epoch;
            let mut blobs: Vec<(usize, &str)> = Vec::new();
            for (name, Wanted { records, counters }) in &wanted {
                let mine = (!behind_epoch)
                    .then(|| set.users.iter().find(|u| u.name == *name))
                    .flatten();
                for (from, digest) in records {
                    if *from != *i && mine.is_none_or(|m| m.digest != *digest) {
                        blobs.push((*from, name));
                    }
                }
                if let Some((from, c)) = counters {
                    let sent = blobs.iter().any(|(f, n)| f == from && n == name);
                    if *from != *i && !sent && mine.is_none_or(|m| m.counter_rank() < *c) {
                        blobs.push((*from, name));
                    }
                }
            }
            if blobs.is_empty() {
                continue;
            }
            wiped |= behind_epoch;
            let done = blobs.iter().try_for_each(|(from, name)| {
                let blob = self.call(Route::Member(*from), 2, |b, s| {
                    users(b)?.export_user(s, name)
                })?;
                self.call(Route::Member(*i), 2, |b, s| users(b)?.import_user(s, &blob))
            });
            match done {
                Ok(()) => moved += blobs.len(),
                Err(e) => {
                    tracing::warn!(member = i, "users not brought level: {e}");
                    self.out_of_date(&self.members[*i], &e);
                    failed.get_or_insert(e);
                }
            }
        }
        if moved > 0 {
            tracing::info!(records = moved, "users brought level between members");
        }
        if wiped {
            // A member behind on C_InitToken lost its objects: caches must not keep them.
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        match unread.or(failed) {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// The up members other than `dst` that keep users and whose pool is logged in, with
    /// their pool session 0: where a member behind on users takes them from.
    pub(super) fn user_sources(&self, dst: usize) -> Vec<(usize, MemberSession)> {
        self.members
            .iter()
            .filter(|m| m.index != dst && m.is_up() && m.backend.users().is_some())
            .filter_map(|m| {
                let p = m.pool.load();
                (p.authed).then(|| p.sessions.first().map(|s| (m.index, *s)))?
            })
            .collect()
    }

    /// Member `dst` (its login was just refused, so `s` is not logged in) takes every user
    /// record of the first of `sources` (member, logged-in session) that gives them, through
    /// `s`: importing needs no login, the seal is the authority. `true` when it took them.
    /// Calls the members directly, never re-establishing a pool, so it may run while `dst`'s
    /// pool is being established.
    pub(super) fn push_users_into(
        &self,
        dst: &Member,
        s: MemberSession,
        sources: &[(usize, MemberSession)],
    ) -> bool {
        let Some(dst_users) = dst.backend.users() else {
            return false;
        };
        for &(src, ss) in sources {
            let Some(src_users) = self.members[src].backend.users() else {
                continue;
            };
            let pushed = (|| -> std::result::Result<usize, MemberError> {
                let set = src_users.user_states(ss)?;
                for u in &set.users {
                    let blob = src_users.export_user(ss, &u.name)?;
                    dst_users.import_user(s, &blob)?;
                }
                Ok(set.users.len())
            })();
            match pushed {
                Ok(n) => {
                    tracing::warn!(
                        member = dst.index,
                        from = src,
                        users = n,
                        "member refused a login the others accept: it was behind on users, and \
                         is brought level"
                    );
                    return true;
                }
                Err(e) => tracing::warn!(member = src, "users not read from it: {e}"),
            }
        }
        false
    }

    /// A user change made as one: refused before any member is asked when a member cannot
    /// keep named users; made on one up member that keeps users (after the up ones are brought
    /// level, so it is not behind), then carried to every other. It succeeds when every
    /// reachable member took it and at least `min_replicas` hold it; a member that missed it
    /// takes it when it is brought level. The application must be logged in as an officer.
    pub(crate) fn user_change(
        &self,
        change: &UserChange,
        approval: &Approval,
    ) -> Result<UserChangeReport> {
        self.refuse_without_users(&format!("{} a named user", change.verb()))?;
        let keepers = self.user_keepers();
        // A member that fails here is out of traffic now, and takes the change when it returns.
        let _ = self.converge_users(&keepers);
        let keepers = self.user_keepers();
        let mut first = None;
        let mut last_err = None;
        for &i in &keepers {
            match self.call(Route::Member(i), 2, |b, s| {
                users(b)?.change_user(s, change, approval)
            }) {
                Ok(()) => {
                    first = Some(i);
                    break;
                }
                // The member decided (the user exists, the password is too short...).
                Err(e @ Error::Hsm { .. }) => return Err(e),
                Err(e) => {
                    self.out_of_date(&self.members[i], &e);
                    last_err = Some(e);
                }
            }
        }
        let Some(first) = first else {
            return Err(last_err
                .unwrap_or_else(|| Error::DeviceError("no member that keeps users is up".into())));
        };
        tracing::info!(
            user = change.name(),
            member = first,
            "user change: {}",
            change.verb()
        );
        let others: Vec<usize> = self.user_keepers();
        let _ = self.converge_users(&others);
        let applied: Vec<usize> = self.user_keepers();
        let pending: Vec<usize> = (0..self.members.len())
            .filter(|i| !applied.contains(i))
            .collect();
        let needed = self.settings.min_replicas;
        if applied.len() < needed {
            return Err(Error::DeviceError(format!(
                "the user change reached {} member(s), {needed} needed (min_replicas); the \
                 members that hold it keep it, and the others take it when they return",
                applied.len()
            )));
        }
        Ok(UserChangeReport { applied, pending })
    }

    /// A signed key quorum token (`hsmpool_member::Users::approve_key`) presented to every up
    /// member that keeps users. The first to answer decides: its refusal (too few
    /// signatures, expired, used) is returned as it is, before any other is asked. A member that
    /// then fails to take it is left without it (`pending`): there the user is refused with
    /// `CKR_HSMPOOL_QUORUM_REQUIRED` until approved again, never let through.
    pub(crate) fn key_approval(
        &self,
        o: crate::backend::MemberObject,
        approval: &Approval,
    ) -> Result<UserChangeReport> {
        self.refuse_without_users("approve the use of a key")?;
        let mut applied = Vec::new();
        let mut last_err = None;
        for i in self.user_keepers() {
            match self.call(Route::Member(i), 2, |b, s| {
                users(b)?.approve_key(s, o, approval)
            }) {
                Ok(()) => applied.push(i),
                Err(e @ Error::Hsm { .. }) if applied.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(member = i, "a key approval was not taken: {e}");
                    last_err = Some(e);
                }
            }
        }
        if applied.is_empty() {
            return Err(last_err
                .unwrap_or_else(|| Error::DeviceError("no member that keeps users is up".into())));
        }
        let pending = (0..self.members.len())
            .filter(|i| !applied.contains(i))
            .collect();
        Ok(UserChangeReport { applied, pending })
    }

    /// `C_InitPIN` or `C_SetPIN` (`f`) on every up member: the member `route` picks decides;
    /// with the application logged in, the others that keep users take its new record (the
    /// hash travels, not the PIN), and only those that keep none (a vendor's token) are asked
    /// to do the same themselves. Not logged in (`C_SetPIN` of the default user from a public
    /// session), records cannot be read, and every member is asked. A member that fails to
    /// follow is taken out and brought level when it returns.
    pub(crate) fn pin_change(
        &self,
        route: Route,
        mut f: impl FnMut(
            &dyn crate::backend::Backend,
            MemberSession,
        ) -> std::result::Result<(), MemberError>,
    ) -> Result<()> {
        let (first, _, ()) = self.call_full(route, 1, &mut f)?;
        let by_records = self.logged_in() && self.keeps_users(first);
        for m in self.others(first) {
            if by_records && m.backend.users().is_some() {
                continue;
            }
            if let Err(e) = self.call(Route::Member(m.index), 1, &mut f) {
                self.out_of_date(m, &e);
            }
        }
        if by_records {
            let mut among = vec![first];
            among.extend(self.user_keepers().into_iter().filter(|i| *i != first));
            let _ = self.converge_users(&among);
        }
        Ok(())
    }
}

/// What every member must hold of one user (see [`Cluster::converge_users`]).
#[derive(Default)]
struct Wanted {
    /// Each distinct record of the newest version, with the first member holding it.
    records: Vec<(usize, [u8; 32])>,
    /// The highest lockout counters, with the first member holding them.
    counters: Option<(usize, (u64, u32))>,
}

/// Member `i`'s record of user `name` in `sets`.
fn holder<'a>(
    sets: &[&'a (usize, UserSet)],
    i: usize,
    name: &str,
) -> Option<&'a hsmpool_member::UserState> {
    sets.iter()
        .find(|(k, _)| *k == i)
        .and_then(|(_, s)| s.users.iter().find(|u| u.name == name))
}
