//! The mechanism matrix: for every mechanism `C_GetMechanismList` returns, every function flag
//! `C_GetMechanismInfo` claims for it, at the smallest and the largest key size it claims, is
//! exercised through the C ABI and its result checked independently (aws-lc, a small RSA
//! public-key operation written here, or known answers) wherever that is possible, else by a
//! round trip through the module.
//!
//! The test is driven by what the module reports. [`CASES`] says, per mechanism, how to build
//! keys and parameters; a listed mechanism without a case, a claimed flag a case cannot
//! exercise, or a claimed size a case cannot build a key for is a failure naming it.
//!
//! Output: one line per (mechanism, flag, size), then `matrix: N passed, M failed`.
#![allow(unsafe_code, clippy::undocumented_unsafe_blocks)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::rc::Rc;
use std::time::Instant;

use aws_lc_rs::cipher::{
    EncryptingKey, EncryptionContext, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{AesBlockCipher, KeyEncryptionKey, KeyWrap as _, KeyWrapPadded as _};
use cryptoki_sys::*;
use hsmpool_tests::call;
use hsmpool_tests::raw::{Fixture, Module};

type R<T> = Result<T, String>;

// ---------------------------------------------------------------------------------------------
// The case table
// ---------------------------------------------------------------------------------------------

/// A hash, as the mechanisms name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

/// How an RSA mechanism pads.
#[derive(Clone, Copy, Debug)]
enum RsaScheme {
    /// `CKM_RSA_PKCS`: PKCS #1 v1.5 over caller-formatted data (a DigestInfo to sign).
    Pkcs1,
    /// `CKM_RSA_X_509`: raw RSA.
    X509,
    /// `CKM_SHA*_RSA_PKCS`.
    Pkcs1Hash(Hash),
    /// `CKM_RSA_PKCS_PSS`: PSS over a caller-computed digest (SHA-256 here).
    PssRaw,
    /// `CKM_SHA*_RSA_PKCS_PSS`.
    PssHash(Hash),
    /// `CKM_RSA_PKCS_OAEP` (SHA-256, MGF1-SHA-256, a label).
    Oaep,
}

/// How an AES key wrap pads the key bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pad {
    /// RFC 3394 of the bytes as they are.
    None,
    /// RFC 5649.
    Kwp,
    /// RFC 3394 of the bytes after PKCS #5 padding to 8 bytes (CloudHSM).
    Pkcs5,
}

// AWS CloudHSM's vendor mechanisms (Client SDK 5 cloudhsm_pkcs11_vendor_defs.h), as a program
// written for CloudHSM has them.
const CKM_CLOUDHSM_SP800_108_COUNTER_KDF: CK_MECHANISM_TYPE = 0x8000_0001;
const CKM_CLOUDHSM_AES_GCM: CK_MECHANISM_TYPE = 0x8000_1087;
const CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD: CK_MECHANISM_TYPE = 0x8000_2109;
const CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD: CK_MECHANISM_TYPE = 0x8000_210A;
const CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD: CK_MECHANISM_TYPE = 0x8000_216F;

/// AES block modes.
#[derive(Clone, Copy, Debug)]
enum AesMode {
    Ecb,
    Cbc,
    CbcPad,
    Ctr,
    Gcm,
}

/// How to build keys and parameters for a mechanism.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN`; sizes are modulus bits.
    RsaGen,
    /// An RSA operation; sizes are modulus bits.
    Rsa(RsaScheme),
    /// `CKM_EC_KEY_PAIR_GEN`; sizes are bits, mapped to a curve.
    EcGen,
    /// `CKM_ECDSA` (None: the caller hashes) and `CKM_ECDSA_SHA*`.
    Ecdsa(Option<Hash>),
    /// `CKM_ECDH1_DERIVE` with `CKD_NULL`.
    Ecdh,
    /// `CKM_EC_EDWARDS_KEY_PAIR_GEN`; 255 is Ed25519.
    EdGen,
    /// `CKM_EDDSA` (pure Ed25519).
    EdDsa,
    /// `CKM_AES_KEY_GEN`; sizes are bytes.
    AesGen,
    /// An AES cipher; sizes are bytes.
    Aes(AesMode),
    /// `CKM_AES_CMAC` / `CKM_AES_CMAC_GENERAL` (8-byte MAC).
    AesCmac { general: bool },
    /// `CKM_AES_KEY_WRAP` / `CKM_AES_KEY_WRAP_KWP` and CloudHSM's three AES key wraps.
    AesWrap(Pad),
    /// CloudHSM's `CKM_RSA_X9_31_KEY_PAIR_GEN`; sizes are modulus bits.
    RsaX931Gen,
    /// CloudHSM's `CKM_CLOUDHSM_AES_GCM` (IV made by the module, in front of the output).
    CloudHsmGcm,
    /// CloudHSM's `CKM_CLOUDHSM_SP800_108_COUNTER_KDF` (HMAC-SHA-256, prefix, counter, suffix,
    /// L); sizes are base key bytes.
    CloudHsmKdf,
    /// `CKM_GENERIC_SECRET_KEY_GEN`; sizes are bits.
    GenericGen,
    /// `CKM_SHA*_HMAC` / `CKM_SHA*_HMAC_GENERAL` (16-byte MAC); sizes are key bytes.
    Hmac { hash: Hash, general: bool },
    /// `CKM_HKDF_DERIVE` (a secret key) / `CKM_HKDF_DATA` (a data object): extract and
    /// expand, SHA-256, salt data; sizes are base key bytes.
    Hkdf { data: bool },
    /// A digest; no key.
    Digest(Hash),
}

/// One row of the case table.
#[derive(Clone, Copy, Debug)]
struct Case {
    mech: CK_MECHANISM_TYPE,
    name: &'static str,
    kind: Kind,
}

/// `case!(CKM_X, kind)`: a row named as the spec spells the mechanism.
macro_rules! case {
    ($mech:ident, $kind:expr) => {
        Case {
            mech: $mech,
            name: stringify!($mech),
            kind: $kind,
        }
    };
}

use Hash::*;
use Kind::*;

/// Every mechanism the matrix knows how to exercise.
#[rustfmt::skip]
const CASES: &[Case] = &[
    case!(CKM_RSA_PKCS_KEY_PAIR_GEN, RsaGen),
    case!(CKM_RSA_X9_31_KEY_PAIR_GEN, RsaX931Gen),
    case!(CKM_RSA_PKCS, Rsa(RsaScheme::Pkcs1)),
    case!(CKM_RSA_X_509, Rsa(RsaScheme::X509)),
    case!(CKM_SHA1_RSA_PKCS, Rsa(RsaScheme::Pkcs1Hash(Sha1))),
    case!(CKM_SHA224_RSA_PKCS, Rsa(RsaScheme::Pkcs1Hash(Sha224))),
    case!(CKM_SHA256_RSA_PKCS, Rsa(RsaScheme::Pkcs1Hash(Sha256))),
    case!(CKM_SHA384_RSA_PKCS, Rsa(RsaScheme::Pkcs1Hash(Sha384))),
    case!(CKM_SHA512_RSA_PKCS, Rsa(RsaScheme::Pkcs1Hash(Sha512))),
    case!(CKM_RSA_PKCS_PSS, Rsa(RsaScheme::PssRaw)),
    case!(CKM_SHA1_RSA_PKCS_PSS, Rsa(RsaScheme::PssHash(Sha1))),
    case!(CKM_SHA224_RSA_PKCS_PSS, Rsa(RsaScheme::PssHash(Sha224))),
    case!(CKM_SHA256_RSA_PKCS_PSS, Rsa(RsaScheme::PssHash(Sha256))),
    case!(CKM_SHA384_RSA_PKCS_PSS, Rsa(RsaScheme::PssHash(Sha384))),
    case!(CKM_SHA512_RSA_PKCS_PSS, Rsa(RsaScheme::PssHash(Sha512))),
    case!(CKM_RSA_PKCS_OAEP, Rsa(RsaScheme::Oaep)),
    case!(CKM_EC_KEY_PAIR_GEN, EcGen),
    case!(CKM_ECDSA, Ecdsa(None)),
    case!(CKM_ECDSA_SHA1, Ecdsa(Some(Sha1))),
    case!(CKM_ECDSA_SHA224, Ecdsa(Some(Sha224))),
    case!(CKM_ECDSA_SHA256, Ecdsa(Some(Sha256))),
    case!(CKM_ECDSA_SHA384, Ecdsa(Some(Sha384))),
    case!(CKM_ECDSA_SHA512, Ecdsa(Some(Sha512))),
    case!(CKM_ECDH1_DERIVE, Ecdh),
    case!(CKM_EC_EDWARDS_KEY_PAIR_GEN, EdGen),
    case!(CKM_EDDSA, EdDsa),
    case!(CKM_AES_KEY_GEN, AesGen),
    case!(CKM_AES_ECB, Aes(AesMode::Ecb)),
    case!(CKM_AES_CBC, Aes(AesMode::Cbc)),
    case!(CKM_AES_CBC_PAD, Aes(AesMode::CbcPad)),
    case!(CKM_AES_CTR, Aes(AesMode::Ctr)),
    case!(CKM_AES_GCM, Aes(AesMode::Gcm)),
    case!(CKM_AES_CMAC, AesCmac { general: false }),
    case!(CKM_AES_CMAC_GENERAL, AesCmac { general: true }),
    case!(CKM_AES_KEY_WRAP, AesWrap(Pad::None)),
    case!(CKM_AES_KEY_WRAP_KWP, AesWrap(Pad::Kwp)),
    case!(CKM_CLOUDHSM_AES_GCM, CloudHsmGcm),
    case!(CKM_CLOUDHSM_AES_KEY_WRAP_NO_PAD, AesWrap(Pad::None)),
    case!(CKM_CLOUDHSM_AES_KEY_WRAP_PKCS5_PAD, AesWrap(Pad::Pkcs5)),
    case!(CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD, AesWrap(Pad::Kwp)),
    case!(CKM_GENERIC_SECRET_KEY_GEN, GenericGen),
    case!(CKM_SHA_1_HMAC, Hmac { hash: Sha1, general: false }),
    case!(CKM_SHA_1_HMAC_GENERAL, Hmac { hash: Sha1, general: true }),
    case!(CKM_SHA224_HMAC, Hmac { hash: Sha224, general: false }),
    case!(CKM_SHA224_HMAC_GENERAL, Hmac { hash: Sha224, general: true }),
    case!(CKM_SHA256_HMAC, Hmac { hash: Sha256, general: false }),
    case!(CKM_SHA256_HMAC_GENERAL, Hmac { hash: Sha256, general: true }),
    case!(CKM_SHA384_HMAC, Hmac { hash: Sha384, general: false }),
    case!(CKM_SHA384_HMAC_GENERAL, Hmac { hash: Sha384, general: true }),
    case!(CKM_SHA512_HMAC, Hmac { hash: Sha512, general: false }),
    case!(CKM_SHA512_HMAC_GENERAL, Hmac { hash: Sha512, general: true }),
    case!(CKM_HKDF_DERIVE, Hkdf { data: false }),
    case!(CKM_HKDF_DATA, Hkdf { data: true }),
    case!(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, CloudHsmKdf),
    case!(CKM_SHA_1, Digest(Sha1)),
    case!(CKM_SHA224, Digest(Sha224)),
    case!(CKM_SHA256, Digest(Sha256)),
    case!(CKM_SHA384, Digest(Sha384)),
    case!(CKM_SHA512, Digest(Sha512)),
    case!(CKM_SHA3_224, Digest(Sha3_224)),
    case!(CKM_SHA3_256, Digest(Sha3_256)),
    case!(CKM_SHA3_384, Digest(Sha3_384)),
    case!(CKM_SHA3_512, Digest(Sha3_512)),
];

/// The function flags the matrix exercises, in the order it runs them.
const FUNCTION_FLAGS: &[(CK_FLAGS, &str)] = &[
    (CKF_GENERATE, "generate"),
    (CKF_GENERATE_KEY_PAIR, "generate_key_pair"),
    (CKF_ENCRYPT, "encrypt"),
    (CKF_DECRYPT, "decrypt"),
    (CKF_SIGN, "sign"),
    (CKF_VERIFY, "verify"),
    (CKF_DIGEST, "digest"),
    (CKF_WRAP, "wrap"),
    (CKF_UNWRAP, "unwrap"),
    (CKF_DERIVE, "derive"),
];

