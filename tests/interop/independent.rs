//! Checks made beside the client under test, so that a client and the module that agree on a
//! wrong answer still fail: the token read back through the module's C ABI from this process
//! ([`Inspector`]), and X.509 certificates and public keys taken apart here and their
//! signatures verified with aws-lc-rs ([`Certificate`], [`PublicKey`]).
//!
//! Used by the NSS, GnuTLS, p11-kit and pkcs11-tool suites (`mod independent;` next to
//! `mod common;`); its hex, PEM and DER helpers serve them all.
#![allow(dead_code)]

use std::path::PathBuf;

use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{attr, attr_bytes, attr_value, find, Module};

use crate::common::{with_module, Setup, USER_PIN};

// ---------------------------------------------------------------------------------------------
// The token through the C ABI
// ---------------------------------------------------------------------------------------------

/// The token of a set-up, looked at through the module's C ABI from this process, one look at a
/// time ([`Inspector::with`], on [`crate::common::with_module`]).
pub struct Inspector {
    conf: PathBuf,
    wrapped: bool,
}

/// A logged-in user session for one look at the token.
pub struct View<'a> {
    m: &'a Module,
    h: CK_SESSION_HANDLE,
    /// The members copy keys by wrapping (vendor modules): see
    /// [`View::check_private_key_stays_in`].
    wrapped: bool,
}

/// What a look at the token found about one object.
#[derive(Clone, Debug)]
pub struct Object {
    /// Its handle (valid only inside the [`Inspector::with`] that found it).
    pub handle: CK_OBJECT_HANDLE,
    /// `CKA_LABEL`, as text.
    pub label: String,
    /// `CKA_ID`.
    pub id: Vec<u8>,
}

impl Inspector {
    /// For `setup`'s configuration.
    pub fn new(setup: &Setup) -> Inspector {
        Inspector {
            conf: setup.conf.clone(),
            wrapped: setup.kind.wraps(),
        }
    }

    /// With the module initialised, open a read-only session logged in as the user and run `f`.
    pub fn with<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        with_module(&self.conf, |m| {
            let h = m.open(false);
            assert_eq!(
                m.login(h, CKU_USER, USER_PIN),
                CKR_OK,
                "C_Login as the user in the test process"
            );
            f(&View {
                m,
                h,
                wrapped: self.wrapped,
            })
        })
    }
}

