use std::collections::BTreeSet;

use cryptoki_sys::*;

use hsmpool_member::types::{Attr, KdfSegment, MechParam, Mechanism, SignInput};
use hsmpool_member::{
    AttrAnswer, KeyMeta, OwnedObject, Role, TokenStatus, UserChange, UserSet, UserState,
};

use zeroize::Zeroizing;

use super::*;

/// Seeded xorshift64*: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn all_params() -> Vec<MechParam> {
    vec![
        MechParam::None,
        MechParam::Iv(vec![1; 16]),
        MechParam::Gcm {
            iv: vec![2; 12],
            aad: b"aad".to_vec(),
            tag_bits: 128,
        },
        MechParam::Pss {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        },
        MechParam::Oaep {
            hash: CKM_SHA384,
            mgf: CKG_MGF1_SHA384,
            label: b"label".to_vec(),
        },
        MechParam::Ulong(12),
        MechParam::Ecdh {
            kdf: CKD_NULL,
            shared_data: vec![],
            public_data: vec![4; 65],
        },
        MechParam::Hkdf {
            extract: true,
            expand: false,
            prf: CKM_SHA512,
            salt_type: CKF_HKDF_SALT_DATA,
            salt: vec![5; 7],
            info: b"info".to_vec(),
        },
        MechParam::Raw(vec![9, 8, 7]),
        // CloudHSM's SP 800-108 KDF and its HSM-made-IV GCM (no IV on the way in).
        MechParam::Sp800108 {
            prf: CKM_SHA512_HMAC,
            segments: vec![
                KdfSegment::Bytes(vec![1, 0xab, 0xe1]),
                KdfSegment::Counter { width_bits: 32 },
                KdfSegment::Bytes(vec![]),
                KdfSegment::DkmLength {
                    method: 1,
                    width_bits: 16,
                },
            ],
        },
        MechParam::Gcm {
            iv: vec![],
            aad: b"aad".to_vec(),
            tag_bits: 128,
        },
    ]
}

fn mech(param: MechParam) -> Mechanism {
    Mechanism {
        mech: CKM_AES_GCM,
        param,
    }
}

fn template() -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::bool(CKA_TOKEN, true),
        Attr::bytes(CKA_LABEL, b"k1"),
        Attr::bytes(CKA_VALUE, &[0x42; 32]),
        Attr::bytes(CKA_ID, b""),
    ]
}