/// Flags that describe a mechanism rather than name a function: nothing to exercise.
const DESCRIPTIVE_FLAGS: CK_FLAGS = CKF_HW
    | CKF_EC_F_P
    | CKF_EC_F_2M
    | CKF_EC_ECPARAMETERS
    | CKF_EC_NAMEDCURVE
    | CKF_EC_UNCOMPRESS
    | CKF_EC_COMPRESS
    | CKF_EC_CURVENAME
    | CKF_EXTENSION;

impl Kind {
    /// The unit of the sizes the module reports for this mechanism (for the output lines).
    fn unit(self) -> &'static str {
        match self {
            RsaGen | RsaX931Gen | Rsa(_) | EcGen | Ecdsa(_) | Ecdh | EdGen | EdDsa | GenericGen => {
                "bits"
            }
            AesGen
            | Aes(_)
            | AesCmac { .. }
            | AesWrap(_)
            | Hmac { .. }
            | Hkdf { .. }
            | CloudHsmGcm
            | CloudHsmKdf => "bytes",
            Digest(_) => "",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Names and return values
// ---------------------------------------------------------------------------------------------

fn mech_name(m: CK_MECHANISM_TYPE) -> String {
    if let Some(c) = CASES.iter().find(|c| c.mech == m) {
        return c.name.to_string();
    }
    match cryptoki::mechanism::MechanismType::try_from(m) {
        Ok(t) => format!("{t}"),
        Err(_) => format!("mechanism {m:#x}"),
    }
}

fn rv_name(rv: CK_RV) -> String {
    match cryptoki::error::Rv::from(rv) {
        cryptoki::error::Rv::Ok => "CKR_OK".into(),
        cryptoki::error::Rv::Error(e) => format!("{e:?} ({rv:#x})"),
    }
}

fn ck(rv: CK_RV, what: &str) -> R<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{what}: {}", rv_name(rv)))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn expect_eq(what: &str, got: &[u8], want: &[u8]) -> R<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {} bytes {}..., expected {} bytes {}...",
            got.len(),
            hex(&got[..got.len().min(24)]),
            want.len(),
            hex(&want[..want.len().min(24)])
        ))
    }
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut v).expect("aws-lc random");
    v
}

// ---------------------------------------------------------------------------------------------
// Hashes
// ---------------------------------------------------------------------------------------------

impl Hash {
    fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            Sha1 => CKM_SHA_1,
            Sha224 => CKM_SHA224,
            Sha256 => CKM_SHA256,
            Sha384 => CKM_SHA384,
            Sha512 => CKM_SHA512,
            Sha3_224 => CKM_SHA3_224,
            Sha3_256 => CKM_SHA3_256,
            Sha3_384 => CKM_SHA3_384,
            Sha3_512 => CKM_SHA3_512,
        }
    }

    fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Sha1 => CKG_MGF1_SHA1,
            Sha224 => CKG_MGF1_SHA224,
            Sha256 => CKG_MGF1_SHA256,
            Sha384 => CKG_MGF1_SHA384,
            Sha512 => CKG_MGF1_SHA512,
            Sha3_224 => CKG_MGF1_SHA3_224,
            Sha3_256 => CKG_MGF1_SHA3_256,
            Sha3_384 => CKG_MGF1_SHA3_384,
            Sha3_512 => CKG_MGF1_SHA3_512,
        }
    }

    fn len(self) -> usize {
        match self {
            Sha1 => 20,
            Sha224 | Sha3_224 => 28,
            Sha256 | Sha3_256 => 32,
            Sha384 | Sha3_384 => 48,
            Sha512 | Sha3_512 => 64,
        }
    }

    /// aws-lc's algorithm (aws-lc-rs offers no SHA3-224).
    fn alg(self) -> Option<&'static aws_lc_rs::digest::Algorithm> {
        use aws_lc_rs::digest as d;
        Some(match self {
            Sha1 => &d::SHA1_FOR_LEGACY_USE_ONLY,
            Sha224 => &d::SHA224,
            Sha256 => &d::SHA256,
            Sha384 => &d::SHA384,
            Sha512 => &d::SHA512,
            Sha3_224 => return None,
            Sha3_256 => &d::SHA3_256,
            Sha3_384 => &d::SHA3_384,
            Sha3_512 => &d::SHA3_512,
        })
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = self.alg().expect("a hash aws-lc offers");
        aws_lc_rs::digest::digest(alg, data).as_ref().to_vec()
    }

    /// The DER DigestInfo prefix of PKCS #1 v1.5 signatures.
    fn digest_info(self) -> &'static [u8] {
        match self {
            Sha1 => &[
                0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
                0x14,
            ],
            Sha224 => &[
                0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x04, 0x05, 0x00, 0x04, 0x1c,
            ],
            Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
            _ => panic!("no PKCS #1 DigestInfo for {self:?} in this test"),
        }
    }

    fn hmac(self) -> aws_lc_rs::hmac::Algorithm {
        use aws_lc_rs::hmac as h;
        match self {
            Sha1 => h::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Sha224 => h::HMAC_SHA224,
            Sha256 => h::HMAC_SHA256,
            Sha384 => h::HMAC_SHA384,
            Sha512 => h::HMAC_SHA512,
            _ => panic!("no HMAC for {self:?} in this test"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Templates and mechanisms with owned storage
// ---------------------------------------------------------------------------------------------

/// An attribute template that owns its values.
#[derive(Default, Clone)]
struct Tpl(Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>);

impl Tpl {
    fn b(mut self, ty: CK_ATTRIBUTE_TYPE, v: bool) -> Tpl {
        self.0.push((ty, vec![if v { CK_TRUE } else { CK_FALSE }]));
        self
    }
    fn u(mut self, ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Tpl {
        self.0.push((ty, v.to_ne_bytes().to_vec()));
        self
    }
    fn bytes(mut self, ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Tpl {
        self.0.push((ty, v.to_vec()));
        self
    }
    fn flags(mut self, usage: &[(CK_ATTRIBUTE_TYPE, bool)]) -> Tpl {
        for &(ty, v) in usage {
            self = self.b(ty, v);
        }
        self
    }
    /// The `CK_ATTRIBUTE`s, pointing into `self` (which must outlive their use).
    fn attrs(&self) -> Vec<CK_ATTRIBUTE> {
        self.0
            .iter()
            .map(|(ty, v)| CK_ATTRIBUTE {
                type_: *ty,
                pValue: v.as_ptr() as *mut c_void,
                ulValueLen: v.len() as CK_ULONG,
            })
            .collect()
    }
}

/// A mechanism whose parameter bytes (and whatever its pointers point at) it owns.
struct Mech {
    ty: CK_MECHANISM_TYPE,
    param: Vec<u8>,
    /// Buffers the parameter struct points into; their heap storage never moves.
    _keep: Vec<Vec<u8>>,
}

fn bytes_of<T: Copy>(t: &T) -> Vec<u8> {
    let n = std::mem::size_of::<T>();
    let mut v = vec![0u8; n];
    // SAFETY: `t` is `n` readable bytes; `v` is `n` writable bytes; they do not overlap.
    unsafe { ptr::copy_nonoverlapping(t as *const T as *const u8, v.as_mut_ptr(), n) };
    v
}

impl Mech {
    fn plain(ty: CK_MECHANISM_TYPE) -> Mech {
        Mech {
            ty,
            param: Vec::new(),
            _keep: Vec::new(),
        }
    }
    fn raw(ty: CK_MECHANISM_TYPE, param: &[u8]) -> Mech {
        Mech {
            ty,
            param: param.to_vec(),
            _keep: Vec::new(),
        }
    }
    fn ulong(ty: CK_MECHANISM_TYPE, v: CK_ULONG) -> Mech {
        Mech::raw(ty, &v.to_ne_bytes())
    }
    fn pss(ty: CK_MECHANISM_TYPE, hash: Hash) -> Mech {
        let p = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: hash.ckm(),
            mgf: hash.mgf(),
            sLen: hash.len() as CK_ULONG,
        };
        Mech::raw(ty, &bytes_of(&p))
    }
    fn oaep(label: &[u8]) -> Mech {
        let keep = vec![label.to_vec()];
        let p = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: keep[0].as_ptr() as *mut c_void,
            ulSourceDataLen: keep[0].len() as CK_ULONG,
        };
        Mech {
            ty: CKM_RSA_PKCS_OAEP,
            param: bytes_of(&p),
            _keep: keep,
        }
    }
    fn gcm(iv: &[u8], aad: &[u8]) -> Mech {
        let keep = vec![iv.to_vec(), aad.to_vec()];
        let p = CK_GCM_PARAMS {
            pIv: keep[0].as_ptr() as *mut u8,
            ulIvLen: keep[0].len() as CK_ULONG,
            ulIvBits: (keep[0].len() * 8) as CK_ULONG,
            pAAD: keep[1].as_ptr() as *mut u8,
            ulAADLen: keep[1].len() as CK_ULONG,
            ulTagBits: 128,
        };
        Mech {
            ty: CKM_AES_GCM,
            param: bytes_of(&p),
            _keep: keep,
        }
    }
    fn ctr(cb: &[u8; 16]) -> Mech {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CtrParams {
            counter_bits: CK_ULONG,
            cb: [u8; 16],
        }
        let p = CtrParams {
            counter_bits: 128,
            cb: *cb,
        };
        Mech::raw(CKM_AES_CTR, &bytes_of(&p))
    }
    fn ecdh(peer_point: &[u8]) -> Mech {
        let keep = vec![peer_point.to_vec()];
        let p = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: ptr::null_mut(),
            ulPublicDataLen: keep[0].len() as CK_ULONG,
            pPublicData: keep[0].as_ptr() as *mut u8,
        };
        Mech {
            ty: CKM_ECDH1_DERIVE,
            param: bytes_of(&p),
            _keep: keep,
        }
    }
    fn hkdf(salt: &[u8], info: &[u8]) -> Mech {
        let keep = vec![salt.to_vec(), info.to_vec()];
        let p = CK_HKDF_PARAMS {
            bExtract: CK_TRUE,
            bExpand: CK_TRUE,
            prfHashMechanism: CKM_SHA256,
            ulSaltType: CKF_HKDF_SALT_DATA,
            pSalt: keep[0].as_ptr() as *mut u8,
            ulSaltLen: keep[0].len() as CK_ULONG,
            hSaltKey: CK_INVALID_HANDLE,
            pInfo: keep[1].as_ptr() as *mut u8,
            ulInfoLen: keep[1].len() as CK_ULONG,
        };
        Mech {
            ty: CKM_HKDF_DERIVE,
            param: bytes_of(&p),
            _keep: keep,
        }
    }
    /// The `CK_MECHANISM`, pointing into `self`.
    fn ck(&mut self) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: self.ty,
            pParameter: if self.param.is_empty() {
                ptr::null_mut()
            } else {
                self.param.as_mut_ptr() as *mut c_void
            },
            ulParameterLen: self.param.len() as CK_ULONG,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Calls through the C ABI
// ---------------------------------------------------------------------------------------------

struct P11<'a> {
    m: &'a Module,
    h: CK_SESSION_HANDLE,
}

impl P11<'_> {
    /// The two-call output protocol: ask the length, then fetch.
    fn two_call(&self, what: &str, f: impl Fn(*mut u8, *mut CK_ULONG) -> CK_RV) -> R<Vec<u8>> {
        let mut len: CK_ULONG = 0;
        ck(
            f(ptr::null_mut(), &mut len),
            &format!("{what} (length query)"),
        )?;
        let mut out = vec![0u8; len as usize];
        ck(f(out.as_mut_ptr(), &mut len), what)?;
        out.truncate(len as usize);
        Ok(out)
    }

    fn encrypt(&self, mech: &mut Mech, key: CK_OBJECT_HANDLE, data: &[u8]) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_EncryptInit, h, &mut mm, key), "C_EncryptInit")?;
        self.two_call("C_Encrypt", |p, l| {
            call!(
                m,
                C_Encrypt,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                l
            )
        })
    }

    fn decrypt(&self, mech: &mut Mech, key: CK_OBJECT_HANDLE, data: &[u8]) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_DecryptInit, h, &mut mm, key), "C_DecryptInit")?;
        self.two_call("C_Decrypt", |p, l| {
            call!(
                m,
                C_Decrypt,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                l
            )
        })
    }

    fn sign(&self, mech: &mut Mech, key: CK_OBJECT_HANDLE, data: &[u8]) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_SignInit, h, &mut mm, key), "C_SignInit")?;
        self.two_call("C_Sign", |p, l| {
            call!(
                m,
                C_Sign,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                l
            )
        })
    }

    /// `C_VerifyInit` (must succeed) then `C_Verify`, whose CK_RV is returned.
    fn verify(&self, mech: &mut Mech, key: CK_OBJECT_HANDLE, data: &[u8], sig: &[u8]) -> R<CK_RV> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_VerifyInit, h, &mut mm, key), "C_VerifyInit")?;
        Ok(call!(
            m,
            C_Verify,
            h,
            data.as_ptr() as *mut u8,
            data.len() as CK_ULONG,
            sig.as_ptr() as *mut u8,
            sig.len() as CK_ULONG
        ))
    }

    fn digest(&self, mech: &mut Mech, data: &[u8]) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_DigestInit, h, &mut mm), "C_DigestInit")?;
        self.two_call("C_Digest", |p, l| {
            call!(
                m,
                C_Digest,
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                l
            )
        })
    }

    fn digest_multi(&self, mech: &mut Mech, parts: &[&[u8]]) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        ck(call!(m, C_DigestInit, h, &mut mm), "C_DigestInit")?;
        for part in parts {
            ck(
                call!(
                    m,
                    C_DigestUpdate,
                    h,
                    part.as_ptr() as *mut u8,
                    part.len() as CK_ULONG
                ),
                "C_DigestUpdate",
            )?;
        }
        self.two_call("C_DigestFinal", |p, l| call!(m, C_DigestFinal, h, p, l))
    }

    fn generate_key(&self, mech: &mut Mech, t: &Tpl) -> R<CK_OBJECT_HANDLE> {
        let mut a = t.attrs();
        let mut mm = mech.ck();
        let mut k = 0;
        ck(
            call!(
                self.m,
                C_GenerateKey,
                self.h,
                &mut mm,
                a.as_mut_ptr(),
                a.len() as CK_ULONG,
                &mut k
            ),
            &format!("C_GenerateKey({})", mech_name(mech.ty)),
        )?;
        Ok(k)
    }

    fn generate_pair(
        &self,
        mech: &mut Mech,
        public: &Tpl,
        private: &Tpl,
    ) -> R<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let mut pa = public.attrs();
        let mut ka = private.attrs();
        let mut mm = mech.ck();
        let (mut p, mut k) = (0, 0);
        ck(
            call!(
                self.m,
                C_GenerateKeyPair,
                self.h,
                &mut mm,
                pa.as_mut_ptr(),
                pa.len() as CK_ULONG,
                ka.as_mut_ptr(),
                ka.len() as CK_ULONG,
                &mut p,
                &mut k
            ),
            &format!("C_GenerateKeyPair({})", mech_name(mech.ty)),
        )?;
        Ok((p, k))
    }

    fn create(&self, t: &Tpl) -> R<CK_OBJECT_HANDLE> {
        let mut a = t.attrs();
        let mut o = 0;
        ck(
            call!(
                self.m,
                C_CreateObject,
                self.h,
                a.as_mut_ptr(),
                a.len() as CK_ULONG,
                &mut o
            ),
            "C_CreateObject",
        )?;
        Ok(o)
    }

    fn copy(&self, o: CK_OBJECT_HANDLE, t: &Tpl) -> R<CK_OBJECT_HANDLE> {
        let mut a = t.attrs();
        let mut c = 0;
        ck(
            call!(
                self.m,
                C_CopyObject,
                self.h,
                o,
                a.as_mut_ptr(),
                a.len() as CK_ULONG,
                &mut c
            ),
            "C_CopyObject",
        )?;
        Ok(c)
    }

    fn wrap(
        &self,
        mech: &mut Mech,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> R<Vec<u8>> {
        let m = self.m;
        let h = self.h;
        let mut mm = mech.ck();
        let mm_ptr: *mut CK_MECHANISM = &mut mm;
        self.two_call("C_WrapKey", |p, l| {
            call!(m, C_WrapKey, h, mm_ptr, wrapping, key, p, l)
        })
    }

    fn unwrap(
        &self,
        mech: &mut Mech,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        t: &Tpl,
    ) -> R<CK_OBJECT_HANDLE> {
        let mut a = t.attrs();
        let mut mm = mech.ck();
        let mut k = 0;
        ck(
            call!(
                self.m,
                C_UnwrapKey,
                self.h,
                &mut mm,
                unwrapping,
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as CK_ULONG,
                a.as_mut_ptr(),
                a.len() as CK_ULONG,
                &mut k
            ),
            "C_UnwrapKey",
        )?;
        Ok(k)
    }

    fn derive(&self, mech: &mut Mech, base: CK_OBJECT_HANDLE, t: &Tpl) -> R<CK_OBJECT_HANDLE> {
        let mut a = t.attrs();
        let mut mm = mech.ck();
        let mut k = 0;
        ck(
            call!(
                self.m,
                C_DeriveKey,
                self.h,
                &mut mm,
                base,
                a.as_mut_ptr(),
                a.len() as CK_ULONG,
                &mut k
            ),
            "C_DeriveKey",
        )?;
        Ok(k)
    }

    fn get(&self, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> R<Vec<u8>> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        let what = format!("C_GetAttributeValue({ty:#x})");
        ck(
            call!(self.m, C_GetAttributeValue, self.h, o, &mut a, 1),
            &what,
        )?;
        let mut buf = vec![0u8; a.ulValueLen as usize];
        a.pValue = buf.as_mut_ptr() as *mut c_void;
        ck(
            call!(self.m, C_GetAttributeValue, self.h, o, &mut a, 1),
            &what,
        )?;
        buf.truncate(a.ulValueLen as usize);
        Ok(buf)
    }

    fn get_ulong(&self, o: CK_OBJECT_HANDLE, ty: CK_ATTRIBUTE_TYPE) -> R<CK_ULONG> {
        let v = self.get(o, ty)?;
        let arr: [u8; 8] = v
            .as_slice()
            .try_into()
            .map_err(|_| format!("attribute {ty:#x} is {} bytes, not a CK_ULONG", v.len()))?;
        Ok(CK_ULONG::from_ne_bytes(arr))
    }

    /// Sign with `mech`, then check the signature verifies and a tampered one is refused with
    /// `CKR_SIGNATURE_INVALID`. `check` validates the signature independently first.
    fn sign_then_verify(
        &self,
        mech: &mut Mech,
        sign_key: CK_OBJECT_HANDLE,
        verify_key: CK_OBJECT_HANDLE,
        data: &[u8],
        check: impl Fn(&[u8]) -> R<()>,
    ) -> R<String> {
        let sig = self.sign(mech, sign_key, data)?;
        check(&sig).map_err(|e| format!("the signature to verify is itself bad: {e}"))?;
        verify_both(self, mech, verify_key, data, &sig)
    }
}