impl View<'_> {
    /// Every object of `class` (with `label`, when given), with its label and id.
    pub fn objects(&self, class: CK_OBJECT_CLASS, label: Option<&str>) -> Vec<Object> {
        let mut t = vec![attr(CKA_CLASS, &class)];
        if let Some(l) = label {
            t.push(attr_bytes(CKA_LABEL, l.as_bytes()));
        }
        find(self.m, self.h, &mut t)
            .into_iter()
            .map(|handle| Object {
                handle,
                label: String::from_utf8_lossy(&self.bytes(handle, CKA_LABEL).unwrap_or_default())
                    .into_owned(),
                id: self.bytes(handle, CKA_ID).unwrap_or_default(),
            })
            .collect()
    }

    /// The one object of `class` labelled `label`; `Err` if there is none or more than one.
    pub fn one(&self, class: CK_OBJECT_CLASS, label: &str) -> Result<Object, String> {
        let mut found = self.objects(class, Some(label));
        match found.len() {
            1 => Ok(found.remove(0)),
            n => Err(format!(
                "{n} objects of class {class:#x} labelled {label:?} in the token (expected 1)"
            )),
        }
    }

    /// The one object of `class` whose `CKA_ID` is `id`.
    pub fn by_id(&self, class: CK_OBJECT_CLASS, id: &[u8]) -> Result<Object, String> {
        let mut t = [attr(CKA_CLASS, &class), attr_bytes(CKA_ID, id)];
        let found = find(self.m, self.h, &mut t);
        match found.as_slice() {
            [handle] => Ok(Object {
                handle: *handle,
                label: String::from_utf8_lossy(&self.bytes(*handle, CKA_LABEL).unwrap_or_default())
                    .into_owned(),
                id: id.to_vec(),
            }),
            other => Err(format!(
                "{} objects of class {class:#x} with CKA_ID {} in the token (expected 1)",
                other.len(),
                hex(id)
            )),
        }
    }

    /// An attribute's bytes, or the CK_RV that refused it.
    pub fn bytes(&self, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Result<Vec<u8>, CK_RV> {
        attr_value(self.m, self.h, o, ty)
    }

    /// A `CK_BBOOL` attribute.
    pub fn flag(&self, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Result<bool, String> {
        match self.bytes(o, ty) {
            Ok(v) if v.len() == 1 => Ok(v[0] != 0),
            Ok(v) => Err(format!(
                "attribute {ty:#x} is {} bytes, not a CK_BBOOL",
                v.len()
            )),
            Err(rv) => Err(format!("attribute {ty:#x}: CK_RV {rv:#x}")),
        }
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(&self, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> Result<CK_ULONG, String> {
        match self.bytes(o, ty) {
            Ok(v) if v.len() == std::mem::size_of::<CK_ULONG>() => Ok(CK_ULONG::from_ne_bytes(
                v.try_into().expect("the length was checked"),
            )),
            Ok(v) => Err(format!(
                "attribute {ty:#x} is {} bytes, not a CK_ULONG",
                v.len()
            )),
            Err(rv) => Err(format!("attribute {ty:#x}: CK_RV {rv:#x}")),
        }
    }

    /// The public key held by a public-key object (RSA or EC).
    pub fn public_key(&self, o: CK_OBJECT_HANDLE) -> Result<PublicKey, String> {
        let get = |ty| {
            self.bytes(o, ty)
                .map_err(|rv| format!("attribute {ty:#x}: CK_RV {rv:#x}"))
        };
        match self.ulong(o, CKA_KEY_TYPE)? {
            CKK_RSA => Ok(PublicKey::Rsa {
                n: strip_zeros(&get(CKA_MODULUS)?).to_vec(),
                e: strip_zeros(&get(CKA_PUBLIC_EXPONENT)?).to_vec(),
            }),
            CKK_EC => {
                let params = get(CKA_EC_PARAMS)?;
                let point = get(CKA_EC_POINT)?;
                // CKA_EC_POINT is the DER OCTET STRING holding the point (PKCS #11 3.0 §2.3.3
                // of the mechanisms document).
                let (tag, content, rest) = tlv(&point)?;
                if tag != 0x04 || !rest.is_empty() {
                    return Err(format!(
                        "CKA_EC_POINT is not one DER OCTET STRING: {}",
                        hex(&point)
                    ));
                }
                Ok(PublicKey::Ec {
                    curve: params,
                    point: content.to_vec(),
                })
            }
            kt => Err(format!("key type {kt:#x} is neither RSA nor EC")),
        }
    }

    /// `Err` unless the private key `o` was generated in the token and can never leave it:
    /// `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_ALWAYS_SENSITIVE`, `CKA_LOCAL`,
    /// `CKA_NEVER_EXTRACTABLE` true and `CKA_EXTRACTABLE` false, and its value unreadable.
    /// Where the members copy keys by wrapping (vendor modules), it leaves an HSM only under
    /// the trusted cluster key: `CKA_EXTRACTABLE` and `CKA_WRAP_WITH_TRUSTED` true instead.
    pub fn check_private_key_stays_in(&self, o: CK_OBJECT_HANDLE) -> Result<(), String> {
        let w = self.wrapped;
        for (ty, name, want) in [
            (CKA_TOKEN, "CKA_TOKEN", true),
            (CKA_PRIVATE, "CKA_PRIVATE", true),
            (CKA_SENSITIVE, "CKA_SENSITIVE", true),
            (CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE", true),
            (CKA_LOCAL, "CKA_LOCAL", true),
            (CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE", !w),
            (CKA_EXTRACTABLE, "CKA_EXTRACTABLE", w),
            (CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED", w),
            (CKA_SIGN, "CKA_SIGN", true),
        ] {
            let got = self.flag(o, ty)?;
            if got != want {
                return Err(format!(
                    "the private key has {name} = {got}, expected {want}"
                ));
            }
        }
        let secret = match self.ulong(o, CKA_KEY_TYPE)? {
            CKK_RSA => CKA_PRIVATE_EXPONENT,
            _ => CKA_VALUE,
        };
        match self.bytes(o, secret) {
            Err(CKR_ATTRIBUTE_SENSITIVE) => Ok(()),
            other => Err(format!(
                "reading the private key's secret attribute gave {other:?}, expected CKR_ATTRIBUTE_SENSITIVE"
            )),
        }
    }

    /// `C_GetTokenInfo` of the token's slot.
    pub fn token_info(&self) -> CK_TOKEN_INFO {
        let mut info = CK_TOKEN_INFO::default();
        assert_eq!(call!(self.m, C_GetTokenInfo, 0, &mut info), CKR_OK);
        info
    }
}

// ---------------------------------------------------------------------------------------------
// DER, X.509 and signatures
// ---------------------------------------------------------------------------------------------

/// DER of the OID prime256v1 (P-256), as `CKA_EC_PARAMS` and in an SPKI.
pub const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the OID secp384r1 (P-384).
pub const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const SHA384_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const SHA512_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_WITH_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_WITH_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// A public key, as the token holds it and as an SPKI carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and public exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The curve (DER of its OID) and the uncompressed point.
    Ec { curve: Vec<u8>, point: Vec<u8> },
}

impl PublicKey {
    /// "RSA-2048", "EC P-256", ...
    pub fn describe(&self) -> String {
        match self {
            PublicKey::Rsa { n, .. } => format!("RSA-{}", n.len() * 8),
            PublicKey::Ec { curve, .. } if curve == P256 => "EC P-256".into(),
            PublicKey::Ec { curve, .. } if curve == P384 => "EC P-384".into(),
            PublicKey::Ec { curve, .. } => format!("EC curve {}", hex(curve)),
        }
    }

    /// Verify `sig` over `msg` with the algorithm named by the X.509 signature OID `alg`.
    pub fn verify(&self, alg: &[u8], msg: &[u8], sig: &[u8]) -> Result<(), String> {
        let ok = match self {
            PublicKey::Rsa { n, e } => {
                let params: &RsaParameters = match alg {
                    a if a == SHA256_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA256,
                    a if a == SHA384_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA384,
                    a if a == SHA512_WITH_RSA => &signature::RSA_PKCS1_2048_8192_SHA512,
                    a => return Err(format!("signature algorithm OID {} for RSA", hex(a))),
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            PublicKey::Ec { curve, point } => {
                let p256 = curve == P256;
                if !p256 && curve != P384 {
                    return Err(format!("curve {} is neither P-256 nor P-384", hex(curve)));
                }
                let algorithm = match alg {
                    a if a == ECDSA_WITH_SHA256 && p256 => &signature::ECDSA_P256_SHA256_ASN1,
                    a if a == ECDSA_WITH_SHA384 && p256 => &signature::ECDSA_P256_SHA384_ASN1,
                    a if a == ECDSA_WITH_SHA512 && p256 => &signature::ECDSA_P256_SHA512_ASN1,
                    a if a == ECDSA_WITH_SHA256 => &signature::ECDSA_P384_SHA256_ASN1,
                    a if a == ECDSA_WITH_SHA384 => &signature::ECDSA_P384_SHA384_ASN1,
                    a if a == ECDSA_WITH_SHA512 => &signature::ECDSA_P384_SHA512_ASN1,
                    a => return Err(format!("signature algorithm OID {} for ECDSA", hex(a))),
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(msg, sig)
                    .is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the signature does not verify under the {} key",
                self.describe()
            ))
        }
    }
}

/// The parts of an X.509 certificate the suites check.
#[derive(Clone, Debug)]
pub struct Certificate {
    /// The whole DER.
    pub der: Vec<u8>,
    /// The signed part (`tbsCertificate`, with its tag and length).
    pub tbs: Vec<u8>,
    /// The signature algorithm's OID (content bytes).
    pub sig_alg: Vec<u8>,
    /// The signature (the BIT STRING's bytes).
    pub signature: Vec<u8>,
    /// The issuer name (DER).
    pub issuer: Vec<u8>,
    /// The subject name (DER).
    pub subject: Vec<u8>,
    /// The subject's public key.
    pub key: PublicKey,
}

impl Certificate {
    /// Take a DER certificate apart.
    pub fn parse(der: &[u8]) -> Result<Certificate, String> {
        let bad = |what: &str| format!("not an X.509 certificate ({what}): {}", hex(der));
        let (tag, cert, rest) = tlv(der)?;
        if tag != 0x30 || !rest.is_empty() {
            return Err(bad("outer SEQUENCE"));
        }
        let (tag, tbs_content, after_tbs) = tlv(cert)?;
        if tag != 0x30 {
            return Err(bad("tbsCertificate"));
        }
        let tbs = cert[..cert.len() - after_tbs.len()].to_vec();
        let (tag, alg, after_alg) = tlv(after_tbs)?;
        if tag != 0x30 {
            return Err(bad("signatureAlgorithm"));
        }
        let (tag, oid, _) = tlv(alg)?;
        if tag != 0x06 {
            return Err(bad("signature OID"));
        }
        let (tag, bits, rest) = tlv(after_alg)?;
        if tag != 0x03 || !rest.is_empty() || bits.first() != Some(&0) {
            return Err(bad("signature BIT STRING"));
        }
        // tbsCertificate: [0] version, serial, signature, issuer, validity, subject, spki, ...
        let mut fields = Vec::new();
        let mut r = tbs_content;
        while !r.is_empty() {
            let (tag, _, next) = tlv(r)?;
            fields.push((tag, &r[..r.len() - next.len()]));
            r = next;
        }
        let start = usize::from(fields.first().map(|f| f.0) == Some(0xa0));
        let field = |i: usize, what: &str| {
            fields
                .get(start + i)
                .map(|f| f.1.to_vec())
                .ok_or_else(|| bad(what))
        };
        let issuer = field(2, "issuer")?;
        let subject = field(4, "subject")?;
        let key = PublicKey::from_spki(&field(5, "subjectPublicKeyInfo")?)?;
        Ok(Certificate {
            der: der.to_vec(),
            tbs,
            sig_alg: oid.to_vec(),
            signature: bits[1..].to_vec(),
            issuer,
            subject,
            key,
        })
    }

    /// Verify this certificate's signature with `issuer_key`.
    pub fn verify_with(&self, issuer_key: &PublicKey) -> Result<(), String> {
        issuer_key.verify(&self.sig_alg, &self.tbs, &self.signature)
    }

    /// `Err` unless the certificate is self-signed and its signature verifies under its own key,
    /// and a copy with one signature bit flipped does not (so the check itself can fail).
    pub fn check_self_signed(&self) -> Result<(), String> {
        if self.issuer != self.subject {
            return Err("the certificate's issuer is not its subject".into());
        }
        self.verify_with(&self.key)?;
        let mut bad = self.signature.clone();
        let last = bad.len() - 1;
        bad[last / 2] ^= 0x10;
        if self.key.verify(&self.sig_alg, &self.tbs, &bad).is_ok() {
            return Err("a signature with a flipped bit verified too".into());
        }
        Ok(())
    }
}

impl PublicKey {
    /// A `SubjectPublicKeyInfo` (DER) taken apart.
    pub fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
        let bad = |what: &str| format!("not a SubjectPublicKeyInfo ({what}): {}", hex(der));
        let (tag, spki, _) = tlv(der)?;
        if tag != 0x30 {
            return Err(bad("SEQUENCE"));
        }
        let (tag, alg, after) = tlv(spki)?;
        if tag != 0x30 {
            return Err(bad("algorithm"));
        }
        let (tag, oid, params) = tlv(alg)?;
        if tag != 0x06 {
            return Err(bad("algorithm OID"));
        }
        let (tag, bits, _) = tlv(after)?;
        if tag != 0x03 || bits.first() != Some(&0) {
            return Err(bad("BIT STRING"));
        }
        let key = &bits[1..];
        if oid == RSA_ENCRYPTION {
            let (tag, seq, _) = tlv(key)?;
            let (t1, n, rest) = tlv(seq)?;
            let (t2, e, _) = tlv(rest)?;
            if tag != 0x30 || t1 != 0x02 || t2 != 0x02 {
                return Err(bad("RSAPublicKey"));
            }
            Ok(PublicKey::Rsa {
                n: strip_zeros(n).to_vec(),
                e: strip_zeros(e).to_vec(),
            })
        } else if oid == EC_PUBLIC_KEY {
            Ok(PublicKey::Ec {
                curve: params.to_vec(),
                point: key.to_vec(),
            })
        } else {
            Err(bad("algorithm neither rsaEncryption nor id-ecPublicKey"))
        }
    }
}

/// One DER TLV: (tag, content, what follows). Single-byte tags only (all X.509 needs here).
pub fn tlv(d: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let short = || format!("truncated DER: {}", hex(d));
    let (&tag, r) = d.split_first().ok_or_else(short)?;
    let (&l0, mut r) = r.split_first().ok_or_else(short)?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || r.len() < n {
            return Err(short());
        }
        let len = r[..n].iter().fold(0usize, |a, &b| a << 8 | usize::from(b));
        r = &r[n..];
        len
    };
    if r.len() < len {
        return Err(short());
    }
    Ok((tag, &r[..len], &r[len..]))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The DER inside the first PEM block labelled `label` (e.g. "CERTIFICATE", "PUBLIC KEY").
pub fn pem(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text
        .find(&begin)
        .ok_or_else(|| format!("no {begin} in:\n{text}"))?
        + begin.len();
    let stop = text[start..]
        .find(&end)
        .ok_or_else(|| format!("no {end} in:\n{text}"))?
        + start;
    base64(&text[start..stop])
}

/// Standard base64 (whitespace ignored).
fn base64(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return Err(format!("{:?} is not base64", c as char)),
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Parse hex digits (as certutil and p11tool print key ids), ignoring ':' separators.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b':').collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    digits
        .chunks(2)
        .map(|p| {
            u8::from_str_radix(std::str::from_utf8(p).unwrap_or("zz"), 16)
                .map_err(|_| format!("{s:?} is not hex"))
        })
        .collect()
}
