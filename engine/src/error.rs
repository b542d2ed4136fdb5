//! The engine's one error type, its one mapping to `CK_RV`, and its retry classification.

use cryptoki_sys::*;
use hsmpool_member::types::Rv;
use hsmpool_member::MemberError;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// A function was called before `C_Initialize` (or in a forked child).
    #[error("the library is not initialised")]
    NotInitialized,
    /// `C_Initialize` was called twice.
    #[error("the library is already initialised")]
    AlreadyInitialized,
    /// Bad arguments: NULL pointers, inconsistent lengths, bad flags.
    #[error("bad arguments: {0}")]
    ArgumentsBad(&'static str),
    /// Mutex callbacks without `CKF_OS_LOCKING_OK`.
    #[error("cannot use the application's locking primitives")]
    CantLock,
    /// The configuration is unusable (file, key and reason are in the message).
    #[error("configuration error: {0}")]
    Config(String),
    /// The output buffer is too small; the operation stays active.
    #[error("buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// The length the caller must provide.
        needed: usize,
    },
    /// Unknown slot id.
    #[error("slot id invalid")]
    SlotIdInvalid,
    /// Unknown or closed session handle.
    #[error("session handle invalid")]
    SessionHandleInvalid,
    /// `CKF_SERIAL_SESSION` missing from `C_OpenSession` flags.
    #[error("session must be serial")]
    SessionParallelNotSupported,
    /// A write needs a read-write session.
    #[error("session is read-only")]
    SessionReadOnly,
    /// SO login with read-only sessions open.
    #[error("a read-only session exists")]
    SessionReadOnlyExists,
    /// A read-write SO session exists, so no read-only session may open.
    #[error("a read-write SO session exists")]
    SessionReadWriteSoExists,
    /// Sessions are open where none may be (`C_InitToken`).
    #[error("a session exists")]
    SessionExists,
    /// Unknown object handle, or an object this session may not see.
    #[error("object handle invalid")]
    ObjectHandleInvalid,
    /// Unknown key handle given to an `*Init` function.
    #[error("key handle invalid")]
    KeyHandleInvalid,
    /// Unknown wrapping key handle (`C_WrapKey`).
    #[error("wrapping key handle invalid")]
    WrappingKeyHandleInvalid,
    /// Unknown unwrapping key handle (`C_UnwrapKey`).
    #[error("unwrapping key handle invalid")]
    UnwrappingKeyHandleInvalid,
    /// The key's type does not fit the mechanism.
    #[error("key type inconsistent with mechanism")]
    KeyTypeInconsistent,
    /// The key may not be used for this function (`CKA_SIGN` false, ...).
    #[error("key function not permitted")]
    KeyFunctionNotPermitted,
    /// The key size is outside the mechanism's range.
    #[error("key size out of range")]
    KeySizeRange,
    /// Unknown mechanism, or not allowed for this function.
    #[error("mechanism invalid")]
    MechanismInvalid,
    /// Bad mechanism parameter.
    #[error("mechanism parameter invalid")]
    MechanismParamInvalid,
    /// An operation of this kind is already active.
    #[error("operation already active")]
    OperationActive,
    /// No operation of this kind is active.
    #[error("operation not initialised")]
    OperationNotInitialized,
    /// The template names an attribute type the object class does not have.
    #[error("attribute type invalid: {0:#x}")]
    AttributeTypeInvalid(CK_ATTRIBUTE_TYPE),
    /// An attribute value is invalid (wrong size, unsupported value).
    #[error("attribute value invalid: {0:#x}")]
    AttributeValueInvalid(CK_ATTRIBUTE_TYPE),
    /// The attribute may not be set or changed.
    #[error("attribute read-only: {0:#x}")]
    AttributeReadOnly(CK_ATTRIBUTE_TYPE),
    /// The object's `CKA_MODIFIABLE`, `CKA_COPYABLE` or `CKA_DESTROYABLE` forbids the change.
    #[error("action prohibited")]
    ActionProhibited,
    /// The template is missing something the object needs.
    #[error("template incomplete")]
    TemplateIncomplete,
    /// The template contradicts itself or the mechanism.
    #[error("template inconsistent")]
    TemplateInconsistent,
    /// Login needed.
    #[error("user not logged in")]
    UserNotLoggedIn,
    /// Somebody is already logged in.
    #[error("user already logged in")]
    UserAlreadyLoggedIn,
    /// Another user type is logged in.
    #[error("another user is already logged in")]
    UserAnotherAlreadyLoggedIn,
    /// Bad user type.
    #[error("user type invalid")]
    UserTypeInvalid,
    /// The user PIN was never set (`C_InitPIN`).
    #[error("user PIN not initialised")]
    UserPinNotInitialized,
    /// The token is not initialised.
    #[error("token not recognised (not initialised)")]
    TokenNotRecognized,
    /// Wrong PIN.
    #[error("PIN incorrect")]
    PinIncorrect,
    /// The PIN is malformed or has a bad length.
    #[error("PIN length out of range")]
    PinLenRange,
    /// The PIN is locked.
    #[error("PIN locked")]
    PinLocked,
    /// Input data has a bad length for the operation.
    #[error("data length out of range")]
    DataLenRange,
    /// Input data invalid.
    #[error("data invalid")]
    DataInvalid,
    /// Ciphertext has a bad length.
    #[error("encrypted data length out of range")]
    EncryptedDataLenRange,
    /// Ciphertext invalid (padding, tag).
    #[error("encrypted data invalid")]
    EncryptedDataInvalid,
    /// Signature did not verify.
    #[error("signature invalid")]
    SignatureInvalid,
    /// Signature has the wrong length.
    #[error("signature length out of range")]
    SignatureLenRange,
    /// The function is not implemented (and is listed in the README).
    #[error("function not supported")]
    FunctionNotSupported,
    /// A member cannot do what was asked, and the whole change is refused (which member, and
    /// why).
    #[error("not supported: {0}")]
    NotSupportedBy(String),
    /// The token's generator cannot be seeded.
    #[error("random seed not supported")]
    RandomSeedNotSupported,
    /// The token is write protected.
    #[error("token write protected")]
    TokenWriteProtected,
    /// The call cannot be done now, for a reason the log gives (the module was re-entered from
    /// inside its own login).
    #[error("function failed")]
    FunctionFailed,
    /// The HSM returned an error code; carried through unchanged.
    #[error("HSM member {member} returned {rv:#x}")]
    Hsm {
        /// Which member said it.
        member: u32,
        /// What it said.
        rv: Rv,
    },
    /// The device failed in a way the caller cannot fix.
    #[error("device error: {0}")]
    DeviceError(String),
    /// A member could not be reached: its connection is down, it refused the handshake, or it
    /// did not answer in time. Another member (or this one, later) may well succeed.
    #[error("HSM member {member} unreachable: {reason}")]
    MemberUnreachable {
        /// Which member.
        member: u32,
        /// What happened, for the log.
        reason: String,
    },
    /// Memory could not be had (a cap was hit).
    #[error("host memory")]
    HostMemory,
    /// A broken invariant: a bug. Also what a caught panic becomes.
    #[error("internal error: {0}")]
    General(String),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, Error>;