/// A valid signature/MAC is accepted and a tampered one refused with `CKR_SIGNATURE_INVALID`.
fn verify_both(
    p: &P11<'_>,
    mech: &mut Mech,
    key: CK_OBJECT_HANDLE,
    data: &[u8],
    sig: &[u8],
) -> R<String> {
    ck(
        p.verify(mech, key, data, sig)?,
        "C_Verify of a valid signature",
    )?;
    let mut bad = sig.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    let rv = p.verify(mech, key, data, &bad)?;
    if rv != CKR_SIGNATURE_INVALID {
        return Err(format!(
            "C_Verify of a tampered signature gave {}, not CKR_SIGNATURE_INVALID",
            rv_name(rv)
        ));
    }
    Ok(format!(
        "a valid {}-byte signature verifies, a tampered one is CKR_SIGNATURE_INVALID",
        sig.len()
    ))
}

// ---------------------------------------------------------------------------------------------
// RSA public-key operation (Montgomery, little-endian u64 limbs): independent of aws-lc's
// padding code, so raw RSA, PKCS #1 v1.5 with any hash and PSS with any hash can be checked.
// ---------------------------------------------------------------------------------------------

struct Mont {
    n: Vec<u64>,
    n0inv: u64,
    r2: Vec<u64>,
    k: usize,
}

fn to_limbs(be: &[u8], limbs: usize) -> Vec<u64> {
    let mut out = vec![0u64; limbs];
    for (i, b) in be.iter().rev().enumerate() {
        out[i / 8] |= (*b as u64) << (8 * (i % 8));
    }
    out
}

fn from_limbs(l: &[u64], k: usize) -> Vec<u8> {
    let mut out = vec![0u8; k];
    for i in 0..k {
        out[k - 1 - i] = (l[i / 8] >> (8 * (i % 8))) as u8;
    }
    out
}

/// a >= b (same length).
fn geq(a: &[u64], b: &[u64]) -> bool {
    for i in (0..a.len()).rev() {
        if a[i] != b[i] {
            return a[i] > b[i];
        }
    }
    true
}

/// a -= b (same length), returning the borrow.
fn sub_in_place(a: &mut [u64], b: &[u64]) -> bool {
    let mut borrow = false;
    for i in 0..a.len() {
        let (d1, b1) = a[i].overflowing_sub(b[i]);
        let (d2, b2) = d1.overflowing_sub(borrow as u64);
        a[i] = d2;
        borrow = b1 || b2;
    }
    borrow
}

impl Mont {
    fn new(n_be: &[u8]) -> Mont {
        let n_be = &n_be[n_be.iter().position(|b| *b != 0).unwrap_or(n_be.len())..];
        let k = n_be.len();
        let l = k.div_ceil(8);
        let n = to_limbs(n_be, l);
        // -n^-1 mod 2^64 by Newton's iteration (n is odd).
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        let n0inv = inv.wrapping_neg();
        // R^2 mod n, R = 2^(64 l), by doubling 1 (2 * 64 * l) times.
        let mut x = vec![0u64; l];
        x[0] = 1;
        for _ in 0..2 * 64 * l {
            let mut carry = 0u64;
            for limb in x.iter_mut() {
                let next = *limb >> 63;
                *limb = (*limb << 1) | carry;
                carry = next;
            }
            if carry == 1 || geq(&x, &n) {
                sub_in_place(&mut x, &n);
            }
        }
        Mont { n, n0inv, r2: x, k }
    }

    /// a * b / R mod n.
    fn mul(&self, a: &[u64], b: &[u64]) -> Vec<u64> {
        let l = self.n.len();
        let mut t = vec![0u64; l + 2];
        for &bi in b.iter().take(l) {
            let mut c: u128 = 0;
            for j in 0..l {
                let x = t[j] as u128 + (a[j] as u128) * (bi as u128) + c;
                t[j] = x as u64;
                c = x >> 64;
            }
            let x = t[l] as u128 + c;
            t[l] = x as u64;
            t[l + 1] = (x >> 64) as u64;
            let m = t[0].wrapping_mul(self.n0inv);
            let x = t[0] as u128 + (m as u128) * (self.n[0] as u128);
            let mut c = x >> 64;
            for j in 1..l {
                let x = t[j] as u128 + (m as u128) * (self.n[j] as u128) + c;
                t[j - 1] = x as u64;
                c = x >> 64;
            }
            let x = t[l] as u128 + c;
            t[l - 1] = x as u64;
            t[l] = t[l + 1] + (x >> 64) as u64;
            t[l + 1] = 0;
        }
        let mut r = t[..l].to_vec();
        if t[l] != 0 || geq(&r, &self.n) {
            sub_in_place(&mut r, &self.n);
        }
        r
    }

    /// x^65537 mod n, big-endian in and out (k bytes).
    fn public_op(&self, x_be: &[u8]) -> R<Vec<u8>> {
        let l = self.n.len();
        let x = to_limbs(x_be, l.max(x_be.len().div_ceil(8)));
        if x.len() > l || geq(&x, &self.n) {
            return Err("RSA input not below the modulus".into());
        }
        let xm = self.mul(&x, &self.r2);
        let mut acc = xm.clone();
        for _ in 0..16 {
            acc = self.mul(&acc, &acc);
        }
        acc = self.mul(&acc, &xm);
        let mut one = vec![0u64; l];
        one[0] = 1;
        Ok(from_limbs(&self.mul(&acc, &one), self.k))
    }
}

/// EMSA-PKCS1-v1_5: 00 01 FF.. 00 || t.
fn emsa_pkcs1(t: &[u8], k: usize) -> Vec<u8> {
    let mut em = vec![0x00, 0x01];
    em.resize(k - t.len() - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(t);
    em
}

fn mgf1(hash: Hash, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.len());
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut input = seed.to_vec();
        input.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&hash.digest(&input));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2) with MGF1 of the same hash and salt length = hash length.
