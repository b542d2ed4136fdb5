//! Tests of the crypto module: round trips for every mechanism, known answers checked against
//! aws-lc-rs independently (or published vectors), and negative cases.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::signature::{self as sig, KeyPair as _, UnparsedPublicKey};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::*;
use crate::types::{MechParam, Mechanism, SignInput};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn m(mech: CK_MECHANISM_TYPE) -> Mechanism {
    Mechanism::plain(mech)
}

fn pss(
    mech: CK_MECHANISM_TYPE,
    hash: CK_MECHANISM_TYPE,
    mgf: CK_ULONG,
    salt_len: CK_ULONG,
) -> Mechanism {
    Mechanism {
        mech,
        param: MechParam::Pss {
            hash,
            mgf,
            salt_len,
        },
    }
}

fn oaep(hash: CK_MECHANISM_TYPE, mgf: CK_ULONG, label: &[u8]) -> Mechanism {
    Mechanism {
        mech: CKM_RSA_PKCS_OAEP,
        param: MechParam::Oaep {
            hash,
            mgf,
            label: label.to_vec(),
        },
    }
}

/// One RSA-2048 key pair for the whole test run: (private, public, RSAPublicKey DER).
fn rsa2048() -> &'static (Arc<LoadedKey>, Arc<LoadedKey>, Vec<u8>) {
    static K: OnceLock<(Arc<LoadedKey>, Arc<LoadedKey>, Vec<u8>)> = OnceLock::new();
    K.get_or_init(|| {
        let g = generate_rsa(2048, None).unwrap();
        let der = aws_lc_rs::rsa::KeyPair::from_pkcs8(&g.pkcs8)
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec();
        let public = KeyMaterial::RsaPublic {
            modulus: g.modulus,
            public_exponent: g.public_exponent,
        };
        (
            Arc::new(LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 }).unwrap()),
            Arc::new(LoadedKey::load(public).unwrap()),
            der,
        )
    })
}

fn ec_pair(curve: Curve) -> (LoadedKey, LoadedKey, Vec<u8>) {
    let (pkcs8, point) = generate_ec(curve).unwrap();
    (
        LoadedKey::load(KeyMaterial::EcPrivate { curve, pkcs8 }).unwrap(),
        LoadedKey::load(KeyMaterial::EcPublic {
            curve,
            point: point.clone(),
        })
        .unwrap(),
        point,
    )
}

fn secret(key_type: CK_KEY_TYPE, value: &[u8]) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Secret {
        key_type,
        value: Zeroizing::new(value.to_vec()),
    })
    .unwrap()
}

#[test]
fn loaded_key_is_send_sync() {
    fn check<T: Send + Sync>() {}
    check::<LoadedKey>();
    check::<KeyMaterial>();
}

// ---- RSA ----

const RSA_HASH_MECHS: [(CK_MECHANISM_TYPE, Hash); 5] = [
    (CKM_SHA1_RSA_PKCS, Hash::Sha1),
    (CKM_SHA224_RSA_PKCS, Hash::Sha224),
    (CKM_SHA256_RSA_PKCS, Hash::Sha256),
    (CKM_SHA384_RSA_PKCS, Hash::Sha384),
    (CKM_SHA512_RSA_PKCS, Hash::Sha512),
];

#[test]
fn rsa_pkcs1_sign_known_answer_verified_by_aws_lc_rs() {
    let (private, public, der) = rsa2048();
    let msg = b"hsmpool known answer";
    let s = sign(&m(CKM_SHA256_RSA_PKCS), private, SignInput::Message(msg)).unwrap();
    assert_eq!(s.len(), 256);
    UnparsedPublicKey::new(&sig::RSA_PKCS1_2048_8192_SHA256, der)
        .verify(msg, &s)
        .unwrap();
    for (alg, mech) in [
        (&sig::RSA_PKCS1_2048_8192_SHA384, CKM_SHA384_RSA_PKCS),
        (&sig::RSA_PKCS1_2048_8192_SHA512, CKM_SHA512_RSA_PKCS),
        (
            &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            CKM_SHA1_RSA_PKCS,
        ),
    ] {
        let s = sign(&m(mech), private, SignInput::Message(msg)).unwrap();
        UnparsedPublicKey::new(alg, der).verify(msg, &s).unwrap();
    }
    verify(
        &m(CKM_SHA256_RSA_PKCS),
        public,
        SignInput::Message(msg),
        &s_sha256(private, msg),
    )
    .unwrap();
}

fn s_sha256(key: &LoadedKey, msg: &[u8]) -> Vec<u8> {
    sign(&m(CKM_SHA256_RSA_PKCS), key, SignInput::Message(msg)).unwrap()
}

#[test]
fn rsa_pkcs1_all_paths_agree() {
    // PKCS #1 v1.5 is deterministic: the hash-and-sign, prehashed, DigestInfo (fast path for
    // SHA-256/384/512, raw for SHA-1/224) forms must all give the same signature.
    let (private, public, _) = rsa2048();
    let msg = b"the same message";
    for (mech, h) in RSA_HASH_MECHS {
        let a = sign(&m(mech), private, SignInput::Message(msg)).unwrap();
        let d = h.digest(msg);
        let b = sign(&m(mech), private, SignInput::Prehashed(d.as_ref())).unwrap();
        let mut di = der::digest_info_prefix(h).to_vec();
        di.extend_from_slice(d.as_ref());
        let c = sign(&m(CKM_RSA_PKCS), private, SignInput::Message(&di)).unwrap();
        assert_eq!(a, b, "{h:?}");
        assert_eq!(a, c, "{h:?}");
        verify(&m(mech), public, SignInput::Message(msg), &a).unwrap();
        verify(&m(mech), public, SignInput::Prehashed(d.as_ref()), &a).unwrap();
        verify(&m(CKM_RSA_PKCS), public, SignInput::Message(&di), &a).unwrap();
        // A private key also verifies.
        verify(&m(mech), private, SignInput::Message(msg), &a).unwrap();
        assert_eq!(
            sign(&m(mech), private, SignInput::Prehashed(&[1; 10])),
            Err(CKR_DATA_LEN_RANGE)
        );
    }
}

