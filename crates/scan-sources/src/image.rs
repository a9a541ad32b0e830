//! Container image tarballs: `docker save` (legacy and OCI layout) and OCI image layouts.
//!
//! The outer tar is indexed first (member name → offset and size in the tarball), since
//! `docker save` may write the layers before `manifest.json`; then the manifests are read and
//! each layer is streamed from its offset, decompressed (by magic bytes: gzip, zstd or none) and
//! its tar iterated. Nothing is written to disk and no member name is used as a file system path;
//! sizes and names in the tarball are trusted for nothing but finding members.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use tar::EntryType;

use crate::gz::{CappedGunzip, Limited, is_gzip_magic, peek};
use crate::zst::{ZstdFrames, is_zstd_magic};
use crate::{Counters, Origin, Sink, SourceError, Stats, WalkOptions};

/// [`Origin::path`] of an image's config JSON (its environment and `history[].created_by` carry
/// secrets); its [`Origin::layer`] is the config's digest.
pub const IMAGE_CONFIG_PATH: &str = "<image config>";

/// Manifests, indexes and configs are read whole: at most this large.
const MAX_JSON: u64 = 64 << 20;
/// Nested indexes deeper than this are not followed.
const MAX_DEPTH: usize = 8;
/// Symbolic and hard links in the outer tar are followed this many times at most.
const MAX_LINKS: usize = 16;
/// Read buffer for a layer.
const LAYER_BUF: usize = 256 << 10;

pub(crate) fn image(
    path: &Path,
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    let file = File::open(path).map_err(|source| SourceError::Path {
        path: path.display().to_string(),
        source,
    })?;
    if path.is_dir() {
        return Err(SourceError::ImageIo {
            path: path.display().to_string(),
            source: io::Error::other(
                "a directory, not a tarball: pass `docker save IMAGE -o FILE.tar` output, or tar \
                 an OCI layout directory (`tar -cf FILE.tar -C DIR .`)",
            ),
        });
    }
    image_from_reader(file, &path.display().to_string(), opts, sink)
}

/// [`crate::image`] over any seekable reader (a file, or bytes in memory for fuzzing); `name`
/// names the tarball in errors.
pub fn image_from_reader<R: Read + Seek>(
    reader: R,
    name: &str,
    opts: &WalkOptions,
    sink: &dyn Sink,
) -> Result<Stats, SourceError> {
    let counters = Counters::default();
    let mut outer = Outer::index(reader, name, &counters, sink)?;
    if outer.members.contains_key("index.json") {
        oci(&mut outer, opts, &counters, sink)?;
    } else if outer.members.contains_key("manifest.json") {
        docker(&mut outer, opts, &counters, sink)?;
    } else {
        return Err(SourceError::NotAnImage {
            path: name.to_owned(),
        });
    }
    Ok(counters.stats())
}

/// A member of the outer tar.
enum Member {
    /// File data at this offset in the tarball, this long.
    File { offset: u64, size: u64 },
    /// A symbolic or hard link to this (normalised) member name.
    Link(String),
}

/// The outer tarball, indexed.
struct Outer<R> {
    reader: R,
    name: String,
    members: HashMap<String, Member>,
}

