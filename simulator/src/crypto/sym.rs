//! Secret-key mechanisms: HMAC (and its `_GENERAL` truncated forms), AES-CMAC (and
//! `CKM_AES_CMAC_GENERAL`) and AES (GCM, CBC with PKCS #7 padding, CBC, ECB, CTR).
//!
//! AES-GCM with a 12-byte IV and a 16-byte tag runs on `aws_lc_rs::aead`; other IV and tag
//! lengths use aws-lc's EVP_AEAD through [`raw`]. AWS CloudHSM's `CKM_CLOUDHSM_AES_GCM` is
//! AES-GCM with an IV this HSM makes, carried in front of the ciphertext.

use std::sync::OnceLock;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext, PaddedBlockDecryptingKey,
    PaddedBlockEncryptingKey, UnboundCipherKey, AES_128, AES_192, AES_256,
};
use aws_lc_rs::{cmac, constant_time, hmac};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use hsmpool_member::mechanism::encrypt_output_len;

use super::{no_param, raw, Hash};
use crate::types::cloudhsm::{CKM_CLOUDHSM_AES_GCM, GCM_IV_LEN};
use crate::types::{MechParam, Mechanism, Rv, SignInput};

/// The AES block length.
const BLOCK: usize = 16;

/// A parsed secret key: HMAC keys (with their precomputed pads) built on first use per hash.
/// The contexts are boxed: inline, their empty slots made every key in a store some 6 KiB.
pub(crate) struct SecretKey {
    /// One slot per [`Hash::ALL`] entry.
    hmac: [OnceLock<Box<hmac::Key>>; 5],
    /// The AES-GCM key (key schedule and GHASH tables), built once; `None` for a value that is
    /// not an AES key length.
    gcm: OnceLock<Option<Box<LessSafeKey>>>,
    /// The same key for sealing into a caller's buffer ([`aes_gcm_seal_into`]).
    gcm_sealer: OnceLock<Option<raw::GcmSealer>>,
    /// The AES-CMAC key (subkeys derived), built once; `None` for a value that is not an AES
    /// key length.
    cmac: OnceLock<Option<Box<cmac::Key>>>,
}

/// An AES-CMAC key for a 16, 24 or 32 byte AES key value (else `CKR_KEY_SIZE_RANGE`).
pub(crate) fn aes_cmac_key(value: &[u8]) -> Result<cmac::Key, Rv> {
    let alg = match value.len() {
        16 => cmac::AES_128,
        24 => cmac::AES_192,
        32 => cmac::AES_256,
        _ => return Err(CKR_KEY_SIZE_RANGE),
    };
    cmac::Key::new(alg, value).map_err(|_| CKR_KEY_SIZE_RANGE)
}

impl SecretKey {
    /// A secret key of `_len` bytes (the value stays in the key material).
    pub(crate) fn new(_len: usize) -> Self {
        SecretKey {
            hmac: Default::default(),
            gcm: OnceLock::new(),
            gcm_sealer: OnceLock::new(),
            cmac: OnceLock::new(),
        }
    }

    /// The AES-CMAC key, built once.
    fn cmac_key(&self, value: &[u8]) -> Result<&cmac::Key, Rv> {
        self.cmac
            .get_or_init(|| aes_cmac_key(value).ok().map(Box::new))
            .as_deref()
            .ok_or(CKR_KEY_SIZE_RANGE)
    }

    /// The AES-GCM sealer of [`aes_gcm_seal_into`], built once.
    fn gcm_sealer(&self, value: &[u8]) -> Result<&raw::GcmSealer, Rv> {
        self.gcm_sealer
            .get_or_init(|| raw::GcmSealer::new(value).ok())
            .as_ref()
            .ok_or(CKR_KEY_SIZE_RANGE)
    }

    /// The AES-GCM key, built once (per-operation key setup costs more than sealing 4 KiB).
    fn gcm_key(&self, value: &[u8]) -> Result<&LessSafeKey, Rv> {
        self.gcm
            .get_or_init(|| gcm_key(value).ok().map(Box::new))
            .as_deref()
            .ok_or(CKR_KEY_SIZE_RANGE)
    }

