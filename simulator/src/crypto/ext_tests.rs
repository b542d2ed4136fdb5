//! Tests of the extensions: P-521 and secp256k1, Ed25519, AES-CTR, AES-CMAC, SHA-3, key wrapping
//! and PKCS #8, ECDH and HKDF derivation, RSA sizes. Round trips, known answers (NIST CAVP files,
//! RFCs, and answers computed with pyca/cryptography where noted) and negative cases. The
//! Wycheproof files for these are run in `wycheproof.rs`.

use std::path::PathBuf;
use std::sync::OnceLock;

use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::*;
use crate::types::{MechParam, Mechanism, SignInput};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = if s.len() % 2 == 1 { format!("0{s}") } else { s };
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn m(mech: CK_MECHANISM_TYPE) -> Mechanism {
    Mechanism::plain(mech)
}

fn mp(mech: CK_MECHANISM_TYPE, param: MechParam) -> Mechanism {
    Mechanism { mech, param }
}

fn secret(key_type: CK_KEY_TYPE, value: &[u8]) -> LoadedKey {
    LoadedKey::load(KeyMaterial::Secret {
        key_type,
        value: Zeroizing::new(value.to_vec()),
    })
    .unwrap()
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

fn ed_pair() -> (LoadedKey, LoadedKey, Vec<u8>) {
    let (seed, point) = generate_ed25519().unwrap();
    (
        LoadedKey::load(KeyMaterial::EdPrivate { seed }).unwrap(),
        LoadedKey::load(KeyMaterial::EdPublic {
            point: point.clone(),
        })
        .unwrap(),
        point,
    )
}

/// One RSA-2048 key pair: (private, public).
fn rsa2048() -> &'static (LoadedKey, LoadedKey) {
    static K: OnceLock<(LoadedKey, LoadedKey)> = OnceLock::new();
    K.get_or_init(|| {
        let g = generate_rsa(2048, None).unwrap();
        let public = KeyMaterial::RsaPublic {
            modulus: g.modulus,
            public_exponent: g.public_exponent,
        };
        (
            LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 }).unwrap(),
            LoadedKey::load(public).unwrap(),
        )
    })
}

/// `v` (big-endian) shifted right by `bits` (< 8), same length.
pub(super) fn shr_bits(v: &[u8], bits: usize) -> Vec<u8> {
    let mut out = vec![0u8; v.len()];
    let mut carry = 0u8;
    for (o, &b) in out.iter_mut().zip(v) {
        *o = (b >> bits) | carry;
        carry = if bits == 0 { 0 } else { b << (8 - bits) };
    }
    out
}

/// The NIST CAVP file `name` from `shared/testvectors/nist-cavp/`, as blocks of `KEY = value`
/// lines (a bare line such as `FAIL` is stored with an empty value); the `[...]` section header
/// in force is stored as `"["`.
fn nist_blocks(name: &str) -> Vec<Vec<(String, String)>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testvectors/nist-cavp")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("NIST vectors missing: {}: {e}", path.display()));
    let mut blocks = Vec::new();
    let mut cur: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if line.is_empty() {
            if !cur.is_empty() {
                cur.push(("[".into(), section.clone()));
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => cur.push((k.trim().to_string(), v.trim().to_string())),
            None => cur.push((line.to_string(), String::new())),
        }
    }
    if !cur.is_empty() {
        cur.push(("[".into(), section));
        blocks.push(cur);
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], k: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

// ---- P-521 and secp256k1 ----

#[test]
fn new_curves_generate_sign_verify_cross_checked() {
    for (curve, alg, mech) in [
        (Curve::P521, &sig::ECDSA_P521_SHA512_FIXED, CKM_ECDSA_SHA512),
        (
            Curve::Secp256k1,
            &sig::ECDSA_P256K1_SHA256_FIXED,
            CKM_ECDSA_SHA256,
        ),
    ] {
        let (private, public, point) = ec_pair(curve);
        assert_eq!(point.len(), curve.point_len());
        assert_eq!(private.key_bits(), curve.order_bits());
        let msg = b"new curve";
        let s = sign(&m(mech), &private, SignInput::Message(msg)).unwrap();
        assert_eq!(s.len(), 2 * curve.field_bytes());
        UnparsedPublicKey::new(alg, &point).verify(msg, &s).unwrap();
        verify(&m(mech), &public, SignInput::Message(msg), &s).unwrap();
        // Through the raw path (a digest of another length) too, checked independently.
        let d = Hash::Sha384.digest(msg).as_ref().to_vec();
        let s = sign(&m(CKM_ECDSA), &private, SignInput::Message(&d)).unwrap();
        verify(&m(CKM_ECDSA_SHA384), &public, SignInput::Message(msg), &s).unwrap();
        // Material round trip.
        let back = KeyMaterial::from_bytes(&private.material().to_bytes()).unwrap();
        assert_eq!(&back, private.material());
        assert_eq!(
            signature_len(&m(CKM_ECDSA), &private),
            Ok(2 * curve.field_bytes())
        );
        // Points of the other curves are refused.
        for other in Curve::ALL.into_iter().filter(|c| *c != curve) {
            let (_, _, p) = ec_pair(other);
            assert_eq!(
                ec_point_from_attr(curve, &p),
                Err(CKR_ATTRIBUTE_VALUE_INVALID)
            );
        }
    }
}

