//! hsmpool's vendor functions (declared in `include/hsmpool.h`): cluster status and drain,
//! and sharing a key with another crypto user.
//! They follow the PKCS #11 calling rules: `CKR_CRYPTOKI_NOT_INITIALIZED` before
//! `C_Initialize`, `CKR_SLOT_ID_INVALID` for another slot, NULL pointers are
//! `CKR_ARGUMENTS_BAD`, and lists follow the §5.2 length rule.

use cryptoki_sys::*;
use hsmpool_engine::cluster::Health;
use hsmpool_engine::cluster::LATENCY_BUCKETS;
use hsmpool_engine::engine;
use hsmpool_engine::engine::SLOT;
use hsmpool_engine::Error;

use hsmpool_engine::types::{ObjectHandle, SessionHandle};

use crate::guard::{guard, in_bytes, out_ref, u64_to_ck, OutBuf};

/// `HSMPOOL_MEMBER_UP` and friends: a member's health, the codes of the engine's
/// [`Health`] (one enum from the engine to the header).
pub const HSMPOOL_MEMBER_UP: CK_ULONG = Health::Up as CK_ULONG;
/// Down: circuit open, or unreachable.
pub const HSMPOOL_MEMBER_DOWN: CK_ULONG = Health::Down as CK_ULONG;
/// Answering again, being brought level before it takes traffic.
pub const HSMPOOL_MEMBER_SYNCING: CK_ULONG = Health::Syncing as CK_ULONG;
/// Drained: healthy, receives replication, takes no balanced traffic.
pub const HSMPOOL_MEMBER_DRAINED: CK_ULONG = Health::Drained as CK_ULONG;
/// Refused: its token refused the application's login; out until the next login.
pub const HSMPOOL_MEMBER_REFUSED: CK_ULONG = Health::Refused as CK_ULONG;

/// One member's status and counters; the layout of `HSMPOOL_MEMBER_STATS` in hsmpool.h.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HSMPOOL_MEMBER_STATS {
    /// Position in the configuration.
    pub index: CK_ULONG,
    /// `HSMPOOL_MEMBER_*`.
    pub health: CK_ULONG,
    /// Session-pool re-establishments so far (its session objects live in one epoch).
    pub epoch: CK_ULONG,
    /// Calls in flight now.
    pub in_flight: CK_ULONG,
    /// Member sessions in its pool.
    pub pool_sessions: CK_ULONG,
    /// Calls that succeeded.
    pub ops: CK_ULONG,
    /// Calls that failed there (each then retried, failed over or returned).
    pub errors: CK_ULONG,
    /// Retries after a failure there.
    pub retries: CK_ULONG,
    /// Calls moved to another member after failing there.
    pub failovers: CK_ULONG,
    /// Re-authentications of its pool.
    pub reauths: CK_ULONG,
    /// Objects copied to it (replication, resynchronisation).
    pub replicated: CK_ULONG,
    /// Objects removed from it (resynchronisation, roll-back).
    pub dropped: CK_ULONG,
    /// Latency histogram: `latency[i]` counts calls under 2^i microseconds (the last bucket
    /// is open-ended).
    pub latency: [CK_ULONG; LATENCY_BUCKETS],
}

/// `HSMPOOL_GetMemberStats`: every member's status, §5.2 list rule (`pStats` NULL asks for
/// the count).
///
/// # Safety
/// `pul_count` is NULL or addresses a `CK_ULONG` (initialised when `p_stats` is not NULL);
/// a non-NULL `p_stats` addresses `*pul_count` writable `HSMPOOL_MEMBER_STATS`.
#[no_mangle]
pub unsafe extern "C" fn HSMPOOL_GetMemberStats(
    slot_id: CK_SLOT_ID,
    p_stats: *mut HSMPOOL_MEMBER_STATS,
    pul_count: *mut CK_ULONG,
) -> CK_RV {
    guard!("HSMPOOL_GetMemberStats", {
        let engine = engine()?;
        if slot_id != SLOT.0 {
            return Err(Error::SlotIdInvalid);
        }
        // SAFETY: relayed from this function's contract.
        let out = unsafe { OutBuf::new(p_stats, pul_count) }?;
        let stats = engine
            .member_status()
            .into_iter()
            .map(|m| {
                let mut latency = [0; LATENCY_BUCKETS];
                for (o, v) in latency.iter_mut().zip(m.latency) {
                    *o = u64_to_ck(v)?;
                }
                Ok(HSMPOOL_MEMBER_STATS {
                    index: u64_to_ck(m.index as u64)?,
                    health: u64_to_ck(m.health.code())?,
                    epoch: u64_to_ck(m.epoch)?,
                    in_flight: u64_to_ck(m.in_flight)?,
                    pool_sessions: u64_to_ck(m.pool_sessions as u64)?,
                    ops: u64_to_ck(m.ops)?,
                    errors: u64_to_ck(m.errors)?,
                    retries: u64_to_ck(m.retries)?,
                    failovers: u64_to_ck(m.failovers)?,
                    reauths: u64_to_ck(m.reauths)?,
                    replicated: u64_to_ck(m.replicated)?,
                    dropped: u64_to_ck(m.dropped)?,
                    latency,
                })
            })
            .collect::<hsmpool_engine::Result<Vec<_>>>()?;
        out.put(&stats)
    })
}

