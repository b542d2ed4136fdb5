//! The one seam between the engine and an HSM: the [`Backend`] trait, and its kinds.
//!
//! A backend speaks for one cluster member. Its calls carry a [`MemberSession`] (an
//! authentication context on that member) and [`MemberObject`] handles (that member's own).
//! The engine never hands these to the application: it maps them to its own stable handles.

pub mod inproc;
pub mod remote;

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_RV};
use hsmpool_member::types::{Attr, Mechanism, SignInput};
use hsmpool_member::{AttrAnswer, KeyMeta, Role, TokenStatus};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Which member of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberId(pub u32);

/// A session on one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MemberSession(pub u64);

/// An object handle on one member. For token objects made through the engine it is the
/// cluster-wide object id, the same on every member (the engine asks for it with
/// `CKA_HSMPOOL_OBJECT_ID`; a backend whose HSM numbers objects itself translates).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberObject(pub u64);

/// Turn a member's `CK_RV` into the engine's error, keeping the value.
pub fn member_error(member: MemberId, rv: CK_RV) -> Error {
    Error::Hsm {
        member: member.0,
        rv,
    }
}

/// One HSM, as the engine sees it. Every method is safe to call from many threads at once.
pub trait Backend: Send + Sync {
    /// This member's id.
    fn id(&self) -> MemberId;
    /// A human-readable description (for logs and `hsmpool status`).
    fn describe(&self) -> String;
    /// Open an authentication context.
    fn open_session(&self) -> Result<MemberSession>;
    /// Close it; session objects created through it are destroyed.
    fn close_session(&self, s: MemberSession);
    /// Log a session in. `username` is given by `C_LoginUser`; otherwise a PIN of the form
    /// `name:password` names the user.
    fn login(&self, s: MemberSession, role: Role, pin: &[u8], username: Option<&str>)
        -> Result<()>;
    /// Log a session out.
    fn logout(&self, s: MemberSession) -> Result<()>;
    /// `C_InitToken`.
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> Result<()>;
    /// `C_InitPIN`.
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> Result<()>;
    /// `C_SetPIN`.
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> Result<()>;
    /// Token state for `C_GetTokenInfo`.
    fn token_status(&self) -> Result<TokenStatus>;
    /// `C_CreateObject`.
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> Result<MemberObject>;
    /// `C_CopyObject`.
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject>;
    /// `C_DestroyObject`.
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> Result<()>;
    /// `C_GetAttributeValue`.
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrAnswer>>;
    /// `C_SetAttributeValue`.
    fn set_attributes(&self, s: MemberSession, o: MemberObject, template: &[Attr]) -> Result<()>;
    /// `C_GetObjectSize`.
    fn object_size(&self, s: MemberSession, o: MemberObject) -> Result<u64>;
    /// Every visible object matching a template.
    fn find(&self, s: MemberSession, template: &[Attr]) -> Result<Vec<MemberObject>>;
    /// Class, key type, size and storage flags of an object.
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> Result<KeyMeta>;
    /// Check that a key may be used for `usage` (`CKA_SIGN`, ...) with a mechanism.
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> Result<KeyMeta>;
    /// `C_GenerateKey`.
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> Result<MemberObject>;
    /// `C_GenerateKeyPair`: (public, private).
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> Result<(MemberObject, MemberObject)>;
    /// `C_WrapKey`: `key` encrypted under `wrapping`.
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> Result<Vec<u8>>;
    /// `C_UnwrapKey`: a new key from `wrapped`, decrypted under `unwrapping`.
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> Result<MemberObject>;
    /// `C_DeriveKey`.
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> Result<MemberObject>;
    /// Sign.
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> Result<Vec<u8>>;
    /// Verify.
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> Result<()>;
    /// Encrypt.
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Vec<u8>>;
    /// Encrypt into `out`, which holds at least the output length; returns the length written.
    /// The default encrypts and copies; a backend that can write in place overrides it.
    fn encrypt_into(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize> {
        let ct = self.encrypt(s, mech, key, data)?;
        let dst = out
            .get_mut(..ct.len())
            .ok_or(Error::BufferTooSmall { needed: ct.len() })?;
        dst.copy_from_slice(&ct);
        Ok(ct.len())
    }
    /// Decrypt.
    fn decrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>>;
    /// A secret key's value, for `C_DigestKey` only.
    fn secret_for_digest(&self, s: MemberSession, key: MemberObject) -> Result<Zeroizing<Vec<u8>>>;
    /// Random bytes.
    fn random(&self, out: &mut [u8]) -> Result<()>;

    // ----- cluster: health and the clone path (see `hsmpool_sim::cluster`) -----------------

    /// A cheap health probe: `Ok` when the member answers.
    fn ping(&self) -> Result<()>;
    /// Token object `o` sealed for another member of the same cluster (a clone blob only
    /// members can open). Needs a logged-in session.
    fn export_clone(&self, s: MemberSession, o: MemberObject) -> Result<Vec<u8>>;
    /// Store an object from a clone blob under its cluster-wide id (idempotent; replaces a
    /// different object of the same id).
    fn import_clone(&self, s: MemberSession, blob: &[u8]) -> Result<MemberObject>;
    /// (id, digest) of every token object the member holds, by id.
    fn object_digests(&self, s: MemberSession) -> Result<Vec<(MemberObject, [u8; 32])>>;
    /// Remove a token object whatever its owner (resynchronisation, roll-back). Absent is `Ok`.
    fn drop_replica(&self, s: MemberSession, o: MemberObject) -> Result<()>;
}
