//! The loop as the front sees it: what a slot holds (`Slot`), what a timer means (`Timer`),
//! and `Loop`, the daemon's sockets, timers, discovery, index and resolver borrowed for one
//! call into the front, implementing `front::Env`. The cache digests' loop work goes through
//! the same view: ours rebuilt at rescans, the peers' fetched (`DigestFetch` slots).

use crate::config::Config;
use crate::conn::{self, Conn};
use crate::dbload::DbLoader;
use crate::discovery::{Discovery, DiscoveryEvent};
use crate::eventloop::{Ready, Slots, TimerId, Timers};
use crate::fetch::{self, Fetch};
use crate::front::{Deadline, Env, Reply};
use crate::policy::Strikes;
use crate::resolver::Resolver;
use crate::server::CacheDirs;
use crate::stager::{StageHandle, Stager};
use crate::syncdb::{PkgInfo, SyncIndex};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// What a slot holds.
pub(crate) enum Slot {
    Peer(Conn<TcpStream>),
    Front(Conn<TcpStream>),
    Fetch(Box<Fetch>),
    /// `GET /.flocon/digest` from a peer (docs/PROTOCOL.md §14.3).
    Digest(Box<DigestFetch>),
}

/// Fetches of peers' digests in flight at once.
pub(crate) const MAX_DIGEST_FETCHES: usize = 4;

/// One fetch of a peer's digest: the body is kept in memory, at most MAX_DIGEST_LEN.
pub(crate) struct DigestFetch {
    pub(crate) fetch: Fetch,
    pub(crate) instance: u64,
    body: Vec<u8>,
}

impl DigestFetch {
    /// Starts `GET /.flocon/digest` to `addr` (the peer's file server), with `headers`
    /// (Flocon-Auth under a key).
    pub(crate) fn start(
        instance: u64,
        addr: SocketAddr,
        headers: Vec<(String, String)>,
        now: Instant,
    ) -> std::io::Result<DigestFetch> {
        let url = crate::url::HttpUrl::peer(addr)
            .join(DIGEST_PATH)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let req = fetch::Request {
            method: crate::http::Method::Get,
            addr,
            url,
            headers,
        };
        Ok(DigestFetch {
            fetch: Fetch::connect(req, now)?,
            instance,
            body: Vec::new(),
        })
    }

    /// One turn: None while it goes on, then Some(the body) once, or Some(None) when it
    /// failed (not 200, too long, cut).
    pub(crate) fn drive(&mut self, now: Instant) -> Option<Option<Vec<u8>>> {
        let mut events = Vec::new();
        self.fetch.drive(now, &mut events);
        for e in events {
            match e {
                fetch::Event::Head(info) if info.status == 200 => {}
                fetch::Event::Head(_) | fetch::Event::Failed(_) => return Some(None),
                fetch::Event::Body(chunk) => {
                    if self.body.len() + chunk.len() > crate::digest::MAX_DIGEST_LEN {
                        return Some(None);
                    }
                    self.body.extend_from_slice(&chunk);
                }
                fetch::Event::Done => return Some(Some(std::mem::take(&mut self.body))),
            }
        }
        None
    }
}

/// Where a peer's file server serves its digest.
pub(crate) const DIGEST_PATH: &str = "/.flocon/digest";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    Sweep,
    StopDeadline,
    Announce,
    Rescan,
    Accept,
    Lookup(u32),
    Front(Deadline),
}

/// Sends every sync db whose file changed (pacman renames new ones into place) to the
/// helper thread. A stat per repo: cheap enough for every rescan.
pub(crate) fn check_dbs(cfg: &Config, index: &mut SyncIndex, dbload: &mut DbLoader) {
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
pub(crate) struct Loop<'a> {
    pub(crate) now: Instant,
    pub(crate) cfg: &'a Config,
    /// The cache dirs: what we offer peers.
    pub(crate) cache: &'a CacheDirs,
    pub(crate) registry: &'a Registry,
    pub(crate) slots: &'a mut Slots<Slot>,
    pub(crate) timers: &'a mut Timers<Timer>,
    pub(crate) ready: &'a mut Ready,
    pub(crate) discovery: &'a mut Discovery,
    pub(crate) index: &'a mut SyncIndex,
    pub(crate) dbload: &'a mut DbLoader,
    pub(crate) resolver: &'a mut Resolver,
    pub(crate) stager: &'a mut Stager,
    pub(crate) decided: &'a mut Vec<DiscoveryEvent>,
    pub(crate) strikes: &'a mut Strikes<IpAddr>,
    pub(crate) front_addrs: &'a [SocketAddr],
}

