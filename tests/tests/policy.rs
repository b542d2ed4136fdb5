//! The key-usage policy through the C ABI, one test per rule: the exact CK_RV, and that no key
//! bytes come out and no object is left behind.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{
    attr, attr_bytes, create, create_secret, mech, Fixture, Module, FALSE, SO_PIN, TRUE, USER_PIN,
};

fn count_objects(m: &Module, h: CK_SESSION_HANDLE) -> usize {
    assert_eq!(call!(m, C_FindObjectsInit, h, ptr::null_mut(), 0), CKR_OK);
    let mut buf = [0 as CK_OBJECT_HANDLE; 256];
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_FindObjects, h, buf.as_mut_ptr(), 256, &mut n),
        CKR_OK
    );
    assert_eq!(call!(m, C_FindObjectsFinal, h), CKR_OK);
    n as usize
}

const AES_VALUE: [u8; 32] = [0x5c; 32];

fn aes(
    m: &Module,
    h: CK_SESSION_HANDLE,
    extra: &[CK_ATTRIBUTE],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    create_secret(m, h, CKK_AES, &AES_VALUE, extra)
}

#[test]
fn token_set_attributes_can_never_be_set_by_the_caller() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let before = count_objects(m, h);
    let gen = CKM_AES_KEY_GEN;
    for a in [
        attr(CKA_LOCAL, &TRUE),
        attr(CKA_ALWAYS_SENSITIVE, &TRUE),
        attr(CKA_NEVER_EXTRACTABLE, &TRUE),
        attr(CKA_KEY_GEN_MECHANISM, &gen),
    ] {
        assert_eq!(
            aes(m, h, &[a]),
            Err(CKR_ATTRIBUTE_READ_ONLY),
            "attribute {:#x}",
            a.type_
        );
    }
    let len: CK_ULONG = 32;
    let mut t = [attr(CKA_VALUE_LEN, &len), attr(CKA_LOCAL, &FALSE)];
    let mut k = 0;
    assert_eq!(
        call!(
            m,
            C_GenerateKey,
            h,
            &mut mech(CKM_AES_KEY_GEN),
            t.as_mut_ptr(),
            2,
            &mut k
        ),
        CKR_ATTRIBUTE_READ_ONLY
    );
    assert_eq!(count_objects(m, h), before, "nothing was created");
}

#[test]
fn sensitive_and_extractable_only_move_the_safe_way() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let k = aes(
        m,
        h,
        &[attr(CKA_SENSITIVE, &FALSE), attr(CKA_EXTRACTABLE, &TRUE)],
    )
    .expect("key");
    let mut t = [
        attr(CKA_SENSITIVE, &TRUE),
        attr(CKA_EXTRACTABLE, &FALSE),
        attr(CKA_WRAP_WITH_TRUSTED, &TRUE),
    ];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, k, t.as_mut_ptr(), 3),
        CKR_OK
    );
    for a in [
        attr(CKA_SENSITIVE, &FALSE),
        attr(CKA_EXTRACTABLE, &TRUE),
        attr(CKA_WRAP_WITH_TRUSTED, &FALSE),
    ] {
        let mut t = [a];
        assert_eq!(
            call!(m, C_SetAttributeValue, h, k, t.as_mut_ptr(), 1),
            CKR_ATTRIBUTE_READ_ONLY,
            "{:#x}",
            a.type_
        );
        let mut c = 0;
        assert_eq!(
            call!(m, C_CopyObject, h, k, t.as_mut_ptr(), 1, &mut c),
            CKR_ATTRIBUTE_READ_ONLY,
            "copy {:#x}",
            a.type_
        );
    }
    let mut buf = [0u8; 32];
    let mut a = CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: buf.as_mut_ptr() as *mut c_void,
        ulValueLen: 32,
    };
    assert_eq!(
        call!(m, C_GetAttributeValue, h, k, &mut a, 1),
        CKR_ATTRIBUTE_SENSITIVE
    );
    assert_eq!(buf, [0u8; 32], "no key bytes came out");
    // A copy keeps the security attributes.
    let mut c = 0;
    assert_eq!(
        call!(m, C_CopyObject, h, k, ptr::null_mut(), 0, &mut c),
        CKR_OK
    );
    let mut v: CK_BBOOL = 0;
    let mut a = CK_ATTRIBUTE {
        type_: CKA_SENSITIVE,
        pValue: &mut v as *mut _ as *mut c_void,
        ulValueLen: 1,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, c, &mut a, 1), CKR_OK);
    assert_eq!(v, CK_TRUE);
}