fn emsa_pss_verify(em_full: &[u8], m_hash: &[u8], hash: Hash, mod_bits: usize) -> R<()> {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let lead = em_full.len() - em_len;
    if em_full[..lead].iter().any(|b| *b != 0) {
        return Err("PSS: encoded message longer than emLen".into());
    }
    let em = &em_full[lead..];
    let h_len = hash.len();
    let s_len = h_len;
    if em_len < h_len + s_len + 2 {
        return Err("PSS: emLen too small".into());
    }
    if em[em_len - 1] != 0xbc {
        return Err("PSS: trailer is not 0xbc".into());
    }
    let masked_db = &em[..em_len - h_len - 1];
    let hh = &em[em_len - h_len - 1..em_len - 1];
    let zero_bits = 8 * em_len - em_bits;
    let top_mask = if zero_bits == 0 {
        0u8
    } else {
        0xffu8 << (8 - zero_bits)
    };
    if masked_db[0] & top_mask != 0 {
        return Err("PSS: leftmost bits not zero".into());
    }
    let mask = mgf1(hash, hh, masked_db.len());
    let mut db: Vec<u8> = masked_db.iter().zip(&mask).map(|(a, b)| a ^ b).collect();
    db[0] &= !top_mask;
    let ps_len = em_len - h_len - s_len - 2;
    if db[..ps_len].iter().any(|b| *b != 0) || db[ps_len] != 0x01 {
        return Err("PSS: bad DB padding (wrong salt length?)".into());
    }
    let salt = &db[ps_len + 1..];
    let mut m_prime = vec![0u8; 8];
    m_prime.extend_from_slice(m_hash);
    m_prime.extend_from_slice(salt);
    if hash.digest(&m_prime) != hh {
        return Err("PSS: H != Hash(M')".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

struct RsaKey {
    bits: usize,
    public: CK_OBJECT_HANDLE,
    private: CK_OBJECT_HANDLE,
    /// A copy of the private key with `CKA_UNWRAP` (and not `CKA_DECRYPT`, per the key policy).
    unwrapper: R<CK_OBJECT_HANDLE>,
    n: Vec<u8>,
    e: Vec<u8>,
    mont: Mont,
    /// The private key's PKCS #8, wrapped out with AES-KWP and opened by aws-lc, to check
    /// ciphertexts independently.
    exported: R<Vec<u8>>,
}

impl RsaKey {
    fn k(&self) -> usize {
        self.mont.k
    }
    fn public_encrypting(&self) -> R<aws_lc_rs::rsa::PublicEncryptingKey> {
        aws_lc_rs::rsa::PublicKeyComponents {
            n: self.n.as_slice(),
            e: self.e.as_slice(),
        }
        .try_into()
        .map_err(|_| "aws-lc refuses the public key".to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn from_bits(bits: CK_ULONG) -> R<Curve> {
        match bits {
            256 => Ok(Curve::P256),
            384 => Ok(Curve::P384),
            521 => Ok(Curve::P521),
            b => Err(format!("no curve of {b} bits in the matrix")),
        }
    }
    fn params(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23],
        }
    }
    fn field_bytes(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
    /// The curve's own hash (whose digest length the checks normalise to).
    fn hash(self) -> Hash {
        match self {
            Curve::P256 => Sha256,
            Curve::P384 => Sha384,
            Curve::P521 => Sha512,
        }
    }
    fn verify_alg(self) -> &'static aws_lc_rs::signature::EcdsaVerificationAlgorithm {
        use aws_lc_rs::signature as s;
        match self {
            Curve::P256 => &s::ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &s::ECDSA_P384_SHA384_FIXED,
            Curve::P521 => &s::ECDSA_P521_SHA512_FIXED,
        }
    }
    fn ecdh_alg(self) -> &'static aws_lc_rs::agreement::Algorithm {
        use aws_lc_rs::agreement as a;
        match self {
            Curve::P256 => &a::ECDH_P256,
            Curve::P384 => &a::ECDH_P384,
            Curve::P521 => &a::ECDH_P521,
        }
    }
    /// Check an `r || s` signature over digest `d` (any length): ECDSA uses the leftmost
    /// order-length bits of `d` as an integer, so a shorter digest is zero-padded on the left
    /// and a longer one truncated to the curve hash's length, then verified as that hash.
    fn check_ecdsa(self, point: &[u8], d: &[u8], sig: &[u8]) -> R<()> {
        if sig.len() != 2 * self.field_bytes() {
            return Err(format!(
                "ECDSA signature is {} bytes, not {}",
                sig.len(),
                2 * self.field_bytes()
            ));
        }
        let h = self.hash();
        let norm: Vec<u8> = if d.len() >= h.len() {
            d[..h.len()].to_vec()
        } else {
            let mut v = vec![0u8; h.len() - d.len()];
            v.extend_from_slice(d);
            v
        };
        let digest = aws_lc_rs::digest::Digest::import_less_safe(&norm, h.alg().expect("SHA-2"))
            .map_err(|_| "digest import".to_string())?;
        aws_lc_rs::signature::UnparsedPublicKey::new(self.verify_alg(), point)
            .verify_digest(&digest, sig)
            .map_err(|_| "aws-lc rejects the ECDSA signature".to_string())
    }
}

struct EcKey {
    public: CK_OBJECT_HANDLE,
    private: CK_OBJECT_HANDLE,
    curve: Curve,
    /// The raw uncompressed point.
    point: Vec<u8>,
}

struct EdKey {
    public: CK_OBJECT_HANDLE,
    private: CK_OBJECT_HANDLE,
    point: Vec<u8>,
}

const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// The content of a DER OCTET STRING (short or long form length).
fn der_octets(der: &[u8]) -> R<&[u8]> {
    if der.len() < 2 || der[0] != 0x04 {
        return Err("CKA_EC_POINT is not a DER OCTET STRING".into());
    }
    let (len, start) = if der[1] & 0x80 == 0 {
        (der[1] as usize, 2)
    } else {
        let n = (der[1] & 0x7f) as usize;
        let mut l = 0usize;
        for b in &der[2..2 + n] {
            l = (l << 8) | *b as usize;
        }
        (l, 2 + n)
    };
    if der.len() != start + len {
        return Err("CKA_EC_POINT length mismatch".into());
    }
    Ok(&der[start..])
}

/// State shared by the rows: the session, the module's claims, and keys built once.
struct Ctx<'a> {
    p: P11<'a>,
    /// What `C_GetMechanismInfo` said, by mechanism.
    claims: HashMap<CK_MECHANISM_TYPE, CK_MECHANISM_INFO>,
    rsa: HashMap<CK_ULONG, Result<Rc<RsaKey>, String>>,
    ec: HashMap<CK_ULONG, Result<Rc<EcKey>, String>>,
    ed: Option<Result<Rc<EdKey>, String>>,
}

const SESSION_KEY: &[(CK_ATTRIBUTE_TYPE, bool)] = &[(CKA_TOKEN, false)];
const CIPHER: &[(CK_ATTRIBUTE_TYPE, bool)] = &[(CKA_ENCRYPT, true), (CKA_DECRYPT, true)];
const MAC: &[(CK_ATTRIBUTE_TYPE, bool)] = &[(CKA_SIGN, true), (CKA_VERIFY, true)];
const KEK: &[(CK_ATTRIBUTE_TYPE, bool)] = &[
    (CKA_WRAP, true),
    (CKA_UNWRAP, true),
    (CKA_ENCRYPT, false),
    (CKA_DECRYPT, false),
];
const DERIVE: &[(CK_ATTRIBUTE_TYPE, bool)] = &[(CKA_DERIVE, true)];
const PLAIN: &[(CK_ATTRIBUTE_TYPE, bool)] = &[];

/// The template of a key the test may read back: not sensitive, extractable, session object.
fn readable() -> Tpl {
    Tpl::default()
        .flags(SESSION_KEY)
        .b(CKA_SENSITIVE, false)
        .b(CKA_EXTRACTABLE, true)
}

fn secret_template(kt: CK_KEY_TYPE) -> Tpl {
    readable().u(CKA_CLASS, CKO_SECRET_KEY).u(CKA_KEY_TYPE, kt)
}

impl Ctx<'_> {
    fn listed(&self, mech: CK_MECHANISM_TYPE) -> bool {
        self.claims.contains_key(&mech)
    }

    /// Whether the module claims `mech` can generate a key of `size` (in its own units).
    fn can_generate(&self, mech: CK_MECHANISM_TYPE, size: CK_ULONG) -> bool {
        self.claims.get(&mech).is_some_and(|i| {
            i.flags & CKF_GENERATE != 0 && i.ulMinKeySize <= size && size <= i.ulMaxKeySize
        })
    }

    /// A readable secret key of `len` bytes with `usage`: generated when the module claims it
    /// can, else created from random bytes. Returns the handle and the value.
    fn secret(
        &self,
        kt: CK_KEY_TYPE,
        len: usize,
        usage: &[(CK_ATTRIBUTE_TYPE, bool)],
    ) -> R<(CK_OBJECT_HANDLE, Vec<u8>)> {
        let (gen, gen_size) = match kt {
            CKK_AES => (CKM_AES_KEY_GEN, len as CK_ULONG),
            _ => (CKM_GENERIC_SECRET_KEY_GEN, (len * 8) as CK_ULONG),
        };
        let k = if self.can_generate(gen, gen_size) {
            let t = readable().u(CKA_VALUE_LEN, len as CK_ULONG).flags(usage);
            self.p.generate_key(&mut Mech::plain(gen), &t)?
        } else {
            let t = secret_template(kt)
                .bytes(CKA_VALUE, &random(len))
                .flags(usage);
            self.p.create(&t)?
        };
        let value = self.p.get(k, CKA_VALUE)?;
        if value.len() != len {
            return Err(format!(
                "secret key has {} value bytes, asked for {len}",
                value.len()
            ));
        }
        Ok((k, value))
    }

    fn rsa(&mut self, bits: CK_ULONG) -> R<Rc<RsaKey>> {
        if let Some(k) = self.rsa.get(&bits) {
            return k.clone();
        }
        let t0 = Instant::now();
        let k = self.build_rsa(bits).map(Rc::new);
        println!(
            "  (RSA-{bits} key pair built in {:.1} s{})",
            t0.elapsed().as_secs_f64(),
            match &k {
                Ok(k) => match &k.exported {
                    Ok(_) => String::new(),
                    Err(e) => format!(
                        "; private key not exported, ciphertexts checked by round trip: {e}"
                    ),
                },
                Err(e) => format!(": {e}"),
            }
        );
        self.rsa.insert(bits, k.clone());
        k
    }

    fn build_rsa(&self, bits: CK_ULONG) -> R<RsaKey> {
        if !self.listed(CKM_RSA_PKCS_KEY_PAIR_GEN) {
            return Err(
                "CKM_RSA_PKCS_KEY_PAIR_GEN is not listed: no way to build an RSA key".into(),
            );
        }
        let public = Tpl::default()
            .flags(SESSION_KEY)
            .u(CKA_MODULUS_BITS, bits)
            .bytes(CKA_PUBLIC_EXPONENT, &[0x01, 0x00, 0x01])
            .b(CKA_VERIFY, true)
            .b(CKA_ENCRYPT, true)
            .b(CKA_WRAP, true);
        let private = Tpl::default()
            .flags(SESSION_KEY)
            .b(CKA_PRIVATE, true)
            .b(CKA_SENSITIVE, true)
            .b(CKA_EXTRACTABLE, true)
            .b(CKA_SIGN, true)
            .b(CKA_DECRYPT, true)
            .b(CKA_UNWRAP, false);
        let (pub_h, priv_h) = self.p.generate_pair(
            &mut Mech::plain(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )?;
        let n = self.p.get(pub_h, CKA_MODULUS)?;
        let n = n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..].to_vec();
        let e = self.p.get(pub_h, CKA_PUBLIC_EXPONENT)?;
        let e = e[e.iter().position(|b| *b != 0).unwrap_or(e.len())..].to_vec();
        if e != [0x01, 0x00, 0x01] {
            return Err(format!("public exponent is {}, asked for 010001", hex(&e)));
        }
        let n_bits = n.len() * 8 - n[0].leading_zeros() as usize;
        if n_bits as CK_ULONG != bits {
            return Err(format!("modulus has {n_bits} bits, asked for {bits}"));
        }
        let unwrapper = self.p.copy(
            priv_h,
            &Tpl::default().b(CKA_DECRYPT, false).b(CKA_UNWRAP, true),
        );
        let exported = self.export_rsa(priv_h);
        Ok(RsaKey {
            bits: n_bits,
            public: pub_h,
            private: priv_h,
            unwrapper,
            mont: Mont::new(&n),
            n,
            e,
            exported,
        })
    }

    /// Wrap the private key out under a known AES-256 key with KWP and open it with aws-lc.
    fn export_rsa(&self, private: CK_OBJECT_HANDLE) -> R<Vec<u8>> {
        if !self.listed(CKM_AES_KEY_WRAP_KWP) {
            return Err("CKM_AES_KEY_WRAP_KWP not listed".into());
        }
        let (kek, kek_value) = self.secret(CKK_AES, 32, KEK)?;
        let wrapped = self
            .p
            .wrap(&mut Mech::plain(CKM_AES_KEY_WRAP_KWP), kek, private)?;
        let pkcs8 = kw_unwrap(&kek_value, &wrapped, true)?;
        aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .map_err(|e| format!("aws-lc refuses the exported PKCS #8: {e}"))?;
        Ok(pkcs8)
    }

    fn ec(&mut self, bits: CK_ULONG) -> R<Rc<EcKey>> {
        if let Some(k) = self.ec.get(&bits) {
            return k.clone();
        }
        let k = self.build_ec(bits).map(Rc::new);
        self.ec.insert(bits, k.clone());
        k
    }

    fn build_ec(&self, bits: CK_ULONG) -> R<EcKey> {
        let curve = Curve::from_bits(bits)?;
        if !self.listed(CKM_EC_KEY_PAIR_GEN) {
            return Err("CKM_EC_KEY_PAIR_GEN is not listed: no way to build an EC key".into());
        }
        let public = Tpl::default()
            .flags(SESSION_KEY)
            .bytes(CKA_EC_PARAMS, curve.params())
            .b(CKA_VERIFY, true);
        let private = Tpl::default()
            .flags(SESSION_KEY)
            .b(CKA_PRIVATE, true)
            .b(CKA_SIGN, true)
            .b(CKA_DERIVE, true);
        let (pub_h, priv_h) =
            self.p
                .generate_pair(&mut Mech::plain(CKM_EC_KEY_PAIR_GEN), &public, &private)?;
        let point = der_octets(&self.p.get(pub_h, CKA_EC_POINT)?)?.to_vec();
        if point.len() != 1 + 2 * curve.field_bytes() || point[0] != 0x04 {
            return Err(format!(
                "CKA_EC_POINT holds {} bytes starting {:02x}, not an uncompressed {curve:?} point",
                point.len(),
                point.first().copied().unwrap_or(0)
            ));
        }
        let params = self.p.get(pub_h, CKA_EC_PARAMS)?;
        if params != curve.params() {
            return Err(format!("CKA_EC_PARAMS is {}", hex(&params)));
        }
        Ok(EcKey {
            public: pub_h,
            private: priv_h,
            curve,
            point,
        })
    }

    fn ed(&mut self, bits: CK_ULONG) -> R<Rc<EdKey>> {
        if bits != 255 {
            return Err(format!("no Edwards curve of {bits} bits in the matrix"));
        }
        if let Some(k) = &self.ed {
            return k.clone();
        }
        let k = self.build_ed().map(Rc::new);
        self.ed = Some(k.clone());
        k
    }

    fn build_ed(&self) -> R<EdKey> {
        if !self.listed(CKM_EC_EDWARDS_KEY_PAIR_GEN) {
            return Err(
                "CKM_EC_EDWARDS_KEY_PAIR_GEN is not listed: no way to build an Ed25519 key".into(),
            );
        }
        let public = Tpl::default()
            .flags(SESSION_KEY)
            .bytes(CKA_EC_PARAMS, ED25519_PARAMS)
            .b(CKA_VERIFY, true);
        let private = Tpl::default()
            .flags(SESSION_KEY)
            .b(CKA_PRIVATE, true)
            .b(CKA_SIGN, true);
        let (pub_h, priv_h) = self.p.generate_pair(
            &mut Mech::plain(CKM_EC_EDWARDS_KEY_PAIR_GEN),
            &public,
            &private,
        )?;
        let point = der_octets(&self.p.get(pub_h, CKA_EC_POINT)?)?.to_vec();
        if point.len() != 32 {
            return Err(format!("Ed25519 CKA_EC_POINT holds {} bytes", point.len()));
        }
        Ok(EdKey {
            public: pub_h,
            private: priv_h,
            point,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Independent symmetric primitives (aws-lc)
// ---------------------------------------------------------------------------------------------

fn aes_alg(key: &[u8]) -> R<&'static aws_lc_rs::cipher::Algorithm> {
    use aws_lc_rs::cipher as c;
    match key.len() {
        16 => Ok(&c::AES_128),
        24 => Ok(&c::AES_192),
        32 => Ok(&c::AES_256),
        n => Err(format!("no AES of {n} bytes")),
    }
}

fn unbound(key: &[u8]) -> R<UnboundCipherKey> {
    UnboundCipherKey::new(aes_alg(key)?, key).map_err(|_| "aws-lc AES key".to_string())
}

/// The reference encryption (deterministic given the IV / nonce).
fn aes_reference(mode: AesMode, key: &[u8], iv: &[u8], aad: &[u8], pt: &[u8]) -> R<Vec<u8>> {
    let err = |what: &str| format!("aws-lc {what} failed");
    let mut buf = pt.to_vec();
    match mode {
        AesMode::Ecb => {
            EncryptingKey::ecb(unbound(key)?)
                .map_err(|_| err("ECB key"))?
                .less_safe_encrypt(&mut buf, EncryptionContext::None)
                .map_err(|_| err("ECB"))?;
        }
        AesMode::Cbc | AesMode::Ctr => {
            let iv: [u8; 16] = iv.try_into().map_err(|_| err("IV"))?;
            let k = if matches!(mode, AesMode::Cbc) {
                EncryptingKey::cbc(unbound(key)?)
            } else {
                EncryptingKey::ctr(unbound(key)?)
            }
            .map_err(|_| err("key"))?;
            k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
                .map_err(|_| err("encrypt"))?;
        }
        AesMode::CbcPad => {
            let iv: [u8; 16] = iv.try_into().map_err(|_| err("IV"))?;
            PaddedBlockEncryptingKey::cbc_pkcs7(unbound(key)?)
                .map_err(|_| err("CBC-PKCS7 key"))?
                .less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
                .map_err(|_| err("CBC-PKCS7"))?;
        }
        AesMode::Gcm => {
            use aws_lc_rs::aead;
            let alg = match key.len() {
                16 => &aead::AES_128_GCM,
                24 => &aead::AES_192_GCM,
                32 => &aead::AES_256_GCM,
                n => return Err(format!("no AES-GCM of {n} bytes")),
            };
            let k = aead::LessSafeKey::new(
                aead::UnboundKey::new(alg, key).map_err(|_| err("GCM key"))?,
            );
            let nonce = aead::Nonce::try_assume_unique_for_key(iv).map_err(|_| err("nonce"))?;
            k.seal_in_place_append_tag(nonce, aead::Aad::from(aad), &mut buf)
                .map_err(|_| err("GCM seal"))?;
        }
    }
    Ok(buf)
}

fn cmac(key: &[u8], data: &[u8]) -> R<Vec<u8>> {
    use aws_lc_rs::cmac as c;
    let alg = match key.len() {
        16 => c::AES_128,
        24 => c::AES_192,
        32 => c::AES_256,
        n => return Err(format!("no AES-CMAC of {n} bytes")),
    };
    let k = c::Key::new(alg, key).map_err(|_| "aws-lc CMAC key".to_string())?;
    Ok(c::sign(&k, data)
        .map_err(|_| "aws-lc CMAC".to_string())?
        .as_ref()
        .to_vec())
}

fn kek(key: &[u8]) -> R<KeyEncryptionKey<AesBlockCipher>> {
    let cipher = match key.len() {
        16 => &aws_lc_rs::key_wrap::AES_128,
        32 => &aws_lc_rs::key_wrap::AES_256,
        n => return Err(format!("aws-lc has no AES key wrap with a {n}-byte key")),
    };
    KeyEncryptionKey::new(cipher, key).map_err(|_| "aws-lc KEK".to_string())
}

fn kw_wrap(key: &[u8], data: &[u8], padded: bool) -> R<Vec<u8>> {
    let k = kek(key)?;
    let mut out = vec![0u8; data.len() + 16];
    let n = if padded {
        k.wrap_with_padding(data, &mut out)
    } else {
        k.wrap(data, &mut out)
    }
    .map_err(|_| "aws-lc key wrap".to_string())?
    .len();
    out.truncate(n);
    Ok(out)
}

fn kw_unwrap(key: &[u8], data: &[u8], padded: bool) -> R<Vec<u8>> {
    let k = kek(key)?;
    let mut out = vec![0u8; data.len()];
    let n = if padded {
        k.unwrap_with_padding(data, &mut out)
    } else {
        k.unwrap(data, &mut out)
    }
    .map_err(|_| "aws-lc cannot unwrap what the module wrapped".to_string())?
    .len();
    out.truncate(n);
    Ok(out)
}

struct Len(usize);

impl aws_lc_rs::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// The rows
// ---------------------------------------------------------------------------------------------

const MSG: &[u8] = b"the quick brown fox jumps over the lazy dog, said the matrix";
const OAEP_LABEL: &[u8] = b"matrix label";

fn no_case(flag: &str) -> R<String> {
    Err(format!(
        "the module claims {flag} but the matrix's case for this mechanism cannot exercise it"
    ))
}

/// Exercise one (mechanism, flag, size). Ok(detail) or Err(why).
fn exercise(ctx: &mut Ctx<'_>, c: Case, flag: CK_FLAGS, fname: &str, size: CK_ULONG) -> R<String> {
    match c.kind {
        RsaGen => match flag {
            CKF_GENERATE_KEY_PAIR => rsa_gen(ctx, size),
            _ => no_case(fname),
        },
        Rsa(scheme) => rsa_row(ctx, c.mech, scheme, flag, fname, size),
        EcGen => match flag {
            CKF_GENERATE_KEY_PAIR => {
                let k = ctx.ec(size)?;
                let d = k.curve.hash().digest(MSG);
                let sig = ctx.p.sign(&mut Mech::plain(CKM_ECDSA), k.private, &d)?;
                k.curve.check_ecdsa(&k.point, &d, &sig)?;
                Ok(format!(
                    "{:?} pair; point on the curve, a CKM_ECDSA signature verifies in aws-lc",
                    k.curve
                ))
            }
            _ => no_case(fname),
        },
        Ecdsa(hash) => {
            let k = ctx.ec(size)?;
            let curve = k.curve;
            let (data, d) = match hash {
                None => {
                    let d = curve.hash().digest(MSG);
                    (d.clone(), d)
                }
                Some(h) => (MSG.to_vec(), h.digest(MSG)),
            };
            let point = k.point.clone();
            let check = move |sig: &[u8]| curve.check_ecdsa(&point, &d, sig);
            let mut mech = Mech::plain(c.mech);
            match flag {
                CKF_SIGN => {
                    let sig = ctx.p.sign(&mut mech, k.private, &data)?;
                    check(&sig)?;
                    Ok(format!(
                        "{curve:?}: aws-lc verifies the {}-byte signature",
                        sig.len()
                    ))
                }
                CKF_VERIFY => ctx
                    .p
                    .sign_then_verify(&mut mech, k.private, k.public, &data, check),
                _ => no_case(fname),
            }
        }
        Ecdh => match flag {
            CKF_DERIVE => ecdh_row(ctx, size),
            _ => no_case(fname),
        },
        EdGen => match flag {
            CKF_GENERATE_KEY_PAIR => {
                let k = ctx.ed(size)?;
                let sig = ctx.p.sign(&mut Mech::plain(CKM_EDDSA), k.private, MSG)?;
                ed_check(&k.point, &sig)?;
                Ok("Ed25519 pair; a CKM_EDDSA signature verifies in aws-lc".into())
            }
            _ => no_case(fname),
        },
        EdDsa => {
            let k = ctx.ed(size)?;
            let mut mech = Mech::plain(CKM_EDDSA);
            let point = k.point.clone();
            match flag {
                CKF_SIGN => {
                    let sig = ctx.p.sign(&mut mech, k.private, MSG)?;
                    ed_check(&point, &sig)?;
                    Ok("aws-lc verifies the Ed25519 signature".into())
                }
                CKF_VERIFY => ctx
                    .p
                    .sign_then_verify(&mut mech, k.private, k.public, MSG, |s| ed_check(&point, s)),
                _ => no_case(fname),
            }
        }
        AesGen => match flag {
            CKF_GENERATE => aes_gen(ctx, size),
            _ => no_case(fname),
        },
        Aes(mode) => aes_row(ctx, c.mech, mode, flag, fname, size),
        AesCmac { general } => {
            let (k, value) = ctx.secret(CKK_AES, size as usize, MAC)?;
            let full = cmac(&value, MSG)?;
            let (mut mech, want) = if general {
                (Mech::ulong(c.mech, 8), full[..8].to_vec())
            } else {
                (Mech::plain(c.mech), full)
            };
            match flag {
                CKF_SIGN => {
                    let mac = ctx.p.sign(&mut mech, k, MSG)?;
                    expect_eq("MAC vs aws-lc CMAC", &mac, &want)?;
                    Ok(format!("{}-byte MAC equals aws-lc's", mac.len()))
                }
                CKF_VERIFY => verify_both(&ctx.p, &mut mech, k, MSG, &want),
                _ => no_case(fname),
            }
        }
        AesWrap(pad) => aes_wrap_row(ctx, c.mech, pad, flag, fname, size),
        RsaX931Gen => match flag {
            CKF_GENERATE_KEY_PAIR => rsa_x931_gen(ctx, size),
            _ => no_case(fname),
        },
        CloudHsmGcm => cloudhsm_gcm_row(ctx, flag, fname, size),
        CloudHsmKdf => match flag {
            CKF_DERIVE => cloudhsm_kdf_row(ctx, size),
            _ => no_case(fname),
        },
        GenericGen => match flag {
            CKF_GENERATE => generic_gen(ctx, size),
            _ => no_case(fname),
        },
        Hmac { hash, general } => {
            let (k, value) = ctx.secret(CKK_GENERIC_SECRET, size as usize, MAC)?;
            let full = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(hash.hmac(), &value), MSG)
                .as_ref()
                .to_vec();
            let (mut mech, want) = if general {
                (Mech::ulong(c.mech, 16), full[..16].to_vec())
            } else {
                (Mech::plain(c.mech), full)
            };
            match flag {
                CKF_SIGN => {
                    let mac = ctx.p.sign(&mut mech, k, MSG)?;
                    expect_eq("MAC vs aws-lc HMAC", &mac, &want)?;
                    Ok(format!("{}-byte MAC equals aws-lc's", mac.len()))
                }
                CKF_VERIFY => verify_both(&ctx.p, &mut mech, k, MSG, &want),
                _ => no_case(fname),
            }
        }
        Hkdf { data } => match flag {
            CKF_DERIVE => hkdf_row(ctx, size, data),
            _ => no_case(fname),
        },
        Digest(hash) => match flag {
            CKF_DIGEST => digest_row(ctx, hash),
            _ => no_case(fname),
        },
    }
}

fn ed_check(point: &[u8], sig: &[u8]) -> R<()> {
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, point)
        .verify(MSG, sig)
        .map_err(|_| "aws-lc rejects the Ed25519 signature".to_string())
}

fn rsa_gen(ctx: &mut Ctx<'_>, bits: CK_ULONG) -> R<String> {
    let k = ctx.rsa(bits)?;
    let attr_bits = ctx.p.get_ulong(k.public, CKA_MODULUS_BITS)?;
    if attr_bits != bits {
        return Err(format!("CKA_MODULUS_BITS is {attr_bits}, asked for {bits}"));
    }
    let sig = ctx
        .p
        .sign(&mut Mech::plain(CKM_SHA256_RSA_PKCS), k.private, MSG)?;
    aws_lc_rs::signature::RsaPublicKeyComponents {
        n: k.n.as_slice(),
        e: k.e.as_slice(),
    }
    .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, MSG, &sig)
    .map_err(|_| "aws-lc rejects a CKM_SHA256_RSA_PKCS signature of the new pair".to_string())?;
    Ok(format!(
        "{}-bit modulus, e = 65537; a SHA256-RSA-PKCS signature verifies in aws-lc",
        k.bits
    ))
}

