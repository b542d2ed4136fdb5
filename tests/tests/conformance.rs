//! Conformance over the built library's C ABI: every function in the list, and each error rule
//! with the exact CK_RV the PKCS #11 specification names.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

#[path = "conformance/cloudhsm.rs"]
mod cloudhsm;
#[path = "conformance/op_state.rs"]
mod op_state;
#[path = "conformance/templates.rs"]
mod templates;

use std::ffi::c_void;
use std::ptr;

#[path = "conformance/key_policy.rs"]
mod key_policy;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{
    attr, attr_bytes, find, mech, mech_param, sign, verify, Fixture, Module, FALSE, SO_PIN, TRUE,
    USER_PIN,
};

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn gen_rsa(
    m: &Module,
    h: CK_SESSION_HANDLE,
    token: bool,
    label: &str,
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let bits: CK_ULONG = 2048;
    let tok = if token { &TRUE } else { &FALSE };
    let mut pub_t = [
        attr(CKA_MODULUS_BITS, &bits),
        attr(CKA_TOKEN, tok),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_LABEL, label.as_bytes()),
    ];
    let mut priv_t = [
        attr(CKA_TOKEN, tok),
        attr(CKA_SIGN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr_bytes(CKA_LABEL, label.as_bytes()),
    ];
    let mut mm = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let (mut p, mut k) = (0, 0);
    let rv = call!(
        m,
        C_GenerateKeyPair,
        h,
        &mut mm,
        pub_t.as_mut_ptr(),
        pub_t.len() as CK_ULONG,
        priv_t.as_mut_ptr(),
        priv_t.len() as CK_ULONG,
        &mut p,
        &mut k
    );
    assert_eq!(rv, CKR_OK, "RSA key pair generation");
    (p, k)
}

fn gen_ec(m: &Module, h: CK_SESSION_HANDLE) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let mut pub_t = [attr_bytes(CKA_EC_PARAMS, P256_OID), attr(CKA_VERIFY, &TRUE)];
    let mut priv_t = [attr(CKA_SIGN, &TRUE)];
    let mut mm = mech(CKM_EC_KEY_PAIR_GEN);
    let (mut p, mut k) = (0, 0);
    let rv = call!(
        m,
        C_GenerateKeyPair,
        h,
        &mut mm,
        pub_t.as_mut_ptr(),
        2,
        priv_t.as_mut_ptr(),
        1,
        &mut p,
        &mut k
    );
    assert_eq!(rv, CKR_OK, "EC key pair generation");
    (p, k)
}

fn gen_aes(m: &Module, h: CK_SESSION_HANDLE, extra: &[CK_ATTRIBUTE]) -> CK_OBJECT_HANDLE {
    let len: CK_ULONG = 32;
    let mut t = vec![attr(CKA_VALUE_LEN, &len)];
    t.extend_from_slice(extra);
    let mut mm = mech(CKM_AES_KEY_GEN);
    let mut k = 0;
    assert_eq!(
        call!(
            m,
            C_GenerateKey,
            h,
            &mut mm,
            t.as_mut_ptr(),
            t.len() as CK_ULONG,
            &mut k
        ),
        CKR_OK,
        "AES key generation"
    );
    k
}

fn get_bytes(
    m: &Module,
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
) -> Vec<u8> {
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, o, &mut a, 1),
        CKR_OK,
        "length of attribute {ty:#x}"
    );
    let mut buf = vec![0u8; a.ulValueLen as usize];
    a.pValue = buf.as_mut_ptr() as *mut c_void;
    assert_eq!(
        call!(m, C_GetAttributeValue, h, o, &mut a, 1),
        CKR_OK,
        "value of attribute {ty:#x}"
    );
    buf.truncate(a.ulValueLen as usize);
    buf
}

// ----- general purpose ---------------------------------------------------------------------

#[test]
fn every_slot_of_both_function_lists_is_filled_and_versions_are_right() {
    let fx = Fixture::new();
    let m = fx.m;
    assert_eq!((m.f.version.major, m.f.version.minor), (3, 0));
    assert_eq!((m.f2.version.major, m.f2.version.minor), (2, 40));
    // Every field of both structs is an Option<fn>; compare their raw words with NULL.
    let words = |p: *const u8, n: usize| -> Vec<usize> {
        (0..n)
            .map(|i| unsafe {
                std::ptr::read_unaligned(
                    p.add(std::mem::size_of::<CK_VERSION>().next_multiple_of(8) + i * 8)
                        as *const usize,
                )
            })
            .collect()
    };
    let n3 = (std::mem::size_of::<CK_FUNCTION_LIST_3_0>() - 8) / 8;
    let n2 = (std::mem::size_of::<CK_FUNCTION_LIST>() - 8) / 8;
    assert!(n3 > n2 && n2 >= 68, "list sizes {n2} {n3}");
    for (i, w) in words(m.f as *const _ as *const u8, n3)
        .into_iter()
        .enumerate()
    {
        assert_ne!(w, 0, "3.0 list slot {i} is empty");
    }
    for (i, w) in words(m.f2 as *const _ as *const u8, n2)
        .into_iter()
        .enumerate()
    {
        assert_ne!(w, 0, "2.40 list slot {i} is empty");
    }
}

#[test]
fn interface_list_names_pkcs11_three_and_two_forty() {
    let fx = Fixture::new();
    let m = fx.m;
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetInterfaceList, ptr::null_mut(), &mut n),
        CKR_OK
    );
    assert_eq!(n, 2);
    let mut small: CK_ULONG = 1;
    let mut list = [CK_INTERFACE {
        pInterfaceName: ptr::null_mut(),
        pFunctionList: ptr::null_mut(),
        flags: 0,
    }; 2];
    assert_eq!(
        call!(m, C_GetInterfaceList, list.as_mut_ptr(), &mut small),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, 2);
    assert_eq!(
        call!(m, C_GetInterfaceList, list.as_mut_ptr(), &mut n),
        CKR_OK
    );
    for i in list {
        let name = unsafe { std::ffi::CStr::from_ptr(i.pInterfaceName as *const _) };
        assert_eq!(name.to_str().expect("ASCII name"), "PKCS 11");
    }
    let mut iface: *mut CK_INTERFACE = ptr::null_mut();
    let mut v = CK_VERSION {
        major: 2,
        minor: 40,
    };
    let mut name = *b"PKCS 11\0";
    assert_eq!(
        call!(m, C_GetInterface, name.as_mut_ptr(), &mut v, &mut iface, 0),
        CKR_OK
    );
    let fl = unsafe { &*((*iface).pFunctionList as *const CK_FUNCTION_LIST) };
    assert_eq!((fl.version.major, fl.version.minor), (2, 40));
    let mut bad = *b"PKCS 12\0";
    assert_eq!(
        call!(
            m,
            C_GetInterface,
            bad.as_mut_ptr(),
            ptr::null_mut(),
            &mut iface,
            0
        ),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(
            m,
            C_GetInterface,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            0
        ),
        CKR_ARGUMENTS_BAD
    );
}

#[test]
fn before_initialize_every_call_is_not_initialized() {
    let fx = Fixture::new();
    let m = fx.m;
    assert_eq!(m.finalize(), CKR_OK);
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetInfo, &mut info), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetSlotList, CK_FALSE, ptr::null_mut(), &mut n),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    let mut h = 0;
    assert_eq!(
        call!(
            m,
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(call!(m, C_CloseSession, 1), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut b = [0u8; 4];
    assert_eq!(
        call!(m, C_GenerateRandom, 1, b.as_mut_ptr(), 4),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(
        call!(m, C_SignInit, 1, ptr::null_mut(), 1),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(m.finalize(), CKR_CRYPTOKI_NOT_INITIALIZED);
    // And it comes back.
    assert_eq!(m.initialize_with(Some(&fx.config_arg())), CKR_OK);
    assert_eq!(call!(m, C_GetInfo, &mut info), CKR_OK);
}

#[test]
fn initialize_validates_its_arguments() {
    let fx = Fixture::new();
    let m = fx.m;
    assert_eq!(
        m.initialize_with(Some(&fx.config_arg())),
        CKR_CRYPTOKI_ALREADY_INITIALIZED
    );
    assert_eq!(m.finalize(), CKR_OK);
    unsafe extern "C" fn create(_: *mut *mut c_void) -> CK_RV {
        CKR_OK
    }
    unsafe extern "C" fn other(_: *mut c_void) -> CK_RV {
        CKR_OK
    }
    // Mutex callbacks without CKF_OS_LOCKING_OK: we cannot use them.
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create),
        DestroyMutex: Some(other),
        LockMutex: Some(other),
        UnlockMutex: Some(other),
        flags: 0,
        pReserved: ptr::null_mut(),
    };
    assert_eq!(
        call!(m, C_Initialize, &mut args as *mut _ as *mut c_void),
        CKR_CANT_LOCK
    );
    // Some callbacks but not all.
    args.LockMutex = None;
    args.flags = CKF_OS_LOCKING_OK;
    assert_eq!(
        call!(m, C_Initialize, &mut args as *mut _ as *mut c_void),
        CKR_ARGUMENTS_BAD
    );
    // pReserved that is not our config string.
    let junk = *b"something else\0";
    let mut args2 = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: 0,
        pReserved: junk.as_ptr() as *mut c_void,
    };
    assert_eq!(
        call!(m, C_Initialize, &mut args2 as *mut _ as *mut c_void),
        CKR_ARGUMENTS_BAD
    );
    // Our config string naming a file that does not exist: a config error.
    assert_eq!(
        m.initialize_with(Some("conf=/nonexistent/hsmpool.toml")),
        CKR_GENERAL_ERROR
    );
    // Callbacks with CKF_OS_LOCKING_OK are fine (we use our own locks).
    args.LockMutex = Some(other);
    let conf = std::ffi::CString::new(format!("hsmpool:{}", fx.config_arg())).expect("no NUL");
    args.pReserved = conf.as_ptr() as *mut c_void;
    assert_eq!(
        call!(m, C_Initialize, &mut args as *mut _ as *mut c_void),
        CKR_OK
    );
    let mut junk_ptr = 1u8;
    assert_eq!(
        call!(m, C_Finalize, &mut junk_ptr as *mut u8 as *mut c_void),
        CKR_ARGUMENTS_BAD
    );
}

/// PKCS #11 3.0 §5.4.1: `pReserved` must be NULL; a non-NULL value that is not our readable
/// configuration string is CKR_ARGUMENTS_BAD, whatever the pointer: the module must never fault
/// on it (conformance suites pass `(void*)1`). tests/c/init_reserved.c covers the same under
/// valgrind, with strings that run into a PROT_NONE page.
#[test]
fn initialize_never_follows_an_unreadable_reserved_pointer() {
    let fx = Fixture::new();
    let m = fx.m;
    assert_eq!(m.finalize(), CKR_OK);
    let page = 4096usize;
    // SAFETY (test): a private anonymous mapping of two pages, the second made PROT_NONE.
    let map = unsafe {
        libc::mmap(
            ptr::null_mut(),
            2 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let base = map as *mut u8;
    let guard_page = unsafe { base.add(page) };
    assert_eq!(
        unsafe { libc::mprotect(guard_page.cast(), page, libc::PROT_NONE) },
        0
    );
    let prefix = b"hsmpool:conf=/never/terminated";
    unsafe {
        ptr::write_bytes(base, b'x', page);
        ptr::copy_nonoverlapping(prefix.as_ptr(), guard_page.sub(prefix.len()), prefix.len())
    };
    let bad: [(*mut c_void, &str); 6] = [
        (ptr::without_provenance_mut(1), "(void*)1"),
        (ptr::without_provenance_mut(4095), "(void*)4095"),
        (ptr::without_provenance_mut(usize::MAX), "(void*)-1"),
        (guard_page.cast(), "a PROT_NONE page"),
        (
            unsafe { guard_page.sub(3) }.cast(),
            "text running into a PROT_NONE page",
        ),
        (
            unsafe { guard_page.sub(prefix.len()) }.cast(),
            "our prefix running into a PROT_NONE page",
        ),
    ];
    for (reserved, what) in bad {
        assert_eq!(
            m.initialize_reserved(reserved),
            CKR_ARGUMENTS_BAD,
            "pReserved = {what}"
        );
        let mut info: CK_INFO = unsafe { std::mem::zeroed() };
        assert_eq!(
            call!(m, C_GetInfo, &mut info),
            CKR_CRYPTOKI_NOT_INITIALIZED,
            "a refused C_Initialize leaves the library uninitialised ({what})"
        );
    }
    // Our string, ending on the last byte before the PROT_NONE page, still configures it.
    let good = format!("hsmpool:{}\0", fx.config_arg());
    let start = unsafe { guard_page.sub(good.len()) };
    unsafe { ptr::copy_nonoverlapping(good.as_ptr(), start, good.len()) };
    assert_eq!(m.initialize_reserved(start.cast()), CKR_OK);
    assert_eq!(unsafe { libc::munmap(map, 2 * page) }, 0);
}

#[test]
fn get_info_is_blank_padded_and_says_three_oh() {
    let fx = Fixture::new();
    let m = fx.m;
    let mut info: CK_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetInfo, &mut info), CKR_OK);
    assert_eq!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor),
        (3, 0)
    );
    assert!(
        info.manufacturerID.iter().all(|c| *c != 0),
        "no NUL in a padded field"
    );
    assert!(info.manufacturerID.starts_with(b"hsmpool"));
    assert_eq!(call!(m, C_GetInfo, ptr::null_mut()), CKR_ARGUMENTS_BAD);
}

