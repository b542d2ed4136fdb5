//! §5.13 Signing and MACing functions.

use cryptoki_sys::*;
use hsmpool_engine::types::OpKind;

use crate::entry::{not_supported, op_final, op_in_out, op_init, op_update_in};
use crate::guard::guard;

/// §5.13.1 C_SignInit: starts a signature or MAC (a NULL `p_mechanism` ends an active signing operation, else is `CKR_ARGUMENTS_BAD`).
///
/// # Safety
/// `p_mechanism` is NULL or points to a readable `CK_MECHANISM` whose parameter (and the buffers
/// it points to) are readable for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn C_SignInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_SignInit", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_init(OpKind::Sign, h_session, p_mechanism, Some(h_key)) }
    })
}

/// §5.13.2 C_Sign: signs single-part data, under the variable-length output rule (§5.2).
///
/// # Safety
/// `p_data` is NULL or points to `ul_data_len` readable bytes; `pul_signature_len` is NULL or
/// points to a readable and writable `CK_ULONG`; a non-NULL `p_signature` points to
/// `*pul_signature_len` writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_Sign", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Sign,
                false,
                h_session,
                p_data,
                ul_data_len,
                p_signature,
                pul_signature_len,
            )
        }
    })
}

/// §5.13.3 C_SignUpdate: continues a multi-part signature.
///
/// # Safety
/// `p_part` is NULL or points to `ul_part_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
) -> CK_RV {
    guard!("C_SignUpdate", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_update_in(OpKind::Sign, h_session, p_part, ul_part_len) }
    })
}

/// §5.13.4 C_SignFinal: finishes a multi-part signature, under the variable-length output rule
/// (§5.2).
///
/// # Safety
/// `pul_signature_len` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL
/// `p_signature` points to `*pul_signature_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(
    h_session: CK_SESSION_HANDLE,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_SignFinal", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_final(OpKind::Sign, h_session, p_signature, pul_signature_len) }
    })
}

/// §5.13.5 C_SignRecoverInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignRecoverInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_SignRecoverInit", { not_supported() })
}

/// §5.13.6 C_SignRecover: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignRecover(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_SignRecover", { not_supported() })
}