/// An independent check of a signature.
type SigCheck = Box<dyn Fn(&[u8]) -> R<()>>;

/// What to sign for an RSA scheme, its mechanism, and the independent check of a signature.
fn rsa_sign_case(
    mech_ty: CK_MECHANISM_TYPE,
    scheme: RsaScheme,
    k: &Rc<RsaKey>,
) -> (Vec<u8>, Mech, SigCheck) {
    let kk = k.clone();
    let kb = k.k();
    let recover = move |sig: &[u8]| -> R<Vec<u8>> {
        if sig.len() != kb {
            return Err(format!("signature is {} bytes, modulus {kb}", sig.len()));
        }
        kk.mont.public_op(sig)
    };
    match scheme {
        RsaScheme::Pkcs1 => {
            let mut t = Sha256.digest_info().to_vec();
            t.extend_from_slice(&Sha256.digest(MSG));
            let em = emsa_pkcs1(&t, kb);
            (
                t,
                Mech::plain(mech_ty),
                Box::new(move |s| expect_eq("s^e mod n", &recover(s)?, &em)),
            )
        }
        RsaScheme::X509 => {
            let mut x = vec![0u8];
            x.extend_from_slice(&random(kb - 1));
            let want = x.clone();
            (
                x,
                Mech::plain(mech_ty),
                Box::new(move |s| expect_eq("s^e mod n", &recover(s)?, &want)),
            )
        }
        RsaScheme::Pkcs1Hash(h) => {
            let mut t = h.digest_info().to_vec();
            t.extend_from_slice(&h.digest(MSG));
            let em = emsa_pkcs1(&t, kb);
            (
                MSG.to_vec(),
                Mech::plain(mech_ty),
                Box::new(move |s| expect_eq("s^e mod n", &recover(s)?, &em)),
            )
        }
        RsaScheme::PssRaw => {
            let d = Sha256.digest(MSG);
            let bits = k.bits;
            let dd = d.clone();
            (
                d,
                Mech::pss(mech_ty, Sha256),
                Box::new(move |s| emsa_pss_verify(&recover(s)?, &dd, Sha256, bits)),
            )
        }
        RsaScheme::PssHash(h) => {
            let d = h.digest(MSG);
            let bits = k.bits;
            (
                MSG.to_vec(),
                Mech::pss(mech_ty, h),
                Box::new(move |s| emsa_pss_verify(&recover(s)?, &d, h, bits)),
            )
        }
        RsaScheme::Oaep => unreachable!("CKM_RSA_PKCS_OAEP does not sign"),
    }
}

