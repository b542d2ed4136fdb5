//! Keys made through the module, their public halves read back, and independent checks of what
//! the module produced.

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::{Context, Error, Result};

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), the `CKA_EC_PARAMS` of a P-256 key.
pub const P256_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The RSA public exponent requested: 65537.
pub const RSA_EXPONENT: &[u8] = &[0x01, 0x00, 0x01];
/// AES-GCM IV length used throughout (the standard 96 bits).
pub const GCM_IV_LEN: usize = 12;
/// AES-GCM tag length used throughout, in bits.
pub const GCM_TAG_BITS: u64 = 128;

/// A key pair in the module.
#[derive(Clone, Copy, Debug)]
pub struct KeyPair {
    /// The public key object.
    pub public: ObjectHandle,
    /// The private key object.
    pub private: ObjectHandle,
}

/// Generate an RSA-2048 signing key pair (token objects when `token`).
pub fn generate_rsa(s: &Session, label: &str, token: bool) -> Result<KeyPair> {
    let public = [
        Attribute::Token(token),
        Attribute::Label(label.into()),
        Attribute::ModulusBits(2048.into()),
        Attribute::PublicExponent(RSA_EXPONENT.to_vec()),
        Attribute::Verify(true),
    ];
    let private = [
        Attribute::Token(token),
        Attribute::Label(label.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
    ];
    let (public, private) = s
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .context("C_GenerateKeyPair (RSA-2048)")?;
    Ok(KeyPair { public, private })
}

/// Generate an EC P-256 signing key pair (token objects when `token`).
pub fn generate_ec(s: &Session, label: &str, token: bool) -> Result<KeyPair> {
    let public = [
        Attribute::Token(token),
        Attribute::Label(label.into()),
        Attribute::EcParams(P256_OID.to_vec()),
        Attribute::Verify(true),
    ];
    let private = [
        Attribute::Token(token),
        Attribute::Label(label.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
    ];
    let (public, private) = s
        .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
        .context("C_GenerateKeyPair (P-256)")?;
    Ok(KeyPair { public, private })
}

/// Generate an AES-256 key for encryption and decryption (a token object when `token`).
pub fn generate_aes(s: &Session, label: &str, token: bool) -> Result<ObjectHandle> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(token),
        Attribute::Label(label.into()),
        Attribute::ValueLen(32.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ];
    s.generate_key(&Mechanism::AesKeyGen, &template)
        .context("C_GenerateKey (AES-256)")
}

/// The `CKM_AES_GCM` mechanism with a 96-bit IV, no AAD and a 128-bit tag.
pub fn gcm(iv: &mut [u8; GCM_IV_LEN]) -> Result<Mechanism<'_>> {
    let params = GcmParams::new(iv, &[], GCM_TAG_BITS.into()).context("CK_GCM_PARAMS")?;
    Ok(Mechanism::AesGcm(params))
}

/// An RSA public key read back from the module.
#[derive(Clone, Debug)]
pub struct RsaPublic {
    /// `CKA_MODULUS`, big-endian, without leading zero bytes.
    pub n: Vec<u8>,
    /// `CKA_PUBLIC_EXPONENT`, big-endian, without leading zero bytes.
    pub e: Vec<u8>,
}

impl RsaPublic {
    /// Read `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT` of `key`.
    pub fn read(s: &Session, key: ObjectHandle) -> Result<RsaPublic> {
        let attrs = s
            .get_attributes(
                key,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .context("C_GetAttributeValue (CKA_MODULUS, CKA_PUBLIC_EXPONENT)")?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let n = n.ok_or_else(|| Error("the RSA public key has no CKA_MODULUS".into()))?;
        let e = e.ok_or_else(|| Error("the RSA public key has no CKA_PUBLIC_EXPONENT".into()))?;
        Ok(RsaPublic {
            n: strip_zeros(&n).to_vec(),
            e: strip_zeros(&e).to_vec(),
        })
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        self.n
            .first()
            .map_or(0, |b| self.n.len() * 8 - b.leading_zeros() as usize)
    }

    /// Whether `sig` is a valid RSASSA-PKCS1-v1_5 SHA-256 signature of `msg`, checked by aws-lc-rs.
    pub fn verify_sha256_pkcs1(&self, msg: &[u8], sig: &[u8]) -> bool {
        RsaPublicKeyComponents {
            n: &self.n[..],
            e: &self.e[..],
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
        .is_ok()
    }
}

/// Big-endian integer bytes without their leading zeros.
fn strip_zeros(v: &[u8]) -> &[u8] {
    let first = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    &v[first..]
}

/// A P-256 public key read back from the module.
#[derive(Clone, Debug)]
pub struct EcPublic {
    /// The uncompressed point `04 || X || Y`.
    pub point: Vec<u8>,
}

impl EcPublic {
    /// Read `CKA_EC_POINT` of `key`.
    pub fn read(s: &Session, key: ObjectHandle) -> Result<EcPublic> {
        let attrs = s
            .get_attributes(key, &[AttributeType::EcPoint])
            .context("C_GetAttributeValue (CKA_EC_POINT)")?;
        let der = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(v) => Some(v),
                _ => None,
            })
            .ok_or_else(|| Error("the EC public key has no CKA_EC_POINT".into()))?;
        Ok(EcPublic {
            point: p256_point_from_der(&der)?,
        })
    }

    /// Whether `sig` (`r || s`, 64 bytes, as PKCS #11 gives it) is a valid ECDSA P-256 SHA-256
    /// signature of `msg`, checked by aws-lc-rs.
    pub fn verify_sha256(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &self.point[..])
            .verify(msg, sig)
            .is_ok()
    }
}

/// The uncompressed P-256 point inside `CKA_EC_POINT`, which PKCS #11 defines as the DER
/// encoding of an OCTET STRING: `04 41 04 || X || Y`.
pub fn p256_point_from_der(der: &[u8]) -> Result<Vec<u8>> {
    match der {
        [0x04, 0x41, point @ ..] if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err(Error(format!(
            "CKA_EC_POINT is not a DER OCTET STRING around an uncompressed P-256 point ({} bytes: {:02x?})",
            der.len(),
            &der[..der.len().min(4)]
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_is_unwrapped_from_its_octet_string_and_raw_points_are_refused() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7; 64]);
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&point);
        assert_eq!(p256_point_from_der(&der).unwrap(), point);
        assert!(
            p256_point_from_der(&point).is_err(),
            "a bare point is not the DER the spec requires"
        );
        assert!(
            p256_point_from_der(&der[..66]).is_err(),
            "a truncated point is refused"
        );
    }

    #[test]
    fn rsa_integers_lose_their_leading_zeros() {
        assert_eq!(strip_zeros(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(strip_zeros(&[0, 0]), &[] as &[u8]);
        let k = RsaPublic {
            n: vec![0x80; 256],
            e: RSA_EXPONENT.to_vec(),
        };
        assert_eq!(k.bits(), 2048);
    }
}
