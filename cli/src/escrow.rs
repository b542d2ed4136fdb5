//! `hsmpool key escrow` and `hsmpool key import-escrow`: a copy of a token key usable without
//! the cluster, for an offline HSM (a PKI root kept offline, as the CloudHSM guide
//! recommends), and that copy brought back into a token.
//!
//! The copy is `CKM_RSA_AES_KEY_WRAP`'s output: a fresh AES key made in the HSM wraps the key
//! (AES key wrap with padding, RFC 5649, `CKM_AES_KEY_WRAP_KWP`), and the offline HSM's RSA
//! public key wraps that AES key (RSA-OAEP, SHA-256, MGF1-SHA-256); the two are concatenated,
//! so an HSM that has `CKM_RSA_AES_KEY_WRAP` unwraps the copy in one call. Our members run the
//! two steps themselves, inside the HSM: the AES key is a sensitive session key that can only
//! wrap, made for this one copy and destroyed after it. The member applies the key's policy
//! (extractable, wrap-with-trusted, strength, the key's quorum) and writes the `key_wrap`
//! audit records. The escrow file (JSON) carries the wrapped bytes, the key's attributes, its
//! public key, and the SHA-256 of the offline public key it was made for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cryptoki_sys::*;
use hsmpool_engine::types::{AttrAnswer, ObjectHandle, SessionHandle};
use hsmpool_engine::{Attr, Engine};
use hsmpool_member::types::{MechParam, Mechanism};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use crate::common::{explain, failed, hex, unhex, user_and_key};

/// The escrow file layout this build writes and reads.
const FORMAT: u32 = 1;

fn oaep() -> Mechanism {
    Mechanism {
        mech: CKM_RSA_PKCS_OAEP,
        param: MechParam::Oaep {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            label: Vec::new(),
        },
    }
}

fn kwp() -> Mechanism {
    Mechanism::plain(CKM_AES_KEY_WRAP_KWP)
}

/// One escrowed key.
#[derive(Serialize, Deserialize, Debug)]
pub struct EscrowFile {
    /// [`FORMAT`].
    pub format: u32,
    /// `CKM_RSA_AES_KEY_WRAP` (RSA-OAEP SHA-256 / MGF1-SHA-256, then AES-KWP).
    pub mechanism: String,
    /// The AES key's size in bits (the OAEP part is as long as the offline key's modulus).
    pub aes_bits: u32,
    /// SHA-256 of the offline public key (its SubjectPublicKeyInfo DER), hexadecimal.
    pub offline_key_sha256: String,
    /// The wrapped key (hexadecimal): OAEP(AES key) || KWP(key).
    pub wrapped: String,
    /// The key's attributes (hexadecimal values, by `CKA_*` number).
    pub key: Vec<(CK_ATTRIBUTE_TYPE, String)>,
    /// Its public key's attributes, when the token has one of the same `CKA_ID`.
    pub public: Option<Vec<(CK_ATTRIBUTE_TYPE, String)>>,
    /// The cluster it came from.
    pub cluster: String,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// The attributes an escrow carries of a private or secret key (all public facts).
const KEY_ATTRS: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_ID,
    CKA_SIGN,
    CKA_DECRYPT,
    CKA_UNWRAP,
    CKA_DERIVE,
    CKA_ENCRYPT,
    CKA_VERIFY,
    CKA_WRAP,
];

/// The attributes a public key object is remade from.
const PUBLIC_ATTRS: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_LABEL,
    CKA_ID,
    CKA_VERIFY,
    CKA_ENCRYPT,
    CKA_WRAP,
    CKA_MODULUS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
];

