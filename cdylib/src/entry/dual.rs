//! §5.17 Dual-function cryptographic functions: none is supported.

use cryptoki_sys::*;

use crate::entry::not_supported;
use crate::guard::guard;

/// §5.17.1 C_DigestEncryptUpdate: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DigestEncryptUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DigestEncryptUpdate", { not_supported() })
}

/// §5.17.2 C_DecryptDigestUpdate: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DecryptDigestUpdate(
    h_session: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptDigestUpdate", { not_supported() })
}

/// §5.17.3 C_SignEncryptUpdate: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignEncryptUpdate(
    h_session: CK_SESSION_HANDLE,
    p_part: *mut CK_BYTE,
    ul_part_len: CK_ULONG,
    p_encrypted_part: *mut CK_BYTE,
    pul_encrypted_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_SignEncryptUpdate", { not_supported() })
}

/// §5.17.4 C_DecryptVerifyUpdate: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DecryptVerifyUpdate(
    h_session: CK_SESSION_HANDLE,
    p_encrypted_part: *mut CK_BYTE,
    ul_encrypted_part_len: CK_ULONG,
    p_part: *mut CK_BYTE,
    pul_part_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptVerifyUpdate", { not_supported() })
}
