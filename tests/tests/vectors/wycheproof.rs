//! Wycheproof JSON files (schema v1) through the C ABI.

use cryptoki_sys::*;
use serde_json::Value;

use super::p11::*;
use super::report::{FileRun, Outcome};

fn hex(v: &Value) -> Vec<u8> {
    super::unhex(v.as_str().unwrap_or(""))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// What a file needs when there is no runner for it: the mechanism (if one would do) and a
/// short description.
pub fn needs(json: &Value) -> Option<(Option<CK_MECHANISM_TYPE>, &'static str)> {
    let schema = s(&json["schema"]);
    let alg = s(&json["algorithm"]);
    Some(match (schema, alg) {
        ("ecdsa_verify_schema_v1.json", _) => (None, "DER-encoded ECDSA signatures"),
        (_, "XDH") => (Some(CKM_EC_MONTGOMERY_KEY_PAIR_GEN), "X25519"),
        (_, a) if a.starts_with("PBKDF2") => (Some(CKM_PKCS5_PBKD2), "PBKDF2"),
        _ => return None,
    })
}

/// Runs the file; `Err` when there is no runner for its schema.
pub fn run(p: &P11, fr: &mut FileRun, json: &Value) -> Result<(), ()> {
    let schema = s(&json["schema"]);
    let alg = s(&json["algorithm"]);
    match (schema, alg) {
        ("ecdsa_p1363_verify_schema_v1.json", _) => each(fr, json, |g| ecdsa(p, g)),
        ("rsassa_pkcs1_verify_schema_v1.json", _) => each(fr, json, |g| rsa_pkcs1_verify(p, g)),
        ("rsassa_pkcs1_generate_schema_v1.json", _) => each(fr, json, |g| rsa_pkcs1_sign(p, g)),
        ("rsassa_pss_verify_schema_v1.json", _) => each(fr, json, |g| rsa_pss(p, g)),
        ("rsaes_oaep_decrypt_schema_v1.json", _) => each(fr, json, |g| rsa_decrypt(p, g, true)),
        ("rsaes_pkcs1_decrypt_schema_v1.json", _) => each(fr, json, |g| rsa_decrypt(p, g, false)),
        ("aead_test_schema_v1.json", "AES-GCM") => each(fr, json, |g| aes_gcm(p, g)),
        ("ind_cpa_test_schema_v1.json", "AES-CBC-PKCS5") => each(fr, json, |g| aes_cbc(p, g)),
        ("mac_test_schema_v1.json", "AES-CMAC") => each(fr, json, |g| aes_cmac(p, g)),
        ("keywrap_test_schema_v1.json", "AES-WRAP") => each(fr, json, |_| key_wrap(p, false)),
        ("keywrap_test_schema_v1.json", "AES-KWP") => each(fr, json, |_| key_wrap(p, true)),
        ("eddsa_verify_schema_v1.json", "EDDSA") => each(fr, json, |g| ed25519(p, g)),
        ("ecdh_test_schema_v1.json", "ECDH") => each(fr, json, |g| ecdh(p, g, false)),
        ("ecdh_ecpoint_test_schema_v1.json", "ECDH") => each(fr, json, |g| ecdh(p, g, true)),
        ("hkdf_test_schema_v1.json", a) if a.starts_with("HKDF-") => {
            let hash = hash_by_name(&a["HKDF-".len()..]).ok_or(())?;
            each(fr, json, |_| hkdf(p, hash))
        }
        ("mac_test_schema_v1.json", a) if a.starts_with("HMAC") => {
            let hash = hash_by_name(&a["HMAC".len()..]).ok_or(())?;
            each(fr, json, |g| hmac(p, g, hash))
        }
        _ => return Err(()),
    }
    Ok(())
}

/// A group's runner: given the group, returns a per-test function.
type CaseFn<'g> = Box<dyn FnMut(&Value) -> Outcome + 'g>;

/// Every test of every group: the group's runner makes a case function (importing the group's
/// key once), each test's outcome is recorded with the group's scalar fields as parameters.
fn each<'g>(fr: &mut FileRun, json: &'g Value, mut group_fn: impl FnMut(&'g Value) -> CaseFn<'g>) {
    for g in json["testGroups"].as_array().into_iter().flatten() {
        let mut params: Vec<(String, String)> = Vec::new();
        if let Some(o) = g.as_object() {
            for (k, v) in o {
                match v {
                    Value::String(x) => params.push((k.clone(), x.clone())),
                    Value::Number(x) => params.push((k.clone(), x.to_string())),
                    _ => {}
                }
            }
        }
        if let Some(c) = g["publicKey"]["curve"].as_str() {
            params.push(("curve".into(), c.into()));
        }
        let mut case = group_fn(g);
        for t in g["tests"].as_array().into_iter().flatten() {
            let mut params = params.clone();
            params.push(("result".into(), s(&t["result"]).into()));
            if s(&g["encoding"]) == "asn" {
                // ECDH with SubjectPublicKeyInfo public keys: whether the key is a point on the
                // group's named curve (all PKCS #11 can pass) or something else.
                let named = curve_params(s(&g["curve"]))
                    .and_then(|(c, _)| spki_point(&hex(&t["public"]), &c))
                    .is_some();
                params.push(("spki".into(), if named { "named" } else { "other" }.into()));
            }
            let id = t["tcId"].to_string();
            let outcome = case(t);
            fr.record(&id, &params, || describe(t), outcome);
        }
    }
}

fn describe(t: &Value) -> String {
    let flags: Vec<&str> = t["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .collect();
    format!(
        "tcId {} result={} flags=[{}] comment={:?}",
        t["tcId"],
        s(&t["result"]),
        flags.join(","),
        s(&t["comment"])
    )
}

/// Judges a verify-like result against Wycheproof's `result`: valid needs `Ok`, invalid needs
/// one of `reject` from the operation, acceptable takes either.
pub fn judge(result: &str, got: Result<(), OpErr>, reject: &[CK_RV]) -> Outcome {
    let names = || {
        reject
            .iter()
            .map(|r| rv_name(*r))
            .collect::<Vec<_>>()
            .join(" or ")
    };
    match (result, got) {
        ("valid" | "acceptable", Ok(())) => Outcome::Pass,
        ("invalid" | "acceptable", Err(e)) if e.stage == Stage::Op && reject.contains(&e.rv) => {
            Outcome::Pass
        }
        (_, Err(e)) if e.stage == Stage::Init && e.rv == CKR_MECHANISM_INVALID => {
            Outcome::Unsupported(format!("{e}"))
        }
        ("valid", Err(e)) => Outcome::Fail(format!("expected CKR_OK, got {e}")),
        (_, Err(e)) => Outcome::Fail(format!("expected {} from the operation, got {e}", names())),
        (_, Ok(())) => Outcome::Fail(format!("expected {}, got CKR_OK", names())),
    }
}

/// An import refusal as an outcome: a key below the module's RSA minimum is unsupported.
pub fn rsa_import_refused(p: &P11, bits: usize, rv: CK_RV, what: &str) -> Outcome {
    if bits < p.rsa_min_bits() && matches!(rv, CKR_ATTRIBUTE_VALUE_INVALID | CKR_KEY_SIZE_RANGE) {
        Outcome::Unsupported(format!(
            "{bits}-bit RSA key is below the module's minimum ({}): C_CreateObject says {}",
            p.rsa_min_bits(),
            rv_name(rv)
        ))
    } else {
        Outcome::Fail(format!("C_CreateObject of the {what} says {}", rv_name(rv)))
    }
}

/// A key size refused at `C_*Init` for a key below the minimum is unsupported too.
pub fn small_key_init(p: &P11, bits: usize, got: &Result<(), OpErr>) -> Option<Outcome> {
    match got {
        Err(e)
            if e.stage == Stage::Init
                && e.rv == CKR_KEY_SIZE_RANGE
                && bits > 0
                && bits < p.rsa_min_bits() =>
        {
            Some(Outcome::Unsupported(format!(
                "{bits}-bit RSA key is below the module's minimum ({}): {e}",
                p.rsa_min_bits()
            )))
        }
        _ => None,
    }
}

/// The `CKA_EC_PARAMS` (DER OID) of a curve by its Wycheproof or NIST name.
pub fn curve_params(name: &str) -> Option<(Vec<u8>, usize)> {
    let (oid, bits): (&str, usize) = match name {
        "secp256r1" | "P-256" => ("1.2.840.10045.3.1.7", 256),
        "secp384r1" | "P-384" => ("1.3.132.0.34", 384),
        "secp521r1" | "P-521" => ("1.3.132.0.35", 521),
        "secp224r1" | "P-224" => ("1.3.132.0.33", 224),
        "secp192r1" | "P-192" => ("1.2.840.10045.3.1.1", 192),
        "K-163" => ("1.3.132.0.1", 163),
        "K-233" => ("1.3.132.0.26", 233),
        "K-283" => ("1.3.132.0.16", 283),
        "K-409" => ("1.3.132.0.36", 409),
        "K-571" => ("1.3.132.0.38", 571),
        "B-163" => ("1.3.132.0.15", 163),
        "B-233" => ("1.3.132.0.27", 233),
        "B-283" => ("1.3.132.0.17", 283),
        "B-409" => ("1.3.132.0.37", 409),
        "B-571" => ("1.3.132.0.39", 571),
        _ => return None,
    };
    Some((der_oid(oid), bits.div_ceil(8)))
}

/// A group whose every case has the same outcome (the key or mechanism is unusable).
fn all(o: impl Fn() -> Outcome + 'static) -> CaseFn<'static> {
    Box::new(move |_| o())
}

fn ecdsa<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let curve = s(&g["publicKey"]["curve"]).to_string();
    let Some((params, _)) = curve_params(&curve) else {
        return all(move || Outcome::Fail(format!("unknown curve {curve}")));
    };
    let Some(hash) = hash_by_name(s(&g["sha"])) else {
        let sha = s(&g["sha"]).to_string();
        return all(move || Outcome::Unsupported(format!("hash {sha}")));
    };
    if let Err(e) = p.need(hash.ecdsa()) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let point = hex(&g["publicKey"]["uncompressed"]);
    let key = match p.ec_public(&params, &point) {
        Ok(k) => k,
        Err(rv) => {
            let supported = p.curve_supported(&params);
            return all(move || {
                if rv == CKR_CURVE_NOT_SUPPORTED || !supported {
                    Outcome::Unsupported(format!(
                        "curve {curve} (C_CreateObject says {})",
                        rv_name(rv)
                    ))
                } else {
                    Outcome::Fail(format!(
                        "C_CreateObject of the public key says {}",
                        rv_name(rv)
                    ))
                }
            });
        }
    };
    Box::new(move |t| {
        // Capture the key object itself (not just its handle): it lives as long as the closure.
        let key = &key;
        let mut m = mech(hash.ecdsa());
        let got = p.verify(&mut m, key.h, &hex(&t["msg"]), &hex(&t["sig"]));
        judge(
            s(&t["result"]),
            got,
            &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
        )
    })
}

fn group_hash(g: &Value) -> Result<Hash, CaseFn<'static>> {
    hash_by_name(s(&g["sha"])).ok_or_else(|| {
        let sha = s(&g["sha"]).to_string();
        all(move || Outcome::Unsupported(format!("hash {sha}")))
    })
}

fn rsa_pkcs1_verify<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let hash = match group_hash(g) {
        Ok(h) => h,
        Err(f) => return f,
    };
    if let Err(e) = p.need(hash.rsa_pkcs()) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let n = hex(&g["publicKey"]["modulus"]);
    let bits = bit_len(&n);
    let key = match p.rsa_public(&n, &hex(&g["publicKey"]["publicExponent"])) {
        Ok(k) => k,
        Err(rv) => return refused(rsa_import_refused(p, bits, rv, "public key")),
    };
    Box::new(move |t| {
        let key = &key;
        let mut m = mech(hash.rsa_pkcs());
        let got = p.verify(&mut m, key.h, &hex(&t["msg"]), &hex(&t["sig"]));
        if let Some(o) = small_key_init(p, bits, &got) {
            return o;
        }
        judge(
            s(&t["result"]),
            got,
            &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
        )
    })
}

