//! Objects: application handles for member objects (the `objects` and `by_member` maps),
//! making objects on the members and adopting them, create, copy, destroy, attribute reads and
//! writes, and object size. A handle no member object has may be an object the `compat` room
//! presents (a read-only certificate): it is answered, or its change refused, through that room.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_member::types::{
    Attr, CKA_HSMPOOL_OBJECT_ID, CKA_HSMPOOL_QUORUM_MANAGE, CKA_HSMPOOL_QUORUM_USE,
    CKA_HSMPOOL_SHARED_WITH,
};
use hsmpool_member::AttrAnswer;

use super::lifecycle::Engine;
use crate::backend::{Backend, MemberObject, MemberSession};
use crate::cluster::Route;
use crate::compat::PresentedObject;
use crate::error::{Error, Result};
use crate::state::{LoginState, ObjEntry};
use crate::types::{ObjectHandle, SessionHandle};

impl Engine {
    pub(crate) fn entry(&self, o: ObjectHandle) -> Result<ObjEntry> {
        self.objects
            .get(&o)
            .map(|e| *e.value())
            .ok_or(Error::ObjectHandleInvalid)
    }

    pub(crate) fn key_entry(&self, o: ObjectHandle) -> Result<ObjEntry> {
        self.entry(o).map_err(|_| Error::KeyHandleInvalid)
    }

    /// The application handle of a member object, made on first sight and stable after.
    pub(super) fn handle_for(
        &self,
        mo: MemberObject,
        session: Option<SessionHandle>,
        home: Option<(usize, u64)>,
    ) -> ObjectHandle {
        *self.by_member.entry(mo).or_insert_with(|| {
            let h = ObjectHandle(self.next_object.fetch_add(1, Ordering::Relaxed));
            self.objects.insert(
                h,
                ObjEntry {
                    member_obj: mo,
                    session,
                    home,
                },
            );
            if let Some((i, _)) = home {
                self.session_objects_on[i].fetch_add(1, Ordering::Relaxed);
            }
            h
        })
    }