// ----- slots and tokens -------------------------------------------------------------------------

#[test]
fn slot_list_follows_the_length_rule() {
    let fx = Fixture::new();
    let m = fx.m;
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetSlotList, CK_TRUE, ptr::null_mut(), &mut n),
        CKR_OK
    );
    assert_eq!(n, 1);
    let mut slots = [99 as CK_SLOT_ID; 1];
    let mut zero: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetSlotList, CK_FALSE, slots.as_mut_ptr(), &mut zero),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(zero, 1);
    assert_eq!(
        call!(m, C_GetSlotList, CK_FALSE, slots.as_mut_ptr(), &mut n),
        CKR_OK
    );
    assert_eq!(slots[0], 0);
    assert_eq!(
        call!(m, C_GetSlotList, CK_FALSE, ptr::null_mut(), ptr::null_mut()),
        CKR_ARGUMENTS_BAD
    );
    let mut si: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetSlotInfo, 0, &mut si), CKR_OK);
    assert!(si.flags & CKF_TOKEN_PRESENT != 0);
    assert_eq!(call!(m, C_GetSlotInfo, 7, &mut si), CKR_SLOT_ID_INVALID);
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetTokenInfo, 7, &mut ti), CKR_SLOT_ID_INVALID);
    let mut flags_out: CK_SLOT_ID = 0;
    assert_eq!(
        call!(
            m,
            C_WaitForSlotEvent,
            CKF_DONT_BLOCK,
            &mut flags_out,
            ptr::null_mut()
        ),
        CKR_NO_EVENT
    );
}

#[test]
fn token_flags_tell_the_truth_through_initialisation() {
    let fx = Fixture::new();
    let m = fx.m;
    let info = |m: &Module| {
        let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        assert_eq!(call!(m, C_GetTokenInfo, 0, &mut ti), CKR_OK);
        ti
    };
    let ti = info(m);
    assert_eq!(
        ti.flags & CKF_TOKEN_INITIALIZED,
        0,
        "fresh token is not initialised"
    );
    assert!(ti.flags & CKF_RNG != 0 && ti.flags & CKF_LOGIN_REQUIRED != 0);
    assert_eq!(m.init_token("123", "x"), CKR_PIN_LEN_RANGE);
    assert_eq!(m.init_token(SO_PIN, "my token"), CKR_OK);
    let ti = info(m);
    assert!(ti.flags & CKF_TOKEN_INITIALIZED != 0);
    assert_eq!(ti.flags & CKF_USER_PIN_INITIALIZED, 0);
    assert_eq!(&ti.label[..8], b"my token");
    assert!(ti.label[8..].iter().all(|c| *c == b' '));
    assert_eq!(ti.utcTime.len(), 16);
    // Re-initialisation needs the SO PIN, and no session may be open.
    assert_eq!(m.init_token("wrong-pin", "x"), CKR_PIN_INCORRECT);
    let h = m.open(true);
    assert_eq!(m.init_token(SO_PIN, "x"), CKR_SESSION_EXISTS);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_USER_PIN_NOT_INITIALIZED);
    assert_eq!(m.login(h, CKU_SO, SO_PIN), CKR_OK);
    assert_eq!(
        call!(
            m,
            C_InitPIN,
            h,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert!(info(m).flags & CKF_USER_PIN_INITIALIZED != 0);
}

#[test]
fn mechanism_list_and_info_agree() {
    let fx = Fixture::new();
    let m = fx.m;
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetMechanismList, 0, ptr::null_mut(), &mut n),
        CKR_OK
    );
    assert!(n >= 30, "{n} mechanisms");
    let mut list = vec![0 as CK_MECHANISM_TYPE; n as usize];
    let mut small: CK_ULONG = 1;
    assert_eq!(
        call!(m, C_GetMechanismList, 0, list.as_mut_ptr(), &mut small),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(small, n);
    assert_eq!(
        call!(m, C_GetMechanismList, 0, list.as_mut_ptr(), &mut n),
        CKR_OK
    );
    for mm in &list {
        let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
        assert_eq!(
            call!(m, C_GetMechanismInfo, 0, *mm, &mut mi),
            CKR_OK,
            "info for {mm:#x}"
        );
        assert!(mi.flags != 0 && mi.ulMinKeySize <= mi.ulMaxKeySize);
    }
    assert!(
        list.contains(&CKM_SHA256_RSA_PKCS)
            && list.contains(&CKM_AES_GCM)
            && list.contains(&CKM_ECDSA)
    );
    let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(
        call!(m, C_GetMechanismInfo, 0, CKM_AES_GCM, &mut mi),
        CKR_OK
    );
    assert_eq!((mi.ulMinKeySize, mi.ulMaxKeySize), (16, 32));
    assert_eq!(
        mi.flags & (CKF_ENCRYPT | CKF_DECRYPT),
        CKF_ENCRYPT | CKF_DECRYPT
    );
    assert_eq!(
        call!(m, C_GetMechanismInfo, 0, 0x7fff_0000, &mut mi),
        CKR_MECHANISM_INVALID
    );
    assert_eq!(
        call!(m, C_GetMechanismInfo, 3, CKM_AES_GCM, &mut mi),
        CKR_SLOT_ID_INVALID
    );
}

// ----- sessions and login ------------------------------------------------------------------------

