//! `[compat] self_signed_certificates`: X.509 certificate objects the engine presents for token
//! private keys that have none (Java's SunPKCS11 `KeyStore` lists a private key only when a
//! certificate with the same `CKA_ID` exists).
//!
//! # What is presented
//! While the application is logged in as the user, every token private key it can see that
//! - has a non-empty `CKA_ID`,
//! - may sign (`CKA_SIGN` true, `CKA_ALWAYS_AUTHENTICATE` false: a certificate signed without
//!   the per-operation login would bypass it),
//! - is RSA, EC on P-256/P-384/P-521 (with its public point on the token public key of the same
//!   `CKA_ID`) or Ed25519 (likewise),
//! - and has no token certificate with the same `CKA_ID`,
//!
//! (a key that then refuses to sign, e.g. through `CKA_ALLOWED_MECHANISMS`, is not asked again
//! until its id or label changes)
//! is accompanied by a certificate object made by this process and signed by the key itself
//! through the members. It is never stored on the HSMs: the engine answers finds, attribute
//! reads and the refusals of writes (`CKA_MODIFIABLE`, `CKA_COPYABLE`, `CKA_DESTROYABLE` are
//! false, so `C_SetAttributeValue`, `C_CopyObject` and `C_DestroyObject` fail with
//! `CKR_ACTION_PROHIBITED`: PKCS #11 3.0 §4.4, the storage object attributes of Table 25).
//!
//! # When
//! The set is worked out again when a find could match a certificate, or a presented handle is
//! used, and the engine's cache generation moved (any create, destroy, attribute change or login
//! through this engine) or the find-cache TTL passed. A key's certificate is made once and kept
//! (same handle, same bytes) while its `CKA_ID` and `CKA_LABEL` stay the same.
//!
//! # Through
//! The engine's [`Host`] view only: finds, attribute reads and signatures on any member
//! (`Route::Any`), the login state, the cache generation and find-cache TTL, and fresh handles.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cryptoki_sys::*;
use hsmpool_member::types::{Attr, MechParam, Mechanism, SignInput};
use hsmpool_member::AttrAnswer;
use parking_lot::Mutex;

use super::{Host, PresentedObject};
use crate::backend::MemberObject;
use crate::cluster::Route;
use crate::error::{Error, Result};
use crate::types::ObjectHandle;

/// A certificate the engine presents.
pub(super) struct SelfSignedCert {
    /// Its application handle.
    pub(super) handle: ObjectHandle,
    /// The key's `CKA_ID` and `CKA_LABEL` when it was made.
    id: Vec<u8>,
    label: Vec<u8>,
    /// Every attribute, native layout, sorted by type.
    attrs: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>,
}

impl SelfSignedCert {
    fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.attrs
            .binary_search_by_key(&ty, |(t, _)| *t)
            .ok()
            .map(|i| self.attrs[i].1.as_slice())
    }

    /// Whether every attribute of a find template has this value here.
    pub(super) fn matches(&self, template: &[Attr]) -> bool {
        template
            .iter()
            .all(|a| self.get(a.ty) == Some(a.value.as_slice()))
    }
}

impl PresentedObject for SelfSignedCert {
    /// The answers of `C_GetAttributeValue`.
    fn answer(&self, types: &[CK_ATTRIBUTE_TYPE]) -> Vec<AttrAnswer> {
        types
            .iter()
            .map(|t| match self.get(*t) {
                Some(v) => AttrAnswer::Value(v.to_vec()),
                None => AttrAnswer::Invalid,
            })
            .collect()
    }

    /// `C_GetObjectSize`: the bytes of its attribute values.
    fn size(&self) -> u64 {
        self.attrs.iter().map(|(_, v)| v.len() as u64).sum()
    }
}

/// The certificates presented for one cache generation.
struct Presented {
    gen: u64,
    /// The cluster clock's reading.
    at: Duration,
    certs: Arc<Vec<Arc<SelfSignedCert>>>,
}

