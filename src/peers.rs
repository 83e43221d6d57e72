//! Discovery state without sockets or clocks: the bounded peer table, the announcement
//! schedule, per-source rate limiting, peer bans and one "who has this file?" lookup round.
//! Every function takes `now`, so the event loop (discovery.rs) owns time and tests move it.

use crate::digest::PeerDigest;
use crate::protocol::{Announce, Answer, Arriving, Header, InFlight, Query, VERSION};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

/// Peers kept at once; a LAN with more flocon daemons is not expected, and a bound keeps
/// forged announcements (random instance ids) from growing memory.
pub(crate) const MAX_PEERS: usize = 256;
/// Mean spacing of periodic announcements: cheap (one ~100-byte datagram per host), and
/// departures without a goodbye are still noticed within ~2 minutes.
pub(crate) const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(30);
/// ±25 % of the interval, uniform: hosts booted together (power cut) drift apart instead of
/// announcing in lockstep.
pub(crate) const ANNOUNCE_JITTER: Duration = ANNOUNCE_INTERVAL.checked_div(4).unwrap();
/// Longest gap between two periodic announcements of a live peer.
pub(crate) const ANNOUNCE_INTERVAL_MAX: Duration =
    ANNOUNCE_INTERVAL.saturating_add(ANNOUNCE_JITTER);
/// Three missed announcements at the longest interval (112.5 s) plus slack for a busy loop.
pub(crate) const PEER_EXPIRY: Duration = Duration::from_secs(120);
/// Announcements sent 1 s apart at start (the first may go out before every join has
/// settled, or be lost); then the periodic schedule takes over.
pub(crate) const STARTUP_ANNOUNCES: u8 = 3;
pub(crate) const STARTUP_GAP: Duration = Duration::from_secs(1);
/// Hearing a new peer makes us announce within this (random) delay so it learns about us
/// at once instead of after a full interval; random so N hosts do not answer in a burst.
pub(crate) const HURRY_DELAY_MAX: Duration = Duration::from_millis(250);
/// No two announcements closer than this: forged "new peers" cannot make us flood the link.
pub(crate) const MIN_ANNOUNCE_GAP: Duration = Duration::from_secs(1);
/// A peer's recorded address changes to another one it announces from only after the
/// recorded one has been silent this long: dual-stack hosts announce on both families and
/// must not flap between them, but a host whose address changed must move.
pub(crate) const ADDR_FAILOVER: Duration = ANNOUNCE_INTERVAL_MAX;
/// Default lookup budget (`--lookup-ms`): how long a request waits for peers before going
/// upstream. A LAN round trip is well under a millisecond, a busy Raspberry Pi on Wi-Fi a few
/// tens; a lookup normally ends much sooner, when every asked peer has answered.
pub(crate) const LOOKUP_BUDGET: Duration = Duration::from_millis(50);

/// The most a lookup's budget is stretched for late answers (see `AnswerDelay`).
pub(crate) const MAX_LOOKUP_STRETCH: Duration = Duration::from_millis(500);
/// Lookups whose start is remembered, so that an answer after the deadline is measured too.
const RECENT_LOOKUPS: usize = 64;
/// The answer-delay mark halves every this long since it last rose: a spike, once past, does
/// not keep every later miss waiting (misses draw no answers that would bring it down).
pub(crate) const MARK_HALF_LIFE: Duration = Duration::from_secs(10);

/// How late peers' answers come. On an idle LAN every asked peer answers within a few
/// milliseconds and a lookup ends when the last one has; on a loaded one (a busy CPU, a
/// Raspberry Pi compiling, a host swapping) answers can take longer than the configured
/// budget, and a lookup that gives up first sends pacman to the mirror for a file the LAN
/// holds. This keeps a decaying high-water mark of the answer delays it sees, answers that
/// came after their lookup's deadline included, and stretches the budget to twice that mark,
/// at most MAX_LOOKUP_STRETCH. Stretching costs nothing while peers answer (the lookup ends
/// at the last answer); it costs a wait only for a peer that never does. The mark also
/// halves every MARK_HALF_LIFE since it last rose: a run of misses (digests said no, nobody
/// was asked) brings no answer, and a single late one must not keep every later miss waiting
/// twice its delay. Time passed in.
#[derive(Debug, Default)]
pub(crate) struct AnswerDelay {
    recent: VecDeque<(u32, Instant)>,
    mark: Duration,
    /// Since when the mark has not been halved (None: nothing seen yet).
    decayed_at: Option<Instant>,
}

impl AnswerDelay {
    /// Lookup `id` started at `now`.
    pub(crate) fn started(&mut self, id: u32, now: Instant) {
        self.decay(now);
        if self.recent.len() >= RECENT_LOOKUPS {
            self.recent.pop_front();
        }
        self.recent.push_back((id, now));
    }

    /// A known peer answered lookup `id` at `now`, in time or not. The mark rises at once to
    /// a longer delay and falls by an eighth of the gap with each shorter one.
    pub(crate) fn answered(&mut self, id: u32, now: Instant) {
        let Some(&(_, at)) = self.recent.iter().rev().find(|(i, _)| *i == id) else {
            return;
        };
        self.observe(now.saturating_duration_since(at), now);
    }

    /// A peer answered `d` after it was asked: a lookup's question, or an admission check's.
    /// The check is the first delay seen from a peer, before any lookup asks it: a peer
    /// that is slow to answer from the start stretches the first lookup's budget too.
    pub(crate) fn observe(&mut self, d: Duration, now: Instant) {
        self.decay(now);
        self.mark = if d >= self.mark {
            self.decayed_at = Some(now);
            d
        } else {
            self.mark - (self.mark - d) / 8
        };
    }

    /// Halves the mark for each whole MARK_HALF_LIFE since it last rose or was halved.
    fn decay(&mut self, now: Instant) {
        let at = *self.decayed_at.get_or_insert(now);
        let halves = now.saturating_duration_since(at).as_nanos() / MARK_HALF_LIFE.as_nanos();
        if halves >= 32 {
            self.mark = Duration::ZERO;
            self.decayed_at = Some(now);
        } else if halves > 0 {
            self.mark /= 1 << halves;
            self.decayed_at = Some(at + MARK_HALF_LIFE * halves as u32);
        }
    }

    /// The budget for the next lookup: the configured one, or more while answers come late.
    pub(crate) fn budget(&self, configured: Duration) -> Duration {
        configured.max((self.mark * 2).min(MAX_LOOKUP_STRETCH))
    }

    /// How long a lookup that found nobody waits after its INTENT for what it may draw (a
    /// file not yet in a digest, a copy on its way, another host's lookup of the file):
    /// `floor` while peers answer well within it (a wired LAN), else twice the mark (Wi-Fi,
    /// a loaded peer), at most `cap`, the lookup's budget. A fixed wait lost those answers
    /// whenever they took longer than it, and the file went upstream.
    pub(crate) fn miss_wait(&self, floor: Duration, cap: Duration) -> Duration {
        floor.max((self.mark * 2).min(cap))
    }
}

/// Delay until the next periodic announcement, uniform in interval ± jitter; `random` is any
/// random u64 from the caller (no RNG in here, so tests are deterministic).
pub(crate) fn next_announce_delay(random: u64) -> Duration {
    announce_delay_for(ANNOUNCE_INTERVAL, random)
}

/// The same for another mean interval (`--announce-interval`): interval ± 25 %.
pub(crate) fn announce_delay_for(interval: Duration, random: u64) -> Duration {
    let jitter = interval / 4;
    let span = 2 * jitter.as_millis() as u64 + 1;
    interval - jitter + Duration::from_millis(random % span)
}

/// Peers expire after this many mean intervals of silence (3 missed + slack).
pub(crate) const EXPIRY_INTERVALS: u32 = 4;

/// When to announce next: at start, STARTUP_ANNOUNCES times STARTUP_GAP apart, then every
/// `next_announce_delay`; `hurry` brings it forward when someone new needs to hear from us.
#[derive(Debug, Clone)]
pub(crate) struct AnnounceTimer {
    interval: Duration,
    next: Instant,
    last_sent: Option<Instant>,
    startup_left: u8,
}

impl AnnounceTimer {
    /// Due at once.
    pub(crate) fn new(now: Instant) -> Self {
        AnnounceTimer {
            interval: ANNOUNCE_INTERVAL,
            next: now,
            last_sent: None,
            startup_left: STARTUP_ANNOUNCES,
        }
    }

    /// A mean interval other than ANNOUNCE_INTERVAL (`--announce-interval`).
    pub(crate) fn with_interval(now: Instant, interval: Duration) -> Self {
        AnnounceTimer {
            interval,
            ..AnnounceTimer::new(now)
        }
    }

    /// The instant the loop should wake up for the next announcement.
    pub(crate) fn deadline(&self) -> Instant {
        self.next
    }

    pub(crate) fn is_due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records an announcement round sent at `now` and schedules the next.
    pub(crate) fn sent(&mut self, now: Instant, random: u64) {
        self.last_sent = Some(now);
        self.startup_left = self.startup_left.saturating_sub(1);
        let delay = if self.startup_left > 0 {
            STARTUP_GAP
        } else {
            announce_delay_for(self.interval, random)
        };
        self.next = now + delay;
    }

    /// Announce soon (a new peer appeared, an interface was joined): within
    /// HURRY_DELAY_MAX, but never sooner than MIN_ANNOUNCE_GAP after the last one.
    pub(crate) fn hurry(&mut self, now: Instant, random: u64) {
        let jitter = Duration::from_millis(random % (HURRY_DELAY_MAX.as_millis() as u64 + 1));
        let mut at = now + jitter;
        if let Some(last) = self.last_sent {
            at = at.max(last + MIN_ANNOUNCE_GAP);
        }
        self.next = self.next.min(at);
    }
}

/// The loop's timer for discovery's own deadlines (the next announcement, a check's retry
/// or timeout). Those deadlines move both ways: a hurried announcement or a new check brings
/// one forward, a check answered early takes its deadline away. A timer set for a deadline
/// that went away still fires, finds nothing due, and is then the only one there was: the
/// loop must arm again after every firing, whatever was done, or announcements and checks
/// stop for good (a restarted peer never hears us again). This keeps one timer armed at or
/// before the earliest deadline, and no more timers than that needs. Time passed in.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    /// The earliest timer of ours the loop holds that has not fired yet.
    armed: Option<Instant>,
}

impl Wake {
    /// A timer of ours fired at `now`: the armed one, if due, is gone.
    pub(crate) fn fired(&mut self, now: Instant) {
        if self.armed.is_some_and(|t| t <= now) {
            self.armed = None;
        }
    }

    /// Work is next due at `deadline`: the instant the loop must set a timer for, or None
    /// when one at or before it is armed already.
    pub(crate) fn arm(&mut self, deadline: Instant) -> Option<Instant> {
        if self.armed.is_some_and(|t| t <= deadline) {
            return None;
        }
        self.armed = Some(deadline);
        Some(deadline)
    }
}

/// One known daemon on the LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub instance: u64,
    /// UDP source of its announcements: where queries go. IPv6 keeps the scope id (needed
    /// for link-local addresses); IPv4-mapped IPv6 is stored as IPv4; flowinfo is cleared.
    pub addr: SocketAddr,
    pub tcp_port: u16,
    pub name: String,
    pub distro: String,
    pub archs: Vec<String>,
    pub version: u8,
    /// Last accepted announcement (from any of its addresses): drives expiry.
    pub last_seen: Instant,
    pub first_seen: Instant,
    /// Last datagram from `addr` itself: drives ADDR_FAILOVER.
    pub addr_heard: Instant,
    pub uploads: u16,
    pub last_seq: u32,
    /// What it did for us: evictions and lookups rank peers by it.
    pub credit: Credit,
    /// Its cache digest as far as we know it (digest.rs).
    pub digest: PeerDigest,
}

