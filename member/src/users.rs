//! The users capability: crypto officers and crypto users kept the same on every member of a
//! cluster, as CloudHSM keeps them, without its "desynchronized" state.
//!
//! # The model
//! A member holds one record per user name: its role, its password hash (salted, slow), whether
//! a crypto officer locked it, and a `version` that every change raises. A deleted user leaves
//! a tombstone (no hash) with its version, so a member that missed the deletion learns it
//! instead of bringing the user back. Beside the record, the lockout counters `(resets,
//! failures)`: a failed login raises `failures`; a success after failures, an unlock and a
//! password reset raise `resets` and clear `failures`. The token's `epoch` rises with every
//! `C_InitToken`.
//!
//! # How members agree
//! A change is made on one member (which checks who asks and hashes the password), then its
//! record travels to the others as a blob sealed under the cluster's clone key: the hash
//! travels, never the password, and only members can open it. Merging is order-free, so any
//! member may be brought level from any other:
//! - a record from a newer epoch wipes the member's users and token objects first (it missed a
//!   `C_InitToken`); one from an older epoch is ignored;
//! - within an epoch, the record with the higher `(version, digest)` wins (two changes made at
//!   once in two processes converge on one of them);
//! - the lockout counters merge to the higher `(resets, failures)`, independently of the
//!   record, so a failure counted on one member is never lost and an unlock is never undone.

use zeroize::Zeroizing;

use crate::backend::{MemberObject, MemberResult, MemberSession};
use crate::meta::Role;

const VENDOR: cryptoki_sys::CK_RV = cryptoki_sys::CKR_VENDOR_DEFINED;

/// A user change names a user that exists already (`include/hsmpool.h`).
pub const CKR_HSMPOOL_USER_EXISTS: cryptoki_sys::CK_RV = VENDOR | 0x4850_0001;
/// A user change names a user that does not exist, or was deleted.
pub const CKR_HSMPOOL_USER_NOT_FOUND: cryptoki_sys::CK_RV = VENDOR | 0x4850_0002;
/// The change would leave the cluster without a crypto officer, or an officer would delete,
/// lock or demote itself.
pub const CKR_HSMPOOL_LAST_OFFICER: cryptoki_sys::CK_RV = VENDOR | 0x4850_0003;

/// A user who still owns token keys cannot be deleted (unless forced: the keys then become
/// unusable).
pub const CKR_HSMPOOL_USER_OWNS_KEYS: cryptoki_sys::CK_RV = VENDOR | 0x4850_0004;

/// The change needs a quorum of officers' approvals and has fewer than M valid ones from
/// distinct officers.
pub const CKR_HSMPOOL_QUORUM_REQUIRED: cryptoki_sys::CK_RV = VENDOR | 0x4850_0005;
/// The quorum token is malformed, for another change, or already used (the user or policy it
/// names has changed since it was made).
pub const CKR_HSMPOOL_QUORUM_TOKEN_INVALID: cryptoki_sys::CK_RV = VENDOR | 0x4850_0006;
/// The quorum token has expired (tokens live ten minutes).
pub const CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED: cryptoki_sys::CK_RV = VENDOR | 0x4850_0007;

/// A key's quorum value would exceed the crypto users who can approve its use or management
/// (its owner and the users it is shared with), or unsharing would leave fewer of them than it.
pub const CKR_HSMPOOL_QUORUM_TOO_HIGH: cryptoki_sys::CK_RV = VENDOR | 0x4850_0008;

/// The name of the record that holds the cluster's quorum policy (no user can have a name with
/// `:`).
pub const QUORUM_RECORD: &str = ":quorum";
/// The name of the record that holds the cluster certificates daemons accept clients under.
pub const TRUST_RECORD: &str = ":trust";
/// At most this many trusted cluster certificates (an old and a new one while the cluster
/// certificate is rotated, with room to spare).
pub const MAX_TRUST_ANCHORS: usize = 4;
/// How long a quorum token lives, in milliseconds.
pub const QUORUM_TOKEN_TTL_MS: u64 = 10 * 60 * 1000;