/// The engine's state for the option (present only when it is on).
pub(super) struct SelfSigned {
    /// Made so far, by key; pruned of keys a refresh no longer finds.
    by_key: dashmap::DashMap<MemberObject, Arc<SelfSignedCert>, hsmpool_member::types::IdHash>,
    /// Keys that could not sign their certificate, with the id and label they had then.
    refused: dashmap::DashMap<MemberObject, (Vec<u8>, Vec<u8>), hsmpool_member::types::IdHash>,
    /// The current set. Its mutex is held across the member calls of a refresh (so 32 threads
    /// asking at once cause one refresh); it is taken with no other engine lock held.
    current: Mutex<Option<Presented>>,
}

impl SelfSigned {
    pub(super) fn new() -> Self {
        SelfSigned {
            by_key: dashmap::DashMap::with_hasher(hsmpool_member::types::IdHash),
            refused: dashmap::DashMap::with_hasher(hsmpool_member::types::IdHash),
            current: Mutex::new(None),
        }
    }

    /// Forget everything (`C_InitToken`).
    pub(super) fn clear(&self) {
        self.by_key.clear();
        self.refused.clear();
        *self.current.lock() = None;
    }
}

/// Whether a find template could match a presented certificate at all (saves the refresh for
/// the finds of keys, the hot ones).
pub(super) fn could_match(template: &[Attr]) -> bool {
    template.iter().all(|a| match a.ty {
        CKA_CLASS => a.as_ulong() == Some(CKO_CERTIFICATE),
        CKA_TOKEN => a.as_bool() == Some(true),
        CKA_PRIVATE => a.as_bool() == Some(false),
        CKA_CERTIFICATE_TYPE => a.as_ulong() == Some(CKC_X_509),
        _ => true,
    })
}

impl SelfSigned {
    /// The certificates presented now: none unless the user is logged in.
    /// A find (`for_find`) takes a set at most the find-cache TTL old, like the find cache (the
    /// TTL bounds how long another process's change goes unseen); a use of a presented handle
    /// takes any set of the current cache generation, so reading a large set's attributes one
    /// by one does not work it out again every TTL.
    pub(super) fn certs(
        &self,
        host: &dyn Host,
        for_find: bool,
    ) -> Result<Arc<Vec<Arc<SelfSignedCert>>>> {
        if !host.user_logged_in() {
            return Ok(Arc::new(Vec::new()));
        }
        let mut cur = self.current.lock();
        let gen = host.cache_generation();
        let now = host.cluster().clock().now();
        if let Some(p) = cur.as_ref() {
            if p.gen == gen && (!for_find || now.saturating_sub(p.at) < host.find_ttl()) {
                return Ok(p.certs.clone());
            }
        }
        let certs = Arc::new(self.refresh(host)?);
        *cur = Some(Presented {
            gen,
            at: now,
            certs: certs.clone(),
        });
        Ok(certs)
    }

    /// The presented certificate with this handle, if it is one.
    pub(super) fn cert(
        &self,
        host: &dyn Host,
        o: ObjectHandle,
    ) -> Result<Option<Arc<SelfSignedCert>>> {
        if !self.by_key.iter().any(|c| c.handle == o) {
            return Ok(None);
        }
        Ok(self
            .certs(host, false)?
            .iter()
            .find(|c| c.handle == o)
            .cloned())
    }

