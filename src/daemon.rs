//! The daemon: one mio `Poll`, every socket registered with it, timers and signals, accept,
//! reload, and the dispatch from events to the modules that own each kind of socket (the
//! peer file server, the front, discovery). Nothing here blocks: sockets are non-blocking,
//! files are local, and slow work runs on helper threads that report through the `Waker`.
//!
//! One pass of the loop: poll (not sleeping when work is queued or a timer is due), note
//! what became ready, read pending datagrams, run the due timers, then drive what is ready
//! within a time budget. Every connection or fetch with work goes through `Ready::schedule`.

use crate::config::Config;
use crate::conn::{self, Conn};
use crate::dbload::DbLoader;
use crate::discovery::{self, Discovery, DiscoveryEvent, Identity};
use crate::eventloop::{Ready, Slots, TimerId, Timers};
use crate::fetch::{self, Fetch};
use crate::front::{self, Deadline, Env, Front, Reply};
use crate::guard::{self, PerAddress};
use crate::peers;
use crate::policy::Strikes;
use crate::resolver::Resolver;
use crate::server::{self, CacheDirs};
use crate::status::{BanRow, CopyRow, PeerRow, Snapshot};
use crate::syncdb::{PkgInfo, SyncIndex};
use crate::{sys, transfer};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
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
/// Driving ready connections stops after this much time in one pass (at least one is
/// driven), so that timers and datagrams are looked at again soon: a lookup's 50 ms budget
/// is never eaten by the loop's own copying and hashing.
const PASS_BUDGET: Duration = Duration::from_millis(5);
/// Timers run per pass at most; the rest run on the next pass, after another poll.
const TIMERS_PER_PASS: usize = 1024;
/// After EMFILE (or ENFILE, ENOBUFS) on accept, accepting is retried this often and
/// whenever a connection closes (darkhttpd does the same).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a slot holds.
enum Slot {
    Peer(Conn<TcpStream>),
    Front(Conn<TcpStream>),
    Fetch(Box<Fetch>),
}

