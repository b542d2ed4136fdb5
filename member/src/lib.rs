//! hsmpool-member: what every member of an hsmpool cluster speaks, whatever kind of HSM it is
//! (the in-process simulator, an `hsmpool-hsmd` daemon, and next a vendor's PKCS #11 module):
//! attributes and their codec, mechanisms and their parameters, sign inputs, key metadata,
//! roles and token status, and the [`Backend`] trait every member kind implements with its
//! optional capabilities ([`Replication`], [`Users`], [`Audit`], [`Backup`]).
//!
//! It owns plain data and the encodings of it, and must never do I/O (reading the clock and
//! sleeping aside: [`clock`]), cryptography or anything that depends on one kind of HSM: the engine and every member kind depend on it, and it on
//! nothing of theirs.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backend;
pub mod backup;
pub mod ck;
pub mod clock;
pub mod curves;
pub mod mechanism;
pub mod meta;
pub mod types;
pub mod users;

pub use audit::{Audit, AuditCheckpoint, AuditLog, AuditRecord};
pub use backend::{
    Backend, MemberError, MemberId, MemberObject, MemberResult, MemberSession, Replication,
};
pub use backup::Backup;
pub use meta::{AttrAnswer, KeyMeta, Role, TokenStatus, MAX_PIN_LEN, MIN_PIN_LEN};
pub use users::{
    Approval, KeyService, OwnedObject, QuorumToken, UserChange, UserSet, UserState, Users,
};