/// One of every request (every kind must appear: checked by `every_request_round_trips`).
fn sample_requests() -> Vec<Request> {
    let gcm = mech(all_params()[2].clone());
    let mut v = vec![
        Request::Ping,
        Request::OpenSession,
        Request::CloseSession { session: 7 },
        Request::Login {
            session: 7,
            role: Role::User,
            pin: Secret::from_slice(b"user:hunter2"),
            username: None,
        },
        Request::Login {
            session: u64::MAX,
            role: Role::Officer,
            pin: Secret::from_slice(b"hunter2"),
            username: Some("ålice".to_owned()),
        },
        Request::Logout { session: 7 },
        Request::InitToken {
            so_pin: Secret::from_slice(b"so-pin-1234"),
            label: *b"token label                     ",
        },
        Request::InitPin {
            session: 1,
            pin: Secret::from_slice(b"1234"),
        },
        Request::SetPin {
            session: 1,
            old: Secret::from_slice(b"1234"),
            new: Secret::from_slice(b"5678"),
        },
        Request::TokenStatus,
        Request::CreateObject {
            session: 2,
            template: template(),
        },
        Request::CopyObject {
            session: 2,
            object: 3,
            template: vec![Attr::bool(CKA_TOKEN, false)],
        },
        Request::DestroyObject {
            session: 2,
            object: 3,
        },
        Request::GetAttributes {
            session: 2,
            object: 3,
            types: vec![CKA_LABEL, CKA_VALUE, CKA_MODULUS],
        },
        Request::SetAttributes {
            session: 2,
            object: 3,
            template: vec![],
        },
        Request::ObjectSize {
            session: 2,
            object: 4,
        },
        Request::Find {
            session: 2,
            template: template(),
        },
        Request::KeyMeta {
            session: 2,
            object: 5,
        },
        Request::CheckKey {
            session: 2,
            usage: CKA_SIGN,
            mech: mech(MechParam::None),
            object: 5,
        },
        Request::GenerateKey {
            session: 2,
            mech: Mechanism::plain(CKM_AES_KEY_GEN),
            template: template(),
        },
        Request::GenerateKeyPair {
            session: 2,
            mech: Mechanism::plain(CKM_EC_KEY_PAIR_GEN),
            public: vec![Attr::bytes(CKA_EC_PARAMS, &[6, 8, 42])],
            private: template(),
        },
        Request::WrapKey {
            session: 2,
            mech: mech(MechParam::Iv(vec![0; 16])),
            wrapping: 10,
            key: 11,
        },
        Request::UnwrapKey {
            session: 2,
            mech: gcm.clone(),
            unwrapping: 10,
            wrapped: vec![0xaa; 40],
            template: template(),
        },
        Request::DeriveKey {
            session: 2,
            mech: mech(all_params()[6].clone()),
            base: 12,
            template: template(),
        },
        Request::Verify {
            session: 2,
            mech: mech(all_params()[3].clone()),
            key: 13,
            input: InputKind::Prehashed,
            data: vec![1; 32],
            signature: vec![2; 256],
        },
        Request::Encrypt {
            session: 2,
            mech: gcm.clone(),
            key: 14,
            data: Secret::from_slice(b"plaintext"),
        },
        Request::Decrypt {
            session: 2,
            mech: mech(all_params()[4].clone()),
            key: 14,
            data: vec![3; 48],
        },
        Request::SecretValueForDigest {
            session: 2,
            key: 14,
        },
        Request::Random { len: 0 },
        Request::Random { len: MAX_RANDOM },
        Request::Fault {
            verb: "fail_with 0x30 0.25".to_owned(),
        },
        Request::Fault {
            verb: String::new(),
        },
        Request::Stats,
        Request::ExportClone {
            session: 2,
            object: 16,
        },
        Request::ImportClone {
            session: 2,
            blob: vec![0xc1; 77],
        },
        Request::ImportClone {
            session: 2,
            blob: vec![],
        },
        Request::ObjectDigests { session: 2 },
        Request::Version { protocol: PROTOCOL },
        Request::DropReplica {
            session: 2,
            object: 17,
        },
        Request::UserStates { session: 2 },
        Request::ExportUser {
            session: 2,
            name: "alice".into(),
        },
        Request::ImportUser {
            session: 2,
            blob: vec![0xb1; 90],
        },
        Request::ShareObject {
            session: 2,
            object: 18,
            user: "bob".into(),
            share: true,
        },
        Request::OwnedObjects {
            session: 2,
            owner: Some("alice".into()),
        },
        Request::OwnedObjects {
            session: 2,
            owner: None,
        },
        Request::AuditLog {
            session: 2,
            from: 17,
            limit: 100,
        },
        Request::SetKeyQuorum {
            session: 2,
            object: 19,
            service: hsmpool_member::KeyService::Use,
            m: 2,
        },
        Request::KeyQuorumToken {
            session: 2,
            object: 19,
            service: hsmpool_member::KeyService::Manage,
        },
        Request::ApproveKey {
            session: 2,
            object: 19,
            approval: hsmpool_member::Approval {
                token: vec![7; 9],
                signatures: vec![("dave".into(), vec![5; 64])],
            },
        },
        Request::ExportBackup {
            session: 2,
            id: "20261207T161500Z-0a1b2c3d".into(),
            created_ms: 1_796_000_000_000,
            offset: 8 << 20,
        },
        Request::ClusterId { session: 2 },
    ];
    // Every kind of user change round-trips.
    for change in [
        UserChange::Create {
            name: "alice".into(),
            role: Role::User,
            password: Zeroizing::new(b"pw-1234".to_vec()),
        },
        UserChange::Password {
            name: "alice".into(),
            password: Zeroizing::new(b"pw-5678".to_vec()),
        },
        UserChange::Delete {
            name: "a".into(),
            force: true,
        },
        UserChange::Lock { name: "b".into() },
        UserChange::Unlock { name: "c".into() },
        UserChange::SetRole {
            name: "d".into(),
            role: Role::Officer,
        },
        UserChange::SetApprovalKey {
            name: "admin".into(),
            public_key: vec![4; 65],
        },
        UserChange::SetQuorum { m: 2 },
        UserChange::SetTrustAnchors {
            anchors: vec![[3; 32], [4; 32]],
        },
        UserChange::SetTrustAnchors { anchors: vec![] },
    ] {
        v.push(Request::QuorumToken {
            session: 2,
            change: change.clone(),
        });
        v.push(Request::ChangeUser {
            session: 2,
            change,
            approval: hsmpool_member::Approval {
                token: vec![1, 2, 3],
                signatures: vec![("bob".into(), vec![4; 64]), ("carol".into(), vec![])],
            },
        });
    }
    // A Sign per mechanism parameter: every `MechParam` variant round-trips.
    for (i, p) in all_params().into_iter().enumerate() {
        v.push(Request::Sign {
            session: 2,
            mech: mech(p),
            key: 15,
            input: if i % 2 == 0 {
                InputKind::Message
            } else {
                InputKind::Prehashed
            },
            data: vec![i as u8; i * 3],
        });
    }
    v
}