#[derive(Debug, Clone, Copy)]
enum Listener {
    Peers,
    Front(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Sweep,
    StopDeadline,
    Announce,
    Rescan,
    Accept,
    Lookup(u32),
    Front(Deadline),
}

pub struct Daemon {
    cfg: Config,
    poll: Poll,
    now: Instant,
    started: Instant,
    signals: OwnedFd,
    _waker: Arc<Waker>,
    peer_listener: TcpListener,
    front_listeners: Vec<TcpListener>,
    /// Where the front listens: an upstream there would be flocon calling itself.
    front_addrs: Vec<SocketAddr>,
    /// Peers struck (policy.rs) and benched, by address.
    strikes: Strikes<IpAddr>,
    /// Peer-port connections per address (guard::MAX_PER_ADDRESS), and each one's address.
    per_address: PerAddress,
    peer_ips: HashMap<Token, IpAddr>,
    cache: CacheDirs,
    slots: Slots<Slot>,
    timers: Timers<Timer>,
    ready: Ready,
    stopping: Option<Instant>,
    /// Accepting is paused after EMFILE until descriptors free up.
    accept_paused: bool,
    /// The last accept failed (its warning is given once until one succeeds).
    accept_failing: bool,
    discovery: Discovery,
    index: SyncIndex,
    dbload: DbLoader,
    resolver: Resolver,
    front: Front,
    /// Lookups decided outside discovery's own events (nobody to ask), for the front.
    decided: Vec<DiscoveryEvent>,
    peer_bytes_sent: u64,
    refused_busy: u64,
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

/// A startup error's message from what failed and why.
fn err(what: &'static str) -> impl Fn(io::Error) -> StartError {
    move |e| StartError(format!("{what}: {e}"))
}

impl Daemon {
    pub fn new(cfg: Config) -> Result<Daemon, StartError> {
        let _ = sys::raise_nofile_limit();
        let signals = sys::signalfd().map_err(err("signalfd"))?;
        let poll = Poll::new().map_err(err("epoll"))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(err("waker"))?);
        let resolver = Resolver::new(waker.clone()).map_err(err("resolver thread"))?;
        let dbload = DbLoader::new(waker.clone()).map_err(err("db thread"))?;
        let peer_ip = cfg
            .peer_addr
            .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
        let mut peer_listener = bind_tcp(SocketAddr::new(peer_ip, cfg.port), "peers")?;
        if cfg.listen.len() > MAX_FRONT_LISTENERS {
            let n = MAX_FRONT_LISTENERS;
            return Err(StartError(format!("--listen: at most {n} addresses")));
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
        let fd = signals.as_raw_fd();
        reg.register(&mut SourceFd(&fd), SIGNAL, Interest::READABLE)
            .and_then(|_| reg.register(&mut peer_listener, PEER_LISTENER, Interest::READABLE))
            .map_err(err("epoll"))?;
        for (i, l) in front_listeners.iter_mut().enumerate() {
            reg.register(l, Token(FRONT_LISTENER_BASE + i), Interest::READABLE)
                .map_err(err("epoll"))?;
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
        if let Some(k) = &cfg.key_file {
            warn!(
                "--key-file {}: group keys are not implemented yet (docs/PROTOCOL.md §10); \
                 discovery runs unauthenticated",
                k.display()
            );
        }
        let identity = Identity {
            announce_interval: cfg.announce_interval,
            port: cfg.port,
            peer_addr: cfg.peer_addr,
            interfaces: cfg.interfaces.clone(),
            name: cfg.name.clone(),
            distro: cfg.distro.clone(),
            archs: cfg.architectures.clone(),
        };
        let discovery =
            Discovery::new(identity, poll.registry()).map_err(|e| StartError(e.to_string()))?;
        prepare_staging(&cfg);
        let now = Instant::now();
        let mut timers = Timers::new();
        timers.always(now + SWEEP_INTERVAL, Timer::Sweep);
        timers.always(now, Timer::Rescan);
        let front_addrs = front_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect();
        let mut d = Daemon {
            cfg,
            poll,
            now,
            started: now,
            signals,
            _waker: waker,
            peer_listener,
            front_listeners,
            front_addrs,
            strikes: Strikes::new(),
            per_address: PerAddress::new(),
            peer_ips: HashMap::new(),
            cache,
            slots: Slots::new(server::MAX_CONNECTIONS + front::MAX_CONNECTIONS + MAX_FETCHES),
            timers,
            ready: Ready::default(),
            stopping: None,
            accept_paused: false,
            accept_failing: false,
            discovery,
            index: SyncIndex::new(),
            dbload,
            resolver,
            front: Front::new(),
            decided: Vec::new(),
            peer_bytes_sent: 0,
            refused_busy: 0,
            peer_conns: 0,
            front_conns: 0,
        };
        check_dbs(&d.cfg, &mut d.index, &mut d.dbload);
        Ok(d)
    }

    /// Runs until a stop signal and the grace period; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let addrs = |v: Vec<io::Result<SocketAddr>>| {
            let v: Vec<String> = v.into_iter().flatten().map(|a| a.to_string()).collect();
            v.join(" ")
        };
        info!(
            "started: peers on {}, pacman on {}, cache {}",
            addrs(vec![self.peer_listener.local_addr()]),
            addrs(
                self.front_listeners
                    .iter()
                    .map(|l| l.local_addr())
                    .collect()
            ),
            self.cfg
                .cache_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        loop {
            self.now = Instant::now();
            if let Some(deadline) = self.stopping {
                let busy = self.busy_connections();
                if busy == 0 {
                    info!("stopped");
                    return 0;
                }
                if self.now >= deadline {
                    info!("stopped with {busy} transfers cut short");
                    return 0;
                }
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
            self.run_timers();
            self.run_ready();
            let (front, env) = self.parts();
            front.check(&env);
        }
    }

    /// The front and the narrow view of the loop it works through.
    fn parts(&mut self) -> (&mut Front, Loop<'_>) {
        let env = Loop {
            now: self.now,
            cfg: &self.cfg,
            registry: self.poll.registry(),
            slots: &mut self.slots,
            timers: &mut self.timers,
            ready: &mut self.ready,
            discovery: &mut self.discovery,
            index: &mut self.index,
            dbload: &mut self.dbload,
            resolver: &mut self.resolver,
            decided: &mut self.decided,
            strikes: &mut self.strikes,
            front_addrs: &self.front_addrs,
        };
        (&mut self.front, env)
    }

    fn on_event(&mut self, token: Token) {
        match token {
            SIGNAL => self.on_signals(),
            WAKER => self.on_wake(),
            PEER_LISTENER => self.accept(Listener::Peers),
            Token(t)
                if (FRONT_LISTENER_BASE..FRONT_LISTENER_BASE + MAX_FRONT_LISTENERS)
                    .contains(&t) =>
            {
                self.accept(Listener::Front(t - FRONT_LISTENER_BASE))
            }
            Token(t) if t < crate::eventloop::FIXED_TOKENS => self.on_datagrams(token),
            t => self.ready.schedule(t),
        }
    }

    /// Due timers, in order. A lookup is decided only after the datagrams waiting in the
    /// sockets are read: its answers may have arrived while the loop was busy.
    fn run_timers(&mut self) {
        let mut read = false;
        for _ in 0..TIMERS_PER_PASS {
            let Some(t) = self.timers.pop_expired(self.now) else {
                return;
            };
            if matches!(t, Timer::Lookup(_)) && !read {
                read = true;
                self.on_datagrams(discovery::UNICAST_V4);
                self.on_datagrams(discovery::UNICAST_V6);
            }
            self.on_timer(t);
        }
    }

    /// Drives what is ready, in order, until the pass budget is spent.
    fn run_ready(&mut self) {
        let start = Instant::now();
        for i in 0..self.ready.len() {
            if i > 0 && start.elapsed() > PASS_BUDGET {
                return;
            }
            let Some(t) = self.ready.pop() else { return };
            self.now = Instant::now();
            self.drive(t);
        }
    }

    fn on_datagrams(&mut self, token: Token) {
        let mut events = Vec::new();
        let (cache, index) = (&self.cache, &self.index);
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

    fn on_discovery_events(&mut self, mut events: Vec<DiscoveryEvent>) {
        loop {
            events.append(&mut self.decided);
            if events.is_empty() {
                return;
            }
            for ev in events.drain(..) {
                match ev {
                    DiscoveryEvent::PeerUp => {
                        let at = self.discovery.announce_deadline();
                        self.timers.always(at, Timer::Announce);
                    }
                    DiscoveryEvent::Decided(d) => {
                        let (front, mut env) = self.parts();
                        front.on_decided(&mut env, d.id, d.candidates, d.asked, d.answered);
                    }
                }
            }
        }
    }

    fn uploads_in_flight(&self) -> u16 {
        let sending =
            |s: &&Slot| matches!(s, Slot::Peer(c) if c.state() == conn::State::SendingFile);
        self.slots
            .values()
            .filter(sending)
            .count()
            .min(u16::MAX as usize) as u16
    }

    fn on_wake(&mut self) {
        for (id, r) in self.resolver.results() {
            let (front, mut env) = self.parts();
            front.on_resolved(&mut env, id, r);
        }
        let loaded = self.dbload.results();
        let any = !loaded.is_empty();
        for (repo, r) in loaded {
            match r {
                Ok((map, stamp)) => {
                    info!("sync db {repo}: {} packages", map.len());
                    self.index.install(&repo, Some(stamp), map);
                }
                Err(e) => {
                    let path = self.cfg.db_path.join("sync").join(format!("{repo}.db"));
                    warn!(
                        "sync db {}: {e}; keeping the previous index",
                        path.display()
                    );
                    self.index.keep_old(&repo, crate::syncdb::stamp(&path));
                }
            }
        }
        if any && self.dbload.in_flight.is_empty() {
            let (front, mut env) = self.parts();
            front.on_dbs_loaded(&mut env);
        }
        self.on_discovery_events(Vec::new());
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Sweep => {
                self.sweep();
                let mut events = Vec::new();
                self.discovery.expire(self.now, &mut events);
                self.on_discovery_events(events);
                self.timers.always(self.now + SWEEP_INTERVAL, Timer::Sweep);
            }
            Timer::StopDeadline => {}
            Timer::Rescan => {
                if self.stopping.is_none() && self.discovery.rescan(self.poll.registry(), self.now)
                {
                    self.announce_soon();
                }
                check_dbs(&self.cfg, &mut self.index, &mut self.dbload);
                let at = self.now + discovery::RESCAN_INTERVAL;
                self.timers.always(at, Timer::Rescan);
            }
            Timer::Announce => {
                if self.stopping.is_none() {
                    self.discovery.uploads = self.uploads_in_flight();
                    if self.discovery.announce_if_due(self.now) {
                        let at = self.discovery.announce_deadline();
                        self.timers.always(at, Timer::Announce);
                    }
                }
            }
            Timer::Accept => self.resume_accepting(),
            Timer::Lookup(id) => {
                let mut events = Vec::new();
                self.discovery.lookup_deadline(id, self.now, &mut events);
                self.on_discovery_events(events);
            }
            Timer::Front(d) => {
                let (front, mut env) = self.parts();
                front.on_deadline(&mut env, d);
                self.on_discovery_events(Vec::new());
            }
        }
    }

    /// A new membership or a new peer: announce within a fraction of a second.
    fn announce_soon(&mut self) {
        self.discovery.hurry_announce(self.now);
        let at = self.discovery.announce_deadline();
        self.timers.always(at, Timer::Announce);
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
                for line in self.snapshot().text().lines() {
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
        self.timers.always(deadline, Timer::StopDeadline);
        // idle keep-alive connections are not work in flight
        for t in self.slots.tokens() {
            let idle = match self.slots.get(t) {
                Some(Slot::Peer(c) | Slot::Front(c)) => c.state() == conn::State::WaitingForHead,
                _ => false,
            };
            if idle {
                self.close(t);
            }
        }
    }

    /// SIGHUP: every setting is applied, except those bound to sockets and identity, which
    /// keep their old values until a restart (one warning line names them).
    fn reload(&mut self) {
        let mut cfg = match crate::config::reload(&self.cfg) {
            Ok(cfg) => cfg,
            Err(e) => return warn!("SIGHUP: keeping the old configuration: {e}"),
        };
        let kept = keep_restart_settings(&self.cfg, &mut cfg);
        if !kept.is_empty() {
            warn!(
                "SIGHUP: {} changed; keeping the old value until flocon restarts",
                kept.join(", ")
            );
        }
        crate::log::set_debug(cfg.debug);
        self.cache = CacheDirs::new(&cfg.cache_dirs);
        if cfg.state_dir != self.cfg.state_dir {
            prepare_staging(&cfg);
        }
        self.cfg = cfg;
        // re-read every sync db, changed or not
        self.index = SyncIndex::new();
        check_dbs(&self.cfg, &mut self.index, &mut self.dbload);
        info!("SIGHUP: configuration and sync dbs re-read");
    }

    /// Connections with a response in flight (what a stop waits for).
    fn busy_connections(&self) -> usize {
        let busy = |s: &&Slot| match s {
            Slot::Peer(c) | Slot::Front(c) => c.state() != conn::State::WaitingForHead,
            Slot::Fetch(_) => false,
        };
        self.slots.values().filter(busy).count()
    }

    fn sweep(&mut self) {
        for t in self.slots.tokens() {
            let why = match self.slots.get(t) {
                Some(Slot::Peer(c) | Slot::Front(c)) => c.timed_out(self.now).then_some(""),
                Some(Slot::Fetch(f)) => f.timed_out(self.now),
                None => None,
            };
            let Some(why) = why else { continue };
            debug!("closing timed-out connection {t:?} {why}");
            if matches!(self.slots.get(t), Some(Slot::Fetch(_))) {
                // a dead peer or mirror must be noticed before pacman's 10 s
                let (front, mut env) = self.parts();
                front.on_fetch_event(&mut env, t, fetch::Event::Failed(why.to_string()));
            }
            self.close(t);
        }
        self.on_discovery_events(Vec::new());
    }

    /// Accepts every pending connection on one listener (edge-triggered: until WouldBlock).
    /// An address past its share of the peer port gets a 503. On a full listener the
    /// connection idle the longest (else the one opening the longest: a slow sender) is closed
    /// to make room (guard::make_room); only when every one is at work does the newcomer
    /// get a 503. See docs/DESIGN.md, "Faults and bans".
    fn accept(&mut self, which: Listener) {
        if self.accept_paused {
            return;
        }
        loop {
            let listener = match which {
                Listener::Peers => &self.peer_listener,
                Listener::Front(i) => match self.front_listeners.get(i) {
                    Some(l) => l,
                    None => return,
                },
            };
            let (mut stream, addr) = match listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connection stays queued; try again when a
                    // descriptor is freed or the retry timer fires (one warning per episode)
                    if !self.accept_failing {
                        warn!("accept ({which:?}): {e}; retrying when descriptors free up");
                    }
                    self.accept_failing = true;
                    self.accept_paused = true;
                    self.timers.always(self.now + ACCEPT_RETRY, Timer::Accept);
                    return;
                }
            };
            if std::mem::take(&mut self.accept_failing) {
                info!("accepting connections again");
            }
            // answers are a small head then sendfile: Nagle + delayed ACK would hold the head
            // back 40 ms per request
            let _ = stream.set_nodelay(true);
            let (open, limit, idle) = match which {
                Listener::Peers => (
                    self.peer_conns,
                    server::MAX_CONNECTIONS,
                    server::IDLE_TIMEOUT,
                ),
                Listener::Front(_) => (
                    self.front_conns,
                    front::MAX_CONNECTIONS,
                    front::IDLE_TIMEOUT,
                ),
            };
            let ip = peers::normalize_addr(addr).ip();
            let peer_port = matches!(which, Listener::Peers);
            if peer_port && !self.per_address.admit(ip) {
                self.refused_busy += 1;
                let _ = stream.write(&conn::busy_response());
                continue;
            }
            if self.slots.is_full() || open >= limit {
                let victim = self.make_room(which);
                if let Some(v) = victim {
                    debug!("{which:?} full: closing {v:?} to make room for {addr}");
                    self.close(v);
                }
                if victim.is_none() || self.slots.is_full() {
                    if peer_port {
                        self.per_address.release(ip);
                    }
                    self.refused_busy += 1;
                    let _ = stream.write(&conn::busy_response());
                    continue;
                }
            }
            let now = self.now;
            let Some(t) = self.slots.insert_with(|_| {
                let c = Conn::new(stream, now, idle);
                match which {
                    Listener::Peers => Slot::Peer(c),
                    Listener::Front(_) => Slot::Front(c),
                }
            }) else {
                if peer_port {
                    self.per_address.release(ip);
                }
                continue;
            };
            if peer_port {
                self.peer_ips.insert(t, ip);
            }
            match which {
                Listener::Peers => self.peer_conns += 1,
                Listener::Front(_) => self.front_conns += 1,
            }
            let registered = match self.slots.get_mut(t) {
                Some(Slot::Peer(c) | Slot::Front(c)) => {
                    let rw = Interest::READABLE | Interest::WRITABLE;
                    self.poll.registry().register(&mut c.stream, t, rw).is_ok()
                }
                _ => false,
            };
            if !registered {
                self.close(t);
                continue;
            }
            debug!("{which:?} connection from {addr}");
            // read its head now: a client's whole head is usually there already, and a
            // connection with its request in hand is never the one that gives way
            self.drive(t);
        }
    }