/// A peer's record of usefulness. Only `served` cannot be faked by a LAN host (the bytes
/// matched our sync db); answers rank a peer among those without served bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Credit {
    /// Verified copies it served us.
    pub served: u32,
    /// HAVE answers it gave to our lookups.
    pub haves: u32,
    /// Queries of ours it answered at all.
    pub answers: u32,
    /// Queries of ours in a row it did not answer (reset by an answer).
    pub unanswered: u32,
    /// When that run of unanswered queries began.
    pub silent_since: Option<Instant>,
}

impl Credit {
    /// SILENT_AFTER queries in a row unanswered over at least SILENT_FOR: a burst of
    /// lookups while the peer is busy for a moment does not count.
    pub(crate) fn is_silent(&self, now: Instant) -> bool {
        self.unanswered >= SILENT_AFTER
            && self
                .silent_since
                .is_some_and(|t| now.saturating_duration_since(t) >= SILENT_FOR)
    }

    /// Eviction and lookup rank: higher is kept longer and asked first.
    pub(crate) fn rank(&self) -> (bool, bool, bool) {
        (
            self.served > 0,
            self.haves > 0,
            self.unanswered < SILENT_AFTER,
        )
    }
}

/// Queries in a row without an answer after which a peer is asked only now and then
/// (SILENT_RETRY): a dead or overloaded peer then costs a lookup nothing.
pub(crate) const SILENT_AFTER: u32 = 8;
/// ... and over at least this long.
pub(crate) const SILENT_FOR: Duration = Duration::from_secs(5);
/// How often a silent peer is still asked (one lookup in this many).
pub(crate) const SILENT_RETRY: u32 = 16;

impl Peer {
    /// Where its file server listens.
    /// Where its file server listens: its address (with the IPv6 scope id, without which a
    /// link-local peer is unreachable) and its announced TCP port.
    pub(crate) fn tcp_addr(&self) -> SocketAddr {
        let mut a = self.addr;
        a.set_port(self.tcp_port);
        a
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IgnoreReason {
    /// Our own datagram, looped back.
    Own,
    /// Source address that no real peer can have (multicast, unspecified, port 0).
    BadSource,
    /// Sequence number not newer than the last accepted one: a copy via another family or
    /// interface, a reordered or a replayed datagram.
    Stale,
    /// Table full of peers that are all alive and have been useful.
    TableFull,
    /// An unknown instance: it enters only after a check (a QUERY with a random id, answered
    /// from its source address by that instance), see `PeerTable::admit`.
    Unverified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// A peer not in the table before. `dropped`: an entry removed to make room — an earlier
    /// incarnation at the same address (the daemon restarted), or the stalest peer.
    New {
        dropped: Option<Box<Peer>>,
    },
    /// A known peer's announcement was accepted (or a copy of it removed an earlier
    /// incarnation at the same address, reported in `dropped`).
    Updated {
        dropped: Option<Box<Peer>>,
    },
    Ignored(IgnoreReason),
}

/// Serial-number comparison (RFC 1982) so a long-lived sender's wrap to 0 is still "newer".
pub(crate) fn seq_newer(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000_0000
}

/// The form addresses are stored and compared in (see `Peer::addr`).
pub(crate) fn normalize_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => addr,
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => SocketAddr::V6(SocketAddrV6::new(*a.ip(), a.port(), 0, a.scope_id())),
        },
    }
}

/// Whether a datagram source could be a peer at all. The on-link check (source within a
/// subnet of the receiving interface) needs interface data and belongs to the socket layer.
pub(crate) fn plausible_source(addr: &SocketAddr) -> bool {
    let ip = normalize_addr(*addr).ip();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// The peers we currently believe alive, at most MAX_PEERS, in order of arrival.
#[derive(Debug)]
pub(crate) struct PeerTable {
    own: u64,
    peers: Vec<Peer>,
    expiry: Duration,
}

impl PeerTable {
    pub(crate) fn new(own_instance: u64) -> Self {
        PeerTable {
            own: own_instance,
            peers: Vec::new(),
            expiry: PEER_EXPIRY,
        }
    }

    /// Peers expire after `expiry` of silence instead of PEER_EXPIRY.
    pub(crate) fn set_expiry(&mut self, expiry: Duration) {
        self.expiry = expiry;
    }

    /// Applies an ANNOUNCE from `src` by a known instance. Policies (PROTOCOL.md §8.3): own
    /// instance ignored; only a newer seq updates a peer; an unknown instance is only
    /// reported (`Unverified`): the caller checks that it really answers from `src` and then
    /// calls `admit`. A known peer is kept alive by any announcement of its instance from its
    /// recorded address, even a stale one, so a forged announcement with a far-ahead seq
    /// cannot make its real announcements look old and let it expire.
    pub(crate) fn on_announce(
        &mut self,
        src: SocketAddr,
        h: &Header,
        a: &Announce,
        now: Instant,
    ) -> PeerEvent {
        let src = normalize_addr(src);
        if h.instance == self.own {
            return PeerEvent::Ignored(IgnoreReason::Own);
        }
        if !plausible_source(&src) {
            return PeerEvent::Ignored(IgnoreReason::BadSource);
        }
        let Some(p) = self.peers.iter_mut().find(|p| p.instance == h.instance) else {
            return PeerEvent::Ignored(IgnoreReason::Unverified);
        };
        let newer = seq_newer(h.seq, p.last_seq);
        if p.addr == src {
            p.addr_heard = now;
            p.last_seen = now;
        } else if newer && now.saturating_duration_since(p.addr_heard) >= ADDR_FAILOVER {
            p.addr = src;
            p.addr_heard = now;
        }
        if !newer {
            return PeerEvent::Ignored(IgnoreReason::Stale);
        }
        p.tcp_port = a.tcp_port;
        p.uploads = a.uploads;
        p.name.clone_from(&a.name);
        p.distro.clone_from(&a.distro);
        p.archs.clone_from(&a.archs);
        p.last_seen = now;
        p.last_seq = h.seq;
        PeerEvent::Updated { dropped: None }
    }

    /// Adds an instance that proved it receives at `src` (it answered our check from there).
    /// Any other instance recorded at `src` is an earlier incarnation (one socket, one
    /// daemon) and is replaced. When the table is full: a peer silent for more than
    /// ANNOUNCE_INTERVAL_MAX goes first (the stalest); else a random one among those that
    /// never had a file for us; when every peer has, the newcomer is refused. `random` is
    /// any random u64 from the caller.
    pub(crate) fn admit(
        &mut self,
        src: SocketAddr,
        h: &Header,
        a: &Announce,
        now: Instant,
        random: u64,
    ) -> PeerEvent {
        let src = normalize_addr(src);
        if h.instance == self.own || !plausible_source(&src) {
            return PeerEvent::Ignored(IgnoreReason::BadSource);
        }
        if self.get(h.instance).is_some() {
            return self.on_announce(src, h, a, now);
        }
        let mut dropped = self
            .peers
            .iter()
            .position(|p| p.addr == src)
            .map(|j| Box::new(self.peers.remove(j)));
        if dropped.is_none() && self.peers.len() >= MAX_PEERS {
            let stalest = self
                .peers
                .iter()
                .enumerate()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(i, p)| (i, now.saturating_duration_since(p.last_seen)));
            let victim = match stalest {
                Some((i, silent)) if silent > ANNOUNCE_INTERVAL_MAX => Some(i),
                _ => {
                    let idle: Vec<usize> = (0..self.peers.len())
                        .filter(|&i| {
                            let c = &self.peers[i].credit;
                            c.served == 0 && c.haves == 0
                        })
                        .collect();
                    (!idle.is_empty()).then(|| idle[(random % idle.len() as u64) as usize])
                }
            };
            match victim {
                Some(i) => dropped = Some(Box::new(self.peers.remove(i))),
                None => return PeerEvent::Ignored(IgnoreReason::TableFull),
            }
        }
        self.peers.push(Peer {
            instance: h.instance,
            addr: src,
            tcp_port: a.tcp_port,
            name: a.name.clone(),
            distro: a.distro.clone(),
            archs: a.archs.clone(),
            version: VERSION,
            last_seen: now,
            first_seen: now,
            addr_heard: now,
            uploads: a.uploads,
            last_seq: h.seq,
            credit: Credit::default(),
            digest: PeerDigest::default(),
        });
        PeerEvent::New { dropped }
    }

    /// Whether a GOODBYE may concern a peer: from its recorded address, not older than its
    /// last announcement. Returns the instance to check; it is removed (`remove`) only if
    /// it then fails to answer from there, so a forged goodbye cannot hide a live peer.
    pub(crate) fn on_goodbye(&self, src: SocketAddr, h: &Header) -> Option<u64> {
        let src = normalize_addr(src);
        self.peers
            .iter()
            .find(|p| p.instance == h.instance && p.addr == src && !seq_newer(p.last_seq, h.seq))
            .map(|p| p.instance)
    }

    pub(crate) fn remove(&mut self, instance: u64) -> Option<Peer> {
        let i = self.peers.iter().position(|p| p.instance == instance)?;
        Some(self.peers.remove(i))
    }

    /// An answer to one of our lookups arrived from the peer.
    pub(crate) fn credit_answer(&mut self, instance: u64, have: bool) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.instance == instance) {
            p.credit.answers = p.credit.answers.saturating_add(1);
            p.credit.haves = p.credit.haves.saturating_add(have as u32);
            p.credit.unanswered = 0;
            p.credit.silent_since = None;
        }
    }

    /// A lookup ended without the peer's answer.
    pub(crate) fn note_unanswered(&mut self, instance: u64, now: Instant) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.instance == instance) {
            if p.credit.unanswered == 0 {
                p.credit.silent_since = Some(now);
            }
            p.credit.unanswered = p.credit.unanswered.saturating_add(1);
        }
    }

    /// The peer served a copy that matched our sync db.
    pub(crate) fn credit_served(&mut self, instance: u64) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.instance == instance) {
            p.credit.served = p.credit.served.saturating_add(1);
        }
    }

    /// Whom a lookup for `name` asks, and whether it also multicasts an INTENT (some peer
    /// speaks digests): the one rule of both choices, so that they skip the same peers.
    /// Never a peer `excluded` says is sanctioned (banned, benched: the caller's records); a
    /// silent one only one lookup in SILENT_RETRY (`ranked`). With `digests` (the hosts that
    /// sent an INTENT for `name`): the peers whose digest we cannot judge, then a few that
    /// sent an INTENT or whose digest may hold it (digest.rs `select`); without: every
    /// peer, best first, as before digests. At most `max`.
    pub(crate) fn lookup_targets(
        &self,
        name: &str,
        (round, now): (u32, Instant),
        max: usize,
        digests: Option<&[u64]>,
        excluded: impl Fn(&Peer) -> bool,
    ) -> (Vec<(u64, SocketAddr)>, bool) {
        let ranked = self.ranked(round, now, excluded);
        let (mut targets, intent) = match digests {
            Some(intenders) => {
                let speaks = ranked.iter().any(|p| p.digest != PeerDigest::Unknown);
                let cand = (ranked.into_iter()).map(|p| {
                    (
                        (p.instance, p.addr),
                        &p.digest,
                        intenders.contains(&p.instance),
                    )
                });
                (crate::digest::select(name, cand), speaks)
            }
            None => (ranked.iter().map(|p| (p.instance, p.addr)).collect(), false),
        };
        targets.truncate(max);
        (targets, intent)
    }

    /// The peers a lookup may ask, best ranked first: those that served or had files, then
    /// the rest; never one `excluded` says is sanctioned; a silent peer
    /// (`Credit::is_silent`) only one lookup in SILENT_RETRY (`round` is the lookup's
    /// number), so a dead or flooded address costs nothing while its expiry runs.
    pub(crate) fn ranked(
        &self,
        round: u32,
        now: Instant,
        excluded: impl Fn(&Peer) -> bool,
    ) -> Vec<&Peer> {
        let mut v: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|p| !p.credit.is_silent(now) || round.is_multiple_of(SILENT_RETRY))
            .filter(|p| !excluded(p))
            .collect();
        // stable: equal ranks keep arrival order
        v.sort_by_key(|p| std::cmp::Reverse(p.credit.rank()));
        v
    }

    /// A peer's digest record, to update.
    pub(crate) fn digest_mut(&mut self, instance: u64) -> Option<&mut PeerDigest> {
        (self.peers.iter_mut())
            .find(|p| p.instance == instance)
            .map(|p| &mut p.digest)
    }

    /// Removes and returns the peers silent for PEER_EXPIRY or longer.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Peer> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.peers.len() {
            if now.saturating_duration_since(self.peers[i].last_seen) >= self.expiry {
                gone.push(self.peers.remove(i));
            } else {
                i += 1;
            }
        }
        gone
    }

    /// When `expire` next has work: the loop's timer for it.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.peers.iter().map(|p| p.last_seen + self.expiry).min()
    }

    pub(crate) fn get(&self, instance: u64) -> Option<&Peer> {
        self.peers.iter().find(|p| p.instance == instance)
    }

    pub(crate) fn by_addr(&self, addr: &SocketAddr) -> Option<&Peer> {
        let addr = normalize_addr(*addr);
        self.peers.iter().find(|p| p.addr == addr)
    }

    /// A peer recorded at this IP address (any port).
    pub(crate) fn by_ip(&self, ip: IpAddr) -> Option<&Peer> {
        let ip = normalize_addr(SocketAddr::new(ip, 1)).ip();
        self.peers.iter().find(|p| p.addr.ip() == ip)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub(crate) fn own_instance(&self) -> u64 {
        self.own
    }
}

