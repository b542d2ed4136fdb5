//! Ed25519 (`CKK_EC_EDWARDS`, `CKM_EDDSA`): key generation and import, `CKA_EC_PARAMS` of the
//! Edwards curve, and pure Ed25519 signatures (RFC 8032; no prehash, no context).
//!
//! Keys are kept as their 32-byte seed (private) or 32-byte encoded point (public) and parsed
//! once into `aws-lc-rs` objects.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, ParsedPublicKey};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::der;
use crate::types::{MechParam, Mechanism, Rv, SignInput};

use hsmpool_member::curves::ED25519_NAME_DER;
pub use hsmpool_member::curves::ED25519_OID_DER;

/// The length of a seed, of a public key, and half of a signature.
const LEN: usize = 32;

/// The length of an Ed25519 signature.
pub(crate) const SIG_LEN: usize = 64;

/// Checks the `CKA_EC_PARAMS` of a `CKK_EC_EDWARDS` key and returns the form to store
/// ([`ED25519_OID_DER`]). Accepts the OID 1.3.101.112 and the PrintableString "edwards25519";
/// another well-formed OID or string is `CKR_CURVE_NOT_SUPPORTED`, anything else
/// `CKR_ATTRIBUTE_VALUE_INVALID`.
pub fn ed25519_params(der_params: &[u8]) -> Result<&'static [u8], Rv> {
    if der_params == ED25519_OID_DER || der_params == ED25519_NAME_DER {
        return Ok(ED25519_OID_DER);
    }
    match der::parse_tlv(der_params) {
        Some((0x13, _, [])) => Err(CKR_CURVE_NOT_SUPPORTED),
        Some((0x06, _, [])) if der::parse_oid(der_params).is_some() => Err(CKR_CURVE_NOT_SUPPORTED),
        _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// Generates an Ed25519 key: `(32-byte seed, 32-byte public key)`.
pub fn generate_ed25519() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), Rv> {
    let mut seed = Zeroizing::new(vec![0u8; LEN]);
    super::random(&mut seed)?;
    let public = ed25519_public_from_seed(&seed)?;
    Ok((seed, public))
}

/// The public key of an Ed25519 seed (`CKA_VALUE` of a private key: exactly 32 bytes, else
/// `CKR_ATTRIBUTE_VALUE_INVALID`).
pub fn ed25519_public_from_seed(seed: &[u8]) -> Result<Vec<u8>, Rv> {
    if seed.len() != LEN {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    let pair =
        Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok(pair.public_key().as_ref().to_vec())
}

/// Reads the `CKA_EC_POINT` of an Ed25519 key: the 32-byte public key, raw or wrapped in a DER
/// OCTET STRING (else `CKR_ATTRIBUTE_VALUE_INVALID`). Returns the raw key.
pub fn ed25519_point_from_attr(v: &[u8]) -> Result<Vec<u8>, Rv> {
    let point = if v.len() == LEN {
        v
    } else {
        der::parse_octet_string(v).ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?
    };
    if point.len() != LEN {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    ParsedPublicKey::new(&signature::ED25519, point).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok(point.to_vec())
}

/// A parsed Ed25519 private key.
pub(crate) struct EdPrivate {
    pair: Ed25519KeyPair,
    public: ParsedPublicKey,
}

impl EdPrivate {
    /// Parses a 32-byte seed.
    pub(crate) fn load(seed: &[u8]) -> Result<Self, Rv> {
        if seed.len() != LEN {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let pair =
            Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        let public = ParsedPublicKey::new(&signature::ED25519, pair.public_key().as_ref())
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        Ok(EdPrivate { pair, public })
    }

    /// The PKCS #8 (v1, RFC 8410) of the key.
    pub(crate) fn pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, Rv> {
        let doc = self.pair.to_pkcs8v1().map_err(|_| CKR_FUNCTION_FAILED)?;
        Ok(Zeroizing::new(doc.as_ref().to_vec()))
    }
}

/// A parsed Ed25519 public key.
pub(crate) struct EdPublic {
    public: ParsedPublicKey,
}

impl EdPublic {
    /// Parses a 32-byte public key.
    pub(crate) fn load(point: &[u8]) -> Result<Self, Rv> {
        if point.len() != LEN {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let public = ParsedPublicKey::new(&signature::ED25519, point)
            .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        Ok(EdPublic { public })
    }
}

/// An Ed25519 key usable for verification.
pub(crate) enum EdRef<'a> {
    Private(&'a EdPrivate),
    Public(&'a EdPublic),
}

/// Checks the `CKM_EDDSA` parameter: none, or a raw `CK_EDDSA_PARAMS` (x86_64 layout: `phFlag`
/// byte, 7 bytes padding, `ulContextDataLen` u64 LE, `pContextData` pointer; 24 bytes) asking for
/// pure Ed25519 (`phFlag` false, no context). Anything else is `CKR_MECHANISM_PARAM_INVALID`.
fn param(p: &MechParam) -> Result<(), Rv> {
    match p {
        MechParam::None => Ok(()),
        MechParam::Raw(r) if r.is_empty() => Ok(()),
        MechParam::Raw(r) if r.len() == 24 => {
            let ctx_len = r.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok());
            if r[0] == 0 && ctx_len == Some([0; 8]) {
                Ok(())
            } else {
                Err(CKR_MECHANISM_PARAM_INVALID)
            }
        }
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// The message of an EdDSA operation (pure EdDSA signs the data itself, whichever variant).
fn message<'a>(mech: &Mechanism, input: SignInput<'a>) -> Result<&'a [u8], Rv> {
    if mech.mech != CKM_EDDSA {
        return Err(CKR_MECHANISM_INVALID);
    }
    param(&mech.param)?;
    match input {
        SignInput::Message(m) | SignInput::Prehashed(m) => Ok(m),
    }
}

/// Signs with `CKM_EDDSA`: the 64-byte signature.
pub(crate) fn sign(mech: &Mechanism, key: &EdPrivate, input: SignInput<'_>) -> Result<Vec<u8>, Rv> {
    let msg = message(mech, input)?;
    let sig = key.pair.try_sign(msg).map_err(|_| CKR_FUNCTION_FAILED)?;
    Ok(sig.as_ref().to_vec())
}

/// Verifies a `CKM_EDDSA` signature.
pub(crate) fn verify(
    mech: &Mechanism,
    key: EdRef<'_>,
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    let msg = message(mech, input)?;
    if signature.len() != SIG_LEN {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    let public = match key {
        EdRef::Private(k) => &k.public,
        EdRef::Public(k) => &k.public,
    };
    public
        .verify_sig(msg, signature)
        .map_err(|_| CKR_SIGNATURE_INVALID)
}
