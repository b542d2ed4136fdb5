//! Templates (issue 11): the attributes only the token sets are `CKR_ATTRIBUTE_READ_ONLY` in
//! every template an application gives, whatever their value.
//!
//! PKCS #11 3.0 §4.2 (the common footnotes of the attribute tables): footnotes 2, 4 and 6 mark
//! an attribute that MUST NOT be specified when an object is created, generated or unwrapped.
//! `CKA_UNIQUE_ID` (§4.4), `CKA_LOCAL` and `CKA_KEY_GEN_MECHANISM` (§4.7), `CKA_ALWAYS_SENSITIVE`
//! and `CKA_NEVER_EXTRACTABLE` (§4.9, §4.10) carry all three, and none of them is modifiable (no
//! footnote 8), so `C_CopyObject` and `C_SetAttributeValue` refuse them too (§5.7.2, §5.7.6).

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{
    attr, attr_bytes, attr_value, create_secret, find, generate_pair, mech, mech_param, Fixture,
    Module, FALSE, P256_PARAMS, TRUE,
};

const KEK: [u8; 32] = [0x4b; 32];
const AES_VALUE: [u8; 32] = [0x19; 32];
const IKM: [u8; 22] = [0x0b; 22];

/// Every object the session sees.
fn all_objects(m: &Module, h: CK_SESSION_HANDLE) -> Vec<CK_OBJECT_HANDLE> {
    find(m, h, &mut [])
}

/// The token-only attributes, each with values the token itself would give (so a module that
/// only refuses values differing from its own is caught) and others.
fn token_only() -> Vec<(&'static str, CK_ATTRIBUTE_TYPE, Vec<u8>)> {
    let ul = |v: CK_ULONG| v.to_ne_bytes().to_vec();
    vec![
        ("CKA_LOCAL true", CKA_LOCAL, vec![CK_TRUE]),
        ("CKA_LOCAL false", CKA_LOCAL, vec![CK_FALSE]),
        (
            "CKA_ALWAYS_SENSITIVE true",
            CKA_ALWAYS_SENSITIVE,
            vec![CK_TRUE],
        ),
        (
            "CKA_ALWAYS_SENSITIVE false",
            CKA_ALWAYS_SENSITIVE,
            vec![CK_FALSE],
        ),
        (
            "CKA_NEVER_EXTRACTABLE true",
            CKA_NEVER_EXTRACTABLE,
            vec![CK_TRUE],
        ),
        (
            "CKA_NEVER_EXTRACTABLE false",
            CKA_NEVER_EXTRACTABLE,
            vec![CK_FALSE],
        ),
        (
            "CKA_KEY_GEN_MECHANISM AES",
            CKA_KEY_GEN_MECHANISM,
            ul(CKM_AES_KEY_GEN),
        ),
        (
            "CKA_KEY_GEN_MECHANISM EC",
            CKA_KEY_GEN_MECHANISM,
            ul(CKM_EC_KEY_PAIR_GEN),
        ),
        (
            "CKA_KEY_GEN_MECHANISM unavailable",
            CKA_KEY_GEN_MECHANISM,
            ul(CK_UNAVAILABLE_INFORMATION),
        ),
        ("CKA_UNIQUE_ID", CKA_UNIQUE_ID, b"0000000000000001".to_vec()),
    ]
}

