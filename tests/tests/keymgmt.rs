//! Key management through the C ABI: C_WrapKey / C_UnwrapKey (AES key wrap, KWP, RSA-OAEP) and
//! C_DeriveKey (ECDH, HKDF), each checked against aws-lc directly.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{
    attr, attr_bytes, attr_value as get, create_secret, generate_pair, mech, mech_param,
    unwrap_key as unwrap, wrap_key as wrap, Fixture, Module, FALSE, TRUE,
};

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

fn secret(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kt: CK_KEY_TYPE,
    value: &[u8],
    extra: &[CK_ATTRIBUTE],
) -> CK_OBJECT_HANDLE {
    create_secret(m, h, kt, value, extra).expect("create secret key")
}

fn ecb(m: &Module, h: CK_SESSION_HANDLE, k: CK_OBJECT_HANDLE) -> Vec<u8> {
    let mut iv = [7u8; 16];
    let mut mm = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: iv.as_mut_ptr() as *mut c_void,
        ulParameterLen: 16,
    };
    assert_eq!(call!(m, C_EncryptInit, h, &mut mm, k), CKR_OK);
    let data = [0x33u8; 32];
    let mut out = [0u8; 32];
    let mut n: CK_ULONG = 32;
    assert_eq!(
        call!(
            m,
            C_Encrypt,
            h,
            data.as_ptr() as *mut u8,
            32,
            out.as_mut_ptr(),
            &mut n
        ),
        CKR_OK
    );
    out.to_vec()
}