/// A member's error, one to one: nothing is flattened on the way to the caller.
impl From<MemberError> for Error {
    fn from(e: MemberError) -> Error {
        match e {
            MemberError::Rv { member, rv } => Error::Hsm {
                member: member.0,
                rv,
            },
            MemberError::Unreachable { member, reason } => Error::MemberUnreachable {
                member: member.0,
                reason,
            },
            MemberError::Device(reason) => Error::DeviceError(reason),
            MemberError::Config(reason) => Error::Config(reason),
            MemberError::BufferTooSmall { needed } => Error::BufferTooSmall { needed },
            MemberError::DataLenRange => Error::DataLenRange,
            MemberError::Unsupported { .. } => Error::FunctionNotSupported,
            MemberError::Internal(reason) => Error::General(reason),
        }
    }
}

impl Error {
    /// The `CK_RV` the PKCS #11 specification names for this error.
    pub fn ck_rv(&self) -> CK_RV {
        match self {
            Error::NotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
            Error::AlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
            Error::ArgumentsBad(_) => CKR_ARGUMENTS_BAD,
            Error::CantLock => CKR_CANT_LOCK,
            Error::Config(_) => CKR_GENERAL_ERROR,
            Error::BufferTooSmall { .. } => CKR_BUFFER_TOO_SMALL,
            Error::SlotIdInvalid => CKR_SLOT_ID_INVALID,
            Error::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
            Error::SessionParallelNotSupported => CKR_SESSION_PARALLEL_NOT_SUPPORTED,
            Error::SessionReadOnly => CKR_SESSION_READ_ONLY,
            Error::SessionReadOnlyExists => CKR_SESSION_READ_ONLY_EXISTS,
            Error::SessionReadWriteSoExists => CKR_SESSION_READ_WRITE_SO_EXISTS,
            Error::SessionExists => CKR_SESSION_EXISTS,
            Error::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
            Error::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
            Error::WrappingKeyHandleInvalid => CKR_WRAPPING_KEY_HANDLE_INVALID,
            Error::UnwrappingKeyHandleInvalid => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            Error::KeyTypeInconsistent => CKR_KEY_TYPE_INCONSISTENT,
            Error::KeyFunctionNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
            Error::KeySizeRange => CKR_KEY_SIZE_RANGE,
            Error::MechanismInvalid => CKR_MECHANISM_INVALID,
            Error::MechanismParamInvalid => CKR_MECHANISM_PARAM_INVALID,
            Error::OperationActive => CKR_OPERATION_ACTIVE,
            Error::OperationNotInitialized => CKR_OPERATION_NOT_INITIALIZED,
            Error::AttributeTypeInvalid(_) => CKR_ATTRIBUTE_TYPE_INVALID,
            Error::AttributeValueInvalid(_) => CKR_ATTRIBUTE_VALUE_INVALID,
            Error::AttributeReadOnly(_) => CKR_ATTRIBUTE_READ_ONLY,
            Error::ActionProhibited => CKR_ACTION_PROHIBITED,
            Error::TemplateIncomplete => CKR_TEMPLATE_INCOMPLETE,
            Error::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
            Error::UserNotLoggedIn => CKR_USER_NOT_LOGGED_IN,
            Error::UserAlreadyLoggedIn => CKR_USER_ALREADY_LOGGED_IN,
            Error::UserAnotherAlreadyLoggedIn => CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
            Error::UserTypeInvalid => CKR_USER_TYPE_INVALID,
            Error::UserPinNotInitialized => CKR_USER_PIN_NOT_INITIALIZED,
            Error::TokenNotRecognized => CKR_TOKEN_NOT_RECOGNIZED,
            Error::PinIncorrect => CKR_PIN_INCORRECT,
            Error::PinLenRange => CKR_PIN_LEN_RANGE,
            Error::PinLocked => CKR_PIN_LOCKED,
            Error::DataLenRange => CKR_DATA_LEN_RANGE,
            Error::DataInvalid => CKR_DATA_INVALID,
            Error::EncryptedDataLenRange => CKR_ENCRYPTED_DATA_LEN_RANGE,
            Error::EncryptedDataInvalid => CKR_ENCRYPTED_DATA_INVALID,
            Error::SignatureInvalid => CKR_SIGNATURE_INVALID,
            Error::SignatureLenRange => CKR_SIGNATURE_LEN_RANGE,
            Error::FunctionNotSupported | Error::NotSupportedBy(_) => CKR_FUNCTION_NOT_SUPPORTED,
            Error::RandomSeedNotSupported => CKR_RANDOM_SEED_NOT_SUPPORTED,
            Error::TokenWriteProtected => CKR_TOKEN_WRITE_PROTECTED,
            Error::FunctionFailed => CKR_FUNCTION_FAILED,
            Error::Hsm { rv, .. } => *rv,
            Error::DeviceError(_) => CKR_DEVICE_ERROR,
            Error::MemberUnreachable { .. } => CKR_DEVICE_REMOVED,
            Error::HostMemory => CKR_HOST_MEMORY,
            Error::General(_) => CKR_GENERAL_ERROR,
        }
    }

