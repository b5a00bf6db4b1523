//! What the line asks of the OS: sockets whose datagrams carry the kernel's arrival time, and
//! threads that wake on time on a busy machine.

use std::{
    io,
    net::{SocketAddr, UdpSocket},
    thread,
    time::{Duration, Instant},
};

/// How often blocked threads look at the stop flag.
pub(super) const POLL: Duration = Duration::from_millis(20);
/// Receive buffer of each socket (the kernel caps it at `net.core.rmem_max`), so that a burst
/// that comes while a thread waits for the CPU is queued rather than dropped.
const RECEIVE_BUFFER: usize = 4 << 20;
/// Real-time priority of the line's threads; the probe's source and sink run below them.
pub(super) const LINE_PRIORITY: i32 = 10;

/// Binds a UDP socket with a large receive buffer, a read timeout of [`POLL`] and, on Linux,
/// kernel receive timestamps.
pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(RECEIVE_BUFFER);
    socket.bind(&addr.into())?;
    let socket = UdpSocket::from(socket);
    socket.set_read_timeout(Some(POLL))?;
    #[cfg(target_os = "linux")]
    stamp::enable(&socket)?;
    Ok(socket)
}

/// Receives a datagram with the time it reached the socket. On Linux that is the kernel's
/// timestamp, so a thread that waited for the CPU does not add its wait to the datagram's delay.
pub(super) fn recv_stamped(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Instant)> {
    #[cfg(target_os = "linux")]
    return stamp::recv(socket, buf);
    #[cfg(not(target_os = "linux"))]
    socket
        .recv_from(buf)
        .map(|(len, from)| (len, from, Instant::now()))
}

/// Spawns a thread that asks for real-time scheduling (`SCHED_FIFO` at `priority`; it needs
/// root or `CAP_SYS_NICE`, and without them the thread runs as any other) and a timer slack of
/// 1 ns: the threads sleep most of the time, and when they wake a datagram is due now, not when
/// the compiler beside us yields or the kernel's default 50 µs slack has passed.
pub(super) fn spawn<T: Send + 'static>(
    name: &str,
    priority: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<T>> {
    thread::Builder::new().name(name.into()).spawn(move || {
        #[cfg(unix)]
        {
            let param = libc::sched_param {
                sched_priority: priority,
            };
            // SAFETY: sets this thread's own policy; `param` is a valid sched_param.
            let _ = unsafe {
                libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
            };
        }
        #[cfg(target_os = "linux")]
        // SAFETY: PR_SET_TIMERSLACK takes one integer argument and affects only this thread.
        let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        #[cfg(not(unix))]
        let _ = priority;
        f()
    })
}

/// Sleeps until `at`, in slices of at most [`POLL`], unless `stop` says to give up.
pub(super) fn sleep_until(at: Instant, stop: impl Fn() -> bool) -> bool {
    while let Some(wait) = at.checked_duration_since(Instant::now()) {
        if stop() {
            return false;
        }
        thread::sleep(wait.min(POLL));
    }
    true
}

#[cfg(target_os = "linux")]
mod stamp {
    use std::{
        io, mem,
        net::{SocketAddr, UdpSocket},
        os::fd::AsRawFd,
        time::{Duration, Instant},
    };

    pub(super) fn enable(socket: &UdpSocket) -> io::Result<()> {
        let on: libc::c_int = 1;
        // SAFETY: a valid fd, and a c_int option of the size given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> io::Result<(usize, SocketAddr, Instant)> {
        // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
        let mut from: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        // SAFETY: every pointer in `msg` points at a live buffer of the length given.
        let len = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, 0) };
        if len < 0 {
            return Err(io::Error::last_os_error());
        }
        let at = arrival(&msg).unwrap_or_else(Instant::now);
        Ok((len as usize, address(&from)?, at))
    }

    /// The kernel stamps in `CLOCK_REALTIME`, `Instant` counts in `CLOCK_MONOTONIC`: the
    /// stamp's age, read off the first clock, is taken back from the second.
    fn arrival(msg: &libc::msghdr) -> Option<Instant> {
        // SAFETY: `msg` was filled by recvmsg; the CMSG_ macros walk within msg_controllen.
        let stamp = unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(msg);
            let mut stamp = None;
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    stamp = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg) as *const libc::timespec
                    ));
                }
                cmsg = libc::CMSG_NXTHDR(msg, cmsg);
            }
            stamp?
        };
        let (now, wall) = clocks()?;
        let stamp = Duration::new(stamp.tv_sec as u64, stamp.tv_nsec as u32);
        let age = wall.saturating_sub(stamp);
        // A stamp from more than a second ago is a clock step, not a wait.
        (age < Duration::from_secs(1)).then(|| now - age)
    }

    /// Both clocks at one moment: the wall clock read on either side of the monotonic one, so
    /// that a thread preempted between the reads (by the line's own sender, say) is seen and
    /// read again rather than misdating the datagram by the preemption's length.
    fn clocks() -> Option<(Instant, Duration)> {
        let wall = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let mut best: Option<(Duration, Instant, Duration)> = None;
        for _ in 0..4 {
            let before = wall().ok()?;
            let now = Instant::now();
            let after = wall().ok()?;
            let spread = after.saturating_sub(before);
            if best.is_none_or(|(best, ..)| spread < best) {
                best = Some((spread, now, before + spread / 2));
            }
            if spread < Duration::from_micros(5) {
                break;
            }
        }
        best.map(|(_, now, wall)| (now, wall))
    }

    fn address(from: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
        // SAFETY: the family says which sockaddr the kernel wrote into the storage.
        unsafe {
            match from.ss_family as libc::c_int {
                libc::AF_INET => {
                    let v4 = &*(from as *const _ as *const libc::sockaddr_in);
                    let ip = u32::from_be(v4.sin_addr.s_addr);
                    Ok((ip.to_be_bytes(), u16::from_be(v4.sin_port)).into())
                }
                libc::AF_INET6 => {
                    let v6 = &*(from as *const _ as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr);
                    let port = u16::from_be(v6.sin6_port);
                    Ok(std::net::SocketAddrV6::new(ip, port, 0, v6.sin6_scope_id).into())
                }
                _ => Err(io::Error::other("not an IP address")),
            }
        }
    }
}
