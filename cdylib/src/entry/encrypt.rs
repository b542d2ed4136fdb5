//! §5.8 Encryption functions.

use cryptoki_sys::*;
use hsmpool_engine::types::OpKind;

use crate::entry::{op_final, op_in_out, op_init};
use crate::guard::guard;

/// §5.8.1 C_EncryptInit: starts an encryption (a NULL `p_mechanism` ends the active operation of this kind, else is `CKR_ARGUMENTS_BAD`).
///
/// # Safety
/// `p_mechanism` is NULL or points to a readable `CK_MECHANISM` whose parameter (and the buffers
/// it points to) are readable for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_EncryptInit", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_init(OpKind::Encrypt, h_session, p_mechanism, Some(h_key)) }
    })
}

/// §5.8.2 C_Encrypt: encrypts single-part data, under the variable-length output rule (§5.2).
///
/// # Safety
/// `p_data` is NULL or points to `ul_data_len` readable bytes; `pul_encrypted_data_len` is NULL or
/// points to a readable and writable `CK_ULONG`; a non-NULL `p_encrypted_data` points to
/// `*pul_encrypted_data_len` writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_encrypted_data: *mut CK_BYTE,
    pul_encrypted_data_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_Encrypt", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Encrypt,
                false,
                h_session,
                p_data,
                ul_data_len,
                p_encrypted_data,
                pul_encrypted_data_len,
            )
        }
    })
}

/// §5.8.3 C_EncryptUpdate: continues a multi-part encryption, under the variable-length output rule
/// (§5.2).
///
/// # Safety
/// `p_part` is NULL or points to `ul_part_len` readable bytes; `pul_encrypted_part_len` is NULL or
/// points to a readable and writable `CK_ULONG`; a non-NULL `p_encrypted_part` points to
/// `*pul_encrypted_part_len` writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_EncryptUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_EncryptUpdate", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Encrypt,
                true,
                h_session,
                p_part,
                ul_part_len,
                p_encrypted_part,
                pul_encrypted_part_len,
            )
        }
    })
}

/// §5.8.4 C_EncryptFinal: finishes a multi-part encryption, under the variable-length output rule
/// (§5.2).
///
/// # Safety
/// `pul_last_encrypted_part_len` is NULL or points to a readable and writable `CK_ULONG`; a
/// non-NULL `p_last_encrypted_part` points to `*pul_last_encrypted_part_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptFinal(
    h_session: CK_SESSION_HANDLE,
    p_last_encrypted_part: *mut CK_BYTE,
    pul_last_encrypted_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_EncryptFinal", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_final(
                OpKind::Encrypt,
                h_session,
                p_last_encrypted_part,
                pul_last_encrypted_part_len,
            )
        }
    })
}
