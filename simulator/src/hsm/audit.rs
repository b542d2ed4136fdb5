//! Reading the audit log (see `hsmpool_member::audit`; appending is `common`'s, as every room
//! appends): an officer's page of records with their checkpoints and the member's public key.

use aws_lc_rs::signature::KeyPair;
use cryptoki_sys::*;
use hsmpool_member::audit::{AuditLog, CHECKPOINT_EVERY};

use crate::error::{SimError, SimResult};

use super::{Hsm, Role};

/// The most records one page carries (a page must fit one frame).
const PAGE_MAX: u32 = 1000;

impl Hsm {
    /// The audit capability: up to `limit` records from number `from` on.
    pub fn audit_log(&self, sess: u64, from: u64, limit: u32) -> SimResult<AuditLog> {
        self.fault_check()?; // fault hook
        match self.login_of(sess)? {
            Some((Role::Officer, _)) => {}
            _ => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        }
        let (last_seq, records, checkpoints) =
            self.store.audit_page(from.max(1), limit.min(PAGE_MAX))?;
        Ok(AuditLog {
            public_key: self.audit_key.public_key().as_ref().to_vec(),
            checkpoint_every: CHECKPOINT_EVERY,
            last_seq,
            records,
            checkpoints,
        })
    }
}
