//! `git`: history, with the real `git` CLI building the repositories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::{Collect, gzip};
use mayfly_scan_sources::{SourceError, WalkOptions, git};

/// Runs git in `dir` at a fixed time, isolated from the machine's configuration.
fn run(dir: &Path, time: u64, args: &[&str]) -> String {
    let date = format!("@{time} +0000");
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_DATE", &date)
        .env("GIT_COMMITTER_DATE", &date)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

fn commit(dir: &Path, time: u64, message: &str) -> String {
    run(dir, time, &["add", "-A"]);
    run(dir, time, &["commit", "-q", "-m", message]);
    run(dir, time, &["rev-parse", "HEAD"])
}

/// The history the tests scan, and the commits that matter.
struct Repo {
    dir: tempfile::TempDir,
    added: String,
    side: String,
    tagged: String,
    later_dup: String,
    stash: String,
}

fn build() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, 1000, &["init", "-q"]);
    write(d, "README.md", b"hello\n");
    write(d, "src/config.py", b"AWS_KEY = 'AKIA_ADDED_THEN_DELETED'\n");
    write(d, "src/lib/util.py", b"def f(): pass\n");
    let added = commit(d, 1000, "add config");

    std::fs::remove_file(d.join("src/config.py")).unwrap();
    write(d, "README.md", b"hello again\n");
    commit(d, 2000, "remove the key");

    // A side branch, older than main's next commit, holding content main adds later too.
    run(d, 2500, &["checkout", "-q", "-b", "side"]);
    write(d, "side.txt", b"SIDE_BRANCH_SECRET\n");
    write(d, "docs/same.txt", b"SAME CONTENT ON BOTH BRANCHES\n");
    let side = commit(d, 3000, "side");
    run(d, 3000, &["checkout", "-q", "main"]);
    write(d, "app/dup.txt", b"SAME CONTENT ON BOTH BRANCHES\n");
    write(d, "app/dup-again.txt", b"SAME CONTENT ON BOTH BRANCHES\n");
    write(d, "logs/build.log.gz", &gzip(b"GZIPPED_IN_GIT\n"));
    std::os::unix::fs::symlink("README.md", d.join("link-to-readme")).unwrap();
    let later_dup = commit(d, 4000, "main after side");

    // A submodule entry (a commit in the tree): skipped.
    run(
        d,
        4100,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{added},vendor/sub"),
        ],
    );
    run(d, 4100, &["commit", "-q", "-m", "submodule"]);

    // A commit reachable only from an annotated tag.
    run(d, 5000, &["checkout", "-q", "--orphan", "tmp"]);
    run(d, 5000, &["rm", "-rq", "--cached", "."]);
    for f in [
        "README.md",
        "side.txt",
        "app",
        "docs",
        "logs",
        "link-to-readme",
    ] {
        let p = d.join(f);
        if p.is_dir() {
            std::fs::remove_dir_all(p).unwrap();
        } else if p.exists() || p.is_symlink() {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::remove_dir_all(d.join("src")).ok();
    write(d, "tagged.txt", b"ONLY_FROM_A_TAG\n");
    let tagged = commit(d, 5000, "tagged only");
    run(d, 5000, &["tag", "-a", "-m", "v1", "v1"]);
    run(d, 5000, &["checkout", "-q", "-f", "main"]);
    run(d, 5000, &["branch", "-D", "tmp"]);

    // A lightweight tag pointing at a blob.
    let blob = {
        write(d, "loose.txt", b"BLOB_BEHIND_A_TAG\n");
        let id = run(d, 5000, &["hash-object", "-w", "loose.txt"]);
        std::fs::remove_file(d.join("loose.txt")).unwrap();
        id
    };
    run(d, 5000, &["tag", "blobtag", &blob]);

    // A stash.
    write(d, "README.md", b"STASHED_SECRET\n");
    run(d, 6000, &["stash", "-q"]);
    let stash = run(d, 6000, &["rev-parse", "refs/stash"]);

    Repo {
        dir,
        added,
        side,
        tagged,
        later_dup,
        stash,
    }
}

/// The number of distinct blobs reachable from any ref, by git's count.
fn reachable_blobs(dir: &Path) -> usize {
    let objects = run(dir, 0, &["rev-list", "--all", "--objects"]);
    objects
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| run(dir, 0, &["cat-file", "-t", id]) == "blob")
        .collect::<HashSet<_>>()
        .len()
}