/// The group's RSA private key: the PKCS #8 form when the file has it (it carries the CRT
/// components), else the JSON components.
fn group_private(g: &Value) -> RsaKey {
    if let Some(k) = g["privateKeyPkcs8"]
        .as_str()
        .and_then(|d| rsa_from_pkcs8(&super::unhex(d)))
    {
        return k;
    }
    let k = &g["privateKey"];
    let crt = ["prime1", "prime2", "exponent1", "exponent2", "coefficient"];
    let have = crt.iter().all(|c| k[*c].is_string());
    RsaKey {
        n: hex(&k["modulus"]),
        e: hex(&k["publicExponent"]),
        d: hex(&k["privateExponent"]),
        crt: have.then(|| crt.map(|c| hex(&k[c]))),
    }
}

fn refused(o: Outcome) -> CaseFn<'static> {
    let (unsupported, msg) = match o {
        Outcome::Unsupported(m) => (true, m),
        Outcome::Fail(m) => (false, m),
        Outcome::Pass => (false, "no outcome".into()),
    };
    all(move || {
        if unsupported {
            Outcome::Unsupported(msg.clone())
        } else {
            Outcome::Fail(msg.clone())
        }
    })
}

fn rsa_pkcs1_sign<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let hash = match group_hash(g) {
        Ok(h) => h,
        Err(f) => return f,
    };
    if let Err(e) = p.need(hash.rsa_pkcs()) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let k = group_private(g);
    let bits = k.bits();
    let private = match p.rsa_private(&k) {
        Ok(o) => o,
        Err(rv) => return refused(rsa_import_refused(p, bits, rv, "private key")),
    };
    let public = match p.rsa_public(&k.n, &k.e) {
        Ok(o) => o,
        Err(rv) => return refused(rsa_import_refused(p, bits, rv, "public key")),
    };
    Box::new(move |t| {
        let (private, public) = (&private, &public);
        let result = s(&t["result"]);
        let (msg, want) = (hex(&t["msg"]), hex(&t["sig"]));
        let mut m = mech(hash.rsa_pkcs());
        match p.sign(&mut m, private.h, &msg) {
            Ok(sig) if sig == want => {}
            Ok(sig) => {
                return Outcome::Fail(format!(
                    "C_Sign made a different signature (PKCS #1 v1.5 is deterministic): got {} bytes {}..., want {}...",
                    sig.len(),
                    super::tohex(&sig[..sig.len().min(16)]),
                    super::tohex(&want[..want.len().min(16)])
                ))
            }
            Err(e) if result == "valid" => {
                if let Some(o) = small_key_init(p, bits, &Err(e)) {
                    return o;
                }
                return Outcome::Fail(format!("C_Sign: expected the file's signature, got {e}"));
            }
            // An acceptable (weak hash, ...) signature may be refused.
            Err(_) => return Outcome::Pass,
        }
        let got = p.verify(&mut mech(hash.rsa_pkcs()), public.h, &msg, &want);
        judge(
            result,
            got,
            &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
        )
    })
}

