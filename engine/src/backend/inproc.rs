//! The in-process simulator backend: the embedded default. Calls go straight into a
//! [`hsmpool_sim::hsm::Hsm`] in this process.

use cryptoki_sys::CK_ATTRIBUTE_TYPE;
use hsmpool_member::types::{Attr, Mechanism, SignInput};
use hsmpool_member::{AttrAnswer, KeyMeta, Role, TokenStatus};
use hsmpool_sim::error::SimError;
use hsmpool_sim::hsm::{Hsm, HsmConfig};
use zeroize::Zeroizing;

use super::{member_error, Backend, MemberId, MemberObject, MemberSession};
use crate::error::{Error, Result};

/// A simulated HSM living in this process.
pub struct InProcess {
    id: MemberId,
    hsm: Hsm,
    describe: String,
}

impl InProcess {
    /// Open the simulated HSM over its store.
    pub fn open(id: MemberId, cfg: HsmConfig) -> Result<Self> {
        let describe = format!("in-process simulator at {}", cfg.data_dir.display());
        let hsm = Hsm::open(cfg).map_err(|e| match e {
            SimError::Store(msg) => Error::Config(msg),
            SimError::Rv(rv) => member_error(id, rv),
        })?;
        Ok(InProcess { id, hsm, describe })
    }

    /// The simulator itself (for the administration tool and tests).
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    fn err(&self, e: SimError) -> Error {
        match e {
            SimError::Rv(rv) => member_error(self.id, rv),
            SimError::Store(msg) => {
                tracing::error!(member = self.id.0, "store failure: {msg}");
                Error::DeviceError(msg)
            }
        }
    }
}

impl Backend for InProcess {
    fn id(&self) -> MemberId {
        self.id
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
    fn open_session(&self) -> Result<MemberSession> {
        Ok(MemberSession(self.hsm.open_session()))
    }
    fn close_session(&self, s: MemberSession) {
        self.hsm.close_session(s.0)
    }
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> Result<()> {
        match username {
            Some(name) => self.hsm.login_named(s.0, role, name, pin),
            None => self.hsm.login(s.0, role, pin),
        }
        .map_err(|e| self.err(e))
    }
    fn logout(&self, s: MemberSession) -> Result<()> {
        self.hsm.logout(s.0).map_err(|e| self.err(e))
    }
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        self.hsm.init_token(so_pin, label).map_err(|e| self.err(e))
    }
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> Result<()> {
        self.hsm.init_pin(s.0, pin).map_err(|e| self.err(e))
    }
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> Result<()> {
        self.hsm.set_pin(s.0, old, new).map_err(|e| self.err(e))
    }
    fn token_status(&self) -> Result<TokenStatus> {
        Ok(self.hsm.token_status())
    }
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> Result<MemberObject> {
        self.hsm
            .create_object(s.0, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.hsm
            .copy_object(s.0, o.0, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> Result<()> {
        self.hsm.destroy_object(s.0, o.0).map_err(|e| self.err(e))
    }
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>> {
        self.hsm
            .get_attributes(s.0, o.0, types)
            .map_err(|e| self.err(e))
    }
    fn set_attributes(&self, s: MemberSession, o: MemberObject, template: &[Attr]) -> Result<()> {
        self.hsm
            .set_attributes(s.0, o.0, template)
            .map_err(|e| self.err(e))
    }
    fn object_size(&self, s: MemberSession, o: MemberObject) -> Result<u64> {
        self.hsm.object_size(s.0, o.0).map_err(|e| self.err(e))
    }
    fn find(&self, s: MemberSession, template: &[Attr]) -> Result<Vec<MemberObject>> {
        self.hsm
            .find(s.0, template)
            .map(|v| v.into_iter().map(MemberObject).collect())
            .map_err(|e| self.err(e))
    }
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> Result<KeyMeta> {
        self.hsm.key_meta(s.0, o.0).map_err(|e| self.err(e))
    }
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> Result<KeyMeta> {
        self.hsm
            .check_key(s.0, usage, mech, o.0)
            .map_err(|e| self.err(e))
    }
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.hsm
            .generate_key(s.0, mech, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> Result<(MemberObject, MemberObject)> {
        self.hsm
            .generate_key_pair(s.0, mech, public, private)
            .map(|(p, k)| (MemberObject(p), MemberObject(k)))
            .map_err(|e| self.err(e))
    }
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> Result<Vec<u8>> {
        self.hsm
            .wrap_key(s.0, mech, wrapping.0, key.0)
            .map_err(|e| self.err(e))
    }
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.hsm
            .unwrap_key(s.0, mech, unwrapping.0, wrapped, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject> {
        self.hsm
            .derive_key(s.0, mech, base.0, template)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> Result<Vec<u8>> {
        self.hsm
            .sign(s.0, mech, key.0, input)
            .map_err(|e| self.err(e))
    }
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> Result<()> {
        self.hsm
            .verify(s.0, mech, key.0, input, signature)
            .map_err(|e| self.err(e))
    }
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Vec<u8>> {
        self.hsm
            .encrypt(s.0, mech, key.0, data)
            .map_err(|e| self.err(e))
    }
    fn encrypt_into(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        self.hsm
            .encrypt_into(s.0, mech, key.0, data, out)
            .map_err(|e| self.err(e))
    }
    fn decrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.hsm
            .decrypt(s.0, mech, key.0, data)
            .map_err(|e| self.err(e))
    }
    fn secret_for_digest(&self, s: MemberSession, key: MemberObject) -> Result<Zeroizing<Vec<u8>>> {
        self.hsm
            .secret_value_for_digest(s.0, key.0)
            .map_err(|e| self.err(e))
    }
    fn random(&self, out: &mut [u8]) -> Result<()> {
        self.hsm.random(out).map_err(|e| self.err(e))
    }
    fn ping(&self) -> Result<()> {
        self.hsm.ping().map_err(|e| self.err(e))
    }
    fn export_clone(&self, s: MemberSession, o: MemberObject) -> Result<Vec<u8>> {
        self.hsm.export_clone(s.0, o.0).map_err(|e| self.err(e))
    }
    fn import_clone(&self, s: MemberSession, blob: &[u8]) -> Result<MemberObject> {
        self.hsm
            .import_clone(s.0, blob)
            .map(MemberObject)
            .map_err(|e| self.err(e))
    }
    fn object_digests(&self, s: MemberSession) -> Result<Vec<(MemberObject, [u8; 32])>> {
        self.hsm
            .object_digests(s.0)
            .map(|v| v.into_iter().map(|(id, d)| (MemberObject(id), d)).collect())
            .map_err(|e| self.err(e))
    }
    fn drop_replica(&self, s: MemberSession, o: MemberObject) -> Result<()> {
        self.hsm.drop_replica(s.0, o.0).map_err(|e| self.err(e))
    }
}
