//! hsmpool's PKCS #11 module (`libhsmpool_pkcs11.so`): the C ABI and nothing else.
//!
//! **Owns:** the exported `C_*` symbols, the two function lists (2.40 and 3.0) and the interface
//! list, and the translation of every C argument into Rust values and back: NULL and length
//! checks, mechanism parameters, templates, the variable-length output rule of §5.2, blank-padded
//! info strings, and the mapping of engine errors to `CK_RV`.
//!
//! **Must never:**
//! * let a panic unwind into C (it would abort the host): every `C_*` body is one
//!   `guard!` call, which turns a panic into `CKR_GENERAL_ERROR`;
//! * read or write caller memory outside [`guard`], or convert a length with `as`;
//! * log PINs, keys or data: spans carry the function name only;
//! * hold behaviour: sessions, login state, routing and retries live in `hsmpool-engine`, which
//!   this crate only calls.
//!
//! Every `C_*` function is exported by name (`#[no_mangle]`) for callers that link statically or
//! look functions up with `dlsym`; `C_GetFunctionList`, `C_GetInterfaceList` and
//! `C_GetInterface`, which live in [`table`], hand out its lists, which point at the same
//! functions. The C caller's side of the contract is in `cdylib/README.md`.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub mod entry;
pub mod guard;
pub mod table;

pub use entry::decrypt::*;
pub use entry::digest::*;
pub use entry::dual::*;
pub use entry::encrypt::*;
pub use entry::general::*;
pub use entry::key::*;
pub use entry::legacy::*;
pub use entry::message::*;
pub use entry::object::*;
pub use entry::random::*;
pub use entry::session::*;
pub use entry::sign::*;
pub use entry::slot::*;
pub use entry::verify::*;
pub use table::{C_GetFunctionList, C_GetInterface, C_GetInterfaceList};
