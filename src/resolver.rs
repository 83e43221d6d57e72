//! Name resolution off the event loop (docs/DESIGN.md: DNS never blocks the loop). One helper
//! thread runs the blocking system resolver (`getaddrinfo` via `ToSocketAddrs`, so
//! /etc/hosts, nsswitch and /etc/gai.conf ordering all apply) and reports back through the
//! loop's mio `Waker`. Literal addresses and fresh cache hits never reach the thread: they
//! are answered by the next `results()` call, and the waker is woken for them too, so the
//! loop can handle every answer in one place (its waker event).

use mio::Waker;
use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// Requests queued and not yet drained by `results()`. Upstream mirrors are a handful of
/// names per repo; 64 covers every repo of a large pacman.conf at once, and anything beyond
/// means lookups are stuck (no DNS), so refusing more is better than a growing queue.
pub(crate) const MAX_PENDING: usize = 64;
/// How long an answer is reused. Mirrors' records live minutes to hours; a minute saves a
/// lookup per package of a transaction while still following a mirror that moves.
pub(crate) const CACHE_TTL: Duration = Duration::from_secs(60);
/// Cached names; more distinct mirror names than this do not exist in one pacman.conf.
const MAX_CACHE: usize = 256;
/// Longest DNS name (RFC 1035, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

type Answer = io::Result<Vec<SocketAddr>>;

struct Job {
    id: u64,
    host: String,
    port: u16,
}

struct Finished {
    id: u64,
    host: String,
    port: u16,
    answer: Answer,
}

pub(crate) struct Resolver {
    jobs: Sender<Job>,
    finished: Receiver<Finished>,
    /// Answers made without the thread (literals, cache hits, refused names).
    ready: Vec<(u64, Answer)>,
    pending: usize,
    cache: HashMap<(String, u16), (Instant, Vec<SocketAddr>)>,
    waker: Arc<Waker>,
}

impl Resolver {
    /// Starts the helper thread. It ends on its own once the `Resolver` is dropped and its
    /// current lookup returns; it is never joined, so a lookup hanging in the system resolver
    /// cannot hold up the daemon's exit.
    pub(crate) fn new(waker: Arc<Waker>) -> io::Result<Self> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, finished) = mpsc::channel();
        let thread_waker = Arc::clone(&waker);
        thread::Builder::new()
            .name("flocon-dns".into())
            .spawn(move || {
                for job in job_rx {
                    let answer = lookup(&job.host, job.port);
                    let done = Finished {
                        id: job.id,
                        host: job.host,
                        port: job.port,
                        answer,
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                    // A failed wake leaves the answer queued; the loop drains it on its next
                    // waker event or timer pass, so there is nothing better to do here.
                    let _ = thread_waker.wake();
                }
            })?;
        Ok(Resolver {
            jobs,
            finished,
            ready: Vec::new(),
            pending: 0,
            cache: HashMap::new(),
            waker,
        })
    }

    /// Queues a lookup of `host` (a name, an IP literal, or an IPv6 literal in brackets)
    /// answered under `id` by a later `results()`. False when `MAX_PENDING` answers are
    /// outstanding: the caller treats the source as unavailable for now.
    pub(crate) fn resolve(&mut self, id: u64, host: String, port: u16) -> bool {
        self.resolve_at(id, host, port, Instant::now())
    }

    /// Drains the answers that are ready (call when the waker fires; spurious calls are
    /// fine). Every accepted `resolve` is answered exactly once.
    pub(crate) fn results(&mut self) -> Vec<(u64, Answer)> {
        self.results_at(Instant::now())
    }

    /// The addresses of `host` when they are known without asking the thread: a literal, or
    /// a fresh cache entry. None means "call `resolve`".
    pub(crate) fn cached(&self, host: &str, port: u16, now: Instant) -> Option<Vec<SocketAddr>> {
        let bare = bare_host(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(vec![SocketAddr::new(ip, port)]);
        }
        match self.cache.get(&(bare, port)) {
            Some((at, addrs)) if now.saturating_duration_since(*at) < CACHE_TTL => {
                Some(addrs.clone())
            }
            _ => None,
        }
    }

    /// Requests accepted and not yet returned by `results()`.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    fn resolve_at(&mut self, id: u64, host: String, port: u16, now: Instant) -> bool {
        if self.pending >= MAX_PENDING {
            return false;
        }
        self.pending += 1;
        let bare = bare_host(&host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.answer_now(id, Ok(vec![SocketAddr::new(ip, port)]));
        }
        if !valid_name(&bare) {
            let e = io::Error::new(
                ErrorKind::InvalidInput,
                format!("invalid host name {host:?}"),
            );
            return self.answer_now(id, Err(e));
        }
        if let Some((at, addrs)) = self.cache.get(&(bare.clone(), port))
            && now.saturating_duration_since(*at) < CACHE_TTL
        {
            let addrs = addrs.clone();
            return self.answer_now(id, Ok(addrs));
        }
        if self
            .jobs
            .send(Job {
                id,
                host: bare,
                port,
            })
            .is_err()
        {
            return self.answer_now(id, Err(io::Error::other("resolver thread is gone")));
        }
        true
    }

    fn answer_now(&mut self, id: u64, answer: Answer) -> bool {
        self.ready.push((id, answer));
        // If the wake fails, the answer still comes out of the next results() call.
        let _ = self.waker.wake();
        true
    }

    fn results_at(&mut self, now: Instant) -> Vec<(u64, Answer)> {
        let mut out = std::mem::take(&mut self.ready);
        // try_recv fails on Empty, and on Disconnected only if the thread died, which it
        // cannot short of a panic (and a panic aborts the release build).
        while let Ok(f) = self.finished.try_recv() {
            if let Ok(addrs) = &f.answer {
                self.remember(f.host, f.port, addrs.clone(), now);
            }
            out.push((f.id, f.answer));
        }
        self.pending = self.pending.saturating_sub(out.len());
        out
    }

    fn remember(&mut self, host: String, port: u16, addrs: Vec<SocketAddr>, now: Instant) {
        self.cache
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < CACHE_TTL);
        if self.cache.len() >= MAX_CACHE {
            let oldest = self
                .cache
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.cache.remove(&k);
            }
        }
        self.cache.insert((host, port), (now, addrs));
    }
}

