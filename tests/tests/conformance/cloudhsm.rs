//! Programs written for AWS CloudHSM run unchanged (issue 11, item 6): each check drives the
//! module the way CloudHSM's PKCS #11 documentation (Client SDK 5) and its samples
//! (aws-samples/aws-cloudhsm-pkcs11-examples) do, asserts the exact CK_RVs, and checks the results
//! independently with aws-lc-rs. The same checks run on the embedded default and on a cluster of
//! three `hsmpool-hsmd` daemons, so the vendor mechanisms and their parameters cross the wire.
//!
//! The constants are written out here as a CloudHSM program has them from CloudHSM's header,
//! not taken from our crates: the test must fail if our values drift from CloudHSM's.

use std::ffi::c_void;
use std::ptr;

use aws_lc_rs::key_wrap::{AesKek, KeyWrap, KeyWrapPadded, AES_256};
use aws_lc_rs::{aead, cmac, hmac, signature};
use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::daemons::DaemonCluster;
use hsmpool_tests::raw::{
    attr, attr_bytes, attr_value, create_secret, crypt, generate_pair, mech, mech_param, sign,
    unwrap_key as unwrap, verify, wrap_key as wrap, Fixture, Module, FALSE, P256_PARAMS, TRUE,
    USER_PIN,
};

// cloudhsm_pkcs11_vendor_defs.h (Client SDK 5).
const CKM_CLOUDHSM_SP800_108_COUNTER_KDF: CK_MECHANISM_TYPE = 0x8000_0001;
const CKM_CLOUDHSM_AES_GCM: CK_MECHANISM_TYPE = 0x8000_1087;
const CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD: CK_MECHANISM_TYPE = 0x8000_2109;
const CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD: CK_MECHANISM_TYPE = 0x8000_210A;
const CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD: CK_MECHANISM_TYPE = 0x8000_216F;
const CK_SP800_108_ITERATION_VARIABLE: CK_ULONG = 1;
const CK_SP800_108_DKM_LENGTH: CK_ULONG = 2;
const CK_SP800_108_BYTE_ARRAY: CK_ULONG = 3;
const SP800_108_COUNTER_FORMAT: CK_ULONG = 4;
const SP800_108_PRF_LABEL: CK_ULONG = 5;
const SP800_108_PRF_CONTEXT: CK_ULONG = 6;
const SP800_108_DKM_FORMAT: CK_ULONG = 7;
const SP800_108_DKM_LENGTH_SUM_OF_KEYS: CK_ULONG = 1;

/// CloudHSM's `CK_SP800_108_KDF_PARAMS` (three fields).
#[repr(C)]
struct KdfParams {
    prftype: CK_MECHANISM_TYPE,
    ul_number_of_data_params: CK_ULONG,
    p_data_params: *mut CK_PRF_DATA_PARAM,
}

/// CloudHSM's `CK_SP800_108_DKM_LENGTH_FORMAT`.
#[repr(C)]
struct DkmFormat {
    dkm_length_method: CK_ULONG,
    ul_width_in_bits: CK_ULONG,
}

fn data_param<T>(ty: CK_ULONG, v: &mut T, len: usize) -> CK_PRF_DATA_PARAM {
    CK_PRF_DATA_PARAM {
        type_: ty,
        pValue: v as *mut T as *mut c_void,
        ulValueLen: len as CK_ULONG,
    }
}

