//! Reading a policy directory: the crate's only I/O, bounded in file size and count.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::PolicyError;

/// The schema's file name in a policy directory.
pub(crate) const SCHEMA_FILE: &str = "schema.cedarschema";
/// Largest file read from a policy directory.
const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Most `.cedar` files read from a policy directory.
const MAX_FILES: usize = 1000;

/// `schema.cedarschema` and the `*.cedar` files of `dir`, sorted by name.
pub(crate) fn read_dir(dir: &Path) -> Result<(String, Vec<(String, String)>), PolicyError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PolicyError::Io { path, source }
    };
    let schema_path = dir.join(SCHEMA_FILE);
    if !schema_path.is_file() {
        if !dir.is_dir() {
            return Err(PolicyError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        return Err(PolicyError::MissingSchema {
            dir: dir.to_path_buf(),
        });
    }
    let schema = read_bounded(&schema_path)?;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Editors' and ConfigMaps' hidden files (`.#a.cedar`, `..data`) are not policies.
        if name.starts_with('.') || !name.ends_with(".cedar") || !path.is_file() {
            continue;
        }
        if names.len() == MAX_FILES {
            return Err(PolicyError::TooManyFiles {
                dir: dir.to_path_buf(),
                limit: MAX_FILES,
            });
        }
        names.push((name.to_string(), path));
    }
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for (name, path) in names {
        files.push((name, read_bounded(&path)?));
    }
    Ok((schema, files))
}

fn read_bounded(path: &Path) -> Result<String, PolicyError> {
    let io = |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = String::new();
    let n = f
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut buf)
        .map_err(io)? as u64;
    if n > MAX_FILE_BYTES {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(n);
        return Err(PolicyError::FileTooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(buf)
}
