//! What `mayfly scan` reads: directory trees, git history, container image tarballs and stdin.
//!
//! Every source hands its items (files, blobs, layer members, stdin) to a [`Sink`], one
//! [`std::io::Read`] at a time, streamed: nothing here reads a whole file or layer into memory
//! (git blobs are the one exception: the object database inflates a blob whole, as `git` does).
//! What could not be read goes to [`Sink::error`] and the scan goes on; only a source that cannot
//! be opened at all (a missing path, something that is not a repository or not an image) makes
//! the source function return `Err`.
//!
//! Files, blobs and layer members that are gzip (told by their magic bytes, so `x.log.gz` and a
//! gzip file without the suffix alike; a `.gz` name without the magic is not gzip and is handed
//! over as it is) are handed over gunzipped ([`CappedGunzip`]), at most
//! [`WalkOptions::max_gunzip_bytes`] bytes of them; [`Origin::path`] keeps the `.gz` name.
//!
//! - [`walk`]: directory trees through the `ignore` crate, honouring `.gitignore`, `.ignore` and
//!   `.git/info/exclude` (also outside a git repository), not the user's global git excludes
//!   (so that a scan gives the same answer on every machine); hidden files are scanned, `.git`
//!   directories never; symbolic links are not followed below the paths given.
//! - [`git`]: every blob reachable from any ref, once, attributed to the oldest commit holding it.
//! - [`image`]: `docker save` and OCI layout tarballs, layer by layer, with deleted files.
//! - [`stdin`]: one item, path `-`.

mod gz;
mod image;
mod repo;
mod walk;
mod zst;

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

pub use gz::{CappedGunzip, is_gzip_magic};
pub use image::{IMAGE_CONFIG_PATH, image_from_reader};
pub use zst::ZstdFrames;

/// Decompressed bytes a `.gz` item may yield unless [`WalkOptions::max_gunzip_bytes`] says
/// otherwise: 4 GiB.
pub const DEFAULT_MAX_GUNZIP_BYTES: u64 = 4 << 30;

/// An image layer may decompress to this many times its compressed size (or to
/// [`WalkOptions::max_gunzip_bytes`], if that is more). Real layers compress a few times; gzip
/// cannot pass 1032 times, zstd can pass anything.
pub const LAYER_RATIO: u64 = 1024;

/// Where a scanned item came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// Path: as walked (exactly what the `ignore` walker yields: relative to the argument given,
    /// e.g. `src/a.py` when `src` was passed), the path inside the git tree, the path inside the
    /// image layer (no leading `/` or `./`), [`IMAGE_CONFIG_PATH`] for an image's config JSON, or
    /// `-` for stdin. Paths that are not UTF-8 are converted lossily.
    pub path: String,
    /// Git: full hex id of the commit that first introduced this blob (the oldest commit holding
    /// it). `None` for a blob or tree that a tag points at directly.
    pub commit: Option<String>,
    /// Image: the layer's digest, `sha256:<hex>` (for the image config JSON: the config's digest).
    pub layer: Option<String>,
}

/// Receives every item. Must be Sync: the tree walker and the git blob readers call it from
/// several threads.
pub trait Sink: Sync {
    /// One file, blob, layer member or stdin. `reader` yields its bytes (gunzipped when it is a
    /// gzip file). An `Err` returned here is reported back through [`Sink::error`] for this item
    /// (it is usually the reader's: an unreadable file, a corrupt gzip, the gunzip cap) and the
    /// scan goes on.
    fn item(&self, origin: &Origin, reader: &mut dyn Read) -> io::Result<()>;
    /// Something that could not be read; the scan goes on. `what` names it (path, object id,
    /// layer digest).
    fn error(&self, what: &str, err: &SourceError);
}

