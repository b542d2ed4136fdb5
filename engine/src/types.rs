//! Handle newtypes and the plain-data answers the engine gives the C ABI layer.

use cryptoki_sys::{CK_FLAGS, CK_MECHANISM_TYPE, CK_SLOT_ID, CK_STATE, CK_ULONG};

/// An application session handle: the engine's own, stable for the life of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionHandle(pub CK_ULONG);

/// An application object handle: the engine's own, stable while the process lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectHandle(pub CK_ULONG);

/// A slot id as the application sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId(pub CK_SLOT_ID);

/// `CK_INFO`, as Rust data. Strings are padded by the C ABI layer.
#[derive(Clone, Debug)]
pub struct LibraryInfo {
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `libraryDescription`.
    pub description: String,
    /// `libraryVersion` (major, minor).
    pub version: (u8, u8),
}

/// `CK_SLOT_INFO`, as Rust data.
#[derive(Clone, Debug)]
pub struct SlotInfo {
    /// `slotDescription`.
    pub description: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `CKF_*` slot flags.
    pub flags: CK_FLAGS,
    /// Hardware version.
    pub hardware_version: (u8, u8),
    /// Firmware version.
    pub firmware_version: (u8, u8),
}

/// `CK_TOKEN_INFO`, as Rust data. Counts use `CK_UNAVAILABLE_INFORMATION` where unknown.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// Token label (up to 32 bytes, padded with spaces by the C layer).
    pub label: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `model`.
    pub model: String,
    /// `serialNumber` (up to 16 bytes).
    pub serial: String,
    /// `CKF_*` token flags.
    pub flags: CK_FLAGS,
    /// `ulMaxSessionCount` (`CK_EFFECTIVELY_INFINITE` = 0).
    pub max_session_count: CK_ULONG,
    /// `ulSessionCount`.
    pub session_count: CK_ULONG,
    /// `ulMaxRwSessionCount`.
    pub max_rw_session_count: CK_ULONG,
    /// `ulRwSessionCount`.
    pub rw_session_count: CK_ULONG,
    /// `ulMaxPinLen`.
    pub max_pin_len: CK_ULONG,
    /// `ulMinPinLen`.
    pub min_pin_len: CK_ULONG,
    /// `ulTotalPublicMemory`.
    pub total_public_memory: CK_ULONG,
    /// `ulFreePublicMemory`.
    pub free_public_memory: CK_ULONG,
    /// `ulTotalPrivateMemory`.
    pub total_private_memory: CK_ULONG,
    /// `ulFreePrivateMemory`.
    pub free_private_memory: CK_ULONG,
    /// Hardware version.
    pub hardware_version: (u8, u8),
    /// Firmware version.
    pub firmware_version: (u8, u8),
    /// `utcTime`: 16 characters `YYYYMMDDhhmmss00`.
    pub utc_time: String,
}

/// `CK_MECHANISM_INFO`, as Rust data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MechanismInfo {
    /// `ulMinKeySize` (bits or bytes as the spec says for the mechanism).
    pub min_key_size: CK_ULONG,
    /// `ulMaxKeySize`.
    pub max_key_size: CK_ULONG,
    /// `CKF_*` mechanism flags.
    pub flags: CK_FLAGS,
}

/// `CK_SESSION_INFO`, as Rust data.
#[derive(Clone, Copy, Debug)]
pub struct SessionInfo {
    /// The slot.
    pub slot: SlotId,
    /// `CKS_*`.
    pub state: CK_STATE,
    /// `CKF_RW_SESSION | CKF_SERIAL_SESSION`.
    pub flags: CK_FLAGS,
    /// `ulDeviceError`.
    pub device_error: CK_ULONG,
}

/// One answer of `C_GetAttributeValue`: the member contract's.
pub use hsmpool_member::AttrAnswer;

/// The kind of a cryptographic operation; a session has at most one active of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `C_Encrypt*`.
    Encrypt,
    /// `C_Decrypt*`.
    Decrypt,
    /// `C_Digest*`.
    Digest,
    /// `C_Sign*`.
    Sign,
    /// `C_Verify*`.
    Verify,
}

/// Mechanisms as used in the engine API.
pub type MechanismType = CK_MECHANISM_TYPE;
