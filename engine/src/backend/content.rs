//! Content-derived object ids: how a member that cannot store the engine's id attribute (a
//! vendor module), or one whose stored ids another process cannot match (a simulator beside
//! vendor modules), names an object the same on every member and in every process.
//!
//! The id is a digest of what identifies an object: class, key type, `CKA_ID`, `CKA_LABEL`,
//! and the public part that tells keys apart (modulus, EC point or parameters; the value of a
//! certificate or data object, never a key's). Not `CKA_CHECK_VALUE`, `CKA_PUBLIC_KEY_INFO` or
//! `CKA_VALUE_LEN`: SoftHSMv2 fills them in for a key it generates and leaves them empty (or
//! 0) for the same key unwrapped. Ids so made have bit 62 set ([`CONTENT_IDS`]); the engine's
//! own random ids may have it too, and a clash is as unlikely as two random 62-bit numbers
//! meeting (each user checks).
//!
//! [`ContentIds`] puts a member that stores the engine's ids (our simulator) on the same footing
//! as vendor modules in a mixed cluster: its objects are named by content too.

use std::sync::Arc;

use cryptoki_sys::*;
use dashmap::DashMap;
use hsmpool_member::mechanism::MechRow;
use hsmpool_member::types::{Attr, IdHash, Mechanism, SignInput, CKA_HSMPOOL_OBJECT_ID};
use hsmpool_member::{
    AttrAnswer, Backend, KeyMeta, MemberError, MemberId, MemberObject, MemberResult, MemberSession,
    Role, TokenStatus,
};
use zeroize::Zeroizing;

/// The bit every content-derived id has.
pub const CONTENT_IDS: u64 = 1 << 62;

/// The attributes an object of `class` is identified by (read them, then [`content_id`]).
pub fn content_types(class: Option<CK_OBJECT_CLASS>) -> Vec<CK_ATTRIBUTE_TYPE> {
    let mut types = vec![
        CKA_CLASS,
        CKA_KEY_TYPE,
        CKA_ID,
        CKA_LABEL,
        CKA_MODULUS,
        CKA_EC_PARAMS,
        CKA_EC_POINT,
    ];
    if matches!(class, Some(CKO_CERTIFICATE | CKO_DATA)) {
        types.extend([CKA_VALUE, CKA_APPLICATION, CKA_OBJECT_ID]);
    }
    types
}

/// The id of an object whose [`content_types`] read `answers` (in that order; what the object
/// does not have is left out of the digest).
pub fn content_id(types: &[CK_ATTRIBUTE_TYPE], answers: &[AttrAnswer]) -> u64 {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (ty, a) in types.iter().zip(answers) {
        if let AttrAnswer::Value(v) = a {
            #[allow(clippy::useless_conversion)] // `CK_ULONG` is 32 bits on some platforms
            let ty = u64::from(*ty);
            ctx.update(&ty.to_be_bytes());
            ctx.update(&(v.len() as u64).to_be_bytes());
            ctx.update(v);
        }
    }
    let d = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_ref()[..8]);
    CONTENT_IDS | (u64::from_be_bytes(first) & (CONTENT_IDS - 1))
}

/// The next id after `id` among content-derived ones (two objects alike in everything read).
pub fn next_content_id(id: u64) -> u64 {
    CONTENT_IDS | (id.wrapping_add(1) & (CONTENT_IDS - 1))
}

/// A member that stores the engine's ids (our simulator, embedded or a daemon), named by
/// content instead, for a cluster where other members cannot store ids (vendor modules): there
/// the engine of another process (a restart, another host) names every object by content, and
/// the simulator's stored id (chosen at random by the process that made the object) would make
/// its copy look like another object. Within one process an object keeps the id it was made
/// or first found under; ids are translated to the member's own on the way in and back on the
/// way out. It offers no clone path (the cluster copies by wrapping).
pub struct ContentIds {
    inner: Arc<dyn Backend>,
    /// Cluster-wide id → the member's own, and back.
    to_inner: DashMap<u64, u64, IdHash>,
    to_outer: DashMap<u64, u64, IdHash>,
}

impl ContentIds {
    /// `inner`, named by content.
    pub fn new(inner: Arc<dyn Backend>) -> ContentIds {
        ContentIds {
            inner,
            to_inner: DashMap::with_hasher(IdHash),
            to_outer: DashMap::with_hasher(IdHash),
        }
    }