fn token_status() -> TokenStatus {
    TokenStatus {
        initialized: true,
        user_pin_initialized: false,
        label: [b'x'; 32],
        user_failures: 1,
        so_failures: 2,
        max_failures: 10,
        object_count: 12345,
    }
}

fn sample_responses() -> Vec<Response> {
    vec![
        Response::Ok,
        Response::Handle(0x7fff_ffff_ffff_ffff),
        Response::Size(4096),
        Response::Handles(vec![]),
        Response::Handles(vec![1, 2, u64::MAX]),
        Response::KeyPair(21, 22),
        Response::Bytes(vec![]),
        Response::Bytes(vec![0x55; 300]),
        Response::Secret(Secret::from_slice(b"decrypted")),
        Response::TokenStatus(token_status()),
        Response::Attributes(vec![
            AttrAnswer::Value(b"label".to_vec()),
            AttrAnswer::Sensitive,
            AttrAnswer::Invalid,
            AttrAnswer::Value(vec![]),
        ]),
        Response::KeyMeta(KeyMeta {
            class: CKO_PRIVATE_KEY,
            key_type: Some(CKK_EC),
            key_bits: 256,
            token: true,
            private: true,
            always_authenticate: false,
        }),
        Response::KeyMeta(KeyMeta {
            class: CKO_DATA,
            key_type: None,
            key_bits: 0,
            token: false,
            private: false,
            always_authenticate: true,
        }),
        Response::Err(CKR_PIN_INCORRECT),
        Response::Stats(DaemonStats {
            connections_open: 1,
            connections_accepted: 2,
            handshakes_refused: 3,
            connections_dropped: 4,
            requests_served: 5,
            requests_failed: 6,
            frames_refused: 7,
            faults_injected: u64::MAX,
        }),
        Response::Digests(vec![]),
        Response::Digests(vec![(1, [0xd1; 32]), (u64::MAX, [0; 32])]),
        Response::Version(VersionInfo {
            daemon: "hsmpool-hsmd 9.8.7".into(),
            protocol: PROTOCOL,
            capabilities: VersionInfo::REPLICATION | VersionInfo::FAULTS,
        }),
        Response::Users(UserSet::default()),
        Response::Owned(vec![]),
        Response::Chunk(0, vec![]),
        Response::ClusterId([0xc1; 16]),
        Response::Chunk(9 << 20, vec![0x48; 300]),
        Response::Audit(hsmpool_member::AuditLog::default()),
        Response::Audit(hsmpool_member::AuditLog {
            public_key: vec![0x11; 32],
            checkpoint_every: 16,
            last_seq: 40,
            records: vec![hsmpool_member::AuditRecord {
                seq: 16,
                at_ms: 1_796_000_000_000,
                kind: "login".into(),
                actor: "alice".into(),
                subject: "user".into(),
                detail: "ok".into(),
                prev: [1; 32],
                hash: [2; 32],
            }],
            checkpoints: vec![hsmpool_member::AuditCheckpoint {
                seq: 16,
                hash: [2; 32],
                signature: vec![3; 64],
            }],
        }),
        Response::Owned(vec![
            OwnedObject {
                id: 7,
                owner: Some("alice".into()),
                class: CKO_SECRET_KEY,
                key_type: Some(CKK_AES),
                label: b"k".to_vec(),
                ck_id: vec![1, 2],
                shared_with: vec!["bob".into(), "carol".into()],
            },
            OwnedObject {
                id: 8,
                owner: None,
                class: CKO_DATA,
                key_type: None,
                label: vec![],
                ck_id: vec![],
                shared_with: vec![],
            },
        ]),
        Response::Users(UserSet {
            epoch: 3,
            max_failures: 5,
            quorum: 2,
            users: vec![
                UserState {
                    name: "admin".into(),
                    role: Role::Officer,
                    version: 1,
                    deleted: false,
                    locked: false,
                    resets: 0,
                    failures: 2,
                    approval_key: vec![4; 65],
                    digest: [0xd2; 32],
                },
                UserState {
                    name: String::new(),
                    role: Role::User,
                    version: u64::MAX,
                    deleted: true,
                    locked: true,
                    resets: u64::MAX,
                    failures: u32::MAX,
                    approval_key: vec![],
                    digest: [0; 32],
                },
            ],
        }),
    ]
}