/// The cache digests (docs/PROTOCOL.md §14) in the loop, and the outbound connections they
/// share with the front's fetches.
impl Loop<'_> {
    /// Our digest, rebuilt when a cache dir changed (at most once per DIGEST_GAP).
    pub(crate) fn publish_digest(&mut self) {
        if !self.discovery.digests {
            return;
        }
        let stamp = crate::digest::cache_stamp(&self.cfg.cache_dirs);
        if self.discovery.published.is_due(&stamp, self.now) {
            let names = crate::digest::cache_names(&self.cfg.cache_dirs);
            self.discovery.publish(&names, stamp, self.now);
        }
    }

    /// Starts fetches of the peers' digests we lack, MAX_DIGEST_FETCHES at once.
    pub(crate) fn fetch_digests(&mut self) {
        let busy: Vec<u64> = (self.slots.values())
            .filter_map(|s| match s {
                Slot::Digest(d) => Some(d.instance),
                _ => None,
            })
            .collect();
        let room = MAX_DIGEST_FETCHES.saturating_sub(busy.len());
        for (instance, addr, version) in self.discovery.digests_to_fetch(&busy, room, self.now) {
            let auth = self.discovery.auth_header("GET", DIGEST_PATH);
            let f = match DigestFetch::start(instance, addr, auth.into_iter().collect(), self.now) {
                Ok(f) => f,
                Err(e) => {
                    debug!("digest v{version} from {addr}: {e}");
                    continue;
                }
            };
            self.insert_outbound(Slot::Digest(Box::new(f)), addr);
        }
    }

    /// A new outbound connection (a fetch, a digest fetch) put in a slot, registered, and
    /// driven on its turn. None when no slot is left or epoll refuses it (logged).
    fn insert_outbound(&mut self, slot: Slot, addr: SocketAddr) -> Option<Token> {
        let Some(tok) = self.slots.insert_with(|_| slot) else {
            debug!("connect {addr}: no slot left");
            return None;
        };
        let rw = Interest::READABLE | Interest::WRITABLE;
        let registered = match self.slots.get_mut(tok) {
            Some(Slot::Fetch(f)) => self.registry.register(&mut f.stream, tok, rw),
            Some(Slot::Digest(d)) => self.registry.register(&mut d.fetch.stream, tok, rw),
            _ => Ok(()),
        };
        if let Err(e) = registered {
            debug!("connect {addr}: {e}");
            self.slots.remove(tok);
            return None;
        }
        self.ready.schedule(tok);
        Some(tok)
    }

    /// One turn of the digest fetch in slot `t`. Returns whether it ended (what it brought,
    /// if anything, is with discovery): the caller closes it and starts the next.
    pub(crate) fn drive_digest(&mut self, t: Token) -> bool {
        let Some(Slot::Digest(d)) = self.slots.get_mut(t) else {
            return false;
        };
        match d.drive(self.now) {
            Some(body) => {
                self.discovery.digest_fetched(d.instance, body.as_deref());
                true
            }
            None => {
                if d.fetch.wants_drive() {
                    self.ready.schedule(t);
                }
                false
            }
        }
    }
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
            // Done: cut this pass, closed (and forgotten) on its next turn
            if matches!(c.state(), conn::State::WaitingForSource | conn::State::Streaming
                | conn::State::Done))
    }

    fn start_fetch(&mut self, mut req: fetch::Request) -> Option<Token> {
        let addr = req.addr;
        // under a group key, a request to a peer's file server carries Flocon-Auth
        if self.discovery.peers.iter().any(|p| p.tcp_addr() == addr) {
            let auth = self
                .discovery
                .auth_header(req.method.as_str(), req.url.path());
            req.headers.extend(auth);
        }
        let f = Fetch::connect(req, self.now)
            .map_err(|e| debug!("connect {addr}: {e}"))
            .ok()?;
        // driven on its turn: the caller records what it is for first
        self.insert_outbound(Slot::Fetch(Box::new(f)), addr)
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
        let budget = self.discovery.lookup_budget(self.cfg.lookup_budget);
        let strikes = &self.strikes;
        let benched = |p: &crate::peers::Peer| strikes.is_benched(p.addr.ip(), self.now);
        let id = self.discovery.start_lookup(
            name,
            expected,
            budget,
            (self.now, benched),
            &mut *self.decided,
        )?;
        // lookups are bounded by discovery (MAX_LOOKUPS); their deadline is never dropped
        self.timers.always(self.now + budget, Timer::Lookup(id));
        if let Some(at) = self.discovery.not_before(id) {
            self.timers.always(at, Timer::Lookup(id));
        }
        Some(id)
    }

    fn has_peers(&self) -> bool {
        !self.discovery.peers.is_empty()
    }

    fn instance(&self) -> u64 {
        self.discovery.instance()
    }

    fn keep_max(&self) -> u64 {
        self.cfg.keep_max_bytes
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
            || (self.discovery.peers.get(instance))
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

    fn db_signature(&self, repo: &str, file: &str) -> Option<Vec<u8>> {
        self.index.signature(repo, file)
    }

    fn is_own_front(&self, addr: SocketAddr) -> bool {
        (self.front_addrs.iter()).any(|f| crate::guard::is_own_front(addr, *f))
    }

    fn peer_served(&mut self, instance: u64) {
        self.discovery.peers.credit_served(instance);
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
        r.map(|r| crate::upstream::upstreams(r, arch, self.cfg.front_port()))
            .unwrap_or_default()
    }

    fn stage(&self) -> StageHandle {
        self.stager.handle()
    }

    fn resolve_now(&mut self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        self.resolver.cached(host, port, self.now)
    }

    fn resolve(&mut self, id: u64, host: &str, port: u16) -> bool {
        self.resolver.resolve(id, host.to_string(), port)
    }
}
