//! Key derivation: ECDH (`CKM_ECDH1_DERIVE` with `CKD_NULL` or the ANSI X9.63 KDF over SHA-1 or
//! SHA-2), HKDF (`CKM_HKDF_DERIVE`, RFC 5869) and AWS CloudHSM's NIST SP 800-108 counter-mode
//! KDF (`CKM_CLOUDHSM_SP800_108_COUNTER_KDF`).

use aws_lc_rs::{cmac, digest, hmac};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{sym, Hash, HashAlg, LoadedKey, Parsed};
use crate::types::cloudhsm::{
    SP800_108_DKM_LENGTH_SUM_OF_KEYS, SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS,
};
use crate::types::{KdfSegment, Rv};

/// The most bytes a KDF here derives (a key value is at most 1024 bytes elsewhere in the
/// simulator; this is a generous bound that keeps allocation sane).
const MAX_DERIVED: usize = 65536;

/// ECDH key derivation (`CKM_ECDH1_DERIVE`, cofactor 1 on the curves here).
///
/// `peer_point` is the other party's public point: uncompressed or compressed, raw or wrapped in
/// a DER OCTET STRING (as `CKA_EC_POINT`); it must lie on the private key's curve. `kdf` is
/// `CKD_NULL` (the shared secret `Z`, the x-coordinate of the shared point, truncated to its
/// leftmost `out_len` bytes; `out_len` 0 means all of it; `shared_data` must be empty) or
/// `CKD_SHA1_KDF`, `CKD_SHA224_KDF` .. `CKD_SHA512_KDF` (ANSI X9.63: `Hash(Z || counter ||
/// shared_data)` blocks, counter a 32-bit big-endian from 1; `out_len` 1..=65536).
///
/// Errors: `CKR_KEY_TYPE_INCONSISTENT` (not an EC private key), `CKR_MECHANISM_PARAM_INVALID`
/// (unknown KDF, shared data with `CKD_NULL`, a malformed point or one not on the curve),
/// `CKR_TEMPLATE_INCONSISTENT` (`CKD_NULL` with `out_len` above the field size, a KDF with
/// `out_len` 0 or too large).
pub fn ecdh_derive(
    private: &LoadedKey,
    peer_point: &[u8],
    kdf: CK_ULONG,
    shared_data: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let Parsed::EcPrivate(key) = &private.parsed else {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    };
    let hash = match kdf {
        CKD_NULL => None,
        CKD_SHA1_KDF => Some(Hash::Sha1),
        CKD_SHA224_KDF => Some(Hash::Sha224),
        CKD_SHA256_KDF => Some(Hash::Sha256),
        CKD_SHA384_KDF => Some(Hash::Sha384),
        CKD_SHA512_KDF => Some(Hash::Sha512),
        _ => return Err(CKR_MECHANISM_PARAM_INVALID),
    };
    if hash.is_none() && !shared_data.is_empty() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    match hash {
        None if out_len > key.curve().field_bytes() => return Err(CKR_TEMPLATE_INCONSISTENT),
        Some(_) if out_len == 0 || out_len > MAX_DERIVED => return Err(CKR_TEMPLATE_INCONSISTENT),
        _ => {}
    }
    let fb = key.curve().field_bytes();
    let raw_form = match (peer_point.first(), peer_point.len()) {
        (Some(4), n) if n == 1 + 2 * fb => true,
        (Some(2 | 3), n) if n == 1 + fb => true,
        _ => false,
    };
    let point = if raw_form {
        peer_point
    } else {
        super::der::parse_octet_string(peer_point).ok_or(CKR_MECHANISM_PARAM_INVALID)?
    };
    let z = key.ecdh(point)?;
    let Some(hash) = hash else {
        let mut z = z;
        if out_len != 0 {
            z.truncate(out_len);
        }
        return Ok(z);
    };
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + hash.len()));
    let mut counter: u32 = 1;
    while out.len() < out_len {
        let mut ctx = digest::Context::new(hash.alg());
        ctx.update(&z);
        ctx.update(&counter.to_be_bytes());
        ctx.update(shared_data);
        out.extend_from_slice(ctx.finish().as_ref());
        counter = counter.wrapping_add(1);
    }
    out.truncate(out_len);
    Ok(out)
}