/// What went wrong reading a source. Every message says what was wrong and, where there is one,
/// how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A path given to scan does not exist or cannot be looked at.
    #[error("cannot scan {path}: {source} (check the path and its permissions)")]
    Path {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A file, blob or layer member could not be read.
    #[error("cannot read {what}: {source}")]
    Read {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory walker reported a problem (an unreadable directory, a bad ignore file).
    #[error("walking {what}: {message}")]
    Walk {
        /// The path concerned, or `tree` when the walker did not say.
        what: String,
        /// The walker's message.
        message: String,
    },
    /// A gzip stream decompresses to more than the cap (a gzip bomb, or a file larger than the
    /// cap). Carried inside the `io::Error` the reader returns.
    #[error(
        "gzip data decompresses to more than {limit} bytes (max_gunzip_bytes); a gzip bomb? \
         scan it decompressed or raise the limit"
    )]
    GunzipLimit {
        /// The cap, in decompressed bytes.
        limit: u64,
    },
    /// An image layer decompresses to more than its cap (a decompression bomb: zstd has no
    /// bound on its ratio). Carried inside the `io::Error` the layer's reader returns.
    #[error(
        "layer decompresses to more than {limit} bytes (the larger of max_gunzip_bytes and \
         {LAYER_RATIO} times its compressed size); a decompression bomb? raise max_gunzip_bytes \
         to scan it"
    )]
    LayerLimit {
        /// The cap, in decompressed bytes.
        limit: u64,
    },
    /// The git repository could not be opened.
    #[error(
        "cannot open git repository {path}: {message} (pass the repository's top directory, \
         its .git directory, or a bare repository)"
    )]
    GitOpen {
        /// The path given.
        path: String,
        /// gix's message.
        message: String,
    },
    /// A git object or ref could not be read (a corrupt or incomplete repository).
    #[error("git {what}: {message} (is the repository complete? `git fsck` tells)")]
    Git {
        /// The object or ref.
        what: String,
        /// gix's message.
        message: String,
    },
    /// The image tarball cannot be opened or is not a tar file.
    #[error("cannot read image tarball {path}: {source}")]
    ImageIo {
        /// The tarball.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The tarball is compressed as a whole: its members are read by seeking, which needs the
    /// plain tar.
    #[error(
        "image tarball {path} is {compression}-compressed; decompress it first (e.g. `{tool} -dk {path}`): \
         layers are read by seeking in the plain tar"
    )]
    ImageCompressed {
        /// The tarball.
        path: String,
        /// `gzip` or `zstd`.
        compression: &'static str,
        /// The tool that decompresses it.
        tool: &'static str,
    },
    /// The tarball has neither `index.json` (OCI layout) nor `manifest.json` (`docker save`).
    #[error(
        "{path} is not a container image tarball: it has neither index.json (OCI image layout) \
         nor manifest.json (docker save); make one with `docker save IMAGE -o FILE.tar` or \
         `skopeo copy ... oci-archive:FILE.tar`"
    )]
    NotAnImage {
        /// The tarball.
        path: String,
    },
    /// A manifest, index or config in the image is malformed or refers to something missing.
    #[error("image {what}: {message}")]
    Image {
        /// The member or descriptor concerned.
        what: String,
        /// What is wrong with it.
        message: String,
    },
}

/// How to read the sources.
#[derive(Debug, Clone)]
pub struct WalkOptions {
    /// Scan everything: ignore `.gitignore`, `.ignore` and `.git/info/exclude` (`.git`
    /// directories are still skipped).
    pub no_ignore: bool,
    /// Threads for walking trees and reading git blobs; 0 = available parallelism.
    pub threads: usize,
    /// At most this many decompressed bytes from one `.gz` item; past it the reader returns an
    /// error ([`SourceError::GunzipLimit`]). An image layer may decompress to this many bytes or
    /// [`LAYER_RATIO`] times its compressed size, whichever is larger
    /// ([`SourceError::LayerLimit`]).
    pub max_gunzip_bytes: u64,
}

impl Default for WalkOptions {
    fn default() -> Self {
        Self {
            no_ignore: false,
            threads: 0,
            max_gunzip_bytes: DEFAULT_MAX_GUNZIP_BYTES,
        }
    }
}

impl WalkOptions {
    /// The number of threads to use: [`WalkOptions::threads`], or the available parallelism.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What a scan read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Items handed to [`Sink::item`].
    pub items: u64,
    /// Problems handed to [`Sink::error`].
    pub errors: u64,
    /// Bytes the sink read from the items' readers (decompressed).
    pub bytes: u64,
    /// Git: commits walked.
    pub commits: u64,
    /// Image: layers read.
    pub layers: u64,
    /// Image: whiteout entries skipped (files and directories a layer deletes).
    pub whiteouts: u64,
}

/// Walks directory trees (and files given directly) and hands every regular file to `sink`.
///
/// Honours `.gitignore`, `.ignore` and `.git/info/exclude` (also outside a git repository, and in
/// the parents of each path) unless [`WalkOptions::no_ignore`]; never the user's global git
/// excludes. Hidden files are scanned; `.git` directories are skipped. Symbolic links are not
/// followed, except a path given directly. A file given directly is scanned even if ignored. A
/// path `-` reads stdin (once, after the trees). Fails only when a path does not exist.
pub fn walk(
    paths: &[std::path::PathBuf],
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    walk::walk(paths, opts, sink)
}