/// A host as the cache keys it: IPv6 brackets removed, lowercase.
fn bare_host(host: &str) -> String {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase()
}

/// Something the system resolver may be asked about: a DNS-shaped name (letters, digits,
/// `-`, `_`, dots), or an IPv6 literal with a zone (`fe80::1%eth0`), which only
/// getaddrinfo parses. Keeps NULs and stray URL pieces away from libc.
fn valid_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'%'))
}

/// The blocking part, on the helper thread.
fn lookup(host: &str, port: u16) -> Answer {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            ErrorKind::NotFound,
            format!("{host}: no addresses"),
        ));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};

    const WAKE: Token = Token(7);

    fn setup() -> (Poll, Resolver) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        (poll, Resolver::new(waker).unwrap())
    }

    /// Waits on the waker like the loop does, up to `limit`; None if nothing came in time.
    fn wait(poll: &mut Poll, r: &mut Resolver, limit: Duration) -> Option<Vec<(u64, Answer)>> {
        let end = Instant::now() + limit;
        let mut events = Events::with_capacity(4);
        let mut out = Vec::new();
        while r.pending() > 0 {
            let left = end.checked_duration_since(Instant::now())?;
            poll.poll(&mut events, Some(left)).unwrap();
            if events.iter().any(|e| e.token() == WAKE) {
                out.extend(r.results());
            }
        }
        Some(out)
    }

    #[test]
    fn localhost_resolves_to_loopback_through_the_waker() {
        let (mut poll, mut r) = setup();
        assert!(r.resolve(1, "localhost".into(), 19432));
        let got = wait(&mut poll, &mut r, Duration::from_secs(10)).expect("localhost answer");
        assert_eq!(got.len(), 1);
        let (id, answer) = &got[0];
        assert_eq!(*id, 1);
        let addrs = answer.as_ref().unwrap();
        assert!(!addrs.is_empty());
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 19432),
            "{addrs:?}"
        );

        // Now cached: answered without the thread, still announced by the waker.
        assert!(r.resolve(2, "LOCALHOST".into(), 19432));
        assert!(r.jobs_in_thread_is_empty());
        let got = wait(&mut poll, &mut r, Duration::from_secs(1)).unwrap();
        assert_eq!(got[0].0, 2);
        assert_eq!(got[0].1.as_ref().unwrap(), addrs);
    }

    #[test]
    fn literals_bypass_the_thread() {
        let (mut poll, mut r) = setup();
        assert!(r.resolve(1, "127.0.0.1".into(), 80));
        assert!(r.resolve(2, "[::1]".into(), 8080));
        assert!(r.resolve(3, "::1".into(), 1));
        // Answered even before the waker is seen.
        let got = r.results();
        assert_eq!(r.pending(), 0);
        let want: Vec<(u64, SocketAddr)> = vec![
            (1, "127.0.0.1:80".parse().unwrap()),
            (2, "[::1]:8080".parse().unwrap()),
            (3, "[::1]:1".parse().unwrap()),
        ];
        let got: Vec<(u64, SocketAddr)> =
            got.into_iter().map(|(id, a)| (id, a.unwrap()[0])).collect();
        assert_eq!(got, want);
        // The waker fired for them as well.
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        assert!(events.iter().any(|e| e.token() == WAKE));
        assert!(r.results().is_empty());
    }

    #[test]
    fn bad_names_fail_without_a_lookup() {
        let (_poll, mut r) = setup();
        for (id, host) in ["", "a/b", "nul\0x", "x@y", &"a".repeat(300), "[::1"]
            .iter()
            .enumerate()
        {
            assert!(r.resolve(id as u64, host.to_string(), 80));
        }
        let got = r.results();
        assert_eq!(got.len(), 6);
        assert!(
            got.iter()
                .all(|(_, a)| a.as_ref().unwrap_err().kind() == ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn invalid_tld_fails() {
        let (mut poll, mut r) = setup();
        assert!(r.resolve(9, "no-such-host.invalid".into(), 80));
        // Without DNS the system resolver may take its own timeouts; do not hang the suite.
        let Some(got) = wait(&mut poll, &mut r, Duration::from_secs(5)) else {
            eprintln!("skipped: the system resolver did not answer within 5 s");
            return;
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 9);
        assert!(got[0].1.is_err(), "{:?}", got[0].1);
    }

    #[test]
    fn queue_is_bounded() {
        let (mut poll, mut r) = setup();
        for id in 0..MAX_PENDING as u64 {
            let host = if id % 2 == 0 {
                "localhost"
            } else {
                "127.0.0.1"
            };
            assert!(r.resolve(id, host.into(), 80), "{id}");
        }
        assert!(!r.resolve(999, "127.0.0.1".into(), 80));
        assert!(!r.resolve(999, "localhost".into(), 80));
        let got = wait(&mut poll, &mut r, Duration::from_secs(10)).expect("answers");
        let mut ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..MAX_PENDING as u64).collect::<Vec<_>>());
        assert!(r.resolve(1000, "127.0.0.1".into(), 80));
    }

    #[test]
    fn cache_expires_and_stays_bounded() {
        let (_poll, mut r) = setup();
        let t0 = Instant::now();
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        r.remember("mirror.invalid".into(), 80, vec![addr], t0);
        assert!(r.resolve_at(
            1,
            "mirror.invalid".into(),
            80,
            t0 + CACHE_TTL - Duration::from_secs(1)
        ));
        assert!(r.jobs_in_thread_is_empty());
        assert_eq!(r.results()[0].1.as_ref().unwrap(), &vec![addr]);
        for i in 0..MAX_CACHE * 2 {
            r.remember(
                format!("h{i}"),
                80,
                vec![addr],
                t0 + Duration::from_millis(i as u64),
            );
        }
        assert!(r.cache.len() <= MAX_CACHE);
        assert!(
            r.cache
                .contains_key(&(format!("h{}", MAX_CACHE * 2 - 1), 80))
        );
        assert!(!r.cache.contains_key(&("h0".to_string(), 80)));
        // Past the TTL the entry is not used: the name goes to the thread.
        r.remember("mirror.invalid".into(), 80, vec![addr], t0);
        assert!(r.resolve_at(2, "mirror.invalid".into(), 80, t0 + CACHE_TTL));
        assert!(!r.jobs_in_thread_is_empty());
    }

    impl Resolver {
        /// True when every accepted request was answered without the thread.
        fn jobs_in_thread_is_empty(&self) -> bool {
            self.pending == self.ready.len()
        }
    }
}
