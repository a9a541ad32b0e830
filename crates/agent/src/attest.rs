//! Workload attestation from a unix socket peer: pid, uid and gid from `SO_PEERCRED` (taken
//! when the connection was accepted), then the executable from `/proc`.
//!
//! The executable is bound to the connection: `execve` keeps the pid and the start time, so a
//! process could connect, then exec a workload's binary (or fork and let the parent exec it)
//! and use the connection from code of its own. When entries use `unix:path` or `unix:sha256`,
//! the executable must be the one the process ran when the connection was accepted (same
//! device, inode, size, mtime and ctime; the hash is read from that very file), the process
//! must still hold the connection, and no process running another executable may hold it.
//!
//! Selectors produced (`mayfly_spiffe::Selector`, matched with `mayfly_spiffe::matches`):
//! `unix:uid:<n>`, `unix:gid:<n>`, `unix:user:<name>`, `unix:path:<exe path>`,
//! `unix:sha256:<lower-case hex of the executable>`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;

use mayfly_spiffe::Selector;

use crate::peer::Peer;
use crate::state::Entry;

/// Which of the costlier selectors the current entries use (the others are free).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub user: bool,
    pub path: bool,
    pub sha256: bool,
}

impl Needs {
    pub(crate) fn of(entries: &[Entry]) -> Self {
        let uses = |kind: &str| {
            entries
                .iter()
                .any(|e| e.selectors.iter().any(|s| s.kind() == kind))
        };
        Self {
            user: uses("user"),
            path: uses("path"),
            sha256: uses("sha256"),
        }
    }
}

/// An attested workload process.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub pid: i32,
    /// Start time of the process (clock ticks since boot, `/proc/<pid>/stat` field 22): with
    /// the pid, it names one process even when pids are reused.
    pub start_time: u64,
    /// Sorted.
    pub selectors: Vec<Selector>,
}

/// Why a peer was not attested. Callers answer all of them with the same generic denial; the
/// reason goes to the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttestError {
    #[error("the peer's credentials are unknown")]
    NoPeer,
    #[error("process {0} is gone or was replaced since it connected")]
    Gone(i32),
    #[error("the executable of process {0} or its end of the connection was not identified")]
    Unbound(i32),
    #[error("process {0} runs another executable than when it connected")]
    ExeChanged(i32),
    #[error("process {0} no longer holds its connection")]
    NotHolder(i32),
    #[error(
        "the connection of process {pid} is also held by process {holder}, which runs another executable"
    )]
    OtherHolder { pid: i32, holder: i32 },
    #[error(
        "process {holder}, of the same uid as process {pid}, cannot be inspected for holders of the connection"
    )]
    Uninspectable { pid: i32, holder: i32 },
    #[error("too many open files on the host to check who holds the connection of process {0}")]
    TooManyFiles(i32),
}

impl AttestError {
    /// Whether the refusal points at a process pretending to be another (worth a warning),
    /// rather than at a process that simply left.
    pub(crate) fn suspicious(&self) -> bool {
        !matches!(self, Self::NoPeer | Self::Gone(_))
    }
}

/// The process start time, `/proc/<pid>/stat` field 22. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether `pid` still runs as the process that started at `start` (a zombie has exited).
pub(crate) fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|(state, s)| s == start && state != 'Z' && state != 'X')
}

/// State (field 3) and start time (field 22) from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    stat_fields(pid).map(|(state, _, start)| (state, start))
}

/// State (field 3), parent pid (field 4) and start time (field 22) from `/proc/<pid>/stat`.
fn stat_fields(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // After the comm, fields 3 and 4 came first; field 22 is 18 further.
    let start = fields.nth(17)?.parse().ok()?;
    Some((state, ppid, start))
}