fn rsa_pss<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let hash = match group_hash(g) {
        Ok(h) => h,
        Err(f) => return f,
    };
    let Some(mgf) = hash_by_name(s(&g["mgfSha"])) else {
        let m = s(&g["mgfSha"]).to_string();
        return all(move || Outcome::Unsupported(format!("MGF1 hash {m}")));
    };
    if s(&g["mgf"]) != "MGF1" {
        let m = s(&g["mgf"]).to_string();
        return all(move || Outcome::Unsupported(format!("mask generation {m}")));
    }
    if let Err(e) = p.need(hash.rsa_pss()) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let slen = g["sLen"].as_u64().unwrap_or(0) as CK_ULONG;
    let n = hex(&g["publicKey"]["modulus"]);
    let bits = bit_len(&n);
    let key = match p.rsa_public(&n, &hex(&g["publicKey"]["publicExponent"])) {
        Ok(k) => k,
        Err(rv) => return refused(rsa_import_refused(p, bits, rv, "public key")),
    };
    Box::new(move |t| {
        let key = &key;
        let mut params = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: hash.digest(),
            mgf: mgf.mgf1(),
            sLen: slen,
        };
        let mut m = mech_param(hash.rsa_pss(), &mut params);
        let got = p.verify(&mut m, key.h, &hex(&t["msg"]), &hex(&t["sig"]));
        if let Some(o) = small_key_init(p, bits, &got) {
            return o;
        }
        if let Err(e) = got {
            if e.stage == Stage::Init && e.rv == CKR_MECHANISM_PARAM_INVALID {
                return Outcome::Unsupported(format!(
                    "C_VerifyInit refuses CK_RSA_PKCS_PSS_PARAMS (hash {:?}, MGF1 {:?}, sLen {slen}): {e}",
                    hash, mgf
                ));
            }
        }
        judge(
            s(&t["result"]),
            got,
            &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
        )
    })
}

