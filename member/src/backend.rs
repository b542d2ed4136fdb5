//! The contract every member kind implements: the [`Backend`] trait, the handles its calls
//! carry, its error type, and the optional capabilities a kind may add ([`Replication`]).
//!
//! A backend speaks for one cluster member. Its calls carry a [`MemberSession`] (an
//! authentication context on that member) and [`MemberObject`] handles (that member's own).
//! The engine never hands these to the application: it maps them to its own stable handles.

use cryptoki_sys::{
    CKR_BUFFER_TOO_SMALL, CKR_DATA_LEN_RANGE, CKR_DEVICE_ERROR, CKR_DEVICE_REMOVED,
    CKR_FUNCTION_NOT_SUPPORTED, CKR_GENERAL_ERROR, CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE, CK_RV,
};
use zeroize::Zeroizing;

use crate::audit::Audit;
use crate::backup::Backup;
use crate::mechanism::MechRow;
use crate::meta::{AttrAnswer, KeyMeta, Role, TokenStatus};
use crate::types::{Attr, Mechanism, SignInput};
use crate::users::Users;

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

/// What a member call can fail with. The engine turns each into its own error one to one
/// (`hsmpool_engine::Error`'s `From<MemberError>`), so nothing is flattened on the way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    /// The member answered with this `CK_RV`; carried through unchanged.
    #[error("HSM member {} returned {rv:#x}", member.0)]
    Rv {
        /// Which member said it.
        member: MemberId,
        /// What it said.
        rv: CK_RV,
    },
    /// The member could not be reached: its connection is down, it refused the handshake, or
    /// it did not answer in time. Another member (or this one, later) may well succeed.
    #[error("HSM member {} unreachable: {reason}", member.0)]
    Unreachable {
        /// Which member.
        member: MemberId,
        /// What happened, for the log.
        reason: String,
    },
    /// The member failed inside (its store, an answer that makes no sense).
    #[error("device error: {0}")]
    Device(String),
    /// The member's configuration is unusable (which file or key, and why).
    #[error("configuration error: {0}")]
    Config(String),
    /// The output buffer given to [`Backend::encrypt_into`] is too small.
    #[error("buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The length needed.
        needed: usize,
    },
    /// The request is larger than the member can take in one call.
    #[error("data length out of range")]
    DataLenRange,
    /// The member does not have this capability (see [`Backend::replication`]).
    #[error("member {} cannot {what}", member.0)]
    Unsupported {
        /// Which member.
        member: MemberId,
        /// What was asked.
        what: &'static str,
    },
    /// A broken invariant on our side (a bug).
    #[error("internal error: {0}")]
    Internal(String),
}

impl MemberError {
    /// The `CK_RV` a member answers with when it serves this error to a client (the daemon's
    /// `Err` answer). The engine's own mapping (`hsmpool_engine::Error::ck_rv` of the error
    /// this one converts into) gives the same code; a table test there pins it.
    pub fn rv(&self) -> CK_RV {
        match self {
            MemberError::Rv { rv, .. } => *rv,
            MemberError::Unreachable { .. } => CKR_DEVICE_REMOVED,
            MemberError::Device(_) => CKR_DEVICE_ERROR,
            MemberError::Config(_) | MemberError::Internal(_) => CKR_GENERAL_ERROR,
            MemberError::BufferTooSmall { .. } => CKR_BUFFER_TOO_SMALL,
            MemberError::DataLenRange => CKR_DATA_LEN_RANGE,
            MemberError::Unsupported { .. } => CKR_FUNCTION_NOT_SUPPORTED,
        }
    }
}

/// Shorthand.
pub type MemberResult<T> = std::result::Result<T, MemberError>;

