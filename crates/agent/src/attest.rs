//! Workload attestation from a unix socket peer: pid, uid and gid from `SO_PEERCRED` (taken
//! when the connection was accepted), then the executable from `/proc`.
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

/// Why a peer was not attested. Callers answer all of them with the same generic denial.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttestError {
    #[error("the peer's credentials are unknown")]
    NoPeer,
    #[error("process {0} is gone or was replaced since it connected")]
    Gone(i32),
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the comm, field 3 (state) came first; field 22 is 19 further.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
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
struct FileKey {
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

/// SHA-256 of the process's executable, read through `/proc/<pid>/exe` (the file the process
/// is running, even if the path now names another file or nothing), with the cache key taken
/// from the same open file.
fn exe_sha256(pid: i32, cache: &Mutex<HashCache>) -> Option<[u8; 32]> {
    let mut file = File::open(format!("/proc/{pid}/exe")).ok()?;
    let meta = file.metadata().ok()?;
    let key = FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        ctime: meta.ctime(),
        ctime_nsec: meta.ctime_nsec(),
    };
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

/// Attest `peer` (blocking: reads `/proc`, maybe hashes a file; run it off the async threads).
///
/// The process must still be the one that connected: its start time is compared with the
/// one read when the connection was accepted, before and after reading `/proc`, so a pid that
/// was reused in between is not attested as the original process.
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
        && let Some(hash) = exe_sha256(pid, hashes)
    {
        selectors.push(Selector::Sha256(mayfly_crypto::hex(&hash)));
    }
    selectors.sort();
    if !same_process() {
        return Err(AttestError::Gone(pid));
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
    fn attests_own_process_with_needed_selectors_only() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let peer = Peer {
            pid: Some(pid),
            uid,
            gid,
            start_time: start_time(pid),
        };
        let cache = Mutex::new(HashCache::new(4));
        let w = attest(Some(&peer), Needs::default(), &cache).unwrap();
        assert_eq!(w.selectors, vec![Selector::Uid(uid), Selector::Gid(gid)]);
        let all = Needs {
            user: true,
            path: true,
            sha256: true,
        };
        let w = attest(Some(&peer), all, &cache).unwrap();
        assert!(w.selectors.iter().any(|s| s.kind() == "path"));
        assert!(w.selectors.iter().any(|s| s.kind() == "sha256"));
        // A connection whose process was replaced (another start time) is not attested.
        let replaced = Peer {
            start_time: start_time(pid).map(|t| t + 1),
            ..peer
        };
        assert!(attest(Some(&replaced), Needs::default(), &cache).is_err());
        assert!(attest(None, Needs::default(), &cache).is_err());
    }

    #[test]
    fn own_executable_hash_is_cached_and_matches_file() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let cache = Mutex::new(HashCache::new(2));
        let h = exe_sha256(pid, &cache).unwrap();
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(h, mayfly_crypto::sha256(&exe));
        assert_eq!(cache.lock().unwrap().map.len(), 1);
        assert_eq!(exe_sha256(pid, &cache).unwrap(), h);
    }
}
