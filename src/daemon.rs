//! The daemon: one mio `Poll`, every socket registered with it, timers and signals, accept,
//! reload, and the dispatch from events to the modules that own each kind of socket (the
//! peer file server, the front, discovery). Nothing here blocks: sockets are non-blocking,
//! files are local, and slow work runs on helper threads that report through the `Waker`.
//!
//! One pass of the loop: poll (not sleeping when work is queued or a timer is due), note
//! what became ready, read pending datagrams, run the due timers, then drive what is ready
//! within a time budget. Every connection or fetch with work goes through `Ready::schedule`.

use crate::config::Config;
use crate::conns::{self, Admit, Closed, Conns};
use crate::dbload::DbLoader;
use crate::discovery::{self, Discovery, DiscoveryEvent};
use crate::env::{Loop, Slot, Timer, check_dbs};
use crate::eventloop::{PreciseWake, Ready, Slots, Timers};
use crate::fetch;
use crate::front::{self, Front};
use crate::front_loop;
pub use crate::listen::StartError;
use crate::listen::{Accepted, Listener, Listeners};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::peers;
use crate::policy::Strikes;
use crate::rescan;
use crate::resolver::Resolver;
use crate::server::{self, CacheDirs};
use crate::stager::Stager;
use crate::status::Snapshot;
use crate::syncdb::SyncIndex;
use crate::sys;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGNAL: Token = Token(0);
const WAKER: Token = Token(2);
/// The timerfd that wakes the loop for deadlines closer than a millisecond.
const PRECISE: Token = Token(3);
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
    precise: PreciseWake,
    _waker: Arc<Waker>,
    listeners: Listeners,
    /// Where the front listens: an upstream there would be flocon calling itself.
    front_addrs: Vec<SocketAddr>,
    /// Peers struck (policy.rs) and benched, by address.
    strikes: Strikes<IpAddr>,
    /// The accepted connections' counts and addresses.
    conns: Conns,
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
        let precise = PreciseWake::new(poll.registry(), PRECISE).map_err(err("timerfd"))?;
        // (a cache dir that cannot be listed is among cfg.warnings, which identity() logs)
        let cache = CacheDirs::new(&cfg.cache_dirs);
        let identity = rescan::identity(&cfg).map_err(StartError)?;
        let discovery =
            Discovery::new(identity, poll.registry()).map_err(|e| StartError(e.to_string()))?;
        rescan::prepare_staging(&cfg);
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
            precise,
            _waker: waker,
            front_addrs: listeners.front_addrs(),
            listeners,
            strikes: Strikes::new(),
            conns: Conns::new(),
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
            check_joined: true,
            notifier: Notifier::from_env(),
        };
        d.front.metrics = Metrics::start(&d.cfg.state_dir, now);
        check_dbs(&d.cfg, &mut d.index, &mut d.dbload);
        Ok(d)
    }

    /// Runs until a stop signal and the grace period; returns the exit code.
    pub fn run(&mut self) -> i32 {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        info!("{}", self.listeners.started_line(&self.cfg));
        info!("{}", self.front.metrics.saved_line());
        // the listeners are open (Daemon::new): pacman can connect from here on
        let status = (self.front.metrics).systemd_status(self.discovery.peers.len());
        self.notifier.ready(&status, self.now);
        loop {
            self.now = Instant::now();
            if let Some(deadline) = self.stopping {
                let busy = conns::busy(&self.slots);
                if busy == 0 || self.now >= deadline {
                    match busy {
                        0 => info!("stopped"),
                        n => info!("stopped with {n} transfers cut short"),
                    }
                    (self.front.metrics).save_at_exit(&self.cfg.state_dir, self.now);
                    return 0;
                }
            }
            let timeout = if self.ready.is_empty() {
                self.precise
                    .poll_timeout(self.timers.poll_timeout(self.now))
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
            cache: &self.cache,
            registry: self.poll.registry(),
            slots: &mut self.slots,
            timers: &mut self.timers,
            ready: &mut self.ready,
            discovery: &mut self.discovery,
            index: &mut self.index,
            dbload: &mut self.dbload,
            resolver: &mut self.resolver,
            stager: &mut self.stager,
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
            WAKER => {
                let (front, mut env) = self.parts();
                front_loop::on_wake(front, &mut env);
            }
            PRECISE => self.precise.drain(),
            Token(t) if t < crate::eventloop::FIXED_TOKENS => self.on_datagrams(token),
            t => self.ready.schedule(t),
        }
    }

    /// Due timers, in order. A lookup is decided only after the datagrams waiting in the
    /// sockets are read: its answers, or other hosts' INTENTs for the same file, may have
    /// arrived while the loop was busy.
    fn run_timers(&mut self) {
        let mut read = false;
        for _ in 0..TIMERS_PER_PASS {
            let Some(t) = self.timers.pop_expired(self.now) else {
                return;
            };
            if matches!(t, Timer::Lookup(_)) && !read {
                read = true;
                for t in self.discovery.read_before_deciding() {
                    self.on_datagrams(t);
                }
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
        let (front, mut env) = self.parts();
        front_loop::on_datagrams(front, &mut env, token);
    }

    fn on_discovery_events(&mut self, events: Vec<DiscoveryEvent>) {
        let (front, mut env) = self.parts();
        front_loop::on_discovery_events(front, &mut env, events);
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::Sweep => {
                self.sweep();
                self.timers.always(self.now + SWEEP_INTERVAL, Timer::Sweep);
            }
            Timer::Rescan => {
                if self.stopping.is_none() && self.discovery.rescan(self.poll.registry(), self.now)
                {
                    self.announce_soon();
                }
                if std::mem::take(&mut self.check_joined) {
                    rescan::warn_if_no_multicast(&self.cfg, &self.discovery);
                }
                self.check_joined |= rescan::follow_pacman_conf(&mut self.cfg, &mut self.cache);
                rescan::check(self.stopping.is_none(), &mut self.parts().1);
                self.timers
                    .always(self.now + discovery::RESCAN_INTERVAL, Timer::Rescan);
            }
            Timer::Announce if self.stopping.is_none() => {
                self.discovery.uploads = conns::uploads_in_flight(&self.slots);
                if let Some(at) = self.discovery.on_announce_timer(self.now) {
                    self.timers.always(at, Timer::Announce);
                }
            }
            Timer::Announce | Timer::StopDeadline => {}
            Timer::Accept => self.resume_accepting(),
            Timer::Lookup(id) => {
                let (front, mut env) = self.parts();
                front_loop::on_lookup_deadline(front, &mut env, id);
            }
            Timer::Front(d) => {
                let (front, mut env) = self.parts();
                front_loop::on_deadline(front, &mut env, d);
            }
        }
    }

    /// A new membership or a new peer: announce within a fraction of a second.
    fn announce_soon(&mut self) {
        if let Some(at) = self.discovery.hurry_announce(self.now) {
            self.timers.always(at, Timer::Announce);
        }
    }

    fn on_signals(&mut self) {
        loop {
            match sys::read_signal(&self.signals) {
                Ok(Some(libc::SIGTERM | libc::SIGINT)) => self.begin_stop(),
                Ok(Some(libc::SIGHUP)) => self.reload(),
                Ok(Some(libc::SIGUSR1)) => {
                    let counters = self.conns.counters(self.started, &self.slots);
                    let (front, env) = self.parts();
                    for line in Snapshot::of_loop(&env, front, &counters).text().lines() {
                        info!("{line}");
                    }
                }
                Ok(Some(libc::SIGUSR2)) => {
                    info!("SIGUSR2: rejoining multicast groups");
                    self.discovery.rejoin(self.poll.registry(), self.now);
                    self.announce_soon();
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => return warn!("signalfd: {e}"),
            }
        }
    }

    fn begin_stop(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let busy = conns::busy(&self.slots);
        info!("stopping: {busy} connections busy");
        (self.notifier).stopping(&format!("stopping: {busy} connections busy"));
        self.discovery.goodbye();
        self.listeners.close(self.poll.registry());
        let deadline = self.now + STOP_GRACE;
        self.stopping = Some(deadline);
        self.timers.always(deadline, Timer::StopDeadline);
        // idle keep-alive connections are not work in flight
        for t in self.slots.tokens() {
            if conns::is_idle(&self.slots, t) {
                self.close(t);
            }
        }
    }

    /// SIGHUP: every setting is applied, except those bound to sockets and identity, which
    /// keep their old values until a restart (one warning line names them).
    fn reload(&mut self) {
        if rescan::apply_config(&mut self.cfg, &mut self.cache, "SIGHUP") {
            self.check_joined = true;
            // re-read every sync db, changed or not
            self.index = SyncIndex::new();
            check_dbs(&self.cfg, &mut self.index, &mut self.dbload);
            info!("SIGHUP: configuration and sync dbs re-read");
        }
    }

    /// Once a second: timed-out connections closed, silent peers dropped, systemd's status
    /// and the saved counters kept current.
    fn sweep(&mut self) {
        let status = (self.front.metrics).systemd_status(self.discovery.peers.len());
        self.notifier.status(&status, self.now);
        (self.front.metrics).save_when_due(&self.cfg.state_dir, self.now);
        for t in self.slots.tokens() {
            let Some(why) = conns::timed_out(&self.slots, t, self.now) else {
                continue;
            };
            debug!("closing timed-out connection {t:?} {why}");
            if matches!(self.slots.get(t), Some(Slot::Fetch(_))) {
                // a dead peer or mirror must be noticed before pacman's 10 s
                let (front, mut env) = self.parts();
                front.on_fetch_event(&mut env, t, fetch::Event::Failed(why.to_string()));
            }
            self.close(t);
        }
        let mut events = Vec::new();
        self.discovery.expire(self.now, &mut events);
        self.on_discovery_events(events);
    }

    /// Accepts the pending connections on one listener (edge-triggered: until WouldBlock, or
    /// a batch, then the rest on the listener's turn in the ready queue).
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
                // the rest after what is already queued (listen.rs, ACCEPT_BATCH)
                Accepted::Later => return self.ready.schedule(which.token()),
            };
            let ip = peers::normalize_addr(addr).ip();
            match (self.conns).admit(which, &mut stream, addr, &self.discovery, &self.slots) {
                Admit::Yes => {}
                Admit::GiveWay(v) => {
                    debug!("{which:?} full: closing {v:?} to make room for {addr}");
                    self.close(v);
                    if self.slots.is_full() {
                        self.conns.refuse(which, ip, &mut stream);
                        continue;
                    }
                }
                Admit::No => continue,
            }
            let (reg, now) = (self.poll.registry(), self.now);
            let Some(t) = (self.conns).insert(which, stream, ip, &mut self.slots, reg, now) else {
                continue;
            };
            debug!("{which:?} connection from {addr}");
            // read its head now: a client's whole head is usually there already, and a
            // connection with its request in hand is never the one that gives way
            self.drive(t);
        }
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
        if let Some(which) = Listener::of(t) {
            if self.stopping.is_none() {
                self.accept(which);
            }
            return;
        }
        let now = self.now;
        let p = match self.slots.get_mut(t) {
            Some(Slot::Peer(c)) => {
                let (keys, front) = (self.discovery.keys(), &self.front);
                let arriving = |name: &str| front.growing(name);
                let digest = self.discovery.published.body();
                let (p, sent) =
                    (self.conns).drive_peer(c, now, &self.cache, keys, &arriving, digest);
                self.front.metrics.served(sent);
                p
            }
            Some(Slot::Front(_)) => {
                let counters = self.conns.counters(self.started, &self.slots);
                let stopping = self.stopping.is_some();
                let (front, mut env) = self.parts();
                let Some(p) = front_loop::drive_client(front, &mut env, t, stopping, &counters)
                else {
                    return;
                };
                p
            }
            Some(Slot::Fetch(_)) => {
                let (front, mut env) = self.parts();
                if front_loop::drive_fetch(front, &mut env, t) {
                    self.close(t);
                }
                self.on_discovery_events(Vec::new());
                return;
            }
            Some(Slot::Digest(_)) => {
                if self.parts().1.drive_digest(t) {
                    self.close(t);
                    self.on_discovery_events(Vec::new());
                }
                return;
            }
            None => return,
        };
        if conns::after_turn(&self.slots, &mut self.ready, t, p) {
            self.close(t);
        }
    }

    fn close(&mut self, t: Token) {
        let reg = self.poll.registry();
        match self.conns.close(t, &mut self.slots, reg) {
            Some(Closed::Front) => {
                let (front, mut env) = self.parts();
                front.forget(&mut env, t);
            }
            Some(Closed::Peer | Closed::Fetch) => {}
            None => return,
        }
        self.resume_accepting();
    }
}
