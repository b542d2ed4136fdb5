//! §5.18 Key management functions.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::SessionHandle;

use crate::entry::{checked, not_supported};
use crate::guard::{guard, in_mechanism, in_template, out_ref};

/// §5.18.1 C_GenerateKey: generates a secret key.
///
/// # Safety
/// `p_mechanism` is NULL or a readable `CK_MECHANISM` (parameter readable for its length);
/// `p_template` is NULL or points to `ul_count` readable `CK_ATTRIBUTE`s whose values are
/// readable; `ph_key` is NULL or points to writable memory for a handle.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_GenerateKey", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_mechanism(p_mechanism)
                .and_then(|m| Ok((m, in_template(p_template, ul_count)?, out_ref(ph_key)?)))
        };
        let (mech, template, out) = checked(&engine, s, args)?;
        out.set(engine.generate_key(s, mech, template)?.0);
        Ok(CKR_OK)
    })
}

/// §5.18.2 C_GenerateKeyPair: generates a public/private key pair. Both output pointers are
/// checked before the engine is called, so a pair is never generated and then lost.
///
/// # Safety
/// As [`C_GenerateKey`], for both templates and both output handles.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    p_public_key_template: *mut CK_ATTRIBUTE,
    ul_public_key_attribute_count: CK_ULONG,
    p_private_key_template: *mut CK_ATTRIBUTE,
    ul_private_key_attribute_count: CK_ULONG,
    ph_public_key: *mut CK_OBJECT_HANDLE,
    ph_private_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_GenerateKeyPair", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_mechanism(p_mechanism).and_then(|m| {
                Ok((
                    m,
                    in_template(p_public_key_template, ul_public_key_attribute_count)?,
                    in_template(p_private_key_template, ul_private_key_attribute_count)?,
                    out_ref(ph_public_key)?,
                    out_ref(ph_private_key)?,
                ))
            })
        };
        let (mech, public, private, out_public, out_private) = checked(&engine, s, args)?;
        let (h_public, h_private) = engine.generate_key_pair(s, mech, public, private)?;
        out_public.set(h_public.0);
        out_private.set(h_private.0);
        Ok(CKR_OK)
    })
}

/// §5.18.3 C_WrapKey: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_WrapKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_wrapping_key: CK_OBJECT_HANDLE,
    h_key: CK_OBJECT_HANDLE,
    p_wrapped_key: *mut CK_BYTE,
    pul_wrapped_key_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_WrapKey", { not_supported() })
}

/// §5.18.4 C_UnwrapKey: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_UnwrapKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_unwrapping_key: CK_OBJECT_HANDLE,
    p_wrapped_key: *mut CK_BYTE,
    ul_wrapped_key_len: CK_ULONG,
    p_template: *mut CK_ATTRIBUTE,
    ul_attribute_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_UnwrapKey", { not_supported() })
}

/// §5.18.5 C_DeriveKey: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_DeriveKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_base_key: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_attribute_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_DeriveKey", { not_supported() })
}
