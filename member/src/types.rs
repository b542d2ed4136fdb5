//! Plain data every member and the engine share: attributes, mechanisms, return values.
//!
//! Attribute values are kept in the PKCS #11 native layout of this platform (a `CK_BBOOL` is one
//! byte, a `CK_ULONG` is eight little-endian bytes on x86_64), so a value read from a caller's
//! template can be stored and returned without conversion.

use cryptoki_sys::{CK_ATTRIBUTE_TYPE, CK_MECHANISM_TYPE, CK_RV, CK_ULONG};
use zeroize::Zeroize;

/// Vendor attribute (`CKA_VENDOR_DEFINED | "HP" 0001`): the cluster-wide id the engine asks a
/// member to give a new object (a `CK_ULONG`). It is also the idempotency token of a create:
/// a member that already holds an object with that id returns it instead of making a second one,
/// so a create retried after a lost answer never leaves two keys. Only the engine sets it; an
/// application template naming it is refused by the engine.
pub const CKA_HSMPOOL_OBJECT_ID: cryptoki_sys::CK_ATTRIBUTE_TYPE =
    cryptoki_sys::CKA_VENDOR_DEFINED | 0x4850_0001;

/// Vendor attribute (`CKA_VENDOR_DEFINED | "HP" 0002`): the crypto users a key's owner shared
/// it with, as their names separated by `\n` (sorted, none repeated), absent when shared with
/// none. A member sets it (`Users::share_object`); it is read-only to applications, and it
/// travels with the object like every other attribute.
pub const CKA_HSMPOOL_SHARED_WITH: cryptoki_sys::CK_ATTRIBUTE_TYPE =
    cryptoki_sys::CKA_VENDOR_DEFINED | 0x4850_0002;

/// Vendor attribute (`CKA_VENDOR_DEFINED | "HP" 0003`): the approvals using the key needs, a
/// `CK_ULONG` (absent: 1, none). Set by the owner (`Users::set_key_quorum`, `hsmpool key
/// set-quorum`); read-only to applications; it travels with the object.
pub const CKA_HSMPOOL_QUORUM_USE: cryptoki_sys::CK_ATTRIBUTE_TYPE =
    cryptoki_sys::CKA_VENDOR_DEFINED | 0x4850_0003;

/// Vendor attribute (`CKA_VENDOR_DEFINED | "HP" 0004`): the approvals managing the key needs
/// (destroy, copy, change, wrap out, share, unshare, change its quorum), as
/// [`CKA_HSMPOOL_QUORUM_USE`].
pub const CKA_HSMPOOL_QUORUM_MANAGE: cryptoki_sys::CK_ATTRIBUTE_TYPE =
    cryptoki_sys::CKA_VENDOR_DEFINED | 0x4850_0004;

/// AWS CloudHSM's vendor mechanisms (Client SDK 5, `cloudhsm_pkcs11_vendor_defs.h`), offered so
/// that programs written for CloudHSM run unchanged; the C declarations are in
/// `include/hsmpool.h`. This module is the one Rust place they are declared.
pub mod cloudhsm {
    use cryptoki_sys::{CK_MECHANISM_TYPE, CK_ULONG};

    /// NIST SP 800-108 KDF in counter mode (PKCS #11 3.0's `CKM_SP800_108_COUNTER_KDF`, under a
    /// vendor number and with CloudHSM's own parameter structs).
    pub const CKM_CLOUDHSM_SP800_108_COUNTER_KDF: CK_MECHANISM_TYPE = 0x8000_0001;
    /// AES-GCM whose 12-byte IV the HSM makes and prepends to the ciphertext.
    pub const CKM_CLOUDHSM_AES_GCM: CK_MECHANISM_TYPE = 0x8000_1087;
    /// AES key wrap (RFC 3394) of block-aligned key material, no padding.
    pub const CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD: CK_MECHANISM_TYPE = 0x8000_2109;
    /// AES key wrap (RFC 3394) of the key material with PKCS #5 padding to 8 bytes.
    pub const CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD: CK_MECHANISM_TYPE = 0x8000_210A;
    /// AES key wrap with padding (RFC 5649: zeros to 8 bytes, the length in the IV).
    pub const CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD: CK_MECHANISM_TYPE = 0x8000_216F;

