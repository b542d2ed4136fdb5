//! The wider mechanism set through the C ABI: P-521, secp256k1 and Ed25519 keys, AES-CTR,
//! AES-CMAC, SHA-3 and HMAC `_GENERAL`, each checked against aws-lc directly.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, mech, verify, Fixture, Module, TRUE};

/// The two-call output protocol: ask the length, then fetch.
fn run(f: impl Fn(*mut u8, *mut CK_ULONG) -> CK_RV) -> Vec<u8> {
    let mut len: CK_ULONG = 0;
    assert_eq!(f(ptr::null_mut(), &mut len), CKR_OK, "length query");
    let mut out = vec![0u8; len as usize];
    assert_eq!(f(out.as_mut_ptr(), &mut len), CKR_OK);
    out.truncate(len as usize);
    out
}

fn sign(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    k: CK_OBJECT_HANDLE,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(call!(m, C_SignInit, h, mm, k), CKR_OK);
    run(|p, l| {
        call!(
            m,
            C_Sign,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            p,
            l
        )
    })
}

fn get(m: &Module, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    let mut a = CK_ATTRIBUTE {
        type_: ty,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, o, &mut a, 1), CKR_OK);
    let mut buf = vec![0u8; a.ulValueLen as usize];
    a.pValue = buf.as_mut_ptr() as *mut c_void;
    assert_eq!(call!(m, C_GetAttributeValue, h, o, &mut a, 1), CKR_OK);
    buf
}

fn pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
    gen: CK_MECHANISM_TYPE,
    params: &[u8],
) -> (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let mut pub_t = [attr_bytes(CKA_EC_PARAMS, params), attr(CKA_VERIFY, &TRUE)];
    let mut priv_t = [attr(CKA_SIGN, &TRUE)];
    let (mut p, mut k) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mech(gen),
            pub_t.as_mut_ptr(),
            2,
            priv_t.as_mut_ptr(),
            1,
            &mut p,
            &mut k
        ),
        CKR_OK,
        "key pair for {params:02x?}"
    );
    (p, k)
}

/// The raw point inside a DER OCTET STRING (short or long form length).
fn unwrap_point(der: &[u8]) -> &[u8] {
    assert_eq!(der[0], 0x04);
    if der[1] & 0x80 == 0 {
        &der[2..]
    } else {
        &der[2 + (der[1] & 0x7f) as usize..]
    }
}

#[test]
fn p521_secp256k1_and_ed25519_sign_and_verify_independently() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let p521 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
    let k1 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
    let data = b"curves";
    for (params, sig_len, alg) in [
        (
            &p521[..],
            132,
            &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED,
        ),
        (
            &k1[..],
            64,
            &aws_lc_rs::signature::ECDSA_P256K1_SHA256_FIXED,
        ),
    ] {
        let (p, k) = pair(m, h, CKM_EC_KEY_PAIR_GEN, params);
        let mech_type = if sig_len == 132 {
            CKM_ECDSA_SHA512
        } else {
            CKM_ECDSA_SHA256
        };
        let sig = sign(m, h, &mut mech(mech_type), k, data);
        assert_eq!(sig.len(), sig_len);
        assert_eq!(verify(m, h, &mut mech(mech_type), p, data, &sig), CKR_OK);
        let point = get(m, h, p, CKA_EC_POINT);
        aws_lc_rs::signature::UnparsedPublicKey::new(alg, unwrap_point(&point))
            .verify(data, &sig)
            .expect("aws-lc verifies");
    }
    let ed_oid = [0x06, 0x03, 0x2b, 0x65, 0x70];
    let (p, k) = pair(m, h, CKM_EC_EDWARDS_KEY_PAIR_GEN, &ed_oid);
    let sig = sign(m, h, &mut mech(CKM_EDDSA), k, data);
    assert_eq!(sig.len(), 64);
    assert_eq!(verify(m, h, &mut mech(CKM_EDDSA), p, data, &sig), CKR_OK);
    let point = get(m, h, p, CKA_EC_POINT);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ED25519,
        unwrap_point(&point),
    )
    .verify(data, &sig)
    .expect("aws-lc verifies Ed25519");
    let mut bad = sig.clone();
    bad[5] ^= 1;
    assert_eq!(
        verify(m, h, &mut mech(CKM_EDDSA), p, data, &bad),
        CKR_SIGNATURE_INVALID
    );
    // Multi-part EdDSA (buffered) gives a valid signature too.
    assert_eq!(call!(m, C_SignInit, h, &mut mech(CKM_EDDSA), k), CKR_OK);
    assert_eq!(
        call!(m, C_SignUpdate, h, data[..3].as_ptr() as *mut u8, 3),
        CKR_OK
    );
    assert_eq!(
        call!(m, C_SignUpdate, h, data[3..].as_ptr() as *mut u8, 3),
        CKR_OK
    );
    let mut out = [0u8; 64];
    let mut n: CK_ULONG = 64;
    assert_eq!(call!(m, C_SignFinal, h, out.as_mut_ptr(), &mut n), CKR_OK);
    assert_eq!(verify(m, h, &mut mech(CKM_EDDSA), p, data, &out), CKR_OK);
}

