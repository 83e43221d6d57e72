//! Discovery's sockets (docs/PROTOCOL.md): the multicast memberships per interface
//! and family, the unicast sockets that carry queries and answers, announcements, and the
//! "who has this file?" lookups. The wire format is protocol.rs; the peer table, rate limits,
//! bans and lookup decisions are peers.rs. This module only moves datagrams and keeps the
//! memberships in step with the interfaces, which it rescans cheaply (getifaddrs) because
//! interfaces and addresses come and go under a running daemon.

use crate::auth::{Keys, ReplayGuard, Stamper};
use crate::digest::{self, Digest, Intents, Published};
use crate::peers::{
    AnnounceTimer, AnswerDelay, Bans, Bucket, Candidate, CheckOutcome, CheckReason, Checks,
    IgnoreReason, Lookup, Peer, PeerEvent, PeerTable, RateLimiter, Wake,
};
use crate::protocol::{self, Announce, Answer, Arriving, Header, Message, Query};
use crate::sys::{self, IfAddr};
use crate::xorshift::XorShift;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

/// Fixed tokens: the two unicast sockets, the two query sockets, then one per membership.
pub(crate) const UNICAST_V4: Token = Token(32);
pub(crate) const UNICAST_V6: Token = Token(33);
pub(crate) const QUERY_V4: Token = Token(34);
pub(crate) const QUERY_V6: Token = Token(35);
/// Where answers to lookups arrive (the query sockets; the unicast ones when a family has
/// none): read before a lookup's deadline decides it.
const ANSWER_SOCKETS: [Token; 4] = [QUERY_V4, QUERY_V6, UNICAST_V4, UNICAST_V6];
/// Checks (peers.rs `Checks`) leave from these and their ANSWERs arrive here.
pub(crate) const CHECK_V4: Token = Token(36);
pub(crate) const CHECK_V6: Token = Token(37);
/// Send buffer asked for the check sockets (the kernel caps it at twice net.core.wmem_max):
/// a check to an address nobody holds waits in the kernel for address resolution (~3 s)
/// and is charged to its socket meanwhile.
const CHECK_SNDBUF: usize = 4 << 20;
const MEMBERSHIP_TOKEN_BASE: usize = 64;
/// Interfaces × families we keep memberships for; a host with more is unusual, and past it
/// the rest are ignored with a warning rather than growing without bound.
pub(crate) const MAX_MEMBERSHIPS: usize = 128;
/// How often interfaces are re-read: a new address is used within this time.
pub(crate) const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Backoff bounds for a membership that failed to join: retried forever.
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(60);
/// Lookups in flight at once; each is small, but a flood of local requests must not grow
/// the table without end.
pub(crate) const MAX_LOOKUPS: usize = 1024;
/// Answers per second (burst the same) to queriers that are not peers: enough for a
/// newcomer's first lookups, and a bound on what spoofed queries from addresses that do not
/// exist can leave queued behind address resolution in the unicast socket's send buffer.
pub(crate) const STRANGER_ANSWERS: u32 = 50;
/// Peers asked by one lookup at most, best ranked first (peers.rs `lookup_targets`).
pub(crate) const MAX_FANOUT: usize = crate::peers::MAX_PEERS;
/// A failed fetch of a peer's digest version is not tried again before this.
pub(crate) const DIGEST_RETRY: Duration = Duration::from_secs(10);
/// Static peers (`peer = HOST[:PORT]`) configured at most.
pub(crate) const MAX_STATIC_PEERS: usize = 64;
/// Static peer names are resolved again this often (their address may change).
pub(crate) const STATIC_RESOLVE_INTERVAL: Duration = Duration::from_secs(300);

/// Which of our sockets a unicast datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The well-known port: answers, to peers and strangers.
    Unicast,
    /// The lookups' own sockets: QUERYs.
    Query,
    /// The checks' own sockets.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

/// One (interface, family) multicast membership, joined or waiting to be.
struct Membership {
    ifname: String,
    index: u32,
    family: Family,
    /// The interface address used as the IPv4 multicast source interface.
    local_v4: Option<Ipv4Addr>,
    socket: Option<UdpSocket>,
    token: Token,
    failures: u32,
    retry_at: Instant,
}

/// What happened to a lookup, for the daemon.
pub(crate) struct Decided {
    pub id: u32,
    pub candidates: Vec<Candidate>,
    pub asked: usize,
    pub answered: usize,
}

pub(crate) struct Discovery {
    instance: u64,
    seq: u32,
    port: u16,
    only_interfaces: Vec<String>,
    /// Ours, checked when built (`Announce::new`); `uploads` is filled in at each send.
    announce: Announce,
    u4: Option<UdpSocket>,
    u6: Option<UdpSocket>,
    /// Lookups' QUERYs leave from these (ephemeral port) and their ANSWERs arrive here: a
    /// send buffer of their own, which answers to strangers and checks cannot fill.
    q4: Option<UdpSocket>,
    q6: Option<UdpSocket>,
    /// Checks leave from these: their datagrams to forged addresses wait for address
    /// resolution that never comes, and fill this send buffer, not the one that answers
    /// peers (u4/u6) nor the lookups' (q4/q6).
    c4: Option<UdpSocket>,
    c6: Option<UdpSocket>,
    memberships: Vec<Membership>,
    free_tokens: Vec<Token>,
    next_token: usize,
    pub peers: PeerTable,
    pub bans: Bans,
    limiter: RateLimiter,
    /// Addresses of our own interfaces with their prefix, for the on-link check.
    local_nets: Vec<IfAddr>,
    lookups: HashMap<u32, Lookup>,
    /// How late answers come: stretches the lookup budget on a loaded LAN.
    answer_delay: AnswerDelay,
    next_lookup: u32,
    buf: Vec<u8>,
    /// Uploads in flight, reported in announcements and answers.
    pub uploads: u16,
    pub stats: DiscoveryStats,
    announce_timer: AnnounceTimer,
    /// The loop's timer for `announce_deadline`.
    wake: Wake,
    /// Announcement jitter: only has to differ between hosts.
    rng: XorShift,
    /// Check cookies: seeded from /dev/urandom apart from the (public) instance id, so a host
    /// that does not see the check cannot guess its id.
    cookies: XorShift,
    checks: Checks,
    /// Answers to queriers that are not peers.
    strangers: Bucket,
    keys: Keys,
    stamper: Stamper,
    replay: ReplayGuard,
    /// A GOODBYE went out: queries are no longer answered, so a peer checking whether we
    /// really left hears nothing.
    leaving: bool,
    statics: Vec<StaticPeer>,
    lookup_round: u32,
    excluded: Vec<String>,
    /// Events produced where the loop passed no list (`on_announce_timer`).
    deferred: Vec<DiscoveryEvent>,
    /// Cache digests (docs/PROTOCOL.md §14): published, fetched and used to choose whom a
    /// lookup asks; off with `FLOCON_NO_DIGEST=1` (the benchmarks' reference: every peer
    /// asked, as before digests).
    pub digests: bool,
    /// Ours.
    pub published: Published,
    intents: Intents,
    /// A peer announced a digest version we do not hold.
    digest_wanted: bool,
    /// Fetches tried: (instance, version, when), so a failing one waits DIGEST_RETRY.
    digest_tries: Vec<(u64, u32, Instant)>,
    /// DIGEST datagrams of instances whose admission check is in flight: (instance, version).
    early_digests: Vec<(u64, u32)>,
}

/// A `peer = HOST[:PORT]` line: announced to and accepted from by unicast.
#[derive(Debug, Clone)]
pub(crate) struct StaticPeer {
    pub host: String,
    pub port: u16,
    pub addrs: Vec<SocketAddr>,
    /// When the name should be resolved (again); never for a literal address.
    pub resolve_at: Option<Instant>,
}

