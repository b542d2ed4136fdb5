//! Replication: token objects made on one member reach the others; roll-back; bringing a
//! member that was away level again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{not_copyable, Cluster, CopyPath, Member, HEALTH_DOWN, HEALTH_UP};
use crate::backend::MemberObject;
use crate::error::{Error, Result};

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

impl Cluster {
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
        // Users first: a member behind on C_InitToken is wiped by them, before its objects
        // are compared.
        self.converge_users(&[reference.index, m.index])?;
        self.level(reference, m, true)?;
        let _gate = self.gate.write();
        self.level(reference, m, true)?;
        self.mark_up(m);
        Ok(())
    }

    /// Make `target` hold what `source` holds. With `exact`, objects `source` lacks are removed
    /// from `target`; without, they are kept (a union, used at login when no member is known to
    /// be behind).
    pub(super) fn level(&self, source: &Member, target: &Member, exact: bool) -> Result<usize> {
        let (src, dst) = (source.index, target.index);
        let want = self.object_digests(src)?;
        let have = self.object_digests(dst)?;
        let have_map: std::collections::HashMap<MemberObject, [u8; 32]> =
            have.iter().copied().collect();
        let want_ids: std::collections::HashSet<MemberObject> =
            want.iter().map(|(id, _)| *id).collect();
        // A key kept on one member alone is not tried again (it cannot leave it).
        let copy: Vec<MemberObject> = want
            .iter()
            .filter(|(id, d)| have_map.get(id) != Some(d) && self.pinned_on(*id).is_none())
            .map(|(id, _)| *id)
            .collect();
        let drop: Vec<MemberObject> = if exact {
            // Where objects travel by wrapping (vendor HSMs), an object the reference lacks is
            // removed only if it was removed through this process (a destroy or a roll-back
            // the member missed): an operator's keys made on that HSM directly, or a key that
            // could not be copied, are never taken away. One the others lack is logged.
            let tombs = self.removed.lock();
            let (known, foreign): (Vec<MemberObject>, Vec<MemberObject>) = have
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !want_ids.contains(id) && self.pinned_on(*id).is_none())
                .partition(|id| self.copy_path == CopyPath::Clone || tombs.contains(id));
            // What this member alone holds is used there (`single_member_keys`).
            for id in &foreign {
                self.pin(*id, dst);
            }
            if !foreign.is_empty() {
                tracing::warn!(
                    member = dst,
                    objects = foreign.len(),
                    "member holds token objects the others do not (made on it directly, or \
                     not copyable): kept"
                );
            }
            known
        } else {
            Vec::new()
        };
        // Each object is a round trip or two: a member that missed thousands of creates is
        // brought level by several workers at once.
        parallel_each(&copy, self.workers(LEVEL_WORKERS), |id| {
            let blob = match self.export_object(src, id) {
                Ok(b) => b,
                // An object that cannot leave its member (not extractable, made by someone
                // else directly on that HSM) stays where it is; it does not keep the member out.
                Err(e) if not_copyable(&e) => {
                    self.pin(id, src);
                    tracing::warn!(member = src, object = id.0, "object not copied: {e}");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            match self.import_object(dst, &blob) {
                Ok(_) => {}
                Err(e) if not_copyable(&e) => {
                    self.pin(id, src);
                    tracing::warn!(member = dst, object = id.0, "object not copied here: {e}");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            target.stats.replicated.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })?;
        parallel_each(&drop, self.workers(LEVEL_WORKERS), |id| {
            self.drop_object(dst, id, 5)?;
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

    /// At login: bring the up members' users level (newest record wins), then every up
    /// member level with the union of what the up members hold (nothing is removed: with no
    /// member known to be behind, a difference may be a create that reached some members only
    /// while this process was not running).
    pub(crate) fn level_all(&self) -> usize {
        let ups: Vec<&Arc<Member>> = self.members.iter().filter(|m| m.is_up()).collect();
        let indexes: Vec<usize> = ups.iter().map(|m| m.index).collect();
        let mut changed = match self.converge_users(&indexes) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("users not brought level at login: {e}");
                0
            }
        };
        let ups: Vec<&Arc<Member>> = ups.into_iter().filter(|m| m.is_up()).collect();
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
    /// `holders`. `Err` when a holder will not let an object leave it (not extractable, not
    /// wrappable under the cluster key): no member ever could copy it.
    pub(crate) fn replicate(&self, holders: &mut Vec<usize>, ids: &[MemberObject]) -> Result<()> {
        let targets: Vec<usize> = self
            .members
            .iter()
            .filter(|m| m.is_up() && !holders.contains(&m.index))
            .map(|m| m.index)
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let mut blobs = None;
        for src in holders.iter() {
            let exported: Result<Vec<Vec<u8>>> =
                ids.iter().map(|id| self.export_object(*src, *id)).collect();
            match exported {
                Ok(b) => {
                    blobs = Some(b);
                    break;
                }
                Err(e) if not_copyable(&e) => return Err(e),
                Err(e) => tracing::warn!(member = src, "export for replication failed: {e}"),
            }
        }
        let Some(blobs) = blobs else { return Ok(()) };
        // The members copy at once (each copy is a token-object creation on that HSM).
        let got = Mutex::new(Vec::new());
        let refused = Mutex::new(None);
        let _ = parallel_each(&targets, self.workers(targets.len()), |t| {
            let copied: Result<()> = blobs
                .iter()
                .try_for_each(|blob| self.import_object(t, blob).map(|_| ()));
            match copied {
                Ok(()) => {
                    self.members[t]
                        .stats
                        .replicated
                        .fetch_add(ids.len() as u64, Ordering::Relaxed);
                    got.lock().push(t);
                }
                // The member's own policy will not hold the object as it is (NSS softokn keeps
                // every token secret key sensitive): no copy could ever be made there.
                Err(e) if not_copyable(&e) => *refused.lock() = Some(e),
                Err(e) => self.out_of_date(&self.members[t], &e),
            }
            Ok(())
        });
        holders.extend(got.into_inner());
        match refused.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
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
        self.removed.lock().extend(ids.iter().copied());
        for m in self
            .members
            .iter()
            .filter(|m| m.is_up() && Some(m.index) != except)
        {
            for id in ids {
                match self.drop_object(m.index, *id, 1) {
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

    /// `single_member_keys`: new token objects made on member `from` that cannot be copied to
    /// every member (`why`) stay on it alone: copies made meanwhile on other `holders` are
    /// removed (a key on some members only would be neither here nor there), and calls on
    /// them go to `from` (`Route::Pinned`). Told in the log, as the application cannot be.
    fn keep_on_one(&self, from: usize, holders: &[usize], ids: &[MemberObject], why: &Error) {
        for &h in holders.iter().filter(|&&h| h != from) {
            for id in ids {
                if let Err(e) = self.drop_object(h, *id, 3) {
                    self.out_of_date(&self.members[h], &e);
                }
            }
        }
        for id in ids {
            self.pin(*id, from);
        }
        tracing::warn!(
            member = from,
            objects = ?ids.iter().map(|id| id.0).collect::<Vec<_>>(),
            "a token key made on this member cannot be copied to the others ({why}): kept on \
             this member alone (cluster.single_member_keys); it cannot be used while this \
             member is down, and is lost with it"
        );
    }

    /// Make new token objects, made on member `from`, reach `min_replicas` members: copy them
    /// to every up member, and while too few hold them wait (members come back, with the
    /// create gate released meanwhile) until `replicate_wait` passes; then roll back everywhere
    /// and fail with `CKR_DEVICE_ERROR`. An object its member will not let out (a vendor that
    /// cannot wrap that key type) is rolled back at once: `CKR_TEMPLATE_INCONSISTENT`.
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
            if let Err(e) = self.replicate(&mut holders, ids) {
                if self.settings.single_member_keys {
                    self.keep_on_one(from, &holders, ids, &e);
                    return Ok(());
                }
                tracing::error!(
                    member = from,
                    "a token key made on this member cannot leave it, or a member will not hold \
                     it as asked ({e}), so it could not be kept on every member: refused and \
                     removed"
                );
                self.drop_replicas(None, ids);
                return Err(Error::TemplateInconsistent);
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
