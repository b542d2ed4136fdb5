//! RSA: key generation and import, PKCS #1 v1.5 / PSS / raw signatures, PKCS #1 v1.5 / OAEP /
//! raw encryption.
//!
//! The hot path (hash-and-sign with SHA-256/384/512, PKCS #1 v1.5 over a standard DigestInfo,
//! PSS with the usual parameters) runs on the parsed `aws_lc_rs::rsa::KeyPair`. Everything else
//! uses a raw aws-lc key ([`raw::Pkey`]) built lazily, once, on first need.

use std::sync::OnceLock;

use aws_lc_rs::digest::Digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, KeyPair as _};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::raw::{self, Pkey, RsaPad};
use hsmpool_member::mechanism::{oaep_param, pss_param};

use super::{be_bits, der, no_param, strip_leading_zeros, Hash, HashAlg};
use crate::types::{Mechanism, Rv, SignInput};

/// The smallest and largest modulus this module creates or accepts for private keys (what
/// `aws-lc-rs` supports).
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 8192;

/// The default public exponent, 65537.
const F4: &[u8] = &[0x01, 0x00, 0x01];

/// A freshly generated RSA key pair.
pub struct RsaGenerated {
    /// The private key, PKCS #8 DER.
    pub pkcs8: Zeroizing<Vec<u8>>,
    /// The modulus, big-endian without leading zeros.
    pub modulus: Vec<u8>,
    /// The public exponent, big-endian without leading zeros.
    pub public_exponent: Vec<u8>,
}

impl std::fmt::Debug for RsaGenerated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaGenerated({} bits)", be_bits(&self.modulus))
    }
}

