//! What several rooms share: the timing and fault hooks every operation starts with, member
//! sessions (opened and closed here, since the fault hook closes the sessions a crash or a
//! connection drop invalidated), the object map and its index kept together (`insert`,
//! `unindex`) and in step with the store (`persist`, `remove`), and small helpers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use cryptoki_sys::*;

use crate::cluster::CloneKey;
use crate::error::{SimError, SimResult};
use crate::fault::Faults;
use crate::object::{self, Object};
use crate::store::AuditEvent;
use crate::timing::{self, OpClass, TimingModel};
use crate::types::CKA_HSMPOOL_SHARED_WITH;
use hsmpool_member::users::{shared_names, shared_value, KeyService};

use super::{Hsm, SimSession, INDEXED};

impl Hsm {
    /// The timing model, when on.
    pub fn timing(&self) -> Option<&TimingModel> {
        self.timing.as_ref()
    }

    /// timing hook: start a request; `op` gives its class and whether it creates a persistent
    /// (token) object, and is only called with the model on (off, this is one branch). The
    /// returned timer, held until the operation's end, applies the reply delay when dropped.
    #[inline]
    pub(super) fn timed(
        &self,
        op: impl FnOnce() -> (OpClass, bool),
    ) -> Option<timing::OpTimer<'_>> {
        self.timing.as_ref().map(|t| {
            let (class, token) = op();
            t.begin_op(class, token)
        })
    }

    /// The fault controller, when on. See [`crate::fault`].
    pub fn faults(&self) -> Option<&Faults> {
        self.faults.as_ref()
    }

    /// fault hook: at the start of an operation, the injected error, if any (after any hold
    /// and delay). Off, or on with no fault active, this is one branch and one atomic load.
    #[inline]
    pub(super) fn fault_check(&self) -> SimResult<()> {
        match &self.faults {
            Some(f) if f.is_active() => self.fault_slow(f),
            _ => Ok(()),
        }
    }

    /// fault hook: the slow path: drop sessions a crash or connection drop invalidated, then
    /// ask the controller.
    #[cold]
    fn fault_slow(&self, f: &Faults) -> SimResult<()> {
        if let Some(generation) = f.take_purge() {
            let stale: Vec<u64> = self
                .sessions
                .iter()
                .filter(|s| s.generation < generation)
                .map(|s| *s.key())
                .collect();
            for sess in stale {
                self.close_session(sess);
            }
        }
        f.before_op().map_err(SimError::Rv)
    }

    /// The clone key, or `CKR_DEVICE_ERROR` (logged) when this member was never given one:
    /// the clone path (objects, users) needs it.
    pub(super) fn clone_key_required(&self) -> SimResult<&CloneKey> {
        self.clone_key.as_ref().ok_or_else(|| {
            tracing::error!(
                store = %self.store.path().display(),
                "clone path used on a member without a clone key ({}); provision the cluster",
                crate::cluster::CLONE_KEY_FILE
            );
            SimError::Rv(CKR_DEVICE_ERROR)
        })
    }

    /// Append a management event to the audit log (see `hsmpool_member::audit`). The event
    /// has happened: a log that cannot be written is an error in the log, not a failure of it.
    pub(super) fn audit(&self, kind: &str, actor: &str, subject: &str, detail: &str) {
        let event = AuditEvent {
            at_ms: now_ms(),
            kind,
            actor,
            subject,
            detail,
        };
        if let Err(e) = self
            .store
            .append_audit(&event, &|m| self.sign_checkpoint(m))
        {
            tracing::error!(store = %self.store.path().display(), kind, "audit record not written: {e}");
        }
    }

    /// Store token object `obj` and its audit record together (one transaction): `kind` on
    /// `subject` by `actor`. Nothing for a session object.
    pub(super) fn persist_audited(
        &self,
        obj: &Object,
        kind: &str,
        actor: &str,
        detail: &str,
    ) -> SimResult<()> {
        if !obj.token {
            return Ok(());
        }
        let secret = obj.material_bytes();
        let subject = format!("{:016x}", obj.id);
        let event = AuditEvent {
            at_ms: now_ms(),
            kind,
            actor,
            subject: &subject,
            detail,
        };
        self.store.put_object_audited(
            obj.id,
            obj.owner.as_deref(),
            &object::encode_attrs(&obj.attrs),
            &secret,
            &event,
            &|m| self.sign_checkpoint(m),
        )
    }

    /// An audit checkpoint's signature, by this member's audit key.
    pub(super) fn sign_checkpoint(&self, message: &[u8]) -> Vec<u8> {
        self.audit_key.sign(message).as_ref().to_vec()
    }

    /// Who is logged in on `sess`, for the audit log (`-` when no one).
    pub(super) fn actor(&self, sess: u64) -> String {
        self.sessions
            .get(&sess)
            .and_then(|s| s.login.as_ref().map(|(_, n)| n.clone()))
            .unwrap_or_else(|| "-".into())
    }

    pub(super) fn insert(&self, obj: Arc<Object>) {
        for ty in INDEXED {
            if let Some(v) = obj.attrs.get(&ty) {
                self.index.entry((ty, v.clone())).or_default().push(obj.id);
            }
        }
        self.objects.insert(obj.id, obj);
    }

    pub(super) fn unindex(&self, obj: &Object) {
        for ty in INDEXED {
            if let Some(v) = obj.attrs.get(&ty) {
                let key = (ty, v.clone());
                let empty = match self.index.get_mut(&key) {
                    Some(mut ids) => {
                        ids.retain(|i| *i != obj.id);
                        ids.is_empty()
                    }
                    None => false,
                };
                if empty {
                    self.index.remove_if(&key, |_, ids| ids.is_empty());
                }
            }
        }
    }

    pub(super) fn persist(&self, obj: &Object) -> SimResult<()> {
        if !obj.token {
            return Ok(());
        }
        let secret = obj.material_bytes();
        self.store.put_object(
            obj.id,
            obj.owner.as_deref(),
            &object::encode_attrs(&obj.attrs),
            &secret,
        )
    }

    /// Whether user `name` owns a token object.
    pub(super) fn owns_objects(&self, name: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o.token && o.owner.as_deref() == Some(name))
    }

    /// Every token object `from` owns becomes `to`'s (store first); how many.
    pub(super) fn reown(&self, from: &str, to: &str) -> SimResult<usize> {
        let owned: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.token && o.owner.as_deref() == Some(from))
            .map(|o| o.value().clone())
            .collect();
        for o in &owned {
            let new = Arc::new(Object {
                owner: Some(to.to_string()),
                attrs: o.attrs.clone(),
                key: o.key.clone(),
                ..**o
            });
            self.persist(&new)?;
            self.objects.insert(new.id, new);
        }
        Ok(owned.len())
    }

    /// `name` taken off the sharing of every token object shared with it (store first); how
    /// many. (The attribute is not indexed: the index stays as it is.)
    pub(super) fn unshare_all(&self, name: &str) -> SimResult<usize> {
        let shared: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.token && shared_names_of(o).iter().any(|n| n == name))
            .map(|o| o.value().clone())
            .collect();
        for o in &shared {
            let mut names = shared_names_of(o);
            names.retain(|n| n != name);
            let new = Arc::new(Object {
                owner: o.owner.clone(),
                attrs: attrs_shared_with(o, &names),
                key: o.key.clone(),
                ..**o
            });
            self.persist(&new)?;
            self.objects.insert(new.id, new);
        }
        Ok(shared.len())
    }

    /// The token keys shared with `name` whose own quorum would exceed their users (owner and
    /// those shared with) without it: deleting `name` would leave them unusable or
    /// unmanageable.
    pub(super) fn quorum_keys_needing(&self, name: &str) -> Vec<u64> {
        self.objects
            .iter()
            .filter(|o| o.token)
            .filter_map(|o| {
                let names = shared_names_of(&o);
                if !names.iter().any(|n| n == name) {
                    return None;
                }
                // The owner, and the others shared with.
                quorum_above(&o, names.len() as u32).then_some(o.id)
            })
            .collect()
    }

    pub(super) fn remove(&self, obj: &Object) -> SimResult<()> {
        if obj.token {
            self.store.delete_object(obj.id)?;
        }
        self.unindex(obj);
        self.objects.remove(&obj.id);
        Ok(())
    }

    /// Open a member session (an authentication context).
    pub fn open_session(&self) -> u64 {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        // fault hook: this cannot return an error: an injected one leaves the session
        // unregistered, so its first use fails.
        let generation = match &self.faults {
            None => 0,
            Some(f) => {
                if self.fault_check().is_err() {
                    return id;
                }
                f.generation()
            }
        };
        self.sessions.insert(
            id,
            SimSession {
                generation,
                ..SimSession::default()
            },
        );
        // fault hook: a crash or connection drop that raced this open invalidates it too.
        if self.faults().is_some_and(|f| f.generation() != generation) {
            self.sessions.remove(&id);
        }
        id
    }

    /// Close a member session and destroy its session objects.
    pub fn close_session(&self, sess: u64) {
        self.sessions.remove(&sess);
        let doomed: Vec<Arc<Object>> = self
            .objects
            .iter()
            .filter(|o| o.session == Some(sess))
            .map(|o| o.value().clone())
            .collect();
        for o in doomed {
            self.unindex(&o);
            self.objects.remove(&o.id);
        }
    }
}