/// `HSMPOOL_GetCacheStats`: finds and key checks the engine answered from its caches.
///
/// # Safety
/// Each pointer is NULL or addresses a writable `CK_ULONG`.
#[no_mangle]
pub unsafe extern "C" fn HSMPOOL_GetCacheStats(
    pul_find_hits: *mut CK_ULONG,
    pul_key_hits: *mut CK_ULONG,
) -> CK_RV {
    guard!("HSMPOOL_GetCacheStats", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let finds = unsafe { out_ref(pul_find_hits) }?;
        // SAFETY: relayed from this function's contract.
        let keys = unsafe { out_ref(pul_key_hits) }?;
        let (f, k) = engine.cache_hits();
        let (f, k) = (u64_to_ck(f)?, u64_to_ck(k)?);
        finds.set(f);
        keys.set(k);
        Ok(CKR_OK)
    })
}

/// `HSMPOOL_DrainMember`: take member `member` out of the balancing (`drained` true) or put it
/// back; calls in flight finish, it keeps receiving replication.
#[no_mangle]
pub extern "C" fn HSMPOOL_DrainMember(
    slot_id: CK_SLOT_ID,
    member: CK_ULONG,
    drained: CK_BBOOL,
) -> CK_RV {
    guard!("HSMPOOL_DrainMember", {
        let engine = engine()?;
        if slot_id != SLOT.0 {
            return Err(Error::SlotIdInvalid);
        }
        let drained = match drained {
            CK_TRUE => true,
            CK_FALSE => false,
            _ => return Err(Error::ArgumentsBad("drained is not CK_TRUE or CK_FALSE")),
        };
        let index = usize::try_from(member).map_err(|_| Error::ArgumentsBad("no such member"))?;
        engine.drain_member(index, drained)?;
        Ok(CKR_OK)
    })
}

/// `HSMPOOL_ShareKey`: the owner of token key `h_key` (logged in as a crypto user on the
/// read-write session `h_session`) shares it with the crypto user named by `p_user` (UTF-8,
/// `ul_user_len` bytes), or, `share` `CK_FALSE`, stops sharing it, on every member.
///
/// # Safety
/// `p_user` is NULL (with `ul_user_len` 0) or addresses `ul_user_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn HSMPOOL_ShareKey(
    h_session: CK_SESSION_HANDLE,
    h_key: CK_OBJECT_HANDLE,
    p_user: *const CK_UTF8CHAR,
    ul_user_len: CK_ULONG,
    share: CK_BBOOL,
) -> CK_RV {
    guard!("HSMPOOL_ShareKey", {
        let engine = engine()?;
        // SAFETY: relayed from this function's contract.
        let user = unsafe { in_bytes(p_user, ul_user_len) }?;
        let user = std::str::from_utf8(user)
            .ok()
            .filter(|u| !u.is_empty())
            .ok_or(Error::ArgumentsBad("the user name is empty or not UTF-8"))?;
        let share = match share {
            CK_TRUE => true,
            CK_FALSE => false,
            _ => return Err(Error::ArgumentsBad("share is not CK_TRUE or CK_FALSE")),
        };
        engine.share_object(SessionHandle(h_session), ObjectHandle(h_key), user, share)?;
        Ok(CKR_OK)
    })
}