    /// Work out the set: the token's private keys, its certificates' ids, and a certificate for
    /// every key that qualifies (made now if it has none yet).
    fn refresh(&self, host: &dyn Host) -> Result<Vec<Arc<SelfSignedCert>>> {
        let find = |t: Vec<Attr>| {
            host.cluster()
                .call(Route::Any, 2, |b, msess| b.find(msess, &t))
        };
        let keys = find(vec![
            Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY),
            Attr::bool(CKA_TOKEN, true),
        ])?;
        let mut cert_ids: HashSet<Vec<u8>> = HashSet::new();
        for c in find(vec![
            Attr::ulong(CKA_CLASS, CKO_CERTIFICATE),
            Attr::bool(CKA_TOKEN, true),
        ])? {
            if let Some(id) = Self::read_attrs(host, c, &[CKA_ID])?.pop().flatten() {
                cert_ids.insert(id);
            }
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for k in keys {
            seen.insert(k);
            match self.cert_for(host, k, &cert_ids) {
                Ok(Some(c)) => out.push(c),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        key = k.0,
                        "no self-signed certificate for a private key: {e}"
                    )
                }
            }
        }
        self.by_key.retain(|k, _| seen.contains(k));
        self.refused.retain(|k, _| seen.contains(k));
        tracing::debug!(presented = out.len(), "self-signed certificates refreshed");
        Ok(out)
    }

    /// Attribute values of a member object; `None` where it has none (or it is sensitive).
    fn read_attrs(
        host: &dyn Host,
        o: MemberObject,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let answers = host
            .cluster()
            .call(Route::Any, 1, |b, msess| b.get_attributes(msess, o, types))?;
        Ok(answers
            .into_iter()
            .map(|a| match a {
                AttrAnswer::Value(v) => Some(v),
                AttrAnswer::Sensitive | AttrAnswer::Invalid => None,
            })
            .collect())
    }

    /// The certificate for key `k`, if it qualifies: the one made before while its id and
    /// label are unchanged, else a new one (with the old handle, if there was one).
    fn cert_for(
        &self,
        host: &dyn Host,
        k: MemberObject,
        cert_ids: &HashSet<Vec<u8>>,
    ) -> Result<Option<Arc<SelfSignedCert>>> {
        let v = Self::read_attrs(
            host,
            k,
            &[
                CKA_ID,
                CKA_LABEL,
                CKA_SIGN,
                CKA_ALWAYS_AUTHENTICATE,
                CKA_KEY_TYPE,
            ],
        )?;
        let [id, label, sign, always, kt] = <[Option<Vec<u8>>; 5]>::try_from(v)
            .map_err(|_| Error::General("attribute answers miscounted".into()))?;
        let id = id.unwrap_or_default();
        let label = label.unwrap_or_default();
        let flag = |v: &Option<Vec<u8>>| v.as_deref().is_some_and(|b| b.first() == Some(&1));
        if id.is_empty() || cert_ids.contains(&id) || !flag(&sign) || flag(&always) {
            return Ok(None);
        }
        if let Some(c) = self.by_key.get(&k) {
            if c.id == id && c.label == label {
                return Ok(Some(c.clone()));
            }
        }
        let kt = kt
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(CK_ULONG::from_ne_bytes);
        let Some(public) = Self::public_key_of(host, k, kt, &id)? else {
            return Ok(None);
        };
        if self
            .refused
            .get(&k)
            .is_some_and(|r| r.0 == id && r.1 == label)
        {
            return Ok(None);
        }
        let handle = match self.by_key.get(&k) {
            Some(c) => c.handle,
            None => host.new_object_handle(),
        };
        let cert = match make_cert(host, handle, k, id.clone(), label.clone(), &public) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                if !e.is_retryable() {
                    // The key will not sign it (a mechanism it does not allow, a public key
                    // that is not its own): not asked again until its id or label changes.
                    self.refused.insert(k, (id, label));
                }
                return Err(e);
            }
        };
        self.by_key.insert(k, cert.clone());
        tracing::info!(
            key = k.0,
            handle = handle.0,
            "self-signed certificate made for a private key without one"
        );
        Ok(Some(cert))
    }

    /// The public half of private key `k`: RSA from its modulus and exponent, EC and Ed25519
    /// from the token public key with the same `CKA_ID` (a private key holds no point).
    fn public_key_of(
        host: &dyn Host,
        k: MemberObject,
        kt: Option<CK_KEY_TYPE>,
        id: &[u8],
    ) -> Result<Option<PublicKey>> {
        match kt {
            Some(CKK_RSA) => {
                let v = Self::read_attrs(host, k, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT])?;
                match (&v[0], &v[1]) {
                    (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => {
                        Ok(Some(PublicKey::rsa(n, e)))
                    }
                    _ => Ok(None),
                }
            }
            Some(kt @ (CKK_EC | CKK_EC_EDWARDS)) => {
                let params = Self::read_attrs(host, k, &[CKA_EC_PARAMS])?.pop().flatten();
                let Some(params) = params else {
                    return Ok(None);
                };
                let Some(curve) = Curve::from_params(kt, &params) else {
                    return Ok(None);
                };
                let publics = host.cluster().call(Route::Any, 2, |b, msess| {
                    b.find(
                        msess,
                        &[
                            Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                            Attr::ulong(CKA_KEY_TYPE, kt),
                            Attr::bytes(CKA_ID, id),
                        ],
                    )
                })?;
                for p in publics {
                    let v = Self::read_attrs(host, p, &[CKA_EC_PARAMS, CKA_EC_POINT])?;
                    if v[0].as_deref() != Some(params.as_slice()) {
                        continue;
                    }
                    if let Some(point) = v[1].as_deref().and_then(|pt| curve.point(pt)) {
                        return Ok(Some(PublicKey::ec(curve, point)));
                    }
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

// ----- keys and curves ---------------------------------------------------------------------

/// The curves a certificate can be made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
    Ed25519,
}

impl Curve {
    /// The curve of a key's `CKA_EC_PARAMS`: the named-curve OIDs, and for Ed25519 also the
    /// PrintableString "edwards25519" (the forms a member accepts; see `hsmpool_member::curves`).
    fn from_params(kt: CK_KEY_TYPE, params: &[u8]) -> Option<Curve> {
        use hsmpool_member::curves::*;
        match (kt, params) {
            (CKK_EC, p) if p == P256_OID_DER => Some(Curve::P256),
            (CKK_EC, p) if p == P384_OID_DER => Some(Curve::P384),
            (CKK_EC, p) if p == P521_OID_DER => Some(Curve::P521),
            (CKK_EC_EDWARDS, p) if p == ED25519_OID_DER || p == ED25519_NAME_DER => {
                Some(Curve::Ed25519)
            }
            _ => None,
        }
    }

    /// The raw public key from a `CKA_EC_POINT` (a DER OCTET STRING, or the bare point).
    fn point(self, v: &[u8]) -> Option<Vec<u8>> {
        let len = match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
            Curve::P521 => 133,
            Curve::Ed25519 => 32,
        };
        let bare = |p: &[u8]| {
            (p.len() == len && (self == Curve::Ed25519 || p[0] == 0x04)).then(|| p.to_vec())
        };
        if v.len() == len {
            return bare(v);
        }
        let (body, rest) = der_read(v, 0x04)?;
        if !rest.is_empty() {
            return None;
        }
        bare(body)
    }
}

/// A public key and how its certificate is signed.
pub(crate) struct PublicKey {
    /// The subjectPublicKey bits: an `RSAPublicKey` DER, an EC point or an Ed25519 key.
    raw: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
    mech: CK_MECHANISM_TYPE,
    /// ECDSA: the field size, to turn the token's r‖s into the DER X.509 wants.
    ecdsa_field: Option<usize>,
    verify: &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
}

impl PublicKey {
    fn rsa(n: &[u8], e: &[u8]) -> PublicKey {
        PublicKey {
            raw: der_seq(&[der_uint(n), der_uint(e)].concat()),
            alg: &rcgen::PKCS_RSA_SHA256,
            mech: CKM_SHA256_RSA_PKCS,
            ecdsa_field: None,
            verify: &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        }
    }

    fn ec(curve: Curve, raw: Vec<u8>) -> PublicKey {
        use aws_lc_rs::signature as s;
        let (alg, mech, field, verify): (_, _, _, &'static dyn s::VerificationAlgorithm) =
            match curve {
                Curve::P256 => (
                    &rcgen::PKCS_ECDSA_P256_SHA256,
                    CKM_ECDSA_SHA256,
                    Some(32),
                    &s::ECDSA_P256_SHA256_ASN1,
                ),
                Curve::P384 => (
                    &rcgen::PKCS_ECDSA_P384_SHA384,
                    CKM_ECDSA_SHA384,
                    Some(48),
                    &s::ECDSA_P384_SHA384_ASN1,
                ),
                Curve::P521 => (
                    &rcgen::PKCS_ECDSA_P521_SHA512,
                    CKM_ECDSA_SHA512,
                    Some(66),
                    &s::ECDSA_P521_SHA512_ASN1,
                ),
                Curve::Ed25519 => (&rcgen::PKCS_ED25519, CKM_EDDSA, None, &s::ED25519),
            };
        PublicKey {
            raw,
            alg,
            mech,
            ecdsa_field: field,
            verify,
        }
    }
}

/// rcgen's view of a token private key: signing goes through the members, and every signature
/// is checked against the public key before it is used (a public key found by `CKA_ID` that
/// does not belong to the private key gives no certificate).
struct TokenSigner<'a> {
    host: &'a dyn Host,
    key: MemberObject,
    public: &'a PublicKey,
    error: Mutex<Option<Error>>,
}

impl rcgen::PublicKeyData for TokenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.public.alg
    }
}

