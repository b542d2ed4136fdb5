//! One Wycheproof file per family through this module's functions: every `valid` case must pass,
//! every `invalid` case must fail (`acceptable` cases may go either way). The full suite runs
//! later through the C ABI; these keep the module honest on its own.
//!
//! The vectors live in `shared/testvectors/wycheproof/` beside the repository (or in the folder
//! named by `HSMPOOL_WYCHEPROOF`); a missing file fails the test, it is never skipped.

use std::path::PathBuf;

use cryptoki_sys::*;
use serde_json::Value;
use zeroize::Zeroizing;

use super::*;
use crate::types::{MechParam, Mechanism, SignInput};

/// The parsed file (always `Some`: a missing file panics, so no test passes without vectors).
fn load(name: &str) -> Option<Value> {
    let dir = std::env::var_os("HSMPOOL_WYCHEPROOF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testvectors/wycheproof")
        });
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).expect("wycheproof file is JSON")),
        Err(e) => panic!(
            "Wycheproof vectors missing: {}: {e} (set HSMPOOL_WYCHEPROOF)",
            path.display()
        ),
    }
}

fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn num(v: &Value) -> u64 {
    v.as_u64().expect("number")
}

fn hash_ckm(name: &str) -> CK_MECHANISM_TYPE {
    match name {
        "SHA-1" => CKM_SHA_1,
        "SHA-224" => CKM_SHA224,
        "SHA-256" => CKM_SHA256,
        "SHA-384" => CKM_SHA384,
        "SHA-512" => CKM_SHA512,
        other => panic!("unexpected hash {other}"),
    }
}

fn mgf(name: &str) -> CK_ULONG {
    match name {
        "SHA-1" => CKG_MGF1_SHA1,
        "SHA-224" => CKG_MGF1_SHA224,
        "SHA-256" => CKG_MGF1_SHA256,
        "SHA-384" => CKG_MGF1_SHA384,
        "SHA-512" => CKG_MGF1_SHA512,
        other => panic!("unexpected MGF hash {other}"),
    }
}

/// Runs every test of every group, checking the outcome against `result`; returns the count.
fn run(file: &Value, mut case: impl FnMut(&Value, &Value) -> bool) -> usize {
    let mut n = 0;
    for group in file["testGroups"].as_array().expect("groups") {
        for test in group["tests"].as_array().expect("tests") {
            let ok = case(group, test);
            match test["result"].as_str() {
                Some("valid") => assert!(ok, "valid case failed: {test}"),
                Some("invalid") => assert!(!ok, "invalid case passed: {test}"),
                _ => {}
            }
            n += 1;
        }
    }
    n
}

#[test]
fn ecdsa_p1363() {
    for (name, curve, mech) in [
        (
            "ecdsa_secp256r1_sha256_p1363_test.json",
            Curve::P256,
            CKM_ECDSA_SHA256,
        ),
        (
            "ecdsa_secp256r1_sha512_p1363_test.json",
            Curve::P256,
            CKM_ECDSA_SHA512,
        ),
        (
            "ecdsa_secp384r1_sha384_p1363_test.json",
            Curve::P384,
            CKM_ECDSA_SHA384,
        ),
    ] {
        let Some(file) = load(name) else { return };
        let n = run(&file, |group, test| {
            let point = hex(&group["publicKey"]["uncompressed"]);
            let key = LoadedKey::load(KeyMaterial::EcPublic { curve, point }).expect("public key");
            let msg = hex(&test["msg"]);
            verify(
                &Mechanism::plain(mech),
                &key,
                SignInput::Message(&msg),
                &hex(&test["sig"]),
            )
            .is_ok()
        });
        assert!(n > 200, "{name}: {n}");
    }
}

#[test]
fn rsa_pkcs1_signatures() {
    let Some(file) = load("rsa_signature_2048_sha256_test.json") else {
        return;
    };
    run(&file, |group, test| {
        let pk = &group["publicKey"];
        let m = KeyMaterial::RsaPublic {
            modulus: hex(&pk["modulus"]),
            public_exponent: hex(&pk["publicExponent"]),
        };
        let key = LoadedKey::load(m).expect("public key");
        let mech = Mechanism::plain(CKM_SHA256_RSA_PKCS);
        verify(
            &mech,
            &key,
            SignInput::Message(&hex(&test["msg"])),
            &hex(&test["sig"]),
        )
        .is_ok()
    });
}