#[test]
fn session_rules() {
    let fx = Fixture::new();
    let m = fx.m;
    assert_eq!(m.init_token(SO_PIN, "t"), CKR_OK);
    let mut h = 0;
    assert_eq!(
        call!(
            m,
            C_OpenSession,
            0,
            CKF_RW_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_SESSION_PARALLEL_NOT_SUPPORTED
    );
    assert_eq!(
        call!(
            m,
            C_OpenSession,
            5,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_SLOT_ID_INVALID
    );
    assert_eq!(
        call!(
            m,
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            ptr::null_mut()
        ),
        CKR_ARGUMENTS_BAD
    );
    let ro = m.open(false);
    let mut si: CK_SESSION_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetSessionInfo, ro, &mut si), CKR_OK);
    assert_eq!(si.state, CKS_RO_PUBLIC_SESSION);
    assert_eq!(si.flags, CKF_SERIAL_SESSION);
    // SO login is refused while a read-only session exists.
    assert_eq!(m.login(ro, CKU_SO, SO_PIN), CKR_SESSION_READ_ONLY_EXISTS);
    assert_eq!(call!(m, C_CloseSession, ro), CKR_OK);
    assert_eq!(call!(m, C_CloseSession, ro), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(
        call!(m, C_GetSessionInfo, ro, &mut si),
        CKR_SESSION_HANDLE_INVALID
    );
    let rw = m.open(true);
    assert_eq!(m.login(rw, CKU_SO, SO_PIN), CKR_OK);
    assert_eq!(call!(m, C_GetSessionInfo, rw, &mut si), CKR_OK);
    assert_eq!(si.state, CKS_RW_SO_FUNCTIONS);
    assert_eq!(
        call!(
            m,
            C_OpenSession,
            0,
            CKF_SERIAL_SESSION,
            ptr::null_mut(),
            None,
            &mut h
        ),
        CKR_SESSION_READ_WRITE_SO_EXISTS
    );
    assert_eq!(m.login(rw, CKU_SO, SO_PIN), CKR_USER_ALREADY_LOGGED_IN);
    assert_eq!(
        m.login(rw, CKU_USER, USER_PIN),
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    );
    assert_eq!(
        call!(
            m,
            C_InitPIN,
            rw,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert_eq!(call!(m, C_Logout, rw), CKR_OK);
    assert_eq!(call!(m, C_Logout, rw), CKR_USER_NOT_LOGGED_IN);
    assert_eq!(m.login(rw, 77, USER_PIN), CKR_USER_TYPE_INVALID);
    assert_eq!(m.login(rw, CKU_USER, "not-the-pin"), CKR_PIN_INCORRECT);
    assert_eq!(
        call!(m, C_Login, rw, CKU_USER, ptr::null_mut(), 4),
        CKR_ARGUMENTS_BAD
    );
    // One login serves every session, including ones opened later.
    assert_eq!(m.login(rw, CKU_USER, USER_PIN), CKR_OK);
    let ro2 = m.open(false);
    assert_eq!(call!(m, C_GetSessionInfo, ro2, &mut si), CKR_OK);
    assert_eq!(si.state, CKS_RO_USER_FUNCTIONS);
    assert_eq!(m.login(ro2, CKU_USER, USER_PIN), CKR_USER_ALREADY_LOGGED_IN);
    // Closing every session returns the application to public.
    assert_eq!(call!(m, C_CloseAllSessions, 0), CKR_OK);
    let again = m.open(true);
    assert_eq!(call!(m, C_GetSessionInfo, again, &mut si), CKR_OK);
    assert_eq!(si.state, CKS_RW_PUBLIC_SESSION);
    // C_LoginUser names the user explicitly.
    let name = b"user";
    assert_eq!(
        call!(
            m,
            C_LoginUser,
            again,
            CKU_USER,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG,
            name.as_ptr() as *mut u8,
            4
        ),
        CKR_OK
    );
    assert_eq!(call!(m, C_GetSessionInfo, again, &mut si), CKR_OK);
    assert_eq!(si.state, CKS_RW_USER_FUNCTIONS);
    // Context-specific login re-checks the PIN.
    assert_eq!(
        m.login(again, CKU_CONTEXT_SPECIFIC, "wrong-pin"),
        CKR_PIN_INCORRECT
    );
    assert_eq!(m.login(again, CKU_CONTEXT_SPECIFIC, USER_PIN), CKR_OK);
}

#[test]
fn set_pin_changes_the_pin_and_lockout_counts() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let new = "user-pin-2";
    assert_eq!(
        call!(
            m,
            C_SetPIN,
            h,
            b"bad-old".as_ptr() as *mut u8,
            7,
            new.as_ptr() as *mut u8,
            new.len() as CK_ULONG
        ),
        CKR_PIN_INCORRECT
    );
    assert_eq!(
        call!(
            m,
            C_SetPIN,
            h,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG,
            b"ab".as_ptr() as *mut u8,
            2
        ),
        CKR_PIN_LEN_RANGE
    );
    assert_eq!(
        call!(
            m,
            C_SetPIN,
            h,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG,
            new.as_ptr() as *mut u8,
            new.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_PIN_INCORRECT);
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetTokenInfo, 0, &mut ti), CKR_OK);
    assert!(
        ti.flags & CKF_USER_PIN_COUNT_LOW != 0,
        "a failed login is counted"
    );
    assert_eq!(m.login(h, CKU_USER, new), CKR_OK);
    assert_eq!(call!(m, C_GetTokenInfo, 0, &mut ti), CKR_OK);
    assert_eq!(
        ti.flags & CKF_USER_PIN_COUNT_LOW,
        0,
        "a good login clears the count"
    );
    let ro = m.open(false);
    assert_eq!(
        call!(
            m,
            C_SetPIN,
            ro,
            new.as_ptr() as *mut u8,
            new.len() as CK_ULONG,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG
        ),
        CKR_SESSION_READ_ONLY
    );
}

#[test]
fn five_wrong_pins_lock_the_user_until_the_so_resets_it() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    for _ in 0..5 {
        assert_eq!(m.login(h, CKU_USER, "wrong-pin"), CKR_PIN_INCORRECT);
    }
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_PIN_LOCKED);
    let mut ti: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(call!(m, C_GetTokenInfo, 0, &mut ti), CKR_OK);
    assert!(ti.flags & CKF_USER_PIN_LOCKED != 0);
    assert_eq!(m.login(h, CKU_SO, SO_PIN), CKR_OK);
    assert_eq!(
        call!(
            m,
            C_InitPIN,
            h,
            USER_PIN.as_ptr() as *mut u8,
            USER_PIN.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
}

// ----- objects -----------------------------------------------------------------------------------

#[test]
fn objects_create_read_find_copy_destroy() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let class = CKO_DATA;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_LABEL, b"d1"),
        attr_bytes(CKA_VALUE, b"hello"),
    ];
    let mut o = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 4, &mut o),
        CKR_OK
    );
    assert_eq!(get_bytes(m, h, o, CKA_VALUE), b"hello");
    assert_eq!(get_bytes(m, h, o, CKA_LABEL), b"d1");
    let mut size: CK_ULONG = 0;
    assert_eq!(call!(m, C_GetObjectSize, h, o, &mut size), CKR_OK);
    assert!(size > 0);
    assert_eq!(find(m, h, &mut [attr_bytes(CKA_LABEL, b"d1")]), vec![o]);
    assert!(find(m, h, &mut [attr_bytes(CKA_LABEL, b"nothing")]).is_empty());
    // Copy with a changed label; CKA_CLASS may not change.
    let mut ct = [attr_bytes(CKA_LABEL, b"d2")];
    let mut c = 0;
    assert_eq!(
        call!(m, C_CopyObject, h, o, ct.as_mut_ptr(), 1, &mut c),
        CKR_OK
    );
    assert_eq!(get_bytes(m, h, c, CKA_VALUE), b"hello");
    let cert = CKO_CERTIFICATE;
    let mut bad = [attr(CKA_CLASS, &cert)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, c, bad.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_READ_ONLY
    );
    let mut relabel = [attr_bytes(CKA_LABEL, b"d3")];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, c, relabel.as_mut_ptr(), 1),
        CKR_OK
    );
    assert_eq!(find(m, h, &mut [attr_bytes(CKA_LABEL, b"d3")]), vec![c]);
    assert!(
        find(m, h, &mut [attr_bytes(CKA_LABEL, b"d2")]).is_empty(),
        "the index follows a label change"
    );
    assert_eq!(call!(m, C_DestroyObject, h, c), CKR_OK);
    assert_eq!(call!(m, C_DestroyObject, h, c), CKR_OBJECT_HANDLE_INVALID);
    let mut a = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, c, &mut a, 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    // Templates: NULL with a count, unknown class, missing class.
    assert_eq!(
        call!(m, C_CreateObject, h, ptr::null_mut(), 2, &mut o),
        CKR_ARGUMENTS_BAD
    );
    let mut no_class = [attr_bytes(CKA_LABEL, b"x")];
    assert_eq!(
        call!(m, C_CreateObject, h, no_class.as_mut_ptr(), 1, &mut o),
        CKR_TEMPLATE_INCOMPLETE
    );
    let sk = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let mut short = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &aes),
        attr_bytes(CKA_VALUE, &[1u8; 15]),
    ];
    assert_eq!(
        call!(m, C_CreateObject, h, short.as_mut_ptr(), 3, &mut o),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    let mut bad_bool = [attr(CKA_CLASS, &class), attr_bytes(CKA_TOKEN, &[1, 2])];
    assert_eq!(
        call!(m, C_CreateObject, h, bad_bool.as_mut_ptr(), 2, &mut o),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
}

#[test]
fn get_attribute_value_processes_every_attribute() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let k = gen_aes(m, h, &[]);
    let mut small = [0u8; 1];
    let mut label_buf = [0u8; 64];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: label_buf.as_mut_ptr() as *mut c_void,
            ulValueLen: 64,
        },
        CK_ATTRIBUTE {
            type_: CKA_MODULUS,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
        CK_ATTRIBUTE {
            type_: CKA_VALUE_LEN,
            pValue: small.as_mut_ptr() as *mut c_void,
            ulValueLen: 1,
        },
        CK_ATTRIBUTE {
            type_: CKA_KEY_TYPE,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        },
    ];
    let rv = call!(m, C_GetAttributeValue, h, k, t.as_mut_ptr(), 4);
    assert!(
        matches!(
            rv,
            CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
        ),
        "rv {rv:#x}"
    );
    assert_eq!(
        t[0].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "sensitive value"
    );
    assert_eq!(
        t[1].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "AES keys have no modulus"
    );
    assert_eq!(
        t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION,
        "buffer too small"
    );
    assert_eq!(
        t[3].ulValueLen as usize,
        std::mem::size_of::<CK_ULONG>(),
        "length of a good attribute is still given"
    );
    assert!(label_buf.iter().all(|b| *b == 0), "no key bytes came out");
    // Non-sensitive, extractable secret: the value is readable.
    let mut v = [0u8; 16];
    let sk = CKO_SECRET_KEY;
    let gs = CKK_GENERIC_SECRET;
    let mut ct = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, b"0123456789abcdef"),
        attr(CKA_SENSITIVE, &FALSE),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    let mut o = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, ct.as_mut_ptr(), 5, &mut o),
        CKR_OK
    );
    let mut a = CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 16,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, o, &mut a, 1), CKR_OK);
    assert_eq!(&v, b"0123456789abcdef");
    // Sensitive is one way.
    let mut to_sensitive = [attr(CKA_SENSITIVE, &TRUE)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, o, to_sensitive.as_mut_ptr(), 1),
        CKR_OK
    );
    let mut back = [attr(CKA_SENSITIVE, &FALSE)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, o, back.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_READ_ONLY
    );
    let mut a = CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: 16,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, o, &mut a, 1),
        CKR_ATTRIBUTE_SENSITIVE
    );
    let mut local = [attr(CKA_LOCAL, &TRUE)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, o, local.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_READ_ONLY
    );
}

#[test]
fn private_objects_are_invisible_to_public_sessions_and_session_objects_die_with_their_session() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (_p, k) = gen_rsa(m, h, true, "vis");
    let other = m.open(true);
    let class = CKO_DATA;
    let mut t = [attr(CKA_CLASS, &class), attr_bytes(CKA_LABEL, b"sess-obj")];
    let mut so = 0;
    assert_eq!(
        call!(m, C_CreateObject, other, t.as_mut_ptr(), 2, &mut so),
        CKR_OK
    );
    assert_eq!(
        find(m, h, &mut [attr_bytes(CKA_LABEL, b"sess-obj")]),
        vec![so],
        "session objects are visible to the application"
    );
    assert_eq!(call!(m, C_CloseSession, other), CKR_OK);
    assert!(
        find(m, h, &mut [attr_bytes(CKA_LABEL, b"sess-obj")]).is_empty(),
        "it died with its session"
    );
    assert_eq!(find(m, h, &mut [attr_bytes(CKA_LABEL, b"vis")]).len(), 2);
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    let found = find(m, h, &mut [attr_bytes(CKA_LABEL, b"vis")]);
    assert_eq!(
        found.len(),
        1,
        "only the public key is visible after logout"
    );
    let mut a = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, k, &mut a, 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    let mut mm = mech(CKM_SHA256_RSA_PKCS);
    assert_eq!(call!(m, C_SignInit, h, &mut mm, k), CKR_KEY_HANDLE_INVALID);
    // Read-only sessions cannot make token objects.
    let ro = m.open(false);
    let mut tt = [attr(CKA_CLASS, &class), attr(CKA_TOKEN, &TRUE)];
    let mut o = 0;
    assert_eq!(
        call!(m, C_CreateObject, ro, tt.as_mut_ptr(), 2, &mut o),
        CKR_SESSION_READ_ONLY
    );
    // Private objects need a user.
    let mut pt = [attr(CKA_CLASS, &class), attr(CKA_PRIVATE, &TRUE)];
    assert_eq!(
        call!(m, C_CreateObject, h, pt.as_mut_ptr(), 2, &mut o),
        CKR_USER_NOT_LOGGED_IN
    );
}

#[test]
fn find_operation_states() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let mut buf = [0 as CK_OBJECT_HANDLE; 4];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_FindObjects, h, buf.as_mut_ptr(), 4, &mut n),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(m, C_FindObjectsFinal, h),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(call!(m, C_FindObjectsInit, h, ptr::null_mut(), 0), CKR_OK);
    assert_eq!(
        call!(m, C_FindObjectsInit, h, ptr::null_mut(), 0),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(
        call!(m, C_FindObjects, h, ptr::null_mut(), 4, &mut n),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
}

// ----- [compat] self_signed_certificates ------------------------------------------------------

/// A key pair (RSA-2048 or P-256) with a label, an optional `CKA_ID` and extra private-key
/// attributes.
fn labelled_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kt: CK_KEY_TYPE,
    token: bool,
    label: &[u8],
    id: Option<&[u8]>,
    extra_priv: &[CK_ATTRIBUTE],
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let tok = if token { &TRUE } else { &FALSE };
    let bits: CK_ULONG = 2048;
    let mut pub_t = vec![
        attr(CKA_TOKEN, tok),
        attr(CKA_VERIFY, &TRUE),
        attr_bytes(CKA_LABEL, label),
    ];
    let mut priv_t = vec![
        attr(CKA_TOKEN, tok),
        attr(CKA_PRIVATE, &TRUE),
        attr_bytes(CKA_LABEL, label),
    ];
    if let Some(id) = id {
        pub_t.push(attr_bytes(CKA_ID, id));
        priv_t.push(attr_bytes(CKA_ID, id));
    }
    priv_t.extend_from_slice(extra_priv);
    let mut mm = if kt == CKK_RSA {
        pub_t.push(attr(CKA_MODULUS_BITS, &bits));
        mech(CKM_RSA_PKCS_KEY_PAIR_GEN)
    } else {
        pub_t.push(attr_bytes(CKA_EC_PARAMS, P256_OID));
        mech(CKM_EC_KEY_PAIR_GEN)
    };
    hsmpool_tests::raw::generate_pair(m, h, &mut mm, &mut pub_t, &mut priv_t)
        .unwrap_or_else(|rv| panic!("key pair {label:?}: {rv:#x}"))
}

