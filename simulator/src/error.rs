//! The simulator's one error type. An HSM answers with a `CK_RV`; store and set-up failures
//! are told apart so the daemon and the engine can say what went wrong.

use std::path::Path;

use crate::types::Rv;

/// Everything the simulator can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SimError {
    /// A PKCS #11 error, as a real HSM would return it.
    #[error("HSM returned {0:#x}")]
    Rv(Rv),
    /// The persistent store failed (path and reason in the message).
    #[error("store: {0}")]
    Store(String),
}

impl SimError {
    pub(crate) fn store(path: &Path, e: impl std::fmt::Display) -> Self {
        SimError::Store(format!("{}: {e}", path.display()))
    }

    /// The `CK_RV` an application sees for this error.
    pub fn ck_rv(&self) -> Rv {
        match self {
            SimError::Rv(rv) => *rv,
            SimError::Store(_) => cryptoki_sys::CKR_DEVICE_ERROR,
        }
    }
}

impl From<Rv> for SimError {
    fn from(rv: Rv) -> Self {
        SimError::Rv(rv)
    }
}

/// Shorthand.
pub type SimResult<T> = Result<T, SimError>;