#[test]
fn aes_key_wrap_matches_aws_lc_and_unwraps_to_the_same_key() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let kek_value = [0x4bu8; 32];
    let key_value = [0x19u8; 32];
    let kek = secret(
        m,
        h,
        CKK_AES,
        &kek_value,
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    );
    let key = secret(m, h, CKK_AES, &key_value, &[attr(CKA_EXTRACTABLE, &TRUE)]);
    let wrapped = wrap(m, h, &mut mech(CKM_AES_KEY_WRAP), kek, key).expect("wrap");
    let expect = {
        let k = aws_lc_rs::key_wrap::AesKek::new(&aws_lc_rs::key_wrap::AES_256, &kek_value)
            .expect("kek");
        let mut out = [0u8; 40];
        aws_lc_rs::key_wrap::KeyWrap::wrap(k, &key_value, &mut out)
            .expect("aws-lc wraps")
            .to_vec()
    };
    assert_eq!(wrapped, expect, "RFC 3394 output equals aws-lc's");
    let class = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_ENCRYPT, &TRUE),
    ];
    let copy = unwrap(m, h, &mut mech(CKM_AES_KEY_WRAP), kek, &wrapped, &mut t).expect("unwrap");
    assert_eq!(
        ecb(m, h, copy),
        ecb(m, h, key),
        "the unwrapped key is the same key"
    );
    assert_eq!(get(m, h, copy, CKA_LOCAL), Ok(vec![0]));
    assert_eq!(get(m, h, copy, CKA_NEVER_EXTRACTABLE), Ok(vec![0]));
    assert_eq!(get(m, h, copy, CKA_ALWAYS_SENSITIVE), Ok(vec![0]));
    // KWP too.
    let wrapped = wrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), kek, key).expect("KWP wrap");
    let copy =
        unwrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), kek, &wrapped, &mut t).expect("KWP unwrap");
    assert_eq!(ecb(m, h, copy), ecb(m, h, key));
    // Refusals.
    let mut bad = wrapped.clone();
    bad[3] ^= 1;
    assert_eq!(
        unwrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), kek, &bad, &mut t),
        Err(CKR_WRAPPED_KEY_INVALID)
    );
    let locked = secret(m, h, CKK_AES, &key_value, &[]);
    assert_eq!(
        wrap(m, h, &mut mech(CKM_AES_KEY_WRAP), kek, locked),
        Err(CKR_KEY_UNEXTRACTABLE)
    );
    let not_a_kek = secret(m, h, CKK_AES, &kek_value, &[]);
    assert_eq!(
        wrap(m, h, &mut mech(CKM_AES_KEY_WRAP), not_a_kek, key),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED)
    );
    assert_eq!(
        wrap(m, h, &mut mech(CKM_AES_KEY_WRAP), 0xdead, key),
        Err(CKR_WRAPPING_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        wrap(m, h, &mut mech(CKM_AES_KEY_WRAP), kek, 0xdead),
        Err(CKR_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        unwrap(m, h, &mut mech(CKM_AES_KEY_WRAP), 0xdead, &wrapped, &mut t),
        Err(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    );
    assert_eq!(
        wrap(m, h, &mut mech(CKM_SHA256_RSA_PKCS), kek, key),
        Err(CKR_MECHANISM_INVALID)
    );
}

#[test]
fn private_keys_wrap_as_pkcs8_and_aes_keys_under_rsa_oaep() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let kek = secret(
        m,
        h,
        CKK_AES,
        &[0x61u8; 32],
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    );
    let bits: CK_ULONG = 3072; // 128-bit strength: enough to carry an AES-128 key
    let mut pub_t = [
        attr(CKA_MODULUS_BITS, &bits),
        attr(CKA_WRAP, &TRUE),
        attr(CKA_ENCRYPT, &FALSE),
    ];
    let mut priv_t = [
        attr(CKA_EXTRACTABLE, &TRUE),
        attr(CKA_UNWRAP, &TRUE),
        attr(CKA_DECRYPT, &FALSE),
    ];
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
            3,
            &mut p,
            &mut k
        ),
        CKR_OK
    );
    let wrapped = wrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), kek, k).expect("wrap a private key");
    let class = CKO_PRIVATE_KEY;
    let rsa = CKK_RSA;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &rsa),
        attr(CKA_SIGN, &TRUE),
    ];
    let copy = unwrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), kek, &wrapped, &mut t)
        .expect("unwrap a private key");
    assert_eq!(
        get(m, h, copy, CKA_MODULUS),
        get(m, h, k, CKA_MODULUS),
        "the same RSA key"
    );
    let data = b"signed by the unwrapped key";
    let mut sm = mech(CKM_SHA256_RSA_PKCS);
    assert_eq!(call!(m, C_SignInit, h, &mut sm, copy), CKR_OK);
    let mut sig = [0u8; 384];
    let mut n: CK_ULONG = 384;
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
        CKR_OK
    );
    let modulus = get(m, h, p, CKA_MODULUS).expect("modulus");
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: &modulus[..],
        e: &[1u8, 0, 1][..],
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        data,
        &sig,
    )
    .expect("the unwrapped key signs as the original");
    // An AES key under RSA-OAEP.
    let aes_value = [0x2au8; 16];
    let key = secret(m, h, CKK_AES, &aes_value, &[attr(CKA_EXTRACTABLE, &TRUE)]);
    let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: ptr::null_mut(),
        ulSourceDataLen: 0,
    };
    // The unwrapped copy of the private key may decrypt (the default for an RSA private key
    // not asked to unwrap): a blob wrapped under the public key would decrypt to the AES key
    // in clear, so the wrap is refused until that copy is gone.
    assert_eq!(
        wrap(m, h, &mut mech_param(CKM_RSA_PKCS_OAEP, &mut oaep), p, key),
        Err(CKR_KEY_NOT_WRAPPABLE)
    );
    assert_eq!(call!(m, C_DestroyObject, h, copy), CKR_OK);
    let wrapped =
        wrap(m, h, &mut mech_param(CKM_RSA_PKCS_OAEP, &mut oaep), p, key).expect("OAEP wrap");
    assert_eq!(wrapped.len(), 384);
    let sk = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let mut t = [
        attr(CKA_CLASS, &sk),
        attr(CKA_KEY_TYPE, &aes),
        attr(CKA_ENCRYPT, &TRUE),
    ];
    let copy = unwrap(
        m,
        h,
        &mut mech_param(CKM_RSA_PKCS_OAEP, &mut oaep),
        k,
        &wrapped,
        &mut t,
    )
    .expect("OAEP unwrap");
    assert_eq!(ecb(m, h, copy), ecb(m, h, key));
}