/// OAEP (`oaep`) or PKCS #1 v1.5 decryption with the group's private key.
fn rsa_decrypt<'g>(p: &'g P11, g: &'g Value, oaep: bool) -> CaseFn<'g> {
    let mech_type = if oaep {
        CKM_RSA_PKCS_OAEP
    } else {
        CKM_RSA_PKCS
    };
    if let Err(e) = p.need(mech_type) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let (hash, mgf) = if oaep {
        match (hash_by_name(s(&g["sha"])), hash_by_name(s(&g["mgfSha"]))) {
            (Some(h), Some(m)) if s(&g["mgf"]) == "MGF1" => (Some(h), Some(m)),
            _ => {
                let d = format!("{} / {} {}", s(&g["sha"]), s(&g["mgf"]), s(&g["mgfSha"]));
                return all(move || Outcome::Unsupported(format!("OAEP hash / MGF {d}")));
            }
        }
    } else {
        (None, None)
    };
    let k = group_private(g);
    let bits = k.bits();
    let key = match p.rsa_private(&k) {
        Ok(o) => o,
        Err(rv) => return refused(rsa_import_refused(p, bits, rv, "private key")),
    };
    let k_len = bits.div_ceil(8);
    Box::new(move |t| {
        let key = &key;
        let result = s(&t["result"]);
        let ct = hex(&t["ct"]);
        let mut label = hex(&t["label"]);
        let mut params = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: hash.map_or(0, |h| h.digest()),
            mgf: mgf.map_or(0, |h| h.mgf1()),
            source: CKZ_DATA_SPECIFIED,
            pSourceData: if label.is_empty() {
                std::ptr::null_mut()
            } else {
                label.as_mut_ptr() as *mut std::ffi::c_void
            },
            ulSourceDataLen: label.len() as CK_ULONG,
        };
        let mut m = if oaep {
            mech_param(CKM_RSA_PKCS_OAEP, &mut params)
        } else {
            mech(CKM_RSA_PKCS)
        };
        let got = p.decrypt(&mut m, key.h, &ct);
        decrypt_outcome(p, bits, result, got, &hex(&t["msg"]), ct.len() != k_len)
    })
}

/// Judges a decryption: valid needs the exact plaintext; invalid needs
/// `CKR_ENCRYPTED_DATA_INVALID` (or `..._LEN_RANGE` when the length is wrong).
pub fn decrypt_outcome(
    p: &P11,
    bits: usize,
    result: &str,
    got: Result<Vec<u8>, OpErr>,
    want: &[u8],
    wrong_len: bool,
) -> Outcome {
    let got_unit = got.as_ref().map(|_| ()).map_err(|e| *e);
    if let Some(o) = small_key_init(p, bits, &got_unit) {
        return o;
    }
    match (result, got) {
        ("valid" | "acceptable", Ok(pt)) if pt == want => Outcome::Pass,
        (_, Ok(pt)) if result != "invalid" => Outcome::Fail(format!(
            "wrong plaintext: got {} bytes {}, want {} bytes {}",
            pt.len(),
            super::tohex(&pt[..pt.len().min(32)]),
            want.len(),
            super::tohex(&want[..want.len().min(32)])
        )),
        ("invalid" | "acceptable", Err(e))
            if e.stage == Stage::Op
                && (e.rv == CKR_ENCRYPTED_DATA_INVALID
                    || (wrong_len && e.rv == CKR_ENCRYPTED_DATA_LEN_RANGE)) =>
        {
            Outcome::Pass
        }
        ("valid", Err(e)) => Outcome::Fail(format!("expected the plaintext, got {e}")),
        (_, Err(e)) => Outcome::Fail(format!(
            "expected CKR_ENCRYPTED_DATA_INVALID{}, got {e}",
            if wrong_len {
                " or CKR_ENCRYPTED_DATA_LEN_RANGE"
            } else {
                ""
            }
        )),
        (_, Ok(pt)) => Outcome::Fail(format!(
            "expected CKR_ENCRYPTED_DATA_INVALID, got CKR_OK and {} bytes {}",
            pt.len(),
            super::tohex(&pt[..pt.len().min(32)])
        )),
    }
}

