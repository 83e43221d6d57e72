//! The daemon: one mio `Poll`, every socket registered with it, timers and signals, and the
//! dispatch from events to the modules that own each kind of socket. Nothing here blocks:
//! sockets are non-blocking, files are local, and slow work runs on a helper thread that
//! reports back through the `Waker`.

use crate::config::Config;
use crate::conn::{self, Conn};
use crate::dbload::DbLoader;
use crate::discovery::{self, Discovery, Identity};
use crate::eventloop::{Slots, Timers};
use crate::fetch::Fetch;
use crate::http::Request;
use crate::resolver::Resolver;
use crate::route::{Proxy, Waiting};
use crate::server::{self, CacheDirs};
use crate::stager::Stager;
use crate::syncdb::SyncIndex;
use crate::transfer::{self, Transfer};
use crate::{route, sys};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGNAL: Token = Token(0);
const PEER_LISTENER: Token = Token(1);
const WAKER: Token = Token(2);
/// Front listeners take tokens FRONT_LISTENER_BASE..+MAX_FRONT_LISTENERS.
const FRONT_LISTENER_BASE: usize = 8;
const MAX_FRONT_LISTENERS: usize = 8;

/// After SIGTERM, in-flight transfers get this long to finish before the daemon exits.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often idle and stalled connections are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Events taken from one poll call; more simply wait for the next pass.
const EVENTS_CAPACITY: usize = 256;

/// Outbound fetches: to peers and mirrors.
pub const MAX_FETCHES: usize = 256;

/// What a slot holds.
pub(crate) enum Slot {
    Peer(Conn<TcpStream>),
    Front(Conn<TcpStream>),
    Fetch(Box<FetchSlot>),
}

pub(crate) struct FetchSlot {
    pub fetch: Fetch,
    pub purpose: Purpose,
}

#[derive(Debug, Clone, Copy)]
enum Listener {
    Peers,
    Front(usize),
}

