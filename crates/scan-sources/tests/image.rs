//! `image`: `docker save` and OCI layout tarballs built here with the `tar` crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::io::Cursor;
use std::path::Path;

use common::{Collect, gzip};
use mayfly_scan_sources::{
    IMAGE_CONFIG_PATH, SourceError, Stats, WalkOptions, image, image_from_reader,
};
use ruzstd::encoding::{CompressionLevel, compress_to_vec};
use serde_json::json;
use tar::{EntryType, Header};

/// An entry of a tar built for a test.
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut h = Header::new_gnu();
        h.set_mode(0o644);
        h.set_mtime(0);
        match entry {
            E::File(path, data) => {
                h.set_entry_type(EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
            E::Dir(path) => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            E::Symlink(path, target) | E::Hardlink(path, target) => {
                h.set_entry_type(if matches!(entry, E::Symlink(..)) {
                    EntryType::Symlink
                } else {
                    EntryType::Link
                });
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn blob(digest: &str) -> String {
    format!("blobs/sha256/{}", hex(digest))
}

/// Layer 1 adds a secret file (and a gzip file, links, directories).
fn layer1() -> Vec<u8> {
    tar_of(&[
        E::Dir("etc/"),
        E::File("etc/secret.txt", b"LAYER1_SECRET=AKIAIOSFODNN7REALKEY\n"),
        E::Symlink("etc/link", "secret.txt"),
        E::Hardlink("etc/hard", "etc/secret.txt"),
        E::Dir("app/"),
        E::File(
            "app/settings.json.gz",
            &gzip(b"{\"token\": \"GZ_MEMBER_SECRET\"}"),
        ),
        E::File("./app/old.txt", b"OPAQUE_DIR_FILE\n"),
    ])
}

/// Layer 2 deletes it (a whiteout), makes `app` opaque and adds a file.
fn layer2() -> Vec<u8> {
    tar_of(&[
        E::Dir("etc/"),
        E::File("etc/.wh.secret.txt", b""),
        E::Dir("app/"),
        E::File("app/.wh..wh..opq", b""),
        E::File("usr/new.txt", b"LAYER2_FILE\n"),
    ])
}

fn config() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin", "API_TOKEN=CONFIG_ENV_SECRET"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(0xd1), digest(0xd2)]},
        "history": [{"created_by": "RUN echo HISTORY_SECRET > /dev/null"}]
    }))
    .unwrap()
}

/// An OCI layout: index.json → nested index → manifest (and a manifest for a platform that was
/// not saved, and a buildx attestation manifest) → config, a gzip layer whose media type says
/// plain tar, a zstd layer. Blobs come before index.json in the tarball.
fn oci_tarball() -> Vec<u8> {
    let (l1, l2, cfg, man, nested) = (digest(1), digest(2), digest(3), digest(4), digest(5));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 1},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l1, "size": 1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": l2, "size": 1}
        ]
    }))
    .unwrap();
    let nested_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man, "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(0xef), "size": 1,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(0xee), "size": 1,
             "platform": {"architecture": "unknown", "os": "unknown"},
             "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
        ]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested, "size": 1}]
    }))
    .unwrap();
    let (b1, b2, bc, bm, bn) = (blob(&l1), blob(&l2), blob(&cfg), blob(&man), blob(&nested));
    let (gz1, zst2) = (
        gzip(&layer1()),
        compress_to_vec(&layer2()[..], CompressionLevel::Fastest),
    );
    let config = config();
    let attestation = serde_json::to_vec(&json!({
        "config": {"digest": digest(0xe0)},
        "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": digest(0xe1)}]
    }))
    .unwrap();
    let (ba, bac, bal) = (
        blob(&digest(0xee)),
        blob(&digest(0xe0)),
        blob(&digest(0xe1)),
    );
    tar_of(&[
        E::File(&ba, &attestation),
        E::File(&bac, b"{\"ATTESTATION\": 1}"),
        E::File(&bal, b"{\"predicate\": \"ATTESTATION\"}"),
        E::Dir("blobs/"),
        E::Dir("blobs/sha256/"),
        E::File(&b1, &gz1),
        E::File(&b2, &zst2),
        E::File(&bc, &config),
        E::File(&bm, &manifest),
        E::File(&bn, &nested_index),
        E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        E::File("index.json", &index),
    ])
}