    /// The connection of listener `which` that gives way to a new one (guard::make_room).
    fn make_room(&self, which: Listener) -> Option<Token> {
        let conns =
            self.slots
                .tokens()
                .into_iter()
                .filter_map(|t| match (which, self.slots.get(t)) {
                    (Listener::Peers, Some(Slot::Peer(c))) => Some((t, c.activity())),
                    (Listener::Front(_), Some(Slot::Front(c))) => Some((t, c.activity())),
                    _ => None,
                });
        guard::make_room(conns)
    }

    /// A descriptor was freed (or the retry timer fired): accept what queued meanwhile.
    fn resume_accepting(&mut self) {
        if !self.accept_paused || self.stopping.is_some() {
            return;
        }
        self.accept_paused = false;
        self.accept(Listener::Peers);
        for i in 0..self.front_listeners.len() {
            self.accept(Listener::Front(i));
        }
    }

    fn drive(&mut self, t: Token) {
        let now = self.now;
        let close = match self.slots.get_mut(t) {
            Some(Slot::Peer(c)) => {
                let before = c.body_bytes;
                let p = c.drive(now);
                self.peer_bytes_sent += c.body_bytes - before;
                if p == conn::Progress::Request
                    && let Some(req) = c.take_request()
                {
                    server::answer(c, &req, &self.cache);
                }
                self.after_drive(t, p)
            }
            Some(Slot::Front(c)) => {
                let p = c.drive(now);
                match p {
                    conn::Progress::Request => {
                        if let Some(req) = c.take_request() {
                            let number = c.request_number();
                            self.on_front_request(t, number, req);
                        }
                    }
                    conn::Progress::Blocked => {
                        // room freed in a streaming answer: let its fetch read again
                        if let Some(f) = self.front.client_fetch(t) {
                            self.ready.schedule(f);
                        }
                    }
                    _ => {}
                }
                self.after_drive(t, p)
            }
            Some(Slot::Fetch(_)) => {
                self.drive_fetch(t);
                false
            }
            None => false,
        };
        if close {
            self.close(t);
        }
    }

