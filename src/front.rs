//! The loopback front: what each request from pacman gets. A package the local sync db lists
//! comes from a verified peer copy (transfer.rs), resumed from the next peer or the mirror
//! when a source fails, or upstream; its `.sig` from the db's `%PGPSIG%`, else from the peer
//! that had the package if that peer says so now (checked, bounded: sig.rs), else upstream;
//! everything else upstream only. What a misbehaving peer earns is policy.rs's decision. Upstream `http://` is
//! proxied (streamed, Range and If-Modified-Since passed through, redirects followed, every
//! resolved address tried); `https://` gets a 307 so pacman's own TLS does the work.
//!
//! `Front` owns one `FrontRequest` per front connection that waits for something, the
//! shared copies from peers and their lookups, what each fetch is for, and the `.sig` hints.
//! It reaches sockets, timers, discovery and the index only through `Env`, so the whole
//! state machine runs in unit tests with time passed in (see the tests at the end).

use crate::eventloop::TimerId;
use crate::fetch;
use crate::http::{self, Method, RangeOutcome, Request};
use crate::metrics::{Metrics, fixed, human_bytes};
use crate::names::{self, FileKind};
use crate::peers::Candidate;
use crate::policy::{self, Action, Conduct, Pace};
use crate::protocol::InFlight;
use crate::sig::SigFetch;
use crate::stager::{Growth, Report, StageHandle};
use crate::status::json_str;
use crate::syncdb::PkgInfo;
use crate::transfer::{self, Phase, Transfer, Verdict};
use crate::url::{self, HttpUrl, Scheme};
use mio::Token;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Concurrent front connections. pacman holds up to ParallelDownloads (default 5) per host;
/// a few local tools on top are still far below this.
pub const MAX_CONNECTIONS: usize = 256;
/// pacman keeps connections alive between the files of one transaction, then drops them.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed for one upstream request (pacman itself allows 10; mirrors use 1-2).
const MAX_UPSTREAM_REDIRECTS: u32 = 5;
/// Recent "this peer had that package" records, for fetching the `.sig` from the same peer.
const MAX_SIG_HINTS: usize = 256;
/// A hint older than this is not trusted (the peer may have cleaned its cache).
const SIG_HINT_TTL: Duration = Duration::from_secs(600);
/// Longest a package request waits for a sync db being parsed before going upstream.
const DB_WAIT_MAX: Duration = Duration::from_secs(3);
/// Longest a request waits for a mirror's name to resolve: the next source then gets its
/// turn, well inside pacman's 10 s without progress.
pub const DNS_WAIT_MAX: Duration = Duration::from_secs(4);
/// A verified copy stays this long after it was handed out, for requests for the same file
/// that arrive just after (a second pacman, a retry): no second lookup or copy.
pub const READY_LINGER: Duration = Duration::from_secs(10);
/// How often a copy from a peer is measured (policy::pace over the last PACE_MEASURE).
const PACE_CHECK: Duration = Duration::from_millis(500);
/// The time a copy has before pacman runs out of self-redirects: its first wait plus every
/// redirect round. A copy that cannot finish within it hands its remainder to the mirror.
pub(crate) const COPY_BUDGET: Duration = Duration::from_secs(
    transfer::REDIRECT_AFTER.as_secs() * (transfer::MAX_REDIRECT_ROUNDS as u64 + 1),
);
/// A copy in flight that has less than 1/JOIN_EARLY of the file is joined whatever its rate.
const JOIN_EARLY: u64 = 8;
/// A joined copy's rate is judged only after this long (before, a shared link and the other
/// files of the source's transaction make it look slower than it is).
const JOIN_GRACE: Duration = Duration::from_secs(10);
/// A copy in flight elsewhere is joined only if, at its announced rate, the rest arrives
/// within this share of COPY_BUDGET (the joiner's pacman is sent round meanwhile).
pub(crate) const JOIN_SHARE: f64 = 0.75;
/// The "instance" recorded for bytes a copy took from the mirror (no peer is ever 0: ids are
/// random, and a contributor 0 is never judged).
const MIRROR: u64 = 0;

/// Where a proxied answer can come from, tried in order. Peers never: a proxy follows
/// redirects, and a peer's redirect could point anywhere (the host's own loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An upstream mirror URL (http:// proxied, https:// redirected).
    Url(HttpUrl),
}

/// A front request being answered from a list of sources.
#[derive(Debug)]
pub struct Proxy {
    method: Method,
    sources: VecDeque<Source>,
    range: Option<String>,
    if_modified_since: Option<String>,
    redirects: u32,
    /// The head went to the client: any failure now must cut the connection.
    answered: bool,
    /// Status of the last source that answered with an error, passed on if none succeeds.
    last_status: Option<u16>,
    label: String,
    /// The URL now being fetched (for relative redirects, the request and the log).
    current: Option<HttpUrl>,
    /// Addresses of `current` not tried yet: each is tried before the next source.
    addrs: VecDeque<SocketAddr>,
    /// The copy (file, serial) this answer also feeds, for the LAN (docs/DESIGN.md, "One
    /// download per LAN"): kept while the body is the whole file.
    tee: Option<(String, u64)>,
    /// For the log line and the counters: the repo, when the request began, the status
    /// relayed and the body bytes so far.
    repo: String,
    started: Instant,
    status: u16,
    bytes: u64,
}

impl Proxy {
    /// The URL being fetched, for messages.
    fn at(&self) -> String {
        self.current
            .as_ref()
            .map_or_else(String::new, HttpUrl::to_string)
    }
}

/// What a front request waits for. Each wait with a deadline of its own names it; the
/// others are bounded elsewhere (a fetch by its connect/head/stall bounds, a lookup by its
/// budget).
#[derive(Debug)]
pub enum Wait {
    /// A sync db being parsed: the request is dispatched again when it is in.
    Db { until: Instant },
    /// `/.flocon/lookup/`: answered with what the lookup decided.
    Lookup { id: u32, started: Instant },
    /// The shared copy of `file` from a peer; at `until` the client is sent round again.
    Copy { file: String, until: Instant },
    /// A fetch streaming a source's answer to the client.
    Upstream { fetch: Token, proxy: Box<Proxy> },
    /// "Who has this `.sig`?": the peer that served the package must say so again.
    SigLookup { id: u32, hint: u64 },
    /// The `.sig` from that peer, whole within `SigFetch`'s bounds, checked before it goes out.
    Sig {
        fetch: Token,
        instance: u64,
        sig: SigFetch,
    },
    /// The name of the proxy's next source being resolved.
    Dns {
        id: u64,
        proxy: Box<Proxy>,
        host: String,
        port: u16,
        until: Instant,
    },
}

impl Wait {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Wait::Db { until } | Wait::Copy { until, .. } | Wait::Dns { until, .. } => Some(*until),
            Wait::Sig { sig, .. } => Some(sig.deadline()),
            Wait::Lookup { .. } | Wait::Upstream { .. } | Wait::SigLookup { .. } => None,
        }
    }
}

/// One front connection's request while it waits.
#[derive(Debug)]
pub struct FrontRequest {
    /// The connection's request number (a keep-alive connection asks again and again).
    pub number: u64,
    pub request: Request,
    pub wait: Wait,
    /// The timer of the wait's deadline, cancelled with the record.
    timer: Option<TimerId>,
    /// It waited for a db parse once already and will not again.
    db_waited: bool,
}

/// A request between two waits (taken out of its record, or just arrived).
struct Asked {
    number: u64,
    request: Request,
    db_waited: bool,
}

/// The timers the front sets through `Env::timer`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    /// The deadline of a request's wait (connection, request number).
    Request(Token, u64),
    /// A handed-out copy (file, serial) is dropped.
    Linger(String, u64),
    /// A copy (file, serial) from a peer is measured (policy::pace).
    Pace(String, u64),
}

/// What a fetch is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    /// Copying a package from a peer into the staging dir (shared by its waiters).
    PeerCopy {
        file: String,
        instance: u64,
        resume: u64,
    },
    /// The rest of a copy from the mirror, with Range from the bytes already staged.
    MirrorCopy { file: String },
    /// Streaming a source's answer to one front connection.
    Proxy(Token),
    /// A `.sig` from a peer for one front connection.
    Sig(Token),
}

/// Who waits for a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LookupFor {
    Client(Token),
    Copy(String),
    Sig(Token),
}

/// A copy from peers, shared by every request for its file.
struct Copy {
    transfer: Transfer,
    serial: u64,
    /// Peers this copy was started from, in order (a failed mixed copy starts again from
    /// one of them).
    tried: Vec<(Candidate, SocketAddr)>,
    /// It started again from one source once already.
    restarted: bool,
    /// Where the current source's rate is measured from: (when, bytes staged then).
    pace_mark: (Instant, u64),
    pace_timer: Option<TimerId>,
    /// Fed by a request's own upstream answer (a tee), not by a fetch of its own.
    teed: bool,
    /// A tee was considered once: a copy whose tee failed goes upstream as before.
    tee_tried: bool,
    /// Kept from an upstream answer (counts against `keep-max-mb` until it is gone).
    kept: bool,
    /// The current source is a peer's copy in flight (joined): it comes at the pace of that
    /// peer's own source.
    joined: bool,
    /// A lower instance asked for the file while this copy was looking: it fetches (it
    /// ignores our LOOKING), so this copy joins it if the lookup finds nothing better.
    defer_to: Option<u64>,
}

/// A `.sig` is asked first from the peer that served its package.
struct SigHint {
    instance: u64,
    at: Instant,
}