    /// `CK_PRF_DATA_PARAM.type` (Client SDK 5): the counter, a `CK_SP800_108_COUNTER_FORMAT`
    /// (`{ CK_ULONG ulWidthInBits }`), placed where it appears.
    pub const CK_SP800_108_ITERATION_VARIABLE: CK_ULONG = 1;
    /// The length of the derived keying material, a `CK_SP800_108_DKM_LENGTH_FORMAT`
    /// (`{ CK_ULONG dkmLengthMethod; CK_ULONG ulWidthInBits }`), placed where it appears.
    pub const CK_SP800_108_DKM_LENGTH: CK_ULONG = 2;
    /// Bytes placed where they appear (label, context, or both).
    pub const CK_SP800_108_BYTE_ARRAY: CK_ULONG = 3;
    /// Client SDK 3's fixed layout `counter || label || 0x00 || context || L`: the counter format.
    pub const SP800_108_COUNTER_FORMAT: CK_ULONG = 4;
    /// Client SDK 3: the label.
    pub const SP800_108_PRF_LABEL: CK_ULONG = 5;
    /// Client SDK 3: the context.
    pub const SP800_108_PRF_CONTEXT: CK_ULONG = 6;
    /// Client SDK 3: the format of `L`, a `CK_SP800_108_DKM_LENGTH_FORMAT`.
    pub const SP800_108_DKM_FORMAT: CK_ULONG = 7;
    /// `dkmLengthMethod`: `L` is the length of the derived key.
    pub const SP800_108_DKM_LENGTH_SUM_OF_KEYS: CK_ULONG = 1;
    /// `dkmLengthMethod`: `L` is the length of all PRF output blocks.
    pub const SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS: CK_ULONG = 2;
    /// The IV length of `CKM_CLOUDHSM_AES_GCM`, in bytes.
    pub const GCM_IV_LEN: usize = 12;
}

/// One piece of the fixed input of an SP 800-108 counter-mode KDF, in the order the caller gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KdfSegment {
    /// The iteration counter `i`, big-endian in `width_bits` bits.
    Counter {
        /// Its width in bits.
        width_bits: CK_ULONG,
    },
    /// `L`, the length in bits of the derived keying material, big-endian in `width_bits` bits.
    DkmLength {
        /// `SP800_108_DKM_LENGTH_SUM_OF_KEYS` or `SP800_108_DKM_LENGTH_SUM_OF_SEGMENTS`.
        method: CK_ULONG,
        /// Its width in bits.
        width_bits: CK_ULONG,
    },
    /// Bytes as given.
    Bytes(Vec<u8>),
}

/// A PKCS #11 return value (`CK_RV`).
pub type Rv = CK_RV;

/// One attribute: its type and its value in native layout.
#[derive(Clone, PartialEq, Eq)]
pub struct Attr {
    /// The `CKA_*` type.
    pub ty: CK_ATTRIBUTE_TYPE,
    /// The value bytes, native layout.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Attr {
    // Values may be secret (CKA_VALUE of a key in a template), so Debug never prints them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attr({:#x}, {} bytes)", self.ty, self.value.len())
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl Attr {
    /// An attribute holding a `CK_BBOOL`.
    pub fn bool(ty: CK_ATTRIBUTE_TYPE, v: bool) -> Self {
        Attr {
            ty,
            value: vec![u8::from(v)],
        }
    }
    /// An attribute holding a `CK_ULONG`.
    pub fn ulong(ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Self {
        Attr {
            ty,
            value: v.to_ne_bytes().to_vec(),
        }
    }
    /// An attribute holding bytes.
    pub fn bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Self {
        Attr {
            ty,
            value: v.to_vec(),
        }
    }
    /// The value read as a `CK_BBOOL`, if it has the size of one.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_slice() {
            [b] => Some(*b != 0),
            _ => None,
        }
    }
    /// The value read as a `CK_ULONG`, if it has the size of one.
    pub fn as_ulong(&self) -> Option<CK_ULONG> {
        let arr: [u8; std::mem::size_of::<CK_ULONG>()] = self.value.as_slice().try_into().ok()?;
        Some(CK_ULONG::from_ne_bytes(arr))
    }
}

