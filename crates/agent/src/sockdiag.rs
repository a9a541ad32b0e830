//! The inode of the other end of an accepted unix connection, from the kernel's socket
//! diagnostics (netlink `NETLINK_SOCK_DIAG`, `UNIX_DIAG_PEER`; what `ss -x` shows).
//!
//! A process that holds a connection shows it in `/proc/<pid>/fd` as `socket:[<inode>]`, where
//! the inode is that of *its* end: the agent needs it to find every process holding the
//! client's end of a connection. The kernel offers no other way to learn it; the netlink
//! messages are encoded here by hand (a few fixed structs) because the crate forbids `unsafe`.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR` and `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `AF_UNIX`.
const AF_UNIX: u8 = 1;
/// `UDIAG_SHOW_PEER` (linux/unix_diag.h).
const UDIAG_SHOW_PEER: u32 = 0x4;
/// `UNIX_DIAG_PEER`, the attribute carrying the peer's inode.
const UNIX_DIAG_PEER: u16 = 2;
/// `nlmsghdr` and `unix_diag_msg` sizes.
const NLMSG_HDR: usize = 16;
const UNIX_DIAG_MSG: usize = 16;

/// The inode of the peer's end of the connected unix socket `sock`.
pub(crate) fn peer_inode(sock: impl AsFd) -> io::Result<u64> {
    let own = rustix::fs::fstat(&sock)?.st_ino;
    let own = u32::try_from(own).map_err(|_| io::Error::other("socket inode out of range"))?;
    let nl = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )?;
    // The kernel answers while handling the send; the timeout only guards against surprises.
    rustix::net::sockopt::set_socket_timeout(
        &nl,
        rustix::net::sockopt::Timeout::Recv,
        Some(Duration::from_secs(1)),
    )?;
    let seq: u32 = 1;
    let mut req = Vec::with_capacity(NLMSG_HDR + 24);
    req.extend_from_slice(&40u32.to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    // struct unix_diag_req
    req.extend_from_slice(&[AF_UNIX, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states: any
    req.extend_from_slice(&own.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&UDIAG_SHOW_PEER.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // cookie: INET_DIAG_NOCOOKIE
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    rustix::net::sendto(&nl, &req, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
    let mut buf = vec![0u8; 8192];
    let (n, _) = rustix::net::recv(&nl, &mut buf[..], RecvFlags::empty())?;
    parse_reply(buf.get(..n).unwrap_or_default(), own)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::other("malformed sock_diag reply")
}

/// The peer inode from the kernel's reply about socket `own`.
fn parse_reply(mut b: &[u8], own: u32) -> io::Result<u64> {
    while b.len() >= NLMSG_HDR {
        let len = u32_at(b, 0).ok_or_else(malformed)? as usize;
        let kind = u16_at(b, 4).ok_or_else(malformed)?;
        if len < NLMSG_HDR || len > b.len() {
            return Err(malformed());
        }
        let msg = &b[NLMSG_HDR..len];
        match kind {
            NLMSG_ERROR => {
                let raw = msg.get(..4).ok_or_else(malformed)?;
                let errno = i32::from_ne_bytes(raw.try_into().map_err(|_| malformed())?);
                return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
            }
            NLMSG_DONE => break,
            SOCK_DIAG_BY_FAMILY if msg.len() >= UNIX_DIAG_MSG && u32_at(msg, 4) == Some(own) => {
                let mut attrs = &msg[UNIX_DIAG_MSG..];
                while attrs.len() >= 4 {
                    let alen = usize::from(u16_at(attrs, 0).ok_or_else(malformed)?);
                    let atype = u16_at(attrs, 2).ok_or_else(malformed)?;
                    if alen < 4 || alen > attrs.len() {
                        return Err(malformed());
                    }
                    if atype == UNIX_DIAG_PEER {
                        let peer = u32_at(attrs, 4).ok_or_else(malformed)?;
                        return Ok(u64::from(peer));
                    }
                    let step = (alen + 3) & !3;
                    attrs = attrs.get(step..).unwrap_or_default();
                }
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the socket has no peer",
                ));
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        b = b.get(step..).unwrap_or_default();
    }
    Err(malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_inode_is_the_other_ends_inode() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let b_ino = rustix::fs::fstat(&b).unwrap().st_ino;
        assert_eq!(peer_inode(&a).unwrap(), b_ino);
        // As /proc shows it.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&b);
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(link.to_str().unwrap(), format!("socket:[{b_ino}]"));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(parse_reply(&[], 1).is_err());
        assert!(parse_reply(&[0xff; 20], 1).is_err());
    }
}
