//! §5.9, §5.11, §5.14, §5.16 Message-based functions (3.0): none is supported.

use std::ffi::c_void;

use cryptoki_sys::*;

use crate::entry::not_supported;
use crate::guard::guard;

/// §5.9.1 C_MessageEncryptInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageEncryptInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_MessageEncryptInit", { not_supported() })
}

/// §5.9.2 C_EncryptMessage: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_EncryptMessage(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_associated_data: *mut CK_BYTE,
    ul_associated_data_len: CK_ULONG,
    p_plaintext: *mut CK_BYTE,
    ul_plaintext_len: CK_ULONG,
    p_ciphertext: *mut CK_BYTE,
    pul_ciphertext_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_EncryptMessage", { not_supported() })
}

/// §5.9.3 C_EncryptMessageBegin: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_EncryptMessageBegin(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_associated_data: *mut CK_BYTE,
    ul_associated_data_len: CK_ULONG,
) -> CK_RV {
    guard!("C_EncryptMessageBegin", { not_supported() })
}

/// §5.9.4 C_EncryptMessageNext: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_EncryptMessageNext(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_plaintext_part: *mut CK_BYTE,
    ul_plaintext_part_len: CK_ULONG,
    p_ciphertext_part: *mut CK_BYTE,
    pul_ciphertext_part_len: *mut CK_ULONG,
    flags: CK_FLAGS,
) -> CK_RV {
    guard!("C_EncryptMessageNext", { not_supported() })
}

/// §5.9.5 C_MessageEncryptFinal: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageEncryptFinal(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_MessageEncryptFinal", { not_supported() })
}

/// §5.11.1 C_MessageDecryptInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageDecryptInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_MessageDecryptInit", { not_supported() })
}

/// §5.11.2 C_DecryptMessage: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DecryptMessage(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_associated_data: *mut CK_BYTE,
    ul_associated_data_len: CK_ULONG,
    p_ciphertext: *mut CK_BYTE,
    ul_ciphertext_len: CK_ULONG,
    p_plaintext: *mut CK_BYTE,
    pul_plaintext_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptMessage", { not_supported() })
}

/// §5.11.3 C_DecryptMessageBegin: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DecryptMessageBegin(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_associated_data: *mut CK_BYTE,
    ul_associated_data_len: CK_ULONG,
) -> CK_RV {
    guard!("C_DecryptMessageBegin", { not_supported() })
}

/// §5.11.4 C_DecryptMessageNext: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DecryptMessageNext(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_ciphertext_part: *mut CK_BYTE,
    ul_ciphertext_part_len: CK_ULONG,
    p_plaintext_part: *mut CK_BYTE,
    pul_plaintext_part_len: *mut CK_ULONG,
    flags: CK_FLAGS,
) -> CK_RV {
    guard!("C_DecryptMessageNext", { not_supported() })
}

/// §5.11.5 C_MessageDecryptFinal: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageDecryptFinal(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_MessageDecryptFinal", { not_supported() })
}

/// §5.14.1 C_MessageSignInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageSignInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_MessageSignInit", { not_supported() })
}

/// §5.14.2 C_SignMessage: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignMessage(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_SignMessage", { not_supported() })
}

/// §5.14.3 C_SignMessageBegin: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignMessageBegin(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
) -> CK_RV {
    guard!("C_SignMessageBegin", { not_supported() })
}

/// §5.14.4 C_SignMessageNext: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SignMessageNext(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    pul_signature_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_SignMessageNext", { not_supported() })
}

/// §5.14.5 C_MessageSignFinal: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageSignFinal(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_MessageSignFinal", { not_supported() })
}

/// §5.16.1 C_MessageVerifyInit: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageVerifyInit(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_MessageVerifyInit", { not_supported() })
}

/// §5.16.2 C_VerifyMessage: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_VerifyMessage(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyMessage", { not_supported() })
}

/// §5.16.3 C_VerifyMessageBegin: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_VerifyMessageBegin(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyMessageBegin", { not_supported() })
}

/// §5.16.4 C_VerifyMessageNext: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_VerifyMessageNext(
    h_session: CK_SESSION_HANDLE,
    p_parameter: *mut c_void,
    ul_parameter_len: CK_ULONG,
    p_data: *mut CK_BYTE,
    ul_data_len: CK_ULONG,
    p_signature: *mut CK_BYTE,
    ul_signature_len: CK_ULONG,
) -> CK_RV {
    guard!("C_VerifyMessageNext", { not_supported() })
}

/// §5.16.5 C_MessageVerifyFinal: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_MessageVerifyFinal(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_MessageVerifyFinal", { not_supported() })
}