/// One AES-GCM case: encrypt (valid only) and decrypt. `fail` = the case must not decrypt.
#[allow(clippy::too_many_arguments)]
pub fn gcm_case(
    p: &P11,
    key: &[u8],
    iv: &[u8],
    aad: &[u8],
    msg: &[u8],
    ct: &[u8],
    tag: &[u8],
    tag_bits: usize,
    result: &str,
) -> Outcome {
    if let Err(e) = p.need(CKM_AES_GCM) {
        return Outcome::Unsupported(e);
    }
    let k = match p.secret(CKK_AES, key) {
        Ok(k) => k,
        Err(rv) => {
            return Outcome::Fail(format!(
                "C_CreateObject of a {}-byte AES key says {}",
                key.len(),
                rv_name(rv)
            ))
        }
    };
    let mut iv_buf = iv.to_vec();
    let mut aad_buf = aad.to_vec();
    let mut params = CK_GCM_PARAMS {
        pIv: if iv_buf.is_empty() {
            std::ptr::null_mut()
        } else {
            iv_buf.as_mut_ptr()
        },
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: (iv.len() * 8) as CK_ULONG,
        pAAD: if aad_buf.is_empty() {
            std::ptr::null_mut()
        } else {
            aad_buf.as_mut_ptr()
        },
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: tag_bits as CK_ULONG,
    };
    let mut full = ct.to_vec();
    full.extend_from_slice(tag);
    let refused_params = |e: OpErr| {
        Outcome::Unsupported(format!(
            "the module refuses CK_GCM_PARAMS with a {}-byte IV and {tag_bits}-bit tag: {e}",
            iv.len()
        ))
    };
    if result == "valid" {
        let mut m = mech_param(CKM_AES_GCM, &mut params);
        match p.encrypt(&mut m, k.h, msg) {
            Ok(c) if c == full => {}
            Ok(c) => {
                return Outcome::Fail(format!(
                    "C_Encrypt: got ct||tag {}, want {}",
                    super::tohex(&c),
                    super::tohex(&full)
                ))
            }
            Err(e) if e.stage == Stage::Init && e.rv == CKR_MECHANISM_PARAM_INVALID => {
                return refused_params(e)
            }
            Err(e) => return Outcome::Fail(format!("C_Encrypt: {e}")),
        }
    }
    let mut m = mech_param(CKM_AES_GCM, &mut params);
    let got = p.decrypt(&mut m, k.h, &full);
    match (result, got) {
        ("valid", Err(e)) if e.stage == Stage::Init && e.rv == CKR_MECHANISM_PARAM_INVALID => {
            refused_params(e)
        }
        // A parameter the module refuses at init is a rejection of an invalid case.
        ("invalid" | "acceptable", Err(e))
            if e.stage == Stage::Init && e.rv == CKR_MECHANISM_PARAM_INVALID =>
        {
            Outcome::Pass
        }
        (r, got) => decrypt_outcome(p, 0, r, got, msg, full.len() < tag_bits / 8),
    }
}

fn aes_gcm<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let tag_bits = g["tagSize"].as_u64().unwrap_or(128) as usize;
    Box::new(move |t| {
        gcm_case(
            p,
            &hex(&t["key"]),
            &hex(&t["iv"]),
            &hex(&t["aad"]),
            &hex(&t["msg"]),
            &hex(&t["ct"]),
            &hex(&t["tag"]),
            tag_bits,
            s(&t["result"]),
        )
    })
}

fn aes_cbc<'g>(p: &'g P11, _g: &'g Value) -> CaseFn<'g> {
    Box::new(move |t| {
        if let Err(e) = p.need(CKM_AES_CBC_PAD) {
            return Outcome::Unsupported(e);
        }
        let result = s(&t["result"]);
        let (msg, ct) = (hex(&t["msg"]), hex(&t["ct"]));
        let k = match p.secret(CKK_AES, &hex(&t["key"])) {
            Ok(k) => k,
            Err(rv) => return Outcome::Fail(format!("C_CreateObject: {}", rv_name(rv))),
        };
        let mut iv = hex(&t["iv"]);
        if result == "valid" {
            match p.encrypt(&mut mech_bytes(CKM_AES_CBC_PAD, &mut iv), k.h, &msg) {
                Ok(c) if c == ct => {}
                Ok(c) => {
                    return Outcome::Fail(format!(
                        "C_Encrypt: got {}, want {}",
                        super::tohex(&c),
                        super::tohex(&ct)
                    ))
                }
                Err(e) => return Outcome::Fail(format!("C_Encrypt: {e}")),
            }
        }
        let got = p.decrypt(&mut mech_bytes(CKM_AES_CBC_PAD, &mut iv), k.h, &ct);
        decrypt_outcome(p, 0, result, got, &msg, ct.is_empty() || ct.len() % 16 != 0)
    })
}

