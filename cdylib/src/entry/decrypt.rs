//! §5.10 Decryption functions.

use cryptoki_sys::*;
use hsmpool_engine::types::OpKind;

use crate::entry::{op_final, op_in_out, op_init};
use crate::guard::guard;

/// §5.10.1 C_DecryptInit: starts a decryption (a NULL `p_mechanism` ends the active operation of this kind, else is `CKR_ARGUMENTS_BAD`).
///
/// # Safety
/// `p_mechanism` is NULL or points to a readable `CK_MECHANISM` whose parameter (and the buffers
/// it points to) are readable for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_DecryptInit", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_init(OpKind::Decrypt, h_session, p_mechanism, Some(h_key)) }
    })
}

/// §5.10.2 C_Decrypt: decrypts single-part data, under the variable-length output rule (§5.2).
///
/// # Safety
/// `p_encrypted_data` is NULL or points to `ul_encrypted_data_len` readable bytes; `pul_data_len`
/// is NULL or points to a readable and writable `CK_ULONG`; a non-NULL `p_data` points to
/// `*pul_data_len` writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    h_session: CK_SESSION_HANDLE,
    p_encrypted_data: *mut CK_BYTE,
    ul_encrypted_data_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    pul_data_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_Decrypt", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Decrypt,
                false,
                h_session,
                p_encrypted_data,
                ul_encrypted_data_len,
                p_data,
                pul_data_len,
            )
        }
    })
}

/// §5.10.3 C_DecryptUpdate: continues a multi-part decryption, under the variable-length output
/// rule (§5.2).
///
/// # Safety
/// `p_encrypted_part` is NULL or points to `ul_encrypted_part_len` readable bytes; `pul_part_len`
/// is NULL or points to a readable and writable `CK_ULONG`; a non-NULL `p_part` points to
/// `*pul_part_len` writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_DecryptUpdate(
    h_session: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptUpdate", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Decrypt,
                true,
                h_session,
                p_encrypted_part,
                ul_encrypted_part_len,
                p_part,
                pul_part_len,
            )
        }
    })
}

/// §5.10.4 C_DecryptFinal: finishes a multi-part decryption, under the variable-length output rule
/// (§5.2).
///
/// # Safety
/// `pul_last_part_len` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL
/// `p_last_part` points to `*pul_last_part_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptFinal(
    h_session: CK_SESSION_HANDLE,
    p_last_part: *mut CK_BYTE,
    pul_last_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptFinal", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_final(OpKind::Decrypt, h_session, p_last_part, pul_last_part_len) }
    })
}