/// The users `o`'s owner shared it with.
pub(super) fn shared_names_of(o: &Object) -> Vec<String> {
    o.attrs
        .get(&CKA_HSMPOOL_SHARED_WITH)
        .map(|v| shared_names(v))
        .unwrap_or_default()
}

/// `o`'s attributes with its sharing set to `names` (the attribute left out for none).
pub(super) fn attrs_shared_with(
    o: &Object,
    names: &[String],
) -> std::collections::BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>> {
    let mut attrs = o.attrs.clone();
    if names.is_empty() {
        attrs.remove(&CKA_HSMPOOL_SHARED_WITH);
    } else {
        attrs.insert(CKA_HSMPOOL_SHARED_WITH, shared_value(names));
    }
    attrs
}

/// The approvals `service` on `o` needs (its quorum value; 1: none).
pub(super) fn key_quorum(o: &Object, service: KeyService) -> u32 {
    attrs_quorum(&o.attrs, service)
}

/// The approvals `service` needs on an object with attributes `attrs` (1: none).
pub(super) fn attrs_quorum(
    attrs: &std::collections::BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
    service: KeyService,
) -> u32 {
    attrs
        .get(&service.attribute())
        .and_then(|v| v.as_slice().try_into().ok())
        .map_or(1, |b| {
            u32::try_from(CK_ULONG::from_ne_bytes(b)).unwrap_or(u32::MAX)
        })
        .max(1)
}

/// Whether `o`'s own quorum (for use or for management) is above `users` approvers: with
/// that many users the key could never be approved again.
pub(super) fn quorum_above(o: &Object, users: u32) -> bool {
    users < key_quorum(o, KeyService::Use).max(key_quorum(o, KeyService::Manage))
}

/// Milliseconds since the Unix epoch (the audit log's and quorum tokens' clock).
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn rv<T>(r: Result<T, CK_RV>) -> SimResult<T> {
    r.map_err(SimError::Rv)
}

pub(super) fn random_id() -> SimResult<u64> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SimError::Rv(CKR_DEVICE_ERROR))?;
    Ok((u64::from_be_bytes(b) & 0x7fff_ffff_ffff_ffff).max(1))
}

pub(super) fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b[first..].to_vec()
}

pub(super) fn bit_len(b: &[u8]) -> usize {
    let b = &b[b.iter().position(|x| *x != 0).unwrap_or(b.len())..];
    match b.first() {
        Some(f) => b.len() * 8 - f.leading_zeros() as usize,
        None => 0,
    }
}