#[test]
fn aes_ctr_cmac_sha3_and_hmac_general() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let class = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let value = [
        0x2bu8, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf, 0x4f,
        0x3c,
    ];
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &aes),
        attr_bytes(CKA_VALUE, &value),
    ];
    let mut k = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 3, &mut k),
        CKR_OK
    );
    // SP 800-38B example 2: CMAC of the 16-byte block.
    let msg = [
        0x6bu8, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93, 0x17,
        0x2a,
    ];
    let expect = [
        0x07u8, 0x0a, 0x16, 0xb4, 0x6b, 0x4d, 0x41, 0x44, 0xf7, 0x9b, 0xdd, 0x9d, 0xd0, 0x4a, 0x28,
        0x7c,
    ];
    assert_eq!(sign(m, h, &mut mech(CKM_AES_CMAC), k, &msg), expect);
    let mut eight: CK_ULONG = 8;
    let mut general = CK_MECHANISM {
        mechanism: CKM_AES_CMAC_GENERAL,
        pParameter: &mut eight as *mut _ as *mut c_void,
        ulParameterLen: 8,
    };
    assert_eq!(sign(m, h, &mut general, k, &msg), expect[..8]);
    // SP 800-38A F.5.1: AES-128-CTR.
    #[repr(C)]
    struct CtrParams {
        bits: CK_ULONG,
        cb: [u8; 16],
    }
    let mut params = CtrParams {
        bits: 128,
        cb: [
            0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
            0xfe, 0xff,
        ],
    };
    let mut ctr = CK_MECHANISM {
        mechanism: CKM_AES_CTR,
        pParameter: &mut params as *mut _ as *mut c_void,
        ulParameterLen: 24,
    };
    assert_eq!(call!(m, C_EncryptInit, h, &mut ctr, k), CKR_OK);
    let ct = run(|p, l| call!(m, C_Encrypt, h, msg.as_ptr() as *mut u8, 16, p, l));
    assert_eq!(
        ct,
        [
            0x87, 0x4d, 0x61, 0x91, 0xb6, 0x20, 0xe3, 0x26, 0x1b, 0xef, 0x68, 0x64, 0x99, 0x0d,
            0xb6, 0xce
        ]
    );
    // SHA3-256 of "abc".
    assert_eq!(call!(m, C_DigestInit, h, &mut mech(CKM_SHA3_256)), CKR_OK);
    let d = run(|p, l| call!(m, C_Digest, h, b"abc".as_ptr() as *mut u8, 3, p, l));
    assert_eq!(
        d.as_slice(),
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA3_256, b"abc").as_ref()
    );
    // HMAC-SHA256 truncated to 16 bytes.
    let gs = CKK_GENERIC_SECRET;
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &gs),
        attr_bytes(CKA_VALUE, b"key"),
    ];
    let mut hk = 0;
    assert_eq!(
        call!(m, C_CreateObject, h, t.as_mut_ptr(), 3, &mut hk),
        CKR_OK
    );
    let mut sixteen: CK_ULONG = 16;
    let mut hg = CK_MECHANISM {
        mechanism: CKM_SHA256_HMAC_GENERAL,
        pParameter: &mut sixteen as *mut _ as *mut c_void,
        ulParameterLen: 8,
    };
    let mac = sign(m, h, &mut hg, hk, b"data");
    let full = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"key"),
        b"data",
    );
    assert_eq!(mac, full.as_ref()[..16]);
}
