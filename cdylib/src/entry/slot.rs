//! §5.5 Slot and token management functions.

use std::ffi::c_void;

use cryptoki_sys::*;
use hsmpool_engine::types::{SessionHandle, SlotId};
use hsmpool_engine::{engine, Error};

use crate::entry::checked;
use crate::guard::{guard, in_bytes, out_ref, pad, version, OutBuf};

/// The size of `C_InitToken`'s `pLabel`: 32 blank-padded bytes, no NUL.
const LABEL_LEN: CK_ULONG = 32;

/// §5.5.1 C_GetSlotList: the slot ids (with a token only, if `token_present`), under the
/// variable-length output rule (§5.2).
///
/// # Safety
/// `pul_count` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL `p_slot_list`
/// points to `*pul_count` writable `CK_SLOT_ID`s.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    p_slot_list: *mut CK_SLOT_ID,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_GetSlotList", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { OutBuf::new(p_slot_list, pul_count) }?;
        let ids: Vec<CK_SLOT_ID> = engine
            .slot_list(token_present != CK_FALSE)
            .into_iter()
            .map(|s| s.0)
            .collect();
        out.put(&ids)
    })
}

/// §5.5.2 C_GetSlotInfo: slot description, manufacturer, flags and versions.
///
/// # Safety
/// `p_info` is NULL or points to writable memory for a `CK_SLOT_INFO`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_SLOT_INFO) -> CK_RV {
    guard!("C_GetSlotInfo", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(p_info) }?;
        let info = engine.slot_info(SlotId(slot_id))?;
        out.set(CK_SLOT_INFO {
            slotDescription: pad(&info.description),
            manufacturerID: pad(&info.manufacturer),
            flags: info.flags,
            hardwareVersion: version(info.hardware_version),
            firmwareVersion: version(info.firmware_version),
        });
        Ok(CKR_OK)
    })
}

/// §5.5.3 C_GetTokenInfo: the token's label, identity, flags, counters and clock.
///
/// # Safety
/// `p_info` is NULL or points to writable memory for a `CK_TOKEN_INFO`.
#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot_id: CK_SLOT_ID, p_info: *mut CK_TOKEN_INFO) -> CK_RV {
    guard!("C_GetTokenInfo", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(p_info) }?;
        let t = engine.token_info(SlotId(slot_id))?;
        out.set(CK_TOKEN_INFO {
            label: pad(&t.label),
            manufacturerID: pad(&t.manufacturer),
            model: pad(&t.model),
            serialNumber: pad(&t.serial),
            flags: t.flags,
            ulMaxSessionCount: t.max_session_count,
            ulSessionCount: t.session_count,
            ulMaxRwSessionCount: t.max_rw_session_count,
            ulRwSessionCount: t.rw_session_count,
            ulMaxPinLen: t.max_pin_len,
            ulMinPinLen: t.min_pin_len,
            ulTotalPublicMemory: t.total_public_memory,
            ulFreePublicMemory: t.free_public_memory,
            ulTotalPrivateMemory: t.total_private_memory,
            ulFreePrivateMemory: t.free_private_memory,
            hardwareVersion: version(t.hardware_version),
            firmwareVersion: version(t.firmware_version),
            utcTime: pad(&t.utc_time),
        });
        Ok(CKR_OK)
    })
}

/// §5.5.4 C_WaitForSlotEvent: slots never change, so `CKF_DONT_BLOCK` gets `CKR_NO_EVENT` and a
/// blocking wait (which would never return) `CKR_FUNCTION_NOT_SUPPORTED`.
///
/// # Safety
/// None beyond the C ABI: `p_slot` and `p_reserved` are only compared with NULL.
#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    p_slot: *mut CK_SLOT_ID,
    p_reserved: *mut c_void,
) -> CK_RV {
    guard!("C_WaitForSlotEvent", {
        drop(engine()?);
        if p_slot.is_null() || !p_reserved.is_null() {
            return Err(Error::ArgumentsBad("pSlot must be set and pReserved NULL"));
        }
        if flags & CKF_DONT_BLOCK != 0 {
            Ok(CKR_NO_EVENT)
        } else {
            Err(Error::FunctionNotSupported)
        }
    })
}

/// §5.5.5 C_GetMechanismList: the slot's mechanism types, under the variable-length output rule.
///
/// # Safety
/// `pul_count` is NULL or points to a readable and writable `CK_ULONG`; a non-NULL
/// `p_mechanism_list` points to `*pul_count` writable `CK_MECHANISM_TYPE`s.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(
    slot_id: CK_SLOT_ID,
    p_mechanism_list: *mut CK_MECHANISM_TYPE,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_GetMechanismList", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { OutBuf::new(p_mechanism_list, pul_count) }?;
        out.put(&engine.mechanism_list(SlotId(slot_id))?)
    })
}

/// §5.5.6 C_GetMechanismInfo: key sizes and flags of one mechanism.
///
/// # Safety
/// `p_info` is NULL or points to writable memory for a `CK_MECHANISM_INFO`.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slot_id: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    p_info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard!("C_GetMechanismInfo", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(p_info) }?;
        let info = engine.mechanism_info(SlotId(slot_id), type_)?;
        out.set(CK_MECHANISM_INFO {
            ulMinKeySize: info.min_key_size,
            ulMaxKeySize: info.max_key_size,
            flags: info.flags,
        });
        Ok(CKR_OK)
    })
}

/// §5.5.7 C_InitToken: initialises the token with an SO PIN and a 32-byte blank-padded label.
///
/// # Safety
/// `p_pin` is NULL or points to `ul_pin_len` readable bytes; `p_label` is NULL or points to 32
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_InitToken(
    slot_id: CK_SLOT_ID,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
    p_label: *mut CK_UTF8CHAR,
) -> CK_RV {
    guard!("C_InitToken", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let pin = unsafe { in_bytes(p_pin, ul_pin_len) }?;
        // SAFETY: relayed from this function's contract.
        let label = unsafe { in_bytes(p_label, LABEL_LEN) }?;
        engine.init_token(SlotId(slot_id), pin, label)?;
        Ok(CKR_OK)
    })
}

/// §5.5.8 C_InitPIN: the SO sets the normal user's PIN.
///
/// # Safety
/// `p_pin` is NULL or points to `ul_pin_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_InitPIN(
    h_session: CK_SESSION_HANDLE,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
) -> CK_RV {
    guard!("C_InitPIN", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let pin = checked(&engine, s, unsafe { in_bytes(p_pin, ul_pin_len) })?;
        engine.init_pin(s, pin)?;
        Ok(CKR_OK)
    })
}

/// §5.5.9 C_SetPIN: changes the logged-in user's PIN.
///
/// # Safety
/// `p_old_pin` and `p_new_pin` are NULL or point to `ul_old_len` / `ul_new_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_SetPIN(
    h_session: CK_SESSION_HANDLE,
    p_old_pin: *mut CK_UTF8CHAR,
    ul_old_len: CK_ULONG,
    p_new_pin: *mut CK_UTF8CHAR,
    ul_new_len: CK_ULONG,
) -> CK_RV {
    guard!("C_SetPIN", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let pins = unsafe {
            in_bytes(p_old_pin, ul_old_len)
                .and_then(|old| Ok((old, in_bytes(p_new_pin, ul_new_len)?)))
        };
        let (old, new) = checked(&engine, s, pins)?;
        engine.set_pin(s, old, new)?;
        Ok(CKR_OK)
    })
}
