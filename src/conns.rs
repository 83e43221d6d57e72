//! The accepted connections, on the peer port and on the front, as a whole: how many each
//! listener holds and one address holds on the peer port (guard::MAX_PER_ADDRESS), which one
//! gives way to a new one, putting one in a slot and taking it out, which are busy (a stop
//! waits for them), idle, timed out or uploading; one turn of a peer connection (its request
//! answered from the cache) and what a turn leads to; and what this host offers a peer that
//! asks for a file. The connections themselves live in the loop's slots; the daemon's accept
//! loop and dispatch call these.

use crate::auth::Keys;
use crate::conn::{self, Conn};
use crate::discovery::Discovery;
use crate::env::Slot;
use crate::eventloop::{Ready, Slots};
use crate::front;
use crate::guard::{self, PerAddress};
use crate::listen::Listener;
use crate::peers;
use crate::server::{self, CacheDirs};
use crate::status::Counters;
use crate::syncdb::SyncIndex;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The counts and addresses of the accepted connections.
pub(crate) struct Conns {
    /// Peer-port connections per address (guard::MAX_PER_ADDRESS), and each one's address.
    per_address: PerAddress,
    peer_ips: HashMap<Token, IpAddr>,
    peer_conns: usize,
    front_conns: usize,
    peer_bytes_sent: u64,
    refused_busy: u64,
}

/// What `Conns::admit` decided for a new connection.
pub(crate) enum Admit {
    Yes,
    /// The listener (or the slot table) is full: this connection gives way to the new one.
    GiveWay(Token),
    /// Refused (503 and counted, or unanswered when it came in on a foreign interface): the
    /// caller drops it.
    No,
}

/// What `Conns::close` took out of a slot.
pub(crate) enum Closed {
    Peer,
    Front,
    Fetch,
}

impl Conns {
    pub(crate) fn new() -> Self {
        Conns {
            per_address: PerAddress::new(),
            peer_ips: HashMap::new(),
            peer_conns: 0,
            front_conns: 0,
            peer_bytes_sent: 0,
            refused_busy: 0,
        }
    }

    /// Whether a connection from `addr` on listener `which` is taken. Past the listener's
    /// limit (or with the slots full) another gives way, if one may (guard::make_room).
    pub(crate) fn admit(
        &mut self,
        which: Listener,
        stream: &mut TcpStream,
        addr: SocketAddr,
        discovery: &Discovery,
        slots: &Slots<Slot>,
    ) -> Admit {
        let peer_port = matches!(which, Listener::Peers);
        // a peer connection that came in on an interface flocon does not use (excluded, or
        // not among --interface) is closed unanswered
        if peer_port
            && !stream
                .local_addr()
                .is_ok_and(|l| discovery.accepts_on(l.ip()))
        {
            debug!("peer connection from {addr} on a foreign interface refused");
            return Admit::No;
        }
        // answers are a small head then sendfile: Nagle + delayed ACK would hold the head
        // back 40 ms per request
        let _ = stream.set_nodelay(true);
        let ip = peers::normalize_addr(addr).ip();
        if peer_port && !self.per_address.admit(ip) {
            self.refused_busy += 1;
            let _ = stream.write(&conn::busy_response());
            return Admit::No;
        }
        let (open, limit) = match which {
            Listener::Peers => (self.peer_conns, server::MAX_CONNECTIONS),
            Listener::Front(_) => (self.front_conns, front::MAX_CONNECTIONS),
        };
        if !slots.is_full() && open < limit {
            return Admit::Yes;
        }
        match make_room(which, slots) {
            Some(victim) => Admit::GiveWay(victim),
            None => {
                self.refuse(which, ip, stream);
                Admit::No
            }
        }
    }

    /// An admitted connection is refused after all (counted): a 503, and the caller drops it.
    pub(crate) fn refuse(&mut self, which: Listener, ip: IpAddr, stream: &mut TcpStream) {
        if matches!(which, Listener::Peers) {
            self.per_address.release(ip);
        }
        self.refused_busy += 1;
        let _ = stream.write(&conn::busy_response());
    }

    /// Puts an admitted connection in a slot and registers it; None (and its admission
    /// undone) when no slot is left or it cannot be registered.
    pub(crate) fn insert(
        &mut self,
        which: Listener,
        stream: TcpStream,
        ip: IpAddr,
        slots: &mut Slots<Slot>,
        registry: &Registry,
        now: Instant,
    ) -> Option<Token> {
        let peer_port = matches!(which, Listener::Peers);
        let Some(t) = slots.insert_with(|_| match which {
            Listener::Peers => Slot::Peer(Conn::new(stream, now, server::IDLE_TIMEOUT)),
            Listener::Front(_) => Slot::Front(Conn::new(stream, now, front::IDLE_TIMEOUT)),
        }) else {
            if peer_port {
                self.per_address.release(ip);
            }
            return None;
        };
        if peer_port {
            self.peer_ips.insert(t, ip);
        }
        match which {
            Listener::Peers => self.peer_conns += 1,
            Listener::Front(_) => self.front_conns += 1,
        }
        let registered = match slots.get_mut(t) {
            Some(Slot::Peer(c) | Slot::Front(c)) => {
                let rw = Interest::READABLE | Interest::WRITABLE;
                registry.register(&mut c.stream, t, rw).is_ok()
            }
            _ => false,
        };
        if !registered {
            self.close(t, slots, registry);
            return None;
        }
        Some(t)
    }