/// Legacy `docker save`: `<id>/layer.tar` layers (the first plain, the second gzip behind a
/// symlink into blobs/), the config, and manifest.json last.
fn docker_tarball(with_diff_ids: bool) -> Vec<u8> {
    let id1 = "a1".repeat(32);
    let id2 = "a2".repeat(32);
    let cfg = "c0".repeat(32);
    let mut config: serde_json::Value = serde_json::from_slice(&config()).unwrap();
    if !with_diff_ids {
        config["rootfs"]["diff_ids"] = json!([]);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::to_vec(&json!([{
        "Config": format!("{cfg}.json"),
        "RepoTags": ["example:latest"],
        "Layers": [format!("{id1}/layer.tar"), format!("{id2}/layer.tar")]
    }]))
    .unwrap();
    let (l1, gz2) = (layer1(), gzip(&layer2()));
    let (p1, p2, pc) = (
        format!("{id1}/layer.tar"),
        format!("{id2}/layer.tar"),
        format!("{cfg}.json"),
    );
    let blob2 = format!("blobs/sha256/{}", "b2".repeat(32));
    let target2 = format!("../{blob2}");
    tar_of(&[
        E::Dir(&format!("{id1}/")),
        E::File(&format!("{id1}/VERSION"), b"1.0"),
        E::File(&p1, &l1),
        E::File(&blob2, &gz2),
        E::Dir(&format!("{id2}/")),
        E::Symlink(&p2, &target2),
        E::File(&pc, &config),
        E::File("repositories", br#"{"example":{"latest":"x"}}"#),
        E::File("manifest.json", &manifest),
    ])
}

fn scan_bytes(tarball: Vec<u8>) -> (Collect, Stats) {
    let sink = Collect::default();
    let stats = image_from_reader(
        Cursor::new(tarball),
        "test.tar",
        &WalkOptions::default(),
        &sink,
    )
    .unwrap();
    (sink, stats)
}

/// What both layouts must show.
fn check_layers(sink: &Collect, layer1: &str, layer2: &str) {
    // The file layer 2 deletes is found in layer 1, with layer 1's digest.
    let secret = sink.with("LAYER1_SECRET");
    assert_eq!(secret.len(), 1, "{secret:?}");
    assert_eq!(secret[0].origin.path, "etc/secret.txt");
    assert_eq!(secret[0].origin.layer.as_deref(), Some(layer1));
    assert_eq!(secret[0].origin.commit, None);
    assert_eq!(secret[0].data, b"LAYER1_SECRET=AKIAIOSFODNN7REALKEY\n");
    // Whiteouts are no content; links are not files.
    assert!(
        !sink.paths().iter().any(|p| p.contains(".wh.")),
        "{:?}",
        sink.paths()
    );
    assert!(
        !sink
            .paths()
            .iter()
            .any(|p| p == "etc/link" || p == "etc/hard")
    );
    // A file of a directory that layer 2 makes opaque: still found in layer 1. Paths lose `./`.
    let old = sink.with("OPAQUE_DIR_FILE");
    assert_eq!(old[0].origin.path, "app/old.txt");
    // A gzip member of a layer is gunzipped.
    let gz = sink.with("GZ_MEMBER_SECRET");
    assert_eq!(gz.len(), 1);
    assert_eq!(gz[0].origin.path, "app/settings.json.gz");
    assert_eq!(gz[0].data, br#"{"token": "GZ_MEMBER_SECRET"}"#);
    let new = sink.with("LAYER2_FILE");
    assert_eq!(new[0].origin.layer.as_deref(), Some(layer2));
    assert_eq!(new[0].origin.path, "usr/new.txt");
}

fn check_config(sink: &Collect, digest: &str) {
    let configs: Vec<_> = sink
        .items()
        .into_iter()
        .filter(|i| i.origin.path == IMAGE_CONFIG_PATH)
        .collect();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].origin.layer.as_deref(), Some(digest));
    assert!(common::contains(&configs[0].data, b"CONFIG_ENV_SECRET"));
    assert!(common::contains(&configs[0].data, b"HISTORY_SECRET"));
}

#[test]
fn oci_layout_gzip_and_zstd_layers_with_a_deleted_file() {
    let (sink, stats) = scan_bytes(oci_tarball());
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    check_layers(&sink, &digest(1), &digest(2));
    check_config(&sink, &digest(3));
    assert_eq!(stats.layers, 2);
    assert_eq!(stats.whiteouts, 2);
    // 3 files in layer 1, 1 in layer 2, the config; not the attestation.
    assert_eq!(stats.items, 5, "{:?}", sink.paths());
    assert!(sink.with("ATTESTATION").is_empty());
    assert_eq!(stats.errors, 0);
}

#[test]
fn legacy_docker_save_with_diff_ids_and_a_symlinked_layer() {
    let (sink, stats) = scan_bytes(docker_tarball(true));
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    check_layers(&sink, &digest(0xd1), &digest(0xd2));
    check_config(&sink, &format!("sha256:{}", "c0".repeat(32)));
    assert_eq!(stats.layers, 2);
    assert_eq!(stats.items, 5);
}

#[test]
fn legacy_docker_save_without_diff_ids_names_layers_by_id() {
    let (sink, _) = scan_bytes(docker_tarball(false));
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    check_layers(
        &sink,
        &format!("sha256:{}", "a1".repeat(32)),
        &format!("sha256:{}", "a2".repeat(32)),
    );
}

#[test]
fn from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.tar");
    std::fs::write(&path, oci_tarball()).unwrap();
    let sink = Collect::default();
    let stats = image(&path, &WalkOptions::default(), &sink).unwrap();
    assert_eq!(stats.items, 5);
    check_layers(&sink, &digest(1), &digest(2));
}

