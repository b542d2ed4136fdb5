//! The cost of crossing the C ABI: `C_GetSessionInfo`, a call that does nothing but find its
//! session and fill a struct, through the built module's guard (span, `catch_unwind`, result
//! mapping), on its happy path and on its error path (a session handle the module does not know,
//! answered `CKR_SESSION_HANDLE_INVALID`).
//!
//! Both go through `cryptoki`'s safe API, as an application's calls would, so the figures include
//! its small share (one indirect call, converting `CK_SESSION_INFO`). Build the module first
//! (`cargo build --release -p hsmpool-pkcs11`), or name it with `HSMPOOL_MODULE`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use cryptoki::error::{Error, RvError};
use hsmpool_bench::setup::{self, DataDir};

fn ffi_guard(c: &mut Criterion) {
    let module = setup::module_path(None).unwrap_or_else(|e| panic!("{e}"));
    let data =
        DataDir::prepare(None, "pin_iterations = 1000\n").expect("a temporary data directory");
    let pkcs11 = setup::load(&module).expect("the module loads and initialises");
    let slot = setup::slot(&pkcs11).expect("the module has a slot");
    let session = setup::init_token(&pkcs11, slot, "ffi-bench").expect("the token initialises");

    let mut group = c.benchmark_group("ffi_guard");
    group.bench_function("get_session_info/ok", |b| {
        b.iter(|| {
            black_box(
                black_box(&session)
                    .get_session_info()
                    .expect("C_GetSessionInfo succeeds"),
            )
        })
    });

    // A stale handle, as an application holding one across C_Finalize has: after the module is
    // finalised and initialised again, `session`'s handle names no session (the new engine has
    // opened none). cryptoki's safe API offers no other way to pass an unknown handle.
    pkcs11
        .clone()
        .finalize()
        .expect("C_Finalize with sessions open");
    pkcs11
        .initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        ))
        .expect("C_Initialize again");
    let invalid =
        |r: Result<_, Error>| matches!(r, Err(Error::Pkcs11(RvError::SessionHandleInvalid, _)));
    assert!(
        invalid(session.get_session_info()),
        "a handle from before C_Finalize is CKR_SESSION_HANDLE_INVALID"
    );
    group.bench_function("get_session_info/session_handle_invalid", |b| {
        b.iter(|| black_box(invalid(black_box(&session).get_session_info())))
    });
    group.finish();

    // Dropping it asks the new engine to close a session it never had; cryptoki only logs that.
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
    targets = ffi_guard
}
criterion_main!(benches);