#[derive(Default, Debug, Clone)]
pub(crate) struct DiscoveryStats {
    pub datagrams_in: u64,
    pub rejected: u64,
    pub queries_answered: u64,
    /// Keyed mode: datagrams dropped for a bad MAC, a stale stamp or a replay.
    pub auth_rejected: u64,
    /// Sends that failed at once (full send buffer, unreachable): dropped, never waited on.
    pub send_errors: u64,
    pub checks_sent: u64,
    pub checks_failed: u64,
    /// Datagrams over a source's rate limit.
    pub rate_limited: u64,
    /// Queries from strangers (neither a peer's host nor a static peer) left unanswered
    /// because their shared budget was spent.
    pub strangers_refused: u64,
    /// Claims a check proved false: a GOODBYE in the name of a peer that still answers, a
    /// new instance at an address where the known peer still answers.
    pub claims_refuted: u64,
    /// Datagrams sent (every copy) and their bytes.
    pub datagrams_out: u64,
    pub bytes_out: u64,
    /// Lookups decided without a QUERY (every digest said no), INTENTs sent.
    pub lookups_unasked: u64,
    pub intents_sent: u64,
    /// Peers' digests fetched and refused (a body that failed validation).
    pub digests_fetched: u64,
    pub digests_refused: u64,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = io::Read::read_exact(&mut f, &mut b);
    }
    let v = u64::from_ne_bytes(b);
    if v != 0 {
        return v;
    }
    // /dev/urandom unavailable (odd sandbox): time and pid still make collisions unlikely
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_nanos() as u64) ^ ((std::process::id() as u64) << 32)
}

fn udp_socket(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    s.set_reuse_address(true)?;
    // several daemons on one host (tests, --peer-addr) each get every multicast datagram
    s.set_reuse_port(true)?;
    Ok(s)
}

pub(crate) struct Identity {
    pub announce_interval: Duration,
    pub port: u16,
    pub peer_addr: Option<IpAddr>,
    pub interfaces: Vec<String>,
    /// What we announce, built by the validating `Announce::new`.
    pub announce: Announce,
    pub exclude_interfaces: Vec<String>,
    pub keys: Keys,
    /// `peer = HOST[:PORT]` values.
    pub static_peers: Vec<String>,
}