/// The parent of the process `pid` that started at `start`, as (pid, start time), while both
/// run. The parent pid is read again after the parent's start time: a parent that exited in
/// between has had its children handed to another process, so an unchanged parent pid means
/// the start time read is the parent's own, not that of a process that reused its pid.
pub(crate) fn parent(pid: i32, start: u64) -> Option<(i32, u64)> {
    let (_, ppid, child_start) = stat_fields(pid)?;
    if child_start != start || ppid <= 0 {
        return None;
    }
    let (state, _, parent_start) = stat_fields(ppid)?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    let (_, again, child_again) = stat_fields(pid)?;
    (again == ppid && child_again == start).then_some((ppid, parent_start))
}

/// The user name for `uid` from `/etc/passwd`. Only local accounts: NSS sources (LDAP, sssd)
/// are not consulted, so `unix:user` selectors for such accounts never match; use `unix:uid`.
fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        let id: u32 = f.next()?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// Identifies an executable's contents without reading them: if any of these changes, the
/// file may have changed. The ctime is included because a file's owner can write it and then
/// set its mtime back; the ctime cannot be set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

/// Executable hashes by [`FileKey`], bounded.
#[derive(Debug)]
pub(crate) struct HashCache {
    map: HashMap<FileKey, [u8; 32]>,
    max: usize,
}

impl HashCache {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    fn get(&self, key: &FileKey) -> Option<[u8; 32]> {
        self.map.get(key).copied()
    }

    fn insert(&mut self, key: FileKey, hash: [u8; 32]) {
        if self.map.len() >= self.max && !self.map.contains_key(&key) {
            // Any victim will do: a miss only costs one more hash.
            if let Some(victim) = self.map.keys().next().copied() {
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, hash);
    }
}

impl FileKey {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// The identity of the executable `pid` runs now (`/proc/<pid>/exe` names the file the
/// process runs, even if its path now names another file or nothing).
pub(crate) fn exe_key(pid: i32) -> Option<FileKey> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| FileKey::of(&m))
}

/// SHA-256 of the process's executable, read through `/proc/<pid>/exe` if that file is still
/// `expected` (checked on the open file, so the hash is of the file that was identified).
fn exe_sha256(
    pid: i32,
    expected: &FileKey,
    cache: &Mutex<HashCache>,
) -> Result<Option<[u8; 32]>, AttestError> {
    let Ok(mut file) = File::open(format!("/proc/{pid}/exe")) else {
        return Ok(None);
    };
    let Ok(meta) = file.metadata() else {
        return Ok(None);
    };
    let key = FileKey::of(&meta);
    if key != *expected {
        return Err(AttestError::ExeChanged(pid));
    }
    Ok(hash_file(&mut file, key, cache))
}

fn hash_file(file: &mut File, key: FileKey, cache: &Mutex<HashCache>) -> Option<[u8; 32]> {
    if let Some(hit) = cache.lock().ok()?.get(&key) {
        return Some(hit);
    }
    let mut hasher = mayfly_crypto::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hash = hasher.finish();
    cache.lock().ok()?.insert(key, hash);
    Some(hash)
}

/// Most `/proc/<pid>/fd` entries read to find who holds a connection; past it the connection
/// is refused rather than attested on a partial check (and the agent's work stays bounded).
const MAX_FDS_SCANNED: usize = 1 << 18;

/// Check who holds the peer's end of a connection (the socket with inode `socket_ino`): `pid`
/// must, and every other holder must run the executable `exe`. Processes the agent may not
/// inspect are skipped unless they have the peer's uid (a process can make itself
/// uninspectable to its own uid with `PR_SET_DUMPABLE`), which refuses. Fds in flight in a
/// `SCM_RIGHTS` message are in no process and cannot be seen.
fn check_holders(pid: i32, uid: u32, socket_ino: u64, exe: &FileKey) -> Result<(), AttestError> {
    let target = format!("socket:[{socket_ino}]");
    let mut scanned = 0usize;
    let mut held = false;
    let procs = std::fs::read_dir("/proc").map_err(|_| AttestError::Unbound(pid))?;
    for proc_entry in procs.flatten() {
        let Some(other) = proc_entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let fds = match std::fs::read_dir(format!("/proc/{other}/fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let owner = std::fs::metadata(format!("/proc/{other}")).map(|m| m.uid());
                if owner.is_ok_and(|owner| owner == uid) {
                    return Err(AttestError::Uninspectable { pid, holder: other });
                }
                continue;
            }
            // Exited meanwhile, or a kernel thread.
            Err(_) => continue,
        };
        let mut holds = false;
        for fd in fds.flatten() {
            scanned += 1;
            if scanned > MAX_FDS_SCANNED {
                return Err(AttestError::TooManyFiles(pid));
            }
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                holds = true;
                break;
            }
        }
        if !holds {
            continue;
        }
        if other == pid {
            held = true;
        } else if exe_key(other).as_ref() != Some(exe) {
            return Err(AttestError::OtherHolder { pid, holder: other });
        }
    }
    if held {
        Ok(())
    } else {
        Err(AttestError::NotHolder(pid))
    }
}