    fn invalid(&self, rv: CK_RV) -> MemberError {
        MemberError::Rv {
            member: self.inner.id(),
            rv,
        }
    }

    /// The member's id of object `o` (one this process was given by us).
    fn inn(&self, o: MemberObject) -> MemberResult<MemberObject> {
        self.to_inner
            .get(&o.0)
            .map(|i| MemberObject(*i))
            .ok_or_else(|| self.invalid(CKR_OBJECT_HANDLE_INVALID))
    }

    /// The cluster-wide id of the member's object `i`: known, else `made_as` (the id the engine
    /// made it with), else derived from its content.
    fn out(
        &self,
        s: MemberSession,
        i: MemberObject,
        made_as: Option<u64>,
    ) -> MemberResult<MemberObject> {
        if let Some(o) = self.to_outer.get(&i.0) {
            return Ok(MemberObject(*o));
        }
        let mut id = match made_as {
            Some(id) => id,
            None => {
                let class = match self.inner.get_attributes(s, i, &[CKA_CLASS])?.pop() {
                    Some(AttrAnswer::Value(v)) => Attr {
                        ty: CKA_CLASS,
                        value: v,
                    }
                    .as_ulong(),
                    _ => None,
                };
                let types = content_types(class);
                let answers = self.inner.get_attributes(s, i, &types)?;
                content_id(&types, &answers)
            }
        };
        while self.to_inner.get(&id).is_some_and(|o| *o != i.0) {
            id = next_content_id(id);
        }
        self.to_inner.insert(id, i.0);
        self.to_outer.insert(i.0, id);
        Ok(MemberObject(id))
    }

    fn forget(&self, o: MemberObject) {
        if let Some((_, i)) = self.to_inner.remove(&o.0) {
            self.to_outer.remove(&i);
        }
    }

    /// The id a template makes an object under.
    fn made_as(template: &[Attr]) -> Option<u64> {
        #[allow(clippy::useless_conversion)] // `CK_ULONG` is 32 bits on some platforms
        template
            .iter()
            .rev()
            .find(|a| a.ty == CKA_HSMPOOL_OBJECT_ID)
            .and_then(Attr::as_ulong)
            .map(u64::from)
    }

    /// A template with our id translated to the member's (`None`: an id it has not, so
    /// nothing matches).
    fn inner_template(&self, template: &[Attr]) -> Option<Vec<Attr>> {
        let mut t = template.to_vec();
        for a in &mut t {
            if a.ty == CKA_HSMPOOL_OBJECT_ID {
                #[allow(clippy::useless_conversion)]
                let id = a.as_ulong().map(u64::from)?;
                let i = *self.to_inner.get(&id)?;
                *a = Attr::ulong(CKA_HSMPOOL_OBJECT_ID, i as CK_ULONG);
            }
        }
        Some(t)
    }
}

