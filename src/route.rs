//! What each request to the loopback front gets (SPEC §4), and the fetches that feed it:
//! a package listed in the local sync db comes from a verified peer copy (transfer.rs) or
//! upstream; its `.sig` from the peer that had the package, else upstream; everything else
//! upstream only. Upstream `http://` is proxied (streamed, Range and If-Modified-Since passed
//! through, redirects followed); `https://` gets a 307 so pacman's own TLS does the work.

use crate::daemon::{Daemon, FetchSlot, Purpose, Slot, Timer};
use crate::discovery::{Decided, DiscoveryEvent};
use crate::fetch::{self, Fetch};
use crate::http::{self, FileKind, Method, RangeOutcome, Request};
use crate::stager;
use crate::transfer::{self, Phase, Transfer, Verdict};
use mio::{Interest, Token};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Concurrent front connections. pacman holds up to ParallelDownloads (default 5) per host;
/// a few local tools on top are still far below this.
pub const MAX_CONNECTIONS: usize = 256;
/// pacman keeps connections alive between the files of one transaction, then drops them.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Redirects followed for one upstream request (pacman itself allows 10; mirrors use 1-2).
const MAX_UPSTREAM_REDIRECTS: u32 = 5;
/// Recent "this peer had that package" records, for fetching the `.sig` from the same peer.
pub const MAX_SIG_HINTS: usize = 256;
/// A hint older than this is not trusted (the peer may have cleaned its cache).
const SIG_HINT_TTL: Duration = Duration::from_secs(600);
/// Longest a package request waits for a sync db being parsed before going upstream.
const DB_WAIT_MAX: Duration = Duration::from_secs(3);
/// Mirror addresses are reused this long before asking the resolver again.
const DNS_CACHE_TTL: Duration = Duration::from_secs(60);
/// Distinct mirror host names remembered; a pacman.conf lists a handful.
const MAX_DNS_CACHE: usize = 64;

/// Where a proxied answer can come from, tried in order.
#[derive(Debug, Clone)]
pub enum Source {
    /// A LAN peer's file server (only for `.sig` files).
    Peer(SocketAddr, String),
    /// An upstream mirror URL (http:// proxied, https:// redirected).
    Url(String),
}

/// A front request being answered from a list of sources.
pub struct Proxy {
    pub client: Token,
    pub method: Method,
    pub sources: VecDeque<Source>,
    pub range: Option<String>,
    pub if_modified_since: Option<String>,
    pub redirects: u32,
    /// The head went to the client: any failure now must cut the connection.
    pub answered: bool,
    /// Status of the last source that answered with an error, passed on if none succeeds.
    pub last_status: Option<u16>,
    pub label: String,
    /// The URL now being fetched (for relative redirects).
    pub current: String,
}

/// What a front connection is waiting for, so events can find it.
pub enum Waiting {
    /// A sync db is being parsed; the request is dispatched again when it is in.
    Db,
    Transfer(String),
    Lookup(u32),
    Proxy(Token),
    Resolve(u64),
}

impl Daemon {
    pub(crate) fn on_front_request(&mut self, t: Token, req: Request) {
        let path = req.target.split('?').next().unwrap_or("").to_string();
        let page = match path.as_str() {
            "/.flocon/status" => Some((self.status_text(), "text/plain; charset=utf-8")),
            "/.flocon/status.json" => Some((self.status_json(), "application/json")),
            _ => None,
        };
        if let Some((body, content_type)) = page {
            return self.answer(t, 200, &[("Content-Type", content_type)], body.as_bytes());
        }
        if let Some(name) = path.strip_prefix("/.flocon/lookup/") {
            return self.debug_lookup(t, name, &req);
        }
        let (repo, arch, file) = match http::front_path(&path) {
            Ok(x) => x,
            Err(e) => return self.answer_error(t, e.status()),
        };
        let kind = http::classify(&file);
        debug!(
            "{} /{repo}/os/{arch}/{file} ({kind:?})",
            req.method.as_str()
        );
        match kind {
            FileKind::Package => {
                if let Some(info) = self.index.lookup(&repo, &file) {
                    return self.serve_from_lan(t, &req, &repo, &arch, &file, info);
                }
                // pacman may have just replaced the db (`pacman -Syu` asks for packages the
                // moment the new db is in place): if a db changed, wait for its parse
                if !self.waiting_for_db.contains(&t) {
                    self.check_dbs();
                    if !self.dbload.in_flight.is_empty() {
                        debug!("{file}: not indexed yet; waiting for the sync db being read");
                        self.waiting.insert(t, Waiting::Db);
                        self.waiting_for_db.push(t);
                        self.requests.insert(t, req);
                        let n = self.request_number(t).unwrap_or(0);
                        self.timers.at(self.now + DB_WAIT_MAX, Timer::DbWait(t, n));
                        return;
                    }
                }
                self.serve_upstream(t, &req, &repo, &arch, &file, Vec::new());
            }
            FileKind::PackageSig => {
                let pkg = file.trim_end_matches(".sig");
                let mut first = Vec::new();
                // the peer that just served the package, if it is still there
                if let Some((instance, addr, when)) = self.sig_hints.get(pkg)
                    && self.now.duration_since(*when) < SIG_HINT_TTL
                    && self.discovery.peers.get(*instance).is_some()
                    && !self.discovery.is_banned(*instance, self.now)
                {
                    first.push(Source::Peer(*addr, format!("/{file}")));
                }
                self.serve_upstream(t, &req, &repo, &arch, &file, first);
            }
            // databases never come from peers: a peer's db can be stale (rollback)
            FileKind::Database | FileKind::DatabaseSig => {
                self.serve_upstream(t, &req, &repo, &arch, &file, Vec::new())
            }
            FileKind::Other => self.answer_error(t, 404),
        }
    }