    /// Whether the same call may be repeated on another member: only device-level failures are;
    /// everything the caller or the key decides is permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Hsm { rv, .. } => matches!(
                *rv,
                CKR_DEVICE_ERROR
                    | CKR_DEVICE_REMOVED
                    | CKR_DEVICE_MEMORY
                    | CKR_SESSION_CLOSED
                    | CKR_TOKEN_NOT_PRESENT
                    // A vendor module's answer when it throttles (AWS CloudHSM's client among
                    // others): tried once on each other member, then returned (cluster::call).
                    | CKR_FUNCTION_FAILED
            ),
            Error::DeviceError(_) | Error::MemberUnreachable { .. } => true,
            Error::NotInitialized
            | Error::AlreadyInitialized
            | Error::ArgumentsBad(_)
            | Error::CantLock
            | Error::Config(_)
            | Error::BufferTooSmall { .. }
            | Error::SlotIdInvalid
            | Error::SessionHandleInvalid
            | Error::SessionParallelNotSupported
            | Error::SessionReadOnly
            | Error::SessionReadOnlyExists
            | Error::SessionReadWriteSoExists
            | Error::SessionExists
            | Error::ObjectHandleInvalid
            | Error::KeyHandleInvalid
            | Error::WrappingKeyHandleInvalid
            | Error::UnwrappingKeyHandleInvalid
            | Error::KeyTypeInconsistent
            | Error::KeyFunctionNotPermitted
            | Error::KeySizeRange
            | Error::MechanismInvalid
            | Error::MechanismParamInvalid
            | Error::OperationActive
            | Error::OperationNotInitialized
            | Error::AttributeTypeInvalid(_)
            | Error::AttributeValueInvalid(_)
            | Error::AttributeReadOnly(_)
            | Error::ActionProhibited
            | Error::TemplateIncomplete
            | Error::TemplateInconsistent
            | Error::UserNotLoggedIn
            | Error::UserAlreadyLoggedIn
            | Error::UserAnotherAlreadyLoggedIn
            | Error::UserTypeInvalid
            | Error::UserPinNotInitialized
            | Error::TokenNotRecognized
            | Error::PinIncorrect
            | Error::PinLenRange
            | Error::PinLocked
            | Error::DataLenRange
            | Error::DataInvalid
            | Error::EncryptedDataLenRange
            | Error::EncryptedDataInvalid
            | Error::SignatureInvalid
            | Error::SignatureLenRange
            | Error::FunctionNotSupported
            | Error::NotSupportedBy(_)
            | Error::RandomSeedNotSupported
            | Error::TokenWriteProtected
            | Error::FunctionFailed
            | Error::HostMemory
            | Error::General(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_members_are_device_removed_and_retryable() {
        let e = Error::MemberUnreachable {
            member: 2,
            reason: "connection to 127.0.0.1:1 lost".into(),
        };
        assert_eq!(e.ck_rv(), CKR_DEVICE_REMOVED);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("member 2 unreachable"), "{e}");
        // A restarted daemon's answer for an old session is carried through, not retried as is.
        let lost = Error::Hsm {
            member: 2,
            rv: CKR_SESSION_HANDLE_INVALID,
        };
        assert_eq!(lost.ck_rv(), CKR_SESSION_HANDLE_INVALID);
        assert!(!lost.is_retryable());
    }

    /// The position of a variant in [`Error`]: the match has no `_` arm, so a new variant does
    /// not compile until it is given a row in [`every_variant_is_pinned_to_its_ck_rv_and_retry_class`].
    fn variant_index(e: &Error) -> usize {
        match e {
            Error::NotInitialized => 0,
            Error::AlreadyInitialized => 1,
            Error::ArgumentsBad(_) => 2,
            Error::CantLock => 3,
            Error::Config(_) => 4,
            Error::BufferTooSmall { .. } => 5,
            Error::SlotIdInvalid => 6,
            Error::SessionHandleInvalid => 7,
            Error::SessionParallelNotSupported => 8,
            Error::SessionReadOnly => 9,
            Error::SessionReadOnlyExists => 10,
            Error::SessionReadWriteSoExists => 11,
            Error::SessionExists => 12,
            Error::ObjectHandleInvalid => 13,
            Error::KeyHandleInvalid => 14,
            Error::WrappingKeyHandleInvalid => 15,
            Error::UnwrappingKeyHandleInvalid => 16,
            Error::KeyTypeInconsistent => 17,
            Error::KeyFunctionNotPermitted => 18,
            Error::KeySizeRange => 19,
            Error::MechanismInvalid => 20,
            Error::MechanismParamInvalid => 21,
            Error::OperationActive => 22,
            Error::OperationNotInitialized => 23,
            Error::AttributeTypeInvalid(_) => 24,
            Error::AttributeValueInvalid(_) => 25,
            Error::AttributeReadOnly(_) => 26,
            Error::ActionProhibited => 27,
            Error::TemplateIncomplete => 28,
            Error::TemplateInconsistent => 29,
            Error::UserNotLoggedIn => 30,
            Error::UserAlreadyLoggedIn => 31,
            Error::UserAnotherAlreadyLoggedIn => 32,
            Error::UserTypeInvalid => 33,
            Error::UserPinNotInitialized => 34,
            Error::TokenNotRecognized => 35,
            Error::PinIncorrect => 36,
            Error::PinLenRange => 37,
            Error::PinLocked => 38,
            Error::DataLenRange => 39,
            Error::DataInvalid => 40,
            Error::EncryptedDataLenRange => 41,
            Error::EncryptedDataInvalid => 42,
            Error::SignatureInvalid => 43,
            Error::SignatureLenRange => 44,
            Error::FunctionNotSupported => 45,
            Error::RandomSeedNotSupported => 46,
            Error::TokenWriteProtected => 47,
            Error::Hsm { .. } => 48,
            Error::DeviceError(_) => 49,
            Error::MemberUnreachable { .. } => 50,
            Error::HostMemory => 51,
            Error::General(_) => 52,
            Error::FunctionFailed => 53,
            Error::NotSupportedBy(_) => 54,
        }
    }

    /// Every variant with its `CK_RV` and whether a call failing with it is retried on another
    /// member. `Error::Hsm` carries a member's own `CK_RV`: its rows are the device-level codes
    /// (retried) and a sample of the rest (not).
    #[test]
    fn every_variant_is_pinned_to_its_ck_rv_and_retry_class() {
        let hsm = |rv| Error::Hsm { member: 0, rv };
        let table: Vec<(Error, CK_RV, bool)> = vec![
            (Error::NotInitialized, CKR_CRYPTOKI_NOT_INITIALIZED, false),
            (
                Error::AlreadyInitialized,
                CKR_CRYPTOKI_ALREADY_INITIALIZED,
                false,
            ),
            (Error::ArgumentsBad("x"), CKR_ARGUMENTS_BAD, false),
            (Error::CantLock, CKR_CANT_LOCK, false),
            (Error::Config("x".into()), CKR_GENERAL_ERROR, false),
            (
                Error::BufferTooSmall { needed: 1 },
                CKR_BUFFER_TOO_SMALL,
                false,
            ),
            (Error::SlotIdInvalid, CKR_SLOT_ID_INVALID, false),
            (
                Error::SessionHandleInvalid,
                CKR_SESSION_HANDLE_INVALID,
                false,
            ),
            (
                Error::SessionParallelNotSupported,
                CKR_SESSION_PARALLEL_NOT_SUPPORTED,
                false,
            ),
            (Error::SessionReadOnly, CKR_SESSION_READ_ONLY, false),
            (
                Error::SessionReadOnlyExists,
                CKR_SESSION_READ_ONLY_EXISTS,
                false,
            ),
            (
                Error::SessionReadWriteSoExists,
                CKR_SESSION_READ_WRITE_SO_EXISTS,
                false,
            ),
            (Error::SessionExists, CKR_SESSION_EXISTS, false),
            (Error::ObjectHandleInvalid, CKR_OBJECT_HANDLE_INVALID, false),
            (Error::KeyHandleInvalid, CKR_KEY_HANDLE_INVALID, false),
            (
                Error::WrappingKeyHandleInvalid,
                CKR_WRAPPING_KEY_HANDLE_INVALID,
                false,
            ),
            (
                Error::UnwrappingKeyHandleInvalid,
                CKR_UNWRAPPING_KEY_HANDLE_INVALID,
                false,
            ),
            (Error::KeyTypeInconsistent, CKR_KEY_TYPE_INCONSISTENT, false),
            (
                Error::KeyFunctionNotPermitted,
                CKR_KEY_FUNCTION_NOT_PERMITTED,
                false,
            ),
            (Error::KeySizeRange, CKR_KEY_SIZE_RANGE, false),
            (Error::MechanismInvalid, CKR_MECHANISM_INVALID, false),
            (
                Error::MechanismParamInvalid,
                CKR_MECHANISM_PARAM_INVALID,
                false,
            ),
            (Error::OperationActive, CKR_OPERATION_ACTIVE, false),
            (
                Error::OperationNotInitialized,
                CKR_OPERATION_NOT_INITIALIZED,
                false,
            ),
            (
                Error::AttributeTypeInvalid(CKA_VALUE),
                CKR_ATTRIBUTE_TYPE_INVALID,
                false,
            ),
            (
                Error::AttributeValueInvalid(CKA_VALUE),
                CKR_ATTRIBUTE_VALUE_INVALID,
                false,
            ),
            (
                Error::AttributeReadOnly(CKA_LOCAL),
                CKR_ATTRIBUTE_READ_ONLY,
                false,
            ),
            (Error::ActionProhibited, CKR_ACTION_PROHIBITED, false),
            (Error::TemplateIncomplete, CKR_TEMPLATE_INCOMPLETE, false),
            (
                Error::TemplateInconsistent,
                CKR_TEMPLATE_INCONSISTENT,
                false,
            ),
            (Error::UserNotLoggedIn, CKR_USER_NOT_LOGGED_IN, false),
            (
                Error::UserAlreadyLoggedIn,
                CKR_USER_ALREADY_LOGGED_IN,
                false,
            ),
            (
                Error::UserAnotherAlreadyLoggedIn,
                CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
                false,
            ),
            (Error::UserTypeInvalid, CKR_USER_TYPE_INVALID, false),
            (
                Error::UserPinNotInitialized,
                CKR_USER_PIN_NOT_INITIALIZED,
                false,
            ),
            (Error::TokenNotRecognized, CKR_TOKEN_NOT_RECOGNIZED, false),
            (Error::PinIncorrect, CKR_PIN_INCORRECT, false),
            (Error::PinLenRange, CKR_PIN_LEN_RANGE, false),
            (Error::PinLocked, CKR_PIN_LOCKED, false),
            (Error::DataLenRange, CKR_DATA_LEN_RANGE, false),
            (Error::DataInvalid, CKR_DATA_INVALID, false),
            (
                Error::EncryptedDataLenRange,
                CKR_ENCRYPTED_DATA_LEN_RANGE,
                false,
            ),
            (
                Error::EncryptedDataInvalid,
                CKR_ENCRYPTED_DATA_INVALID,
                false,
            ),
            (Error::SignatureInvalid, CKR_SIGNATURE_INVALID, false),
            (Error::SignatureLenRange, CKR_SIGNATURE_LEN_RANGE, false),
            (
                Error::FunctionNotSupported,
                CKR_FUNCTION_NOT_SUPPORTED,
                false,
            ),
            (
                Error::NotSupportedBy("a vendor member".into()),
                CKR_FUNCTION_NOT_SUPPORTED,
                false,
            ),
            (
                Error::RandomSeedNotSupported,
                CKR_RANDOM_SEED_NOT_SUPPORTED,
                false,
            ),
            (Error::TokenWriteProtected, CKR_TOKEN_WRITE_PROTECTED, false),
            (Error::FunctionFailed, CKR_FUNCTION_FAILED, false),
            (Error::DeviceError("x".into()), CKR_DEVICE_ERROR, true),
            (
                Error::MemberUnreachable {
                    member: 1,
                    reason: "x".into(),
                },
                CKR_DEVICE_REMOVED,
                true,
            ),
            (Error::HostMemory, CKR_HOST_MEMORY, false),
            (Error::General("x".into()), CKR_GENERAL_ERROR, false),
            (hsm(CKR_DEVICE_ERROR), CKR_DEVICE_ERROR, true),
            (hsm(CKR_DEVICE_REMOVED), CKR_DEVICE_REMOVED, true),
            (hsm(CKR_DEVICE_MEMORY), CKR_DEVICE_MEMORY, true),
            (hsm(CKR_SESSION_CLOSED), CKR_SESSION_CLOSED, true),
            (hsm(CKR_TOKEN_NOT_PRESENT), CKR_TOKEN_NOT_PRESENT, true),
            (hsm(CKR_FUNCTION_FAILED), CKR_FUNCTION_FAILED, true),
            (
                hsm(CKR_SESSION_HANDLE_INVALID),
                CKR_SESSION_HANDLE_INVALID,
                false,
            ),
            (hsm(CKR_KEY_HANDLE_INVALID), CKR_KEY_HANDLE_INVALID, false),
            (hsm(CKR_PIN_INCORRECT), CKR_PIN_INCORRECT, false),
            (hsm(CKR_GENERAL_ERROR), CKR_GENERAL_ERROR, false),
        ];
        let mut seen = [false; 55];
        for (e, rv, retry) in &table {
            assert_eq!(e.ck_rv(), *rv, "{e:?}");
            assert_eq!(e.is_retryable(), *retry, "{e:?}");
            seen[variant_index(e)] = true;
        }
        let missing: Vec<usize> = (0..seen.len()).filter(|i| !seen[*i]).collect();
        assert!(missing.is_empty(), "variants without a row: {missing:?}");
    }

    /// A member's error becomes the engine's one to one, and the `CK_RV` the member would
    /// answer with over the wire is the one the engine gives the application.
    #[test]
    fn member_errors_keep_their_code_and_retry_class() {
        use hsmpool_member::MemberId;
        let m = MemberId(2);
        let rows: Vec<(MemberError, CK_RV, bool)> = vec![
            (
                MemberError::Rv {
                    member: m,
                    rv: CKR_KEY_HANDLE_INVALID,
                },
                CKR_KEY_HANDLE_INVALID,
                false,
            ),
            (
                MemberError::Rv {
                    member: m,
                    rv: CKR_DEVICE_ERROR,
                },
                CKR_DEVICE_ERROR,
                true,
            ),
            (
                MemberError::Unreachable {
                    member: m,
                    reason: "gone".into(),
                },
                CKR_DEVICE_REMOVED,
                true,
            ),
            (MemberError::Device("store".into()), CKR_DEVICE_ERROR, true),
            (MemberError::Config("pem".into()), CKR_GENERAL_ERROR, false),
            (
                MemberError::BufferTooSmall { needed: 3 },
                CKR_BUFFER_TOO_SMALL,
                false,
            ),
            (MemberError::DataLenRange, CKR_DATA_LEN_RANGE, false),
            (
                MemberError::Unsupported {
                    member: m,
                    what: "clone",
                },
                CKR_FUNCTION_NOT_SUPPORTED,
                false,
            ),
            (
                MemberError::Internal("bug".into()),
                CKR_GENERAL_ERROR,
                false,
            ),
        ];
        for (e, rv, retry) in rows {
            assert_eq!(e.rv(), rv, "{e:?}");
            let engine = Error::from(e.clone());
            assert_eq!(engine.ck_rv(), rv, "{e:?}");
            assert_eq!(engine.is_retryable(), retry, "{e:?}");
        }
    }
}