/// Encrypt with aws-lc under the public key (PKCS #1 v1.5 or OAEP-SHA-256 with the label), or
/// raw with the test's own public operation.
fn rsa_reference_encrypt(k: &RsaKey, scheme: RsaScheme, pt: &[u8]) -> R<Vec<u8>> {
    use aws_lc_rs::rsa;
    let err = |w: &str| format!("aws-lc {w} failed");
    match scheme {
        RsaScheme::X509 => k.mont.public_op(pt),
        RsaScheme::Pkcs1 => {
            let key = rsa::Pkcs1PublicEncryptingKey::new(k.public_encrypting()?)
                .map_err(|_| err("PKCS #1 key"))?;
            let mut out = vec![0u8; key.ciphertext_size()];
            Ok(key
                .encrypt(pt, &mut out)
                .map_err(|_| err("PKCS #1 encrypt"))?
                .to_vec())
        }
        RsaScheme::Oaep => {
            let key = rsa::OaepPublicEncryptingKey::new(k.public_encrypting()?)
                .map_err(|_| err("OAEP key"))?;
            let mut out = vec![0u8; key.ciphertext_size()];
            Ok(key
                .encrypt(&rsa::OAEP_SHA256_MGF1SHA256, pt, &mut out, Some(OAEP_LABEL))
                .map_err(|_| err("OAEP encrypt"))?
                .to_vec())
        }
        _ => Err("not an encryption scheme".into()),
    }
}

/// Decrypt with the exported private key in aws-lc.
fn rsa_reference_decrypt(pkcs8: &[u8], scheme: RsaScheme, ct: &[u8]) -> R<Vec<u8>> {
    use aws_lc_rs::rsa;
    let err = |w: &str| format!("aws-lc {w} failed");
    let key = rsa::PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| err("PKCS #8 parse"))?;
    match scheme {
        RsaScheme::Pkcs1 => {
            let key = rsa::Pkcs1PrivateDecryptingKey::new(key).map_err(|_| err("PKCS #1 key"))?;
            let mut out = vec![0u8; key.min_output_size()];
            Ok(key
                .decrypt(ct, &mut out)
                .map_err(|_| err("PKCS #1 decrypt of the module's ciphertext"))?
                .to_vec())
        }
        RsaScheme::Oaep => {
            let key = rsa::OaepPrivateDecryptingKey::new(key).map_err(|_| err("OAEP key"))?;
            let mut out = vec![0u8; key.min_output_size()];
            Ok(key
                .decrypt(&rsa::OAEP_SHA256_MGF1SHA256, ct, &mut out, Some(OAEP_LABEL))
                .map_err(|_| err("OAEP decrypt of the module's ciphertext"))?
                .to_vec())
        }
        _ => Err("not an encryption scheme".into()),
    }
}

fn rsa_enc_mech(mech_ty: CK_MECHANISM_TYPE, scheme: RsaScheme) -> Mech {
    match scheme {
        RsaScheme::Oaep => Mech::oaep(OAEP_LABEL),
        _ => Mech::plain(mech_ty),
    }
}

fn rsa_row(
    ctx: &mut Ctx<'_>,
    mech_ty: CK_MECHANISM_TYPE,
    scheme: RsaScheme,
    flag: CK_FLAGS,
    fname: &str,
    bits: CK_ULONG,
) -> R<String> {
    let k = ctx.rsa(bits)?;
    let is_cipher = matches!(scheme, RsaScheme::Pkcs1 | RsaScheme::X509 | RsaScheme::Oaep);
    match flag {
        CKF_SIGN | CKF_VERIFY if !matches!(scheme, RsaScheme::Oaep) => {
            let (data, mut mech, check) = rsa_sign_case(mech_ty, scheme, &k);
            if flag == CKF_SIGN {
                let sig = ctx.p.sign(&mut mech, k.private, &data)?;
                check(&sig)?;
                Ok(format!(
                    "s^e mod n of the {}-byte signature is the expected encoding",
                    sig.len()
                ))
            } else {
                ctx.p
                    .sign_then_verify(&mut mech, k.private, k.public, &data, check)
            }
        }
        CKF_ENCRYPT if is_cipher => {
            let pt = match scheme {
                RsaScheme::X509 => {
                    let mut x = vec![0u8];
                    x.extend_from_slice(&random(k.k() - 1));
                    x
                }
                _ => random(32),
            };
            let ct = ctx
                .p
                .encrypt(&mut rsa_enc_mech(mech_ty, scheme), k.public, &pt)?;
            if ct.len() != k.k() {
                return Err(format!(
                    "ciphertext is {} bytes, modulus {}",
                    ct.len(),
                    k.k()
                ));
            }
            if let RsaScheme::X509 = scheme {
                expect_eq("ciphertext vs m^e mod n", &ct, &k.mont.public_op(&pt)?)?;
                return Ok("ciphertext equals m^e mod n".into());
            }
            match &k.exported {
                Ok(priv_key) => {
                    let back = rsa_reference_decrypt(priv_key, scheme, &ct)?;
                    expect_eq("aws-lc decryption", &back, &pt)?;
                    Ok("aws-lc decrypts the ciphertext (exported private key)".into())
                }
                Err(_) => {
                    let back = ctx
                        .p
                        .decrypt(&mut rsa_enc_mech(mech_ty, scheme), k.private, &ct)?;
                    expect_eq("round trip", &back, &pt)?;
                    Ok("round trip through C_Decrypt (private key not exportable)".into())
                }
            }
        }
        CKF_DECRYPT if is_cipher => {
            let pt = match scheme {
                RsaScheme::X509 => {
                    let mut x = vec![0u8];
                    x.extend_from_slice(&random(k.k() - 1));
                    x
                }
                _ => random(32),
            };
            let ct = rsa_reference_encrypt(&k, scheme, &pt)?;
            let back = ctx
                .p
                .decrypt(&mut rsa_enc_mech(mech_ty, scheme), k.private, &ct)?;
            expect_eq("C_Decrypt of an independent ciphertext", &back, &pt)?;
            Ok(format!(
                "decrypts an independent ciphertext to the {} plaintext bytes",
                pt.len()
            ))
        }
        CKF_WRAP if matches!(scheme, RsaScheme::Pkcs1 | RsaScheme::Oaep) => {
            // A 112-bit secret: RSA-2048 is rated 112 bits, and a key may only travel under a
            // key at least as strong.
            let (target, value) = ctx.secret(CKK_GENERIC_SECRET, 14, PLAIN)?;
            let wrapped = ctx
                .p
                .wrap(&mut rsa_enc_mech(mech_ty, scheme), k.public, target)?;
            match &k.exported {
                Ok(priv_key) => {
                    let back = rsa_reference_decrypt(priv_key, scheme, &wrapped)?;
                    expect_eq("aws-lc decryption of the wrapped key", &back, &value)?;
                    Ok("aws-lc decrypts the wrapped key to its value".into())
                }
                Err(_) => {
                    let unwrapper = k.unwrapper.clone()?;
                    let u = ctx.p.unwrap(
                        &mut rsa_enc_mech(mech_ty, scheme),
                        unwrapper,
                        &wrapped,
                        &secret_template(CKK_GENERIC_SECRET),
                    )?;
                    expect_eq("unwrapped value", &ctx.p.get(u, CKA_VALUE)?, &value)?;
                    Ok(
                        "wrap -> C_UnwrapKey gives the value back (private key not exportable)"
                            .into(),
                    )
                }
            }
        }
        CKF_UNWRAP if matches!(scheme, RsaScheme::Pkcs1 | RsaScheme::Oaep) => {
            let unwrapper = k
                .unwrapper
                .clone()
                .map_err(|e| format!("no unwrapping copy of the private key: {e}"))?;
            let value = random(14);
            let wrapped = rsa_reference_encrypt(&k, scheme, &value)?;
            let u = ctx.p.unwrap(
                &mut rsa_enc_mech(mech_ty, scheme),
                unwrapper,
                &wrapped,
                &secret_template(CKK_GENERIC_SECRET),
            )?;
            expect_eq("unwrapped value", &ctx.p.get(u, CKA_VALUE)?, &value)?;
            Ok("unwraps an aws-lc-wrapped secret to its value".into())
        }
        _ => no_case(fname),
    }
}