impl rcgen::SigningKey for TokenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        let mech = Mechanism {
            mech: self.public.mech,
            param: MechParam::None,
        };
        let fail = |e: Error| {
            *self.error.lock() = Some(e);
            rcgen::Error::RemoteKeyError
        };
        let sig = self
            .host
            .cluster()
            .call(Route::Any, 40, |b, msess| {
                b.sign(msess, &mech, self.key, SignInput::Message(msg))
            })
            .map_err(fail)?;
        let sig = match self.public.ecdsa_field {
            Some(n) if sig.len() == 2 * n => {
                der_seq(&[der_uint(&sig[..n]), der_uint(&sig[n..])].concat())
            }
            Some(_) => {
                return Err(fail(Error::General(
                    "ECDSA signature of the wrong length".into(),
                )))
            }
            None => sig,
        };
        aws_lc_rs::signature::UnparsedPublicKey::new(self.public.verify, &self.public.raw)
            .verify(msg, &sig)
            .map_err(|_| {
                fail(Error::General(
                    "the public key found does not verify the private key's signature".into(),
                ))
            })?;
        Ok(sig)
    }
}

/// 9999-12-31T23:59:59Z: "no well-defined expiration date" (RFC 5280 §4.1.2.5).
const NOT_AFTER: i64 = 253_402_300_799;