#[test]
fn rsa_pss_signatures() {
    let Some(file) = load("rsa_pss_2048_sha256_mgf1_32_test.json") else {
        return;
    };
    run(&file, |group, test| {
        let pk = &group["publicKey"];
        let m = KeyMaterial::RsaPublic {
            modulus: hex(&pk["modulus"]),
            public_exponent: hex(&pk["publicExponent"]),
        };
        let key = LoadedKey::load(m).expect("public key");
        let param = MechParam::Pss {
            hash: hash_ckm(group["sha"].as_str().expect("sha")),
            mgf: mgf(group["mgfSha"].as_str().expect("mgfSha")),
            salt_len: num(&group["sLen"]) as CK_ULONG,
        };
        let mech = Mechanism {
            mech: CKM_SHA256_RSA_PKCS_PSS,
            param,
        };
        verify(
            &mech,
            &key,
            SignInput::Message(&hex(&test["msg"])),
            &hex(&test["sig"]),
        )
        .is_ok()
    });
}

/// The private key of an RSA decryption group, built from its components (which exercises
/// `rsa_private_from_components`) and checked against the group's PKCS #8.
fn rsa_group_key(group: &Value) -> LoadedKey {
    let k = &group["privateKey"];
    let c = |f: &str| hex(&k[f]);
    let pkcs8 = rsa_private_from_components(
        &c("modulus"),
        &c("publicExponent"),
        &c("privateExponent"),
        Some(&c("prime1")),
        Some(&c("prime2")),
        Some(&c("exponent1")),
        Some(&c("exponent2")),
        Some(&c("coefficient")),
    )
    .expect("components");
    let from_file = LoadedKey::load(KeyMaterial::RsaPrivate {
        pkcs8: Zeroizing::new(hex(&group["privateKeyPkcs8"])),
    })
    .expect("pkcs8");
    let key = LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8 }).expect("built key");
    assert_eq!(
        rsa_public_components(match from_file.material() {
            KeyMaterial::RsaPrivate { pkcs8 } => pkcs8,
            _ => unreachable!(),
        }),
        rsa_public_components(match key.material() {
            KeyMaterial::RsaPrivate { pkcs8 } => pkcs8,
            _ => unreachable!(),
        })
    );
    key
}

#[test]
fn rsa_oaep_decryption() {
    let Some(file) = load("rsa_oaep_2048_sha256_mgf1sha256_test.json") else {
        return;
    };
    run(&file, |group, test| {
        let key = rsa_group_key(group);
        let mech = Mechanism {
            mech: CKM_RSA_PKCS_OAEP,
            param: MechParam::Oaep {
                hash: hash_ckm(group["sha"].as_str().expect("sha")),
                mgf: mgf(group["mgfSha"].as_str().expect("mgfSha")),
                label: hex(&test["label"]),
            },
        };
        match decrypt(&mech, &key, &hex(&test["ct"])) {
            Ok(p) => *p == hex(&test["msg"]),
            Err(rv) => {
                assert!(
                    rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE,
                    "{rv:#x}"
                );
                false
            }
        }
    });
}

#[test]
fn rsa_pkcs1_decryption() {
    let Some(file) = load("rsa_pkcs1_2048_test.json") else {
        return;
    };
    run(&file, |group, test| {
        let key = rsa_group_key(group);
        match decrypt(&Mechanism::plain(CKM_RSA_PKCS), &key, &hex(&test["ct"])) {
            Ok(p) => *p == hex(&test["msg"]),
            Err(rv) => {
                assert!(
                    rv == CKR_ENCRYPTED_DATA_INVALID || rv == CKR_ENCRYPTED_DATA_LEN_RANGE,
                    "{rv:#x}"
                );
                false
            }
        }
    });
}

#[test]
fn aes_gcm() {
    let Some(file) = load("aes_gcm_test.json") else {
        return;
    };
    run(&file, |group, test| {
        let key = LoadedKey::load(KeyMaterial::Secret {
            key_type: CKK_AES,
            value: Zeroizing::new(hex(&test["key"])),
        })
        .expect("aes key");
        let mech = Mechanism {
            mech: CKM_AES_GCM,
            param: MechParam::Gcm {
                iv: hex(&test["iv"]),
                aad: hex(&test["aad"]),
                tag_bits: num(&group["tagSize"]) as CK_ULONG,
            },
        };
        let msg = hex(&test["msg"]);
        let mut ct = hex(&test["ct"]);
        ct.extend(hex(&test["tag"]));
        let opened = decrypt(&mech, &key, &ct).is_ok_and(|p| *p == msg);
        if test["result"] == "valid" {
            assert_eq!(
                encrypt(&mech, &key, &msg).as_deref(),
                Ok(ct.as_slice()),
                "{test}"
            );
        }
        opened
    });
}

