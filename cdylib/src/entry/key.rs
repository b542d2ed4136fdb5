//! §5.18 Key management functions.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::{ObjectHandle, SessionHandle};

use crate::entry::checked;
use crate::guard::{guard, in_bytes, in_mechanism, in_template, out_ref, OutBuf};

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

/// §5.18.3 C_WrapKey: encrypts a key under a wrapping key, under the variable-length output
/// rule (§5.2).
///
/// # Safety
/// `p_mechanism` is NULL or a readable `CK_MECHANISM`; `pul_wrapped_key_len` is NULL or a
/// readable and writable `CK_ULONG`; a non-NULL `p_wrapped_key` addresses `*pul_wrapped_key_len`
/// writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_wrapping_key: CK_OBJECT_HANDLE,
    h_key: CK_OBJECT_HANDLE,
    p_wrapped_key: *mut CK_BYTE,
    pul_wrapped_key_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_WrapKey", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_mechanism(p_mechanism)
                .and_then(|m| Ok((m, OutBuf::new(p_wrapped_key, pul_wrapped_key_len)?)))
        };
        let (mech, out) = checked(&engine, s, args)?;
        let wrapped =
            engine.wrap_key(s, mech, ObjectHandle(h_wrapping_key), ObjectHandle(h_key))?;
        out.put(&wrapped)
    })
}

/// §5.18.4 C_UnwrapKey: decrypts a wrapped key into a new key object. The output handle is
/// checked before anything is created.
///
/// # Safety
/// `p_mechanism` is NULL or a readable `CK_MECHANISM`; `p_wrapped_key` is NULL or addresses
/// `ul_wrapped_key_len` readable bytes; `p_template` is NULL or points to
/// `ul_attribute_count` readable `CK_ATTRIBUTE`s; `ph_key` is NULL or writable.
#[no_mangle]
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
    guard!("C_UnwrapKey", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_mechanism(p_mechanism).and_then(|m| {
                Ok((
                    m,
                    in_bytes(p_wrapped_key, ul_wrapped_key_len)?,
                    in_template(p_template, ul_attribute_count)?,
                    out_ref(ph_key)?,
                ))
            })
        };
        let (mech, wrapped, template, out) = checked(&engine, s, args)?;
        let h = engine.unwrap_key(s, mech, ObjectHandle(h_unwrapping_key), wrapped, template)?;
        out.set(h.0);
        Ok(CKR_OK)
    })
}

/// §5.18.5 C_DeriveKey: derives a new key from a base key. The output handle is checked before
/// anything is created.
///
/// # Safety
/// `p_mechanism` is NULL or a readable `CK_MECHANISM` (parameter and its buffers readable);
/// `p_template` is NULL or points to `ul_attribute_count` readable `CK_ATTRIBUTE`s; `ph_key` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn C_DeriveKey(
    h_session: CK_SESSION_HANDLE,
    p_mechanism: *mut CK_MECHANISM,
    h_base_key: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_attribute_count: CK_ULONG,
    ph_key: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_DeriveKey", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_mechanism(p_mechanism).and_then(|m| {
                Ok((
                    m,
                    in_template(p_template, ul_attribute_count)?,
                    out_ref(ph_key)?,
                ))
            })
        };
        let (mech, template, out) = checked(&engine, s, args)?;
        let h = engine.derive_key(s, mech, ObjectHandle(h_base_key), template)?;
        out.set(h.0);
        Ok(CKR_OK)
    })
}