    /// Answers a front request (now or later: the connection is queued to be driven).
    fn answer(&mut self, t: Token, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        if let Some(Slot::Front(c)) = self.slots.get_mut(t) {
            c.answer_bytes(status, headers, body);
            self.ready.push_back(t);
        }
        self.waiting.remove(&t);
    }

    fn answer_error(&mut self, t: Token, status: u16) {
        if let Some(Slot::Front(c)) = self.slots.get_mut(t) {
            c.answer_error(status);
            self.ready.push_back(t);
        }
        self.waiting.remove(&t);
    }

    /// `/.flocon/lookup/<name>[?size=N]`: one lookup, answered with what it decided. For
    /// tests and the benchmark; loopback only like everything on the front.
    fn debug_lookup(&mut self, t: Token, name: &str, req: &Request) {
        if !http::is_safe_name(name) {
            return self.answer_error(t, 400);
        }
        let size = req
            .target
            .split_once("?size=")
            .and_then(|(_, s)| s.parse::<u64>().ok());
        let mut events = Vec::new();
        let budget = self.cfg.lookup_budget;
        match self.discovery.start_lookup(
            name,
            size.map(|s| (s, None)),
            budget,
            self.now,
            &mut events,
        ) {
            Some(id) => {
                self.waiting.insert(t, Waiting::Lookup(id));
                self.debug_lookups.insert(id, (t, self.now));
                self.timers.at(self.now + budget, Timer::Lookup(id));
                self.on_discovery_events(events);
            }
            None => self.answer_error(t, 503),
        }
    }

    fn serve_from_lan(
        &mut self,
        t: Token,
        req: &Request,
        repo: &str,
        arch: &str,
        file: &str,
        info: crate::syncdb::PkgInfo,
    ) {
        if req.method == Method::Head {
            // a HEAD needs no bytes: answer from the db's size without asking anyone
            let len = info.size.to_string();
            if let Some(Slot::Front(c)) = self.slots.get_mut(t) {
                c.answer_stream(
                    200,
                    &[("Content-Length", &len), ("Accept-Ranges", "bytes")],
                    Some(0),
                );
                c.end_stream(true);
            }
            return;
        }
        if let Some(tr) = self.transfers.get_mut(file) {
            match tr.phase {
                Phase::Ready => {
                    self.waiting.insert(t, Waiting::Transfer(file.to_string()));
                    self.requests.insert(t, req.clone());
                    self.hand_out(file);
                    return;
                }
                Phase::Looking | Phase::Fetching | Phase::Verifying => {
                    // another request for a file on its way: share the transfer
                    self.waiting.insert(t, Waiting::Transfer(file.to_string()));
                    self.requests.insert(t, req.clone());
                    self.timers.at(
                        self.now + transfer::REDIRECT_AFTER,
                        Timer::Redirect(t, self.request_number(t).unwrap_or(0)),
                    );
                    return;
                }
            }
        }
        let staged: u64 = self
            .transfers
            .values()
            .map(|t| t.expected.size)
            .fold(0, u64::saturating_add);
        // without a SHA-256 in the db a copy could only be checked by size: not enough
        if info.sha256.is_none()
            || staged.saturating_add(info.size) > transfer::MAX_STAGED_BYTES
            || self.discovery.peers.is_empty()
        {
            return self.serve_upstream(t, req, repo, arch, file, Vec::new());
        }
        self.serial += 1;
        let mut tr = Transfer::new(
            file,
            repo,
            arch,
            info,
            &self.stager.handle(),
            self.serial,
            self.now,
        );
        let mut events = Vec::new();
        let budget = self.cfg.lookup_budget;
        let Some(id) = self.discovery.start_lookup(
            file,
            Some((info.size, info.sha256)),
            budget,
            self.now,
            &mut events,
        ) else {
            return self.serve_upstream(t, req, repo, arch, file, Vec::new());
        };
        tr.lookup = Some(id);
        self.lookup_owner.insert(id, file.to_string());
        self.transfers.insert(file.to_string(), tr);
        self.waiting.insert(t, Waiting::Transfer(file.to_string()));
        self.requests.insert(t, req.clone());
        self.timers.at(self.now + budget, Timer::Lookup(id));
        self.timers.at(
            self.now + transfer::REDIRECT_AFTER,
            Timer::Redirect(t, self.request_number(t).unwrap_or(0)),
        );
        self.on_discovery_events(events);
    }

