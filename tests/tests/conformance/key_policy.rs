//! Issue 11, item 3: a key policy modern clients can live with and attackers cannot use.
//! pkcs11-provider generates every RSA pair with a public key that encrypts and wraps and a
//! private key that decrypts and unwraps; that template is accepted. The wrap/decrypt attack
//! through such a pair is refused where it would happen, at `C_WrapKey` (CKR_KEY_NOT_WRAPPABLE,
//! PKCS #11 3.0 §5.18.4), and the usages a sensitive key could use to finish it later can only
//! be turned off (CKR_ATTRIBUTE_READ_ONLY, §5.7.7). Secret keys keep the template rule.

use std::ptr;

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{
    attr, attr_bytes, create, create_secret, crypt, generate_pair, mech, mech_param, wrap_key,
    Fixture, Module, FALSE, TRUE,
};

fn oaep() -> CK_RSA_PKCS_OAEP_PARAMS {
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: ptr::null_mut(),
        ulSourceDataLen: 0,
    }
}

/// `C_WrapKey` under RSA-OAEP: the blob or the CK_RV.
fn wrap_oaep(
    m: &Module,
    h: CK_SESSION_HANDLE,
    w: CK_OBJECT_HANDLE,
    k: CK_OBJECT_HANDLE,
) -> Result<Vec<u8>, CK_RV> {
    let mut p = oaep();
    wrap_key(m, h, &mut mech_param(CKM_RSA_PKCS_OAEP, &mut p), w, k)
}

/// `C_Decrypt` under RSA-OAEP: the plaintext or the CK_RV.
fn decrypt_oaep(
    m: &Module,
    h: CK_SESSION_HANDLE,
    k: CK_OBJECT_HANDLE,
    blob: &[u8],
) -> Result<Vec<u8>, CK_RV> {
    let mut p = oaep();
    crypt(
        m,
        h,
        false,
        &mut mech_param(CKM_RSA_PKCS_OAEP, &mut p),
        k,
        blob,
    )
}

fn set_bool(
    m: &Module,
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    ty: CK_ATTRIBUTE_TYPE,
    v: bool,
) -> CK_RV {
    let mut t = [attr(ty, if v { &TRUE } else { &FALSE })];
    call!(m, C_SetAttributeValue, h, o, t.as_mut_ptr(), 1)
}

/// The pair pkcs11-provider's `openssl genpkey` asks for (src/kmgmt/rsa.c), 3072 bits so that
/// it is strong enough to carry an AES-128 key.
fn provider_pair(
    m: &Module,
    h: CK_SESSION_HANDLE,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let bits: CK_ULONG = 3072;
    let e = [1u8, 0, 1];
    let mut pub_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_MODULUS_BITS, &bits),
        attr_bytes(CKA_PUBLIC_EXPONENT, &e),
        attr(CKA_ENCRYPT, &TRUE),
        attr(CKA_VERIFY, &TRUE),
        attr(CKA_WRAP, &TRUE),
        attr_bytes(CKA_ID, b"prov"),
    ];
    let mut priv_t = [
        attr(CKA_TOKEN, &TRUE),
        attr(CKA_PRIVATE, &TRUE),
        attr(CKA_SENSITIVE, &TRUE),
        attr(CKA_DECRYPT, &TRUE),
        attr(CKA_SIGN, &TRUE),
        attr(CKA_UNWRAP, &TRUE),
        attr_bytes(CKA_ID, b"prov"),
    ];
    generate_pair(
        m,
        h,
        &mut mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
        &mut pub_t,
        &mut priv_t,
    )
}