/// A stored X.509 certificate object with this `CKA_ID` (its bytes are not parsed).
fn stored_cert(m: &Module, h: CK_SESSION_HANDLE, id: &[u8]) -> CK_OBJECT_HANDLE {
    let (class, x509) = (CKO_CERTIFICATE, CKC_X_509);
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_CERTIFICATE_TYPE, &x509),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_LABEL, b"stored"),
        attr_bytes(CKA_SUBJECT, b"\x30\x00"),
        attr_bytes(CKA_ID, id),
        attr_bytes(CKA_VALUE, b"\x30\x03\x02\x01\x01"),
    ];
    hsmpool_tests::raw::create(m, h, &mut t).expect("a stored certificate")
}

/// One DER element at the start of `v`: (tag, the whole element, its body, what follows).
fn der_next(v: &[u8]) -> (u8, &[u8], &[u8], &[u8]) {
    let first = v[1];
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        let len = v[2..2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    (
        v[0],
        &v[..head + len],
        &v[head..head + len],
        &v[head + len..],
    )
}

/// A certificate's (to-be-signed bytes, signature), read with nothing but DER.
fn tbs_and_signature(der: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (tag, _, body, rest) = der_next(der);
    assert!(
        tag == 0x30 && rest.is_empty(),
        "a certificate is one SEQUENCE"
    );
    let (tag, tbs, _, rest) = der_next(body);
    assert_eq!(tag, 0x30, "tbsCertificate");
    let (tag, _, _, rest) = der_next(rest);
    assert_eq!(tag, 0x30, "signatureAlgorithm");
    let (tag, _, bits, rest) = der_next(rest);
    assert!(
        tag == 0x03 && bits[0] == 0 && rest.is_empty(),
        "signatureValue"
    );
    (tbs.to_vec(), bits[1..].to_vec())
}

fn certificates(m: &Module, h: CK_SESSION_HANDLE, id: Option<&[u8]>) -> Vec<CK_OBJECT_HANDLE> {
    let class = CKO_CERTIFICATE;
    let mut t = vec![attr(CKA_CLASS, &class)];
    if let Some(id) = id {
        t.push(attr_bytes(CKA_ID, id));
    }
    find(m, h, &mut t)
}

fn ulong_of(v: &[u8]) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(v.try_into().expect("a CK_ULONG"))
}

#[test]
fn self_signed_certificates_are_presented_read_only_and_verify() {
    use aws_lc_rs::signature::{
        RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
        RSA_PKCS1_2048_8192_SHA256,
    };
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    labelled_pair(m, h, CKK_RSA, true, b"rsa-key", Some(b"id-rsa"), &[]);
    labelled_pair(m, h, CKK_EC, true, b"ec-key", Some(b"id-ec"), &[]);
    // None of these qualifies: no CKA_ID, cannot sign, needs a per-operation login, a session
    // key, a key that already has a certificate.
    labelled_pair(m, h, CKK_EC, true, b"no-id", None, &[]);
    labelled_pair(
        m,
        h,
        CKK_EC,
        true,
        b"no-sign",
        Some(b"id-nosign"),
        &[attr(CKA_SIGN, &FALSE)],
    );
    let aa = [attr(CKA_ALWAYS_AUTHENTICATE, &TRUE)];
    labelled_pair(m, h, CKK_EC, true, b"always-auth", Some(b"id-aa"), &aa);
    labelled_pair(m, h, CKK_EC, false, b"session", Some(b"id-session"), &[]);
    labelled_pair(m, h, CKK_EC, true, b"has-cert", Some(b"id-cert"), &[]);
    // Nor this one, which may sign only with a mechanism the certificate does not use: the
    // others are presented all the same.
    let pss_only = CKM_SHA256_RSA_PKCS_PSS;
    let allowed = [attr(CKA_ALLOWED_MECHANISMS, &pss_only)];
    labelled_pair(m, h, CKK_RSA, true, b"pss-only", Some(b"id-pss"), &allowed);
    let real = stored_cert(m, h, b"id-cert");
    // Off (the default): the token's own certificate only.
    assert_eq!(certificates(m, h, None), vec![real]);

    // On: the same token through a module configured with the option.
    let base = std::fs::read_to_string(fx.path.join("hsmpool.toml")).expect("the fixture's config");
    let conf_on = fx.path.join("certs.toml");
    std::fs::write(
        &conf_on,
        format!("{base}[compat]\nself_signed_certificates = true\n"),
    )
    .expect("writable");
    assert_eq!(m.finalize(), CKR_OK);
    let on = format!("conf={}", conf_on.display());
    assert_eq!(m.initialize_with(Some(&on)), CKR_OK);
    let h = m.open(true);
    // Logged out, no private key is visible and no certificate is presented. (Handles are the
    // new library instance's.)
    let real = certificates(m, h, Some(b"id-cert"));
    assert_eq!(real.len(), 1);
    let real = real[0];
    assert_eq!(certificates(m, h, None), vec![real]);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    let one = |class: CK_OBJECT_CLASS, id: &[u8]| {
        let v = find(m, h, &mut [attr(CKA_CLASS, &class), attr_bytes(CKA_ID, id)]);
        assert_eq!(v.len(), 1, "one object of class {class} with id {id:?}");
        v[0]
    };
    let (rsa_pub, rsa_priv) = (
        one(CKO_PUBLIC_KEY, b"id-rsa"),
        one(CKO_PRIVATE_KEY, b"id-rsa"),
    );
    let ec_pub = one(CKO_PUBLIC_KEY, b"id-ec");
    let all = certificates(m, h, None);
    assert_eq!(
        all.len(),
        3,
        "the stored certificate and two presented ones: {all:?}"
    );
    let mut ids: Vec<Vec<u8>> = all.iter().map(|c| get_bytes(m, h, *c, CKA_ID)).collect();
    ids.sort();
    assert_eq!(
        ids,
        [b"id-cert".to_vec(), b"id-ec".to_vec(), b"id-rsa".to_vec()]
    );
    // The other public objects' finds are not disturbed: all of id-rsa is key pair + cert.
    assert_eq!(find(m, h, &mut [attr_bytes(CKA_ID, b"id-rsa")]).len(), 3);

    let rsa_cert = certificates(m, h, Some(b"id-rsa"));
    assert_eq!(rsa_cert.len(), 1);
    let rc = rsa_cert[0];
    assert_eq!(ulong_of(&get_bytes(m, h, rc, CKA_CLASS)), CKO_CERTIFICATE);
    assert_eq!(
        ulong_of(&get_bytes(m, h, rc, CKA_CERTIFICATE_TYPE)),
        CKC_X_509
    );
    assert_eq!(get_bytes(m, h, rc, CKA_LABEL), b"rsa-key");
    assert_eq!(get_bytes(m, h, rc, CKA_TOKEN), [CK_TRUE]);
    for ty in [
        CKA_PRIVATE,
        CKA_MODIFIABLE,
        CKA_COPYABLE,
        CKA_DESTROYABLE,
        CKA_TRUSTED,
    ] {
        assert_eq!(get_bytes(m, h, rc, ty), [CK_FALSE], "attribute {ty:#x}");
    }
    let der = get_bytes(m, h, rc, CKA_VALUE);
    let subject = get_bytes(m, h, rc, CKA_SUBJECT);
    let serial = get_bytes(m, h, rc, CKA_SERIAL_NUMBER);
    assert_eq!(subject, get_bytes(m, h, rc, CKA_ISSUER), "self-signed");
    assert_eq!(subject[0], 0x30, "CKA_SUBJECT is a DER Name");
    assert_eq!(serial[0], 0x02, "CKA_SERIAL_NUMBER is a DER INTEGER");
    let (tbs, sig) = tbs_and_signature(&der);
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(&tbs, &subject) && has(&tbs, &serial),
        "the attributes are the certificate's"
    );
    // Verified independently (aws-lc) with the token public key of the same CKA_ID.
    let n = get_bytes(m, h, rsa_pub, CKA_MODULUS);
    let e = get_bytes(m, h, rsa_pub, CKA_PUBLIC_EXPONENT);
    let rsa = RsaPublicKeyComponents { n: &n, e: &e };
    rsa.verify(&RSA_PKCS1_2048_8192_SHA256, &tbs, &sig)
        .expect("the RSA certificate verifies with the key's public key");
    let mut bad = tbs.clone();
    bad[20] ^= 1;
    assert!(rsa.verify(&RSA_PKCS1_2048_8192_SHA256, &bad, &sig).is_err());
    assert!(has(
        &get_bytes(m, h, rc, CKA_PUBLIC_KEY_INFO),
        &n[n.len() - 32..]
    ));

    let ec_cert = certificates(m, h, Some(b"id-ec"));
    assert_eq!(ec_cert.len(), 1);
    assert_eq!(get_bytes(m, h, ec_cert[0], CKA_LABEL), b"ec-key");
    let (tbs, sig) = tbs_and_signature(&get_bytes(m, h, ec_cert[0], CKA_VALUE));
    let point = get_bytes(m, h, ec_pub, CKA_EC_POINT);
    let (_, _, point, _) = der_next(&point);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(&tbs, &sig)
        .expect("the EC certificate verifies with the key's public key");

    // Read-only (PKCS #11 3.0 §4.4, Table 25: CKA_DESTROYABLE, CKA_MODIFIABLE, CKA_COPYABLE false).
    assert_eq!(call!(m, C_DestroyObject, h, rc), CKR_ACTION_PROHIBITED);
    let mut relabel = [attr_bytes(CKA_LABEL, b"x")];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, rc, relabel.as_mut_ptr(), 1),
        CKR_ACTION_PROHIBITED
    );
    let mut copy = 0;
    assert_eq!(
        call!(m, C_CopyObject, h, rc, ptr::null_mut(), 0, &mut copy),
        CKR_ACTION_PROHIBITED
    );
    // A token object: a read-only session may not try (§5.7.3).
    let ro = m.open(false);
    assert_eq!(call!(m, C_DestroyObject, ro, rc), CKR_SESSION_READ_ONLY);
    assert_eq!(call!(m, C_CloseSession, ro), CKR_OK);
    // Not a key (§5.2: CKR_KEY_HANDLE_INVALID names a handle of an object that is no key).
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), rc),
        CKR_KEY_HANDLE_INVALID
    );
    let mut modulus = CK_ATTRIBUTE {
        type_: CKA_MODULUS,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, rc, &mut modulus, 1),
        CKR_ATTRIBUTE_TYPE_INVALID
    );
    assert_eq!(modulus.ulValueLen, CK_UNAVAILABLE_INFORMATION);
    let mut size: CK_ULONG = 0;
    assert_eq!(call!(m, C_GetObjectSize, h, rc, &mut size), CKR_OK);
    assert!(size as usize > der.len());
    assert_eq!(certificates(m, h, Some(b"id-rsa")), vec![rc], "still there");
    let mut by_value = [attr_bytes(CKA_VALUE, &der)];
    assert_eq!(find(m, h, &mut by_value), vec![rc], "found by its bytes");

    // Logged out it is gone; logged in again it is the same object, not made again.
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(certificates(m, h, None), vec![real]);
    let mut label = CK_ATTRIBUTE {
        type_: CKA_LABEL,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, rc, &mut label, 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    assert_eq!(certificates(m, h, Some(b"id-rsa")), vec![rc]);
    assert_eq!(get_bytes(m, h, rc, CKA_VALUE), der);

    // The key's label changes: so do the certificate's label and subject.
    let mut relabel = [attr_bytes(CKA_LABEL, b"renamed")];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, rsa_priv, relabel.as_mut_ptr(), 1),
        CKR_OK
    );
    assert_eq!(certificates(m, h, Some(b"id-rsa")), vec![rc]);
    assert_eq!(get_bytes(m, h, rc, CKA_LABEL), b"renamed");
    assert!(has(&get_bytes(m, h, rc, CKA_SUBJECT), b"renamed"));

    // A stored certificate with the key's CKA_ID replaces the presented one.
    let stored_ec = stored_cert(m, h, b"id-ec");
    assert_eq!(certificates(m, h, Some(b"id-ec")), vec![stored_ec]);
    // The key destroyed, its certificate goes with it.
    assert_eq!(call!(m, C_DestroyObject, h, rsa_priv), CKR_OK);
    assert_eq!(certificates(m, h, Some(b"id-rsa")), vec![]);
    assert_eq!(
        call!(m, C_GetAttributeValue, h, rc, &mut label, 1),
        CKR_OBJECT_HANDLE_INVALID
    );
    assert_eq!(call!(m, C_DestroyObject, h, rc), CKR_OBJECT_HANDLE_INVALID);

    // Nothing was stored on the token: without the option, the two stored certificates only.
    assert_eq!(m.finalize(), CKR_OK);
    assert_eq!(m.initialize_with(Some(&fx.config_arg())), CKR_OK);
    let h = m.open(true);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    let mut left: Vec<Vec<u8>> = certificates(m, h, None)
        .into_iter()
        .map(|c| get_bytes(m, h, c, CKA_ID))
        .collect();
    left.sort();
    assert_eq!(left, [b"id-cert".to_vec(), b"id-ec".to_vec()]);
    let _ = stored_ec;
}