#[test]
fn not_an_image_compressed_and_missing_are_errors_that_say_what_to_do() {
    let sink = Collect::default();
    let opts = WalkOptions::default();
    let plain = tar_of(&[E::File("hello.txt", b"hi")]);
    let err = image_from_reader(Cursor::new(plain), "x.tar", &opts, &sink).unwrap_err();
    assert!(matches!(err, SourceError::NotAnImage { .. }));
    assert!(err.to_string().contains("docker save"), "{err}");

    let err =
        image_from_reader(Cursor::new(gzip(&oci_tarball())), "x.tar.gz", &opts, &sink).unwrap_err();
    assert!(matches!(
        err,
        SourceError::ImageCompressed {
            compression: "gzip",
            ..
        }
    ));
    assert!(err.to_string().contains("decompress it first"), "{err}");

    let err = image(Path::new("/no/such/image.tar"), &opts, &sink).unwrap_err();
    assert!(matches!(err, SourceError::Path { .. }));

    let dir = tempfile::tempdir().unwrap();
    let err = image(dir.path(), &opts, &sink).unwrap_err();
    assert!(
        err.to_string().contains("a directory, not a tarball"),
        "{err}"
    );

    let index = serde_json::to_vec(&json!({"manifests": [{"digest": digest(4)}]})).unwrap();
    let err = image_from_reader(
        Cursor::new(tar_of(&[E::File("index.json", &index)])),
        "x",
        &opts,
        &sink,
    )
    .unwrap_err();
    assert!(err.to_string().contains("none of the 1 manifests"), "{err}");

    let err = image_from_reader(
        Cursor::new(b"not a tar at all".repeat(100)),
        "junk",
        &opts,
        &sink,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            SourceError::ImageIo { .. } | SourceError::NotAnImage { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn a_missing_or_corrupt_layer_is_reported_and_the_others_are_scanned() {
    let mut corrupt = gzip(&layer2());
    corrupt.truncate(20);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"digest": digest(4)}]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "config": {"digest": digest(3)},
        "layers": [{"digest": digest(9)}, {"digest": digest(2)}, {"digest": digest(1)}]
    }))
    .unwrap();
    let tarball = tar_of(&[
        E::File("index.json", &index),
        E::File(&blob(&digest(4)), &manifest),
        E::File(&blob(&digest(3)), &config()),
        E::File(&blob(&digest(2)), &corrupt),
        E::File(&blob(&digest(1)), &layer1()),
    ]);
    let (sink, stats) = scan_bytes(tarball);
    let errors = sink.errors();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, digest(9));
    assert!(errors[0].1.contains("has no member"), "{errors:?}");
    assert_eq!(errors[1].0, digest(2));
    assert_eq!(stats.errors, 2);
    assert_eq!(sink.with("LAYER1_SECRET")[0].origin.layer, Some(digest(1)));
}

