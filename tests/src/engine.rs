//! Helpers for tests that drive the engine's Rust API directly (in-process clusters).

use std::path::Path;
use std::sync::Arc;

use cryptoki_sys::*;
use hsmpool_engine::backend::{Backend, MemberId};
use hsmpool_engine::types::{AttrAnswer, ObjectHandle, SessionHandle, SlotId};
use hsmpool_engine::{Attr, Engine, Mechanism};
use hsmpool_sim::fault::{FaultConfig, FaultSeed};
use hsmpool_sim::hsm::HsmConfig;
use hsmpool_sim::member::SimMember;

/// Three simulated members under `dir` sharing a clone key, with fast PIN hashing and seeded
/// fault controllers (`seed`); `tune` adjusts each member's configuration before it opens.
pub fn sim_members(dir: &Path, seed: u64, tune: impl Fn(&mut HsmConfig)) -> Vec<Arc<SimMember>> {
    let dirs: Vec<_> = (0..3).map(|i| dir.join(format!("hsm{i}"))).collect();
    hsmpool_sim::cluster::provision(&dirs).expect("a clone key is provisioned");
    dirs.iter()
        .enumerate()
        .map(|(i, d)| {
            let mut c = HsmConfig::new(d.clone());
            c.pin_iterations = 1000;
            c.faults = Some(FaultConfig::new(FaultSeed(seed), i as u64));
            tune(&mut c);
            Arc::new(SimMember::open(MemberId(i as u32), c).expect("a simulated member opens"))
        })
        .collect()
}

/// The members as the engine takes them.
pub fn backends(members: &[Arc<SimMember>]) -> Vec<Arc<dyn Backend>> {
    members
        .iter()
        .map(|m| m.clone() as Arc<dyn Backend>)
        .collect()
}

/// Initialise slot 0's token (`label`), give it a user PIN, and return a read-write session
/// with the user logged in.
pub fn init_and_login_user(e: &Engine, label: &[u8], so_pin: &[u8], pin: &[u8]) -> SessionHandle {
    let mut padded = [b' '; 32];
    padded[..label.len()].copy_from_slice(label);
    e.init_token(SlotId(0), so_pin, &padded)
        .expect("the token initialises");
    let s = e
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .expect("a session opens");
    e.login(s, CKU_SO, so_pin, None).expect("the SO logs in");
    e.init_pin(s, pin).expect("the user PIN is set");
    e.logout(s).expect("the SO logs out");
    e.login(s, CKU_USER, pin, None).expect("the user logs in");
    s
}

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

/// One attribute's value, read through the engine (panics on anything else).
pub fn value(e: &Engine, s: SessionHandle, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
    match &e
        .get_attribute_value(s, o, &[ty])
        .expect("the attribute is read")[0]
    {
        AttrAnswer::Value(v) => v.clone(),
        other => panic!("{ty:#x}: {other:?}"),
    }
}

/// An AES-256 token key that encrypts and decrypts, labelled `label`.
pub fn aes_token_key(e: &Engine, s: SessionHandle, label: &[u8]) -> ObjectHandle {
    e.generate_key(
        s,
        Mechanism::plain(CKM_AES_KEY_GEN),
        vec![
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_VALUE_LEN, 32),
            Attr::bool(CKA_ENCRYPT, true),
            Attr::bool(CKA_DECRYPT, true),
            Attr::bytes(CKA_LABEL, label),
        ],
    )
    .expect("an AES key is made")
}

/// `msg` signed through the engine in one `C_SignInit` + `C_Sign` (panics on failure).
pub fn sign(
    e: &Engine,
    s: SessionHandle,
    mech: CK_MECHANISM_TYPE,
    key: ObjectHandle,
    msg: &[u8],
) -> Vec<u8> {
    e.op_init(
        s,
        hsmpool_engine::types::OpKind::Sign,
        Mechanism::plain(mech),
        key,
    )
    .expect("C_SignInit");
    let mut sig = vec![0u8; 1024];
    let n = e
        .op_single(s, hsmpool_engine::types::OpKind::Sign, msg, Some(&mut sig))
        .expect("C_Sign");
    sig.truncate(n);
    sig
}

/// Every object a find with `template` returns (at most 100), through the engine.
pub fn find(e: &Engine, s: SessionHandle, template: Vec<Attr>) -> Vec<ObjectHandle> {
    e.find_objects_init(s, template).expect("C_FindObjectsInit");
    let found = e.find_objects(s, 100).expect("C_FindObjects");
    e.find_objects_final(s).expect("C_FindObjectsFinal");
    found
}