/// Why a fetch runs.
pub(crate) enum Purpose {
    /// Copying a package from a peer into the staging dir (shared by its waiters).
    PeerCopy {
        file: String,
        instance: u64,
        resume: u64,
    },
    /// Streaming a source's answer to one front request.
    Proxy(Box<Proxy>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Sweep,
    StopDeadline,
    Announce,
    Rescan,
    Lookup(u32),
    /// (connection, its request number): stale once the connection moved on.
    Redirect(Token, u64),
    DbWait(Token, u64),
}

/// Counters for the status page.
#[derive(Default)]
pub(crate) struct Stats {
    pub peer_bytes_sent: u64,
    pub refused_busy: u64,
    pub lan_hits: u64,
    pub lan_bytes: u64,
    pub rejected_copies: u64,
    pub upstream_bytes: u64,
}

pub struct Daemon {
    pub(crate) cfg: Config,
    pub(crate) poll: Poll,
    pub(crate) now: Instant,
    started: Instant,
    signals: OwnedFd,
    _waker: Arc<Waker>,
    peer_listener: TcpListener,
    front_listeners: Vec<TcpListener>,
    cache: CacheDirs,
    pub(crate) slots: Slots<Slot>,
    pub(crate) timers: Timers<Timer>,
    /// Connections that yielded with work left (fairness between big transfers).
    pub(crate) ready: VecDeque<Token>,
    stopping: Option<Instant>,
    pub(crate) stats: Stats,
    pub(crate) discovery: Discovery,
    pub(crate) index: SyncIndex,
    pub(crate) dbload: DbLoader,
    pub(crate) resolver: Resolver,
    /// Staging writes and hashing, off the loop.
    pub(crate) stager: Stager,
    /// Front requests waiting for something, by connection.
    pub(crate) waiting: HashMap<Token, Waiting>,
    /// The request a waiting connection made (for its Range when the bytes arrive).
    pub(crate) requests: HashMap<Token, Request>,
    pub(crate) transfers: HashMap<String, Transfer>,
    pub(crate) lookup_owner: HashMap<u32, String>,
    pub(crate) debug_lookups: HashMap<u32, (Token, Instant)>,
    /// File -> the peer (instance, address) that served it: its `.sig` is asked there first.
    pub(crate) sig_hints: HashMap<String, (u64, SocketAddr, Instant)>,
    /// Front requests for a package not yet indexed, waiting for a sync db being parsed.
    pub(crate) waiting_for_db: Vec<Token>,
    pub(crate) resolving: HashMap<u64, (Proxy, String, u16)>,
    pub(crate) resolve_serial: u64,
    pub(crate) dns_cache: HashMap<(String, u16), (SocketAddr, Instant)>,
    pub(crate) serial: u64,
    peer_conns: usize,
    front_conns: usize,
}

/// A startup failure with a message for the operator.
#[derive(Debug)]
pub struct StartError(pub String);

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

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, StartError> {
        let _ = sys::raise_nofile_limit();
        let signals = sys::signalfd().map_err(|e| StartError(format!("signalfd: {e}")))?;
        let poll = Poll::new().map_err(|e| StartError(format!("epoll: {e}")))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| StartError(format!("waker: {e}")))?,
        );
        let resolver = Resolver::new(waker.clone())
            .map_err(|e| StartError(format!("resolver thread: {e}")))?;
        let dbload = DbLoader::new(waker.clone(), cfg.state_dir.join("staging"))
            .map_err(|e| StartError(format!("db thread: {e}")))?;
        let peer_ip = cfg
            .peer_addr
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let mut peer_listener = bind_tcp(SocketAddr::new(peer_ip, cfg.port), "peers")?;
        if cfg.listen.len() > MAX_FRONT_LISTENERS {
            return Err(StartError(format!(
                "--listen: at most {MAX_FRONT_LISTENERS} addresses"
            )));
        }
        let mut front_listeners = Vec::new();
        for addr in &cfg.listen {
            match bind_tcp(*addr, "pacman") {
                Ok(l) => front_listeners.push(l),
                // a host without IPv6 still serves pacman on 127.0.0.1
                Err(e) if addr.is_ipv6() && cfg.listen.len() > 1 => warn!("{}", e.0),
                Err(e) => return Err(e),
            }
        }
        let reg = poll.registry();
        reg.register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNAL,
            Interest::READABLE,
        )
        .and_then(|_| reg.register(&mut peer_listener, PEER_LISTENER, Interest::READABLE))
        .map_err(|e| StartError(format!("epoll: {e}")))?;
        for (i, l) in front_listeners.iter_mut().enumerate() {
            reg.register(l, Token(FRONT_LISTENER_BASE + i), Interest::READABLE)
                .map_err(|e| StartError(format!("epoll: {e}")))?;
        }
        let cache = CacheDirs::new(&cfg.cache_dirs);
        for d in cache.missing() {
            warn!(
                "cache dir {} does not exist; serving it as empty",
                d.display()
            );
        }
        for w in &cfg.warnings {
            warn!("{w}");
        }
        let (keys, key_warnings) = crate::auth::Keys::load(&cfg.key_files).map_err(StartError)?;
        for w in key_warnings {
            warn!("{w}");
        }
        let discovery = Discovery::new(
            Identity {
                announce_interval: cfg.announce_interval,
                port: cfg.port,
                peer_addr: cfg.peer_addr,
                interfaces: cfg.interfaces.clone(),
                name: cfg.name.clone(),
                distro: cfg.distro.clone(),
                archs: cfg.architectures.clone(),
                exclude_interfaces: cfg.exclude_interfaces.clone(),
                keys,
                static_peers: cfg.static_peers.clone(),
            },
            poll.registry(),
        )
        .map_err(|e| StartError(e.to_string()))?;
        let staging = cfg.state_dir.join("staging");
        if let Err(e) = transfer::prepare_staging(&staging) {
            warn!(
                "staging dir {}: {e}; every request goes upstream",
                staging.display()
            );
        }
        let stager = Stager::new(&staging, waker.clone())
            .map_err(|e| StartError(format!("staging thread: {e}")))?;
        let now = Instant::now();
        let mut timers = Timers::new();
        timers.at(now + SWEEP_INTERVAL, Timer::Sweep);
        timers.at(now, Timer::Rescan);
        let mut d = Daemon {
            cfg,
            poll,
            now,
            started: now,
            signals,
            _waker: waker,
            peer_listener,
            front_listeners,
            cache,
            slots: Slots::new(server::MAX_CONNECTIONS + route::MAX_CONNECTIONS + MAX_FETCHES),
            timers,
            ready: VecDeque::new(),
            stopping: None,
            stats: Stats::default(),
            discovery,
            index: SyncIndex::new(),
            dbload,
            stager,
            resolver,
            waiting: HashMap::new(),
            requests: HashMap::new(),
            transfers: HashMap::new(),
            lookup_owner: HashMap::new(),
            debug_lookups: HashMap::new(),
            sig_hints: HashMap::new(),
            waiting_for_db: Vec::new(),
            resolving: HashMap::new(),
            resolve_serial: 0,
            dns_cache: HashMap::new(),
            serial: 0,
            peer_conns: 0,
            front_conns: 0,
        };
        d.check_dbs();
        Ok(d)
    }

    /// Runs until a stop signal and the grace period; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        info!(
            "started: peers on {}, pacman on {}, cache {}",
            self.peer_listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            self.front_listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            self.cfg
                .cache_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        loop {
            self.now = Instant::now();
            for t in self.timers.expired(self.now) {
                self.on_timer(t);
            }
            if self.stopping.is_some() && self.busy_connections() == 0 {
                info!("stopped");
                return 0;
            }
            if let Some(deadline) = self.stopping
                && self.now >= deadline
            {
                info!(
                    "stopped with {} transfers cut short",
                    self.busy_connections()
                );
                return 0;
            }
            let timeout = if self.ready.is_empty() {
                self.timers.poll_timeout(self.now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!("poll: {e}");
                return 1;
            }
            self.now = Instant::now();
            for ev in events.iter() {
                self.on_event(ev.token());
            }
            // connections that yielded get one more turn each, in order
            for _ in 0..self.ready.len() {
                if let Some(t) = self.ready.pop_front() {
                    self.drive(t);
                }
            }
        }
    }

    fn on_event(&mut self, token: Token) {
        match token {
            SIGNAL => self.on_signals(),
            WAKER => self.on_wake(),
            PEER_LISTENER => self.accept(Listener::Peers),
            discovery::UNICAST_V4 | discovery::UNICAST_V6 => self.on_discovery_readable(token),
            Token(t)
                if (FRONT_LISTENER_BASE..FRONT_LISTENER_BASE + MAX_FRONT_LISTENERS)
                    .contains(&t) =>
            {
                self.accept(Listener::Front(t - FRONT_LISTENER_BASE))
            }
            Token(t) if t < crate::eventloop::FIXED_TOKENS => self.on_discovery_readable(token),
            t => self.drive(t),
        }
    }

    fn on_discovery_readable(&mut self, token: Token) {
        let mut events = Vec::new();
        let cache = &self.cache;
        let index = &self.index;
        // The size is the file's; the SHA-256 is what this host's own sync db says of a
        // file of that name and size: pacman checked its cached copy against that db, and a
        // host of another architecture (Arch ARM) names another build, so an asker whose db
        // differs skips us without a transfer and without a ban (docs/DESIGN.md).
        let mut has_file = |name: &str| {
            let size = cache.size_of(name)?;
            let sha = index
                .lookup_any(name)
                .filter(|(_, i)| i.size == size)
                .and_then(|(_, i)| i.sha256);
            Some((size, sha))
        };
        self.discovery.uploads = self.uploads_in_flight();
        self.discovery
            .on_readable(token, self.now, &mut has_file, &mut events);
        self.on_discovery_events(events);
    }

    fn uploads_in_flight(&self) -> u16 {
        self.slots
            .values()
            .filter(|s| matches!(s, Slot::Peer(c) if c.state() == conn::State::SendingFile))
            .count()
            .min(u16::MAX as usize) as u16
    }

    fn on_wake(&mut self) {
        for (id, r) in self.resolver.results() {
            match discovery::static_peer_of(id) {
                Some(i) => self.discovery.static_resolved(i, r),
                None => self.on_resolved(id, r),
            }
        }
        for r in self.stager.reports() {
            self.on_staged(r);
        }
        if self.stager.take_room_freed() {
            self.resume_copies();
        }
        for (repo, r) in self.dbload.results() {
            match r {
                Ok((map, stamp)) => {
                    info!("sync db {repo}: {} packages", map.len());
                    self.index.install(&repo, Some(stamp), map);
                }
                Err(e) => {
                    let path = self.sync_dir().join(format!("{repo}.db"));
                    warn!(
                        "sync db {}: {e}; keeping the previous index",
                        path.display()
                    );
                    self.index.keep_old(&repo, crate::syncdb::stamp(&path));
                }
            }
        }
        if !self.waiting_for_db.is_empty() {
            self.redispatch_db_waiters(None);
        }
    }

    fn sync_dir(&self) -> PathBuf {
        self.cfg.db_path.join("sync")
    }

    /// Sends every sync db whose file changed (pacman renames new ones into place) to the
    /// helper thread. A stat per repo: cheap enough for every rescan.
    pub(crate) fn check_dbs(&mut self) {
        let repos: Vec<String> = self.cfg.repos.iter().map(|r| r.name.clone()).collect();
        self.index.retain_repos(&repos);
        for (repo, path, stamp) in self.index.changed(&self.sync_dir(), &repos) {
            match stamp {
                Some(_) => self.dbload.load(&repo, path),
                None => self.index.keep_old(&repo, None),
            }
        }
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Sweep => {
                self.sweep();
                let mut events = Vec::new();
                self.discovery.expire(self.now, &mut events);
                self.on_discovery_events(events);
                self.timers.at(self.now + SWEEP_INTERVAL, Timer::Sweep);
            }
            Timer::StopDeadline => {}
            Timer::Rescan => {
                if self.stopping.is_none() && self.discovery.rescan(self.poll.registry(), self.now)
                {
                    self.announce_soon();
                }
                self.check_dbs();
                for (i, host, port) in self.discovery.static_resolutions_due(self.now) {
                    self.resolver
                        .resolve(discovery::static_resolve_id(i), host, port);
                }
                self.timers
                    .at(self.now + discovery::RESCAN_INTERVAL, Timer::Rescan);
            }
            Timer::Announce => {
                if self.stopping.is_none() {
                    self.discovery.uploads = self.uploads_in_flight();
                    if self.discovery.announce_if_due(self.now) {
                        self.timers
                            .at(self.discovery.announce_deadline(), Timer::Announce);
                    }
                }
            }
            Timer::Lookup(id) => {
                let mut events = Vec::new();
                self.discovery.lookup_deadline(id, self.now, &mut events);
                self.on_discovery_events(events);
            }
            Timer::Redirect(t, n) if self.request_number(t) == Some(n) => self.on_redirect_timer(t),
            Timer::DbWait(t, n) if self.request_number(t) == Some(n) => {
                self.redispatch_db_waiters(Some(t))
            }
            Timer::Redirect(..) | Timer::DbWait(..) => {}
        }
    }

    /// The number of the request a front connection is on (timers carry it).
    pub(crate) fn request_number(&self, t: Token) -> Option<u64> {
        match self.slots.get(t) {
            Some(Slot::Front(c)) => Some(c.request_number()),
            _ => None,
        }
    }

    pub(crate) fn on_peer_up(&mut self) {
        self.timers
            .at(self.discovery.announce_deadline(), Timer::Announce);
    }

    /// A new membership or a new peer: announce within a fraction of a second.
    fn announce_soon(&mut self) {
        self.discovery.hurry_announce(self.now);
        self.timers
            .at(self.discovery.announce_deadline(), Timer::Announce);
    }

    fn on_signals(&mut self) {
        loop {
            match sys::read_signal(&self.signals) {
                Ok(Some(sig)) => self.on_signal(sig),
                Ok(None) => return,
                Err(e) => {
                    warn!("signalfd: {e}");
                    return;
                }
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGTERM | libc::SIGINT => self.begin_stop(),
            libc::SIGHUP => self.reload(),
            libc::SIGUSR1 => {
                for line in self.status_text().lines() {
                    info!("{line}");
                }
            }
            libc::SIGUSR2 => {
                info!("SIGUSR2: rejoining multicast groups");
                self.discovery.rejoin(self.poll.registry(), self.now);
                self.announce_soon();
            }
            _ => {}
        }
    }

    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        info!("stopping: {} connections busy", self.busy_connections());
        self.discovery.goodbye();
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut self.peer_listener);
        for l in &mut self.front_listeners {
            let _ = reg.deregister(l);
        }
        let deadline = self.now + STOP_GRACE;
        self.stopping = Some(deadline);
        self.timers.at(deadline, Timer::StopDeadline);
        // idle keep-alive connections are not work in flight
        for t in self.slots.tokens() {
            let idle = match self.slots.get(t) {
                Some(Slot::Peer(c)) => c.state() == conn::State::WaitingForHead,
                Some(Slot::Front(c)) => c.state() == conn::State::WaitingForHead,
                _ => false,
            };
            if idle {
                self.close(t);
            }
        }
    }

    fn reload(&mut self) {
        match crate::config::reload(&self.cfg) {
            Ok(cfg) => {
                crate::log::set_debug(cfg.debug);
                self.cache = CacheDirs::new(&cfg.cache_dirs);
                self.cfg = cfg;
                // re-read every sync db, changed or not
                self.index = SyncIndex::new();
                self.check_dbs();
                info!("SIGHUP: configuration and sync dbs re-read");
            }
            Err(e) => warn!("SIGHUP: keeping the old configuration: {e}"),
        }
    }

    /// Connections with a response in flight (what a stop waits for).
    fn busy_connections(&self) -> usize {
        self.slots
            .values()
            .filter(|s| match s {
                Slot::Peer(c) => c.state() != conn::State::WaitingForHead,
                Slot::Front(c) => c.state() != conn::State::WaitingForHead,
                Slot::Fetch(_) => false,
            })
            .count()
    }

    fn sweep(&mut self) {
        let now = self.now;
        for t in self.slots.tokens() {
            let dead = match self.slots.get(t) {
                Some(Slot::Peer(c)) => c.timed_out(now),
                Some(Slot::Front(c)) => c.timed_out(now),
                _ => false,
            };
            if dead {
                debug!("closing timed-out connection {:?}", t);
                self.close(t);
            }
        }
        self.sweep_fetches(now);
    }

    /// Accepts every pending connection on one listener (edge-triggered: until WouldBlock).
    /// Past the listener's limit a connection gets a 503 and is closed; the others go on.
    fn accept(&mut self, which: Listener) {
        loop {
            let listener = match which {
                Listener::Peers => &self.peer_listener,
                Listener::Front(i) => match self.front_listeners.get(i) {
                    Some(l) => l,
                    None => return,
                },
            };
            match listener.accept() {
                Ok((mut stream, addr)) => {
                    // a peer connection that came in on an interface flocon does not use
                    // (excluded, or not among --interface) is closed unanswered
                    if matches!(which, Listener::Peers)
                        && !stream
                            .local_addr()
                            .is_ok_and(|l| self.discovery.accepts_on(l.ip()))
                    {
                        debug!("peer connection from {addr} on a foreign interface refused");
                        continue;
                    }
                    // answers are a small head then sendfile: Nagle + delayed ACK would hold
                    // the head back 40 ms per request
                    let _ = stream.set_nodelay(true);
                    let (open, limit, idle) = match which {
                        Listener::Peers => (
                            self.peer_conns,
                            server::MAX_CONNECTIONS,
                            server::IDLE_TIMEOUT,
                        ),
                        Listener::Front(_) => (
                            self.front_conns,
                            route::MAX_CONNECTIONS,
                            route::IDLE_TIMEOUT,
                        ),
                    };
                    if self.slots.is_full() || open >= limit {
                        self.stats.refused_busy += 1;
                        let _ = stream.write(&conn::busy_response());
                        continue;
                    }
                    let now = self.now;
                    let Some(t) = self.slots.insert_with(|_| {
                        let c = Conn::new(stream, now, idle);
                        match which {
                            Listener::Peers => Slot::Peer(c),
                            Listener::Front(_) => Slot::Front(c),
                        }
                    }) else {
                        continue;
                    };
                    match which {
                        Listener::Peers => self.peer_conns += 1,
                        Listener::Front(_) => self.front_conns += 1,
                    }
                    let registered = match self.slots.get_mut(t) {
                        Some(Slot::Peer(c) | Slot::Front(c)) => self
                            .poll
                            .registry()
                            .register(&mut c.stream, t, Interest::READABLE | Interest::WRITABLE)
                            .is_ok(),
                        _ => false,
                    };
                    if !registered {
                        self.close(t);
                        continue;
                    }
                    debug!("{which:?} connection from {addr}");
                    self.drive(t);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: keep the loop alive, try again on the next event
                    warn!("accept ({which:?}): {e}");
                    return;
                }
            }
        }
    }

    fn drive(&mut self, t: Token) {
        let now = self.now;
        let progress = match self.slots.get_mut(t) {
            Some(Slot::Peer(c)) => {
                let before = c.body_bytes;
                let p = c.drive(now);
                self.stats.peer_bytes_sent += c.body_bytes - before;
                match p {
                    conn::Progress::Blocked => None,
                    conn::Progress::Yielded => Some(false),
                    conn::Progress::Close => Some(true),
                    conn::Progress::Request => {
                        if let Some(req) = c.take_request() {
                            server::answer(c, &req, &self.cache, self.discovery.keys());
                        }
                        Some(false)
                    }
                }
            }
            Some(Slot::Front(c)) => match c.drive(now) {
                conn::Progress::Blocked => {
                    // room freed in a streaming answer: let its fetch read again
                    if let Some(Waiting::Proxy(f)) = self.waiting.get(&t) {
                        let f = *f;
                        self.drive_fetch(f);
                    }
                    None
                }
                conn::Progress::Yielded => Some(false),
                conn::Progress::Close => Some(true),
                conn::Progress::Request => {
                    if let Some(req) = c.take_request() {
                        if self.stopping.is_some() {
                            c.answer_error(503);
                        } else {
                            self.on_front_request(t, req);
                        }
                    }
                    // an answer given at once is sent on the next turn of the ready queue
                    // (not by recursing: pipelined requests would nest without bound)
                    match self.slots.get(t) {
                        Some(Slot::Front(c)) if c.state() != conn::State::WaitingForSource => {
                            Some(false)
                        }
                        _ => None,
                    }
                }
            },
            Some(Slot::Fetch(_)) => {
                self.drive_fetch(t);
                None
            }
            None => return,
        };
        match progress {
            Some(true) => self.close(t),
            Some(false) => self.ready.push_back(t),
            None => {}
        }
    }

    fn close(&mut self, t: Token) {
        match self.slots.remove(t) {
            Some(Slot::Peer(mut c)) => {
                self.peer_conns -= 1;
                let _ = self.poll.registry().deregister(&mut c.stream);
            }
            Some(Slot::Front(mut c)) => {
                self.front_conns -= 1;
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.forget_client(t);
            }
            Some(Slot::Fetch(mut f)) => {
                let _ = self.poll.registry().deregister(&mut f.fetch.stream);
            }
            None => {}
        }
    }

    pub(crate) fn status_text(&self) -> String {
        let mut s = String::new();
        let now = self.now;
        s.push_str(&format!(
            "flocon {} on {} ({}, {}), instance {}, up {} s, rss {} KiB\n",
            env!("CARGO_PKG_VERSION"),
            self.cfg.name,
            self.cfg.distro,
            self.cfg.architectures.join(","),
            discovery::short_id(self.discovery.instance()),
            now.duration_since(self.started).as_secs(),
            sys::rss_kib().unwrap_or(0)
        ));
        s.push_str(&format!(
            "multicast: {}\n",
            self.discovery.joined().join(" ")
        ));
        s.push_str(&format!(
            "sync dbs: {} packages indexed\n",
            self.index.len()
        ));
        s.push_str(&format!("peers: {}\n", self.discovery.peers.len()));
        if !self.discovery.peers.is_empty() {
            s.push_str(&format!(
                "  {:<20} {:<40} {:<8} {:<16} {}\n",
                "NAME", "ADDRESS", "DISTRO", "ARCH", "PROTOCOL, LAST SEEN"
            ));
        }
        for p in self.discovery.peers.iter() {
            s.push_str(&format!(
                "  {:<20} {:<40} {:<8} {:<16} v{}, {:.1} s ago\n",
                p.name,
                p.addr.to_string(),
                p.distro,
                p.archs.join(","),
                p.version,
                now.duration_since(p.last_seen).as_secs_f64()
            ));
        }
        s.push_str(&format!("transfers: {}\n", self.transfers.len()));
        for t in self.transfers.values() {
            s.push_str(&format!(
                "  {} from {} {}/{} bytes {:.1} MB/s {:?}\n",
                t.file,
                t.source
                    .map(|x| x.1.to_string())
                    .unwrap_or_else(|| "-".into()),
                t.received,
                t.expected.size,
                t.rate(now) / 1e6,
                t.phase
            ));
        }
        let bans: Vec<_> = self.discovery.bans.iter(now).collect();
        s.push_str(&format!("bans: {}\n", bans.len()));
        for b in bans {
            s.push_str(&format!(
                "  {} for {} s more: {}\n",
                b.0,
                b.1.as_secs(),
                b.2
            ));
        }
        s.push_str(&format!(
            "served: {} LAN hits ({} bytes), {} bytes upstream, {} copies rejected, {} bytes to peers, {} refused (busy)\n",
            self.stats.lan_hits,
            self.stats.lan_bytes,
            self.stats.upstream_bytes,
            self.stats.rejected_copies,
            self.stats.peer_bytes_sent,
            self.stats.refused_busy
        ));
        s
    }

    pub(crate) fn status_json(&self) -> String {
        let now = self.now;
        let peers: Vec<String> = self
            .discovery
            .peers
            .iter()
            .map(|p| {
                format!(
                    "{{\"instance\":\"{:016x}\",\"name\":{},\"addr\":{},\"tcp_port\":{},\"distro\":{},\"archs\":[{}],\"version\":{},\"last_seen_ms\":{}}}",
                    p.instance,
                    json_str(&p.name),
                    json_str(&p.addr.to_string()),
                    p.tcp_port,
                    json_str(&p.distro),
                    p.archs.iter().map(|a| json_str(a)).collect::<Vec<_>>().join(","),
                    p.version,
                    now.duration_since(p.last_seen).as_millis()
                )
            })
            .collect();
        let transfers: Vec<String> = self
            .transfers
            .values()
            .map(|t| {
                format!(
                    "{{\"file\":{},\"source\":{},\"bytes\":{},\"size\":{},\"rate\":{:.0},\"phase\":\"{:?}\"}}",
                    json_str(&t.file),
                    json_str(&t.source.map(|x| x.1.to_string()).unwrap_or_default()),
                    t.received,
                    t.expected.size,
                    t.rate(now),
                    t.phase
                )
            })
            .collect();
        let bans: Vec<String> = self
            .discovery
            .bans
            .iter(now)
            .map(|b| {
                format!(
                    "{{\"peer\":{},\"seconds_left\":{},\"reason\":{}}}",
                    json_str(&b.0.to_string()),
                    b.1.as_secs(),
                    json_str(b.2)
                )
            })
            .collect();
        format!(
            "{{\"version\":\"{}\",\"name\":{},\"instance\":\"{:016x}\",\"uptime_s\":{},\"rss_kib\":{},\"multicast\":[{}],\"indexed_packages\":{},\"peers\":[{}],\"transfers\":[{}],\"bans\":[{}],\"lan_hits\":{},\"lan_bytes\":{},\"upstream_bytes\":{},\"rejected_copies\":{},\"peer_bytes_sent\":{},\"datagrams_in\":{},\"datagrams_rejected\":{},\"connections\":{}}}\n",
            env!("CARGO_PKG_VERSION"),
            json_str(&self.cfg.name),
            self.discovery.instance(),
            now.duration_since(self.started).as_secs(),
            sys::rss_kib().unwrap_or(0),
            self.discovery
                .joined()
                .iter()
                .map(|j| json_str(j))
                .collect::<Vec<_>>()
                .join(","),
            self.index.len(),
            peers.join(","),
            transfers.join(","),
            bans.join(","),
            self.stats.lan_hits,
            self.stats.lan_bytes,
            self.stats.upstream_bytes,
            self.stats.rejected_copies,
            self.stats.peer_bytes_sent,
            self.discovery.stats.datagrams_in,
            self.discovery.stats.rejected,
            self.slots.len()
        )
    }
}

/// A JSON string literal (the only escaping the status document needs).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