    pub(super) fn forget_object(&self, h: ObjectHandle) {
        if let Some((_, e)) = self.objects.remove(&h) {
            self.by_member.remove(&e.member_obj);
            if let Some((i, _)) = e.home {
                self.session_objects_on[i].fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.invalidate();
    }

    /// An object the engine presents (`[compat]`: a self-signed certificate) for a handle
    /// that is no member object; else `ObjectHandleInvalid`.
    fn presented(&self, o: ObjectHandle) -> Result<Arc<dyn PresentedObject>> {
        self.compat
            .object(self, o)?
            .ok_or(Error::ObjectHandleInvalid)
    }

    pub(super) fn check_write(&self, s: SessionHandle, template: &[Attr]) -> Result<()> {
        check_app_template(template)?;
        let token = template.iter().any(|a| a.ty == CKA_TOKEN && a.value == [1]);
        if token && !self.rw_of(s)? {
            return Err(Error::SessionReadOnly);
        }
        Ok(())
    }

    /// The `CKA_PRIVATE` default of a session object created by an application that has not
    /// logged in: false. PKCS #11 3.0 (§4.4, Table 24) leaves the default to the token; ours is
    /// true for private and secret keys, which such an application could not create at all
    /// (`CKR_USER_NOT_LOGGED_IN`). A session object is seen only by the application that made
    /// it and ends with its session, so nothing is exposed by letting it hand the token a key
    /// to use: OpenSSL's pkcs11-provider imports keys read from files that way. A template
    /// that says `CKA_PRIVATE`, or a token object, keeps the usual rules.
    pub(super) fn public_session_object(&self, mut template: Vec<Attr>, token: bool) -> Vec<Attr> {
        let says = template.iter().any(|a| a.ty == CKA_PRIVATE);
        if !token && !says && self.login_state() == LoginState::Public {
            template.push(Attr::bool(CKA_PRIVATE, false));
        }
        template
    }

    /// A token key's template made copyable where keys travel by wrapping
    /// ([`crate::cluster::CopyPath::Wrap`]): extractable (the token's default when the template
    /// does not say) and then only under a trusted key (`CKA_WRAP_WITH_TRUSTED`, unless the
    /// template says otherwise), so the cluster wrapping key is the only key that can take it
    /// out. A key asked to be not extractable cannot reach the other members: it is refused
    /// with `CKR_TEMPLATE_INCONSISTENT` and the reason in the log, unless
    /// `single_member_keys` keeps it on the member that makes it.
    pub(super) fn copyable(
        &self,
        mut template: Vec<Attr>,
        token: bool,
        class: Option<CK_OBJECT_CLASS>,
    ) -> Result<Vec<Attr>> {
        let says = |t: &[Attr], ty| t.iter().rev().find(|a| a.ty == ty).cloned();
        let class = says(&template, CKA_CLASS)
            .and_then(|a| a.as_ulong())
            .or(class);
        let key = matches!(class, Some(CKO_PRIVATE_KEY | CKO_SECRET_KEY));
        if !token
            || !key
            || self.cluster.copy_path != crate::cluster::CopyPath::Wrap
            || self.cluster.members.len() < 2
        {
            return Ok(template);
        }
        match says(&template, CKA_EXTRACTABLE).and_then(|a| a.as_bool()) {
            // Kept on the member that makes it (see `Cluster::spread`).
            Some(false) if self.cluster.settings.single_member_keys => return Ok(template),
            Some(false) => {
                tracing::warn!(
                    "refused a token key with CKA_EXTRACTABLE false: it could not be copied to \
                     the other members (ask for an extractable key, which then leaves its HSM \
                     only under the trusted cluster wrapping key)"
                );
                return Err(Error::TemplateInconsistent);
            }
            Some(true) => {}
            None => template.push(Attr::bool(CKA_EXTRACTABLE, true)),
        }
        if says(&template, CKA_WRAP_WITH_TRUSTED).is_none() {
            template.push(Attr::bool(CKA_WRAP_WITH_TRUSTED, true));
        }
        Ok(template)
    }

    /// Whether a template asks for a token object (`CKA_TOKEN`, else `default`).
    pub(super) fn wants_token(template: &[Attr], default: bool) -> bool {
        template
            .iter()
            .rev()
            .find(|a| a.ty == CKA_TOKEN)
            .and_then(|a| a.as_bool())
            .unwrap_or(default)
    }

    /// A template with a fresh cluster-wide object id: where the object will be known on every
    /// member, and the idempotency token that makes a retried create return the first one.
    pub(super) fn with_new_id(&self, template: &[Attr]) -> Result<(Vec<Attr>, MemberObject)> {
        let id = self.cluster.new_object_id()?;
        let mut t = template.to_vec();
        t.push(Attr::ulong(CKA_HSMPOOL_OBJECT_ID, id as CK_ULONG));
        Ok((t, MemberObject(id)))
    }

    /// Make objects on a member and adopt them. `route` is where the inputs are (`Any` unless
    /// a session key is involved); `token` says whether the new objects are token objects:
    /// those are then copied to every up member and must reach `min_replicas` of them, else
    /// they are removed everywhere and the caller gets `CKR_DEVICE_ERROR`; session objects stay
    /// on the member that made them.
    pub(super) fn make<E: Into<Error>>(
        &self,
        s: SessionHandle,
        route: Route,
        token: bool,
        cost: u64,
        ids: &[MemberObject],
        f: impl FnMut(&dyn Backend, MemberSession) -> std::result::Result<Vec<MemberObject>, E>,
    ) -> Result<Vec<ObjectHandle>> {
        let route = match (route, token) {
            // A new session object lives in pool session 0 of the member that makes it.
            (Route::Any, false) => Route::AnyHome,
            // Made from a key that lives on one member alone: there, in pool session 0.
            (Route::Pinned(i), false) => Route::On(i, self.cluster.members[i].epoch()),
            (r, _) => r,
        };
        let mut gate = self.cluster.gate.read();
        let (member, epoch, made) = self.cluster.call_full(route, cost, f)?;
        self.invalidate();
        if token {
            self.cluster.spread(member, &made, &mut gate)?;
        }
        if made.iter().zip(ids).any(|(m, i)| m != i) {
            tracing::debug!("a member returned ids other than the ones asked for");
        }
        let home = (!token).then_some((member, epoch));
        Ok(made.into_iter().map(|mo| self.adopt(s, mo, home)).collect())
    }

    pub(super) fn adopt(
        &self,
        s: SessionHandle,
        mo: MemberObject,
        home: Option<(usize, u64)>,
    ) -> ObjectHandle {
        let owner = home.map(|_| s);
        let h = self.handle_for(mo, owner, home);
        if home.is_some() {
            if let Some(sess) = self.sessions.get(&s).map(|e| e.value().clone()) {
                sess.lock().objects.push(h);
            }
        }
        h
    }

    pub(super) fn one(v: Vec<ObjectHandle>) -> Result<ObjectHandle> {
        v.into_iter()
            .next()
            .ok_or(Error::General("create made no object".into()))
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, s: SessionHandle, template: Vec<Attr>) -> Result<ObjectHandle> {
        self.session(s)?;
        self.check_write(s, &template)?;
        let token = Self::wants_token(&template, false);
        let template = self.public_session_object(template, token);
        let template = self.copyable(template, token, None)?;
        let (t, id) = self.with_new_id(&template)?;
        Self::one(self.make(s, Route::Any, token, 5, &[id], |b, msess| {
            b.create_object(msess, &t).map(|o| vec![o])
        })?)
    }

    /// `C_CopyObject`.
    pub fn copy_object(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<ObjectHandle> {
        self.session(s)?;
        self.check_write(s, &template)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => {
                // A presented certificate has CKA_COPYABLE false (PKCS #11 3.0 §4.4, Table 25; §5.7.2).
                self.presented(o).map_err(|_| err)?;
                return Err(Error::ActionProhibited);
            }
        };
        let token = Self::wants_token(&template, e.home.is_none());
        let (t, id) = self.with_new_id(&template)?;
        Self::one(
            self.make(s, e.route(&self.cluster), token, 5, &[id], |b, msess| {
                b.copy_object(msess, e.member_obj, &t).map(|o| vec![o])
            })?,
        )
    }

    /// `C_DestroyObject`. A token object is destroyed on one member (which checks that it may
    /// be) and then removed from every other.
    pub fn destroy_object(&self, s: SessionHandle, o: ObjectHandle) -> Result<()> {
        let rw = self.rw_of(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return self.refuse_presented_change(rw, o, err),
        };
        if !rw && e.home.is_none() {
            return Err(Error::SessionReadOnly);
        }
        // Ordered against the last pass of a resynchronisation, like a create.
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self
            .cluster
            .call_full(e.route(&self.cluster), 1, |b, msess| {
                b.destroy_object(msess, e.member_obj)
            })?;
        if e.home.is_none() {
            self.cluster.drop_replicas(Some(first), &[e.member_obj]);
            self.cluster.unpin(e.member_obj);
        }
        self.forget_object(o);
        if let Some(owner) = e.session {
            if let Some(sess) = self.sessions.get(&owner).map(|x| x.value().clone()) {
                sess.lock().objects.retain(|h| *h != o);
            }
        }
        Ok(())
    }

    /// A destroy or attribute change of a certificate the engine presents: a token object, so
    /// not in a read-only session (§5.7.3, §5.7.6), and `CKA_DESTROYABLE` and `CKA_MODIFIABLE`
    /// are false, so `CKR_ACTION_PROHIBITED` (PKCS #11 3.0 §4.4, Table 25). `err` is the answer for a
    /// handle that is no such certificate either.
    fn refuse_presented_change(&self, rw: bool, o: ObjectHandle, err: Error) -> Result<()> {
        self.presented(o).map_err(|_| err)?;
        if !rw {
            return Err(Error::SessionReadOnly);
        }
        Err(Error::ActionProhibited)
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, s: SessionHandle, o: ObjectHandle) -> Result<u64> {
        self.session(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return Ok(self.presented(o).map_err(|_| err)?.size()),
        };
        self.cluster.call(e.route(&self.cluster), 1, |b, msess| {
            b.object_size(msess, e.member_obj)
        })
    }

    /// `C_GetAttributeValue`: one answer per requested type, in order.
    pub fn get_attribute_value(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>> {
        self.session(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return Ok(self.presented(o).map_err(|_| err)?.answer(types)),
        };
        let (answered_by, _, mut answers) =
            self.cluster
                .call_full(e.route(&self.cluster), 1, |b, msess| {
                    b.get_attributes(msess, e.member_obj, types)
                })?;
        if e.home.is_none()
            && self.cluster.copy_path == crate::cluster::CopyPath::Wrap
            && self.cluster.pinned_on(e.member_obj).is_none()
        {
            self.as_made(answered_by, e.member_obj, types, &mut answers);
        }
        Ok(answers)
    }

    /// Where token keys travel by wrapping, what a token sets itself differs between the
    /// member that made a key and the copies unwrapped on the others (a copy is not
    /// `CKA_LOCAL`, was not always sensitive, and has no `CKA_KEY_GEN_MECHANISM`). So that the
    /// answer does not depend on which member gave it, these are answered as made: a flag true
    /// on any up member is true, and the mechanism is the one a member knows.
    fn as_made(
        &self,
        answered_by: usize,
        o: hsmpool_member::MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
        answers: &mut [AttrAnswer],
    ) {
        const AS_MADE: [CK_ATTRIBUTE_TYPE; 3] =
            [CKA_LOCAL, CKA_ALWAYS_SENSITIVE, CKA_KEY_GEN_MECHANISM];
        let asked: Vec<CK_ATTRIBUTE_TYPE> = types
            .iter()
            .copied()
            .filter(|t| AS_MADE.contains(t))
            .collect();
        if asked.is_empty() {
            return;
        }
        let unknown = (CK_UNAVAILABLE_INFORMATION as CK_ULONG)
            .to_ne_bytes()
            .to_vec();
        for m in self.cluster.up_members_but(answered_by) {
            let Ok(others) = self
                .cluster
                .call(crate::cluster::Route::Member(m), 1, |b, msess| {
                    b.get_attributes(msess, o, &asked)
                })
            else {
                continue;
            };
            for (ty, other) in asked.iter().zip(others) {
                let Some(i) = types.iter().position(|t| t == ty) else {
                    continue;
                };
                let better = match (&answers[i], &other) {
                    (AttrAnswer::Value(mine), AttrAnswer::Value(theirs))
                        if *ty == CKA_KEY_GEN_MECHANISM =>
                    {
                        *mine == unknown && *theirs != unknown
                    }
                    (AttrAnswer::Value(mine), AttrAnswer::Value(theirs)) => {
                        mine.first() == Some(&0) && theirs.first() == Some(&1)
                    }
                    (AttrAnswer::Invalid, AttrAnswer::Value(_)) => true,
                    _ => false,
                };
                if better {
                    answers[i] = other;
                }
            }
        }
    }

    /// `C_SetAttributeValue`.
    pub fn set_attribute_value(
        &self,
        s: SessionHandle,
        o: ObjectHandle,
        template: Vec<Attr>,
    ) -> Result<()> {
        let rw = self.rw_of(s)?;
        let e = match self.entry(o) {
            Ok(e) => e,
            Err(err) => return self.refuse_presented_change(rw, o, err),
        };
        if !rw && e.home.is_none() {
            return Err(Error::SessionReadOnly);
        }
        check_app_template(&template)?;
        let _gate = self.cluster.gate.read();
        let (first, _, ()) = self
            .cluster
            .call_full(e.route(&self.cluster), 1, |b, msess| {
                b.set_attributes(msess, e.member_obj, &template)
            })?;
        self.invalidate();
        if e.home.is_none() && self.cluster.pinned_on(e.member_obj).is_none() {
            // The other members make the same change: where objects travel by wrapping, by
            // the same call; else the changed object replaces the old one. A member that
            // misses it now is brought level when it returns.
            if self.cluster.copy_path == crate::cluster::CopyPath::Wrap {
                self.cluster.follow(first, |b, msess| {
                    b.set_attributes(msess, e.member_obj, &template)
                });
            } else if let Err(err) = self.cluster.replicate(&mut vec![first], &[e.member_obj]) {
                tracing::warn!("a changed object could not be copied: {err}");
            }
        }
        Ok(())
    }
}

/// Attributes only the token sets: PKCS #11 3.0 §4.2 footnotes 2, 4 and 6 (MUST NOT be given
/// to `C_CreateObject`, `C_GenerateKey(Pair)` or `C_UnwrapKey`) on `CKA_UNIQUE_ID` (§4.4),
/// `CKA_LOCAL` and `CKA_KEY_GEN_MECHANISM` (§4.7), `CKA_ALWAYS_SENSITIVE` and
/// `CKA_NEVER_EXTRACTABLE` (§4.9, §4.10); none is modifiable (no footnote 8), so `C_CopyObject`
/// and `C_SetAttributeValue` may not name them either, and a derived key is made by the token
/// as a generated one is.
const TOKEN_SET: [CK_ATTRIBUTE_TYPE; 5] = [
    CKA_UNIQUE_ID,
    CKA_LOCAL,
    CKA_KEY_GEN_MECHANISM,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
];

/// The one check of every template an application gives to make or change an object
/// (`C_CreateObject`, `C_CopyObject`, `C_SetAttributeValue`, `C_GenerateKey`, both templates of
/// `C_GenerateKeyPair`, `C_UnwrapKey`, `C_DeriveKey`): `CKA_HSMPOOL_OBJECT_ID` is the engine's
/// own attribute (`CKR_ATTRIBUTE_TYPE_INVALID`), and a token-set attribute is
/// `CKR_ATTRIBUTE_READ_ONLY` whatever its value and whatever the object's class: even a value
/// equal to the token's is the application claiming to set it.
///
/// It is made here, on the application's templates, and not in the member: replication copies
/// every attribute of a token object from one member to another (`export_clone` /
/// `import_clone`), `CKA_LOCAL` and the rest included, and must keep doing so.
fn check_app_template(template: &[Attr]) -> Result<()> {
    for a in template {
        if a.ty == CKA_HSMPOOL_OBJECT_ID {
            return Err(Error::AttributeTypeInvalid(a.ty));
        }
        // Set by the owner's share and key quorum calls only (`Engine::share_object`,
        // `Engine::set_key_quorum`).
        if matches!(
            a.ty,
            CKA_HSMPOOL_SHARED_WITH | CKA_HSMPOOL_QUORUM_USE | CKA_HSMPOOL_QUORUM_MANAGE
        ) {
            return Err(Error::AttributeReadOnly(a.ty));
        }
        if TOKEN_SET.contains(&a.ty) {
            return Err(Error::AttributeReadOnly(a.ty));
        }
    }
    Ok(())
}