#[test]
fn each_layer_once_across_platforms() {
    // Two platform manifests sharing a layer: scanned once.
    let index = serde_json::to_vec(&json!({
        "manifests": [{"digest": digest(4)}, {"digest": digest(5)}]
    }))
    .unwrap();
    let m1 = serde_json::to_vec(
        &json!({"config": {"digest": digest(3)}, "layers": [{"digest": digest(1)}]}),
    )
    .unwrap();
    let m2 = serde_json::to_vec(&json!({"config": {"digest": digest(6)}, "layers": [{"digest": digest(1)}, {"digest": digest(2)}]})).unwrap();
    let tarball = tar_of(&[
        E::File("index.json", &index),
        E::File(&blob(&digest(4)), &m1),
        E::File(&blob(&digest(5)), &m2),
        E::File(&blob(&digest(3)), b"{}"),
        E::File(&blob(&digest(6)), b"{\"os\":\"linux\"}"),
        E::File(&blob(&digest(1)), &layer1()),
        E::File(&blob(&digest(2)), &layer2()),
    ]);
    let (sink, stats) = scan_bytes(tarball);
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    assert_eq!(stats.layers, 2);
    assert_eq!(sink.with("LAYER1_SECRET").len(), 1);
    assert_eq!(
        sink.items()
            .iter()
            .filter(|i| i.origin.path == IMAGE_CONFIG_PATH)
            .count(),
        2
    );
}

/// Writes the seed inputs of the fuzz targets (run with MAYFLY_WRITE_FUZZ_SEEDS=1).
#[test]
fn write_fuzz_seeds() {
    if std::env::var_os("MAYFLY_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/scan/seeds");
    std::fs::create_dir_all(root.join("image")).unwrap();
    std::fs::create_dir_all(root.join("gzip")).unwrap();
    std::fs::create_dir_all(root.join("zstd")).unwrap();
    let frames = [
        compress_to_vec(&b"first frame "[..], CompressionLevel::Fastest),
        vec![0x5e, 0x2a, 0x4d, 0x18, 2, 0, 0, 0, 1, 2],
        compress_to_vec(&layer2()[..], CompressionLevel::Fastest),
    ]
    .concat();
    std::fs::write(root.join("zstd/frames.zst"), frames).unwrap();
    std::fs::write(root.join("image/oci.tar"), oci_tarball()).unwrap();
    std::fs::write(root.join("image/docker.tar"), docker_tarball(true)).unwrap();
    std::fs::write(
        root.join("gzip/two-members.gz"),
        [gzip(b"hello "), gzip(b"world")].concat(),
    )
    .unwrap();
    std::fs::write(root.join("gzip/zeros.gz"), gzip(&[0u8; 4096])).unwrap();
}

#[test]
fn a_layer_that_decompresses_too_far_is_stopped() {
    let big = vec![0u8; 16 << 20];
    let layer = tar_of(&[E::File("zeros", &big), E::File("after", b"AFTER_THE_BOMB")]);
    let bomb = compress_to_vec(&layer[..], CompressionLevel::Fastest);
    assert!((bomb.len() as u64) * 1024 < 8 << 20, "{}", bomb.len());
    let index = serde_json::to_vec(&json!({"manifests": [{"digest": digest(4)}]})).unwrap();
    let manifest =
        serde_json::to_vec(&json!({"layers": [{"digest": digest(1)}, {"digest": digest(2)}]}))
            .unwrap();
    let tarball = tar_of(&[
        E::File("index.json", &index),
        E::File(&blob(&digest(4)), &manifest),
        E::File(&blob(&digest(1)), &bomb),
        E::File(&blob(&digest(2)), &gzip(&layer2())),
    ]);
    let sink = Collect::default();
    let opts = WalkOptions {
        max_gunzip_bytes: 1 << 20,
        ..WalkOptions::default()
    };
    let stats = image_from_reader(Cursor::new(tarball), "bomb.tar", &opts, &sink).unwrap();
    // The member being read fails, then the layer.
    let errors = sink.errors();
    assert_eq!(stats.errors, 2, "{errors:?}");
    assert_eq!(errors[0].0, format!("{}:zeros", digest(1)));
    assert_eq!(errors[1].0, digest(1));
    assert!(
        errors.iter().all(|e| e.1.contains("decompression bomb")),
        "{errors:?}"
    );
    let limit = (bomb.len() as u64 * 1024) as usize;
    assert!(sink.items().iter().all(|i| i.data.len() <= limit));
    assert!(sink.with("AFTER_THE_BOMB").is_empty());
    assert_eq!(sink.with("LAYER2_FILE").len(), 1, "the next layer is read");
}