/// HMAC sign and verify, with the `_GENERAL` mechanism for a truncated tag.
pub fn hmac_case(
    p: &P11,
    hash: Hash,
    tag_bytes: usize,
    key: &[u8],
    msg: &[u8],
    tag: &[u8],
    result: &str,
) -> Outcome {
    let truncated = tag_bytes < hash.len();
    let mut tag_len: CK_ULONG = tag_bytes as CK_ULONG;
    let mech_type = if truncated {
        hash.hmac_general()
    } else {
        hash.hmac()
    };
    if let Err(e) = p.need(mech_type) {
        return Outcome::Unsupported(format!("{}-bit tag: {e}", tag_bytes * 8));
    }
    let k = match p.secret(CKK_GENERIC_SECRET, key) {
        Ok(k) => k,
        Err(rv) => {
            return Outcome::Fail(format!(
                "C_CreateObject of a {}-byte generic secret says {}",
                key.len(),
                rv_name(rv)
            ))
        }
    };
    let mk = |len: &mut CK_ULONG| {
        if truncated {
            mech_param(mech_type, len)
        } else {
            mech(mech_type)
        }
    };
    if result == "valid" {
        match p.sign(&mut mk(&mut tag_len), k.h, msg) {
            Ok(t) if t == tag => {}
            Ok(t) => {
                return Outcome::Fail(format!(
                    "C_Sign: got {}, want {}",
                    super::tohex(&t),
                    super::tohex(tag)
                ))
            }
            Err(e) => return Outcome::Fail(format!("C_Sign: {e}")),
        }
    }
    let got = p.verify(&mut mk(&mut tag_len), k.h, msg, tag);
    judge(
        result,
        got,
        &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
    )
}

fn hmac<'g>(p: &'g P11, g: &'g Value, hash: Hash) -> CaseFn<'g> {
    let tag_bytes = g["tagSize"].as_u64().map_or(hash.len(), |b| b as usize / 8);
    Box::new(move |t| {
        hmac_case(
            p,
            hash,
            tag_bytes,
            &hex(&t["key"]),
            &hex(&t["msg"]),
            &hex(&t["tag"]),
            s(&t["result"]),
        )
    })
}

/// AES-CMAC: `CKM_AES_CMAC`, or `CKM_AES_CMAC_GENERAL` for a truncated tag.
pub fn cmac_case(
    p: &P11,
    tag_bytes: usize,
    key: &[u8],
    msg: &[u8],
    tag: &[u8],
    result: &str,
) -> Outcome {
    let truncated = tag_bytes < 16;
    let mech_type = if truncated {
        CKM_AES_CMAC_GENERAL
    } else {
        CKM_AES_CMAC
    };
    if let Err(e) = p.need(mech_type) {
        return Outcome::Unsupported(e);
    }
    let k = match p.secret(CKK_AES, key) {
        Ok(k) => k,
        // A key of a size AES does not have is refused: that rejects the case.
        Err(CKR_ATTRIBUTE_VALUE_INVALID)
            if result != "valid" && ![16, 24, 32].contains(&key.len()) =>
        {
            return Outcome::Pass
        }
        Err(rv) => {
            return Outcome::Fail(format!(
                "C_CreateObject of a {}-byte AES key says {}",
                key.len(),
                rv_name(rv)
            ))
        }
    };
    let mut tag_len = tag_bytes as CK_ULONG;
    let mut mk = || {
        if truncated {
            mech_param(mech_type, &mut tag_len)
        } else {
            mech(mech_type)
        }
    };
    if result == "valid" {
        match p.sign(&mut mk(), k.h, msg) {
            Ok(t) if t == tag => {}
            Ok(t) => {
                return Outcome::Fail(format!(
                    "C_Sign: got {}, want {}",
                    super::tohex(&t),
                    super::tohex(tag)
                ))
            }
            Err(e) => return Outcome::Fail(format!("C_Sign: {e}")),
        }
    }
    let got = p.verify(&mut mk(), k.h, msg, tag);
    judge(
        result,
        got,
        &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
    )
}

fn aes_cmac<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    let tag_bytes = g["tagSize"].as_u64().map_or(16, |b| b as usize / 8);
    Box::new(move |t| {
        cmac_case(
            p,
            tag_bytes,
            &hex(&t["key"]),
            &hex(&t["msg"]),
            &hex(&t["tag"]),
            s(&t["result"]),
        )
    })
}