/// Checks in flight at once; each is one small record and one datagram. Forged newcomers
/// beyond it are dropped (real ones announce again). Above what both budgets keep in
/// flight (2 x CHECK_RATE x CHECK_TRIES x CHECK_TIMEOUT = 90), so that forged newcomers
/// cannot fill it and hold up a goodbye check.
pub(crate) const MAX_CHECKS: usize = 128;
/// Admission checks started per second (burst the same), and goodbye checks as many: with
/// the answers to strangers, everything flocon sends to addresses it has not verified
/// (docs/PROTOCOL.md §6). It is also how fast forged newcomers are worked through before
/// CHECK_BACKOFF silences them: a real newcomer announcing among K forged addresses waits
/// up to about K / CHECK_RATE seconds (480 forged: 8 s).
pub(crate) const CHECK_RATE: u32 = 60;
/// A check waits this long for its answer, then asks once more (a lost datagram, a peer
/// busy for a moment), then gives up.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
pub(crate) const CHECK_TRIES: u8 = 3;
/// The file name a check asks for: a valid QUERY name that is never a package, so the
/// answer is a DON'T HAVE (its instance and source address are what count).
pub(crate) const CHECK_NAME: &str = "flocon-check";
/// An address whose admission check stayed unanswered is not checked again for this long:
/// forged newcomers from addresses nobody receives at each cost one check per minute, and
/// cannot keep the CHECK_RATE budget spent for real ones (docs/PROTOCOL.md §8.3).
pub(crate) const CHECK_BACKOFF: Duration = Duration::from_secs(60);
/// Addresses remembered for CHECK_BACKOFF; beyond, the oldest is forgotten.
pub(crate) const MAX_FAILED_CHECKS: usize = 4096;
/// Admission checks that went silent whose answer is still taken when it comes late (the
/// newest kept): a peer busy for a moment (a loaded machine, a Pi swapping) answers the
/// queries waiting in its socket when it runs again, and that answer proves the address as
/// well as a prompt one; without this it would wait out CHECK_BACKOFF, unseen for a minute.
pub(crate) const MAX_LATE_CHECKS: usize = 64;

/// Why an address is being asked "are you there, and who are you?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckReason {
    /// An unknown instance announced from the address: it is admitted with this
    /// announcement once it answers from there.
    Admit(Box<(Header, Announce)>),
    /// A GOODBYE for the peer at the address: it is removed unless it answers.
    Goodbye,
}

/// One check: a QUERY with an unpredictable id (the cookie) sent to `addr`; only a host that
/// receives at `addr` can answer it with that id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Check {
    pub cookie: u32,
    pub addr: SocketAddr,
    /// The instance the datagram that started the check claimed.
    pub instance: u64,
    pub reason: CheckReason,
    pub tries: u8,
    /// When the latest try was sent.
    pub sent: Instant,
    pub next_at: Instant,
}

/// What became of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckOutcome {
    /// The claimed instance answered from the address.
    Confirmed(Check),
    /// Another instance answered from the address: the claim was false (or the claimed
    /// instance is gone and another daemon has its address).
    Refuted(Check, u64),
    /// No answer after CHECK_TRIES.
    Silent(Check),
}

/// The checks in flight, bounded, at most one per address.
#[derive(Debug)]
pub(crate) struct Checks {
    checks: Vec<Check>,
    /// Admission checks; goodbye checks (of known peers only) have their own budget, so a
    /// flood of forged newcomers cannot delay a real departure.
    budget: Bucket,
    goodbye_budget: Bucket,
    /// Addresses whose admission check stayed silent, with when.
    failed: HashMap<IpAddr, Instant>,
    /// Those silent admission checks, newest last, whose late answer still admits.
    late: VecDeque<Check>,
}

impl Default for Checks {
    fn default() -> Self {
        Self::new()
    }
}

impl Checks {
    pub(crate) fn new() -> Self {
        Checks {
            checks: Vec::new(),
            budget: Bucket::new(CHECK_RATE, CHECK_RATE),
            goodbye_budget: Bucket::new(CHECK_RATE, CHECK_RATE),
            failed: HashMap::new(),
            late: VecDeque::new(),
        }
    }

    /// Starts a check of `addr` unless one is in flight for it, the table is full or the
    /// rate is spent. Returns the check to send (its `cookie` is the QUERY id).
    pub(crate) fn start(
        &mut self,
        addr: SocketAddr,
        instance: u64,
        reason: CheckReason,
        cookie: u32,
        now: Instant,
    ) -> Option<&Check> {
        let addr = normalize_addr(addr);
        let admit = matches!(reason, CheckReason::Admit(_));
        if self.checks.len() >= MAX_CHECKS
            || self
                .checks
                .iter()
                .any(|c| c.addr == addr || c.cookie == cookie)
        {
            return None;
        }
        if admit
            && self
                .failed
                .get(&addr.ip())
                .is_some_and(|&t| now.saturating_duration_since(t) < CHECK_BACKOFF)
        {
            return None;
        }
        let budget = if admit {
            &mut self.budget
        } else {
            &mut self.goodbye_budget
        };
        if !budget.allow(now) {
            return None;
        }
        self.checks.push(Check {
            cookie,
            addr,
            instance,
            reason,
            tries: 1,
            sent: now,
            next_at: now + CHECK_TIMEOUT,
        });
        self.checks.last()
    }

    /// Forgets the check with this cookie, as if it had never started (its datagram could
    /// not be sent): no outcome, no backoff.
    pub(crate) fn cancel(&mut self, cookie: u32) {
        self.checks.retain(|c| c.cookie != cookie);
    }

    /// Whether a check of this instance is in flight.
    pub(crate) fn pending_for(&self, instance: u64) -> bool {
        self.checks.iter().any(|c| c.instance == instance)
    }

    /// An ANSWER with id `cookie` from `src`, sent by `instance`: the outcome of the check it
    /// belongs to (in flight, or an admission check that went silent and is answered late,
    /// which lifts that address's backoff), or None when it belongs to none (then it is an
    /// ordinary answer).
    pub(crate) fn on_answer(
        &mut self,
        src: SocketAddr,
        cookie: u32,
        instance: u64,
    ) -> Option<CheckOutcome> {
        let src = normalize_addr(src);
        let is_it = |c: &Check| c.cookie == cookie && c.addr == src;
        let c = if let Some(i) = self.checks.iter().position(is_it) {
            self.checks.swap_remove(i)
        } else {
            let i = self.late.iter().position(is_it)?;
            let c = self.late.remove(i)?;
            self.failed.remove(&src.ip());
            c
        };
        Some(if c.instance == instance {
            CheckOutcome::Confirmed(c)
        } else {
            CheckOutcome::Refuted(c, instance)
        })
    }

    /// Checks due at `now`: those to ask again (returned first, still in flight) and those
    /// that stayed silent (removed).
    pub(crate) fn due(&mut self, now: Instant) -> (Vec<Check>, Vec<CheckOutcome>) {
        let mut again = Vec::new();
        let mut silent = Vec::new();
        let mut i = 0;
        while i < self.checks.len() {
            let c = &mut self.checks[i];
            if c.next_at > now {
                i += 1;
            } else if c.tries < CHECK_TRIES {
                c.tries += 1;
                c.sent = now;
                c.next_at = now + CHECK_TIMEOUT;
                again.push(c.clone());
                i += 1;
            } else {
                let c = self.checks.swap_remove(i);
                if matches!(c.reason, CheckReason::Admit(_)) {
                    self.remember_failed(c.addr.ip(), now);
                    if self.late.len() >= MAX_LATE_CHECKS {
                        self.late.pop_front();
                    }
                    self.late.push_back(c.clone());
                }
                silent.push(CheckOutcome::Silent(c));
            }
        }
        (again, silent)
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.checks.iter().map(|c| c.next_at).min()
    }

    fn remember_failed(&mut self, ip: IpAddr, now: Instant) {
        if self.failed.len() >= MAX_FAILED_CHECKS {
            self.failed
                .retain(|_, t| now.saturating_duration_since(*t) < CHECK_BACKOFF);
            if self.failed.len() >= MAX_FAILED_CHECKS {
                let oldest = self.failed.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.failed.remove(&k);
                }
            }
        }
        self.failed.insert(ip, now);
    }

    pub(crate) fn len(&self) -> usize {
        self.checks.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }
}

/// One token bucket (GCRA) for a whole class of datagrams, e.g. everything sent to
/// unverified addresses: a flood of forged sources cannot make us send more than this.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    interval: Duration,
    tolerance: Duration,
    tat: Option<Instant>,
}

impl Bucket {
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / per_sec.max(1);
        Bucket {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            tat: None,
        }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        self.tat = Some(tat + self.interval);
        true
    }
}

