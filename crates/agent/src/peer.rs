//! Unix socket plumbing shared by the gRPC and HTTP endpoints: binding, and the peer's
//! credentials captured when a connection is accepted.
//!
//! The credentials come from `SO_PEERCRED`, which the kernel records at `connect()`. With them
//! the agent reads, right away, the process start time (so a later attestation can tell
//! whether the pid still names the process that connected, and not one that reused its pid),
//! the identity of its executable (so an `execve` after connecting is seen) and the inode of
//! the peer's end of the connection (to find every process holding it).
//!
//! `SO_PEERPIDFD` would pin the process itself, but neither tokio nor rustix exposes it
//! without `unsafe`, and it would not see an `execve` anyway; start time plus executable
//! identity cover the same ground.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use crate::attest::FileKey;
use crate::error::AgentError;

/// Who is on the other end of a connection, as of its `connect()`.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
    /// Start time of `pid` when the connection was accepted.
    pub start_time: Option<u64>,
    /// The executable `pid` ran when the connection was accepted.
    pub exe: Option<FileKey>,
    /// Inode of the peer's end of the connection (`socket:[<inode>]` in `/proc/<pid>/fd`).
    pub socket_ino: Option<u64>,
}

impl Peer {
    /// The peer of the accepted connection `sock`, or `None` if the kernel gave no
    /// credentials.
    pub(crate) fn capture(sock: &UnixStream) -> Option<Self> {
        // tokio's reading, which maps a pid the kernel could not name (0) to `None`.
        let cred = sock.peer_cred().ok()?;
        let pid = cred.pid();
        let start_time = pid.and_then(crate::attest::start_time);
        let exe = pid.and_then(crate::attest::exe_key);
        let socket_ino = match crate::sockdiag::peer_inode(sock) {
            Ok(ino) => Some(ino),
            Err(e) => {
                tracing::debug!(error = %e, "the peer's socket inode is unknown");
                None
            }
        };
        Some(Self {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            start_time,
            exe,
            socket_ino,
        })
    }
}

/// Connection info attached to every request (gRPC and HTTP); `None` if the kernel gave no
/// credentials, which attestation then refuses.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo(pub Option<Arc<Peer>>);

impl PeerInfo {
    fn of(stream: &UnixStream) -> Self {
        Self(Peer::capture(stream).map(Arc::new))
    }
}

/// Bind a unix socket at `path`: its directory is created or checked first (see
/// [`crate::prepare_socket_dir`]: only the agent's uid or root may change it), a stale socket
/// file is removed (but a live one, with a server answering, is left alone and reported, and a
/// non-socket file is never removed). The socket file is made mode 0777 so any local process
/// that can search the directory can reach the agent and be attested.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    crate::rundir::prepare_socket_dir(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AgentError::Socket(format!(
                    "{} is in use by a running server; stop it or choose another path",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                AgentError::io(format!("removing stale socket {}", path.display()), e)
            })?;
        }
        Ok(_) => {
            return Err(AgentError::Socket(format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(AgentError::io(format!("checking {}", path.display()), e)),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| AgentError::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| AgentError::io(format!("setting mode 0777 on {}", path.display()), e))?;
    Ok(listener)
}

/// Accept, retrying after errors such as running out of file descriptors (which would
/// otherwise spin or stop the server).
async fn accept(listener: &UnixListener) -> (UnixStream, PeerInfo) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let info = PeerInfo::of(&stream);
                return (stream, info);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the agent socket; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An accepted connection with its peer info, for tonic.
pub(crate) struct PeerStream {
    inner: UnixStream,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The accepted connections of `listener` as a never-failing stream, for tonic's
/// `serve_with_incoming`.
pub(crate) fn incoming(
    listener: UnixListener,
) -> impl futures_util::Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
    futures_util::stream::unfold(listener, |listener| async move {
        let (inner, info) = accept(&listener).await;
        Some((Ok(PeerStream { inner, info }), listener))
    })
}

/// A unix listener for axum whose "address" is the peer info.
pub(crate) struct PeerListener(pub UnixListener);

impl axum::serve::Listener for PeerListener {
    type Io = UnixStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        accept(&self.0).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(PeerInfo(None))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PeerListener>>
    for PeerInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PeerListener>) -> Self {
        stream.remote_addr().clone()
    }
}