/// Mechanism parameters, parsed from the caller's `CK_MECHANISM` by the C ABI layer.
#[derive(Clone, PartialEq, Eq)]
pub enum MechParam {
    /// No parameter (`pParameter` NULL, length 0).
    None,
    /// An initialisation vector (CBC, CBC_PAD, ECB has none).
    Iv(Vec<u8>),
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// The IV.
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: CK_ULONG,
    },
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        /// `CKM_SHA*` of the message digest.
        hash: CK_MECHANISM_TYPE,
        /// `CKG_MGF1_SHA*`.
        mgf: CK_ULONG,
        /// Salt length in bytes.
        salt_len: CK_ULONG,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep {
        /// `CKM_SHA*` of the label hash.
        hash: CK_MECHANISM_TYPE,
        /// `CKG_MGF1_SHA*`.
        mgf: CK_ULONG,
        /// The label (`CKZ_DATA_SPECIFIED` source data); empty when none.
        label: Vec<u8>,
    },
    /// A `CK_ULONG` parameter (e.g. the MAC length of a `_GENERAL` mechanism).
    Ulong(CK_ULONG),
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh {
        /// `CKD_*` key derivation function.
        kdf: CK_ULONG,
        /// Shared data for the KDF.
        shared_data: Vec<u8>,
        /// The other party's public point (raw or DER-wrapped).
        public_data: Vec<u8>,
    },
    /// `CK_HKDF_PARAMS` (a salt given as a key handle is refused by the C layer for now).
    Hkdf {
        /// Run the extract step.
        extract: bool,
        /// Run the expand step.
        expand: bool,
        /// `CKM_SHA*` of the PRF.
        prf: CK_MECHANISM_TYPE,
        /// `CKF_HKDF_SALT_NULL` or `CKF_HKDF_SALT_DATA`.
        salt_type: CK_ULONG,
        /// The salt (`CKF_HKDF_SALT_DATA`).
        salt: Vec<u8>,
        /// Context information for the expand step.
        info: Vec<u8>,
    },
    /// An SP 800-108 counter-mode KDF (`CKM_CLOUDHSM_SP800_108_COUNTER_KDF`): the PRF and the
    /// fixed input, in order (the C layer turns CloudHSM's `CK_SP800_108_KDF_PARAMS` into this).
    Sp800108 {
        /// `CKM_SHA*_HMAC` or `CKM_AES_CMAC`.
        prf: CK_MECHANISM_TYPE,
        /// The fixed input of each PRF call.
        segments: Vec<KdfSegment>,
    },
    /// Any other parameter, as raw bytes; the mechanism decides whether it is valid.
    Raw(Vec<u8>),
}

impl std::fmt::Debug for MechParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MechParam::None => write!(f, "None"),
            MechParam::Iv(iv) => write!(f, "Iv({} bytes)", iv.len()),
            MechParam::Gcm { iv, aad, tag_bits } => {
                write!(
                    f,
                    "Gcm(iv {} bytes, aad {} bytes, tag {tag_bits} bits)",
                    iv.len(),
                    aad.len()
                )
            }
            MechParam::Pss {
                hash,
                mgf,
                salt_len,
            } => write!(f, "Pss({hash:#x}, {mgf:#x}, {salt_len})"),
            MechParam::Oaep { hash, mgf, label } => {
                write!(f, "Oaep({hash:#x}, {mgf:#x}, label {} bytes)", label.len())
            }
            MechParam::Ulong(v) => write!(f, "Ulong({v})"),
            MechParam::Ecdh { kdf, shared_data, public_data } => {
                write!(f, "Ecdh({kdf:#x}, shared {} bytes, public {} bytes)", shared_data.len(), public_data.len())
            }
            MechParam::Hkdf { extract, expand, prf, salt_type, salt, info } => write!(
                f,
                "Hkdf(extract {extract}, expand {expand}, prf {prf:#x}, salt type {salt_type:#x}, salt {} bytes, info {} bytes)",
                salt.len(),
                info.len()
            ),
            // Segment bytes are labels and contexts, not secrets, but only their shape is shown.
            MechParam::Sp800108 { prf, segments } => {
                write!(f, "Sp800108(prf {prf:#x}, {} segments)", segments.len())
            }
            MechParam::Raw(r) => write!(f, "Raw({} bytes)", r.len()),
        }
    }
}