/// Generates an RSA key of exactly `bits` bits (2048 to 8192, else `CKR_KEY_SIZE_RANGE`) with
/// the public exponent given big-endian (default 65537; it must be odd, at least 3 and at most
/// 32 bits, else `CKR_TEMPLATE_INCONSISTENT`). Multiples of 128 bits come from aws-lc's FIPS
/// 186-4 generator; other sizes (pkcs11-provider's suites ask for 3092 bits, as SoftHSMv2 makes
/// them) from [`raw::rsa_generate_exact`], because aws-lc rounds a size down to a multiple of
/// 128 and the key must have the `CKA_MODULUS_BITS` it was asked for.
pub fn generate_rsa(bits: usize, public_exponent: Option<&[u8]>) -> Result<RsaGenerated, Rv> {
    if !(MIN_BITS..=MAX_BITS).contains(&bits) {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let e = strip_leading_zeros(public_exponent.unwrap_or(F4));
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    if !odd || e.len() > 4 || e == [1] {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let size = match bits {
        2048 => Some(KeySize::Rsa2048),
        3072 => Some(KeySize::Rsa3072),
        4096 => Some(KeySize::Rsa4096),
        8192 => Some(KeySize::Rsa8192),
        _ => None,
    };
    let pkcs8 = match size {
        Some(size) if e == F4 => {
            let pair = KeyPair::generate(size).map_err(|_| CKR_FUNCTION_FAILED)?;
            let der = pair.as_der().map_err(|_| CKR_FUNCTION_FAILED)?;
            Zeroizing::new(der.as_ref().to_vec())
        }
        _ if bits % 128 == 0 => raw::rsa_generate(bits, e).map_err(|_| CKR_FUNCTION_FAILED)?,
        _ => raw::rsa_generate_exact(bits, e).map_err(|_| CKR_FUNCTION_FAILED)?,
    };
    let (modulus, public_exponent) = rsa_public_components(&pkcs8)?;
    Ok(RsaGenerated {
        pkcs8,
        modulus,
        public_exponent,
    })
}

/// The modulus sizes `CKM_RSA_X9_31_KEY_PAIR_GEN` makes: AWS CloudHSM's (2048 to 4096 bits in
/// steps of 256), which also meet ANSI X9.31's rule (a multiple of 256 bits, 1024 or more).
const X931_MIN_BITS: usize = 2048;
const X931_MAX_BITS: usize = 4096;

/// Generates an RSA key pair for `CKM_RSA_X9_31_KEY_PAIR_GEN`.
///
/// X9.31's own prime generation (auxiliary primes p1, p2 of 101+ bits) was superseded by FIPS
/// 186-4 appendix B.3, which allows either construction; aws-lc implements B.3.3 (probable
/// primes), so the key is made that way and then checked as FIPS requires (see
/// [`raw::rsa_generate_checked`]). What X9.31 and CloudHSM demand of the inputs is enforced:
/// `bits` 2048..=4096 and a multiple of 256 (else `CKR_KEY_SIZE_RANGE`); the public exponent
/// (default 65537) odd and at least 65537, and at most 32 bits as aws-lc's generator allows
/// (else `CKR_TEMPLATE_INCONSISTENT`, as [`generate_rsa`] answers a bad exponent).
pub fn generate_rsa_x931(bits: usize, public_exponent: Option<&[u8]>) -> Result<RsaGenerated, Rv> {
    if !(X931_MIN_BITS..=X931_MAX_BITS).contains(&bits) || bits % 256 != 0 {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let e = strip_leading_zeros(public_exponent.unwrap_or(F4));
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    // At least 65537 = 2^16 + 1: 17 bits or more (FIPS 186-4 §B.3.1 wants e > 2^16).
    if !odd || be_bits(e) < 17 || e.len() > 4 {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let pkcs8 = raw::rsa_generate_checked(bits, e).map_err(|_| CKR_FUNCTION_FAILED)?;
    let (modulus, public_exponent) = rsa_public_components(&pkcs8)?;
    Ok(RsaGenerated {
        pkcs8,
        modulus,
        public_exponent,
    })
}

/// Builds the PKCS #8 DER of an RSA private key from its big-endian components.
///
/// `n`, `e` and `d` are required; the CRT components (`p`, `q`, `dp`, `dq`, `qinv`) may be absent
/// in a PKCS #11 template but this function does not recompute them: any missing one is
/// `CKR_TEMPLATE_INCOMPLETE`. A modulus outside 2048..=8192 bits is `CKR_KEY_SIZE_RANGE`; any
/// inconsistency aws-lc finds is `CKR_ATTRIBUTE_VALUE_INVALID`.
#[allow(clippy::too_many_arguments, clippy::many_single_char_names)]
pub fn rsa_private_from_components(
    n: &[u8],
    e: &[u8],
    d: &[u8],
    p: Option<&[u8]>,
    q: Option<&[u8]>,
    dp: Option<&[u8]>,
    dq: Option<&[u8]>,
    qinv: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let (Some(p), Some(q), Some(dp), Some(dq), Some(qinv)) = (p, q, dp, dq, qinv) else {
        return Err(CKR_TEMPLATE_INCOMPLETE);
    };
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    if !(MIN_BITS..=MAX_BITS).contains(&be_bits(n)) {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let components = KeyPairComponents {
        public_key: PublicKeyComponents { n, e },
        d,
        p,
        q,
        dP: dp,
        dQ: dq,
        qInv: qinv,
    };
    let pair = KeyPair::from_components(&components).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    let der = pair.as_der().map_err(|_| CKR_FUNCTION_FAILED)?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

/// The modulus and public exponent (big-endian, no leading zeros) of an RSA PKCS #8 private key;
/// a key aws-lc rejects is `CKR_ATTRIBUTE_VALUE_INVALID`.
pub fn rsa_public_components(pkcs8: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Rv> {
    let pair = KeyPair::from_pkcs8(pkcs8).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
    Ok(public_of(&pair))
}

/// `(n, e)` of a key pair.
fn public_of(pair: &KeyPair) -> (Vec<u8>, Vec<u8>) {
    let c = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    (c.n, c.e)
}

/// A parsed RSA private key.
pub(crate) struct RsaPrivate {
    /// The aws-lc-rs key: the fast signing path.
    pair: KeyPair,
    /// The PKCS #8 the key came from, for building `raw` (a copy kept by `LoadedKey` too).
    pkcs8: Zeroizing<Vec<u8>>,
    /// The raw aws-lc key for every other operation, parsed on first use.
    raw: OnceLock<Option<Pkey>>,
    /// Modulus length in bytes.
    k: usize,
    /// Modulus length in bits.
    bits: usize,
}

impl RsaPrivate {
    /// Parses a PKCS #8 RSA private key (2048 to 8192 bits).
    pub(crate) fn load(pkcs8: &[u8]) -> Result<Self, Rv> {
        let pair = KeyPair::from_pkcs8(pkcs8).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        let (n, _) = public_of(&pair);
        Ok(RsaPrivate {
            k: pair.public_modulus_len(),
            bits: be_bits(&n),
            pair,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
            raw: OnceLock::new(),
        })
    }

    /// The modulus bits.
    pub(crate) fn bits(&self) -> usize {
        self.bits
    }

    /// The modulus length in bytes.
    pub(crate) fn modulus_len(&self) -> usize {
        self.k
    }

    /// The raw aws-lc key, parsed once.
    fn raw(&self) -> Result<&Pkey, Rv> {
        self.raw
            .get_or_init(|| {
                Pkey::parse_private(&self.pkcs8)
                    .ok()
                    .filter(|p| p.id() == raw::PKEY_RSA)
            })
            .as_ref()
            .ok_or(CKR_GENERAL_ERROR) // the same bytes parsed as a KeyPair at load
    }
}

/// A parsed RSA public key.
pub(crate) struct RsaPublic {
    raw: Pkey,
    k: usize,
    bits: usize,
}

impl RsaPublic {
    /// Builds the key from its modulus and exponent (aws-lc checks them).
    pub(crate) fn load(n: &[u8], e: &[u8]) -> Result<Self, Rv> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let raw = Pkey::rsa_public(n, e).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?;
        let k = raw.rsa_size().ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?;
        Ok(RsaPublic {
            raw,
            k,
            bits: be_bits(n),
        })
    }

    /// The modulus bits.
    pub(crate) fn bits(&self) -> usize {
        self.bits
    }
}

/// An RSA key usable for a public-key operation.
pub(crate) enum RsaRef<'a> {
    Private(&'a RsaPrivate),
    Public(&'a RsaPublic),
}

impl RsaRef<'_> {
    /// The modulus length in bytes.
    pub(crate) fn modulus_len(&self) -> usize {
        match self {
            RsaRef::Private(k) => k.k,
            RsaRef::Public(k) => k.k,
        }
    }

    /// The modulus length in bits.
    fn bits(&self) -> usize {
        match self {
            RsaRef::Private(k) => k.bits,
            RsaRef::Public(k) => k.bits,
        }
    }

    fn raw(&self) -> Result<&Pkey, Rv> {
        match self {
            RsaRef::Private(k) => k.raw(),
            RsaRef::Public(k) => Ok(&k.raw),
        }
    }
}

/// The aws-lc-rs PKCS #1 v1.5 signing encoding for a hash, where it has one.
fn pkcs1_encoding(h: Hash) -> Option<&'static signature::RsaSignatureEncoding> {
    match h {
        Hash::Sha256 => Some(&signature::RSA_PKCS1_SHA256),
        Hash::Sha384 => Some(&signature::RSA_PKCS1_SHA384),
        Hash::Sha512 => Some(&signature::RSA_PKCS1_SHA512),
        Hash::Sha1 | Hash::Sha224 => None,
    }
}

/// The aws-lc-rs PSS signing encoding (MGF1 with the same hash, salt = digest length).
fn pss_encoding(h: Hash) -> Option<&'static signature::RsaSignatureEncoding> {
    match h {
        Hash::Sha256 => Some(&signature::RSA_PSS_SHA256),
        Hash::Sha384 => Some(&signature::RSA_PSS_SHA384),
        Hash::Sha512 => Some(&signature::RSA_PSS_SHA512),
        Hash::Sha1 | Hash::Sha224 => None,
    }
}

/// What an RSA signature mechanism signs, once parameters and input are checked.
enum Plan<'a> {
    /// PKCS #1 v1.5 over raw data (a DigestInfo or anything else up to k - 11 bytes).
    Pkcs1Raw(&'a [u8]),
    /// PKCS #1 v1.5 with a hash: the message or its digest.
    Pkcs1 { hash: Hash, msg: Msg<'a> },
    /// PSS: the message or its digest.
    Pss {
        hash: Hash,
        mgf1: Hash,
        salt_len: usize,
        msg: Msg<'a>,
    },
    /// Raw RSA over the data left-padded to k bytes.
    X509(Vec<u8>),
}

/// A message, or its digest.
enum Msg<'a> {
    Message(&'a [u8]),
    Digest(&'a [u8]),
}

impl Msg<'_> {
    /// The digest, computing it if needed.
    fn digest(&self, hash: Hash) -> Result<Digest, Rv> {
        match self {
            Msg::Message(m) => Ok(hash.digest(m)),
            // The length was checked when the plan was made: failing here is a broken invariant.
            Msg::Digest(d) => {
                Digest::import_less_safe(d, hash.alg()).map_err(|_| CKR_GENERAL_ERROR)
            }
        }
    }
}

/// Checks the mechanism, parameter and input of an RSA signature operation.
fn plan<'a>(
    mech: &Mechanism,
    key_bits: usize,
    k: usize,
    input: SignInput<'a>,
) -> Result<Plan<'a>, Rv> {
    let data = match input {
        SignInput::Message(d) | SignInput::Prehashed(d) => d,
    };
    let msg = |hash: Hash| -> Result<Msg<'a>, Rv> {
        match input {
            SignInput::Message(m) => Ok(Msg::Message(m)),
            SignInput::Prehashed(d) if d.len() == hash.len() => Ok(Msg::Digest(d)),
            SignInput::Prehashed(_) => Err(CKR_DATA_LEN_RANGE),
        }
    };
    match mech.mech {
        CKM_RSA_PKCS => {
            no_param(&mech.param)?;
            if data.len() > k.saturating_sub(11) {
                return Err(CKR_DATA_LEN_RANGE);
            }
            Ok(Plan::Pkcs1Raw(data))
        }
        CKM_RSA_X_509 => {
            no_param(&mech.param)?;
            if data.len() > k {
                return Err(CKR_DATA_LEN_RANGE);
            }
            let mut padded = vec![0u8; k - data.len()];
            padded.extend_from_slice(data);
            Ok(Plan::X509(padded))
        }
        CKM_RSA_PKCS_PSS => {
            let (hash, mgf1, salt_len) = pss_param(&mech.param, None, key_bits)?;
            if data.len() != hash.len() {
                return Err(CKR_DATA_LEN_RANGE);
            }
            Ok(Plan::Pss {
                hash,
                mgf1,
                salt_len,
                msg: Msg::Digest(data),
            })
        }
        m => {
            let hash = super::hash_of_hash_and_sign(m).ok_or(CKR_MECHANISM_INVALID)?;
            match m {
                CKM_SHA1_RSA_PKCS | CKM_SHA224_RSA_PKCS | CKM_SHA256_RSA_PKCS
                | CKM_SHA384_RSA_PKCS | CKM_SHA512_RSA_PKCS => {
                    no_param(&mech.param)?;
                    Ok(Plan::Pkcs1 {
                        hash,
                        msg: msg(hash)?,
                    })
                }
                _ => {
                    let (hash, mgf1, salt_len) = pss_param(&mech.param, Some(hash), key_bits)?;
                    Ok(Plan::Pss {
                        hash,
                        mgf1,
                        salt_len,
                        msg: msg(hash)?,
                    })
                }
            }
        }
    }
}

/// Signs with an RSA private key.
pub(crate) fn sign(
    mech: &Mechanism,
    key: &RsaPrivate,
    input: SignInput<'_>,
) -> Result<Vec<u8>, Rv> {
    let mut sig = vec![0u8; key.k];
    match plan(mech, key.bits, key.k, input)? {
        Plan::Pkcs1Raw(data) => {
            if let Some((hash, digest)) = der::split_digest_info(data) {
                if let Some(enc) = pkcs1_encoding(hash) {
                    let d = Digest::import_less_safe(digest, hash.alg())
                        .map_err(|_| CKR_GENERAL_ERROR)?;
                    key.pair
                        .sign_digest(enc, &d, &mut sig)
                        .map_err(|_| CKR_FUNCTION_FAILED)?;
                    return Ok(sig);
                }
            }
            key.raw()?
                .rsa_sign(RsaPad::Pkcs1(None), data)
                .map_err(|_| CKR_FUNCTION_FAILED)
        }
        Plan::Pkcs1 { hash, msg } => match (pkcs1_encoding(hash), msg) {
            (Some(enc), Msg::Message(m)) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                key.pair
                    .sign(enc, &rng, m, &mut sig)
                    .map_err(|_| CKR_FUNCTION_FAILED)?;
                Ok(sig)
            }
            (Some(enc), msg) => {
                key.pair
                    .sign_digest(enc, &msg.digest(hash)?, &mut sig)
                    .map_err(|_| CKR_FUNCTION_FAILED)?;
                Ok(sig)
            }
            (None, msg) => {
                let d = msg.digest(hash)?;
                key.raw()?
                    .rsa_sign(RsaPad::Pkcs1(Some(hash)), d.as_ref())
                    .map_err(|_| CKR_FUNCTION_FAILED)
            }
        },
        Plan::Pss {
            hash,
            mgf1,
            salt_len,
            msg,
        } => {
            let standard = mgf1 == hash && salt_len == hash.len();
            match (pss_encoding(hash).filter(|_| standard), msg) {
                (Some(enc), Msg::Message(m)) => {
                    let rng = aws_lc_rs::rand::SystemRandom::new();
                    key.pair
                        .sign(enc, &rng, m, &mut sig)
                        .map_err(|_| CKR_FUNCTION_FAILED)?;
                    Ok(sig)
                }
                (Some(enc), msg) => {
                    key.pair
                        .sign_digest(enc, &msg.digest(hash)?, &mut sig)
                        .map_err(|_| CKR_FUNCTION_FAILED)?;
                    Ok(sig)
                }
                (None, msg) => {
                    let d = msg.digest(hash)?;
                    let pad = RsaPad::Pss {
                        hash,
                        mgf1,
                        salt_len,
                    };
                    key.raw()?
                        .rsa_sign(pad, d.as_ref())
                        .map_err(|_| CKR_FUNCTION_FAILED)
                }
            }
        }
        // The only failure left is an input not below the modulus.
        Plan::X509(data) => key
            .raw()?
            .rsa_sign(RsaPad::None, &data)
            .map_err(|_| CKR_DATA_INVALID),
    }
}

/// Verifies an RSA signature with a public (or private) key.
pub(crate) fn verify(
    mech: &Mechanism,
    key: RsaRef<'_>,
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    let k = key.modulus_len();
    let plan = plan(mech, key.bits(), k, input)?;
    if signature.len() != k {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    let raw = key.raw()?;
    let ok = match plan {
        Plan::Pkcs1Raw(data) => raw.rsa_verify(RsaPad::Pkcs1(None), data, signature),
        Plan::Pkcs1 { hash, msg } => raw.rsa_verify(
            RsaPad::Pkcs1(Some(hash)),
            msg.digest(hash)?.as_ref(),
            signature,
        ),
        Plan::Pss {
            hash,
            mgf1,
            salt_len,
            msg,
        } => raw.rsa_verify(
            RsaPad::Pss {
                hash,
                mgf1,
                salt_len,
            },
            msg.digest(hash)?.as_ref(),
            signature,
        ),
        Plan::X509(data) => raw.rsa_verify(RsaPad::None, &data, signature),
    };
    match ok {
        Ok(true) => Ok(()),
        Ok(false) => Err(CKR_SIGNATURE_INVALID),
        Err(_) => Err(CKR_FUNCTION_FAILED),
    }
}

/// Encrypts with an RSA public (or private) key.
pub(crate) fn encrypt(mech: &Mechanism, key: RsaRef<'_>, data: &[u8]) -> Result<Vec<u8>, Rv> {
    let k = key.modulus_len();
    match mech.mech {
        CKM_RSA_PKCS => {
            no_param(&mech.param)?;
            if data.len() > k.saturating_sub(11) {
                return Err(CKR_DATA_LEN_RANGE);
            }
            key.raw()?
                .rsa_encrypt(RsaPad::Pkcs1(None), data)
                .map_err(|_| CKR_FUNCTION_FAILED)
        }
        CKM_RSA_PKCS_OAEP => {
            let (hash, mgf1, label) = oaep_param(&mech.param)?;
            if data.len() > k.saturating_sub(2 * hash.len() + 2) {
                return Err(CKR_DATA_LEN_RANGE);
            }
            let pad = RsaPad::Oaep { hash, mgf1, label };
            key.raw()?
                .rsa_encrypt(pad, data)
                .map_err(|_| CKR_FUNCTION_FAILED)
        }
        CKM_RSA_X_509 => {
            no_param(&mech.param)?;
            if data.len() > k {
                return Err(CKR_DATA_LEN_RANGE);
            }
            let mut padded = vec![0u8; k - data.len()];
            padded.extend_from_slice(data);
            key.raw()?
                .rsa_encrypt(RsaPad::None, &padded)
                .map_err(|_| CKR_DATA_INVALID)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// Decrypts with an RSA private key. Every failure on a ciphertext of the right length is
/// `CKR_ENCRYPTED_DATA_INVALID`, whatever the cause, so the error says nothing about padding.
pub(crate) fn decrypt(
    mech: &Mechanism,
    key: &RsaPrivate,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let pad = match mech.mech {
        CKM_RSA_PKCS => {
            no_param(&mech.param)?;
            RsaPad::Pkcs1(None)
        }
        CKM_RSA_PKCS_OAEP => {
            let (hash, mgf1, label) = oaep_param(&mech.param)?;
            RsaPad::Oaep { hash, mgf1, label }
        }
        CKM_RSA_X_509 => {
            no_param(&mech.param)?;
            RsaPad::None
        }
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    if data.len() != key.k {
        return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
    }
    key.raw()?
        .rsa_decrypt(pad, data)
        .map_err(|_| CKR_ENCRYPTED_DATA_INVALID)
}
