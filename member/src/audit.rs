//! The audit capability: every member keeps its own tamper-evident log of management events
//! (logins, user changes, key create, destroy, share, attribute change, wrap and unwrap,
//! replication), which an officer reads and anyone holding the member's public key verifies.
//!
//! # The log
//! Records are numbered from 1 with no gap. Each carries the hash of the one before (`prev`,
//! zero for record 1) and its own `hash`: SHA-256 over [`AuditRecord::hashed_bytes`]. Every
//! [`AuditLog::checkpoint_every`] records the member signs a checkpoint, Ed25519 over
//! [`checkpoint_message`] of that record's number and hash, with a key of its own that never
//! leaves it. Changing a byte of a record breaks its hash; removing one leaves a gap or breaks
//! the next record's `prev`; removing or forging a checkpoint is seen when the records past it
//! are there. (The records after the last checkpoint could be cut off unseen: the checkpoint
//! period bounds how many.)
//!
//! A record never holds a PIN, a password or key material: names, object ids, labels and
//! outcomes only.
//!
//! This file says what the bytes are; hashing and signing are the member's, verifying the
//! reader's (`hsmpool audit verify`): the contract does no cryptography.

use crate::backend::{MemberResult, MemberSession};

/// Records between two checkpoints.
pub const CHECKPOINT_EVERY: u64 = 16;

/// One management event, as logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its number, from 1, with no gap.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch (the member's clock).
    pub at_ms: u64,
    /// What happened (`login`, `user_create`, `key_destroy`, ...).
    pub kind: String,
    /// Who did it: the user logged in on the session, `-` when none.
    pub actor: String,
    /// What it was done to: a user name, an object id (hex), a role.
    pub subject: String,
    /// How it ended and anything else worth keeping (never a secret).
    pub detail: String,
    /// The hash of record `seq - 1` (zeros for record 1).
    pub prev: [u8; 32],
    /// SHA-256 of [`AuditRecord::hashed_bytes`].
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The bytes its `hash` is the SHA-256 of: a tag, then every field but `hash`, each
    /// length-prefixed (u64 big-endian), numbers big-endian.
    pub fn hashed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(96 + self.kind.len() + self.detail.len());
        let mut put = |part: &[u8]| {
            b.extend_from_slice(&(part.len() as u64).to_be_bytes());
            b.extend_from_slice(part);
        };
        put(b"hsmpool audit record v1");
        put(&self.seq.to_be_bytes());
        put(&self.at_ms.to_be_bytes());
        put(self.kind.as_bytes());
        put(self.actor.as_bytes());
        put(self.subject.as_bytes());
        put(self.detail.as_bytes());
        put(&self.prev);
        b
    }
}

/// The message a checkpoint signs: a tag, the record number and its hash.
pub fn checkpoint_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"hsmpool audit checkpoint v1".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// A signed checkpoint: record `seq` had hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheckpoint {
    /// The record it vouches for (a multiple of [`CHECKPOINT_EVERY`]).
    pub seq: u64,
    /// That record's hash.
    pub hash: [u8; 32],
    /// Ed25519 over [`checkpoint_message`], by the member's audit key.
    pub signature: Vec<u8>,
}

/// A page of one member's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditLog {
    /// The member's audit public key (Ed25519, 32 bytes).
    pub public_key: Vec<u8>,
    /// Records between two checkpoints.
    pub checkpoint_every: u64,
    /// The number of the last record the member holds (0: none).
    pub last_seq: u64,
    /// The records asked for, by number.
    pub records: Vec<AuditRecord>,
    /// The checkpoints of those records.
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// Optional capability: the member's own audit log.
pub trait Audit: Send + Sync {
    /// Up to `limit` records from number `from` on, with their checkpoints; an officer's
    /// session only (`CKR_USER_NOT_LOGGED_IN` otherwise).
    fn audit_log(&self, s: MemberSession, from: u64, limit: u32) -> MemberResult<AuditLog>;
}