/// Feed `bytes` to a fresh reader in the given chunk sizes; collect the frames.
fn read_all(bytes: &[u8], mut chunk: impl FnMut() -> usize) -> Vec<(u64, Vec<u8>)> {
    let mut fr = FrameReader::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = chunk().clamp(1, rest.len());
        fr.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(f) = fr.next_frame().unwrap() {
            out.push(f);
        }
    }
    fr.finish().unwrap();
    out
}

fn one_frame(frame: &[u8]) -> (u64, Vec<u8>) {
    let mut fr = FrameReader::new();
    fr.push(frame);
    let f = fr.next_frame().unwrap().expect("a whole frame");
    assert_eq!(fr.next_frame().unwrap(), None);
    fr.finish().unwrap();
    f
}

#[test]
fn every_request_round_trips() {
    let samples = sample_requests();
    let kinds: BTreeSet<u8> = samples.iter().map(Request::kind).collect();
    assert_eq!(kinds, (kind::PING..=kind::LAST_REQUEST).collect());
    for (i, r) in samples.iter().enumerate() {
        let id = (i as u64) << 40 | 0xabc;
        let frame = encode_request(id, r).unwrap();
        assert_eq!(frame[..4], *b"HPW\x01");
        assert_eq!(
            u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize,
            frame.len() - HEADER_LEN
        );
        let (got_id, payload) = one_frame(&frame);
        assert_eq!(got_id, id);
        assert_eq!(&decode_request(&payload).unwrap(), r, "{}", r.name());
        // A request is not a response.
        assert_eq!(
            decode_response(&payload),
            Err(WireError::UnknownKind(payload[0]))
        );
    }
}

#[test]
fn every_response_round_trips() {
    let samples = sample_responses();
    let kinds: BTreeSet<u8> = samples.iter().map(Response::kind).collect();
    assert_eq!(kinds, (kind::R_OK..=kind::LAST_RESPONSE).collect());
    for (i, r) in samples.iter().enumerate() {
        let frame = encode_response(i as u64, r).unwrap();
        let (id, payload) = one_frame(&frame);
        assert_eq!(id, i as u64);
        assert_eq!(&decode_response(&payload).unwrap(), r);
        assert_eq!(
            decode_request(&payload),
            Err(WireError::UnknownKind(payload[0]))
        );
    }
}

#[test]
fn response_eq_tells_values_apart() {
    let mut t = token_status();
    t.so_failures += 1;
    assert_ne!(
        Response::TokenStatus(t),
        Response::TokenStatus(token_status())
    );
    assert_ne!(Response::Handle(1), Response::Size(1));
    assert_ne!(Response::Ok, Response::Err(0));
}