#[test]
fn the_providers_rsa_template_is_accepted_and_the_pair_cannot_leak_a_key() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let (public, private) = provider_pair(m, h).expect("pkcs11-provider's RSA template");

    // A sensitive, extractable AES key: wrapping it under the public key would let the private
    // key decrypt the blob to the key in clear. Refused at the wrap.
    let target = create_secret(
        m,
        h,
        CKK_AES,
        &[0x42; 16],
        &[attr(CKA_SENSITIVE, &TRUE), attr(CKA_EXTRACTABLE, &TRUE)],
    )
    .expect("AES key");
    assert_eq!(wrap_oaep(m, h, public, target), Err(CKR_KEY_NOT_WRAPPABLE));
    // A public key object made by hand for the same modulus (another CKA_ID) is caught too.
    let mut modulus = vec![0u8; 512];
    let mut a = attr_bytes(CKA_MODULUS, &modulus);
    assert_eq!(call!(m, C_GetAttributeValue, h, public, &mut a, 1), CKR_OK);
    modulus.truncate(a.ulValueLen as usize);
    let (class, kt) = (CKO_PUBLIC_KEY, CKK_RSA);
    let e = [1u8, 0, 1];
    let mut t = [
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &kt),
        attr_bytes(CKA_MODULUS, &modulus),
        attr_bytes(CKA_PUBLIC_EXPONENT, &e),
        attr(CKA_WRAP, &TRUE),
        attr_bytes(CKA_ID, b"other"),
    ];
    let forged = create(m, h, &mut t).expect("a public key object");
    assert_eq!(wrap_oaep(m, h, forged, target), Err(CKR_KEY_NOT_WRAPPABLE));
    // A key whose value is readable anyway may be wrapped: the blob tells nothing new.
    let readable = create_secret(
        m,
        h,
        CKK_AES,
        &[0x17; 16],
        &[attr(CKA_SENSITIVE, &FALSE), attr(CKA_EXTRACTABLE, &TRUE)],
    )
    .expect("readable AES key");
    let blob = wrap_oaep(m, h, public, readable).expect("wrap a readable key");
    assert_eq!(decrypt_oaep(m, h, private, &blob), Ok(vec![0x17; 16]));

    // Turning CKA_DECRYPT off makes the wrap safe, and it can never come back on: neither by
    // C_SetAttributeValue nor in a copy (the blob would decrypt then).
    assert_eq!(set_bool(m, h, private, CKA_DECRYPT, false), CKR_OK);
    let blob = wrap_oaep(m, h, public, target).expect("no key here can decrypt it now");
    assert_eq!(
        set_bool(m, h, private, CKA_DECRYPT, true),
        CKR_ATTRIBUTE_READ_ONLY
    );
    let mut copy_t = [attr(CKA_DECRYPT, &TRUE)];
    let mut copy = 0;
    assert_eq!(
        call!(
            m,
            C_CopyObject,
            h,
            private,
            copy_t.as_mut_ptr(),
            1,
            &mut copy
        ),
        CKR_ATTRIBUTE_READ_ONLY
    );
    assert_eq!(
        decrypt_oaep(m, h, private, &blob),
        Err(CKR_KEY_FUNCTION_NOT_PERMITTED)
    );
    // The blob still unwraps to the key (a private key may unwrap and once decrypted).
    let (sk, aes) = (CKO_SECRET_KEY, CKK_AES);
    let mut ut = [attr(CKA_CLASS, &sk), attr(CKA_KEY_TYPE, &aes)];
    let mut p = oaep();
    let mut mm = mech_param(CKM_RSA_PKCS_OAEP, &mut p);
    let mut unwrapped = 0;
    assert_eq!(
        call!(
            m,
            C_UnwrapKey,
            h,
            &mut mm,
            private,
            blob.as_ptr() as *mut u8,
            blob.len() as CK_ULONG,
            ut.as_mut_ptr(),
            ut.len() as CK_ULONG,
            &mut unwrapped
        ),
        CKR_OK
    );
}