#[test]
fn aes_cbc_pkcs5() {
    let Some(file) = load("aes_cbc_pkcs5_test.json") else {
        return;
    };
    run(&file, |_, test| {
        let key = LoadedKey::load(KeyMaterial::Secret {
            key_type: CKK_AES,
            value: Zeroizing::new(hex(&test["key"])),
        })
        .expect("aes key");
        let mech = Mechanism {
            mech: CKM_AES_CBC_PAD,
            param: MechParam::Iv(hex(&test["iv"])),
        };
        let msg = hex(&test["msg"]);
        let ct = hex(&test["ct"]);
        if test["result"] == "valid" {
            assert_eq!(encrypt(&mech, &key, &msg), Ok(ct.clone()), "{test}");
        }
        decrypt(&mech, &key, &ct).is_ok_and(|p| *p == msg)
    });
}

#[test]
fn hmac() {
    for (name, general) in [
        ("hmac_sha1_test.json", CKM_SHA_1_HMAC_GENERAL),
        ("hmac_sha256_test.json", CKM_SHA256_HMAC_GENERAL),
        ("hmac_sha384_test.json", CKM_SHA384_HMAC_GENERAL),
        ("hmac_sha512_test.json", CKM_SHA512_HMAC_GENERAL),
    ] {
        let Some(file) = load(name) else { return };
        run(&file, |group, test| {
            let key = LoadedKey::load(KeyMaterial::Secret {
                key_type: CKK_GENERIC_SECRET,
                value: Zeroizing::new(hex(&test["key"])),
            })
            .expect("secret");
            let mech = Mechanism {
                mech: general,
                param: MechParam::Ulong(num(&group["tagSize"]) as CK_ULONG / 8),
            };
            verify(
                &mech,
                &key,
                SignInput::Message(&hex(&test["msg"])),
                &hex(&test["tag"]),
            )
            .is_ok()
        });
    }
}

fn secret_key(value: Vec<u8>) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Secret {
        key_type: CKK_AES,
        value: Zeroizing::new(value),
    })
    .expect("secret key")
}

#[test]
fn ecdsa_p521_p1363() {
    let Some(file) = load("ecdsa_secp521r1_sha512_p1363_test.json") else {
        return;
    };
    let n = run(&file, |group, test| {
        let point = hex(&group["publicKey"]["uncompressed"]);
        let key = LoadedKey::load(KeyMaterial::EcPublic {
            curve: Curve::P521,
            point,
        })
        .expect("public key");
        let msg = hex(&test["msg"]);
        let sig = hex(&test["sig"]);
        let hashed = verify(
            &Mechanism::plain(CKM_ECDSA_SHA512),
            &key,
            SignInput::Message(&msg),
            &sig,
        )
        .is_ok();
        // The same through CKM_ECDSA over the digest, and through the prehashed input.
        let d = Hash::Sha512.digest(&msg).as_ref().to_vec();
        let raw = verify(
            &Mechanism::plain(CKM_ECDSA),
            &key,
            SignInput::Message(&d),
            &sig,
        )
        .is_ok();
        let pre = verify(
            &Mechanism::plain(CKM_ECDSA_SHA512),
            &key,
            SignInput::Prehashed(&d),
            &sig,
        )
        .is_ok();
        assert_eq!((hashed, hashed), (raw, pre), "{test}");
        hashed
    });
    assert!(n > 200, "{n}");
}

#[test]
fn ed25519() {
    let Some(file) = load("ed25519_test.json") else {
        return;
    };
    let n = run(&file, |group, test| {
        let point = hex(&group["publicKey"]["pk"]);
        let key = LoadedKey::load(KeyMaterial::EdPublic { point }).expect("public key");
        verify(
            &Mechanism::plain(CKM_EDDSA),
            &key,
            SignInput::Message(&hex(&test["msg"])),
            &hex(&test["sig"]),
        )
        .is_ok()
    });
    assert!(n > 100, "{n}");
}

