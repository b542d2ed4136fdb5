//! The named curves a member's keys may be on, as their `CKA_EC_PARAMS` values: plain data,
//! shared so that the simulator (which parses and checks them) and the engine (which needs to
//! know a key's curve, e.g. to pick a certificate signature algorithm) agree byte for byte.

/// `CKA_EC_PARAMS` of NIST P-256: the DER OID 1.2.840.10045.3.1.7.
pub const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `CKA_EC_PARAMS` of NIST P-384: the DER OID 1.3.132.0.34.
pub const P384_OID_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// `CKA_EC_PARAMS` of NIST P-521: the DER OID 1.3.132.0.35.
pub const P521_OID_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
/// `CKA_EC_PARAMS` of secp256k1: the DER OID 1.3.132.0.10.
pub const SECP256K1_OID_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// `CKA_EC_PARAMS` of Ed25519 keys as a member returns them: the DER OID 1.3.101.112 (RFC 8410).
pub const ED25519_OID_DER: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The other accepted form for Ed25519: the DER PrintableString "edwards25519" (PKCS #11 3.0).
pub const ED25519_NAME_DER: &[u8] = b"\x13\x0cedwards25519";

/// The size PKCS #11 reports for a key on the curve named by `CKA_EC_PARAMS` `der` (the group
/// order's bits; 255 for Ed25519), `None` for a curve not named here.
pub fn order_bits(der: &[u8]) -> Option<usize> {
    match der {
        d if d == P256_OID_DER || d == SECP256K1_OID_DER => Some(256),
        d if d == P384_OID_DER => Some(384),
        d if d == P521_OID_DER => Some(521),
        d if d == ED25519_OID_DER || d == ED25519_NAME_DER => Some(255),
        _ => None,
    }
}
