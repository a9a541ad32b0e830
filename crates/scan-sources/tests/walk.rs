//! `walk`: directory trees.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{Collect, gzip};
use mayfly_scan_sources::{SourceError, WalkOptions, walk};

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Paths relative to `root`, sorted.
fn rel(sink: &Collect, root: &Path) -> Vec<String> {
    let prefix = format!("{}/", root.display());
    let mut paths: Vec<String> = sink
        .paths()
        .into_iter()
        .map(|p| p.strip_prefix(&prefix).unwrap_or(&p).to_owned())
        .collect();
    paths.sort();
    paths
}

fn opts() -> WalkOptions {
    WalkOptions {
        threads: 2,
        ..WalkOptions::default()
    }
}

/// A tree that is not a git repository, with ignore files, hidden files and a `.git` directory.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, ".gitignore", b"ignored.txt\nbuild/\n*.log\n");
    write(root, "a.txt", b"alpha");
    write(root, "ignored.txt", b"ignored");
    write(root, "build/out.txt", b"built");
    write(root, "x.log", b"log");
    write(root, ".env", b"AWS_SECRET_ACCESS_KEY=hidden");
    write(
        root,
        "sub/.npmrc",
        b"//registry.npmjs.org/:_authToken=npm_x",
    );
    write(root, "sub/.ignore", b"skipme.txt\n");
    write(root, "sub/skipme.txt", b"skip");
    write(root, "sub/keep.txt", b"keep");
    write(root, ".git/config", b"[core]");
    write(root, "sub/.git/HEAD", b"ref: refs/heads/main");
    dir
}

#[test]
fn honours_ignore_files_outside_git_and_scans_hidden_files() {
    let dir = tree();
    let sink = Collect::default();
    let stats = walk(&[dir.path().to_path_buf()], &opts(), &sink).unwrap();
    assert_eq!(
        rel(&sink, dir.path()),
        [
            ".env",
            ".gitignore",
            "a.txt",
            "sub/.ignore",
            "sub/.npmrc",
            "sub/keep.txt"
        ]
    );
    assert_eq!(stats.items, 6);
    assert_eq!(stats.errors, 0);
    assert!(sink.errors().is_empty());
    let env = sink.with("AWS_SECRET_ACCESS_KEY");
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].data, b"AWS_SECRET_ACCESS_KEY=hidden");
    assert_eq!(env[0].origin.commit, None);
    assert_eq!(env[0].origin.layer, None);
    assert_eq!(
        stats.bytes,
        sink.items()
            .iter()
            .map(|i| i.data.len() as u64)
            .sum::<u64>()
    );
}

#[test]
fn no_ignore_scans_everything_but_git_directories() {
    let dir = tree();
    let sink = Collect::default();
    let opts = WalkOptions {
        no_ignore: true,
        ..opts()
    };
    walk(&[dir.path().to_path_buf()], &opts, &sink).unwrap();
    assert_eq!(
        rel(&sink, dir.path()),
        [
            ".env",
            ".gitignore",
            "a.txt",
            "build/out.txt",
            "ignored.txt",
            "sub/.ignore",
            "sub/.npmrc",
            "sub/keep.txt",
            "sub/skipme.txt",
            "x.log"
        ]
    );
}

#[test]
fn paths_are_as_walked_relative_to_the_argument() {
    let dir = tree();
    let sink = Collect::default();
    // A relative argument: the walker yields paths under it, as given.
    let cwd = std::env::current_dir().unwrap();
    let rel_arg = pathdiff(dir.path(), &cwd);
    walk(&[rel_arg.join("sub")], &opts(), &sink).unwrap();
    let want: Vec<String> = [".ignore", ".npmrc", "keep.txt"]
        .iter()
        .map(|f| rel_arg.join("sub").join(f).display().to_string())
        .collect();
    assert_eq!(sink.paths(), want);
}

/// `path` relative to `base` (both absolute), through `..`.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let up = base.components().count() - 1;
    let mut out = PathBuf::new();
    for _ in 0..up {
        out.push("..");
    }
    out.join(path.strip_prefix("/").unwrap())
}

#[test]
fn a_file_given_directly_is_scanned_even_if_ignored() {
    let dir = tree();
    let sink = Collect::default();
    walk(&[dir.path().join("ignored.txt")], &opts(), &sink).unwrap();
    assert_eq!(
        sink.paths(),
        [dir.path().join("ignored.txt").display().to_string()]
    );
    assert_eq!(sink.items()[0].data, b"ignored");
}

#[test]
fn gitignore_in_a_parent_applies_to_a_subdirectory_given() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".gitignore", b"*.secret\n");
    write(dir.path(), "src/a.secret", b"x");
    write(dir.path(), "src/b.txt", b"y");
    let sink = Collect::default();
    walk(&[dir.path().join("src")], &opts(), &sink).unwrap();
    assert_eq!(rel(&sink, dir.path()), ["src/b.txt"]);
}