#[test]
fn ecdh_and_hkdf_derive_what_aws_lc_derives() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let pair = |m: &Module| {
        let mut pub_t = [attr_bytes(CKA_EC_PARAMS, P256_OID)];
        let mut priv_t = [attr(CKA_DERIVE, &TRUE)];
        let (mut p, mut k) = (0, 0);
        assert_eq!(
            call!(
                m,
                C_GenerateKeyPair,
                h,
                &mut mech(CKM_EC_KEY_PAIR_GEN),
                pub_t.as_mut_ptr(),
                1,
                priv_t.as_mut_ptr(),
                1,
                &mut p,
                &mut k
            ),
            CKR_OK
        );
        (p, k)
    };
    let (pa, ka) = pair(m);
    let (pb, kb) = pair(m);
    let point_a = get(m, h, pa, CKA_EC_POINT).expect("point");
    let point_b = get(m, h, pb, CKA_EC_POINT).expect("point");
    let derive = |m: &Module, k: CK_OBJECT_HANDLE, peer: &[u8], kdf: CK_ULONG| {
        let mut params = CK_ECDH1_DERIVE_PARAMS {
            kdf,
            ulSharedDataLen: 0,
            pSharedData: ptr::null_mut(),
            ulPublicDataLen: peer.len() as CK_ULONG,
            pPublicData: peer.as_ptr() as *mut u8,
        };
        let mut mm = mech_param(CKM_ECDH1_DERIVE, &mut params);
        let class = CKO_SECRET_KEY;
        let gs = CKK_GENERIC_SECRET;
        let len: CK_ULONG = 32;
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &gs),
            attr(CKA_VALUE_LEN, &len),
            attr(CKA_SENSITIVE, &FALSE),
            attr(CKA_EXTRACTABLE, &TRUE),
        ];
        let mut o = 0;
        assert_eq!(
            call!(
                m,
                C_DeriveKey,
                h,
                &mut mm,
                k,
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                &mut o
            ),
            CKR_OK,
            "ECDH derive"
        );
        get(m, h, o, CKA_VALUE).expect("derived value is readable")
    };
    for kdf in [CKD_NULL, CKD_SHA256_KDF] {
        let ab = derive(m, ka, &point_b, kdf);
        let ba = derive(m, kb, &point_a[2..], kdf);
        assert_eq!(
            ab, ba,
            "both sides agree (kdf {kdf:#x}; raw and DER-wrapped peer points)"
        );
        assert_eq!(ab.len(), 32);
    }
    // HKDF over a generic secret, against aws-lc.
    let ikm = [0x0bu8; 22];
    let base = secret(m, h, CKK_GENERIC_SECRET, &ikm, &[attr(CKA_DERIVE, &TRUE)]);
    let salt = [0x00u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
    let info = [0xf0u8, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9];
    let mut hp = CK_HKDF_PARAMS {
        bExtract: CK_TRUE,
        bExpand: CK_TRUE,
        prfHashMechanism: CKM_SHA256,
        ulSaltType: CKF_HKDF_SALT_DATA,
        pSalt: salt.as_ptr() as *mut u8,
        ulSaltLen: salt.len() as CK_ULONG,
        hSaltKey: 0,
        pInfo: info.as_ptr() as *mut u8,
        ulInfoLen: info.len() as CK_ULONG,
    };
    let mut mm = mech_param(CKM_HKDF_DERIVE, &mut hp);
    let class = CKO_SECRET_KEY;
    let gs = CKK_GENERIC_SECRET;
    let len: CK_ULONG = 42;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &gs),
        attr(CKA_VALUE_LEN, &len),
        attr(CKA_SENSITIVE, &FALSE),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    let mut o = 0;
    assert_eq!(
        call!(m, C_DeriveKey, h, &mut mm, base, t.as_mut_ptr(), 5, &mut o),
        CKR_OK,
        "HKDF derive"
    );
    // RFC 5869 test case 1.
    let okm: [u8; 42] = [
        0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a, 0x90, 0x43, 0x4f, 0x64, 0xd0, 0x36, 0x2f,
        0x2a, 0x2d, 0x2d, 0x0a, 0x90, 0xcf, 0x1a, 0x5a, 0x4c, 0x5d, 0xb0, 0x2d, 0x56, 0xec, 0xc4,
        0xc5, 0xbf, 0x34, 0x00, 0x72, 0x08, 0xd5, 0xb8, 0x87, 0x18, 0x58, 0x65,
    ];
    assert_eq!(get(m, h, o, CKA_VALUE).expect("value"), okm.to_vec());
    // CKM_HKDF_DATA: the same bytes, as a (private) data object.
    let mut dm = mech_param(CKM_HKDF_DATA, &mut hp);
    let data_class = CKO_DATA;
    let mut dt = [attr(CKA_CLASS, &data_class), attr(CKA_VALUE_LEN, &len)];
    let mut d = 0;
    assert_eq!(
        call!(m, C_DeriveKey, h, &mut dm, base, dt.as_mut_ptr(), 2, &mut d),
        CKR_OK,
        "HKDF data"
    );
    assert_eq!(get(m, h, d, CKA_VALUE).expect("value"), okm.to_vec());
    assert_eq!(get(m, h, d, CKA_PRIVATE).expect("private"), vec![1]);
    // Expand only, from RFC 5869 test case 1's PRK: the salt type is ignored (callers leave it
    // 0, as pkcs11-provider's TLS 1.3 HKDF-Expand-Label does); extracting needs a real one.
    let prk: [u8; 32] = [
        0x07, 0x77, 0x09, 0x36, 0x2c, 0x2e, 0x32, 0xdf, 0x0d, 0xdc, 0x3f, 0x0d, 0xc4, 0x7b, 0xba,
        0x63, 0x90, 0xb6, 0xc7, 0x3b, 0xb5, 0x0f, 0x9c, 0x31, 0x22, 0xec, 0x84, 0x4a, 0xd7, 0xc2,
        0xb3, 0xe5,
    ];
    let prk_key = secret(m, h, CKK_GENERIC_SECRET, &prk, &[attr(CKA_DERIVE, &TRUE)]);
    let mut expand_only = CK_HKDF_PARAMS {
        bExtract: CK_FALSE,
        bExpand: CK_TRUE,
        prfHashMechanism: CKM_SHA256,
        ulSaltType: 0,
        pSalt: ptr::null_mut(),
        ulSaltLen: 0,
        hSaltKey: 0,
        pInfo: info.as_ptr() as *mut u8,
        ulInfoLen: info.len() as CK_ULONG,
    };
    let mut em = mech_param(CKM_HKDF_DERIVE, &mut expand_only);
    let mut e = 0;
    assert_eq!(
        call!(
            m,
            C_DeriveKey,
            h,
            &mut em,
            prk_key,
            t.as_mut_ptr(),
            5,
            &mut e
        ),
        CKR_OK,
        "HKDF expand only, ulSaltType 0"
    );
    assert_eq!(get(m, h, e, CKA_VALUE).expect("value"), okm.to_vec());
    expand_only.bExtract = CK_TRUE;
    let mut em = mech_param(CKM_HKDF_DERIVE, &mut expand_only);
    assert_eq!(
        call!(
            m,
            C_DeriveKey,
            h,
            &mut em,
            prk_key,
            t.as_mut_ptr(),
            5,
            &mut e
        ),
        CKR_MECHANISM_PARAM_INVALID,
        "extracting with no salt type"
    );
    // A base key without CKA_DERIVE is refused.
    let no_derive = secret(m, h, CKK_GENERIC_SECRET, &ikm, &[]);
    assert_eq!(
        call!(
            m,
            C_DeriveKey,
            h,
            &mut mm,
            no_derive,
            t.as_mut_ptr(),
            5,
            &mut o
        ),
        CKR_KEY_FUNCTION_NOT_PERMITTED
    );
}

