//! Frames: the header, the caps, and the [`FrameReader`] that cuts a byte stream into frames.

use std::fmt;

use zeroize::Zeroize;

use crate::error::{Result, WireError};

/// The first three bytes of every frame.
pub const MAGIC: [u8; 3] = *b"HPW";
/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Magic, version and payload length.
pub const HEADER_LEN: usize = 8;
/// The largest payload accepted or produced.
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The largest [`Request::Random`] length accepted, so that the answer fits in a frame.
pub const MAX_RANDOM: u32 = MAX_PAYLOAD - 64;
/// A drained [`FrameReader`] buffer with more capacity than this is freed.
const SHRINK_ABOVE: usize = 1 << 20;
/// Request id and kind: the shortest valid payload.
const MIN_PAYLOAD: usize = 9;

/// Splits a byte stream into frames. Feed it whatever the socket gave ([`FrameReader::push`]),
/// then call [`FrameReader::next_frame`] until it answers `None`. A header is judged as soon as
/// its bytes are in (a bad magic at the first wrong byte), so an oversized frame is refused
/// before its payload is read. After an error the reader stays failed: drop the connection.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out.
    pos: usize,
    failed: Option<WireError>,
}

impl fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &self.buffered())
            .field("failed", &self.failed)
            .finish()
    }
}

impl Drop for FrameReader {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Append bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.pos > 0 {
            // Drop what was handed out, wiping it (it may hold PINs).
            let live = self.buf.len() - self.pos;
            self.buf.copy_within(self.pos.., 0);
            self.buf[live..].zeroize();
            self.buf.truncate(live);
            self.pos = 0;
            if live == 0 && self.buf.capacity() > SHRINK_ABOVE {
                // Do not keep a 16 MiB buffer for the small frames after a big one.
                self.buf.zeroize();
                self.buf = Vec::new();
            }
        }
        let need = self.buf.len().saturating_add(data.len());
        if self.buf.capacity() < need {
            let mut grown = Vec::with_capacity(need.max(self.buf.capacity().saturating_mul(2)));
            grown.extend_from_slice(&self.buf);
            self.buf.zeroize();
            self.buf = grown;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, as (request id, payload from the kind byte on) for
    /// [`decode_request`] / [`decode_response`]; `None` until one is complete.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match parse_frame(&self.buf[self.pos..]) {
            Ok(Some((id, payload, used))) => {
                let payload = payload.to_vec();
                self.pos += used;
                Ok(Some((id, payload)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// At end of stream: `Err(Truncated)` if a partial frame was left over (or the earlier
    /// error, if the reader failed).
    pub fn finish(&self) -> Result<()> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buffered() > 0 => Err(WireError::Truncated),
            None => Ok(()),
        }
    }
}

/// The frame at the start of `b`: (id, kind and body, bytes used), `None` if incomplete.
fn parse_frame(b: &[u8]) -> Result<Option<(u64, &[u8], usize)>> {
    let m = b.len().min(MAGIC.len());
    if b[..m] != MAGIC[..m] {
        return Err(WireError::BadMagic);
    }
    match b.get(3) {
        None => return Ok(None),
        Some(&VERSION) => {}
        Some(&v) => return Err(WireError::BadVersion(v)),
    }
    let Some(len) = b.get(4..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    if len > MAX_PAYLOAD {
        return Err(WireError::TooLarge { len: len.into() });
    }
    let len = len as usize;
    if len < MIN_PAYLOAD {
        return Err(WireError::Malformed("payload shorter than id and kind"));
    }
    let Some(payload) = b.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let (id, rest) = payload.split_at(8);
    let id = u64::from_be_bytes(id.try_into().map_err(|_| WireError::Truncated)?);
    Ok(Some((id, rest, HEADER_LEN + len)))
}