    pub(crate) fn on_discovery_events(&mut self, events: Vec<DiscoveryEvent>) {
        for ev in events {
            match ev {
                DiscoveryEvent::PeerUp => self.on_peer_up(),
                DiscoveryEvent::Decided(d) => self.on_lookup_decided(d),
            }
        }
    }

    fn on_lookup_decided(&mut self, d: Decided) {
        if let Some((t, started)) = self.debug_lookups.remove(&d.id) {
            let micros = self.now.duration_since(started).as_micros();
            let mut body = format!(
                "{{\"asked\":{},\"answered\":{},\"micros\":{},\"have\":[",
                d.asked, d.answered, micros
            );
            for (i, c) in d.candidates.iter().enumerate() {
                let name = self
                    .discovery
                    .peers
                    .get(c.instance)
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                body.push_str(&format!(
                    "{}{{\"peer\":{},\"size\":{},\"uploads\":{}}}",
                    if i > 0 { "," } else { "" },
                    crate::daemon::json_str(&name),
                    c.size,
                    c.uploads
                ));
            }
            body.push_str("]}\n");
            self.answer(
                t,
                200,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            );
            return;
        }
        let Some(file) = self.lookup_owner.remove(&d.id) else {
            return;
        };
        let Some(tr) = self.transfers.get_mut(&file) else {
            return;
        };
        tr.lookup = None;
        for c in d.candidates {
            if let Some(p) = self.discovery.peers.get(c.instance) {
                tr.candidates.push_back((c, p.tcp_addr()));
            }
        }
        debug!(
            "lookup for {file}: {} asked, {} answered, {} have it",
            d.asked,
            d.answered,
            tr.candidates.len()
        );
        self.next_peer(&file);
    }

    /// Starts the copy from the next candidate peer, or gives up on the LAN.
    fn next_peer(&mut self, file: &str) {
        loop {
            let Some(tr) = self.transfers.get_mut(file) else {
                return;
            };
            let next = if tr.attempts < transfer::MAX_PEER_ATTEMPTS {
                tr.candidates.pop_front()
            } else {
                None
            };
            let Some((cand, addr)) = next else {
                debug!("{file}: no peer can deliver; upstream");
                return self.transfer_failed(file);
            };
            if self.discovery.is_banned(cand.instance, self.now) {
                continue;
            }
            let resume = tr.received;
            tr.begin_source(cand.instance, addr, self.now);
            let mut headers = Vec::new();
            if resume > 0 {
                headers.push(("Range".to_string(), format!("bytes={resume}-")));
            }
            headers.extend(self.discovery.auth_header("GET", &format!("/{file}")));
            let req = fetch::Request {
                method: Method::Get,
                addr,
                host_header: addr.to_string(),
                path: format!("/{file}"),
                headers,
            };
            match Fetch::connect(req, self.now) {
                Ok(f) => {
                    info!(
                        "fetching {file} from peer {addr}{}",
                        if resume > 0 {
                            format!(" (from byte {resume})")
                        } else {
                            String::new()
                        }
                    );
                    let purpose = Purpose::PeerCopy {
                        file: file.to_string(),
                        instance: cand.instance,
                        resume,
                    };
                    match self.add_fetch(f, purpose) {
                        Some(tok) => self.drive_fetch(tok),
                        // no slot for it: this copy cannot happen, the waiters go upstream
                        None => self.transfer_failed(file),
                    }
                    return;
                }
                Err(e) => debug!("connect {addr}: {e}"),
            }
        }
    }