#[test]
fn secrets_are_not_in_debug_output() {
    let reqs = [
        Request::Login {
            session: 1,
            role: Role::User,
            pin: Secret::from_slice(b"hunter2"),
            username: Some("bob".into()),
        },
        Request::InitToken {
            so_pin: Secret::from_slice(b"hunter2"),
            label: [b' '; 32],
        },
        Request::SetPin {
            session: 1,
            old: Secret::from_slice(b"hunter2"),
            new: Secret::from_slice(b"hunter2"),
        },
        Request::Encrypt {
            session: 1,
            mech: Mechanism::plain(CKM_AES_ECB),
            key: 1,
            data: Secret::from_slice(b"hunter2"),
        },
        Request::CreateObject {
            session: 1,
            template: vec![Attr::bytes(CKA_VALUE, b"hunter2")],
        },
    ];
    // As decoded off the wire, too.
    for r in reqs.iter() {
        let (_, payload) = one_frame(&encode_request(1, r).unwrap());
        let decoded = decode_request(&payload).unwrap();
        for s in [format!("{r:?}"), format!("{decoded:?}"), format!("{r:#?}")] {
            assert!(!s.contains("hunter2"), "{s}");
            // Nor as a byte list: 'h' 'u' 'n' = 104, 117, 110.
            assert!(!s.contains("104, 117, 110"), "{s}");
        }
    }
    let s = format!("{:?}", Response::Secret(Secret::from_slice(b"hunter2")));
    assert!(!s.contains("hunter2") && !s.contains("104"), "{s}");
}

#[test]
fn secrets_decode_into_zeroizing_buffers() {
    let (_, payload) =
        one_frame(&encode_response(9, &Response::Secret(b"k".to_vec().into())).unwrap());
    let Response::Secret(s) = decode_response(&payload).unwrap() else {
        panic!("not a secret");
    };
    let z: Zeroizing<Vec<u8>> = s.into_inner();
    assert_eq!(&z[..], b"k");
}

#[test]
fn sign_input_kind_maps_both_ways() {
    let data = [1u8, 2, 3];
    for input in [SignInput::Message(&data), SignInput::Prehashed(&data)] {
        let (k, d) = InputKind::split(input);
        let back = k.with(d);
        assert_eq!(format!("{input:?}"), format!("{back:?}"));
    }
}

/// Every sample, back to back, in one stream.
fn stream() -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let mut bytes = Vec::new();
    let mut expect = Vec::new();
    for (i, r) in sample_requests().iter().enumerate() {
        // Ids deliberately not in order: matching is by id, not position.
        let id = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let f = encode_request(id, r).unwrap();
        expect.push((id, f[HEADER_LEN + 8..].to_vec()));
        bytes.extend_from_slice(&f);
    }
    for (i, r) in sample_responses().iter().enumerate() {
        let f = encode_response(1000 - i as u64, r).unwrap();
        expect.push((1000 - i as u64, f[HEADER_LEN + 8..].to_vec()));
        bytes.extend_from_slice(&f);
    }
    (bytes, expect)
}

#[test]
fn frame_reader_whole_stream_at_once() {
    let (bytes, expect) = stream();
    assert_eq!(read_all(&bytes, || usize::MAX), expect);
}

#[test]
fn frame_reader_one_byte_at_a_time() {
    let (bytes, expect) = stream();
    assert_eq!(read_all(&bytes, || 1), expect);
}

#[test]
fn frame_reader_random_chunks() {
    let (bytes, expect) = stream();
    for seed in 1..=50u64 {
        let mut rng = Rng(seed.wrapping_mul(0x1234_5678_9abc_def1) | 1);
        let max = [2, 7, 64, 1000, 100_000][seed as usize % 5];
        assert_eq!(read_all(&bytes, || 1 + rng.below(max)), expect);
    }
}

#[test]
fn truncated_frame_is_none_until_complete() {
    let frame = encode_request(
        5,
        &Request::Sign {
            session: 1,
            mech: Mechanism::plain(CKM_ECDSA),
            key: 2,
            input: InputKind::Prehashed,
            data: vec![7; 32],
        },
    )
    .unwrap();
    let mut fr = FrameReader::new();
    for (i, b) in frame.iter().enumerate() {
        assert_eq!(fr.next_frame(), Ok(None), "at {i}");
        if i > 0 {
            assert_eq!(fr.finish(), Err(WireError::Truncated), "at {i}");
        }
        fr.push(&[*b]);
    }
    let (id, payload) = fr.next_frame().unwrap().unwrap();
    assert_eq!(id, 5);
    assert!(matches!(decode_request(&payload), Ok(Request::Sign { .. })));
    assert_eq!(fr.buffered(), 0);
    fr.finish().unwrap();
}

