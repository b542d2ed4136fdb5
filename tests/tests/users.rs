//! Named crypto users (the `name:password` PIN convention), key ownership between users, and
//! the administration tool's store check.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::process::Command;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, Fixture, Module, SO_PIN, TRUE, USER_PIN};
use hsmpool_tests::workspace_bin;

fn count_label(m: &Module, h: CK_SESSION_HANDLE, label: &[u8]) -> usize {
    let mut t = [attr_bytes(CKA_LABEL, label)];
    assert_eq!(call!(m, C_FindObjectsInit, h, t.as_mut_ptr(), 1), CKR_OK);
    let mut buf = [0 as CK_OBJECT_HANDLE; 8];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_FindObjects, h, buf.as_mut_ptr(), 8, &mut n),
        CKR_OK
    );
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
    n as usize
}

fn hsmpool(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(workspace_bin("hsmpool"))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("hsmpool runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn named_users_log_in_with_name_colon_password_and_own_their_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let fx = Fixture::at_path(dir.path());
        fx.m.fresh_user_session();
    }
    let data = dir.path().join("hsm0");
    let data = data.to_str().expect("UTF-8 path");
    let (ok, out) = hsmpool(
        &["--data", data, "user", "add", "alice"],
        &[
            ("HSMPOOL_SO_PIN", "wrong-so-pin"),
            ("HSMPOOL_NEW_PIN", "alice-pin-1"),
        ],
    );
    assert!(
        !ok && out.contains("crypto officer login"),
        "a wrong SO PIN is refused: {out}"
    );
    let (ok, out) = hsmpool(
        &["--data", data, "user", "add", "alice"],
        &[
            ("HSMPOOL_SO_PIN", SO_PIN),
            ("HSMPOOL_NEW_PIN", "alice-pin-1"),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = hsmpool(&["--data", data, "status"], &[]);
    assert!(ok && out.contains("alice (crypto user"), "{out}");

    let fx = Fixture::at_path(dir.path());
    let m = fx.m;
    let h = m.open(true);
    assert_eq!(m.login(h, CKU_USER, "alice:wrong"), CKR_PIN_INCORRECT);
    assert_eq!(m.login(h, CKU_USER, "alice:alice-pin-1"), CKR_OK);
    let class = CKO_DATA;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr_bytes(CKA_LABEL, b"alice-secret"),
    ];
    let mut o = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 4, &mut o),
        CKR_OK
    );
    assert_eq!(count_label(m, h, b"alice-secret"), 1);
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    // The default user cannot see alice's private object.
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    assert_eq!(count_label(m, h, b"alice-secret"), 0);
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    // C_LoginUser names her explicitly.
    let pin = b"alice-pin-1";
    assert_eq!(
        call!(
            m,
            C_LoginUser,
            h,
            CKU_USER,
            pin.as_ptr() as *mut u8,
            pin.len() as CK_ULONG,
            b"alice".as_ptr() as *mut u8,
            5
        ),
        CKR_OK
    );
    assert_eq!(count_label(m, h, b"alice-secret"), 1);

    // She shares it with bob through the vendor function; bob then sees it. Bad arguments get
    // the codes the header names.
    let (ok, out) = hsmpool(
        &["--data", data, "user", "add", "bob"],
        &[("HSMPOOL_SO_PIN", SO_PIN), ("HSMPOOL_NEW_PIN", "bob-pin-1")],
    );
    assert!(ok, "{out}");
    std::thread::sleep(std::time::Duration::from_millis(250));
    let v = hsmpool_tests::vendor::Vendor::new();
    assert_eq!(
        v.share_raw(h, o, std::ptr::null(), 3, CK_TRUE),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(v.share_raw(h, o, b"bob".as_ptr(), 3, 7), CKR_ARGUMENTS_BAD);
    assert_eq!(v.share(h, 0xdead, "bob", true), CKR_OBJECT_HANDLE_INVALID);
    assert_eq!(
        v.share(h, o, "nobody", true),
        hsmpool_member::users::CKR_HSMPOOL_USER_NOT_FOUND
    );
    assert_eq!(v.share(h, o, "bob", true), CKR_OK);
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_USER, "bob:bob-pin-1"), CKR_OK);
    assert_eq!(count_label(m, h, b"alice-secret"), 1, "shared with bob");
    assert_eq!(
        v.share(h, o, "bob", false),
        CKR_ACTION_PROHIBITED,
        "bob is not the owner"
    );
    let ro = m.open(false);
    assert_eq!(v.share(ro, o, "bob", false), CKR_SESSION_READ_ONLY);
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(v.share(h, o, "bob", false), CKR_USER_NOT_LOGGED_IN);
}

#[test]
fn store_verify_reports_a_clean_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let fx = Fixture::at_path(dir.path());
        fx.m.fresh_user_session();
    }
    let data = dir.path().join("hsm0");
    let (ok, out) = hsmpool(
        &["--data", data.to_str().expect("UTF-8"), "store", "verify"],
        &[],
    );
    assert!(
        ok && out.contains("every object and user verified"),
        "{out}"
    );
}