/// Make, sign and describe the certificate of key `k`.
fn make_cert(
    host: &dyn Host,
    handle: ObjectHandle,
    key: MemberObject,
    id: Vec<u8>,
    label: Vec<u8>,
    public: &PublicKey,
) -> Result<SelfSignedCert> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::General(format!("{what}: {e}"));
    let name = if label.is_empty() {
        hex(&id)
    } else {
        String::from_utf8_lossy(&label).into_owned()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.distinguished_name.push(
        rcgen::DnType::OrganizationalUnitName,
        "hsmpool self-signed (key without a certificate)",
    );
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(now).map_err(|e| bad("not before", &e))?;
    params.not_after =
        time::OffsetDateTime::from_unix_timestamp(NOT_AFTER).map_err(|e| bad("not after", &e))?;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| Error::DeviceError("random".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let signer = TokenSigner {
        host,
        key,
        public,
        error: Mutex::new(None),
    };
    let cert = params.self_signed(&signer).map_err(|e| {
        signer
            .error
            .lock()
            .take()
            .unwrap_or_else(|| bad("rcgen", &e))
    })?;
    let der = cert.der().to_vec();
    let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| bad("x509", &e))?;
    let tbs = &x.tbs_certificate;
    let subject = tbs.subject.as_raw().to_vec();
    let issuer = tbs.issuer.as_raw().to_vec();
    let serial_der = der_tlv(0x02, tbs.raw_serial());
    let spki = tbs.subject_pki.raw.to_vec();
    let sha1 = |b: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, b)
            .as_ref()
            .to_vec()
    };
    let key_hash = sha1(&public.raw);
    let check_value = sha1(&der)[..3].to_vec();
    let ulong = |v: CK_ULONG| v.to_ne_bytes().to_vec();
    let date = |secs: i64| {
        time::OffsetDateTime::from_unix_timestamp(secs)
            .map(|t| {
                format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day()).into_bytes()
            })
            .unwrap_or_default()
    };
    let mut attrs = vec![
        (CKA_CLASS, ulong(CKO_CERTIFICATE)),
        (CKA_TOKEN, vec![1]),
        (CKA_PRIVATE, vec![0]),
        (CKA_MODIFIABLE, vec![0]),
        (CKA_COPYABLE, vec![0]),
        (CKA_DESTROYABLE, vec![0]),
        (
            CKA_LABEL,
            if label.is_empty() {
                hex(&id).into_bytes()
            } else {
                label.clone()
            },
        ),
        (
            CKA_UNIQUE_ID,
            format!("selfsigned-{:016x}", key.0).into_bytes(),
        ),
        (CKA_CERTIFICATE_TYPE, ulong(CKC_X_509)),
        (CKA_TRUSTED, vec![0]),
        (
            CKA_CERTIFICATE_CATEGORY,
            ulong(CK_CERTIFICATE_CATEGORY_TOKEN_USER),
        ),
        (CKA_CHECK_VALUE, check_value),
        (CKA_START_DATE, date(now)),
        (CKA_END_DATE, date(NOT_AFTER)),
        (CKA_PUBLIC_KEY_INFO, spki),
        (CKA_SUBJECT, subject),
        (CKA_ID, id.clone()),
        (CKA_ISSUER, issuer),
        (CKA_SERIAL_NUMBER, serial_der),
        (CKA_VALUE, der),
        (CKA_URL, Vec::new()),
        (CKA_HASH_OF_SUBJECT_PUBLIC_KEY, key_hash.clone()),
        (CKA_HASH_OF_ISSUER_PUBLIC_KEY, key_hash),
        (
            CKA_JAVA_MIDP_SECURITY_DOMAIN,
            ulong(CK_SECURITY_DOMAIN_UNSPECIFIED),
        ),
        (CKA_NAME_HASH_ALGORITHM, ulong(CKM_SHA_1)),
    ];
    attrs.sort_by_key(|(t, _)| *t);
    Ok(SelfSignedCert {
        handle,
        id,
        label,
        attrs,
    })
}

