//! hsmpool's vendor functions (include/hsmpool.h), looked up in the built module.

use std::ptr;

use cryptoki_sys::*;

/// Latency buckets (`HSMPOOL_LATENCY_BUCKETS`).
pub const BUCKETS: usize = 24;

/// The C layout of `HSMPOOL_MEMBER_STATS`, written here from the header (the test compiles the
/// header and checks the size agrees).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)] // the fields are the header's, documented there
pub struct Stats {
    pub index: CK_ULONG,
    pub health: CK_ULONG,
    pub epoch: CK_ULONG,
    pub in_flight: CK_ULONG,
    pub pool_sessions: CK_ULONG,
    pub ops: CK_ULONG,
    pub errors: CK_ULONG,
    pub retries: CK_ULONG,
    pub failovers: CK_ULONG,
    pub reauths: CK_ULONG,
    pub replicated: CK_ULONG,
    pub dropped: CK_ULONG,
    pub latency: [CK_ULONG; BUCKETS],
}

type GetStats = unsafe extern "C" fn(CK_SLOT_ID, *mut Stats, *mut CK_ULONG) -> CK_RV;
type GetCache = unsafe extern "C" fn(*mut CK_ULONG, *mut CK_ULONG) -> CK_RV;
type Drain = unsafe extern "C" fn(CK_SLOT_ID, CK_ULONG, CK_BBOOL) -> CK_RV;
type Share = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_OBJECT_HANDLE,
    *const CK_UTF8CHAR,
    CK_ULONG,
    CK_BBOOL,
) -> CK_RV;

/// The module's vendor functions.
pub struct Vendor {
    lib: libloading::Library,
}

impl Default for Vendor {
    fn default() -> Self {
        Vendor::new()
    }
}

impl Vendor {
    /// Load the module's vendor symbols.
    pub fn new() -> Vendor {
        // SAFETY: loading our own module again only bumps its reference count.
        let lib = unsafe { libloading::Library::new(crate::module_path()) }.unwrap();
        Vendor { lib }
    }
    /// `HSMPOOL_GetMemberStats`.
    pub fn stats(&self, slot: CK_SLOT_ID, out: *mut Stats, count: *mut CK_ULONG) -> CK_RV {
        // SAFETY: the symbol has the header's signature; pointers are the test's own (or NULL,
        // which the module must refuse).
        unsafe {
            let f: libloading::Symbol<GetStats> =
                self.lib.get(b"HSMPOOL_GetMemberStats\0").unwrap();
            f(slot, out, count)
        }
    }
    /// Every member's stats (count query, then the list).
    pub fn all(&self) -> Vec<Stats> {
        let mut n: CK_ULONG = 0;
        assert_eq!(self.stats(0, ptr::null_mut(), &mut n), CKR_OK);
        let mut v = vec![Stats::default(); n as usize];
        assert_eq!(self.stats(0, v.as_mut_ptr(), &mut n), CKR_OK);
        v.truncate(n as usize);
        v
    }
    /// `HSMPOOL_GetCacheStats`.
    pub fn cache(&self, f: *mut CK_ULONG, k: *mut CK_ULONG) -> CK_RV {
        // SAFETY: as above.
        unsafe {
            let g: libloading::Symbol<GetCache> = self.lib.get(b"HSMPOOL_GetCacheStats\0").unwrap();
            g(f, k)
        }
    }
    /// `HSMPOOL_DrainMember`.
    pub fn drain(&self, slot: CK_SLOT_ID, member: CK_ULONG, on: CK_BBOOL) -> CK_RV {
        // SAFETY: as above.
        unsafe {
            let g: libloading::Symbol<Drain> = self.lib.get(b"HSMPOOL_DrainMember\0").unwrap();
            g(slot, member, on)
        }
    }
    /// `HSMPOOL_ShareKey`, with the user name as given (NULL and a length are the test's).
    pub fn share_raw(
        &self,
        s: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        user: *const u8,
        len: CK_ULONG,
        share: CK_BBOOL,
    ) -> CK_RV {
        // SAFETY: as above.
        unsafe {
            let g: libloading::Symbol<Share> = self.lib.get(b"HSMPOOL_ShareKey\0").unwrap();
            g(s, key, user, len, share)
        }
    }
    /// `HSMPOOL_ShareKey` with `user`.
    pub fn share(
        &self,
        s: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        user: &str,
        on: bool,
    ) -> CK_RV {
        let flag = if on { CK_TRUE } else { CK_FALSE };
        self.share_raw(s, key, user.as_ptr(), user.len() as CK_ULONG, flag)
    }
}
