//! hsmpool's vendor functions (include/hsmpool.h) through the built module: cluster status,
//! drain, cache counters; with the PKCS #11 calling rules; and the header compiles.

use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::raw::{attr, attr_bytes, find, mech, sign, Module, TRUE};
use hsmpool_tests::{call, require_tool};

const BUCKETS: usize = 24;

/// The C layout of `HSMPOOL_MEMBER_STATS`, written here from the header (the test compiles the
/// header and checks the size agrees).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    index: CK_ULONG,
    health: CK_ULONG,
    epoch: CK_ULONG,
    in_flight: CK_ULONG,
    pool_sessions: CK_ULONG,
    ops: CK_ULONG,
    errors: CK_ULONG,
    retries: CK_ULONG,
    failovers: CK_ULONG,
    reauths: CK_ULONG,
    replicated: CK_ULONG,
    dropped: CK_ULONG,
    latency: [CK_ULONG; BUCKETS],
}

type GetStats = unsafe extern "C" fn(CK_SLOT_ID, *mut Stats, *mut CK_ULONG) -> CK_RV;
type GetCache = unsafe extern "C" fn(*mut CK_ULONG, *mut CK_ULONG) -> CK_RV;
type Drain = unsafe extern "C" fn(CK_SLOT_ID, CK_ULONG, CK_BBOOL) -> CK_RV;

struct Vendor {
    lib: libloading::Library,
}

impl Vendor {
    fn new() -> Vendor {
        // SAFETY: loading our own module again only bumps its reference count.
        let lib = unsafe { libloading::Library::new(hsmpool_tests::module_path()) }.unwrap();
        Vendor { lib }
    }
    fn stats(&self, slot: CK_SLOT_ID, out: *mut Stats, count: *mut CK_ULONG) -> CK_RV {
        // SAFETY: the symbol has the header's signature; pointers are the test's own (or NULL,
        // which the module must refuse).
        unsafe {
            let f: libloading::Symbol<GetStats> =
                self.lib.get(b"HSMPOOL_GetMemberStats\0").unwrap();
            f(slot, out, count)
        }
    }
    fn all(&self) -> Vec<Stats> {
        let mut n: CK_ULONG = 0;
        assert_eq!(self.stats(0, ptr::null_mut(), &mut n), CKR_OK);
        let mut v = vec![Stats::default(); n as usize];
        assert_eq!(self.stats(0, v.as_mut_ptr(), &mut n), CKR_OK);
        v.truncate(n as usize);
        v
    }
    fn cache(&self, f: *mut CK_ULONG, k: *mut CK_ULONG) -> CK_RV {
        // SAFETY: as above.
        unsafe {
            let g: libloading::Symbol<GetCache> = self.lib.get(b"HSMPOOL_GetCacheStats\0").unwrap();
            g(f, k)
        }
    }
    fn drain(&self, slot: CK_SLOT_ID, member: CK_ULONG, on: CK_BBOOL) -> CK_RV {
        // SAFETY: as above.
        unsafe {
            let g: libloading::Symbol<Drain> = self.lib.get(b"HSMPOOL_DrainMember\0").unwrap();
            g(slot, member, on)
        }
    }
}

fn ec_pair(m: &Module, h: CK_SESSION_HANDLE) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let p256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut pub_t = [
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_EC_PARAMS, &p256),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_LABEL, b"vendor-ec"),
    ];
    let mut priv_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_SIGN, &TRUE),
        attr_bytes(CKA_LABEL, b"vendor-ec"),
    ];
    let (mut p, mut k) = (0, 0);
    let rv = call!(
        m,
        C_GenerateKeyPair,
        h,
        &mut mech(CKM_EC_KEY_PAIR_GEN),
        pub_t.as_mut_ptr(),
        pub_t.len() as CK_ULONG,
        priv_t.as_mut_ptr(),
        priv_t.len() as CK_ULONG,
        &mut p,
        &mut k
    );
    assert_eq!(rv, CKR_OK);
    (p, k)
}