impl Discovery {
    pub(crate) fn new(id: Identity, registry: &Registry) -> io::Result<Discovery> {
        let instance = random_u64();
        let (u4, u6) = Self::unicast_sockets(id.port, id.peer_addr)?;
        let (q4, q6) = Self::unicast_sockets(0, id.peer_addr)?;
        let (c4, c6) = Self::unicast_sockets(0, id.peer_addr)?;
        for s in [&c4, &c6].into_iter().flatten() {
            let _ = socket2::SockRef::from(s).set_send_buffer_size(CHECK_SNDBUF);
        }
        let mut statics = Vec::new();
        for s in id.static_peers.iter().take(MAX_STATIC_PEERS) {
            let (host, port) = split_host_port(s, id.port)
                .ok_or_else(|| io::Error::other(format!("peer = {s}: not HOST[:PORT]")))?;
            let literal = host.parse::<IpAddr>().ok();
            statics.push(StaticPeer {
                addrs: literal
                    .map(|ip| vec![SocketAddr::new(ip, port)])
                    .unwrap_or_default(),
                resolve_at: literal.is_none().then(Instant::now),
                host,
                port,
            });
        }
        let mut d = Discovery {
            instance,
            seq: 0,
            port: id.port,
            only_interfaces: id.interfaces,
            announce: id.announce,
            u4: u4.map(UdpSocket::from_std),
            u6: u6.map(UdpSocket::from_std),
            q4: q4.map(UdpSocket::from_std),
            q6: q6.map(UdpSocket::from_std),
            c4: c4.map(UdpSocket::from_std),
            c6: c6.map(UdpSocket::from_std),
            memberships: Vec::new(),
            free_tokens: Vec::new(),
            next_token: MEMBERSHIP_TOKEN_BASE,
            peers: PeerTable::new(instance),
            bans: Bans::new(),
            limiter: RateLimiter::new(),
            local_nets: Vec::new(),
            lookups: HashMap::new(),
            answer_delay: AnswerDelay::default(),
            // unpredictable ids: a host that does not see our QUERYs cannot answer them
            next_lookup: (random_u64() as u32).max(1),
            buf: Vec::with_capacity(protocol::MAX_DATAGRAM),
            uploads: 0,
            stats: DiscoveryStats::default(),
            announce_timer: AnnounceTimer::with_interval(Instant::now(), id.announce_interval),
            wake: Wake::default(),
            rng: XorShift::new(instance),
            cookies: XorShift::new(random_u64()),
            checks: Checks::new(),
            strangers: Bucket::new(STRANGER_ANSWERS, STRANGER_ANSWERS),
            keys: id.keys,
            stamper: Stamper::default(),
            replay: ReplayGuard::new(),
            leaving: false,
            statics,
            lookup_round: 0,
            excluded: id.exclude_interfaces,
            deferred: Vec::new(),
            digests: std::env::var_os("FLOCON_NO_DIGEST").is_none_or(|v| v != "1"),
            published: Published::new(
                std::env::var("FLOCON_DIGEST_GAP_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .map_or(digest::DIGEST_GAP, Duration::from_millis),
            ),
            intents: Intents::default(),
            digest_wanted: false,
            digest_tries: Vec::new(),
            early_digests: Vec::new(),
        };
        d.peers
            .set_expiry(id.announce_interval * crate::peers::EXPIRY_INTERVALS);
        if let Some(s) = &mut d.u4 {
            registry.register(s, UNICAST_V4, Interest::READABLE)?;
        }
        if let Some(s) = &mut d.u6 {
            registry.register(s, UNICAST_V6, Interest::READABLE)?;
        }
        if let Some(s) = &mut d.q4 {
            registry.register(s, QUERY_V4, Interest::READABLE)?;
        }
        if let Some(s) = &mut d.q6 {
            registry.register(s, QUERY_V6, Interest::READABLE)?;
        }
        if let Some(s) = &mut d.c4 {
            registry.register(s, CHECK_V4, Interest::READABLE)?;
        }
        if let Some(s) = &mut d.c6 {
            registry.register(s, CHECK_V6, Interest::READABLE)?;
        }
        Ok(d)
    }

    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// Unicast checks in flight (admissions and goodbyes), for the status page.
    pub(crate) fn checks_pending(&self) -> usize {
        self.checks.len()
    }

    /// The sockets queries and answers travel on, bound to the peer port. Their multicast
    /// reception is switched off: memberships have sockets of their own.
    fn unicast_sockets(
        port: u16,
        peer_addr: Option<IpAddr>,
    ) -> io::Result<(Option<std::net::UdpSocket>, Option<std::net::UdpSocket>)> {
        let bind_err = |addr: SocketAddr, e: io::Error| {
            let hint = if e.kind() == io::ErrorKind::AddrInUse {
                " (is another flocon running?)"
            } else {
                ""
            };
            io::Error::new(
                e.kind(),
                format!("cannot bind UDP {addr} for peers: {e}{hint}"),
            )
        };
        let v4_addr = match peer_addr {
            Some(IpAddr::V4(a)) => Some(a),
            Some(IpAddr::V6(_)) => None,
            None => Some(Ipv4Addr::UNSPECIFIED),
        };
        let v6_addr = match peer_addr {
            Some(IpAddr::V6(a)) => Some(a),
            Some(IpAddr::V4(_)) => None,
            None => Some(Ipv6Addr::UNSPECIFIED),
        };
        let u4 = match v4_addr {
            Some(a) => {
                let s = Socket::new(
                    Domain::IPV4,
                    Type::DGRAM.nonblocking().cloexec(),
                    Some(Protocol::UDP),
                )?;
                s.set_reuse_address(true)?;
                let _ = s.set_multicast_all_v4(false);
                s.set_multicast_ttl_v4(protocol::MULTICAST_HOPS)?;
                s.set_multicast_loop_v4(true)?;
                let addr = SocketAddr::new(IpAddr::V4(a), port);
                s.bind(&addr.into()).map_err(|e| bind_err(addr, e))?;
                Some(s.into())
            }
            None => None,
        };
        let u6 = match v6_addr {
            Some(a) => {
                let s = Socket::new(
                    Domain::IPV6,
                    Type::DGRAM.nonblocking().cloexec(),
                    Some(Protocol::UDP),
                )?;
                s.set_reuse_address(true)?;
                s.set_only_v6(true)?;
                let _ = s.set_multicast_all_v6(false);
                s.set_multicast_hops_v6(protocol::MULTICAST_HOPS)?;
                s.set_multicast_loop_v6(true)?;
                let addr = SocketAddr::new(IpAddr::V6(a), port);
                match s.bind(&addr.into()) {
                    Ok(()) => Some(s.into()),
                    // a host with IPv6 disabled still discovers over IPv4
                    Err(e)
                        if peer_addr.is_none() && e.kind() == io::ErrorKind::AddrNotAvailable =>
                    {
                        None
                    }
                    Err(e) => return Err(bind_err(addr, e)),
                }
            }
            None => None,
        };
        Ok((u4, u6))
    }

    /// Encodes `msg` into `self.buf`, with the MAC trailer when a key is configured.
    fn encode(&mut self, h: &Header, msg: &Message) {
        protocol::encode(h, msg, &mut self.buf);
        if !self.keys.is_empty() {
            protocol::set_flags(&mut self.buf, protocol::FLAG_AUTH);
            let stamp = self.stamper.next(unix_micros());
            self.keys.seal(&mut self.buf, stamp);
        }
    }

    fn next_seq(&mut self) -> Header {
        self.seq = self.seq.wrapping_add(1);
        Header {
            instance: self.instance,
            seq: self.seq,
        }
    }

    fn wanted_interface(&self, a: &IfAddr) -> bool {
        if !a.up || !a.multicast && !a.loopback {
            return false;
        }
        // the loopback interface only when asked for: it reaches no other host
        self.interface_allowed(&a.name) && (!self.only_interfaces.is_empty() || !a.loopback)
    }

    /// Re-reads interfaces and joins or leaves memberships to match. Cheap enough to run
    /// every RESCAN_INTERVAL. Returns true when a membership was newly joined (announce).
    pub(crate) fn rescan(&mut self, registry: &Registry, now: Instant) -> bool {
        let addrs = match sys::interface_addresses() {
            Ok(a) => a,
            Err(e) => {
                warn!("reading interfaces: {e}");
                return false;
            }
        };
        // which (ifname, family) we want, with the IPv4 address to send from
        let mut wanted: Vec<(String, u32, Family, Option<Ipv4Addr>)> = Vec::new();
        for a in addrs.iter().filter(|a| self.wanted_interface(a)) {
            let family = match a.addr {
                IpAddr::V4(_) if self.u4.is_some() => Family::V4,
                // IPv6 multicast on ff02:: needs a link-local address on the interface (the
                // source the kernel picks); loopback has none, and Linux drops IPv6 multicast
                // sent on it anyway, so `lo` gets IPv4 only
                IpAddr::V6(v6) if self.u6.is_some() && v6.is_unicast_link_local() => Family::V6,
                _ => continue,
            };
            let local_v4 = match a.addr {
                IpAddr::V4(v4) => Some(v4),
                _ => None,
            };
            if !wanted
                .iter()
                .any(|(n, _, f, _)| *n == a.name && *f == family)
            {
                wanted.push((a.name.clone(), a.index, family, local_v4));
            }
        }
        for name in &self.only_interfaces {
            if !addrs.iter().any(|a| a.name == *name) && sys::if_nametoindex(name).is_none() {
                debug!("interface {name} not present (yet)");
            }
        }
        self.local_nets = addrs;
        // leave what is no longer wanted (interface gone, down, address removed, index changed)
        let mut i = 0;
        while i < self.memberships.len() {
            let m = &self.memberships[i];
            let keep = wanted.iter().any(|(n, idx, f, v4)| {
                *n == m.ifname
                    && *idx == m.index
                    && *f == m.family
                    && (m.family == Family::V6 || *v4 == m.local_v4)
            });
            if keep {
                i += 1;
            } else {
                let mut m = self.memberships.swap_remove(i);
                if let Some(mut s) = m.socket.take() {
                    let _ = registry.deregister(&mut s);
                    info!("left multicast on {} ({:?})", m.ifname, m.family);
                }
                self.free_tokens.push(m.token);
            }
        }
        for (ifname, index, family, local_v4) in wanted {
            if self
                .memberships
                .iter()
                .any(|m| m.ifname == ifname && m.family == family)
            {
                continue;
            }
            if self.memberships.len() >= MAX_MEMBERSHIPS {
                warn!("too many interfaces; not joining on {ifname}");
                break;
            }
            let token = self.free_tokens.pop().unwrap_or_else(|| {
                self.next_token += 1;
                Token(self.next_token - 1)
            });
            self.memberships.push(Membership {
                ifname,
                index,
                family,
                local_v4,
                socket: None,
                token,
                failures: 0,
                retry_at: now,
            });
        }
        let mut joined = false;
        for i in 0..self.memberships.len() {
            if self.memberships[i].socket.is_none() && self.memberships[i].retry_at <= now {
                joined |= self.join(i, registry, now);
            }
        }
        joined
    }

    fn join(&mut self, i: usize, registry: &Registry, now: Instant) -> bool {
        let m = &mut self.memberships[i];
        let result = (|| -> io::Result<UdpSocket> {
            let sock = match m.family {
                Family::V4 => {
                    let s = udp_socket(Domain::IPV4)?;
                    let _ = s.set_multicast_all_v4(false);
                    s.bind(
                        &SocketAddr::V4(SocketAddrV4::new(protocol::GROUP_V4, self.port)).into(),
                    )?;
                    s.join_multicast_v4_n(
                        &protocol::GROUP_V4,
                        &socket2::InterfaceIndexOrAddress::Index(m.index),
                    )?;
                    s
                }
                Family::V6 => {
                    let s = udp_socket(Domain::IPV6)?;
                    s.set_only_v6(true)?;
                    let _ = s.set_multicast_all_v6(false);
                    // a link-local group is bound together with its interface
                    s.bind(
                        &SocketAddr::V6(SocketAddrV6::new(
                            protocol::GROUP_V6,
                            self.port,
                            0,
                            m.index,
                        ))
                        .into(),
                    )?;
                    s.join_multicast_v6(&protocol::GROUP_V6, m.index)?;
                    s
                }
            };
            let mut sock = UdpSocket::from_std(sock.into());
            registry.register(&mut sock, m.token, Interest::READABLE)?;
            Ok(sock)
        })();
        match result {
            Ok(s) => {
                info!("joined multicast on {} ({:?})", m.ifname, m.family);
                m.socket = Some(s);
                m.failures = 0;
                true
            }
            Err(e) => {
                m.failures = m.failures.saturating_add(1);
                let backoff = JOIN_RETRY_MIN
                    .saturating_mul(1 << m.failures.min(6))
                    .min(JOIN_RETRY_MAX);
                m.retry_at = now + backoff;
                if m.failures <= 3 || m.failures.is_multiple_of(10) {
                    warn!(
                        "joining multicast on {} ({:?}) failed: {e}; retrying in {:?}",
                        m.ifname, m.family, backoff
                    );
                }
                false
            }
        }
    }

    /// SIGUSR2: drop every membership and join again at once.
    pub(crate) fn rejoin(&mut self, registry: &Registry, now: Instant) {
        for m in &mut self.memberships {
            if let Some(mut s) = m.socket.take() {
                let _ = registry.deregister(&mut s);
            }
            m.failures = 0;
            m.retry_at = now;
        }
        self.rescan(registry, now);
    }

    pub(crate) fn joined(&self) -> Vec<String> {
        self.memberships
            .iter()
            .filter(|m| m.socket.is_some())
            .map(|m| {
                format!(
                    "{}/{}",
                    m.ifname,
                    if m.family == Family::V4 {
                        "ipv4"
                    } else {
                        "ipv6"
                    }
                )
            })
            .collect()
    }

    fn announce_message(&self) -> Message {
        Message::Announce(Announce {
            uploads: self.uploads,
            ..self.announce.clone()
        })
    }

    /// Sends `msg` to the groups on every joined interface.
    fn multicast(&mut self, msg: &Message) {
        let h = self.next_seq();
        self.encode(&h, msg);
        // static peers get the same round by unicast (multicast does not cross routers)
        for sp in &self.statics {
            for a in &sp.addrs {
                let sock = if a.is_ipv4() { &self.u4 } else { &self.u6 };
                if let Some(s) = sock {
                    match s.send_to(&self.buf, *a) {
                        Ok(_) => {
                            self.stats.datagrams_out += 1;
                            self.stats.bytes_out += self.buf.len() as u64;
                        }
                        Err(_) => self.stats.send_errors += 1,
                    }
                }
            }
        }
        for m in &self.memberships {
            if m.socket.is_none() {
                continue;
            }
            let r = match m.family {
                Family::V4 => match (&self.u4, m.local_v4) {
                    (Some(u4), Some(local)) => set_mcast_if_v4(u4, local).and_then(|_| {
                        u4.send_to(
                            &self.buf,
                            SocketAddr::V4(SocketAddrV4::new(protocol::GROUP_V4, self.port)),
                        )
                    }),
                    _ => continue,
                },
                Family::V6 => match &self.u6 {
                    Some(u6) => set_mcast_if_v6(u6, m.index).and_then(|_| {
                        u6.send_to(
                            &self.buf,
                            SocketAddr::V6(SocketAddrV6::new(
                                protocol::GROUP_V6,
                                self.port,
                                0,
                                m.index,
                            )),
                        )
                    }),
                    None => continue,
                },
            };
            match r {
                Ok(_) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += self.buf.len() as u64;
                }
                Err(e) => debug!("multicast on {} ({:?}): {e}", m.ifname, m.family),
            }
        }
    }