#[test]
fn every_strict_prefix_of_a_body_is_truncated() {
    let payloads = sample_requests()
        .iter()
        .map(|r| encode_request(0, r).unwrap())
        .chain(
            sample_responses()
                .iter()
                .map(|r| encode_response(0, r).unwrap()),
        )
        .map(|f| f[HEADER_LEN + 8..].to_vec())
        .collect::<Vec<_>>();
    for p in &payloads {
        let is_req = p[0] < 0x80;
        let decode = |b: &[u8]| {
            if is_req {
                decode_request(b).map(|_| ())
            } else {
                decode_response(b).map(|_| ())
            }
        };
        for n in 0..p.len() {
            assert_eq!(decode(&p[..n]), Err(WireError::Truncated), "{p:?} at {n}");
        }
        let mut longer = p.clone();
        longer.push(0);
        assert_eq!(
            decode(&longer),
            Err(WireError::Malformed("trailing bytes")),
            "{p:?}"
        );
    }
}

#[test]
fn oversized_length_is_refused_from_the_header() {
    let mut header = b"HPW\x01".to_vec();
    header.extend_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
    let mut fr = FrameReader::new();
    fr.push(&header[..7]);
    assert_eq!(fr.next_frame(), Ok(None));
    fr.push(&header[7..]); // no payload byte yet
    let err = Err(WireError::TooLarge {
        len: u64::from(MAX_PAYLOAD) + 1,
    });
    assert_eq!(fr.next_frame(), err);
    // The reader stays failed and buffers nothing more.
    fr.push(&[0; 1000]);
    assert_eq!(fr.next_frame(), err);
    assert_eq!(fr.finish(), err.map(|_| ()));

    let mut fr = FrameReader::new();
    fr.push(b"HPW\x01\xff\xff\xff\xff");
    assert_eq!(
        fr.next_frame(),
        Err(WireError::TooLarge {
            len: u64::from(u32::MAX)
        })
    );
}

#[test]
fn exactly_max_payload_passes_and_one_more_does_not() {
    // kind + session + mech(8 + 1) + key + input + data length prefix
    let overhead = 8 + 1 + 8 + 9 + 8 + 1 + 4;
    let sign = |n: usize| Request::Sign {
        session: 1,
        mech: Mechanism::plain(CKM_SHA256_HMAC),
        key: 2,
        input: InputKind::Message,
        data: vec![0x33; n],
    };
    let max = MAX_PAYLOAD as usize - overhead;
    let frame = encode_request(1, &sign(max)).unwrap();
    assert_eq!(frame.len(), HEADER_LEN + MAX_PAYLOAD as usize);
    let (_, payload) = one_frame(&frame);
    assert_eq!(decode_request(&payload).unwrap(), sign(max));
    assert!(matches!(
        encode_request(1, &sign(max + 1)),
        Err(WireError::TooLarge { .. })
    ));
    assert!(matches!(
        encode_response(1, &Response::Bytes(vec![0; MAX_PAYLOAD as usize])),
        Err(WireError::TooLarge { .. })
    ));
}

#[test]
fn short_payload_is_malformed() {
    let mut fr = FrameReader::new();
    fr.push(b"HPW\x01\x00\x00\x00\x08");
    assert!(matches!(fr.next_frame(), Err(WireError::Malformed(_))));
}

#[test]
fn bad_magic_and_version() {
    let good = encode_request(1, &Request::Ping).unwrap();

    let mut fr = FrameReader::new();
    fr.push(b"G"); // refused at the first wrong byte
    assert_eq!(fr.next_frame(), Err(WireError::BadMagic));

    let mut fr = FrameReader::new();
    fr.push(b"HP");
    assert_eq!(fr.next_frame(), Ok(None));
    fr.push(b"X");
    assert_eq!(fr.next_frame(), Err(WireError::BadMagic));
    fr.push(&good);
    assert_eq!(fr.next_frame(), Err(WireError::BadMagic));

    let mut bad = good.clone();
    bad[3] = 2;
    let mut fr = FrameReader::new();
    fr.push(&bad);
    assert_eq!(fr.next_frame(), Err(WireError::BadVersion(2)));

    // A good frame then garbage: the frame comes out, then the error.
    let mut fr = FrameReader::new();
    fr.push(&good);
    fr.push(b"GET / HTTP/1.1\r\n");
    assert_eq!(fr.next_frame().unwrap().map(|f| f.0), Some(1));
    assert_eq!(fr.next_frame(), Err(WireError::BadMagic));
}

