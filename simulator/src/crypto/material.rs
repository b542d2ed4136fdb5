//! [`KeyMaterial`]: the key bytes the store seals, and their versioned serialisation.
//!
//! # Format (version 1)
//! `version (1 byte) || kind (1 byte) || field*`, each field `length (u32 big-endian) || bytes`:
//!
//! | kind | key               | fields                                   |
//! |------|-------------------|------------------------------------------|
//! | 1    | `Secret`          | key type (8 bytes, big-endian), value    |
//! | 2    | `RsaPrivate`      | PKCS #8                                  |
//! | 3    | `RsaPublic`       | modulus, public exponent                 |
//! | 4    | `EcPrivate`       | `CKA_EC_PARAMS` (DER OID), PKCS #8       |
//! | 5    | `EcPublic`        | `CKA_EC_PARAMS` (DER OID), point         |
//! | 6    | `EdPrivate`       | 32-byte Ed25519 seed                     |
//! | 7    | `EdPublic`        | 32-byte Ed25519 public key               |
//!
//! Kinds 6 and 7 were added within version 1: bytes written before them parse unchanged (an
//! older reader refuses the new kinds as it refuses any unknown kind). New curves need no new
//! kind: the curve is stored as its `CKA_EC_PARAMS`.
//!
//! Nothing may follow the last field. Parsing checks structure only; [`super::LoadedKey::load`]
//! checks the cryptography.

use cryptoki_sys::{CKR_DEVICE_ERROR, CK_KEY_TYPE};
use zeroize::Zeroizing;

use super::Curve;
use crate::types::Rv;

/// The current serialisation version.
const VERSION: u8 = 1;

const KIND_SECRET: u8 = 1;
const KIND_RSA_PRIVATE: u8 = 2;
const KIND_RSA_PUBLIC: u8 = 3;
const KIND_EC_PRIVATE: u8 = 4;
const KIND_EC_PUBLIC: u8 = 5;
const KIND_ED_PRIVATE: u8 = 6;
const KIND_ED_PUBLIC: u8 = 7;

/// Key material as the store seals it. Secrets are in `Zeroizing` buffers. `PartialEq` is not
/// constant time: it is for tests and bookkeeping, never for checking a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// A secret key (`CKK_AES`, `CKK_GENERIC_SECRET`, ...): its type and value.
    Secret {
        /// The `CKK_*` key type.
        key_type: CK_KEY_TYPE,
        /// The key value.
        value: Zeroizing<Vec<u8>>,
    },
    /// An RSA private key as DER PKCS #8 `PrivateKeyInfo` (with every CRT component).
    RsaPrivate {
        /// The PKCS #8 encoding.
        pkcs8: Zeroizing<Vec<u8>>,
    },
    /// An RSA public key.
    RsaPublic {
        /// The modulus, big-endian.
        modulus: Vec<u8>,
        /// The public exponent, big-endian.
        public_exponent: Vec<u8>,
    },
    /// An EC private key as DER PKCS #8 `PrivateKeyInfo`.
    EcPrivate {
        /// The curve.
        curve: Curve,
        /// The PKCS #8 encoding.
        pkcs8: Zeroizing<Vec<u8>>,
    },
    /// An EC public key.
    EcPublic {
        /// The curve.
        curve: Curve,
        /// The uncompressed point `04 || X || Y`, not DER-wrapped.
        point: Vec<u8>,
    },
    /// An Ed25519 private key (`CKK_EC_EDWARDS`).
    EdPrivate {
        /// The 32-byte seed (RFC 8032 private key).
        seed: Zeroizing<Vec<u8>>,
    },
    /// An Ed25519 public key (`CKK_EC_EDWARDS`).
    EdPublic {
        /// The 32-byte encoded point, not DER-wrapped.
        point: Vec<u8>,
    },
}

impl std::fmt::Debug for KeyMaterial {
    // Never prints secret bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyMaterial::Secret { key_type, value } => {
                write!(f, "Secret({key_type:#x}, {} bytes)", value.len())
            }
            KeyMaterial::RsaPrivate { .. } => write!(f, "RsaPrivate"),
            KeyMaterial::RsaPublic { modulus, .. } => {
                write!(f, "RsaPublic({} bytes)", modulus.len())
            }
            KeyMaterial::EcPrivate { curve, .. } => write!(f, "EcPrivate({curve:?})"),
            KeyMaterial::EcPublic { curve, .. } => write!(f, "EcPublic({curve:?})"),
            KeyMaterial::EdPrivate { .. } => write!(f, "EdPrivate(Ed25519)"),
            KeyMaterial::EdPublic { .. } => write!(f, "EdPublic(Ed25519)"),
        }
    }
}