/// A mechanism with its parameter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mechanism {
    /// The `CKM_*` type.
    pub mech: CK_MECHANISM_TYPE,
    /// Its parameter.
    pub param: MechParam,
}

impl Mechanism {
    /// A mechanism without parameter.
    pub fn plain(mech: CK_MECHANISM_TYPE) -> Self {
        Mechanism {
            mech,
            param: MechParam::None,
        }
    }
}

/// What a sign or verify call is given.
#[derive(Clone, Copy, Debug)]
pub enum SignInput<'a> {
    /// The message itself: the mechanism hashes it if it is a hash-and-sign mechanism.
    Message(&'a [u8]),
    /// For a hash-and-sign mechanism (`CKM_SHA256_RSA_PKCS`, `CKM_ECDSA_SHA256`, ...): the digest
    /// of the message, already computed by the caller with the mechanism's hash (multi-part
    /// operations hash as the data streams in, then sign once).
    Prehashed(&'a [u8]),
}

/// Whether an attribute's value is itself an attribute array (`CKA_WRAP_TEMPLATE`,
/// `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`). `CKF_ARRAY_ATTRIBUTE` alone does not say so:
/// `CKA_ALLOWED_MECHANISMS` carries it too and holds mechanism types.
pub fn is_array_attribute(ty: CK_ATTRIBUTE_TYPE) -> bool {
    matches!(
        ty,
        cryptoki_sys::CKA_WRAP_TEMPLATE
            | cryptoki_sys::CKA_UNWRAP_TEMPLATE
            | cryptoki_sys::CKA_DERIVE_TEMPLATE
    )
}

/// One encoding for attribute lists that must be kept as bytes: for each attribute its type
/// (8 bytes big-endian), its length (4 bytes big-endian) and its value. The store's attribute
/// blob and the value of attribute-array attributes both use it.
pub fn encode_attr_pairs<'a>(
    pairs: impl IntoIterator<Item = (CK_ATTRIBUTE_TYPE, &'a [u8])>,
) -> Vec<u8> {
    let mut out = Vec::new();
    for (ty, value) in pairs {
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The inverse of [`encode_attr_pairs`]; malformed bytes give `None`.
pub fn decode_attr_pairs(mut b: &[u8]) -> Option<Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let ty = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let len = usize::try_from(u32::from_be_bytes(b.get(8..12)?.try_into().ok()?)).ok()?;
        let value = b.get(12..12usize.checked_add(len)?)?;
        out.push((CK_ATTRIBUTE_TYPE::try_from(ty).ok()?, value.to_vec()));
        b = &b[12 + len..];
    }
    Some(out)
}

/// The value of an attribute-array attribute as it travels and is stored here (the caller's
/// `CK_ATTRIBUTE` array holds pointers, which cannot be kept), in [`encode_attr_pairs`] form.
pub fn encode_attr_array(attrs: &[Attr]) -> Vec<u8> {
    encode_attr_pairs(attrs.iter().map(|a| (a.ty, a.value.as_slice())))
}

/// The inverse of [`encode_attr_array`]; malformed bytes give `None`.
pub fn decode_attr_array(b: &[u8]) -> Option<Vec<Attr>> {
    Some(
        decode_attr_pairs(b)?
            .into_iter()
            .map(|(ty, value)| Attr { ty, value })
            .collect(),
    )
}

/// A fast `BuildHasher` for maps keyed by handles and ids: integers this process chose
/// (sequential handles) or drew at random (object ids), where SipHash's defence against keys an
/// attacker picks buys nothing and costs a noticeable share of a 1 µs call. Each word is
/// folded in with a rotate, xor and multiply by an odd constant, which spreads sequential keys
/// over the high bits (DashMap picks shards from them) and the low bits (table buckets).
/// Not for maps whose keys an outsider chooses at insertion (templates, labels).
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHash;

/// The hasher of [`IdHash`].
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher(u64);

impl IdHasher {
    #[inline]
    fn add(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl std::hash::Hasher for IdHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.add(x);
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.add(x as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // A final fold so the top bits depend on every input bit.
        self.0 ^ (self.0 >> 29)
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}