/// The name of a vendor return value of ours, for messages (`None` for any other).
pub fn vendor_rv_name(rv: cryptoki_sys::CK_RV) -> Option<&'static str> {
    Some(match rv {
        CKR_HSMPOOL_USER_EXISTS => "CKR_HSMPOOL_USER_EXISTS",
        CKR_HSMPOOL_USER_NOT_FOUND => "CKR_HSMPOOL_USER_NOT_FOUND",
        CKR_HSMPOOL_LAST_OFFICER => "CKR_HSMPOOL_LAST_OFFICER",
        CKR_HSMPOOL_USER_OWNS_KEYS => "CKR_HSMPOOL_USER_OWNS_KEYS",
        CKR_HSMPOOL_QUORUM_REQUIRED => "CKR_HSMPOOL_QUORUM_REQUIRED",
        CKR_HSMPOOL_QUORUM_TOKEN_INVALID => "CKR_HSMPOOL_QUORUM_TOKEN_INVALID",
        CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED => "CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED",
        CKR_HSMPOOL_QUORUM_TOO_HIGH => "CKR_HSMPOOL_QUORUM_TOO_HIGH",
        _ => return None,
    })
}

/// What one member holds of one user (no secret: the digest is keyed by the clone key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserState {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Raised by every change of the record.
    pub version: u64,
    /// A tombstone: the user was deleted.
    pub deleted: bool,
    /// Locked by a crypto officer (apart from failed logins).
    pub locked: bool,
    /// Raised by a success after failures, an unlock or a password reset.
    pub resets: u64,
    /// Consecutive failed logins since the last reset.
    pub failures: u32,
    /// An officer's registered quorum approval key (an uncompressed P-256 point), if any.
    pub approval_key: Vec<u8>,
    /// A digest of the record (not the counters), keyed by the cluster's clone key: equal on
    /// two members when they hold the same record.
    pub digest: [u8; 32],
}

impl UserState {
    /// The order in which records win (see the module documentation).
    pub fn record_rank(&self) -> (u64, [u8; 32]) {
        (self.version, self.digest)
    }
    /// The order in which lockout counters win.
    pub fn counter_rank(&self) -> (u64, u32) {
        (self.resets, self.failures)
    }
}

/// Every user record of one member (tombstones included), with its token epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserSet {
    /// Raised by every `C_InitToken`.
    pub epoch: u64,
    /// Consecutive failed logins that lock a user on this member.
    pub max_failures: u32,
    /// Approvals a quorum-protected change needs (1: none beyond the officer making it).
    pub quorum: u32,
    /// The users, by name.
    pub users: Vec<UserState>,
}

