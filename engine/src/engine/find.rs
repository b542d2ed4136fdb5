//! Finds: `C_FindObjectsInit` / `C_FindObjects` / `C_FindObjectsFinal` and the find cache.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hsmpool_member::types::Attr;

use super::lifecycle::{Engine, CACHE_MAX};
use crate::backend::MemberObject;
use crate::cluster::Route;
use crate::error::{Error, Result};
use crate::state::{FindHit, FindState};
use crate::types::{ObjectHandle, SessionHandle};

impl Engine {
    /// `C_FindObjectsInit`.
    pub fn find_objects_init(&self, s: SessionHandle, template: Vec<Attr>) -> Result<()> {
        let sess = self.session(s)?;
        if sess.lock().find.is_some() {
            return Err(Error::OperationActive);
        }
        let results = self.find_handles(&template)?;
        let mut g = sess.lock();
        if g.find.is_some() {
            return Err(Error::OperationActive);
        }
        g.find = Some(FindState {
            results: results.to_vec(),
            cursor: 0,
        });
        Ok(())
    }

    /// The handles matching a template: from the find cache when nothing changed since the
    /// same find, else from one member (token objects) and from each member holding session
    /// objects of ours.
    fn find_handles(&self, template: &[Attr]) -> Result<Arc<Vec<ObjectHandle>>> {
        let key = (
            hsmpool_member::types::encode_attr_array(template),
            self.login_state() as u8,
        );
        let gen = self.cache_generation();
        let now = self.cluster.clock().now();
        if let Some(hit) = self.find_cache.get(&key) {
            if hit.gen == gen && now.saturating_sub(hit.at) < self.find_ttl {
                self.cluster.find_cache_hits.add(1);
                return Ok(hit.handles.clone());
            }
        }
        let mut found: Vec<MemberObject> = Vec::new();
        let homes: Vec<usize> = (0..self.session_objects_on.len())
            .filter(|i| self.session_objects_on[*i].load(Ordering::Relaxed) > 0)
            .collect();
        if homes.is_empty() {
            found = self
                .cluster
                .call(Route::Any, 2, |b, msess| b.find(msess, template))?;
        } else {
            // Pool session 0 of each member holding our session objects sees them and every
            // token object; a member that is gone took its session objects with it.
            let mut any = false;
            for i in homes {
                let epoch = self.cluster.members[i].epoch();
                if let Ok(v) = self
                    .cluster
                    .call(Route::On(i, epoch), 2, |b, msess| b.find(msess, template))
                {
                    found.extend(v);
                    any = true;
                }
            }
            if !any {
                found = self
                    .cluster
                    .call(Route::Any, 2, |b, msess| b.find(msess, template))?;
            }
            found.sort_unstable();
            found.dedup();
        }
        // Keys that live on one member alone (`single_member_keys`) are found there.
        let pinning = self.cluster.pinning_members();
        if !pinning.is_empty() {
            for i in pinning {
                if let Ok(v) = self
                    .cluster
                    .call(Route::Pinned(i), 2, |b, msess| b.find(msess, template))
                {
                    found.extend(v);
                }
            }
            found.sort_unstable();
            found.dedup();
        }
        let hidden = self.cluster.wrap_keys();
        found.retain(|mo| !hidden.contains(mo));
        let mut results: Vec<ObjectHandle> = found
            .into_iter()
            .map(|mo| {
                self.by_member
                    .get(&mo)
                    .map(|h| *h.value())
                    .unwrap_or_else(|| self.handle_for(mo, None, None))
            })
            .collect();
        results.extend(self.compat.find(self, template)?);
        let results = Arc::new(results);
        if self.find_cache.len() > CACHE_MAX {
            self.find_cache.clear();
        }
        self.find_cache.insert(
            key,
            FindHit {
                gen,
                at: now,
                handles: results.clone(),
            },
        );
        Ok(results)
    }

    /// `C_FindObjects`: at most `max` handles.
    pub fn find_objects(&self, s: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let f = g.find.as_mut().ok_or(Error::OperationNotInitialized)?;
        let end = f.results.len().min(f.cursor.saturating_add(max));
        let out = f.results[f.cursor..end].to_vec();
        f.cursor = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    pub fn find_objects_final(&self, s: SessionHandle) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        if g.find.take().is_none() {
            return Err(Error::OperationNotInitialized);
        }
        Ok(())
    }
}