    pub(crate) fn add_fetch(&mut self, f: Fetch, purpose: Purpose) -> Option<Token> {
        let tok = self
            .slots
            .insert_with(|_| Slot::Fetch(Box::new(FetchSlot { fetch: f, purpose })))?;
        if let Some(Slot::Fetch(fs)) = self.slots.get_mut(tok)
            && self
                .poll
                .registry()
                .register(
                    &mut fs.fetch.stream,
                    tok,
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
        {
            self.slots.remove(tok);
            return None;
        }
        // not driven here: the caller first records who waits for it, then drives it (a
        // first drive can already fail and move on to another source)
        Some(tok)
    }

    /// The LAN cannot deliver this file: the transfer ends and every waiter goes upstream.
    fn transfer_failed(&mut self, file: &str) {
        let waiters: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, w)| matches!(w, Waiting::Transfer(f) if f == file))
            .map(|(t, _)| *t)
            .collect();
        let (repo, arch) = match self.transfers.get(file) {
            Some(tr) => (tr.repo.clone(), tr.arch.clone()),
            None => return,
        };
        self.transfers.remove(file);
        for t in waiters {
            self.waiting.remove(&t);
            let req = self
                .requests
                .remove(&t)
                .unwrap_or_else(|| synthetic_get(&repo, &arch, file));
            self.serve_upstream(t, &req, &repo, &arch, file, Vec::new());
        }
    }

    /// A verified copy is ready: every waiter gets it (with its own Range).
    fn hand_out(&mut self, file: &str) {
        let Some(tr) = self.transfers.get(file) else {
            return;
        };
        let len = tr.expected.size;
        let waiters: Vec<Token> = self
            .waiting
            .iter()
            .filter(|(_, w)| matches!(w, Waiting::Transfer(f) if f == file))
            .map(|(t, _)| *t)
            .collect();
        for t in waiters {
            self.waiting.remove(&t);
            let req = self.requests.remove(&t);
            let range = req.as_ref().and_then(|r| r.range.clone());
            let Some(f) = self.transfers.get(file).and_then(|tr| tr.open_copy()) else {
                self.answer_error(t, 503);
                continue;
            };
            let lm = http::http_date(UNIX_EPOCH + Duration::from_secs(crate::server::unix_now()));
            let Some(Slot::Front(c)) = self.slots.get_mut(t) else {
                continue;
            };
            match http::resolve_range(range.as_deref(), len) {
                RangeOutcome::Full => {
                    let l = len.to_string();
                    c.answer_file(
                        200,
                        &[
                            ("Content-Length", &l),
                            ("Accept-Ranges", "bytes"),
                            ("Last-Modified", &lm),
                        ],
                        f,
                        0,
                        len,
                    );
                }
                RangeOutcome::Partial { start, end } => {
                    let l = (end + 1 - start).to_string();
                    let cr = http::content_range(start, end, len);
                    c.answer_file(
                        206,
                        &[
                            ("Content-Length", &l),
                            ("Content-Range", &cr),
                            ("Accept-Ranges", "bytes"),
                        ],
                        f,
                        start,
                        end + 1,
                    );
                }
                RangeOutcome::Unsatisfiable => {
                    let cr = http::content_range_unsatisfied(len);
                    c.answer_bytes(416, &[("Content-Range", &cr)], b"");
                }
            }
            self.ready.push_back(t);
        }
        // the open files keep the bytes; the name can go as soon as nobody waits
        if let Some(tr) = self.transfers.get(file)
            && tr.phase == Phase::Ready
        {
            self.transfers.remove(file);
        }
    }

    /// Sync dbs were (re)loaded, or a request waited DB_WAIT_MAX: dispatch the requests that
    /// waited for them again (`only`: just that one). They will not wait a second time.
    pub(crate) fn redispatch_db_waiters(&mut self, only: Option<Token>) {
        let ready: Vec<Token> = match only {
            Some(t) if self.waiting_for_db.contains(&t) => vec![t],
            Some(_) => return,
            None if self.dbload.in_flight.is_empty() => std::mem::take(&mut self.waiting_for_db),
            None => return,
        };
        for t in ready {
            if !matches!(self.waiting.remove(&t), Some(Waiting::Db)) {
                continue;
            }
            if let Some(req) = self.requests.remove(&t) {
                self.on_front_request(t, req);
            }
            self.waiting_for_db.retain(|w| *w != t);
            self.ready.push_back(t);
        }
    }

    /// A front request has waited REDIRECT_AFTER for its verified copy: send it round again
    /// (pacman's 10 s no-progress clock restarts) while the copy can still finish in time,
    /// else upstream.
    pub(crate) fn on_redirect_timer(&mut self, t: Token) {
        let Some(Waiting::Transfer(file)) = self.waiting.get(&t) else {
            return;
        };
        let file = file.clone();
        let Some(tr) = self.transfers.get_mut(&file) else {
            return;
        };
        if tr.phase == Phase::Ready {
            return;
        }
        let progressing = matches!(tr.phase, Phase::Fetching | Phase::Verifying) && tr.received > 0;
        if progressing && tr.redirect_rounds < transfer::MAX_REDIRECT_ROUNDS {
            tr.redirect_rounds += 1;
            let loc = match self.requests.get(&t) {
                Some(r) => r.target.clone(),
                None => format!("/{}/os/{}/{}", tr.repo, tr.arch, file),
            };
            info!(
                "{file}: {} of {} bytes staged; redirecting the client to itself (pacman's 10 s clock)",
                tr.received, tr.expected.size
            );
            self.requests.remove(&t);
            self.answer(t, 307, &[("Location", &loc), ("Retry-After", "0")], b"");
            self.ready.push_back(t);
            return;
        }
        // no progress from the LAN: this request goes upstream, the copy may still finish
        let (repo, arch) = (tr.repo.clone(), tr.arch.clone());
        self.waiting.remove(&t);
        let req = self
            .requests
            .remove(&t)
            .unwrap_or_else(|| synthetic_get(&repo, &arch, &file));
        self.serve_upstream(t, &req, &repo, &arch, &file, Vec::new());
    }

    /// Answers from the sources: `first` (peers) then the repo's upstreams.
    fn serve_upstream(
        &mut self,
        t: Token,
        req: &Request,
        repo: &str,
        arch: &str,
        file: &str,
        first: Vec<Source>,
    ) {
        let mut sources: VecDeque<Source> = first.into();
        if let Some(r) = self.cfg.repos.iter().find(|r| r.name == repo) {
            for url in r.upstreams(arch, self.cfg.front_port()) {
                sources.push_back(Source::Url(format!(
                    "{}/{}",
                    url.trim_end_matches('/'),
                    file
                )));
            }
        }
        if sources.is_empty() {
            return self.answer_error(t, 404);
        }
        let p = Proxy {
            client: t,
            method: req.method,
            sources,
            range: req.range.clone(),
            if_modified_since: req.if_modified_since.clone(),
            redirects: 0,
            answered: false,
            last_status: None,
            label: file.to_string(),
            current: String::new(),
        };
        self.next_source(p);
    }

    /// Tries the proxy's next source; answers the client when none is left.
    pub(crate) fn next_source(&mut self, mut p: Proxy) {
        loop {
            let Some(src) = p.sources.pop_front() else {
                let status = p.last_status.unwrap_or(502);
                debug!("{}: no source left, answering {status}", p.label);
                return self.answer_error(p.client, status);
            };
            p.current = match &src {
                Source::Peer(addr, path) => format!("http://{addr}{path}"),
                Source::Url(u) => u.clone(),
            };
            let to_peer = matches!(src, Source::Peer(..));
            let (addr, host_header, path) = match src {
                Source::Peer(addr, path) => (addr, addr.to_string(), path),
                Source::Url(url) if url.starts_with("https://") => {
                    if p.answered {
                        continue;
                    }
                    debug!("{}: redirecting pacman to {url}", p.label);
                    let client = p.client;
                    self.answer(client, 307, &[("Location", &url)], b"");
                    return;
                }
                Source::Url(url) => {
                    let Some((host, port, path)) = fetch::parse_http_url(&url) else {
                        warn!("unusable upstream URL {url}");
                        continue;
                    };
                    let host_header = if port == 80 {
                        host.clone()
                    } else {
                        format!("{host}:{port}")
                    };
                    match self.resolve_now(&host, port) {
                        Some(addr) => (addr, host_header, path),
                        None => {
                            // resolve on the helper thread; come back here when it answers
                            self.resolve_serial += 1;
                            let id = self.resolve_serial;
                            if !self.resolver.resolve(id, host.clone(), port) {
                                p.last_status = Some(503);
                                continue;
                            }
                            p.sources.push_front(Source::Url(url));
                            self.waiting.insert(p.client, Waiting::Resolve(id));
                            self.resolving.insert(id, (p, host, port));
                            return;
                        }
                    }
                }
            };
            let mut headers = Vec::new();
            if let Some(r) = &p.range {
                headers.push(("Range".to_string(), r.clone()));
            }
            if let Some(ims) = &p.if_modified_since {
                headers.push(("If-Modified-Since".to_string(), ims.clone()));
            }
            if to_peer {
                headers.extend(self.discovery.auth_header(p.method.as_str(), &path));
            }
            let req = fetch::Request {
                method: p.method,
                addr,
                host_header,
                path,
                headers,
            };
            match Fetch::connect(req, self.now) {
                Ok(f) => {
                    let client = p.client;
                    match self.add_fetch(f, Purpose::Proxy(Box::new(p))) {
                        Some(tok) => {
                            self.waiting.insert(client, Waiting::Proxy(tok));
                            self.drive_fetch(tok);
                        }
                        None => self.answer_error(client, 503),
                    }
                    return;
                }
                Err(e) => {
                    debug!("connect {addr}: {e}");
                    p.last_status = Some(502);
                }
            }
        }
    }

    /// A resolved address from the cache, or a literal IP; None means "ask the resolver".
    fn resolve_now(&mut self, host: &str, port: u16) -> Option<SocketAddr> {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = h.parse::<std::net::IpAddr>() {
            return Some(SocketAddr::new(ip, port));
        }
        match self.dns_cache.get(&(host.to_string(), port)) {
            Some((addr, when)) if self.now.duration_since(*when) < DNS_CACHE_TTL => Some(*addr),
            _ => None,
        }
    }

    pub(crate) fn on_resolved(&mut self, id: u64, result: std::io::Result<Vec<SocketAddr>>) {
        let Some((mut p, host, port)) = self.resolving.remove(&id) else {
            return;
        };
        if !matches!(self.waiting.get(&p.client), Some(Waiting::Resolve(i)) if *i == id) {
            return; // the client left meanwhile
        }
        self.waiting.remove(&p.client);
        match result.ok().and_then(|a| a.into_iter().next()) {
            Some(addr) => {
                if self.dns_cache.len() >= MAX_DNS_CACHE {
                    self.dns_cache.clear();
                }
                // next_source finds it in the cache now
                self.dns_cache.insert((host, port), (addr, self.now));
            }
            None => {
                warn!("cannot resolve {host}");
                p.sources.pop_front();
                p.last_status = Some(502);
            }
        }
        self.next_source(p)
    }

    /// The stager's final word on a staged copy.
    pub(crate) fn on_staged(&mut self, r: stager::Report) {
        let Some(file) = self
            .transfers
            .iter()
            .find(|(_, t)| t.stage_id() == r.id)
            .map(|(f, _)| f.clone())
        else {
            return; // the transfer is gone, or was reset: stale
        };
        let Some(tr) = self.transfers.get_mut(&file) else {
            return;
        };
        let verdict = tr.settle(r.outcome);
        self.copy_settled(&file, verdict);
    }

    /// A copy's verdict: hand it out, or ban its contributors and try the next peer, or
    /// (our disk failed) send the waiters upstream.
    fn copy_settled(&mut self, file: &str, verdict: Verdict) {
        let now = self.now;
        let Some(tr) = self.transfers.get_mut(file) else {
            return;
        };
        let elapsed = now.duration_since(tr.started);
        let (size, contributors, source) = (tr.expected.size, tr.contributors.clone(), tr.source);
        match verdict {
            Verdict::Verified => {
                info!(
                    "{file}: {size} bytes from peer {} verified in {:.2} s ({:.1} MB/s)",
                    source.map(|s| s.1.to_string()).unwrap_or_default(),
                    elapsed.as_secs_f64(),
                    size as f64 / elapsed.as_secs_f64().max(0.001) / 1e6
                );
                self.stats.lan_hits += 1;
                self.stats.lan_bytes += size;
                if let Some((instance, _)) = source {
                    self.discovery.peers.credit_served(instance);
                }
                if let Some((instance, a)) = source {
                    if self.sig_hints.len() >= MAX_SIG_HINTS {
                        self.sig_hints.clear();
                    }
                    self.sig_hints.insert(file.to_string(), (instance, a, now));
                }
                self.hand_out(file);
            }
            // our disk, not the peer: this copy ends, the waiters go upstream
            Verdict::Local(e) => {
                warn!("staging {file}: {e}; going upstream");
                let fetches: Vec<Token> = self
                    .slots
                    .tokens()
                    .into_iter()
                    .filter(|t| {
                        matches!(self.slots.get(*t), Some(Slot::Fetch(fs))
                            if matches!(&fs.purpose, Purpose::PeerCopy { file: f, .. } if f == file))
                    })
                    .collect();
                for t in fetches {
                    self.remove_fetch(t);
                }
                self.transfer_failed(file);
            }
            v => {
                let why = format!("{file}: {v:?} (sync db says {size} bytes)");
                for c in contributors {
                    self.discovery.ban(c, now, &why);
                }
                self.stats.rejected_copies += 1;
                if let Some(tr) = self.transfers.get_mut(file) {
                    tr.reset_staging();
                }
                self.next_peer(file);
            }
        }
    }

    /// The stager's queue has room again: peer copies paused for it read on.
    pub(crate) fn resume_copies(&mut self) {
        let copies: Vec<Token> = self
            .slots
            .tokens()
            .into_iter()
            .filter(|t| {
                matches!(self.slots.get(*t), Some(Slot::Fetch(fs))
                    if matches!(fs.purpose, Purpose::PeerCopy { .. }))
            })
            .collect();
        for t in copies {
            self.drive_fetch(t);
        }
    }

    pub(crate) fn drive_fetch(&mut self, tok: Token) {
        let now = self.now;
        let mut events = Vec::new();
        // backpressure: a proxied stream reads what its client's buffer has room for, a
        // peer copy what the stager's queue has
        let client = match self.slots.get(tok) {
            Some(Slot::Fetch(fs)) => match &fs.purpose {
                Purpose::Proxy(p) => Some(p.client),
                Purpose::PeerCopy { .. } => None,
            },
            _ => return,
        };
        let room = match client.map(|c| self.slots.get(c)) {
            Some(Some(Slot::Front(c))) => c.stream_room(),
            Some(_) => usize::MAX,
            None => self.stager.handle().room(),
        };
        if let Some(Slot::Fetch(fs)) = self.slots.get_mut(tok) {
            fs.fetch.set_room(room);
        }
        let Some(Slot::Fetch(fs)) = self.slots.get_mut(tok) else {
            return;
        };
        fs.fetch.drive(now, &mut events);
        let finished = fs.fetch.is_finished();
        // it stopped at its per-turn bound with bytes left in the socket: no event will come
        if !finished && fs.fetch.wants_drive() {
            self.ready.push_back(tok);
        }
        for ev in events {
            self.on_fetch_event(tok, ev);
        }
        if finished {
            self.remove_fetch(tok);
        }
    }

    pub(crate) fn remove_fetch(&mut self, tok: Token) -> Option<Purpose> {
        match self.slots.remove(tok) {
            Some(Slot::Fetch(mut fs)) => {
                let _ = self.poll.registry().deregister(&mut fs.fetch.stream);
                Some(fs.purpose)
            }
            Some(other) => {
                // not a fetch: put nothing back, this cannot happen with generation tokens
                drop(other);
                None
            }
            None => None,
        }
    }

    fn on_fetch_event(&mut self, tok: Token, ev: fetch::Event) {
        let Some(Slot::Fetch(fs)) = self.slots.get_mut(tok) else {
            return;
        };
        match &mut fs.purpose {
            Purpose::PeerCopy {
                file,
                instance,
                resume,
            } => {
                let (file, instance, resume) = (file.clone(), *instance, *resume);
                self.on_peer_copy_event(tok, &file, instance, resume, ev);
            }
            Purpose::Proxy(_) => self.on_proxy_event(tok, ev),
        }
    }

    fn on_peer_copy_event(
        &mut self,
        tok: Token,
        file: &str,
        instance: u64,
        resume: u64,
        ev: fetch::Event,
    ) {
        let now = self.now;
        let Some(tr) = self.transfers.get_mut(file) else {
            self.remove_fetch(tok);
            return;
        };
        match ev {
            fetch::Event::Head(h) => {
                let want = tr.expected.size - resume;
                let ok_status = if resume > 0 {
                    h.status == 206
                } else {
                    h.status == 200
                };
                if !ok_status || h.content_length != Some(want) {
                    let why = format!(
                        "answered {} with {:?} bytes for {} expected",
                        h.status, h.content_length, want
                    );
                    self.remove_fetch(tok);
                    if h.status == 404 {
                        // the file went away since the lookup: not a lie
                        debug!("{file}: peer {why}");
                    } else {
                        self.discovery.ban(instance, now, &why);
                    }
                    self.next_peer(file);
                }
            }
            fetch::Event::Body(data) => {
                if tr.append(data).is_err() {
                    self.remove_fetch(tok);
                    self.discovery
                        .ban(instance, now, "sent more bytes than the sync db's size");
                    self.next_peer(file);
                }
            }
            fetch::Event::Done => {
                let r = tr.finish();
                self.remove_fetch(tok);
                // the hash is checked on the stager thread: its verdict comes to on_staged
                if let Err(v) = r {
                    self.copy_settled(file, v);
                }
            }
            fetch::Event::Failed(why) => {
                // every byte arrived, only the end of the framing did not: verify what we have
                // (resuming would only get a legitimate 416)
                if tr.received == tr.expected.size {
                    return self.on_peer_copy_event(
                        tok,
                        file,
                        instance,
                        resume,
                        fetch::Event::Done,
                    );
                }
                debug!("{file}: peer fetch failed: {why}");
                self.remove_fetch(tok);
                self.next_peer(file);
            }
        }
    }

    fn on_proxy_event(&mut self, tok: Token, ev: fetch::Event) {
        let client = match self.slots.get(tok) {
            Some(Slot::Fetch(fs)) => match &fs.purpose {
                Purpose::Proxy(p) => p.client,
                _ => return,
            },
            _ => return,
        };
        match ev {
            fetch::Event::Head(h) => {
                let redirect = matches!(h.status, 301 | 302 | 303 | 307 | 308);
                if redirect && let Some(loc) = h.location.clone() {
                    let Some(Purpose::Proxy(mut p)) = self.remove_fetch(tok) else {
                        return;
                    };
                    p.redirects += 1;
                    if p.redirects > MAX_UPSTREAM_REDIRECTS {
                        p.last_status = Some(502);
                    } else {
                        p.sources
                            .push_front(Source::Url(absolute_location(&p.current, &loc)));
                    }
                    return self.next_source(*p);
                }
                if !matches!(h.status, 200 | 206 | 304 | 416) {
                    let Some(Purpose::Proxy(mut p)) = self.remove_fetch(tok) else {
                        return;
                    };
                    debug!("{}: {} answered {}", p.label, p.current, h.status);
                    p.last_status = Some(h.status);
                    return self.next_source(*p);
                }
                let mut headers: Vec<(String, String)> = Vec::new();
                let length = match h.status {
                    304 => Some(0),
                    _ => h.content_length,
                };
                if let Some(l) = h.content_length
                    && h.status != 304
                {
                    headers.push(("Content-Length".into(), l.to_string()));
                }
                if h.status == 304 || h.status == 416 {
                    headers.retain(|(k, _)| k != "Content-Length");
                    if h.status == 416 {
                        headers.push(("Content-Length".into(), "0".into()));
                    }
                }
                if let Some((s, e, total)) = h.content_range {
                    let total = total.map(|t| t.to_string()).unwrap_or_else(|| "*".into());
                    headers.push(("Content-Range".into(), format!("bytes {s}-{e}/{total}")));
                }
                if let Some(lm) = &h.last_modified {
                    headers.push(("Last-Modified".into(), lm.clone()));
                }
                headers.push(("Accept-Ranges".into(), "bytes".into()));
                let refs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let length = if h.status == 416 { Some(0) } else { length };
                if let Some(Slot::Front(c)) = self.slots.get_mut(client) {
                    c.answer_stream(h.status, &refs, length);
                    if length == Some(0) {
                        c.end_stream(true);
                    }
                }
                if let Some(Slot::Fetch(fs)) = self.slots.get_mut(tok)
                    && let Purpose::Proxy(p) = &mut fs.purpose
                {
                    p.answered = true;
                }
                self.ready.push_back(client);
            }
            fetch::Event::Body(data) => {
                if let Some(Slot::Front(c)) = self.slots.get_mut(client) {
                    c.push_stream(&data);
                    self.stats.upstream_bytes += data.len() as u64;
                }
                self.ready.push_back(client);
            }
            fetch::Event::Done => {
                if let Some(Slot::Front(c)) = self.slots.get_mut(client) {
                    c.end_stream(true);
                }
                self.waiting.remove(&client);
                self.ready.push_back(client);
            }
            fetch::Event::Failed(why) => {
                let Some(Purpose::Proxy(mut p)) = self.remove_fetch(tok) else {
                    return;
                };
                debug!("{}: source failed: {why}", p.label);
                if p.answered {
                    // bytes already went out: cut, so pacman resumes on its next server
                    if let Some(Slot::Front(c)) = self.slots.get_mut(client) {
                        c.end_stream(false);
                    }
                    self.waiting.remove(&client);
                    self.ready.push_back(client);
                    return;
                }
                p.last_status = Some(502);
                self.next_source(*p);
            }
        }
    }

    /// A front connection closed: stop whatever worked for it alone.
    pub(crate) fn forget_client(&mut self, t: Token) {
        self.requests.remove(&t);
        match self.waiting.remove(&t) {
            Some(Waiting::Proxy(tok)) => {
                self.remove_fetch(tok);
            }
            Some(Waiting::Lookup(id)) => {
                self.debug_lookups.remove(&id);
            }
            Some(Waiting::Resolve(id)) => {
                self.resolving.remove(&id);
            }
            Some(Waiting::Db) => self.waiting_for_db.retain(|w| *w != t),
            // a shared transfer goes on: another request (or pacman's retry) will want it
            Some(Waiting::Transfer(_)) | None => {}
        }
    }

    /// Fetch timeouts: a dead peer or mirror must be noticed before pacman's 10 s.
    pub(crate) fn sweep_fetches(&mut self, now: Instant) {
        for tok in self.slots.tokens() {
            let why = match self.slots.get(tok) {
                Some(Slot::Fetch(fs)) => fs.fetch.timed_out(now),
                _ => None,
            };
            if let Some(why) = why {
                debug!("fetch {tok:?} timed out ({why})");
                self.on_fetch_event(tok, fetch::Event::Failed(why.to_string()));
                self.remove_fetch(tok);
            }
        }
    }
}

/// A Location header made absolute against the URL that answered with it.
fn absolute_location(base: &str, loc: &str) -> String {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.to_string();
    }
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    if loc.starts_with('/') {
        return format!("{}{}", &base[..authority_end], loc);
    }
    let dir_end = base
        .rfind('/')
        .filter(|i| *i >= authority_end)
        .map(|i| i + 1)
        .unwrap_or(base.len());
    format!("{}{}", &base[..dir_end], loc)
}

/// A GET for a file when the original request is gone (it only matters for Range).
fn synthetic_get(repo: &str, arch: &str, file: &str) -> Request {
    Request {
        method: Method::Get,
        version: http::Version::Http11,
        target: format!("/{repo}/os/{arch}/{file}"),
        keep_alive: true,
        range: None,
        if_modified_since: None,
        flocon_auth: None,
        head_len: 0,
    }
}