impl UserSet {
    /// The cluster certificates registered for daemons to accept clients under (the
    /// [`TRUST_RECORD`]; see [`UserChange::SetTrustAnchors`]): empty when none is.
    pub fn trust_anchors(&self) -> Vec<[u8; 32]> {
        self.users
            .iter()
            .find(|u| u.name == TRUST_RECORD && !u.deleted)
            .map(|u| {
                u.approval_key
                    .chunks_exact(32)
                    .filter_map(|c| c.try_into().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A crypto officer's change to one user. Its `Debug` never prints a password.
#[derive(Clone, PartialEq, Eq)]
pub enum UserChange {
    /// A new user (`CKR_HSMPOOL_USER_EXISTS` when one of that name exists).
    Create {
        /// Login name: 1 to 64 bytes, no `:`.
        name: String,
        /// Its role.
        role: Role,
        /// Its password.
        password: Zeroizing<Vec<u8>>,
    },
    /// A new password, set by an officer; it also unlocks.
    Password {
        /// Whose.
        name: String,
        /// The password.
        password: Zeroizing<Vec<u8>>,
    },
    /// Delete the user (a tombstone stays). Refused while the user owns token objects
    /// (`CKR_HSMPOOL_USER_OWNS_KEYS`) unless `force`: those objects then belong to no user that
    /// can log in (their owner becomes `NAME:deleted-VERSION`), so no one can use them.
    Delete {
        /// Whom.
        name: String,
        /// Delete although the user owns token objects.
        force: bool,
    },
    /// Lock the user out until an officer unlocks it.
    Lock {
        /// Whom.
        name: String,
    },
    /// Unlock (an officer lock, and failed logins).
    Unlock {
        /// Whom.
        name: String,
    },
    /// A new role.
    SetRole {
        /// Whose.
        name: String,
        /// The role.
        role: Role,
    },
    /// The officer making the change registers its quorum approval public key (an
    /// uncompressed P-256 point; empty removes it). Only for itself.
    SetApprovalKey {
        /// The officer (the one logged in).
        name: String,
        /// The key.
        public_key: Vec<u8>,
    },
    /// The approvals a quorum-protected change needs from now on (1: none).
    SetQuorum {
        /// M of "M of N".
        m: u32,
    },
    /// The cluster certificates a daemon member accepts clients under from now on (CloudHSM's
    /// mTLS trust anchors): the SHA-256 of each certificate's DER. A client whose presented
    /// chain holds none of them is refused at connection; empty: any chain to the customer
    /// CA, as the daemon's `--ca` alone says.
    SetTrustAnchors {
        /// SHA-256 of each registered certificate.
        anchors: Vec<[u8; 32]>,
    },
}

impl UserChange {
    /// The user it changes.
    pub fn name(&self) -> &str {
        match self {
            UserChange::Create { name, .. }
            | UserChange::Password { name, .. }
            | UserChange::Delete { name, .. }
            | UserChange::Lock { name }
            | UserChange::Unlock { name }
            | UserChange::SetRole { name, .. }
            | UserChange::SetApprovalKey { name, .. } => name,
            UserChange::SetQuorum { .. } => QUORUM_RECORD,
            UserChange::SetTrustAnchors { .. } => TRUST_RECORD,
        }
    }

    /// Its kind as a number (what a quorum token names).
    pub fn code(&self) -> u8 {
        match self {
            UserChange::Create { .. } => 1,
            UserChange::Password { .. } => 2,
            UserChange::Delete { .. } => 3,
            UserChange::Lock { .. } => 4,
            UserChange::Unlock { .. } => 5,
            UserChange::SetRole { .. } => 6,
            UserChange::SetApprovalKey { .. } => 7,
            UserChange::SetQuorum { .. } => 8,
            // 9 and 10 are a key's quorum tokens (`KeyService::token_code`).
            UserChange::SetTrustAnchors { .. } => 11,
        }
    }

    /// What a quorum token binds of the change beyond its kind and user: the role made or
    /// given, whether a deletion is forced, the quorum value set (never a password).
    pub fn params(&self) -> Vec<u8> {
        match self {
            UserChange::Create { role, .. } | UserChange::SetRole { role, .. } => {
                vec![role.code()]
            }
            UserChange::Delete { force, .. } => vec![u8::from(*force)],
            UserChange::SetQuorum { m } => m.to_be_bytes().to_vec(),
            UserChange::SetApprovalKey { public_key, .. } => public_key.clone(),
            UserChange::SetTrustAnchors { anchors } => anchors.concat(),
            _ => Vec::new(),
        }
    }
    /// A word for it, for logs and messages.
    pub fn verb(&self) -> &'static str {
        match self {
            UserChange::Create { .. } => "create",
            UserChange::Password { .. } => "set the password of",
            UserChange::Delete { .. } => "delete",
            UserChange::Lock { .. } => "lock",
            UserChange::Unlock { .. } => "unlock",
            UserChange::SetRole { .. } => "change the role of",
            UserChange::SetApprovalKey { .. } => "register the approval key of",
            UserChange::SetQuorum { .. } => "set the quorum of",
            UserChange::SetTrustAnchors { .. } => "set the trusted cluster certificates of",
        }
    }
}

impl std::fmt::Debug for UserChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb(), self.name())
    }
}

/// A quorum token: one change, on one version of the user (or policy) it names, for ten
/// minutes. Officers sign [`QuorumToken::encode`]; the change is accepted with M valid
/// signatures of distinct officers. Once the change is made the version moves on, so the token
/// is spent everywhere at once.
///
/// ```text
/// "HPQT" 1 | change code u8 | name len u8 | name | params len u8 | params
///   | target version u64 | issued ms u64 | expires ms u64 | nonce[16]
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumToken {
    /// [`UserChange::code`].
    pub change: u8,
    /// [`UserChange::name`].
    pub name: String,
    /// [`UserChange::params`].
    pub params: Vec<u8>,
    /// The version of the named record when the token was made (0: none).
    pub target_version: u64,
    /// When it was made, ms since the Unix epoch (the member's clock).
    pub issued_ms: u64,
    /// When it stops being accepted.
    pub expires_ms: u64,
    /// Makes each token unique.
    pub nonce: [u8; 16],
}

impl QuorumToken {
    /// Its bytes (what officers sign).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = b"HPQT\x01".to_vec();
        b.push(self.change);
        b.push(self.name.len().min(255) as u8);
        b.extend_from_slice(&self.name.as_bytes()[..self.name.len().min(255)]);
        b.push(self.params.len().min(255) as u8);
        b.extend_from_slice(&self.params[..self.params.len().min(255)]);
        b.extend_from_slice(&self.target_version.to_be_bytes());
        b.extend_from_slice(&self.issued_ms.to_be_bytes());
        b.extend_from_slice(&self.expires_ms.to_be_bytes());
        b.extend_from_slice(&self.nonce);
        b
    }

