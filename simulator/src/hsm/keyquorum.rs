//! Quorum on one key (CloudHSM's key-usage and key-management quorum): the owner sets how many
//! approvals using and managing the key need; a crypto user associated with the key (its owner,
//! or for use a user it is shared with) asks for a token, the associated users sign it, and the
//! signed token, presented here, lets that user use or manage the key until the token expires.
//!
//! The checks themselves are in `objects` (`require_approval`, on every use and management
//! path). An approval is a row of the store (`key_approvals`), so every process over this store
//! sees it, and the token's nonce is its key, so a token is accepted once.

use cryptoki_sys::*;
use hsmpool_member::users::{
    key_token_params, Approval, KeyService, QuorumToken, CKR_HSMPOOL_QUORUM_REQUIRED,
    CKR_HSMPOOL_QUORUM_TOKEN_INVALID, CKR_HSMPOOL_QUORUM_TOO_HIGH,
};

use crate::error::{SimError, SimResult};
use crate::object::Object;
use crate::timing::OpClass;

use super::common::{key_quorum, now_ms, shared_names_of};
use super::users::outcome;
use super::{Hsm, Role};

impl Hsm {
    /// The crypto user logged in on `sess`, and key `id` if it may see it.
    fn user_and_key(&self, sess: u64, id: u64) -> SimResult<(String, std::sync::Arc<Object>)> {
        let me = match self.login_of(sess)? {
            Some((Role::User, me)) => me,
            Some(_) => return Err(SimError::Rv(CKR_ACTION_PROHIBITED)),
            None => return Err(SimError::Rv(CKR_USER_NOT_LOGGED_IN)),
        };
        let obj = self.get_visible(sess, id)?;
        if !obj.token || obj.key.is_none() {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        Ok((me, obj))
    }

    /// Whether `name` is one of the users associated with `o`: its owner, or a user its owner
    /// shared it with.
    fn associated(o: &Object, name: &str) -> bool {
        o.owner.as_deref() == Some(name) || Self::shared_with(o, name)
    }

    /// The users capability: the owner of key `id` sets the approvals `service` on it needs.
    pub fn set_key_quorum(&self, sess: u64, id: u64, service: KeyService, m: u32) -> SimResult<()> {
        self.fault_check()?; // fault hook
        let _timing = self.timed(|| (OpClass::Management, true)); // timing hook
        let (me, obj) = self.user_and_key(sess, id)?;
        // A public key is every crypto user's to see and verify with, anywhere: a quorum
        // protects private and secret keys.
        if obj.owner.as_deref() != Some(me.as_str()) || obj.class == CKO_PUBLIC_KEY {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        if m == 0 {
            return Err(SimError::Rv(CKR_ARGUMENTS_BAD));
        }
        self.require_approval(sess, &obj, KeyService::Manage)?;
        // A value no set of the key's users can meet would leave the key unusable (or
        // unmanageable) for good: at most the associated users that registered approval keys.
        let mut names = shared_names_of(&obj);
        names.push(me.clone());
        let able = self.users_with_approval_keys(&names);
        if m > 1 && m > able {
            let r: SimResult<()> = Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOO_HIGH));
            self.audit("key_quorum", &me, &format!("{id:016x}"), &outcome(&r));
            return r;
        }
        let mut attrs = obj.attrs.clone();
        if m == 1 {
            attrs.remove(&service.attribute());
        } else {
            attrs.insert(service.attribute(), (m as CK_ULONG).to_ne_bytes().to_vec());
        }
        if attrs != obj.attrs {
            self.replace_attrs(&obj, attrs)?;
        }
        self.audit(
            "key_quorum",
            &me,
            &format!("{id:016x}"),
            &format!("ok: {} needs {m} approvals", service.word()),
        );
        Ok(())
    }

    /// The users capability: a quorum token for `service` on key `id`, for the crypto user on
    /// `sess` (its owner; for use, also a user it is shared with).
    pub fn key_quorum_token(&self, sess: u64, id: u64, service: KeyService) -> SimResult<Vec<u8>> {
        self.fault_check()?; // fault hook
        self.catch_up();
        let (me, obj) = self.user_and_key(sess, id)?;
        let allowed = match service {
            KeyService::Use => Self::associated(&obj, &me),
            KeyService::Manage => obj.owner.as_deref() == Some(me.as_str()),
        };
        if !allowed {
            return Err(SimError::Rv(CKR_ACTION_PROHIBITED));
        }
        let token = Self::new_token(service.token_code(), &me, key_token_params(id), 0)?;
        self.audit(
            "quorum_token",
            &me,
            &format!("{id:016x}"),
            &format!("for: {} the key", service.word()),
        );
        Ok(token.encode())
    }

    /// The users capability: a signed key quorum token, presented by the user it names.
    pub fn approve_key(&self, sess: u64, id: u64, approval: &Approval) -> SimResult<()> {
        self.fault_check()?; // fault hook
        self.catch_up();
        let (me, obj) = self.user_and_key(sess, id)?;
        let done = self.approve_key_checked(&me, &obj, approval);
        let detail = match &done {
            Ok((service, approvers)) => format!(
                "ok: {} approved by {} until the token expires",
                service.word(),
                approvers.join(", ")
            ),
            Err(_) => outcome(&done),
        };
        self.audit("key_approve", &me, &format!("{id:016x}"), &detail);
        done.map(|_| ())
    }

    fn approve_key_checked(
        &self,
        me: &str,
        obj: &Object,
        approval: &Approval,
    ) -> SimResult<(KeyService, Vec<String>)> {
        let token = QuorumToken::decode(&approval.token)
            .ok_or(SimError::Rv(CKR_HSMPOOL_QUORUM_REQUIRED))?;
        let service = token
            .change
            .checked_sub(9)
            .and_then(KeyService::from_code)
            .ok_or(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID))?;
        if token.name != me || token.params != key_token_params(obj.id) {
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID));
        }
        Self::check_fresh(&token)?;
        let mut approvers = self.approvers_among(approval, |name, role| {
            role == Role::User && Self::associated(obj, name)
        });
        if approvers.len() < key_quorum(obj, service) as usize {
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_REQUIRED));
        }
        approvers.sort();
        let fresh = self.store.add_key_approval(
            &token.nonce,
            obj.id,
            me,
            service.code(),
            token.expires_ms,
            now_ms(),
        )?;
        if !fresh {
            // Presented before: a token is accepted once.
            return Err(SimError::Rv(CKR_HSMPOOL_QUORUM_TOKEN_INVALID));
        }
        Ok((service, approvers))
    }
}