#[test]
fn unknown_kinds_and_bad_tags() {
    assert_eq!(decode_request(&[0x00]), Err(WireError::UnknownKind(0)));
    let next = kind::LAST_REQUEST + 1;
    assert_eq!(decode_request(&[next]), Err(WireError::UnknownKind(next)));
    assert_eq!(decode_request(&[0xee]), Err(WireError::UnknownKind(0xee)));
    assert_eq!(decode_response(&[0x7f]), Err(WireError::UnknownKind(0x7f)));
    let next = kind::LAST_RESPONSE + 1;
    assert_eq!(decode_response(&[next]), Err(WireError::UnknownKind(next)));
    assert_eq!(decode_request(&[]), Err(WireError::Truncated));
    assert_eq!(decode_response(&[]), Err(WireError::Truncated));

    // Through a reader: the frame is fine, its body is not, and the id is known for the answer.
    let mut frame = encode_request(77, &Request::Ping).unwrap();
    frame[HEADER_LEN + 8] = 0xee;
    let (id, payload) = one_frame(&frame);
    assert_eq!(id, 77);
    assert_eq!(decode_request(&payload), Err(WireError::UnknownKind(0xee)));

    let malformed = |p: &[u8]| matches!(decode_request(p), Err(WireError::Malformed(_)));
    // Login with role 2.
    let mut p = vec![kind::LOGIN];
    p.extend_from_slice(&1u64.to_be_bytes());
    p.push(2);
    assert!(malformed(&p));
    // Login with a user name that is not UTF-8, and with option tag 2.
    let login = |tag: u8, name: &[u8]| {
        let mut p = vec![kind::LOGIN];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.push(1);
        p.extend_from_slice(&4u32.to_be_bytes());
        p.extend_from_slice(b"1234");
        p.push(tag);
        p.extend_from_slice(&(name.len() as u32).to_be_bytes());
        p.extend_from_slice(name);
        p
    };
    assert!(decode_request(&login(1, b"bob")).is_ok());
    assert!(malformed(&login(1, b"\xff\xfe")));
    assert!(malformed(&login(2, b"bob")));
    // An HKDF bool of 2; an unknown MechParam tag; an unknown sign input kind; an unknown KDF
    // segment.
    let sign = |param: &[u8], input: u8| {
        let mut p = vec![kind::SIGN];
        p.extend_from_slice(&1u64.to_be_bytes());
        p.extend_from_slice(&CKM_SHA256_HMAC.to_be_bytes());
        p.extend_from_slice(param);
        p.extend_from_slice(&2u64.to_be_bytes());
        p.push(input);
        p.extend_from_slice(&0u32.to_be_bytes());
        p
    };
    assert!(decode_request(&sign(&[0], 1)).is_ok());
    assert!(malformed(&sign(&[0], 2)));
    // Tag 9 is the SP 800-108 KDF parameter now; 10 is unknown, as is a KDF segment kind 3.
    assert!(malformed(&sign(&[10], 0)));
    let mut kdf = vec![9];
    kdf.extend_from_slice(&CKM_SHA256_HMAC.to_be_bytes());
    kdf.extend_from_slice(&1u32.to_be_bytes());
    kdf.push(3);
    kdf.extend_from_slice(&[0; 8]);
    assert!(malformed(&sign(&kdf, 0)));
    let mut hkdf = vec![7, 1, 2];
    hkdf.extend_from_slice(&[0; 24]);
    assert!(malformed(&sign(&hkdf, 0)));
    // Random over the cap.
    let mut p = vec![kind::RANDOM];
    p.extend_from_slice(&(MAX_RANDOM + 1).to_be_bytes());
    assert!(malformed(&p));
    // A fault verb that is not UTF-8.
    let mut p = vec![kind::FAULT];
    p.extend_from_slice(&2u32.to_be_bytes());
    p.extend_from_slice(b"\xff\xfe");
    assert!(malformed(&p));
    // A bad AttrAnswer tag.
    let mut p = vec![kind::R_ATTRIBUTES];
    p.extend_from_slice(&1u32.to_be_bytes());
    p.push(3);
    assert!(matches!(decode_response(&p), Err(WireError::Malformed(_))));
}