impl Backend for ContentIds {
    fn id(&self) -> MemberId {
        self.inner.id()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn open_session(&self) -> MemberResult<MemberSession> {
        self.inner.open_session()
    }
    fn close_session(&self, s: MemberSession) {
        self.inner.close_session(s)
    }
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> MemberResult<()> {
        self.inner.login(s, role, pin, username)
    }
    fn logout(&self, s: MemberSession) -> MemberResult<()> {
        self.inner.logout(s)
    }
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> MemberResult<()> {
        self.inner.init_token(so_pin, label)?;
        self.to_inner.clear();
        self.to_outer.clear();
        Ok(())
    }
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> MemberResult<()> {
        self.inner.init_pin(s, pin)
    }
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> MemberResult<()> {
        self.inner.set_pin(s, old, new)
    }
    fn token_status(&self) -> MemberResult<TokenStatus> {
        self.inner.token_status()
    }
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> MemberResult<MemberObject> {
        let i = self.inner.create_object(s, template)?;
        self.out(s, i, Self::made_as(template))
    }
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let i = self.inner.copy_object(s, self.inn(o)?, template)?;
        self.out(s, i, Self::made_as(template))
    }
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> MemberResult<()> {
        self.inner.destroy_object(s, self.inn(o)?)?;
        self.forget(o);
        Ok(())
    }
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> MemberResult<Vec<AttrAnswer>> {
        let mut answers = self.inner.get_attributes(s, self.inn(o)?, types)?;
        for (ty, a) in types.iter().zip(answers.iter_mut()) {
            match *ty {
                CKA_HSMPOOL_OBJECT_ID => {
                    *a = AttrAnswer::Value(Attr::ulong(*ty, o.0 as CK_ULONG).value.to_vec());
                }
                // The unique id is the object's id, as the other members give it.
                CKA_UNIQUE_ID => *a = AttrAnswer::Value(format!("{:016x}", o.0).into_bytes()),
                _ => {}
            }
        }
        Ok(answers)
    }
    fn set_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<()> {
        self.inner.set_attributes(s, self.inn(o)?, template)
    }
    fn object_size(&self, s: MemberSession, o: MemberObject) -> MemberResult<u64> {
        self.inner.object_size(s, self.inn(o)?)
    }
    fn find(&self, s: MemberSession, template: &[Attr]) -> MemberResult<Vec<MemberObject>> {
        let Some(t) = self.inner_template(template) else {
            return Ok(Vec::new());
        };
        self.inner
            .find(s, &t)?
            .into_iter()
            .map(|i| self.out(s, i, None))
            .collect()
    }
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> MemberResult<KeyMeta> {
        self.inner.key_meta(s, self.inn(o)?)
    }
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> MemberResult<KeyMeta> {
        self.inner.check_key(s, usage, mech, self.inn(o)?)
    }
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let i = self.inner.generate_key(s, mech, template)?;
        self.out(s, i, Self::made_as(template))
    }
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> MemberResult<(MemberObject, MemberObject)> {
        let (p, k) = self.inner.generate_key_pair(s, mech, public, private)?;
        Ok((
            self.out(s, p, Self::made_as(public))?,
            self.out(s, k, Self::made_as(private))?,
        ))
    }
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> MemberResult<Vec<u8>> {
        self.inner
            .wrap_key(s, mech, self.inn(wrapping)?, self.inn(key)?)
    }
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let i = self
            .inner
            .unwrap_key(s, mech, self.inn(unwrapping)?, wrapped, template)?;
        self.out(s, i, Self::made_as(template))
    }
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        let i = self.inner.derive_key(s, mech, self.inn(base)?, template)?;
        self.out(s, i, Self::made_as(template))
    }
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> MemberResult<Vec<u8>> {
        self.inner.sign(s, mech, self.inn(key)?, input)
    }
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> MemberResult<()> {
        self.inner.verify(s, mech, self.inn(key)?, input, signature)
    }
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Vec<u8>> {
        self.inner.encrypt(s, mech, self.inn(key)?, data)
    }
    fn encrypt_into(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
        out: &mut [u8],
    ) -> MemberResult<usize> {
        self.inner.encrypt_into(s, mech, self.inn(key)?, data, out)
    }
    fn decrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        self.inner.decrypt(s, mech, self.inn(key)?, data)
    }
    fn secret_value_for_digest(
        &self,
        s: MemberSession,
        key: MemberObject,
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        self.inner.secret_value_for_digest(s, self.inn(key)?)
    }
    fn random(&self, out: &mut [u8]) -> MemberResult<()> {
        self.inner.random(out)
    }
    fn ping(&self) -> MemberResult<()> {
        self.inner.ping()
    }
    fn mechanisms(&self) -> MemberResult<Option<Vec<MechRow>>> {
        self.inner.mechanisms()
    }
    fn own_pin(&self, role: Role) -> bool {
        self.inner.own_pin(role)
    }
    fn cluster_wrap_mechanism(&self) -> CK_MECHANISM_TYPE {
        self.inner.cluster_wrap_mechanism()
    }
    fn wants_whole_messages(&self) -> bool {
        self.inner.wants_whole_messages()
    }
    // Users carry no object ids: the inner member's capability, as it is.
    fn users(&self) -> Option<&dyn hsmpool_member::Users> {
        self.inner.users()
    }
    // The log names objects by the inner member's ids: it is that member's own record.
    fn audit(&self) -> Option<&dyn hsmpool_member::Audit> {
        self.inner.audit()
    }
}
