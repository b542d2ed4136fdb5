//! §5.20 Parallel function management functions: legacy, always `CKR_FUNCTION_NOT_PARALLEL`.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::SessionHandle;

use crate::guard::guard;

/// §5.20.1 C_GetFunctionStatus: `CKR_FUNCTION_NOT_PARALLEL` for a valid session.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionStatus(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_GetFunctionStatus", {
        engine()?.session_info(SessionHandle(h_session))?;
        Ok(CKR_FUNCTION_NOT_PARALLEL)
    })
}

/// §5.20.2 C_CancelFunction: `CKR_FUNCTION_NOT_PARALLEL` for a valid session.
///
/// # Safety
/// None beyond the C ABI: no pointer arguments.
#[no_mangle]
pub unsafe extern "C" fn C_CancelFunction(h_session: CK_SESSION_HANDLE) -> CK_RV {
    guard!("C_CancelFunction", {
        engine()?.session_info(SessionHandle(h_session))?;
        Ok(CKR_FUNCTION_NOT_PARALLEL)
    })
}