/// HKDF (`CKM_HKDF_DERIVE`, PKCS #11 3.0 semantics) with HMAC over `prf_hash` (`CKM_SHA_1`,
/// `CKM_SHA224` .. `CKM_SHA512`).
///
/// - `extract` and `expand`: RFC 5869 extract (`PRK = HMAC(salt, ikm)`; an empty salt is the
///   all-zero salt, which is what `CKF_HKDF_SALT_NULL` asks for) then expand to `out_len` bytes
///   (1..=255 * hash length).
/// - `extract` only: the PRK itself; `out_len` must be the hash length (or 0, meaning it).
/// - `expand` only: `ikm` is the PRK; expand to `out_len` bytes.
///
/// Errors: `CKR_MECHANISM_PARAM_INVALID` (unknown hash, neither extract nor expand),
/// `CKR_TEMPLATE_INCONSISTENT` (an `out_len` the mode cannot produce).
pub fn hkdf(
    prf_hash: CK_MECHANISM_TYPE,
    extract: bool,
    expand: bool,
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let hash = Hash::from_ckm(prf_hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if !extract && !expand {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    let alg = sym::hmac_alg(hash);
    let prk = if extract {
        let tag = hmac::sign(&hmac::Key::new(alg, salt), ikm);
        Zeroizing::new(tag.as_ref().to_vec())
    } else {
        Zeroizing::new(ikm.to_vec())
    };
    if !expand {
        if out_len != 0 && out_len != hash.len() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        return Ok(prk);
    }
    if out_len == 0 || out_len > 255 * hash.len() {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let key = hmac::Key::new(alg, &prk);
    let mut out = Zeroizing::new(Vec::with_capacity(out_len + hash.len()));
    let mut t: Option<hmac::Tag> = None;
    let mut i: u8 = 1;
    while out.len() < out_len {
        let mut ctx = hmac::Context::with_key(&key);
        if let Some(prev) = &t {
            ctx.update(prev.as_ref());
        }
        ctx.update(info);
        ctx.update(&[i]);
        let tag = ctx.sign();
        out.extend_from_slice(tag.as_ref());
        t = Some(tag);
        i = i.wrapping_add(1);
    }
    out.truncate(out_len);
    Ok(out)
}

/// The PRF of an SP 800-108 KDF, keyed (boxed: an HMAC key with its pads is over 1 KiB).
enum Prf {
    Hmac(Box<hmac::Key>, usize),
    Cmac(Box<cmac::Key>),
}

impl Prf {
    /// The PRF's output length `h` in bytes.
    fn len(&self) -> usize {
        match self {
            Prf::Hmac(_, n) => *n,
            // SP 800-38B: a full CMAC is one AES block.
            Prf::Cmac(_) => 16,
        }
    }
}

/// Writes `v` big-endian in `width_bits` bits (a multiple of 8, at most 64); `Err` if `v` does
/// not fit.
fn put_be(out: &mut Vec<u8>, v: u64, width_bits: CK_ULONG) -> Result<(), Rv> {
    let bytes = usize::try_from(width_bits / 8).map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
    if bytes < 8 && v >> (bytes * 8) != 0 {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    out.extend_from_slice(&v.to_be_bytes()[8 - bytes..]);
    Ok(())
}

/// NIST SP 800-108r1 §4.1 KDF in counter mode, as AWS CloudHSM offers it
/// (`CKM_CLOUDHSM_SP800_108_COUNTER_KDF`, Client SDK 5): `K(i) = PRF(KI, fixed input with the
/// counter i and L in place)` for i = 1..=n, n = ceil(out_len / h), the output the leftmost
/// `out_len` bytes of `K(1) || ... || K(n)`.
///
/// `prf` is `CKM_SHA_1_HMAC`, `CKM_SHA224_HMAC` .. `CKM_SHA512_HMAC` (any secret base key) or
/// `CKM_AES_CMAC` (an AES base key). `segments` is the fixed input in order; it must hold exactly
/// one counter (16 or 32 bits, the widths CloudHSM's samples name) and at most one `L` (8, 16,
/// 32 or 64 bits; `SUM_OF_KEYS`: `out_len` in bits, `SUM_OF_SEGMENTS`: `n * h` in bits).
///
/// Errors: `CKR_MECHANISM_PARAM_INVALID` (an unknown PRF, a missing or second counter, a second
/// `L`, an unsupported width or method), `CKR_KEY_TYPE_INCONSISTENT` (CMAC over a key that is
/// not AES), `CKR_KEY_SIZE_RANGE` (an AES key of another length), `CKR_TEMPLATE_INCONSISTENT`
/// (`out_len` 0, over 65536, or needing more blocks than the counter or `L` can count).
pub fn sp800_108_counter(
    prf: CK_MECHANISM_TYPE,
    segments: &[KdfSegment],
    base: &LoadedKey,
    out_len: usize,
) -> Result<Zeroizing<Vec<u8>>, Rv> {
    let counters = segments
        .iter()
        .filter(|s| matches!(s, KdfSegment::Counter { .. }))
        .count();
    let dkms = segments
        .iter()
        .filter(|s| matches!(s, KdfSegment::DkmLength { .. }))
        .count();
    if counters != 1 || dkms > 1 {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    for s in segments {
        let ok = match s {
            KdfSegment::Counter { width_bits } => matches!(width_bits, 16 | 32),
            KdfSegment::DkmLength { method, width_bits } => {
                matches!(
                    *method,
                    SP800_108_DKM_LENGTH_SUM_OF_KEYS | SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS
                ) && matches!(width_bits, 8 | 16 | 32 | 64)
            }
            KdfSegment::Bytes(_) => true,
        };
        if !ok {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
    }
    let (_, key_type, value) = base.secret().map_err(|_| CKR_KEY_TYPE_INCONSISTENT)?;
    let key = match prf {
        CKM_AES_CMAC => {
            if key_type != CKK_AES {
                return Err(CKR_KEY_TYPE_INCONSISTENT);
            }
            Prf::Cmac(Box::new(sym::aes_cmac_key(value)?))
        }
        _ => {
            let hash = match prf {
                CKM_SHA_1_HMAC => Hash::Sha1,
                CKM_SHA224_HMAC => Hash::Sha224,
                CKM_SHA256_HMAC => Hash::Sha256,
                CKM_SHA384_HMAC => Hash::Sha384,
                CKM_SHA512_HMAC => Hash::Sha512,
                _ => return Err(CKR_MECHANISM_PARAM_INVALID),
            };
            Prf::Hmac(
                Box::new(hmac::Key::new(sym::hmac_alg(hash), value)),
                hash.len(),
            )
        }
    };
    if out_len == 0 || out_len > MAX_DERIVED {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let h = key.len();
    let n = out_len.div_ceil(h);
    let l_bits = |method: CK_ULONG| -> u64 {
        let bytes = if method == SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS {
            n * h
        } else {
            out_len
        };
        // Both are at most 65536 + 64 bytes.
        bytes as u64 * 8
    };
    let mut out = Zeroizing::new(Vec::with_capacity(n * h));
    let mut input = Zeroizing::new(Vec::new());
    for i in 1..=n {
        input.clear();
        for s in segments {
            match s {
                // `i` is at most 65536 / 1 + 1: it fits a u64.
                KdfSegment::Counter { width_bits } => put_be(&mut input, i as u64, *width_bits)?,
                KdfSegment::DkmLength { method, width_bits } => {
                    put_be(&mut input, l_bits(*method), *width_bits)?
                }
                KdfSegment::Bytes(b) => input.extend_from_slice(b),
            }
        }
        match &key {
            Prf::Hmac(k, _) => out.extend_from_slice(hmac::sign(k, &input).as_ref()),
            Prf::Cmac(k) => out.extend_from_slice(
                cmac::sign(k, &input)
                    .map_err(|_| CKR_FUNCTION_FAILED)?
                    .as_ref(),
            ),
        }
    }
    out.truncate(out_len);
    Ok(out)
}
