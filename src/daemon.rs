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
use crate::env::{Loop, Slot, Timer, check_dbs};
use crate::eventloop::{Ready, Slots, Timers};
use crate::fetch;
use crate::front::{self, Env, Front, Reply};
use crate::guard::{self, PerAddress};
pub use crate::listen::StartError;
use crate::listen::{Accepted, Listener, Listeners};
use crate::metrics::{self, Lifetime, Metrics};
use crate::notify::Notifier;
use crate::peers;
use crate::policy::Strikes;
use crate::resolver::Resolver;
use crate::server::{self, CacheDirs};
use crate::stager::Stager;
use crate::status::{BanRow, Counters, Snapshot};
use crate::syncdb::SyncIndex;
use crate::{sys, transfer};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGNAL: Token = Token(0);
const WAKER: Token = Token(2);
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

pub struct Daemon {
    cfg: Config,
    /// After the next interface rescan, warn if no multicast group is joined (set at start
    /// and by every re-read of the configuration).
    check_joined: bool,
    poll: Poll,
    now: Instant,
    started: Instant,
    signals: OwnedFd,
    _waker: Arc<Waker>,
    listeners: Listeners,
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
    discovery: Discovery,
    index: SyncIndex,
    dbload: DbLoader,
    resolver: Resolver,
    /// Staging writes and hashing of peer copies, off the loop.
    stager: Stager,
    front: Front,
    /// Lookups decided outside discovery's own events (nobody to ask), for the front.
    decided: Vec<DiscoveryEvent>,
    peer_bytes_sent: u64,
    refused_busy: u64,
    peer_conns: usize,
    front_conns: usize,
    /// systemd's `Type=notify`: READY=1, STATUS=, STOPPING=1.
    notifier: Notifier,
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
        let dbload = DbLoader::new(waker.clone(), cfg.state_dir.join("staging"))
            .map_err(err("db thread"))?;
        let listeners = Listeners::bind(&cfg, poll.registry())?;
        let fd = signals.as_raw_fd();
        (poll.registry())
            .register(&mut SourceFd(&fd), SIGNAL, Interest::READABLE)
            .map_err(err("epoll"))?;
        // (a cache dir that cannot be listed is among cfg.warnings)
        let cache = CacheDirs::new(&cfg.cache_dirs);
        for w in &cfg.warnings {
            warn!("{w}");
        }
        let (keys, key_warnings) = crate::auth::Keys::load(&cfg.key_files).map_err(StartError)?;
        for w in key_warnings {
            warn!("{w}");
        }
        let identity = Identity {
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
        };
        let discovery =
            Discovery::new(identity, poll.registry()).map_err(|e| StartError(e.to_string()))?;
        prepare_staging(&cfg);
        let stager = Stager::new(&cfg.state_dir.join("staging"), waker.clone())
            .map_err(err("staging thread"))?;
        let now = Instant::now();
        let mut timers = Timers::new();
        timers.always(now + SWEEP_INTERVAL, Timer::Sweep);
        timers.always(now, Timer::Rescan);
        let mut d = Daemon {
            cfg,
            poll,
            now,
            started: now,
            signals,
            _waker: waker,
            front_addrs: listeners.front_addrs(),
            listeners,
            strikes: Strikes::new(),
            per_address: PerAddress::new(),
            peer_ips: HashMap::new(),
            cache,
            slots: Slots::new(server::MAX_CONNECTIONS + front::MAX_CONNECTIONS + MAX_FETCHES),
            timers,
            ready: Ready::default(),
            stopping: None,
            discovery,
            index: SyncIndex::new(),
            dbload,
            resolver,
            stager,
            front: Front::new(),
            decided: Vec::new(),
            peer_bytes_sent: 0,
            refused_busy: 0,
            peer_conns: 0,
            front_conns: 0,
            check_joined: true,
            notifier: Notifier::from_env(),
        };
        let lifetime = Lifetime::load(&d.cfg.state_dir).unwrap_or_else(|e| {
            warn!("{e}; counting what the LAN saved starts again at 0");
            None
        });
        d.front.metrics = Metrics::new(lifetime, now, metrics::unix_now());
        check_dbs(&d.cfg, &mut d.index, &mut d.dbload);
        Ok(d)
    }

    /// Runs until a stop signal and the grace period; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let (peers, front) = self.listeners.describe();
        let cache: Vec<String> = (self.cfg.cache_dirs.iter())
            .map(|d| d.display().to_string())
            .collect();
        info!(
            "started: peers on {peers}, pacman on {front}, cache {}",
            cache.join(" ")
        );
        info!("{}", self.front.metrics.saved_line());
        // the listeners are open (Daemon::new): pacman can connect from here on
        let status = self.systemd_status();
        self.notifier.ready(&status, self.now);
        loop {
            self.now = Instant::now();
            if let Some(deadline) = self.stopping {
                let busy = self.busy_connections();
                if busy == 0 || self.now >= deadline {
                    if busy == 0 {
                        info!("stopped");
                    } else {
                        info!("stopped with {busy} transfers cut short");
                    }
                    self.save_counters(true);
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
            stager: &self.stager,
            decided: &mut self.decided,
            strikes: &mut self.strikes,
            front_addrs: &self.front_addrs,
        };
        (&mut self.front, env)
    }

    fn on_event(&mut self, token: Token) {
        if let Some(which) = Listener::of(token) {
            return self.accept(which);
        }
        match token {
            SIGNAL => self.on_signals(),
            WAKER => self.on_wake(),
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
        self.discovery.uploads = self.uploads_in_flight();
        let me = self.discovery.instance();
        let (cache, index, front, now) = (&self.cache, &self.index, &mut self.front, self.now);
        // The size is the file's; the SHA-256 is what this host's own sync db says of a
        // file of that name and size: pacman checked its cached copy against that db, and a
        // host of another architecture (Arch ARM) names another build, so an asker whose db
        // differs skips us without a transfer and without a ban (docs/DESIGN.md).
        // Not in the cache: a copy here, verified or on its way (front.rs).
        let mut has_file = |name: &str, asker: u64| {
            let Some(size) = cache.size_of(name) else {
                return front.in_flight(name, now, (asker < me).then_some(asker));
            };
            let sha = index
                .lookup_any(name)
                .filter(|(_, i)| i.size == size)
                .and_then(|(_, i)| i.sha256);
            Some((size, sha, None))
        };
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
            if let Some(i) = discovery::static_peer_of(id) {
                self.discovery.static_resolved(i, r);
                continue;
            }
            let (front, mut env) = self.parts();
            front.on_resolved(&mut env, id, r);
        }
        for r in self.stager.reports() {
            let (front, mut env) = self.parts();
            front.on_staged(&mut env, r);
        }
        // the stager's queue has room again: peer copies paused for it read on
        if self.stager.take_room_freed() {
            for t in self.front.copy_fetches("") {
                self.ready.schedule(t);
            }
            for t in self.front.tee_fetches() {
                self.ready.schedule(t);
            }
        }
        // a copy that peers are sent while it grows got bytes (or failed)
        if self.stager.take_grown() {
            let starved =
                |t: &Token| matches!(self.slots.get(*t), Some(Slot::Peer(c)) if c.starved());
            for t in self.slots.tokens().into_iter().filter(starved) {
                self.ready.schedule(t);
            }
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
                let status = self.systemd_status();
                self.notifier.status(&status, self.now);
                if self.front.metrics.save_due(self.now) {
                    self.save_counters(false);
                }
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
                if self.check_joined {
                    self.check_joined = false;
                    self.warn_if_no_multicast();
                }
                self.follow_pacman_conf();
                check_dbs(&self.cfg, &mut self.index, &mut self.dbload);
                for (i, host, port) in self.discovery.static_resolutions_due(self.now) {
                    self.resolver
                        .resolve(discovery::static_resolve_id(i), host, port);
                }
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
        let busy = self.busy_connections();
        info!("stopping: {busy} connections busy");
        (self.notifier).stopping(&format!("stopping: {busy} connections busy"));
        self.discovery.goodbye();
        self.listeners.close(self.poll.registry());
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
        if self.apply_config("SIGHUP") {
            // re-read every sync db, changed or not
            self.index = SyncIndex::new();
            check_dbs(&self.cfg, &mut self.index, &mut self.dbload);
            info!("SIGHUP: configuration and sync dbs re-read");
        }
    }

    /// pacman.conf, a file it includes or a mirrorlist changed (reflector, a merged .pacnew,
    /// an edit): re-read the configuration as SIGHUP does; the sync dbs follow their own
    /// stamps. One log line.
    fn follow_pacman_conf(&mut self) {
        let Some(path) = crate::config::changed_file(&self.cfg.pacman_files) else {
            return;
        };
        let why = format!("{} changed", path.display());
        if self.apply_config(&why) {
            let servers: usize = self.cfg.repos.iter().map(|r| r.servers.len()).sum();
            info!(
                "{why}: pacman.conf re-read ({} repos, {servers} server lines)",
                self.cfg.repos.len()
            );
        }
    }

    /// Re-reads the configuration and applies it, logging each of its warnings; on failure
    /// keeps the running one and re-stamps pacman's files (the broken one included), so that
    /// only a further change tries again.
    fn apply_config(&mut self, why: &str) -> bool {
        let mut cfg = match crate::config::reload(&self.cfg) {
            Ok(cfg) => cfg,
            Err(e) => {
                warn!("{why}: keeping the old configuration: {e}");
                self.cfg.pacman_files = crate::config::pacman_conf_stamps(&self.cfg.pacman_conf);
                return false;
            }
        };
        for w in &cfg.warnings {
            warn!("{w}");
        }
        let kept = keep_restart_settings(&self.cfg, &mut cfg);
        if !kept.is_empty() {
            warn!(
                "{why}: {} changed; keeping the old value until flocon restarts",
                kept.join(", ")
            );
        }
        crate::log::set_debug(cfg.debug);
        self.cache = CacheDirs::new(&cfg.cache_dirs);
        if cfg.state_dir != self.cfg.state_dir {
            prepare_staging(&cfg);
        }
        self.cfg = cfg;
        self.check_joined = true;
        true
    }

    /// Once after start and after each re-read: no multicast group joined means no peer.
    fn warn_if_no_multicast(&self) {
        if self.discovery.joined().is_empty() {
            let named = if self.cfg.interfaces.is_empty() {
                String::new()
            } else {
                format!(" (--interface {})", self.cfg.interfaces.join(", "))
            };
            warn!(
                "no multicast interface joined{named}: no peer can be found (flocon serves \
                 from the mirrors only) until one comes up"
            );
        }
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
    /// Past the listener's limit a connection gets a 503 and is closed; the others go on.
    fn accept(&mut self, which: Listener) {
        loop {
            let (mut stream, addr) = match self.listeners.accept(which) {
                Accepted::Conn(stream, addr) => (stream, addr),
                Accepted::Nothing => return,
                Accepted::Paused => {
                    self.timers.always(self.now + ACCEPT_RETRY, Timer::Accept);
                    return;
                }
            };
            // a peer connection that came in on an interface flocon does not use (excluded,
            // or not among --interface) is closed unanswered
            if matches!(which, Listener::Peers)
                && !stream
                    .local_addr()
                    .is_ok_and(|l| self.discovery.accepts_on(l.ip()))
            {
                debug!("peer connection from {addr} on a foreign interface refused");
                continue;
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
        if self.stopping.is_some() || !self.listeners.resume() {
            return;
        }
        for which in self.listeners.all() {
            self.accept(which);
        }
    }

    fn drive(&mut self, t: Token) {
        let now = self.now;
        let close = match self.slots.get_mut(t) {
            Some(Slot::Peer(c)) => {
                let before = c.body_bytes;
                let p = c.drive(now);
                self.peer_bytes_sent += c.body_bytes - before;
                self.front.metrics.served(c.body_bytes - before);
                if p == conn::Progress::Request
                    && let Some(req) = c.take_request()
                {
                    let front = &self.front;
                    let arriving = |name: &str| front.growing(name);
                    server::answer_with(c, &req, &self.cache, self.discovery.keys(), &arriving);
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
        if !guard::is_loopback_host(req.host.as_deref()) {
            debug!("Host {:?} is not the loopback: 421", req.host);
            let (_, mut env) = self.parts();
            env.reply(t, Reply::Error(421));
            return;
        }
        let page = match req.target.split('?').next().unwrap_or("") {
            "/.flocon/status" => Some((self.snapshot().text(), "text/plain; charset=utf-8")),
            "/.flocon/status.json" => Some((self.snapshot().json(), "application/json")),
            "/metrics" | "/.flocon/metrics" => Some((
                self.front.metrics.render(self.discovery.peers.len()),
                "text/plain; version=0.0.4; charset=utf-8",
            )),
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
        // backpressure: a proxied stream reads what its client's buffer has room for, a
        // peer copy what the stager's queue has
        let room = match self.front.fetch_client(tok).map(|c| self.slots.get(c)) {
            // a proxy that also feeds a copy: the stager's room too
            Some(Some(Slot::Front(c))) if self.front.is_tee(tok) => {
                c.stream_room().min(self.stager.handle().room())
            }
            Some(Some(Slot::Front(c))) => c.stream_room(),
            Some(_) => usize::MAX,
            // a peer's .sig waits for nobody's room (a full stager must not stall it)
            None if self.front.is_sig_fetch(tok) => usize::MAX,
            None => self.stager.handle().room(),
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

    /// The unit's one-line status for `systemctl status`.
    fn systemd_status(&self) -> String {
        (self.front.metrics).systemd_status(self.discovery.peers.len())
    }

    /// Writes the lifetime counters to the state dir (`sync`: to the disk, at exit).
    fn save_counters(&mut self, sync: bool) {
        let dir = self.cfg.state_dir.clone();
        if let Err(e) = self.front.metrics.save(&dir, self.now, sync) {
            warn!("saving the counters in {}: {e}", dir.display());
        }
    }

    fn snapshot(&self) -> Snapshot {
        let counters = Counters {
            started: self.started,
            peer_bytes_sent: self.peer_bytes_sent,
            refused_busy: self.refused_busy,
            connections: self.slots.len(),
        };
        let (cfg, index) = (&self.cfg, &self.index);
        let mut s = Snapshot::gather(
            cfg,
            &self.discovery,
            &self.front,
            index,
            &counters,
            self.now,
        );
        // strikes (policy.rs) bench a peer's address for a while: shown with the bans
        s.bans
            .extend(self.strikes.iter(self.now).map(|(ip, left, why)| {
                BanRow {
                    name: (self.discovery.peers.iter())
                        .find(|p| p.addr.ip() == ip)
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    peer: format!("address {ip}"),
                    seconds_left: left.as_secs(),
                    reason: format!("benched: {why}"),
                }
            }));
        s
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
        name: "name", distro: "distro", architectures: "architecture", state_dir: "state-dir",
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
