//! What can go wrong reading or writing the protocol: the lowest room of the crate (frames
//! and the codec both report with it).

/// Everything that can go wrong reading or writing the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame does not start with `HPW`.
    #[error("bad frame magic")]
    BadMagic,
    /// A protocol version other than [`VERSION`].
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// A payload larger than [`MAX_PAYLOAD`](crate::MAX_PAYLOAD) (announced by a peer, or about to be encoded; when
    /// encoding, `len` is the size reached when the cap was hit).
    #[error("payload of {len} bytes exceeds the frame cap (16 MiB)")]
    TooLarge {
        /// The length.
        len: u64,
    },
    /// The bytes end before the frame or message does.
    #[error("truncated frame or message")]
    Truncated,
    /// A kind byte this side does not know.
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    /// Bytes that do not form a valid message.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, WireError>;
