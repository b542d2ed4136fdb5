//! The `C_*` entry points, grouped as chapter 5 of the PKCS #11 3.0 base specification groups
//! them. Each body is one `guard!` call; pointers are turned into values by
//! the helpers in `guard` (`guard/*.rs`) only. `C_GetFunctionList`, `C_GetInterfaceList` and
//! `C_GetInterface` are in `crate::table`, with the lists they hand out.

// The exported names are the specification's (`C_Sign`), and so are the parameters, in snake case.
#![allow(non_snake_case)]

pub mod decrypt;
pub mod digest;
pub mod dual;
pub mod encrypt;
pub mod general;
pub mod key;
pub mod legacy;
pub mod message;
pub mod object;
pub mod random;
pub mod session;
pub mod sign;
pub mod slot;
pub mod vendor;
pub mod verify;

use cryptoki_sys::*;
use hsmpool_engine::types::{ObjectHandle, OpKind, SessionHandle};
use hsmpool_engine::{engine, Engine, Error};

use crate::guard::{in_bytes, in_mechanism, in_out, OutBuf, Result};

/// Argument errors give way to session-handle errors (§5.1.7: the errors of §5.1.2 take
/// precedence over those of §5.1.6). The handle is looked up only when the arguments are bad, so
/// the common path pays nothing for it.
pub(crate) fn checked<T>(engine: &Engine, s: SessionHandle, args: Result<T>) -> Result<T> {
    args.or_else(|e| {
        engine.session_info(s)?;
        Err(e)
    })
}

/// [`checked`] for the calls that feed an active operation (`C_Encrypt`, `C_SignUpdate`,
/// `C_VerifyFinal`, ...): any error ends that operation (§5.8.2 and its siblings: only
/// `CKR_BUFFER_TOO_SMALL` and a successful length query leave it active), including an argument
/// error found here, before the engine saw the call.
pub(crate) fn checked_op<T>(
    engine: &Engine,
    s: SessionHandle,
    kind: OpKind,
    args: Result<T>,
) -> Result<T> {
    args.or_else(|e| {
        engine.session_cancel(s, cancel_flag(kind))?;
        Err(e)
    })
}

/// The answer of every function listed as unsupported in `cdylib/README.md`:
/// `CKR_CRYPTOKI_NOT_INITIALIZED` before `C_Initialize`, `CKR_FUNCTION_NOT_SUPPORTED` after.
pub(crate) fn not_supported() -> Result<CK_RV> {
    drop(engine()?);
    Err(Error::FunctionNotSupported)
}

/// The `C_SessionCancel` flag naming an operation kind.
fn cancel_flag(kind: OpKind) -> CK_FLAGS {
    match kind {
        OpKind::Encrypt => CKF_ENCRYPT,
        OpKind::Decrypt => CKF_DECRYPT,
        OpKind::Digest => CKF_DIGEST,
        OpKind::Sign => CKF_SIGN,
        OpKind::Verify => CKF_VERIFY,
    }
}

/// The shared body of `C_EncryptInit`, `C_DecryptInit`, `C_DigestInit` (no key), `C_SignInit`
/// and `C_VerifyInit`.
///
/// A NULL mechanism ends an active operation of this kind (3.0, §5.8.1 and its siblings); with
/// none active it is `CKR_ARGUMENTS_BAD`, as in 2.40.
///
/// # Safety
/// `p_mechanism` is NULL or as [`in_mechanism`] requires.
pub(crate) unsafe fn op_init(
    kind: OpKind,
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *const CK_MECHANISM,
    key: Option<CK_OBJECT_HANDLE>,
) -> Result<CK_RV> {
    let engine = engine()?;
    let s = SessionHandle(h_session);
    if p_mechanism.is_null() {
        // §5.8.1 and siblings (3.0): a NULL mechanism ends the active operation of this kind;
        // with none active it is a bad argument.
        return if engine.end_op(s, kind)? {
            Ok(CKR_OK)
        } else {
            Err(Error::ArgumentsBad("NULL mechanism"))
        };
    }
    // SAFETY: relayed from this function's contract.
    let mech = checked(&engine, s, unsafe { in_mechanism(p_mechanism) })?;
    match key {
        Some(key) => engine.op_init(s, kind, mech, ObjectHandle(key))?,
        None => engine.digest_init(s, mech)?,
    }
    Ok(CKR_OK)
}

/// The shared body of the single-part `C_Encrypt`, `C_Decrypt`, `C_Digest` and `C_Sign`
/// (`update: false`) and of `C_EncryptUpdate` / `C_DecryptUpdate` (`update: true`): data in,
/// variable-length output out (§5.2).
///
/// # Safety
/// As [`in_out`].
pub(crate) unsafe fn op_in_out(
    kind: OpKind,
    update: bool,
    h_session: CK_SESSION_HANDLE,
    p_in: *const u8,
    ul_in_len: CK_ULONG,
    p_out: *mut u8,
    pul_out_len: *mut CK_ULONG,
) -> Result<CK_RV> {
    let engine = engine()?;
    let s = SessionHandle(h_session);
    // SAFETY: relayed from this function's contract.
    let (data, out) = checked_op(&engine, s, kind, unsafe {
        in_out(p_in, ul_in_len, p_out, pul_out_len)
    })?;
    out.fill_with(|buf| {
        if update {
            engine.op_update(s, kind, &data, buf)
        } else {
            engine.op_single(s, kind, &data, buf)
        }
    })
}

/// The shared body of `C_DigestUpdate`, `C_SignUpdate` and `C_VerifyUpdate`: data in, nothing out.
///
/// # Safety
/// As [`in_bytes`].
pub(crate) unsafe fn op_update_in(
    kind: OpKind,
    h_session: CK_SESSION_HANDLE,
    p_part: *const u8,
    ul_part_len: CK_ULONG,
) -> Result<CK_RV> {
    let engine = engine()?;
    let s = SessionHandle(h_session);
    // SAFETY: relayed from this function's contract.
    let part = checked_op(&engine, s, kind, unsafe { in_bytes(p_part, ul_part_len) })?;
    engine.op_update(s, kind, part, None)?;
    Ok(CKR_OK)
}

/// The shared body of `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal` and `C_SignFinal`.
///
/// # Safety
/// As [`OutBuf::new`].
pub(crate) unsafe fn op_final(
    kind: OpKind,
    h_session: CK_SESSION_HANDLE,
    p_out: *mut u8,
    pul_out_len: *mut CK_ULONG,
) -> Result<CK_RV> {
    let engine = engine()?;
    let s = SessionHandle(h_session);
    // SAFETY: relayed from this function's contract.
    let out = checked_op(&engine, s, kind, unsafe { OutBuf::new(p_out, pul_out_len) })?;
    out.fill_with(|buf| engine.op_final(s, kind, buf))
}