fn check(repo: &Repo, scanned: &Path, threads: usize) {
    let sink = Collect::default();
    let opts = WalkOptions {
        threads,
        ..WalkOptions::default()
    };
    let stats = git(scanned, &opts, &sink).unwrap();
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    assert_eq!(stats.errors, 0);

    // Added in one commit, deleted in the next: found with the commit that added it.
    let key = sink.with("AKIA_ADDED_THEN_DELETED");
    assert_eq!(key.len(), 1);
    assert_eq!(key[0].origin.path, "src/config.py");
    assert_eq!(key[0].origin.commit.as_deref(), Some(repo.added.as_str()));
    assert_eq!(key[0].origin.layer, None);

    // Only on a side branch.
    let side = sink.with("SIDE_BRANCH_SECRET");
    assert_eq!(side.len(), 1);
    assert_eq!(side[0].origin.commit.as_deref(), Some(repo.side.as_str()));

    // The same blob on both branches: once, with the older commit (the side branch's).
    let same = sink.with("SAME CONTENT ON BOTH BRANCHES");
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(same[0].origin.path, "docs/same.txt");
    assert_eq!(same[0].origin.commit.as_deref(), Some(repo.side.as_str()));

    // Only reachable from a tag.
    let tagged = sink.with("ONLY_FROM_A_TAG");
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].origin.path, "tagged.txt");
    assert_eq!(
        tagged[0].origin.commit.as_deref(),
        Some(repo.tagged.as_str())
    );

    // A tag pointing at a blob: no commit, the ref's name as path.
    let blob = sink.with("BLOB_BEHIND_A_TAG");
    assert_eq!(blob.len(), 1);
    assert_eq!(blob[0].origin.path, "refs/tags/blobtag");
    assert_eq!(blob[0].origin.commit, None);

    // The stash.
    let stashed = sink.with("STASHED_SECRET");
    assert_eq!(stashed.len(), 1);
    assert_eq!(stashed[0].origin.path, "README.md");
    assert_eq!(
        stashed[0].origin.commit.as_deref(),
        Some(repo.stash.as_str())
    );

    // Gunzipped, with the .gz path.
    let gz = sink.with("GZIPPED_IN_GIT");
    assert_eq!(gz.len(), 1);
    assert_eq!(gz[0].data, b"GZIPPED_IN_GIT\n");
    assert_eq!(gz[0].origin.path, "logs/build.log.gz");
    assert_eq!(
        gz[0].origin.commit.as_deref(),
        Some(repo.later_dup.as_str())
    );

    // Nested paths, symlinks and submodules skipped.
    let paths = sink.paths();
    assert!(paths.contains(&"src/lib/util.py".to_owned()));
    assert!(
        !paths
            .iter()
            .any(|p| p == "link-to-readme" || p.starts_with("vendor"))
    );

    // Each blob once: as many items as git counts reachable blobs, less the symlink's.
    let items = sink.items();
    assert_eq!(items.len() as u64, stats.items);
    assert_eq!(items.len(), reachable_blobs(repo.dir.path()) - 1);
    let distinct: HashSet<&Vec<u8>> = items.iter().map(|i| &i.data).collect();
    assert_eq!(distinct.len(), items.len(), "a blob handed over twice");
    assert!(stats.commits >= 8, "{stats:?}");
}

#[test]
fn every_blob_once_with_the_commit_that_introduced_it() {
    let repo = build();
    check(&repo, repo.dir.path(), 2);
    check(&repo, &repo.dir.path().join(".git"), 1);
}

