//! §5.15 Functions for verifying signatures and MACs.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::{OpKind, SessionHandle};

use crate::entry::{checked_op, not_supported, op_init, op_update_in};
use crate::guard::{guard, in_bytes};

/// §5.15.1 C_VerifyInit: starts a verification (a NULL `p_mechanism` ends the active operation of this kind, else is `CKR_ARGUMENTS_BAD`).
///
/// # Safety
/// `p_mechanism` is NULL or points to a readable `CK_MECHANISM` whose parameter (and the buffers
/// it points to) are readable for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_VerifyInit", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_init(OpKind::Verify, h_session, p_mechanism, Some(h_key)) }
    })
}

/// §5.15.2 C_Verify: verifies a single-part signature; `CKR_SIGNATURE_INVALID` if it does not.
///
/// # Safety
/// `p_data` and `p_signature` are NULL or point to `ul_data_len` / `ul_signature_len` readable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn C_Verify(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
) -> CK_RV {
    guard!("C_Verify", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_bytes(p_data, ul_data_len)
                .and_then(|d| Ok((d, in_bytes(p_signature, ul_signature_len)?)))
        };
        let (data, signature) = checked_op(&engine, s, OpKind::Verify, args)?;
        engine.verify(s, data, signature)?;
        Ok(CKR_OK)
    })
}

/// §5.15.3 C_VerifyUpdate: continues a multi-part verification.
///
/// # Safety
/// `p_part` is NULL or points to `ul_part_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyUpdate", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_update_in(OpKind::Verify, h_session, p_part, ul_part_len) }
    })
}

/// §5.15.4 C_VerifyFinal: finishes a multi-part verification; `CKR_SIGNATURE_INVALID` if the
/// signature does not verify.
///
/// # Safety
/// `p_signature` is NULL or points to `ul_signature_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(
    h_session: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyFinal", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let signature = checked_op(&engine, s, OpKind::Verify, unsafe {
            in_bytes(p_signature, ul_signature_len)
        })?;
        engine.verify_final(s, signature)?;
        Ok(CKR_OK)
    })
}

/// §5.15.5 C_VerifyRecoverInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_VerifyRecoverInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_VerifyRecoverInit", { not_supported() })
}

/// §5.15.6 C_VerifyRecover: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_VerifyRecover(
    h_session: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    pul_data_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyRecover", { not_supported() })
}