fn bytes_param(ty: CK_ULONG, v: &mut [u8]) -> CK_PRF_DATA_PARAM {
    CK_PRF_DATA_PARAM {
        type_: ty,
        pValue: v.as_mut_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

fn mech_info(m: &Module, ty: CK_MECHANISM_TYPE) -> (CK_RV, CK_MECHANISM_INFO) {
    let mut info = CK_MECHANISM_INFO {
        ulMinKeySize: 0,
        ulMaxKeySize: 0,
        flags: 0,
    };
    let rv = call!(m, C_GetMechanismInfo, 0, ty, &mut info);
    (rv, info)
}

fn ulong_of(v: &[u8]) -> CK_ULONG {
    CK_ULONG::from_ne_bytes(v.try_into().expect("a CK_ULONG attribute"))
}

fn derive(
    m: &Module,
    h: CK_SESSION_HANDLE,
    mm: &mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    t: &mut [CK_ATTRIBUTE],
) -> Result<CK_OBJECT_HANDLE, CK_RV> {
    let mut o = 0;
    match call!(
        m,
        C_DeriveKey,
        h,
        mm,
        base,
        t.as_mut_ptr(),
        t.len() as CK_ULONG,
        &mut o
    ) {
        CKR_OK => Ok(o),
        rv => Err(rv),
    }
}

/// A readable AES or generic secret with `value` and the given usage.
fn secret(
    m: &Module,
    h: CK_SESSION_HANDLE,
    kt: CK_KEY_TYPE,
    value: &[u8],
    usage: &[CK_ATTRIBUTE_TYPE],
) -> CK_OBJECT_HANDLE {
    let mut extra = vec![
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_SENSITIVE, &FALSE),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    extra.extend(usage.iter().map(|u| attr(*u, &TRUE)));
    create_secret(m, h, kt, value, &extra).expect("secret key created")
}

// ----- the checks ------------------------------------------------------------------------------

/// `CKM_RSA_X9_31_KEY_PAIR_GEN` as the samples' `generate_rsa_keypair` calls it, then a
/// signature checked by the module and by aws-lc-rs over the public key read back.
fn x931_generation(m: &Module, h: CK_SESSION_HANDLE) {
    let (rv, info) = mech_info(m, CKM_RSA_X9_31_KEY_PAIR_GEN);
    assert_eq!(rv, CKR_OK, "CKM_RSA_X9_31_KEY_PAIR_GEN is offered");
    assert_eq!((info.ulMinKeySize, info.ulMaxKeySize), (2048, 4096));
    assert_eq!(info.flags & CKF_GENERATE_KEY_PAIR, CKF_GENERATE_KEY_PAIR);

    let bits: CK_ULONG = 2048;
    let e = [0x01u8, 0x00, 0x01];
    let mut pub_t = [
        attr(CKA_VERIFY, &TRUE),
        attr(CKA_MODULUS_BITS, &bits),
        attr(CKA_TOKEN, &FALSE),
        attr_bytes(CKA_PUBLIC_EXPONENT, &e),
    ];
    let mut priv_t = [attr(CKA_SIGN, &TRUE), attr(CKA_TOKEN, &FALSE)];
    let (p, k) = generate_pair(
        m,
        h,
        &mut mech(CKM_RSA_X9_31_KEY_PAIR_GEN),
        &mut pub_t,
        &mut priv_t,
    )
    .expect("X9.31 key pair generated as the sample does");
    for o in [p, k] {
        let g = attr_value(m, h, o, CKA_KEY_GEN_MECHANISM).expect("CKA_KEY_GEN_MECHANISM");
        assert_eq!(ulong_of(&g), CKM_RSA_X9_31_KEY_PAIR_GEN);
    }
    let n = attr_value(m, h, p, CKA_MODULUS).expect("CKA_MODULUS");
    let e_read = attr_value(m, h, p, CKA_PUBLIC_EXPONENT).expect("CKA_PUBLIC_EXPONENT");
    assert_eq!(
        (n.len(), n[0] & 0x80),
        (256, 0x80),
        "a full 2048-bit modulus"
    );
    assert_eq!(e_read, e);
    let msg = b"signed with an X9.31-generated key";
    let sig = sign(m, h, &mut mech(CKM_SHA256_RSA_PKCS), k, msg);
    assert_eq!(
        verify(m, h, &mut mech(CKM_SHA256_RSA_PKCS), p, msg, &sig),
        CKR_OK
    );
    signature::RsaPublicKeyComponents { n: &n, e: &e_read }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, &sig)
        .expect("aws-lc-rs verifies the signature under the public key read back");

    // What X9.31 and CloudHSM refuse: sizes outside 2048..=4096 or off the 256-bit grid, and an
    // exponent below 65537.
    for (bits, e, want) in [
        (1024, &[1u8, 0, 1][..], CKR_KEY_SIZE_RANGE),
        (2112, &[1, 0, 1], CKR_KEY_SIZE_RANGE),
        (4352, &[1, 0, 1], CKR_KEY_SIZE_RANGE),
        (2048, &[3], CKR_TEMPLATE_INCONSISTENT),
        (2048, &[1, 0, 0], CKR_TEMPLATE_INCONSISTENT),
    ] {
        let bits: CK_ULONG = bits;
        let mut pub_t = [
            attr(CKA_MODULUS_BITS, &bits),
            attr(CKA_TOKEN, &FALSE),
            attr_bytes(CKA_PUBLIC_EXPONENT, e),
        ];
        let mut priv_t = [attr(CKA_SIGN, &TRUE), attr(CKA_TOKEN, &FALSE)];
        let got = generate_pair(
            m,
            h,
            &mut mech(CKM_RSA_X9_31_KEY_PAIR_GEN),
            &mut pub_t,
            &mut priv_t,
        );
        assert_eq!(got.err(), Some(want), "{bits} bits, e {e:02x?}");
    }
}

/// `CKM_CLOUDHSM_AES_GCM` as CloudHSM documents it: `pIv` NULL, the HSM-made IV prepended to the
/// ciphertext, and decryption taking `IV || ciphertext || tag`.
fn cloudhsm_gcm(m: &Module, h: CK_SESSION_HANDLE) {
    let (rv, info) = mech_info(m, CKM_CLOUDHSM_AES_GCM);
    assert_eq!(rv, CKR_OK, "CKM_CLOUDHSM_AES_GCM is offered");
    assert_eq!((info.ulMinKeySize, info.ulMaxKeySize), (16, 32));
    assert_eq!(
        info.flags & (CKF_ENCRYPT | CKF_DECRYPT),
        CKF_ENCRYPT | CKF_DECRYPT
    );

    let value = [0x5au8; 32];
    let k = secret(m, h, CKK_AES, &value, &[CKA_ENCRYPT, CKA_DECRYPT]);
    let plaintext = b"plaintext payload to encrypt";
    let mut aad = *b"plaintext aad";
    let mut params = CK_GCM_PARAMS {
        pIv: ptr::null_mut(),
        ulIvLen: 12,
        ulIvBits: 0,
        pAAD: aad.as_mut_ptr(),
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: 128,
    };
    let ct = crypt(
        m,
        h,
        true,
        &mut mech_param(CKM_CLOUDHSM_AES_GCM, &mut params),
        k,
        plaintext,
    )
    .expect("encrypt");
    assert_eq!(
        ct.len(),
        12 + plaintext.len() + 16,
        "IV || ciphertext || tag"
    );
    let pt = crypt(
        m,
        h,
        false,
        &mut mech_param(CKM_CLOUDHSM_AES_GCM, &mut params),
        k,
        &ct,
    )
    .expect("decrypt");
    assert_eq!(pt, plaintext);

    // Independently: AES-256-GCM with the IV the module returned in front.
    let (iv, body) = ct.split_at(12);
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &value).unwrap());
    let mut buf = body.to_vec();
    let opened = key
        .open_in_place(
            aead::Nonce::try_assume_unique_for_key(iv).unwrap(),
            aead::Aad::from(&aad[..]),
            &mut buf,
        )
        .expect("aws-lc-rs opens the ciphertext with the returned IV");
    assert_eq!(opened, plaintext);

    let again = crypt(
        m,
        h,
        true,
        &mut mech_param(CKM_CLOUDHSM_AES_GCM, &mut params),
        k,
        plaintext,
    )
    .expect("encrypt again");
    assert_ne!(again[..12], ct[..12], "a fresh IV per encryption");

    let mut bad = ct.clone();
    bad[20] ^= 1;
    assert_eq!(
        crypt(
            m,
            h,
            false,
            &mut mech_param(CKM_CLOUDHSM_AES_GCM, &mut params),
            k,
            &bad
        )
        .err(),
        Some(CKR_ENCRYPTED_DATA_INVALID)
    );
    // "The pIV variable in the CK_GCM_PARAMS struct must be set to NULL."
    let mut iv_buf = [0u8; 12];
    params.pIv = iv_buf.as_mut_ptr();
    assert_eq!(
        call!(
            m,
            C_EncryptInit,
            h,
            &mut mech_param(CKM_CLOUDHSM_AES_GCM, &mut params),
            k
        ),
        CKR_MECHANISM_PARAM_INVALID
    );

    // The samples' aes_gcm.c uses the standard CKM_AES_GCM with a zeroed 12-byte pIv and
    // prepends pIv itself: here the caller's IV is used (PKCS #11's rule), pIv is left as it
    // was, and the sample's round trip holds.
    let ct = crypt(
        m,
        h,
        true,
        &mut mech_param(CKM_AES_GCM, &mut params),
        k,
        plaintext,
    )
    .expect("standard GCM encrypt");
    assert_eq!(iv_buf, [0u8; 12], "pIv is not written for CKM_AES_GCM");
    let pt = crypt(
        m,
        h,
        false,
        &mut mech_param(CKM_AES_GCM, &mut params),
        k,
        &ct,
    )
    .expect("standard GCM decrypt");
    assert_eq!(pt, plaintext);
}

