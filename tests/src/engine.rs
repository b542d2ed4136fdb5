//! Helpers for tests that drive the engine's Rust API directly (in-process clusters).

use cryptoki_sys::*;
use hsmpool_engine::types::{ObjectHandle, SessionHandle};
use hsmpool_engine::{Attr, Engine, Mechanism};

/// `CKA_EC_PARAMS` of P-256.
pub const P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A P-256 key pair labelled `label` (token or session objects): (public, private).
pub fn ec_pair(
    e: &Engine,
    s: SessionHandle,
    label: &[u8],
    token: bool,
) -> (ObjectHandle, ObjectHandle) {
    e.generate_key_pair(
        s,
        Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        vec![
            Attr::bool(CKA_TOKEN, token),
            Attr::bytes(CKA_EC_PARAMS, &P256),
            Attr::bool(CKA_VERIFY, true),
            Attr::bytes(CKA_LABEL, label),
        ],
        vec![
            Attr::bool(CKA_TOKEN, token),
            Attr::bool(CKA_SIGN, true),
            Attr::bytes(CKA_LABEL, label),
        ],
    )
    .expect("an EC key pair is made")
}
