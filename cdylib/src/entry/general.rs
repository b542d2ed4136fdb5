//! §5.4 General-purpose functions: `C_Initialize`, `C_Finalize` and `C_GetInfo`. The other three,
//! `C_GetFunctionList`, `C_GetInterfaceList` and `C_GetInterface`, are in `crate::table`, next to
//! the lists they hand out.

use std::ffi::c_void;

use cryptoki_sys::*;
use hsmpool_engine::{engine, Error};

use crate::guard::{guard, init_args, out_ref, pad, version};

/// §5.4.1 C_Initialize: reads `CK_C_INITIALIZE_ARGS` (see `cdylib/README.md` for the mutex,
/// flag and `pReserved` rules) and starts the engine.
///
/// # Safety
/// `p_init_args` is NULL or points to a readable `CK_C_INITIALIZE_ARGS`; its `pReserved` may hold
/// any value (it is copied by the kernel, never dereferenced: see `copy_caller_cstr` in
/// `guard/init.rs`).
#[no_mangle]
pub unsafe extern "C" fn C_Initialize(p_init_args: *mut c_void) -> CK_RV {
    guard!("C_Initialize", {
        // SAFETY: relayed from this function's contract.
        let args = unsafe { init_args(p_init_args.cast::<CK_C_INITIALIZE_ARGS>().cast_const()) }?;
        register_fork_handler()?;
        hsmpool_engine::initialize(args)?;
        Ok(CKR_OK)
    })
}

/// The child side of `fork()`: tells the engine the process it belongs to is now another one.
/// It only bumps an atomic counter and takes a free lock, which is async-signal-safe.
extern "C" fn after_fork_in_child() {
    hsmpool_engine::after_fork_in_child();
}

/// Before `fork()`: vendor modules loaded as private copies finish their calls first.
extern "C" fn before_fork() {
    hsmpool_engine::before_fork();
}

/// The parent side of `fork()`: those copies go on.
extern "C" fn after_fork_in_parent() {
    hsmpool_engine::after_fork_in_parent();
}

/// Register [`before_fork`], [`after_fork_in_parent`] and [`after_fork_in_child`] with
/// `pthread_atfork`, once per process (the child of a fork inherits the registration).
fn register_fork_handler() -> Result<(), Error> {
    static REGISTERED: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    // SAFETY: pthread_atfork only records the three function pointers; ours are plain
    // `extern "C" fn()`s with no preconditions. glibc's pthread_atfork (from libc_nonshared.a,
    // linked into this library) registers it under this library's __dso_handle, so dlclose
    // unregisters it before the code goes away.
    let rc = *REGISTERED.get_or_init(|| unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    });
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::General(format!("pthread_atfork failed: {rc}")))
    }
}

/// §5.4.2 C_Finalize: stops the engine; `pReserved` must be NULL.
///
/// # Safety
/// None beyond the C ABI: `p_reserved` is only compared with NULL.
#[no_mangle]
pub unsafe extern "C" fn C_Finalize(p_reserved: *mut c_void) -> CK_RV {
    guard!("C_Finalize", {
        drop(engine()?);
        if !p_reserved.is_null() {
            return Err(Error::ArgumentsBad("pReserved must be NULL"));
        }
        hsmpool_engine::finalize()?;
        Ok(CKR_OK)
    })
}

/// §5.4.3 C_GetInfo: library information, Cryptoki version 3.0.
///
/// # Safety
/// `p_info` is NULL or points to writable memory for a `CK_INFO`.
#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(p_info: *mut CK_INFO) -> CK_RV {
    guard!("C_GetInfo", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let out = unsafe { out_ref(p_info) }?;
        let info = engine.library_info();
        out.set(CK_INFO {
            cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
            manufacturerID: pad(&info.manufacturer),
            flags: 0,
            libraryDescription: pad(&info.description),
            libraryVersion: version(info.version),
        });
        Ok(CKR_OK)
    })
}
