//! The directory that holds the agent's sockets: where it is by default, and the checks that
//! keep anyone but the agent (and root) from replacing a socket in it.
//!
//! A socket in a directory that others can write could be removed and replaced by a socket of
//! theirs (workloads would then hand their requests, and trust, to it), or its path taken
//! before the agent starts. So the directory must be owned by the agent's uid or by root, and
//! writable by neither group nor others. Workloads of other uids must still reach the socket:
//! a directory the agent creates is mode 0755 (search for everyone, write for the agent only);
//! the socket itself is mode 0777, as connecting needs write permission on it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::AgentError;

/// The socket's file name in the default directory.
const SOCKET_NAME: &str = "agent.sock";

/// The default Workload API socket: `/run/mayfly/agent.sock` for root, else
/// `$XDG_RUNTIME_DIR/mayfly/agent.sock` (the user's private runtime directory, set up by the
/// login manager). Without `XDG_RUNTIME_DIR` a non-root agent has no safe default, and says so.
pub fn default_socket_path() -> Result<PathBuf, AgentError> {
    let euid = rustix::process::geteuid().as_raw();
    default_socket_path_for(euid, std::env::var_os("XDG_RUNTIME_DIR").as_deref())
}

fn default_socket_path_for(
    euid: u32,
    xdg_runtime_dir: Option<&OsStr>,
) -> Result<PathBuf, AgentError> {
    if euid == 0 {
        return Ok(Path::new("/run/mayfly").join(SOCKET_NAME));
    }
    match xdg_runtime_dir {
        Some(dir) if Path::new(dir).is_absolute() => {
            Ok(Path::new(dir).join("mayfly").join(SOCKET_NAME))
        }
        _ => Err(AgentError::SocketDir {
            path: PathBuf::from("$XDG_RUNTIME_DIR"),
            reason: "not set (or not absolute), so a non-root agent has no safe default \
                     socket directory; pass --socket with a path in a directory only you can \
                     write, or set XDG_RUNTIME_DIR"
                .into(),
        }),
    }
}

/// Make sure the directory of `socket` exists and only the agent's uid (or root) can change
/// it: a missing directory is created mode 0755 (its parent must exist); an existing one must
/// be a directory owned by this uid or root and not writable by group or others.
pub fn prepare_socket_dir(socket: &Path) -> Result<(), AgentError> {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => {
            // The umask may have taken bits off: workloads of other uids need search access.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(
                |e| AgentError::io(format!("setting mode 0755 on {}", dir.display()), e),
            )?;
            tracing::info!(dir = %dir.display(), "created the agent's socket directory (mode 0755)");
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(AgentError::io(format!("creating {}", dir.display()), e)),
    }
    let euid = rustix::process::geteuid().as_raw();
    check_dir(&dir, euid)
}

fn check_dir(dir: &Path, euid: u32) -> Result<(), AgentError> {
    let fail = |reason: String| AgentError::SocketDir {
        path: dir.to_path_buf(),
        reason,
    };
    // Followed if a symlink: what matters is who can change the directory the socket is in.
    let meta = std::fs::metadata(dir)
        .map_err(|e| AgentError::io(format!("checking {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(fail(
            "is not a directory; remove it or choose another --socket path".into(),
        ));
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(fail(format!(
            "is owned by uid {}, not by this agent's uid {euid} or root, so its owner could \
             replace the socket; remove it (the agent creates it) or choose another --socket path",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(fail(format!(
            "is writable by {} (mode {mode:04o}), who could replace the socket; \
             run `chmod go-w {}` (0755 lets workloads of other uids connect) or choose \
             another --socket path",
            if mode & 0o002 != 0 {
                "others"
            } else {
                "its group"
            },
            dir.display()
        )));
    }
    if mode & 0o001 == 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"),
            "workloads of other uids cannot reach the agent's socket (no search permission \
             for others on its directory); use mode 0755 if they should");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_path_is_run_for_root_and_the_runtime_dir_otherwise() {
        assert_eq!(
            default_socket_path_for(0, None).unwrap(),
            Path::new("/run/mayfly/agent.sock")
        );
        assert_eq!(
            default_socket_path_for(1000, Some(OsStr::new("/run/user/1000"))).unwrap(),
            Path::new("/run/user/1000/mayfly/agent.sock")
        );
        for missing in [None, Some(OsStr::new("")), Some(OsStr::new("relative"))] {
            let err = default_socket_path_for(1000, missing).unwrap_err();
            assert!(err.to_string().contains("--socket"), "{err}");
        }
    }

    #[test]
    fn missing_directory_is_created_0755() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mayfly");
        prepare_socket_dir(&dir.join("agent.sock")).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        // Again: it exists and is fine.
        prepare_socket_dir(&dir.join("agent.sock")).unwrap();
    }

    #[test]
    fn writable_by_others_or_group_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mayfly");
        for mode in [0o777, 0o1777, 0o775, 0o757] {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = prepare_socket_dir(&dir.join("agent.sock")).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, AgentError::SocketDir { .. }), "{msg}");
            assert!(msg.contains(&dir.display().to_string()), "{msg}");
            assert!(msg.contains("chmod go-w"), "{msg}");
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        prepare_socket_dir(&dir.join("agent.sock")).unwrap();
    }

    #[test]
    fn owned_by_another_uid_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mayfly");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let euid = rustix::process::geteuid().as_raw();
        // As root the directory really is given away; otherwise the check is asked as if the
        // agent ran as another uid (both sides of the same comparison).
        let as_uid = if euid == 0 {
            std::os::unix::fs::chown(&dir, Some(4242), None).unwrap();
            0
        } else {
            euid + 1
        };
        let err = check_dir(&dir, as_uid).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&dir.display().to_string()), "{msg}");
        assert!(msg.contains("is owned by uid"), "{msg}");
        if euid == 0 {
            let err = prepare_socket_dir(&dir.join("agent.sock")).unwrap_err();
            assert!(err.to_string().contains("uid 4242"), "{err}");
        }
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("mayfly");
        std::fs::write(&file, b"").unwrap();
        let err = prepare_socket_dir(&file.join("agent.sock")).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