/// AES key wrap (`kwp`: with padding): wrap `msg` (as a generic secret's value) must give `ct`
/// for a valid case; unwrap of `ct` must give `msg` (valid) or `CKR_WRAPPED_KEY_INVALID` /
/// `CKR_WRAPPED_KEY_LEN_RANGE` (invalid). `wrap` / `unwrap` pick the directions (NIST's AE
/// files wrap, its AD files unwrap).
#[allow(clippy::too_many_arguments)]
pub fn wrap_case(
    p: &P11,
    kwp: bool,
    key: &[u8],
    msg: &[u8],
    ct: &[u8],
    result: &str,
    wrap: bool,
    unwrap: bool,
) -> Outcome {
    let mech_type = if kwp {
        CKM_AES_KEY_WRAP_KWP
    } else {
        CKM_AES_KEY_WRAP
    };
    if let Err(e) = p.need(mech_type) {
        return Outcome::Unsupported(e);
    }
    let k = match p.kek(key) {
        Ok(k) => k,
        Err(rv) => {
            return Outcome::Fail(format!(
                "C_CreateObject of a {}-byte AES key says {}",
                key.len(),
                rv_name(rv)
            ))
        }
    };
    // The key policy refuses to wrap a key under a weaker one (a generic secret counts for its
    // length, capped at 256 bits): for those cases the right answer is CKR_KEY_NOT_WRAPPABLE,
    // and the unwrap direction still checks the vector.
    let weaker_kek = msg.len().min(32) > key.len();
    if wrap && result == "valid" && weaker_kek {
        let target = match p.secret(CKK_GENERIC_SECRET, msg) {
            Ok(t) => t,
            Err(rv) => {
                return Outcome::Fail(format!(
                    "C_CreateObject of a generic secret: {}",
                    rv_name(rv)
                ))
            }
        };
        match p.wrap(&mut mech(mech_type), k.h, target.h) {
            Err(e) if e.rv == CKR_KEY_NOT_WRAPPABLE => {}
            other => {
                return Outcome::Fail(format!(
                    "C_WrapKey under a weaker KEK: want CKR_KEY_NOT_WRAPPABLE, got {:?}",
                    other.map(|w| w.len())
                ))
            }
        }
    }
    if wrap && result == "valid" && !weaker_kek {
        let target = match p.secret(CKK_GENERIC_SECRET, msg) {
            Ok(t) => t,
            Err(rv) => {
                return Outcome::Fail(format!(
                    "C_CreateObject of a {}-byte generic secret to wrap says {}",
                    msg.len(),
                    rv_name(rv)
                ))
            }
        };
        match p.wrap(&mut mech(mech_type), k.h, target.h) {
            Ok(w) if w == ct => {}
            Ok(w) => {
                return Outcome::Fail(format!(
                    "C_WrapKey: got {}, want {}",
                    super::tohex(&w),
                    super::tohex(ct)
                ))
            }
            Err(e) => return Outcome::Fail(format!("C_WrapKey: {e}")),
        }
    }
    if !unwrap {
        return Outcome::Pass;
    }
    let got = p.unwrap(&mut mech(mech_type), k.h, ct);
    match (result, got) {
        ("valid" | "acceptable", Ok(v)) if v == msg => Outcome::Pass,
        ("invalid", Err(e)) | ("acceptable", Err(e))
            if matches!(e.rv, CKR_WRAPPED_KEY_INVALID | CKR_WRAPPED_KEY_LEN_RANGE) =>
        {
            Outcome::Pass
        }
        (_, Ok(v)) => Outcome::Fail(format!(
            "C_UnwrapKey: got CKR_OK and {} ({} bytes), want {}",
            super::tohex(&v),
            v.len(),
            if result == "invalid" {
                "CKR_WRAPPED_KEY_INVALID or CKR_WRAPPED_KEY_LEN_RANGE".to_string()
            } else {
                super::tohex(msg)
            }
        )),
        (_, Err(e)) => Outcome::Fail(format!(
            "C_UnwrapKey: got {e}, want {}",
            if result == "invalid" {
                "CKR_WRAPPED_KEY_INVALID or CKR_WRAPPED_KEY_LEN_RANGE"
            } else {
                "the key"
            }
        )),
    }
}

fn key_wrap<'g>(p: &'g P11, kwp: bool) -> CaseFn<'g> {
    Box::new(move |t| {
        wrap_case(
            p,
            kwp,
            &hex(&t["key"]),
            &hex(&t["msg"]),
            &hex(&t["ct"]),
            s(&t["result"]),
            true,
            true,
        )
    })
}

fn ed25519<'g>(p: &'g P11, g: &'g Value) -> CaseFn<'g> {
    if let Err(e) = p.need(CKM_EDDSA) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    let pk = hex(&g["publicKey"]["pk"]);
    let key = match p.ed25519_public(&pk) {
        Ok(k) => k,
        Err(rv) => {
            return all(move || {
                Outcome::Fail(format!(
                    "C_CreateObject of the Ed25519 public key says {}",
                    rv_name(rv)
                ))
            })
        }
    };
    Box::new(move |t| {
        let key = &key;
        let got = p.verify(
            &mut mech(CKM_EDDSA),
            key.h,
            &hex(&t["msg"]),
            &hex(&t["sig"]),
        );
        judge(
            s(&t["result"]),
            got,
            &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
        )
    })
}

/// The point of a DER SubjectPublicKeyInfo for an EC key on the named curve `params`; `None`
/// when it is anything else (another curve, explicit parameters, bad DER): PKCS #11 takes the
/// point alone, so those cases test a parser the module does not have.
fn spki_point(der: &[u8], params: &[u8]) -> Option<Vec<u8>> {
    let (t, spki, rest) = der_tlv(der)?;
    if t != 0x30 || !rest.is_empty() {
        return None;
    }
    let (t, alg, rest) = der_tlv(spki)?;
    if t != 0x30 {
        return None;
    }
    let (t, bits, rest) = der_tlv(rest)?;
    if t != 0x03 || !rest.is_empty() {
        return None;
    }
    let (t, oid, alg_rest) = der_tlv(alg)?;
    if t != 0x06 || oid != &der_oid("1.2.840.10045.2.1")[2..] {
        return None;
    }
    if alg_rest != params {
        return None;
    }
    let (unused, point) = bits.split_first()?;
    (*unused == 0).then(|| point.to_vec())
}

