//! Objects: create, copy, destroy, find, read and change attributes, size; who may see an
//! object, and whether a key may serve an operation (`usable`, `check_key`), with what the
//! engine keeps about a key ([`KeyMeta`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::crypto::{self, Curve, KeyMaterial, LoadedKey};
use crate::error::{SimError, SimResult};
use crate::object::{self, find, find_ulong, Object, Origin};
use crate::timing::{self, OpClass};
use crate::types::{Attr, Mechanism, CKA_HSMPOOL_OBJECT_ID, CKA_HSMPOOL_SHARED_WITH};

use super::common::{
    attrs_shared_with, bit_len, key_quorum, now_ms, quorum_above, random_id, rv, shared_names_of,
    strip_zeros,
};
use super::{AttrAnswer, Hsm, KeyMeta, Role, INDEXED};
use hsmpool_member::users::{
    KeyService, OwnedObject, CKR_HSMPOOL_QUORUM_REQUIRED, CKR_HSMPOOL_QUORUM_TOO_HIGH,
    CKR_HSMPOOL_USER_NOT_FOUND,
};

impl Hsm {
    fn visible(login: &Option<(Role, String)>, sess: u64, o: &Object) -> bool {
        if let Some(s) = o.session {
            if s != sess {
                return false;
            }
        }
        if !o.private {
            return true;
        }
        match login {
            Some((Role::User, name)) => {
                o.owner.as_deref() == Some(name.as_str()) || Self::shared_with(o, name)
            }
            _ => false,
        }
    }

    /// Whether `o`'s owner shared it with `name`.
    pub(super) fn shared_with(o: &Object, name: &str) -> bool {
        o.attrs
            .get(&CKA_HSMPOOL_SHARED_WITH)
            .is_some_and(|v| v.split(|b| *b == b'\n').any(|n| n == name.as_bytes()))
    }

    /// A crypto user may change, destroy, copy or wrap only what it owns (or what no user
    /// owns): a key shared with it, or another user's public object, it may only use.
    pub(super) fn may_manage(login: &Option<(Role, String)>, o: &Object) -> SimResult<()> {
        match (login, o.owner.as_deref()) {
            (Some((Role::User, name)), Some(owner)) if name != owner => {
                Err(SimError::Rv(CKR_ACTION_PROHIBITED))
            }
            _ => Ok(()),
        }
    }

    /// A key whose quorum for `service` is above 1 is used or managed only by a crypto user
    /// holding an approval in force for it (`approve_key`): `CKR_HSMPOOL_QUORUM_REQUIRED`
    /// otherwise. Free for every other key (one attribute lookup).
    pub(super) fn require_approval(
        &self,
        sess: u64,
        o: &Object,
        service: KeyService,
    ) -> SimResult<()> {
        if key_quorum(o, service) <= 1 {
            return Ok(());
        }
        let approved = match self.login_of(sess)? {
            Some((Role::User, me)) => {
                self.store
                    .key_approved(o.id, &me, service.code(), now_ms())?
            }
            _ => false,
        };
        if approved {
            Ok(())
        } else {
            Err(SimError::Rv(CKR_HSMPOOL_QUORUM_REQUIRED))
        }
    }

    /// [`Hsm::may_manage`], then the key's management quorum.
    pub(super) fn check_manage(
        &self,
        sess: u64,
        login: &Option<(Role, String)>,
        o: &Object,
    ) -> SimResult<()> {
        Self::may_manage(login, o)?;
        self.require_approval(sess, o, KeyService::Manage)
    }

    /// The object, if the session may see it. The hot path of every operation: it reads the
    /// session's login in place (no copy of the user name) and clones only the object's `Arc`.
    pub(super) fn get_visible(&self, sess: u64, id: u64) -> SimResult<Arc<Object>> {
        let obj = self
            .objects
            .get(&id)
            .map(|o| o.value().clone())
            .ok_or(SimError::Rv(CKR_OBJECT_HANDLE_INVALID))?;
        let visible = match self.sessions.get(&sess) {
            Some(state) => Self::visible(&state.login, sess, &obj),
            None => return Err(SimError::Rv(CKR_SESSION_HANDLE_INVALID)),
        };
        if !visible {
            return Err(SimError::Rv(CKR_OBJECT_HANDLE_INVALID));
        }
        Ok(obj)
    }

