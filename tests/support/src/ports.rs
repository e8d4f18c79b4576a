//! Ports for what the tests start.
//!
//! The agent under test binds port 0 and says which port it got (`agent::Agent::start`). The
//! apps it supervises and the simulator's hook servers cannot: their port is written into the
//! configuration or `hooks.json` before they start, as on the platform. A port "bound, then
//! released, then handed over" is free only until someone else binds it: with tests running in
//! parallel, another test's port 0 may be given the same number in between. So a test holds a
//! [`Reserved`] port for as long as it runs: a socket bound to it with `SO_REUSEADDR`, never
//! listening. The kernel never hands that port to anyone's port 0 while it is bound, and the app
//! that is meant to listen there still can: Linux lets a socket with `SO_REUSEADDR` bind a port
//! whose other sockets also have it and none listens, and every listener the tests start sets it
//! (Rust's, Go's, Node.js's, Python's `http.server`, Java's `ServerSocket`, the agent's).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A port on 127.0.0.1 reserved for as long as this value lives (keep it in a binding: `_held`,
/// not `_`, which drops at once).
#[must_use = "the port is reserved only while this value lives"]
pub struct Reserved {
    _socket: OwnedFd,
}

/// Reserves a port on 127.0.0.1 that the app this test starts will listen on.
pub fn reserve_port() -> (Reserved, u16) {
    let (socket, port) = bound(true);
    (Reserved { _socket: socket }, port)
}

/// A port on 127.0.0.1 that refuses every connection for as long as the returned socket lives:
/// bound without `SO_REUSEADDR`, never listening, so nothing else can listen there (under
/// emulation a readiness probe of a "closed" port once found another test's listener there).
pub fn refused_port() -> (OwnedFd, u16) {
    bound(false)
}

fn bound(reuse: bool) -> (OwnedFd, u16) {
    // SAFETY: socket takes integers; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a descriptor we just made and own alone.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reuse {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int we own, of its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_REUSEADDR: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_in is valid; we set its family and address.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: bind and getsockname read and write the sockaddr_in we own, of its length.
    unsafe {
        assert_eq!(
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                len
            ),
            0
        );
        let mut got = len;
        assert_eq!(
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut got
            ),
            0
        );
    }
    (fd, u16::from_be(addr.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The property the tests rely on, shown against what a reservation is for: while it
    /// lives, no one's port 0 gets its number (tens of thousands of tries over a range of
    /// ~28,000 ports: a released port would come back about once), and the app's listener
    /// still binds it.
    #[test]
    fn a_reserved_port_is_never_handed_out_and_its_app_can_still_listen() {
        let (held, port) = reserve_port();
        for _ in 0..40_000 {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            assert_ne!(l.local_addr().unwrap().port(), port);
        }
        let app = std::net::TcpListener::bind(("127.0.0.1", port)).expect("the app binds it");
        let _ = std::net::TcpStream::connect(("127.0.0.1", port)).expect("and serves on it");
        drop((app, held));
    }

    #[test]
    fn a_refused_port_refuses() {
        let (_held, port) = refused_port();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
    }
}
