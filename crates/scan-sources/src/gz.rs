//! gunzip with a cap on the decompressed size, and the sniffing that decides when to use it.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;

use crate::SourceError;

/// True when `head` (the first bytes of an item) starts a gzip member: `1f 8b 08` (magic and the
/// deflate method, the only one gzip defines). This, not the name, decides whether an item is
/// gunzipped: a `.gz` file is gzip by its magic, and a file named `.gz` without it is not gzip at
/// all and is handed over as it is (its bytes may still hold a key).
pub fn is_gzip_magic(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b, 0x08])
}

/// gunzips every member of a (multi-member) gzip stream, yielding at most `limit` decompressed
/// bytes: past them `read` fails with an `io::Error` (kind `InvalidData`) carrying
/// [`SourceError::GunzipLimit`]. A corrupt stream fails with flate2's error.
pub struct CappedGunzip<R: Read> {
    inner: Limited<MultiGzDecoder<R>>,
}

impl<R: Read> CappedGunzip<R> {
    /// gunzips `inner`, at most `limit` decompressed bytes.
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner: Limited::new(MultiGzDecoder::new(inner), limit, |limit| {
                SourceError::GunzipLimit { limit }
            }),
        }
    }
}

impl<R: Read> Read for CappedGunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Yields at most `limit` bytes of `inner`; one more is an `InvalidData` error carrying the
/// [`SourceError`] that `exceeded` makes.
pub(crate) struct Limited<R> {
    inner: R,
    remaining: u64,
    limit: u64,
    exceeded: fn(u64) -> SourceError,
}

impl<R: Read> Limited<R> {
    pub(crate) fn new(inner: R, limit: u64, exceeded: fn(u64) -> SourceError) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            exceeded,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Exactly `limit` bytes is fine; one more is not.
            let mut one = [0u8; 1];
            return match self.inner.read(&mut one)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    (self.exceeded)(self.limit),
                )),
            };
        }
        let want = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Reads up to `N` bytes from the start of `reader` (fewer at end of stream), so that they can
/// be looked at and then put back in front with `Cursor::chain`.
pub(crate) fn peek<const N: usize, R: Read>(reader: &mut R) -> io::Result<([u8; N], usize)> {
    let mut head = [0u8; N];
    let mut got = 0;
    while got < N {
        match reader.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((head, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compression, write::GzEncoder};
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzips_multi_member() {
        let mut both = gz(b"hello ");
        both.extend(gz(b"world"));
        let mut out = String::new();
        CappedGunzip::new(&both[..], 100)
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
    }

    #[test]
    fn exactly_the_limit_is_fine() {
        let data = gz(&[b'a'; 1000]);
        let mut out = Vec::new();
        CappedGunzip::new(&data[..], 1000)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 1000);
    }

    #[test]
    fn past_the_limit_is_an_error_that_says_so() {
        let data = gz(&vec![0u8; 1 << 20]);
        assert!(data.len() < 64 << 10, "a small bomb: {}", data.len());
        let mut out = Vec::new();
        let err = CappedGunzip::new(&data[..], 4096)
            .read_to_end(&mut out)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("more than 4096 bytes"), "{err}");
        assert!(out.len() <= 4096);
        let inner = err.into_inner().unwrap();
        assert!(matches!(
            inner.downcast_ref::<SourceError>(),
            Some(SourceError::GunzipLimit { limit: 4096 })
        ));
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut data = gz(b"some text that is long enough to be deflated somewhat");
        let len = data.len();
        data.truncate(len - 12);
        let mut out = Vec::new();
        assert!(
            CappedGunzip::new(&data[..], 1 << 20)
                .read_to_end(&mut out)
                .is_err()
        );
    }

    #[test]
    fn magic() {
        assert!(is_gzip_magic(&gz(b"x")));
        assert!(!is_gzip_magic(b"\x1f\x8b"));
        assert!(!is_gzip_magic(b"plain"));
    }

    #[test]
    fn peek_short_and_long() {
        let mut r: &[u8] = b"ab";
        let (h, n) = peek::<4, _>(&mut r).unwrap();
        assert_eq!((&h[..n], n), (&b"ab"[..], 2));
        let mut r: &[u8] = b"abcdef";
        let (h, n) = peek::<4, _>(&mut r).unwrap();
        assert_eq!(&h[..n], b"abcd");
        assert_eq!(r, b"ef");
    }
}
