//! The simulator as a cluster member: [`SimMember`] implements the member contract
//! ([`Backend`] and its [`Replication`], [`Users`], [`Audit`] and [`Backup`] capabilities) over an [`Hsm`] in this process. The
//! engine's embedded default uses it directly; `hsmpool-hsmd` serves it over the wire.

use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use hsmpool_member::types::{Attr, Mechanism, SignInput};
use hsmpool_member::{
    Approval, AttrAnswer, Audit, AuditLog, Backend, Backup, KeyMeta, KeyService, MemberError,
    MemberId, MemberObject, MemberResult, MemberSession, OwnedObject, Replication, Role,
    TokenStatus, UserChange, UserSet, Users,
};
use zeroize::Zeroizing;

use crate::error::SimError;
use crate::hsm::{Hsm, HsmConfig};

/// A simulated HSM living in this process, as a member.
pub struct SimMember {
    id: MemberId,
    hsm: Hsm,
    describe: String,
    /// XORed into session handles as this member hands them out and takes them back: zero in
    /// process; random per process in `hsmpool-hsmd`, so that a handle from before a restart
    /// is `CKR_SESSION_HANDLE_INVALID` afterwards, never silently some new session.
    session_mask: u64,
}

impl SimMember {
    /// Open the simulated HSM over its store.
    pub fn open(id: MemberId, cfg: HsmConfig) -> MemberResult<Self> {
        let describe = format!("in-process simulator at {}", cfg.data_dir.display());
        let hsm = Hsm::open(cfg).map_err(|e| match e {
            SimError::Store(msg) => MemberError::Config(msg),
            SimError::Rv(rv) => MemberError::Rv { member: id, rv },
        })?;
        Ok(SimMember {
            id,
            hsm,
            describe,
            session_mask: 0,
        })
    }

    /// An open HSM served by `hsmpool-hsmd`, handing out session handles XORed with `mask`
    /// (see the field).
    pub fn serving(hsm: Hsm, mask: u64) -> Self {
        SimMember {
            id: MemberId(0),
            describe: "hsmpool-hsmd".into(),
            hsm,
            session_mask: mask,
        }
    }

    /// The mask of session handles (zero in process).
    pub fn session_mask(&self) -> u64 {
        self.session_mask
    }

    /// The HSM's own number of a session handle.
    fn s(&self, s: MemberSession) -> u64 {
        s.0 ^ self.session_mask
    }

    /// The simulator itself (for the administration tool and tests).
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    fn err(&self, e: SimError) -> MemberError {
        match e {
            SimError::Rv(rv) => MemberError::Rv {
                member: self.id,
                rv,
            },
            SimError::Store(msg) => {
                tracing::error!(member = self.id.0, "store failure: {msg}");
                MemberError::Device(msg)
            }
        }
    }
}