#[test]
fn rsa_pkcs1_raw_data_and_lengths() {
    let (private, public, _) = rsa2048();
    for len in [0usize, 1, 35, 245] {
        let data = vec![0x5a; len];
        let s = sign(&m(CKM_RSA_PKCS), private, SignInput::Message(&data)).unwrap();
        verify(&m(CKM_RSA_PKCS), public, SignInput::Message(&data), &s).unwrap();
        let other = vec![0x5b; len.max(1)];
        assert_eq!(
            verify(&m(CKM_RSA_PKCS), public, SignInput::Message(&other), &s),
            Err(CKR_SIGNATURE_INVALID)
        );
    }
    assert_eq!(
        sign(&m(CKM_RSA_PKCS), private, SignInput::Message(&[1; 246])),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(signature_len(&m(CKM_RSA_PKCS), private), Ok(256));
    assert_eq!(signature_len(&m(CKM_SHA256_RSA_PKCS_PSS), public), Ok(256));
}

#[test]
fn rsa_signature_tamper_and_length() {
    let (private, public, _) = rsa2048();
    let msg = b"msg";
    let s = s_sha256(private, msg);
    let mech = m(CKM_SHA256_RSA_PKCS);
    let mut bad = s.clone();
    bad[100] ^= 1;
    assert_eq!(
        verify(&mech, public, SignInput::Message(msg), &bad),
        Err(CKR_SIGNATURE_INVALID)
    );
    assert_eq!(
        verify(&mech, public, SignInput::Message(msg), &s[..255]),
        Err(CKR_SIGNATURE_LEN_RANGE)
    );
    assert_eq!(
        verify(&mech, public, SignInput::Message(msg), &[]),
        Err(CKR_SIGNATURE_LEN_RANGE)
    );
    let mut long = s.clone();
    long.push(0);
    assert_eq!(
        verify(&mech, public, SignInput::Message(msg), &long),
        Err(CKR_SIGNATURE_LEN_RANGE)
    );
    assert_eq!(
        verify(&mech, public, SignInput::Message(b"other"), &s),
        Err(CKR_SIGNATURE_INVALID)
    );
    // A signature value above the modulus.
    assert_eq!(
        verify(&mech, public, SignInput::Message(msg), &[0xff; 256]),
        Err(CKR_SIGNATURE_INVALID)
    );
}

#[test]
fn rsa_pss_round_trips_and_params() {
    let (private, public, der) = rsa2048();
    let msg = b"pss message";
    // The standard parameters, checked by aws-lc-rs independently.
    for (mech, hash, mgf, alg) in [
        (
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_SHA256,
            CKG_MGF1_SHA256,
            &sig::RSA_PSS_2048_8192_SHA256,
        ),
        (
            CKM_SHA384_RSA_PKCS_PSS,
            CKM_SHA384,
            CKG_MGF1_SHA384,
            &sig::RSA_PSS_2048_8192_SHA384,
        ),
        (
            CKM_SHA512_RSA_PKCS_PSS,
            CKM_SHA512,
            CKG_MGF1_SHA512,
            &sig::RSA_PSS_2048_8192_SHA512,
        ),
    ] {
        let h = Hash::from_ckm(hash).unwrap();
        let p = pss(mech, hash, mgf, h.len() as CK_ULONG);
        let s = sign(&p, private, SignInput::Message(msg)).unwrap();
        UnparsedPublicKey::new(alg, der).verify(msg, &s).unwrap();
        verify(&p, public, SignInput::Message(msg), &s).unwrap();
        // Prehashed and CKM_RSA_PKCS_PSS over the digest.
        let d = h.digest(msg);
        let s2 = sign(&p, private, SignInput::Prehashed(d.as_ref())).unwrap();
        UnparsedPublicKey::new(alg, der).verify(msg, &s2).unwrap();
        let raw_p = pss(CKM_RSA_PKCS_PSS, hash, mgf, h.len() as CK_ULONG);
        let s3 = sign(&raw_p, private, SignInput::Message(d.as_ref())).unwrap();
        UnparsedPublicKey::new(alg, der).verify(msg, &s3).unwrap();
        verify(&raw_p, public, SignInput::Message(d.as_ref()), &s).unwrap();
    }
    // Every hash, mixed MGF1 hashes, salts from 0 to the maximum.
    for h in Hash::ALL {
        for mgf in [CKG_MGF1_SHA1, CKG_MGF1_SHA256, CKG_MGF1_SHA512] {
            let max = 256 - h.len() - 2;
            for salt in [0, 20, max] {
                let p = pss(CKM_RSA_PKCS_PSS, h.ckm(), mgf, salt as CK_ULONG);
                let d = h.digest(msg);
                let s = sign(&p, private, SignInput::Message(d.as_ref())).unwrap();
                verify(&p, public, SignInput::Message(d.as_ref()), &s).unwrap();
                // The salt length is part of the parameters.
                let other_salt = if salt == max { salt - 1 } else { salt + 1 };
                let other = pss(CKM_RSA_PKCS_PSS, h.ckm(), mgf, other_salt as CK_ULONG);
                assert_eq!(
                    verify(&other, public, SignInput::Message(d.as_ref()), &s),
                    Err(CKR_SIGNATURE_INVALID)
                );
                let mut bad = s.clone();
                bad[0] ^= 0x40;
                assert_eq!(
                    verify(&p, public, SignInput::Message(d.as_ref()), &bad),
                    Err(CKR_SIGNATURE_INVALID)
                );
            }
            let too_long = pss(
                CKM_RSA_PKCS_PSS,
                h.ckm(),
                mgf,
                (256 - h.len() - 1) as CK_ULONG,
            );
            assert_eq!(
                sign(
                    &too_long,
                    private,
                    SignInput::Message(h.digest(msg).as_ref())
                ),
                Err(CKR_MECHANISM_PARAM_INVALID)
            );
        }
    }
    // Hash mismatch between mechanism and parameter; bad MGF; bad param variant; wrong digest length.
    let p = pss(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384, CKG_MGF1_SHA384, 48);
    assert_eq!(
        sign(&p, private, SignInput::Message(msg)),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    let p = pss(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, 0x99, 32);
    assert_eq!(
        sign(&p, private, SignInput::Message(msg)),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        sign(
            &m(CKM_SHA256_RSA_PKCS_PSS),
            private,
            SignInput::Message(msg)
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    let p = pss(CKM_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32);
    assert_eq!(
        sign(&p, private, SignInput::Message(&[0; 31])),
        Err(CKR_DATA_LEN_RANGE)
    );
    let p = pss(CKM_SHA256_RSA_PKCS_PSS, CKM_SHA256, CKG_MGF1_SHA256, 32);
    assert_eq!(
        sign(&p, private, SignInput::Prehashed(&[0; 20])),
        Err(CKR_DATA_LEN_RANGE)
    );
}

#[test]
fn rsa_x509_raw() {
    let (private, public, _) = rsa2048();
    let data = b"raw rsa block";
    let s = sign(&m(CKM_RSA_X_509), private, SignInput::Message(data)).unwrap();
    verify(&m(CKM_RSA_X_509), public, SignInput::Message(data), &s).unwrap();
    let c = encrypt(&m(CKM_RSA_X_509), public, data).unwrap();
    let p = decrypt(&m(CKM_RSA_X_509), private, &c).unwrap();
    assert_eq!(p.len(), 256);
    assert!(p.ends_with(data) && p[..256 - data.len()].iter().all(|b| *b == 0));
    assert_eq!(
        encrypt(&m(CKM_RSA_X_509), public, &[0xff; 256]),
        Err(CKR_DATA_INVALID)
    );
    assert_eq!(
        encrypt(&m(CKM_RSA_X_509), public, &[0x01; 257]),
        Err(CKR_DATA_LEN_RANGE)
    );
}

#[test]
fn rsa_encryption_round_trips() {
    let (private, public, _) = rsa2048();
    let data = b"a secret session key";
    let c = encrypt(&m(CKM_RSA_PKCS), public, data).unwrap();
    assert_eq!(c.len(), 256);
    assert_eq!(&decrypt(&m(CKM_RSA_PKCS), private, &c).unwrap()[..], data);
    assert_eq!(
        encrypt(&m(CKM_RSA_PKCS), public, &[0; 246]),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert!(encrypt(&m(CKM_RSA_PKCS), public, &[0; 245]).is_ok());
    for h in Hash::ALL {
        for mgf in [
            CKG_MGF1_SHA1,
            CKG_MGF1_SHA224,
            CKG_MGF1_SHA256,
            CKG_MGF1_SHA384,
            CKG_MGF1_SHA512,
        ] {
            for label in [&b""[..], b"label"] {
                let mech = oaep(h.ckm(), mgf, label);
                let c = encrypt(&mech, public, data).unwrap();
                assert_eq!(&decrypt(&mech, private, &c).unwrap()[..], data);
                let other = oaep(h.ckm(), mgf, b"other label");
                assert_eq!(
                    decrypt(&other, private, &c),
                    Err(CKR_ENCRYPTED_DATA_INVALID)
                );
            }
        }
        let max = 256 - 2 * h.len() - 2;
        let mech = oaep(h.ckm(), CKG_MGF1_SHA1, b"");
        assert!(encrypt(&mech, public, &vec![1; max]).is_ok());
        assert_eq!(
            encrypt(&mech, public, &vec![1; max + 1]),
            Err(CKR_DATA_LEN_RANGE)
        );
    }
    assert_eq!(
        encrypt(&oaep(CKM_MD5, CKG_MGF1_SHA1, b""), public, data),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        encrypt(&oaep(CKM_SHA256, 0x77, b""), public, data),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        encrypt(&m(CKM_RSA_PKCS_OAEP), public, data),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

#[test]
fn rsa_decryption_failures_are_uniform() {
    let (private, public, _) = rsa2048();
    let c = encrypt(&m(CKM_RSA_PKCS), public, b"x").unwrap();
    assert_eq!(
        decrypt(&m(CKM_RSA_PKCS), private, &c[1..]),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    assert_eq!(
        decrypt(&m(CKM_RSA_PKCS), private, &[]),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    // Malformed PKCS #1 v1.5 blocks, made deterministically with raw RSA (a flipped ciphertext
    // bit decrypts to valid padding about once in a few hundred tries, so it cannot be used).
    let k = 256;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut type1 = vec![0xffu8; k];
    type1[0] = 0;
    type1[1] = 1;
    type1[k - 2] = 0;
    blocks.push(type1);
    let mut no_separator = vec![0x5au8; k];
    no_separator[0] = 0;
    no_separator[1] = 2;
    blocks.push(no_separator);
    let mut short_padding = vec![0x5au8; k];
    short_padding[0] = 0;
    short_padding[1] = 2;
    short_padding[5] = 0;
    blocks.push(short_padding);
    let mut wrong_type = vec![0x5au8; k];
    wrong_type[0] = 0;
    wrong_type[1] = 3;
    wrong_type[k - 10] = 0;
    blocks.push(wrong_type);
    for block in blocks {
        let c = encrypt(&m(CKM_RSA_X_509), public, &block).unwrap();
        assert_eq!(
            decrypt(&m(CKM_RSA_PKCS), private, &c),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
    }
    assert_eq!(
        decrypt(&m(CKM_RSA_PKCS), private, &[0xff; 256]),
        Err(CKR_ENCRYPTED_DATA_INVALID)
    );
    let mech = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
    let c = encrypt(&mech, public, b"x").unwrap();
    let mut bad = c.clone();
    bad[7] ^= 1;
    assert_eq!(
        decrypt(&mech, private, &bad),
        Err(CKR_ENCRYPTED_DATA_INVALID)
    );
    // Decrypting needs the private key.
    assert_eq!(decrypt(&mech, public, &c), Err(CKR_KEY_TYPE_INCONSISTENT));
}

#[test]
fn rsa_generation_sizes_and_exponents() {
    assert_eq!(generate_rsa(1024, None).err(), Some(CKR_KEY_SIZE_RANGE));
    assert_eq!(generate_rsa(2047, None).err(), Some(CKR_KEY_SIZE_RANGE));
    assert_eq!(generate_rsa(8448, None).err(), Some(CKR_KEY_SIZE_RANGE));
    assert_eq!(
        generate_rsa(2048, Some(&[2])).err(),
        Some(CKR_TEMPLATE_INCONSISTENT)
    );
    assert_eq!(
        generate_rsa(2048, Some(&[1])).err(),
        Some(CKR_TEMPLATE_INCONSISTENT)
    );
    assert_eq!(
        generate_rsa(2048, Some(&[])).err(),
        Some(CKR_TEMPLATE_INCONSISTENT)
    );
    assert_eq!(
        generate_rsa(2048, Some(&[1, 0, 0, 0, 1])).err(),
        Some(CKR_TEMPLATE_INCONSISTENT)
    );
    // A size aws-lc-rs does not generate, and a non-default exponent: the raw path.
    let g = generate_rsa(2304, Some(&[0, 3])).unwrap();
    assert_eq!(g.public_exponent, vec![3]);
    assert_eq!(be_bits(&g.modulus), 2304);
    let key = LoadedKey::load(KeyMaterial::RsaPrivate {
        pkcs8: g.pkcs8.clone(),
    })
    .unwrap();
    assert_eq!(key.key_bits(), 2304);
    let s = s_sha256(&key, b"m");
    assert_eq!(s.len(), 288);
    let public = LoadedKey::load(KeyMaterial::RsaPublic {
        modulus: g.modulus,
        public_exponent: g.public_exponent,
    })
    .unwrap();
    verify(
        &m(CKM_SHA256_RSA_PKCS),
        &public,
        SignInput::Message(b"m"),
        &s,
    )
    .unwrap();
    assert_eq!(rsa2048().0.key_bits(), 2048);
    assert_eq!(rsa2048().1.key_bits(), 2048);
}

#[test]
fn rsa_components_import() {
    assert_eq!(
        rsa_private_from_components(
            &[1; 256],
            &[1, 0, 1],
            &[1; 256],
            None,
            None,
            None,
            None,
            None
        )
        .err(),
        Some(CKR_TEMPLATE_INCOMPLETE)
    );
    let x = [0x33u8; 128];
    assert_eq!(
        rsa_private_from_components(
            &[0xc1; 256],
            &[1, 0, 1],
            &[7; 256],
            Some(&x),
            Some(&x),
            Some(&x),
            Some(&x),
            Some(&x)
        )
        .err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        rsa_private_from_components(
            &[0xc1; 128],
            &[1, 0, 1],
            &[7; 128],
            Some(&x),
            Some(&x),
            Some(&x),
            Some(&x),
            Some(&x)
        )
        .err(),
        Some(CKR_KEY_SIZE_RANGE)
    );
    assert_eq!(
        rsa_public_components(b"garbage").err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    let (n, e) = rsa_public_components(&rsa_private_pkcs8()).unwrap();
    assert_eq!(e, vec![1, 0, 1]);
    assert_eq!(n.len(), 256);
}

fn rsa_private_pkcs8() -> Zeroizing<Vec<u8>> {
    match rsa2048().0.material() {
        KeyMaterial::RsaPrivate { pkcs8 } => pkcs8.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn rsa_concurrent_signing() {
    let (private, public, _) = rsa2048();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let k = Arc::clone(private);
            std::thread::spawn(move || {
                let msg = [i as u8; 40];
                let d = Hash::Sha1.digest(&msg);
                let mut di = der::digest_info_prefix(Hash::Sha1).to_vec();
                di.extend_from_slice(d.as_ref());
                (0..10)
                    .map(|_| {
                        (
                            sign(&m(CKM_SHA256_RSA_PKCS), &k, SignInput::Message(&msg)).unwrap(),
                            sign(&m(CKM_RSA_PKCS), &k, SignInput::Message(&di)).unwrap(),
                            msg,
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        for (a, b, msg) in t.join().unwrap() {
            verify(
                &m(CKM_SHA256_RSA_PKCS),
                public,
                SignInput::Message(&msg),
                &a,
            )
            .unwrap();
            verify(&m(CKM_SHA1_RSA_PKCS), public, SignInput::Message(&msg), &b).unwrap();
        }
    }
}

// ---- EC ----

#[test]
fn curve_params() {
    for c in Curve::ALL {
        assert_eq!(Curve::from_ec_params(c.ec_params_der()), Ok(c));
        assert_eq!(c.order_bits().div_ceil(8), c.field_bytes());
    }
    assert_eq!(
        Curve::from_ec_params(&hex("06052b81040023")),
        Ok(Curve::P521)
    );
    assert_eq!(
        Curve::from_ec_params(&hex("06052b8104000a")),
        Ok(Curve::Secp256k1)
    );
    // Ed25519 (its own key kind) and secp224r1: well formed, not supported.
    for oid in ["06032b6570", "06052b81040021"] {
        assert_eq!(
            Curve::from_ec_params(&hex(oid)),
            Err(CKR_CURVE_NOT_SUPPORTED),
            "{oid}"
        );
    }
    // Printable string "edwards25519", garbage, truncated, trailing bytes.
    for bad in [
        "130c656477617264733235353139",
        "",
        "06",
        "06082a8648ce3d0301",
        "06082a8648ce3d03010700",
        "3000",
    ] {
        assert_eq!(
            Curve::from_ec_params(&hex(bad)),
            Err(CKR_ATTRIBUTE_VALUE_INVALID),
            "{bad}"
        );
    }
}

#[test]
fn ecdsa_known_answer_verified_by_aws_lc_rs() {
    for (curve, mech, alg) in [
        (Curve::P256, CKM_ECDSA_SHA256, &sig::ECDSA_P256_SHA256_FIXED),
        (Curve::P384, CKM_ECDSA_SHA384, &sig::ECDSA_P384_SHA384_FIXED),
    ] {
        let (private, public, point) = ec_pair(curve);
        let msg = b"ecdsa message";
        let s = sign(&m(mech), &private, SignInput::Message(msg)).unwrap();
        assert_eq!(s.len(), 2 * curve.field_bytes());
        UnparsedPublicKey::new(alg, &point).verify(msg, &s).unwrap();
        verify(&m(mech), &public, SignInput::Message(msg), &s).unwrap();
        // CKM_ECDSA over the digest, fast path (natural length), verified independently too.
        let d = curve.natural_hash().digest(msg);
        let s = sign(&m(CKM_ECDSA), &private, SignInput::Message(d.as_ref())).unwrap();
        UnparsedPublicKey::new(alg, &point).verify(msg, &s).unwrap();
        let s = sign(&m(mech), &private, SignInput::Prehashed(d.as_ref())).unwrap();
        UnparsedPublicKey::new(alg, &point).verify(msg, &s).unwrap();
        assert_eq!(
            signature_len(&m(CKM_ECDSA), &public),
            Ok(2 * curve.field_bytes())
        );
        assert_eq!(private.key_bits(), curve.order_bits());
    }
}

#[test]
fn ecdsa_all_hashes_and_digest_lengths() {
    for curve in Curve::ALL {
        let (private, public, _) = ec_pair(curve);
        let msg = b"any";
        for mech in [
            CKM_ECDSA_SHA1,
            CKM_ECDSA_SHA224,
            CKM_ECDSA_SHA256,
            CKM_ECDSA_SHA384,
            CKM_ECDSA_SHA512,
        ] {
            let s = sign(&m(mech), &private, SignInput::Message(msg)).unwrap();
            verify(&m(mech), &public, SignInput::Message(msg), &s).unwrap();
            let h = super::hash_of_hash_and_sign(mech).unwrap();
            verify(
                &m(CKM_ECDSA),
                &public,
                SignInput::Message(h.digest(msg).as_ref()),
                &s,
            )
            .unwrap();
            assert_eq!(
                sign(&m(mech), &private, SignInput::Prehashed(&[0; 3])),
                Err(CKR_DATA_LEN_RANGE)
            );
        }
        let fb = curve.field_bytes();
        // Short digests are left-padded: d and 0..0 || d are the same integer (as long as the
        // padded form is not longer than the order's bit length: 65 bytes for P-521, whose
        // 66-byte inputs are shifted right by 7 bits).
        let short = [0xa5u8; 20];
        let s = sign(&m(CKM_ECDSA), &private, SignInput::Message(&short)).unwrap();
        let mut padded = vec![0u8; curve.order_bits() / 8 - short.len()];
        padded.extend_from_slice(&short);
        verify(&m(CKM_ECDSA), &public, SignInput::Message(&padded), &s).unwrap();
        // Long digests are truncated to the leftmost order bits.
        let long: Vec<u8> = (0..100u8).collect();
        let s = sign(&m(CKM_ECDSA), &private, SignInput::Message(&long)).unwrap();
        let extra = fb * 8 - curve.order_bits();
        if extra == 0 {
            verify(&m(CKM_ECDSA), &public, SignInput::Message(&long[..fb]), &s).unwrap();
        } else {
            // P-521: the leftmost 521 bits, i.e. long[..66] >> 7 (long[0] is 0, so it fits in
            // 65 bytes, which are not truncated again).
            let shifted = super::ext_tests::shr_bits(&long[..fb], extra);
            assert_eq!(shifted[0], 0);
            verify(
                &m(CKM_ECDSA),
                &public,
                SignInput::Message(&shifted[1..]),
                &s,
            )
            .unwrap();
            verify(&m(CKM_ECDSA), &public, SignInput::Message(&long[..fb]), &s).unwrap();
            // Byte-level truncation (the integer long[..66], unshifted) would be wrong.
            assert_eq!(
                verify(&m(CKM_ECDSA), &public, SignInput::Message(&long[1..fb]), &s),
                Err(CKR_SIGNATURE_INVALID)
            );
        }
        // Any single byte of input changes: invalid.
        let mut bad = s.clone();
        bad[1] ^= 1;
        assert_eq!(
            verify(&m(CKM_ECDSA), &public, SignInput::Message(&long), &bad),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify(&m(CKM_ECDSA), &public, SignInput::Message(&long), &s[1..]),
            Err(CKR_SIGNATURE_LEN_RANGE)
        );
        assert_eq!(
            verify(
                &m(CKM_ECDSA),
                &public,
                SignInput::Message(&long),
                &vec![0; 2 * fb]
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify(
                &m(CKM_ECDSA),
                &public,
                SignInput::Message(&long),
                &vec![0xff; 2 * fb]
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            sign(&m(CKM_ECDSA), &private, SignInput::Message(&[])),
            Err(CKR_DATA_LEN_RANGE)
        );
        // Private keys verify too; public keys do not sign.
        verify(&m(CKM_ECDSA), &private, SignInput::Message(&long), &s).unwrap();
        assert_eq!(
            sign(&m(CKM_ECDSA), &public, SignInput::Message(&long)),
            Err(CKR_KEY_TYPE_INCONSISTENT)
        );
    }
}

#[test]
fn ec_import_and_points() {
    // Scalar 1: the point is the generator.
    let (pkcs8, point) = ec_private_from_scalar(Curve::P256, &[1]).unwrap();
    assert_eq!(
        point[1..33],
        hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296")
    );
    let key = LoadedKey::load(KeyMaterial::EcPrivate {
        curve: Curve::P256,
        pkcs8,
    })
    .unwrap();
    let s = sign(&m(CKM_ECDSA_SHA256), &key, SignInput::Message(b"x")).unwrap();
    UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &point)
        .verify(b"x", &s)
        .unwrap();
    assert_eq!(
        ec_private_from_scalar(Curve::P256, &[0; 32]).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        ec_private_from_scalar(Curve::P256, &[0xff; 32]).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        ec_private_from_scalar(Curve::P256, &[1; 33]).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        ec_private_from_scalar(Curve::P384, &[]).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );

    let (_, _, point) = ec_pair(Curve::P384);
    let attr = ec_point_to_attr(&point);
    assert_eq!(attr[..3], [0x04, 0x61, 0x04]);
    assert_eq!(ec_point_from_attr(Curve::P384, &attr), Ok(point.clone()));
    assert_eq!(ec_point_from_attr(Curve::P384, &point), Ok(point.clone()));
    // Wrong curve, off the curve, truncated, compressed, garbage.
    assert_eq!(
        ec_point_from_attr(Curve::P256, &attr),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    let mut off = point.clone();
    off[60] ^= 1;
    assert_eq!(
        ec_point_from_attr(Curve::P384, &off),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        ec_point_from_attr(Curve::P384, &ec_point_to_attr(&off)),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    assert_eq!(
        ec_point_from_attr(Curve::P384, &point[..96]),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    let mut compressed = point[..49].to_vec();
    compressed[0] = 2;
    assert_eq!(
        ec_point_from_attr(Curve::P384, &compressed),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    for g in [&[][..], &[4], &[0], &[4, 0x61]] {
        assert_eq!(
            ec_point_from_attr(Curve::P384, g),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }
    // Loading bad EC material.
    let bad = KeyMaterial::EcPublic {
        curve: Curve::P384,
        point: off,
    };
    assert_eq!(
        LoadedKey::load(bad).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    let (p256, _) = generate_ec(Curve::P256).unwrap();
    let wrong_curve = KeyMaterial::EcPrivate {
        curve: Curve::P384,
        pkcs8: p256,
    };
    assert_eq!(
        LoadedKey::load(wrong_curve).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
}

// ---- HMAC ----

const HMACS: [(CK_MECHANISM_TYPE, CK_MECHANISM_TYPE, Hash); 5] = [
    (CKM_SHA_1_HMAC, CKM_SHA_1_HMAC_GENERAL, Hash::Sha1),
    (CKM_SHA224_HMAC, CKM_SHA224_HMAC_GENERAL, Hash::Sha224),
    (CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL, Hash::Sha256),
    (CKM_SHA384_HMAC, CKM_SHA384_HMAC_GENERAL, Hash::Sha384),
    (CKM_SHA512_HMAC, CKM_SHA512_HMAC_GENERAL, Hash::Sha512),
];

#[test]
fn hmac_matches_aws_lc_rs() {
    let value = b"a generic secret of some length!";
    let key = secret(CKK_GENERIC_SECRET, value);
    let msg = b"mac me";
    for (mech, general, h) in HMACS {
        let expected = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(sym_alg(h), value), msg);
        let t = sign(&m(mech), &key, SignInput::Message(msg)).unwrap();
        assert_eq!(t, expected.as_ref());
        verify(&m(mech), &key, SignInput::Message(msg), &t).unwrap();
        assert_eq!(signature_len(&m(mech), &key), Ok(h.len()));
        let mut bad = t.clone();
        bad[h.len() - 1] ^= 1;
        assert_eq!(
            verify(&m(mech), &key, SignInput::Message(msg), &bad),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify(&m(mech), &key, SignInput::Message(msg), &t[1..]),
            Err(CKR_SIGNATURE_LEN_RANGE)
        );
        assert_eq!(
            sign(&m(mech), &key, SignInput::Prehashed(&t)),
            Err(CKR_MECHANISM_INVALID)
        );
        for n in [1, 10, h.len()] {
            let g = Mechanism {
                mech: general,
                param: MechParam::Ulong(n as CK_ULONG),
            };
            let t = sign(&g, &key, SignInput::Message(msg)).unwrap();
            assert_eq!(t, expected.as_ref()[..n]);
            verify(&g, &key, SignInput::Message(msg), &t).unwrap();
            assert_eq!(signature_len(&g, &key), Ok(n));
            assert_eq!(
                verify(&g, &key, SignInput::Message(msg), expected.as_ref()),
                if n == h.len() {
                    Ok(())
                } else {
                    Err(CKR_SIGNATURE_LEN_RANGE)
                }
            );
        }
        for bad in [
            MechParam::Ulong(0),
            MechParam::Ulong(h.len() as CK_ULONG + 1),
            MechParam::None,
        ] {
            let g = Mechanism {
                mech: general,
                param: bad,
            };
            assert_eq!(
                sign(&g, &key, SignInput::Message(msg)),
                Err(CKR_MECHANISM_PARAM_INVALID)
            );
        }
    }
    // RFC 4231 test case 2.
    let key = secret(CKK_GENERIC_SECRET, b"Jefe");
    assert_eq!(
        sign(
            &m(CKM_SHA256_HMAC),
            &key,
            SignInput::Message(b"what do ya want for nothing?")
        )
        .unwrap(),
        hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
}

fn sym_alg(h: Hash) -> aws_lc_rs::hmac::Algorithm {
    match h {
        Hash::Sha1 => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => aws_lc_rs::hmac::HMAC_SHA224,
        Hash::Sha256 => aws_lc_rs::hmac::HMAC_SHA256,
        Hash::Sha384 => aws_lc_rs::hmac::HMAC_SHA384,
        Hash::Sha512 => aws_lc_rs::hmac::HMAC_SHA512,
    }
}

// ---- AES ----

fn gcm(iv: &[u8], aad: &[u8], tag_bits: CK_ULONG) -> Mechanism {
    Mechanism {
        mech: CKM_AES_GCM,
        param: MechParam::Gcm {
            iv: iv.to_vec(),
            aad: aad.to_vec(),
            tag_bits,
        },
    }
}

fn iv_mech(mech: CK_MECHANISM_TYPE, iv: &[u8]) -> Mechanism {
    Mechanism {
        mech,
        param: MechParam::Iv(iv.to_vec()),
    }
}

#[test]
fn aes_gcm_known_answer_and_round_trips() {
    // NIST GCM test case 2 (AES-128, zero key, zero 96-bit IV, one zero block).
    let key = secret(CKK_AES, &[0; 16]);
    let c = encrypt(&gcm(&[0; 12], b"", 128), &key, &[0; 16]).unwrap();
    assert_eq!(
        c,
        hex("0388dace60b6a392f328c2b971b2fe78 ab6e47d42cec13bdf53a67b21257bddf")
    );
    // The raw path gives the same answer for the standard sizes, and aws-lc-rs opens it.
    assert_eq!(
        raw::aes_gcm_seal(&[0; 16], &[0; 12], b"", 16, &[0; 16]).unwrap(),
        c
    );
    for klen in [16usize, 24, 32] {
        let value = vec![0x42u8; klen];
        let key = secret(CKK_AES, &value);
        for iv_len in [1usize, 8, 12, 16, 60, 128] {
            for tag_bits in [32, 64, 96, 104, 112, 120, 128] {
                let iv = vec![7u8; iv_len];
                let mech = gcm(&iv, b"header", tag_bits);
                let data = b"gcm plaintext, not block aligned";
                let c = encrypt(&mech, &key, data).unwrap();
                assert_eq!(c.len(), data.len() + tag_bits as usize / 8);
                assert_eq!(encrypt_len(&mech, &key, data.len()), Ok(c.len()));
                assert_eq!(&decrypt(&mech, &key, &c).unwrap()[..], data);
                let mut bad = c.clone();
                bad[c.len() - 1] ^= 1;
                assert_eq!(decrypt(&mech, &key, &bad), Err(CKR_ENCRYPTED_DATA_INVALID));
                let wrong_aad = gcm(&iv, b"other", tag_bits);
                assert_eq!(
                    decrypt(&wrong_aad, &key, &c),
                    Err(CKR_ENCRYPTED_DATA_INVALID)
                );
            }
        }
        // Independent check of the standard case with aws-lc-rs.
        let mech = gcm(&[9; 12], b"aad", 128);
        let c = encrypt(&mech, &key, b"hello").unwrap();
        let alg = match klen {
            16 => &aws_lc_rs::aead::AES_128_GCM,
            24 => &aws_lc_rs::aead::AES_192_GCM,
            _ => &aws_lc_rs::aead::AES_256_GCM,
        };
        let k = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(alg, &value).unwrap(),
        );
        let mut buf = c.clone();
        let p = k
            .open_in_place(
                aws_lc_rs::aead::Nonce::assume_unique_for_key([9; 12]),
                aws_lc_rs::aead::Aad::from(b"aad"),
                &mut buf,
            )
            .unwrap();
        assert_eq!(p, b"hello");
        // Empty plaintext.
        let c = encrypt(&mech, &key, b"").unwrap();
        assert_eq!(c.len(), 16);
        assert!(decrypt(&mech, &key, &c).unwrap().is_empty());
        assert_eq!(
            decrypt(&mech, &key, &c[..15]),
            Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
        );
    }
    for bad in [
        gcm(&[], b"", 128),
        gcm(&[0; 12], b"", 0),
        gcm(&[0; 12], b"", 127),
        gcm(&[0; 12], b"", 136),
    ] {
        assert_eq!(
            encrypt(&bad, &key, b"x"),
            Err(CKR_MECHANISM_PARAM_INVALID),
            "{bad:?}"
        );
    }
    assert_eq!(
        encrypt(&m(CKM_AES_GCM), &key, b"x"),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

#[test]
fn aes_cbc_ecb_known_answers() {
    // NIST SP 800-38A F.2.1 (CBC-AES128), first block.
    let key = secret(CKK_AES, &hex("2b7e151628aed2a6abf7158809cf4f3c"));
    let iv = hex("000102030405060708090a0b0c0d0e0f");
    let pt = hex("6bc1bee22e409f96e93d7e117393172a");
    let c = encrypt(&iv_mech(CKM_AES_CBC, &iv), &key, &pt).unwrap();
    assert_eq!(c, hex("7649abac8119b246cee98e9b12e9197d"));
    assert_eq!(
        decrypt(&iv_mech(CKM_AES_CBC, &iv), &key, &c)
            .unwrap()
            .to_vec(),
        pt
    );
    // FIPS-197 C.1 (AES-128 ECB).
    let key = secret(CKK_AES, &hex("000102030405060708090a0b0c0d0e0f"));
    let c = encrypt(
        &m(CKM_AES_ECB),
        &key,
        &hex("00112233445566778899aabbccddeeff"),
    )
    .unwrap();
    assert_eq!(c, hex("69c4e0d86a7b0430d8cdb78070b4c55a"));
    assert_eq!(
        decrypt(&m(CKM_AES_ECB), &key, &c).unwrap().to_vec(),
        hex("00112233445566778899aabbccddeeff")
    );
    assert_eq!(
        encrypt(&m(CKM_AES_ECB), &key, &[0; 15]),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(
        encrypt(&iv_mech(CKM_AES_CBC, &iv), &key, &[0; 17]),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert_eq!(
        decrypt(&iv_mech(CKM_AES_CBC, &iv), &key, &[0; 17]),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    assert_eq!(
        encrypt(&iv_mech(CKM_AES_CBC, &iv[..15]), &key, &[0; 16]),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        encrypt(&m(CKM_AES_CBC), &key, &[0; 16]),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

#[test]
fn aes_cbc_pad_round_trips_and_bad_padding() {
    for klen in [16usize, 24, 32] {
        let value = vec![3u8; klen];
        let key = secret(CKK_AES, &value);
        let mech = iv_mech(CKM_AES_CBC_PAD, &[5; 16]);
        for len in [0usize, 1, 15, 16, 17, 100] {
            let data = vec![0x11u8; len];
            let c = encrypt(&mech, &key, &data).unwrap();
            assert_eq!(c.len(), (len / 16 + 1) * 16);
            assert_eq!(encrypt_len(&mech, &key, len), Ok(c.len()));
            assert_eq!(decrypt(&mech, &key, &c).unwrap().to_vec(), data);
            // Independent decryption with aws-lc-rs.
            let alg = match klen {
                16 => &aws_lc_rs::cipher::AES_128,
                24 => &aws_lc_rs::cipher::AES_192,
                _ => &aws_lc_rs::cipher::AES_256,
            };
            let k = aws_lc_rs::cipher::PaddedBlockDecryptingKey::cbc_pkcs7(
                aws_lc_rs::cipher::UnboundCipherKey::new(alg, &value).unwrap(),
            )
            .unwrap();
            let mut buf = c.clone();
            let p = k
                .decrypt(
                    &mut buf,
                    aws_lc_rs::cipher::DecryptionContext::Iv128([5; 16].into()),
                )
                .unwrap();
            assert_eq!(p, data.as_slice());
        }
        // A last block that decrypts to bad padding: encrypt a block ending in 0x00 without padding.
        let c = encrypt(&iv_mech(CKM_AES_CBC, &[5; 16]), &key, &[0u8; 16]).unwrap();
        assert_eq!(decrypt(&mech, &key, &c), Err(CKR_ENCRYPTED_DATA_INVALID));
        let c = encrypt(&iv_mech(CKM_AES_CBC, &[5; 16]), &key, &[17u8; 16]).unwrap();
        assert_eq!(decrypt(&mech, &key, &c), Err(CKR_ENCRYPTED_DATA_INVALID));
        assert_eq!(decrypt(&mech, &key, &[]), Err(CKR_ENCRYPTED_DATA_LEN_RANGE));
        assert_eq!(
            decrypt(&mech, &key, &[0; 31]),
            Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
        );
    }
}

// ---- key kinds, mechanisms, garbage ----

#[test]
fn key_kind_and_mechanism_errors() {
    let (rsa_private, rsa_public, _) = rsa2048();
    let (ec_private, _, _) = ec_pair(Curve::P256);
    let generic = secret(CKK_GENERIC_SECRET, &[1; 16]);
    let aes = secret(CKK_AES, &[1; 16]);
    let iv = iv_mech(CKM_AES_CBC_PAD, &[0; 16]);
    assert_eq!(encrypt(&iv, &generic, b"x"), Err(CKR_KEY_TYPE_INCONSISTENT));
    assert_eq!(
        encrypt(&iv, rsa_public, b"x"),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        encrypt(&m(CKM_RSA_PKCS), &aes, b"x"),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        sign(
            &m(CKM_SHA256_RSA_PKCS),
            &ec_private,
            SignInput::Message(b"x")
        ),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        sign(
            &m(CKM_SHA256_RSA_PKCS),
            rsa_public,
            SignInput::Message(b"x")
        ),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        sign(&m(CKM_ECDSA), rsa_private, SignInput::Message(b"x")),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        sign(&m(CKM_SHA256_HMAC), rsa_private, SignInput::Message(b"x")),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    // HMAC accepts any secret key.
    assert!(sign(&m(CKM_SHA256_HMAC), &aes, SignInput::Message(b"x")).is_ok());
    // Unknown mechanisms, and mechanisms used for the wrong function.
    assert_eq!(
        sign(&m(CKM_MD5_RSA_PKCS), rsa_private, SignInput::Message(b"x")),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        sign(&m(CKM_RSA_PKCS_OAEP), rsa_private, SignInput::Message(b"x")),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        sign(&m(CKM_AES_GCM), &aes, SignInput::Message(b"x")),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        encrypt(&m(CKM_ECDSA), &ec_private, b"x"),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        encrypt(&m(CKM_SHA256_RSA_PKCS), rsa_public, b"x"),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        decrypt(&m(0xdead_beef), &aes, b"x"),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        signature_len(&m(CKM_AES_ECB), &aes),
        Err(CKR_MECHANISM_INVALID)
    );
    // Parameters where none is taken.
    let with_iv = iv_mech(CKM_SHA256_RSA_PKCS, &[0; 16]);
    assert_eq!(
        sign(&with_iv, rsa_private, SignInput::Message(b"x")),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(secret(CKK_AES, &[0; 32]).key_bits(), 256);
}

#[test]
fn garbage_key_material_is_rejected() {
    let rsa_garbage = [&b""[..], b"\x30", b"\x30\x03\x02\x01\x00", &[0xff; 300]];
    for g in rsa_garbage {
        let m = KeyMaterial::RsaPrivate {
            pkcs8: Zeroizing::new(g.to_vec()),
        };
        assert_eq!(LoadedKey::load(m).err(), Some(CKR_ATTRIBUTE_VALUE_INVALID));
        let m = KeyMaterial::EcPrivate {
            curve: Curve::P256,
            pkcs8: Zeroizing::new(g.to_vec()),
        };
        assert_eq!(LoadedKey::load(m).err(), Some(CKR_ATTRIBUTE_VALUE_INVALID));
    }
    // An EC key where an RSA key is expected, and the reverse.
    let (ec, _) = generate_ec(Curve::P256).unwrap();
    assert_eq!(
        LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: ec }).err(),
        Some(CKR_ATTRIBUTE_VALUE_INVALID)
    );
    let rsa = rsa_private_pkcs8();
    let m = KeyMaterial::EcPrivate {
        curve: Curve::P256,
        pkcs8: rsa,
    };
    assert_eq!(LoadedKey::load(m).err(), Some(CKR_ATTRIBUTE_VALUE_INVALID));
    // Bad public keys: zero modulus, even modulus, empty exponent.
    for (n, e) in [
        (vec![0u8; 256], vec![1, 0, 1]),
        (vec![], vec![3]),
        (vec![0xc2; 256], vec![]),
        (vec![0xc2; 256], vec![1, 0, 1]),
    ] {
        let m = KeyMaterial::RsaPublic {
            modulus: n,
            public_exponent: e,
        };
        assert_eq!(LoadedKey::load(m).err(), Some(CKR_ATTRIBUTE_VALUE_INVALID));
    }
}

#[test]
fn fuzzish_inputs_never_panic() {
    let (rsa_private, rsa_public, _) = rsa2048();
    let (ec_private, ec_public, _) = ec_pair(Curve::P384);
    let aes = secret(CKK_AES, &[1; 32]);
    let generic = secret(CKK_GENERIC_SECRET, &[]);
    let keys: [&LoadedKey; 6] = [
        rsa_private,
        rsa_public,
        &ec_private,
        &ec_public,
        &aes,
        &generic,
    ];
    let mechs = [
        CKM_RSA_PKCS,
        CKM_RSA_X_509,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS_PSS,
        CKM_SHA1_RSA_PKCS,
        CKM_SHA512_RSA_PKCS_PSS,
        CKM_ECDSA,
        CKM_ECDSA_SHA224,
        CKM_SHA_1_HMAC,
        CKM_SHA512_HMAC_GENERAL,
        CKM_AES_ECB,
        CKM_AES_CBC,
        CKM_AES_CBC_PAD,
        CKM_AES_GCM,
        CKM_SHA256,
    ];
    let params = [
        MechParam::None,
        MechParam::Iv(vec![0; 16]),
        MechParam::Iv(vec![]),
        MechParam::Gcm {
            iv: vec![1; 12],
            aad: vec![],
            tag_bits: 128,
        },
        MechParam::Gcm {
            iv: vec![1; 3],
            aad: vec![2; 5],
            tag_bits: CK_ULONG::MAX,
        },
        MechParam::Pss {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: CK_ULONG::MAX,
        },
        MechParam::Pss {
            hash: CKM_SHA512,
            mgf: CKG_MGF1_SHA1,
            salt_len: 0,
        },
        MechParam::Oaep {
            hash: CKM_SHA512,
            mgf: CKG_MGF1_SHA1,
            label: vec![1; 1000],
        },
        MechParam::Ulong(CK_ULONG::MAX),
        MechParam::Ulong(4),
        MechParam::Raw(vec![1, 2, 3]),
    ];
    let datas: [Vec<u8>; 7] = [
        vec![],
        vec![0],
        vec![0xff; 15],
        vec![0; 32],
        vec![0xff; 64],
        vec![7; 256],
        vec![0xff; 600],
    ];
    for key in keys {
        for mech in mechs {
            for param in &params {
                let mech = Mechanism {
                    mech,
                    param: param.clone(),
                };
                let _ = signature_len(&mech, key);
                let _ = encrypt_len(&mech, key, 100);
                let _ = decrypt_len(&mech, key, 100);
                for data in &datas {
                    let _ = sign(&mech, key, SignInput::Message(data));
                    let _ = sign(&mech, key, SignInput::Prehashed(data));
                    let _ = verify(&mech, key, SignInput::Message(data), data);
                    let _ = verify(&mech, key, SignInput::Prehashed(data), data);
                    let _ = encrypt(&mech, key, data);
                    let _ = decrypt(&mech, key, data);
                }
            }
        }
    }
}

#[test]
fn random_and_secrets() {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    random(&mut a).unwrap();
    random(&mut b).unwrap();
    assert_ne!(a, b);
    random(&mut []).unwrap();
    assert_eq!(generate_secret(32).unwrap().len(), 32);
    assert_eq!(generate_secret(0).err(), Some(CKR_KEY_SIZE_RANGE));
}

#[test]
fn encrypt_into_writes_what_encrypt_returns() {
    let key = secret(CKK_AES, &[7; 32]);
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let (_, rsa_pub, _) = rsa2048();
    let cases = [
        (gcm(&[1; 12], b"", 128), &key),       // the in-place path
        (gcm(&[1; 12], b"header", 128), &key), // in place, with AAD
        (gcm(&[2; 16], b"", 96), &key),        // the general path
        (iv_mech(CKM_AES_CBC_PAD, &[3; 16]), &key),
        (m(CKM_RSA_PKCS), &key), // wrong key kind: same error both ways
    ];
    for (mech, k) in cases.iter().take(4) {
        let want = encrypt(mech, k, &data).unwrap();
        let mut out = vec![0xee; want.len() + 5];
        let n = encrypt_into(mech, k, &data, &mut out).unwrap();
        assert_eq!(n, want.len(), "{mech:?}");
        assert_eq!(&out[..n], &want[..], "{mech:?}");
        assert_eq!(
            &out[n..],
            &[0xee; 5],
            "{mech:?}: nothing written past the output"
        );
        assert_eq!(
            encrypt_into(mech, k, &data, &mut vec![0; want.len() - 1]),
            Err(CKR_BUFFER_TOO_SMALL),
            "{mech:?}"
        );
    }
    let (mech, k) = &cases[4];
    assert_eq!(
        encrypt_into(mech, k, &data, &mut [0; 8]),
        encrypt(mech, k, &data).map(|v| v.len())
    );
    // RSA goes through the general path too (OAEP output is randomised: check the length).
    let oaep_mech = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
    let mut out = vec![0; 256];
    assert_eq!(encrypt_into(&oaep_mech, rsa_pub, b"hi", &mut out), Ok(256));
}

#[test]
fn a_secret_key_is_small_until_used() {
    // Every token key carries one of these: the lazily built contexts are boxed, so a store of
    // many keys does not pay kilobytes of empty slots per key.
    let n = std::mem::size_of::<sym::SecretKey>();
    assert!(n <= 128, "SecretKey is {n} bytes");
}

#[test]
fn a_loaded_key_is_small() {
    let n = std::mem::size_of::<LoadedKey>();
    assert!(n <= 256, "LoadedKey is {n} bytes");
}