    /// When discovery next has work: the next announcement or a check's retry or timeout.
    fn announce_deadline(&self) -> Instant {
        let t = self.announce_timer.deadline();
        self.checks.next_deadline().map_or(t, |c| c.min(t))
    }

    /// The instant the loop must set a `Timer::Announce` for, or None when one it holds
    /// already comes at or before the next deadline (peers.rs `Wake`). Called after anything
    /// that may bring a deadline forward, and after every firing of that timer.
    pub(crate) fn wake_at(&mut self) -> Option<Instant> {
        let deadline = self.announce_deadline();
        self.wake.arm(deadline)
    }

    /// The loop's `Timer::Announce` fired at `now`: announces on every joined interface if
    /// the timer says so (start-up burst, then every 30 s ± 25 %, or sooner after `hurry`)
    /// and runs due checks (their removals end lookups at their own deadline). Returns
    /// `wake_at`: the loop arms again whatever was done, since the deadline this timer was
    /// set for may have gone (a check answered early) and it may be the only one there was.
    pub(crate) fn on_announce_timer(&mut self, now: Instant) -> Option<Instant> {
        self.wake.fired(now);
        self.announce_if_due(now);
        self.wake_at()
    }

    fn announce_if_due(&mut self, now: Instant) {
        if self.checks.next_deadline().is_some_and(|t| t <= now) {
            // the loop's announce timer has no event list: decisions wait for the next call
            // that has one (every lookup has a deadline timer, which comes with one)
            let mut events = std::mem::take(&mut self.deferred);
            self.run_checks(now, &mut events);
            self.deferred = events;
        }
        if !self.announce_timer.is_due(now) {
            return;
        }
        let msg = self.announce_message();
        self.multicast(&msg);
        if self.digests && self.published.version() != 0 {
            self.multicast(&Message::Digest(self.published.version()));
        }
        let r = self.rng.next();
        self.announce_timer.sent(now, r);
    }

    /// Someone new should hear from us soon (by multicast: never a unicast reply to an
    /// announcement, which a spoofed source could turn into amplification).
    /// Returns when the announce timer should fire next (`wake_at`).
    pub(crate) fn hurry_announce(&mut self, now: Instant) -> Option<Instant> {
        let r = self.rng.next();
        self.announce_timer.hurry(now, r);
        self.wake_at()
    }

    /// Says goodbye and stops answering queries: peers that check whether we really left
    /// (docs/PROTOCOL.md §8.4) hear nothing and drop us at once.
    pub(crate) fn goodbye(&mut self) {
        self.multicast(&Message::Goodbye);
        self.leaving = true;
    }

    /// Sends one datagram from the well-known socket (`query_socket` false) or from the
    /// query socket. A datagram that cannot leave now is dropped: nothing ever waits on one
    /// destination.
    /// Sends `msg` to `to` from the socket `via` names; false when it could not be sent now
    /// (dropped, never waited on).
    fn send_unicast(&mut self, to: SocketAddr, msg: &Message, via: Via) -> bool {
        let h = self.next_seq();
        self.encode(&h, msg);
        let sock = match (to.is_ipv4(), via) {
            (true, Via::Unicast) => &self.u4,
            (false, Via::Unicast) => &self.u6,
            (true, Via::Query) => &self.q4,
            (false, Via::Query) => &self.q6,
            (true, Via::Check) => &self.c4,
            (false, Via::Check) => &self.c6,
        };
        let Some(s) = sock else { return false };
        if let Err(e) = s.send_to(&self.buf, to) {
            self.stats.send_errors += 1;
            debug!("send to {to}: {e}");
            return false;
        }
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += self.buf.len() as u64;
        true
    }

    /// Whether `ip` is one of the static peers' current addresses.
    fn is_static(&self, ip: IpAddr) -> bool {
        self.statics
            .iter()
            .any(|s| s.addrs.iter().any(|a| canonical_ip(a.ip()) == ip))
    }

    /// Static peers whose name should be resolved now: (index, host, port). The caller
    /// resolves off the loop and reports with `static_resolved`.
    pub(crate) fn static_resolutions_due(&mut self, now: Instant) -> Vec<(usize, String, u16)> {
        let mut out = Vec::new();
        for (i, s) in self.statics.iter_mut().enumerate() {
            if s.resolve_at.is_some_and(|t| t <= now) {
                // re-armed by the answer; a lost answer is retried after the interval
                s.resolve_at = Some(now + STATIC_RESOLVE_INTERVAL);
                out.push((i, s.host.clone(), s.port));
            }
        }
        out
    }

    /// The addresses a static peer's name resolved to (an error keeps the previous ones).
    pub(crate) fn static_resolved(&mut self, index: usize, addrs: io::Result<Vec<SocketAddr>>) {
        let Some(s) = self.statics.get_mut(index) else {
            return;
        };
        match addrs {
            Ok(a) if !a.is_empty() => {
                if a != s.addrs {
                    info!("static peer {} is at {:?}", s.host, a);
                }
                s.addrs = a.into_iter().take(4).collect();
            }
            Ok(_) => warn!("static peer {}: no address", s.host),
            Err(e) => warn!("static peer {}: {e}", s.host),
        }
    }

