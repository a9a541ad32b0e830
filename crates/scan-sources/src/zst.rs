//! zstd decompression of a whole stream: every frame in turn, skippable frames skipped (as the
//! `zstd` tool does; `zstd:chunked` layers are many frames).

use std::io::{self, BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// True when `head` starts a zstd frame or a skippable frame.
pub(crate) fn is_zstd_magic(head: &[u8]) -> bool {
    match head {
        [0x28, 0xb5, 0x2f, 0xfd, ..] => true,
        [b0, 0x2a, 0x4d, 0x18, ..] => b0 & 0xf0 == 0x50,
        _ => false,
    }
}

/// Decompresses every frame of a zstd stream in turn, skipping skippable frames (what image
/// layers need; public for fuzzing). Windows above 128 MiB are refused, as by `zstd -d`.
pub struct ZstdFrames<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> ZstdFrames<R> {
    /// Decompresses `source`.
    pub fn new(source: R) -> Self {
        Self {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

fn invalid(err: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if !self.in_frame {
                if self.source.fill_buf()?.is_empty() {
                    return Ok(0);
                }
                match self.decoder.reset(&mut self.source) {
                    Ok(()) => self.in_frame = true,
                    Err(FrameDecoderError::ReadFrameHeaderError(
                        ReadFrameHeaderError::SkipFrame { length, .. },
                    )) => {
                        let want = u64::from(length);
                        let skipped =
                            io::copy(&mut (&mut self.source).take(want), &mut io::sink())?;
                        if skipped < want {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "zstd skippable frame cut short",
                            ));
                        }
                        continue;
                    }
                    Err(err) => return Err(invalid(err)),
                }
            }
            if self.decoder.is_finished() && self.decoder.can_collect() == 0 {
                self.in_frame = false;
                continue;
            }
            while self.decoder.can_collect() == 0 && !self.decoder.is_finished() {
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(invalid)?;
            }
            let n = self.decoder.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{CompressionLevel, compress_to_vec};

    fn read_all(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ZstdFrames::new(data).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn frames_in_turn_with_skippable_between() {
        let mut data = compress_to_vec(&b"first frame, "[..], CompressionLevel::Fastest);
        assert!(is_zstd_magic(&data));
        // A skippable frame: magic 0x184D2A5E, length 3, payload.
        data.extend_from_slice(&[0x5e, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 1, 2, 3]);
        data.extend(compress_to_vec(
            &b"second frame"[..],
            CompressionLevel::Fastest,
        ));
        assert_eq!(read_all(&data).unwrap(), b"first frame, second frame");
    }

    #[test]
    fn starts_with_skippable() {
        let mut data = vec![0x50, 0x2a, 0x4d, 0x18, 0, 0, 0, 0];
        assert!(is_zstd_magic(&data));
        data.extend(compress_to_vec(
            &vec![7u8; 100_000][..],
            CompressionLevel::Fastest,
        ));
        assert_eq!(read_all(&data).unwrap(), vec![7u8; 100_000]);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(read_all(b"\x28\xb5\x2f\xfdgarbage-garbage").is_err());
        let data = compress_to_vec(&vec![b'x'; 50_000][..], CompressionLevel::Fastest);
        assert!(read_all(&data[..data.len() / 2]).is_err());
        assert!(read_all(&[0x5e, 0x2a, 0x4d, 0x18, 9, 0, 0, 0, 1]).is_err());
    }
}
