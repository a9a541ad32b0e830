//! The export file: its header and trailer, and lines written and read with a length bound
//! and a running SHA-256.

use std::io::{BufRead, BufWriter, Read, Write};

use mayfly_crypto::Sha256;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EXPORT_FORMAT, MAX_LINE, TableCounts, TransferError, line_err};
use crate::StoreError;

#[derive(Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) mayfly_export: u64,
    pub(super) schema_version: i64,
    pub(super) exported_at: i64,
    pub(super) source: String,
    pub(super) counts: TableCounts,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Trailer {
    pub(super) mayfly_export_end: u64,
    pub(super) counts: TableCounts,
    pub(super) sha256: String,
}

/// Lines out: each is hashed and checked against [`MAX_LINE`].
pub(super) struct Out<W: Write> {
    pub(super) w: BufWriter<W>,
    pub(super) hash: Sha256,
    pub(super) buf: Vec<u8>,
}

impl<W: Write> Out<W> {
    pub(super) fn line(&mut self, v: &impl Serialize, hashed: bool) -> Result<(), TransferError> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, v)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode an export line: {e}")))?;
        if self.buf.len() > MAX_LINE {
            return Err(StoreError::Corrupt(format!(
                "a row is longer than the export's line limit ({MAX_LINE} bytes)"
            ))
            .into());
        }
        self.buf.push(b'\n');
        if hashed {
            self.hash.update(&self.buf);
        }
        self.w.write_all(&self.buf)?;
        Ok(())
    }
}

/// Lines in, each at most [`MAX_LINE`] bytes, so a hostile file cannot make import buffer it.
pub(super) struct Lines<R: BufRead> {
    pub(super) r: R,
    pub(super) buf: Vec<u8>,
    pub(super) n: u64,
}

impl<R: BufRead> Lines<R> {
    /// The next line with its newline, or `None` at the end of the file.
    pub(super) fn next(&mut self) -> Result<Option<&[u8]>, TransferError> {
        self.buf.clear();
        let limit = MAX_LINE as u64 + 1;
        if (&mut self.r).take(limit).read_until(b'\n', &mut self.buf)? == 0 {
            return Ok(None);
        }
        self.n += 1;
        if self.buf.last() != Some(&b'\n') {
            return Err(if self.buf.len() > MAX_LINE {
                line_err(self.n, format!("longer than {MAX_LINE} bytes"))
            } else {
                // A last line without its newline: the file was cut in the middle of it.
                TransferError::Truncated(self.n)
            });
        }
        Ok(Some(&self.buf))
    }
}

pub(super) fn parse_header(line: &[u8]) -> Result<Header, TransferError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|_| TransferError::NotAnExport("the first line is not JSON".into()))?;
    let Some(format) = v.get("mayfly_export").and_then(Value::as_u64) else {
        return Err(TransferError::NotAnExport(
            "the first line is not an export header".into(),
        ));
    };
    if format != EXPORT_FORMAT {
        return Err(TransferError::Format(format));
    }
    serde_json::from_value(v).map_err(|e| line_err(1, format!("malformed header: {e}")))
}