#[test]
fn packed_objects_and_refs_and_a_bare_mirror() {
    let repo = build();
    run(
        repo.dir.path(),
        7000,
        &["gc", "-q", "--aggressive", "--prune=now"],
    );
    assert!(
        !repo.dir.path().join(".git/refs/tags/v1").exists(),
        "refs are packed"
    );
    check(&repo, repo.dir.path(), 2);

    let bare = tempfile::tempdir().unwrap();
    let target = bare.path().join("mirror.git");
    run(
        bare.path(),
        7000,
        &[
            "clone",
            "-q",
            "--mirror",
            repo.dir.path().to_str().unwrap(),
            target.to_str().unwrap(),
        ],
    );
    // The mirror has the branches and tags.
    let sink = Collect::default();
    git(&target, &WalkOptions::default(), &sink).unwrap();
    assert!(sink.errors().is_empty(), "{:?}", sink.errors());
    let key = sink.with("AKIA_ADDED_THEN_DELETED");
    assert_eq!(key[0].origin.commit.as_deref(), Some(repo.added.as_str()));
    assert_eq!(sink.with("ONLY_FROM_A_TAG").len(), 1);
    assert_eq!(sink.with("BLOB_BEHIND_A_TAG").len(), 1);
}

#[test]
fn oldest_commit_wins_even_when_refs_list_it_last() {
    // Two root commits on two branches with the same file; the older one is named later.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, 1000, &["init", "-q"]);
    write(d, "a.txt", b"SHARED\n");
    let newer = {
        run(d, 9000, &["add", "-A"]);
        run(d, 9000, &["commit", "-q", "-m", "newer"]);
        run(d, 9000, &["rev-parse", "HEAD"])
    };
    run(d, 1000, &["checkout", "-q", "--orphan", "zz-older"]);
    write(d, "b.txt", b"SHARED\n");
    std::fs::remove_file(d.join("a.txt")).unwrap();
    let older = commit(d, 1000, "older");
    assert_ne!(newer, older);
    let sink = Collect::default();
    git(d, &WalkOptions::default(), &sink).unwrap();
    let shared = sink.with("SHARED");
    assert_eq!(shared.len(), 1);
    assert_eq!(shared[0].origin.path, "b.txt");
    assert_eq!(shared[0].origin.commit.as_deref(), Some(older.as_str()));
}

#[test]
fn an_empty_repository_has_nothing() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), 0, &["init", "-q"]);
    let sink = Collect::default();
    let stats = git(dir.path(), &WalkOptions::default(), &sink).unwrap();
    assert_eq!(stats.items, 0);
    assert_eq!(stats.errors, 0);
}

#[test]
fn not_a_repository_is_an_error_that_says_what_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    let err = git(dir.path(), &WalkOptions::default(), &Collect::default()).unwrap_err();
    assert!(matches!(err, SourceError::GitOpen { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("top directory"), "{message}");
}

#[test]
fn a_missing_blob_is_reported_and_the_scan_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, 1000, &["init", "-q"]);
    write(d, "gone.txt", b"THIS BLOB WILL GO\n");
    write(d, "kept.txt", b"THIS ONE STAYS\n");
    commit(d, 1000, "one");
    let gone = run(d, 1000, &["rev-parse", "HEAD:gone.txt"]);
    std::fs::remove_file(d.join(".git/objects").join(&gone[..2]).join(&gone[2..])).unwrap();
    let sink = Collect::default();
    let stats = git(d, &WalkOptions::default(), &sink).unwrap();
    assert_eq!(stats.errors, 1);
    let errors = sink.errors();
    assert!(errors[0].0.ends_with(":gone.txt"), "{errors:?}");
    assert!(errors[0].1.contains(&gone), "{errors:?}");
    assert_eq!(sink.with("THIS ONE STAYS").len(), 1);
}