    pub(crate) fn static_peers(&self) -> &[StaticPeer] {
        &self.statics
    }

    /// Whether flocon uses the interface named `name` at all: not excluded, and among
    /// `--interface` when that is given.
    fn interface_allowed(&self, name: &str) -> bool {
        !self.excluded.iter().any(|e| e == name)
            && (self.only_interfaces.is_empty() || self.only_interfaces.iter().any(|i| i == name))
    }

    /// Whether a peer connection that arrived at local address `local` may be served: it
    /// came in on an interface flocon uses (loopback always: tests, `--peer-addr 127.0.0.x`).
    /// A laptop with `exclude-interface = wlan0` serves nothing on its café Wi-Fi.
    pub(crate) fn accepts_on(&self, local: IpAddr) -> bool {
        let local = canonical_ip(local);
        local.is_loopback()
            || self
                .local_nets
                .iter()
                .any(|a| canonical_ip(a.addr) == local && self.interface_allowed(&a.name))
    }

    /// The `Flocon-Auth` header for a request to a peer's file server, when keyed.
    pub(crate) fn auth_header(&self, method: &str, path: &str) -> Option<(String, String)> {
        let v = self
            .keys
            .sign_request(method, path, crate::server::unix_now())?;
        Some((crate::auth::HTTP_HEADER.to_string(), v))
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether `src` is on one of our links: loopback, an IPv6 link-local address, or inside
    /// the prefix of one of our interface addresses. Datagrams from elsewhere are ignored.
    fn on_link(&self, src: &SocketAddr) -> bool {
        let ip = canonical_ip(src.ip());
        if ip.is_loopback() {
            return true;
        }
        if let IpAddr::V6(v6) = ip
            && v6.is_unicast_link_local()
        {
            return true;
        }
        self.local_nets
            .iter()
            .any(|n| same_prefix(&n.addr, &ip, n.prefix_len))
    }

    /// Reads every pending datagram on `token`'s socket. Returns lookups that completed.
    pub(crate) fn on_readable(
        &mut self,
        token: Token,
        now: Instant,
        has_file: &mut HasFile,
        events: &mut Vec<DiscoveryEvent>,
    ) {
        events.append(&mut self.deferred);
        let mut buf = [0u8; protocol::RECV_BUFFER];
        loop {
            let recv = {
                let sock = match token {
                    UNICAST_V4 => self.u4.as_ref(),
                    UNICAST_V6 => self.u6.as_ref(),
                    QUERY_V4 => self.q4.as_ref(),
                    QUERY_V6 => self.q6.as_ref(),
                    CHECK_V4 => self.c4.as_ref(),
                    CHECK_V6 => self.c6.as_ref(),
                    t => self
                        .memberships
                        .iter()
                        .find(|m| m.token == t)
                        .and_then(|m| m.socket.as_ref()),
                };
                let Some(sock) = sock else { return };
                sock.recv_from(&mut buf)
            };
            match recv {
                Ok((n, src)) => self.on_datagram(&buf[..n], src, now, has_file, events),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surface here on UDP sockets; they are not fatal
                    debug!("recv: {e}");
                    return;
                }
            }
        }
    }

    fn on_datagram(
        &mut self,
        data: &[u8],
        src: SocketAddr,
        now: Instant,
        has_file: &mut HasFile,
        events: &mut Vec<DiscoveryEvent>,
    ) {
        self.stats.datagrams_in += 1;
        let src = canonical_addr(src);
        if !crate::peers::plausible_source(&src) {
            self.stats.rejected += 1;
            return;
        }
        // With a key, the MAC and the replay window come before anything else looks at the
        // bytes (docs/PROTOCOL.md §10.3); an authenticated sender may be off-link.
        let (body, flags) = if self.keys.is_empty() {
            (data, 0)
        } else {
            match self.authenticate(data) {
                Some(body) => (body, protocol::FLAG_AUTH),
                None => {
                    self.stats.rejected += 1;
                    self.stats.auth_rejected += 1;
                    return;
                }
            }
        };
        if flags == 0 && !self.on_link(&src) && !self.is_static(src.ip()) {
            self.stats.rejected += 1;
            return;
        }
        let (h, msg) = match protocol::decode_with_flags(body, flags) {
            Ok(x) => x,
            Err(e) => {
                self.stats.rejected += 1;
                debug!("bad datagram from {src}: {e:?}");
                return;
            }
        };
        if h.instance == self.instance {
            return;
        }
        // answers are matched to our own queries; everything else costs tokens per source
        if !matches!(msg, Message::Answer(_) | Message::Arriving(_))
            && !self.limiter.allow(src.ip(), now)
        {
            self.stats.rejected += 1;
            self.stats.rate_limited += 1;
            return;
        }
        match msg {
            Message::Announce(a) => match self.peers.on_announce(src, &h, &a, now) {
                PeerEvent::Ignored(IgnoreReason::Unverified) => {
                    if !self.checks.pending_for(h.instance) {
                        let reason = CheckReason::Admit(Box::new((h.clone(), a)));
                        self.start_check(src, h.instance, reason, now, events);
                    }
                }
                PeerEvent::Ignored(why) => debug!("announcement from {src} ignored: {why:?}"),
                PeerEvent::New { dropped } | PeerEvent::Updated { dropped } => {
                    if let Some(old) = dropped {
                        self.dropped(&old, events, now);
                    }
                }
            },
            Message::Goodbye => {
                if let Some(inst) = self.peers.on_goodbye(src, &h)
                    && !self.checks.pending_for(inst)
                {
                    debug!("goodbye from {}: checking", short_id(inst));
                    self.start_check(src, inst, CheckReason::Goodbye, now, events);
                }
            }
            Message::Query(q) => {
                self.answer_query((src, h.instance), &q, body.len(), has_file, now, false)
            }
            Message::Digest(version) => {
                let from_peer = self.peers.by_addr(&src).map(|p| p.instance) == Some(h.instance);
                // a newcomer being checked: kept for its admission (bounded like the checks)
                if self.digests
                    && version != 0
                    && !from_peer
                    && self.peers.get(h.instance).is_none()
                    && self.checks.pending_for(h.instance)
                {
                    self.early_digests.retain(|e| e.0 != h.instance);
                    if self.early_digests.len() >= crate::peers::MAX_CHECKS {
                        self.early_digests.remove(0);
                    }
                    self.early_digests.push((h.instance, version));
                }
                if self.digests
                    && from_peer
                    && version != 0
                    && let Some(d) = self.peers.digest_mut(h.instance)
                    && d.announced(version)
                {
                    self.digest_wanted = true;
                }
            }
            Message::Intent(q) => {
                // from a peer's own address only (its unicast socket): never answered
                if !self.digests
                    || self.leaving
                    || self.peers.by_addr(&src).map(|p| p.instance) != Some(h.instance)
                {
                    return;
                }
                self.intents.note(&q.name, h.instance, now);
                // answered like a QUERY, but only with what the asker cannot know: a file
                // here that our digest does not hold yet, a copy on its way here, our own
                // lookup for it in flight (LOOKING; front.rs then settles which host
                // fetches, docs/PROTOCOL.md §8.6); never DON'T HAVE
                self.answer_query((src, h.instance), &q, body.len(), has_file, now, true);
            }
            Message::Answer(a) => {
                if let Some(outcome) = self.checks.on_answer(src, a.id, h.instance) {
                    if let CheckOutcome::Confirmed(c) = &outcome {
                        (self.answer_delay).observe(now.saturating_duration_since(c.sent), now);
                    }
                    return self.on_check(outcome, now, events);
                }
                let Some(peer) = self.peers.by_addr(&src).map(|p| p.instance) else {
                    debug!("answer from unknown {src} ignored");
                    return;
                };
                if peer != h.instance {
                    return;
                }
                self.answer_delay.answered(a.id, now);
                if let Some(l) = self.lookups.get_mut(&a.id) {
                    let counted = l.is_pending(peer);
                    let done = l.on_answer(peer, &a) && l.is_done(now);
                    if counted {
                        self.peers.credit_answer(peer, a.have);
                    }
                    if done {
                        self.decide(a.id, events, now);
                    }
                }
            }
            // a copy in flight there (docs/PROTOCOL.md §4.6): never a check's outcome
            Message::Arriving(a) => {
                if self.peers.by_addr(&src).map(|p| p.instance) != Some(h.instance) {
                    return;
                }
                if let Some(l) = self.lookups.get_mut(&a.id)
                    && l.on_arriving(h.instance, &a)
                    && l.is_done(now)
                {
                    self.decide(a.id, events, now);
                }
            }
        }
    }