#[test]
fn new_curves_import_known_points() {
    let cases = [
        (
            Curve::P521,
            "0400c6858e06b70404e9cd9e3ecb662395b4429c648139053fb521f828af606b4d3dbaa14b5e77efe75928fe1dc127a2ffa8de3348b3c1856a429bf97e7e31c2e5bd66011839296a789a3bc0045c8a5fb42c7d1bd998f54449579b446817afbd17273e662c97ee72995ef42640c550b9013fad0761353c7086a272c24088be94769fd16650",
            "01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409",
        ),
        (
            Curve::Secp256k1,
            "0479be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798483ada7726a3c4655da4fbfc0e1108a8fd17b448a68554199c47d08ffb10d4b8",
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
        ),
    ];
    for (curve, generator, order) in cases {
        // Scalar 1 (padded or not) gives the generator.
        for one in [vec![1u8], {
            let mut v = vec![0u8; curve.field_bytes() - 1];
            v.push(1);
            v
        }] {
            let (pkcs8, point) = ec_private_from_scalar(curve, &one).unwrap();
            assert_eq!(point, hex(generator), "{curve:?}");
            let private = LoadedKey::load(KeyMaterial::EcPrivate { curve, pkcs8 }).unwrap();
            let public = LoadedKey::load(KeyMaterial::EcPublic {
                curve,
                point: ec_point_from_attr(curve, &ec_point_to_attr(&point)).unwrap(),
            })
            .unwrap();
            let s = sign(&m(CKM_ECDSA_SHA1), &private, SignInput::Message(b"x")).unwrap();
            verify(&m(CKM_ECDSA_SHA1), &public, SignInput::Message(b"x"), &s).unwrap();
        }
        // Zero, the order, and too long are refused.
        let n = hex(order);
        let mut too_long = vec![1u8];
        too_long.extend(vec![0u8; curve.field_bytes()]);
        for bad in [vec![0u8], vec![], n.clone(), too_long] {
            assert_eq!(
                ec_private_from_scalar(curve, &bad).map(|_| ()),
                Err(CKR_ATTRIBUTE_VALUE_INVALID),
                "{curve:?} {bad:?}"
            );
        }
        // order - 1 is fine.
        let mut n1 = n.clone();
        *n1.last_mut().unwrap() -= 1;
        assert!(ec_private_from_scalar(curve, &n1).is_ok());
        // An off-curve point.
        let mut p = hex(generator);
        *p.last_mut().unwrap() ^= 1;
        assert_eq!(
            ec_point_from_attr(curve, &p),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }
}

#[test]
fn p521_nist_sigver() {
    let mut n = 0;
    for block in nist_blocks("ECDSA_SigVer.rsp") {
        let section = field(&block, "[").unwrap();
        let Some(hash) = section
            .strip_prefix("[P-521,")
            .and_then(|s| s.strip_suffix(']'))
        else {
            continue;
        };
        let mech = match hash {
            "SHA-1" => CKM_ECDSA_SHA1,
            "SHA-224" => CKM_ECDSA_SHA224,
            "SHA-256" => CKM_ECDSA_SHA256,
            "SHA-384" => CKM_ECDSA_SHA384,
            "SHA-512" => CKM_ECDSA_SHA512,
            other => panic!("{other}"),
        };
        let pad = |s: &str| {
            let v = hex(s);
            let mut out = vec![0u8; 66usize.saturating_sub(v.len())];
            out.extend(v);
            out
        };
        let mut point = vec![4u8];
        point.extend(pad(field(&block, "Qx").unwrap()));
        point.extend(pad(field(&block, "Qy").unwrap()));
        let mut s = pad(field(&block, "R").unwrap());
        s.extend(pad(field(&block, "S").unwrap()));
        let expect = field(&block, "Result").unwrap().starts_with('P');
        let ok = LoadedKey::load(KeyMaterial::EcPublic {
            curve: Curve::P521,
            point,
        })
        .is_ok_and(|key| {
            verify(
                &m(mech),
                &key,
                SignInput::Message(&hex(field(&block, "Msg").unwrap())),
                &s,
            )
            .is_ok()
        });
        assert_eq!(ok, expect, "{block:?}");
        n += 1;
    }
    assert_eq!(n, 75);
}

// ---- Ed25519 ----

#[test]
fn ed25519_rfc8032_known_answer() {
    // RFC 8032 section 7.1, TEST 1 and TEST 3.
    for (seed, public, msg, signature) in [
        (
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            "",
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
        ),
        (
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            "af82",
            "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
        ),
    ] {
        assert_eq!(ed25519_public_from_seed(&hex(seed)), Ok(hex(public)));
        let private = LoadedKey::load(KeyMaterial::EdPrivate {
            seed: Zeroizing::new(hex(seed)),
        })
        .unwrap();
        let s = sign(&m(CKM_EDDSA), &private, SignInput::Message(&hex(msg))).unwrap();
        assert_eq!(s, hex(signature));
        let public = LoadedKey::load(KeyMaterial::EdPublic {
            point: hex(public),
        })
        .unwrap();
        verify(&m(CKM_EDDSA), &public, SignInput::Message(&hex(msg)), &s).unwrap();
        verify(&m(CKM_EDDSA), &private, SignInput::Message(&hex(msg)), &s).unwrap();
    }
}

#[test]
fn ed25519_round_trips_params_and_errors() {
    let (private, public, point) = ed_pair();
    assert_eq!(private.key_bits(), 255);
    let msg = b"pure ed25519";
    let s = sign(&m(CKM_EDDSA), &private, SignInput::Message(msg)).unwrap();
    UnparsedPublicKey::new(&sig::ED25519, &point)
        .verify(msg, &s)
        .unwrap();
    assert_eq!(signature_len(&m(CKM_EDDSA), &public), Ok(64));
    // Deterministic; the prehashed variant carries the message too.
    assert_eq!(
        sign(&m(CKM_EDDSA), &private, SignInput::Prehashed(msg)),
        Ok(s.clone())
    );
    // Parameters: none, empty raw, raw pure CK_EDDSA_PARAMS are fine.
    let pure = vec![0u8; 24];
    let mut pure_ptr = pure.clone();
    pure_ptr[16..].copy_from_slice(&0x1234u64.to_le_bytes());
    for p in [
        MechParam::None,
        MechParam::Raw(vec![]),
        MechParam::Raw(pure),
        MechParam::Raw(pure_ptr),
    ] {
        let mech = mp(CKM_EDDSA, p);
        assert_eq!(
            sign(&mech, &private, SignInput::Message(msg)),
            Ok(s.clone())
        );
        verify(&mech, &public, SignInput::Message(msg), &s).unwrap();
    }
    let mut ph = vec![0u8; 24];
    ph[0] = 1;
    let mut ctx = vec![0u8; 24];
    ctx[8] = 3;
    for p in [
        MechParam::Raw(ph),
        MechParam::Raw(ctx),
        MechParam::Raw(vec![0; 16]),
        MechParam::Raw(vec![0; 25]),
        MechParam::Ulong(0),
        MechParam::Iv(vec![]),
    ] {
        let mech = mp(CKM_EDDSA, p);
        assert_eq!(
            sign(&mech, &private, SignInput::Message(msg)),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            verify(&mech, &public, SignInput::Message(msg), &s),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
    }
    // Tampering, lengths, key kinds.
    let mut bad = s.clone();
    bad[10] ^= 1;
    assert_eq!(
        verify(&m(CKM_EDDSA), &public, SignInput::Message(msg), &bad),
        Err(CKR_SIGNATURE_INVALID)
    );
    assert_eq!(
        verify(&m(CKM_EDDSA), &public, SignInput::Message(b"other"), &s),
        Err(CKR_SIGNATURE_INVALID)
    );
    assert_eq!(
        verify(&m(CKM_EDDSA), &public, SignInput::Message(msg), &s[1..]),
        Err(CKR_SIGNATURE_LEN_RANGE)
    );
    assert_eq!(
        sign(&m(CKM_EDDSA), &public, SignInput::Message(msg)),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    let (ec_private, ec_public, _) = ec_pair(Curve::P256);
    assert_eq!(
        sign(&m(CKM_EDDSA), &ec_private, SignInput::Message(msg)),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        verify(&m(CKM_EDDSA), &ec_public, SignInput::Message(msg), &s),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        sign(&m(CKM_ECDSA), &private, SignInput::Message(msg)),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        encrypt(&m(CKM_EDDSA), &private, msg),
        Err(CKR_MECHANISM_INVALID)
    );
    // Material round trips.
    for k in [&private, &public] {
        let back = KeyMaterial::from_bytes(&k.material().to_bytes()).unwrap();
        assert_eq!(&back, k.material());
        LoadedKey::load(back).unwrap();
    }
    // Bad material.
    for bad in [
        KeyMaterial::EdPrivate {
            seed: Zeroizing::new(vec![1; 31]),
        },
        KeyMaterial::EdPublic { point: vec![1; 33] },
        KeyMaterial::EdPublic { point: vec![] },
    ] {
        assert_eq!(
            LoadedKey::load(bad).map(|_| ()),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }
}

#[test]
fn ed25519_params_and_points() {
    let oid = hex("06032b6570");
    assert_eq!(ED25519_OID_DER, oid.as_slice());
    assert_eq!(ed25519_params(&oid), Ok(ED25519_OID_DER));
    assert_eq!(
        ed25519_params(&hex("130c656477617264733235353139")),
        Ok(ED25519_OID_DER)
    );
    // edwards448, Ed448's OID, P-256's OID: well formed, not supported.
    for other in [
        "130a65647761726473343438",
        "06032b6571",
        "06082a8648ce3d030107",
    ] {
        assert_eq!(
            ed25519_params(&hex(other)),
            Err(CKR_CURVE_NOT_SUPPORTED),
            "{other}"
        );
    }
    for bad in [
        "",
        "13",
        "130c6564777172647332353531",
        "06032b657000",
        "0400",
    ] {
        assert_eq!(
            ed25519_params(&hex(bad)),
            Err(CKR_ATTRIBUTE_VALUE_INVALID),
            "{bad}"
        );
    }
    assert_eq!(Curve::from_ec_params(&oid), Err(CKR_CURVE_NOT_SUPPORTED));
    let (_, _, point) = ed_pair();
    assert_eq!(ed25519_point_from_attr(&point), Ok(point.clone()));
    assert_eq!(
        ed25519_point_from_attr(&ec_point_to_attr(&point)),
        Ok(point.clone())
    );
    for bad in [vec![], point[1..].to_vec(), ec_point_to_attr(&point[1..])] {
        assert_eq!(
            ed25519_point_from_attr(&bad),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
    }
    assert_eq!(
        ed25519_public_from_seed(&[0; 31]),
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
    );
}

// ---- AES-CTR ----

fn ctr(bits: u64, cb: &[u8; 16]) -> Mechanism {
    let mut raw = bits.to_le_bytes().to_vec();
    raw.extend_from_slice(cb);
    mp(CKM_AES_CTR, MechParam::Raw(raw))
}

#[test]
fn aes_ctr_known_answer() {
    // NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt).
    let key = secret(CKK_AES, &hex("2b7e151628aed2a6abf7158809cf4f3c"));
    let cb: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
    let pt = hex(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51
         30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    );
    let ct = hex(
        "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff
         5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee",
    );
    // The SP 800-38A counter carries out of its low byte (..feff -> ..ff00), so 8 counter bits
    // would wrap: that is refused (below); 16 and more give the published stream.
    assert_eq!(encrypt(&ctr(8, &cb), &key, &pt), Err(CKR_DATA_LEN_RANGE));
    assert_eq!(
        encrypt(&ctr(8, &cb), &key, &pt[..16]),
        Ok(ct[..16].to_vec())
    );
    for bits in [16, 64, 128] {
        let mech = ctr(bits, &cb);
        assert_eq!(encrypt(&mech, &key, &pt), Ok(ct.clone()));
        assert_eq!(
            decrypt(&mech, &key, &ct).map(|p| p.to_vec()),
            Ok(pt.clone())
        );
        // Any length: a prefix of the stream.
        assert_eq!(encrypt(&mech, &key, &pt[..17]), Ok(ct[..17].to_vec()));
        assert_eq!(encrypt(&mech, &key, &[]), Ok(vec![]));
        assert_eq!(encrypt_len(&mech, &key, 17), Ok(17));
        assert_eq!(decrypt_len(&mech, &key, 17), Ok(17));
    }
}

#[test]
fn aes_ctr_matches_ecb_keystream_all_key_sizes() {
    for len in [16usize, 24, 32] {
        let value: Vec<u8> = (0..len as u8).collect();
        let key = secret(CKK_AES, &value);
        let cb = [0x42u8; 16];
        let data: Vec<u8> = (0..100u8).collect();
        // Keystream: ECB of cb, cb+1, ... (the low 32 bits do not wrap here).
        let mut blocks = Vec::new();
        for i in 0..7u128 {
            blocks.extend((u128::from_be_bytes(cb) + i).to_be_bytes());
        }
        let ks = encrypt(&m(CKM_AES_ECB), &key, &blocks).unwrap();
        let expect: Vec<u8> = data.iter().zip(&ks).map(|(a, b)| a ^ b).collect();
        assert_eq!(encrypt(&ctr(32, &cb), &key, &data), Ok(expect));
    }
}

#[test]
fn aes_ctr_counter_wrap_and_errors() {
    let key = secret(CKK_AES, &[7; 16]);
    let mut cb = [0u8; 16];
    cb[15] = 0xfe; // the low 8 bits: 0xfe, 0xff, then a wrap
    let m8 = ctr(8, &cb);
    assert!(encrypt(&m8, &key, &[0; 32]).is_ok());
    assert!(encrypt(&m8, &key, &[0; 17]).is_ok());
    assert_eq!(encrypt(&m8, &key, &[0; 33]), Err(CKR_DATA_LEN_RANGE));
    assert_eq!(
        decrypt(&m8, &key, &[0; 33]).map(|_| ()),
        Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
    );
    // With 9 counter bits the same block has room.
    assert!(encrypt(&ctr(9, &cb), &key, &[0; 48]).is_ok());
    // 128 bits, all ones: exactly one block.
    let full = ctr(128, &[0xff; 16]);
    assert!(encrypt(&full, &key, &[0; 16]).is_ok());
    assert_eq!(encrypt(&full, &key, &[0; 17]), Err(CKR_DATA_LEN_RANGE));
    // 1 bit, counter 1: one block; counter 0: two.
    let mut one = [0u8; 16];
    one[15] = 1;
    assert_eq!(
        encrypt(&ctr(1, &one), &key, &[0; 17]),
        Err(CKR_DATA_LEN_RANGE)
    );
    assert!(encrypt(&ctr(1, &[0; 16]), &key, &[0; 32]).is_ok());
    // Bits outside the counter do not count: 0xff.. above the low 8 bits is fine.
    let mut high = [0xffu8; 16];
    high[15] = 0;
    assert!(encrypt(&ctr(8, &high), &key, &[0; 256 * 16]).is_ok());
    assert_eq!(
        encrypt(&ctr(8, &high), &key, &[0; 256 * 16 + 1]),
        Err(CKR_DATA_LEN_RANGE)
    );
    // Parameters.
    let mut long = 16u64.to_le_bytes().to_vec();
    long.extend([0u8; 17]);
    for p in [
        MechParam::None,
        MechParam::Iv(vec![0; 16]),
        MechParam::Raw(vec![0; 23]),
        MechParam::Raw(long),
        ctr(0, &cb).param,
        ctr(129, &cb).param,
        ctr(u64::MAX, &cb).param,
    ] {
        let mech = mp(CKM_AES_CTR, p);
        assert_eq!(
            encrypt(&mech, &key, &[0; 16]),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            decrypt(&mech, &key, &[0; 16]).map(|_| ()),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            encrypt_len(&mech, &key, 16),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
    }
    // Key kinds.
    let generic = secret(CKK_GENERIC_SECRET, &[7; 16]);
    assert_eq!(
        encrypt(&m8, &generic, &[0; 16]),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    let odd = secret(CKK_AES, &[7; 20]);
    assert_eq!(encrypt(&m8, &odd, &[0; 16]), Err(CKR_KEY_SIZE_RANGE));
    let (ec, _, _) = ec_pair(Curve::P256);
    assert_eq!(encrypt(&m8, &ec, &[0; 16]), Err(CKR_KEY_TYPE_INCONSISTENT));
}

// ---- AES-CMAC ----

#[test]
fn aes_cmac_nist_800_38b() {
    let mut n = 0;
    for name in [
        "nist-800-38b-aes128.txt",
        "nist-800-38b-aes192.txt",
        "nist-800-38b-aes256.txt",
    ] {
        for block in nist_blocks(name) {
            let key = secret(CKK_AES, &hex(field(&block, "KEY").unwrap()));
            let msg = hex(field(&block, "MESSAGE").unwrap_or(""));
            let tag = hex(field(&block, "OUTPUT").unwrap());
            assert_eq!(
                sign(&m(CKM_AES_CMAC), &key, SignInput::Message(&msg)),
                Ok(tag.clone()),
                "{name} {block:?}"
            );
            verify(&m(CKM_AES_CMAC), &key, SignInput::Message(&msg), &tag).unwrap();
            for len in 1..=16usize {
                let mech = mp(CKM_AES_CMAC_GENERAL, MechParam::Ulong(len as CK_ULONG));
                assert_eq!(
                    sign(&mech, &key, SignInput::Message(&msg)),
                    Ok(tag[..len].to_vec())
                );
                verify(&mech, &key, SignInput::Message(&msg), &tag[..len]).unwrap();
                assert_eq!(signature_len(&mech, &key), Ok(len));
            }
            n += 1;
        }
    }
    assert_eq!(n, 12);
}

#[test]
fn aes_cmac_errors() {
    let key = secret(CKK_AES, &[3; 32]);
    let msg = b"cmac";
    let tag = sign(&m(CKM_AES_CMAC), &key, SignInput::Message(msg)).unwrap();
    assert_eq!(signature_len(&m(CKM_AES_CMAC), &key), Ok(16));
    let mut bad = tag.clone();
    bad[0] ^= 0x80;
    assert_eq!(
        verify(&m(CKM_AES_CMAC), &key, SignInput::Message(msg), &bad),
        Err(CKR_SIGNATURE_INVALID)
    );
    assert_eq!(
        verify(&m(CKM_AES_CMAC), &key, SignInput::Message(msg), &tag[..15]),
        Err(CKR_SIGNATURE_LEN_RANGE)
    );
    assert_eq!(
        sign(&m(CKM_AES_CMAC), &key, SignInput::Prehashed(msg)),
        Err(CKR_MECHANISM_INVALID)
    );
    for p in [
        MechParam::Ulong(0),
        MechParam::Ulong(17),
        MechParam::None,
        MechParam::Raw(vec![16]),
    ] {
        let mech = mp(CKM_AES_CMAC_GENERAL, p);
        assert_eq!(
            sign(&mech, &key, SignInput::Message(msg)),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(signature_len(&mech, &key), Err(CKR_MECHANISM_PARAM_INVALID));
    }
    assert_eq!(
        sign(
            &mp(CKM_AES_CMAC, MechParam::Ulong(16)),
            &key,
            SignInput::Message(msg)
        ),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    let generic = secret(CKK_GENERIC_SECRET, &[3; 32]);
    assert_eq!(
        sign(&m(CKM_AES_CMAC), &generic, SignInput::Message(msg)),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    let odd = secret(CKK_AES, &[3; 31]);
    assert_eq!(
        sign(&m(CKM_AES_CMAC), &odd, SignInput::Message(msg)),
        Err(CKR_KEY_SIZE_RANGE)
    );
    let (ec, _, _) = ec_pair(Curve::P256);
    assert_eq!(
        sign(&m(CKM_AES_CMAC), &ec, SignInput::Message(msg)),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        encrypt(&m(CKM_AES_CMAC), &key, msg),
        Err(CKR_MECHANISM_INVALID)
    );
}

// ---- SHA-3 and HMAC _GENERAL ----

#[test]
fn hmac_general_all_hashes() {
    let key = secret(CKK_GENERIC_SECRET, b"hmac general key");
    let msg = b"message";
    for (full, general, len) in [
        (CKM_SHA_1_HMAC, CKM_SHA_1_HMAC_GENERAL, 20usize),
        (CKM_SHA224_HMAC, CKM_SHA224_HMAC_GENERAL, 28),
        (CKM_SHA256_HMAC, CKM_SHA256_HMAC_GENERAL, 32),
        (CKM_SHA384_HMAC, CKM_SHA384_HMAC_GENERAL, 48),
        (CKM_SHA512_HMAC, CKM_SHA512_HMAC_GENERAL, 64),
    ] {
        let tag = sign(&m(full), &key, SignInput::Message(msg)).unwrap();
        assert_eq!(tag.len(), len);
        for n in 1..=len {
            let mech = mp(general, MechParam::Ulong(n as CK_ULONG));
            assert_eq!(
                sign(&mech, &key, SignInput::Message(msg)),
                Ok(tag[..n].to_vec())
            );
            verify(&mech, &key, SignInput::Message(msg), &tag[..n]).unwrap();
            assert_eq!(signature_len(&mech, &key), Ok(n));
        }
        for p in [
            MechParam::Ulong(0),
            MechParam::Ulong(len as CK_ULONG + 1),
            MechParam::None,
        ] {
            assert_eq!(
                sign(&mp(general, p), &key, SignInput::Message(msg)),
                Err(CKR_MECHANISM_PARAM_INVALID)
            );
        }
        let mech = mp(general, MechParam::Ulong(len as CK_ULONG));
        let mut bad = tag.clone();
        bad[len - 1] ^= 1;
        assert_eq!(
            verify(&mech, &key, SignInput::Message(msg), &bad),
            Err(CKR_SIGNATURE_INVALID)
        );
    }
}

// ---- Key wrapping ----

#[test]
fn aes_key_wrap_nist() {
    let mut n = 0;
    for (name, mech, decrypt_file) in [
        ("KW_AE_256.txt", CKM_AES_KEY_WRAP, false),
        ("KW_AD_256.txt", CKM_AES_KEY_WRAP, true),
        ("KWP_AE_256.txt", CKM_AES_KEY_WRAP_KWP, false),
        ("KWP_AD_256.txt", CKM_AES_KEY_WRAP_KWP, true),
    ] {
        for block in nist_blocks(name) {
            let Some(k) = field(&block, "K") else {
                continue;
            };
            let key = secret(CKK_AES, &hex(k));
            let c = hex(field(&block, "C").unwrap());
            if decrypt_file && field(&block, "FAIL").is_some() {
                assert_eq!(
                    unwrap(&m(mech), &key, &c).map(|_| ()),
                    Err(CKR_WRAPPED_KEY_INVALID),
                    "{name} {block:?}"
                );
            } else {
                let p = hex(field(&block, "P").unwrap());
                if !decrypt_file {
                    assert_eq!(wrap(&m(mech), &key, &p), Ok(c.clone()), "{name} {block:?}");
                }
                assert_eq!(unwrap(&m(mech), &key, &c).map(|v| v.to_vec()), Ok(p));
            }
            n += 1;
        }
    }
    assert_eq!(n, 2000);
}

#[test]
fn aes_key_wrap_round_trips_and_errors() {
    for len in [16usize, 24, 32] {
        let kek = secret(CKK_AES, &vec![0x11; len]);
        for (mech, sizes) in [
            (CKM_AES_KEY_WRAP, &[16usize, 24, 32, 64, 1024][..]),
            (CKM_AES_KEY_WRAP_KWP, &[1usize, 7, 8, 9, 16, 31, 1000][..]),
        ] {
            for &n in sizes {
                let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
                let w = wrap(&m(mech), &kek, &data).unwrap();
                assert_eq!(w.len(), n.div_ceil(8) * 8 + 8);
                assert_eq!(*unwrap(&m(mech), &kek, &w).unwrap(), data);
                let mut bad = w.clone();
                bad[0] ^= 1;
                assert_eq!(
                    unwrap(&m(mech), &kek, &bad).map(|_| ()),
                    Err(CKR_WRAPPED_KEY_INVALID)
                );
                let other = secret(CKK_AES, &vec![0x12; len]);
                assert_eq!(
                    unwrap(&m(mech), &other, &w).map(|_| ()),
                    Err(CKR_WRAPPED_KEY_INVALID)
                );
                assert_eq!(
                    unwrap(&m(mech), &kek, &w[..w.len() - 1]).map(|_| ()),
                    Err(CKR_WRAPPED_KEY_LEN_RANGE)
                );
            }
        }
        // The two mechanisms do not unwrap each other's output.
        let w = wrap(&m(CKM_AES_KEY_WRAP), &kek, &[5; 16]).unwrap();
        assert_eq!(
            unwrap(&m(CKM_AES_KEY_WRAP_KWP), &kek, &w).map(|_| ()),
            Err(CKR_WRAPPED_KEY_INVALID)
        );
    }
    let kek = secret(CKK_AES, &[0x22; 16]);
    // Lengths KW cannot wrap / unwrap.
    for n in [0usize, 8, 15, 17, 20] {
        assert_eq!(
            wrap(&m(CKM_AES_KEY_WRAP), &kek, &vec![0; n]),
            Err(CKR_KEY_SIZE_RANGE),
            "{n}"
        );
    }
    assert_eq!(
        wrap(&m(CKM_AES_KEY_WRAP_KWP), &kek, &[]),
        Err(CKR_KEY_SIZE_RANGE)
    );
    for n in [0usize, 8, 16, 23, 25] {
        assert_eq!(
            unwrap(&m(CKM_AES_KEY_WRAP), &kek, &vec![0; n]).map(|_| ()),
            Err(CKR_WRAPPED_KEY_LEN_RANGE),
            "{n}"
        );
    }
    for n in [0usize, 8, 15, 17] {
        assert_eq!(
            unwrap(&m(CKM_AES_KEY_WRAP_KWP), &kek, &vec![0; n]).map(|_| ()),
            Err(CKR_WRAPPED_KEY_LEN_RANGE),
            "{n}"
        );
    }
    // IV parameters: only the defaults.
    let w = wrap(&m(CKM_AES_KEY_WRAP), &kek, &[9; 16]).unwrap();
    for p in [
        MechParam::Iv(vec![0xa6; 8]),
        MechParam::Raw(vec![0xa6; 8]),
        MechParam::Raw(vec![]),
    ] {
        let mech = mp(CKM_AES_KEY_WRAP, p);
        assert_eq!(wrap(&mech, &kek, &[9; 16]), Ok(w.clone()));
        assert!(unwrap(&mech, &kek, &w).is_ok());
    }
    for p in [
        MechParam::Iv(vec![0xa7; 8]),
        MechParam::Raw(vec![0xa6; 7]),
        MechParam::Ulong(8),
    ] {
        let mech = mp(CKM_AES_KEY_WRAP, p);
        assert_eq!(
            wrap(&mech, &kek, &[9; 16]),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            unwrap(&mech, &kek, &w).map(|_| ()),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
    }
    let kwp = mp(CKM_AES_KEY_WRAP_KWP, MechParam::Iv(hex("a65959a6")));
    assert!(wrap(&kwp, &kek, &[1]).is_ok());
    let kwp = mp(CKM_AES_KEY_WRAP_KWP, MechParam::Iv(vec![0xa6; 8]));
    assert_eq!(wrap(&kwp, &kek, &[1]), Err(CKR_MECHANISM_PARAM_INVALID));
    // Wrapping keys of the wrong kind or size.
    let generic = secret(CKK_GENERIC_SECRET, &[0x22; 16]);
    assert_eq!(
        wrap(&m(CKM_AES_KEY_WRAP), &generic, &[0; 16]),
        Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        unwrap(&m(CKM_AES_KEY_WRAP), &generic, &[0; 24]).map(|_| ()),
        Err(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    );
    let odd = secret(CKK_AES, &[0x22; 20]);
    assert_eq!(
        wrap(&m(CKM_AES_KEY_WRAP), &odd, &[0; 16]),
        Err(CKR_WRAPPING_KEY_SIZE_RANGE)
    );
    assert_eq!(
        unwrap(&m(CKM_AES_KEY_WRAP), &odd, &[0; 24]).map(|_| ()),
        Err(CKR_UNWRAPPING_KEY_SIZE_RANGE)
    );
    let (rsa_private, _) = rsa2048();
    assert_eq!(
        wrap(&m(CKM_AES_KEY_WRAP), rsa_private, &[0; 16]),
        Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        wrap(&m(CKM_AES_ECB), &kek, &[0; 16]),
        Err(CKR_MECHANISM_INVALID)
    );
    assert_eq!(
        unwrap(&m(CKM_AES_CBC_PAD), &kek, &[0; 16]).map(|_| ()),
        Err(CKR_MECHANISM_INVALID)
    );
}

fn oaep_sha256() -> Mechanism {
    mp(
        CKM_RSA_PKCS_OAEP,
        MechParam::Oaep {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            label: vec![],
        },
    )
}

#[test]
fn rsa_oaep_wrap() {
    let (private, public) = rsa2048();
    let mech = oaep_sha256();
    let aes = [0x5a; 32];
    let w = wrap(&mech, public, &aes).unwrap();
    assert_eq!(w.len(), 256);
    assert_eq!(*unwrap(&mech, private, &w).unwrap(), aes);
    // The private key wraps too (public operation).
    let w2 = wrap(&mech, private, &aes).unwrap();
    assert_eq!(*unwrap(&mech, private, &w2).unwrap(), aes);
    let mut bad = w.clone();
    bad[100] ^= 1;
    assert_eq!(
        unwrap(&mech, private, &bad).map(|_| ()),
        Err(CKR_WRAPPED_KEY_INVALID)
    );
    assert_eq!(
        unwrap(&mech, private, &w[1..]).map(|_| ()),
        Err(CKR_WRAPPED_KEY_LEN_RANGE)
    );
    assert_eq!(
        unwrap(&mech, public, &w).map(|_| ()),
        Err(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    );
    // 256 - 2 * 32 - 2 = 190 bytes at most.
    assert!(wrap(&mech, public, &[1; 190]).is_ok());
    assert_eq!(wrap(&mech, public, &[1; 191]), Err(CKR_KEY_SIZE_RANGE));
    let kek = secret(CKK_AES, &[1; 16]);
    assert_eq!(
        wrap(&mech, &kek, &aes),
        Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        wrap(&m(CKM_RSA_PKCS_OAEP), public, &aes),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

#[test]
fn pkcs8_round_trips_through_wrapping() {
    let kek = secret(CKK_AES, &[0x33; 32]);
    let kwp = m(CKM_AES_KEY_WRAP_KWP);
    let msg = b"wrapped and back";
    // RSA.
    let (rsa_private, rsa_public) = rsa2048();
    // EC on every curve, Ed25519.
    let mut pairs: Vec<(LoadedKey, LoadedKey, CK_MECHANISM_TYPE, CK_KEY_TYPE)> = Curve::ALL
        .into_iter()
        .map(|c| {
            let (a, b, _) = ec_pair(c);
            (a, b, CKM_ECDSA_SHA256, CKK_EC)
        })
        .collect();
    let (a, b, _) = ed_pair();
    pairs.push((a, b, CKM_EDDSA, CKK_EC_EDWARDS));
    let mut all: Vec<(&LoadedKey, &LoadedKey, CK_MECHANISM_TYPE, CK_KEY_TYPE)> =
        vec![(rsa_private, rsa_public, CKM_SHA256_RSA_PKCS, CKK_RSA)];
    all.extend(pairs.iter().map(|(a, b, m, k)| (a, b, *m, *k)));
    for (private, public, mech, kt) in all {
        let p8 = private_key_pkcs8(private).unwrap();
        let wrapped = wrap(&kwp, &kek, &p8).unwrap();
        let back = unwrap(&kwp, &kek, &wrapped).unwrap();
        let (material, key_type) = load_private_pkcs8(&back).unwrap();
        assert_eq!(key_type, kt);
        match (&material, private.material()) {
            (KeyMaterial::EcPrivate { curve: a, .. }, KeyMaterial::EcPrivate { curve: b, .. }) => {
                assert_eq!(a, b)
            }
            (KeyMaterial::EdPrivate { .. }, orig) | (KeyMaterial::RsaPrivate { .. }, orig) => {
                assert_eq!(&material, orig)
            }
            other => panic!("{other:?}"),
        }
        let loaded = LoadedKey::load(material).unwrap();
        let s = sign(&m(mech), &loaded, SignInput::Message(msg)).unwrap();
        verify(&m(mech), public, SignInput::Message(msg), &s).unwrap();
    }
    // Not wrappable as PKCS #8.
    let (_, ec_public, _) = ec_pair(Curve::P256);
    for k in [&kek, rsa_public, &ec_public] {
        assert_eq!(private_key_pkcs8(k).map(|_| ()), Err(CKR_KEY_NOT_WRAPPABLE));
    }
    // Garbage, truncations, trailing bytes (other than SoftHSMv2's padding: up to 7 zeros).
    let p8 = private_key_pkcs8(&pairs[0].0).unwrap();
    for padded in 1..8 {
        let with = [p8.as_slice(), &vec![0u8; padded]].concat();
        assert!(load_private_pkcs8(&with).is_ok(), "{padded} zeros");
    }
    for bad in [
        vec![],
        vec![0x30, 0x00],
        p8[..p8.len() - 1].to_vec(),
        [p8.as_slice(), &[1]].concat(),
        [p8.as_slice(), &[0; 8]].concat(),
        [p8.as_slice(), &[0, 0, 1]].concat(),
        vec![0xff; 100],
    ] {
        assert_eq!(
            load_private_pkcs8(&bad).map(|_| ()),
            Err(CKR_WRAPPED_KEY_INVALID)
        );
    }
}

// ---- ECDH ----

/// The compressed form of an uncompressed point.
fn compress(point: &[u8]) -> Vec<u8> {
    let fb = (point.len() - 1) / 2;
    let mut out = vec![2 | (point[point.len() - 1] & 1)];
    out.extend_from_slice(&point[1..=fb]);
    out
}

#[test]
fn ecdh_agreement_all_curves() {
    for curve in Curve::ALL {
        let (a, _, pa) = ec_pair(curve);
        let (b, _, pb) = ec_pair(curve);
        let z1 = ecdh_derive(&a, &pb, CKD_NULL, &[], 0).unwrap();
        let z2 = ecdh_derive(&b, &pa, CKD_NULL, &[], 0).unwrap();
        assert_eq!(z1.len(), curve.field_bytes());
        assert_eq!(*z1, *z2);
        // DER-wrapped and compressed peers, truncation.
        assert_eq!(
            *ecdh_derive(&a, &ec_point_to_attr(&pb), CKD_NULL, &[], 0).unwrap(),
            *z1
        );
        assert_eq!(
            *ecdh_derive(&a, &compress(&pb), CKD_NULL, &[], 0).unwrap(),
            *z1
        );
        assert_eq!(*ecdh_derive(&a, &pb, CKD_NULL, &[], 16).unwrap(), z1[..16]);
        // KDFs agree on both sides and differ from each other.
        for kdf in [
            CKD_SHA1_KDF,
            CKD_SHA224_KDF,
            CKD_SHA256_KDF,
            CKD_SHA384_KDF,
            CKD_SHA512_KDF,
        ] {
            let k1 = ecdh_derive(&a, &pb, kdf, b"info", 100).unwrap();
            let k2 = ecdh_derive(&b, &pa, kdf, b"info", 100).unwrap();
            assert_eq!(k1.len(), 100);
            assert_eq!(*k1, *k2);
            let k3 = ecdh_derive(&b, &pa, kdf, b"other", 100).unwrap();
            assert_ne!(*k1, *k3);
        }
        // Errors.
        assert_eq!(
            ecdh_derive(&a, &pb, CKD_NULL, &[], curve.field_bytes() + 1).map(|_| ()),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            ecdh_derive(&a, &pb, CKD_NULL, b"x", 0).map(|_| ()),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            ecdh_derive(&a, &pb, CKD_SHA256_KDF, b"x", 0).map(|_| ()),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            ecdh_derive(&a, &pb, CKD_SHA3_256_KDF, &[], 16).map(|_| ()),
            Err(CKR_MECHANISM_PARAM_INVALID)
        );
        let mut off = pb.clone();
        *off.last_mut().unwrap() ^= 1;
        let other = if curve == Curve::P256 {
            Curve::P384
        } else {
            Curve::P256
        };
        let (_, _, po) = ec_pair(other);
        for bad in [
            off,
            po,
            vec![],
            vec![0],
            pb[..pb.len() - 1].to_vec(),
            vec![4; 300],
        ] {
            assert_eq!(
                ecdh_derive(&a, &bad, CKD_NULL, &[], 0).map(|_| ()),
                Err(CKR_MECHANISM_PARAM_INVALID)
            );
        }
    }
    let (_, public, p) = ec_pair(Curve::P256);
    assert_eq!(
        ecdh_derive(&public, &p, CKD_NULL, &[], 0).map(|_| ()),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
    let (ed, _, _) = ed_pair();
    assert_eq!(
        ecdh_derive(&ed, &p, CKD_NULL, &[], 0).map(|_| ()),
        Err(CKR_KEY_TYPE_INCONSISTENT)
    );
}

#[test]
fn ecdh_x963_known_answers() {
    // Wycheproof ecdh_secp256r1_ecpoint tcId 1; X9.63 outputs from pyca/cryptography X963KDF
    // with shared info "hsmpool".
    let (pkcs8, _) = ec_private_from_scalar(
        Curve::P256,
        &hex("0612465c89a023ab17855b0a6bcebfd3febb53aef84138647b5352e02c10c346"),
    )
    .unwrap();
    let key = LoadedKey::load(KeyMaterial::EcPrivate {
        curve: Curve::P256,
        pkcs8,
    })
    .unwrap();
    let peer = hex("0462d5bd3372af75fe85a040715d0f502428e07046868b0bfdfa61d731afe44f26ac333a93a9e70a81cd5a95b5bf8d13990eb741c8c38872b4a07d275a014e30cf");
    assert_eq!(
        *ecdh_derive(&key, &peer, CKD_NULL, &[], 0).unwrap(),
        hex("53020d908b0219328b658b525f26780e3ae12bcd952bb25a93bc0895e1714285")
    );
    for (kdf, len, want) in [
        (CKD_SHA256_KDF, 50, "ce1a63fc88253926c27e2fa2b2bd1e5dc183d74e8f420ff3d7c1891419d8882ba25abbedd54d94d1ff8870204ecfbbbd4f2f"),
        (CKD_SHA1_KDF, 33, "5c11a40fc5d11a44f3b80d0eff2faa70303b19e8029858cf264037a54f9fd38a99"),
        (CKD_SHA512_KDF, 100, "3d719f5ce533f49d8ddd4c9e8963ae4ec3f4f9364e650dcdfaf4524b403e6bb50416e6596fe1310d497e1ee816217900cb8a78dc81b51eb2b3a4c7dc496c7a4686470dffb3e439da5bf90bdef39a049ae9842981e84a245dfc32a3bb97248b8e263a7b1c"),
    ] {
        assert_eq!(
            *ecdh_derive(&key, &peer, kdf, b"hsmpool", len).unwrap(),
            hex(want)
        );
    }
}

// ---- HKDF ----

#[test]
fn hkdf_rfc5869() {
    let ikm = [0x0bu8; 22];
    let salt = hex("000102030405060708090a0b0c");
    let info = hex("f0f1f2f3f4f5f6f7f8f9");
    let prk = hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5");
    let okm =
        hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    assert_eq!(
        *hkdf(CKM_SHA256, true, true, &salt, &ikm, &info, 42).unwrap(),
        okm
    );
    assert_eq!(
        *hkdf(CKM_SHA256, true, false, &salt, &ikm, &info, 32).unwrap(),
        prk
    );
    assert_eq!(
        *hkdf(CKM_SHA256, true, false, &salt, &ikm, &info, 0).unwrap(),
        prk
    );
    assert_eq!(
        *hkdf(CKM_SHA256, false, true, &[], &prk, &info, 42).unwrap(),
        okm
    );
    // A.3: no salt, no info (the empty salt is the zero salt).
    assert_eq!(
        *hkdf(CKM_SHA256, true, true, &[], &ikm, &[], 42).unwrap(),
        hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    );
    assert_eq!(
        *hkdf(CKM_SHA256, true, true, &[0; 32], &ikm, &[], 42).unwrap(),
        hex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    );
    // A.4: SHA-1.
    let ikm1 = [0x0bu8; 11];
    assert_eq!(
        *hkdf(CKM_SHA_1, true, false, &salt, &ikm1, &[], 20).unwrap(),
        hex("9b6c18c432a7bf8f0e71c8eb88f4b30baa2ba243")
    );
    assert_eq!(
        *hkdf(CKM_SHA_1, true, true, &salt, &ikm1, &info, 42).unwrap(),
        hex("085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896")
    );
    // Lengths and parameters.
    assert_eq!(
        hkdf(CKM_SHA256, true, true, &salt, &ikm, &info, 255 * 32).map(|k| k.len()),
        Ok(255 * 32)
    );
    for (extract, expand, len) in [
        (true, true, 255 * 32 + 1),
        (true, true, 0),
        (true, false, 31),
        (false, true, 0),
    ] {
        assert_eq!(
            hkdf(CKM_SHA256, extract, expand, &salt, &ikm, &info, len).map(|_| ()),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
    }
    assert_eq!(
        hkdf(CKM_SHA256, false, false, &salt, &ikm, &info, 32).map(|_| ()),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
    assert_eq!(
        hkdf(CKM_SHA3_256, true, true, &salt, &ikm, &info, 32).map(|_| ()),
        Err(CKR_MECHANISM_PARAM_INVALID)
    );
}

// ---- RSA sizes ----

#[test]
fn rsa_generation_2304_bits() {
    let g = generate_rsa(2304, None).unwrap();
    assert_eq!(be_bits(&g.modulus), 2304);
    let key = LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 }).unwrap();
    assert_eq!(key.key_bits(), 2304);
    let s = sign(&m(CKM_SHA256_RSA_PKCS), &key, SignInput::Message(b"x")).unwrap();
    assert_eq!(s.len(), 288);
    verify(&m(CKM_SHA256_RSA_PKCS), &key, SignInput::Message(b"x"), &s).unwrap();
    for bad in [2047usize, 8193, 8448, 1024] {
        assert_eq!(generate_rsa(bad, None).map(|_| ()), Err(CKR_KEY_SIZE_RANGE));
    }
}

/// Sizes aws-lc's generator would round down (not a multiple of 128 bits, not even of 8) come
/// out exactly as asked, with a public exponent other than 65537 too, and sign and verify.
#[test]
fn rsa_generation_of_any_size_is_exact() {
    for (bits, e) in [(3092usize, None), (2049, Some(&[3u8][..])), (2056, None)] {
        let g = generate_rsa(bits, e).unwrap();
        assert_eq!(be_bits(&g.modulus), bits, "{bits} bits");
        assert_eq!(g.public_exponent, e.unwrap_or(&[1, 0, 1]).to_vec());
        let key = LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 }).unwrap();
        assert_eq!(key.key_bits(), bits);
        let s = sign(&m(CKM_SHA256_RSA_PKCS), &key, SignInput::Message(b"x")).unwrap();
        assert_eq!(s.len(), bits.div_ceil(8));
        verify(&m(CKM_SHA256_RSA_PKCS), &key, SignInput::Message(b"x"), &s).unwrap();
        let mut bad = s.clone();
        bad[0] ^= 1;
        assert!(verify(
            &m(CKM_SHA256_RSA_PKCS),
            &key,
            SignInput::Message(b"x"),
            &bad
        )
        .is_err());
    }
}

// ---- Robustness ----

#[test]
fn new_inputs_never_panic() {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let (ec, _, point) = ec_pair(Curve::P521);
    let (ed, ed_public, _) = ed_pair();
    let aes = secret(CKK_AES, &[9; 24]);
    let keys = [&ec, &ed, &ed_public, &aes];
    for i in 0..3000 {
        let len = (next() % 200) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && !buf.is_empty() {
            buf[0] = [0x02, 0x03, 0x04, 0x06, 0x13, 0x30][(next() % 6) as usize];
        }
        if i % 5 == 0 {
            buf = point.clone();
            let j = (next() as usize) % buf.len();
            buf[j] ^= 1 << (next() % 8);
        }
        let _ = Curve::from_ec_params(&buf);
        let _ = ed25519_params(&buf);
        let _ = ed25519_point_from_attr(&buf);
        let _ = ed25519_public_from_seed(&buf);
        let _ = load_private_pkcs8(&buf);
        let _ = ecdh_derive(&ec, &buf, CKD_SHA256_KDF, &buf, 40);
        let _ = ec_point_from_attr(Curve::Secp256k1, &buf);
        let _ = ec_private_from_scalar(Curve::Secp256k1, &buf);
        let _ = hkdf(CKM_SHA512, true, true, &buf, &buf, &buf, len + 1);
        for mech in [
            CKM_AES_KEY_WRAP,
            CKM_AES_KEY_WRAP_KWP,
            CKM_AES_CTR,
            CKM_AES_CMAC,
            CKM_AES_CMAC_GENERAL,
            CKM_EDDSA,
        ] {
            for p in [
                MechParam::None,
                MechParam::Raw(buf.clone()),
                MechParam::Ulong(len as CK_ULONG),
            ] {
                let mech = mp(mech, p);
                for key in keys {
                    let _ = wrap(&mech, key, &buf);
                    let _ = unwrap(&mech, key, &buf);
                    let _ = encrypt(&mech, key, &buf);
                    let _ = decrypt(&mech, key, &buf);
                    let _ = sign(&mech, key, SignInput::Message(&buf));
                    let _ = verify(&mech, key, SignInput::Message(&buf), &buf);
                    let _ = signature_len(&mech, key);
                }
            }
        }
    }
}

/// Measured at 6.3 to 11.5 s (four runs) in the debug profile, the prime search being random:
/// too slow for every run, so it runs with `--ignored`.
#[test]
#[ignore = "RSA-8192 generation takes 6-12 s"]
fn rsa_generation_8192_bits() {
    let start = std::time::Instant::now();
    let g = generate_rsa(8192, None).unwrap();
    assert_eq!(be_bits(&g.modulus), 8192);
    let key = LoadedKey::load(KeyMaterial::RsaPrivate { pkcs8: g.pkcs8 }).unwrap();
    assert_eq!(key.key_bits(), 8192);
    eprintln!("rsa 8192 generation: {:?}", start.elapsed());
}
