//! hsmpool's vendor functions (include/hsmpool.h) through the built module: cluster status,
//! drain, cache counters; with the PKCS #11 calling rules; and the header compiles.

use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::raw::{attr_bytes, ec_token_pair, find, mech, sign, Module};
use hsmpool_tests::require_tool;
use hsmpool_tests::vendor::{Stats, Vendor};

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
    let (_, k) = ec_token_pair(&m, h, b"vendor-ec");
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
        // One call in eight per thread is timed (LATENCY_SAMPLE). The count is per thread, not
        // per member: a member that took a few calls of this one thread (with no other load,
        // a single thread's signatures all go to the first member, the least loaded by ties)
        // may have none timed, so the bound is per member and the count is over the cluster.
        let sampled = st.latency.iter().sum::<CK_ULONG>();
        assert!(
            sampled <= st.ops / 4 + 4,
            "{sampled} latency samples for {} calls: {s:?}",
            st.ops
        );
    }
    let ops: CK_ULONG = s.iter().map(|x| x.ops).sum();
    let sampled: CK_ULONG = s.iter().flat_map(|x| x.latency).sum();
    assert!(
        sampled >= ops / 16 && sampled <= ops / 4 + 4,
        "{sampled} latency samples for {ops} calls: {s:?}"
    );
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