/// The three CloudHSM AES key wraps, byte-compared with aws-lc-rs's RFC 3394 / RFC 5649 over the
/// padded key bytes, and unwrapped again.
fn cloudhsm_wraps(m: &Module, h: CK_SESSION_HANDLE) {
    for ty in [
        CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD,
        CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
        CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
    ] {
        let (rv, info) = mech_info(m, ty);
        assert_eq!(rv, CKR_OK, "{ty:#x} is offered");
        assert_eq!((info.ulMinKeySize, info.ulMaxKeySize), (16, 32));
        assert_eq!(info.flags & (CKF_WRAP | CKF_UNWRAP), CKF_WRAP | CKF_UNWRAP);
    }
    let kek_value = [0x4bu8; 32];
    let kek = secret(m, h, CKK_AES, &kek_value, &[CKA_WRAP, CKA_UNWRAP]);
    // aws-lc-rs's key-wrap key is used up by each call.
    let aws = || AesKek::new(&AES_256, &kek_value).unwrap();
    let kw = |data: &[u8]| {
        let mut out = vec![0u8; data.len() + 16];
        let n = aws().wrap(data, &mut out).unwrap().len();
        out.truncate(n);
        out
    };
    let kwp = |data: &[u8]| {
        let mut out = vec![0u8; data.len() + 16];
        let n = aws().wrap_with_padding(data, &mut out).unwrap().len();
        out.truncate(n);
        out
    };
    let pkcs5 = |data: &[u8]| {
        let n = 8 - data.len() % 8;
        let mut v = data.to_vec();
        v.extend(std::iter::repeat_n(n as u8, n));
        v
    };

    // An AES-256 key and a 20-byte generic secret (not block aligned).
    let aes_value: Vec<u8> = (0u8..32).collect();
    let gen_value: Vec<u8> = (100u8..120).collect();
    let aes = secret(m, h, CKK_AES, &aes_value, &[CKA_ENCRYPT]);
    let gen = secret(m, h, CKK_GENERIC_SECRET, &gen_value, &[CKA_SIGN]);
    let class = CKO_SECRET_KEY;
    for (ty, key, value, kt, want) in [
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD,
            aes,
            &aes_value,
            CKK_AES,
            Ok(kw(&aes_value)),
        ),
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD,
            gen,
            &gen_value,
            CKK_GENERIC_SECRET,
            Err(CKR_KEY_SIZE_RANGE),
        ),
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
            aes,
            &aes_value,
            CKK_AES,
            Ok(kw(&pkcs5(&aes_value))),
        ),
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
            gen,
            &gen_value,
            CKK_GENERIC_SECRET,
            Ok(kw(&pkcs5(&gen_value))),
        ),
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
            aes,
            &aes_value,
            CKK_AES,
            Ok(kwp(&aes_value)),
        ),
        (
            CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
            gen,
            &gen_value,
            CKK_GENERIC_SECRET,
            Ok(kwp(&gen_value)),
        ),
    ] {
        let got = wrap(m, h, &mut mech(ty), kek, key);
        assert_eq!(got, want, "{ty:#x} over a {}-byte key", value.len());
        let Ok(wrapped) = got else { continue };
        // Unwrap as the samples' unwrap does: class and key type, no CKA_VALUE_LEN.
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_SENSITIVE, &FALSE),
            attr(CKA_EXTRACTABLE, &TRUE),
        ];
        let back = unwrap(m, h, &mut mech(ty), kek, &wrapped, &mut t).expect("unwrap");
        assert_eq!(attr_value(m, h, back, CKA_VALUE).as_ref(), Ok(value));
        let mut tampered = wrapped.clone();
        tampered[3] ^= 1;
        assert_eq!(
            unwrap(m, h, &mut mech(ty), kek, &tampered, &mut t),
            Err(CKR_WRAPPED_KEY_INVALID)
        );
    }
    // The IV rules of "AES key wrapping in AWS CloudHSM": the default IV may be given for no
    // padding and PKCS #5 padding; zero padding takes none.
    let mut iv = [0xa6u8; 8];
    let mut with_iv = |ty| CK_MECHANISM {
        mechanism: ty,
        pParameter: iv.as_mut_ptr() as *mut c_void,
        ulParameterLen: 8,
    };
    assert_eq!(
        wrap(
            m,
            h,
            &mut with_iv(CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD),
            kek,
            aes
        ),
        Ok(kw(&aes_value))
    );
    assert_eq!(
        wrap(
            m,
            h,
            &mut with_iv(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD),
            kek,
            aes
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );

    // A private key travels as its PKCS #8 encoding, as the samples wrap an RSA or EC key.
    let mut pub_t = [
        attr_bytes(CKA_EC_PARAMS, &P256_PARAMS),
        attr(CKA_VERIFY, &TRUE),
        attr(CKA_TOKEN, &FALSE),
    ];
    let mut priv_t = [
        attr(CKA_SIGN, &TRUE),
        attr(CKA_TOKEN, &FALSE),
        attr(CKA_EXTRACTABLE, &TRUE),
    ];
    let (ec_pub, ec_priv) = generate_pair(
        m,
        h,
        &mut mech(CKM_EC_KEY_PAIR_GEN),
        &mut pub_t,
        &mut priv_t,
    )
    .expect("P-256 pair");
    let point = attr_value(m, h, ec_pub, CKA_EC_POINT).expect("CKA_EC_POINT");
    for ty in [
        CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD,
        CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD,
    ] {
        let wrapped = wrap(m, h, &mut mech(ty), kek, ec_priv).expect("wrap the EC private key");
        let mut plain = vec![0u8; wrapped.len()];
        let pkcs8 = if ty == CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD {
            aws()
                .unwrap_with_padding(&wrapped, &mut plain)
                .unwrap()
                .to_vec()
        } else {
            let p = aws().unwrap(&wrapped, &mut plain).unwrap().to_vec();
            let n = *p.last().unwrap() as usize;
            assert!((1..=8).contains(&n) && p[p.len() - n..].iter().all(|b| *b as usize == n));
            p[..p.len() - n].to_vec()
        };
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
        )
        .expect("the unwrapped bytes are the key's PKCS #8");
        use signature::KeyPair as _;
        // CKA_EC_POINT is the point in a DER OCTET STRING (04 41 ...).
        assert_eq!(&point[2..], pair.public_key().as_ref());
        let priv_class = CKO_PRIVATE_KEY;
        let ec = CKK_EC;
        let mut t = [
            attr(CKA_CLASS, &priv_class),
            attr(CKA_KEY_TYPE, &ec),
            attr(CKA_SIGN, &TRUE),
            attr(CKA_TOKEN, &FALSE),
        ];
        let back = unwrap(m, h, &mut mech(ty), kek, &wrapped, &mut t).expect("unwrap EC key");
        let sig = sign(m, h, &mut mech(CKM_ECDSA_SHA256), back, b"m");
        assert_eq!(
            verify(m, h, &mut mech(CKM_ECDSA_SHA256), ec_pub, b"m", &sig),
            CKR_OK
        );
    }
}