impl Backend for SimMember {
    fn id(&self) -> MemberId {
        self.id
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn open_session(&self) -> MemberResult<MemberSession> {
        Ok(MemberSession(self.hsm.open_session() ^ self.session_mask))
    }
    fn close_session(&self, s: MemberSession) {
        self.hsm.close_session(self.s(s))
    }
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> MemberResult<()> {
        match username {
            Some(name) => self.hsm.login_named(self.s(s), role, name, pin),
            None => self.hsm.login(self.s(s), role, pin),
        }
        .map_err(|e| self.err(e))
    }
    fn logout(&self, s: MemberSession) -> MemberResult<()> {
        self.hsm.logout(self.s(s)).map_err(|e| self.err(e))
    }
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> MemberResult<()> {
        self.hsm.init_token(so_pin, label).map_err(|e| self.err(e))
    }
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> MemberResult<()> {
        self.hsm.init_pin(self.s(s), pin).map_err(|e| self.err(e))
    }
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> MemberResult<()> {
        self.hsm
            .set_pin(self.s(s), old, new)
            .map_err(|e| self.err(e))
    }
    fn token_status(&self) -> MemberResult<TokenStatus> {
        Ok(self.hsm.token_status())
    }
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> MemberResult<MemberObject> {
        self.hsm
            .create_object(self.s(s), template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        self.hsm
            .copy_object(self.s(s), o.0, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> MemberResult<()> {
        self.hsm
            .destroy_object(self.s(s), o.0)
            .map_err(|e| self.err(e))
    }
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> MemberResult<Vec<AttrAnswer>> {
        self.hsm
            .get_attributes(self.s(s), o.0, types)
            .map_err(|e| self.err(e))
    }
    fn set_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<()> {
        self.hsm
            .set_attributes(self.s(s), o.0, template)
            .map_err(|e| self.err(e))
    }
    fn object_size(&self, s: MemberSession, o: MemberObject) -> MemberResult<u64> {
        self.hsm
            .object_size(self.s(s), o.0)
            .map_err(|e| self.err(e))
    }
    fn find(&self, s: MemberSession, template: &[Attr]) -> MemberResult<Vec<MemberObject>> {
        self.hsm
            .find(self.s(s), template)
            .map(|v| v.into_iter().map(MemberObject).collect())
            .map_err(|e| self.err(e))
    }
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> MemberResult<KeyMeta> {
        self.hsm.key_meta(self.s(s), o.0).map_err(|e| self.err(e))
    }
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> MemberResult<KeyMeta> {
        self.hsm
            .check_key(self.s(s), usage, mech, o.0)
            .map_err(|e| self.err(e))
    }
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        self.hsm
            .generate_key(self.s(s), mech, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> MemberResult<(MemberObject, MemberObject)> {
        self.hsm
            .generate_key_pair(self.s(s), mech, public, private)
            .map(|(p, k)| (MemberObject(p), MemberObject(k)))
            .map_err(|e| self.err(e))
    }
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> MemberResult<Vec<u8>> {
        self.hsm
            .wrap_key(self.s(s), mech, wrapping.0, key.0)
            .map_err(|e| self.err(e))
    }
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        self.hsm
            .unwrap_key(self.s(s), mech, unwrapping.0, wrapped, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject> {
        self.hsm
            .derive_key(self.s(s), mech, base.0, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> MemberResult<Vec<u8>> {
        self.hsm
            .sign(self.s(s), mech, key.0, input)
            .map_err(|e| self.err(e))
    }
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> MemberResult<()> {
        self.hsm
            .verify(self.s(s), mech, key.0, input, signature)
            .map_err(|e| self.err(e))
    }
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Vec<u8>> {
        self.hsm
            .encrypt(self.s(s), mech, key.0, data)
            .map_err(|e| self.err(e))
    }
    fn encrypt_into(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
        out: &mut [u8],
    ) -> MemberResult<usize> {
        self.hsm
            .encrypt_into(self.s(s), mech, key.0, data, out)
            .map_err(|e| self.err(e))
    }
    fn decrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        self.hsm
            .decrypt(self.s(s), mech, key.0, data)
            .map_err(|e| self.err(e))
    }
    fn secret_value_for_digest(
        &self,
        s: MemberSession,
        key: MemberObject,
    ) -> MemberResult<Zeroizing<Vec<u8>>> {
        self.hsm
            .secret_value_for_digest(self.s(s), key.0)
            .map_err(|e| self.err(e))
    }
    fn random(&self, out: &mut [u8]) -> MemberResult<()> {
        self.hsm.random(out).map_err(|e| self.err(e))
    }
    fn ping(&self) -> MemberResult<()> {
        self.hsm.ping().map_err(|e| self.err(e))
    }
    fn replication(&self) -> Option<&dyn Replication> {
        Some(self)
    }
    fn users(&self) -> Option<&dyn Users> {
        Some(self)
    }
    fn audit(&self) -> Option<&dyn Audit> {
        Some(self)
    }
    fn backup(&self) -> Option<&dyn Backup> {
        Some(self)
    }
}

impl Backup for SimMember {
    fn export_backup(
        &self,
        s: MemberSession,
        id: &str,
        created_ms: u64,
        offset: u64,
    ) -> MemberResult<(u64, Vec<u8>)> {
        self.hsm
            .export_backup(self.s(s), id, created_ms, offset)
            .map_err(|e| self.err(e))
    }
    fn cluster_id(&self, s: MemberSession) -> MemberResult<[u8; 16]> {
        self.hsm.cluster_id(self.s(s)).map_err(|e| self.err(e))
    }
}

impl Audit for SimMember {
    fn audit_log(&self, s: MemberSession, from: u64, limit: u32) -> MemberResult<AuditLog> {
        self.hsm
            .audit_log(self.s(s), from, limit)
            .map_err(|e| self.err(e))
    }
}

impl Users for SimMember {
    fn user_states(&self, s: MemberSession) -> MemberResult<UserSet> {
        self.hsm.user_states(self.s(s)).map_err(|e| self.err(e))
    }
    fn export_user(&self, s: MemberSession, name: &str) -> MemberResult<Vec<u8>> {
        self.hsm
            .export_user(self.s(s), name)
            .map_err(|e| self.err(e))
    }
    fn import_user(&self, s: MemberSession, blob: &[u8]) -> MemberResult<()> {
        self.hsm
            .import_user(self.s(s), blob)
            .map_err(|e| self.err(e))
    }
    fn change_user(
        &self,
        s: MemberSession,
        change: &UserChange,
        approval: &Approval,
    ) -> MemberResult<()> {
        self.hsm
            .change_user_approved(self.s(s), change, approval)
            .map_err(|e| self.err(e))
    }
    fn quorum_token(&self, s: MemberSession, change: &UserChange) -> MemberResult<Vec<u8>> {
        self.hsm
            .quorum_token(self.s(s), change)
            .map_err(|e| self.err(e))
    }
    fn share_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        user: &str,
        share: bool,
    ) -> MemberResult<()> {
        self.hsm
            .share_object(self.s(s), o.0, user, share)
            .map_err(|e| self.err(e))
    }
    fn owned_objects(
        &self,
        s: MemberSession,
        owner: Option<&str>,
    ) -> MemberResult<Vec<OwnedObject>> {
        self.hsm
            .owned_objects(self.s(s), owner)
            .map_err(|e| self.err(e))
    }
    fn set_key_quorum(
        &self,
        s: MemberSession,
        o: MemberObject,
        service: KeyService,
        m: u32,
    ) -> MemberResult<()> {
        self.hsm
            .set_key_quorum(self.s(s), o.0, service, m)
            .map_err(|e| self.err(e))
    }
    fn key_quorum_token(
        &self,
        s: MemberSession,
        o: MemberObject,
        service: KeyService,
    ) -> MemberResult<Vec<u8>> {
        self.hsm
            .key_quorum_token(self.s(s), o.0, service)
            .map_err(|e| self.err(e))
    }
    fn approve_key(
        &self,
        s: MemberSession,
        o: MemberObject,
        approval: &Approval,
    ) -> MemberResult<()> {
        self.hsm
            .approve_key(self.s(s), o.0, approval)
            .map_err(|e| self.err(e))
    }
}

impl Replication for SimMember {
    fn export_clone(&self, s: MemberSession, o: MemberObject) -> MemberResult<Vec<u8>> {
        self.hsm
            .export_clone(self.s(s), o.0)
            .map_err(|e| self.err(e))
    }
    fn import_clone(&self, s: MemberSession, blob: &[u8]) -> MemberResult<MemberObject> {
        self.hsm
            .import_clone(self.s(s), blob)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn object_digests(&self, s: MemberSession) -> MemberResult<Vec<(MemberObject, [u8; 32])>> {
        self.hsm
            .object_digests(self.s(s))
            .map(|v| v.into_iter().map(|(id, d)| (MemberObject(id), d)).collect())
            .map_err(|e| self.err(e))
    }
    fn drop_replica(&self, s: MemberSession, o: MemberObject) -> MemberResult<()> {
        self.hsm
            .drop_replica(self.s(s), o.0)
            .map_err(|e| self.err(e))
    }
}