    /// Whether to close after a turn; a connection with more to do gets another turn.
    fn after_drive(&mut self, t: Token, p: conn::Progress) -> bool {
        match p {
            conn::Progress::Close => return true,
            conn::Progress::Blocked => {}
            // an answer given at once is sent on its next turn (not by recursing: pipelined
            // requests would nest without bound)
            conn::Progress::Yielded | conn::Progress::Request => match self.slots.get(t) {
                Some(Slot::Peer(c) | Slot::Front(c))
                    if c.state() != conn::State::WaitingForSource =>
                {
                    self.ready.schedule(t)
                }
                _ => {}
            },
        }
        false
    }

    fn on_front_request(&mut self, t: Token, number: u64, req: crate::http::Request) {
        // only the loopback by name: a web page that rebinds its own name to 127.0.0.1 still
        // sends that name, and gets nothing (status, lookups, packages) from the front
        if !crate::guard::is_loopback_host(req.host.as_deref()) {
            debug!("Host {:?} is not the loopback: 421", req.host);
            let (_, mut env) = self.parts();
            env.reply(t, Reply::Error(421));
            return;
        }
        let page = match req.target.split('?').next().unwrap_or("") {
            "/.flocon/status" => Some((self.snapshot().text(), "text/plain; charset=utf-8")),
            "/.flocon/status.json" => Some((self.snapshot().json(), "application/json")),
            _ => None,
        };
        let stopping = self.stopping.is_some();
        let (front, mut env) = self.parts();
        match page {
            Some((body, ct)) => {
                let h = [("Content-Type", ct)];
                env.reply(t, Reply::Bytes(200, &h, body.as_bytes()));
            }
            None if stopping => _ = env.reply(t, Reply::Error(503)),
            None => front.on_request(&mut env, t, number, req),
        }
        self.on_discovery_events(Vec::new());
    }