    /// The HMAC key for `hash`, built once.
    fn hmac_key(&self, hash: Hash, value: &[u8]) -> &hmac::Key {
        let i = Hash::ALL.iter().position(|h| *h == hash).unwrap_or(0);
        self.hmac[i].get_or_init(|| Box::new(hmac::Key::new(hmac_alg(hash), value)))
    }
}

/// The aws-lc-rs HMAC algorithm of a hash.
pub(crate) fn hmac_alg(hash: Hash) -> hmac::Algorithm {
    match hash {
        Hash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha224 => hmac::HMAC_SHA224,
        Hash::Sha256 => hmac::HMAC_SHA256,
        Hash::Sha384 => hmac::HMAC_SHA384,
        Hash::Sha512 => hmac::HMAC_SHA512,
    }
}

/// An HMAC mechanism's hash and MAC length, from the mechanism and its parameter.
fn hmac_params(mech: &Mechanism) -> Result<(Hash, usize), Rv> {
    let (hash, general) = match mech.mech {
        CKM_SHA_1_HMAC => (Hash::Sha1, false),
        CKM_SHA224_HMAC => (Hash::Sha224, false),
        CKM_SHA256_HMAC => (Hash::Sha256, false),
        CKM_SHA384_HMAC => (Hash::Sha384, false),
        CKM_SHA512_HMAC => (Hash::Sha512, false),
        CKM_SHA_1_HMAC_GENERAL => (Hash::Sha1, true),
        CKM_SHA224_HMAC_GENERAL => (Hash::Sha224, true),
        CKM_SHA256_HMAC_GENERAL => (Hash::Sha256, true),
        CKM_SHA384_HMAC_GENERAL => (Hash::Sha384, true),
        CKM_SHA512_HMAC_GENERAL => (Hash::Sha512, true),
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    if !general {
        no_param(&mech.param)?;
        return Ok((hash, hash.len()));
    }
    match mech.param {
        MechParam::Ulong(n) => match usize::try_from(n) {
            Ok(n) if (1..=hash.len()).contains(&n) => Ok((hash, n)),
            _ => Err(CKR_MECHANISM_PARAM_INVALID),
        },
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// The MAC length of an HMAC mechanism.
pub(crate) fn hmac_len(mech: &Mechanism) -> Result<usize, Rv> {
    hmac_params(mech).map(|(_, n)| n)
}

/// The full MAC of a message (HMAC has no prehashed form: `CKR_MECHANISM_INVALID`).
fn mac(key: &SecretKey, value: &[u8], hash: Hash, input: SignInput<'_>) -> Result<hmac::Tag, Rv> {
    match input {
        SignInput::Message(m) => Ok(hmac::sign(key.hmac_key(hash, value), m)),
        SignInput::Prehashed(_) => Err(CKR_MECHANISM_INVALID),
    }
}

/// HMAC sign: the MAC, truncated for a `_GENERAL` mechanism.
pub(crate) fn hmac_sign(
    mech: &Mechanism,
    key: &SecretKey,
    value: &[u8],
    input: SignInput<'_>,
) -> Result<Vec<u8>, Rv> {
    let (hash, n) = hmac_params(mech)?;
    let tag = mac(key, value, hash, input)?;
    Ok(tag.as_ref()[..n].to_vec())
}

/// HMAC verify, in constant time with respect to the MAC's contents.
pub(crate) fn hmac_verify(
    mech: &Mechanism,
    key: &SecretKey,
    value: &[u8],
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    let (hash, n) = hmac_params(mech)?;
    let tag = mac(key, value, hash, input)?;
    if signature.len() != n {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    constant_time::verify_slices_are_equal(&tag.as_ref()[..n], signature)
        .map_err(|_| CKR_SIGNATURE_INVALID)
}

/// The MAC length of `CKM_AES_CMAC` (16) or `CKM_AES_CMAC_GENERAL` (its `CK_ULONG` parameter,
/// 1..=16).
pub(crate) fn cmac_len(mech: &Mechanism) -> Result<usize, Rv> {
    match mech.mech {
        CKM_AES_CMAC => {
            no_param(&mech.param)?;
            Ok(BLOCK)
        }
        CKM_AES_CMAC_GENERAL => match mech.param {
            MechParam::Ulong(n) => match usize::try_from(n) {
                Ok(n) if (1..=BLOCK).contains(&n) => Ok(n),
                _ => Err(CKR_MECHANISM_PARAM_INVALID),
            },
            _ => Err(CKR_MECHANISM_PARAM_INVALID),
        },
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The full AES-CMAC of a message (no prehashed form: `CKR_MECHANISM_INVALID`).
fn cmac_tag(
    key: &SecretKey,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    input: SignInput<'_>,
) -> Result<cmac::Tag, Rv> {
    aes_key(key_type, value)?;
    match input {
        SignInput::Message(m) => {
            cmac::sign(key.cmac_key(value)?, m).map_err(|_| CKR_FUNCTION_FAILED)
        }
        SignInput::Prehashed(_) => Err(CKR_MECHANISM_INVALID),
    }
}

/// AES-CMAC sign (NIST SP 800-38B), truncated for `CKM_AES_CMAC_GENERAL`.
pub(crate) fn cmac_sign(
    mech: &Mechanism,
    key: &SecretKey,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    input: SignInput<'_>,
) -> Result<Vec<u8>, Rv> {
    let n = cmac_len(mech)?;
    let tag = cmac_tag(key, key_type, value, input)?;
    tag.as_ref()
        .get(..n)
        .map(<[u8]>::to_vec)
        .ok_or(CKR_GENERAL_ERROR)
}

/// AES-CMAC verify, in constant time with respect to the MAC's contents.
pub(crate) fn cmac_verify(
    mech: &Mechanism,
    key: &SecretKey,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    input: SignInput<'_>,
    signature: &[u8],
) -> Result<(), Rv> {
    let n = cmac_len(mech)?;
    let tag = cmac_tag(key, key_type, value, input)?;
    if signature.len() != n {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    let expected = tag.as_ref().get(..n).ok_or(CKR_GENERAL_ERROR)?;
    constant_time::verify_slices_are_equal(expected, signature).map_err(|_| CKR_SIGNATURE_INVALID)
}

/// `CK_AES_CTR_PARAMS` from its raw x86_64 bytes (`ulCounterBits` u64 LE, then the 16-byte
/// counter block): `(counter bits 1..=128, block)`, else `CKR_MECHANISM_PARAM_INVALID`.
fn ctr_params(param: &MechParam) -> Result<(u32, [u8; BLOCK]), Rv> {
    let MechParam::Raw(r) = param else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    if r.len() != 8 + BLOCK {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let (bits, cb) = r.split_at(8);
    let bits = u64::from_le_bytes(bits.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)?);
    let cb: [u8; BLOCK] = cb.try_into().map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
    match u32::try_from(bits) {
        Ok(b) if (1..=128).contains(&b) => Ok((b, cb)),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// Whether `len` bytes of CTR keystream fit in the counter without wrapping: the low
/// `bits` bits of the block count up from their initial value, once per block.
fn ctr_fits(bits: u32, cb: &[u8; BLOCK], len: usize) -> bool {
    let blocks = len.div_ceil(BLOCK) as u128; // usize fits in u128
    if blocks == 0 {
        return true;
    }
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let counter = u128::from_be_bytes(*cb) & mask;
    blocks - 1 <= mask - counter
}

/// AES-CTR over `data` (encryption and decryption are the same), after the parameter, key and
/// counter-wrap checks; `len_err` is the `CK_RV` of data that would wrap the counter.
fn aes_ctr(
    mech: &Mechanism,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    data: &[u8],
    len_err: Rv,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let (bits, cb) = ctr_params(&mech.param)?;
    aes_key(key_type, value)?;
    if !ctr_fits(bits, &cb, data.len()) {
        return Err(len_err);
    }
    let mut buf = Zeroizing::new(data.to_vec());
    if !buf.is_empty() {
        // With no wrap of the low `bits` bits, aws-lc's 128-bit increment gives the same stream.
        let k = EncryptingKey::ctr(cipher_key(value)?).map_err(|_| CKR_FUNCTION_FAILED)?;
        k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(cb.into()))
            .map_err(|_| CKR_FUNCTION_FAILED)?;
    }
    Ok(buf)
}

/// Checks that the key is an AES key of a valid length.
fn aes_key(key_type: CK_KEY_TYPE, value: &[u8]) -> Result<(), Rv> {
    if key_type != CKK_AES {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    match value.len() {
        16 | 24 | 32 => Ok(()),
        _ => Err(CKR_KEY_SIZE_RANGE),
    }
}

/// An aws-lc-rs cipher key.
fn cipher_key(value: &[u8]) -> Result<UnboundCipherKey, Rv> {
    let alg = match value.len() {
        16 => &AES_128,
        24 => &AES_192,
        _ => &AES_256,
    };
    UnboundCipherKey::new(alg, value).map_err(|_| CKR_KEY_SIZE_RANGE)
}

/// A 16-byte CBC IV from the parameter.
fn cbc_iv(param: &MechParam) -> Result<[u8; BLOCK], Rv> {
    match param {
        MechParam::Iv(iv) => iv
            .as_slice()
            .try_into()
            .map_err(|_| CKR_MECHANISM_PARAM_INVALID),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// `CK_GCM_PARAMS` checked: (IV, AAD, tag length in bytes). IV 1..=1024 bytes; tag 32, 64 or
/// 96..=128 bits in steps of 8 (NIST SP 800-38D).
fn gcm_params(param: &MechParam) -> Result<(&[u8], &[u8], usize), Rv> {
    let MechParam::Gcm { iv, aad, tag_bits } = param else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    if iv.is_empty() || iv.len() > 1024 {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let tag_len = match *tag_bits {
        32 | 64 | 96 | 104 | 112 | 120 | 128 => {
            usize::try_from(*tag_bits / 8).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?
        }
        _ => return Err(CKR_MECHANISM_PARAM_INVALID),
    };
    Ok((iv, aad, tag_len))
}

/// The tag length of a `CKM_CLOUDHSM_AES_GCM` parameter, checked as [`gcm_params`] checks a
/// standard one (a placeholder IV stands in for the one the HSM makes).
fn cloudhsm_gcm_tag_len(param: &MechParam) -> Result<usize, Rv> {
    Ok(gcm_params(&cloudhsm_gcm(param, &[0; GCM_IV_LEN])?.param)?.2)
}

/// `CKM_CLOUDHSM_AES_GCM`'s parameter: a `CK_GCM_PARAMS` without IV (the CloudHSM PKCS #11
/// mechanism notes: "the pIV variable in the CK_GCM_PARAMS struct must be set to NULL"). Returns
/// the standard `CKM_AES_GCM` mechanism with `iv` and the caller's AAD and tag length.
fn cloudhsm_gcm(param: &MechParam, iv: &[u8]) -> Result<Mechanism, Rv> {
    match param {
        MechParam::Gcm {
            iv: given,
            aad,
            tag_bits,
        } if given.is_empty() => Ok(Mechanism {
            mech: CKM_AES_GCM,
            param: MechParam::Gcm {
                iv: iv.to_vec(),
                aad: aad.clone(),
                tag_bits: *tag_bits,
            },
        }),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// The aws-lc-rs AES-GCM key for the standard case.
fn gcm_key(value: &[u8]) -> Result<LessSafeKey, Rv> {
    let alg = match value.len() {
        16 => &aead::AES_128_GCM,
        24 => &aead::AES_192_GCM,
        _ => &aead::AES_256_GCM,
    };
    Ok(LessSafeKey::new(
        UnboundKey::new(alg, value).map_err(|_| CKR_KEY_SIZE_RANGE)?,
    ))
}

/// The standard AES-GCM case (12-byte IV, 16-byte tag) sealed from the input straight into
/// `out`, with no copy of the input and no allocation: `Some(length written)`. `None` for any
/// other mechanism or parameters, which [`super::encrypt_into`] encrypts and copies.
pub(crate) fn aes_gcm_seal_into(
    sk: &SecretKey,
    mech: &Mechanism,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    data: &[u8],
    out: &mut [u8],
) -> Result<Option<usize>, Rv> {
    if mech.mech != CKM_AES_GCM {
        return Ok(None);
    }
    let (iv, aad, tag_len) = gcm_params(&mech.param)?;
    if iv.len() != 12 || tag_len != 16 {
        return Ok(None);
    }
    aes_key(key_type, value)?;
    if out.len() < data.len().saturating_add(tag_len) {
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    sk.gcm_sealer(value)?
        .seal_into(iv, aad, data, out)
        .map(Some)
        .map_err(|_| CKR_DATA_LEN_RANGE)
}

/// AES encryption.
pub(crate) fn aes_encrypt(
    sk: &SecretKey,
    mech: &Mechanism,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, Rv> {
    // Check the mechanism and its parameter before the key, as the spec orders the errors.
    match mech.mech {
        CKM_CLOUDHSM_AES_GCM => {
            // The HSM makes the IV (a fresh random 96-bit IV per call, SP 800-38D §8.2.2) and
            // hands it back as the first 12 bytes of the output: IV || ciphertext || tag.
            let mut iv = [0u8; GCM_IV_LEN];
            aws_lc_rs::rand::fill(&mut iv).map_err(|_| CKR_FUNCTION_FAILED)?;
            let inner = cloudhsm_gcm(&mech.param, &iv)?;
            let ct = aes_encrypt(sk, &inner, key_type, value, data)?;
            let mut out = Vec::with_capacity(GCM_IV_LEN + ct.len());
            out.extend_from_slice(&iv);
            out.extend_from_slice(&ct);
            Ok(out)
        }
        CKM_AES_GCM => {
            let (iv, aad, tag_len) = gcm_params(&mech.param)?;
            aes_key(key_type, value)?;
            if iv.len() == 12 && tag_len == 16 {
                let nonce = Nonce::try_assume_unique_for_key(iv)
                    .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
                // Room for the tag up front: appending it must not reallocate and copy.
                let mut buf = Vec::with_capacity(data.len() + aead::MAX_TAG_LEN);
                buf.extend_from_slice(data);
                sk.gcm_key(value)?
                    .seal_in_place_append_tag(nonce, Aad::from(aad), &mut buf)
                    .map_err(|_| CKR_DATA_LEN_RANGE)?;
                return Ok(buf);
            }
            raw::aes_gcm_seal(value, iv, aad, tag_len, data).map_err(|_| CKR_FUNCTION_FAILED)
        }
        CKM_AES_CTR => {
            // The buffer holds ciphertext now: moving it out unzeroized is fine.
            let mut ct = aes_ctr(mech, key_type, value, data, CKR_DATA_LEN_RANGE)?;
            Ok(std::mem::take(&mut *ct))
        }
        CKM_AES_CBC_PAD => {
            let iv = cbc_iv(&mech.param)?;
            aes_key(key_type, value)?;
            let k = PaddedBlockEncryptingKey::cbc_pkcs7(cipher_key(value)?)
                .map_err(|_| CKR_FUNCTION_FAILED)?;
            let mut buf = data.to_vec();
            k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(iv.into()))
                .map_err(|_| CKR_FUNCTION_FAILED)?;
            Ok(buf)
        }
        CKM_AES_CBC | CKM_AES_ECB => {
            let ctx = if mech.mech == CKM_AES_CBC {
                EncryptionContext::Iv128(cbc_iv(&mech.param)?.into())
            } else {
                no_param(&mech.param)?;
                EncryptionContext::None
            };
            aes_key(key_type, value)?;
            if data.len() % BLOCK != 0 {
                return Err(CKR_DATA_LEN_RANGE);
            }
            let ck = cipher_key(value)?;
            let k = if mech.mech == CKM_AES_CBC {
                EncryptingKey::cbc(ck)
            } else {
                EncryptingKey::ecb(ck)
            }
            .map_err(|_| CKR_FUNCTION_FAILED)?;
            let mut buf = data.to_vec();
            if !buf.is_empty() {
                k.less_safe_encrypt(&mut buf, ctx)
                    .map_err(|_| CKR_FUNCTION_FAILED)?;
            }
            Ok(buf)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// AES decryption. A wrong length is `CKR_ENCRYPTED_DATA_LEN_RANGE`; a bad tag or bad padding is
/// `CKR_ENCRYPTED_DATA_INVALID`.
pub(crate) fn aes_decrypt(
    sk: &SecretKey,
    mech: &Mechanism,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    match mech.mech {
        CKM_CLOUDHSM_AES_GCM => {
            // The input is what encryption gave: IV || ciphertext || tag.
            let tag_len = cloudhsm_gcm_tag_len(&mech.param)?;
            if data.len() < GCM_IV_LEN + tag_len {
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            let (iv, rest) = data.split_at(GCM_IV_LEN);
            aes_decrypt(sk, &cloudhsm_gcm(&mech.param, iv)?, key_type, value, rest)
        }
        CKM_AES_GCM => {
            let (iv, aad, tag_len) = gcm_params(&mech.param)?;
            aes_key(key_type, value)?;
            if data.len() < tag_len {
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            if iv.len() == 12 && tag_len == 16 {
                let nonce = Nonce::try_assume_unique_for_key(iv)
                    .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
                let mut buf = Zeroizing::new(data.to_vec());
                let n = sk
                    .gcm_key(value)?
                    .open_in_place(nonce, Aad::from(aad), &mut buf)
                    .map_err(|_| CKR_ENCRYPTED_DATA_INVALID)?
                    .len();
                buf.truncate(n);
                return Ok(buf);
            }
            raw::aes_gcm_open(value, iv, aad, tag_len, data).map_err(|_| CKR_ENCRYPTED_DATA_INVALID)
        }
        CKM_AES_CTR => aes_ctr(mech, key_type, value, data, CKR_ENCRYPTED_DATA_LEN_RANGE),
        CKM_AES_CBC_PAD => {
            let iv = cbc_iv(&mech.param)?;
            aes_key(key_type, value)?;
            if data.is_empty() || data.len() % BLOCK != 0 {
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            let k = PaddedBlockDecryptingKey::cbc_pkcs7(cipher_key(value)?)
                .map_err(|_| CKR_FUNCTION_FAILED)?;
            let mut buf = Zeroizing::new(data.to_vec());
            let n = k
                .decrypt(&mut buf, DecryptionContext::Iv128(iv.into()))
                .map_err(|_| CKR_ENCRYPTED_DATA_INVALID)?
                .len();
            buf.truncate(n);
            Ok(buf)
        }
        CKM_AES_CBC | CKM_AES_ECB => {
            let ctx = if mech.mech == CKM_AES_CBC {
                DecryptionContext::Iv128(cbc_iv(&mech.param)?.into())
            } else {
                no_param(&mech.param)?;
                DecryptionContext::None
            };
            aes_key(key_type, value)?;
            if data.len() % BLOCK != 0 {
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            let ck = cipher_key(value)?;
            let k = if mech.mech == CKM_AES_CBC {
                DecryptingKey::cbc(ck)
            } else {
                DecryptingKey::ecb(ck)
            }
            .map_err(|_| CKR_FUNCTION_FAILED)?;
            let mut buf = Zeroizing::new(data.to_vec());
            if !buf.is_empty() {
                k.decrypt(&mut buf, ctx).map_err(|_| CKR_FUNCTION_FAILED)?;
            }
            Ok(buf)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The exact output length of AES encryption of `data_len` bytes.
pub(crate) fn aes_encrypt_len(mech: &Mechanism, data_len: usize) -> Result<usize, Rv> {
    // The parameter is checked as encryption will check it; the length is the contract's rule.
    match mech.mech {
        CKM_CLOUDHSM_AES_GCM => {
            cloudhsm_gcm_tag_len(&mech.param)?;
        }
        CKM_AES_GCM => {
            gcm_params(&mech.param)?;
        }
        CKM_AES_CTR => ctr_params(&mech.param).map(|_| ())?,
        _ => {}
    }
    encrypt_output_len(mech, data_len).ok_or(CKR_MECHANISM_INVALID)
}

/// An upper bound on the output length of AES decryption of `data_len` bytes.
pub(crate) fn aes_decrypt_len(mech: &Mechanism, data_len: usize) -> Result<usize, Rv> {
    match mech.mech {
        CKM_CLOUDHSM_AES_GCM => {
            let tag_len = cloudhsm_gcm_tag_len(&mech.param)?;
            Ok(data_len.saturating_sub(GCM_IV_LEN + tag_len))
        }
        CKM_AES_GCM => Ok(data_len.saturating_sub(gcm_params(&mech.param)?.2)),
        CKM_AES_CBC_PAD | CKM_AES_CBC | CKM_AES_ECB => Ok(data_len),
        CKM_AES_CTR => {
            ctr_params(&mech.param)?;
            Ok(data_len)
        }
        _ => Err(CKR_MECHANISM_INVALID),
    }
}