/// Sources tracked at once; beyond that, the least-limited entry is forgotten (which only
/// resets that source to a full bucket).
pub(crate) const RATE_SOURCES: usize = 1024;
/// Sustained datagrams per second per source IP: a pacman -Syu from one peer asks one query
/// per package, in parallel downloads; 100/s is far above that and bounds our reply traffic
/// to one source at ~7 KB/s.
pub(crate) const RATE_PER_SEC: u32 = 100;
/// Burst allowed on top of the rate (a quick run of lookups after a db refresh).
pub(crate) const RATE_BURST: u32 = 200;

/// Per-source-IP token bucket, in its GCRA form: one "theoretical arrival time" per source.
/// Charge it for unsolicited datagrams (ANNOUNCE, GOODBYE, QUERY), not for ANSWERs: those
/// are matched against our own lookups, and a busy asker must not drop its own answers.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    sources: HashMap<IpAddr, Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub(crate) fn new() -> Self {
        Self::with_limits(RATE_PER_SEC, RATE_BURST)
    }

    pub(crate) fn with_limits(per_sec: u32, burst: u32) -> Self {
        let interval = Duration::from_secs(1) / per_sec.max(1);
        RateLimiter {
            interval,
            tolerance: interval * (burst.max(1) - 1),
            sources: HashMap::new(),
        }
    }

    /// Whether a datagram from `ip` may be handled now (and charges it if so).
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let tat = self.sources.get(&ip).map_or(now, |&t| t.max(now));
        if tat.saturating_duration_since(now) > self.tolerance {
            return false;
        }
        if !self.sources.contains_key(&ip) && self.sources.len() >= RATE_SOURCES {
            // Entries whose bucket is full again carry no information.
            self.sources.retain(|_, t| *t > now);
            if self.sources.len() >= RATE_SOURCES {
                let least = self
                    .sources
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(k, _)| *k);
                if let Some(k) = least {
                    self.sources.remove(&k);
                }
            }
        }
        self.sources
            .insert(ip, tat.checked_add(self.interval).unwrap_or(tat));
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.sources.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

/// First ban: long enough to finish the current pacman transaction without that peer.
pub(crate) const BAN_FIRST: Duration = Duration::from_secs(10 * 60);
/// Longest ban: a fixed or reinstalled host gets another chance at least daily.
pub(crate) const BAN_MAX: Duration = Duration::from_secs(24 * 3600);
/// A record is forgotten (strikes reset) this long after its ban ended.
pub(crate) const BAN_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Records kept; bans come from our own failed verifications (a whole transfer each), so
/// this is never reached in practice, but the table must still be bounded.
pub(crate) const MAX_BANS: usize = 1024;

/// What a ban is attached to: a daemon incarnation, or a host address (a peer that restarts
/// gets a new instance id but usually keeps its address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum BanKey {
    Instance(u64),
    Ip(IpAddr),
}

impl From<u64> for BanKey {
    fn from(instance: u64) -> Self {
        BanKey::Instance(instance)
    }
}

impl From<IpAddr> for BanKey {
    fn from(ip: IpAddr) -> Self {
        BanKey::Ip(normalize_addr(SocketAddr::new(ip, 1)).ip())
    }
}

impl std::fmt::Display for BanKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BanKey::Instance(i) => write!(f, "instance {i:016x}"),
            BanKey::Ip(ip) => write!(f, "address {ip}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ban {
    /// Offences counted into the current length (1 for a first ban).
    pub strikes: u32,
    pub since: Instant,
    pub until: Instant,
    pub reason: String,
}

impl Ban {
    pub(crate) fn is_active(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// Bans with growing length: BAN_FIRST, doubled for each repeat, capped at BAN_MAX.
#[derive(Debug, Default)]
pub(crate) struct Bans {
    records: Vec<(BanKey, Ban)>,
}

impl Bans {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Bans `key` from `now` and returns the ban's length. An offence while already banned
    /// (other transfers from the same peer failing) does not lengthen the ban: it was one
    /// bad state of that peer, not a repeat.
    pub(crate) fn ban(&mut self, key: impl Into<BanKey>, now: Instant, reason: &str) -> Duration {
        let key = key.into();
        let reason = crate::policy::one_line(reason);
        if let Some((_, b)) = self.records.iter_mut().find(|(k, _)| *k == key) {
            if b.is_active(now) {
                b.reason = reason;
                return b.until.saturating_duration_since(now);
            }
            let forgiven = now.saturating_duration_since(b.until) >= BAN_MEMORY;
            b.strikes = if forgiven {
                1
            } else {
                b.strikes.saturating_add(1)
            };
            let length = ban_length(b.strikes);
            b.since = now;
            b.until = now + length;
            b.reason = reason;
            return length;
        }
        if self.records.len() >= MAX_BANS {
            self.prune(now);
        }
        if self.records.len() >= MAX_BANS {
            // The record closest to its end is the one whose loss matters least.
            let soonest = self
                .records
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, b))| b.until);
            if let Some((i, _)) = soonest {
                self.records.remove(i);
            }
        }
        let length = ban_length(1);
        self.records.push((
            key,
            Ban {
                strikes: 1,
                since: now,
                until: now + length,
                reason,
            },
        ));
        length
    }

    /// `key`: a `BanKey`, an instance id (u64) or an `IpAddr`.
    pub(crate) fn is_banned(&self, key: impl Into<BanKey>, now: Instant) -> bool {
        self.get(key).is_some_and(|b| b.is_active(now))
    }

    pub(crate) fn get(&self, key: impl Into<BanKey>) -> Option<&Ban> {
        let key = key.into();
        self.records.iter().find(|(k, _)| *k == key).map(|(_, b)| b)
    }

    /// The bans in force at `now`, for status output: key, time left, reason.
    pub(crate) fn iter(&self, now: Instant) -> impl Iterator<Item = (BanKey, Duration, &str)> + '_ {
        self.records
            .iter()
            .filter(move |(_, b)| b.is_active(now))
            .map(move |(k, b)| {
                (
                    *k,
                    b.until.saturating_duration_since(now),
                    b.reason.as_str(),
                )
            })
    }

    /// Every record, including ended bans still remembered for escalation.
    pub(crate) fn records(&self) -> impl Iterator<Item = (&BanKey, &Ban)> {
        self.records.iter().map(|(k, b)| (k, b))
    }

    /// Forgets records whose memory has run out.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.records
            .retain(|(_, b)| now.saturating_duration_since(b.until) < BAN_MEMORY);
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn ban_length(strikes: u32) -> Duration {
    // 2^8 × 10 min already exceeds a day; the cap keeps the shift and product small.
    let doublings = strikes.saturating_sub(1).min(8);
    (BAN_FIRST * (1u32 << doublings)).min(BAN_MAX)
}

/// A peer able to serve the file, as returned by `Lookup::candidates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub instance: u64,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
    pub uploads: u16,
    /// Not whole there yet: it is arriving (an ARRIVING answer, docs/PROTOCOL.md §4.6).
    pub arriving: Option<InFlight>,
}

/// One "who has this file?" round: the peers asked, their answers in arrival order, and the
/// deadline. Ends when every asked peer has answered or the deadline passes.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    id: u32,
    name: String,
    expected: Option<(u64, Option<[u8; 32]>)>,
    /// (instance, answered), duplicates removed, at most MAX_PEERS.
    asked: Vec<(u64, bool)>,
    answers: Vec<(u64, Answer)>,
    /// ARRIVING answers, in arrival order.
    arriving: Vec<(u64, Arriving)>,
    deadline: Instant,
    /// Without a candidate, no decision before this (the INTENT's wait, digest.rs MISS_WAIT).
    not_before: Option<Instant>,
    /// Peers sanctioned when it started (banned, benched): not asked, not even late.
    excluded: Vec<u64>,
}

impl Lookup {
    pub(crate) fn new(
        id: u32,
        name: String,
        expected: Option<(u64, Option<[u8; 32]>)>,
        asked: Vec<u64>,
        deadline: Instant,
    ) -> Self {
        let mut list: Vec<(u64, bool)> = Vec::with_capacity(asked.len().min(MAX_PEERS));
        for inst in asked {
            if list.len() < MAX_PEERS && !list.iter().any(|(i, _)| *i == inst) {
                list.push((inst, false));
            }
        }
        Lookup {
            id,
            name,
            expected,
            asked: list,
            answers: Vec::new(),
            arriving: Vec::new(),
            deadline,
            not_before: None,
            excluded: Vec::new(),
        }
    }

    /// The peers sanctioned when it started: never asked by it, not even late.
    pub(crate) fn set_excluded(&mut self, excluded: Vec<u64>) {
        self.excluded = excluded;
    }

    pub(crate) fn is_excluded(&self, instance: u64) -> bool {
        self.excluded.contains(&instance)
    }

    /// Without a candidate, the lookup does not decide before `at`.
    pub(crate) fn set_not_before(&mut self, at: Instant) {
        self.not_before = Some(at);
    }

    pub(crate) fn not_before(&self) -> Option<Instant> {
        self.not_before
    }

