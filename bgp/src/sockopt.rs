//! The two socket options no safe wrapper covers: TCP-MD5 keys (RFC 2385, `TCP_MD5SIG`) and
//! the minimum TTL / hop limit that GTSM needs (RFC 5082, `IP_MINTTL`, `IPV6_MINHOPCOUNT`).
//! The speaker's `unsafe` lives here, around two `setsockopt` calls (and in `allocator`,
//! around one `mallopt`).

use std::io;
use std::net::IpAddr;
use std::os::fd::RawFd;

/// The longest TCP-MD5 key Linux accepts.
pub const MD5_MAX_KEY: usize = 80;

/// `struct tcp_md5sig` from `<linux/tcp.h>`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MD5_MAX_KEY],
}

fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    let borrowed = BorrowedFd(fd);
    let sock = socket2::SockRef::from(&borrowed);
    let local = sock.local_addr()?;
    Ok(if local.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    })
}

/// A raw fd as `AsFd` for socket2 (borrowed, never closed here).
struct BorrowedFd(RawFd);

impl std::os::fd::AsFd for BorrowedFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        #[allow(unsafe_code)]
        // SAFETY: callers pass fds of sockets they own and keep open for the call.
        unsafe {
            std::os::fd::BorrowedFd::borrow_raw(self.0)
        }
    }
}

/// Sets (or with `None`, removes) the TCP-MD5 key for `peer` on a socket: on a listener it
/// covers connections from that peer, on a socket about to connect it signs the session.
/// On an IPv6 socket an IPv4 peer is given as its v4-mapped address, as the kernel expects.
pub fn set_md5_key(fd: RawFd, peer: IpAddr, key: Option<&[u8]>) -> io::Result<()> {
    let key = key.unwrap_or_default();
    if key.len() > MD5_MAX_KEY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("TCP-MD5 keys are at most {MD5_MAX_KEY} bytes"),
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: all-zero is a valid value for this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let family = socket_family(fd)?;
    let addr = match (family, peer) {
        (libc::AF_INET6, IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (_, a) => a,
    };
    let sa = socket2::SockAddr::from(std::net::SocketAddr::new(addr, 0));
    let len = (sa.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    #[allow(unsafe_code)]
    // SAFETY: copies `len` bytes of a valid sockaddr into the zeroed storage, which is at
    // least as large.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            std::ptr::addr_of_mut!(sig.addr).cast::<u8>(),
            len,
        );
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    #[allow(unsafe_code)]
    // SAFETY: `sig` is a fully initialised tcp_md5sig and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            std::ptr::addr_of!(sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Removing a key that was never set is fine.
        if key.is_empty() && e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// GTSM: drop packets from the peer whose TTL (hop limit) is below `min` (256 − hops). On an
/// IPv6 socket both the IPv6 limit and, for v4-mapped peers, the IPv4 one are set.
pub fn set_min_ttl(fd: RawFd, min: u8) -> io::Result<()> {
    let value = libc::c_int::from(min);
    if socket_family(fd)? == libc::AF_INET6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, value)?;
        // Dual-stack sockets carry IPv4 peers too; not every kernel allows this on AF_INET6.
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_MINTTL, value);
        Ok(())
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_MINTTL, value)
    }
}