    /// A token read back (`None`: not one).
    pub fn decode(b: &[u8]) -> Option<QuorumToken> {
        let rest = b.strip_prefix(b"HPQT\x01")?;
        let (&change, rest) = rest.split_first()?;
        let (&n, rest) = rest.split_first()?;
        let name = std::str::from_utf8(rest.get(..usize::from(n))?)
            .ok()?
            .to_string();
        let rest = &rest[usize::from(n)..];
        let (&p, rest) = rest.split_first()?;
        let params = rest.get(..usize::from(p))?.to_vec();
        let rest = &rest[usize::from(p)..];
        if rest.len() != 24 + 16 {
            return None;
        }
        let num = |i: usize| u64::from_be_bytes(rest[i..i + 8].try_into().unwrap_or([0; 8]));
        Some(QuorumToken {
            change,
            name,
            params,
            target_version: num(0),
            issued_ms: num(8),
            expires_ms: num(16),
            nonce: rest[24..40].try_into().ok()?,
        })
    }
}

/// What a key's own quorum protects (CloudHSM's key-usage and key-management services). The
/// key's owner sets M for each ([`Users::set_key_quorum`]); the approvers are the crypto users
/// associated with the key (its owner and the users it is shared with) that registered an
/// approval key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyService {
    /// Using the key: every operation that starts with it (`C_SignInit`, `C_DecryptInit`,
    /// `C_WrapKey` with it as the wrapping key, `C_DeriveKey`, ...).
    Use,
    /// Managing it: destroying, copying, changing its attributes, wrapping it out, sharing and
    /// unsharing it, and changing its quorum values.
    Manage,
}

impl KeyService {
    /// Its number on the wire and in a quorum token's change code (`9 + n`).
    pub fn code(self) -> u8 {
        match self {
            KeyService::Use => 0,
            KeyService::Manage => 1,
        }
    }
    /// The service of a number (`None`: no such service).
    pub fn from_code(c: u8) -> Option<KeyService> {
        match c {
            0 => Some(KeyService::Use),
            1 => Some(KeyService::Manage),
            _ => None,
        }
    }
    /// The quorum token change code of this service on a key (after [`UserChange::code`]'s).
    pub fn token_code(self) -> u8 {
        9 + self.code()
    }
    /// The vendor attribute that holds the key's M for this service.
    pub fn attribute(self) -> cryptoki_sys::CK_ATTRIBUTE_TYPE {
        match self {
            KeyService::Use => crate::types::CKA_HSMPOOL_QUORUM_USE,
            KeyService::Manage => crate::types::CKA_HSMPOOL_QUORUM_MANAGE,
        }
    }
    /// A word for it.
    pub fn word(self) -> &'static str {
        match self {
            KeyService::Use => "use",
            KeyService::Manage => "manage",
        }
    }
}