impl<R: Read + Seek> Outer<R> {
    fn index(
        mut reader: R,
        name: &str,
        counters: &Counters,
        sink: &dyn Sink,
    ) -> Result<Self, SourceError> {
        let io_err = |source| SourceError::ImageIo {
            path: name.to_owned(),
            source,
        };
        let (head, n) = peek::<4, _>(&mut reader).map_err(io_err)?;
        let head = &head[..n];
        if is_gzip_magic(head) {
            return Err(SourceError::ImageCompressed {
                path: name.to_owned(),
                compression: "gzip",
                tool: "gzip",
            });
        }
        if is_zstd_magic(head) {
            return Err(SourceError::ImageCompressed {
                path: name.to_owned(),
                compression: "zstd",
                tool: "zstd",
            });
        }
        reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
        let mut members = HashMap::new();
        let mut archive = tar::Archive::new(reader);
        {
            let entries = archive.entries_with_seek().map_err(io_err)?;
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    // A tarball cut short: scan what is there, if anything.
                    Err(source) if !members.is_empty() => {
                        let err = SourceError::ImageIo {
                            path: name.to_owned(),
                            source,
                        };
                        counters.error(sink, name, &err);
                        break;
                    }
                    Err(source) => return Err(io_err(source)),
                };
                let member = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
                let kind = entry.header().entry_type();
                let value = match kind {
                    EntryType::Regular | EntryType::Continuous => Member::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                    EntryType::Symlink | EntryType::Link => {
                        let Some(target) = entry.link_name_bytes() else {
                            continue;
                        };
                        let target = String::from_utf8_lossy(&target).into_owned();
                        let resolved = if kind == EntryType::Symlink && !target.starts_with('/') {
                            let parent = member.rsplit_once('/').map_or("", |(dir, _)| dir);
                            normalise(&format!("{parent}/{target}"))
                        } else {
                            normalise(&target)
                        };
                        Member::Link(resolved)
                    }
                    _ => continue,
                };
                members.insert(member, value);
            }
        }
        Ok(Self {
            reader: archive.into_inner(),
            name: name.to_owned(),
            members,
        })
    }

    /// Offset and size of a member, links followed.
    fn locate(&self, member: &str) -> Result<(u64, u64), SourceError> {
        let mut name = member;
        for _ in 0..MAX_LINKS {
            match self.members.get(name) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Link(target)) => name = target,
                None => {
                    return Err(SourceError::Image {
                        what: member.to_owned(),
                        message: format!("{} has no member {name}", self.name),
                    });
                }
            }
        }
        Err(SourceError::Image {
            what: member.to_owned(),
            message: format!("links in {} go round in circles", self.name),
        })
    }

    /// A member's bytes, streamed.
    fn open(&mut self, member: &str) -> Result<io::Take<&mut R>, SourceError> {
        let (offset, size) = self.locate(member)?;
        self.reader
            .seek(SeekFrom::Start(offset))
            .map_err(|source| SourceError::Read {
                what: member.to_owned(),
                source,
            })?;
        Ok((&mut self.reader).take(size))
    }

    /// A manifest, index or config, whole.
    fn read_json(&mut self, member: &str) -> Result<Vec<u8>, SourceError> {
        let (_, size) = self.locate(member)?;
        if size > MAX_JSON {
            return Err(SourceError::Image {
                what: member.to_owned(),
                message: format!(
                    "{size} bytes is too large for a manifest or config (at most {MAX_JSON})"
                ),
            });
        }
        let mut data = Vec::new();
        self.open(member)?
            .read_to_end(&mut data)
            .map_err(|source| SourceError::Read {
                what: member.to_owned(),
                source,
            })?;
        Ok(data)
    }

    fn parse<T: for<'de> Deserialize<'de>>(
        &mut self,
        member: &str,
    ) -> Result<(Vec<u8>, T), SourceError> {
        let data = self.read_json(member)?;
        let parsed = serde_json::from_slice(&data).map_err(|e| SourceError::Image {
            what: member.to_owned(),
            message: format!("not a valid manifest, index or config: {e}"),
        })?;
        Ok((data, parsed))
    }
}

