//! The entry guard and the pointer/buffer helpers: the only place caller memory is read or written.
//!
//! Every helper that takes a raw pointer is an `unsafe fn` whose `# Safety` section says what the
//! entry point (relaying the C caller's promise) must guarantee. Everything that *can* be checked
//! here is checked (NULL, lengths, alignment, parameter sizes) and turned into an error, never
//! trusted: a NULL pointer with a non-zero length is `CKR_ARGUMENTS_BAD`, a mechanism parameter of
//! the wrong size is `CKR_MECHANISM_PARAM_INVALID`. What cannot be checked (that a non-NULL pointer
//! really addresses that many bytes) is the caller's side of the contract in `cdylib/README.md`.
//!
//! The helpers live in rooms by job, each reached from the entry points through the re-exports
//! below (`crate::guard::in_bytes`, ...):
//! * `pointer`: reading caller memory the caller promises readable (lengths, byte and element
//!   arrays, optional values, bounded C strings);
//! * `output`: writing caller memory (one value, a fixed-capacity array, a fixed-length byte
//!   buffer, the variable-length output rule of §5.2 with its in-place input, padded strings);
//! * `template`: attribute templates in (`C_CreateObject`, ...) and out (`C_GetAttributeValue`);
//! * `mechanism`: a `CK_MECHANISM` and its parameter;
//! * `init`: `C_Initialize`'s arguments, with the kernel copier for the one pointer
//!   (`pReserved`) the spec does not promise readable.
//!
//! `pointer` is the lowest room: the others may use it, it uses none of them, and no room uses
//! another besides it.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

use cryptoki_sys::*;

mod init;
mod mechanism;
mod output;
mod pointer;
mod template;

pub(crate) use init::init_args;
pub use init::{CONFIG_MAX_LEN, CONFIG_PREFIX};
pub(crate) use mechanism::in_mechanism;
pub(crate) use output::{in_out, out_array, out_bytes, out_ref, pad, version, OutBuf};
pub(crate) use pointer::{in_bytes, in_cstr, in_opt, len_to_ck, u64_to_ck};
pub(crate) use template::{in_template, OutTemplate};

pub(crate) use hsmpool_engine::Result;

/// Runs the body of one `C_*` entry point.
///
/// `guard!("C_Name", { body })`: the body evaluates to `Result<CK_RV>`. It runs inside a tracing
/// span named after the function and under `catch_unwind`: `Ok(rv)` is returned as is (so a body
/// can return `CKR_NO_EVENT` or `CKR_ATTRIBUTE_SENSITIVE`), `Err(e)` becomes `e.ck_rv()`, and a
/// panic becomes `CKR_GENERAL_ERROR` instead of unwinding into C (which would abort the host).
/// Arguments are never recorded: they may be PINs, keys or data.
macro_rules! guard {
    ($name:literal, $body:block) => {
        $crate::guard::run(
            || ::tracing::debug_span!($name),
            move || -> $crate::guard::Result<::cryptoki_sys::CK_RV> { $body },
        )
    };
}
pub(crate) use guard;

/// The part of [`guard!`] that needs no literal: enter the span, run the body, log an error, and
/// catch a panic. The span is made inside `catch_unwind` too, so even a panicking subscriber
/// cannot unwind into C.
pub(crate) fn run(
    span: impl FnOnce() -> tracing::Span,
    body: impl FnOnce() -> Result<CK_RV>,
) -> CK_RV {
    let guarded = move || {
        let _entered = span().entered();
        let outcome = body();
        trace_outcome(&outcome);
        outcome
    };
    match panic::catch_unwind(AssertUnwindSafe(guarded)) {
        Ok(Ok(rv)) => rv,
        Ok(Err(e)) => e.ck_rv(),
        Err(payload) => {
            report_panic(payload);
            CKR_GENERAL_ERROR
        }
    }
}

/// Logs an error result inside the entry point's span (the error text never holds secrets).
fn trace_outcome(outcome: &Result<CK_RV>) {
    if let Err(e) = outcome {
        tracing::debug!(rv = format_args!("{:#x}", e.ck_rv()), error = %e, "returning an error");
    }
}

/// Logs a caught panic and drops its payload. Both run code we do not control (a subscriber, the
/// payload's `Drop`), so both are contained too; a payload whose drop panics again is leaked.
fn report_panic(payload: Box<dyn Any + Send>) {
    let again = panic::catch_unwind(AssertUnwindSafe(move || {
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string panic payload)");
        tracing::error!(
            panic = msg,
            "panic caught at the C boundary; returning CKR_GENERAL_ERROR"
        );
        drop(payload);
    }));
    if let Err(p) = again {
        std::mem::forget(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsmpool_engine::Error;

    #[test]
    fn guard_maps_ok_error_and_panic() {
        assert_eq!(guard!("test_ok", { Ok(CKR_NO_EVENT) }), CKR_NO_EVENT);
        assert_eq!(
            guard!("test_err", { Err(Error::PinIncorrect) }),
            CKR_PIN_INCORRECT
        );
        let rv = guard!("test_panic", {
            if CKR_OK == 0 {
                panic!("deliberate panic inside the guard");
            }
            Ok(CKR_OK)
        });
        assert_eq!(rv, CKR_GENERAL_ERROR);
        let rv = guard!("test_panic_string", {
            std::panic::panic_any(String::from("owned payload"));
        });
        assert_eq!(rv, CKR_GENERAL_ERROR);
    }
}