#[test]
fn gz_files_are_gunzipped_and_corrupt_ones_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "logs/build.log.gz", &gzip(b"token=ghp_inside_gzip"));
    // gzip magic without the name: gunzipped too.
    write(root, "blob.bin", &gzip(b"magic without a name"));
    // The name without the magic: not gzip, handed over as it is.
    write(root, "fake.gz", b"plain text named .gz");
    let mut corrupt = gzip(b"a longer text that is cut short somewhere in the middle of it");
    corrupt.truncate(corrupt.len() - 20);
    write(root, "corrupt.gz", &corrupt);
    write(root, "after.txt", b"the scan goes on");

    let sink = Collect::default();
    let stats = walk(&[root.to_path_buf()], &opts(), &sink).unwrap();
    let by_path = |p: &str| {
        sink.items()
            .into_iter()
            .find(|i| i.origin.path == root.join(p).display().to_string())
            .unwrap()
    };
    assert_eq!(by_path("logs/build.log.gz").data, b"token=ghp_inside_gzip");
    assert_eq!(by_path("blob.bin").data, b"magic without a name");
    assert_eq!(by_path("fake.gz").data, b"plain text named .gz");
    assert_eq!(by_path("after.txt").data, b"the scan goes on");
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, root.join("corrupt.gz").display().to_string());
    assert!(errors[0].1.contains("corrupt.gz"), "{}", errors[0].1);
    assert_eq!(stats.errors, 1);
    assert_eq!(stats.items, 5);
}

#[test]
fn gunzip_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "bomb.gz", &gzip(&vec![b'A'; 1 << 20]));
    let sink = Collect::default();
    let opts = WalkOptions {
        max_gunzip_bytes: 1000,
        ..opts()
    };
    let stats = walk(&[dir.path().to_path_buf()], &opts, &sink).unwrap();
    assert_eq!(stats.errors, 1);
    assert!(sink.items()[0].data.len() <= 1000);
    let (_, message) = &sink.errors()[0];
    assert!(message.contains("more than 1000 bytes"), "{message}");
    assert!(message.contains("max_gunzip_bytes"), "{message}");
}

#[test]
fn symlinks_are_not_followed_below_the_paths_given() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret.txt", b"outside");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "real.txt", b"real");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("linkdir")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        dir.path().join("link.txt"),
    )
    .unwrap();
    let sink = Collect::default();
    walk(&[dir.path().to_path_buf()], &opts(), &sink).unwrap();
    assert_eq!(rel(&sink, dir.path()), ["real.txt"]);

    // Given directly, a link is followed: to a directory, and to a file.
    let sink = Collect::default();
    walk(
        &[dir.path().join("linkdir"), dir.path().join("link.txt")],
        &opts(),
        &sink,
    )
    .unwrap();
    let mut paths = sink.paths();
    paths.sort();
    assert_eq!(
        paths,
        [
            dir.path().join("link.txt").display().to_string(),
            dir.path().join("linkdir/secret.txt").display().to_string(),
        ]
    );
    assert!(sink.items().iter().all(|i| i.data == b"outside"));
}

#[test]
fn a_missing_path_is_an_error_that_names_it() {
    let sink = Collect::default();
    let err = walk(&[PathBuf::from("/no/such/path/here")], &opts(), &sink).unwrap_err();
    assert!(matches!(err, SourceError::Path { .. }));
    assert!(err.to_string().contains("/no/such/path/here"), "{err}");
}

#[test]
fn an_unreadable_file_is_reported_and_the_scan_goes_on() {
    // Reading /proc/self/mem at offset 0 fails (EIO), even as root.
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ok.txt", b"fine");
    let sink = Collect::default();
    let stats = walk(
        &[PathBuf::from("/proc/self/mem"), dir.path().to_path_buf()],
        &opts(),
        &sink,
    )
    .unwrap();
    assert_eq!(stats.errors, 1);
    assert_eq!(sink.errors()[0].0, "/proc/self/mem");
    assert_eq!(sink.with("fine").len(), 1);
}

#[test]
fn fifos_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    write(dir.path(), "a.txt", b"a");
    let sink = Collect::default();
    walk(&[dir.path().to_path_buf()], &opts(), &sink).unwrap();
    assert_eq!(rel(&sink, dir.path()), ["a.txt"]);
}

#[test]
fn many_files_on_several_threads() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..500 {
        write(
            dir.path(),
            &format!("d{}/f{i}.txt", i % 17),
            format!("file {i}").as_bytes(),
        );
    }
    let sink = Collect::default();
    let stats = walk(&[dir.path().to_path_buf()], &WalkOptions::default(), &sink).unwrap();
    assert_eq!(stats.items, 500);
    let mut seen: Vec<String> = sink.paths();
    seen.dedup();
    assert_eq!(seen.len(), 500);
}

/// Build a tar archive of (name, bytes) members, plus a directory and a symlink entry.
fn tarball(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    b.append_data(&mut dir, "etc/", std::io::empty()).unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    b.append_link(&mut link, "etc/link", "/etc/passwd").unwrap();
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn tarballs_in_a_tree_are_opened_member_by_member() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let t = tarball(&[("etc/app.env", b"TOKEN=inside"), ("README", b"hello")]);
    write(root, "backup.tar", &t);
    write(root, "release.tar.gz", &gzip(&t));
    write(root, "release.tgz", &gzip(&t));
    let mut cut = gzip(&t);
    cut.truncate(cut.len() / 2);
    write(root, "broken.tgz", &cut);
    let sink = Collect::default();
    let stats = walk(&[root.to_path_buf()], &opts(), &sink).unwrap();
    for archive in ["backup.tar", "release.tar.gz", "release.tgz"] {
        let p = format!("{}!etc/app.env", root.join(archive).display());
        let item = sink
            .items()
            .into_iter()
            .find(|i| i.origin.path == p)
            .unwrap();
        assert_eq!(item.data, b"TOKEN=inside");
        let readme = format!("{}!README", root.join(archive).display());
        assert!(sink.items().iter().any(|i| i.origin.path == readme));
    }
    // Directories and links are not items; a cut archive is an error naming it.
    assert!(
        !sink
            .items()
            .iter()
            .any(|i| i.origin.path.ends_with("!etc/link"))
    );
    let errors = sink.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].0.ends_with("broken.tgz"), "{errors:?}");
    assert_eq!(stats.errors, 1);
}