/// Rule B: `C_CreateObject`, `C_GenerateKey`, `C_GenerateKeyPair` (either template),
/// `C_UnwrapKey`, `C_DeriveKey`, `C_CopyObject` and `C_SetAttributeValue` all answer
/// `CKR_ATTRIBUTE_READ_ONLY` to a token-only attribute, and make or change nothing.
#[test]
fn token_only_attributes_are_read_only_in_every_application_template() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let kek = create_secret(
        m,
        h,
        CKK_AES,
        &KEK,
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    )
    .expect("KEK");
    let movable =
        create_secret(m, h, CKK_AES, &AES_VALUE, &[attr(CKA_EXTRACTABLE, &TRUE)]).expect("key");
    let wrapped = {
        let mut len: CK_ULONG = 48;
        let mut out = vec![0u8; 48];
        assert_eq!(
            call!(
                m,
                C_WrapKey,
                h,
                &mut mech(CKM_AES_KEY_WRAP),
                kek,
                movable,
                out.as_mut_ptr(),
                &mut len
            ),
            CKR_OK
        );
        out.truncate(len as usize);
        out
    };
    let base = create_secret(m, h, CKK_GENERIC_SECRET, &IKM, &[attr(CKA_DERIVE, &TRUE)])
        .expect("HKDF base key");
    // A generated key: the token set CKA_LOCAL, CKA_KEY_GEN_MECHANISM, CKA_ALWAYS_SENSITIVE
    // and CKA_NEVER_EXTRACTABLE on it, so a template repeating one of them names its value.
    let len: CK_ULONG = 32;
    let mut gt = [attr(CKA_VALUE_LEN, &len)];
    let mut generated = 0;
    assert_eq!(
        call!(
            m,
            C_GenerateKey,
            h,
            &mut mech(CKM_AES_KEY_GEN),
            gt.as_mut_ptr(),
            1,
            &mut generated
        ),
        CKR_OK
    );
    assert_eq!(
        attr_value(m, h, generated, CKA_LOCAL),
        Ok(vec![CK_TRUE]),
        "a generated key is local"
    );
    let before = all_objects(m, h);
    let class = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let gs = CKK_GENERIC_SECRET;
    for (name, ty, value) in token_only() {
        let a = attr_bytes(ty, &value);
        assert_eq!(
            create_secret(m, h, CKK_AES, &AES_VALUE, &[a]),
            Err(CKR_ATTRIBUTE_READ_ONLY),
            "C_CreateObject with {name}"
        );
        let mut t = [attr(CKA_VALUE_LEN, &len), a];
        let mut o = 0;
        assert_eq!(
            call!(
                m,
                C_GenerateKey,
                h,
                &mut mech(CKM_AES_KEY_GEN),
                t.as_mut_ptr(),
                2,
                &mut o
            ),
            CKR_ATTRIBUTE_READ_ONLY,
            "C_GenerateKey with {name}"
        );
        for in_public in [true, false] {
            let mut pub_t = vec![
                attr_bytes(CKA_EC_PARAMS, &P256_PARAMS),
                attr(CKA_VERIFY, &TRUE),
            ];
            let mut priv_t = vec![attr(CKA_SIGN, &TRUE)];
            if in_public {
                pub_t.push(a);
            } else {
                priv_t.push(a);
            }
            assert_eq!(
                generate_pair(
                    m,
                    h,
                    &mut mech(CKM_EC_KEY_PAIR_GEN),
                    &mut pub_t,
                    &mut priv_t
                ),
                Err(CKR_ATTRIBUTE_READ_ONLY),
                "C_GenerateKeyPair with {name} in the {} template",
                if in_public { "public" } else { "private" }
            );
        }
        let mut t = [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &aes), a];
        assert_eq!(
            call!(
                m,
                C_UnwrapKey,
                h,
                &mut mech(CKM_AES_KEY_WRAP),
                kek,
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as CK_ULONG,
                t.as_mut_ptr(),
                3,
                &mut o
            ),
            CKR_ATTRIBUTE_READ_ONLY,
            "C_UnwrapKey with {name}"
        );
        let mut hp = CK_HKDF_PARAMS {
            bExtract: CK_TRUE,
            bExpand: CK_TRUE,
            prfHashMechanism: CKM_SHA256,
            ulSaltType: CKF_HKDF_SALT_NULL,
            pSalt: ptr::null_mut(),
            ulSaltLen: 0,
            hSaltKey: 0,
            pInfo: ptr::null_mut(),
            ulInfoLen: 0,
        };
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &gs),
            attr(CKA_VALUE_LEN, &len),
            a,
        ];
        assert_eq!(
            call!(
                m,
                C_DeriveKey,
                h,
                &mut mech_param(CKM_HKDF_DERIVE, &mut hp),
                base,
                t.as_mut_ptr(),
                4,
                &mut o
            ),
            CKR_ATTRIBUTE_READ_ONLY,
            "C_DeriveKey with {name}"
        );
        for target in [generated, movable] {
            let mut t = [a];
            assert_eq!(
                call!(m, C_CopyObject, h, target, t.as_mut_ptr(), 1, &mut o),
                CKR_ATTRIBUTE_READ_ONLY,
                "C_CopyObject with {name}"
            );
            let was = attr_value(m, h, target, ty);
            assert_eq!(
                call!(m, C_SetAttributeValue, h, target, t.as_mut_ptr(), 1),
                CKR_ATTRIBUTE_READ_ONLY,
                "C_SetAttributeValue with {name}"
            );
            assert_eq!(
                attr_value(m, h, target, ty),
                was,
                "{name}: the refused C_SetAttributeValue changed nothing"
            );
        }
    }
    assert_eq!(all_objects(m, h), before, "no refused call made an object");
}

