//! Token Status List bits (draft-ietf-oauth-status-list): the byte array of one-bit statuses a
//! status list token carries in `status_list.lst`, ZLIB-compressed and base64url-encoded.
//!
//! Index `i` is bit `i % 8` (least significant first) of byte `i / 8`. A set bit is INVALID
//! (revoked); a clear bit is VALID. Only `bits: 1` is used here: mayfly has two statuses.
//!
//! Also the status list token (`typ: statuslist+jwt`) and a token's `status` claim
//! ([`verify_list_token`], pure), and with feature `fetch` the verifier's cache of lists
//! ([`StatusLists`]).

use std::io::{Read, Write};

mod token;
pub use token::*;
#[cfg(feature = "fetch")]
mod source;
#[cfg(feature = "fetch")]
pub use source::*;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The largest decompressed list accepted: 16 MiB is 134 million one-bit entries. A list is
/// attacker-supplied input until its signature is checked, and a small ZLIB stream can expand
/// enormously.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// A status list that cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusError {
    /// `lst` is not base64url.
    #[error("the status list's lst is not base64url")]
    Base64,
    /// `lst` is not a ZLIB stream.
    #[error("the status list's lst is not a ZLIB stream")]
    Zlib,
    /// The list decompresses to more than [`MAX_LIST_BYTES`].
    #[error("the status list is larger than {MAX_LIST_BYTES} bytes")]
    TooLarge,
    /// `bits` is not 1 (the only size mayfly issues and reads).
    #[error("the status list has {0} bits per status; only 1 is supported")]
    Bits(u64),
}

/// A list of one-bit statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusBits {
    bytes: Vec<u8>,
}

impl StatusBits {
    /// A list of `size` statuses, all VALID. `size` is rounded up to whole bytes.
    pub fn new(size: usize) -> Self {
        Self {
            bytes: vec![0; size.div_ceil(8)],
        }
    }

    /// How many statuses it holds.
    pub fn len(&self) -> usize {
        self.bytes.len() * 8
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Mark `idx` INVALID (revoked). An index past the end is ignored: it is in no token.
    pub fn set(&mut self, idx: usize) {
        if let Some(b) = self.bytes.get_mut(idx / 8) {
            *b |= 1 << (idx % 8);
        }
    }

    /// Whether `idx` is INVALID (revoked). An index past the end is `None`: the list does not
    /// cover it, which a verifier must treat as a failure, never as VALID.
    pub fn get(&self, idx: usize) -> Option<bool> {
        self.bytes.get(idx / 8).map(|b| (b >> (idx % 8)) & 1 == 1)
    }

    /// The `lst` member: ZLIB (best compression) then base64url without padding.
    pub fn encode_lst(&self) -> String {
        let mut z = flate2::write::ZlibEncoder::new(
            Vec::with_capacity(self.bytes.len() / 16 + 64),
            flate2::Compression::best(),
        );
        // Writing into a Vec cannot fail.
        let compressed = z
            .write_all(&self.bytes)
            .and_then(|()| z.finish())
            .unwrap_or_default();
        URL_SAFE_NO_PAD.encode(compressed)
    }

    /// Read a `lst` member of a list with `bits` bits per status.
    pub fn decode_lst(lst: &str, bits: u64) -> Result<Self, StatusError> {
        if bits != 1 {
            return Err(StatusError::Bits(bits));
        }
        let compressed = URL_SAFE_NO_PAD
            .decode(lst.trim_end_matches('='))
            .map_err(|_| StatusError::Base64)?;
        let mut bytes = Vec::new();
        let read = flate2::read::ZlibDecoder::new(compressed.as_slice())
            .take(MAX_LIST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| StatusError::Zlib)?;
        if read > MAX_LIST_BYTES {
            return Err(StatusError::TooLarge);
        }
        Ok(Self { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_through_lst() {
        let mut l = StatusBits::new(1 << 16);
        for i in [0usize, 1, 7, 8, 1000, 65_535] {
            l.set(i);
        }
        let back = StatusBits::decode_lst(&l.encode_lst(), 1).expect("decodes");
        assert_eq!(back, l);
        assert_eq!(back.get(7), Some(true));
        assert_eq!(back.get(6), Some(false));
        assert_eq!(back.get(1 << 16), None);
    }

    /// The draft's example (section 4.1): statuses 0,1,0,0,1... laid out least significant bit
    /// first: indexes 0, 3, 4, 5, 7, 8, 9, 13, 15 set give bytes 0xB9 0xA3.
    #[test]
    fn bit_order_is_least_significant_first() {
        let mut l = StatusBits::new(16);
        for i in [0usize, 3, 4, 5, 7, 8, 9, 13, 15] {
            l.set(i);
        }
        assert_eq!(l.bytes, vec![0xB9, 0xA3]);
        // The draft's own `lst` for that list.
        let drafts = StatusBits::decode_lst("eNrbuRgAAhcBXQ", 1).expect("decodes");
        assert_eq!(drafts, l);
    }

    #[test]
    fn unreadable_lists_are_refused() {
        assert_eq!(StatusBits::decode_lst("!!", 1), Err(StatusError::Base64));
        assert_eq!(StatusBits::decode_lst("AAAA", 1), Err(StatusError::Zlib));
        assert_eq!(
            StatusBits::decode_lst("eNrbuRgAAhcBXQ", 2),
            Err(StatusError::Bits(2))
        );
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        let big = StatusBits::new((MAX_LIST_BYTES + 1) * 8);
        assert_eq!(
            StatusBits::decode_lst(&big.encode_lst(), 1),
            Err(StatusError::TooLarge)
        );
    }
}
