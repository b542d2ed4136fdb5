//! §5.12 Message digesting functions.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::{ObjectHandle, OpKind, SessionHandle};

use crate::entry::{op_final, op_in_out, op_init, op_update_in};
use crate::guard::guard;

/// §5.12.1 C_DigestInit: starts a digest (a NULL `p_mechanism` ends the active operation of this kind, else is `CKR_ARGUMENTS_BAD`).
///
/// # Safety
/// `p_mechanism` is NULL or points to a readable `CK_MECHANISM` whose parameter (and the buffers
/// it points to) are readable for the lengths given.
#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
) -> CK_RV {
    guard!("C_DigestInit", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_init(OpKind::Digest, h_session, p_mechanism, None) }
    })
}

/// §5.12.2 C_Digest: digests single-part data, under the variable-length output rule (§5.2).
///
/// # Safety
/// `p_data` is NULL or points to `ul_data_len` readable bytes; `pul_digest_len` is NULL or points
/// to a readable and writable `CK_ULONG`; a non-NULL `p_digest` points to `*pul_digest_len`
/// writable bytes (it may overlap the input).
#[no_mangle]
pub unsafe extern "C" fn C_Digest(
    h_session: CK_SESSION_HANDLE,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_digest: *mut CK_BYTE,
    pul_digest_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_Digest", {
        // SAFETY: relayed from this function's contract.
        unsafe {
            op_in_out(
                OpKind::Digest,
                false,
                h_session,
                p_data,
                ul_data_len,
                p_digest,
                pul_digest_len,
            )
        }
    })
}

/// §5.12.3 C_DigestUpdate: continues a multi-part digest.
///
/// # Safety
/// `p_part` is NULL or points to `ul_part_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_DigestUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
) -> CK_RV {
    guard!("C_DigestUpdate", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_update_in(OpKind::Digest, h_session, p_part, ul_part_len) }
    })
}

/// §5.12.4 C_DigestKey: continues a multi-part digest with a secret key's value.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_DigestKey(
    h_session: CK_SESSION_HANDLE,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_DigestKey", {
        engine()?.digest_key(SessionHandle(h_session), ObjectHandle(h_key))?;
        Ok(CKR_OK)
    })
}

/// §5.12.5 C_DigestFinal: finishes a multi-part digest, under the variable-length output rule
/// (§5.2).
///
/// # Safety
/// `pul_digest_len` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL `p_digest`
/// points to `*pul_digest_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_DigestFinal(
    h_session: CK_SESSION_HANDLE,
    p_digest: *mut CK_BYTE,
    pul_digest_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DigestFinal", {
        // SAFETY: relayed from this function's contract.
        unsafe { op_final(OpKind::Digest, h_session, p_digest, pul_digest_len) }
    })
}