// ----- cryptography ------------------------------------------------------------------------------

#[test]
fn rsa_sign_verify_every_mechanism_and_independently() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (p, k) = gen_rsa(m, h, false, "rsa");
    let n = get_bytes(m, h, p, CKA_MODULUS);
    let e = get_bytes(m, h, p, CKA_PUBLIC_EXPONENT);
    assert_eq!(n.len(), 256);
    let data = b"the quick brown fox";
    for (mm, alg) in [
        (
            CKM_SHA256_RSA_PKCS,
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        (
            CKM_SHA384_RSA_PKCS,
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA384,
        ),
        (
            CKM_SHA512_RSA_PKCS,
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA512,
        ),
    ] {
        let sig = sign(m, h, &mut mech(mm), k, data);
        assert_eq!(sig.len(), 256);
        assert_eq!(verify(m, h, &mut mech(mm), p, data, &sig), CKR_OK);
        let pk = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
        pk.verify(alg, data, &sig)
            .expect("aws-lc verifies our signature");
        let mut bad = sig.clone();
        bad[10] ^= 1;
        assert_eq!(
            verify(m, h, &mut mech(mm), p, data, &bad),
            CKR_SIGNATURE_INVALID
        );
        assert_eq!(
            verify(m, h, &mut mech(mm), p, data, &sig[..255]),
            CKR_SIGNATURE_LEN_RANGE
        );
    }
    // PSS with SHA-256 and a 32-byte salt.
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let sig = sign(
        m,
        h,
        &mut mech_param(CKM_SHA256_RSA_PKCS_PSS, &mut pss),
        k,
        data,
    );
    assert_eq!(
        verify(
            m,
            h,
            &mut mech_param(CKM_SHA256_RSA_PKCS_PSS, &mut pss),
            p,
            data,
            &sig
        ),
        CKR_OK
    );
    let pk = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
    pk.verify(&aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256, data, &sig)
        .expect("aws-lc verifies our PSS signature");
    // Raw PSS over a digest.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let sig = sign(
        m,
        h,
        &mut mech_param(CKM_RSA_PKCS_PSS, &mut pss),
        k,
        digest.as_ref(),
    );
    pk.verify(&aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256, data, &sig)
        .expect("raw PSS over the digest");
    // CKM_RSA_PKCS over a caller's DigestInfo equals CKM_SHA256_RSA_PKCS over the message.
    let mut di = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    di.extend_from_slice(digest.as_ref());
    let raw = sign(m, h, &mut mech(CKM_RSA_PKCS), k, &di);
    let hashed = sign(m, h, &mut mech(CKM_SHA256_RSA_PKCS), k, data);
    assert_eq!(raw, hashed, "PKCS #1 v1.5 is deterministic");
    assert_eq!(verify(m, h, &mut mech(CKM_RSA_PKCS), p, &di, &raw), CKR_OK);
    // Multi-part equals single-part.
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), k),
        CKR_OK
    );
    assert_eq!(
        call!(m, C_SignUpdate, h, data[..5].as_ptr() as *mut u8, 5),
        CKR_OK
    );
    assert_eq!(
        call!(
            m,
            C_SignUpdate,
            h,
            data[5..].as_ptr() as *mut u8,
            (data.len() - 5) as CK_ULONG
        ),
        CKR_OK
    );
    let mut out = vec![0u8; 256];
    let mut len: CK_ULONG = 256;
    assert_eq!(call!(m, C_SignFinal, h, out.as_mut_ptr(), &mut len), CKR_OK);
    assert_eq!(out, hashed);
    assert_eq!(
        call!(m, C_VerifyInit, h, &mut mech(CKM_SHA256_RSA_PKCS), p),
        CKR_OK
    );
    assert_eq!(
        call!(
            m,
            C_VerifyUpdate,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG
        ),
        CKR_OK
    );
    assert_eq!(call!(m, C_VerifyFinal, h, out.as_mut_ptr(), 256), CKR_OK);
}

#[test]
fn output_buffer_rule_keeps_the_operation_active() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (p, k) = gen_ec(m, h);
    let data = b"message";
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_ECDSA_SHA256), k),
        CKR_OK
    );
    let mut len: CK_ULONG = 0;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            7,
            ptr::null_mut(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(len, 64);
    let mut small = [0u8; 10];
    let mut slen: CK_ULONG = 10;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            7,
            small.as_mut_ptr(),
            &mut slen
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(slen, 64, "the needed length is written");
    let mut sig = [0u8; 64];
    let mut l: CK_ULONG = 64;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            7,
            sig.as_mut_ptr(),
            &mut l
        ),
        CKR_OK,
        "still active after BUFFER_TOO_SMALL"
    );
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            7,
            sig.as_mut_ptr(),
            &mut l
        ),
        CKR_OPERATION_NOT_INITIALIZED,
        "done after success"
    );
    assert_eq!(
        verify(m, h, &mut mech(CKM_ECDSA_SHA256), p, data, &sig),
        CKR_OK
    );
    // Independent verification with the public point.
    let point = get_bytes(m, h, p, CKA_EC_POINT);
    assert_eq!(point[0], 0x04, "CKA_EC_POINT is a DER OCTET STRING");
    let raw_point = &point[2..];
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        raw_point,
    )
    .verify(data, &sig)
    .expect("aws-lc verifies our ECDSA signature");
    // Any other error ends the operation.
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_ECDSA_SHA256), k),
        CKR_OK
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_ECDSA_SHA256), k),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(
        call!(m, C_Sign, h, ptr::null_mut(), 7, sig.as_mut_ptr(), &mut l),
        CKR_ARGUMENTS_BAD
    );
    // ECDSA over a prehashed digest of any length.
    let d20 = [7u8; 20];
    assert_eq!(call!(m, C_SignInit, h, &mut mech(CKM_ECDSA), k), CKR_OK);
    let mut l: CK_ULONG = 64;
    assert_eq!(
        call!(
            m,
            C_Sign,
            h,
            d20.as_ptr() as *mut u8,
            20,
            sig.as_mut_ptr(),
            &mut l
        ),
        CKR_OK
    );
    assert_eq!(verify(m, h, &mut mech(CKM_ECDSA), p, &d20, &sig), CKR_OK);
}

#[test]
fn key_checks_at_init() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (p, k) = gen_rsa(m, h, false, "k");
    let aes = gen_aes(m, h, &[]);
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_ECDSA), k),
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), aes),
        CKR_KEY_TYPE_INCONSISTENT
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), p),
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        "a public key cannot sign"
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), 0xdead),
        CKR_KEY_HANDLE_INVALID
    );
    // A valid handle of an object that is no key: CKR_KEY_HANDLE_INVALID (§5.1.6: "It may be
    // the case that the specified handle is a valid handle for an object which is not a key").
    let class = CKO_DATA;
    let data = hsmpool_tests::raw::create(
        m,
        h,
        &mut [attr(CKA_CLASS, &class), attr_bytes(CKA_LABEL, b"not-a-key")],
    )
    .expect("a data object");
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), data),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(
        call!(m, C_EncryptInit, h, &mut mech(CKM_AES_ECB), data),
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(0x7fff_0001), k),
        CKR_MECHANISM_INVALID
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_AES_GCM), aes),
        CKR_MECHANISM_INVALID,
        "GCM does not sign"
    );
    assert_eq!(
        call!(m, C_SignInit, h, ptr::null_mut(), k),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(m, C_SignInit, 0xbad, &mut mech(CKM_SHA256_RSA_PKCS), k),
        CKR_SESSION_HANDLE_INVALID
    );
    let mut pss = CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    };
    let mut wrong_len = CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS_PSS,
        pParameter: &mut pss as *mut _ as *mut c_void,
        ulParameterLen: 3,
    };
    assert_eq!(
        call!(m, C_SignInit, h, &mut wrong_len, k),
        CKR_MECHANISM_PARAM_INVALID
    );
    assert_eq!(
        call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS_PSS), k),
        CKR_MECHANISM_PARAM_INVALID
    );
    let mut buf = [0u8; 8];
    let mut l: CK_ULONG = 8;
    assert_eq!(
        call!(m, C_Sign, h, buf.as_mut_ptr(), 8, buf.as_mut_ptr(), &mut l),
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        call!(m, C_EncryptFinal, h, buf.as_mut_ptr(), &mut l),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let no_sign = gen_aes(m, h, &[attr(CKA_ENCRYPT, &FALSE)]);
    let mut iv = [0u8; 16];
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as *mut c_void,
        ulParameterLen: 16,
    };
    assert_eq!(
        call!(m, C_EncryptInit, h, &mut cbc, no_sign),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
}