    pub(super) fn owner_for(
        login: &Option<(Role, String)>,
        private: bool,
    ) -> SimResult<Option<String>> {
        match login {
            Some((Role::User, name)) => Ok(Some(name.clone())),
            _ if private => Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
            _ => Ok(None),
        }
    }

    /// The object a create already made under the engine's idempotency id in `template`
    /// ([`CKA_HSMPOOL_OBJECT_ID`]), if any: a retried create returns it instead of making a
    /// second one.
    pub(super) fn already_made(&self, template: &[Attr]) -> SimResult<Option<u64>> {
        Ok(rv(find_ulong(template, CKA_HSMPOOL_OBJECT_ID))?
            .filter(|id| self.objects.contains_key(id)))
    }

    pub(super) fn finish_new(
        &self,
        sess: u64,
        login: &Option<(Role, String)>,
        class: CK_OBJECT_CLASS,
        key_type: Option<CK_KEY_TYPE>,
        mut attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
        key: Option<Arc<LoadedKey>>,
    ) -> SimResult<Arc<Object>> {
        rv(object::check_usage_conflicts(class, &attrs))?;
        let token = attrs.get(&CKA_TOKEN).is_some_and(|v| v == &[1]);
        let private = attrs.get(&CKA_PRIVATE).is_some_and(|v| v == &[1]);
        let owner = Self::owner_for(login, private)?;
        let requested = attrs
            .remove(&CKA_HSMPOOL_OBJECT_ID)
            .and_then(|v| v.try_into().ok())
            .map(CK_ULONG::from_ne_bytes);
        let id = match requested {
            Some(id) if id != 0 => {
                // A create retried concurrently with its first attempt: one object.
                if let Some(o) = self.objects.get(&id) {
                    return Ok(o.value().clone());
                }
                id
            }
            Some(_) => return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
            None => random_id()?,
        };
        attrs.insert(CKA_UNIQUE_ID, format!("{id:016x}").into_bytes());
        let obj = Arc::new(Object {
            id,
            owner,
            session: if token { None } else { Some(sess) },
            class,
            key_type,
            token,
            private,
            attrs,
            key,
        });
        let label = obj
            .attrs
            .get(&CKA_LABEL)
            .map(|l| String::from_utf8_lossy(l).into_owned());
        let detail = format!(
            "class {:#x} label {:?}",
            obj.class,
            label.unwrap_or_default()
        );
        let actor = login.as_ref().map_or("-", |(_, n)| n.as_str());
        // The row and its audit record in one transaction (one commit per create).
        self.persist_audited(&obj, "key_create", actor, &detail)?;
        self.insert(obj.clone());
        Ok(obj)
    }

    pub(super) fn is_so(login: &Option<(Role, String)>) -> bool {
        matches!(login, Some((Role::Officer, _)))
    }

