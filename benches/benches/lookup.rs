//! Session and object-handle lookup must not grow with what is open: the engine keeps both in
//! sharded hash maps, so a call's cost should be the same with one entry and with 10,000.
//!
//! * **Sessions**: `C_GetSessionInfo` with 1 and with 10,000 sessions open; it finds its
//!   session and reads one flag, nothing more.
//! * **Object handles**: `C_EncryptInit(CKM_RSA_PKCS, key)` followed by `C_EncryptUpdate`, with
//!   the key alone and with 10,000 more session objects present. The init looks the handle up in
//!   the engine's object map and answers the key check from its cache (no round trip to the
//!   HSM); the update ends the operation at once, because RSA encryption is single-part
//!   (`CKR_MECHANISM_INVALID`, again without a round trip). The pair is what isolates the map:
//!   every other handle-taking call that `cryptoki`'s safe API can make either reaches the HSM
//!   (attributes, size, a signature) or leaves an operation active that only the HSM can end
//!   (ending one with a NULL mechanism, the 3.0 rule, needs a raw call). So the figure is two C
//!   ABI crossings, two session lookups, the mechanism table, one object-map lookup and one
//!   key-cache lookup; compare it with `ffi_guard/get_session_info/ok` (one crossing, one
//!   session lookup) for the share of the rest.
//! * **An unknown handle**: `C_EncryptInit` with a destroyed key's handle: one crossing, one
//!   session lookup, a map miss, `CKR_KEY_HANDLE_INVALID`.
//!
//! Build the module first (`cargo build --release -p hsmpool-pkcs11`), or name it with
//! `HSMPOOL_MODULE`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use hsmpool_bench::keys;
use hsmpool_bench::setup::{self, DataDir};

/// Sessions open, compared.
const SESSIONS: [usize; 2] = [1, 10_000];
/// Session data objects present besides the key pair, compared.
const OBJECTS: [usize; 2] = [0, 10_000];

/// Whether `r` failed with exactly `rv`.
fn failed_with<T>(r: Result<T, Error>, rv: RvError) -> bool {
    matches!(r, Err(Error::Pkcs11(got, _)) if got == rv)
}

/// `C_EncryptInit` on `key` (a handle-map and key-cache hit), then `C_EncryptUpdate`, which ends
/// the single-part RSA operation with `CKR_MECHANISM_INVALID`.
fn init_and_end(s: &Session, key: ObjectHandle) -> bool {
    s.encrypt_init(&Mechanism::RsaPkcs, key)
        .expect("C_EncryptInit succeeds");
    failed_with(s.encrypt_update(&[0x5a; 32]), RvError::MechanismInvalid)
}

fn lookup(c: &mut Criterion) {
    let module = setup::module_path(None).unwrap_or_else(|e| panic!("{e}"));
    let data =
        DataDir::prepare(None, "pin_iterations = 1000\n").expect("a temporary data directory");
    let pkcs11 = setup::load(&module).expect("the module loads and initialises");
    let slot = setup::slot(&pkcs11).expect("the module has a slot");
    let session = setup::init_token(&pkcs11, slot, "lookup-bench").expect("the token initialises");

    // Sessions: `session` is the one; the others are opened around it.
    let mut group = c.benchmark_group("lookup/sessions");
    let mut others: Vec<Session> = Vec::new();
    for n in SESSIONS {
        let t0 = Instant::now();
        while others.len() + 1 < n {
            others.push(pkcs11.open_ro_session(slot).expect("C_OpenSession"));
        }
        eprintln!("{n} sessions open (opened in {:.2?})", t0.elapsed());
        group.bench_function(BenchmarkId::new("get_session_info", n), |b| {
            b.iter(|| {
                black_box(
                    black_box(&session)
                        .get_session_info()
                        .expect("C_GetSessionInfo succeeds"),
                )
            })
        });
    }
    group.finish();
    // Closing them does not log `session` out: it stays open.
    drop(others);

    // Object handles.
    let rsa = keys::generate_rsa(&session, "lookup-bench-rsa", false).expect("an RSA key pair");
    assert!(
        init_and_end(&session, rsa.public),
        "C_EncryptUpdate ends a CKM_RSA_PKCS operation with CKR_MECHANISM_INVALID"
    );
    let mut group = c.benchmark_group("lookup/objects");
    let mut present = 0;
    for n in OBJECTS {
        let t0 = Instant::now();
        for i in present..n {
            let template = [
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Label(format!("lookup-bench-{i}").into_bytes()),
                Attribute::Value(i.to_be_bytes().to_vec()),
            ];
            session
                .create_object(&template)
                .expect("C_CreateObject of a session data object succeeds");
        }
        present = present.max(n);
        eprintln!("{n} more objects present (made in {:.2?})", t0.elapsed());
        group.bench_function(BenchmarkId::new("encrypt_init_and_end", n), |b| {
            b.iter(|| black_box(init_and_end(black_box(&session), black_box(rsa.public))))
        });
    }

    // A handle the engine no longer knows: the other half of the same key pair, destroyed.
    session
        .destroy_object(rsa.private)
        .expect("C_DestroyObject");
    let gone = rsa.private;
    assert!(
        failed_with(
            session.encrypt_init(&Mechanism::RsaPkcs, gone),
            RvError::KeyHandleInvalid
        ),
        "a destroyed key's handle is CKR_KEY_HANDLE_INVALID"
    );
    group.bench_function("encrypt_init/key_handle_invalid", |b| {
        b.iter(|| {
            black_box(failed_with(
                black_box(&session).encrypt_init(&Mechanism::RsaPkcs, black_box(gone)),
                RvError::KeyHandleInvalid,
            ))
        })
    });
    group.finish();

    drop(session);
    pkcs11.finalize().expect("C_Finalize");
    drop(data);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = lookup
}
criterion_main!(benches);
