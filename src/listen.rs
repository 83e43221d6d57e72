//! The daemon's listening sockets: the peer file server's and the front's loopback ones.
//! They are bound once at start (a reload never moves them) and accept until the kernel's
//! queue is empty, at most `ACCEPT_BATCH` in a row: then the listener waits for its turn in
//! the loop's ready queue, behind the connections already accepted, so a flood of connections
//! arriving as fast as they are accepted cannot starve the clients already in (see
//! docs/DESIGN.md, "Faults and bans"). After EMFILE they pause, leaving connections queued in
//! the kernel, until the daemon says descriptors were freed (darkhttpd does the same).

use crate::config::Config;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

const PEER_LISTENER: Token = Token(1);
/// Front listeners take tokens FRONT_LISTENER_BASE..+MAX_FRONT_LISTENERS.
const FRONT_LISTENER_BASE: usize = 8;
const MAX_FRONT_LISTENERS: usize = 8;
/// Connections one listener accepts before the loop's other work gets a turn. Under a flood
/// each accept past the listener's limit closes another connection, whose client comes back
/// at once: an accept loop that ran until the kernel's queue is empty could run as long as
/// the flood does, and a client accepted meanwhile would get neither its answer nor its
/// bytes. 32 accepts take well under a millisecond (a few in a debug build), about what
/// one pass of the ready queue may take (5 ms).
pub(crate) const ACCEPT_BATCH: usize = 32;

/// A startup failure with a message for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

#[derive(Debug, Clone, Copy)]
pub(crate) enum Listener {
    Peers,
    Front(usize),
}

impl Listener {
    /// The listener a poll token stands for.
    pub(crate) fn of(token: Token) -> Option<Listener> {
        match token {
            PEER_LISTENER => Some(Listener::Peers),
            Token(t)
                if (FRONT_LISTENER_BASE..FRONT_LISTENER_BASE + MAX_FRONT_LISTENERS)
                    .contains(&t) =>
            {
                Some(Listener::Front(t - FRONT_LISTENER_BASE))
            }
            _ => None,
        }
    }

    /// Its poll token (also its place in the loop's ready queue, see `Accepted::Later`).
    pub(crate) fn token(self) -> Token {
        match self {
            Listener::Peers => PEER_LISTENER,
            Listener::Front(i) => Token(FRONT_LISTENER_BASE + i),
        }
    }
}

/// What `Listeners::accept` found.
pub(crate) enum Accepted {
    Conn(TcpStream, SocketAddr),
    /// Nothing (more) waits, or accepting is paused.
    Nothing,
    /// Out of descriptors (or kernel memory): paused until `resume`; retry soon.
    Paused,
    /// `ACCEPT_BATCH` accepted in a row: more may wait; accept again after the work already
    /// queued (no new readiness event comes for connections already queued).
    Later,
}

pub(crate) struct Listeners {
    peer: TcpListener,
    front: Vec<TcpListener>,
    paused: bool,
    /// The last accept failed: its warning is given once until one succeeds.
    failing: bool,
    /// Accepted in a row since the last `Later` or `Nothing`, per listener (peer port first).
    streak: [usize; 1 + MAX_FRONT_LISTENERS],
}

fn bind_tcp(addr: SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM.nonblocking().cloexec(), None)
        .map_err(|e| StartError(format!("{what} {addr}: {e}")))?;
    let _ = sock.set_reuse_address(true);
    if addr.is_ipv6() {
        // an explicit IPv6 address means IPv6 only; [::] serves both families
        let _ = sock.set_only_v6(!addr.ip().is_unspecified());
    }
    sock.bind(&addr.into()).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            " (is another flocon running?)"
        } else {
            ""
        };
        StartError(format!("cannot listen on {addr} for {what}: {e}{hint}"))
    })?;
    sock.listen(1024)
        .map_err(|e| StartError(format!("{what} {addr}: {e}")))?;
    Ok(TcpListener::from_std(sock.into()))
}

impl Listeners {
    /// Binds the peer port and every `--listen` address, registered with `reg`.
    pub(crate) fn bind(cfg: &Config, reg: &Registry) -> Result<Listeners, StartError> {
        let peer_ip = cfg.peer_addr.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let mut peer = bind_tcp(SocketAddr::new(peer_ip, cfg.port), "peers")?;
        if cfg.listen.len() > MAX_FRONT_LISTENERS {
            let n = MAX_FRONT_LISTENERS;
            return Err(StartError(format!("--listen: at most {n} addresses")));
        }
        let mut front = Vec::new();
        for addr in &cfg.listen {
            match bind_tcp(*addr, "pacman") {
                Ok(l) => front.push(l),
                // a host without IPv6 still serves pacman on 127.0.0.1
                Err(e) if addr.is_ipv6() && cfg.listen.len() > 1 => warn!("{}", e.0),
                Err(e) => return Err(e),
            }
        }
        let epoll = |e: io::Error| StartError(format!("epoll: {e}"));
        reg.register(&mut peer, PEER_LISTENER, Interest::READABLE)
            .map_err(epoll)?;
        for (i, l) in front.iter_mut().enumerate() {
            reg.register(l, Token(FRONT_LISTENER_BASE + i), Interest::READABLE)
                .map_err(epoll)?;
        }
        Ok(Listeners {
            peer,
            front,
            paused: false,
            failing: false,
            streak: [0; 1 + MAX_FRONT_LISTENERS],
        })
    }