/// One HSM, as the engine sees it. Every method is safe to call from many threads at once.
pub trait Backend: Send + Sync {
    /// This member's id.
    fn id(&self) -> MemberId;
    /// A human-readable description (for logs and `hsmpool status`).
    fn describe(&self) -> String;
    /// Open an authentication context.
    fn open_session(&self) -> MemberResult<MemberSession>;
    /// Close it; session objects created through it are destroyed.
    fn close_session(&self, s: MemberSession);
    /// Log a session in. `username` is given by `C_LoginUser`; otherwise a PIN of the form
    /// `name:password` names the user.
    fn login(
        &self,
        s: MemberSession,
        role: Role,
        pin: &[u8],
        username: Option<&str>,
    ) -> MemberResult<()>;
    /// Log a session out.
    fn logout(&self, s: MemberSession) -> MemberResult<()>;
    /// `C_InitToken`.
    fn init_token(&self, so_pin: &[u8], label: &[u8; 32]) -> MemberResult<()>;
    /// `C_InitPIN`.
    fn init_pin(&self, s: MemberSession, pin: &[u8]) -> MemberResult<()>;
    /// `C_SetPIN`.
    fn set_pin(&self, s: MemberSession, old: &[u8], new: &[u8]) -> MemberResult<()>;
    /// Token state for `C_GetTokenInfo`.
    fn token_status(&self) -> MemberResult<TokenStatus>;
    /// `C_CreateObject`.
    fn create_object(&self, s: MemberSession, template: &[Attr]) -> MemberResult<MemberObject>;
    /// `C_CopyObject`.
    fn copy_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject>;
    /// `C_DestroyObject`.
    fn destroy_object(&self, s: MemberSession, o: MemberObject) -> MemberResult<()>;
    /// `C_GetAttributeValue`.
    fn get_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> MemberResult<Vec<AttrAnswer>>;
    /// `C_SetAttributeValue`.
    fn set_attributes(
        &self,
        s: MemberSession,
        o: MemberObject,
        template: &[Attr],
    ) -> MemberResult<()>;
    /// `C_GetObjectSize`.
    fn object_size(&self, s: MemberSession, o: MemberObject) -> MemberResult<u64>;
    /// Every visible object matching a template.
    fn find(&self, s: MemberSession, template: &[Attr]) -> MemberResult<Vec<MemberObject>>;
    /// Class, key type, size and storage flags of an object.
    fn key_meta(&self, s: MemberSession, o: MemberObject) -> MemberResult<KeyMeta>;
    /// Check that a key may be used for `usage` (`CKA_SIGN`, ...) with a mechanism.
    fn check_key(
        &self,
        s: MemberSession,
        usage: CK_ATTRIBUTE_TYPE,
        mech: &Mechanism,
        o: MemberObject,
    ) -> MemberResult<KeyMeta>;
    /// `C_GenerateKey`.
    fn generate_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        template: &[Attr],
    ) -> MemberResult<MemberObject>;
    /// `C_GenerateKeyPair`: (public, private).
    fn generate_key_pair(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        public: &[Attr],
        private: &[Attr],
    ) -> MemberResult<(MemberObject, MemberObject)>;
    /// `C_WrapKey`: `key` encrypted under `wrapping`.
    fn wrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        wrapping: MemberObject,
        key: MemberObject,
    ) -> MemberResult<Vec<u8>>;
    /// `C_UnwrapKey`: a new key from `wrapped`, decrypted under `unwrapping`.
    fn unwrap_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        unwrapping: MemberObject,
        wrapped: &[u8],
        template: &[Attr],
    ) -> MemberResult<MemberObject>;
    /// `C_DeriveKey`.
    fn derive_key(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        base: MemberObject,
        template: &[Attr],
    ) -> MemberResult<MemberObject>;
    /// Sign.
    fn sign(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
    ) -> MemberResult<Vec<u8>>;
    /// Verify.
    fn verify(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        input: SignInput,
        signature: &[u8],
    ) -> MemberResult<()>;
    /// Encrypt.
    fn encrypt(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
    ) -> MemberResult<Vec<u8>>;
    /// Encrypt into `out`, which holds at least the output length; returns the length written.
    /// The default encrypts and copies; a backend that can write in place overrides it.
    fn encrypt_into(
        &self,
        s: MemberSession,
        mech: &Mechanism,
        key: MemberObject,
        data: &[u8],
        out: &mut [u8],
    ) -> MemberResult<usize> {
        let ct = self.encrypt(s, mech, key, data)?;
        let dst = out
            .get_mut(..ct.len())
            .ok_or(MemberError::BufferTooSmall { needed: ct.len() })?;
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
    ) -> MemberResult<Zeroizing<Vec<u8>>>;
    /// A secret key's value, for `C_DigestKey` only.
    fn secret_value_for_digest(
        &self,
        s: MemberSession,
        key: MemberObject,
    ) -> MemberResult<Zeroizing<Vec<u8>>>;
    /// Random bytes.
    fn random(&self, out: &mut [u8]) -> MemberResult<()>;
    /// A cheap health probe: `Ok` when the member answers.
    fn ping(&self) -> MemberResult<()>;

    /// The mechanisms this member can do, as rows of the mechanism table narrowed to it (its
    /// functions and key sizes); `None`, the default, is the whole table (the simulator's
    /// members). The token offers what every member offers.
    fn mechanisms(&self) -> MemberResult<Option<Vec<MechRow>>> {
        Ok(None)
    }

    /// Whether this member logs in as `role` with a PIN of its own (a vendor token configured
    /// with `pin_from`/`so_pin_from`), not the one the application gives: it does not check the
    /// application's PIN, so the engine never lets it decide a login. Default false.
    fn own_pin(&self, _role: Role) -> bool {
        false
    }

    /// The mechanism that does RFC 5649 AES key wrap with padding on this member, by which
    /// token keys travel between members without a clone path (see the engine's
    /// `cluster::wrap`): `CKM_AES_KEY_WRAP_KWP` unless the member's module numbers it otherwise
    /// (SoftHSMv2 offers it as `CKM_AES_KEY_WRAP_PAD`).
    fn cluster_wrap_mechanism(&self) -> CK_MECHANISM_TYPE {
        cryptoki_sys::CKM_AES_KEY_WRAP_KWP
    }

    /// Whether a multi-part hash-and-sign operation should reach this member as the whole
    /// message (up to the engine's limit) rather than as a digest the engine made: a vendor
    /// module's key may allow the hash-and-sign mechanism only (`CKA_ALLOWED_MECHANISMS`), not
    /// the raw one a digest needs. Default false (the engine hashes as parts arrive).
    fn wants_whole_messages(&self) -> bool {
        false
    }

    /// The clone path, if this kind of member has one (see [`Replication`]). A member that
    /// cannot clone (a vendor module) answers `None` and the engine replicates through it
    /// another way.
    fn replication(&self) -> Option<&dyn Replication> {
        None
    }

    /// Users kept the same on every member, if this kind of member has them (see
    /// [`crate::users`]). A vendor module answers `None`: the engine then applies to it what
    /// PKCS #11 itself can say (`C_InitPIN`, `C_SetPIN`) and refuses the rest.
    fn users(&self) -> Option<&dyn Users> {
        None
    }

    /// This member's own audit log, if this kind of member keeps one (see [`crate::audit`]).
    fn audit(&self) -> Option<&dyn Audit> {
        None
    }

    /// Backups of everything this member holds, if this kind of member takes them (see
    /// [`crate::backup`]). A vendor module answers `None` (its vendor has its own backups).
    fn backup(&self) -> Option<&dyn Backup> {
        None
    }
}