    /// Takes slot `t`'s connection or fetch out and deregisters it; None if it was empty.
    pub(crate) fn close(
        &mut self,
        t: Token,
        slots: &mut Slots<Slot>,
        reg: &Registry,
    ) -> Option<Closed> {
        match slots.remove(t)? {
            Slot::Peer(mut c) => {
                self.peer_conns -= 1;
                let _ = reg.deregister(&mut c.stream);
                if let Some(ip) = self.peer_ips.remove(&t) {
                    self.per_address.release(ip);
                }
                Some(Closed::Peer)
            }
            Slot::Front(mut c) => {
                self.front_conns -= 1;
                let _ = reg.deregister(&mut c.stream);
                Some(Closed::Front)
            }
            Slot::Fetch(mut f) => {
                let _ = reg.deregister(&mut f.stream);
                Some(Closed::Fetch)
            }
            Slot::Digest(mut d) => {
                let _ = reg.deregister(&mut d.fetch.stream);
                Some(Closed::Fetch)
            }
        }
    }

    /// One turn of a peer connection: a request read is answered from the cache, or from a
    /// copy still arriving here (`arriving`). Returns the progress and the body bytes sent.
    pub(crate) fn drive_peer(
        &mut self,
        c: &mut Conn<TcpStream>,
        now: Instant,
        cache: &CacheDirs,
        keys: &Keys,
        arriving: &server::Arriving<'_>,
        digest: &[u8],
    ) -> (conn::Progress, u64) {
        let before = c.body_bytes;
        let p = c.drive(now);
        let sent = c.body_bytes - before;
        self.peer_bytes_sent += sent;
        if p == conn::Progress::Request
            && let Some(req) = c.take_request()
        {
            server::answer_with(c, &req, cache, keys, arriving, digest);
        }
        (p, sent)
    }

    /// What only the loop knows, for the status snapshot.
    pub(crate) fn counters(&self, started: Instant, slots: &Slots<Slot>) -> Counters {
        Counters {
            started,
            peer_bytes_sent: self.peer_bytes_sent,
            refused_busy: self.refused_busy,
            connections: slots.len(),
        }
    }
}

/// The connection of listener `which` that gives way to a new one (guard::make_room).
fn make_room(which: Listener, slots: &Slots<Slot>) -> Option<Token> {
    let conns = slots
        .tokens()
        .into_iter()
        .filter_map(|t| match (which, slots.get(t)) {
            (Listener::Peers, Some(Slot::Peer(c))) => Some((t, c.activity())),
            (Listener::Front(_), Some(Slot::Front(c))) => Some((t, c.activity())),
            _ => None,
        });
    guard::make_room(conns)
}

/// Whether to close after a turn; a connection with more to do gets another turn.
pub(crate) fn after_turn(
    slots: &Slots<Slot>,
    ready: &mut Ready,
    t: Token,
    p: conn::Progress,
) -> bool {
    match p {
        conn::Progress::Close => return true,
        conn::Progress::Blocked => {}
        // an answer given at once is sent on its next turn (not by recursing: pipelined
        // requests would nest without bound)
        conn::Progress::Yielded | conn::Progress::Request => match slots.get(t) {
            Some(Slot::Peer(c) | Slot::Front(c)) if c.state() != conn::State::WaitingForSource => {
                ready.schedule(t)
            }
            _ => {}
        },
    }
    false
}

/// Why slot `t` timed out, if it did (a connection: "", a fetch: its reason).
pub(crate) fn timed_out(slots: &Slots<Slot>, t: Token, now: Instant) -> Option<&'static str> {
    match slots.get(t)? {
        Slot::Peer(c) | Slot::Front(c) => c.timed_out(now).then_some(""),
        Slot::Fetch(f) => f.timed_out(now),
        Slot::Digest(d) => d.fetch.timed_out(now),
    }
}

/// What this host offers a peer asking for `name`: the size is the file's; the SHA-256 is
/// what this host's own sync db says of a file of that name and size: pacman checked its
/// cached copy against that db, and a host of another architecture (Arch ARM) names another
/// build, so an asker whose db differs skips us without a transfer and without a ban
/// (docs/DESIGN.md).
pub(crate) fn offer(
    cache: &CacheDirs,
    index: &SyncIndex,
    name: &str,
) -> Option<(u64, Option<[u8; 32]>)> {
    let size = cache.size_of(name)?;
    let sha = index
        .lookup_any(name)
        .filter(|(_, i)| i.size == size)
        .and_then(|(_, i)| i.sha256);
    Some((size, sha))
}

/// Connections with a response in flight (what a stop waits for).
pub(crate) fn busy(slots: &Slots<Slot>) -> usize {
    let busy = |s: &&Slot| match s {
        Slot::Peer(c) | Slot::Front(c) => c.state() != conn::State::WaitingForHead,
        Slot::Fetch(_) | Slot::Digest(_) => false,
    };
    slots.values().filter(busy).count()
}

/// Whether slot `t` holds a keep-alive connection waiting for its next request (not work
/// in flight).
pub(crate) fn is_idle(slots: &Slots<Slot>, t: Token) -> bool {
    match slots.get(t) {
        Some(Slot::Peer(c) | Slot::Front(c)) => c.state() == conn::State::WaitingForHead,
        _ => false,
    }
}

/// Peer connections sending a file (announced, so askers prefer idle peers).
pub(crate) fn uploads_in_flight(slots: &Slots<Slot>) -> u16 {
    let sending = |s: &&Slot| matches!(s, Slot::Peer(c) if c.state() == conn::State::SendingFile);
    slots
        .values()
        .filter(sending)
        .count()
        .min(u16::MAX as usize) as u16
}