/// PSS parameters are checked against the key at `C_SignInit` / `C_VerifyInit`: §5.13.1 and
/// §5.15.1 list CKR_MECHANISM_PARAM_INVALID for them, §5.13.2 / §5.15.2 (C_Sign, C_Verify) do
/// not. libp11 0.4.12 passes OpenSSL 3's "maximum salt" (-3) as sLen = 2^64 - 3; that, a salt
/// one byte longer than an RSA-2048 key has room for with SHA-256 (emLen 256 - 32 - 2 = 222),
/// a hash other than the mechanism's, and an unknown MGF are refused at init, leaving no
/// operation; the longest salt that fits signs and verifies.
#[test]
fn pss_parameters_are_checked_against_the_key_at_init() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (p, k) = gen_rsa(m, h, false, "pss");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"pss at init");
    let d = digest.as_ref();
    let pss = |hash, mgf, s_len| CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: hash,
        mgf,
        sLen: s_len,
    };
    for (mechanism, mut params, why) in [
        (
            CKM_RSA_PKCS_PSS,
            pss(CKM_SHA256, CKG_MGF1_SHA256, CK_ULONG::MAX - 2),
            "libp11's sLen for OpenSSL's maximum salt",
        ),
        (
            CKM_RSA_PKCS_PSS,
            pss(CKM_SHA256, CKG_MGF1_SHA256, 223),
            "a salt one byte too long for the key",
        ),
        (
            CKM_SHA256_RSA_PKCS_PSS,
            pss(CKM_SHA384, CKG_MGF1_SHA384, 48),
            "a hash other than the mechanism's",
        ),
        (
            CKM_RSA_PKCS_PSS,
            pss(CKM_SHA256, 0x7fff_0001, 32),
            "an unknown MGF",
        ),
    ] {
        assert_eq!(
            call!(m, C_SignInit, h, &mut mech_param(mechanism, &mut params), k),
            CKR_MECHANISM_PARAM_INVALID,
            "C_SignInit: {why}"
        );
        let mut sig = [0u8; 256];
        let mut len = sig.len() as CK_ULONG;
        assert_eq!(
            call!(
                m,
                C_Sign,
                h,
                d.as_ptr() as *mut u8,
                d.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut len
            ),
            CKR_OPERATION_NOT_INITIALIZED,
            "no signing operation after a refused C_SignInit: {why}"
        );
        assert_eq!(
            call!(
                m,
                C_VerifyInit,
                h,
                &mut mech_param(mechanism, &mut params),
                p
            ),
            CKR_MECHANISM_PARAM_INVALID,
            "C_VerifyInit: {why}"
        );
        assert_eq!(
            call!(
                m,
                C_Verify,
                h,
                d.as_ptr() as *mut u8,
                d.len() as CK_ULONG,
                sig.as_mut_ptr(),
                256
            ),
            CKR_OPERATION_NOT_INITIALIZED,
            "no verification after a refused C_VerifyInit: {why}"
        );
    }
    let mut max = pss(CKM_SHA256, CKG_MGF1_SHA256, 222);
    let sig = sign(m, h, &mut mech_param(CKM_RSA_PKCS_PSS, &mut max), k, d);
    assert_eq!(
        verify(
            m,
            h,
            &mut mech_param(CKM_RSA_PKCS_PSS, &mut max),
            p,
            d,
            &sig
        ),
        CKR_OK,
        "the longest salt that fits"
    );
    let mut bad = sig.clone();
    bad[100] ^= 1;
    assert_eq!(
        verify(
            m,
            h,
            &mut mech_param(CKM_RSA_PKCS_PSS, &mut max),
            p,
            d,
            &bad
        ),
        CKR_SIGNATURE_INVALID
    );
    let mut short = pss(CKM_SHA256, CKG_MGF1_SHA256, 32);
    assert_eq!(
        verify(
            m,
            h,
            &mut mech_param(CKM_RSA_PKCS_PSS, &mut short),
            p,
            d,
            &sig
        ),
        CKR_SIGNATURE_INVALID,
        "a salt-222 signature is not a salt-32 one"
    );
}