#[test]
fn no_secret_key_may_wrap_and_decrypt_or_unwrap_and_encrypt_however_it_is_made() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let before = count_objects(m, h);
    // Create.
    assert_eq!(
        aes(m, h, &[attr(CKA_WRAP, &TRUE), attr(CKA_DECRYPT, &TRUE)]),
        Err(CKR_TEMPLATE_INCONSISTENT),
        "wrap + decrypt"
    );
    assert_eq!(
        aes(
            m,
            h,
            &[
                attr(CKA_UNWRAP, &TRUE),
                attr(CKA_ENCRYPT, &TRUE),
                attr(CKA_DECRYPT, &FALSE)
            ]
        ),
        Err(CKR_TEMPLATE_INCONSISTENT),
        "unwrap + encrypt"
    );
    // Generate.
    let len: CK_ULONG = 32;
    let mut t = [
        attr(CKA_VALUE_LEN, &len),
        attr(CKA_WRAP, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
    ];
    let mut k = 0;
    assert_eq!(
        call!(
            m,
            C_GenerateKey,
            h,
            &mut mech(CKM_AES_KEY_GEN),
            t.as_mut_ptr(),
            3,
            &mut k
        ),
        CKR_TEMPLATE_INCONSISTENT
    );
    let bits: CK_ULONG = 2048;
    let mut pub_t = [attr(CKA_MODULUS_BITS, &bits)];
    let mut priv_t = [attr(CKA_UNWRAP, &TRUE), attr(CKA_DECRYPT, &TRUE)];
    let (mut p, mut q) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            1,
            priv_t.as_mut_ptr(),
            2,
            &mut p,
            &mut q
        ),
        CKR_OK,
        "an RSA private key may unwrap and decrypt: the pair's wrap/decrypt attack is refused \
         at C_WrapKey (tests/tests/conformance/key_policy.rs)"
    );
    assert_eq!(call!(m, C_DestroyObject, h, p), CKR_OK);
    assert_eq!(call!(m, C_DestroyObject, h, q), CKR_OK);
    assert_eq!(count_objects(m, h), before, "nothing else was created");
    // Set and copy: a sensitive secret key's usages only shrink, so the conflicting usage
    // cannot be added at all.
    let data_key = aes(m, h, &[]).expect("an encrypt/decrypt key");
    let mut wrap = [attr(CKA_WRAP, &TRUE)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, data_key, wrap.as_mut_ptr(), 1),
        CKR_ATTRIBUTE_READ_ONLY
    );
    let mut c = 0;
    assert_eq!(
        call!(m, C_CopyObject, h, data_key, wrap.as_mut_ptr(), 1, &mut c),
        CKR_ATTRIBUTE_READ_ONLY
    );
    // Unwrap and derive.
    let kek = aes(
        m,
        h,
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    )
    .expect("a KEK");
    let payload = aes(m, h, &[attr(CKA_EXTRACTABLE, &TRUE)]).expect("a key to wrap");
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
        CKR_OK
    );
    let class = CKO_SECRET_KEY;
    let kt = CKK_AES;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_WRAP, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
    ];
    assert_eq!(
        call!(
            m,
            C_UnwrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            wrapped.as_mut_ptr(),
            40,
            t.as_mut_ptr(),
            4,
            &mut c
        ),
        CKR_TEMPLATE_INCONSISTENT
    );
    let gs = CKK_GENERIC_SECRET;
    let sk = CKO_SECRET_KEY;
    let mut bt = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, &[1u8; 32]),
        attr(CKA_DERIVE, &TRUE),
    ];
    let base = create(m, h, &mut bt).expect("a base key");
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
    let mut hm = CK_MECHANISM {
        mechanism: CKM_HKDF_DERIVE,
        pParameter: &mut hp as *mut _ as *mut c_void,
        ulParameterLen: std::mem::size_of::<CK_HKDF_PARAMS>() as CK_ULONG,
    };
    let len: CK_ULONG = 32;
    let mut dt = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_VALUE_LEN, &len),
        attr(CKA_UNWRAP, &TRUE),
        attr(CKA_ENCRYPT, &TRUE),
    ];
    assert_eq!(
        call!(m, C_DeriveKey, h, &mut hm, base, dt.as_mut_ptr(), 5, &mut c),
        CKR_TEMPLATE_INCONSISTENT
    );
    // A key whose value can be read is exempt (its user can do both without the token)...
    let readable = aes(
        m,
        h,
        &[
            attr(CKA_SENSITIVE, &FALSE),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_DECRYPT, &TRUE),
        ],
    )
    .expect("a readable key may wrap and decrypt");
    // ...until it is made sensitive: then the rule applies, and the change is refused.
    let mut sensitive = [attr(CKA_SENSITIVE, &TRUE)];
    assert_eq!(
        call!(
            m,
            C_SetAttributeValue,
            h,
            readable,
            sensitive.as_mut_ptr(),
            1
        ),
        CKR_TEMPLATE_INCONSISTENT
    );
}