fn ecdh<'g>(p: &'g P11, g: &'g Value, ecpoint: bool) -> CaseFn<'g> {
    let curve = s(&g["curve"]).to_string();
    let Some((params, flen)) = curve_params(&curve) else {
        return all(move || Outcome::Fail(format!("unknown curve {curve}")));
    };
    if let Err(e) = p.need(CKM_ECDH1_DERIVE) {
        return all(move || Outcome::Unsupported(e.clone()));
    }
    Box::new(move |t| {
        let result = s(&t["result"]);
        let public = hex(&t["public"]);
        let point = if ecpoint {
            public
        } else {
            match spki_point(&public, &params) {
                Some(pt) => pt,
                None => {
                    return Outcome::Unsupported(
                        "the public key is not a SubjectPublicKeyInfo of a point on the group's named curve; PKCS #11 passes the point alone"
                            .into(),
                    )
                }
            }
        };
        let Some(scalar) = fixed(&hex(&t["private"]), flen) else {
            return Outcome::Fail("private scalar longer than the curve".into());
        };
        let key = match p.ec_private(&params, &scalar) {
            Ok(k) => k,
            Err(rv) => {
                return Outcome::Fail(format!(
                    "C_CreateObject of the private key says {}",
                    rv_name(rv)
                ))
            }
        };
        let shared = hex(&t["shared"]);
        let mut pt = point.clone();
        let mut dp = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: std::ptr::null_mut(),
            ulPublicDataLen: pt.len() as CK_ULONG,
            pPublicData: if pt.is_empty() {
                std::ptr::null_mut()
            } else {
                pt.as_mut_ptr()
            },
        };
        let len = if shared.is_empty() {
            flen
        } else {
            shared.len()
        };
        let got = p.derive(&mut mech_param(CKM_ECDH1_DERIVE, &mut dp), key.h, len);
        match (result, got) {
            ("valid" | "acceptable", Ok(v)) if v == shared => Outcome::Pass,
            ("invalid" | "acceptable", Err(e)) if ECDH_REJECT.contains(&e.rv) => Outcome::Pass,
            (_, Ok(v)) => Outcome::Fail(format!(
                "C_DeriveKey: got CKR_OK and {}, want {}",
                super::tohex(&v),
                if result == "invalid" {
                    "a refusal (CKR_MECHANISM_PARAM_INVALID)".to_string()
                } else {
                    super::tohex(&shared)
                }
            )),
            (_, Err(e)) => Outcome::Fail(format!(
                "C_DeriveKey: got {e}, want {}",
                if result == "invalid" {
                    "CKR_MECHANISM_PARAM_INVALID"
                } else {
                    "the shared secret"
                }
            )),
        }
    })
}

/// What `C_DeriveKey` may say for a public point that is not on the key's curve, badly encoded,
/// or otherwise unusable: it is a bad mechanism parameter (`pPublicData`).
const ECDH_REJECT: &[CK_RV] = &[CKR_MECHANISM_PARAM_INVALID];

fn hkdf<'g>(p: &'g P11, hash: Hash) -> CaseFn<'g> {
    Box::new(move |t| {
        if let Err(e) = p.need(CKM_HKDF_DERIVE) {
            return Outcome::Unsupported(e);
        }
        let result = s(&t["result"]);
        let ikm = hex(&t["ikm"]);
        let mut salt = hex(&t["salt"]);
        let mut info = hex(&t["info"]);
        let size = t["size"].as_u64().unwrap_or(0) as usize;
        let key = match p.secret(CKK_GENERIC_SECRET, &ikm) {
            Ok(k) => k,
            Err(rv) => {
                return Outcome::Fail(format!(
                    "C_CreateObject of a {}-byte generic secret (the IKM) says {}",
                    ikm.len(),
                    rv_name(rv)
                ))
            }
        };
        let mut hp = CK_HKDF_PARAMS {
            bExtract: CK_TRUE,
            bExpand: CK_TRUE,
            prfHashMechanism: hash.digest(),
            ulSaltType: if salt.is_empty() {
                CKF_HKDF_SALT_NULL
            } else {
                CKF_HKDF_SALT_DATA
            },
            pSalt: if salt.is_empty() {
                std::ptr::null_mut()
            } else {
                salt.as_mut_ptr()
            },
            ulSaltLen: salt.len() as CK_ULONG,
            hSaltKey: 0,
            pInfo: if info.is_empty() {
                std::ptr::null_mut()
            } else {
                info.as_mut_ptr()
            },
            ulInfoLen: info.len() as CK_ULONG,
        };
        let got = p.derive(&mut mech_param(CKM_HKDF_DERIVE, &mut hp), key.h, size);
        let okm = hex(&t["okm"]);
        match (result, got) {
            ("valid" | "acceptable", Ok(v)) if v == okm => Outcome::Pass,
            ("invalid" | "acceptable", Err(e)) if HKDF_REJECT.contains(&e.rv) => Outcome::Pass,
            (_, Ok(v)) => Outcome::Fail(format!(
                "C_DeriveKey: got CKR_OK and {} bytes {}..., want {}",
                v.len(),
                super::tohex(&v[..v.len().min(16)]),
                if result == "invalid" {
                    "a refusal".to_string()
                } else {
                    format!(
                        "{} bytes {}...",
                        okm.len(),
                        super::tohex(&okm[..okm.len().min(16)])
                    )
                }
            )),
            (_, Err(e)) => Outcome::Fail(format!("C_DeriveKey of {size} bytes: {e}")),
        }
    })
}

/// What `C_DeriveKey` may say for an HKDF output longer than 255 hash lengths: the requested
/// `CKA_VALUE_LEN` is out of range for the mechanism.
const HKDF_REJECT: &[CK_RV] = &[
    CKR_KEY_SIZE_RANGE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
];