/// What the token sets, it still sets: a generated key is local, with its generating mechanism,
/// always sensitive and never extractable; an imported one is none of these.
#[test]
fn the_token_still_sets_what_applications_may_not() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let len: CK_ULONG = 32;
    let mut t = [attr(CKA_VALUE_LEN, &len)];
    let mut k = 0;
    assert_eq!(
        call!(
            m,
            C_GenerateKey,
            h,
            &mut mech(CKM_AES_KEY_GEN),
            t.as_mut_ptr(),
            1,
            &mut k
        ),
        CKR_OK
    );
    let ul = |v: CK_ULONG| v.to_ne_bytes().to_vec();
    assert_eq!(attr_value(m, h, k, CKA_LOCAL), Ok(vec![CK_TRUE]));
    assert_eq!(
        attr_value(m, h, k, CKA_KEY_GEN_MECHANISM),
        Ok(ul(CKM_AES_KEY_GEN))
    );
    assert_eq!(attr_value(m, h, k, CKA_ALWAYS_SENSITIVE), Ok(vec![CK_TRUE]));
    assert_eq!(
        attr_value(m, h, k, CKA_NEVER_EXTRACTABLE),
        Ok(vec![CK_TRUE])
    );
    assert!(matches!(attr_value(m, h, k, CKA_UNIQUE_ID), Ok(v) if !v.is_empty()));
    let imported = create_secret(m, h, CKK_AES, &AES_VALUE, &[]).expect("import");
    assert_eq!(attr_value(m, h, imported, CKA_LOCAL), Ok(vec![CK_FALSE]));
    assert_eq!(
        attr_value(m, h, imported, CKA_KEY_GEN_MECHANISM),
        Ok(ul(CK_UNAVAILABLE_INFORMATION))
    );
    assert_eq!(
        attr_value(m, h, imported, CKA_ALWAYS_SENSITIVE),
        Ok(vec![CK_FALSE])
    );
    // A copy keeps what the token set on the original (§5.7.2 copies the object).
    let mut c = 0;
    let mut ct = [attr_bytes(CKA_LABEL, b"copy")];
    assert_eq!(
        call!(m, C_CopyObject, h, k, ct.as_mut_ptr(), 1, &mut c),
        CKR_OK
    );
    assert_eq!(attr_value(m, h, c, CKA_LOCAL), Ok(vec![CK_TRUE]));
    // Reading them in a template is not setting them.
    let mut local: CK_BBOOL = 0;
    let mut a = CK_ATTRIBUTE {
        type_: CKA_LOCAL,
        pValue: &mut local as *mut CK_BBOOL as *mut c_void,
        ulValueLen: 1,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, k, &mut a, 1), CKR_OK);
    assert_eq!(local, CK_TRUE);
    assert!(find(m, h, &mut [attr(CKA_LOCAL, &TRUE)]).contains(&k));
}
