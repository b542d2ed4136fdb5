//! Keys: generate a key or a key pair, wrap, unwrap and derive, and the key-check cache of
//! `*Init` (`key_cache`; a session's own memo of its last key is `Session::last_key`).

use cryptoki_sys::*;
use hsmpool_member::types::{Attr, Mechanism};
use hsmpool_member::KeyMeta;

use super::lifecycle::{Engine, CACHE_MAX};
use crate::backend::Backend;
use crate::cluster::Route;
use crate::error::{Error, Result};
use crate::state::ObjEntry;
use crate::types::{ObjectHandle, SessionHandle};

impl Engine {
    /// The key check of an `*Init`, from the cache when this generation has seen it.
    pub(crate) fn checked_key(
        &self,
        entry: &ObjEntry,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
    ) -> Result<KeyMeta> {
        let key = (entry.member_obj, usage, mech.mech);
        let gen = self.cache_generation();
        if let Some(hit) = self.key_cache.get(&key) {
            if hit.0 == gen {
                self.cluster.key_cache_hits.add(1);
                return Ok(hit.1);
            }
        }
        let meta = self
            .cluster
            .call(entry.route(&self.cluster), 1, |b, msess| {
                b.check_key(msess, usage, mech, entry.member_obj)
            })
            .map_err(|e| match e {
                Error::Hsm {
                    rv: CKR_OBJECT_HANDLE_INVALID,
                    ..
                } => Error::KeyHandleInvalid,
                e => e,
            })?;
        if self.key_cache.len() > CACHE_MAX {
            self.key_cache.clear();
        }
        self.key_cache.insert(key, (gen, meta));
        Ok(meta)
    }