/// An answer to a front connection, given through `Env::reply`.
pub enum Reply<'a> {
    Error(u16),
    Bytes(u16, &'a [(&'a str, &'a str)], &'a [u8]),
    /// `file[start..end]` after the headers (which carry its Content-Length); the file is
    /// shared (a verified copy), read at explicit offsets.
    File(u16, &'a [(&'a str, &'a str)], Arc<File>, u64, u64),
    /// The head of a streamed answer with its promised body length.
    Stream(u16, &'a [(&'a str, &'a str)], Option<u64>),
    Body(&'a [u8]),
    /// The stream ended: complete, or cut so the client sees the failure.
    End(bool),
}

/// Counters for the status page.
#[derive(Default, Debug, Clone)]
pub struct FrontStats {
    pub lan_hits: u64,
    pub lan_bytes: u64,
    pub upstream_bytes: u64,
    pub rejected_copies: u64,
}

/// A copy in flight, for the status page.
pub struct CopyStatus {
    pub file: String,
    pub source: Option<SocketAddr>,
    pub received: u64,
    pub size: u64,
    pub rate: f64,
    pub phase: Phase,
}

/// What the front needs from the loop around it. The daemon implements it over its sockets,
/// timers, discovery and index; the tests implement it with plain records.
pub trait Env {
    fn now(&self) -> Instant;
    /// Gives a front connection its answer (and schedules it); false when it is gone.
    fn reply(&mut self, client: Token, reply: Reply<'_>) -> bool;
    /// Whether a front connection exists and waits for its answer (invariant checks).
    fn client_waits(&self, client: Token) -> bool;
    /// Connects and schedules a fetch; None when that cannot start (logged).
    fn start_fetch(&mut self, req: fetch::Request) -> Option<Token>;
    /// Closes a fetch (nothing happens if it is gone already).
    fn stop_fetch(&mut self, fetch: Token);
    fn fetch_exists(&self, fetch: Token) -> bool;
    fn timer(&mut self, at: Instant, d: Deadline) -> Option<TimerId>;
    fn cancel(&mut self, id: TimerId);
    /// Starts "who has `name`?" with the configured budget; the decision comes back
    /// through `Front::on_decided`. None when too many are in flight.
    fn start_lookup(
        &mut self,
        name: &str,
        expected: Option<(u64, Option<[u8; 32]>)>,
    ) -> Option<u32>;
    fn has_peers(&self) -> bool;
    /// The file server of a live peer.
    fn peer_addr(&self, instance: u64) -> Option<SocketAddr>;
    fn peer_name(&self, instance: u64) -> String;
    /// Banned (proven wrong) or benched (struck): not asked.
    fn is_banned(&self, instance: u64) -> bool;
    fn ban(&mut self, instance: u64, why: &str);
    /// A strike (policy.rs): the peer is benched for a while.
    fn strike(&mut self, instance: u64, why: &str);
    /// The `.sig` the local sync db carries for a package (`%PGPSIG%`), if any.
    fn db_signature(&self, repo: &str, file: &str) -> Option<Vec<u8>>;
    /// Whether an upstream address is this daemon's own front (asking it would loop).
    fn is_own_front(&self, addr: SocketAddr) -> bool;
    fn indexed(&self, repo: &str, file: &str) -> Option<PkgInfo>;
    /// Whether a sync db changed and is being parsed (stats the db files first).
    fn dbs_loading(&mut self) -> bool;
    fn upstreams(&self, repo: &str, arch: &str) -> Vec<String>;
    /// Where peer copies are staged and hashed (the stager thread).
    fn stage(&self) -> StageHandle;
    /// Addresses known without waiting (a literal, a fresh cache entry).
    fn resolve_now(&mut self, host: &str, port: u16) -> Option<Vec<SocketAddr>>;
    /// Starts resolving; the answer comes through `Front::on_resolved`. False when refused.
    fn resolve(&mut self, id: u64, host: &str, port: u16) -> bool;
    /// A peer served a copy that matched the sync db (it ranks first from now on).
    fn peer_served(&mut self, _instance: u64) {}
    /// This daemon's instance (the race tie-break: the lower one fetches).
    fn instance(&self) -> u64;
    /// Bytes of upstream answers kept for the LAN at once (`keep-max-mb`).
    fn keep_max(&self) -> u64;
}

#[derive(Default)]
pub struct Front {
    requests: HashMap<Token, FrontRequest>,
    copies: HashMap<String, Copy>,
    lookups: HashMap<u32, LookupFor>,
    fetches: HashMap<Token, Purpose>,
    sig_hints: HashMap<String, SigHint>,
    serial: u64,
    pub stats: FrontStats,
    /// `/metrics` and the lifetime counters (the daemon loads and saves them).
    pub metrics: Metrics,
    /// `FLOCON_NO_JOIN=1` (benchmarks): no copy kept from upstream, none offered in flight,
    /// as before "One download per LAN".
    no_join: bool,
}

impl Front {
    pub fn new() -> Self {
        Front {
            no_join: std::env::var_os("FLOCON_NO_JOIN").is_some_and(|v| v == "1"),
            ..Self::default()
        }
    }

    /// Front requests waiting for something.
    pub fn waiting(&self) -> usize {
        self.requests.len()
    }

    /// The client a proxy fetch streams to (for its backpressure).
    pub fn fetch_client(&self, fetch: Token) -> Option<Token> {
        match self.fetches.get(&fetch) {
            Some(Purpose::Proxy(c)) => Some(*c),
            _ => None,
        }
    }

    /// The fetch streaming to a client, if any (room freed there lets it read again).
    pub fn client_fetch(&self, client: Token) -> Option<Token> {
        match self.requests.get(&client).map(|r| &r.wait) {
            Some(Wait::Upstream { fetch, .. }) => Some(*fetch),
            _ => None,
        }
    }

    pub fn copies(&self, now: Instant) -> Vec<CopyStatus> {
        let mut v: Vec<CopyStatus> = self
            .copies
            .values()
            .map(|c| {
                let t = &c.transfer;
                CopyStatus {
                    file: t.file.clone(),
                    source: t.source.map(|s| s.1),
                    received: t.received,
                    size: t.expected.size,
                    rate: t.rate(now),
                    phase: t.phase,
                }
            })
            .collect();
        v.sort_by(|a, b| a.file.cmp(&b.file));
        v
    }

    // ------------------------------------------------------------------ records

    /// Records what a request waits for (and sets the wait's deadline).
    fn wait(&mut self, env: &mut impl Env, t: Token, r: Asked, wait: Wait) {
        let timer = wait
            .deadline()
            .and_then(|at| env.timer(at, Deadline::Request(t, r.number)));
        let record = FrontRequest {
            number: r.number,
            request: r.request,
            wait,
            timer,
            db_waited: r.db_waited,
        };
        if let Some(old) = self.requests.insert(t, record) {
            debug_assert!(false, "{t:?} had a record already");
            if let Some(id) = old.timer {
                env.cancel(id);
            }
        }
    }

    /// Takes a request's record out (its deadline timer cancelled).
    fn take(&mut self, env: &mut impl Env, t: Token) -> Option<(Asked, Wait)> {
        let r = self.requests.remove(&t)?;
        if let Some(id) = r.timer {
            env.cancel(id);
        }
        let asked = Asked {
            number: r.number,
            request: r.request,
            db_waited: r.db_waited,
        };
        Some((asked, r.wait))
    }

    /// A front connection closed: stop whatever worked for it alone. One removal; a shared
    /// copy goes on (another request, or pacman's retry, will want it).
    pub fn forget(&mut self, env: &mut impl Env, t: Token) {
        let Some((_, wait)) = self.take(env, t) else {
            return;
        };
        match wait {
            Wait::Upstream { fetch, proxy } => {
                self.fetches.remove(&fetch);
                env.stop_fetch(fetch);
                self.tee_check(env, &proxy.tee);
            }
            Wait::Dns { proxy, .. } => self.tee_check(env, &proxy.tee),
            Wait::Lookup { id, .. } | Wait::SigLookup { id, .. } => {
                self.lookups.remove(&id);
            }
            Wait::Sig { fetch, .. } => {
                self.fetches.remove(&fetch);
                env.stop_fetch(fetch);
            }
            Wait::Db { .. } | Wait::Copy { .. } => {}
        }
    }

    // ------------------------------------------------------------------ requests

    /// A request arrived on front connection `t` (its `number`th).
    pub fn on_request(&mut self, env: &mut impl Env, t: Token, number: u64, req: Request) {
        let r = Asked {
            number,
            request: req,
            db_waited: false,
        };
        self.dispatch(env, t, r);
    }

    fn dispatch(&mut self, env: &mut impl Env, t: Token, r: Asked) {
        let path = r.request.target.split('?').next().unwrap_or("").to_string();
        if let Some(name) = path.strip_prefix("/.flocon/lookup/") {
            return self.debug_lookup(env, t, r, name);
        }
        let (repo, arch, file) = match http::front_path(&path) {
            Ok(x) => x,
            Err(e) => return answer(env, t, Reply::Error(e.status())),
        };
        let kind = names::classify(&file);
        debug!(
            "{} /{repo}/os/{arch}/{file} ({kind:?})",
            r.request.method.as_str()
        );
        match kind {
            FileKind::Package => {
                if let Some(info) = env.indexed(&repo, &file) {
                    return self.serve_from_lan(env, t, r, &repo, &arch, &file, info);
                }
                // pacman may have just replaced the db (`pacman -Syu` asks for packages the
                // moment the new db is in place): if a db changed, wait for its parse
                if !r.db_waited && env.dbs_loading() {
                    debug!("{file}: not indexed yet; waiting for the sync db being read");
                    let until = env.now() + DB_WAIT_MAX;
                    return self.wait(env, t, r, Wait::Db { until });
                }
                self.serve_upstream(env, t, r, &repo, &arch, &file, Vec::new());
            }
            FileKind::PackageSig => {
                let pkg = file.trim_end_matches(".sig");
                // the db's own signature: no network, right by construction
                if let Some(sig) = env.db_signature(&repo, pkg) {
                    return hand_bytes(env, t, &r.request, &sig);
                }
                // the peer that just served the package, if it says now that it has the .sig
                if let Some(h) = self.sig_hints.get(pkg)
                    && r.request.method == Method::Get
                    && env.now().duration_since(h.at) < SIG_HINT_TTL
                    && env.peer_addr(h.instance).is_some()
                    && !env.is_banned(h.instance)
                {
                    let hint = h.instance;
                    if let Some(id) = env.start_lookup(&file, None) {
                        self.lookups.insert(id, LookupFor::Sig(t));
                        return self.wait(env, t, r, Wait::SigLookup { id, hint });
                    }
                }
                self.serve_upstream(env, t, r, &repo, &arch, &file, Vec::new());
            }
            // databases never come from peers: a peer's db can be stale (rollback)
            FileKind::Database | FileKind::DatabaseSig => {
                self.serve_upstream(env, t, r, &repo, &arch, &file, Vec::new())
            }
            FileKind::Other => answer(env, t, Reply::Error(404)),
        }
    }

    /// `/.flocon/lookup/<name>[?size=N]`: one lookup, answered with what it decided. For
    /// tests and the benchmark; loopback only like everything on the front.
    fn debug_lookup(&mut self, env: &mut impl Env, t: Token, r: Asked, name: &str) {
        if !names::is_file_name(name.as_bytes()) {
            return answer(env, t, Reply::Error(400));
        }
        let size = r
            .request
            .target
            .split_once("?size=")
            .and_then(|(_, s)| s.parse::<u64>().ok());
        match env.start_lookup(name, size.map(|s| (s, None))) {
            Some(id) => {
                self.lookups.insert(id, LookupFor::Client(t));
                let started = env.now();
                self.wait(env, t, r, Wait::Lookup { id, started });
            }
            None => answer(env, t, Reply::Error(503)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_from_lan(
        &mut self,
        env: &mut impl Env,
        t: Token,
        r: Asked,
        repo: &str,
        arch: &str,
        file: &str,
        info: PkgInfo,
    ) {
        if r.request.method == Method::Head {
            // a HEAD needs no bytes: answer from the db's size without asking anyone
            let len = info.size.to_string();
            let h = [("Content-Length", len.as_str()), ("Accept-Ranges", "bytes")];
            env.reply(t, Reply::Stream(200, &h, Some(0)));
            env.reply(t, Reply::End(true));
            return;
        }
        let now = env.now();
        // A copy kept from upstream is for the LAN: the local pacman has the file in its
        // cache already, so a request for it here means pacman threw it away and asks
        // afresh — a lookup as for any file (the peers' copies, their .sig hints).
        if self
            .copies
            .get(file)
            .is_some_and(|c| c.kept && c.transfer.phase == Phase::Ready)
        {
            self.copies.remove(file);
        }
        if let Some(c) = self.copies.get(file) {
            if c.transfer.phase == Phase::Ready {
                let len = c.transfer.expected.size;
                return hand_one(env, t, &r.request, c.transfer.open_copy(), len);
            }
            // another request for a file on its way: share the copy
            let until = now + transfer::REDIRECT_AFTER;
            let file = file.to_string();
            return self.wait(env, t, r, Wait::Copy { file, until });
        }
        let staged: u64 = self
            .copies
            .values()
            .map(|c| c.transfer.expected.size)
            .fold(0, u64::saturating_add);
        // without a SHA-256 in the db a copy could only be checked by size: not enough
        if info.sha256.is_none()
            || staged.saturating_add(info.size) > transfer::MAX_STAGED_BYTES
            || !env.has_peers()
        {
            self.metrics.lan_miss(repo);
            return self.serve_upstream(env, t, r, repo, arch, file, Vec::new());
        }
        let Some(id) = env.start_lookup(file, Some((info.size, info.sha256))) else {
            self.metrics.lan_miss(repo);
            return self.serve_upstream(env, t, r, repo, arch, file, Vec::new());
        };
        self.serial += 1;
        let mut tr = Transfer::new(file, repo, arch, info, &env.stage(), self.serial, now);
        tr.lookup = Some(id);
        self.lookups.insert(id, LookupFor::Copy(file.to_string()));
        let copy = Copy {
            transfer: tr,
            serial: self.serial,
            tried: Vec::new(),
            restarted: false,
            pace_mark: (now, 0),
            pace_timer: None,
            teed: false,
            tee_tried: false,
            kept: false,
            joined: false,
            defer_to: None,
        };
        self.copies.insert(file.to_string(), copy);
        let until = now + transfer::REDIRECT_AFTER;
        let file = file.to_string();
        self.wait(env, t, r, Wait::Copy { file, until });
    }

    /// A lookup was decided (by its answers or its deadline).
    pub fn on_decided(
        &mut self,
        env: &mut impl Env,
        id: u32,
        candidates: Vec<Candidate>,
        asked: usize,
        answered: usize,
    ) {
        match self.lookups.remove(&id) {
            Some(LookupFor::Client(t)) => {
                let Some((_, Wait::Lookup { started, .. })) = self.take(env, t) else {
                    return;
                };
                let elapsed = env.now().duration_since(started);
                self.metrics.lookup(elapsed);
                let micros = elapsed.as_micros();
                let have: Vec<String> = candidates
                    .iter()
                    .map(|c| {
                        format!(
                            "{{\"peer\":{},\"size\":{},\"uploads\":{}}}",
                            json_str(&env.peer_name(c.instance)),
                            c.size,
                            c.uploads
                        )
                    })
                    .collect();
                let body = format!(
                    "{{\"asked\":{asked},\"answered\":{answered},\"micros\":{micros},\"have\":[{}]}}\n",
                    have.join(",")
                );
                let h = [("Content-Type", "application/json")];
                env.reply(t, Reply::Bytes(200, &h, body.as_bytes()));
            }
            Some(LookupFor::Copy(file)) => {
                let Some(c) = self.copies.get_mut(&file) else {
                    return;
                };
                let tr = &mut c.transfer;
                tr.lookup = None;
                self.metrics.lookup(env.now().duration_since(tr.started));
                for cand in candidates {
                    if let Some(f) = cand.arriving
                        && !Self::may_join(env, cand.instance, tr.expected.size, f)
                    {
                        debug!(
                            "{file}: not joining the copy at {} ({} of {} bytes at {} B/s{})",
                            env.peer_name(cand.instance),
                            f.received,
                            cand.size,
                            f.rate,
                            if f.looking { ", looking" } else { "" }
                        );
                        continue;
                    }
                    if let Some(addr) = env.peer_addr(cand.instance) {
                        tr.candidates.push_back((cand, addr));
                    }
                }
                // a lower instance asked while we looked: it fetches, we join it
                if tr.candidates.is_empty()
                    && let Some(q) = c.defer_to
                    && let Some(addr) = env.peer_addr(q)
                {
                    debug!(
                        "{file}: {} asked for it too and fetches it; joining",
                        env.peer_name(q)
                    );
                    let cand = Candidate {
                        instance: q,
                        size: tr.expected.size,
                        sha256: tr.expected.sha256,
                        uploads: 0,
                        arriving: Some(InFlight {
                            received: 0,
                            rate: 0,
                            looking: true,
                        }),
                    };
                    tr.candidates.push_back((cand, addr));
                }
                debug!(
                    "lookup for {file}: {asked} asked, {answered} answered, {} have it",
                    tr.candidates.len()
                );
                self.next_peer(env, &file);
            }
            Some(LookupFor::Sig(t)) => {
                let Some((r, Wait::SigLookup { hint, .. })) = self.take(env, t) else {
                    return;
                };
                let said_so = candidates.iter().any(|c| c.instance == hint);
                match env.peer_addr(hint) {
                    Some(addr) if said_so && !env.is_banned(hint) => {
                        self.sig_from_peer(env, t, r, hint, addr)
                    }
                    _ => {
                        debug!("the .sig's peer did not answer that it has it: upstream");
                        self.upstream_again(env, t, r)
                    }
                }
            }
            None => {}
        }
    }

    /// Fetches a `.sig` from the peer that served its package, bounded by `SigFetch`.
    fn sig_from_peer(
        &mut self,
        env: &mut impl Env,
        t: Token,
        r: Asked,
        instance: u64,
        addr: SocketAddr,
    ) {
        let Ok((_, _, file)) = http::front_path(r.request.target.split('?').next().unwrap_or(""))
        else {
            return answer(env, t, Reply::Error(400));
        };
        let Ok(url) = HttpUrl::peer(addr).join_file(&file) else {
            return answer(env, t, Reply::Error(400));
        };
        let req = fetch::Request {
            method: Method::Get,
            addr,
            url,
            headers: Vec::new(),
        };
        match env.start_fetch(req) {
            Some(fetch) => {
                debug!("{file}: from peer {addr}");
                self.fetches.insert(fetch, Purpose::Sig(t));
                let sig = SigFetch::new(env.now());
                self.wait(
                    env,
                    t,
                    r,
                    Wait::Sig {
                        fetch,
                        instance,
                        sig,
                    },
                );
            }
            None => self.upstream_again(env, t, r),
        }
    }

    /// A request whose peer source fell through goes to the upstreams.
    fn upstream_again(&mut self, env: &mut impl Env, t: Token, r: Asked) {
        let path = r.request.target.split('?').next().unwrap_or("").to_string();
        match http::front_path(&path) {
            Ok((repo, arch, file)) => {
                self.serve_upstream(env, t, r, &repo, &arch, &file, Vec::new())
            }
            Err(e) => answer(env, t, Reply::Error(e.status())),
        }
    }

    /// What a peer did, judged once (policy.rs), and done.
    fn judge(&mut self, env: &mut impl Env, instance: u64, c: Conduct, why: &str) {
        if instance == MIRROR {
            return;
        }
        match policy::judge(c) {
            Action::Ban => {
                env.ban(instance, why);
                self.metrics.banned();
            }
            Action::Strike => env.strike(instance, why),
            Action::NextSource => debug!(
                "peer {}: {why} ({c:?}); next source, nothing held against it",
                env.peer_name(instance)
            ),
        }
    }

    fn on_sig_event(&mut self, env: &mut impl Env, tok: Token, client: Token, ev: fetch::Event) {
        let Some((r, wait)) = self.take(env, client) else {
            return self.end_fetch(env, tok);
        };
        let Wait::Sig {
            fetch,
            instance,
            mut sig,
        } = wait
        else {
            self.wait(env, client, r, wait);
            return self.end_fetch(env, tok);
        };
        let now = env.now();
        let step = match ev {
            fetch::Event::Head(h) => sig.on_head(h.status, h.content_length).map(|()| None),
            fetch::Event::Body(data) => sig.on_body(&data, now).map(|()| None),
            fetch::Event::Done => sig.finish(now).map(Some),
            fetch::Event::Failed(why) => Err(policy::conduct_of_failure(&why)),
        };
        match step {
            Ok(None) => self.wait(
                env,
                client,
                r,
                Wait::Sig {
                    fetch,
                    instance,
                    sig,
                },
            ),
            Ok(Some(bytes)) => {
                self.end_fetch(env, tok);
                hand_bytes(env, client, &r.request, &bytes);
            }
            Err(c) => {
                self.end_fetch(env, tok);
                self.judge(env, instance, c, &format!("its .sig: {c}"));
                self.upstream_again(env, client, r);
            }
        }
    }

    /// Starts the copy from the next candidate peer, or gives up on the LAN.
    fn next_peer(&mut self, env: &mut impl Env, file: &str) {
        loop {
            let Some(c) = self.copies.get_mut(file) else {
                return;
            };
            let tr = &mut c.transfer;
            let next = if tr.attempts < transfer::MAX_PEER_ATTEMPTS {
                tr.candidates.pop_front()
            } else {
                None
            };
            let Some((cand, addr)) = next else {
                if tr.received > 0 {
                    // what is staged stays: the mirror sends only the rest
                    return self.rest_from_mirror(env, file);
                }
                debug!("{file}: no peer can deliver; upstream");
                return self.copy_failed(env, file);
            };
            if env.is_banned(cand.instance) {
                continue;
            }
            let now = env.now();
            let resume = tr.received;
            tr.begin_source(cand.instance, addr, now);
            c.tried.push((cand.clone(), addr));
            c.joined = cand.arriving.is_some();
            c.pace_mark = (now, resume);
            if let Some(id) = c.pace_timer.take() {
                env.cancel(id);
            }
            let serial = c.serial;
            let mut headers = Vec::new();
            if resume > 0 {
                headers.push(("Range".to_string(), format!("bytes={resume}-")));
            }
            let Ok(url) = HttpUrl::peer(addr).join_file(file) else {
                continue;
            };
            let req = fetch::Request {
                method: Method::Get,
                addr,
                url,
                headers,
            };
            if let Some(tok) = env.start_fetch(req) {
                // measured from now on: a stall or a drip costs one PACE_MEASURE (3 s), not 8 s
                let pace = env.timer(now + PACE_CHECK, Deadline::Pace(file.to_string(), serial));
                if let Some(c) = self.copies.get_mut(file) {
                    c.pace_timer = pace;
                }
                info!(
                    "fetching {file} from peer {addr}{}{}",
                    if resume > 0 {
                        format!(" (from byte {resume})")
                    } else {
                        String::new()
                    },
                    if cand.arriving.is_some() {
                        " (joining its copy in flight)"
                    } else {
                        ""
                    }
                );
                let purpose = Purpose::PeerCopy {
                    file: file.to_string(),
                    instance: cand.instance,
                    resume,
                };
                self.fetches.insert(tok, purpose);
                return;
            }
        }
    }

    /// Requests waiting for the copy of `file`.
    fn copy_waiters(&self, file: &str) -> Vec<Token> {
        let mut v: Vec<Token> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(&r.wait, Wait::Copy { file: f, .. } if f == file))
            .map(|(t, _)| *t)
            .collect();
        v.sort_unstable();
        v
    }

    /// Ends a copy and its fetch (its waiters, if any, are the caller's business).
    fn stop_copy(&mut self, env: &mut impl Env, file: &str) {
        let Some(c) = self.copies.remove(file) else {
            return;
        };
        if let Some(id) = c.pace_timer {
            env.cancel(id);
        }
        let toks: Vec<Token> = self
            .fetches
            .iter()
            .filter(|(_, p)| matches!(p, Purpose::PeerCopy { file: f, .. } | Purpose::MirrorCopy { file: f } if f == file))
            .map(|(t, _)| *t)
            .collect();
        for tok in toks {
            self.end_fetch(env, tok);
        }
        info!("{file}: copy stopped (nobody waits for it)");
    }

    /// The LAN cannot deliver this file: the copy ends and every waiter goes upstream —
    /// except that, the first time, one waiter's upstream answer feeds the copy (a tee) so
    /// that the LAN can join it, and the others keep waiting for it.
    fn copy_failed(&mut self, env: &mut impl Env, file: &str) {
        // one miss per file: counted when the tee starts, else when the copy ends here (a
        // second call for a copy whose tee was tried is the tee failing: already counted)
        let tried = (self.copies.get(file)).map(|c| (c.tee_tried, c.transfer.repo.clone()));
        if self.start_tee(env, file) {
            if let Some((_, repo)) = tried {
                self.metrics.lan_miss(&repo);
            }
            return;
        }
        let Some(c) = self.copies.remove(file) else {
            return;
        };
        let (repo, arch) = (c.transfer.repo.clone(), c.transfer.arch.clone());
        drop(c);
        if !tried.is_some_and(|(t, _)| t) {
            self.metrics.lan_miss(&repo);
        }
        for t in self.copy_waiters(file) {
            if let Some((r, _)) = self.take(env, t) {
                self.serve_upstream(env, t, r, &repo, &arch, file, Vec::new());
            }
        }
    }

    /// One waiter's upstream answer (http://, the whole file) feeds the copy from now on.
    /// False when that cannot be (tried before, bytes staged, an https mirror first, no
    /// waiter asking for the whole file).
    fn start_tee(&mut self, env: &mut impl Env, file: &str) -> bool {
        let waiters = self.copy_waiters(file);
        let Some(c) = self.copies.get_mut(file) else {
            return false;
        };
        if self.no_join || c.tee_tried || c.transfer.received > 0 {
            return false;
        }
        c.tee_tried = true;
        let (repo, arch, serial) = (c.transfer.repo.clone(), c.transfer.arch.clone(), c.serial);
        let size = c.transfer.expected.size;
        let kept: u64 = (self.copies.values())
            .filter(|c| c.kept)
            .map(|c| c.transfer.expected.size)
            .fold(0, u64::saturating_add);
        if kept.saturating_add(size) > env.keep_max() {
            debug!("{file}: {kept} bytes kept for the LAN already; this one is not kept");
            return false;
        }
        let first = upstream_urls(env, &repo, &arch, file).into_iter().next();
        if !first.is_some_and(|u| u.scheme() == Scheme::Http) {
            return false;
        }
        let whole = |r: &FrontRequest| {
            r.request.method == Method::Get
                && r.request.range.is_none()
                && r.request.if_modified_since.is_none()
        };
        let Some(t) = waiters
            .into_iter()
            .find(|t| self.requests.get(t).is_some_and(whole))
        else {
            return false;
        };
        let Some((r, _)) = self.take(env, t) else {
            return false;
        };
        let now = env.now();
        if let Some(c) = self.copies.get_mut(file) {
            let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
            c.transfer.begin_source(MIRROR, nowhere, now);
            c.transfer.candidates.clear();
            c.teed = true;
            c.kept = true;
        }
        debug!("{file}: nobody on the LAN has it; fetching it upstream for the LAN too");
        let tee = Some((file.to_string(), serial));
        self.serve_upstream_tee(env, t, r, &repo, &arch, file, Vec::new(), tee.clone());
        self.tee_check(env, &tee);
        true
    }

    /// The copy a proxy's tee feeds, if it is still that copy.
    fn tee_copy(&mut self, tee: &Option<(String, u64)>) -> Option<&mut Copy> {
        let (file, serial) = tee.as_ref()?;
        self.copies
            .get_mut(file)
            .filter(|c| c.serial == *serial && c.teed)
    }

    /// After a proxy with a tee ended or moved on: if no request's answer feeds the copy
    /// any more, the copy fails (peers sent it are cut; its waiters go upstream).
    fn tee_check(&mut self, env: &mut impl Env, tee: &Option<(String, u64)>) {
        let Some((file, serial)) = tee else { return };
        let alive = self.requests.values().any(|r| match &r.wait {
            Wait::Upstream { proxy, .. } | Wait::Dns { proxy, .. } => proxy.tee == *tee,
            _ => false,
        });
        if alive {
            return;
        }
        let Some(c) = self
            .copies
            .get_mut(file)
            .filter(|c| c.serial == *serial && c.teed)
        else {
            return;
        };
        c.teed = false;
        info!(
            "{file}: the upstream answer it was kept from ended after {} bytes; not kept",
            c.transfer.received
        );
        c.transfer.reset_staging();
        self.copy_failed(env, file);
    }

    /// What a lookup is told of `name` when it is not in the cache: a verified copy held
    /// here (size, SHA-256), or one on its way (how far, how fast, or still looking).
    /// `lower`: the asker's instance is lower than ours — if our own lookup is in flight too,
    /// the asker will fetch and we join it (the tie-break, seen from the higher side).
    pub fn in_flight(
        &mut self,
        name: &str,
        now: Instant,
        lower: Option<u64>,
    ) -> Option<(u64, Option<[u8; 32]>, Option<InFlight>)> {
        if self.no_join {
            return None;
        }
        let c = self.copies.get_mut(name)?;
        if let Some(asker) = lower
            && c.transfer.phase == Phase::Looking
        {
            c.defer_to = Some(c.defer_to.map_or(asker, |d| d.min(asker)));
        }
        let t = &c.transfer;
        let (size, sha) = (t.expected.size, t.expected.sha256);
        let f = match t.phase {
            Phase::Ready => return Some((size, sha, None)),
            Phase::Looking => InFlight {
                received: 0,
                rate: 0,
                looking: true,
            },
            Phase::Fetching | Phase::Verifying => InFlight {
                received: t.received.min(size.saturating_sub(1)),
                rate: t.rate(now).min(u32::MAX as f64) as u32,
                looking: false,
            },
        };
        Some((size, sha, Some(f)))
    }

    /// A copy here that the peer server may send while it grows (or whole, verified).
    pub fn growing(&self, name: &str) -> Option<(u64, Arc<Growth>)> {
        let c = self.copies.get(name)?;
        Some((c.transfer.expected.size, c.transfer.growth()))
    }

    /// Whether a proxy fetch also feeds a copy (it reads only what the stager has room for).
    pub fn is_tee(&self, fetch: Token) -> bool {
        let Some(Purpose::Proxy(client)) = self.fetches.get(&fetch) else {
            return false;
        };
        matches!(self.requests.get(client).map(|r| &r.wait),
            Some(Wait::Upstream { proxy, .. }) if proxy.tee.is_some())
    }

    /// The proxy fetches that feed copies (woken when the stager has room again).
    pub fn tee_fetches(&self) -> Vec<Token> {
        let mut v: Vec<Token> = self
            .fetches
            .keys()
            .copied()
            .filter(|t| self.is_tee(*t))
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether to join a copy in flight at a peer: one still looking only if that peer is
    /// the lower instance (the tie-break: the lower fetches, the higher joins); one being
    /// fetched only if, at its rate, the rest arrives within pacman's patience.
    fn may_join(env: &impl Env, instance: u64, size: u64, f: InFlight) -> bool {
        if f.looking {
            return instance < env.instance();
        }
        // just started: its rate says little yet (the connection's first round trips, the
        // other files of its transaction sharing the link); the pace check judges the copy
        // once it has run for a while
        if f.rate == 0 || f.received < size / JOIN_EARLY {
            return true;
        }
        let left = size.saturating_sub(f.received) as f64;
        left / f.rate as f64 <= COPY_BUDGET.as_secs_f64() * JOIN_SHARE
    }

    /// A verified copy is ready: every waiter gets it (with its own Range). The copy stays
    /// READY_LINGER for requests that come just after.
    fn hand_out(&mut self, env: &mut impl Env, file: &str) {
        let Some(c) = self.copies.get(file) else {
            return;
        };
        let (len, serial) = (c.transfer.expected.size, c.serial);
        for t in self.copy_waiters(file) {
            if let Some((r, _)) = self.take(env, t) {
                let copy = self.copies.get(file).and_then(|c| c.transfer.open_copy());
                hand_one(env, t, &r.request, copy, len);
            }
        }
        let at = env.now() + READY_LINGER;
        if env
            .timer(at, Deadline::Linger(file.to_string(), serial))
            .is_none()
        {
            // no timer: keep nothing that could not be cleaned up
            self.copies.remove(file);
        }
    }

    // ------------------------------------------------------------------ timers

    pub fn on_deadline(&mut self, env: &mut impl Env, d: Deadline) {
        match d {
            Deadline::Linger(file, serial) => {
                if self
                    .copies
                    .get(&file)
                    .is_some_and(|c| c.serial == serial && c.transfer.phase == Phase::Ready)
                {
                    self.copies.remove(&file);
                }
            }
            Deadline::Pace(file, serial) => self.on_pace(env, &file, serial),
            Deadline::Request(t, n) => {
                if self.requests.get(&t).is_none_or(|r| r.number != n) {
                    return;
                }
                let Some((mut r, wait)) = self.take(env, t) else {
                    return;
                };
                match wait {
                    Wait::Db { .. } => {
                        r.db_waited = true;
                        self.dispatch(env, t, r);
                    }
                    Wait::Copy { file, .. } => self.copy_too_slow(env, t, r, file),
                    Wait::Sig {
                        fetch,
                        instance,
                        sig,
                    } => {
                        self.end_fetch(env, fetch);
                        let c = sig.late();
                        self.judge(
                            env,
                            instance,
                            c,
                            &format!("its .sig: {c}, past the deadline"),
                        );
                        self.upstream_again(env, t, r);
                    }
                    Wait::Dns {
                        mut proxy, host, ..
                    } => {
                        warn!("{}: resolving {host} takes too long", proxy.label);
                        proxy.last_status = Some(504);
                        self.next_source(env, t, r, proxy);
                    }
                    w @ (Wait::Lookup { .. } | Wait::Upstream { .. } | Wait::SigLookup { .. }) => {
                        // no deadline of their own: put back untouched
                        self.wait(env, t, r, w);
                    }
                }
            }
        }
    }

    /// A request has waited REDIRECT_AFTER for its verified copy: send it round again
    /// (pacman's 10 s no-progress clock restarts) while the copy can still finish in time,
    /// else upstream.
    fn copy_too_slow(&mut self, env: &mut impl Env, t: Token, r: Asked, file: String) {
        let Some(c) = self.copies.get_mut(&file) else {
            return answer(env, t, Reply::Error(503));
        };
        let tr = &mut c.transfer;
        let progressing = matches!(tr.phase, Phase::Fetching | Phase::Verifying) && tr.received > 0;
        if progressing && tr.redirect_rounds < transfer::MAX_REDIRECT_ROUNDS {
            tr.redirect_rounds += 1;
            info!(
                "{file}: {} of {} bytes staged; redirecting the client to itself (pacman's 10 s clock)",
                tr.received, tr.expected.size
            );
            let loc = r.request.target.clone();
            let h = [("Location", loc.as_str()), ("Retry-After", "0")];
            env.reply(t, Reply::Bytes(307, &h, b""));
            return;
        }
        // no progress from the LAN (or no redirect left): this request goes upstream
        let (repo, arch) = (tr.repo.clone(), tr.arch.clone());
        self.serve_upstream(env, t, r, &repo, &arch, &file, Vec::new());
        // the mirror won: a copy nobody waits for any more is stopped (unless an upstream
        // answer feeds it: it goes on for the LAN)
        if self.copy_waiters(&file).is_empty() && !self.copies.get(&file).is_some_and(|c| c.teed) {
            self.stop_copy(env, &file);
        }
    }

    /// Sync dbs were (re)loaded: the requests that waited for them are dispatched again.
    pub fn on_dbs_loaded(&mut self, env: &mut impl Env) {
        let mut waiting: Vec<Token> = self
            .requests
            .iter()
            .filter(|(_, r)| matches!(r.wait, Wait::Db { .. }))
            .map(|(t, _)| *t)
            .collect();
        waiting.sort_unstable();
        for t in waiting {
            if let Some((mut r, _)) = self.take(env, t) {
                r.db_waited = true;
                self.dispatch(env, t, r);
            }
        }
    }

    // ------------------------------------------------------------------ upstream

    /// Answers from the sources: `first` (peers) then the repo's upstreams.
    #[allow(clippy::too_many_arguments)]
    fn serve_upstream(
        &mut self,
        env: &mut impl Env,
        t: Token,
        r: Asked,
        repo: &str,
        arch: &str,
        file: &str,
        first: Vec<Source>,
    ) {
        self.serve_upstream_tee(env, t, r, repo, arch, file, first, None)
    }

    /// As `serve_upstream`; with `tee`, the whole body also feeds that copy.
    #[allow(clippy::too_many_arguments)]
    fn serve_upstream_tee(
        &mut self,
        env: &mut impl Env,
        t: Token,
        r: Asked,
        repo: &str,
        arch: &str,
        file: &str,
        first: Vec<Source>,
        tee: Option<(String, u64)>,
    ) {
        let mut sources: VecDeque<Source> = first.into();
        sources.extend(
            upstream_urls(env, repo, arch, file)
                .into_iter()
                .map(Source::Url),
        );
        if sources.is_empty() {
            return answer(env, t, Reply::Error(404));
        }
        let p = Proxy {
            method: r.request.method,
            sources,
            range: r.request.range.clone(),
            if_modified_since: r.request.if_modified_since.clone(),
            redirects: 0,
            answered: false,
            last_status: None,
            label: file.to_string(),
            current: None,
            addrs: VecDeque::new(),
            tee,
            repo: repo.to_string(),
            started: env.now(),
            status: 0,
            bytes: 0,
        };
        self.next_source(env, t, r, Box::new(p));
    }

    /// Tries the proxy's next address, then its next source; answers the client when none
    /// is left.
    fn next_source(&mut self, env: &mut impl Env, t: Token, r: Asked, mut p: Box<Proxy>) {
        loop {
            if let Some(addr) = p.addrs.pop_front() {
                if env.is_own_front(addr) {
                    // an upstream (or its redirect) naming this daemon would loop
                    warn!(
                        "{}: {} is this daemon's own front; not asking it",
                        p.label,
                        p.at()
                    );
                    p.last_status = Some(502);
                    continue;
                }
                let mut headers = Vec::new();
                if let Some(range) = &p.range {
                    headers.push(("Range".to_string(), range.clone()));
                }
                if let Some(ims) = &p.if_modified_since {
                    headers.push(("If-Modified-Since".to_string(), ims.clone()));
                }
                let Some(url) = p.current.clone() else {
                    continue;
                };
                let req = fetch::Request {
                    method: p.method,
                    addr,
                    url,
                    headers,
                };
                match env.start_fetch(req) {
                    Some(fetch) => {
                        self.fetches.insert(fetch, Purpose::Proxy(t));
                        return self.wait(env, t, r, Wait::Upstream { fetch, proxy: p });
                    }
                    None => {
                        p.last_status = Some(502);
                        continue;
                    }
                }
            }
            let Some(src) = p.sources.pop_front() else {
                let status = p.last_status.unwrap_or(502);
                debug!("{}: no source left, answering {status}", p.label);
                answer(env, t, Reply::Error(status));
                return self.tee_check(env, &p.tee);
            };
            match src {
                Source::Url(url) if url.scheme() == Scheme::Https => {
                    if p.answered {
                        continue;
                    }
                    debug!("{}: redirecting pacman to {url}", p.label);
                    let location = url.to_string();
                    let h = [("Location", location.as_str())];
                    env.reply(t, Reply::Bytes(307, &h, b""));
                    return self.tee_check(env, &p.tee);
                }
                Source::Url(url) => {
                    let (host, port) = (url.host().to_string(), url.port());
                    p.current = Some(url);
                    if let Some(addrs) = env.resolve_now(&host, port) {
                        p.addrs = addrs.into();
                        continue;
                    }
                    // resolve on the helper thread; come back here when it answers
                    self.serial += 1;
                    let id = self.serial;
                    if !env.resolve(id, &host, port) {
                        p.last_status = Some(503);
                        continue;
                    }
                    let until = env.now() + DNS_WAIT_MAX;
                    let wait = Wait::Dns {
                        id,
                        proxy: p,
                        host,
                        port,
                        until,
                    };
                    return self.wait(env, t, r, wait);
                }
            }
        }
    }

    /// The resolver answered request `id`.
    pub fn on_resolved(
        &mut self,
        env: &mut impl Env,
        id: u64,
        result: std::io::Result<Vec<SocketAddr>>,
    ) {
        let Some(t) = self
            .requests
            .iter()
            .find(|(_, r)| matches!(r.wait, Wait::Dns { id: i, .. } if i == id))
            .map(|(t, _)| *t)
        else {
            return; // the client left, or the wait's deadline passed
        };
        let Some((
            r,
            Wait::Dns {
                mut proxy, host, ..
            },
        )) = self.take(env, t)
        else {
            return;
        };
        match result {
            Ok(addrs) if !addrs.is_empty() => proxy.addrs = addrs.into(),
            Ok(_) | Err(_) => {
                warn!("cannot resolve {host}");
                proxy.last_status = Some(502);
            }
        }
        self.next_source(env, t, r, proxy);
    }

    // ------------------------------------------------------------------ fetches

    /// Something happened on a fetch. After `Done` or `Failed` the fetch is over.
    pub fn on_fetch_event(&mut self, env: &mut impl Env, tok: Token, ev: fetch::Event) {
        match self.fetches.get(&tok).cloned() {
            Some(Purpose::PeerCopy {
                file,
                instance,
                resume,
            }) => self.on_peer_copy_event(env, tok, &file, instance, resume, ev),
            Some(Purpose::Proxy(client)) => self.on_proxy_event(env, tok, client, ev),
            Some(Purpose::Sig(client)) => self.on_sig_event(env, tok, client, ev),
            Some(Purpose::MirrorCopy { file }) => self.on_mirror_copy_event(env, tok, &file, ev),
            None => env.stop_fetch(tok),
        }
    }

    fn end_fetch(&mut self, env: &mut impl Env, tok: Token) {
        self.fetches.remove(&tok);
        env.stop_fetch(tok);
    }

    fn on_peer_copy_event(
        &mut self,
        env: &mut impl Env,
        tok: Token,
        file: &str,
        instance: u64,
        resume: u64,
        ev: fetch::Event,
    ) {
        let Some(c) = self.copies.get_mut(file) else {
            return self.end_fetch(env, tok);
        };
        let tr = &mut c.transfer;
        match ev {
            fetch::Event::Head(h) => {
                let want = tr.expected.size - resume;
                let right = if resume > 0 {
                    h.status == 206 && h.content_range.map(|r| r.0) == Some(resume)
                } else {
                    h.status == 200
                };
                let conduct = match h.status {
                    _ if right && h.content_length == Some(want) => return,
                    // the file went away since the lookup, or the peer is full: not a lie
                    404 | 416 => Conduct::Gone,
                    503 => Conduct::Busy,
                    // a redirect (never followed), another length than it answered, ...
                    _ => Conduct::BadHead,
                };
                let length = (h.content_length)
                    .map_or_else(|| "no length".to_string(), |l| format!("{l} bytes"));
                let why = format!(
                    "{file}: answered {} with {length} where {want} bytes were due",
                    h.status
                );
                self.end_fetch(env, tok);
                self.judge(env, instance, conduct, &why);
                self.next_peer(env, file);
            }
            fetch::Event::Body(data) => {
                if tr.append(data).is_err() {
                    self.end_fetch(env, tok);
                    let why = format!("{file}: sent more bytes than the sync db's size");
                    self.judge(env, instance, Conduct::WrongBytes { sources: 1 }, &why);
                    self.next_peer(env, file);
                }
            }
            fetch::Event::Done => {
                let r = tr.finish();
                self.end_fetch(env, tok);
                // the hash is checked on the stager thread: its verdict comes to on_staged
                if let Err(v) = r {
                    self.settled(env, file, v);
                }
            }
            fetch::Event::Failed(why) => {
                // every byte arrived, only the end of the framing did not: verify what we have
                // (resuming would only get a legitimate 416)
                if tr.received == tr.expected.size {
                    let done = fetch::Event::Done;
                    return self.on_peer_copy_event(env, tok, file, instance, resume, done);
                }
                let conduct = policy::conduct_of_failure(&why);
                self.end_fetch(env, tok);
                let why = format!(
                    "{file}: {why} after {} bytes",
                    tr_received(&self.copies, file)
                );
                self.judge(env, instance, conduct, &why);
                self.next_peer(env, file);
            }
        }
    }

    /// A finished copy failed verification. From one source alone, that source is proven
    /// wrong (banned); mixed from several, no one is: the copy starts again from one of
    /// them (the last first), and only a copy from a single source can prove anything.
    fn copy_refused(&mut self, env: &mut impl Env, file: &str, contributors: &[u64], what: &str) {
        let peers: Vec<u64> = contributors
            .iter()
            .copied()
            .filter(|c| *c != MIRROR)
            .collect();
        let mixed = contributors.len() > 1;
        let conduct = Conduct::WrongBytes {
            sources: contributors.len(),
        };
        let Some(c) = self.copies.get_mut(file) else {
            return;
        };
        let size = c.transfer.expected.size;
        c.transfer.reset_staging();
        let why = format!("{file}: {what} (sync db says {size} bytes)");
        if !mixed {
            for p in peers {
                self.judge(env, p, conduct, &why);
            }
            return self.next_peer(env, file);
        }
        warn!(
            "{why}: copied from {} sources, none proven wrong; starting again from one",
            contributors.len()
        );
        if c.restarted || contributors.contains(&MIRROR) {
            return self.copy_failed(env, file);
        }
        c.restarted = true;
        c.transfer.attempts = 0;
        for tried in c.tried.drain(..) {
            c.transfer.candidates.push_front(tried);
        }
        self.next_peer(env, file);
    }

    /// The rest of a copy from the first `http://` upstream, with Range from the staged
    /// bytes: nothing is fetched twice. Without one (or with a name not resolved yet) the
    /// waiters go upstream as they are.
    fn rest_from_mirror(&mut self, env: &mut impl Env, file: &str) {
        let Some(c) = self.copies.get_mut(file) else {
            return;
        };
        let tr = &mut c.transfer;
        let url = upstream_urls(env, &tr.repo, &tr.arch, file)
            .into_iter()
            .find(|u| u.scheme() == Scheme::Http);
        let Some(url) = url else {
            return self.copy_failed(env, file);
        };
        let addr = env
            .resolve_now(url.host(), url.port())
            .and_then(|a| a.into_iter().find(|a| !env.is_own_front(*a)));
        let Some(addr) = addr else {
            return self.copy_failed(env, file);
        };
        let now = env.now();
        let resume = tr.received;
        tr.begin_source(MIRROR, addr, now);
        let host = url.host().to_string();
        let req = fetch::Request {
            method: Method::Get,
            addr,
            url,
            headers: vec![("Range".to_string(), format!("bytes={resume}-"))],
        };
        let Some(tok) = env.start_fetch(req) else {
            return self.copy_failed(env, file);
        };
        info!(
            "{file}: {resume} of {} bytes staged; the rest from the mirror {host}",
            tr.expected.size
        );
        let purpose = Purpose::MirrorCopy {
            file: file.to_string(),
        };
        self.fetches.insert(tok, purpose);
    }

    fn on_mirror_copy_event(
        &mut self,
        env: &mut impl Env,
        tok: Token,
        file: &str,
        ev: fetch::Event,
    ) {
        let Some(c) = self.copies.get_mut(file) else {
            return self.end_fetch(env, tok);
        };
        let tr = &mut c.transfer;
        match ev {
            fetch::Event::Head(h) => {
                let (start, size) = (tr.received, tr.expected.size);
                let rest = h.status == 206
                    && h.content_range == Some((start, size.saturating_sub(1), Some(size)))
                    && h.content_length == Some(size - start);
                let whole = h.status == 200 && h.content_length == Some(size);
                if whole && start > 0 {
                    // a mirror that ignores Range: the whole file, from the start
                    match tr.source.map(|s| s.1) {
                        Some(addr) => {
                            tr.reset_staging();
                            tr.begin_source(MIRROR, addr, env.now());
                        }
                        None => {
                            self.end_fetch(env, tok);
                            self.copy_failed(env, file);
                        }
                    }
                } else if !rest && !whole {
                    debug!("{file}: the mirror answered {} to the rest", h.status);
                    self.end_fetch(env, tok);
                    self.copy_failed(env, file);
                }
            }
            fetch::Event::Body(data) => {
                self.stats.upstream_bytes += data.len() as u64;
                if let Err(e) = tr.append(data) {
                    debug!("{file}: the mirror's rest: {e:?}");
                    self.end_fetch(env, tok);
                    self.copy_failed(env, file);
                }
            }
            fetch::Event::Done => {
                let r = tr.finish();
                self.end_fetch(env, tok);
                // the hash is checked on the stager thread: its verdict comes to on_staged
                if let Err(v) = r {
                    self.settled(env, file, v);
                }
            }
            fetch::Event::Failed(why) => {
                debug!("{file}: the mirror's rest failed: {why}");
                self.end_fetch(env, tok);
                self.copy_failed(env, file);
            }
        }
    }

    /// A copy's pace check (every PACE_CHECK while a peer sends it): a stall or a drip is
    /// struck and the next source resumes; a rate that cannot finish in pacman's budget
    /// hands the rest to the mirror.
    fn on_pace(&mut self, env: &mut impl Env, file: &str, serial: u64) {
        let now = env.now();
        let Some(c) = self.copies.get_mut(file) else {
            return;
        };
        c.pace_timer = None;
        if c.serial != serial || c.transfer.phase != Phase::Fetching {
            return;
        }
        let Some((tok, instance)) = self.fetches.iter().find_map(|(t, p)| match p {
            Purpose::PeerCopy {
                file: f, instance, ..
            } if f == file => Some((*t, *instance)),
            _ => None,
        }) else {
            return; // the mirror sends the rest: nothing to measure
        };
        let tr = &c.transfer;
        let (since, mark) = c.pace_mark;
        let over = now.saturating_duration_since(since);
        let got = tr.received.saturating_sub(mark);
        let left = tr.expected.size - tr.received;
        let time_left = COPY_BUDGET.saturating_sub(now.saturating_duration_since(tr.started));
        let pace = match policy::pace(got, over, left, time_left) {
            // a copy in flight at the peer arrives at the pace of that peer's own source,
            // whatever that is now (a shared link, the other files of its transaction): only
            // a stall counts; pacman's redirect rounds still bound the wait
            Pace::Drip | Pace::TooSlow
                if c.joined
                    && got > 0
                    && now.saturating_duration_since(tr.started) < JOIN_GRACE =>
            {
                Pace::Keep
            }
            p => p,
        };
        if over >= policy::PACE_MEASURE {
            c.pace_mark = (now, tr.received);
        }
        let conduct = match pace {
            Pace::Keep | Pace::Measuring => {
                c.pace_timer =
                    env.timer(now + PACE_CHECK, Deadline::Pace(file.to_string(), serial));
                return;
            }
            Pace::Drip if got == 0 => Conduct::Stall,
            Pace::Drip => Conduct::Drip,
            Pace::TooSlow => Conduct::TooSlow,
        };
        let why = format!(
            "{file}: {got} bytes in {} s ({conduct:?})",
            fixed(over.as_millis(), 1000, 1)
        );
        info!(
            "{why}; {} of {} bytes staged",
            tr.received, tr.expected.size
        );
        self.end_fetch(env, tok);
        self.judge(env, instance, conduct, &why);
        if conduct == Conduct::TooSlow {
            // no other peer gets the rest: time is short, and the mirror is there
            if let Some(c) = self.copies.get_mut(file) {
                c.transfer.candidates.clear();
            }
        }
        self.next_peer(env, file);
    }

    /// The stager's final word on a staged copy (stale when the copy is gone or was reset).
    /// A local error can come while the copy is still arriving.
    pub fn on_staged(&mut self, env: &mut impl Env, r: Report) {
        let Some(file) = (self.copies.iter())
            .find(|(_, c)| c.transfer.stage_id() == r.id)
            .map(|(f, _)| f.clone())
        else {
            return;
        };
        let Some(c) = self.copies.get_mut(&file) else {
            return;
        };
        let verdict = c.transfer.settle(r.outcome);
        self.settled(env, &file, verdict);
    }

    /// A copy's verdict: hand it out; or ban its contributors and try the next peer; or, when
    /// our disk failed, send the waiters upstream (nobody is banned).
    fn settled(&mut self, env: &mut impl Env, file: &str, verdict: Verdict) {
        let now = env.now();
        let Some(c) = self.copies.get_mut(file) else {
            return;
        };
        let tr = &mut c.transfer;
        let elapsed = now.duration_since(tr.started);
        let (size, contributors, source) = (tr.expected.size, tr.contributors.clone(), tr.source);
        match verdict {
            Verdict::Verified if contributors == [MIRROR] => {
                info!(
                    "{file}: {size} bytes from the mirror verified and kept for the LAN ({} s)",
                    fixed(elapsed.as_millis(), 1000, 2)
                );
                self.hand_out(env, file);
            }
            Verdict::Verified => {
                // "<file>: <bytes> bytes from peer <addr>" is what tests/demo.sh looks for
                info!(
                    "{file}: {size} bytes from peer {} ({}) verified in {} s ({} MB/s)",
                    source.map(|s| s.1.to_string()).unwrap_or_default(),
                    source.map(|s| env.peer_name(s.0)).unwrap_or_default(),
                    fixed(elapsed.as_millis(), 1000, 2),
                    fixed(size.into(), elapsed.as_micros().max(1000), 1)
                );
                if !contributors.contains(&MIRROR) {
                    self.stats.lan_hits += 1;
                    self.stats.lan_bytes += size;
                    self.metrics.lan_hit(&tr.repo, size);
                }
                if let Some((instance, _)) = source
                    && instance != MIRROR
                {
                    env.peer_served(instance);
                }
                // the peer that sent the whole package may be asked for its .sig
                if let Some((instance, _)) = source
                    && contributors == [instance]
                    && instance != MIRROR
                {
                    if self.sig_hints.len() >= MAX_SIG_HINTS {
                        self.sig_hints.clear();
                    }
                    let hint = SigHint { instance, at: now };
                    self.sig_hints.insert(file.to_string(), hint);
                }
                self.hand_out(env, file);
            }
            Verdict::Local(e) => {
                warn!("staging {file}: {e}; going upstream");
                for tok in self.copy_fetches(file) {
                    self.end_fetch(env, tok);
                }
                self.copy_failed(env, file);
            }
            v => {
                self.stats.rejected_copies += 1;
                self.metrics.rejected_copy();
                self.copy_refused(env, file, &contributors, &v.to_string());
            }
        }
    }

    /// Whether a fetch brings a `.sig` from a peer (held in memory, at most 16 KiB: it reads
    /// without waiting for a client's or the stager's room).
    pub fn is_sig_fetch(&self, fetch: Token) -> bool {
        matches!(self.fetches.get(&fetch), Some(Purpose::Sig(_)))
    }

    /// The fetches copying `file` from peers; all peer copies' for "".
    pub fn copy_fetches(&self, file: &str) -> Vec<Token> {
        let mut v: Vec<Token> = (self.fetches.iter())
            .filter(|(_, p)| {
                matches!(p, Purpose::PeerCopy { file: f, .. } | Purpose::MirrorCopy { file: f }
                    if file.is_empty() || f == file)
            })
            .map(|(t, _)| *t)
            .collect();
        v.sort_unstable();
        v
    }

    fn on_proxy_event(&mut self, env: &mut impl Env, tok: Token, client: Token, ev: fetch::Event) {
        let Some((r, wait)) = self.take(env, client) else {
            return self.end_fetch(env, tok);
        };
        let Wait::Upstream { fetch, mut proxy } = wait else {
            self.wait(env, client, r, wait);
            return self.end_fetch(env, tok);
        };
        debug_assert_eq!(fetch, tok);
        match ev {
            fetch::Event::Head(h) => {
                let redirect = matches!(h.status, 301 | 302 | 303 | 307 | 308);
                if redirect && let Some(loc) = &h.location {
                    self.end_fetch(env, tok);
                    proxy.redirects += 1;
                    proxy.addrs.clear();
                    let next = proxy.current.as_ref().map(|u| u.join(loc));
                    if proxy.redirects > MAX_UPSTREAM_REDIRECTS {
                        proxy.last_status = Some(502);
                    } else if let Some(Ok(url)) = next {
                        proxy.sources.push_front(Source::Url(url));
                    } else if let Some(Err(e)) = next {
                        warn!(
                            "{}: unusable redirect from {}: {e}",
                            proxy.label,
                            proxy.at()
                        );
                    }
                    return self.next_source(env, client, r, proxy);
                }
                if !matches!(h.status, 200 | 206 | 304 | 416) {
                    debug!("{}: {} answered {}", proxy.label, proxy.at(), h.status);
                    self.end_fetch(env, tok);
                    proxy.addrs.clear();
                    proxy.last_status = Some(h.status);
                    return self.next_source(env, client, r, proxy);
                }
                if let Some((f, _)) = &proxy.tee {
                    let whole = self.copies.get(f).map(|c| c.transfer.expected.size);
                    if h.status != 200 || h.content_length.is_none() || h.content_length != whole {
                        debug!("{f}: the mirror's answer is not the whole file: not kept");
                        let tee = proxy.tee.take();
                        self.tee_check(env, &tee);
                    }
                }
                let (headers, length) = relayed_head(&h);
                let refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                env.reply(client, Reply::Stream(h.status, &refs, length));
                proxy.answered = true;
                proxy.status = h.status;
                if length == Some(0) {
                    env.reply(client, Reply::End(true));
                    self.upstream_done(env, &proxy, "done");
                    return self.end_fetch(env, tok);
                }
                self.wait(env, client, r, Wait::Upstream { fetch, proxy });
            }
            fetch::Event::Body(data) => {
                self.stats.upstream_bytes += data.len() as u64;
                proxy.bytes += data.len() as u64;
                env.reply(client, Reply::Body(&data));
                // the same bytes, staged for the LAN (hashed on the stager thread)
                if let Some(c) = self.tee_copy(&proxy.tee)
                    && c.transfer.append(data).is_err()
                {
                    let tee = proxy.tee.take();
                    self.tee_check(env, &tee);
                }
                self.wait(env, client, r, Wait::Upstream { fetch, proxy });
            }
            fetch::Event::Done => {
                env.reply(client, Reply::End(true));
                self.upstream_done(env, &proxy, "done");
                self.end_fetch(env, tok);
                if let Some(c) = self.tee_copy(&proxy.tee) {
                    c.teed = false;
                    // the hash is checked on the stager thread: its verdict comes to on_staged
                    if let Err(v) = c.transfer.finish() {
                        let file = c.transfer.file.clone();
                        self.settled(env, &file, v);
                    }
                }
            }
            fetch::Event::Failed(why) => {
                debug!("{}: source failed: {why}", proxy.label);
                self.end_fetch(env, tok);
                if proxy.answered {
                    // bytes already went out: cut, so pacman resumes on its next server
                    env.reply(client, Reply::End(false));
                    self.upstream_done(env, &proxy, &format!("cut: {why}"));
                    return self.tee_check(env, &proxy.tee);
                }
                proxy.last_status = Some(502);
                self.next_source(env, client, r, proxy);
            }
        }
    }

    /// One info line per file relayed from a mirror (or a peer's `.sig`), and its counters.
    fn upstream_done(&mut self, env: &impl Env, p: &Proxy, result: &str) {
        let secs = fixed(env.now().duration_since(p.started).as_millis(), 1000, 2);
        info!(
            "{}: {} from {} in {secs} s (HTTP {}, {result})",
            p.label,
            human_bytes(p.bytes),
            p.current
                .as_ref()
                .map_or_else(String::new, HttpUrl::host_header),
            p.status
        );
        self.metrics.upstream_file(&p.repo, p.bytes);
    }

    /// Debug builds: the records agree with each other and with the loop (after each pass).
    pub fn check(&self, env: &impl Env) {
        if !cfg!(debug_assertions) {
            return;
        }
        for (t, r) in &self.requests {
            assert!(
                env.client_waits(*t),
                "record {t:?} without a waiting client"
            );
            match &r.wait {
                Wait::Upstream { fetch, .. } => {
                    assert!(env.fetch_exists(*fetch), "{t:?}: its fetch is gone");
                    assert_eq!(self.fetches.get(fetch), Some(&Purpose::Proxy(*t)));
                }
                Wait::Copy { file, .. } => {
                    assert!(self.copies.contains_key(file), "{t:?} waits for no copy");
                }
                Wait::Lookup { id, .. } => {
                    assert_eq!(self.lookups.get(id), Some(&LookupFor::Client(*t)));
                }
                Wait::SigLookup { id, .. } => {
                    assert_eq!(self.lookups.get(id), Some(&LookupFor::Sig(*t)));
                }
                Wait::Sig { fetch, .. } => {
                    assert!(env.fetch_exists(*fetch), "{t:?}: its .sig fetch is gone");
                    assert_eq!(self.fetches.get(fetch), Some(&Purpose::Sig(*t)));
                }
                Wait::Db { .. } | Wait::Dns { .. } => {}
            }
        }
        for (tok, p) in &self.fetches {
            assert!(env.fetch_exists(*tok), "fetch {tok:?} recorded but gone");
            if let Purpose::Proxy(c) = p {
                assert_eq!(self.client_fetch(*c), Some(*tok), "proxy {tok:?} unowned");
            }
        }
        for (file, c) in &self.copies {
            let fetching = self
                .fetches
                .values()
                .filter(|p| match p {
                    Purpose::PeerCopy { file: f, .. } | Purpose::MirrorCopy { file: f } => {
                        f == file
                    }
                    _ => false,
                })
                .count();
            let fed = self.requests.values().any(|r| match &r.wait {
                Wait::Upstream { proxy, .. } | Wait::Dns { proxy, .. } => {
                    proxy.tee == Some((file.clone(), c.serial))
                }
                _ => false,
            });
            assert_eq!(c.teed, fed, "{file}: teed {} but fed {fed}", c.teed);
            match c.transfer.phase {
                Phase::Fetching if c.teed => assert_eq!(fetching, 0, "{file}: teed"),
                Phase::Fetching => assert_eq!(fetching, 1, "{file}: {fetching} fetches"),
                Phase::Looking | Phase::Verifying | Phase::Ready => {
                    assert_eq!(fetching, 0, "{file}")
                }
            }
        }
    }
}

/// A final answer: the client waits for nothing more.
fn answer(env: &mut impl Env, t: Token, reply: Reply<'_>) {
    env.reply(t, reply);
}

/// A small answer held in memory (a `.sig`) to one client, with its own Range.
fn hand_bytes(env: &mut impl Env, t: Token, req: &Request, bytes: &[u8]) {
    let len = bytes.len() as u64;
    match http::resolve_range(req.range.as_deref(), len) {
        RangeOutcome::Full => {
            let h = [("Accept-Ranges", "bytes")];
            env.reply(t, Reply::Bytes(200, &h, bytes));
        }
        RangeOutcome::Partial { start, end } => {
            let cr = http::content_range(start, end, len);
            let h = [("Content-Range", cr.as_str()), ("Accept-Ranges", "bytes")];
            env.reply(
                t,
                Reply::Bytes(206, &h, &bytes[start as usize..=end as usize]),
            );
        }
        RangeOutcome::Unsatisfiable => {
            let cr = http::content_range_unsatisfied(len);
            env.reply(t, Reply::Bytes(416, &[("Content-Range", &cr)], b""));
        }
    }
}

/// A verified copy (a handle of its own) to one client, with its own Range.
fn hand_one(env: &mut impl Env, t: Token, req: &Request, copy: Option<Arc<File>>, len: u64) {
    let Some(f) = copy else {
        return answer(env, t, Reply::Error(503));
    };
    let lm = http::http_date(UNIX_EPOCH + Duration::from_secs(crate::server::unix_now()));
    match http::resolve_range(req.range.as_deref(), len) {
        RangeOutcome::Full => {
            let l = len.to_string();
            let h = [
                ("Content-Length", l.as_str()),
                ("Accept-Ranges", "bytes"),
                ("Last-Modified", lm.as_str()),
            ];
            env.reply(t, Reply::File(200, &h, f, 0, len));
        }
        RangeOutcome::Partial { start, end } => {
            let l = (end + 1 - start).to_string();
            let cr = http::content_range(start, end, len);
            let h = [
                ("Content-Length", l.as_str()),
                ("Content-Range", cr.as_str()),
                ("Accept-Ranges", "bytes"),
            ];
            env.reply(t, Reply::File(206, &h, f, start, end + 1));
        }
        RangeOutcome::Unsatisfiable => {
            let cr = http::content_range_unsatisfied(len);
            env.reply(t, Reply::Bytes(416, &[("Content-Range", &cr)], b""));
        }
    }
}

/// The head relayed to the client for a source's answer, and the body length it promises.
fn relayed_head(h: &http::ResponseInfo) -> (Vec<(String, String)>, Option<u64>) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let length = match h.status {
        304 | 416 => Some(0),
        _ => h.content_length,
    };
    if let Some(l) = length {
        headers.push(("Content-Length".into(), l.to_string()));
    }
    if let Some((s, e, total)) = h.content_range {
        let total = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
        headers.push(("Content-Range".into(), format!("bytes {s}-{e}/{total}")));
    } else if let (416, Some(total)) = (h.status, h.unsatisfied_length) {
        headers.push((
            "Content-Range".into(),
            http::content_range_unsatisfied(total),
        ));
    }
    if let Some(lm) = &h.last_modified {
        headers.push(("Last-Modified".into(), lm.clone()));
    }
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    (headers, length)
}

/// Where `file` is upstream, in the configured order: each mirror URL with `$arch` the
/// request's component and the file name appended, each encoded once as the front decoded it
/// once (so the mirror decodes the very names the front checked). Unusable URLs are skipped.
fn upstream_urls(env: &impl Env, repo: &str, arch: &str, file: &str) -> Vec<HttpUrl> {
    let arch = url::encode_segment(arch);
    (env.upstreams(repo, &arch).iter())
        .filter_map(
            |base| match HttpUrl::parse(base).and_then(|u| u.join_file(file)) {
                Ok(u) => Some(u),
                Err(e) => {
                    warn!("unusable upstream URL {base}: {e}");
                    None
                }
            },
        )
        .collect()
}

/// Bytes a copy has staged (for messages).
fn tr_received(copies: &HashMap<String, Copy>, file: &str) -> u64 {
    copies.get(file).map(|c| c.transfer.received).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! The front's state machine without sockets: a fake loop records answers, fetches,
    //! lookups and timers; the tests play the events and move time.
    use super::*;
    use crate::chunk::Chunk;
    use crate::eventloop::Timers;
    use crate::stager::Stager;
    use sha2::{Digest, Sha256};
    use std::collections::{BTreeMap, HashSet};
    use std::path::PathBuf;

    const PKG: &str = "pkg-1.0-1-x86_64.pkg.tar.zst";
    const MIRROR: &str = "http://10.0.0.100/core/os/x86_64";
    const PEER1: u64 = 1;
    const PEER2: u64 = 2;

    struct Fake {
        now: Instant,
        /// Answers as text: "error 404", "bytes 307 <location>", "file 200 <len>",
        /// "stream 200", "body <n>", "end true".
        replies: Vec<(Token, String)>,
        /// Bytes of File answers, read from the staged file at once.
        files: HashMap<Token, Vec<u8>>,
        done: HashSet<Token>,
        fetches: BTreeMap<Token, fetch::Request>,
        fetches_started: usize,
        refused: Vec<SocketAddr>,
        next_tok: usize,
        timers: Timers<Deadline>,
        lookups: Vec<(u32, String)>,
        peers: HashMap<u64, SocketAddr>,
        bans: Vec<(u64, String)>,
        strikes: Vec<(u64, String)>,
        index: HashMap<String, PkgInfo>,
        loading: bool,
        upstreams: Vec<String>,
        staging: PathBuf,
        stager: Stager,
        dns_cache: HashMap<String, Vec<SocketAddr>>,
        resolving: Vec<(u64, String)>,
        instance: u64,
        keep_max: u64,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let staging = std::env::temp_dir()
                .join(format!("flocon-front-unit-{tag}-{}", std::process::id()));
            transfer::prepare_staging(&staging).unwrap();
            let stager = Stager::with_wake(&staging, Box::new(|| {})).unwrap();
            Fake {
                now: Instant::now(),
                replies: Vec::new(),
                files: HashMap::new(),
                done: HashSet::new(),
                fetches: BTreeMap::new(),
                fetches_started: 0,
                refused: Vec::new(),
                next_tok: 5000,
                timers: Timers::new(),
                lookups: Vec::new(),
                peers: HashMap::from([
                    (PEER1, "10.0.0.1:19432".parse().unwrap()),
                    (PEER2, "10.0.0.2:19432".parse().unwrap()),
                ]),
                bans: Vec::new(),
                strikes: Vec::new(),
                index: HashMap::new(),
                loading: false,
                upstreams: vec![MIRROR.to_string()],
                staging,
                stager,
                dns_cache: HashMap::new(),
                resolving: Vec::new(),
                instance: 0x5000,
                keep_max: 512 << 20,
            }
        }

        fn last(&self, t: Token) -> String {
            let r = self.replies.iter().rev().find(|(c, _)| *c == t);
            r.map(|r| r.1.clone()).unwrap_or_default()
        }

        fn fetch_to(&self, addr: &str) -> Option<Token> {
            let addr: SocketAddr = addr.parse().unwrap();
            let f = self.fetches.iter().find(|(_, r)| r.addr == addr);
            f.map(|(t, _)| *t)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }

    impl Env for Fake {
        fn now(&self) -> Instant {
            self.now
        }
        fn reply(&mut self, client: Token, reply: Reply<'_>) -> bool {
            let text = match reply {
                Reply::Error(s) => format!("error {s}"),
                Reply::Bytes(s, h, _) => {
                    let loc = h.iter().find(|(k, _)| *k == "Location").map(|x| x.1);
                    format!("bytes {s} {}", loc.unwrap_or(""))
                }
                Reply::File(s, _, f, start, end) => {
                    // at explicit offsets, as sendfile does: the handles share one offset
                    let mut part = vec![0; (end - start) as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&*f, &mut part, start).unwrap();
                    self.files.insert(client, part);
                    format!("file {s} {}", end - start)
                }
                Reply::Stream(s, _, _) => format!("stream {s}"),
                Reply::Body(b) => format!("body {}", b.len()),
                Reply::End(c) => format!("end {c}"),
            };
            if !text.starts_with("stream") && !text.starts_with("body") {
                self.done.insert(client);
            }
            self.replies.push((client, text));
            true
        }
        fn client_waits(&self, client: Token) -> bool {
            !self.done.contains(&client)
        }
        fn start_fetch(&mut self, req: fetch::Request) -> Option<Token> {
            if self.refused.contains(&req.addr) {
                return None;
            }
            self.next_tok += 1;
            let t = Token(self.next_tok);
            self.fetches.insert(t, req);
            self.fetches_started += 1;
            Some(t)
        }
        fn stop_fetch(&mut self, fetch: Token) {
            self.fetches.remove(&fetch);
        }
        fn fetch_exists(&self, fetch: Token) -> bool {
            self.fetches.contains_key(&fetch)
        }
        fn timer(&mut self, at: Instant, d: Deadline) -> Option<TimerId> {
            self.timers.at(at, d)
        }
        fn cancel(&mut self, id: TimerId) {
            self.timers.cancel(id);
        }
        fn start_lookup(
            &mut self,
            name: &str,
            _expected: Option<(u64, Option<[u8; 32]>)>,
        ) -> Option<u32> {
            let id = self.lookups.len() as u32 + 1;
            self.lookups.push((id, name.to_string()));
            Some(id)
        }
        fn has_peers(&self) -> bool {
            !self.peers.is_empty()
        }
        fn instance(&self) -> u64 {
            self.instance
        }
        fn keep_max(&self) -> u64 {
            self.keep_max
        }
        fn peer_addr(&self, instance: u64) -> Option<SocketAddr> {
            self.peers.get(&instance).copied()
        }
        fn peer_name(&self, instance: u64) -> String {
            format!("peer{instance}")
        }
        fn is_banned(&self, instance: u64) -> bool {
            self.bans
                .iter()
                .chain(&self.strikes)
                .any(|b| b.0 == instance)
        }
        fn ban(&mut self, instance: u64, why: &str) {
            self.bans.push((instance, why.to_string()));
        }
        fn strike(&mut self, instance: u64, why: &str) {
            self.strikes.push((instance, why.to_string()));
        }
        fn db_signature(&self, _repo: &str, file: &str) -> Option<Vec<u8>> {
            // one package of the fake db carries its %PGPSIG%
            (file == "signed-1-1-any.pkg.tar.zst").then(|| REAL_SIG.to_vec())
        }
        fn is_own_front(&self, addr: SocketAddr) -> bool {
            addr == "127.0.0.1:19433".parse().unwrap()
        }
        fn indexed(&self, _repo: &str, file: &str) -> Option<PkgInfo> {
            self.index.get(file).copied()
        }
        fn dbs_loading(&mut self) -> bool {
            self.loading
        }
        fn upstreams(&self, repo: &str, arch: &str) -> Vec<String> {
            (self.upstreams.iter())
                .map(|u| u.replace("$repo", repo).replace("$arch", arch))
                .collect()
        }
        fn stage(&self) -> StageHandle {
            self.stager.handle()
        }
        fn resolve_now(&mut self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                return Some(vec![SocketAddr::new(ip, port)]);
            }
            self.dns_cache.get(host).cloned()
        }
        fn resolve(&mut self, id: u64, host: &str, _port: u16) -> bool {
            self.resolving.push((id, host.to_string()));
            true
        }
    }

    fn request(target: &str) -> Request {
        Request {
            method: Method::Get,
            version: http::Version::Http11,
            target: target.to_string(),
            keep_alive: true,
            range: None,
            if_modified_since: None,
            host: None,
            flocon_auth: None,
            head_len: 0,
        }
    }

    fn pkg_path(file: &str) -> String {
        format!("/core/os/x86_64/{file}")
    }

    fn head(status: u16, len: u64) -> fetch::Event {
        fetch::Event::Head(http::ResponseInfo {
            status,
            content_length: Some(len),
            chunked: false,
            location: None,
            content_range: None,
            unsatisfied_length: None,
            last_modified: None,
            keep_alive: true,
            head_len: 0,
            headers_extra: Vec::new(),
        })
    }

    /// A 206 for `start..size`, as a peer or mirror resuming sends it.
    fn head_range(start: u64, size: u64) -> fetch::Event {
        let fetch::Event::Head(mut h) = head(206, size - start) else {
            unreachable!()
        };
        h.content_range = Some((start, size - 1, Some(size)));
        fetch::Event::Head(h)
    }

    fn cand(instance: u64, size: u64) -> Candidate {
        Candidate {
            instance,
            size,
            sha256: None,
            uploads: 0,
            arriving: None,
        }
    }

    /// A package of `len` bytes listed in the fake's index.
    fn package(env: &mut Fake, len: usize) -> Vec<u8> {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let info = PkgInfo {
            size: len as u64,
            sha256: Some(Sha256::digest(&data).into()),
        };
        env.index.insert(PKG.to_string(), info);
        data
    }

    fn ask(front: &mut Front, env: &mut Fake, t: Token, file: &str) {
        front.on_request(env, t, 1, request(&pkg_path(file)));
        front.check(env);
    }

    /// Moves time on and runs the timers that come due.
    fn advance(front: &mut Front, env: &mut Fake, d: Duration) {
        env.now += d;
        while let Some(dl) = env.timers.pop_expired(env.now) {
            front.on_deadline(env, dl);
            front.check(env);
        }
    }

    fn event(front: &mut Front, env: &mut Fake, tok: Token, ev: fetch::Event) {
        front.on_fetch_event(env, tok, ev);
        front.check(env);
    }

    fn body(data: &[u8]) -> fetch::Event {
        fetch::Event::Body(Chunk::copy_of(data))
    }

    /// Waits for the stager thread's verdict on the copy that just ended and hands it to
    /// the front (the only wait on real time in these tests: the thread's own work).
    fn staged(front: &mut Front, env: &mut Fake) {
        let t0 = Instant::now();
        loop {
            let reports = env.stager.reports();
            if !reports.is_empty() {
                for r in reports {
                    front.on_staged(env, r);
                    front.check(env);
                }
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "no report from the stager"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Delivers `data` as a complete answer on fetch `tok`, and the stager's verdict.
    fn deliver(front: &mut Front, env: &mut Fake, tok: Token, data: &[u8]) {
        event(front, env, tok, head(200, data.len() as u64));
        for chunk in data.chunks(1000) {
            event(front, env, tok, body(chunk));
        }
        event(front, env, tok, fetch::Event::Done);
        staged(front, env);
    }

    fn decide(front: &mut Front, env: &mut Fake, id: u32, c: Vec<Candidate>) {
        let n = c.len();
        front.on_decided(env, id, c, 2, n);
        front.check(env);
    }

    #[test]
    fn hit_a_verified_copy_from_a_peer() {
        let (mut f, mut env) = (Front::new(), Fake::new("hit"));
        let data = package(&mut env, 5000);
        let c = Token(1);
        ask(&mut f, &mut env, c, PKG);
        assert_eq!(env.lookups, vec![(1, PKG.to_string())]);
        assert!(
            env.replies.is_empty(),
            "nothing before the copy is verified"
        );
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let tok = env.fetch_to("10.0.0.1:19432").expect("a fetch to the peer");
        assert_eq!(env.fetches[&tok].url.path(), format!("/{PKG}"));
        deliver(&mut f, &mut env, tok, &data);
        assert_eq!(env.last(c), "file 200 5000");
        assert_eq!(env.files[&c], data);
        assert_eq!(f.stats.lan_hits, 1);
        assert_eq!(f.waiting(), 0);
        assert!(env.fetches.is_empty());
    }

    #[test]
    fn miss_goes_upstream_and_streams() {
        let (mut f, mut env) = (Front::new(), Fake::new("miss"));
        package(&mut env, 5000);
        let c = Token(1);
        ask(&mut f, &mut env, c, PKG);
        decide(&mut f, &mut env, 1, vec![]);
        let tok = env.fetch_to("10.0.0.100:80").expect("the mirror");
        assert_eq!(
            env.fetches[&tok].url.path(),
            format!("/core/os/x86_64/{PKG}")
        );
        event(&mut f, &mut env, tok, head(200, 3));
        event(&mut f, &mut env, tok, body(&[1, 2, 3]));
        event(&mut f, &mut env, tok, fetch::Event::Done);
        let got: Vec<&str> = env.replies.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(got, ["stream 200", "body 3", "end true"]);
        assert_eq!(f.stats.upstream_bytes, 3);
        assert_eq!(f.waiting(), 0);
    }

    fn arriving(instance: u64, size: u64, received: u64, rate: u32, looking: bool) -> Candidate {
        Candidate {
            arriving: Some(InFlight {
                received,
                rate,
                looking,
            }),
            ..cand(instance, size)
        }
    }

    #[test]
    fn a_miss_is_kept_as_it_streams_verified_then_offered_to_the_lan() {
        let (mut f, mut env) = (Front::new(), Fake::new("tee"));
        let data = package(&mut env, 200_000);
        let c = Token(1);
        ask(&mut f, &mut env, c, PKG);
        // while its own lookup is in flight, peers are told "looking"
        let (_, _, fl) = f.in_flight(PKG, env.now, None).unwrap();
        assert!(fl.unwrap().looking);
        decide(&mut f, &mut env, 1, vec![]);
        let tok = env.fetch_to("10.0.0.100:80").expect("the mirror");
        assert!(f.is_tee(tok));
        event(&mut f, &mut env, tok, head(200, 200_000));
        event(&mut f, &mut env, tok, body(&data[..60_000]));
        env.now += Duration::from_secs(1);
        let (size, sha, fl) = f.in_flight(PKG, env.now, None).unwrap();
        let fl = fl.expect("arriving");
        assert_eq!((size, fl.received, fl.looking), (200_000, 60_000, false));
        assert!(fl.rate > 0);
        assert_eq!(sha, env.index[PKG].sha256);
        let (len, growth) = f.growing(PKG).expect("the peer server may send it");
        assert_eq!(len, 200_000);
        // a second local request shares the copy instead of a second download
        ask(&mut f, &mut env, Token(2), PKG);
        for piece in data[60_000..].chunks(60_000) {
            event(&mut f, &mut env, tok, body(piece));
        }
        event(&mut f, &mut env, tok, fetch::Event::Done);
        let got: Vec<&str> = env
            .replies
            .iter()
            .filter(|r| r.0 == c)
            .map(|r| r.1.as_str())
            .collect();
        assert_eq!(
            got,
            [
                "stream 200",
                "body 60000",
                "body 60000",
                "body 60000",
                "body 20000",
                "end true"
            ]
        );
        staged(&mut f, &mut env);
        assert_eq!(env.files[&Token(2)], data, "the verified copy");
        assert_eq!(growth.written(), 200_000);
        assert!(!growth.failed());
        // verified and lingering: a lookup is told HAVE
        assert_eq!(f.in_flight(PKG, env.now, None).unwrap().2, None);
        assert_eq!(env.fetches_started, 1, "one upstream transfer");
        // kept for the LAN, not for a local request (pacman threw its own copy away): that
        // one is looked up afresh
        let lookups = env.lookups.len();
        ask(&mut f, &mut env, Token(3), PKG);
        assert_eq!(env.lookups.len(), lookups + 1);
        assert!(f.in_flight(PKG, env.now, None).unwrap().2.unwrap().looking);
        advance(&mut f, &mut env, READY_LINGER + Duration::from_secs(1));
        assert!(
            f.in_flight(PKG, env.now, None).is_none(),
            "gone after its linger"
        );
    }

    #[test]
    fn a_kept_copy_that_fails_its_hash_is_dropped_and_its_peers_cut() {
        let (mut f, mut env) = (Front::new(), Fake::new("teebad"));
        let mut data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![]);
        let tok = env.fetch_to("10.0.0.100:80").unwrap();
        let (_, growth) = f.growing(PKG).unwrap();
        data[100] ^= 1;
        event(&mut f, &mut env, tok, head(200, 5000));
        event(&mut f, &mut env, tok, body(&data));
        event(&mut f, &mut env, tok, fetch::Event::Done);
        staged(&mut f, &mut env);
        assert!(growth.failed(), "peers sent it are cut");
        assert!(
            f.in_flight(PKG, env.now, None).is_none(),
            "counts as nothing"
        );
        assert!(env.bans.is_empty() && env.strikes.is_empty());
        assert_eq!(
            env.last(Token(1)),
            "end true",
            "pacman got the mirror's bytes"
        );
    }

    #[test]
    fn a_kept_copy_whose_client_leaves_fails_and_an_https_mirror_is_not_kept() {
        let (mut f, mut env) = (Front::new(), Fake::new("teegone"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![]);
        let tok = env.fetch_to("10.0.0.100:80").unwrap();
        let (_, growth) = f.growing(PKG).unwrap();
        event(&mut f, &mut env, tok, head(200, 5000));
        event(&mut f, &mut env, tok, body(&data[..100]));
        f.forget(&mut env, Token(1));
        f.check(&env);
        assert!(growth.failed());
        assert!(f.growing(PKG).is_none());
        // https first: pacman fetches it itself, nothing is kept
        env.upstreams = vec!["https://mirror.example/core/os/x86_64".into()];
        ask(&mut f, &mut env, Token(3), PKG);
        decide(&mut f, &mut env, 2, vec![]);
        assert!(env.last(Token(3)).starts_with("bytes 307 https://"));
        assert!(f.growing(PKG).is_none());
    }

    #[test]
    fn a_lower_instance_asking_while_we_look_is_joined() {
        for (asker, joins) in [(PEER1, true), (0x9000, false)] {
            let (mut f, mut env) = (Front::new(), Fake::new("defer"));
            env.peers.insert(0x9000, "10.0.0.9:19432".parse().unwrap());
            package(&mut env, 5000);
            ask(&mut f, &mut env, Token(1), PKG);
            // its query reached us while ours was in flight; it saw us LOOKING and, being
            // lower, fetches; our own lookup then finds nothing (it had not started yet)
            let lower = (asker < env.instance).then_some(asker);
            let (_, _, fl) = f.in_flight(PKG, env.now, lower).unwrap();
            assert!(fl.unwrap().looking);
            decide(&mut f, &mut env, 1, vec![]);
            let peer = if asker == PEER1 {
                "10.0.0.1:19432"
            } else {
                "10.0.0.9:19432"
            };
            assert_eq!(env.fetch_to(peer).is_some(), joins, "{asker:#x}");
            assert_eq!(
                env.fetch_to("10.0.0.100:80").is_some(),
                !joins,
                "{asker:#x}"
            );
        }
    }

    #[test]
    fn keep_max_bounds_what_is_kept_for_the_lan() {
        let (mut f, mut env) = (Front::new(), Fake::new("keepmax"));
        package(&mut env, 5000);
        env.keep_max = 4999;
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![]);
        let tok = env.fetch_to("10.0.0.100:80").expect("upstream as before");
        assert!(!f.is_tee(tok), "not kept: over the bound");
        assert!(f.growing(PKG).is_none());
        env.keep_max = 5000;
        ask(&mut f, &mut env, Token(2), PKG);
        decide(&mut f, &mut env, 2, vec![]);
        assert!(f.growing(PKG).is_some(), "kept: within the bound");
    }

    #[test]
    fn a_copy_in_flight_is_joined_when_it_can_finish_in_time() {
        let (mut f, mut env) = (Front::new(), Fake::new("join"));
        let data = package(&mut env, 10_000_000);
        ask(&mut f, &mut env, Token(1), PKG);
        // PEER1 fetches it at 500 kB/s: 6 MB left take 12 s, within the budget
        decide(
            &mut f,
            &mut env,
            1,
            vec![arriving(PEER1, 10_000_000, 4_000_000, 500_000, false)],
        );
        let t = env.fetch_to("10.0.0.1:19432").expect("joined");
        assert!(env.fetch_to("10.0.0.100:80").is_none(), "no upstream");
        // it slows down for a while (its link is shared): a drip from an ordinary peer, but
        // a copy in flight is kept while bytes come
        event(&mut f, &mut env, t, head(200, 10_000_000));
        for i in 0..8 {
            event(&mut f, &mut env, t, body(&data[i * 1000..(i + 1) * 1000]));
            advance(&mut f, &mut env, Duration::from_millis(500));
        }
        assert!(env.strikes.is_empty(), "{:?}", env.strikes);
        assert!(env.fetches.contains_key(&t), "still joined");
        // then nothing at all for a whole window (3 s): a stall, as from any peer
        for _ in 0..12 {
            advance(&mut f, &mut env, Duration::from_millis(500));
        }
        assert_eq!(env.strikes.len(), 1);
        assert!(
            env.fetch_to("10.0.0.100:80").is_some(),
            "the rest from the mirror"
        );
    }

    #[test]
    fn a_copy_in_flight_too_slow_or_a_higher_instance_still_looking_is_not_joined() {
        for (c, why) in [
            (
                arriving(PEER1, 100_000_000, 50_000_000, 1_000_000, false),
                "50 s left",
            ),
            (
                arriving(PEER1, 100_000_000, 0, 0, true),
                "PEER1 < us: joined",
            ),
            (
                arriving(0x9000, 100_000_000, 0, 0, true),
                "0x9000 > us: we fetch",
            ),
        ] {
            let (mut f, mut env) = (Front::new(), Fake::new("nojoin"));
            env.peers.insert(0x9000, "10.0.0.9:19432".parse().unwrap());
            package(&mut env, 100_000_000);
            ask(&mut f, &mut env, Token(1), PKG);
            let lower = c.instance < env.instance && c.arriving.unwrap().looking;
            decide(&mut f, &mut env, 1, vec![c]);
            let upstream = env.fetch_to("10.0.0.100:80").is_some();
            assert_eq!(upstream, !lower, "{why}");
        }
    }

    #[test]
    fn a_package_waits_for_a_db_being_parsed_then_for_no_longer_than_its_deadline() {
        let (mut f, mut env) = (Front::new(), Fake::new("db"));
        env.loading = true;
        ask(&mut f, &mut env, Token(1), PKG);
        ask(&mut f, &mut env, Token(2), PKG);
        assert!(env.lookups.is_empty() && env.fetches.is_empty());
        assert_eq!(f.waiting(), 2);
        // the parse ends: the package is in the db now, both go to the LAN
        package(&mut env, 100);
        env.loading = false;
        f.on_dbs_loaded(&mut env);
        f.check(&env);
        assert_eq!(env.lookups.len(), 1, "one lookup for both");
        // a third request for another file, with the parse never ending: upstream at 3 s
        env.loading = true;
        ask(&mut f, &mut env, Token(3), "other-1-1-any.pkg.tar.zst");
        advance(&mut f, &mut env, Duration::from_millis(2900));
        assert_eq!(env.fetches.len(), 0);
        advance(&mut f, &mut env, Duration::from_millis(200));
        assert!(
            env.fetch_to("10.0.0.100:80").is_some(),
            "upstream after the wait"
        );
    }

    #[test]
    fn a_peer_dying_mid_copy_is_replaced_and_the_copy_resumes() {
        let (mut f, mut env) = (Front::new(), Fake::new("dies"));
        let data = package(&mut env, 5000);
        let c = Token(1);
        ask(&mut f, &mut env, c, PKG);
        decide(
            &mut f,
            &mut env,
            1,
            vec![cand(PEER1, 5000), cand(PEER2, 5000)],
        );
        let t1 = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t1, head(200, 5000));
        event(&mut f, &mut env, t1, body(&data[..2000]));
        event(&mut f, &mut env, t1, fetch::Event::Failed("reset".into()));
        assert!(env.bans.is_empty(), "dying is no lie");
        let t2 = env.fetch_to("10.0.0.2:19432").expect("the second peer");
        assert_eq!(
            env.fetches[&t2].headers,
            vec![("Range".to_string(), "bytes=2000-".to_string())]
        );
        event(&mut f, &mut env, t2, head_range(2000, 5000));
        event(&mut f, &mut env, t2, body(&data[2000..]));
        event(&mut f, &mut env, t2, fetch::Event::Done);
        staged(&mut f, &mut env);
        assert_eq!(env.files[&c], data);
        // dying is a strike (a bench), never a ban
        assert_eq!(env.strikes.len(), 1);
        assert_eq!(env.strikes[0].0, PEER1);
    }

    #[test]
    fn a_dripping_copy_is_struck_and_the_mirror_sends_the_rest_while_the_client_is_redirected() {
        let (mut f, mut env) = (Front::new(), Fake::new("drip"));
        let data = package(&mut env, 5000);
        let c1 = Token(1);
        ask(&mut f, &mut env, c1, PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t, head(200, 5000));
        event(&mut f, &mut env, t, body(&data[..10]));
        // 10 bytes in the first 3 s: a drip, struck; the mirror is asked for the rest
        advance(&mut f, &mut env, Duration::from_millis(2000));
        assert!(env.strikes.is_empty());
        advance(&mut f, &mut env, Duration::from_millis(1500));
        assert_eq!(env.strikes.len(), 1, "{:?}", env.strikes);
        assert!(env.bans.is_empty());
        assert!(!env.fetches.contains_key(&t), "the drip was stopped");
        let m = env.fetch_to("10.0.0.100:80").expect("the mirror");
        assert_eq!(
            env.fetches[&m].headers,
            vec![("Range".to_string(), "bytes=10-".to_string())]
        );
        // the client's clock: a redirect to itself while the rest arrives
        advance(&mut f, &mut env, transfer::REDIRECT_AFTER);
        assert_eq!(env.last(c1), format!("bytes 307 {}", pkg_path(PKG)));
        let c2 = Token(2);
        ask(&mut f, &mut env, c2, PKG);
        event(&mut f, &mut env, m, head_range(10, 5000));
        event(&mut f, &mut env, m, body(&data[10..]));
        event(&mut f, &mut env, m, fetch::Event::Done);
        staged(&mut f, &mut env);
        assert_eq!(env.files[&c2], data, "verified whole");
    }

    #[test]
    fn a_copy_that_never_progresses_is_struck_and_its_request_goes_upstream_early() {
        let (mut f, mut env) = (Front::new(), Fake::new("noprogress"));
        package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        // accepted, never answered: a stall after 3 s, not 7
        advance(&mut f, &mut env, Duration::from_millis(3500));
        assert_eq!(env.strikes.len(), 1);
        assert!(env.fetch_to("10.0.0.100:80").is_some(), "upstream");
        assert!(!env.fetches.contains_key(&t), "the stalled copy stopped");
        // the upstream answer feeds the copy now, for the LAN (a tee)
        let copies = f.copies(env.now);
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].received, 0);
        // benched: the next request for it does not ask PEER1 again
        ask(&mut f, &mut env, Token(2), PKG);
        decide(&mut f, &mut env, 2, vec![cand(PEER1, 5000)]);
        assert!(env.fetch_to("10.0.0.1:19432").is_none());
    }

    #[test]
    fn a_wrong_hash_bans_the_peer_and_is_never_handed_out() {
        let (mut f, mut env) = (Front::new(), Fake::new("hash"));
        let mut data = package(&mut env, 5000);
        let c = Token(1);
        ask(&mut f, &mut env, c, PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        data[100] ^= 1;
        deliver(&mut f, &mut env, t, &data);
        assert_eq!(env.bans.len(), 1);
        assert_eq!(env.bans[0].0, PEER1);
        assert_eq!(f.stats.rejected_copies, 1);
        assert!(!env.files.contains_key(&c));
        assert!(env.fetch_to("10.0.0.100:80").is_some(), "upstream instead");
    }

    /// A verified copy of PKG from PEER1, handed to client 1 (leaves a `.sig` hint).
    fn copied_from_peer1(f: &mut Front, env: &mut Fake) -> Vec<u8> {
        let data = package(env, 5000);
        ask(f, env, Token(1), PKG);
        decide(f, env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        deliver(f, env, t, &data);
        assert_eq!(env.files[&Token(1)], data);
        data
    }

    /// Delivers a `.sig` (no staging: it is held in memory).
    fn deliver_sig(front: &mut Front, env: &mut Fake, tok: Token, data: &[u8]) {
        event(front, env, tok, head(200, data.len() as u64));
        event(front, env, tok, body(data));
        event(front, env, tok, fetch::Event::Done);
    }

    const REAL_SIG: &[u8] = include_bytes!("../tests/data/sig/ed25519.sig");

    #[test]
    fn a_sig_comes_from_the_peer_only_if_it_says_so_now_and_only_checked() {
        // the db's own %PGPSIG% first: no lookup, no network
        let (mut f, mut env) = (Front::new(), Fake::new("sig-db"));
        ask(&mut f, &mut env, Token(9), "signed-1-1-any.pkg.tar.zst.sig");
        assert!(
            env.last(Token(9)).starts_with("bytes 200"),
            "{}",
            env.last(Token(9))
        );
        assert!(env.lookups.is_empty() && env.fetches.is_empty());
        let sig = format!("{PKG}.sig");
        // it says so, and sends a real signature: handed out, the mirror is not asked
        let (mut f, mut env) = (Front::new(), Fake::new("sig-ok"));
        copied_from_peer1(&mut f, &mut env);
        ask(&mut f, &mut env, Token(2), &sig);
        assert_eq!(
            env.lookups.last().unwrap().1,
            sig,
            "a lookup for this request"
        );
        decide(
            &mut f,
            &mut env,
            2,
            vec![cand(PEER1, REAL_SIG.len() as u64)],
        );
        let t = env.fetch_to("10.0.0.1:19432").expect("asked of the peer");
        assert_eq!(env.fetches[&t].url.path(), format!("/{sig}"));
        deliver_sig(&mut f, &mut env, t, REAL_SIG);
        assert!(
            env.last(Token(2)).starts_with("bytes 200"),
            "{}",
            env.last(Token(2))
        );
        assert!(env.fetch_to("10.0.0.100:80").is_none());
        // it does not answer (frozen, gone): upstream at once, no wait, nothing held
        let (mut f, mut env) = (Front::new(), Fake::new("sig-silent"));
        copied_from_peer1(&mut f, &mut env);
        ask(&mut f, &mut env, Token(2), &sig);
        decide(&mut f, &mut env, 2, vec![]);
        assert!(env.fetch_to("10.0.0.1:19432").is_none());
        assert!(env.fetch_to("10.0.0.100:80").is_some());
        assert!(env.strikes.is_empty() && env.bans.is_empty());
        // garbage, a redirect, or nothing within 2 s: a strike and upstream
        for how in ["garbage", "redirect", "late"] {
            let (mut f, mut env) = (Front::new(), Fake::new(&format!("sig-{how}")));
            copied_from_peer1(&mut f, &mut env);
            ask(&mut f, &mut env, Token(2), &sig);
            decide(&mut f, &mut env, 2, vec![cand(PEER1, 1000)]);
            let t = env.fetch_to("10.0.0.1:19432").unwrap();
            match how {
                "garbage" => deliver_sig(&mut f, &mut env, t, &[b'x'; 1000]),
                "redirect" => {
                    let fetch::Event::Head(mut h) = head(302, 0) else {
                        unreachable!()
                    };
                    h.location = Some("http://127.0.0.1:631/".into());
                    event(&mut f, &mut env, t, fetch::Event::Head(h));
                }
                _ => advance(&mut f, &mut env, crate::sig::SIG_DEADLINE),
            }
            assert_eq!(env.strikes.len(), 1, "{how}");
            assert!(env.bans.is_empty(), "{how}");
            assert!(env.fetch_to("10.0.0.100:80").is_some(), "{how}: upstream");
            assert!(
                env.fetch_to("127.0.0.1:631").is_none(),
                "{how}: followed a redirect"
            );
            assert!(
                !env.last(Token(2)).starts_with("bytes 200"),
                "{how}: handed out"
            );
        }
    }

    #[test]
    fn a_busy_peer_is_no_fault_and_a_mixed_copy_bans_no_one() {
        // 503: next peer, nothing held against it
        let (mut f, mut env) = (Front::new(), Fake::new("busy"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(
            &mut f,
            &mut env,
            1,
            vec![cand(PEER1, 5000), cand(PEER2, 5000)],
        );
        let t1 = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t1, head(503, 0));
        assert!(env.strikes.is_empty() && env.bans.is_empty());
        let t2 = env.fetch_to("10.0.0.2:19432").unwrap();
        deliver(&mut f, &mut env, t2, &data);
        assert_eq!(env.files[&Token(1)], data);

        // the resume trap: PEER1 sends a wrong first half and closes, PEER2 resumes
        let (mut f, mut env) = (Front::new(), Fake::new("trap"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(
            &mut f,
            &mut env,
            1,
            vec![cand(PEER1, 5000), cand(PEER2, 5000)],
        );
        let t1 = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t1, head(200, 5000));
        let lie: Vec<u8> = data[..2500].iter().map(|b| !b).collect();
        event(&mut f, &mut env, t1, body(&lie));
        event(
            &mut f,
            &mut env,
            t1,
            fetch::Event::Failed("connection closed".into()),
        );
        let t2 = env.fetch_to("10.0.0.2:19432").unwrap();
        event(&mut f, &mut env, t2, head_range(2500, 5000));
        event(&mut f, &mut env, t2, body(&data[2500..]));
        event(&mut f, &mut env, t2, fetch::Event::Done);
        staged(&mut f, &mut env);
        assert!(
            env.bans.is_empty(),
            "banned on a mixed copy: {:?}",
            env.bans
        );
        assert_eq!(env.strikes.len(), 1, "the early close");
        assert_eq!(env.strikes[0].0, PEER1);
        // it starts again from one source: PEER2, whole (PEER1 is benched)
        let t3 = env.fetch_to("10.0.0.2:19432").expect("again from PEER2");
        assert!(env.fetches[&t3].headers.is_empty(), "from the start");
        deliver(&mut f, &mut env, t3, &data);
        assert_eq!(env.files[&Token(1)], data);
        assert!(env.bans.is_empty());
    }

    #[test]
    fn a_peer_killed_half_way_leaves_only_the_rest_to_the_mirror() {
        let (mut f, mut env) = (Front::new(), Fake::new("killed"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t, head(200, 5000));
        event(&mut f, &mut env, t, body(&data[..3000]));
        event(
            &mut f,
            &mut env,
            t,
            fetch::Event::Failed("read: reset".into()),
        );
        let m = env.fetch_to("10.0.0.100:80").expect("the mirror");
        assert_eq!(env.fetches[&m].url.path(), format!("/core/os/x86_64/{PKG}"));
        assert_eq!(
            env.fetches[&m].headers,
            vec![("Range".to_string(), "bytes=3000-".to_string())]
        );
        // a mirror that ignores Range: the whole file replaces what was staged
        deliver(&mut f, &mut env, m, &data);
        assert_eq!(env.files[&Token(1)], data);
    }

    #[test]
    fn an_upstream_naming_the_front_is_refused_and_names_are_encoded_once() {
        let (mut f, mut env) = (Front::new(), Fake::new("loop"));
        env.upstreams = vec![
            "http://127.0.0.1:19433/core/os/x86_64".into(),
            MIRROR.into(),
        ];
        ask(&mut f, &mut env, Token(1), "a%3Fb-1-1-any.pkg.tar.zst");
        assert!(env.fetch_to("127.0.0.1:19433").is_none(), "called itself");
        let m = env.fetch_to("10.0.0.100:80").unwrap();
        assert_eq!(
            env.fetches[&m].url.path(),
            "/core/os/x86_64/a%3Fb-1-1-any.pkg.tar.zst"
        );
        // a redirect to the front: 502, not a loop
        let fetch::Event::Head(mut h) = head(302, 0) else {
            unreachable!()
        };
        h.location = Some("http://127.0.0.1:19433/core/os/x86_64/x".into());
        event(&mut f, &mut env, m, fetch::Event::Head(h));
        assert_eq!(env.last(Token(1)), "error 502");
    }

    #[test]
    fn the_mirror_is_asked_for_the_names_pacman_asked_for_decoded_once() {
        // pacman asked for arch `x%41` and file `a%25b...` (sent escaped, as `%25`): the mirror
        // must be asked for exactly those, not `xA` and `a%b...` (decoded a second time)
        let target = "/core/os/x%2541/a%2525b-1-1-any.pkg.tar.zst";
        let (mut f, mut env) = (Front::new(), Fake::new("once"));
        env.upstreams = vec!["http://10.0.0.100/$repo/os/$arch/".into()];
        f.on_request(&mut env, Token(1), 1, request(target));
        f.check(&env);
        let m = env.fetch_to("10.0.0.100:80").expect("the mirror");
        assert_eq!(env.fetches[&m].url.path(), target);
        let decoded: Vec<String> = (target.split('/').skip(1))
            .map(|s| crate::http::request::percent_decode(s).unwrap())
            .collect();
        assert_eq!(decoded, ["core", "os", "x%41", "a%25b-1-1-any.pkg.tar.zst"]);
        // an https mirror: pacman is sent to the same names
        env.upstreams = vec!["https://M.example:443/$repo/os/$arch".into()];
        f.on_request(&mut env, Token(2), 1, request(target));
        f.check(&env);
        assert_eq!(
            env.last(Token(2)),
            format!("bytes 307 https://m.example{target}")
        );
    }

    #[test]
    fn a_mirror_s_redirects_are_joined_to_the_url_that_answered() {
        let (mut f, mut env) = (Front::new(), Fake::new("redir"));
        env.upstreams = vec![MIRROR.into()];
        let redirect = |f: &mut Front, env: &mut Fake, m: Token, loc: &str| {
            let fetch::Event::Head(mut h) = head(302, 0) else {
                unreachable!()
            };
            h.location = Some(loc.into());
            event(f, env, m, fetch::Event::Head(h));
        };
        ask(&mut f, &mut env, Token(1), "core.db");
        let m = env.fetch_to("10.0.0.100:80").unwrap();
        assert_eq!(env.fetches[&m].url.path(), "/core/os/x86_64/core.db");
        redirect(&mut f, &mut env, m, "../../pool/./core.db?sig=1#x");
        let m2 = env.fetch_to("10.0.0.100:80").unwrap();
        assert_ne!(m2, m);
        assert_eq!(env.fetches[&m2].url.path(), "/core/pool/core.db?sig=1");
        assert_eq!(env.fetches[&m2].url.host_header(), "10.0.0.100");
        // to another host by a network-path reference: its port goes in Host
        redirect(&mut f, &mut env, m2, "//10.0.0.101:8080/c/core.db");
        let m3 = env.fetch_to("10.0.0.101:8080").unwrap();
        assert_eq!(env.fetches[&m3].url.host_header(), "10.0.0.101:8080");
        assert_eq!(env.fetches[&m3].url.path(), "/c/core.db");
        // to https: pacman goes there itself
        redirect(&mut f, &mut env, m3, "HTTPS://Cdn.example/c/core.db");
        assert_eq!(
            env.last(Token(1)),
            "bytes 307 https://cdn.example/c/core.db"
        );
        assert!(env.fetches.is_empty());
        // another scheme, or userinfo, is no source at all
        for (t, loc) in [
            (Token(2), "ftp://10.0.0.100/core.db"),
            (Token(3), "http://u@h/x"),
        ] {
            ask(&mut f, &mut env, t, "core.db");
            let m = env.fetch_to("10.0.0.100:80").unwrap();
            redirect(&mut f, &mut env, m, loc);
            assert!(env.fetches.is_empty(), "{loc}");
            assert_eq!(env.last(t), "error 502", "{loc}");
        }
    }

    #[test]
    fn two_requests_for_one_file_share_one_lookup_and_one_copy() {
        let (mut f, mut env) = (Front::new(), Fake::new("two"));
        let data = package(&mut env, 5000);
        let (c1, c2) = (Token(1), Token(2));
        ask(&mut f, &mut env, c1, PKG);
        ask(&mut f, &mut env, c2, PKG);
        assert_eq!(env.lookups.len(), 1);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        assert_eq!(env.fetches.len(), 1);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        deliver(&mut f, &mut env, t, &data);
        assert_eq!(env.files[&c1], data);
        assert_eq!(env.files[&c2], data);
        assert_eq!(env.fetches_started, 1);
    }

    #[test]
    fn our_own_disk_failing_sends_the_waiters_upstream_and_bans_nobody() {
        let (mut f, mut env) = (Front::new(), Fake::new("disk"));
        let data = package(&mut env, 5000);
        std::fs::remove_dir_all(&env.staging).unwrap();
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t, head(200, 5000));
        event(&mut f, &mut env, t, body(&data[..100]));
        staged(&mut f, &mut env);
        assert!(env.bans.is_empty());
        assert!(env.fetch_to("10.0.0.1:19432").is_none(), "the copy stopped");
        assert!(env.fetch_to("10.0.0.100:80").is_some(), "upstream instead");
    }

    #[test]
    fn a_request_while_the_copy_is_being_verified_joins_it() {
        let (mut f, mut env) = (Front::new(), Fake::new("verifying"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        event(&mut f, &mut env, t, head(200, 5000));
        event(&mut f, &mut env, t, body(&data));
        event(&mut f, &mut env, t, fetch::Event::Done);
        assert_eq!(f.copies(env.now)[0].phase, Phase::Verifying);
        ask(&mut f, &mut env, Token(2), PKG);
        assert_eq!((env.lookups.len(), env.fetches_started), (1, 1));
        staged(&mut f, &mut env);
        assert_eq!(env.files[&Token(1)], data);
        assert_eq!(env.files[&Token(2)], data);
    }

    #[test]
    fn a_request_just_after_the_hand_out_gets_the_same_copy() {
        let (mut f, mut env) = (Front::new(), Fake::new("after"));
        let data = package(&mut env, 5000);
        ask(&mut f, &mut env, Token(1), PKG);
        decide(&mut f, &mut env, 1, vec![cand(PEER1, 5000)]);
        let t = env.fetch_to("10.0.0.1:19432").unwrap();
        deliver(&mut f, &mut env, t, &data);
        advance(&mut f, &mut env, Duration::from_millis(5));
        let c = Token(2);
        ask(&mut f, &mut env, c, PKG);
        assert_eq!(env.files[&c], data, "answered at once");
        assert_eq!((env.lookups.len(), env.fetches_started), (1, 1));
        // with a Range too
        let mut r = request(&pkg_path(PKG));
        r.range = Some("bytes=4990-".into());
        f.on_request(&mut env, Token(3), 1, r);
        assert_eq!(env.last(Token(3)), "file 206 10");
        // once the linger is over, a new request asks the LAN again
        advance(&mut f, &mut env, READY_LINGER);
        assert_eq!(f.copies(env.now).len(), 0);
        ask(&mut f, &mut env, Token(4), PKG);
        assert_eq!(env.lookups.len(), 2);
    }

    #[test]
    fn a_slow_name_gives_way_to_the_next_source_and_every_address_is_tried() {
        let (mut f, mut env) = (Front::new(), Fake::new("dns"));
        env.upstreams = vec![
            "http://slow.example/core/os/x86_64".into(),
            "http://two.example/core/os/x86_64".into(),
        ];
        let c = Token(1);
        ask(&mut f, &mut env, c, "core.db");
        assert_eq!(env.resolving.len(), 1);
        assert!(env.fetches.is_empty());
        advance(&mut f, &mut env, DNS_WAIT_MAX);
        assert_eq!(env.resolving.len(), 2, "the next name");
        // the slow answer comes late: ignored
        let (id1, id2) = (env.resolving[0].0, env.resolving[1].0);
        let late = vec!["10.0.0.50:80".parse().unwrap()];
        f.on_resolved(&mut env, id1, Ok(late));
        f.check(&env);
        assert!(env.fetches.is_empty());
        // two addresses: the first refuses to connect, the second fails before its head,
        // the third answers
        let a: Vec<SocketAddr> = ["10.0.0.7:80", "10.0.0.8:80", "10.0.0.9:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        env.refused.push(a[0]);
        f.on_resolved(&mut env, id2, Ok(a.clone()));
        f.check(&env);
        let t8 = env.fetch_to("10.0.0.8:80").expect("second address");
        assert_eq!(env.fetches[&t8].url.host_header(), "two.example");
        event(&mut f, &mut env, t8, fetch::Event::Failed("refused".into()));
        let t9 = env.fetch_to("10.0.0.9:80").expect("third address");
        event(&mut f, &mut env, t9, head(200, 0));
        assert_eq!(env.last(c), "end true");
    }

    #[test]
    fn an_upstream_416_keeps_its_content_range() {
        let mut h = http::ResponseInfo {
            status: 416,
            content_length: Some(0),
            chunked: false,
            location: None,
            content_range: None,
            unsatisfied_length: Some(1234),
            last_modified: None,
            keep_alive: true,
            head_len: 0,
            headers_extra: Vec::new(),
        };
        let (headers, len) = relayed_head(&h);
        assert_eq!(len, Some(0));
        assert!(headers.contains(&("Content-Range".into(), "bytes */1234".into())));
        h.status = 206;
        h.content_range = Some((0, 9, Some(20)));
        h.content_length = Some(10);
        let (headers, len) = relayed_head(&h);
        assert_eq!(len, Some(10));
        assert!(headers.contains(&("Content-Range".into(), "bytes 0-9/20".into())));
    }

    #[test]
    fn a_client_gone_in_any_wait_leaves_nothing_behind() {
        let (mut f, mut env) = (Front::new(), Fake::new("gone"));
        package(&mut env, 5000);
        env.upstreams = vec![
            "http://name.example/core/os/x86_64".into(),
            MIRROR.to_string(),
        ];
        // Db
        env.loading = true;
        ask(&mut f, &mut env, Token(1), "notyet-1-1-any.pkg.tar.zst");
        env.loading = false;
        // Lookup (the debug endpoint)
        f.on_request(
            &mut env,
            Token(2),
            1,
            request("/.flocon/lookup/x.pkg.tar.zst"),
        );
        // Copy
        ask(&mut f, &mut env, Token(3), PKG);
        // Dns
        ask(&mut f, &mut env, Token(4), "core.db");
        // Upstream: name.example resolved, its fetch streaming
        env.dns_cache
            .insert("name.example".into(), vec!["10.0.0.60:80".parse().unwrap()]);
        ask(&mut f, &mut env, Token(5), "extra.db");
        let t5 = env.fetch_to("10.0.0.60:80").unwrap();
        event(&mut f, &mut env, t5, head(200, 100));
        let kinds: Vec<&str> = (1..=5)
            .map(|i| match f.requests[&Token(i)].wait {
                Wait::Db { .. } => "db",
                Wait::Lookup { .. } => "lookup",
                Wait::Copy { .. } => "copy",
                Wait::Dns { .. } => "dns",
                Wait::Upstream { .. } => "upstream",
                Wait::SigLookup { .. } | Wait::Sig { .. } => "sig",
            })
            .collect();
        assert_eq!(kinds, ["db", "lookup", "copy", "dns", "upstream"]);
        for i in 1..=5 {
            f.forget(&mut env, Token(i));
            f.check(&env);
        }
        assert_eq!(f.waiting(), 0);
        assert!(
            env.fetch_to("10.0.0.60:80").is_none(),
            "the proxy fetch stopped"
        );
        assert_eq!(env.timers.len(), 0, "every deadline cancelled");
        // what arrives later for them is dropped quietly
        f.on_decided(&mut env, 1, vec![], 0, 0);
        let (id, _) = env.resolving[0];
        f.on_resolved(&mut env, id, Ok(vec!["10.0.0.61:80".parse().unwrap()]));
        f.on_fetch_event(&mut env, t5, fetch::Event::Done);
        f.check(&env);
        assert!(env.replies.iter().all(|(t, _)| *t == Token(5)));
        // the shared copy went on without its client; the LAN has nothing: it ends, and
        // nobody is sent upstream
        assert_eq!(f.copies(env.now).len(), 1);
        decide(&mut f, &mut env, 2, vec![]);
        assert_eq!(f.copies(env.now).len(), 0);
        assert!(env.fetches.is_empty());
    }
}