/// SP 800-108 counter mode over an independent PRF: `prefix || i || suffix || L` per block.
fn kbkdf(prf: &dyn Fn(&[u8]) -> Vec<u8>, fixed: &dyn Fn(u32) -> Vec<u8>, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 1u32;
    while out.len() < len {
        out.extend(prf(&fixed(i)));
        i += 1;
    }
    out.truncate(len);
    out
}

/// `CKM_CLOUDHSM_SP800_108_COUNTER_KDF` as the samples' aes_cmac_kdf.c (Client SDK 5 layout)
/// and hmac_kdf.c (Client SDK 3 layout) call it, checked against aws-lc-rs CMAC and HMAC.
fn cloudhsm_kdf(m: &Module, h: CK_SESSION_HANDLE) {
    let (rv, info) = mech_info(m, CKM_CLOUDHSM_SP800_108_COUNTER_KDF);
    assert_eq!(rv, CKR_OK, "CKM_CLOUDHSM_SP800_108_COUNTER_KDF is offered");
    assert_eq!(info.flags & CKF_DERIVE, CKF_DERIVE);

    let base_value: Vec<u8> = (7u8..39).collect();
    let base = secret(m, h, CKK_AES, &base_value, &[CKA_DERIVE]);
    let class = CKO_SECRET_KEY;
    let aes = CKK_AES;
    let gen = CKK_GENERIC_SECRET;
    let derived = |mm: &mut CK_MECHANISM, kt: &CK_KEY_TYPE, len: CK_ULONG| {
        let mut t = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, kt),
            attr(CKA_VALUE_LEN, &len),
            attr(CKA_TOKEN, &FALSE),
            attr(CKA_SENSITIVE, &FALSE),
            attr(CKA_EXTRACTABLE, &TRUE),
        ];
        derive(m, h, mm, base, &mut t).and_then(|o| attr_value(m, h, o, CKA_VALUE))
    };

    // aes_cmac_kdf.c: prefix, counter (32 bits), suffix, L (32 bits, sum of keys), AES-CMAC.
    let mut prefix = [0x01u8, 0xab, 0xe1];
    let mut suffix = [0x0cu8, 0x09, 0x7e, 0x07];
    let mut counter: CK_ULONG = 32;
    let mut dkm = DkmFormat {
        dkm_length_method: SP800_108_DKM_LENGTH_SUM_OF_KEYS,
        ul_width_in_bits: 32,
    };
    let ul = std::mem::size_of::<CK_ULONG>();
    let mut dp = [
        bytes_param(CK_SP800_108_BYTE_ARRAY, &mut prefix),
        data_param(CK_SP800_108_ITERATION_VARIABLE, &mut counter, ul),
        bytes_param(CK_SP800_108_BYTE_ARRAY, &mut suffix),
        data_param(CK_SP800_108_DKM_LENGTH, &mut dkm, 2 * ul),
    ];
    let mut kp = KdfParams {
        prftype: CKM_AES_CMAC,
        ul_number_of_data_params: 4,
        p_data_params: dp.as_mut_ptr(),
    };
    let got = derived(
        &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp),
        &aes,
        32,
    );
    let ck = cmac::Key::new(cmac::AES_256, &base_value).unwrap();
    let cmac_prf = |d: &[u8]| cmac::sign(&ck, d).unwrap().as_ref().to_vec();
    let fixed = |i: u32| {
        [
            &prefix[..],
            &i.to_be_bytes(),
            &suffix,
            &256u32.to_be_bytes(),
        ]
        .concat()
    };
    assert_eq!(got, Ok(kbkdf(&cmac_prf, &fixed, 32)), "AES-CMAC KDF");

    // The same layout with HMAC-SHA-256 and a 48-byte generic secret: two PRF blocks.
    kp.prftype = CKM_SHA256_HMAC;
    let got = derived(
        &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp),
        &gen,
        48,
    );
    let hk = hmac::Key::new(hmac::HMAC_SHA256, &base_value);
    let hmac256 = |d: &[u8]| hmac::sign(&hk, d).as_ref().to_vec();
    let fixed48 = |i: u32| {
        [
            &prefix[..],
            &i.to_be_bytes(),
            &suffix,
            &384u32.to_be_bytes(),
        ]
        .concat()
    };
    assert_eq!(got, Ok(kbkdf(&hmac256, &fixed48, 48)), "HMAC-SHA-256 KDF");

    // hmac_kdf.c: counter format, DKM format, label, context; HMAC-SHA-512; laid out as
    // counter || label || 0x00 || context || L.
    let mut label = [0x01u8, 0xab, 0xe1];
    let mut context = [0x0cu8, 0x09, 0x7e, 0x07];
    let mut dp3 = [
        data_param(SP800_108_COUNTER_FORMAT, &mut counter, ul),
        data_param(SP800_108_DKM_FORMAT, &mut dkm, 2 * ul),
        bytes_param(SP800_108_PRF_LABEL, &mut label),
        bytes_param(SP800_108_PRF_CONTEXT, &mut context),
    ];
    let mut kp3 = KdfParams {
        prftype: CKM_SHA512_HMAC,
        ul_number_of_data_params: 4,
        p_data_params: dp3.as_mut_ptr(),
    };
    let got = derived(
        &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp3),
        &aes,
        32,
    );
    let hk512 = hmac::Key::new(hmac::HMAC_SHA512, &base_value);
    let hmac512 = |d: &[u8]| hmac::sign(&hk512, d).as_ref().to_vec();
    let fixed3 = |i: u32| {
        [
            &i.to_be_bytes()[..],
            &label,
            &[0],
            &context,
            &256u32.to_be_bytes(),
        ]
        .concat()
    };
    assert_eq!(got, Ok(kbkdf(&hmac512, &fixed3, 32)), "SDK 3 layout");

    // Refused: a PRF that is no PRF, a counter width the samples rule out, no counter at all.
    kp.prftype = CKM_SHA256;
    assert_eq!(
        derived(
            &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp),
            &aes,
            32
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    let (mut counter8, mut suffix8): (CK_ULONG, _) = (8, suffix);
    let mut dp8 = [
        data_param(CK_SP800_108_ITERATION_VARIABLE, &mut counter8, ul),
        bytes_param(CK_SP800_108_BYTE_ARRAY, &mut suffix8),
    ];
    kp.prftype = CKM_SHA256_HMAC;
    kp.p_data_params = dp8.as_mut_ptr();
    kp.ul_number_of_data_params = 2;
    assert_eq!(
        derived(
            &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp),
            &aes,
            32
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    kp.p_data_params = dp[2..].as_mut_ptr();
    kp.ul_number_of_data_params = 2;
    assert_eq!(
        derived(
            &mut mech_param(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &mut kp),
            &aes,
            32
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

/// CloudHSM's `C_Login` PIN is `<CU name>:<password>`; the plain PIN keeps working.
fn cu_login(m: &Module, h: CK_SESSION_HANDLE) {
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(
        m.login(h, CKU_USER, &format!("user:{USER_PIN}")),
        CKR_OK,
        "user:password"
    );
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    assert_eq!(m.login(h, CKU_USER, "user:not-the-pin"), CKR_PIN_INCORRECT);
    assert_eq!(m.login(h, CKU_USER, USER_PIN), CKR_OK, "the plain PIN");
}

/// CloudHSM's library shows one slot with one token; so must we, with or without `tokenPresent`.
fn one_slot(m: &Module) {
    for present in [CK_TRUE, CK_FALSE] {
        let mut n: CK_ULONG = 0;
        assert_eq!(
            call!(m, C_GetSlotList, present, ptr::null_mut(), &mut n),
            CKR_OK
        );
        assert_eq!(n, 1, "one slot (tokenPresent {present})");
        let mut ids = [CK_ULONG::MAX; 2];
        n = 2;
        assert_eq!(
            call!(m, C_GetSlotList, present, ids.as_mut_ptr(), &mut n),
            CKR_OK
        );
        assert_eq!(n, 1);
        let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        assert_eq!(call!(m, C_GetSlotInfo, ids[0], &mut info), CKR_OK);
        assert_eq!(info.flags & CKF_TOKEN_PRESENT, CKF_TOKEN_PRESENT);
    }
}

fn run_all(m: &Module, h: CK_SESSION_HANDLE) {
    one_slot(m);
    cu_login(m, h);
    x931_generation(m, h);
    cloudhsm_gcm(m, h);
    cloudhsm_wraps(m, h);
    cloudhsm_kdf(m, h);
}

// ----- the embedded default --------------------------------------------------------------------

#[test]
fn cloudhsm_x931_key_pair_generation() {
    let fx = Fixture::new();
    x931_generation(fx.m, fx.m.fresh_user_session());
}

#[test]
fn cloudhsm_aes_gcm_prepends_the_iv_it_makes() {
    let fx = Fixture::new();
    cloudhsm_gcm(fx.m, fx.m.fresh_user_session());
}

#[test]
fn cloudhsm_aes_key_wraps_match_rfc_3394_and_5649() {
    let fx = Fixture::new();
    cloudhsm_wraps(fx.m, fx.m.fresh_user_session());
}

#[test]
fn cloudhsm_sp800_108_counter_kdf_matches_an_independent_computation() {
    let fx = Fixture::new();
    cloudhsm_kdf(fx.m, fx.m.fresh_user_session());
}

#[test]
fn cloudhsm_login_with_cu_name_and_password() {
    let fx = Fixture::new();
    cu_login(fx.m, fx.m.fresh_user_session());
}

#[test]
fn cloudhsm_programs_see_one_slot() {
    let fx = Fixture::new();
    one_slot(fx.m);
}

// ----- a cluster of three daemons --------------------------------------------------------------

#[test]
fn cloudhsm_programs_run_unchanged_on_a_three_daemon_cluster() {
    // Declared first so it is dropped last: the module is finalised before the daemons stop.
    let cluster = DaemonCluster::start(3, 1, "probe_interval_ms = 100\n");
    let fx = Fixture::new();
    assert_eq!(fx.m.finalize(), CKR_OK);
    assert_eq!(
        fx.m.initialize_with(Some(&cluster.config_arg())),
        CKR_OK,
        "C_Initialize over the cluster"
    );
    let h = fx.m.fresh_user_session();
    run_all(fx.m, h);
}