    /// Checks a keyed datagram's MAC and stamp; returns the message part.
    fn authenticate<'a>(&mut self, data: &'a [u8]) -> Option<&'a [u8]> {
        let (body, stamp) = self.keys.open(data).ok()?;
        // the instance, at its fixed header offset; the MAC already vouches for it
        let instance = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
        self.replay.check(instance, stamp, unix_micros()).ok()?;
        Some(body)
    }

    /// Sends a check: a QUERY for CHECK_NAME with a fresh random id to `addr`, from the
    /// well-known socket. Bounded by `Checks` (one per address, CHECK_RATE per second).
    fn start_check(
        &mut self,
        addr: SocketAddr,
        instance: u64,
        reason: CheckReason,
        now: Instant,
        events: &mut Vec<DiscoveryEvent>,
    ) {
        let cookie = (self.cookies.next() >> 32) as u32;
        let Some(c) = self.checks.start(addr, instance, reason, cookie, now) else {
            return;
        };
        let to = c.addr;
        if !self.send_check(to, cookie) {
            // it never left (the check socket's buffer is full of checks waiting for
            // addresses that do not resolve): forgotten, with no backoff, so a newcomer
            // caught here is checked at its next announcement
            self.checks.cancel(cookie);
            return;
        }
        // wake the loop for the check's deadline (`wake_at` includes it)
        events.push(DiscoveryEvent::PeerUp);
    }

    fn send_check(&mut self, to: SocketAddr, cookie: u32) -> bool {
        let q = Message::Query(Query {
            id: cookie,
            name: crate::peers::CHECK_NAME.to_string(),
            size: None,
            sha256: None,
        });
        let sent = self.send_unicast(to, &q, Via::Check);
        self.stats.checks_sent += sent as u64;
        sent
    }

    fn on_check(&mut self, outcome: CheckOutcome, now: Instant, events: &mut Vec<DiscoveryEvent>) {
        match outcome {
            CheckOutcome::Confirmed(c) => match c.reason {
                CheckReason::Admit(ha) => {
                    let (h, a) = *ha;
                    let r = self.rng.next();
                    match self.peers.admit(c.addr, &h, &a, now, r) {
                        PeerEvent::New { dropped } => {
                            info!(
                                "peer {} ({}, {} {}) at {}",
                                a.name,
                                short_id(h.instance),
                                a.distro,
                                a.archs.join(","),
                                c.addr
                            );
                            if let Some(old) = dropped {
                                self.dropped(&old, events, now);
                            }
                            // the DIGEST datagram that came with the announcement, while the
                            // check was in flight: its digest is fetched now rather than at
                            // its next announcement
                            let early = self.early_digests.iter().position(|e| e.0 == h.instance);
                            if let Some(v) = early.map(|j| self.early_digests.swap_remove(j).1)
                                && let Some(d) = self.peers.digest_mut(h.instance)
                                && d.announced(v)
                            {
                                self.digest_wanted = true;
                            }
                            self.hurry_announce(now);
                            events.push(DiscoveryEvent::PeerUp);
                        }
                        e => debug!("{} not admitted: {e:?}", short_id(h.instance)),
                    }
                }
                CheckReason::Goodbye => {
                    self.stats.claims_refuted += 1;
                    info!(
                        "goodbye in the name of {} at {}, which still answers: ignored",
                        short_id(c.instance),
                        c.addr
                    );
                }
            },
            CheckOutcome::Refuted(c, other) => match c.reason {
                CheckReason::Admit(_) => {
                    self.stats.claims_refuted += 1;
                    info!(
                        "{} claimed {}, but {} answers there: ignored",
                        short_id(c.instance),
                        c.addr,
                        short_id(other)
                    )
                }
                CheckReason::Goodbye => self.remove_peer(c.instance, "said goodbye", events, now),
            },
            CheckOutcome::Silent(c) => {
                self.stats.checks_failed += 1;
                match c.reason {
                    CheckReason::Admit(_) => {
                        debug!(
                            "{} at {} did not answer its check",
                            short_id(c.instance),
                            c.addr
                        )
                    }
                    CheckReason::Goodbye => {
                        self.remove_peer(c.instance, "said goodbye", events, now)
                    }
                }
            }
        }
    }

    fn remove_peer(
        &mut self,
        instance: u64,
        why: &str,
        events: &mut Vec<DiscoveryEvent>,
        now: Instant,
    ) {
        if let Some(p) = self.peers.remove(instance) {
            info!("peer {} ({}) {why}", p.name, short_id(p.instance));
            self.forget_in_lookups(p.instance, events, now);
        }
    }

    /// Retries and timeouts of checks; the loop calls it at `deadline()`.
    pub(crate) fn run_checks(&mut self, now: Instant, events: &mut Vec<DiscoveryEvent>) {
        let (again, silent) = self.checks.due(now);
        for c in again {
            self.send_check(c.addr, c.cookie);
        }
        for o in silent {
            self.on_check(o, now, events);
        }
    }

    fn answer_query(
        &mut self,
        (src, asker): (SocketAddr, u64),
        q: &Query,
        query_len: usize,
        has_file: &mut HasFile,
        now: Instant,
        intent: bool,
    ) {
        if self.leaving {
            return;
        }
        // Strangers (not a peer's host, not a static peer) share one budget: spoofed queries
        // from addresses that do not exist cannot fill the send buffer while their answers
        // wait for address resolution.
        let known = self.peers.by_ip(src.ip()).is_some() || self.is_static(src.ip());
        if !known && !self.strangers.allow(now) {
            self.stats.rejected += 1;
            self.stats.strangers_refused += 1;
            return;
        }
        let found = if q.name == crate::peers::CHECK_NAME {
            None
        } else {
            has_file(&q.name, asker)
        };
        if intent {
            let in_digest = (self.published.digest()).is_some_and(|d| d.may_hold(&q.name));
            match found {
                None => return,
                Some((_, _, None)) if in_digest => return,
                Some(_) => {}
            }
        }
        let h = Header {
            instance: self.instance,
            seq: self.seq.wrapping_add(1),
        };
        let mut probe = Vec::new();
        let answer = match found {
            // on its way here: ARRIVING when the query is long enough to carry it (never
            // larger than the query), else DON'T HAVE (docs/PROTOCOL.md §4.6)
            Some((size, sha256, Some(f))) => {
                let a = Message::Arriving(Arriving {
                    id: q.id,
                    size,
                    sha256,
                    uploads: self.uploads,
                    received: f.received,
                    rate: f.rate,
                    looking: f.looking,
                });
                protocol::encode(&h, &a, &mut probe);
                if probe.len() <= query_len && protocol::check(&h, &a).is_ok() {
                    a
                } else {
                    Message::Answer(Answer::dont_have(q.id, self.uploads))
                }
            }
            _ => Message::Answer(Answer {
                id: q.id,
                have: found.is_some(),
                size: found.map(|f| f.0).unwrap_or(0),
                sha256: found.and_then(|f| f.1),
                uploads: self.uploads,
            }),
        };
        protocol::encode(&h, &answer, &mut probe);
        // never amplify: an answer larger than its query is not sent (the codec makes this
        // impossible for valid queries; this is the belt to its braces; a keyed answer and
        // query carry the same trailer)
        if probe.len() > query_len {
            return;
        }
        self.stats.queries_answered += 1;
        self.send_unicast(src, &answer, Via::Unicast);
    }

    /// Starts "who has `name`?" among the live peers that are neither banned nor `benched`
    /// (the caller's strikes, policy.rs). Returns its id, or None when too many lookups are
    /// in flight. With no peer to ask it completes at once.
    pub(crate) fn start_lookup(
        &mut self,
        name: &str,
        expected: Option<(u64, Option<[u8; 32]>)>,
        budget: Duration,
        (now, benched): (Instant, impl Fn(&Peer) -> bool),
        events: &mut Vec<DiscoveryEvent>,
    ) -> Option<u32> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return None;
        }
        let id = self.next_lookup;
        self.answer_delay.started(id, now);
        self.next_lookup = self.next_lookup.wrapping_add(1).max(1);
        self.lookup_round = self.lookup_round.wrapping_add(1);
        // one rule with digests and without (peers.rs `lookup_targets`): with digests, the
        // peers we cannot judge and a few whose digest may hold it or that said they fetch
        // it (digest.rs `select`); without, everyone, as before
        let excluded: Vec<u64> = (self.peers.iter())
            .filter(|p| self.is_banned(p.instance, now) || benched(p))
            .map(|p| p.instance)
            .collect();
        let intenders = self.digests.then(|| self.intents.intenders(name, now));
        let (targets, intent) = self.peers.lookup_targets(
            name,
            (self.lookup_round, now),
            MAX_FANOUT,
            intenders.as_deref(),
            |p| excluded.contains(&p.instance),
        );
        let asked = targets.iter().map(|(i, _)| *i).collect();
        let mut lookup = Lookup::new(id, name.to_string(), expected, asked, now + budget);
        lookup.set_excluded(excluded);
        let query = Query {
            id,
            name: name.to_string(),
            size: expected.map(|e| e.0),
            sha256: expected.and_then(|e| e.1),
        };
        if intent {
            // what it waits for: other hosts' INTENTs reaching our sockets, and the answers
            // of hosts that hold the file outside their digest; those take as long as any
            // answer, so the wait follows the answer delays seen (at least MISS_WAIT)
            let wait = self.answer_delay.miss_wait(digest::MISS_WAIT, budget);
            debug!(
                "lookup {id}: {} asked, INTENT, miss wait {wait:?}",
                targets.len()
            );
            lookup.set_not_before(now + wait);
        }
        self.lookups.insert(id, lookup);
        // the QUERYs first: a hit waits for their answers, not for the INTENT's (which
        // reaches every host of the segment)
        let intent = intent.then(|| Message::Intent(query.clone()));
        let q = Message::Query(query);
        for (_, addr) in &targets {
            self.send_unicast(*addr, &q, Via::Query);
        }
        // the peers that publish digests hear that we look for it (docs/PROTOCOL.md §14.4)
        if let Some(i) = &intent {
            self.multicast(i);
            self.stats.intents_sent += 1;
        }
        if targets.is_empty() {
            self.stats.lookups_unasked += 1;
            if intent.is_none() {
                self.finish_lookup(id, events, now);
            }
        }
        Some(id)
    }

    /// When a lookup may decide a miss at the earliest (its INTENT's wait), if it has one.
    pub(crate) fn not_before(&self, id: u32) -> Option<Instant> {
        self.lookups.get(&id).and_then(Lookup::not_before)
    }

    /// The sockets a lookup's decision reads first: answers to QUERYs come to the query
    /// sockets they left from (or the unicast ones when a family has none), other hosts'
    /// INTENTs to the membership sockets (docs/PROTOCOL.md §14.4).
    pub(crate) fn read_before_deciding(&self) -> Vec<Token> {
        let memberships = self.memberships.iter().map(|m| m.token);
        ANSWER_SOCKETS.into_iter().chain(memberships).collect()
    }

    /// Rebuilds our digest from `names` if it is due (digest.rs `Published`); a new version
    /// is announced at once.
    pub(crate) fn publish(
        &mut self,
        names: &[String],
        stamp: Vec<Option<std::time::SystemTime>>,
        now: Instant,
    ) {
        if let Some(v) = self.published.rebuild(names, stamp, now) {
            debug!("cache digest version {v}: {} names", names.len());
            if !self.leaving {
                self.multicast(&Message::Digest(v));
            }
        }
    }

    /// Peers whose announced digest we do not hold and should fetch now, at most `max`, not
    /// those in `busy` (being fetched): (instance, file server, version).
    pub(crate) fn digests_to_fetch(
        &mut self,
        busy: &[u64],
        max: usize,
        now: Instant,
    ) -> Vec<(u64, SocketAddr, u32)> {
        if !std::mem::take(&mut self.digest_wanted) && busy.is_empty() && max == 0 {
            return Vec::new();
        }
        self.digest_tries
            .retain(|(_, _, t)| now.saturating_duration_since(*t) < DIGEST_RETRY);
        let mut out = Vec::new();
        let mut left = false;
        for p in self.peers.iter() {
            let Some(v) = p.digest.wanted() else { continue };
            if busy.contains(&p.instance)
                || self
                    .digest_tries
                    .iter()
                    .any(|t| t.0 == p.instance && t.1 == v)
            {
                continue;
            }
            if out.len() >= max {
                left = true;
                break;
            }
            out.push((p.instance, p.tcp_addr(), v));
        }
        self.digest_wanted = left;
        for (i, _, v) in &out {
            self.digest_tries.push((*i, *v, now));
        }
        out
    }

    /// Whether a digest fetch should be started soon (one is wanted).
    pub(crate) fn wants_digests(&self) -> bool {
        self.digest_wanted
    }

    /// A fetch of `instance`'s digest brought `body` (None: it failed).
    pub(crate) fn digest_fetched(&mut self, instance: u64, body: Option<&[u8]>) {
        let Some(body) = body else {
            // a newcomer that publishes none (an older daemon): asked as before
            if let Some(d) = self.peers.digest_mut(instance) {
                d.not_published();
            }
            return;
        };
        match Digest::decode(body) {
            Ok(d) => {
                self.stats.digests_fetched += 1;
                if let Some(pd) = self.peers.digest_mut(instance) {
                    debug!("digest of {}: {d:?}", short_id(instance));
                    pd.fetched(d);
                }
            }
            Err(e) => {
                self.stats.digests_refused += 1;
                debug!("digest of {} refused: {e:?}", short_id(instance));
            }
        }
    }

    /// A lookup that is done decides, unless it found nobody and hosts it has not asked said
    /// meanwhile that they look for the file too (their INTENT came after ours left, or
    /// before it was read): those are asked first, within the same budget. Each then answers
    /// LOOKING or ARRIVING, and the rule of docs/PROTOCOL.md §8.6 picks the one host that
    /// fetches, as when lookups meet by QUERYs.
    fn decide(&mut self, id: u32, events: &mut Vec<DiscoveryEvent>, now: Instant) {
        let Some(l) = self.lookups.get(&id) else {
            return;
        };
        if l.not_before().is_some() && now < l.deadline() && l.candidates().is_empty() {
            let late: Vec<(u64, SocketAddr)> = (self.intents.intenders(l.name(), now).into_iter())
                .filter(|i| !l.was_asked(*i) && !l.is_excluded(*i) && !self.is_banned(*i, now))
                .filter_map(|i| self.peers.get(i).map(|p| (i, p.addr)))
                .collect();
            if !late.is_empty() {
                let q = Message::Query(l.query());
                if let Some(l) = self.lookups.get_mut(&id) {
                    for (i, _) in &late {
                        l.ask(*i);
                    }
                }
                for (_, addr) in late {
                    self.send_unicast(addr, &q, Via::Query);
                }
                return;
            }
        }
        self.finish_lookup(id, events, now);
    }

    fn finish_lookup(&mut self, id: u32, events: &mut Vec<DiscoveryEvent>, now: Instant) {
        if let Some(l) = self.lookups.remove(&id) {
            for i in l.pending() {
                self.peers.note_unanswered(i, now);
            }
            events.push(DiscoveryEvent::Decided(Decided {
                id,
                candidates: l.candidates(),
                asked: l.asked_count(),
                answered: l.answered_count(),
            }));
        }
    }

    /// The budget for a lookup starting now: `configured`, stretched while peers' answers
    /// come late (peers.rs `AnswerDelay`).
    pub(crate) fn lookup_budget(&self, configured: Duration) -> Duration {
        self.answer_delay.budget(configured)
    }

    /// A lookup's deadline passed: decide with what arrived.
    pub(crate) fn lookup_deadline(
        &mut self,
        id: u32,
        now: Instant,
        events: &mut Vec<DiscoveryEvent>,
    ) {
        events.append(&mut self.deferred);
        if self.lookups.get(&id).is_some_and(|l| l.is_done(now)) {
            self.decide(id, events, now);
        }
    }

    fn forget_in_lookups(&mut self, instance: u64, events: &mut Vec<DiscoveryEvent>, now: Instant) {
        self.intents.forget(instance);
        let ids: Vec<u32> = self
            .lookups
            .iter_mut()
            .filter_map(|(id, l)| (l.forget(instance) && l.is_done(now)).then_some(*id))
            .collect();
        for id in ids {
            self.decide(id, events, now);
        }
    }

    fn dropped(
        &mut self,
        old: &crate::peers::Peer,
        events: &mut Vec<DiscoveryEvent>,
        now: Instant,
    ) {
        info!("peer {} ({}) replaced", old.name, short_id(old.instance));
        self.forget_in_lookups(old.instance, events, now);
    }

    /// Expires silent peers; lookups waiting on them stop waiting.
    pub(crate) fn expire(&mut self, now: Instant, events: &mut Vec<DiscoveryEvent>) {
        events.append(&mut self.deferred);
        for p in self.peers.expire(now) {
            info!("peer {} ({}) expired", p.name, short_id(p.instance));
            self.forget_in_lookups(p.instance, events, now);
        }
    }

    /// Whether a peer is banned, by its instance or by its address.
    pub(crate) fn is_banned(&self, instance: u64, now: Instant) -> bool {
        self.bans.is_banned(instance, now)
            || self
                .peers
                .get(instance)
                .is_some_and(|p| self.bans.is_banned(p.addr.ip(), now))
    }

    /// Bans a peer by instance and by address: a restarted daemon (new instance) on the
    /// same host stays banned for what its host served.
    pub(crate) fn ban(&mut self, instance: u64, now: Instant, reason: &str) -> Duration {
        let d = self.bans.ban(instance, now, reason);
        if let Some(ip) = self.peers.get(instance).map(|p| p.addr.ip()) {
            self.bans.ban(ip, now, reason);
        }
        let name = self
            .peers
            .get(instance)
            .map(|p| p.name.clone())
            .unwrap_or_default();
        warn!(
            "banned peer {} ({}) for {:?}: {}",
            name,
            short_id(instance),
            d,
            reason
        );
        d
    }
}