/// `a/./b/../c` → `a/c`; no leading `/` or `./`, no trailing `/`.
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// An OCI descriptor (in an index's `manifests`, a manifest's `config` and `layers`).
#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// An OCI index or image manifest (or Docker's manifest list and v2 manifest): the fields that
/// matter, whichever it is.
#[derive(Deserialize)]
struct IndexOrManifest {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// `sha256:<hex>` → `blobs/sha256/<hex>`, if the digest is well formed.
fn blob_path(digest: &str) -> Result<String, SourceError> {
    let ok = digest.split_once(':').is_some_and(|(alg, hex)| {
        !alg.is_empty()
            && !hex.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            && hex
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
    });
    match digest.split_once(':') {
        Some((alg, hex)) if ok => Ok(format!("blobs/{alg}/{hex}")),
        _ => Err(SourceError::Image {
            what: digest.chars().take(100).collect(),
            message: "not a digest (`algorithm:hex`)".to_owned(),
        }),
    }
}

/// A layer to read: the member holding it, its digest, and whether it is a tar at all.
struct Layer {
    member: String,
    digest: String,
    tar: bool,
}

/// OCI image layout: `index.json` → manifests (nested indexes followed) → config and layers.
fn oci<R: Read + Seek>(
    outer: &mut Outer<R>,
    opts: &WalkOptions,
    counters: &Counters,
    sink: &dyn Sink,
) -> Result<(), SourceError> {
    let (_, top): (_, IndexOrManifest) = outer.parse("index.json")?;
    let mut pending: Vec<(Descriptor, usize)> =
        top.manifests.into_iter().rev().map(|d| (d, 1)).collect();
    let mut visited = HashSet::new();
    let mut configs: Vec<String> = Vec::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen_layers = HashSet::new();
    let (mut manifests_read, mut missing_manifests) = (0usize, 0usize);
    while let Some((descriptor, depth)) = pending.pop() {
        if !visited.insert(descriptor.digest.clone()) {
            continue;
        }
        // buildx attaches provenance and SBOM as manifests of their own: not the image.
        if descriptor
            .annotations
            .get("vnd.docker.reference.type")
            .is_some_and(|t| t == "attestation-manifest")
        {
            continue;
        }
        let member = match blob_path(&descriptor.digest) {
            Ok(member) => member,
            Err(err) => {
                counters.error(sink, &descriptor.digest, &err);
                continue;
            }
        };
        // `docker save` (containerd image store) keeps the whole multi-platform index but only
        // the platforms that were pulled: a manifest that is not in the tarball is not an error.
        if outer.locate(&member).is_err() {
            missing_manifests += 1;
            continue;
        }
        let doc = match outer.parse::<IndexOrManifest>(&member) {
            Ok((_, doc)) => doc,
            Err(err) => {
                counters.error(sink, &descriptor.digest, &err);
                continue;
            }
        };
        manifests_read += 1;
        if depth < MAX_DEPTH {
            pending.extend(doc.manifests.into_iter().rev().map(|d| (d, depth + 1)));
        } else if !doc.manifests.is_empty() {
            let err = SourceError::Image {
                what: descriptor.digest.clone(),
                message: format!("indexes nested more than {MAX_DEPTH} deep are not followed"),
            };
            counters.error(sink, &descriptor.digest, &err);
        }
        if let Some(config) = doc.config
            && !configs.contains(&config.digest)
        {
            configs.push(config.digest);
        }
        for layer in doc.layers {
            if !seen_layers.insert(layer.digest.clone()) {
                continue;
            }
            match blob_path(&layer.digest) {
                Ok(member) => layers.push(Layer {
                    member,
                    // Compression is told by magic bytes (Docker's media types lie about it);
                    // a media type without `tar` (wasm, in-toto, artifacts) is scanned whole.
                    tar: layer.media_type.is_empty() || layer.media_type.contains("tar"),
                    digest: layer.digest,
                }),
                Err(err) => counters.error(sink, &layer.digest, &err),
            }
        }
    }
    if manifests_read == 0 && missing_manifests > 0 {
        return Err(SourceError::Image {
            what: "index.json".to_owned(),
            message: format!(
                "none of the {missing_manifests} manifests it names is in {}; \
                 save the image again (`docker save IMAGE -o FILE.tar`)",
                outer.name
            ),
        });
    }
    for digest in configs {
        match blob_path(&digest).and_then(|member| outer.read_json(&member)) {
            Ok(data) => hand_config(&data, Some(digest.clone()), &digest, counters, sink),
            Err(err) => counters.error(sink, &digest, &err),
        }
    }
    for layer in &layers {
        scan_layer(outer, layer, opts, counters, sink);
    }
    Ok(())
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config", default)]
    config: String,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The part of an image config that names the layers.
#[derive(Deserialize, Default)]
struct ImageConfig {
    #[serde(default)]
    rootfs: RootFs,
}

#[derive(Deserialize, Default)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// `docker save` without `index.json`: `manifest.json` → config and `<id>/layer.tar` layers.
fn docker<R: Read + Seek>(
    outer: &mut Outer<R>,
    opts: &WalkOptions,
    counters: &Counters,
    sink: &dyn Sink,
) -> Result<(), SourceError> {
    let (_, images): (_, Vec<DockerManifest>) = outer.parse("manifest.json")?;
    let mut seen_configs = HashSet::new();
    let mut seen_layers = HashSet::new();
    let mut layers = Vec::new();
    for image in images {
        let mut diff_ids = Vec::new();
        if !image.config.is_empty() {
            let member = normalise(&image.config);
            match outer.read_json(&member) {
                Ok(data) => {
                    if let Ok(config) = serde_json::from_slice::<ImageConfig>(&data) {
                        diff_ids = config.rootfs.diff_ids;
                    }
                    if seen_configs.insert(member.clone()) {
                        hand_config(&data, digest_from_member(&member), &member, counters, sink);
                    }
                }
                Err(err) => counters.error(sink, &member, &err),
            }
        }
        let use_diff_ids = diff_ids.len() == image.layers.len();
        for (i, member) in image.layers.iter().enumerate() {
            let member = normalise(member);
            let digest = match diff_ids.get(i) {
                Some(id) if use_diff_ids => id.clone(),
                _ => digest_from_member(&member).unwrap_or_else(|| member.clone()),
            };
            if seen_layers.insert(member.clone()) {
                layers.push(Layer {
                    member,
                    digest,
                    tar: true,
                });
            }
        }
    }
    for layer in &layers {
        scan_layer(outer, layer, opts, counters, sink);
    }
    Ok(())
}

/// The digest a member's name tells: `blobs/<alg>/<hex>`, `<hex>.json` or `<hex>/layer.tar`.
fn digest_from_member(member: &str) -> Option<String> {
    let is_hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = member.split('/').collect();
    match parts.as_slice() {
        ["blobs", alg, hex] => Some(format!("{alg}:{hex}")),
        [file] => file
            .strip_suffix(".json")
            .filter(|h| is_hex64(h))
            .map(|h| format!("sha256:{h}")),
        [id, "layer.tar"] if is_hex64(id) => Some(format!("sha256:{id}")),
        _ => None,
    }
}

fn hand_config(
    data: &[u8],
    digest: Option<String>,
    what: &str,
    counters: &Counters,
    sink: &dyn Sink,
) {
    let origin = Origin {
        path: IMAGE_CONFIG_PATH.to_owned(),
        commit: None,
        layer: digest,
    };
    counters.hand(sink, &origin, what, &mut &*data);
}

/// Streams one layer: decompressed by magic, every regular file to the sink.
fn scan_layer<R: Read + Seek>(
    outer: &mut Outer<R>,
    layer: &Layer,
    opts: &WalkOptions,
    counters: &Counters,
    sink: &dyn Sink,
) {
    let raw = match outer.open(&layer.member) {
        Ok(raw) => raw,
        Err(err) => {
            counters.error(sink, &layer.digest, &err);
            return;
        }
    };
    Counters::bump(&counters.layers);
    let compressed = raw.limit();
    let mut raw = BufReader::with_capacity(LAYER_BUF, raw);
    let head = match raw.fill_buf() {
        Ok(head) => head,
        Err(source) => return counters.read_error(sink, &layer.digest, source),
    };
    let limit = opts
        .max_gunzip_bytes
        .max(compressed.saturating_mul(crate::LAYER_RATIO));
    let exceeded = |limit| SourceError::LayerLimit { limit };
    let mut stream: Box<dyn Read + '_> = if is_gzip_magic(head) {
        let gunzip = flate2::bufread::MultiGzDecoder::new(raw);
        Box::new(Limited::new(gunzip, limit, exceeded))
    } else if is_zstd_magic(head) {
        Box::new(Limited::new(ZstdFrames::new(raw), limit, exceeded))
    } else {
        Box::new(raw)
    };
    if !layer.tar {
        let origin = Origin {
            path: layer.member.clone(),
            commit: None,
            layer: Some(layer.digest.clone()),
        };
        counters.hand(sink, &origin, &layer.digest, &mut stream);
        return;
    }
    tar_members(
        stream,
        TarOf::Layer(&layer.digest),
        opts.max_gunzip_bytes,
        counters,
        sink,
    );
}

/// Where a tar stream comes from.
pub(crate) enum TarOf<'a> {
    /// An image layer (its digest): members keep their paths and carry the digest; whiteouts
    /// are skipped.
    Layer(&'a str),
    /// A tarball found in a tree (its path): members are `archive!path`.
    Archive(&'a str),
}

/// Hands every regular member of a tar stream to the sink, streamed, gunzipped when it is gzip.
/// A broken stream ends the archive (tar has no index to resync on) with one error.
pub(crate) fn tar_members(
    stream: impl Read,
    of: TarOf<'_>,
    max_gunzip: u64,
    counters: &Counters,
    sink: &dyn Sink,
) {
    let (key, described) = match of {
        TarOf::Layer(digest) => (digest, format!("layer {digest}")),
        TarOf::Archive(path) => (path, path.to_owned()),
    };
    let stream_error = |source: io::Error| {
        let err = SourceError::Read {
            what: described.clone(),
            source,
        };
        counters.error(sink, key, &err);
    };
    let mut archive = tar::Archive::new(stream);
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(source) => return stream_error(source),
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(source) => return stream_error(source),
        };
        if !matches!(
            entry.header().entry_type(),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) {
            continue;
        }
        let path = normalise(&String::from_utf8_lossy(&entry.path_bytes()));
        let (what, origin) = match of {
            TarOf::Layer(digest) => {
                let file_name = path.rsplit('/').next().unwrap_or(&path);
                if file_name.starts_with(".wh.") {
                    // Whiteouts (`.wh.NAME`, `.wh..wh..opq`) delete files of lower layers: no
                    // content.
                    Counters::bump(&counters.whiteouts);
                    continue;
                }
                let what = format!("{digest}:{path}");
                let origin = Origin {
                    path,
                    commit: None,
                    layer: Some(digest.to_owned()),
                };
                (what, origin)
            }
            TarOf::Archive(archive) => {
                let path = format!("{archive}!{path}");
                let origin = Origin {
                    path: path.clone(),
                    ..Origin::default()
                };
                (path, origin)
            }
        };
        let (head, n) = match peek::<3, _>(&mut entry) {
            Ok(head) => head,
            Err(source) => {
                counters.read_error(sink, &what, source);
                continue;
            }
        };
        let mut member = (&head[..n]).chain(&mut entry);
        if is_gzip_magic(&head[..n]) {
            counters.hand(
                sink,
                &origin,
                &what,
                &mut CappedGunzip::new(member, max_gunzip),
            );
        } else {
            counters.hand(sink, &origin, &what, &mut member);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises() {
        assert_eq!(normalise("./a/b/../c/"), "a/c");
        assert_eq!(normalise("/etc/passwd"), "etc/passwd");
        assert_eq!(normalise("../../x"), "x");
        assert_eq!(normalise(""), "");
    }

    #[test]
    fn digests() {
        assert_eq!(blob_path("sha256:ab12").unwrap(), "blobs/sha256/ab12");
        assert!(blob_path("sha256:../../etc").is_err());
        assert!(blob_path("nocolon").is_err());
        assert!(blob_path("sha256:").is_err());
        let hex = "a".repeat(64);
        assert_eq!(
            digest_from_member(&format!("{hex}.json")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_from_member(&format!("{hex}/layer.tar")),
            Some(format!("sha256:{hex}"))
        );
        assert_eq!(
            digest_from_member("blobs/sha256/ff"),
            Some("sha256:ff".to_owned())
        );
        assert_eq!(digest_from_member("x/layer.tar"), None);
    }
}