    /// `C_CreateObject`.
    pub fn create_object(&self, sess: u64, template: &[Attr]) -> SimResult<u64> {
        self.fault_check()?; // fault hook
                             // timing hook
        let _timing = self.timed(|| {
            (
                OpClass::Management,
                timing::token_in(template) == Some(true),
            )
        });
        let login = self.login_of(sess)?;
        if let Some(id) = self.already_made(template)? {
            return Ok(id);
        }
        let class =
            rv(find_ulong(template, CKA_CLASS))?.ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))?;
        let key_type = rv(find_ulong(template, CKA_KEY_TYPE))?;
        if matches!(class, CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY) && key_type.is_none()
        {
            return Err(SimError::Rv(CKR_TEMPLATE_INCOMPLETE));
        }
        if class == CKO_CERTIFICATE {
            match rv(find_ulong(template, CKA_CERTIFICATE_TYPE))? {
                Some(CKC_X_509) => {}
                Some(_) => return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
                None => return Err(SimError::Rv(CKR_TEMPLATE_INCOMPLETE)),
            }
        }
        let need = |ty| {
            find(template, ty)
                .map(|a| a.value.as_slice())
                .ok_or(SimError::Rv(CKR_TEMPLATE_INCOMPLETE))
        };
        let mut token_set: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> = vec![
            (CKA_LOCAL, object::bool_bytes(false)),
            (
                CKA_KEY_GEN_MECHANISM,
                object::ulong_bytes(CK_UNAVAILABLE_INFORMATION),
            ),
        ];
        let material = match (class, key_type) {
            (CKO_SECRET_KEY, Some(kt @ (CKK_AES | CKK_GENERIC_SECRET))) => {
                let v = need(CKA_VALUE)?;
                if kt == CKK_AES && ![16, 24, 32].contains(&v.len()) {
                    return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                if v.is_empty() {
                    return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                if let Some(l) = rv(find_ulong(template, CKA_VALUE_LEN))? {
                    if usize::try_from(l).ok() != Some(v.len()) {
                        return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
                    }
                }
                token_set.push((CKA_VALUE_LEN, object::ulong_bytes(v.len() as CK_ULONG)));
                Some(KeyMaterial::Secret {
                    key_type: kt,
                    value: Zeroizing::new(v.to_vec()),
                })
            }
            (CKO_PRIVATE_KEY, Some(CKK_RSA)) => {
                let opt = |ty| find(template, ty).map(|a| a.value.as_slice());
                let pkcs8 = crypto::rsa_private_from_components(
                    need(CKA_MODULUS)?,
                    need(CKA_PUBLIC_EXPONENT)?,
                    need(CKA_PRIVATE_EXPONENT)?,
                    opt(CKA_PRIME_1),
                    opt(CKA_PRIME_2),
                    opt(CKA_EXPONENT_1),
                    opt(CKA_EXPONENT_2),
                    opt(CKA_COEFFICIENT),
                )
                // C_CreateObject names a bad key value, not a size range (§5.7.1).
                .map_err(|e| {
                    if e == CKR_KEY_SIZE_RANGE {
                        CKR_ATTRIBUTE_VALUE_INVALID
                    } else {
                        e
                    }
                });
                let pkcs8 = rv(pkcs8)?;
                Some(KeyMaterial::RsaPrivate { pkcs8 })
            }
            (CKO_PUBLIC_KEY, Some(CKK_RSA)) => {
                let modulus = strip_zeros(need(CKA_MODULUS)?);
                let e = strip_zeros(need(CKA_PUBLIC_EXPONENT)?);
                if modulus.is_empty() || e.is_empty() {
                    return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                let bits = bit_len(&modulus);
                if !(2048..=16384).contains(&bits) {
                    // The same bounds as private keys: below 2048 bits RSA is not offered.
                    return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                if let Some(b) = rv(find_ulong(template, CKA_MODULUS_BITS))? {
                    if usize::try_from(b).ok() != Some(bits) {
                        return Err(SimError::Rv(CKR_TEMPLATE_INCONSISTENT));
                    }
                }
                token_set.push((CKA_MODULUS_BITS, object::ulong_bytes(bits as CK_ULONG)));
                Some(KeyMaterial::RsaPublic {
                    modulus,
                    public_exponent: e,
                })
            }
            (CKO_PRIVATE_KEY, Some(CKK_EC)) => {
                let curve = rv(Curve::from_ec_params(need(CKA_EC_PARAMS)?))?;
                let (pkcs8, _point) = rv(crypto::ec_private_from_scalar(curve, need(CKA_VALUE)?))?;
                Some(KeyMaterial::EcPrivate { curve, pkcs8 })
            }
            (CKO_PUBLIC_KEY, Some(CKK_EC)) => {
                let curve = rv(Curve::from_ec_params(need(CKA_EC_PARAMS)?))?;
                let point = rv(crypto::ec_point_from_attr(curve, need(CKA_EC_POINT)?))?;
                // Store the DER-wrapped form; a raw point given by the caller is accepted.
                let wrapped = crypto::ec_point_to_attr(&point);
                if find(template, CKA_EC_POINT).is_some_and(|a| a.value != wrapped) {
                    token_set.push((CKA_EC_POINT, wrapped));
                }
                Some(KeyMaterial::EcPublic { curve, point })
            }
            (CKO_PRIVATE_KEY, Some(CKK_EC_EDWARDS)) => {
                let oid = rv(crypto::ed25519_params(need(CKA_EC_PARAMS)?))?;
                let seed = need(CKA_VALUE)?;
                rv(crypto::ed25519_public_from_seed(seed))?;
                if need(CKA_EC_PARAMS)? != oid {
                    token_set.push((CKA_EC_PARAMS, oid.to_vec()));
                }
                Some(KeyMaterial::EdPrivate {
                    seed: Zeroizing::new(seed.to_vec()),
                })
            }
            (CKO_PUBLIC_KEY, Some(CKK_EC_EDWARDS)) => {
                let oid = rv(crypto::ed25519_params(need(CKA_EC_PARAMS)?))?;
                let point = rv(crypto::ed25519_point_from_attr(need(CKA_EC_POINT)?))?;
                let wrapped = crypto::ec_point_to_attr(&point);
                if find(template, CKA_EC_POINT).is_some_and(|a| a.value != wrapped) {
                    token_set.push((CKA_EC_POINT, wrapped));
                }
                if need(CKA_EC_PARAMS)? != oid {
                    token_set.push((CKA_EC_PARAMS, oid.to_vec()));
                }
                Some(KeyMaterial::EdPublic { point })
            }
            (CKO_DATA | CKO_CERTIFICATE, _) => None,
            (CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY, _) => {
                return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID))
            }
            _ => return Err(SimError::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
        };
        if matches!(class, CKO_DATA | CKO_CERTIFICATE) {
            token_set.clear();
        }
        let mut template_eff: Vec<Attr> = template.to_vec();
        // The caller's raw EC point is replaced by the wrapped one the token stores.
        for ty in [CKA_EC_POINT, CKA_EC_PARAMS] {
            if token_set.iter().any(|(t, _)| *t == ty) {
                template_eff.retain(|a| a.ty != ty);
            }
        }
        let mut attrs = rv(object::apply_template(
            class,
            key_type,
            &template_eff,
            Origin::Create,
            Self::is_so(&login),
            token_set,
        ))?;
        if matches!(class, CKO_PRIVATE_KEY | CKO_SECRET_KEY) {
            attrs.insert(CKA_ALWAYS_SENSITIVE, object::bool_bytes(false));
            attrs.insert(CKA_NEVER_EXTRACTABLE, object::bool_bytes(false));
        }
        let key = match material {
            Some(m) => Some(Arc::new(rv(LoadedKey::load(m))?)),
            None => None,
        };
        Ok(self
            .finish_new(sess, &login, class, key_type, attrs, key)?
            .id)
    }

    /// `C_DestroyObject`.
    pub fn destroy_object(&self, sess: u64, id: u64) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        let obj = self.get_visible(sess, id)?;
        self.check_manage(sess, &self.login_of(sess)?, &obj)?;
        if !obj.flag(CKA_DESTROYABLE) {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        self.remove(&obj)?;
        if obj.token {
            self.audit(
                "key_destroy",
                &self.actor(sess),
                &format!("{id:016x}"),
                "ok",
            );
        }
        Ok(())
    }

    /// `C_CopyObject`.
    pub fn copy_object(&self, sess: u64, id: u64, template: &[Attr]) -> SimResult<u64> {
        self.fault_check()?; // fault hook
        let login = self.login_of(sess)?;
        if let Some(made) = self.already_made(template)? {
            return Ok(made);
        }
        let obj = self.get_visible(sess, id)?;
        let _timing = self.timed(|| {
            (
                OpClass::Management,
                timing::token_in(template).unwrap_or(obj.token),
            )
        });
        self.check_manage(sess, &login, &obj)?;
        if !obj.flag(CKA_COPYABLE) {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        let mut attrs = rv(object::modify(&obj, template, true, Self::is_so(&login)))?;
        attrs.remove(&CKA_UNIQUE_ID);
        // A copy is its maker's, shared with no one.
        attrs.remove(&CKA_HSMPOOL_SHARED_WITH);
        Ok(self
            .finish_new(
                sess,
                &login,
                obj.class,
                obj.key_type,
                attrs,
                obj.key.clone(),
            )?
            .id)
    }

    /// `C_SetAttributeValue`.
    pub fn set_attributes(&self, sess: u64, id: u64, template: &[Attr]) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        let login = self.login_of(sess)?;
        let obj = self.get_visible(sess, id)?;
        self.check_manage(sess, &login, &obj)?;
        if !obj.flag(CKA_MODIFIABLE) {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        let attrs = rv(object::modify(&obj, template, false, Self::is_so(&login)))?;
        rv(object::check_usage_conflicts(obj.class, &attrs))?;
        self.replace_attrs(&obj, attrs)?;
        if obj.token {
            // Which attributes, never their values.
            let types: Vec<String> = template.iter().map(|a| format!("{:#x}", a.ty)).collect();
            let detail = format!("attributes {}", types.join(","));
            self.audit(
                "key_attributes",
                &self.actor(sess),
                &format!("{id:016x}"),
                &detail,
            );
        }
        Ok(())
    }

    /// Store `obj` with new attributes (store first), then show it.
    pub(super) fn replace_attrs(
        &self,
        obj: &Object,
        attrs: BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>,
    ) -> SimResult<()> {
        let new = Arc::new(Object {
            id: obj.id,
            owner: obj.owner.clone(),
            session: obj.session,
            class: obj.class,
            key_type: obj.key_type,
            token: obj.token,
            private: obj.private,
            attrs,
            key: obj.key.clone(),
        });
        self.persist(&new)?;
        self.unindex(obj);
        self.insert(new);
        Ok(())
    }

    /// The users capability: the owner of token object `id` shares it with crypto user
    /// `user`, or stops sharing it (see `hsmpool_member::Users::share_object`).
    pub fn share_object(&self, sess: u64, id: u64, user: &str, share: bool) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, true)); // timing hook
        let login = self.login_of(sess)?;
        let obj = self.get_visible(sess, id)?;
        let me = match &login {
            Some((Role::User, me)) if obj.owner.as_deref() == Some(me.as_str()) => me,
            Some(_) => return Err(SimError::Rv(CKR_ACTION_PROHIBITED)),
            None => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        };
        if !obj.token || user == me {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        self.require_approval(sess, &obj, KeyService::Manage)?;
        let mut names = shared_names_of(&obj);
        if share {
            if !self.is_crypto_user(user) {
                return Err(SimError::Rv(CKR_HSMPOOL_USER_NOT_FOUND));
            }
            names.push(user.to_string());
        } else {
            names.retain(|n| n != user);
            // The key's approvers are its owner and the users it is shared with: never fewer
            // than its quorum values.
            if quorum_above(&obj, 1 + names.len() as u32) {
                return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOO_HIGH));
            }
        }
        let attrs = attrs_shared_with(&obj, &names);
        if attrs == obj.attrs {
            return Ok(());
        }
        self.replace_attrs(&obj, attrs)?;
        let kind = if share { "key_share" } else { "key_unshare" };
        self.audit(kind, me, &format!("{id:016x}"), &format!("with {user}"));
        Ok(())
    }

    /// The users capability: every token object (of `owner` only, when given), for an
    /// officer.
    pub fn owned_objects(&self, sess: u64, owner: Option<&str>) -> SimResult<Vec<OwnedObject>> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        self.catch_up();
        let mut out: Vec<OwnedObject> = self
            .objects
            .iter()
            .filter(|o| o.token && owner.is_none_or(|w| o.owner.as_deref() == Some(w)))
            .map(|o| OwnedObject {
                id: o.id,
                owner: o.owner.clone(),
                class: o.class,
                key_type: o.key_type,
                label: o.attrs.get(&CKA_LABEL).cloned().unwrap_or_default(),
                ck_id: o.attrs.get(&CKA_ID).cloned().unwrap_or_default(),
                shared_with: shared_names_of(&o),
            })
            .collect();
        out.sort_by_key(|o| o.id);
        Ok(out)
    }

    /// `C_GetAttributeValue`: one answer per type.
    pub fn get_attributes(
        &self,
        sess: u64,
        id: u64,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> SimResult<Vec<AttrAnswer>> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        let obj = self.get_visible(sess, id)?;
        let tables = obj.tables();
        Ok(types
            .iter()
            .map(|ty| {
                if let Some(v) = obj.attrs.get(ty) {
                    return AttrAnswer::Value(v.clone());
                }
                match object::rule(&tables, *ty) {
                    Some(r) if r.flags & object::SECRET != 0 => {
                        if obj.flag(CKA_SENSITIVE) || !obj.flag(CKA_EXTRACTABLE) {
                            return AttrAnswer::Sensitive;
                        }
                        match (obj.key.as_ref().map(|k| k.material()), *ty) {
                            (Some(KeyMaterial::Secret { value, .. }), CKA_VALUE) => {
                                AttrAnswer::Value(value.to_vec())
                            }
                            // Private key components are not exported in clear by this HSM.
                            _ => AttrAnswer::Sensitive,
                        }
                    }
                    _ => AttrAnswer::Invalid,
                }
            })
            .collect())
    }

    /// `C_GetObjectSize`.
    pub fn object_size(&self, sess: u64, id: u64) -> SimResult<u64> {
        self.fault_check()?; // fault hook
        Ok(self.get_visible(sess, id)?.size())
    }

    /// What the engine caches about a key.
    pub fn key_meta(&self, sess: u64, id: u64) -> SimResult<KeyMeta> {
        self.fault_check()?; // fault hook
        self.meta_of(sess, id)
    }

    /// fault hook: the body of `key_meta`, without the fault check (`check_key` has made it).
    fn meta_of(&self, sess: u64, id: u64) -> SimResult<KeyMeta> {
        Ok(Self::meta(&*self.get_visible(sess, id)?))
    }

    /// What the engine keeps about an object, read off it.
    fn meta(obj: &Object) -> KeyMeta {
        KeyMeta {
            class: obj.class,
            key_type: obj.key_type,
            key_bits: obj.key.as_ref().map_or(0, |k| k.key_bits()),
            token: obj.token,
            private: obj.private,
            always_authenticate: obj.flag(CKA_ALWAYS_AUTHENTICATE),
        }
    }

    /// `C_FindObjects*`: every visible object matching the template. A template naming
    /// `CKA_LABEL` or `CKA_ID` is answered from the index.
    pub fn find(&self, sess: u64, template: &[Attr]) -> SimResult<Vec<u64>> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, false)); // timing hook
        self.catch_up();
        let login = self.login_of(sess)?;
        let keyed = template.iter().find(|a| INDEXED.contains(&a.ty));
        let candidates: Vec<Arc<Object>> = match keyed {
            Some(a) => {
                let ids = self
                    .index
                    .get(&(a.ty, a.value.clone()))
                    .map(|v| v.clone())
                    .unwrap_or_default();
                ids.iter()
                    .filter_map(|id| self.objects.get(id).map(|o| o.value().clone()))
                    .collect()
            }
            None => self.objects.iter().map(|o| o.value().clone()).collect(),
        };
        let mut out: Vec<u64> = candidates
            .iter()
            .filter(|o| Self::visible(&login, sess, o) && o.matches(template))
            .map(|o| o.id)
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    pub(super) fn usable(
        &self,
        sess: u64,
        id: u64,
        usage: CK_ATTRIBUTE_TYPE,
        mech: CK_MECHANISM_TYPE,
    ) -> SimResult<Arc<Object>> {
        let obj = self.get_visible(sess, id).map_err(|e| match e {
            SimError::Rv(CKR_OBJECT_HANDLE_INVALID) => SimError::Rv(CKR_KEY_HANDLE_INVALID),
            e => e,
        })?;
        if obj.key.is_none() {
            // A valid handle of an object that is no key (PKCS #11 3.0 §5.1.6).
            return Err(SimError::Rv(CKR_KEY_HANDLE_INVALID));
        }
        // A crypto officer manages users; it never uses a crypto user's key (a public one
        // included): that needs the user.
        if obj.owner.is_some() {
            let officer = self
                .sessions
                .get(&sess)
                .is_some_and(|s| matches!(s.login, Some((Role::Officer, _))));
            if officer {
                return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN));
            }
        }
        if !obj.flag(usage) {
            return Err(SimError::Rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        self.require_approval(sess, &obj, KeyService::Use)?;
        if let Some(allowed) = obj.attrs.get(&CKA_ALLOWED_MECHANISMS) {
            if !allowed.is_empty() {
                let n = std::mem::size_of::<CK_ULONG>();
                let ok = allowed
                    .chunks(n)
                    .any(|c| c.try_into().ok().map(CK_ULONG::from_ne_bytes) == Some(mech));
                if !ok {
                    return Err(SimError::Rv(CKR_MECHANISM_INVALID));
                }
            }
        }
        Ok(obj)
    }

    pub(super) fn key_of(obj: &Object) -> SimResult<&LoadedKey> {
        obj.key
            .as_deref()
            .ok_or(SimError::Rv(CKR_KEY_TYPE_INCONSISTENT))
    }

    /// Check a key may start an operation (the `*Init` functions). `usage` is `CKA_SIGN`,
    /// `CKA_VERIFY`, `CKA_ENCRYPT` or `CKA_DECRYPT`.
    pub fn check_key(
        &self,
        sess: u64,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        id: u64,
    ) -> SimResult<KeyMeta> {
        self.fault_check()?; // fault hook
                             // One lookup: the object `usable` checked is the one described.
        Ok(Self::meta(&*self.usable(sess, id, usage, mech.mech)?))
    }
}
