//! §5.19 Random number generation functions.

use cryptoki_sys::*;
use hsmpool_engine::engine;
use hsmpool_engine::types::SessionHandle;

use crate::entry::checked;
use crate::guard::{guard, in_bytes, out_bytes};

/// §5.19.1 C_SeedRandom: mixes seed material into the token's generator.
///
/// # Safety
/// `p_seed` is NULL or points to `ul_seed_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(
    h_session: CK_SESSION_HANDLE,
    p_seed: *mut CK_BYTE,
    ul_seed_len: CK_ULONG,
) -> CK_RV {
    guard!("C_SeedRandom", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let seed = checked(&engine, s, unsafe { in_bytes(p_seed, ul_seed_len) })?;
        engine.seed_random(s, seed)?;
        Ok(CKR_OK)
    })
}

/// §5.19.2 C_GenerateRandom: fills exactly `ul_random_len` bytes.
///
/// # Safety
/// `random_data` is NULL or points to `ul_random_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(
    h_session: CK_SESSION_HANDLE,
    random_data: *mut CK_BYTE,
    ul_random_len: CK_ULONG,
) -> CK_RV {
    guard!("C_GenerateRandom", {
        let engine = engine()?;
        let s = SessionHandle(h_session);
        // SAFETY: relayed from this function's contract.
        let out = checked(&engine, s, unsafe { out_bytes(random_data, ul_random_len) })?;
        engine.generate_random(s, out)?;
        Ok(CKR_OK)
    })
}