#[test]
fn huge_counts_do_not_allocate() {
    // Claims of 4 billion attributes / handles / a 4 GiB value, with no bytes behind them.
    let mut p = vec![kind::CREATE_OBJECT];
    p.extend_from_slice(&1u64.to_be_bytes());
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode_request(&p), Err(WireError::Truncated));
    let mut p = vec![kind::R_HANDLES];
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode_response(&p), Err(WireError::Truncated));
    let mut p = vec![kind::R_BYTES];
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(decode_response(&p), Err(WireError::Truncated));
    // 4 billion digests claimed, one present.
    let mut p = vec![kind::R_DIGESTS];
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    p.extend_from_slice(&[0; 40]);
    assert_eq!(decode_response(&p), Err(WireError::Truncated));
}

/// Random bytes and mutated valid frames, through the reader and both decoders: no panic.
#[test]
fn fuzz_never_panics() {
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    let (stream_bytes, _) = stream();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for r in sample_requests() {
        frames.push(encode_request(rng.next(), &r).unwrap());
    }
    for r in sample_responses() {
        frames.push(encode_response(rng.next(), &r).unwrap());
    }
    frames.retain(|f| f.len() < 4096); // leave the 16 MiB Random sample out: speed
    let mut decoded = 0usize;
    let mut check = |bytes: &[u8], rng: &mut Rng| {
        let mut fr = FrameReader::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = (1 + rng.below(64)).min(rest.len());
            fr.push(&rest[..n]);
            rest = &rest[n..];
            while let Ok(Some((_, payload))) = fr.next_frame() {
                let a = decode_request(&payload);
                let b = decode_response(&payload);
                decoded += usize::from(a.is_ok() || b.is_ok());
            }
        }
        let _ = fr.finish();
        // The decoders straight on the raw bytes too.
        let _ = decode_request(bytes);
        let _ = decode_response(bytes);
    };

    for _ in 0..20_000 {
        let n = rng.below(96);
        let mut b = rng.bytes(n);
        // Often a valid header so the body decoders get exercised.
        if rng.below(2) == 0 && b.len() >= HEADER_LEN + 9 {
            b[..4].copy_from_slice(b"HPW\x01");
            let len = (b.len() - HEADER_LEN) as u32;
            b[4..8].copy_from_slice(&len.to_be_bytes());
            b[16] = if rng.below(2) == 0 {
                1 + rng.below(kind::LAST_REQUEST as usize) as u8
            } else {
                0x80 + rng.below(usize::from(kind::LAST_RESPONSE - 0x7f)) as u8
            };
        }
        check(&b, &mut rng);
    }

    for _ in 0..20_000 {
        let mut b = frames[rng.below(frames.len())].clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
                1 if !b.is_empty() => {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
                2 => b.truncate(rng.below(b.len() + 1)),
                3 => {
                    let i = rng.below(b.len() + 1);
                    let n = 1 + rng.below(8);
                    let extra = rng.bytes(n);
                    b.splice(i..i, extra);
                }
                _ if b.len() > HEADER_LEN + 9 => {
                    // Mutate the body but keep the frame length right.
                    let i = HEADER_LEN + 8 + rng.below(b.len() - HEADER_LEN - 8);
                    b[i] = rng.next() as u8;
                }
                _ => {}
            }
        }
        check(&b, &mut rng);
    }

    // And the whole multi-frame stream with one byte mutated.
    for _ in 0..200 {
        let mut b = stream_bytes.clone();
        let i = rng.below(b.len());
        b[i] ^= 1 << rng.below(8);
        check(&b, &mut rng);
    }
    assert!(
        decoded > 1000,
        "the fuzz loop reached the decoders {decoded} times"
    );
}

#[test]
fn the_too_large_message_names_the_frame_cap() {
    let msg = WireError::TooLarge { len: 1 }.to_string();
    assert!(
        msg.contains(&format!("({} MiB)", MAX_PAYLOAD >> 20)),
        "{msg}"
    );
}