/// Attest `peer` (blocking: reads `/proc`, maybe hashes a file; run it off the async threads).
///
/// The process must still be the one that connected: its start time is compared with the
/// one read when the connection was accepted, before and after reading `/proc`, so a pid that
/// was reused in between is not attested as the original process. When `needs` asks for the
/// executable, it is bound to the connection (see the module documentation).
pub(crate) fn attest(
    peer: Option<&Peer>,
    needs: Needs,
    hashes: &Mutex<HashCache>,
) -> Result<Workload, AttestError> {
    let peer = peer.ok_or(AttestError::NoPeer)?;
    let (pid, connected_start) = match (peer.pid, peer.start_time) {
        (Some(pid), Some(start)) => (pid, start),
        _ => return Err(AttestError::NoPeer),
    };
    let same_process = || start_time(pid) == Some(connected_start);
    if !same_process() {
        return Err(AttestError::Gone(pid));
    }
    // The executable as it was at accept, when the executable matters.
    let bound = if needs.path || needs.sha256 {
        let (Some(exe), Some(socket_ino)) = (peer.exe, peer.socket_ino) else {
            return Err(AttestError::Unbound(pid));
        };
        if exe_key(pid) != Some(exe) {
            return Err(AttestError::ExeChanged(pid));
        }
        check_holders(pid, peer.uid, socket_ino, &exe)?;
        Some(exe)
    } else {
        None
    };
    let mut selectors = vec![Selector::Uid(peer.uid), Selector::Gid(peer.gid)];
    if needs.user
        && let Some(name) = user_name(peer.uid)
    {
        selectors.push(Selector::User(name));
    }
    if needs.path
        && let Ok(path) = std::fs::read_link(format!("/proc/{pid}/exe"))
        && let Some(path) = path.to_str()
    {
        // A deleted or replaced executable reads as "<path> (deleted)", which no entry names.
        selectors.push(Selector::Path(path.to_string()));
    }
    if needs.sha256
        && let Some(exe) = &bound
        && let Some(hash) = exe_sha256(pid, exe, hashes)?
    {
        selectors.push(Selector::Sha256(mayfly_crypto::hex(&hash)));
    }
    selectors.sort();
    if !same_process() {
        return Err(AttestError::Gone(pid));
    }
    // The path was read after the first check: the executable must still be the bound one.
    if let Some(exe) = bound
        && exe_key(pid) != Some(exe)
    {
        return Err(AttestError::ExeChanged(pid));
    }
    Ok(Workload {
        pid,
        start_time: connected_start,
        selectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_stable() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let a = start_time(pid).unwrap();
        assert_eq!(start_time(pid), Some(a));
    }

    #[test]
    fn parent_is_the_process_that_started_us() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let me = start_time(pid).unwrap();
        let ppid = i32::try_from(std::os::unix::process::parent_id()).unwrap();
        assert_eq!(parent(pid, me), Some((ppid, start_time(ppid).unwrap())));
        // A start time that is not ours names another process: no parent is given for it.
        assert_eq!(parent(pid, me + 1), None);
    }

    /// A connection from this process to itself, accepted; the client end is returned to be
    /// held (or handed to a child) by the test.
    async fn own_connection() -> (tempfile::TempDir, tokio::net::UnixStream, Peer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let peer = Peer::capture(&server).unwrap();
        // Keep the server end alive with the peer info (leaked for the test's length).
        std::mem::forget(server);
        (dir, client, peer)
    }

    const ALL: Needs = Needs {
        user: true,
        path: true,
        sha256: true,
    };

    #[tokio::test]
    async fn attests_own_process_with_needed_selectors_only() {
        let (_dir, _client, peer) = own_connection().await;
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        assert_eq!(peer.pid, Some(pid));
        let cache = Mutex::new(HashCache::new(4));
        let w = attest(Some(&peer), Needs::default(), &cache).unwrap();
        assert_eq!(w.selectors, vec![Selector::Uid(uid), Selector::Gid(gid)]);
        let w = attest(Some(&peer), ALL, &cache).unwrap();
        assert!(w.selectors.iter().any(|s| s.kind() == "path"));
        assert!(w.selectors.iter().any(|s| s.kind() == "sha256"));
        // A connection whose process was replaced (another start time) is not attested.
        let replaced = Peer {
            start_time: start_time(pid).map(|t| t + 1),
            ..peer.clone()
        };
        assert!(matches!(
            attest(Some(&replaced), Needs::default(), &cache),
            Err(AttestError::Gone(_))
        ));
        assert!(attest(None, Needs::default(), &cache).is_err());
        // Another executable than at accept (as after an execve): refused when the
        // executable matters, and only then.
        let mut other = peer.exe.unwrap();
        other.ino += 1;
        let execed = Peer {
            exe: Some(other),
            ..peer.clone()
        };
        assert!(matches!(
            attest(Some(&execed), ALL, &cache),
            Err(AttestError::ExeChanged(p)) if p == pid
        ));
        assert!(attest(Some(&execed), Needs::default(), &cache).is_ok());
        let unbound = Peer {
            socket_ino: None,
            ..peer
        };
        assert!(matches!(
            attest(Some(&unbound), ALL, &cache),
            Err(AttestError::Unbound(_))
        ));
    }

    #[tokio::test]
    async fn connection_held_by_another_executable_is_refused() {
        let (_dir, client, peer) = own_connection().await;
        let cache = Mutex::new(HashCache::new(4));
        assert!(attest(Some(&peer), ALL, &cache).is_ok());
        // A child running another executable holds the connection too (as its stdin).
        let fd = client.into_std().unwrap();
        let held = std::os::fd::OwnedFd::from(fd.try_clone().unwrap());
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .stdin(std::process::Stdio::from(held))
            .spawn()
            .unwrap();
        let holder = i32::try_from(child.id()).unwrap();
        let res = attest(Some(&peer), ALL, &cache);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            matches!(res, Err(AttestError::OtherHolder { holder: h, .. }) if h == holder),
            "{res:?}"
        );
        // Only uid and gid wanted: who holds it does not matter.
        assert!(attest(Some(&peer), Needs::default(), &cache).is_ok());
        // The process that connected no longer holds the connection.
        drop(fd);
        let res = attest(Some(&peer), ALL, &cache);
        assert!(matches!(res, Err(AttestError::NotHolder(_))), "{res:?}");
    }

    #[test]
    fn own_executable_hash_is_cached_and_matches_file() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let cache = Mutex::new(HashCache::new(2));
        let key = exe_key(pid).unwrap();
        let h = exe_sha256(pid, &key, &cache).unwrap().unwrap();
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(h, mayfly_crypto::sha256(&exe));
        assert_eq!(cache.lock().unwrap().map.len(), 1);
        assert_eq!(exe_sha256(pid, &key, &cache).unwrap().unwrap(), h);
        let mut other = key;
        other.ctime_nsec += 1;
        assert!(matches!(
            exe_sha256(pid, &other, &cache),
            Err(AttestError::ExeChanged(_))
        ));
    }
}