/// What a key quorum token binds beyond its service and requester: the key's cluster-wide id.
pub fn key_token_params(object: u64) -> Vec<u8> {
    object.to_be_bytes().to_vec()
}

/// The officers' approvals that go with a quorum-protected change: the token and each
/// officer's signature of it (ECDSA P-256 with SHA-256, `r || s`). Empty: none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Approval {
    /// [`QuorumToken::encode`] of the token.
    pub token: Vec<u8>,
    /// (officer name, signature).
    pub signatures: Vec<(String, Vec<u8>)>,
}

/// A token object and who may use it, as an officer sees it (no value, no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedObject {
    /// The member's handle (the cluster-wide object id).
    pub id: u64,
    /// The crypto user who made it (`None`: made outside any user's login).
    pub owner: Option<String>,
    /// `CKA_CLASS`.
    pub class: cryptoki_sys::CK_OBJECT_CLASS,
    /// `CKA_KEY_TYPE`, for a key.
    pub key_type: Option<cryptoki_sys::CK_KEY_TYPE>,
    /// `CKA_LABEL`.
    pub label: Vec<u8>,
    /// `CKA_ID`.
    pub ck_id: Vec<u8>,
    /// The users its owner shared it with.
    pub shared_with: Vec<String>,
}

/// The users a [`crate::types::CKA_HSMPOOL_SHARED_WITH`] value names.
pub fn shared_names(value: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(value)
        .split('\n')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// The [`crate::types::CKA_HSMPOOL_SHARED_WITH`] value of these users (sorted, once each).
pub fn shared_value(names: &[String]) -> Vec<u8> {
    let mut v: Vec<&str> = names.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v.join("\n").into_bytes()
}

/// Optional capability: users kept the same on every member (see the module documentation).
pub trait Users: Send + Sync {
    /// Every user record with its counters, and the token epoch. Needs a logged-in session.
    fn user_states(&self, s: MemberSession) -> MemberResult<UserSet>;
    /// One user's record and counters sealed for another member of the same cluster (the
    /// password hash, never the password). Needs a logged-in session.
    fn export_user(&self, s: MemberSession, name: &str) -> MemberResult<Vec<u8>>;
    /// Merge a record sealed by another member (see the module documentation). Needs no
    /// login: the seal is the authority (only members hold the clone key), and merging only
    /// ever moves a member forward, so a replayed blob changes nothing. That is how a member
    /// that missed a user change while away is brought level before the user can log in to
    /// it.
    fn import_user(&self, s: MemberSession, blob: &[u8]) -> MemberResult<()>;
    /// A crypto officer's change, made here; the session must be logged in as an officer. A
    /// change the quorum policy protects needs `approval` (see [`QuorumToken`]).
    fn change_user(
        &self,
        s: MemberSession,
        change: &UserChange,
        approval: &Approval,
    ) -> MemberResult<()>;
    /// A quorum token for `change`, made by this member for an officer logged in on `s`.
    fn quorum_token(&self, s: MemberSession, change: &UserChange) -> MemberResult<Vec<u8>>;
    /// The owner of token object `o`, logged in on `s`, shares it with crypto user `user`
    /// (`share`) or stops sharing it. Anyone else: `CKR_ACTION_PROHIBITED` (or, where the
    /// object is not theirs to see, `CKR_OBJECT_HANDLE_INVALID`); no such crypto user:
    /// `CKR_HSMPOOL_USER_NOT_FOUND`.
    fn share_object(
        &self,
        s: MemberSession,
        o: MemberObject,
        user: &str,
        share: bool,
    ) -> MemberResult<()>;
    /// Every token object (of `owner` only, when given) with its owner and sharing, for an
    /// officer (`CKR_USER_NOT_LOGGED_IN` otherwise).
    fn owned_objects(
        &self,
        s: MemberSession,
        owner: Option<&str>,
    ) -> MemberResult<Vec<OwnedObject>>;
    /// The owner of token key `o`, logged in on `s`, sets the approvals `service` on it needs
    /// (1: none) to `m`. At most the users associated with the key (`CKR_HSMPOOL_QUORUM_TOO_HIGH`);
    /// changing it is key management, so a key whose management quorum is above 1 needs an
    /// approval in force for the owner ([`Users::approve_key`]).
    fn set_key_quorum(
        &self,
        s: MemberSession,
        o: MemberObject,
        service: KeyService,
        m: u32,
    ) -> MemberResult<()>;
    /// A quorum token for `service` on key `o`, for the crypto user logged in on `s` (its owner,
    /// or, for use, a user it is shared with). The users associated with the key sign it.
    fn key_quorum_token(
        &self,
        s: MemberSession,
        o: MemberObject,
        service: KeyService,
    ) -> MemberResult<Vec<u8>>;
    /// Present the signed token of [`Users::key_quorum_token`]: with M valid signatures of
    /// distinct associated users, the user logged in on `s` (the one the token names) may use or
    /// manage the key, as the token says, until the token expires. A token is accepted once.
    fn approve_key(
        &self,
        s: MemberSession,
        o: MemberObject,
        approval: &Approval,
    ) -> MemberResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values `include/hsmpool.h` gives C programs are these.
    #[test]
    fn a_quorum_token_reads_back_and_nothing_else_does() {
        let t = QuorumToken {
            change: 3,
            name: "alice".into(),
            params: vec![1],
            target_version: 7,
            issued_ms: 1_796_000_000_000,
            expires_ms: 1_796_000_600_000,
            nonce: [9; 16],
        };
        let b = t.encode();
        assert_eq!(QuorumToken::decode(&b), Some(t));
        for cut in 0..b.len() {
            assert_eq!(QuorumToken::decode(&b[..cut]), None, "{cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(QuorumToken::decode(&longer), None);
    }

    #[test]
    fn the_header_declares_the_same_return_values() {
        let header = include_str!("../../include/hsmpool.h");
        for (name, rv) in [
            ("CKR_HSMPOOL_USER_EXISTS", CKR_HSMPOOL_USER_EXISTS),
            ("CKR_HSMPOOL_USER_NOT_FOUND", CKR_HSMPOOL_USER_NOT_FOUND),
            ("CKR_HSMPOOL_LAST_OFFICER", CKR_HSMPOOL_LAST_OFFICER),
            ("CKR_HSMPOOL_USER_OWNS_KEYS", CKR_HSMPOOL_USER_OWNS_KEYS),
            ("CKR_HSMPOOL_QUORUM_REQUIRED", CKR_HSMPOOL_QUORUM_REQUIRED),
            (
                "CKR_HSMPOOL_QUORUM_TOKEN_INVALID",
                CKR_HSMPOOL_QUORUM_TOKEN_INVALID,
            ),
            (
                "CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED",
                CKR_HSMPOOL_QUORUM_TOKEN_EXPIRED,
            ),
            ("CKR_HSMPOOL_QUORUM_TOO_HIGH", CKR_HSMPOOL_QUORUM_TOO_HIGH),
        ] {
            let line = header
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} is not in hsmpool.h"));
            let low = line
                .split("0x")
                .nth(1)
                .and_then(|h| u64::from_str_radix(h.trim_end_matches("UL)"), 16).ok())
                .unwrap_or_else(|| panic!("{line}"));
            assert!(line.contains("CKR_VENDOR_DEFINED |"), "{line}");
            assert_eq!(
                rv,
                cryptoki_sys::CKR_VENDOR_DEFINED | low as cryptoki_sys::CK_RV
            );
            assert_eq!(vendor_rv_name(rv), Some(name));
        }
    }
}
