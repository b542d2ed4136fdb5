//! The engine's public surface: one method per PKCS #11 function, in Rust types.

#![allow(clippy::todo, unused_variables)]

use std::sync::Arc;

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_FLAGS, CK_MECHANISM_TYPE, CK_USER_TYPE};
use hsmpool_sim::types::{Attr, Mechanism};

use crate::error::Result;
use crate::types::*;

/// Arguments of `C_Initialize` that reach the engine.
#[derive(Clone, Debug, Default)]
pub struct InitArgs {
    /// The documented `pReserved` configuration string, if the caller passed one.
    pub config: Option<String>,
}

/// The engine: one per initialised process.
pub struct Engine {}

/// Initialise the process-wide engine (`C_Initialize`).
pub fn initialize(args: InitArgs) -> Result<()> {
    todo!()
}

/// Tear down the process-wide engine (`C_Finalize`).
pub fn finalize() -> Result<()> {
    todo!()
}

/// The process-wide engine, or `NotInitialized` (also in a forked child that has not called
/// `C_Initialize` again).
pub fn engine() -> Result<Arc<Engine>> {
    todo!()
}

impl Engine {
    /// `C_GetInfo`.
    pub fn library_info(&self) -> LibraryInfo { todo!() }
    /// `C_GetSlotList`.
    pub fn slot_list(&self, token_present: bool) -> Vec<SlotId> { todo!() }
    /// `C_GetSlotInfo`.
    pub fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> { todo!() }
    /// `C_GetTokenInfo`.
    pub fn token_info(&self, slot: SlotId) -> Result<TokenInfo> { todo!() }
    /// `C_GetMechanismList`.
    pub fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> { todo!() }
    /// `C_GetMechanismInfo`.
    pub fn mechanism_info(&self, slot: SlotId, mech: CK_MECHANISM_TYPE) -> Result<MechanismInfo> { todo!() }
    /// `C_InitToken`. `label` is the 32-byte blank-padded label.
    pub fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8]) -> Result<()> { todo!() }
    /// `C_InitPIN`.
    pub fn init_pin(&self, s: SessionHandle, pin: &[u8]) -> Result<()> { todo!() }
    /// `C_SetPIN`.
    pub fn set_pin(&self, s: SessionHandle, old: &[u8], new: &[u8]) -> Result<()> { todo!() }
    /// `C_OpenSession`.
    pub fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> { todo!() }
    /// `C_CloseSession`.
    pub fn close_session(&self, s: SessionHandle) -> Result<()> { todo!() }
    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot: SlotId) -> Result<()> { todo!() }
    /// `C_GetSessionInfo`.
    pub fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> { todo!() }
    /// `C_Login`. `username` is set by `C_LoginUser`.
    pub fn login(&self, s: SessionHandle, user_type: CK_USER_TYPE, pin: &[u8], username: Option<&[u8]>) -> Result<()> { todo!() }
    /// `C_Logout`.
    pub fn logout(&self, s: SessionHandle) -> Result<()> { todo!() }
    /// `C_CreateObject`.
    pub fn create_object(&self, s: SessionHandle, template: Vec<Attr>) -> Result<ObjectHandle> { todo!() }
    /// `C_CopyObject`.
    pub fn copy_object(&self, s: SessionHandle, o: ObjectHandle, template: Vec<Attr>) -> Result<ObjectHandle> { todo!() }
    /// `C_DestroyObject`.
    pub fn destroy_object(&self, s: SessionHandle, o: ObjectHandle) -> Result<()> { todo!() }
    /// `C_GetObjectSize`.
    pub fn object_size(&self, s: SessionHandle, o: ObjectHandle) -> Result<u64> { todo!() }
    /// `C_GetAttributeValue`: one answer per requested type, in order.
    pub fn get_attribute_value(&self, s: SessionHandle, o: ObjectHandle, types: &[CK_ATTRIBUTE_TYPE]) -> Result<Vec<AttrValue>> { todo!() }
    /// `C_SetAttributeValue`.
    pub fn set_attribute_value(&self, s: SessionHandle, o: ObjectHandle, template: Vec<Attr>) -> Result<()> { todo!() }
    /// `C_FindObjectsInit`.
    pub fn find_objects_init(&self, s: SessionHandle, template: Vec<Attr>) -> Result<()> { todo!() }
    /// `C_FindObjects`: at most `max` handles.
    pub fn find_objects(&self, s: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> { todo!() }
    /// `C_FindObjectsFinal`.
    pub fn find_objects_final(&self, s: SessionHandle) -> Result<()> { todo!() }

    /// `C_EncryptInit`, `C_DecryptInit`, `C_SignInit`, `C_VerifyInit`: `key` is required for
    /// these kinds.
    pub fn op_init(&self, s: SessionHandle, kind: OpKind, mech: Mechanism, key: ObjectHandle) -> Result<()> { todo!() }
    /// `C_DigestInit`.
    pub fn digest_init(&self, s: SessionHandle, mech: Mechanism) -> Result<()> { todo!() }
    /// Single-part `C_Encrypt`, `C_Decrypt`, `C_Sign`, `C_Digest`. `out` None asks for the
    /// length only; a too-small `out` gives `BufferTooSmall` and leaves the operation active.
    /// Returns the number of bytes written (or needed, for a query).
    pub fn op_single(&self, s: SessionHandle, kind: OpKind, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> { todo!() }
    /// `C_EncryptUpdate`, `C_DecryptUpdate` (with output), `C_SignUpdate`, `C_VerifyUpdate`,
    /// `C_DigestUpdate` (whose `out` is ignored and which return 0).
    pub fn op_update(&self, s: SessionHandle, kind: OpKind, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> { todo!() }
    /// `C_DigestKey`.
    pub fn digest_key(&self, s: SessionHandle, key: ObjectHandle) -> Result<()> { todo!() }
    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_SignFinal`, `C_DigestFinal`.
    pub fn op_final(&self, s: SessionHandle, kind: OpKind, out: Option<&mut [u8]>) -> Result<usize> { todo!() }
    /// `C_Verify`: single-part verification.
    pub fn verify(&self, s: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> { todo!() }
    /// `C_VerifyFinal`.
    pub fn verify_final(&self, s: SessionHandle, signature: &[u8]) -> Result<()> { todo!() }
    /// `C_SessionCancel` (3.0): ends the operations named by `CKF_*` flags (0 = all).
    pub fn session_cancel(&self, s: SessionHandle, flags: CK_FLAGS) -> Result<()> { todo!() }
    /// `C_GenerateKey`.
    pub fn generate_key(&self, s: SessionHandle, mech: Mechanism, template: Vec<Attr>) -> Result<ObjectHandle> { todo!() }
    /// `C_GenerateKeyPair`: (public, private).
    pub fn generate_key_pair(&self, s: SessionHandle, mech: Mechanism, public: Vec<Attr>, private: Vec<Attr>) -> Result<(ObjectHandle, ObjectHandle)> { todo!() }
    /// `C_SeedRandom`.
    pub fn seed_random(&self, s: SessionHandle, seed: &[u8]) -> Result<()> { todo!() }
    /// `C_GenerateRandom`.
    pub fn generate_random(&self, s: SessionHandle, out: &mut [u8]) -> Result<()> { todo!() }
}