    fn drive_fetch(&mut self, tok: Token) {
        // backpressure: a proxied stream pauses while its client's buffer is full
        let room = match self.front.fetch_client(tok).and_then(|c| self.slots.get(c)) {
            Some(Slot::Front(c)) => c.stream_room(),
            _ => usize::MAX,
        };
        let Some(Slot::Fetch(f)) = self.slots.get_mut(tok) else {
            return;
        };
        f.set_room(room);
        let mut events = Vec::new();
        f.drive(self.now, &mut events);
        let finished = f.is_finished();
        // it stopped at its per-turn bound with bytes left in the socket: no event will come
        if !finished && f.wants_drive() {
            self.ready.schedule(tok);
        }
        for ev in events {
            let (front, mut env) = self.parts();
            front.on_fetch_event(&mut env, tok, ev);
        }
        if finished {
            self.close(tok);
        }
        self.on_discovery_events(Vec::new());
    }

    fn close(&mut self, t: Token) {
        let reg = self.poll.registry();
        match self.slots.remove(t) {
            Some(Slot::Peer(mut c)) => {
                self.peer_conns -= 1;
                let _ = reg.deregister(&mut c.stream);
                if let Some(ip) = self.peer_ips.remove(&t) {
                    self.per_address.release(ip);
                }
            }
            Some(Slot::Front(mut c)) => {
                self.front_conns -= 1;
                let _ = reg.deregister(&mut c.stream);
                let (front, mut env) = self.parts();
                front.forget(&mut env, t);
            }
            Some(Slot::Fetch(mut f)) => {
                let _ = reg.deregister(&mut f.stream);
            }
            None => return,
        }
        self.resume_accepting();
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.now;
        let peers = self.discovery.peers.iter().map(|p| PeerRow {
            instance: p.instance,
            name: p.name.clone(),
            addr: p.addr.to_string(),
            tcp_port: p.tcp_port,
            distro: p.distro.clone(),
            archs: p.archs.clone(),
            version: p.version,
            last_seen_ms: now.duration_since(p.last_seen).as_millis(),
        });
        let transfers = self.front.copies(now).into_iter().map(|c| CopyRow {
            file: c.file,
            source: c.source.map(|a| a.to_string()).unwrap_or_default(),
            bytes: c.received,
            size: c.size,
            rate: c.rate,
            phase: format!("{:?}", c.phase),
        });
        let bans = self.discovery.bans.iter(now).map(|b| BanRow {
            peer: b.0.to_string(),
            seconds_left: b.1.as_secs(),
            reason: b.2.to_string(),
        });
        // strikes (policy.rs) bench a peer's address for a while: shown with the bans
        let benches = self.strikes.iter(now).map(|(ip, left, why)| BanRow {
            peer: format!("address {ip}"),
            seconds_left: left.as_secs(),
            reason: format!("benched: {why}"),
        });
        let bans = bans.chain(benches);
        let s = &self.front.stats;
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            name: self.cfg.name.clone(),
            distro: self.cfg.distro.clone(),
            archs: self.cfg.architectures.clone(),
            instance: self.discovery.instance(),
            uptime_s: now.duration_since(self.started).as_secs(),
            rss_kib: sys::rss_kib().unwrap_or(0),
            multicast: self.discovery.joined(),
            indexed_packages: self.index.len(),
            peers: peers.collect(),
            transfers: transfers.collect(),
            bans: bans.collect(),
            lan_hits: s.lan_hits,
            lan_bytes: s.lan_bytes,
            upstream_bytes: s.upstream_bytes,
            rejected_copies: s.rejected_copies,
            peer_bytes_sent: self.peer_bytes_sent,
            refused_busy: self.refused_busy,
            datagrams_in: self.discovery.stats.datagrams_in,
            datagrams_rejected: self.discovery.stats.rejected,
            connections: self.slots.len(),
        }
    }
}

/// Settings bound to sockets or to the identity peers know: a reload keeps their old values
/// in `new` and returns the names of those that differed.
fn keep_restart_settings(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident: $name:literal),*) => {$(
            if new.$field != old.$field {
                kept.push($name);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(listen: "listen", port: "port", peer_addr: "peer-addr", interfaces: "interface",
        name: "name", distro: "distro", architectures: "architecture",
        announce_interval: "announce-interval");
    kept
}

fn prepare_staging(cfg: &Config) {
    let staging = cfg.state_dir.join("staging");
    if let Err(e) = transfer::prepare_staging(&staging) {
        let s = staging.display();
        warn!("staging dir {s}: {e}; every request goes upstream");
    }
}

/// Sends every sync db whose file changed (pacman renames new ones into place) to the
/// helper thread. A stat per repo: cheap enough for every rescan.
fn check_dbs(cfg: &Config, index: &mut SyncIndex, dbload: &mut DbLoader) {
    let repos: Vec<String> = cfg.repos.iter().map(|r| r.name.clone()).collect();
    index.retain_repos(&repos);
    for (repo, path, stamp) in index.changed(&cfg.db_path.join("sync"), &repos) {
        match stamp {
            Some(_) => dbload.load(&repo, path),
            None => index.keep_old(&repo, None),
        }
    }
}

/// The loop as the front sees it (`front::Env`).
struct Loop<'a> {
    now: Instant,
    cfg: &'a Config,
    registry: &'a Registry,
    slots: &'a mut Slots<Slot>,
    timers: &'a mut Timers<Timer>,
    ready: &'a mut Ready,
    discovery: &'a mut Discovery,
    index: &'a mut SyncIndex,
    dbload: &'a mut DbLoader,
    resolver: &'a mut Resolver,
    decided: &'a mut Vec<DiscoveryEvent>,
    strikes: &'a mut Strikes<IpAddr>,
    front_addrs: &'a [SocketAddr],
}

impl Env for Loop<'_> {
    fn now(&self) -> Instant {
        self.now
    }

    fn reply(&mut self, client: Token, reply: Reply<'_>) -> bool {
        let Some(Slot::Front(c)) = self.slots.get_mut(client) else {
            return false;
        };
        match reply {
            Reply::Error(status) => c.answer_error(status),
            Reply::Bytes(status, h, body) => c.answer_bytes(status, h, body),
            Reply::File(status, h, f, start, end) => c.answer_file(status, h, f, start, end),
            Reply::Stream(status, h, length) => c.answer_stream(status, h, length),
            // more than its room cuts the stream (the conn closes on its turn)
            Reply::Body(data) => _ = c.push_stream(data),
            Reply::End(complete) => c.end_stream(complete),
        }
        self.ready.schedule(client);
        true
    }

    fn client_waits(&self, client: Token) -> bool {
        matches!(self.slots.get(client), Some(Slot::Front(c))
            if matches!(c.state(), conn::State::WaitingForSource | conn::State::Streaming))
    }

    fn start_fetch(&mut self, req: fetch::Request) -> Option<Token> {
        let addr = req.addr;
        let f = Fetch::connect(req, self.now)
            .map_err(|e| debug!("connect {addr}: {e}"))
            .ok()?;
        let Some(tok) = self.slots.insert_with(|_| Slot::Fetch(Box::new(f))) else {
            debug!("connect {addr}: no slot left");
            return None;
        };
        let rw = Interest::READABLE | Interest::WRITABLE;
        if let Some(Slot::Fetch(f)) = self.slots.get_mut(tok)
            && let Err(e) = self.registry.register(&mut f.stream, tok, rw)
        {
            debug!("connect {addr}: {e}");
            self.slots.remove(tok);
            return None;
        }
        // driven on its turn: the caller records what it is for first
        self.ready.schedule(tok);
        Some(tok)
    }

    fn stop_fetch(&mut self, fetch: Token) {
        if let Some(Slot::Fetch(_)) = self.slots.get(fetch)
            && let Some(Slot::Fetch(mut f)) = self.slots.remove(fetch)
        {
            let _ = self.registry.deregister(&mut f.stream);
        }
    }

    fn fetch_exists(&self, fetch: Token) -> bool {
        matches!(self.slots.get(fetch), Some(Slot::Fetch(_)))
    }

    fn timer(&mut self, at: Instant, d: Deadline) -> Option<TimerId> {
        self.timers.at(at, Timer::Front(d))
    }

    fn cancel(&mut self, id: TimerId) {
        self.timers.cancel(id);
    }

    fn start_lookup(
        &mut self,
        name: &str,
        expected: Option<(u64, Option<[u8; 32]>)>,
    ) -> Option<u32> {
        let budget = self.cfg.lookup_budget;
        let id =
            self.discovery
                .start_lookup(name, expected, budget, self.now, &mut *self.decided)?;
        // lookups are bounded by discovery (MAX_LOOKUPS); their deadline is never dropped
        self.timers.always(self.now + budget, Timer::Lookup(id));
        Some(id)
    }

    fn has_peers(&self) -> bool {
        !self.discovery.peers.is_empty()
    }

    fn peer_addr(&self, instance: u64) -> Option<SocketAddr> {
        self.discovery.peers.get(instance).map(|p| p.tcp_addr())
    }

    fn peer_name(&self, instance: u64) -> String {
        let p = self.discovery.peers.get(instance);
        p.map(|p| p.name.clone()).unwrap_or_default()
    }

    fn is_banned(&self, instance: u64) -> bool {
        self.discovery.is_banned(instance, self.now)
            || self
                .discovery
                .peers
                .get(instance)
                .is_some_and(|p| self.strikes.is_benched(p.addr.ip(), self.now))
    }

    fn ban(&mut self, instance: u64, why: &str) {
        self.discovery.ban(instance, self.now, why);
    }

    fn strike(&mut self, instance: u64, why: &str) {
        let Some(p) = self.discovery.peers.get(instance) else {
            return;
        };
        let d = self.strikes.strike(p.addr.ip(), self.now, why);
        warn!("benched peer {} ({}) for {d:?}: {why}", p.name, p.addr.ip());
    }

    fn db_signature(&self, _repo: &str, _file: &str) -> Option<Vec<u8>> {
        // syncdb.rs does not keep %PGPSIG% yet (issue 8's index work adds it)
        None
    }

    fn is_own_front(&self, addr: SocketAddr) -> bool {
        self.front_addrs
            .iter()
            .any(|f| crate::guard::is_own_front(addr, *f))
    }

    fn indexed(&self, repo: &str, file: &str) -> Option<PkgInfo> {
        self.index.lookup(repo, file)
    }

    fn dbs_loading(&mut self) -> bool {
        check_dbs(self.cfg, self.index, self.dbload);
        !self.dbload.in_flight.is_empty()
    }

    fn upstreams(&self, repo: &str, arch: &str) -> Vec<String> {
        let r = self.cfg.repos.iter().find(|r| r.name == repo);
        r.map(|r| r.upstreams(arch, self.cfg.front_port()))
            .unwrap_or_default()
    }

    fn staging_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("staging")
    }

    fn resolve_now(&mut self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        self.resolver.cached(host, port, self.now)
    }

    fn resolve(&mut self, id: u64, host: &str, port: u16) -> bool {
        self.resolver.resolve(id, host.to_string(), port)
    }
}