/// `b`'s backup capability, or [`MemberError::Unsupported`] for a kind that has none.
pub fn backup(b: &dyn Backend) -> MemberResult<&dyn Backup> {
    b.backup().ok_or(MemberError::Unsupported {
        member: b.id(),
        what: "take backups (no backup capability)",
    })
}

/// `b`'s audit log, or [`MemberError::Unsupported`] for a kind that keeps none.
pub fn audit(b: &dyn Backend) -> MemberResult<&dyn Audit> {
    b.audit().ok_or(MemberError::Unsupported {
        member: b.id(),
        what: "keep an audit log (no audit capability)",
    })
}

/// `b`'s users capability, or [`MemberError::Unsupported`] for a kind that has none.
pub fn users(b: &dyn Backend) -> MemberResult<&dyn Users> {
    b.users().ok_or(MemberError::Unsupported {
        member: b.id(),
        what: "manage users (no users capability)",
    })
}

/// `b`'s clone path, or [`MemberError::Unsupported`] for a kind that has none: what the engine's
/// replication and the daemon's dispatch both call before a clone request.
pub fn replication(b: &dyn Backend) -> MemberResult<&dyn Replication> {
    b.replication().ok_or(MemberError::Unsupported {
        member: b.id(),
        what: "clone objects (no replication capability)",
    })
}

/// Optional capability: copying token objects between members of one cluster as sealed blobs
/// only members can open (the simulator's clone key; CloudHSM's cluster key). Room is left
/// beside it for users, audit and backups as traits of their own (`Users`, `Audit`, `Backup`).
pub trait Replication: Send + Sync {
    /// Token object `o` sealed for another member of the same cluster (a clone blob only
    /// members can open). Needs a logged-in session.
    fn export_clone(&self, s: MemberSession, o: MemberObject) -> MemberResult<Vec<u8>>;
    /// Store an object from a clone blob under its cluster-wide id (idempotent; replaces a
    /// different object of the same id).
    fn import_clone(&self, s: MemberSession, blob: &[u8]) -> MemberResult<MemberObject>;
    /// (id, digest) of every token object the member holds, by id.
    fn object_digests(&self, s: MemberSession) -> MemberResult<Vec<(MemberObject, [u8; 32])>>;
    /// Remove a token object whatever its owner (resynchronisation, roll-back). Absent is `Ok`.
    fn drop_replica(&self, s: MemberSession, o: MemberObject) -> MemberResult<()>;
}
