//! The cluster clone path between two simulated HSMs of one cluster, and the idempotent create.

use cryptoki_sys::*;
use hsmpool_sim::cluster::provision;
use hsmpool_sim::error::SimError;
use hsmpool_sim::hsm::{Hsm, HsmConfig, Role};
use hsmpool_sim::types::{Attr, Mechanism, SignInput, CKA_HSMPOOL_OBJECT_ID};

const SO: &[u8] = b"so-pin-1234";
const PIN: &[u8] = b"user-pin-1234";

fn member(dir: &std::path::Path) -> (Hsm, u64) {
    let mut cfg = HsmConfig::new(dir.to_path_buf());
    cfg.pin_iterations = 1000;
    let hsm = Hsm::open(cfg).unwrap();
    let label = *b"cluster                         ";
    hsm.init_token(SO, &label).unwrap();
    let ms = hsm.open_session();
    hsm.login(ms, Role::Officer, SO).unwrap();
    hsm.init_pin(ms, PIN).unwrap();
    hsm.logout(ms).unwrap();
    hsm.login(ms, Role::User, PIN).unwrap();
    (hsm, ms)
}

fn ec_pair(hsm: &Hsm, ms: u64, ids: Option<(u64, u64)>) -> (u64, u64) {
    let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let mut public = vec![
        Attr::bool(CKA_TOKEN, true),
        Attr::bytes(CKA_EC_PARAMS, &p256),
        Attr::bool(CKA_VERIFY, true),
        Attr::bytes(CKA_LABEL, b"clone-ec"),
    ];
    let mut private = vec![
        Attr::bool(CKA_TOKEN, true),
        Attr::bool(CKA_SIGN, true),
        Attr::bytes(CKA_LABEL, b"clone-ec"),
    ];
    if let Some((p, k)) = ids {
        public.push(Attr::ulong(CKA_HSMPOOL_OBJECT_ID, p as CK_ULONG));
        private.push(Attr::ulong(CKA_HSMPOOL_OBJECT_ID, k as CK_ULONG));
    }
    hsm.generate_key_pair(
        ms,
        &Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
        &public,
        &private,
    )
    .unwrap()
}

fn rv<T: std::fmt::Debug>(r: Result<T, SimError>) -> CK_RV {
    match r {
        Err(SimError::Rv(rv)) => rv,
        other => panic!("expected a CK_RV error, got {other:?}"),
    }
}

#[test]
fn a_cloned_key_keeps_its_id_signs_the_same_and_digests_equal() {
    let d = tempfile::tempdir().unwrap();
    let (da, db) = (d.path().join("a"), d.path().join("b"));
    provision(&[da.clone(), db.clone()]).unwrap();
    let (a, ma) = member(&da);
    let (b, mb) = member(&db);

    let (pubk, privk) = ec_pair(&a, ma, Some((0x1111, 0x2222)));
    assert_eq!((pubk, privk), (0x1111, 0x2222));
    // A retried create with the same ids is the same pair, not a second one.
    assert_eq!(ec_pair(&a, ma, Some((0x1111, 0x2222))), (pubk, privk));
    assert_eq!(a.object_digests(ma).unwrap().len(), 2);

    for id in [pubk, privk] {
        let blob = a.export_clone(ma, id).unwrap();
        assert_eq!(b.import_clone(mb, &blob).unwrap(), id);
        // Again: idempotent.
        assert_eq!(b.import_clone(mb, &blob).unwrap(), id);
    }
    assert_eq!(a.object_digests(ma).unwrap(), b.object_digests(mb).unwrap());

    // Signed on B with the cloned private key, verified on A with the original public key.
    let mech = Mechanism::plain(CKM_ECDSA_SHA256);
    let sig = b
        .sign(mb, &mech, privk, SignInput::Message(b"hello"))
        .unwrap();
    a.verify(ma, &mech, pubk, SignInput::Message(b"hello"), &sig)
        .unwrap();
    // Attributes travelled unchanged.
    let ask = [CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_LOCAL, CKA_UNIQUE_ID];
    assert_eq!(
        a.get_attributes(ma, privk, &ask).unwrap(),
        b.get_attributes(mb, privk, &ask).unwrap()
    );

    // A change on A makes the digests differ; a fresh clone brings B level again.
    a.set_attributes(ma, pubk, &[Attr::bytes(CKA_LABEL, b"renamed")])
        .unwrap();
    assert_ne!(a.object_digests(ma).unwrap(), b.object_digests(mb).unwrap());
    let blob = a.export_clone(ma, pubk).unwrap();
    b.import_clone(mb, &blob).unwrap();
    assert_eq!(a.object_digests(ma).unwrap(), b.object_digests(mb).unwrap());

    // The copy on B survives B's restart (it is in B's store).
    drop(b);
    let mut cfg = HsmConfig::new(db.clone());
    cfg.pin_iterations = 1000;
    let b = Hsm::open(cfg).unwrap();
    let mb = b.open_session();
    b.login(mb, Role::User, PIN).unwrap();
    assert_eq!(a.object_digests(ma).unwrap(), b.object_digests(mb).unwrap());

    // drop_replica removes it, and is idempotent.
    b.drop_replica(mb, pubk).unwrap();
    b.drop_replica(mb, pubk).unwrap();
    assert_eq!(b.object_digests(mb).unwrap().len(), 1);
}