/// Those of `types` that `o` has, as (type, hexadecimal value).
fn read_attrs(
    e: &Engine,
    s: SessionHandle,
    o: ObjectHandle,
    types: &[CK_ATTRIBUTE_TYPE],
) -> Result<Vec<(CK_ATTRIBUTE_TYPE, String)>, String> {
    let answers = e
        .get_attribute_value(s, o, types)
        .or_else(|err| {
            // Some types do not apply to this kind of key: ask one at a time.
            if err.ck_rv() == CKR_ATTRIBUTE_TYPE_INVALID {
                Ok(types
                    .iter()
                    .map(|t| {
                        e.get_attribute_value(s, o, &[*t])
                            .ok()
                            .and_then(|mut v| v.pop())
                            .unwrap_or(AttrAnswer::Invalid)
                    })
                    .collect())
            } else {
                Err(err)
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(types
        .iter()
        .zip(answers)
        .filter_map(|(t, a)| match a {
            AttrAnswer::Value(v) => Some((*t, hex(&v))),
            _ => None,
        })
        .collect())
}

fn attr_of(attrs: &[(u64, String)], ty: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
    attrs
        .iter()
        .find(|(t, _)| *t == ty)
        .and_then(|(_, v)| unhex(v).ok())
}

/// The RSA public key in `pem_path` (a `PUBLIC KEY` PEM): (modulus, exponent, SHA-256 of the
/// SubjectPublicKeyInfo).
fn offline_key(pem_path: &Path) -> Result<(Vec<u8>, Vec<u8>, String), String> {
    let text = std::fs::read(pem_path).map_err(|e| format!("{}: {e}", pem_path.display()))?;
    let block = pem::parse(&text).map_err(|e| format!("{}: {e}", pem_path.display()))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(format!(
            "{}: a PEM PUBLIC KEY (SubjectPublicKeyInfo) is needed, found {}",
            pem_path.display(),
            block.tag()
        ));
    }
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(block.contents())
        .map_err(|e| format!("{}: {e}", pem_path.display()))?;
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
        return Err(format!(
            "{}: the offline key must be an RSA public key",
            pem_path.display()
        ));
    };
    let strip = |b: &[u8]| {
        let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
        b[i..].to_vec()
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, block.contents());
    Ok((
        strip(rsa.modulus),
        strip(rsa.exponent),
        hex(digest.as_ref()),
    ))
}

/// Wrap `key` for the offline public key `offline` on session `s`: (AES bits, OAEP || KWP).
/// The AES key grows (128, 192, 256) until it is strong enough for `key`.
fn wrap_for(
    e: &Engine,
    s: SessionHandle,
    key: ObjectHandle,
    offline: ObjectHandle,
) -> Result<(u32, Vec<u8>), hsmpool_engine::Error> {
    let mut last = None;
    for bits in [128u32, 192, 256] {
        let aes = e.generate_key(
            s,
            Mechanism::plain(CKM_AES_KEY_GEN),
            vec![
                Attr::bool(CKA_TOKEN, false),
                Attr::ulong(CKA_VALUE_LEN, CK_ULONG::from(bits / 8)),
                Attr::bool(CKA_WRAP, true),
                Attr::bool(CKA_UNWRAP, false),
                Attr::bool(CKA_ENCRYPT, false),
                Attr::bool(CKA_DECRYPT, false),
                Attr::bool(CKA_SENSITIVE, true),
                Attr::bool(CKA_EXTRACTABLE, true),
                Attr::bytes(CKA_LABEL, b"hsmpool escrow (one copy)"),
            ],
        )?;
        let wrapped = e.wrap_key(s, kwp(), aes, key).and_then(|inner| {
            let outer = e.wrap_key(s, oaep(), offline, aes)?;
            Ok([outer, inner].concat())
        });
        let _ = e.destroy_object(s, aes);
        match wrapped {
            Ok(w) => return Ok((bits, w)),
            Err(err) if err.ck_rv() == CKR_KEY_NOT_WRAPPABLE => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or(hsmpool_engine::Error::ArgumentsBad("no AES size")))
}

/// `hsmpool key escrow --key KEY --to-public-key PEM [--out FILE]`.
pub fn escrow(
    data: Option<PathBuf>,
    key: &str,
    to: &Path,
    out: Option<&Path>,
) -> Result<ExitCode, String> {
    let (n, pub_e, offline_sha) = offline_key(to)?;
    let (engine, s, o) = match user_and_key(data, key)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let attrs = read_attrs(&engine, s, o, KEY_ATTRS)?;
    let offline = engine
        .create_object(
            s,
            vec![
                Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_RSA),
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_WRAP, true),
                Attr::bool(CKA_ENCRYPT, false),
                Attr::bool(CKA_VERIFY, false),
                Attr::bytes(CKA_MODULUS, &n),
                Attr::bytes(CKA_PUBLIC_EXPONENT, &pub_e),
                Attr::bytes(CKA_LABEL, b"hsmpool escrow offline key"),
            ],
        )
        .map_err(|e| format!("the offline public key: {e}"))?;
    let wrapped = wrap_for(&engine, s, o, offline);
    let _ = engine.destroy_object(s, offline);
    let (aes_bits, wrapped) = match wrapped {
        Ok(w) => w,
        Err(e) => {
            let why = match e.ck_rv() {
                CKR_KEY_UNEXTRACTABLE => format!(
                    "{key} is not extractable (CKA_EXTRACTABLE false): its policy keeps it in \
                     the cluster, so it cannot be escrowed (CKR_KEY_UNEXTRACTABLE)"
                ),
                CKR_KEY_NOT_WRAPPABLE => format!(
                    "{key} cannot travel under this offline key: its policy asks for a \
                     trusted wrapping key (CKA_WRAP_WITH_TRUSTED), or the offline RSA key is \
                     weaker than the key (RSA-3072 carries keys of up to 128-bit strength) \
                     (CKR_KEY_NOT_WRAPPABLE)"
                ),
                _ => crate::common::explain_key(&e, key),
            };
            return Ok(failed(&format!("key escrow {key}: {why}")));
        }
    };
    // Its public key, by CKA_ID, so the offline HSM holds the pair.
    let public = match attr_of(&attrs, CKA_ID) {
        Some(id) if !id.is_empty() => {
            let found = engine
                .find_objects_init(
                    s,
                    vec![
                        Attr::ulong(CKA_CLASS, CKO_PUBLIC_KEY),
                        Attr::bool(CKA_TOKEN, true),
                        Attr::bytes(CKA_ID, &id),
                    ],
                )
                .and_then(|()| engine.find_objects(s, 2));
            let _ = engine.find_objects_final(s);
            match found.map_err(|e| e.to_string())?.as_slice() {
                [p] => Some(read_attrs(&engine, s, *p, PUBLIC_ATTRS)?),
                _ => None,
            }
        }
        _ => None,
    };
    let cluster = engine
        .cluster_id()
        .map(|c| hsmpool_member::backup::cluster_hex(&c))
        .unwrap_or_default();
    let file = EscrowFile {
        format: FORMAT,
        mechanism: "CKM_RSA_AES_KEY_WRAP (RSA-OAEP SHA-256 MGF1-SHA-256, AES-KWP)".into(),
        aes_bits,
        offline_key_sha256: offline_sha,
        wrapped: hex(&wrapped),
        key: attrs,
        public,
        cluster,
        created: crate::backup::when::rfc3339(crate::backup::when::now_ms()),
    };
    let text = serde_json::to_string_pretty(&file).map_err(|e| e.to_string())?;
    match out {
        Some(p) => {
            std::fs::write(p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
            println!(
                "{key}: escrowed for the offline key {} into {} (AES-{aes_bits}); the \
                 members' audit logs record the wrap",
                file.offline_key_sha256,
                p.display()
            );
        }
        None => println!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `hsmpool key import-escrow --file FILE --unwrap-key KEY [--extractable]`.
pub fn import(
    data: Option<PathBuf>,
    file: &Path,
    unwrap_key: &str,
    extractable: bool,
) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let f: EscrowFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not an escrow file: {e}", file.display()))?;
    if f.format != FORMAT {
        return Ok(failed(&format!(
            "{}: escrow format {} (this build reads {FORMAT})",
            file.display(),
            f.format
        )));
    }
    let wrapped = unhex(&f.wrapped)?;
    let (engine, s, unwrapper) = match user_and_key(data, unwrap_key)? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    let modulus = engine
        .get_attribute_value(s, unwrapper, &[CKA_MODULUS])
        .ok()
        .and_then(|mut v| match v.pop() {
            Some(AttrAnswer::Value(m)) => Some(m.len()),
            _ => None,
        })
        .ok_or("the unwrapping key must be an RSA private key")?;
    if wrapped.len() <= modulus {
        return Ok(failed("the escrow is shorter than its RSA part: damaged"));
    }
    let (outer, inner) = wrapped.split_at(modulus);
    let aes = engine
        .unwrap_key(
            s,
            oaep(),
            unwrapper,
            outer,
            vec![
                Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_AES),
                Attr::bool(CKA_TOKEN, false),
                Attr::bool(CKA_UNWRAP, true),
                Attr::bool(CKA_SENSITIVE, true),
                Attr::bool(CKA_EXTRACTABLE, false),
            ],
        )
        .map_err(|e| {
            format!(
                "unwrapping the escrow's AES key with {unwrap_key}: {} (is it the offline key \
                 {} the escrow was made for?)",
                explain(&e, ""),
                f.offline_key_sha256
            )
        })?;
    let mut template: Vec<Attr> = f
        .key
        .iter()
        .filter_map(|(t, v)| unhex(v).ok().map(|v| Attr::bytes(*t, &v)))
        .collect();
    template.push(Attr::bool(CKA_TOKEN, true));
    template.push(Attr::bool(CKA_SENSITIVE, true));
    template.push(Attr::bool(CKA_EXTRACTABLE, extractable));
    let key = engine.unwrap_key(s, kwp(), aes, inner, template);
    let _ = engine.destroy_object(s, aes);
    let key = key.map_err(|e| format!("unwrapping the key: {}", explain(&e, "")))?;
    if let Some(public) = &f.public {
        let mut template: Vec<Attr> = public
            .iter()
            .filter_map(|(t, v)| unhex(v).ok().map(|v| Attr::bytes(*t, &v)))
            .collect();
        template.push(Attr::bool(CKA_TOKEN, true));
        engine
            .create_object(s, template)
            .map_err(|e| format!("the public key: {}", explain(&e, "")))?;
    }
    let label = attr_of(&f.key, CKA_LABEL)
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default();
    let _ = key;
    println!(
        "{label:?}: imported from {} (cluster {}, escrowed {}){}",
        file.display(),
        f.cluster,
        f.created,
        if f.public.is_some() {
            ", with its public key"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}