#[test]
fn allowed_mechanisms_are_enforced() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let only: CK_MECHANISM_TYPE = CKM_AES_CBC_PAD;
    let k = aes(m, h, &[attr(CKA_ALLOWED_MECHANISMS, &only)]).expect("key");
    let mut iv = [0u8; 16];
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as *mut c_void,
        ulParameterLen: 16,
    };
    assert_eq!(call!(m, C_EncryptInit, h, &mut cbc, k), CKR_OK);
    assert_eq!(call!(m, C_SessionCancel, h, CKF_ENCRYPT), CKR_OK);
    let mut ecb = mech(CKM_AES_ECB);
    assert_eq!(
        call!(m, C_EncryptInit, h, &mut ecb, k),
        CKR_MECHANISM_INVALID
    );
}

#[test]
fn trusted_is_the_so_s_to_set_and_wrap_with_trusted_needs_it() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    // A user may not mark anything trusted.
    assert_eq!(
        aes(
            m,
            h,
            &[
                attr(CKA_TRUSTED, &TRUE),
                attr(CKA_WRAP, &TRUE),
                attr(CKA_ENCRYPT, &FALSE),
                attr(CKA_DECRYPT, &FALSE)
            ]
        ),
        Err(CKR_ATTRIBUTE_READ_ONLY)
    );
    // The SO makes a public, trusted key-encryption key.
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_SO, SO_PIN), CKR_OK);
    let trusted = aes(
        m,
        h,
        &[
            attr(CKA_PRIVATE, &FALSE),
            attr(CKA_TRUSTED, &TRUE),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    )
    .expect("the SO may set CKA_TRUSTED");
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK);
    let untrusted = aes(
        m,
        h,
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    )
    .expect("kek");
    let precious = aes(
        m,
        h,
        &[
            attr(CKA_EXTRACTABLE, &TRUE),
            attr(CKA_WRAP_WITH_TRUSTED, &TRUE),
        ],
    )
    .expect("key");
    let mut out = [0u8; 40];
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            untrusted,
            precious,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_KEY_NOT_WRAPPABLE
    );
    assert_eq!(out, [0u8; 40], "nothing was written");
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            trusted,
            precious,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
}