/// Resolver request ids for static peer names: the top bit set, the peer's index below
/// (the daemon's own requests count up from 1 and never reach it).
const STATIC_RESOLVE_BIT: u64 = 1 << 63;

pub(crate) fn static_resolve_id(index: usize) -> u64 {
    STATIC_RESOLVE_BIT | index as u64
}

/// The static peer a resolver answer is for, if it is one.
pub(crate) fn static_peer_of(id: u64) -> Option<usize> {
    (id & STATIC_RESOLVE_BIT != 0).then_some((id & !STATIC_RESOLVE_BIT) as usize)
}

/// What the daemon knows of a file asked for: None, or its size and (maybe) SHA-256.
/// What this host can say of a file (name, asking instance): its size, its SHA-256 when
/// known, and whether it is still on its way here (docs/PROTOCOL.md §4.6).
pub(crate) type HasFile<'a> =
    dyn FnMut(&str, u64) -> Option<(u64, Option<[u8; 32]>, Option<protocol::InFlight>)> + 'a;

pub(crate) enum DiscoveryEvent {
    PeerUp,
    Decided(Decided),
}

pub(crate) fn short_id(instance: u64) -> String {
    format!("{:08x}", (instance >> 32) as u32)
}

/// The wall clock in microseconds since the epoch: keyed datagrams' stamps.
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address; the port defaults to `port`.
pub(crate) fn split_host_port(s: &str, port: u16) -> Option<(String, u16)> {
    let s = s.trim();
    if s.is_empty() || s.len() > 260 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        host.parse::<Ipv6Addr>().ok()?;
        let p = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0)?,
            None if tail.is_empty() => port,
            None => return None,
        };
        return Some((host.to_string(), p));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some((s.to_string(), port));
    }
    let (host, p) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|&p| p != 0)?),
        None => (s, port),
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    ok.then(|| (host.to_string(), p))
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(a.ip()), a.port()).to_owned_with_scope(a)
}

