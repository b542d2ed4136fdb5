//! §5.6 Session management functions.

use std::ffi::c_void;

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::{SessionHandle, SlotId};

use crate::entry::{checked, not_supported};
use crate::guard::{guard, in_bytes, out_ref};

/// §5.6.1 C_OpenSession: opens a session; `pApplication` and `Notify` are accepted and never
/// used (we make no callbacks).
///
/// # Safety
/// `ph_session` is NULL or points to writable memory for a `CK_SESSION_HANDLE`.
#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot_id: CK_SLOT_ID,
    flags: CK_FLAGS,
    p_application: *mut c_void,
    notify: CK_NOTIFY,
    ph_session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard!("C_OpenSession", {
        // Accepted and never used: we make no callbacks.
        let _ = (p_application, notify);
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(ph_session) }?;
        out.set(engine.open_session(SlotId(slot_id), flags)?.0);
        Ok(CKR_OK)
    })
}

/// §5.6.2 C_CloseSession.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_CloseSession", {
        engine()?.close_session(SessionHandle(h_session))?;
        Ok(CKR_OK)
    })
}

/// §5.6.3 C_CloseAllSessions: closes every session of the application on the slot.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot_id: CK_SLOT_ID) -> CK_RV {
    guard!("C_CloseAllSessions", {
        engine()?.close_all_sessions(SlotId(slot_id))?;
        Ok(CKR_OK)
    })
}

/// §5.6.4 C_GetSessionInfo: slot, state, flags and device error of a session.
///
/// # Safety
/// `p_info` is NULL or points to writable memory for a `CK_SESSION_INFO`.
#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(
    h_session: CK_SESSION_HANDLE,
    p_info: *mut CK_SESSION_INFO,
) -> CK_RV {
    guard!("C_GetSessionInfo", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let out = checked(&engine, s, unsafe { out_ref(p_info) })?;
        let info = engine.session_info(s)?;
        out.set(CK_SESSION_INFO {
            slotID: info.slot.0,
            state: info.state,
            flags: info.flags,
            ulDeviceError: info.device_error,
        });
        Ok(CKR_OK)
    })
}

/// §5.6.5 C_SessionCancel: ends the session's operations named by `CKF_*` flags.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_SessionCancel(h_session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    guard!("C_SessionCancel", {
        engine()?.session_cancel(SessionHandle(h_session), flags)?;
        Ok(CKR_OK)
    })
}

/// §5.6.6 C_GetOperationState: not supported (operation state lives on the HSM members).
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_GetOperationState(
    h_session: CK_SESSION_HANDLE,
    p_operation_state: *mut CK_BYTE,
    pul_operation_state_len: *mut CK_ULONG,
) -> CK_RV {
    guard!("C_GetOperationState", { not_supported() })
}

/// §5.6.7 C_SetOperationState: not supported.
///
/// # Safety
/// None: no argument is read.
#[no_mangle]
#[allow(unused_variables)] // Unsupported: the arguments are deliberately unread.
pub unsafe extern "C" fn C_SetOperationState(
    h_session: CK_SESSION_HANDLE,
    p_operation_state: *mut CK_BYTE,
    ul_operation_state_len: CK_ULONG,
    h_encryption_key: CK_OBJECT_HANDLE,
    h_authentication_key: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard!("C_SetOperationState", { not_supported() })
}

/// §5.6.8 C_Login: logs a user type in with a PIN (never logged).
///
/// # Safety
/// `p_pin` is NULL or points to `ul_pin_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_Login(
    h_session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
) -> CK_RV {
    guard!("C_Login", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let pin = checked(&engine, s, unsafe { in_bytes(p_pin, ul_pin_len) })?;
        engine.login(s, user_type, pin, None)?;
        Ok(CKR_OK)
    })
}

/// §5.6.9 C_LoginUser: `C_Login` with a user name.
///
/// # Safety
/// `p_pin` and `p_username` are NULL or point to `ul_pin_len` / `ul_username_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_LoginUser(
    h_session: CK_SESSION_HANDLE,
    user_type: CK_USER_TYPE,
    p_pin: *mut CK_UTF8CHAR,
    ul_pin_len: CK_ULONG,
    p_username: *mut CK_UTF8CHAR,
    ul_username_len: CK_ULONG,
) -> CK_RV {
    guard!("C_LoginUser", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let args = unsafe {
            in_bytes(p_pin, ul_pin_len)
                .and_then(|pin| Ok((pin, in_bytes(p_username, ul_username_len)?)))
        };
        let (pin, username) = checked(&engine, s, args)?;
        engine.login(s, user_type, pin, Some(username))?;
        Ok(CKR_OK)
    })
}

/// §5.6.10 C_Logout.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_Logout(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_Logout", {
        engine()?.logout(SessionHandle(h_session))?;
        Ok(CKR_OK)
    })
}