#[test]
fn always_authenticate_needs_a_context_login_per_operation() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let bits: CK_ULONG = 2048;
    let mut pub_t = [attr(CKA_MODULUS_BITS, &bits)];
    let mut priv_t = [attr(CKA_ALWAYS_AUTHENTICATE, &TRUE)];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            1,
            priv_t.as_mut_ptr(),
            1,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    let data = b"needs a fresh PIN";
    let mut sig = [0u8; 256];
    for _ in 0..2 {
        assert_eq!(
            call!(m, C_SignInit, h, &mut mech(CKM_SHA256_RSA_PKCS), k),
            CKR_OK
        );
        let mut n: CK_ULONG = 256;
        assert_eq!(
            call!(
                m,
                C_Sign,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut n
            ),
            CKR_USER_NOT_LOGGED_IN
        );
        assert_eq!(m.login(h, CKU_CONTEXT_SPECIFIC, USER_PIN), CKR_OK);
        assert_eq!(
            call!(
                m,
                C_Sign,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                sig.as_mut_ptr(),
                &mut n
            ),
            CKR_OK,
            "after the context login"
        );
    }
}

#[test]
fn no_key_is_wrapped_under_a_weaker_key() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let class = CKO_SECRET_KEY;
    let kt = CKK_AES;
    let kek_t = |v: &'static [u8]| {
        [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr_bytes(CKA_VALUE, v),
            attr(CKA_WRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ]
    };
    let kek128 = create(m, h, &mut kek_t(&[1u8; 16])).expect("AES-128 KEK");
    let kek256 = create(m, h, &mut kek_t(&[2u8; 32])).expect("AES-256 KEK");
    let key256 = aes(m, h, &[attr(CKA_EXTRACTABLE, &TRUE)]).expect("AES-256 key");
    let mut out = [0u8; 40];
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek128,
            key256,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_KEY_NOT_WRAPPABLE
    );
    assert_eq!(out, [0u8; 40], "nothing was written");
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek256,
            key256,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    // RSA-2048 (112-bit strength) may not carry an AES-128 key.
    let bits: CK_ULONG = 2048;
    let mut pub_t = [
        attr(CKA_MODULUS_BITS, &bits),
        attr(CKA_WRAP, &TRUE),
        attr(CKA_ENCRYPT, &FALSE),
    ];
    let mut priv_t = [attr(CKA_SIGN, &TRUE)];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            3,
            priv_t.as_mut_ptr(),
            1,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr_bytes(CKA_VALUE, &[3u8; 16]),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    let key128 = create(m, h, &mut t).expect("AES-128 key");
    let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: ptr::null_mut(),
        ulSourceDataLen: 0,
    };
    let mut om = CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_OAEP,
        pParameter: &mut oaep as *mut _ as *mut c_void,
        ulParameterLen: std::mem::size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
    };
    let mut big = [0u8; 256];
    let mut n: CK_ULONG = 256;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut om,
            p,
            key128,
            big.as_mut_ptr(),
            &mut n
        ),
        CKR_KEY_NOT_WRAPPABLE
    );
}