    /// The QUERY to send to every asked peer.
    pub(crate) fn query(&self) -> Query {
        Query {
            id: self.id,
            name: self.name.clone(),
            size: self.expected.map(|(size, _)| size),
            sha256: self.expected.and_then(|(_, sha)| sha),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Records an answer if it is for this lookup and from a peer that was asked and has not
    /// answered yet (the caller has checked that its source is that peer's address). Returns
    /// whether every asked peer has now answered.
    pub(crate) fn on_answer(&mut self, from_instance: u64, a: &Answer) -> bool {
        if a.id != self.id {
            return self.all_answered();
        }
        if self.mark_answered(from_instance) {
            self.answers.push((from_instance, a.clone()));
        }
        self.all_answered()
    }

    /// An ARRIVING answer (the file is on its way there), recorded as `on_answer` records a
    /// HAVE. Returns whether every asked peer has now answered.
    pub(crate) fn on_arriving(&mut self, from_instance: u64, a: &Arriving) -> bool {
        if a.id != self.id {
            return self.all_answered();
        }
        if self.mark_answered(from_instance) {
            self.arriving.push((from_instance, a.clone()));
        }
        self.all_answered()
    }

    /// Marks `instance`'s answer in: whether it was asked and had not answered yet. After an
    /// INTENT (`not_before` set) every peer was asked: one not asked by QUERY counts once.
    fn mark_answered(&mut self, instance: u64) -> bool {
        if let Some(slot) = self.asked.iter_mut().find(|(i, _)| *i == instance) {
            return !std::mem::replace(&mut slot.1, true);
        }
        if self.not_before.is_some() && self.asked.len() < MAX_PEERS {
            self.asked.push((instance, true));
            return true;
        }
        false
    }

    /// Whether `instance` was asked (or answered an INTENT).
    pub(crate) fn was_asked(&self, instance: u64) -> bool {
        self.asked.iter().any(|(i, _)| *i == instance)
    }

    /// Asks `instance` too (a late QUERY within the same budget).
    pub(crate) fn ask(&mut self, instance: u64) {
        if !self.was_asked(instance) && self.asked.len() < MAX_PEERS {
            self.asked.push((instance, false));
        }
    }

    /// Whether `instance` was asked and has not answered yet.
    pub(crate) fn is_pending(&self, instance: u64) -> bool {
        self.asked
            .iter()
            .any(|(i, answered)| *i == instance && !answered)
    }

    /// The peer left (goodbye, expiry, eviction): stop waiting for it. Returns whether it
    /// was still awaited.
    pub(crate) fn forget(&mut self, instance: u64) -> bool {
        let before = self.asked.len();
        self.asked
            .retain(|(i, answered)| *i != instance || *answered);
        self.asked.len() != before
    }

    pub(crate) fn asked_count(&self) -> usize {
        self.asked.len()
    }

    pub(crate) fn answered_count(&self) -> usize {
        self.answers.len() + self.arriving.len()
    }

    pub(crate) fn all_answered(&self) -> bool {
        self.asked.iter().all(|(_, answered)| *answered)
    }

    /// Every asked peer answered (and, when nobody has the file, the INTENT's wait is
    /// over), or the deadline passed.
    pub(crate) fn is_done(&self, now: Instant) -> bool {
        now >= self.deadline
            || (self.all_answered()
                && (self.not_before.is_none_or(|t| now >= t)
                    || self.answers.iter().any(|(_, a)| self.matches(a))))
    }

    /// `is_done`, or the best possible candidate is already known: an idle peer (0 uploads)
    /// that answered first among idle ones cannot be beaten by a later answer.
    pub(crate) fn can_decide(&self, now: Instant) -> bool {
        self.is_done(now)
            || self
                .answers
                .iter()
                .any(|(_, a)| a.uploads == 0 && self.matches(a))
    }

    /// Instances asked that have not answered (for logging unresponsive peers).
    pub(crate) fn pending(&self) -> impl Iterator<Item = u64> + '_ {
        self.asked
            .iter()
            .filter(|(_, answered)| !answered)
            .map(|(i, _)| *i)
    }

    fn matches(&self, a: &Answer) -> bool {
        a.have
            && match self.expected {
                None => true,
                Some((size, sha)) => {
                    a.size == size
                        && match (sha, a.sha256) {
                            (Some(want), Some(got)) => want == got,
                            _ => true,
                        }
                }
            }
    }

    /// "Have" answers that fit the expected size (and SHA-256 when both sides know it), least
    /// busy first, then in answer order (a faster answer suggests a closer or idler peer).
    pub(crate) fn candidates(&self) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self
            .answers
            .iter()
            .filter(|(_, a)| self.matches(a))
            .map(|(inst, a)| Candidate {
                instance: *inst,
                size: a.size,
                sha256: a.sha256,
                uploads: a.uploads,
                arriving: None,
            })
            .collect();
        // Stable, so equal upload counts keep answer order.
        out.sort_by_key(|c| c.uploads);
        // then the copies in flight that fit the same way: fetching before looking, the
        // furthest along first, the lowest instance first (the one that fetches when all are
        // still looking); whether to join one is the asker's decision (front.rs)
        let mut flying: Vec<Candidate> = self
            .arriving
            .iter()
            .filter(|(_, a)| {
                let as_have = Answer {
                    id: a.id,
                    have: true,
                    size: a.size,
                    sha256: a.sha256,
                    uploads: a.uploads,
                };
                self.matches(&as_have)
            })
            .map(|(inst, a)| Candidate {
                instance: *inst,
                size: a.size,
                sha256: a.sha256,
                uploads: a.uploads,
                arriving: Some(InFlight {
                    received: a.received,
                    rate: a.rate,
                    looking: a.looking,
                }),
            })
            .collect();
        flying.sort_by_key(|c| {
            let f = c.arriving.unwrap_or(InFlight {
                received: 0,
                rate: 0,
                looking: true,
            });
            (f.looking, u64::MAX - f.received, c.instance)
        });
        out.extend(flying);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const OWN: u64 = 0xaaaa;

    fn v4(last: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 19432)
    }

    fn ann(name: &str) -> Announce {
        Announce {
            tcp_port: 19432,
            uploads: 0,
            name: name.into(),
            distro: "arch".into(),
            archs: vec!["x86_64".into()],
        }
    }

