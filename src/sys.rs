//! The only place with `unsafe`: thin wrappers over the Linux calls that std and mio do not
//! offer — `sendfile`, `signalfd`, `getifaddrs`, `if_nametoindex`. Each wrapper turns the C
//! convention (-1 + errno) into `io::Result` and says in one line why the call is sound.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Copies up to `count` bytes of `file` starting at `*offset` to the socket `out`, advancing
/// `*offset`. 64-bit offsets on every target (sendfile64 on 32-bit glibc, plain sendfile on
/// musl, whose off_t is always 64 bits), so files past 2 GiB work on a Raspberry Pi.
pub(crate) fn sendfile(
    out: RawFd,
    file: RawFd,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = *offset as i64;
    #[cfg(target_env = "musl")]
    // SAFETY: both fds are open for the duration of the call and `off` is a valid local.
    let n = unsafe { libc::sendfile(out, file, &mut off, count) };
    #[cfg(not(target_env = "musl"))]
    // SAFETY: both fds are open for the duration of the call and `off` is a valid local.
    let n = unsafe { libc::sendfile64(out, file, &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// The signals the daemon handles in its loop rather than by default action.
pub(crate) const HANDLED_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn handled_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread (and in threads it spawns later) and
/// returns a non-blocking signalfd that reports them. Call before spawning any thread.
pub(crate) fn signalfd() -> io::Result<OwnedFd> {
    let set = handled_sigset();
    // SAFETY: `set` is a valid, initialised sigset_t; the old mask is not requested.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: -1 asks for a new fd; `set` is valid; flags are plain constants.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A non-blocking monotonic timerfd: the loop's wake-up for a deadline closer than the
/// millisecond that epoll's timeout can express (a lookup's INTENT wait, 500 µs).
pub(crate) fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain constants; returns a new fd or -1.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: timerfd_create returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms `fd` to expire once, `after` from now (at least 1 ns: zero would disarm it).
pub(crate) fn timerfd_arm(fd: &OwnedFd, after: std::time::Duration) -> io::Result<()> {
    let after = after.max(std::time::Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as _,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not requested.
    if unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a timerfd's expiry count (so the next expiry wakes the loop again).
pub(crate) fn timerfd_drain(fd: &OwnedFd) {
    let mut n = [0u8; 8];
    // SAFETY: we read at most 8 bytes into `n`, which is exactly that large; a non-blocking
    // read of an unexpired timerfd fails with EAGAIN, which is fine here.
    let _ = unsafe { libc::read(fd.as_raw_fd(), n.as_mut_ptr().cast(), n.len()) };
}

/// Reads one pending signal number from a signalfd, or None when none is pending.
pub(crate) fn read_signal(fd: &OwnedFd) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain old data; all-zero is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: we read at most `size` bytes into `info`, which is exactly that large.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if (n as usize) < size {
        return Ok(None);
    }
    Ok(Some(info.ssi_signo as i32))
}

/// One address of one interface, as getifaddrs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub multicast: bool,
    pub loopback: bool,
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// Every IPv4/IPv6 address of every interface, with the interface's flags.
pub(crate) fn interface_addresses() -> io::Result<Vec<IfAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr of the family it names.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let (addr, prefix_len) = match family {
            libc::AF_INET => {
                // SAFETY: family is AF_INET, so both point to sockaddr_in (netmask may be null).
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                let plen = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    // SAFETY: as above.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in) };
                    u32::from_be(m.sin_addr.s_addr).count_ones() as u8
                };
                (IpAddr::V4(ip), plen)
            }
            libc::AF_INET6 => {
                // SAFETY: family is AF_INET6, so both point to sockaddr_in6.
                let a = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                let plen = if ifa.ifa_netmask.is_null() {
                    128
                } else {
                    // SAFETY: as above.
                    let m = unsafe { &*(ifa.ifa_netmask as *const libc::sockaddr_in6) };
                    m.sin6_addr
                        .s6_addr
                        .iter()
                        .map(|b| b.count_ones())
                        .sum::<u32>() as u8
                };
                (IpAddr::V6(ip), plen)
            }
            _ => continue,
        };
        let flags = ifa.ifa_flags;
        out.push(IfAddr {
            index: if_nametoindex(&name).unwrap_or(0),
            name,
            up: flags & libc::IFF_UP as u32 != 0 && flags & libc::IFF_RUNNING as u32 != 0,
            multicast: flags & libc::IFF_MULTICAST as u32 != 0,
            loopback: flags & libc::IFF_LOOPBACK as u32 != 0,
            addr,
            prefix_len,
        });
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The kernel index of an interface, or None when no interface has that name.
pub(crate) fn if_nametoindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Raises the soft open-files limit to the hard one: every connection and open file is an fd,
/// and running out mid-accept would stall the listener. Returns the new soft limit.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit read and write a local rlimit struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Err(io::Error::last_os_error());
        }
        if r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(r.rlim_cur as u64)
    }
}

/// Resident set size of this process in KiB (from /proc/self/status), for status and logs.
pub(crate) fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Asks the allocator to give free memory back to the kernel. glibc keeps freed heap pages
/// (and raises its mmap threshold after each large free), so after a sync db's index is
/// replaced the daemon would stay at its parsing peak; musl returns large blocks by itself.
pub(crate) fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Static builds (musl, `panic = "abort"`) never unwind: a panic prints its message from our
/// hook (main.rs) and aborts. What still reaches the unwinder is std's default panic hook,
/// which can print a backtrace, and the landing pads of the prebuilt std. These definitions
/// stand in for libunwind's: the backtrace walk ends at once, and everything that only an
/// unwind could call aborts. With LTO the optimiser then sees that no frame is ever
/// symbolised and drops std's symboliser (gimli, addr2line, the demangler) and libunwind:
/// ~250 KB of a ~870 KB binary. See docs/DESIGN.md, "Binary size".
/// 32-bit ARM (EHABI) has other entry points: see `no_unwinder_ehabi`.
#[cfg(all(
    target_env = "musl",
    panic = "abort",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
#[allow(non_snake_case)]
mod no_unwinder {
    use std::ffi::{c_int, c_void};

    /// `_URC_END_OF_STACK`: the walk is over.
    const END_OF_STACK: c_int = 5;

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Backtrace(
        _trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
        _arg: *mut c_void,
    ) -> c_int {
        END_OF_STACK
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Resume(_exception: *mut c_void) -> ! {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetIP(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetIPInfo(_ctx: *mut c_void, _before: *mut c_int) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetLanguageSpecificData(_ctx: *mut c_void) -> *mut c_void {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetRegionStart(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetDataRelBase(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetTextRelBase(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_SetGR(_ctx: *mut c_void, _reg: c_int, _value: usize) {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_SetIP(_ctx: *mut c_void, _value: usize) {
        std::process::abort()
    }
}

/// The same for 32-bit ARM, whose unwinder (ARM EHABI) std reaches through other entry
/// points: the personality routines every `.ARM.exidx` entry names, and the virtual register
/// set instead of `_Unwind_GetIP`.
#[cfg(all(target_env = "musl", panic = "abort", target_arch = "arm"))]
#[allow(non_snake_case)]
mod no_unwinder_ehabi {
    use std::ffi::{c_int, c_void};

    /// `_URC_END_OF_STACK`: the walk is over.
    const END_OF_STACK: c_int = 5;

    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Backtrace(
        _trace: extern "C" fn(*mut c_void, *mut c_void) -> c_int,
        _arg: *mut c_void,
    ) -> c_int {
        END_OF_STACK
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_Resume(_exception: *mut c_void) -> ! {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_VRS_Get(
        _ctx: *mut c_void,
        _class: c_int,
        _reg: u32,
        _repr: c_int,
        _value: *mut c_void,
    ) -> c_int {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_VRS_Set(
        _ctx: *mut c_void,
        _class: c_int,
        _reg: u32,
        _repr: c_int,
        _value: *mut c_void,
    ) -> c_int {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn __gnu_unwind_frame(_exception: *mut c_void, _ctx: *mut c_void) -> c_int {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetLanguageSpecificData(_ctx: *mut c_void) -> *mut c_void {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetRegionStart(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetDataRelBase(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn _Unwind_GetTextRelBase(_ctx: *mut c_void) -> usize {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn __aeabi_unwind_cpp_pr0(_s: c_int, _e: *mut c_void, _c: *mut c_void) -> c_int {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn __aeabi_unwind_cpp_pr1(_s: c_int, _e: *mut c_void, _c: *mut c_void) -> c_int {
        std::process::abort()
    }
    #[unsafe(no_mangle)]
    extern "C" fn __aeabi_unwind_cpp_pr2(_s: c_int, _e: *mut c_void, _c: *mut c_void) -> c_int {
        std::process::abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn sendfile_copies_a_range_and_advances_the_offset() {
        let dir = std::env::temp_dir().join(format!("flocon-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut off = 100;
        let n = sendfile(a.as_raw_fd(), file.as_raw_fd(), &mut off, 500).unwrap();
        assert_eq!((n, off), (500, 600));
        drop(a);
        let mut got = Vec::new();
        b.read_to_end(&mut got).unwrap();
        assert_eq!(got, &data[100..600]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn loopback_is_listed() {
        let addrs = interface_addresses().unwrap();
        assert!(
            addrs
                .iter()
                .any(|a| a.loopback && a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        assert!(if_nametoindex("lo").is_some());
        assert!(if_nametoindex("no-such-if0").is_none());
    }

    #[test]
    fn rss_is_reported() {
        assert!(rss_kib().unwrap() > 0);
        let _ = std::io::stdout().flush();
    }
}
