//! §5.7 Object management functions.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::{ObjectHandle, SessionHandle};

use crate::entry::checked;
use crate::guard::{guard, in_template, out_array, out_ref, u64_to_ck, OutTemplate};

/// §5.7.1 C_CreateObject: creates an object from a template.
///
/// # Safety
/// `p_template` is NULL or points to `ul_count` readable `CK_ATTRIBUTE`s whose values are
/// readable; `ph_object` is NULL or points to writable memory for a handle.
#[no_mangle]
pub unsafe extern "C" fn C_CreateObject(
    h_session: CK_SESSION_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_CreateObject", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args =
            unsafe { in_template(p_template, ul_count).and_then(|t| Ok((t, out_ref(ph_object)?))) };
        let (template, out) = checked(&engine, s, args)?;
        out.set(engine.create_object(s, template)?.0);
        Ok(CKR_OK)
    })
}

/// §5.7.2 C_CopyObject: copies an object, changing the attributes in the template.
///
/// # Safety
/// As [`C_CreateObject`], with `ph_new_object` for the new handle.
#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    h_session: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
    ph_new_object: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_CopyObject", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_template(p_template, ul_count).and_then(|t| Ok((t, out_ref(ph_new_object)?)))
        };
        let (template, out) = checked(&engine, s, args)?;
        out.set(engine.copy_object(s, ObjectHandle(h_object), template)?.0);
        Ok(CKR_OK)
    })
}

/// §5.7.3 C_DestroyObject.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(
    h_session: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_DestroyObject", {
        engine()?.destroy_object(SessionHandle(h_session), ObjectHandle(h_object))?;
        Ok(CKR_OK)
    })
}

/// §5.7.4 C_GetObjectSize.
///
/// # Safety
/// `pul_size` is NULL or points to writable memory for a `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn C_GetObjectSize(
    h_session: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    pul_size: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_GetObjectSize", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let out = checked(&engine, s, unsafe { out_ref(pul_size) })?;
        out.set(u64_to_ck(engine.object_size(s, ObjectHandle(h_object))?)?);
        Ok(CKR_OK)
    })
}

/// §5.7.5 C_GetAttributeValue: answers every attribute of the template in place; returns
/// `CKR_ATTRIBUTE_SENSITIVE`, `CKR_ATTRIBUTE_TYPE_INVALID` or `CKR_BUFFER_TOO_SMALL` if any
/// attribute had that problem (see `OutTemplate::fill`).
///
/// # Safety
/// `p_template` is NULL or points to `ul_count` readable and writable `CK_ATTRIBUTE`s, each
/// non-NULL `pValue` pointing to `ulValueLen` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(
    h_session: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
) -> CK_RV {
    guard!("C_GetAttributeValue", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let template = checked(&engine, s, unsafe {
            OutTemplate::new(p_template, ul_count)
        })?;
        let answers = engine.get_attribute_value(s, ObjectHandle(h_object), &template.types())?;
        template.fill(&answers)
    })
}

/// §5.7.6 C_SetAttributeValue.
///
/// # Safety
/// `p_template` is NULL or points to `ul_count` readable `CK_ATTRIBUTE`s whose values are
/// readable.
#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    h_session: CK_SESSION_HANDLE,
    h_object: CK_OBJECT_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
) -> CK_RV {
    guard!("C_SetAttributeValue", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let template = checked(&engine, s, unsafe { in_template(p_template, ul_count) })?;
        engine.set_attribute_value(s, ObjectHandle(h_object), template)?;
        Ok(CKR_OK)
    })
}

/// §5.7.7 C_FindObjectsInit: starts a search for objects matching the template.
///
/// # Safety
/// `p_template` is NULL or points to `ul_count` readable `CK_ATTRIBUTE`s whose values are
/// readable.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(
    h_session: CK_SESSION_HANDLE,
    p_template: *mut CK_ATTRIBUTE,
    ul_count: CK_ULONG,
) -> CK_RV {
    guard!("C_FindObjectsInit", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let template = checked(&engine, s, unsafe { in_template(p_template, ul_count) })?;
        engine.find_objects_init(s, template)?;
        Ok(CKR_OK)
    })
}

/// §5.7.8 C_FindObjects: up to `ul_max_object_count` more handles; 0 in `*pul_object_count`
/// means the search is exhausted.
///
/// # Safety
/// `ph_object` is NULL or points to `ul_max_object_count` writable handles;
/// `pul_object_count` is NULL or points to writable memory for a `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    h_session: CK_SESSION_HANDLE,
    ph_object: *mut CK_OBJECT_HANDLE,
    ul_max_object_count: CK_ULONG,
    pul_object_count: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_FindObjects", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            out_array(ph_object, ul_max_object_count)
                .and_then(|a| Ok((a, out_ref(pul_object_count)?)))
        };
        let (handles, count) = checked(&engine, s, args)?;
        let found: Vec<CK_OBJECT_HANDLE> = engine
            .find_objects(s, handles.cap())?
            .into_iter()
            .map(|o| o.0)
            .collect();
        let n = crate::guard::len_to_ck(found.len())?;
        handles.write(&found)?;
        count.set(n);
        Ok(CKR_OK)
    })
}

/// §5.7.9 C_FindObjectsFinal.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_FindObjectsFinal", {
        engine()?.find_objects_final(SessionHandle(h_session))?;
        Ok(CKR_OK)
    })
}