/// Scans a git repository's history: every blob of every commit reachable from any ref
/// (branches, tags, remote-tracking branches, `refs/stash`, notes, and a detached `HEAD`), each
/// blob once, attributed to the oldest commit that holds it (commits ordered by committer time,
/// parents always before their children). Blobs and trees that a tag points at directly are
/// scanned too, without a commit (a blob's path is then the ref's name, e.g. `refs/tags/key`).
/// Submodule entries and symbolic links are skipped. Blobs are read by `threads` workers: items
/// arrive in no particular order. Only the stash's latest entry is scanned (older ones live in
/// its reflog); a shallow clone is scanned down to its boundary. Works on bare and non-bare
/// repositories; `repo` is the top directory, the `.git` directory, or a bare repository.
pub fn git(
    repo: &std::path::Path,
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    repo::git(repo, opts, sink)
}

/// Scans a container image tarball: `docker save` (legacy layout with `manifest.json`, or the
/// OCI layout that Docker 25+ writes) or an OCI image layout tarball (`index.json`).
///
/// With `index.json`, every manifest it reaches (through nested indexes: all platforms, not only
/// the first) is read, skipping buildx attestation manifests and manifests not in the tarball
/// (`docker save` keeps a multi-platform index but only the platforms pulled); each distinct
/// layer and config is scanned once. Otherwise `manifest.json`'s images are read. Layers may be plain,
/// gzip- or zstd-compressed tar (detected by magic bytes, whatever their media type says). Every
/// regular file of every layer is handed to `sink` with the layer's digest, including files that
/// a later layer deletes; whiteout entries (`.wh.*`) are not content and are skipped. The image
/// config JSON (environment, `history[].created_by`) is handed over with path
/// [`IMAGE_CONFIG_PATH`] and the config's digest as `layer`.
///
/// The layer's digest is the descriptor's (OCI), or for the legacy layout the config's
/// `rootfs.diff_ids[i]`, else `sha256:<id>` from the layer's `<id>/layer.tar` path.
pub fn image(
    tarball: &std::path::Path,
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    image::image(tarball, opts, sink)
}

/// Reads stdin as one item with path `-`, streamed. Stdin is not gunzipped.
pub fn stdin(opts: &WalkOptions, sink: &dyn Sink) -> Result<Stats, SourceError> {
    let _ = opts;
    let counters = Counters::default();
    let stdin = io::stdin();
    let mut lock = stdin.lock();
    let origin = Origin {
        path: "-".to_owned(),
        ..Origin::default()
    };
    counters.hand(sink, &origin, "stdin", &mut lock);
    Ok(counters.stats())
}

/// Thread-safe counters behind [`Stats`], and the one place items and errors go to the sink.
#[derive(Default)]
pub(crate) struct Counters {
    items: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    pub(crate) commits: AtomicU64,
    pub(crate) layers: AtomicU64,
    pub(crate) whiteouts: AtomicU64,
}

impl Counters {
    /// Hands one item to the sink, counting it and the bytes read; an error from the sink goes
    /// back to it as [`SourceError::Read`] for `what`.
    pub(crate) fn hand(&self, sink: &dyn Sink, origin: &Origin, what: &str, reader: &mut dyn Read) {
        let mut counting = Counting {
            inner: reader,
            n: 0,
        };
        self.items.fetch_add(1, Ordering::Relaxed);
        let result = sink.item(origin, &mut counting);
        self.bytes.fetch_add(counting.n, Ordering::Relaxed);
        if let Err(source) = result {
            self.read_error(sink, what, source);
        }
    }

    /// Reports that `what` could not be read.
    pub(crate) fn read_error(&self, sink: &dyn Sink, what: &str, source: io::Error) {
        let err = SourceError::Read {
            what: what.to_owned(),
            source,
        };
        self.error(sink, what, &err);
    }

    /// Reports a problem to the sink and counts it.
    pub(crate) fn error(&self, sink: &dyn Sink, what: &str, err: &SourceError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        sink.error(what, err);
    }

    /// Adds one to a counter.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub(crate) fn bump_by(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The totals so far.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            items: self.items.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            layers: self.layers.load(Ordering::Relaxed),
            whiteouts: self.whiteouts.load(Ordering::Relaxed),
        }
    }
}

/// Counts the bytes read through it.
struct Counting<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<SourceError>();
    }

    #[test]
    fn default_options() {
        let o = WalkOptions::default();
        assert!(!o.no_ignore);
        assert_eq!(o.threads, 0);
        assert_eq!(o.max_gunzip_bytes, DEFAULT_MAX_GUNZIP_BYTES);
        assert!(o.effective_threads() >= 1);
    }
}
