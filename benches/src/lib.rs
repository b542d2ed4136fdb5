//! The `hsmpool-bench` harness and the criterion benches share this crate: loading any PKCS #11
//! module through `cryptoki`'s safe API (ours, SoftHSMv2, a vendor's), giving it a throw-away
//! data directory, finding or initialising its token, making keys, checking outputs
//! independently with aws-lc-rs, measuring throughput over many threads ([`sweep::measure`]),
//! and writing the results ([`report`]: CSV, JSON, and plots through [`report::plot_lines`]).
//!
//! It drives modules only through their C ABI, exactly as an application would, and must never
//! touch a user's token unless told to (`--data`): by default every run works in a fresh
//! temporary directory, and a token initialised by someone else is never re-initialised. It
//! has no `unsafe` code.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod keys;
pub mod lab;
pub mod plot;
pub mod report;
pub mod run;
pub mod setup;
pub mod stats;
pub mod sweep;
pub mod target;

/// The harness's error: a message that already names the step that failed.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Results of the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// Attach the step that failed to an error.
pub trait Context<T> {
    /// Prefix the error with `what`.
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}