#[test]
fn aes_gcm_and_cbc_pad_single_and_multi_part() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let sk = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let key = [0x42u8; 32];
    let mut t = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &aes),
        attr_bytes(CKA_VALUE, &key),
    ];
    let mut k = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 3, &mut k),
        CKR_OK
    );
    let plain: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    // GCM, single part, checked against aws-lc.
    let mut iv = [9u8; 12];
    let mut aad = *b"header";
    let mut gcm = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: 6,
        ulTagBits: 128,
    };
    let mut mm = mech_param(CKM_AES_GCM, &mut gcm);
    assert_eq!(call!(m, C_EncryptInit, h, &mut mm, k), CKR_OK);
    let mut len: CK_ULONG = 0;
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            plain.as_ptr() as *mut u8,
            plain.len() as CK_ULONG,
            ptr::null_mut(),
            &mut len
        ),
        CKR_OK
    );
    assert_eq!(
        len as usize,
        plain.len() + 16,
        "the query gives the exact length"
    );
    // One byte short: CKR_BUFFER_TOO_SMALL with the length, and the operation stays active.
    let mut ct = vec![0u8; len as usize];
    let mut short = len - 1;
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            plain.as_ptr() as *mut u8,
            plain.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut short
        ),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(short, len);
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            plain.as_ptr() as *mut u8,
            plain.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut len
        ),
        CKR_OK
    );
    ct.truncate(len as usize);
    assert_eq!(ct.len(), plain.len() + 16);
    // The operation ended with the ciphertext.
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            plain.as_ptr() as *mut u8,
            plain.len() as CK_ULONG,
            ct.as_mut_ptr(),
            &mut len
        ),
        CKR_OPERATION_NOT_INITIALIZED
    );
    let lk = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).expect("AES key"),
    );
    let mut check = ct.clone();
    let opened = lk
        .open_in_place(
            aws_lc_rs::aead::Nonce::assume_unique_for_key(iv),
            aws_lc_rs::aead::Aad::from(&aad[..]),
            &mut check,
        )
        .expect("aws-lc opens our GCM ciphertext");
    assert_eq!(opened, &plain[..]);
    // GCM decrypt, multi-part; a flipped tag bit is refused.
    let mut mm = mech_param(CKM_AES_GCM, &mut gcm);
    assert_eq!(call!(m, C_DecryptInit, h, &mut mm, k), CKR_OK);
    let mut out = vec![0u8; 2048];
    let mut n: CK_ULONG = 2048;
    assert_eq!(
        call!(
            m,
            C_DecryptUpdate,
            h,
            ct.as_ptr() as *mut u8,
            500,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    let mut got = out[..n as usize].to_vec();
    let mut n: CK_ULONG = 2048;
    assert_eq!(
        call!(
            m,
            C_DecryptUpdate,
            h,
            ct[500..].as_ptr() as *mut u8,
            (ct.len() - 500) as CK_ULONG,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    got.extend_from_slice(&out[..n as usize]);
    let mut n: CK_ULONG = 2048;
    assert_eq!(
        call!(m, C_DecryptFinal, h, out.as_mut_ptr(), &mut n),
        CKR_OK
    );
    got.extend_from_slice(&out[..n as usize]);
    assert_eq!(got, plain);
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut mm = mech_param(CKM_AES_GCM, &mut gcm);
    assert_eq!(call!(m, C_DecryptInit, h, &mut mm, k), CKR_OK);
    let mut n: CK_ULONG = 2048;
    assert_eq!(
        call!(
            m,
            C_Decrypt,
            h,
            bad.as_mut_ptr(),
            bad.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_ENCRYPTED_DATA_INVALID
    );
    // CBC-PAD multi-part in odd pieces equals single part.
    let mut iv16 = [3u8; 16];
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv16.as_mut_ptr() as *mut c_void,
        ulParameterLen: 16,
    };
    assert_eq!(call!(m, C_EncryptInit, h, &mut cbc, k), CKR_OK);
    let mut single = vec![0u8; 1100];
    let mut n: CK_ULONG = 1100;
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            plain.as_ptr() as *mut u8,
            1000,
            single.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    single.truncate(n as usize);
    assert_eq!(single.len(), 1008);
    assert_eq!(call!(m, C_EncryptInit, h, &mut cbc, k), CKR_OK);
    let mut multi = Vec::new();
    for chunk in plain.chunks(37) {
        let mut q: CK_ULONG = 0;
        assert_eq!(
            call!(
                m,
                C_EncryptUpdate,
                h,
                chunk.as_ptr() as *mut u8,
                chunk.len() as CK_ULONG,
                ptr::null_mut(),
                &mut q
            ),
            CKR_OK
        );
        let mut b = vec![0u8; q as usize];
        let mut q2 = q;
        assert_eq!(
            call!(
                m,
                C_EncryptUpdate,
                h,
                chunk.as_ptr() as *mut u8,
                chunk.len() as CK_ULONG,
                b.as_mut_ptr(),
                &mut q2
            ),
            CKR_OK
        );
        assert_eq!(q2, q, "the length query told the truth");
        multi.extend_from_slice(&b[..q2 as usize]);
    }
    let mut b = [0u8; 16];
    let mut q: CK_ULONG = 16;
    assert_eq!(call!(m, C_EncryptFinal, h, b.as_mut_ptr(), &mut q), CKR_OK);
    multi.extend_from_slice(&b[..q as usize]);
    assert_eq!(multi, single);
    // Decrypt CBC-PAD in pieces; the final block fits a one-block buffer.
    assert_eq!(call!(m, C_DecryptInit, h, &mut cbc, k), CKR_OK);
    let mut back = Vec::new();
    for chunk in single.chunks(100) {
        let mut b = vec![0u8; 200];
        let mut q: CK_ULONG = 200;
        assert_eq!(
            call!(
                m,
                C_DecryptUpdate,
                h,
                chunk.as_ptr() as *mut u8,
                chunk.len() as CK_ULONG,
                b.as_mut_ptr(),
                &mut q
            ),
            CKR_OK
        );
        back.extend_from_slice(&b[..q as usize]);
    }
    let mut b = [0u8; 16];
    let mut q: CK_ULONG = 16;
    assert_eq!(call!(m, C_DecryptFinal, h, b.as_mut_ptr(), &mut q), CKR_OK);
    back.extend_from_slice(&b[..q as usize]);
    assert_eq!(back, plain);
}

#[test]
fn rsa_oaep_and_pkcs1_encryption_round_trip() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let bits: CK_ULONG = 2048;
    let mut pub_t = [attr(CKA_MODULUS_BITS, &bits), attr(CKA_ENCRYPT, &TRUE)];
    let mut priv_t = [attr(CKA_DECRYPT, &TRUE)];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            2,
            priv_t.as_mut_ptr(),
            1,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    // Bad OAEP parameters are refused at *Init (§5.8.1 / §5.10.1 list
    // CKR_MECHANISM_PARAM_INVALID there), with no operation left active.
    for (hash, mgf) in [(0x7777, CKG_MGF1_SHA256), (CKM_SHA256, 0x99)] {
        let mut bad = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: hash,
            mgf,
            source: 0,
            pSourceData: ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let mut mm = mech_param(CKM_RSA_PKCS_OAEP, &mut bad);
        assert_eq!(
            call!(m, C_EncryptInit, h, &mut mm, p),
            CKR_MECHANISM_PARAM_INVALID
        );
        assert_eq!(
            call!(m, C_DecryptInit, h, &mut mm, k),
            CKR_MECHANISM_PARAM_INVALID
        );
    }
    let mut label = *b"label";
    let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: label.as_mut_ptr() as *mut c_void,
        ulSourceDataLen: 5,
    };
    for mut mm in [mech_param(CKM_RSA_PKCS_OAEP, &mut oaep), mech(CKM_RSA_PKCS)] {
        let msg = b"a secret of 32 bytes, more or..";
        assert_eq!(call!(m, C_EncryptInit, h, &mut mm, p), CKR_OK);
        let mut ct = [0u8; 256];
        let mut n: CK_ULONG = 256;
        assert_eq!(
            call!(
                m,
                C_Encrypt,
                h,
                msg.as_ptr() as *mut u8,
                msg.len() as CK_ULONG,
                ct.as_mut_ptr(),
                &mut n
            ),
            CKR_OK
        );
        assert_eq!(n, 256);
        assert_eq!(call!(m, C_DecryptInit, h, &mut mm, k), CKR_OK);
        let mut pt = [0u8; 256];
        let mut n: CK_ULONG = 256;
        assert_eq!(
            call!(
                m,
                C_Decrypt,
                h,
                ct.as_mut_ptr(),
                256,
                pt.as_mut_ptr(),
                &mut n
            ),
            CKR_OK
        );
        assert_eq!(&pt[..n as usize], msg);
        ct[100] ^= 0x55;
        assert_eq!(call!(m, C_DecryptInit, h, &mut mm, k), CKR_OK);
        let mut n: CK_ULONG = 256;
        let rv = call!(
            m,
            C_Decrypt,
            h,
            ct.as_mut_ptr(),
            256,
            pt.as_mut_ptr(),
            &mut n
        );
        if mm.mechanism == CKM_RSA_PKCS_OAEP {
            assert_eq!(rv, CKR_ENCRYPTED_DATA_INVALID);
        } else {
            // A damaged PKCS #1 v1.5 block is valid padding about once in a few hundred tries;
            // what must never happen is the original message coming back.
            assert!(
                rv == CKR_ENCRYPTED_DATA_INVALID || (rv == CKR_OK && &pt[..n as usize] != msg),
                "rv {rv:#x}"
            );
        }
    }
}

#[test]
fn hmac_digest_and_random() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let sk = CKO_SECRET_KEY;
    let gs = CKK_GENERIC_SECRET;
    let key = b"hmac key of some length";
    let mut t = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, key),
    ];
    let mut k = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 3, &mut k),
        CKR_OK
    );
    let data = vec![0x5au8; 1024];
    let mac = sign(m, h, &mut mech(CKM_SHA256_HMAC), k, &data);
    let expect = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
        &data,
    );
    assert_eq!(mac, expect.as_ref());
    assert_eq!(
        verify(m, h, &mut mech(CKM_SHA256_HMAC), k, &data, &mac),
        CKR_OK
    );
    let mut bad = mac.clone();
    bad[0] ^= 1;
    assert_eq!(
        verify(m, h, &mut mech(CKM_SHA256_HMAC), k, &data, &bad),
        CKR_SIGNATURE_INVALID
    );
    // Digest: known answer for "abc", single and multi-part.
    let abc_sha256 = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];
    assert_eq!(call!(m, C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    let mut out = [0u8; 32];
    let mut n: CK_ULONG = 32;
    assert_eq!(
        call!(
            m,
            C_Digest,
            h,
            b"abc".as_ptr() as *mut u8,
            3,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    assert_eq!(out, abc_sha256);
    assert_eq!(call!(m, C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    assert_eq!(
        call!(m, C_DigestInit, h, &mut mech(CKM_SHA256)),
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(
        call!(m, C_DigestUpdate, h, b"a".as_ptr() as *mut u8, 1),
        CKR_OK
    );
    assert_eq!(
        call!(m, C_DigestUpdate, h, b"bc".as_ptr() as *mut u8, 2),
        CKR_OK
    );
    let mut n: CK_ULONG = 31;
    assert_eq!(
        call!(m, C_DigestFinal, h, out.as_mut_ptr(), &mut n),
        CKR_BUFFER_TOO_SMALL
    );
    assert_eq!(n, 32);
    out = [0; 32];
    assert_eq!(call!(m, C_DigestFinal, h, out.as_mut_ptr(), &mut n), CKR_OK);
    assert_eq!(out, abc_sha256);
    assert_eq!(
        call!(m, C_DigestInit, h, &mut mech(CKM_SHA256_RSA_PKCS)),
        CKR_MECHANISM_INVALID
    );
    // C_DigestKey feeds a secret key's value without revealing it.
    assert_eq!(call!(m, C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    assert_eq!(call!(m, C_DigestKey, h, k), CKR_OK);
    let mut n: CK_ULONG = 32;
    assert_eq!(call!(m, C_DigestFinal, h, out.as_mut_ptr(), &mut n), CKR_OK);
    assert_eq!(
        out.as_ref(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key).as_ref()
    );
    // Random.
    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    assert_eq!(call!(m, C_GenerateRandom, h, r1.as_mut_ptr(), 32), CKR_OK);
    assert_eq!(call!(m, C_GenerateRandom, h, r2.as_mut_ptr(), 32), CKR_OK);
    assert_ne!(r1, r2);
    assert_eq!(
        call!(m, C_GenerateRandom, h, ptr::null_mut(), 32),
        CKR_ARGUMENTS_BAD
    );
    assert_eq!(
        call!(m, C_SeedRandom, h, r1.as_mut_ptr(), 32),
        CKR_RANDOM_SEED_NOT_SUPPORTED
    );
}

#[test]
fn unimplemented_functions_say_not_supported() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    assert_eq!(
        call!(m, C_GetOperationState, h, ptr::null_mut(), ptr::null_mut()),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_GetOperationState"
    );
    assert_eq!(
        call!(m, C_SetOperationState, h, ptr::null_mut(), 0, 0, 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SetOperationState"
    );
    assert_eq!(
        call!(m, C_SignRecoverInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignRecoverInit"
    );
    assert_eq!(
        call!(
            m,
            C_SignRecover,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignRecover"
    );
    assert_eq!(
        call!(m, C_VerifyRecoverInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_VerifyRecoverInit"
    );
    assert_eq!(
        call!(
            m,
            C_VerifyRecover,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_VerifyRecover"
    );
    assert_eq!(
        call!(
            m,
            C_DigestEncryptUpdate,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DigestEncryptUpdate"
    );
    assert_eq!(
        call!(
            m,
            C_DecryptDigestUpdate,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DecryptDigestUpdate"
    );
    assert_eq!(
        call!(
            m,
            C_SignEncryptUpdate,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignEncryptUpdate"
    );
    assert_eq!(
        call!(
            m,
            C_DecryptVerifyUpdate,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DecryptVerifyUpdate"
    );
    assert_eq!(
        call!(m, C_MessageEncryptInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageEncryptInit"
    );
    assert_eq!(
        call!(
            m,
            C_EncryptMessage,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_EncryptMessage"
    );
    assert_eq!(
        call!(
            m,
            C_EncryptMessageBegin,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_EncryptMessageBegin"
    );
    assert_eq!(
        call!(
            m,
            C_EncryptMessageNext,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_EncryptMessageNext"
    );
    assert_eq!(
        call!(m, C_MessageEncryptFinal, h),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageEncryptFinal"
    );
    assert_eq!(
        call!(m, C_MessageDecryptInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageDecryptInit"
    );
    assert_eq!(
        call!(
            m,
            C_DecryptMessage,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DecryptMessage"
    );
    assert_eq!(
        call!(
            m,
            C_DecryptMessageBegin,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DecryptMessageBegin"
    );
    assert_eq!(
        call!(
            m,
            C_DecryptMessageNext,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_DecryptMessageNext"
    );
    assert_eq!(
        call!(m, C_MessageDecryptFinal, h),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageDecryptFinal"
    );
    assert_eq!(
        call!(m, C_MessageSignInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageSignInit"
    );
    assert_eq!(
        call!(
            m,
            C_SignMessage,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignMessage"
    );
    assert_eq!(
        call!(m, C_SignMessageBegin, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignMessageBegin"
    );
    assert_eq!(
        call!(
            m,
            C_SignMessageNext,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_SignMessageNext"
    );
    assert_eq!(
        call!(m, C_MessageSignFinal, h),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageSignFinal"
    );
    assert_eq!(
        call!(m, C_MessageVerifyInit, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageVerifyInit"
    );
    assert_eq!(
        call!(
            m,
            C_VerifyMessage,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_VerifyMessage"
    );
    assert_eq!(
        call!(m, C_VerifyMessageBegin, h, ptr::null_mut(), 0),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_VerifyMessageBegin"
    );
    assert_eq!(
        call!(
            m,
            C_VerifyMessageNext,
            h,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            0
        ),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_VerifyMessageNext"
    );
    assert_eq!(
        call!(m, C_MessageVerifyFinal, h),
        CKR_FUNCTION_NOT_SUPPORTED,
        "C_MessageVerifyFinal"
    );
    assert_eq!(call!(m, C_GetFunctionStatus, h), CKR_FUNCTION_NOT_PARALLEL);
    assert_eq!(call!(m, C_CancelFunction, h), CKR_FUNCTION_NOT_PARALLEL);
    assert_eq!(
        call!(m, C_GetFunctionStatus, 0xbad),
        CKR_SESSION_HANDLE_INVALID
    );
    assert_eq!(m.finalize(), CKR_OK);
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            ptr::null_mut(),
            0,
            0,
            ptr::null_mut(),
            ptr::null_mut()
        ),
        CKR_CRYPTOKI_NOT_INITIALIZED
    );
    assert_eq!(m.initialize_with(Some(&fx.config_arg())), CKR_OK);
}

#[test]
fn session_cancel_ends_operations() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    assert_eq!(call!(m, C_DigestInit, h, &mut mech(CKM_SHA256)), CKR_OK);
    assert_eq!(call!(m, C_SessionCancel, h, CKF_DIGEST), CKR_OK);
    assert_eq!(
        call!(m, C_DigestUpdate, h, b"a".as_ptr() as *mut u8, 1),
        CKR_OPERATION_NOT_INITIALIZED
    );
}

#[test]
fn imported_keys_and_certificates_work_like_generated_ones() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    // An EC key pair imported from its scalar and point: sign with one, verify with the other.
    let scalar = [0x21u8; 32];
    // aws-lc derives the public point of the scalar, from a SEC1 ECPrivateKey (version 1, the
    // scalar, the P-256 OID).
    let mut sec1 = vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
    sec1.extend_from_slice(&scalar);
    sec1.extend_from_slice(&[
        0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ]);
    let kp = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &sec1,
    )
    .expect("a valid SEC1 key");
    let point = aws_lc_rs::signature::KeyPair::public_key(&kp)
        .as_ref()
        .to_vec();
    let pk = CKO_PRIVATE_KEY;
    let pubk = CKO_PUBLIC_KEY;
    let ec = CKK_EC;
    let mut priv_t = [
        attr(CKA_CLASS, &pk),
        attr(CKA_KEY_TYPE, &ec),
        attr_bytes(CKA_EC_PARAMS, P256_OID),
        attr_bytes(CKA_VALUE, &scalar),
        attr(CKA_SIGN, &TRUE),
    ];
    let mut k = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, priv_t.as_mut_ptr(), 5, &mut k),
        CKR_OK
    );
    // The point raw (04||X||Y): accepted, and returned DER-wrapped.
    let mut pub_t = [
        attr(CKA_CLASS, &pubk),
        attr(CKA_KEY_TYPE, &ec),
        attr_bytes(CKA_EC_PARAMS, P256_OID),
        attr_bytes(CKA_EC_POINT, &point),
    ];
    let mut p = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, pub_t.as_mut_ptr(), 4, &mut p),
        CKR_OK
    );
    let stored = get_bytes(m, h, p, CKA_EC_POINT);
    assert_eq!(&stored[..2], &[0x04, 0x41]);
    assert_eq!(&stored[2..], &point[..]);
    let sig = sign(m, h, &mut mech(CKM_ECDSA_SHA256), k, b"imported");
    assert_eq!(
        verify(m, h, &mut mech(CKM_ECDSA_SHA256), p, b"imported", &sig),
        CKR_OK
    );
    // A point that is not on the curve is refused.
    let mut off = point.clone();
    off[40] ^= 1;
    let mut bad_t = [
        attr(CKA_CLASS, &pubk),
        attr(CKA_KEY_TYPE, &ec),
        attr_bytes(CKA_EC_PARAMS, P256_OID),
        attr_bytes(CKA_EC_POINT, &off),
    ];
    assert_ne!(
        call!(m, C_CreateObject, h, bad_t.as_mut_ptr(), 4, &mut p),
        CKR_OK
    );
    // An RSA public key imported from a generated key's modulus and exponent verifies its
    // signatures; the token computes CKA_MODULUS_BITS.
    let (gp, gk) = gen_rsa(m, h, false, "src");
    let n = get_bytes(m, h, gp, CKA_MODULUS);
    let e = get_bytes(m, h, gp, CKA_PUBLIC_EXPONENT);
    let rsa = CKK_RSA;
    let mut rt = [
        attr(CKA_CLASS, &pubk),
        attr(CKA_KEY_TYPE, &rsa),
        attr_bytes(CKA_MODULUS, &n),
        attr_bytes(CKA_PUBLIC_EXPONENT, &e),
    ];
    let mut rp = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, rt.as_mut_ptr(), 4, &mut rp),
        CKR_OK
    );
    let bits = get_bytes(m, h, rp, CKA_MODULUS_BITS);
    assert_eq!(bits, (2048 as CK_ULONG).to_ne_bytes());
    let sig = sign(m, h, &mut mech(CKM_SHA256_RSA_PKCS), gk, b"rsa");
    assert_eq!(
        verify(m, h, &mut mech(CKM_SHA256_RSA_PKCS), rp, b"rsa", &sig),
        CKR_OK
    );
    // A missing modulus is an incomplete template.
    let mut incomplete = [
        attr(CKA_CLASS, &pubk),
        attr(CKA_KEY_TYPE, &rsa),
        attr_bytes(CKA_PUBLIC_EXPONENT, &e),
    ];
    assert_eq!(
        call!(m, C_CreateObject, h, incomplete.as_mut_ptr(), 3, &mut rp),
        CKR_TEMPLATE_INCOMPLETE
    );
    // An X.509 certificate object, found by its CKA_ID.
    let cert = CKO_CERTIFICATE;
    let x509 = CKC_X_509;
    let der = b"\x30\x03\x02\x01\x01 (not parsed: the token stores certificates as given)";
    let mut ct = [
        attr(CKA_CLASS, &cert),
        attr(CKA_CERTIFICATE_TYPE, &x509),
        attr(CKA_TOKEN, &TRUE),
        attr_bytes(CKA_SUBJECT, b"\x30\x00"),
        attr_bytes(CKA_ID, b"cert-1"),
        attr_bytes(CKA_VALUE, der),
    ];
    let mut c = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, ct.as_mut_ptr(), 6, &mut c),
        CKR_OK
    );
    assert_eq!(
        find(
            m,
            h,
            &mut [attr_bytes(CKA_ID, b"cert-1"), attr(CKA_CLASS, &cert)]
        ),
        vec![c]
    );
    assert_eq!(get_bytes(m, h, c, CKA_VALUE), der);
    let mut no_subject = [
        attr(CKA_CLASS, &cert),
        attr(CKA_CERTIFICATE_TYPE, &x509),
        attr_bytes(CKA_VALUE, der),
    ];
    assert_eq!(
        call!(m, C_CreateObject, h, no_subject.as_mut_ptr(), 3, &mut c),
        CKR_TEMPLATE_INCOMPLETE
    );
}

/// A template that asks for a wrapping key and says nothing of encryption (pkcs11-tool's
/// `--keygen --usage-wrap` and `--keypairgen --usage-wrap`) gets a key that wraps and does not
/// also decrypt: the defaults of CKA_ENCRYPT / CKA_DECRYPT are the token's to choose and "may
/// depend on the values of other attributes" (PKCS #11 3.0, the common footnotes of the object
/// attribute tables, Table 10 in section 4.2), and CKR_TEMPLATE_INCONSISTENT is for a template that
/// "specifies attribute values which are mutually incompatible" (section 5.1.6), which this one
/// does not. A template that asks for wrap and decrypt together is still refused (policy.rs).
#[test]
fn a_template_asking_only_to_wrap_gets_a_key_that_does_not_decrypt() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    // The shape pkcs11-tool 0.23 sends for `--keygen --key-type AES:32 --usage-wrap`.
    let kek = gen_aes(
        m,
        h,
        &[
            attr(CKA_SENSITIVE, &FALSE),
            attr(CKA_EXTRACTABLE, &FALSE),
            attr(CKA_PRIVATE, &FALSE),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_DERIVE, &FALSE),
        ],
    );
    for (ty, want) in [
        (CKA_WRAP, CK_TRUE),
        (CKA_UNWRAP, CK_TRUE),
        (CKA_ENCRYPT, CK_FALSE),
        (CKA_DECRYPT, CK_FALSE),
    ] {
        assert_eq!(get_bytes(m, h, kek, ty), [want], "attribute {ty:#x}");
    }
    let mut iv = [0u8; 16];
    let mut cbc = mech_param(CKM_AES_CBC_PAD, &mut iv);
    assert_eq!(
        call!(m, C_DecryptInit, h, &mut cbc, kek),
        CKR_KEY_FUNCTION_NOT_PERMITTED,
        "the KEK does not decrypt"
    );
    let payload = gen_aes(m, h, &[attr(CKA_EXTRACTABLE, &TRUE)]);
    let mut wrapped = [0u8; 40];
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            payload,
            wrapped.as_mut_ptr(),
            &mut n
        ),
        CKR_OK,
        "the KEK wraps"
    );
    // A key asked only to wrap (not unwrap) still encrypts; a data key still does both.
    let wrap_only = gen_aes(m, h, &[attr(CKA_WRAP, &TRUE)]);
    assert_eq!(get_bytes(m, h, wrap_only, CKA_ENCRYPT), [CK_TRUE]);
    assert_eq!(get_bytes(m, h, wrap_only, CKA_DECRYPT), [CK_FALSE]);
    let data_key = gen_aes(m, h, &[]);
    assert_eq!(get_bytes(m, h, data_key, CKA_ENCRYPT), [CK_TRUE]);
    assert_eq!(get_bytes(m, h, data_key, CKA_DECRYPT), [CK_TRUE]);

    // RSA (`--keypairgen --key-type rsa:3072 --usage-wrap`): the public key wraps (and encrypts,
    // as RSA public keys do by default), the private key unwraps and does not decrypt.
    let bits: CK_ULONG = 2048;
    let (p, k) = hsmpool_tests::raw::generate_pair(
        m,
        h,
        &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
        &mut [attr(CKA_MODULUS_BITS, &bits), attr(CKA_WRAP, &TRUE)],
        &mut [attr(CKA_UNWRAP, &TRUE)],
    )
    .expect("C_GenerateKeyPair");
    assert_eq!(get_bytes(m, h, p, CKA_ENCRYPT), [CK_TRUE]);
    assert_eq!(get_bytes(m, h, k, CKA_UNWRAP), [CK_TRUE]);
    assert_eq!(get_bytes(m, h, k, CKA_DECRYPT), [CK_FALSE]);
}

/// A mechanism that takes a parameter is refused at its *Init when the parameter is missing or
/// out of range (PKCS #11 3.0 section 5.1.6, CKR_MECHANISM_PARAM_INVALID: "invalid parameters
/// were supplied to the mechanism specified to the cryptographic operation"; the parameter is
/// supplied at *Init), and no operation is left active. pkcs11-tool offers
/// SHA-1-HMAC-GENERAL with no CK_MAC_GENERAL_PARAMS: the module used to accept the C_SignInit
/// and fail the C_Sign.
#[test]
fn a_missing_mechanism_parameter_is_refused_at_init() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let gs = CKK_GENERIC_SECRET;
    let sk = CKO_SECRET_KEY;
    let mut t = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, &[0x0bu8; 32]),
        attr(CKA_SIGN, &TRUE),
        attr(CKA_VERIFY, &TRUE),
    ];
    let mut mac_key = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 5, &mut mac_key),
        CKR_OK
    );
    let aes_key = gen_aes(m, h, &[]);
    let data: &[u8] = b"data to MAC";
    for (mm, key, full) in [
        (CKM_SHA_1_HMAC_GENERAL, mac_key, 20),
        (CKM_SHA256_HMAC_GENERAL, mac_key, 32),
        (CKM_SHA512_HMAC_GENERAL, mac_key, 64),
        (CKM_AES_CMAC_GENERAL, aes_key, 16),
    ] {
        assert_eq!(
            call!(m, C_SignInit, h, &mut mech(mm), key),
            CKR_MECHANISM_PARAM_INVALID,
            "{mm:#x} without its MAC length"
        );
        assert_eq!(
            call!(m, C_VerifyInit, h, &mut mech(mm), key),
            CKR_MECHANISM_PARAM_INVALID,
            "{mm:#x} verify without its MAC length"
        );
        let mut none: CK_ULONG = 0;
        let mut over: CK_ULONG = full + 1;
        for len in [&mut none, &mut over] {
            assert_eq!(
                call!(m, C_SignInit, h, &mut mech_param(mm, len), key),
                CKR_MECHANISM_PARAM_INVALID,
                "{mm:#x} with a MAC length outside 1..={full}"
            );
        }
        let mut sig = [0u8; 64];
        let mut n: CK_ULONG = 64;
        assert_eq!(
            call!(
                m,
                C_Sign,
                h,
                data.as_ptr() as *mut u8,
                3,
                sig.as_mut_ptr(),
                &mut n
            ),
            CKR_OPERATION_NOT_INITIALIZED,
            "no operation was left active"
        );
        // With its parameter the mechanism works, and the MAC is as long as asked.
        let mut len: CK_ULONG = 10;
        let mac = sign(m, h, &mut mech_param(mm, &mut len), key, data);
        assert_eq!(mac.len(), 10, "{mm:#x} with a 10-byte MAC length");
    }
    let mut iv = [0u8; 16];
    assert_eq!(
        call!(m, C_EncryptInit, h, &mut mech(CKM_AES_CTR), aes_key),
        CKR_MECHANISM_PARAM_INVALID,
        "AES-CTR without CK_AES_CTR_PARAMS"
    );
    assert_eq!(
        call!(
            m,
            C_EncryptInit,
            h,
            &mut mech_param(CKM_AES_CTR, &mut iv),
            aes_key
        ),
        CKR_MECHANISM_PARAM_INVALID,
        "AES-CTR with a bare counter block"
    );
    let mut ctr = CK_AES_CTR_PARAMS {
        ulCounterBits: 32,
        cb: [0u8; 16],
    };
    assert_eq!(
        call!(
            m,
            C_EncryptInit,
            h,
            &mut mech_param(CKM_AES_CTR, &mut ctr),
            aes_key
        ),
        CKR_OK,
        "AES-CTR with its parameters"
    );
}