    /// The line that says the daemon started: where it listens, which caches it serves.
    pub(crate) fn started_line(&self, cfg: &Config) -> String {
        let front: Vec<String> = (self.front.iter())
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        let peers = self.peer.local_addr().map(|a| a.to_string());
        let cache: Vec<String> = (cfg.cache_dirs.iter())
            .map(|d| d.display().to_string())
            .collect();
        format!(
            "started: peers on {}, pacman on {}, cache {}",
            peers.unwrap_or_default(),
            front.join(" "),
            cache.join(" ")
        )
    }

    /// The front's addresses: an upstream there would be flocon calling itself.
    pub(crate) fn front_addrs(&self) -> Vec<SocketAddr> {
        self.front
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Stops listening (a stop in progress).
    pub(crate) fn close(&mut self, reg: &Registry) {
        let _ = reg.deregister(&mut self.peer);
        for l in &mut self.front {
            let _ = reg.deregister(l);
        }
    }

    /// Every listener, for accepting again after a pause.
    pub(crate) fn all(&self) -> Vec<Listener> {
        let front = (0..self.front.len()).map(Listener::Front);
        std::iter::once(Listener::Peers).chain(front).collect()
    }

    /// The next connection waiting on `which`.
    pub(crate) fn accept(&mut self, which: Listener) -> Accepted {
        if self.paused {
            return Accepted::Nothing;
        }
        let (listener, streak) = match which {
            Listener::Peers => (&self.peer, &mut self.streak[0]),
            Listener::Front(i) => match (self.front.get(i), self.streak.get_mut(1 + i)) {
                (Some(l), Some(s)) => (l, s),
                _ => return Accepted::Nothing,
            },
        };
        if *streak >= ACCEPT_BATCH {
            *streak = 0;
            return Accepted::Later;
        }
        loop {
            match listener.accept() {
                Ok((stream, addr)) => {
                    *streak += 1;
                    if std::mem::take(&mut self.failing) {
                        info!("accepting connections again");
                    }
                    return Accepted::Conn(stream, addr);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *streak = 0;
                    return Accepted::Nothing;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the connection stays queued in the kernel
                    if !self.failing {
                        warn!("accept ({which:?}): {e}; retrying when descriptors free up");
                    }
                    self.failing = true;
                    self.paused = true;
                    *streak = 0;
                    return Accepted::Paused;
                }
            }
        }
    }

    /// Descriptors were freed (or the retry timer fired): true when accepting was paused
    /// and may now go on.
    pub(crate) fn resume(&mut self) -> bool {
        std::mem::take(&mut self.paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood is accepted `ACCEPT_BATCH` at a time: `Later` between batches, then `Nothing`
    /// once the kernel's queue is empty; the front's streak is its own.
    #[test]
    fn accepts_in_batches_then_says_later() {
        let poll = mio::Poll::new().unwrap();
        let cfg = Config {
            port: 0,
            peer_addr: Some("127.0.0.1".parse().unwrap()),
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        let mut l = Listeners::bind(&cfg, poll.registry()).unwrap();
        let peer = l.peer.local_addr().unwrap();
        let front = l.front_addrs()[0];
        let n = ACCEPT_BATCH + ACCEPT_BATCH / 2;
        let clients: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(peer).unwrap())
            .collect();
        let _front_client = std::net::TcpStream::connect(front).unwrap();
        let mut take = |which| {
            let mut got = 0;
            loop {
                match l.accept(which) {
                    Accepted::Conn(..) => got += 1,
                    Accepted::Later => return (got, "later"),
                    Accepted::Nothing => return (got, "nothing"),
                    Accepted::Paused => return (got, "paused"),
                }
            }
        };
        assert_eq!(take(Listener::Peers), (ACCEPT_BATCH, "later"));
        // another listener is not held back by the peer port's streak
        assert_eq!(take(Listener::Front(0)), (1, "nothing"));
        assert_eq!(take(Listener::Peers), (n - ACCEPT_BATCH, "nothing"));
        assert_eq!(take(Listener::Peers), (0, "nothing"));
        drop(clients);
    }

    #[test]
    fn tokens_map_back_to_their_listener() {
        for which in [Listener::Peers, Listener::Front(0), Listener::Front(7)] {
            let back = Listener::of(which.token()).map(|l| format!("{l:?}"));
            assert_eq!(back, Some(format!("{which:?}")));
        }
    }
}