    fn h(instance: u64, seq: u32) -> Header {
        Header { instance, seq }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// An announcement as the socket layer applies it: an unknown instance is admitted
    /// (as if its check had been answered), a known one updated.
    fn verified(
        t: &mut PeerTable,
        src: SocketAddr,
        h: &Header,
        a: &Announce,
        now: Instant,
    ) -> PeerEvent {
        match t.on_announce(src, h, a, now) {
            PeerEvent::Ignored(IgnoreReason::Unverified) => t.admit(src, h, a, now, 0),
            e => e,
        }
    }

    #[test]
    fn new_update_stale_own() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        assert_eq!(
            verified(&mut t, v4(1), &h(OWN, 1), &ann("me"), t0),
            PeerEvent::Ignored(IgnoreReason::Own)
        );
        assert_eq!(
            verified(&mut t, v4(1), &h(1, 5), &ann("a"), t0),
            PeerEvent::New { dropped: None }
        );
        let mut b = ann("a2");
        b.uploads = 3;
        let t1 = t0 + secs(30);
        assert_eq!(
            verified(&mut t, v4(1), &h(1, 6), &b, t1),
            PeerEvent::Updated { dropped: None }
        );
        let p = t.get(1).unwrap();
        assert_eq!(
            (p.name.as_str(), p.uploads, p.last_seen, p.first_seen),
            ("a2", 3, t1, t0)
        );
        assert_eq!(p.version, VERSION);
        assert_eq!(p.tcp_addr(), v4(1));
        // Replayed and duplicate announcements change nothing.
        for seq in [6, 5, 0] {
            assert_eq!(
                verified(&mut t, v4(1), &h(1, seq), &ann("old"), t1 + secs(1)),
                PeerEvent::Ignored(IgnoreReason::Stale)
            );
        }
        assert_eq!(t.get(1).unwrap().name, "a2");
        assert_eq!(t.by_addr(&v4(1)).unwrap().instance, 1);
        assert_eq!(t.len(), 1);
        let bad = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 194, 32)), 19432);
        assert_eq!(
            verified(&mut t, bad, &h(2, 1), &ann("m"), t1),
            PeerEvent::Ignored(IgnoreReason::BadSource)
        );
        assert_eq!(
            verified(
                &mut t,
                SocketAddr::new(v4(3).ip(), 0),
                &h(2, 1),
                &ann("m"),
                t1
            ),
            PeerEvent::Ignored(IgnoreReason::BadSource)
        );
    }

    #[test]
    fn seq_wraps() {
        assert!(seq_newer(0, u32::MAX));
        assert!(seq_newer(5, 4));
        assert!(!seq_newer(4, 4));
        assert!(!seq_newer(4, 5));
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        verified(&mut t, v4(1), &h(1, u32::MAX), &ann("a"), t0);
        assert!(matches!(
            verified(&mut t, v4(1), &h(1, 0), &ann("b"), t0),
            PeerEvent::Updated { .. }
        ));
    }

    #[test]
    fn expiry() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        verified(&mut t, v4(1), &h(1, 1), &ann("a"), t0);
        verified(&mut t, v4(2), &h(2, 1), &ann("b"), t0 + secs(60));
        assert_eq!(t.next_expiry(), Some(t0 + PEER_EXPIRY));
        assert!(
            t.expire(t0 + PEER_EXPIRY - Duration::from_millis(1))
                .is_empty()
        );
        let gone = t.expire(t0 + PEER_EXPIRY);
        assert_eq!(gone.iter().map(|p| p.instance).collect::<Vec<_>>(), [1]);
        assert_eq!(t.len(), 1);
        // Keeping on announcing keeps it alive.
        verified(&mut t, v4(2), &h(2, 2), &ann("b"), t0 + secs(150));
        assert!(t.expire(t0 + secs(200)).is_empty());
        assert_eq!(t.expire(t0 + secs(270)).len(), 1);
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn goodbye_needs_the_recorded_address() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        verified(&mut t, v4(1), &h(1, 10), &ann("a"), t0);
        assert_eq!(t.on_goodbye(v4(9), &h(1, 11)), None, "spoofed source");
        let other_port = SocketAddr::new(v4(1).ip(), 4000);
        assert_eq!(t.on_goodbye(other_port, &h(1, 11)), None, "other port");
        assert_eq!(
            t.on_goodbye(v4(1), &h(1, 9)),
            None,
            "replayed older goodbye"
        );
        assert_eq!(t.on_goodbye(v4(1), &h(2, 11)), None, "unknown instance");
        assert_eq!(t.len(), 1);
        assert_eq!(t.on_goodbye(v4(1), &h(1, 11)), Some(1));
        assert_eq!(t.len(), 1, "removed only once its check fails");
        assert_eq!(t.remove(1).map(|p| p.instance), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn restart_at_same_address_replaces() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        verified(&mut t, v4(1), &h(1, 50), &ann("a"), t0);
        match verified(&mut t, v4(1), &h(7, 0), &ann("a"), t0 + secs(5)) {
            PeerEvent::New { dropped: Some(p) } => assert_eq!(p.instance, 1),
            e => panic!("{e:?}"),
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.by_addr(&v4(1)).unwrap().instance, 7);
    }

    fn v6(last: u16, scope: u32) -> SocketAddr {
        let ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, last);
        SocketAddr::V6(SocketAddrV6::new(ip, 19432, 7, scope))
    }

    #[test]
    fn dual_stack_does_not_flap_but_moves_when_silent() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        verified(&mut t, v4(1), &h(1, 1), &ann("a"), t0);
        // The IPv6 copy of the same round is a duplicate.
        assert_eq!(
            verified(&mut t, v6(1, 3), &h(1, 1), &ann("a"), t0),
            PeerEvent::Ignored(IgnoreReason::Stale)
        );
        // Next round the IPv6 copy arrives first: accepted, address kept.
        let t1 = t0 + secs(30);
        assert!(matches!(
            verified(&mut t, v6(1, 3), &h(1, 2), &ann("a"), t1),
            PeerEvent::Updated { .. }
        ));
        verified(&mut t, v4(1), &h(1, 2), &ann("a"), t1);
        assert_eq!(t.get(1).unwrap().addr, v4(1));
        assert_eq!(t.get(1).unwrap().last_seen, t1);
        // The IPv4 address goes away: after ADDR_FAILOVER of silence the peer moves to IPv6,
        // keeping its scope id and losing the flowinfo.
        let t2 = t1 + ADDR_FAILOVER + secs(1);
        verified(&mut t, v6(1, 3), &h(1, 3), &ann("a"), t2);
        let p = t.get(1).unwrap();
        assert_eq!(p.addr, normalize_addr(v6(1, 3)));
        match p.addr {
            SocketAddr::V6(a) => assert_eq!((a.scope_id(), a.flowinfo()), (3, 0)),
            SocketAddr::V4(_) => panic!(),
        }
        // Goodbye must come from the new address.
        assert!(t.on_goodbye(v4(1), &h(1, 4)).is_none());
        assert!(t.on_goodbye(v6(1, 3), &h(1, 4)).is_some());
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mapped = SocketAddr::new(
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
            19432,
        );
        assert_eq!(normalize_addr(mapped), v4(1));
        let mut t = PeerTable::new(OWN);
        verified(&mut t, mapped, &h(1, 1), &ann("a"), Instant::now());
        assert!(t.by_addr(&v4(1)).is_some());
        assert!(t.on_goodbye(v4(1), &h(1, 2)).is_some());
    }

    fn fill(t: &mut PeerTable, at: Instant) {
        for i in 0..MAX_PEERS as u64 {
            let ip = Ipv4Addr::from(0x0a00_0000 + i as u32 + 1);
            let src = SocketAddr::new(IpAddr::V4(ip), 19432);
            assert!(matches!(
                verified(
                    t,
                    src,
                    &h(100 + i, 1),
                    &ann("p"),
                    at + Duration::from_millis(i)
                ),
                PeerEvent::New { dropped: None }
            ));
        }
    }

    #[test]
    fn full_table_keeps_useful_peers() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        fill(&mut t, t0);
        assert_eq!(t.len(), MAX_PEERS);
        let newcomer = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), 19432);
        // Every peer had a file for us: a (verified) newcomer is refused.
        let t1 = t0 + ANNOUNCE_INTERVAL_MAX;
        for i in 0..MAX_PEERS as u64 {
            t.credit_answer(100 + i, true);
        }
        assert_eq!(
            t.admit(newcomer, &h(9999, 1), &ann("n"), t1, 7),
            PeerEvent::Ignored(IgnoreReason::TableFull)
        );
        // Only peers 100 and 101 never had one: the newcomer takes the place of one of them,
        // chosen by the random value, never a useful peer.
        let mut t = PeerTable::new(OWN);
        fill(&mut t, t0);
        for i in 2..MAX_PEERS as u64 {
            t.credit_answer(100 + i, true);
        }
        t.credit_served(102);
        match t.admit(newcomer, &h(9999, 1), &ann("n"), t1, 1) {
            PeerEvent::New { dropped: Some(p) } => assert_eq!(p.instance, 101),
            e => panic!("{e:?}"),
        }
        assert!(t.get(9999).is_some() && t.get(100).is_some());
        // Once a peer has missed an announcement, the stalest goes first, useful or not.
        let t2 = t0 + secs(40);
        for i in 1..MAX_PEERS as u64 {
            let src = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32 + 1)),
                19432,
            );
            t.on_announce(src, &h(100 + i, 2), &ann("p"), t2);
        }
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2)), 19432);
        match t.admit(other, &h(7777, 1), &ann("o"), t2, 0) {
            PeerEvent::New { dropped: Some(p) } => assert_eq!(p.instance, 100),
            e => panic!("{e:?}"),
        }
        assert_eq!(t.len(), MAX_PEERS);
    }

    #[test]
    fn unknown_instances_wait_for_their_check() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        assert_eq!(
            t.on_announce(v4(1), &h(1, 1), &ann("a"), t0),
            PeerEvent::Ignored(IgnoreReason::Unverified)
        );
        assert!(t.is_empty());
        assert_eq!(
            t.admit(v4(1), &h(1, 1), &ann("a"), t0, 0),
            PeerEvent::New { dropped: None }
        );
        // A forged far-ahead seq cannot make the real announcements stale enough to expire
        // the peer: any announcement from its recorded address keeps it alive.
        t.on_announce(v4(1), &h(1, 0x7000_0000), &ann("forged"), t0 + secs(1));
        assert_eq!(
            t.on_announce(v4(1), &h(1, 2), &ann("a"), t0 + secs(100)),
            PeerEvent::Ignored(IgnoreReason::Stale)
        );
        assert!(t.expire(t0 + secs(100) + PEER_EXPIRY / 2).is_empty());
        // A newer one from another address (a dual-stack copy) refreshes it without moving it.
        t.on_announce(v4(9), &h(1, 0x7000_0001), &ann("a"), t0 + secs(110));
        assert_eq!(t.get(1).unwrap().addr, v4(1));
        assert!(t.expire(t0 + secs(100) + PEER_EXPIRY).is_empty());
        assert_eq!(t.expire(t0 + secs(110) + PEER_EXPIRY).len(), 1);
    }

    #[test]
    fn lookup_budget_stretches_for_late_answers_and_recovers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = AnswerDelay::default();
        assert_eq!(
            d.budget(LOOKUP_BUDGET),
            LOOKUP_BUDGET,
            "idle: the configured budget"
        );
        d.started(1, t0);
        d.answered(1, t0 + ms(2));
        assert_eq!(
            d.budget(LOOKUP_BUDGET),
            LOOKUP_BUDGET,
            "fast answers change nothing"
        );
        // an admission check answered late stretches the budget as a lookup's answer would
        let mut checked = AnswerDelay::default();
        checked.observe(ms(70), t0);
        assert_eq!(checked.budget(LOOKUP_BUDGET), ms(140));
        // an answer after its lookup's deadline (a loaded peer) stretches the next budget
        d.started(2, t0 + ms(10));
        d.answered(2, t0 + ms(130));
        assert_eq!(d.budget(LOOKUP_BUDGET), ms(240));
        assert_eq!(
            d.budget(ms(1000)),
            ms(1000),
            "a larger configured budget stays"
        );
        // ... never past MAX_LOOKUP_STRETCH
        d.started(3, t0 + ms(200));
        d.answered(3, t0 + ms(3200));
        assert_eq!(d.budget(LOOKUP_BUDGET), MAX_LOOKUP_STRETCH);
        // prompt answers bring it back down
        for i in 10..80u32 {
            let at = t0 + ms(4000 + u64::from(i) * 10);
            d.started(i, at);
            d.answered(i, at + ms(1));
        }
        assert_eq!(d.budget(LOOKUP_BUDGET), LOOKUP_BUDGET);
        // answers to lookups it does not remember (never started, or pushed out by the
        // RECENT_LOOKUPS since: id 1 is) count for nothing
        d.answered(999, t0 + ms(9000));
        d.answered(1, t0 + ms(9000));
        assert_eq!(d.budget(LOOKUP_BUDGET), LOOKUP_BUDGET);
        // a remembered one does, however late
        d.answered(79, t0 + ms(9000));
        assert_eq!(d.budget(LOOKUP_BUDGET), MAX_LOOKUP_STRETCH);
    }

    #[test]
    fn a_miss_waits_the_floor_on_a_fast_lan_and_longer_while_answers_come_late() {
        let us = Duration::from_micros;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut d = AnswerDelay::default();
        assert_eq!(
            d.miss_wait(us(500), ms(50)),
            us(500),
            "nothing seen yet: the floor"
        );
        d.observe(us(150), t0);
        assert_eq!(
            d.miss_wait(us(500), ms(50)),
            us(500),
            "a wired LAN: the floor"
        );
        // a peer on Wi-Fi or a loaded one answered in 4 ms: its answer to an INTENT comes
        // as late, and the miss waits for it
        d.observe(ms(4), t0);
        assert_eq!(d.miss_wait(us(500), ms(50)), ms(8));
        // never past the lookup's budget
        d.observe(ms(300), t0);
        assert_eq!(d.miss_wait(us(500), ms(50)), ms(50));
        // and back down as answers come fast again
        for _ in 0..200 {
            d.observe(us(100), t0);
        }
        assert_eq!(d.miss_wait(us(500), ms(50)), us(500));
    }

    #[test]
    fn a_late_answer_stops_governing_misses_once_past() {
        let us = Duration::from_micros;
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut d = AnswerDelay::default();
        d.started(1, t0);
        d.answered(1, t0 + us(150));
        // one answer came 20 ms late (a peer busy for a moment), then only misses: digests
        // said no, nobody was asked, no answer came to bring the mark down
        d.started(2, at(1) - ms(20));
        d.answered(2, at(1));
        // (lookup id, when it starts, the miss wait it gets)
        for (id, s, want, why) in [
            (3, 1, ms(40), "at once: twice the spike"),
            (4, 10, ms(40), "within a half-life: kept"),
            (5, 11, ms(20), "one half-life: halved"),
            (6, 41, ms(2) + us(500), "four: a sixteenth"),
            (7, 71, us(500), "then the floor"),
        ] {
            d.started(id, at(s));
            assert_eq!(d.miss_wait(us(500), ms(50)), want, "{why}");
        }
        // a new late answer counts in full at once, and its half-life starts from it
        d.answered(7, at(71) + ms(4));
        d.started(8, at(80));
        assert_eq!(d.miss_wait(us(500), ms(50)), ms(8));
        d.started(9, at(82));
        assert_eq!(d.miss_wait(us(500), ms(50)), ms(4));
        // a gap far longer than any half-life leaves nothing
        d.started(10, at(100_000));
        assert_eq!(d.miss_wait(us(500), ms(50)), us(500));
        assert_eq!(d.budget(LOOKUP_BUDGET), LOOKUP_BUDGET);
    }

    #[test]
    fn checks_confirm_refute_and_time_out() {
        let t0 = Instant::now();
        let mut c = Checks::new();
        let admit = CheckReason::Admit(Box::new((h(5, 1), ann("x"))));
        assert!(c.start(v4(1), 5, admit.clone(), 77, t0).is_some());
        assert!(c.pending_for(5));
        assert!(
            c.start(v4(1), 6, CheckReason::Goodbye, 78, t0).is_none(),
            "one per address"
        );
        assert!(
            c.start(v4(2), 6, CheckReason::Goodbye, 77, t0).is_none(),
            "cookie in use"
        );
        assert!(c.start(v4(2), 6, CheckReason::Goodbye, 79, t0).is_some());
        // wrong cookie or wrong address: not a check's answer
        assert_eq!(c.on_answer(v4(1), 78, 5), None);
        assert_eq!(c.on_answer(v4(3), 77, 5), None);
        match c.on_answer(v4(1), 77, 5) {
            Some(CheckOutcome::Confirmed(k)) => assert_eq!((k.instance, &k.reason), (5, &admit)),
            o => panic!("{o:?}"),
        }
        assert!(!c.pending_for(5));
        // the goodbye check: asked CHECK_TRIES times, then silent
        assert_eq!(c.next_deadline(), Some(t0 + CHECK_TIMEOUT));
        for k in 1..CHECK_TRIES as u32 {
            let (again, silent) = c.due(t0 + CHECK_TIMEOUT * k);
            assert_eq!((again.len(), silent.len()), (1, 0));
            assert_eq!(again[0].cookie, 79);
            assert_eq!(
                again[0].sent,
                t0 + CHECK_TIMEOUT * k,
                "a retry's delay counts from it"
            );
        }
        let (again, silent) = c.due(t0 + CHECK_TIMEOUT * CHECK_TRIES as u32);
        assert_eq!(again.len(), 0);
        assert!(matches!(&silent[..], [CheckOutcome::Silent(k)] if k.instance == 6));
        assert!(c.is_empty());
        // a silent admission check: that address is not checked again for CHECK_BACKOFF
        let t1 = t0 + secs(1);
        c.start(v4(7), 70, admit.clone(), 700, t1);
        for k in 1..=CHECK_TRIES as u32 {
            c.due(t1 + CHECK_TIMEOUT * k);
        }
        assert!(
            c.start(v4(7), 71, admit.clone(), 701, t1 + secs(30))
                .is_none()
        );
        assert!(
            c.start(v4(7), 71, CheckReason::Goodbye, 701, t1 + secs(30))
                .is_some()
        );
        c.due(t1 + secs(31));
        c.due(t1 + secs(32));
        c.due(t1 + secs(33));
        assert!(
            c.start(v4(7), 71, admit.clone(), 702, t1 + CHECK_BACKOFF + secs(1))
                .is_some()
        );
        // a silent admission check answered late (the peer was busy): admitted after all,
        // and its address is not held back
        let mut c = Checks::new();
        let t2 = t0 + secs(300);
        c.start(v4(8), 80, admit.clone(), 800, t2);
        for k in 1..=CHECK_TRIES as u32 {
            c.due(t2 + CHECK_TIMEOUT * k);
        }
        assert!(c.is_empty());
        assert_eq!(c.on_answer(v4(9), 800, 80), None, "from another address");
        assert_eq!(c.on_answer(v4(8), 801, 80), None, "another cookie");
        match c.on_answer(v4(8), 800, 80) {
            Some(CheckOutcome::Confirmed(k)) => assert_eq!((k.instance, &k.reason), (80, &admit)),
            o => panic!("{o:?}"),
        }
        assert_eq!(c.on_answer(v4(8), 800, 80), None, "only once");
        assert!(
            c.start(v4(8), 81, admit.clone(), 802, t2 + secs(2))
                .is_some()
        );
        // ... kept for the newest MAX_LATE_CHECKS only
        let mut c = Checks::new();
        let t3 = t0 + secs(400);
        let n = MAX_LATE_CHECKS as u32 + 1;
        for i in 0..n {
            let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a02_0000 + i)), 19432);
            assert!(
                c.start(
                    a,
                    1000 + u64::from(i),
                    admit.clone(),
                    9000 + i,
                    t3 + secs(u64::from(i))
                )
                .is_some()
            );
            for k in 1..=CHECK_TRIES as u32 {
                c.due(t3 + secs(u64::from(i)) + CHECK_TIMEOUT * k);
            }
        }
        let first = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a02_0000)), 19432);
        assert_eq!(
            c.on_answer(first, 9000, 1000),
            None,
            "the oldest was dropped"
        );
        let last = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a02_0000 + n - 1)), 19432);
        assert!(
            c.on_answer(last, 9000 + n - 1, 1000 + u64::from(n - 1))
                .is_some()
        );
        // another instance answering refutes the claim
        c.start(v4(4), 8, CheckReason::Goodbye, 80, t0 + secs(200));
        assert!(matches!(
            c.on_answer(v4(4), 80, 9),
            Some(CheckOutcome::Refuted(k, 9)) if k.instance == 8
        ));
        // bounded in rate: a flood of claims starts at most CHECK_RATE checks per second
        let mut c = Checks::new();
        let t9 = t0 + secs(10);
        let started = (0..1000u32)
            .filter(|&i| {
                let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)), 19432);
                c.start(a, i as u64 + 100, admit.clone(), i, t9).is_some()
            })
            .count();
        assert_eq!(started, CHECK_RATE as usize);
        assert!(c.len() <= MAX_CHECKS);
        // ... and goodbye checks still have their own budget
        let a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)), 19432);
        assert!(c.start(a, 5, CheckReason::Goodbye, 5_000_000, t9).is_some());
        // a check whose QUERY never left is forgotten: no outcome, no backoff
        let mut c = Checks::new();
        let b = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 9, 8)), 19432);
        assert!(c.start(b, 6, admit.clone(), 600, t9).is_some());
        c.cancel(600);
        assert!(!c.pending_for(6) && c.is_empty());
        assert!(c.due(t9 + secs(5)).1.is_empty());
        assert!(c.start(b, 6, admit.clone(), 601, t9 + secs(1)).is_some());
    }

    #[test]
    fn lookups_ask_useful_peers_first_and_silent_ones_rarely() {
        let t0 = Instant::now();
        let mut t = PeerTable::new(OWN);
        for i in 1..=5u8 {
            verified(&mut t, v4(i), &h(i as u64, 1), &ann("p"), t0);
        }
        t.credit_answer(4, true);
        t.credit_served(5);
        for _ in 0..SILENT_AFTER {
            t.note_unanswered(2, t0);
        }
        let targets = |t: &PeerTable, round, max, now| {
            (t.lookup_targets("f", (round, now), max, None, |_| false).0)
                .iter()
                .map(|x| x.0)
                .collect::<Vec<u64>>()
        };
        let order = |t: &PeerTable, round| targets(t, round, 10, t0 + SILENT_FOR);
        // a burst of unanswered queries is not silence yet
        assert_eq!(targets(&t, 1, 10, t0 + secs(1)).len(), 5);
        assert_eq!(order(&t, 1), [5, 4, 1, 3]);
        assert_eq!(order(&t, SILENT_RETRY), [5, 4, 1, 3, 2]);
        assert_eq!(targets(&t, 1, 2, t0).len(), 2);
        t.credit_answer(2, false);
        assert_eq!(order(&t, 1), [5, 4, 1, 2, 3]);
        assert_eq!(t.by_ip(v4(3).ip()).map(|p| p.instance), Some(3));
        let mut b = Bucket::new(10, 2);
        assert!(b.allow(t0) && b.allow(t0) && !b.allow(t0));
        assert!(b.allow(t0 + Duration::from_millis(100)));
    }

    /// The loop around discovery's deadlines, as daemon.rs runs it: timers (a list here) fire
    /// in order; each firing runs what is due and arms again. `wake` false is the rule before
    /// `Wake` (arm again only when something was done). Returns the announcements sent in
    /// 10 s after a restart sequence: an announcement goes out while a goodbye check of the
    /// restarted peer's address is in flight (the only timer is then the check's timeout),
    /// and the new daemon at that address answers the check before its timeout.
    fn announcements_after_refuted_goodbye(wake: bool) -> usize {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = AnnounceTimer::with_interval(t0, secs(1));
        let (mut c, mut w) = (Checks::new(), Wake::default());
        let next = |a: &AnnounceTimer, c: &Checks| {
            c.next_deadline()
                .map_or(a.deadline(), |d| d.min(a.deadline()))
        };
        let mut timers = vec![];
        // the goodbye: a check starts, and the loop arms for its timeout
        c.start(v4(2), 20, CheckReason::Goodbye, 7, t0).unwrap();
        timers.extend(w.arm(next(&a, &c)));
        // the announcement goes out (the start-up ones done), while the check is in flight
        for _ in 0..STARTUP_ANNOUNCES {
            a.sent(t0 + ms(10), 0);
        }
        timers.extend(w.arm(next(&a, &c)));
        // the new daemon at that address answers: the goodbye is refuted, no deadline left
        assert!(matches!(
            c.on_answer(v4(2), 7, 21),
            Some(CheckOutcome::Refuted(..))
        ));
        let mut sent = 1;
        while let Some(i) = (0..timers.len()).min_by_key(|&i| timers[i]) {
            let now = timers.swap_remove(i);
            if now > t0 + secs(10) {
                break;
            }
            w.fired(now);
            let (again, silent) = c.due(now);
            let mut did = !again.is_empty() || !silent.is_empty();
            if a.is_due(now) {
                a.sent(now, 0);
                sent += 1;
                did = true;
            }
            if wake || did {
                timers.extend(w.arm(next(&a, &c)));
            }
        }
        sent
    }

    #[test]
    fn wake_stays_armed_when_its_deadline_goes_away() {
        // before Wake: the timer for the check's timeout fired with nothing due, was not
        // armed again, and nothing was announced any more (a restarted peer, which admits
        // us only after hearing an announcement, never saw us)
        assert_eq!(announcements_after_refuted_goodbye(false), 1);
        let n = announcements_after_refuted_goodbye(true);
        assert!(
            (9..=14).contains(&n),
            "{n} announcements in 10 s at a 1 s interval"
        );
        // a deadline brought forward gets a timer; one later than the armed one does not
        let t0 = Instant::now();
        let mut w = Wake::default();
        assert_eq!(w.arm(t0 + secs(5)), Some(t0 + secs(5)));
        assert_eq!(w.arm(t0 + secs(1)), Some(t0 + secs(1)));
        assert_eq!(w.arm(t0 + secs(3)), None);
        // fired: armed again at the next deadline, even a later one; a stale timer (the
        // one for 5 s) firing early does not forget the armed one
        w.fired(t0 + secs(1));
        assert_eq!(w.arm(t0 + secs(7)), Some(t0 + secs(7)));
        w.fired(t0 + secs(5));
        assert_eq!(w.arm(t0 + secs(7)), None);
    }

    #[test]
    fn a_sanctioned_peer_is_asked_by_neither_choice_even_when_its_digest_holds_the_file() {
        use crate::digest::{DIGEST_FANOUT, Digest};
        let t0 = Instant::now();
        let file = "f-1-1-any.pkg.tar.zst";
        let mut t = PeerTable::new(OWN);
        // DIGEST_FANOUT + 2 peers whose digest holds the file, one whose digest does not, and
        // one without a digest; the first DIGEST_FANOUT served us (they rank first) and are
        // benched (one stalled, say)
        let holders = DIGEST_FANOUT as u64 + 2;
        for i in 1..=holders + 2 {
            verified(&mut t, v4(i as u8), &h(i, 1), &ann("p"), t0);
            if i <= holders + 1 {
                let d = t.digest_mut(i).unwrap();
                assert!(d.announced(1));
                let held = if i <= holders {
                    file
                } else {
                    "other-1-1-any.pkg.tar.zst"
                };
                d.fetched(Digest::build(1, [held]));
            }
            if i <= DIGEST_FANOUT as u64 {
                t.credit_served(i);
            }
        }
        let benched = |p: &Peer| p.instance <= DIGEST_FANOUT as u64;
        let ask = |digests: Option<&[u64]>, excluded: &dyn Fn(&Peer) -> bool| -> Vec<u64> {
            let (v, _) = t.lookup_targets(file, (1, t0), 256, digests, excluded);
            v.iter().map(|x| x.0).collect()
        };
        let (h1, h2, none) = (holders - 1, holders, holders + 2);
        // with digests: the unjudgeable peer and the holders that are not benched, which
        // the benched ones, ranked first, would otherwise crowd out of the fan-out
        assert_eq!(ask(Some(&[]), &benched), [none, h1, h2]);
        // without: every peer that is not benched, as the fan-out always did
        assert_eq!(ask(None, &benched), [h1, h2, holders + 1, none]);
        // an INTENT does not bring a benched peer back
        assert_eq!(ask(Some(&[1, h2]), &benched), [none, h2, h1]);
        // unsanctioned, the best ranked holders fill the fan-out
        let all = ask(Some(&[]), &|_| false);
        assert_eq!(all.len(), 1 + DIGEST_FANOUT);
        assert!(all.contains(&1) && !all.contains(&h2));
        // a silent peer is spared the same way by both (ranked's rule)
        for _ in 0..SILENT_AFTER {
            t.note_unanswered(h1, t0);
        }
        let later = |digests: Option<&[u64]>| -> Vec<u64> {
            let (v, _) = t.lookup_targets(file, (1, t0 + SILENT_FOR), 256, digests, benched);
            v.iter().map(|x| x.0).collect()
        };
        assert_eq!(later(Some(&[])), [none, h2]);
        assert_eq!(later(None), [h2, holders + 1, none]);
    }

    #[test]
    fn announce_schedule() {
        let t0 = Instant::now();
        let mut a = AnnounceTimer::new(t0);
        assert!(a.is_due(t0));
        a.sent(t0, 0);
        assert_eq!(a.deadline(), t0 + STARTUP_GAP);
        a.sent(t0 + secs(1), 0);
        a.sent(t0 + secs(2), u64::MAX);
        let d = a.deadline() - (t0 + secs(2));
        assert!(
            d >= ANNOUNCE_INTERVAL - ANNOUNCE_JITTER && d <= ANNOUNCE_INTERVAL_MAX,
            "{d:?}"
        );
        // Hurry: never sooner than MIN_ANNOUNCE_GAP after the last round.
        a.hurry(t0 + secs(2), 0);
        assert_eq!(a.deadline(), t0 + secs(2) + MIN_ANNOUNCE_GAP);
        a.hurry(t0 + secs(10), 250);
        assert_eq!(
            a.deadline(),
            t0 + secs(2) + MIN_ANNOUNCE_GAP,
            "hurry never delays"
        );
        a.sent(t0 + secs(3), 0);
        a.hurry(t0 + secs(10), 100);
        assert_eq!(a.deadline(), t0 + secs(10) + Duration::from_millis(100));
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for r in (0..100_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let d = next_announce_delay(r);
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(
            lo >= secs(22) && lo < Duration::from_millis(22_600),
            "{lo:?}"
        );
        assert!(hi <= ANNOUNCE_INTERVAL_MAX && hi > secs(37), "{hi:?}");
    }

    #[test]
    fn rate_limiter() {
        let t0 = Instant::now();
        let mut r = RateLimiter::with_limits(10, 5);
        let a = v4(1).ip();
        let b = v4(2).ip();
        for _ in 0..5 {
            assert!(r.allow(a, t0));
        }
        assert!(!r.allow(a, t0), "burst exhausted");
        assert!(r.allow(b, t0), "other sources unaffected");
        assert!(!r.allow(a, t0 + Duration::from_millis(50)));
        assert!(
            r.allow(a, t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!r.allow(a, t0 + Duration::from_millis(100)));
        // Denied attempts do not dig the hole deeper.
        for _ in 0..1000 {
            r.allow(a, t0 + Duration::from_millis(150));
        }
        assert!(r.allow(a, t0 + Duration::from_millis(200)));
        // Idle long enough: full burst again.
        let later = t0 + secs(10);
        for _ in 0..5 {
            assert!(r.allow(a, later));
        }
        assert!(!r.allow(a, later));
        // Sustained rate over 10 s is ~10/s.
        let mut r = RateLimiter::with_limits(10, 5);
        let ok = (0..10_000)
            .filter(|i| r.allow(a, t0 + Duration::from_millis(*i)))
            .count();
        assert!((100..=106).contains(&ok), "{ok}");
    }

    #[test]
    fn rate_limiter_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::with_limits(1, 3);
        let busy = v4(1).ip();
        for _ in 0..3 {
            assert!(r.allow(busy, t0));
        }
        for i in 0..(RATE_SOURCES as u32 * 3) {
            r.allow(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), t0);
            assert!(r.len() <= RATE_SOURCES);
        }
        // The busiest source is the last to be forgotten.
        assert!(!r.allow(busy, t0));
    }

    #[test]
    fn bans_double_and_expire() {
        let t0 = Instant::now();
        let mut b = Bans::new();
        let k = BanKey::Instance(5);
        assert!(!b.is_banned(k, t0));
        assert_eq!(b.ban(k, t0, "sha256 mismatch"), BAN_FIRST);
        assert!(b.is_banned(k, t0 + BAN_FIRST - secs(1)));
        assert!(!b.is_banned(BanKey::Instance(6), t0));
        // Second failure during the same ban: no escalation.
        assert_eq!(b.ban(k, t0 + secs(60), "again"), BAN_FIRST - secs(60));
        assert_eq!(b.get(k).unwrap().strikes, 1);
        assert_eq!(b.get(k).unwrap().reason, "again");
        let mut t = t0 + BAN_FIRST;
        assert!(!b.is_banned(k, t));
        let mut expected = BAN_FIRST * 2;
        for _ in 0..10 {
            assert_eq!(b.ban(k, t, "repeat"), expected);
            assert!(b.is_banned(k, t + expected - secs(1)));
            t += expected;
            assert!(!b.is_banned(k, t));
            expected = (expected * 2).min(BAN_MAX);
        }
        assert_eq!(b.get(k).unwrap().until - b.get(k).unwrap().since, BAN_MAX);
        // After BAN_MEMORY of good behaviour, back to a first offence.
        assert_eq!(b.ban(k, t + BAN_MEMORY, "new"), BAN_FIRST);
        let ip = BanKey::Ip(v4(1).ip());
        b.ban(ip, t0, "x\ny");
        assert_eq!(b.get(ip).unwrap().reason, "xy");
        assert_eq!(b.records().count(), 2);
        let mut fresh = Bans::new();
        fresh.ban(ip, t0, "xy");
        fresh.ban(k, t0, "old");
        let active: Vec<_> = fresh.iter(t0 + BAN_FIRST - secs(1)).collect();
        assert_eq!(active.len(), 2);
        assert_eq!(active[0], (ip, secs(1), "xy"));
        assert_eq!(fresh.iter(t0 + BAN_FIRST).count(), 0);
        assert_eq!(ip.to_string(), "address 10.0.0.1");
        assert_eq!(
            BanKey::Instance(255).to_string(),
            "instance 00000000000000ff"
        );
        b.prune(t0 + BAN_FIRST + BAN_MEMORY);
        assert!(b.get(ip).is_none());
        assert_eq!(b.len(), 1);
        // Plain instance ids and addresses are keys too; IPv4-mapped is the IPv4 host.
        b.ban(77u64, t0, "r");
        assert!(b.is_banned(BanKey::Instance(77), t0));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 9).to_ipv6_mapped());
        b.ban(mapped, t0, "r");
        assert!(b.is_banned(v4(9).ip(), t0));
    }

    #[test]
    fn bans_are_bounded() {
        let t0 = Instant::now();
        let mut b = Bans::new();
        for i in 0..(MAX_BANS as u64 + 10) {
            b.ban(BanKey::Instance(i), t0 + secs(i), &"r".repeat(1000));
            assert!(b.len() <= MAX_BANS);
        }
        // The oldest (soonest-ending) went; the latest stays.
        assert!(b.get(BanKey::Instance(0)).is_none());
        assert!(b.is_banned(
            BanKey::Instance(MAX_BANS as u64 + 9),
            t0 + secs(MAX_BANS as u64 + 9)
        ));
        assert!(
            b.records()
                .all(|(_, ban)| ban.reason.len() <= crate::policy::MAX_REASON_LEN)
        );
    }

    fn have(id: u32, size: u64, sha: Option<[u8; 32]>, uploads: u16) -> Answer {
        Answer {
            id,
            have: true,
            size,
            sha256: sha,
            uploads,
        }
    }

    #[test]
    fn copies_in_flight_rank_after_every_have_and_the_lowest_looking_first() {
        let t0 = Instant::now();
        let sha = Some([7; 32]);
        let mut l = Lookup::new(
            9,
            "f".into(),
            Some((1000, sha)),
            vec![1, 2, 3, 4, 5, 6],
            t0 + LOOKUP_BUDGET,
        );
        let arr = |received, looking, sha| Arriving {
            id: 9,
            size: 1000,
            sha256: sha,
            uploads: 0,
            received,
            rate: if looking { 0 } else { 500 },
            looking,
        };
        assert!(!l.on_arriving(6, &arr(0, true, sha)));
        assert!(!l.on_arriving(5, &arr(0, true, sha)));
        assert!(!l.on_arriving(4, &arr(100, false, sha)));
        assert!(
            !l.on_arriving(3, &arr(600, false, Some([8; 32]))),
            "another build"
        );
        assert!(!l.on_arriving(2, &arr(300, false, sha)));
        assert!(!l.can_decide(t0), "a copy in flight never decides early");
        assert!(l.on_answer(1, &have(9, 1000, sha, 3)));
        let order: Vec<(u64, bool)> = l
            .candidates()
            .iter()
            .map(|c| (c.instance, c.arriving.is_some()))
            .collect();
        assert_eq!(
            order,
            [(1, false), (2, true), (4, true), (5, true), (6, true)],
            "HAVE, then fetching (furthest first), then looking (lowest first); no other build"
        );
        assert_eq!(l.answered_count(), 6);
    }

    #[test]
    fn lookup_completes_when_all_answered() {
        let t0 = Instant::now();
        let dl = t0 + LOOKUP_BUDGET;
        let mut l = Lookup::new(9, "f.pkg.tar.zst".into(), None, vec![1, 2, 2, 3], dl);
        assert!(!l.is_done(t0));
        assert!(!l.on_answer(1, &Answer::dont_have(9, 0)));
        assert!(
            !l.on_answer(1, &have(9, 1, None, 0)),
            "second answer from 1 ignored"
        );
        assert!(!l.on_answer(4, &have(9, 1, None, 0)), "not asked");
        assert!(!l.on_answer(2, &have(8, 1, None, 0)), "other lookup");
        assert_eq!(l.pending().collect::<Vec<_>>(), [2, 3]);
        assert!(!l.on_answer(2, &Answer::dont_have(9, 0)));
        assert!(l.on_answer(3, &Answer::dont_have(9, 0)));
        assert!(l.is_done(t0));
        assert!(l.candidates().is_empty(), "a miss");
        assert_eq!((l.asked_count(), l.answered_count()), (3, 3));
        let mut l = Lookup::new(9, "f".into(), None, vec![1, 2], dl);
        l.on_answer(1, &Answer::dont_have(9, 0));
        assert!(!l.forget(1), "already answered");
        assert!(!l.is_done(t0));
        assert!(l.forget(2));
        assert!(!l.forget(2));
        assert!(l.is_done(t0), "nobody left to wait for");
        let empty = Lookup::new(1, "f".into(), None, vec![], dl);
        assert!(empty.is_done(t0));
    }

    #[test]
    fn lookup_deadline() {
        let t0 = Instant::now();
        let mut l = Lookup::new(1, "f".into(), None, vec![1, 2], t0 + LOOKUP_BUDGET);
        l.on_answer(2, &have(1, 10, None, 4));
        assert!(!l.is_done(t0 + LOOKUP_BUDGET - Duration::from_millis(1)));
        assert!(l.is_done(t0 + LOOKUP_BUDGET));
        assert_eq!(l.deadline(), t0 + LOOKUP_BUDGET);
        assert_eq!(l.candidates().len(), 1);
    }

    #[test]
    fn lookup_filters_and_orders() {
        let t0 = Instant::now();
        let sha = [7u8; 32];
        let expected = Some((100, Some(sha)));
        let mut l = Lookup::new(
            1,
            "f".into(),
            expected,
            vec![1, 2, 3, 4, 5, 6, 7],
            t0 + secs(1),
        );
        assert_eq!(l.query().size, Some(100));
        assert_eq!(l.query().sha256, Some(sha));
        l.on_answer(1, &have(1, 99, Some(sha), 0)); // wrong size
        l.on_answer(2, &have(1, 100, Some([8; 32]), 0)); // wrong sha
        l.on_answer(3, &have(1, 100, Some(sha), 5));
        l.on_answer(4, &have(1, 100, None, 2)); // peer has not hashed it: still a candidate
        l.on_answer(5, &Answer::dont_have(1, 0));
        l.on_answer(6, &have(1, 100, Some(sha), 2));
        assert!(!l.can_decide(t0), "no idle candidate yet");
        l.on_answer(7, &have(1, 100, Some(sha), 0));
        assert!(l.can_decide(t0));
        let order: Vec<(u64, u16)> = l
            .candidates()
            .iter()
            .map(|c| (c.instance, c.uploads))
            .collect();
        assert_eq!(order, [(7, 0), (4, 2), (6, 2), (3, 5)]);
        // Size only: the hash is not compared.
        let mut l = Lookup::new(2, "f".into(), Some((100, None)), vec![1, 2], t0 + secs(1));
        l.on_answer(1, &have(2, 100, Some([1; 32]), 1));
        l.on_answer(2, &have(2, 101, None, 0));
        assert_eq!(
            l.candidates()
                .iter()
                .map(|c| c.instance)
                .collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(l.query().sha256, None);
    }
}
