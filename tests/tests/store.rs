//! The simulator's store: persistence across processes, no key bytes at rest, and tampering
//! refused.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, Fixture, Module, TRUE, USER_PIN};

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const AES_VALUE: [u8; 32] = [0xA7; 32];
const EC_SCALAR: [u8; 32] = [0x3C; 32];

fn find_label(m: &Module, h: CK_SESSION_HANDLE, label: &[u8]) -> Vec<CK_OBJECT_HANDLE> {
    let mut t = [attr_bytes(CKA_LABEL, label)];
    assert_eq!(call!(m, C_FindObjectsInit, h, t.as_mut_ptr(), 1), CKR_OK);
    let mut buf = [0 as CK_OBJECT_HANDLE; 16];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_FindObjects, h, buf.as_mut_ptr(), 16, &mut n),
        CKR_OK
    );
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
    buf[..n as usize].to_vec()
}

fn keep_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn run_child(test: &str, dir: &Path) -> String {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HSMPOOL_TEST_DIR", dir)
        .output()
        .expect("the test binary runs itself");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {test} failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child {test} did not run:\n{text}"
    );
    text
}

#[test]
#[ignore = "run by token_key_made_by_one_process_is_used_by_the_next"]
fn child_generate_token_key() {
    let dir = std::env::var("HSMPOOL_TEST_DIR").expect("set by parent");
    let fx = Fixture::at_path(Path::new(&dir));
    let m = fx.m;
    let h = m.fresh_user_session();
    let bits: CK_ULONG = 2048;
    let mut pub_t = [
        attr(CKA_MODULUS_BITS, &bits),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_LABEL, b"persist"),
        attr_bytes(CKA_ID, b"\x01\x02"),
    ];
    let mut priv_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_SIGN, &TRUE),
        attr_bytes(CKA_LABEL, b"persist"),
        attr_bytes(CKA_ID, b"\x01\x02"),
    ];
    let mut mm = CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mm,
            pub_t.as_mut_ptr(),
            4,
            priv_t.as_mut_ptr(),
            4,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    let mut n = vec![0u8; 256];
    let mut a = CK_ATTRIBUTE {
        type_: CKA_MODULUS,
        pValue: n.as_mut_ptr() as *mut c_void,
        ulValueLen: 256,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, p, &mut a, 1), CKR_OK);
    std::fs::write(Path::new(&dir).join("modulus.bin"), &n).expect("write modulus");
}

#[test]
#[ignore = "run by token_key_made_by_one_process_is_used_by_the_next"]
fn child_use_token_key() {
    let dir = std::env::var("HSMPOOL_TEST_DIR").expect("set by parent");
    let fx = Fixture::at_path(Path::new(&dir));
    let m = fx.m;
    let h = m.open(true);
    assert_eq!(
        m.login(h, CKU_USER, USER_PIN),
        CKR_OK,
        "the PIN set by the first process still works"
    );
    let found = find_label(m, h, b"persist");
    assert_eq!(found.len(), 2, "both halves of the pair are found");
    let class = CKO_PRIVATE_KEY;
    let mut t = [attr(CKA_CLASS, &class), attr_bytes(CKA_ID, b"\x01\x02")];
    assert_eq!(call!(m, C_FindObjectsInit, h, t.as_mut_ptr(), 2), CKR_OK);
    let mut k = 0;
    let mut cnt: CK_ULONG = 0;
    assert_eq!(call!(m, C_FindObjects, h, &mut k, 1, &mut cnt), CKR_OK);
    assert_eq!(cnt, 1);
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
    let data = b"signed by the second process";
    let mut mm = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    assert_eq!(call!(m, C_SignInit, h, &mut mm, k), CKR_OK);
    let mut sig = [0u8; 256];
    let mut len: CK_ULONG = 256;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    let n =
        std::fs::read(Path::new(&dir).join("modulus.bin")).expect("modulus from the first process");
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: &n[..],
        e: &[1u8, 0, 1][..],
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        data,
        &sig,
    )
    .expect("the key is the one the first process made");
}

#[test]
fn token_key_made_by_one_process_is_used_by_the_next() {
    let dir = keep_dir();
    run_child("child_generate_token_key", dir.path());
    run_child("child_use_token_key", dir.path());
}

fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.join("hsm0")).expect("store dir") {
        let p = entry.expect("entry").path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("hsm.sqlite3"))
        {
            all.extend(std::fs::read(&p).expect("read store file"));
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_key_value_at_rest_and_tampered_rows_are_refused() {
    let dir = keep_dir();
    let path = dir.path().to_path_buf();
    {
        let fx = Fixture::at_path(&path);
        let m = fx.m;
        let h = m.fresh_user_session();
        let sk = CKO_SECRET_KEY;
        let aes = CKK_AES;
        let mut t = [
            attr(CKA_CLASS, &sk),
            attr(CKA_KEY_TYPE, &aes),
            attr(CKA_TOKEN, &TRUE),
            attr_bytes(CKA_VALUE, &AES_VALUE),
            attr_bytes(CKA_LABEL, b"tamper-me"),
        ];
        let mut o = 0;
        assert_eq!(
            call!(m, C_CreateObject, h, t.as_mut_ptr(), 5, &mut o),
            CKR_OK
        );
        let pk = CKO_PRIVATE_KEY;
        let ec = CKK_EC;
        let mut e = [
            attr(CKA_CLASS, &pk),
            attr(CKA_KEY_TYPE, &ec),
            attr(CKA_TOKEN, &TRUE),
            attr_bytes(CKA_EC_PARAMS, P256_OID),
            attr_bytes(CKA_VALUE, &EC_SCALAR),
            attr_bytes(CKA_LABEL, b"untouched"),
        ];
        assert_eq!(
            call!(m, C_CreateObject, h, e.as_mut_ptr(), 6, &mut o),
            CKR_OK
        );
        let store = store_bytes(&path);
        assert!(
            contains(&store, b"tamper-me"),
            "the store does hold the (clear) label, so the scan is real"
        );
        assert!(
            !contains(&store, &AES_VALUE),
            "AES key value found in the store"
        );
        assert!(
            !contains(&store, &EC_SCALAR),
            "EC private scalar found in the store"
        );
        let mode = std::fs::metadata(path.join("hsm0/master.key"))
            .expect("master key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "master key file mode");
        drop(fx);
        // Behind the store's back: make the AES key non-sensitive and extractable.
        let db = rusqlite::Connection::open(path.join("hsm0/hsm.sqlite3")).expect("open store");
        let rows: Vec<(i64, Vec<u8>)> = db
            .prepare("SELECT id, attrs FROM objects")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let (id, mut attrs) = rows
            .into_iter()
            .find(|(_, a)| contains(a, b"tamper-me"))
            .expect("the row");
        let sensitive: Vec<u8> =
            [&CKA_SENSITIVE.to_be_bytes()[..], &1u32.to_be_bytes(), &[1]].concat();
        let pos = attrs
            .windows(sensitive.len())
            .position(|w| w == sensitive)
            .expect("CKA_SENSITIVE=true is stored");
        attrs[pos + sensitive.len() - 1] = 0;
        db.execute(
            "UPDATE objects SET attrs = ?1 WHERE id = ?2",
            rusqlite::params![attrs, id],
        )
        .expect("tamper");
        drop(db);
    }
    let fx = Fixture::at_path(&path);
    let m = fx.m;
    let h = m.open(true);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    assert!(
        find_label(m, h, b"tamper-me").is_empty(),
        "a tampered key must not come back (weaker or not)"
    );
    assert_eq!(
        find_label(m, h, b"untouched").len(),
        1,
        "untampered keys are still there"
    );
    let out = std::process::Command::new(hsmpool_tests::workspace_bin("hsmpool"))
        .args([
            "--data",
            path.join("hsm0").to_str().expect("UTF-8 path"),
            "store",
            "verify",
        ])
        .output()
        .expect("hsmpool runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "store verify fails on a tampered store: {text}"
    );
    assert!(text.contains("tampered object"), "{text}");
}

#[test]
#[ignore = "run by a_key_made_by_another_process_meanwhile_is_found"]
fn child_add_key_to_a_running_token() {
    let dir = std::env::var("HSMPOOL_TEST_DIR").expect("set by parent");
    let fx = Fixture::at_path(Path::new(&dir));
    let m = fx.m;
    let h = m.open(true);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    let class = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_VALUE, &[0x42; 32]),
        attr_bytes(CKA_LABEL, b"from-elsewhere"),
    ];
    let mut o = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 5, &mut o),
        CKR_OK
    );
}

#[test]
fn a_key_made_by_another_process_meanwhile_is_found() {
    let dir = keep_dir();
    let fx = Fixture::at_path(dir.path());
    let m = fx.m;
    let h = m.fresh_user_session();
    assert!(find_label(m, h, b"from-elsewhere").is_empty());
    // Another process (the test binary itself) adds a token key to the same store while this
    // one keeps it open.
    run_child("child_add_key_to_a_running_token", dir.path());
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(
        find_label(m, h, b"from-elsewhere").len(),
        1,
        "the other process's key is visible without re-initialising"
    );
    // And a user the administration tool adds meanwhile can log in.
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    let data = dir.path().join("hsm0");
    let out = std::process::Command::new(hsmpool_tests::workspace_bin("hsmpool"))
        .args([
            "--data",
            data.to_str().expect("UTF-8 path"),
            "user",
            "add",
            "bob",
        ])
        .env("HSMPOOL_SO_PIN", hsmpool_tests::raw::SO_PIN)
        .env("HSMPOOL_NEW_PIN", "bob-pin-1")
        .output()
        .expect("hsmpool runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(m.login(h, CKU_USER, "bob:bob-pin-1"), CKR_OK);
}