#[test]
fn secret_keys_keep_the_template_rule_and_their_usages_only_shrink() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let v = [0x33u8; 32];
    // Wrap and decrypt, or unwrap and encrypt, on one sensitive secret key: refused.
    for pair in [(CKA_WRAP, CKA_DECRYPT), (CKA_UNWRAP, CKA_ENCRYPT)] {
        assert_eq!(
            create_secret(
                m,
                h,
                CKK_AES,
                &v,
                &[attr(pair.0, &TRUE), attr(pair.1, &TRUE)]
            ),
            Err(CKR_TEMPLATE_INCONSISTENT),
            "{pair:?}"
        );
    }
    // A key-wrapping key cannot become a decrypting key by toggling: wrap off, then decrypt
    // on, would decrypt the blobs it made.
    let kek = create_secret(
        m,
        h,
        CKK_AES,
        &v,
        &[
            attr(CKA_WRAP, &TRUE),
            attr(CKA_UNWRAP, &TRUE),
            attr(CKA_ENCRYPT, &FALSE),
            attr(CKA_DECRYPT, &FALSE),
        ],
    )
    .expect("a KEK");
    assert_eq!(set_bool(m, h, kek, CKA_WRAP, false), CKR_OK);
    assert_eq!(
        set_bool(m, h, kek, CKA_DECRYPT, true),
        CKR_ATTRIBUTE_READ_ONLY
    );
    assert_eq!(
        set_bool(m, h, kek, CKA_ENCRYPT, true),
        CKR_ATTRIBUTE_READ_ONLY
    );
    assert_eq!(set_bool(m, h, kek, CKA_WRAP, true), CKR_ATTRIBUTE_READ_ONLY);
    // A readable key may change its usages (its value is no secret), but not in the same
    // template that makes it sensitive.
    let open = create_secret(
        m,
        h,
        CKK_AES,
        &v,
        &[attr(CKA_SENSITIVE, &FALSE), attr(CKA_ENCRYPT, &FALSE)],
    )
    .expect("a readable key");
    assert_eq!(set_bool(m, h, open, CKA_ENCRYPT, true), CKR_OK);
    assert_eq!(set_bool(m, h, open, CKA_ENCRYPT, false), CKR_OK);
    let mut t = [attr(CKA_SENSITIVE, &TRUE), attr(CKA_ENCRYPT, &TRUE)];
    assert_eq!(
        call!(m, C_SetAttributeValue, h, open, t.as_mut_ptr(), 2),
        CKR_ATTRIBUTE_READ_ONLY
    );
}

/// An application that has not logged in may hand the token a session key (pkcs11-provider
/// imports keys read from files so): `CKA_PRIVATE` defaults to false for such a session object.
/// A template that asks for a private object, or a token object, still needs a login
/// (CKR_USER_NOT_LOGGED_IN, PKCS #11 3.0 §5.7.1).
#[test]
fn a_public_session_may_create_session_keys_that_are_not_private() {
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    assert_eq!(call!(m, C_Logout, h), CKR_OK);
    let value = [0x5au8; 32];
    let (class, kt) = (CKO_SECRET_KEY, CKK_AES);
    let base = |extra: &[CK_ATTRIBUTE]| {
        let mut t = vec![
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &kt),
            attr_bytes(CKA_VALUE, &value),
            attr(CKA_ENCRYPT, &TRUE),
        ];
        t.extend_from_slice(extra);
        create(m, h, &mut t)
    };
    let k = base(&[]).expect("a session key without a login");
    let mut private: CK_BBOOL = 1;
    let mut a = attr(CKA_PRIVATE, &private);
    a.pValue = (&mut private as *mut CK_BBOOL).cast();
    assert_eq!(call!(m, C_GetAttributeValue, h, k, &mut a, 1), CKR_OK);
    assert_eq!(private, 0, "CKA_PRIVATE defaults to false here");
    assert_eq!(
        base(&[attr(CKA_PRIVATE, &TRUE)]),
        Err(CKR_USER_NOT_LOGGED_IN)
    );
    assert_eq!(base(&[attr(CKA_TOKEN, &TRUE)]), Err(CKR_USER_NOT_LOGGED_IN));
    // Logged in, the usual default (private) applies again.
    assert_eq!(m.login(h, CKU_USER, hsmpool_tests::raw::USER_PIN), CKR_OK);
    let k2 = base(&[]).expect("a session key");
    let mut private2: CK_BBOOL = 0;
    let mut a = attr(CKA_PRIVATE, &private2);
    a.pValue = (&mut private2 as *mut CK_BBOOL).cast();
    assert_eq!(call!(m, C_GetAttributeValue, h, k2, &mut a, 1), CKR_OK);
    assert_eq!(private2, 1);
}