#[test]
fn an_ec_key_travels_under_a_key_at_least_as_strong_as_its_curve() {
    // SP 800-57 Part 1, table 2: P-256 is worth 128 bits, P-384 192, P-521 256 (not 260). An
    // EC private key wraps under an AES key at least that strong, and no weaker one.
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let wrapping = |value: &[u8]| {
        secret(
            m,
            h,
            CKK_AES,
            value,
            &[
                attr(CKA_WRAP, &TRUE),
                attr(CKA_UNWRAP, &TRUE),
                attr(CKA_ENCRYPT, &FALSE),
                attr(CKA_DECRYPT, &FALSE),
            ],
        )
    };
    let (aes128, aes256) = (wrapping(&[0x51u8; 16]), wrapping(&[0x52u8; 32]));
    let curves: [(&str, &[u8], bool); 3] = [
        ("P-256", P256_OID, true),
        ("P-384", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22], false),
        ("P-521", &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23], false),
    ];
    for (name, oid, under_aes128) in curves {
        let mut pub_t = [attr_bytes(CKA_EC_PARAMS, oid), attr(CKA_VERIFY, &TRUE)];
        let mut priv_t = [attr(CKA_EXTRACTABLE, &TRUE), attr(CKA_SIGN, &TRUE)];
        let (_, k) = generate_pair(
            m,
            h,
            &mut mech(CKM_EC_KEY_PAIR_GEN),
            &mut pub_t,
            &mut priv_t,
        )
        .unwrap_or_else(|rv| panic!("{name}: {rv:#x}"));
        let wrapped = wrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), aes256, k);
        let wrapped = wrapped.unwrap_or_else(|rv| panic!("{name} under AES-256: {rv:#x}"));
        let class = CKO_PRIVATE_KEY;
        let ec = CKK_EC;
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &ec),
            attr(CKA_SIGN, &TRUE),
        ];
        let copy = unwrap(
            m,
            h,
            &mut mech(CKM_AES_KEY_WRAP_KWP),
            aes256,
            &wrapped,
            &mut t,
        )
        .unwrap_or_else(|rv| panic!("{name} unwrapped: {rv:#x}"));
        assert_eq!(get(m, h, copy, CKA_EC_PARAMS).as_deref(), Ok(oid), "{name}");
        let under = wrap(m, h, &mut mech(CKM_AES_KEY_WRAP_KWP), aes128, k).map(|_| ());
        if under_aes128 {
            assert_eq!(under, Ok(()), "{name} under AES-128");
        } else {
            assert_eq!(under, Err(CKR_KEY_NOT_WRAPPABLE), "{name} under AES-128");
        }
    }
}