trait WithScope {
    fn to_owned_with_scope(self, orig: SocketAddr) -> SocketAddr;
}

impl WithScope for SocketAddr {
    /// Keeps an IPv6 scope id (link-local peers are only reachable through it).
    fn to_owned_with_scope(self, orig: SocketAddr) -> SocketAddr {
        match (self, orig) {
            (SocketAddr::V6(mut a), SocketAddr::V6(o)) => {
                a.set_scope_id(o.scope_id());
                SocketAddr::V6(a)
            }
            (a, _) => a,
        }
    }
}

fn same_prefix(net: &IpAddr, ip: &IpAddr, prefix_len: u8) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let p = prefix_len.min(32) as u32;
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(*n) & mask == u32::from(*i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let p = prefix_len.min(128) as u32;
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(*n) & mask == u128::from(*i) & mask
        }
        _ => false,
    }
}

fn set_mcast_if_v4(s: &UdpSocket, local: Ipv4Addr) -> io::Result<()> {
    socket2::SockRef::from(s).set_multicast_if_v4(&local)
}

fn set_mcast_if_v6(s: &UdpSocket, index: u32) -> io::Result<()> {
    socket2::SockRef::from(s).set_multicast_if_v6(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_prefix_math() {
        let n: IpAddr = "10.77.0.1".parse().unwrap();
        assert!(same_prefix(&n, &"10.77.0.200".parse().unwrap(), 24));
        assert!(!same_prefix(&n, &"10.77.1.2".parse().unwrap(), 24));
        assert!(same_prefix(&n, &"1.2.3.4".parse().unwrap(), 0));
        let n6: IpAddr = "fd77::1".parse().unwrap();
        assert!(same_prefix(&n6, &"fd77::ab".parse().unwrap(), 64));
        assert!(!same_prefix(&n6, &"fd78::1".parse().unwrap(), 64));
        assert!(!same_prefix(&n, &n6, 0));
        assert_eq!(
            canonical_ip("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