#[test]
fn the_clone_path_is_closed_to_the_public_other_clusters_and_session_objects() {
    let d = tempfile::tempdir().unwrap();
    let (da, dx) = (d.path().join("a"), d.path().join("x"));
    provision(std::slice::from_ref(&da)).unwrap();
    provision(std::slice::from_ref(&dx)).unwrap();
    let (a, ma) = member(&da);
    let (x, mx) = member(&dx);
    let (_, privk) = ec_pair(&a, ma, None);
    let blob = a.export_clone(ma, privk).unwrap();
    assert_eq!(rv(x.import_clone(mx, &blob)), CKR_WRAPPED_KEY_INVALID);

    let public = a.open_session();
    assert_eq!(rv(a.export_clone(public, privk)), CKR_USER_NOT_LOGGED_IN);
    assert_eq!(rv(a.object_digests(public)), CKR_USER_NOT_LOGGED_IN);
    assert_eq!(
        rv(x.import_clone(public, &blob)),
        CKR_SESSION_HANDLE_INVALID
    );

    let session_key = a
        .generate_key(
            ma,
            &Mechanism::plain(CKM_AES_KEY_GEN),
            &[
                Attr::ulong(CKA_VALUE_LEN, 32),
                Attr::bool(CKA_ENCRYPT, true),
            ],
        )
        .unwrap();
    assert_eq!(
        rv(a.export_clone(ma, session_key)),
        CKR_OBJECT_HANDLE_INVALID
    );

    // A member with no clone key refuses the clone path (and says so in the log).
    let dn = d.path().join("n");
    let (n, mn) = member(&dn);
    assert_eq!(rv(n.import_clone(mn, &blob)), CKR_DEVICE_ERROR);
}

#[test]
fn an_object_id_given_by_the_engine_is_used_and_zero_is_refused() {
    let d = tempfile::tempdir().unwrap();
    provision(&[d.path().to_path_buf()]).unwrap();
    let (a, ma) = member(d.path());
    let t = |id: CK_ULONG| {
        vec![
            Attr::ulong(CKA_VALUE_LEN, 32),
            Attr::bool(CKA_TOKEN, true),
            Attr::ulong(CKA_HSMPOOL_OBJECT_ID, id),
        ]
    };
    let aes = Mechanism::plain(CKM_AES_KEY_GEN);
    let k = a.generate_key(ma, &aes, &t(0x77)).unwrap();
    assert_eq!(k, 0x77);
    assert_eq!(a.generate_key(ma, &aes, &t(0x77)).unwrap(), 0x77);
    assert_eq!(a.object_digests(ma).unwrap().len(), 1);
    assert_eq!(
        rv(a.generate_key(ma, &aes, &t(0))),
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // It is consumed, not stored.
    assert_eq!(
        a.get_attributes(ma, k, &[CKA_HSMPOOL_OBJECT_ID]).unwrap(),
        vec![hsmpool_sim::hsm::AttrAnswer::Invalid]
    );
    // Copy honours it too.
    let c = a
        .copy_object(ma, k, &[Attr::ulong(CKA_HSMPOOL_OBJECT_ID, 0x99)])
        .unwrap();
    assert_eq!(c, 0x99);
}
