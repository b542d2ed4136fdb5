//! The cluster clone path (see `crate::cluster`): seal a token object for another member of
//! the cluster and store one sealed by another, list what this member holds by digest, drop a
//! replica; and the health probe.

use std::sync::Arc;

use cryptoki_sys::*;

use crate::cluster::{CloneKey, CloneRecord};
use crate::error::{SimError, SimResult};
use crate::object::{self, Object};
use crate::timing::OpClass;

use super::common::rv;
use super::Hsm;

impl Hsm {
    /// A health probe: fails as an operation would (crashed, partitioned, held, injected).
    pub fn ping(&self) -> SimResult<()> {
        self.fault_check() // fault hook
    }

    /// A logged-in session (either role): the clone path is never open to the public.
    fn require_login(&self, sess: u64) -> SimResult<()> {
        match self.login_of(sess)? {
            Some(_) => Ok(()),
            None => Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
    }

    /// A token object by id whatever its owner: the clone path copies every user's objects, as
    /// an HSM cluster synchronises all of them. Session objects never leave their member.
    fn token_object(&self, id: u64) -> SimResult<Arc<Object>> {
        match self.objects.get(&id).map(|o| o.value().clone()) {
            Some(o) if o.token => Ok(o),
            _ => Err(SimError::Rv(CKR_OBJECT_HANDLE_INVALID)),
        }
    }

    /// Seal token object `id` for another member of this cluster.
    pub fn export_clone(&self, sess: u64, id: u64) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        self.require_login(sess)?;
        let key = self.clone_key_required()?;
        let obj = self.token_object(id)?;
        key.seal(&CloneRecord {
            id: obj.id,
            owner: obj.owner.clone(),
            attrs: object::encode_attrs(&obj.attrs),
            secret: obj.material_bytes(),
        })
    }

    /// Store an object from another member's clone blob under its own id. Idempotent: an equal
    /// object already here is left alone; a different one with that id (changed while this
    /// member was away) is replaced.
    pub fn import_clone(&self, sess: u64, blob: &[u8]) -> SimResult<u64> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, true)); // timing hook
        self.require_login(sess)?;
        let key = self.clone_key_required()?;
        let rec = key.open(blob).inspect_err(|_| {
            tracing::warn!("clone blob refused: malformed, changed, or from another cluster");
        })?;
        let digest = key.digest(rec.id, rec.owner.as_deref(), &rec.attrs, &rec.secret);
        if let Ok(old) = self.token_object(rec.id) {
            if self.digest_of(key, &old) == digest {
                return Ok(rec.id);
            }
        }
        let obj = Arc::new(rv(self.revive(rec.id, rec.owner, &rec.attrs, &rec.secret))?);
        let detail = "copied from another member of the cluster";
        self.persist_audited(&obj, "key_replicated", &self.actor(sess), detail)?;
        if let Some((_, old)) = self.objects.remove(&obj.id) {
            self.unindex(&old);
        }
        self.insert(obj);
        Ok(rec.id)
    }

    fn digest_of(&self, key: &CloneKey, obj: &Object) -> [u8; 32] {
        let secret = obj.material_bytes();
        key.digest(
            obj.id,
            obj.owner.as_deref(),
            &object::encode_attrs(&obj.attrs),
            &secret,
        )
    }

    /// (id, digest) of every token object, by id: what a member holds, for resynchronisation.
    pub fn object_digests(&self, sess: u64) -> SimResult<Vec<(u64, [u8; 32])>> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        self.require_login(sess)?;
        self.catch_up();
        let key = self.clone_key_required()?;
        let objs: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.token)
            .map(|o| o.value().clone())
            .collect();
        let mut out: Vec<(u64, [u8; 32])> = objs
            .iter()
            .map(|o| (o.id, self.digest_of(key, o)))
            .collect();
        out.sort_unstable_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// Remove token object `id` whatever its owner or `CKA_DESTROYABLE`: the resynchronisation
    /// of a member that missed a destroy, or the roll-back of a create that did not reach enough
    /// members. Absent already is success.
    pub fn drop_replica(&self, sess: u64, id: u64) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, true)); // timing hook
        self.require_login(sess)?;
        match self.token_object(id) {
            Ok(obj) => {
                self.remove(&obj)?;
                let detail = "removed to match the cluster";
                self.audit(
                    "key_dropped",
                    &self.actor(sess),
                    &format!("{id:016x}"),
                    detail,
                );
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}
