//! The daemon protocol's cost per call (`hsmpool_wire`): encoding a request frame, and
//! reading it back as the daemon does (push the bytes into a [`FrameReader`], take the frame,
//! decode the request), for a signature over a 64-byte message and an AES-GCM encryption of
//! 4 KiB; and the answer's round trip (encode, frame, decode) for each.
//!
//! Only the public wire API is used, and no socket: this is the CPU the protocol adds to a call,
//! on both ends, next to the TLS and the network it travels over.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cryptoki_sys::{CKM_AES_GCM, CKM_ECDSA_SHA256};
use hsmpool_sim::types::{MechParam, Mechanism};
use hsmpool_wire::{
    decode_request, decode_response, encode_request, encode_response, FrameReader, InputKind,
    Request, Response, Secret,
};

/// Any request id: the protocol multiplexes by it but never interprets it.
const ID: u64 = 0x1234_5678;

/// What travels for one call: the request and its answer.
struct Call {
    name: &'static str,
    request: Request,
    response: Response,
}

fn calls() -> [Call; 2] {
    [
        Call {
            name: "sign_64B",
            request: Request::Sign {
                session: 17,
                mech: Mechanism::plain(CKM_ECDSA_SHA256),
                key: 4242,
                input: InputKind::Message,
                data: vec![0x5a; 64],
            },
            // A P-256 signature, r || s.
            response: Response::Bytes(vec![0xa5; 64]),
        },
        Call {
            name: "encrypt_4KiB",
            request: Request::Encrypt {
                session: 17,
                mech: Mechanism {
                    mech: CKM_AES_GCM,
                    param: MechParam::Gcm {
                        iv: vec![7; 12],
                        aad: Vec::new(),
                        tag_bits: 128,
                    },
                },
                key: 4243,
                data: Secret::from_slice(&[0x5a; 4096]),
            },
            // The ciphertext and its 16-byte tag.
            response: Response::Bytes(vec![0xa5; 4096 + 16]),
        },
    ]
}

/// Push one frame into `reader` and take it out again, as the receiving end of a connection.
fn read_frame(reader: &mut FrameReader, frame: &[u8]) -> Vec<u8> {
    reader.push(frame);
    let (id, payload) = reader
        .next_frame()
        .expect("a well-formed frame")
        .expect("the frame is complete");
    debug_assert_eq!(id, ID);
    payload
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for call in calls() {
        let frame = encode_request(ID, &call.request).expect("the request encodes");
        let answer = encode_response(ID, &call.response).expect("the response encodes");
        // Outside the timing: both come back as they went.
        let mut reader = FrameReader::new();
        let payload = read_frame(&mut reader, &frame);
        assert_eq!(
            decode_request(&payload).expect("the request decodes"),
            call.request
        );
        let payload = read_frame(&mut reader, &answer);
        assert_eq!(
            decode_response(&payload).expect("the response decodes"),
            call.response
        );

        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("{}/encode_request", call.name), |b| {
            b.iter(|| encode_request(ID, black_box(&call.request)).expect("encodes"))
        });
        group.bench_function(format!("{}/decode_request", call.name), |b| {
            let mut reader = FrameReader::new();
            b.iter(|| {
                let payload = read_frame(&mut reader, black_box(&frame));
                decode_request(&payload).expect("decodes")
            })
        });
        group.throughput(Throughput::Bytes(answer.len() as u64));
        group.bench_function(format!("{}/response_round_trip", call.name), |b| {
            let mut reader = FrameReader::new();
            b.iter(|| {
                let frame = encode_response(ID, black_box(&call.response)).expect("encodes");
                let payload = read_frame(&mut reader, &frame);
                decode_response(&payload).expect("decodes")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = wire
}
criterion_main!(benches);