#[test]
fn wrap_and_unwrap_templates_are_enforced_and_read_back() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    // The KEK may only carry keys labelled "exportable"; what it unwraps is always sensitive
    // and unextractable.
    let label = *b"exportable";
    let wrap_t = [attr_bytes(CKA_LABEL, &label)];
    let unwrap_t = [attr(CKA_SENSITIVE, &TRUE), attr(CKA_EXTRACTABLE, &FALSE)];
    let wrap_bytes = std::mem::size_of_val(&wrap_t);
    let unwrap_bytes = std::mem::size_of_val(&unwrap_t);
    let class = CKO_SECRET_KEY;
    let kt = CKK_AES;
    let mut kt_t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr_bytes(CKA_VALUE, &[9u8; 32]),
        attr(CKA_WRAP, &TRUE),
        attr(CKA_UNWRAP, &TRUE),
        attr(CKA_ENCRYPT, &FALSE),
        attr(CKA_DECRYPT, &FALSE),
        CK_ATTRIBUTE {
            type_: CKA_WRAP_TEMPLATE,
            pValue: wrap_t.as_ptr() as *mut c_void,
            ulValueLen: wrap_bytes as CK_ULONG,
        },
        CK_ATTRIBUTE {
            type_: CKA_UNWRAP_TEMPLATE,
            pValue: unwrap_t.as_ptr() as *mut c_void,
            ulValueLen: unwrap_bytes as CK_ULONG,
        },
    ];
    let kek = create(m, h, &mut kt_t).expect("KEK with templates");
    // Read CKA_WRAP_TEMPLATE back: first its length, then the nested attribute.
    let mut a = CK_ATTRIBUTE {
        type_: CKA_WRAP_TEMPLATE,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, kek, &mut a, 1), CKR_OK);
    assert_eq!(a.ulValueLen as usize, std::mem::size_of::<CK_ATTRIBUTE>());
    let mut got = [0u8; 16];
    let mut nested = [CK_ATTRIBUTE {
        type_: 0,
        pValue: got.as_mut_ptr() as *mut c_void,
        ulValueLen: 16,
    }];
    a.pValue = nested.as_mut_ptr() as *mut c_void;
    assert_eq!(call!(m, C_GetAttributeValue, h, kek, &mut a, 1), CKR_OK);
    assert_eq!(nested[0].type_, CKA_LABEL);
    assert_eq!(&got[..nested[0].ulValueLen as usize], &label);
    // Wrap: only the labelled key.
    let other = aes(m, h, &[attr(CKA_EXTRACTABLE, &TRUE)]).expect("unlabelled key");
    let labelled = aes(
        m,
        h,
        &[attr(CKA_EXTRACTABLE, &TRUE), attr_bytes(CKA_LABEL, &label)],
    )
    .expect("labelled key");
    let mut out = [0u8; 40];
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            other,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_KEY_NOT_WRAPPABLE
    );
    let mut n: CK_ULONG = 40;
    assert_eq!(
        call!(
            m,
            C_WrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            labelled,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    // Unwrap: a template that contradicts the unwrap template is refused; otherwise its
    // attributes are imposed.
    let mut loose = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    let mut c = 0;
    assert_eq!(
        call!(
            m,
            C_UnwrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            out.as_mut_ptr(),
            40,
            loose.as_mut_ptr(),
            3,
            &mut c
        ),
        CKR_TEMPLATE_INCONSISTENT
    );
    let mut plain = [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &kt)];
    assert_eq!(
        call!(
            m,
            C_UnwrapKey,
            h,
            &mut mech(CKM_AES_KEY_WRAP),
            kek,
            out.as_mut_ptr(),
            40,
            plain.as_mut_ptr(),
            2,
            &mut c
        ),
        CKR_OK
    );
    let mut v: CK_BBOOL = 1;
    let mut a = CK_ATTRIBUTE {
        type_: CKA_EXTRACTABLE,
        pValue: &mut v as *mut _ as *mut c_void,
        ulValueLen: 1,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, c, &mut a, 1), CKR_OK);
    assert_eq!(v, CK_FALSE, "the unwrap template made it unextractable");
    // A malformed attribute array is refused at creation.
    let mut bad = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr_bytes(CKA_VALUE, &[9u8; 32]),
        attr_bytes(CKA_WRAP_TEMPLATE, &[1, 2, 3]),
    ];
    assert_eq!(create(m, h, &mut bad), Err(CKR_ATTRIBUTE_VALUE_INVALID));
}

