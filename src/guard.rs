//! The rules that keep hostile input from reaching or looping through flocon, as pure
//! functions for the listeners and the upstream client to call: which `Host` a front request
//! may name, how many connections one address may hold on the peer port, which connection
//! gives way when a listener is full, and which upstream addresses are flocon's own front. See
//! docs/DESIGN.md, "Faults and bans".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Whether a front request's `Host` names the loopback: `localhost`, or a loopback address
/// (`127.0.0.1`, `[::1]`, any of 127/8), with or without a port. A web page that rebinds its
/// own name to 127.0.0.1 still sends its own name, so it gets nothing from the front. No
/// `Host` at all is allowed: HTTP/1.0 tools omit it, browsers never do.
pub(crate) fn is_loopback_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let host = host.trim();
    // split off a port: "[v6]:port", "name:port"; a bare v6 literal has no brackets only
    // when it is not a Host value at all
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, "")) => v6,
            Some((v6, port)) if is_port(port.strip_prefix(':').unwrap_or("x")) => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<IpAddr>() {
        Ok(ip) => normalize(ip).is_loopback(),
        Err(_) => false,
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 5
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u16>().is_ok()
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Connections one address may hold on the peer port. A peer's daemon opens one connection
/// per file it copies from us: at most its pacman's ParallelDownloads (5 by default, rarely
/// above 10) plus a `.sig` or two. 32 leaves room for a host behind NAT with a few daemons,
/// and it takes 8 addresses to fill the 256-connection listener.
pub(crate) const MAX_PER_ADDRESS: usize = 32;

/// Live connections per address, for `MAX_PER_ADDRESS`.
#[derive(Debug, Default)]
pub(crate) struct PerAddress {
    counts: HashMap<IpAddr, usize>,
}

impl PerAddress {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Counts a new connection from `ip` if it is under the limit.
    pub(crate) fn admit(&mut self, ip: IpAddr) -> bool {
        let n = self.counts.entry(normalize(ip)).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` closed.
    pub(crate) fn release(&mut self, ip: IpAddr) {
        let ip = normalize(ip);
        if let Some(n) = self.counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.counts.get(&normalize(ip)).copied().unwrap_or(0)
    }
}

/// What a connection is doing, as far as making room goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activity {
    /// Keep-alive between two requests (it was answered at least once), since then.
    Idle(Instant),
    /// Part of a request head has arrived, since then: a slow sender, or one mid-packet.
    Partial(Instant),
    /// Nothing read yet, since it was accepted (a client's head may be in the socket).
    Fresh(Instant),
    /// Answering a request (or waiting for what answers it).
    Busy,
}

/// The connection to close so that a new one can be accepted on a full listener: the one
/// idle the longest, else the oldest partial head (a slow sender), else the oldest fresh one.
/// Every real client (pacman, a peer's daemon) sends its whole head right after connecting:
/// it is read whole or not at all, so it is never a partial head, and a fresh one gives way
/// only after every older one did. None: every connection is at work (the newcomer gets 503).
pub(crate) fn make_room<T: Copy>(conns: impl IntoIterator<Item = (T, Activity)>) -> Option<T> {
    // (rank, since): the lowest rank, then the oldest, gives way
    let mut best: Option<(T, u8, Instant)> = None;
    for (t, a) in conns {
        let (rank, since) = match a {
            Activity::Idle(s) => (0, s),
            Activity::Partial(s) => (1, s),
            Activity::Fresh(s) => (2, s),
            Activity::Busy => continue,
        };
        if best.is_none_or(|(_, r, s)| (rank, since) < (r, s)) {
            best = Some((t, rank, since));
        }
    }
    best.map(|(t, _, _)| t)
}

/// Whether an upstream address is flocon's own front (`front`, the address it listens on):
/// a mirror URL or redirect pointing there would make flocon call itself.
pub(crate) fn is_own_front(addr: SocketAddr, front: SocketAddr) -> bool {
    if addr.port() != front.port() {
        return false;
    }
    let (ip, fip) = (normalize(addr.ip()), normalize(front.ip()));
    ip == fip
        || (fip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
        || (ip.is_unspecified() && fip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_the_loopback_or_is_refused() {
        let yes = [
            "localhost",
            "LocalHost",
            "localhost:19433",
            "127.0.0.1",
            "127.0.0.1:19433",
            "127.0.0.3:80",
            "[::1]",
            "[::1]:19433",
            "[::ffff:127.0.0.1]:1",
            " localhost ",
        ];
        for h in yes {
            assert!(is_loopback_host(Some(h)), "{h}");
        }
        assert!(is_loopback_host(None));
        let no = [
            "attacker.example",
            "attacker.example:19433",
            "localhost.attacker.example",
            "localhost.",
            "127.0.0.1.nip.io",
            "192.168.1.10:19433",
            "[::2]:19433",
            "::1",
            "[::1]x",
            "[::1]:",
            "localhost:",
            "localhost:99999",
            "localhost:19433:1",
            "",
            "0.0.0.0",
        ];
        for h in no {
            assert!(!is_loopback_host(Some(h)), "{h}");
        }
    }

    #[test]
    fn per_address_limit() {
        let mut p = PerAddress::new();
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let b: IpAddr = "10.0.0.6".parse().unwrap();
        for _ in 0..MAX_PER_ADDRESS {
            assert!(p.admit(a));
        }
        assert!(!p.admit(a));
        assert!(!p.admit(mapped), "the same host over v4-mapped v6");
        assert!(p.admit(b), "another address is not affected");
        p.release(mapped);
        assert!(p.admit(a));
        for _ in 0..MAX_PER_ADDRESS + 3 {
            p.release(a);
        }
        assert_eq!(p.count(a), 0);
        assert_eq!(p.count(b), 1);
    }

    #[test]
    fn a_full_listener_closes_idle_then_slow_heads_then_fresh_never_busy() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + std::time::Duration::from_secs(n);
        use Activity::*;
        // idle the longest goes first, even with slow heads around
        let conns = [
            (1, Busy),
            (2, Partial(s(10))),
            (3, Idle(s(50))),
            (4, Idle(s(20))),
        ];
        assert_eq!(make_room(conns), Some(4));
        // no idle one: the oldest partial head, even when a fresh one is older
        let conns = [(1, Fresh(s(5))), (2, Partial(s(90))), (3, Partial(s(30)))];
        assert_eq!(make_room(conns), Some(3));
        // only fresh ones: the oldest
        assert_eq!(make_room([(1, Fresh(s(9))), (2, Fresh(s(3)))]), Some(2));
        assert_eq!(make_room([(1, Busy), (2, Busy)]), None);
        assert_eq!(make_room::<u8>([]), None);
    }

    #[test]
    fn own_front_is_refused_as_upstream() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let front = sa("127.0.0.1:19433");
        assert!(is_own_front(sa("127.0.0.1:19433"), front));
        assert!(is_own_front(sa("[::ffff:127.0.0.1]:19433"), front));
        assert!(is_own_front(sa("0.0.0.0:19433"), front));
        assert!(!is_own_front(sa("127.0.0.1:8080"), front));
        assert!(
            !is_own_front(sa("127.0.0.100:19433"), front),
            "another host's front"
        );
        let any = sa("0.0.0.0:19433");
        assert!(is_own_front(sa("127.0.0.1:19433"), any));
        assert!(is_own_front(sa("127.0.0.7:19433"), any));
        assert!(!is_own_front(sa("10.0.0.1:19433"), sa("[::1]:19433")));
        assert!(is_own_front(sa("[::1]:19433"), sa("[::1]:19433")));
    }
}