fn ecdh_row(ctx: &mut Ctx<'_>, bits: CK_ULONG) -> R<String> {
    use aws_lc_rs::agreement;
    let k = ctx.ec(bits)?;
    let alg = k.curve.ecdh_alg();
    let peer = agreement::PrivateKey::generate(alg).map_err(|_| "aws-lc ECDH key".to_string())?;
    let peer_point = peer
        .compute_public_key()
        .map_err(|_| "aws-lc ECDH public".to_string())?
        .as_ref()
        .to_vec();
    let fb = k.curve.field_bytes();
    let t = secret_template(CKK_GENERIC_SECRET).u(CKA_VALUE_LEN, fb as CK_ULONG);
    let derived = ctx.p.derive(&mut Mech::ecdh(&peer_point), k.private, &t)?;
    let z = ctx.p.get(derived, CKA_VALUE)?;
    let want = agreement::agree(
        &peer,
        agreement::UnparsedPublicKey::new(alg, &k.point),
        "aws-lc ECDH with the module's point".to_string(),
        |z| Ok(z.to_vec()),
    )?;
    expect_eq("shared secret vs aws-lc", &z, &want)?;
    Ok(format!(
        "{:?}: both sides derive the same {fb}-byte secret (module and aws-lc)",
        k.curve
    ))
}

fn aes_gen(ctx: &mut Ctx<'_>, size: CK_ULONG) -> R<String> {
    let t = readable().u(CKA_VALUE_LEN, size).flags(CIPHER);
    let k = ctx.p.generate_key(&mut Mech::plain(CKM_AES_KEY_GEN), &t)?;
    let value = ctx.p.get(k, CKA_VALUE)?;
    if value.len() as CK_ULONG != size {
        return Err(format!("generated {} bytes, asked for {size}", value.len()));
    }
    let kt = ctx.p.get_ulong(k, CKA_KEY_TYPE)?;
    if kt != CKK_AES {
        return Err(format!("CKA_KEY_TYPE is {kt:#x}"));
    }
    if ctx.listed(CKM_AES_ECB) {
        let pt = random(16);
        let ct = ctx.p.encrypt(&mut Mech::plain(CKM_AES_ECB), k, &pt)?;
        expect_eq(
            "AES-ECB with the new key",
            &ct,
            &aes_reference(AesMode::Ecb, &value, &[], &[], &pt)?,
        )?;
        Ok(format!(
            "{size}-byte AES key; AES-ECB with it equals aws-lc with its value"
        ))
    } else {
        Ok(format!("{size}-byte AES key"))
    }
}

fn generic_gen(ctx: &mut Ctx<'_>, bits: CK_ULONG) -> R<String> {
    if bits % 8 != 0 {
        return Err(format!("{bits} bits is not a whole number of bytes"));
    }
    let len = bits / 8;
    let t = readable().u(CKA_VALUE_LEN, len).flags(MAC);
    let k = ctx
        .p
        .generate_key(&mut Mech::plain(CKM_GENERIC_SECRET_KEY_GEN), &t)?;
    let value = ctx.p.get(k, CKA_VALUE)?;
    if value.len() as CK_ULONG != len {
        return Err(format!("generated {} bytes, asked for {len}", value.len()));
    }
    if ctx.listed(CKM_SHA256_HMAC) {
        let mac = ctx.p.sign(&mut Mech::plain(CKM_SHA256_HMAC), k, MSG)?;
        let want = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &value),
            MSG,
        );
        expect_eq("HMAC with the new key", &mac, want.as_ref())?;
        Ok(format!(
            "{len}-byte secret; HMAC-SHA256 with it equals aws-lc with its value"
        ))
    } else {
        Ok(format!("{len}-byte secret"))
    }
}

fn aes_mech(mech_ty: CK_MECHANISM_TYPE, mode: AesMode, iv: &[u8], aad: &[u8]) -> Mech {
    match mode {
        AesMode::Ecb => Mech::plain(mech_ty),
        AesMode::Cbc | AesMode::CbcPad => Mech::raw(mech_ty, iv),
        AesMode::Ctr => Mech::ctr(iv.try_into().expect("16-byte counter block")),
        AesMode::Gcm => Mech::gcm(iv, aad),
    }
}

fn aes_row(
    ctx: &mut Ctx<'_>,
    mech_ty: CK_MECHANISM_TYPE,
    mode: AesMode,
    flag: CK_FLAGS,
    fname: &str,
    size: CK_ULONG,
) -> R<String> {
    let (k, value) = ctx.secret(CKK_AES, size as usize, CIPHER)?;
    let (iv, aad) = match mode {
        AesMode::Ecb => (Vec::new(), Vec::new()),
        AesMode::Gcm => (random(12), random(20)),
        _ => (random(16), Vec::new()),
    };
    let pt = match mode {
        AesMode::Ecb | AesMode::Cbc => random(64),
        _ => random(37),
    };
    let ct = aes_reference(mode, &value, &iv, &aad, &pt)?;
    match flag {
        CKF_ENCRYPT => {
            let got = ctx
                .p
                .encrypt(&mut aes_mech(mech_ty, mode, &iv, &aad), k, &pt)?;
            expect_eq("ciphertext vs aws-lc", &got, &ct)?;
            Ok(format!("{}-byte ciphertext equals aws-lc's", got.len()))
        }
        CKF_DECRYPT => {
            let got = ctx
                .p
                .decrypt(&mut aes_mech(mech_ty, mode, &iv, &aad), k, &ct)?;
            expect_eq("plaintext of aws-lc's ciphertext", &got, &pt)?;
            Ok(format!("decrypts aws-lc's {}-byte ciphertext", ct.len()))
        }
        _ => no_case(fname),
    }
}

fn pkcs5_pad(v: &[u8]) -> Vec<u8> {
    let n = 8 - v.len() % 8;
    let mut out = v.to_vec();
    out.extend(std::iter::repeat_n(n as u8, n));
    out
}

fn aes_wrap_row(
    ctx: &mut Ctx<'_>,
    mech_ty: CK_MECHANISM_TYPE,
    pad: Pad,
    flag: CK_FLAGS,
    fname: &str,
    size: CK_ULONG,
) -> R<String> {
    let (kek_h, kek_value) = ctx.secret(CKK_AES, size as usize, KEK)?;
    let padded = pad == Pad::Kwp;
    // KW wraps an AES-128 key (a multiple of 8 bytes); KWP and PKCS #5 padding a 13-byte
    // secret, to need padding.
    let (kt, len) = if pad == Pad::None {
        (CKK_AES, 16)
    } else {
        (CKK_GENERIC_SECRET, 13)
    };
    // What RFC 3394 / 5649 wraps: the key bytes, PKCS #5-padded for CloudHSM's PKCS5_PAD.
    let wrapped_bytes = |v: &[u8]| {
        if pad == Pad::Pkcs5 {
            pkcs5_pad(v)
        } else {
            v.to_vec()
        }
    };
    let independent = kek(&kek_value).is_ok();
    match flag {
        CKF_WRAP => {
            let (target, value) = ctx.secret(kt, len, PLAIN)?;
            let wrapped = ctx.p.wrap(&mut Mech::plain(mech_ty), kek_h, target)?;
            if independent {
                expect_eq(
                    "aws-lc unwrap of the wrapped key",
                    &kw_unwrap(&kek_value, &wrapped, padded)?,
                    &wrapped_bytes(&value),
                )?;
                Ok(format!(
                    "aws-lc unwraps the {}-byte blob to the key's value",
                    wrapped.len()
                ))
            } else {
                let u = ctx.p.unwrap(
                    &mut Mech::plain(mech_ty),
                    kek_h,
                    &wrapped,
                    &secret_template(kt),
                )?;
                expect_eq("round trip", &ctx.p.get(u, CKA_VALUE)?, &value)?;
                Ok("wrap -> unwrap gives the value back (no aws-lc KW for this size)".into())
            }
        }
        CKF_UNWRAP => {
            let value = random(len);
            let wrapped = if independent {
                kw_wrap(&kek_value, &wrapped_bytes(&value), padded)?
            } else {
                let t = secret_template(kt).bytes(CKA_VALUE, &value);
                let target = ctx.p.create(&t)?;
                ctx.p.wrap(&mut Mech::plain(mech_ty), kek_h, target)?
            };
            let u = ctx.p.unwrap(
                &mut Mech::plain(mech_ty),
                kek_h,
                &wrapped,
                &secret_template(kt),
            )?;
            expect_eq("unwrapped value", &ctx.p.get(u, CKA_VALUE)?, &value)?;
            Ok(if independent {
                "unwraps an aws-lc-wrapped key to its value".into()
            } else {
                "unwraps its own wrapping (no aws-lc KW for this size)".into()
            })
        }
        _ => no_case(fname),
    }
}

/// `CKM_RSA_X9_31_KEY_PAIR_GEN`: the modulus size asked for, a signature aws-lc verifies.
fn rsa_x931_gen(ctx: &mut Ctx<'_>, bits: CK_ULONG) -> R<String> {
    let public = Tpl::default()
        .flags(SESSION_KEY)
        .u(CKA_MODULUS_BITS, bits)
        .bytes(CKA_PUBLIC_EXPONENT, &[0x01, 0x00, 0x01])
        .b(CKA_VERIFY, true);
    let private = Tpl::default().flags(SESSION_KEY).b(CKA_SIGN, true);
    let (pub_h, priv_h) = ctx.p.generate_pair(
        &mut Mech::plain(CKM_RSA_X9_31_KEY_PAIR_GEN),
        &public,
        &private,
    )?;
    let n = ctx.p.get(pub_h, CKA_MODULUS)?;
    let n = n[n.iter().position(|b| *b != 0).unwrap_or(n.len())..].to_vec();
    let e = ctx.p.get(pub_h, CKA_PUBLIC_EXPONENT)?;
    let n_bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
    if n_bits as CK_ULONG != bits {
        return Err(format!("modulus has {n_bits} bits, asked for {bits}"));
    }
    let sig = ctx
        .p
        .sign(&mut Mech::plain(CKM_SHA256_RSA_PKCS), priv_h, MSG)?;
    aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, MSG, &sig)
        .map_err(|_| "aws-lc rejects a signature of the X9.31 pair".to_string())?;
    Ok(format!(
        "{n_bits}-bit modulus; a SHA256-RSA-PKCS signature verifies in aws-lc"
    ))
}