#[test]
fn unwrap_only_through_authenticated_mechanisms_and_no_partial_key_derivation() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let bits: CK_ULONG = 2048;
    let mut pub_t = [attr(CKA_MODULUS_BITS, &bits)];
    let mut priv_t = [
        attr(CKA_UNWRAP, &TRUE),
        attr(CKA_DECRYPT, &FALSE),
        attr(CKA_DERIVE, &TRUE),
    ];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            1,
            priv_t.as_mut_ptr(),
            3,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    let class = CKO_SECRET_KEY;
    let kt = CKK_AES;
    let mut t = [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &kt)];
    let mut blob = [0u8; 256];
    let mut c = 0;
    // PKCS #1 v1.5 unwrap would be Bleichenbacher's oracle: it is not offered.
    assert_eq!(
        call!(
            m,
            C_UnwrapKey,
            h,
            &mut mech(CKM_RSA_PKCS),
            k,
            blob.as_mut_ptr(),
            256,
            t.as_mut_ptr(),
            2,
            &mut c
        ),
        CKR_MECHANISM_INVALID
    );
    let mut mi: CK_MECHANISM_INFO = unsafe { std::mem::zeroed() };
    assert_eq!(
        call!(m, C_GetMechanismInfo, 0, CKM_RSA_PKCS, &mut mi),
        CKR_OK
    );
    assert_eq!(
        mi.flags & (CKF_WRAP | CKF_UNWRAP),
        0,
        "CKM_RSA_PKCS claims neither wrap nor unwrap"
    );
    // Partial-key derivation mechanisms are not offered.
    let gs = CKK_GENERIC_SECRET;
    let mut bt = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, &[7u8; 32]),
        attr(CKA_DERIVE, &TRUE),
    ];
    let base = create(m, h, &mut bt).expect("base");
    for partial in [
        CKM_EXTRACT_KEY_FROM_KEY,
        CKM_CONCATENATE_BASE_AND_KEY,
        CKM_CONCATENATE_BASE_AND_DATA,
        CKM_XOR_BASE_AND_DATA,
    ] {
        let mut dt = [attr(CKA_CLASS, &class), attr(CKA_KEY_TYPE, &gs)];
        assert_eq!(
            call!(
                m,
                C_DeriveKey,
                h,
                &mut mech(partial),
                base,
                dt.as_mut_ptr(),
                2,
                &mut c
            ),
            CKR_MECHANISM_INVALID,
            "{partial:#x}"
        );
    }
}

#[test]
fn every_pkcs1_v15_decryption_failure_gives_one_error() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let bits: CK_ULONG = 2048;
    let mut pub_t = [attr(CKA_MODULUS_BITS, &bits)];
    let mut priv_t = [attr(CKA_DECRYPT, &TRUE)];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            pub_t.as_mut_ptr(),
            1,
            priv_t.as_mut_ptr(),
            1,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    // Malformed blocks, each encrypted raw with the public key: wrong block type, no
    // separator, padding too short, a non-zero first byte.
    let mut blocks: Vec<[u8; 256]> = Vec::new();
    let mut b = [0xffu8; 256];
    b[0] = 0;
    b[1] = 1;
    b[200] = 0;
    blocks.push(b);
    let mut b = [0x5au8; 256];
    b[0] = 0;
    b[1] = 2;
    blocks.push(b);
    let mut b = [0x5au8; 256];
    b[0] = 0;
    b[1] = 2;
    b[4] = 0;
    blocks.push(b);
    let mut b = [0x5au8; 256];
    b[0] = 0x01;
    b[1] = 2;
    b[100] = 0;
    blocks.push(b);
    for (i, block) in blocks.iter().enumerate() {
        assert_eq!(
            call!(m, C_EncryptInit, h, &mut mech(CKM_RSA_X_509), p),
            CKR_OK
        );
        let mut ct = [0u8; 256];
        let mut n: CK_ULONG = 256;
        let rv = call!(
            m,
            C_Encrypt,
            h,
            block.as_ptr() as *mut u8,
            256,
            ct.as_mut_ptr(),
            &mut n
        );
        if rv == CKR_DATA_INVALID {
            // A block at or above the modulus (the 0x01 first byte can be): nothing to decrypt.
            continue;
        }
        assert_eq!(rv, CKR_OK, "raw encryption of block {i}");
        assert_eq!(
            call!(m, C_DecryptInit, h, &mut mech(CKM_RSA_PKCS), k),
            CKR_OK
        );
        let mut out = [0u8; 256];
        let mut n: CK_ULONG = 256;
        assert_eq!(
            call!(
                m,
                C_Decrypt,
                h,
                ct.as_mut_ptr(),
                256,
                out.as_mut_ptr(),
                &mut n
            ),
            CKR_ENCRYPTED_DATA_INVALID,
            "block {i}"
        );
        assert_eq!(out, [0u8; 256], "nothing was written for block {i}");
    }
}
