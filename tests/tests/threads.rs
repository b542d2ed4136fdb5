//! Many threads, each with its own session, sign at once: zero errors, every signature verifies
//! independently.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, Fixture, TRUE};

const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const THREADS: usize = 64;

#[test]
fn sixty_four_threads_sign_concurrently_without_error() {
    let secs: u64 = std::env::var("HSMPOOL_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let mut pub_t = [attr_bytes(CKA_EC_PARAMS, P256_OID), attr(CKA_TOKEN, &TRUE)];
    let mut priv_t = [attr(CKA_SIGN, &TRUE), attr(CKA_TOKEN, &TRUE)];
    let mut mm = CK_MECHANISM {
        mechanism: CKM_EC_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut p, mut ec) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut mm,
            pub_t.as_mut_ptr(),
            2,
            priv_t.as_mut_ptr(),
            2,
            &mut p,
            &mut ec
        ),
        CKR_OK
    );
    let mut point = vec![0u8; 128];
    let mut a = CK_ATTRIBUTE {
        type_: CKA_EC_POINT,
        pValue: point.as_mut_ptr() as *mut c_void,
        ulValueLen: 128,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, p, &mut a, 1), CKR_OK);
    point.truncate(a.ulValueLen as usize);
    let raw_point = point[2..].to_vec();
    let bits: CK_ULONG = 2048;
    let mut rpub = [attr(CKA_MODULUS_BITS, &bits)];
    let mut rpriv = [attr(CKA_SIGN, &TRUE)];
    let mut rm = CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    };
    let (mut rp, mut rsa) = (0, 0);
    assert_eq!(
        call!(
            m,
            C_GenerateKeyPair,
            h,
            &mut rm,
            rpub.as_mut_ptr(),
            1,
            rpriv.as_mut_ptr(),
            1,
            &mut rp,
            &mut rsa
        ),
        CKR_OK
    );
    let mut n = vec![0u8; 256];
    let mut a = CK_ATTRIBUTE {
        type_: CKA_MODULUS,
        pValue: n.as_mut_ptr() as *mut c_void,
        ulValueLen: 256,
    };
    assert_eq!(call!(m, C_GetAttributeValue, h, rp, &mut a, 1), CKR_OK);

    let errors = AtomicU64::new(0);
    let signatures = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (errors, signatures, raw_point, n) = (&errors, &signatures, &raw_point, &n);
            s.spawn(move || {
                let sess = m.open(false);
                let mut i = 0u64;
                while Instant::now() < deadline || i == 0 {
                    let data = format!("thread {t} message {i}");
                    let use_rsa = (t + i as usize) % 4 == 0;
                    let (key, mech_type, len) = if use_rsa {
                        (rsa, CKM_SHA256_RSA_PKCS, 256)
                    } else {
                        (ec, CKM_ECDSA_SHA256, 64)
                    };
                    let mut mm = CK_MECHANISM {
                        mechanism: mech_type,
                        pParameter: ptr::null_mut(),
                        ulParameterLen: 0,
                    };
                    let mut sig = vec![0u8; len];
                    let mut l = len as CK_ULONG;
                    let rv1 = call!(m, C_SignInit, sess, &mut mm, key);
                    let rv2 = call!(
                        m,
                        C_Sign,
                        sess,
                        data.as_ptr() as *mut u8,
                        data.len() as CK_ULONG,
                        sig.as_mut_ptr(),
                        &mut l
                    );
                    if rv1 != CKR_OK || rv2 != CKR_OK {
                        eprintln!("thread {t}: C_SignInit {rv1:#x}, C_Sign {rv2:#x}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let ok = if use_rsa {
                            aws_lc_rs::signature::RsaPublicKeyComponents {
                                n: &n[..],
                                e: &[1u8, 0, 1][..],
                            }
                            .verify(
                                &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
                                data.as_bytes(),
                                &sig,
                            )
                            .is_ok()
                        } else {
                            aws_lc_rs::signature::UnparsedPublicKey::new(
                                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                                &raw_point[..],
                            )
                            .verify(data.as_bytes(), &sig)
                            .is_ok()
                        };
                        if !ok {
                            eprintln!("thread {t}: signature {i} does not verify");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        signatures.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
                assert_eq!(call!(m, C_CloseSession, sess), CKR_OK);
            });
        }
    });
    let total = signatures.load(Ordering::Relaxed);
    println!(
        "{THREADS} threads, {secs} s: {total} signatures, {} errors",
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert!(
        total >= THREADS as u64,
        "every thread signed at least once ({total})"
    );
}
