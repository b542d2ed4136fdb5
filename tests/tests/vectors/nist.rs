//! NIST CAVP `.rsp`-style files, the RSA Labs `*-vect.txt` files and RFC 4231 through the C ABI.

use std::collections::BTreeMap;

use cryptoki_sys::*;

use super::p11::*;
use super::report::{FileRun, Outcome};
use super::unhex;
use super::wycheproof::{
    cmac_case, curve_params, decrypt_outcome, gcm_case, hmac_case, rsa_import_refused,
    small_key_init, wrap_case,
};

/// One record of a `.rsp` file: `key = value` lines between blank lines, with the section
/// header fields in force (`[mod = 2048]`, `[P-256,SHA-256]`, `[ENCRYPT]`, ...).
struct Rec {
    line: usize,
    section: BTreeMap<String, String>,
    fields: Vec<(String, String)>,
    fail: bool,
}

impl Rec {
    fn get(&self, k: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(fk, _)| fk.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    /// A hex field; an odd number of digits is an integer written without its leading zero.
    fn hex(&self, k: &str) -> Vec<u8> {
        let v = self.get(k).unwrap_or("");
        if v.len() % 2 == 1 {
            unhex(&format!("0{v}"))
        } else {
            unhex(v)
        }
    }
    fn params(&self) -> Vec<(String, String)> {
        self.section
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn id(&self) -> String {
        format!("L{}", self.line)
    }
    fn describe(&self, file: &str) -> String {
        let sec: Vec<String> = self
            .section
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let count = self
            .get("COUNT")
            .map(|c| format!(" COUNT={c}"))
            .unwrap_or_default();
        let result = self
            .get("Result")
            .map(|c| format!(" Result={c}"))
            .unwrap_or_default();
        format!(
            "{file}:{} [{}]{count}{result}{}",
            self.line,
            sec.join(" "),
            if self.fail { " FAIL" } else { "" }
        )
    }
}

fn parse_rsp(text: &str) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut section = BTreeMap::new();
    let mut cur: Option<Rec> = None;
    let flush = |cur: &mut Option<Rec>, out: &mut Vec<Rec>| {
        if let Some(r) = cur.take() {
            if !r.fields.is_empty() || r.fail {
                out.push(r);
            }
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('#') {
            continue;
        }
        if l.is_empty() {
            flush(&mut cur, &mut out);
            continue;
        }
        if let Some(inner) = l.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            flush(&mut cur, &mut out);
            if let Some((k, v)) = inner.split_once('=') {
                section.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            } else if let Some((c, h)) = inner.split_once(',') {
                section.insert("curve".into(), c.trim().to_string());
                section.insert("sha".into(), h.trim().to_string());
            } else {
                section.insert("op".into(), inner.trim().to_string());
            }
            continue;
        }
        let rec = cur.get_or_insert_with(|| Rec {
            line: i + 1,
            section: section.clone(),
            fields: Vec::new(),
            fail: false,
        });
        if l == "FAIL" {
            rec.fail = true;
        } else if let Some((k, v)) = l.split_once('=') {
            rec.fields
                .push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// What a NIST file needs when there is no runner for it.
pub fn needs(_name: &str) -> Option<(Option<CK_MECHANISM_TYPE>, &'static str)> {
    None
}

/// Runs the file; `Err` when there is no runner for it.
pub fn run(p: &P11, fr: &mut FileRun, name: &str, text: &str) -> Result<(), ()> {
    let file = fr.name.clone();
    if name.starts_with("CBCMMT") {
        for r in parse_rsp(text) {
            let o = cbc(p, &r);
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name.starts_with("gcmDecrypt") {
        for r in parse_rsp(text) {
            let tag_bits = r
                .section
                .get("taglen")
                .and_then(|t| t.parse().ok())
                .unwrap_or(128);
            let pt = r.hex("PT");
            let o = gcm_case(
                p,
                &r.hex("Key"),
                &r.hex("IV"),
                &r.hex("AAD"),
                &pt,
                &r.hex("CT"),
                &r.hex("Tag"),
                tag_bits,
                if r.fail { "invalid" } else { "valid" },
            );
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name.starts_with("SigVer15") {
        let mut n = Vec::new();
        for r in parse_rsp(text) {
            if r.get("n").is_some() {
                n = r.hex("n");
            }
            if r.get("Msg").is_none() {
                continue;
            }
            let o = rsa_sigver(p, &r, &n);
            fr.record(&r.id(), &params_sha(&r), || r.describe(&file), o);
        }
    } else if name.starts_with("SigGen15") {
        let (mut n, mut e, mut d) = (Vec::new(), Vec::new(), Vec::new());
        for r in parse_rsp(text) {
            if r.get("n").is_some() {
                n = r.hex("n");
            }
            if r.get("e").is_some() {
                e = r.hex("e");
            }
            if r.get("d").is_some() {
                d = r.hex("d");
            }
            if r.get("Msg").is_none() {
                continue;
            }
            let key = RsaKey {
                n: strip(&n).to_vec(),
                e: strip(&e).to_vec(),
                d: strip(&d).to_vec(),
                crt: None,
            };
            let (sign, verify) = rsa_siggen(p, &r, &key);
            let mut params = params_sha(&r);
            params.push(("op".into(), "sign".into()));
            fr.record(
                &format!("{}/sign", r.id()),
                &params,
                || r.describe(&file),
                sign,
            );
            params.pop();
            params.push(("op".into(), "verify".into()));
            fr.record(
                &format!("{}/verify", r.id()),
                &params,
                || r.describe(&file),
                verify,
            );
        }
    } else if name.starts_with("ECDSA_SigVer") {
        for r in parse_rsp(text) {
            let o = ecdsa(p, &r);
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name.starts_with("rfc-4231-sha256") {
        for r in parse_rsp(text) {
            let md = r.hex("MD");
            let o = hmac_case(
                p,
                Hash::Sha256,
                md.len(),
                &r.hex("Key"),
                &r.hex("Msg"),
                &md,
                "valid",
            );
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name.starts_with("nist-800-38b") {
        for r in parse_rsp(text) {
            let tag = r.hex("OUTPUT");
            let o = cmac_case(
                p,
                tag.len(),
                &r.hex("KEY"),
                &r.hex("MESSAGE"),
                &tag,
                "valid",
            );
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name.starts_with("KW_A") || name.starts_with("KWP_A") {
        // AE: wrap P, expect C. AD: unwrap C, expect P or a refusal (FAIL).
        let kwp = name.starts_with("KWP");
        let ae = name.contains("_AE_");
        for r in parse_rsp(text) {
            let o = wrap_case(
                p,
                kwp,
                &r.hex("K"),
                &r.hex("P"),
                &r.hex("C"),
                if r.fail { "invalid" } else { "valid" },
                ae,
                !ae,
            );
            fr.record(&r.id(), &r.params(), || r.describe(&file), o);
        }
    } else if name == "oaep-vect.txt" || name == "pss-vect.txt" {
        let oaep = name.starts_with("oaep");
        for k in parse_vect(text) {
            let params = vec![
                ("example".to_string(), k.example.to_string()),
                ("bits".to_string(), k.bits.to_string()),
            ];
            let outcomes = rsa_vect(p, &k, oaep);
            for (c, o) in k.cases.iter().zip(outcomes) {
                fr.record(
                    &format!("L{}", c.line),
                    &params,
                    || format!("{file}:{} example {} ({}-bit key)", c.line, c.name, k.bits),
                    o,
                );
            }
        }
    } else {
        return Err(());
    }
    Ok(())
}

/// The section fields plus `sha` from the record's `SHAAlg`.
fn params_sha(r: &Rec) -> Vec<(String, String)> {
    let mut p = r.params();
    if let Some(s) = r.get("SHAAlg") {
        p.push(("sha".into(), s.to_string()));
    }
    p
}

fn cbc(p: &P11, r: &Rec) -> Outcome {
    if let Err(e) = p.need(CKM_AES_CBC) {
        return Outcome::Unsupported(e);
    }
    let (pt, ct) = (r.hex("PLAINTEXT"), r.hex("CIPHERTEXT"));
    let k = match p.secret(CKK_AES, &r.hex("KEY")) {
        Ok(k) => k,
        Err(rv) => return Outcome::Fail(format!("C_CreateObject: {}", rv_name(rv))),
    };
    let mut iv = r.hex("IV");
    match p.encrypt(&mut mech_bytes(CKM_AES_CBC, &mut iv), k.h, &pt) {
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
    let got = p.decrypt(&mut mech_bytes(CKM_AES_CBC, &mut iv), k.h, &ct);
    decrypt_outcome(p, 0, "valid", got, &pt, false)
}

fn judge_pf(pass: bool, got: Result<(), OpErr>) -> Outcome {
    super::wycheproof::judge(
        if pass { "valid" } else { "invalid" },
        got,
        &[CKR_SIGNATURE_INVALID, CKR_SIGNATURE_LEN_RANGE],
    )
}

fn rsa_sigver(p: &P11, r: &Rec, n: &[u8]) -> Outcome {
    let Some(hash) = r.get("SHAAlg").and_then(hash_by_name) else {
        return Outcome::Fail("no SHAAlg".into());
    };
    if let Err(e) = p.need(hash.rsa_pkcs()) {
        return Outcome::Unsupported(e);
    }
    let pass = r.get("Result").is_some_and(|v| v.starts_with('P'));
    let bits = bit_len(n);
    let key = match p.rsa_public(strip(n), strip(&r.hex("e"))) {
        Ok(k) => k,
        Err(rv) => return rsa_import_refused(p, bits, rv, "public key"),
    };
    let got = p.verify(
        &mut mech(hash.rsa_pkcs()),
        key.h,
        &r.hex("Msg"),
        &r.hex("S"),
    );
    small_key_init(p, bits, &got).unwrap_or_else(|| judge_pf(pass, got))
}

/// Sign (must give exactly `S`) and verify (`S` must verify) outcomes.
fn rsa_siggen(p: &P11, r: &Rec, key: &RsaKey) -> (Outcome, Outcome) {
    let Some(hash) = r.get("SHAAlg").and_then(hash_by_name) else {
        return (
            Outcome::Fail("no SHAAlg".into()),
            Outcome::Fail("no SHAAlg".into()),
        );
    };
    if let Err(e) = p.need(hash.rsa_pkcs()) {
        return (Outcome::Unsupported(e.clone()), Outcome::Unsupported(e));
    }
    let (msg, want) = (r.hex("Msg"), r.hex("S"));
    let bits = key.bits();
    let sign = match p.rsa_private(key) {
        Err(CKR_TEMPLATE_INCOMPLETE) if key.crt.is_none() => Outcome::Unsupported(
            "C_CreateObject of an RSA private key with only n, e and d (no CRT components) says CKR_TEMPLATE_INCOMPLETE"
                .into(),
        ),
        Err(rv) => rsa_import_refused(p, bits, rv, "private key"),
        Ok(k) => match p.sign(&mut mech(hash.rsa_pkcs()), k.h, &msg) {
            Ok(s) if s == want => Outcome::Pass,
            Ok(s) => Outcome::Fail(format!(
                "C_Sign made a different signature: {}..., want {}...",
                super::tohex(&s[..s.len().min(16)]),
                super::tohex(&want[..want.len().min(16)])
            )),
            Err(e) => Outcome::Fail(format!("C_Sign: {e}")),
        },
    };
    let verify = match p.rsa_public(&key.n, &key.e) {
        Err(rv) => rsa_import_refused(p, bits, rv, "public key"),
        Ok(k) => {
            let got = p.verify(&mut mech(hash.rsa_pkcs()), k.h, &msg, &want);
            small_key_init(p, bits, &got).unwrap_or_else(|| judge_pf(true, got))
        }
    };
    (sign, verify)
}

fn ecdsa(p: &P11, r: &Rec) -> Outcome {
    let curve = r.section.get("curve").map(String::as_str).unwrap_or("");
    let Some((params, flen)) = curve_params(curve) else {
        return Outcome::Fail(format!("unknown curve {curve}"));
    };
    let Some(hash) = r.section.get("sha").and_then(|s| hash_by_name(s)) else {
        return Outcome::Fail("no hash".into());
    };
    if !p.curve_supported(&params) {
        return Outcome::Unsupported(format!(
            "curve {curve}: C_GenerateKeyPair(CKM_EC_KEY_PAIR_GEN) refuses it"
        ));
    }
    if let Err(e) = p.need(hash.ecdsa()) {
        return Outcome::Unsupported(e);
    }
    let pass = r.get("Result").is_some_and(|v| v.starts_with('P'));
    let (Some(x), Some(y), Some(rr), Some(ss)) = (
        fixed(&r.hex("Qx"), flen),
        fixed(&r.hex("Qy"), flen),
        fixed(&r.hex("R"), flen),
        fixed(&r.hex("S"), flen),
    ) else {
        return Outcome::Fail("a value is longer than the curve's field".into());
    };
    let mut point = vec![0x04];
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let key = match p.ec_public(&params, &point) {
        Ok(k) => k,
        // A changed public key is off the curve: refusing it is rejecting the case.
        Err(CKR_ATTRIBUTE_VALUE_INVALID) if !pass => return Outcome::Pass,
        Err(rv) => return Outcome::Fail(format!("C_CreateObject says {}", rv_name(rv))),
    };
    let mut sig = rr;
    sig.extend_from_slice(&ss);
    judge_pf(
        pass,
        p.verify(&mut mech(hash.ecdsa()), key.h, &r.hex("Msg"), &sig),
    )
}

/// One key of `oaep-vect.txt` / `pss-vect.txt` and its examples.
struct VectKey {
    example: usize,
    bits: usize,
    key: RsaKey,
    cases: Vec<VectCase>,
}

struct VectCase {
    line: usize,
    name: String,
    fields: BTreeMap<String, Vec<u8>>,
}

fn parse_vect(text: &str) -> Vec<VectKey> {
    let mut keys: Vec<VectKey> = Vec::new();
    let mut private = false;
    let mut label: Option<String> = None;
    let mut crt: [Vec<u8>; 5] = Default::default();
    let finish_crt = |keys: &mut Vec<VectKey>, crt: &mut [Vec<u8>; 5]| {
        if let Some(k) = keys.last_mut() {
            if crt.iter().all(|c| !c.is_empty()) {
                k.key.crt = Some(std::mem::take(crt));
            }
        }
    };
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if let Some(rest) = l.strip_prefix("# Example ") {
            // "# Example 10: A 2048-bit RSA key pair"
            finish_crt(&mut keys, &mut crt);
            let (num, desc) = rest.split_once(':').unwrap_or((rest, ""));
            let bits = desc
                .split(|c: char| !c.is_ascii_digit())
                .find(|s| !s.is_empty())
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            keys.push(VectKey {
                example: num.trim().parse().unwrap_or(0),
                bits,
                key: RsaKey::default(),
                cases: Vec::new(),
            });
            private = false;
            label = None;
        } else if l == "# Private key" {
            private = true;
        } else if l == "# Public key" {
            private = false;
        } else if let Some(name) = l
            .strip_prefix("# OAEP Example ")
            .or_else(|| l.strip_prefix("# PSS Example "))
        {
            if let Some(k) = keys.last_mut() {
                k.cases.push(VectCase {
                    line: i + 1,
                    name: name.trim().to_string(),
                    fields: BTreeMap::new(),
                });
            }
            label = None;
        } else if let Some(lab) = l.strip_prefix("# ").and_then(|x| x.strip_suffix(':')) {
            label = Some(lab.trim().to_string());
        } else if !l.is_empty()
            && !l.starts_with('#')
            && l.split_whitespace()
                .all(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        {
            let bytes = unhex(&l.replace(' ', ""));
            let (Some(lab), Some(k)) = (&label, keys.last_mut()) else {
                continue;
            };
            if let Some(c) = k.cases.last_mut() {
                c.fields.entry(lab.clone()).or_default().extend(bytes);
                continue;
            }
            let target = match (private, lab.as_str()) {
                (false, "Modulus") => &mut k.key.n,
                (false, "Exponent") => &mut k.key.e,
                (true, "Exponent") => &mut k.key.d,
                (true, "Prime 1") => &mut crt[0],
                (true, "Prime 2") => &mut crt[1],
                (true, "Prime exponent 1") => &mut crt[2],
                (true, "Prime exponent 2") => &mut crt[3],
                (true, "Coefficient") => &mut crt[4],
                _ => continue,
            };
            target.extend(bytes);
        } else if !l.starts_with('#') {
            label = None;
        }
    }
    finish_crt(&mut keys, &mut crt);
    keys
}

/// The outcome of every example of one key.
fn rsa_vect(p: &P11, k: &VectKey, oaep: bool) -> Vec<Outcome> {
    let bits = k.key.bits();
    let n = k.cases.len();
    let same = |o: Outcome| -> Vec<Outcome> {
        (0..n)
            .map(|_| match &o {
                Outcome::Pass => Outcome::Pass,
                Outcome::Fail(m) => Outcome::Fail(m.clone()),
                Outcome::Unsupported(m) => Outcome::Unsupported(m.clone()),
            })
            .collect()
    };
    if oaep {
        if let Err(e) = p.need(CKM_RSA_PKCS_OAEP) {
            return same(Outcome::Unsupported(e));
        }
        let key = match p.rsa_private(&k.key) {
            Ok(o) => o,
            Err(rv) => return same(rsa_import_refused(p, bits, rv, "private key")),
        };
        k.cases
            .iter()
            .map(|c| {
                let mut params = CK_RSA_PKCS_OAEP_PARAMS {
                    hashAlg: CKM_SHA_1,
                    mgf: CKG_MGF1_SHA1,
                    source: CKZ_DATA_SPECIFIED,
                    pSourceData: std::ptr::null_mut(),
                    ulSourceDataLen: 0,
                };
                let ct = c.fields.get("Encryption").cloned().unwrap_or_default();
                let want = c.fields.get("Message").cloned().unwrap_or_default();
                let got = p.decrypt(&mut mech_param(CKM_RSA_PKCS_OAEP, &mut params), key.h, &ct);
                decrypt_outcome(p, bits, "valid", got, &want, false)
            })
            .collect()
    } else {
        if let Err(e) = p.need(CKM_SHA1_RSA_PKCS_PSS) {
            return same(Outcome::Unsupported(e));
        }
        let key = match p.rsa_public(&k.key.n, &k.key.e) {
            Ok(o) => o,
            Err(rv) => return same(rsa_import_refused(p, bits, rv, "public key")),
        };
        k.cases
            .iter()
            .map(|c| {
                let salt = c.fields.get("Salt").map_or(0, Vec::len);
                let mut params = CK_RSA_PKCS_PSS_PARAMS {
                    hashAlg: CKM_SHA_1,
                    mgf: CKG_MGF1_SHA1,
                    sLen: salt as CK_ULONG,
                };
                let msg = c
                    .fields
                    .get("Message to be signed")
                    .cloned()
                    .unwrap_or_default();
                let sig = c.fields.get("Signature").cloned().unwrap_or_default();
                let got = p.verify(
                    &mut mech_param(CKM_SHA1_RSA_PKCS_PSS, &mut params),
                    key.h,
                    &msg,
                    &sig,
                );
                small_key_init(p, bits, &got).unwrap_or_else(|| judge_pf(true, got))
            })
            .collect()
    }
}