/// Appends one length-prefixed field.
fn put(out: &mut Vec<u8>, field: &[u8]) {
    // Key material is far below 4 GiB; saturate rather than panic, and from_bytes will reject.
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// Reads fields off a buffer.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Rv> {
        let (&b, rest) = self.0.split_first().ok_or(CKR_DEVICE_ERROR)?;
        self.0 = rest;
        Ok(b)
    }

    fn field(&mut self) -> Result<&'a [u8], Rv> {
        if self.0.len() < 4 {
            return Err(CKR_DEVICE_ERROR);
        }
        let (len, rest) = self.0.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let len = usize::try_from(len).map_err(|_| CKR_DEVICE_ERROR)?;
        if rest.len() < len {
            return Err(CKR_DEVICE_ERROR);
        }
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    fn curve(&mut self) -> Result<Curve, Rv> {
        Curve::from_ec_params(self.field()?).map_err(|_| CKR_DEVICE_ERROR)
    }

    fn end(self) -> Result<(), Rv> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(CKR_DEVICE_ERROR)
        }
    }
}

impl KeyMaterial {
    /// The versioned serialisation (see the module doc), in a buffer zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.approx_len()));
        out.push(VERSION);
        match self {
            KeyMaterial::Secret { key_type, value } => {
                out.push(KIND_SECRET);
                // CK_ULONG is 32 bits on some platforms: always store 64.
                #[allow(clippy::useless_conversion)]
                put(&mut out, &u64::from(*key_type).to_be_bytes());
                put(&mut out, value);
            }
            KeyMaterial::RsaPrivate { pkcs8 } => {
                out.push(KIND_RSA_PRIVATE);
                put(&mut out, pkcs8);
            }
            KeyMaterial::RsaPublic {
                modulus,
                public_exponent,
            } => {
                out.push(KIND_RSA_PUBLIC);
                put(&mut out, modulus);
                put(&mut out, public_exponent);
            }
            KeyMaterial::EcPrivate { curve, pkcs8 } => {
                out.push(KIND_EC_PRIVATE);
                put(&mut out, curve.ec_params_der());
                put(&mut out, pkcs8);
            }
            KeyMaterial::EcPublic { curve, point } => {
                out.push(KIND_EC_PUBLIC);
                put(&mut out, curve.ec_params_der());
                put(&mut out, point);
            }
            KeyMaterial::EdPrivate { seed } => {
                out.push(KIND_ED_PRIVATE);
                put(&mut out, seed);
            }
            KeyMaterial::EdPublic { point } => {
                out.push(KIND_ED_PUBLIC);
                put(&mut out, point);
            }
        }
        out
    }

    /// Enough capacity for `to_bytes`, so the secret is never copied by a reallocation.
    fn approx_len(&self) -> usize {
        let fields = match self {
            KeyMaterial::Secret { value, .. } => 8 + value.len(),
            KeyMaterial::RsaPrivate { pkcs8 } | KeyMaterial::EcPrivate { pkcs8, .. } => {
                16 + pkcs8.len()
            }
            KeyMaterial::RsaPublic {
                modulus,
                public_exponent,
            } => modulus.len() + public_exponent.len(),
            KeyMaterial::EcPublic { point, .. } => 16 + point.len(),
            KeyMaterial::EdPrivate { seed } => seed.len(),
            KeyMaterial::EdPublic { point } => point.len(),
        };
        fields + 2 + 3 * 4
    }

    /// Parses [`KeyMaterial::to_bytes`] output; anything else (another version, a truncated or
    /// padded buffer, an unknown kind or curve) is `CKR_DEVICE_ERROR`, as for a damaged store.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Rv> {
        let mut r = Reader(bytes);
        if r.byte()? != VERSION {
            return Err(CKR_DEVICE_ERROR);
        }
        let m = match r.byte()? {
            KIND_SECRET => {
                let kt: [u8; 8] = r.field()?.try_into().map_err(|_| CKR_DEVICE_ERROR)?;
                let key_type =
                    CK_KEY_TYPE::try_from(u64::from_be_bytes(kt)).map_err(|_| CKR_DEVICE_ERROR)?;
                KeyMaterial::Secret {
                    key_type,
                    value: Zeroizing::new(r.field()?.to_vec()),
                }
            }
            KIND_RSA_PRIVATE => KeyMaterial::RsaPrivate {
                pkcs8: Zeroizing::new(r.field()?.to_vec()),
            },
            KIND_RSA_PUBLIC => {
                let modulus = r.field()?.to_vec();
                let public_exponent = r.field()?.to_vec();
                KeyMaterial::RsaPublic {
                    modulus,
                    public_exponent,
                }
            }
            KIND_EC_PRIVATE => {
                let curve = r.curve()?;
                KeyMaterial::EcPrivate {
                    curve,
                    pkcs8: Zeroizing::new(r.field()?.to_vec()),
                }
            }
            KIND_EC_PUBLIC => {
                let curve = r.curve()?;
                KeyMaterial::EcPublic {
                    curve,
                    point: r.field()?.to_vec(),
                }
            }
            KIND_ED_PRIVATE => KeyMaterial::EdPrivate {
                seed: Zeroizing::new(r.field()?.to_vec()),
            },
            KIND_ED_PUBLIC => KeyMaterial::EdPublic {
                point: r.field()?.to_vec(),
            },
            _ => return Err(CKR_DEVICE_ERROR),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::CKK_AES;

    fn samples() -> Vec<KeyMaterial> {
        vec![
            KeyMaterial::Secret {
                key_type: CKK_AES,
                value: Zeroizing::new(vec![1; 32]),
            },
            KeyMaterial::Secret {
                key_type: CKK_AES,
                value: Zeroizing::new(vec![]),
            },
            KeyMaterial::RsaPrivate {
                pkcs8: Zeroizing::new(vec![0x30, 1, 2, 3]),
            },
            KeyMaterial::RsaPublic {
                modulus: vec![0xc5; 256],
                public_exponent: vec![1, 0, 1],
            },
            KeyMaterial::EcPrivate {
                curve: Curve::P384,
                pkcs8: Zeroizing::new(vec![9; 100]),
            },
            KeyMaterial::EcPublic {
                curve: Curve::P256,
                point: vec![4; 65],
            },
            KeyMaterial::EcPrivate {
                curve: Curve::P521,
                pkcs8: Zeroizing::new(vec![7; 200]),
            },
            KeyMaterial::EcPublic {
                curve: Curve::Secp256k1,
                point: vec![4; 65],
            },
            KeyMaterial::EdPrivate {
                seed: Zeroizing::new(vec![0x5a; 32]),
            },
            KeyMaterial::EdPublic {
                point: vec![0xa5; 32],
            },
        ]
    }

    /// Bytes written before the Ed25519 kinds and new curves existed still parse (version 1
    /// stays version 1).
    #[test]
    fn old_bytes_still_parse() {
        let old = [
            1u8, 5, 0, 0, 0, 10, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0, 0,
            0, 3, 4, 1, 2,
        ];
        assert_eq!(
            KeyMaterial::from_bytes(&old),
            Ok(KeyMaterial::EcPublic {
                curve: Curve::P256,
                point: vec![4, 1, 2]
            })
        );
        let secret = KeyMaterial::Secret {
            key_type: CKK_AES,
            value: Zeroizing::new(vec![1; 16]),
        };
        assert_eq!(secret.to_bytes()[..2], [1, 1]);
        let ed = KeyMaterial::EdPublic { point: vec![9; 32] }.to_bytes();
        assert_eq!(ed[..6], [1, 7, 0, 0, 0, 32]);
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            let b = m.to_bytes();
            assert_eq!(KeyMaterial::from_bytes(&b).as_ref(), Ok(&m));
        }
    }

    #[test]
    fn rejects_truncation_padding_and_version() {
        for m in samples() {
            let b = m.to_bytes();
            for cut in 0..b.len() {
                assert_eq!(
                    KeyMaterial::from_bytes(&b[..cut]),
                    Err(CKR_DEVICE_ERROR),
                    "{m:?} cut at {cut}"
                );
            }
            let mut padded = b.to_vec();
            padded.push(0);
            assert_eq!(KeyMaterial::from_bytes(&padded), Err(CKR_DEVICE_ERROR));
            let mut v2 = b.to_vec();
            v2[0] = 2;
            assert_eq!(KeyMaterial::from_bytes(&v2), Err(CKR_DEVICE_ERROR));
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic xorshift stream: varied lengths and contents, including near-valid
        // headers (version 1 and a real kind byte).
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for i in 0..20_000 {
            let len = (next() % 96) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 && buf.len() >= 2 {
                buf[0] = VERSION;
                buf[1] = (next() % 8) as u8;
            }
            if i % 4 == 0 && buf.len() >= 6 {
                buf[2..6].copy_from_slice(&((next() % 8) as u32).to_be_bytes());
            }
            let _ = KeyMaterial::from_bytes(&buf);
        }
    }
}