    /// `C_GenerateKey`.
    pub fn generate_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_GENERATE)?;
        self.check_write(s, &template)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let template = self.copyable(template, token, Some(CKO_SECRET_KEY))?;
        let (t, id) = self.with_new_id(&template)?;
        Self::one(self.make(s, Route::Any, token, 5, &[id], |b, msess| {
            b.generate_key(msess, &mech, &t).map(|o| vec![o])
        })?)
    }

    /// `C_GenerateKeyPair`: (public, private).
    pub fn generate_key_pair(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        public: Vec<Attr>,
        private: Vec<Attr>,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        self.session(s)?;
        let row = self.mech_row(&mech, CKF_GENERATE_KEY_PAIR)?;
        self.check_write(s, &public)?;
        self.check_write(s, &private)?;
        let rsa = matches!(
            mech.mech,
            CKM_RSA_PKCS_KEY_PAIR_GEN | CKM_RSA_X9_31_KEY_PAIR_GEN
        );
        if rsa {
            // Generation sizes are the table's (verification of larger imported keys is wider).
            if let Some(bits) = public
                .iter()
                .find(|a| a.ty == CKA_MODULUS_BITS)
                .and_then(|a| a.as_ulong())
            {
                if bits < row.min || bits > row.max {
                    return Err(Error::KeySizeRange);
                }
            }
        }
        let pt = Self::wants_token(&public, false);
        let kt = Self::wants_token(&private, false);
        let private = self.public_session_object(private, kt);
        let private = self.copyable(private, kt, Some(CKO_PRIVATE_KEY))?;
        let (tp, ip) = self.with_new_id(&public)?;
        let (tk, ik) = self.with_new_id(&private)?;
        let cost = if rsa { 2000 } else { 20 };
        let gen = |b: &dyn Backend, msess| {
            b.generate_key_pair(msess, &mech, &tp, &tk)
                .map(|(p, k)| vec![p, k])
        };
        if pt == kt {
            let v = self.make(s, Route::Any, pt, cost, &[ip, ik], gen)?;
            return match v[..] {
                [p, k] => Ok((p, k)),
                _ => Err(Error::General("key pair generation made no pair".into())),
            };
        }
        // One half a token object, the other a session object: make the pair as session
        // objects' member does, then spread the token half.
        let mut gate = self.cluster.gate.read();
        let (member, epoch, made) = self.cluster.call_full(Route::AnyHome, cost, gen)?;
        self.invalidate();
        let (p, k) = match made[..] {
            [p, k] => (p, k),
            _ => return Err(Error::General("key pair generation made no pair".into())),
        };
        let token_half = if pt { p } else { k };
        if let Err(e) = self.cluster.spread(member, &[token_half], &mut gate) {
            let _ = self.cluster.call(Route::On(member, epoch), 1, |b, msess| {
                b.destroy_object(msess, if pt { k } else { p })
            });
            return Err(e);
        }
        let home = Some((member, epoch));
        Ok((
            self.adopt(s, p, if pt { None } else { home }),
            self.adopt(s, k, if kt { None } else { home }),
        ))
    }

    /// `C_WrapKey`: the wrapped bytes (the C layer applies the output-length rule).
    pub fn wrap_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        wrapping: ObjectHandle,
        key: ObjectHandle,
    ) -> Result<Vec<u8>> {
        self.session(s)?;
        self.mech_row(&mech, CKF_WRAP)?;
        let w = self
            .entry(wrapping)
            .map_err(|_| Error::WrappingKeyHandleInvalid)?;
        let k = self.key_entry(key)?;
        let route = self.route_of(&[w, k])?;
        self.cluster
            .call(route, 5, |b, msess| {
                b.wrap_key(msess, &mech, w.member_obj, k.member_obj)
            })
            .map_err(|e| match e {
                Error::Hsm {
                    rv: CKR_OBJECT_HANDLE_INVALID,
                    ..
                } => Error::KeyHandleInvalid,
                e => e,
            })
    }

    /// `C_UnwrapKey`.
    pub fn unwrap_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        unwrapping: ObjectHandle,
        wrapped: &[u8],
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_UNWRAP)?;
        self.check_write(s, &template)?;
        let u = self
            .entry(unwrapping)
            .map_err(|_| Error::UnwrappingKeyHandleInvalid)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let template = self.copyable(template, token, None)?;
        let (t, id) = self.with_new_id(&template)?;
        Self::one(
            self.make(s, u.route(&self.cluster), token, 10, &[id], |b, msess| {
                b.unwrap_key(msess, &mech, u.member_obj, wrapped, &t)
                    .map(|o| vec![o])
            })?,
        )
    }

    /// The route of a call using several objects: to their member if any lives on one member
    /// (a session object, or a token key kept on one member alone), all such on the same one;
    /// else any member.
    fn route_of(&self, entries: &[ObjEntry]) -> Result<Route> {
        let member = |r: Route| match r {
            Route::On(i, _) | Route::Pinned(i) => Some(i),
            _ => None,
        };
        let mut route = Route::Any;
        for e in entries {
            let r = e.route(&self.cluster);
            match (member(route), member(r)) {
                (_, None) => {}
                (None, Some(_)) => route = r,
                (Some(a), Some(b)) if a == b => {
                    // A session object's route also checks its member's epoch.
                    if matches!(r, Route::On(..)) {
                        route = r;
                    }
                }
                _ => {
                    tracing::warn!("objects that live on different members used together");
                    return Err(Error::KeyHandleInvalid);
                }
            }
        }
        Ok(route)
    }

    /// `C_DeriveKey`.
    pub fn derive_key(
        &self,
        s: SessionHandle,
        mech: Mechanism,
        base: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.mech_row(&mech, CKF_DERIVE)?;
        self.check_write(s, &template)?;
        let base = self.key_entry(base)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let template = self.copyable(template, token, Some(CKO_SECRET_KEY))?;
        let (t, id) = self.with_new_id(&template)?;
        Self::one(self.make(
            s,
            base.route(&self.cluster),
            token,
            10,
            &[id],
            |b, msess| {
                b.derive_key(msess, &mech, base.member_obj, &t)
                    .map(|o| vec![o])
            },
        )?)
    }
}
