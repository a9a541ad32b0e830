//! Directory trees, through the `ignore` crate's parallel walker.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ignore::{WalkBuilder, WalkState};

use crate::gz::{CappedGunzip, is_gzip_magic};
use crate::image::{TarOf, tar_members};
use crate::{Counters, Origin, Sink, SourceError, Stats, WalkOptions};

/// Read buffer per open file.
const BUF_SIZE: usize = 64 << 10;

pub(crate) fn walk(
    paths: &[PathBuf],
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    let mut roots = Vec::with_capacity(paths.len());
    let mut read_stdin = false;
    for path in paths {
        if path.as_os_str() == "-" {
            read_stdin = true;
            continue;
        }
        let meta = std::fs::symlink_metadata(path).map_err(|source| SourceError::Path {
            path: path.display().to_string(),
            source,
        })?;
        // A symbolic link given directly is followed: to a directory, by walking `link/`
        // (the walker does not follow links, not even roots), to a file, when it is opened.
        if meta.file_type().is_symlink() {
            let target = std::fs::metadata(path).map_err(|source| SourceError::Path {
                path: path.display().to_string(),
                source,
            })?;
            if target.is_dir() {
                roots.push(path.join(""));
                continue;
            }
        }
        roots.push(path.clone());
    }

    let counters = Counters::default();
    if let Some((first, rest)) = roots.split_first() {
        let mut builder = WalkBuilder::new(first);
        for root in rest {
            builder.add(root);
        }
        let honour = !opts.no_ignore;
        builder
            .standard_filters(false)
            .hidden(false)
            .parents(honour)
            .ignore(honour)
            .git_ignore(honour)
            .git_exclude(honour)
            .git_global(false)
            .require_git(false)
            .follow_links(false)
            .threads(opts.effective_threads())
            .filter_entry(|entry| {
                !(entry.file_name() == OsStr::new(".git")
                    && entry.file_type().is_some_and(|t| t.is_dir()))
            });
        let max_gunzip = opts.max_gunzip_bytes;
        let counters = &counters;
        builder.build_parallel().run(|| {
            Box::new(move |result| {
                match result {
                    Ok(entry) => visit(&entry, max_gunzip, counters, sink),
                    Err(err) => walk_error(&err, counters, sink),
                }
                WalkState::Continue
            })
        });
    }
    if read_stdin {
        let stdin = crate::stdin(opts, sink)?;
        let mut stats = counters.stats();
        stats.items += stdin.items;
        stats.errors += stdin.errors;
        stats.bytes += stdin.bytes;
        return Ok(stats);
    }
    Ok(counters.stats())
}

fn visit(entry: &ignore::DirEntry, max_gunzip: u64, counters: &Counters, sink: &dyn Sink) {
    let Some(file_type) = entry.file_type() else {
        return;
    };
    let is_file = if file_type.is_symlink() {
        // Only a root that is a symbolic link to a file is followed.
        entry.depth() == 0 && entry.path().is_file()
    } else {
        // Not FIFOs, sockets or devices: reading them may block or never end.
        file_type.is_file()
    };
    if is_file {
        scan_file(entry.path(), max_gunzip, counters, sink);
    }
}

/// Hands one file to the sink, streamed, gunzipped when it is gzip.
pub(crate) fn scan_file(path: &Path, max_gunzip: u64, counters: &Counters, sink: &dyn Sink) {
    let shown = path.to_string_lossy();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(source) => return counters.read_error(sink, &shown, source),
    };
    let mut reader = BufReader::with_capacity(BUF_SIZE, file);
    let gzip = match reader.fill_buf() {
        Ok(head) => is_gzip_magic(head),
        Err(source) => return counters.read_error(sink, &shown, source),
    };
    let origin = Origin {
        path: shown.to_string(),
        ..Origin::default()
    };
    let lower = shown.to_ascii_lowercase();
    let archive = lower.ends_with(".tar") || lower.ends_with(".tar.gz") || lower.ends_with(".tgz");
    // Tarballs in a tree (release artifacts, backups): member by member, `archive!path`.
    let of = TarOf::Archive(&shown);
    match (gzip, archive) {
        (true, true) => {
            let gunzip = CappedGunzip::new(reader, max_gunzip);
            tar_members(gunzip, of, max_gunzip, counters, sink);
        }
        (false, true) => tar_members(reader, of, max_gunzip, counters, sink),
        (true, false) => {
            let mut gunzip = CappedGunzip::new(reader, max_gunzip);
            counters.hand(sink, &origin, &shown, &mut gunzip);
        }
        (false, false) => counters.hand(sink, &origin, &shown, &mut reader),
    }
}

fn walk_error(err: &ignore::Error, counters: &Counters, sink: &dyn Sink) {
    let what = error_path(err).map_or_else(|| "tree".to_owned(), |p| p.display().to_string());
    let err = SourceError::Walk {
        what: what.clone(),
        message: err.to_string(),
    };
    counters.error(sink, &what, &err);
}

fn error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithLineNumber { err, .. } | ignore::Error::WithDepth { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        ignore::Error::Loop { child, .. } => Some(child),
        _ => None,
    }
}