/// `CKM_CLOUDHSM_AES_GCM`: `pIv` NULL; the output is `IV || ciphertext || tag`.
fn cloudhsm_gcm_mech(aad: &[u8]) -> Mech {
    let keep = vec![aad.to_vec()];
    let p = CK_GCM_PARAMS {
        pIv: ptr::null_mut(),
        ulIvLen: 12,
        ulIvBits: 0,
        pAAD: keep[0].as_ptr() as *mut u8,
        ulAADLen: keep[0].len() as CK_ULONG,
        ulTagBits: 128,
    };
    Mech {
        ty: CKM_CLOUDHSM_AES_GCM,
        param: bytes_of(&p),
        _keep: keep,
    }
}

fn cloudhsm_gcm_row(ctx: &mut Ctx<'_>, flag: CK_FLAGS, fname: &str, size: CK_ULONG) -> R<String> {
    let (k, value) = ctx.secret(CKK_AES, size as usize, CIPHER)?;
    let (aad, pt) = (random(20), random(37));
    match flag {
        CKF_ENCRYPT => {
            let got = ctx.p.encrypt(&mut cloudhsm_gcm_mech(&aad), k, &pt)?;
            if got.len() != 12 + pt.len() + 16 {
                return Err(format!("{} bytes out, not IV + data + tag", got.len()));
            }
            let (iv, _) = got.split_at(12);
            let want = aes_reference(AesMode::Gcm, &value, iv, &aad, &pt)?;
            expect_eq("ciphertext after the IV vs aws-lc", &got[12..], &want)?;
            Ok("IV || ciphertext || tag; aws-lc with that IV gives the same".into())
        }
        CKF_DECRYPT => {
            let iv = random(12);
            let mut ct = iv.clone();
            ct.extend(aes_reference(AesMode::Gcm, &value, &iv, &aad, &pt)?);
            let got = ctx.p.decrypt(&mut cloudhsm_gcm_mech(&aad), k, &ct)?;
            expect_eq("plaintext of aws-lc's IV || ciphertext", &got, &pt)?;
            Ok(format!(
                "decrypts aws-lc's {}-byte IV || ciphertext",
                ct.len()
            ))
        }
        _ => no_case(fname),
    }
}

/// `CKM_CLOUDHSM_SP800_108_COUNTER_KDF` with HMAC-SHA-256 over a generic secret of `size`
/// bytes, in Client SDK 5's layout, against the KDF computed here with aws-lc HMAC.
fn cloudhsm_kdf_row(ctx: &mut Ctx<'_>, size: CK_ULONG) -> R<String> {
    use aws_lc_rs::hmac;
    let (base, ki) = ctx.secret(CKK_GENERIC_SECRET, size as usize, DERIVE)?;
    let (prefix, suffix) = (b"matrix label".to_vec(), b"matrix context".to_vec());
    let counter: CK_ULONG = 32;
    let dkm: [CK_ULONG; 2] = [1, 16];
    let keep = vec![
        prefix.clone(),
        bytes_of(&counter),
        suffix.clone(),
        bytes_of(&dkm),
    ];
    let entries: Vec<CK_PRF_DATA_PARAM> = [3, 1, 3, 2]
        .iter()
        .zip(&keep)
        .map(|(ty, v)| CK_PRF_DATA_PARAM {
            type_: *ty,
            pValue: v.as_ptr() as *mut c_void,
            ulValueLen: v.len() as CK_ULONG,
        })
        .collect();
    let params: [usize; 3] = [
        CKM_SHA256_HMAC as usize,
        entries.len(),
        entries.as_ptr() as usize,
    ];
    let mut mech = Mech::raw(CKM_CLOUDHSM_SP800_108_COUNTER_KDF, &bytes_of(&params));
    let out_len = 40usize;
    let t = secret_template(CKK_GENERIC_SECRET).u(CKA_VALUE_LEN, out_len as CK_ULONG);
    let derived = ctx.p.derive(&mut mech, base, &t)?;
    drop((keep, entries));
    let got = ctx.p.get(derived, CKA_VALUE)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &ki);
    let mut want = Vec::new();
    for i in 1u32..=2 {
        let input = [
            &prefix[..],
            &i.to_be_bytes(),
            &suffix,
            &((out_len * 8) as u16).to_be_bytes(),
        ]
        .concat();
        want.extend_from_slice(hmac::sign(&key, &input).as_ref());
    }
    want.truncate(out_len);
    expect_eq("derived value vs SP 800-108 over aws-lc HMAC", &got, &want)?;
    Ok(format!(
        "{out_len}-byte output equals SP 800-108 counter mode over aws-lc HMAC-SHA256"
    ))
}

fn hkdf_row(ctx: &mut Ctx<'_>, size: CK_ULONG, data: bool) -> R<String> {
    use aws_lc_rs::hkdf;
    let (base, ikm) = ctx.secret(CKK_GENERIC_SECRET, size as usize, DERIVE)?;
    let salt = random(16);
    let info = b"matrix hkdf info".to_vec();
    let out_len = 42usize;
    let t = if data {
        Tpl::default()
            .flags(SESSION_KEY)
            .u(CKA_CLASS, CKO_DATA)
            .u(CKA_VALUE_LEN, out_len as CK_ULONG)
    } else {
        secret_template(CKK_GENERIC_SECRET).u(CKA_VALUE_LEN, out_len as CK_ULONG)
    };
    let mut mech = Mech::hkdf(&salt, &info);
    if data {
        mech.ty = CKM_HKDF_DATA;
    }
    let derived = ctx.p.derive(&mut mech, base, &t)?;
    if data {
        let class = ctx.p.get_ulong(derived, CKA_CLASS)?;
        if class != CKO_DATA {
            return Err(format!("derived object has class {class:#x}, not CKO_DATA"));
        }
    }
    let got = ctx.p.get(derived, CKA_VALUE)?;
    let mut want = vec![0u8; out_len];
    hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
        .extract(&ikm)
        .expand(&[&info], Len(out_len))
        .map_err(|_| "aws-lc HKDF expand".to_string())?
        .fill(&mut want)
        .map_err(|_| "aws-lc HKDF fill".to_string())?;
    expect_eq("derived value vs aws-lc HKDF", &got, &want)?;
    Ok(format!(
        "{out_len}-byte HKDF-SHA256 output ({}) equals aws-lc's",
        if data {
            "a data object"
        } else {
            "a secret key"
        }
    ))
}

fn digest_row(ctx: &mut Ctx<'_>, hash: Hash) -> R<String> {
    let mut mech = Mech::plain(hash.ckm());
    let (data, want, source) = match hash.alg() {
        Some(_) => {
            let data = random(1000);
            let want = hash.digest(&data);
            (data, want, "aws-lc")
        }
        None => {
            // SHA3-224("abc"), FIPS 202 example values.
            let want = vec![
                0xe6, 0x42, 0x82, 0x4c, 0x3f, 0x8c, 0xf2, 0x4a, 0xd0, 0x92, 0x34, 0xee, 0x7d, 0x3c,
                0x76, 0x6f, 0xc9, 0xa3, 0xa5, 0x16, 0x8d, 0x0c, 0x94, 0xad, 0x73, 0xb4, 0x6f, 0xdf,
            ];
            (b"abc".to_vec(), want, "the FIPS 202 example")
        }
    };
    let got = ctx.p.digest(&mut mech, &data)?;
    expect_eq("digest", &got, &want)?;
    let (a, b) = data.split_at(data.len() / 2);
    let multi = ctx.p.digest_multi(&mut mech, &[a, b])?;
    expect_eq("multi-part digest", &multi, &want)?;
    Ok(format!(
        "single- and multi-part {}-byte digests equal {source}",
        got.len()
    ))
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

fn record(line: String, failures: &mut Vec<String>) {
    println!("FAIL {line}");
    failures.push(line);
}

fn mechanism_claims(m: &Module) -> Vec<(CK_MECHANISM_TYPE, R<CK_MECHANISM_INFO>)> {
    let mut n: CK_ULONG = 0;
    assert_eq!(
        call!(m, C_GetMechanismList, 0, ptr::null_mut(), &mut n),
        CKR_OK,
        "C_GetMechanismList (count)"
    );
    let mut list = vec![0 as CK_MECHANISM_TYPE; n as usize];
    assert_eq!(
        call!(m, C_GetMechanismList, 0, list.as_mut_ptr(), &mut n),
        CKR_OK,
        "C_GetMechanismList"
    );
    list.truncate(n as usize);
    list.into_iter()
        .map(|mech| {
            let mut info = CK_MECHANISM_INFO {
                ulMinKeySize: 0,
                ulMaxKeySize: 0,
                flags: 0,
            };
            let r = ck(
                call!(m, C_GetMechanismInfo, 0, mech, &mut info),
                "C_GetMechanismInfo",
            )
            .map(|()| info);
            (mech, r)
        })
        .collect()
}

#[test]
fn every_claimed_mechanism_flag_and_size_works() {
    let started = Instant::now();
    let fx = Fixture::new();
    let m = fx.m;
    let h = m.fresh_user_session();
    let claims = mechanism_claims(m);
    let mut ctx = Ctx {
        p: P11 { m, h },
        claims: claims
            .iter()
            .filter_map(|(mech, r)| r.as_ref().ok().map(|i| (*mech, *i)))
            .collect(),
        rsa: HashMap::new(),
        ec: HashMap::new(),
        ed: None,
    };
    let (mut passed, mut failures) = (0usize, Vec::<String>::new());
    println!(
        "matrix: the module lists {} mechanisms; the case table has {}",
        claims.len(),
        CASES.len()
    );
    for c in CASES {
        if !claims.iter().any(|(m, _)| *m == c.mech) {
            println!(
                "  (case {} is not listed by the module: nothing to run)",
                mech_name(c.mech)
            );
        }
    }
    for (mech, info) in &claims {
        let name = mech_name(*mech);
        let info = match info {
            Ok(i) => *i,
            Err(e) => {
                record(format!("{name}: listed, but {e}"), &mut failures);
                continue;
            }
        };
        let Some(c) = CASES.iter().find(|c| c.mech == *mech) else {
            record(
                format!(
                    "{name} ({mech:#x}): listed by C_GetMechanismList (flags {:#x}, sizes {}..{}) but the matrix has no case for it: add one to CASES",
                    info.flags, info.ulMinKeySize, info.ulMaxKeySize
                ),
                &mut failures,
            );
            continue;
        };
        let known: CK_FLAGS = FUNCTION_FLAGS.iter().fold(0, |a, (f, _)| a | f);
        let unknown = info.flags & !(known | DESCRIPTIVE_FLAGS);
        if unknown != 0 {
            record(
                format!("{name}: claims flags {unknown:#x} that the matrix has no way to exercise"),
                &mut failures,
            );
        }
        let claimed: Vec<(CK_FLAGS, &str)> = FUNCTION_FLAGS
            .iter()
            .copied()
            .filter(|(f, _)| info.flags & f != 0)
            .collect();
        if claimed.is_empty() {
            record(
                format!("{name}: listed with no function flag"),
                &mut failures,
            );
        }
        let mut sizes = vec![info.ulMinKeySize, info.ulMaxKeySize];
        sizes.dedup();
        for &(flag, fname) in &claimed {
            for &size in &sizes {
                let label = match c.kind {
                    Digest(_) => format!("{name} {fname}"),
                    k => format!("{name} {fname} {size} {}", k.unit()),
                };
                let t0 = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| {
                    exercise(&mut ctx, *c, flag, fname, size)
                }))
                .unwrap_or_else(|p| {
                    Err(format!(
                        "panicked: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    ))
                });
                let ms = t0.elapsed().as_millis();
                match outcome {
                    Ok(detail) => {
                        passed += 1;
                        println!("ok   {label}: {detail} [{ms} ms]");
                    }
                    Err(e) => {
                        record(format!("{label}: {e} [{ms} ms]"), &mut failures);
                        // A failure must not cascade: end whatever operation it left active.
                        let all = CKF_ENCRYPT | CKF_DECRYPT | CKF_DIGEST | CKF_SIGN | CKF_VERIFY;
                        let _ = call!(m, C_SessionCancel, h, all);
                    }
                }
            }
        }
    }
    println!("matrix ran in {:.1} s", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        println!("failures:");
        for f in &failures {
            println!("  {f}");
        }
    }
    println!("matrix: {passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} matrix failures (a claim the module cannot honour, or a mechanism/flag/size the matrix cannot exercise):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