// ----- a little DER ------------------------------------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(body);
    out
}

fn der_seq(body: &[u8]) -> Vec<u8> {
    der_tlv(0x30, body)
}

/// A non-negative INTEGER from big-endian magnitude bytes.
fn der_uint(be: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = match be.iter().position(|b| *b != 0) {
        Some(i) => &be[i..],
        None => &[0],
    };
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    der_tlv(0x02, &body)
}

/// The body of a DER element with `tag` at the start of `v`, and what follows it.
fn der_read(v: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if v.first() != Some(&tag) {
        return None;
    }
    let first = *v.get(1)?;
    let (len, head) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = v
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((v.get(head..end)?, &v[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        assert_eq!(der_uint(&[0, 0, 5]), vec![2, 1, 5]);
        assert_eq!(der_uint(&[0x80]), vec![2, 2, 0, 0x80]);
        assert_eq!(der_uint(&[0, 0]), vec![2, 1, 0]);
        let long = der_tlv(0x04, &[7u8; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        assert_eq!(der_read(&long, 0x04), Some((&[7u8; 200][..], &[][..])));
    }

    #[test]
    fn ec_points_are_read_bare_or_wrapped() {
        let mut p = vec![0x04];
        p.extend_from_slice(&[9u8; 64]);
        assert_eq!(Curve::P256.point(&p), Some(p.clone()));
        assert_eq!(Curve::P256.point(&der_tlv(0x04, &p)), Some(p.clone()));
        assert_eq!(Curve::P384.point(&p), None);
        assert_eq!(
            Curve::Ed25519.point(&der_tlv(0x04, &[1u8; 32])),
            Some(vec![1u8; 32])
        );
    }

    #[test]
    fn only_certificate_templates_trigger_a_refresh() {
        assert!(could_match(&[]));
        assert!(could_match(&[Attr::ulong(CKA_CLASS, CKO_CERTIFICATE)]));
        assert!(!could_match(&[Attr::ulong(CKA_CLASS, CKO_PRIVATE_KEY)]));
        assert!(!could_match(&[Attr::bool(CKA_TOKEN, false)]));
        assert!(could_match(&[Attr::bytes(CKA_ID, b"x")]));
    }
}