#[test]
fn aes_cmac() {
    let Some(file) = load("aes_cmac_test.json") else {
        return;
    };
    let n = run(&file, |group, test| {
        let key = secret_key(hex(&test["key"]));
        let tag_len = num(&group["tagSize"]) as CK_ULONG / 8;
        let mech = Mechanism {
            mech: CKM_AES_CMAC_GENERAL,
            param: MechParam::Ulong(tag_len),
        };
        let msg = hex(&test["msg"]);
        let tag = hex(&test["tag"]);
        if test["result"] == "valid" {
            assert_eq!(sign(&mech, &key, SignInput::Message(&msg)), Ok(tag.clone()));
            if tag_len == 16 {
                let full = Mechanism::plain(CKM_AES_CMAC);
                assert_eq!(sign(&full, &key, SignInput::Message(&msg)), Ok(tag.clone()));
                assert_eq!(verify(&full, &key, SignInput::Message(&msg), &tag), Ok(()));
            }
        }
        verify(&mech, &key, SignInput::Message(&msg), &tag).is_ok()
    });
    assert!(n > 300, "{n}");
}

/// AES-KW and AES-KWP: unwrap must recover `msg` (valid) or fail with a wrapped-key error;
/// valid cases must wrap to `ct`.
fn key_wrap_file(name: &str, mech: CK_MECHANISM_TYPE) -> usize {
    let Some(file) = load(name) else { return 0 };
    run(&file, |_, test| {
        let key = secret_key(hex(&test["key"]));
        let m = Mechanism::plain(mech);
        let msg = hex(&test["msg"]);
        let ct = hex(&test["ct"]);
        if test["result"] == "valid" {
            assert_eq!(wrap(&m, &key, &msg), Ok(ct.clone()), "{test}");
        }
        match unwrap(&m, &key, &ct) {
            Ok(p) => *p == msg,
            Err(rv) => {
                assert!(
                    [
                        CKR_WRAPPED_KEY_INVALID,
                        CKR_WRAPPED_KEY_LEN_RANGE,
                        CKR_UNWRAPPING_KEY_SIZE_RANGE
                    ]
                    .contains(&rv),
                    "{rv:#x} {test}"
                );
                false
            }
        }
    })
}

#[test]
fn aes_key_wrap() {
    assert!(key_wrap_file("aes_wrap_test.json", CKM_AES_KEY_WRAP) > 100);
}

#[test]
fn aes_key_wrap_pad() {
    assert!(key_wrap_file("aes_kwp_test.json", CKM_AES_KEY_WRAP_KWP) > 100);
}

#[test]
fn ecdh_ecpoint() {
    for (name, curve) in [
        ("ecdh_secp256r1_ecpoint_test.json", Curve::P256),
        ("ecdh_secp384r1_ecpoint_test.json", Curve::P384),
    ] {
        let Some(file) = load(name) else { return };
        let n = run(&file, |_, test| {
            let (pkcs8, _) =
                ec_private_from_scalar(curve, &hex(&test["private"])).expect("private key");
            let key = LoadedKey::load(KeyMaterial::EcPrivate { curve, pkcs8 }).expect("key");
            let public = hex(&test["public"]);
            match ecdh_derive(&key, &public, CKD_NULL, &[], 0) {
                Ok(z) => {
                    // The DER-wrapped form gives the same secret.
                    let wrapped = ec_point_to_attr(&public);
                    let z2 = ecdh_derive(&key, &wrapped, CKD_NULL, &[], 0).expect("wrapped");
                    assert_eq!(*z, *z2);
                    *z == hex(&test["shared"])
                }
                Err(rv) => {
                    assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID, "{test}");
                    false
                }
            }
        });
        assert!(n > 100, "{name}: {n}");
    }
}

#[test]
fn hkdf_sha256() {
    let Some(file) = load("hkdf_sha256_test.json") else {
        return;
    };
    let n = run(&file, |_, test| {
        let size = num(&test["size"]) as usize;
        match hkdf(
            CKM_SHA256,
            true,
            true,
            &hex(&test["salt"]),
            &hex(&test["ikm"]),
            &hex(&test["info"]),
            size,
        ) {
            Ok(okm) => *okm == hex(&test["okm"]),
            Err(rv) => {
                assert_eq!(rv, CKR_TEMPLATE_INCONSISTENT);
                false
            }
        }
    });
    assert!(n > 50, "{n}");
}