#[test]
fn member_stats_drain_and_cache_counters_follow_the_pkcs11_rules() {
    let v = Vendor::new();
    let m = Module::load();
    let mut n: CK_ULONG = 0;
    assert_eq!(
        v.stats(0, ptr::null_mut(), &mut n),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(v.drain(0, 0, CK_TRUE), CKR_CRYPTOKI_NOT_INITIALIZED);

    let dir = tempfile::tempdir().unwrap();
    let mut toml = String::from("[cluster]\nprobe_interval_ms = 50\n");
    for i in 0..3 {
        toml.push_str(&format!(
            "[[member]]\nkind = \"embedded\"\ndata_dir = \"{}\"\npin_iterations = 1000\n",
            dir.path().join(format!("hsm{i}")).display()
        ));
    }
    assert_eq!(m.initialize_with(Some(&format!("toml={toml}"))), CKR_OK);

    // The list rule.
    assert_eq!(v.stats(0, ptr::null_mut(), &mut n), CKR_OK);
    assert_eq!(n, 3);
    let mut one = [Stats::default(); 1];
    let mut n1: CK_ULONG = 1;
    assert_eq!(v.stats(0, one.as_mut_ptr(), &mut n1), CKR_BUFFER_TOO_SMALL);
    assert_eq!(n1, 3);
    assert_eq!(v.stats(1, ptr::null_mut(), &mut n), CKR_SLOT_ID_INVALID);
    assert_eq!(
        v.stats(0, ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );

    let h = m.fresh_user_session();
    let (_, k) = ec_pair(&m, h);
    for i in 0..300u32 {
        sign(&m, h, &mut mech(CKM_ECDSA_SHA256), k, &i.to_be_bytes());
    }
    let s = v.all();
    assert_eq!(s.len(), 3);
    for (i, st) in s.iter().enumerate() {
        assert_eq!(st.index, i as CK_ULONG);
        assert_eq!(st.health, 0, "up: {st:?}");
        assert_eq!(st.pool_sessions, 4);
        assert!(st.ops > 0, "every member takes work: {s:?}");
        assert!(st.latency.iter().sum::<CK_ULONG>() >= st.ops);
    }
    // Replication put the key pair on the two other members.
    assert_eq!(s.iter().map(|x| x.replicated).sum::<CK_ULONG>(), 4);

    // Drained: healthy, no balanced traffic; back: traffic again.
    assert_eq!(v.drain(0, 0, CK_TRUE), CKR_OK);
    let before = v.all()[0];
    assert_eq!(before.health, 3);
    for i in 0..100u32 {
        sign(&m, h, &mut mech(CKM_ECDSA_SHA256), k, &i.to_be_bytes());
    }
    assert_eq!(
        v.all()[0].ops,
        before.ops,
        "a drained member takes no signing"
    );
    assert_eq!(v.drain(0, 0, CK_FALSE), CKR_OK);
    assert_eq!(v.all()[0].health, 0);
    assert_eq!(v.drain(0, 3, CK_TRUE), CKR_ARGUMENTS_BAD);
    assert_eq!(v.drain(0, 0, 7), CKR_ARGUMENTS_BAD);
    assert_eq!(v.drain(5, 0, CK_TRUE), CKR_SLOT_ID_INVALID);

    // The same find twice: the second is answered from the engine's cache.
    let (mut f0, mut k0) = (0, 0);
    assert_eq!(v.cache(&mut f0, &mut k0), CKR_OK);
    let mut t = [attr_bytes(CKA_LABEL, b"vendor-ec")];
    assert_eq!(find(&m, h, &mut t).len(), 2);
    assert_eq!(find(&m, h, &mut t).len(), 2);
    let (mut f1, mut k1) = (0, 0);
    assert_eq!(v.cache(&mut f1, &mut k1), CKR_OK);
    assert!(f1 > f0, "a repeated find is a cache hit");
    assert!(
        k0 >= 390 && k1 >= k0,
        "key checks of repeated C_SignInit are cache hits: {k0}"
    );
    assert_eq!(v.cache(ptr::null_mut(), &mut k1), CKR_ARGUMENTS_BAD);

    assert_eq!(m.finalize(), CKR_OK);
    assert_eq!(
        v.stats(0, ptr::null_mut(), &mut n),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
}

#[test]
fn the_header_compiles_and_agrees_on_the_layout() {
    let gcc = require_tool("gcc");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("h.c");
    std::fs::write(
        &src,
        format!(
            "#include <p11-kit/pkcs11.h>\n#include \"hsmpool.h\"\n\
             _Static_assert(sizeof(HSMPOOL_MEMBER_STATS) == {} , \"layout\");\n\
             _Static_assert(CKA_HSMPOOL_OBJECT_ID == 0x{:x}UL, \"attribute\");\n\
             int main(void) {{ CK_RV (*f)(CK_SLOT_ID, HSMPOOL_MEMBER_STATS *, CK_ULONG_PTR) = HSMPOOL_GetMemberStats; (void)f; return 0; }}\n",
            std::mem::size_of::<Stats>(),
            CKA_VENDOR_DEFINED | 0x4850_0001
        ),
    )
    .unwrap();
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../include");
    let out = std::process::Command::new(gcc)
        .args([
            "-std=c11",
            "-Wall",
            "-Werror",
            "-fsyntax-only",
            "-I/usr/include/p11-kit-1",
        ])
        .arg("-I")
        .arg(&include)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
