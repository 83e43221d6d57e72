//! Faults (issue 9): what pacman gets when peers and mirrors misbehave, and who is banned.
//! Every test runs in a private network namespace of its own; the misbehaving peers and
//! mirrors are tests/fakes/ (Python file servers, and a discovery `Announcer` built on the
//! real protocol code). The first tests check the fakes themselves, on the wire.

mod common;
mod fakes;
use common::*;
use fakes::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A raw client: sends `GET path` and reads for at most `limit`; returns every byte read and
/// whether the server closed the connection (EOF) within the limit.
fn raw_get(addr: SocketAddr, path: &str, extra: &str, limit: Duration) -> (Vec<u8>, bool) {
    let Ok(s) = TcpStream::connect(addr) else {
        return (Vec::new(), true);
    };
    raw_get_on(s, path, extra, limit)
}

/// `raw_get` on a connected stream.
fn raw_get_on(mut s: TcpStream, path: &str, extra: &str, limit: Duration) -> (Vec<u8>, bool) {
    let host = if extra.contains("Host:") {
        ""
    } else {
        "Host: localhost\r\n"
    };
    if write!(s, "GET {path} HTTP/1.1\r\n{host}{extra}\r\n").is_err() {
        return (Vec::new(), true);
    }
    let t0 = Instant::now();
    let mut all = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return (all, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (all, true),
            Err(_) => return (all, false),
        }
    }
}

fn body_of(all: &[u8]) -> &[u8] {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(all.len());
    &all[end..]
}

fn head_of(all: &[u8]) -> String {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(all.len());
    String::from_utf8_lossy(&all[..end]).into_owned()
}

#[test]
fn the_fakes_misbehave_as_declared() {
    netns!("the_fakes_misbehave_as_declared");
    let t = TempDir::new("fakes");
    let data = pattern(200_000, 9);
    for n in [
        "honest",
        "chunked",
        "ccut",
        "short",
        "garbage",
        "drip",
        "rate",
        "redirect",
        "busy",
        "stall",
        "hstall",
        "halfstall",
        "cut",
        "liar",
        "die",
    ] {
        std::fs::write(t.join(n), &data).unwrap();
    }
    let rules = [
        ("chunked", "chunked"),
        ("ccut", "chunked-cut"),
        ("short", "short"),
        ("garbage", "garbage"),
        ("drip", "drip:10"),
        ("rate", "rate:400000"),
        ("redirect", "redirect:http://127.0.0.1:19433{path}"),
        ("busy", "busy"),
        ("stall", "stall"),
        ("hstall", "head-stall"),
        ("halfstall", "half-stall"),
        ("cut", "cut:0.6"),
        ("liar", "liar-half"),
        ("die", "die:0.6"),
    ];
    let mut f = FakeHttp::start("127.0.0.5:0", t.path(), &t.join("log"), &rules);
    let a = f.addr;
    let second = Duration::from_secs(1);
    let long = Duration::from_secs(20);

    let (all, _) = raw_get(a, "/honest", "Connection: close\r\n", long);
    assert!(head_of(&all).starts_with("HTTP/1.1 200"));
    assert!(body_of(&all) == data);
    let (all, _) = raw_get(
        a,
        "/x/honest",
        "Range: bytes=1000-\r\nConnection: close\r\n",
        long,
    );
    assert!(head_of(&all).contains("Content-Range: bytes 1000-199999/200000"));
    assert!(body_of(&all) == &data[1000..]);
    let (all, _) = raw_get(a, "/honest", "Range: bytes=200000-\r\n", long);
    assert!(head_of(&all).starts_with("HTTP/1.1 416"));
    let (all, _) = raw_get(a, "/nothing-here", "", second);
    assert!(head_of(&all).starts_with("HTTP/1.1 404"));

    // chunked: the framing ends with the last chunk; cut: no last chunk, then EOF
    let (all, closed) = raw_get(a, "/chunked", "Connection: close\r\n", long);
    assert!(closed && all.ends_with(b"\r\n0\r\n\r\n"));
    let (all, closed) = raw_get(a, "/ccut", "", long);
    assert!(closed && !all.ends_with(b"0\r\n\r\n"));
    assert!(head_of(&all).contains("Transfer-Encoding: chunked"));
    let (all, closed) = raw_get(a, "/short", "", long);
    assert!(closed && body_of(&all) == &data[..100_000]);
    assert!(head_of(&all).contains("Content-Length: 200000"));

    let (all, _) = raw_get(a, "/garbage", "Connection: close\r\n", long);
    assert_eq!(body_of(&all), &[b'x'; 1000][..]);
    let (all, _) = raw_get(a, "/redirect", "", second);
    assert!(head_of(&all).contains("Location: http://127.0.0.1:19433/redirect\r\n"));
    let (all, _) = raw_get(a, "/busy", "", second);
    assert!(head_of(&all).starts_with("HTTP/1.1 503"));

    // the waiting kinds: nothing more within a second (an upper bound: a busy machine only
    // makes them slower)
    let (all, closed) = raw_get(a, "/stall", "", second);
    assert!(all.is_empty() && !closed);
    let (all, closed) = raw_get(a, "/hstall", "", second);
    assert!(head_of(&all).contains("Content-Length: 200000") && body_of(&all).is_empty());
    assert!(!closed);
    let (all, closed) = raw_get(a, "/halfstall", "", second);
    assert!(body_of(&all) == &data[..100_000] && !closed);
    let (all, closed) = raw_get(a, "/drip", "", second);
    assert!(
        body_of(&all).len() <= 11 && !closed,
        "{}",
        body_of(&all).len()
    );
    let t0 = Instant::now();
    let (all, closed) = raw_get(a, "/rate", "Connection: close\r\n", long);
    assert!(closed && body_of(&all) == data);
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );

    // 60 % then EOF; the liar's first half is wrong
    let (all, closed) = raw_get(a, "/cut", "", long);
    assert!(closed && body_of(&all) == &data[..120_000]);
    let (all, closed) = raw_get(a, "/liar", "", long);
    let body = body_of(&all);
    assert!(closed && body.len() == 100_000);
    assert!(body.iter().zip(&data).all(|(x, y)| *x == !*y));

    // a dying peer: 60 %, then nobody listens any more
    let (all, closed) = raw_get(a, "/die", "", long);
    assert!(closed && body_of(&all) == &data[..120_000]);
    assert!(wait_until(Duration::from_secs(5), || !f.is_running()));
    assert!(TcpStream::connect(a).is_err());

    // the log: a request and an end line per answer, with the bytes sent
    let reqs = f.requests("cut");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].str("mode").as_deref(), Some("cut:0.6"));
    assert_eq!(f.bytes_sent("cut"), 120_000);
    assert_eq!(f.bytes_sent("die"), 120_000);
    let ranged = f.requests("honest");
    assert_eq!(ranged[1].str("range").as_deref(), Some("bytes=1000-"));
    assert_eq!(f.bytes_sent("honest"), 200_000 + 199_000);
}

#[test]
fn the_announcer_is_a_peer_to_a_real_daemon() {
    netns!("the_announcer_is_a_peer_to_a_real_daemon");
    let t = TempDir::new("announcer");
    let cache = t.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let b = Daemon::start(DaemonOpts {
        peer_ip: "127.0.0.3",
        name: "b",
        ..DaemonOpts::new(t.path(), &cache)
    });
    let offers = vec![Offer {
        name: "offered-1-1-any.pkg.tar.zst".into(),
        size: 12345,
        sha256: Some(sha256(b"whatever")),
    }];
    let ann = Announcer::start("127.0.0.5", 19432, "fake5", offers);
    assert!(
        wait_until(Duration::from_secs(5), || b
            .peer_names()
            .contains(&"fake5".to_string())),
        "the daemon does not list the fake: {}",
        b.status_json()
    );
    let (asked, answered, have, _) = b.lookup("offered-1-1-any.pkg.tar.zst", Some(12345));
    assert_eq!((asked, answered), (1, 1));
    assert_eq!(have, vec!["fake5".to_string()]);
    let (_, answered, have, _) = b.lookup("other-1-1-any.pkg.tar.zst", None);
    assert_eq!((answered, have.len()), (1, 0));
    assert!(ann.answered.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn the_crowd_holds_its_connections() {
    netns!("the_crowd_holds_its_connections");
    let t = TempDir::new("crowd");
    std::fs::write(t.join("f"), b"hello").unwrap();
    let f = FakeHttp::start("127.0.0.5:0", t.path(), &t.join("log"), &[]);
    let crowd = Crowd::start(
        f.addr,
        3,
        &[
            "--keepalive",
            "20",
            "--every",
            "1",
            "--slow",
            "30",
            "--sources",
            "127.0.0.7,127.0.0.8",
            "--path",
            "/f",
        ],
    );
    let stats = crowd.finish();
    // 20 keep-alive connections asking about once a second for 3 s; the slow ones never
    // finish a request
    let answers: usize = stats
        .split("\"answers\": ")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap();
    assert!((20..=80).contains(&answers), "{stats}");
    let reqs = f.requests("f");
    // (the last requests may still have been unanswered when the crowd stopped)
    assert!((answers..=answers + 20).contains(&reqs.len()), "{stats}");
    let clients: std::collections::BTreeSet<String> =
        reqs.iter().filter_map(|e| e.str("client")).collect();
    assert_eq!(
        clients.into_iter().collect::<Vec<_>>(),
        vec!["127.0.0.7".to_string(), "127.0.0.8".to_string()]
    );
}

// ------------------------------------------------------------------ scenarios through flocon

const REPO: &str = "/flocontest/os/x86_64";

/// What a pacman-like client got for one file: it follows redirects to the same server (as
/// curl does for flocon's self-redirects), reads the body with its framing, and says whether
/// the answer ended cleanly.
#[derive(Debug)]
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The framing ended (Content-Length reached, last chunk read) before the close.
    complete: bool,
    took: Duration,
    redirects: u32,
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn fetch(addr: SocketAddr, path: &str, host: &str, extra: &str) -> Got {
    let t0 = Instant::now();
    let mut path = path.to_string();
    let mut redirects = 0;
    loop {
        let (all, _) = raw_get(
            addr,
            &path,
            &format!("Host: {host}\r\nConnection: close\r\n{extra}"),
            Duration::from_secs(120),
        );
        let head = head_of(&all);
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let raw = body_of(&all).to_vec();
        if matches!(status, 301 | 302 | 307 | 308) && redirects < 10 {
            let loc = header(&head, "location").unwrap_or_default();
            if let Some(p) = loc.strip_prefix('/') {
                path = format!("/{p}");
                redirects += 1;
                continue;
            }
        }
        let (body, complete) = if header(&head, "transfer-encoding").is_some() {
            match dechunk(&raw) {
                Some(b) => (b, true),
                None => (raw, false),
            }
        } else {
            // without a length, the close ends the body: a client cannot tell a cut
            let complete = match header(&head, "content-length") {
                Some(l) => l.parse::<usize>().ok() == Some(raw.len()),
                None => true,
            };
            (raw, complete)
        };
        return Got {
            status,
            head,
            body,
            complete,
            took: t0.elapsed(),
            redirects,
        };
    }
}

/// A misbehaving peer: its file server (fakehttp.py) and its discovery side.
struct FakePeerHost {
    http: FakeHttp,
    _ann: Announcer,
}

/// Host B (127.0.0.3, the daemon under test) with the flocontest repo in its db, a mirror
/// at 127.0.0.100 (fakehttp.py with `mirror_rules`), and fake peers.
struct FaultLan {
    t: TempDir,
    pkgs: Vec<Pkg>,
    mirror: FakeHttp,
    b: Daemon,
    peers: Vec<FakePeerHost>,
}

/// A real signature's bytes stand in for every package's `.sig` (flocon checks the format,
/// pacman the signature).
const SIG: &[u8] = include_bytes!("data/sig/ed25519.sig");

impl FaultLan {
    fn new(tag: &str, specs: &[(&str, usize, &str)], mirror_rules: &[(&str, &str)]) -> FaultLan {
        let t = TempDir::new(tag);
        let pkgs = make_repo(t.path(), specs);
        for p in &pkgs {
            std::fs::write(t.join("repo").join(format!("{}.sig", p.file)), SIG).unwrap();
        }
        let mirror = FakeHttp::start(
            "127.0.0.100:0",
            &t.join("repo"),
            &t.join("mirror.log"),
            mirror_rules,
        );
        let conf = host_conf(t.path(), "b", 19433, &[mirror.url()]);
        let (cache, db) = (t.join("b/cache"), t.join("b/db"));
        let mut o = DaemonOpts::new(t.path(), &cache);
        o.peer_ip = "127.0.0.3";
        o.name = "b";
        o.pacman_conf = Some(&conf);
        o.db_path = Some(&db);
        let b = Daemon::start(o);
        let n = pkgs.len();
        assert!(
            wait_until(Duration::from_secs(10), || b
                .status_json()
                .contains(&format!("\"indexed_packages\":{n}"))),
            "{}",
            b.status_json()
        );
        FaultLan {
            t,
            pkgs,
            mirror,
            b,
            peers: Vec::new(),
        }
    }

    /// A fake peer at `ip` that has every package (and its `.sig`) and says so, serving with
    /// `rules`.
    fn peer(&mut self, ip: &str, rules: &[(&str, &str)]) -> usize {
        let root = self.t.join(&format!("peer-{ip}"));
        std::fs::create_dir_all(&root).unwrap();
        let mut offers = Vec::new();
        for p in &self.pkgs {
            std::fs::write(root.join(&p.file), &p.bytes).unwrap();
            std::fs::write(root.join(format!("{}.sig", p.file)), SIG).unwrap();
            offers.push(Offer {
                name: p.file.clone(),
                size: p.bytes.len() as u64,
                sha256: Some(sha256(&p.bytes)),
            });
            offers.push(Offer {
                name: format!("{}.sig", p.file),
                size: SIG.len() as u64,
                sha256: None,
            });
        }
        let http = FakeHttp::start(
            &format!("{ip}:19432"),
            &root,
            &self.t.join(&format!("peer-{ip}.log")),
            rules,
        );
        let name = format!("fake{}", ip.rsplit('.').next().unwrap());
        let ann = Announcer::start(ip, 19432, &name, offers);
        assert!(
            wait_until(Duration::from_secs(5), || self
                .b
                .peer_names()
                .contains(&name)),
            "{:?}",
            self.b.peer_names()
        );
        self.peers.push(FakePeerHost { http, _ann: ann });
        self.peers.len() - 1
    }

    fn get(&self, file: &str) -> Got {
        fetch(self.b.front, &format!("{REPO}/{file}"), "localhost", "")
    }

    /// The bans and benches B reports (status JSON), for the closing note.
    fn bans(&self) -> String {
        let json = self.b.status_json();
        json.split("\"bans\":")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .map(|s| format!("{s}]"))
            .unwrap_or_default()
    }
}

/// Prints one line of evidence (the closing note quotes them): `cargo test -- --nocapture`.
fn report(what: &str, g: &Got, extra: &str) {
    eprintln!(
        "FAULT {what}: status {} complete {} {} bytes in {:.2} s, {} redirects; {extra}",
        g.status,
        g.complete,
        g.body.len(),
        g.took.as_secs_f64(),
        g.redirects
    );
}

fn small_repo() -> Vec<(&'static str, usize, &'static str)> {
    vec![
        ("one", 30_000, "any"),
        ("two", 40_000, "x86_64"),
        ("three", 50_000, "x86_64"),
        ("four", 60_000, "any"),
    ]
}

/// B's log lines that say it banned or benched someone.
fn sanctions(lan: &FaultLan) -> Vec<String> {
    lan.b
        .log_text()
        .lines()
        .filter(|l| l.contains("banned peer") || l.contains("benched peer"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_bad_sig_from_the_peer_goes_upstream_within_the_deadline() {
    netns!("a_bad_sig_from_the_peer_goes_upstream_within_the_deadline");
    for mode in [
        "garbage",
        "drip:1",
        "stall",
        "redirect:http://127.0.0.1:1/x",
    ] {
        let mut lan = FaultLan::new("sig", &small_repo(), &[]);
        lan.peer("127.0.0.5", &[("*.sig", mode)]);
        let p = &lan.pkgs[0];
        let g = lan.get(&p.file);
        assert_eq!(g.status, 200, "{}", g.head);
        assert!(g.body == p.bytes);
        assert_eq!(
            lan.mirror.requests(&p.file).len(),
            0,
            "the package came from the peer"
        );
        let sig = format!("{}.sig", p.file);
        let g = lan.get(&sig);
        report(
            &format!("peer .sig {mode}"),
            &g,
            &format!("sanctions {:?}", sanctions(&lan)),
        );
        assert_eq!(g.status, 200, "{mode}: {}", g.head);
        assert!(
            g.complete && g.body == SIG,
            "{mode}: the client got a bad .sig"
        );
        assert_eq!(
            lan.mirror.requests(&sig).len(),
            1,
            "{mode}: the mirror was not asked"
        );
        // pacman gives up after 10 s without progress: the deadline is 2 s
        assert!(g.took < Duration::from_secs(8), "{mode}: {:?}", g.took);
        assert!(
            sanctions(&lan).iter().all(|l| !l.contains("banned")),
            "{mode}"
        );
    }
}

#[test]
fn a_sig_hint_to_a_frozen_peer_costs_nothing() {
    netns!("a_sig_hint_to_a_frozen_peer_costs_nothing");
    let mut lan = FaultLan::new("frozen", &small_repo(), &[]);
    let i = lan.peer("127.0.0.5", &[]);
    let p = &lan.pkgs[1];
    let g = lan.get(&p.file);
    assert!(g.status == 200 && g.body == p.bytes);
    // the peer freezes (SIGSTOP): its socket still accepts, nothing answers
    lan.peers[i].http.signal("STOP");
    lan.peers[i]._ann.freeze();
    let sig = format!("{}.sig", p.file);
    let g = lan.get(&sig);
    report("frozen peer .sig", &g, "");
    lan.peers[i].http.signal("CONT");
    assert_eq!(g.status, 200, "{}", g.head);
    assert!(g.complete && g.body == SIG);
    assert!(g.took < Duration::from_secs(8), "{:?}", g.took);
    assert_eq!(lan.mirror.requests(&sig).len(), 1);
}

#[test]
fn redirects_from_peers_are_never_followed() {
    netns!("redirects_from_peers_are_never_followed");
    // the .sig after a package the peer served, then the package itself
    for glob in ["*.sig", "*"] {
        let mut lan = FaultLan::new("redirect", &small_repo(), &[]);
        // a service on the host's own loopback that a peer would like flocon to call
        let canary = FakeHttp::start("127.0.0.1:0", lan.t.path(), &lan.t.join("canary.log"), &[]);
        let to = format!("redirect:http://{}/secret{{path}}", canary.addr);
        lan.peer("127.0.0.5", &[(glob, &to)]);
        for p in &lan.pkgs[..2] {
            for (file, bytes) in [
                (p.file.clone(), &p.bytes[..]),
                (format!("{}.sig", p.file), SIG),
            ] {
                let g = lan.get(&file);
                report(&format!("peer redirect {glob}"), &g, &file);
                assert_eq!(g.status, 200, "{}", g.head);
                assert!(g.complete && g.body == bytes);
            }
        }
        assert!(
            canary.events().is_empty(),
            "flocon followed a peer's redirect"
        );
        if glob == "*.sig" {
            assert!(
                lan.peers[0]
                    .http
                    .requests(&format!("{}.sig", lan.pkgs[0].file))
                    .len()
                    <= 1,
                "the redirecting peer was asked again"
            );
        }
    }
}

#[test]
fn a_busy_peer_is_skipped_not_banned() {
    netns!("a_busy_peer_is_skipped_not_banned");
    let mut lan = FaultLan::new("busy", &small_repo(), &[]);
    let i = lan.peer("127.0.0.5", &[("*", "busy")]);
    for p in &lan.pkgs[..3] {
        let g = lan.get(&p.file);
        report(
            "busy peer",
            &g,
            &format!("{}; sanctions {:?}", p.file, sanctions(&lan)),
        );
        assert!(g.status == 200 && g.body == p.bytes);
    }
    // asked for every file: never benched, never banned
    let asked = lan.peers[i]
        .http
        .events()
        .iter()
        .filter(|e| e.ev() == "req" && e.name().ends_with(".zst"))
        .count();
    assert_eq!(asked, 3);
    assert!(sanctions(&lan).is_empty(), "{:?}", sanctions(&lan));
    assert_eq!(lan.bans(), "[]");
}

#[test]
fn the_resume_trap_bans_no_honest_peer() {
    netns!("the_resume_trap_bans_no_honest_peer");
    let mut lan = FaultLan::new(
        "trap",
        &[("medium", 3_000_000, "x86_64"), ("one", 30_000, "any")],
        &[],
    );
    lan.peer("127.0.0.5", &[("*.zst", "liar-half")]);
    let honest = lan.peer("127.0.0.6", &[]);
    // the liar answers first, the honest peer a moment later
    lan.peers[honest]._ann.set_delay(Duration::from_millis(15));
    let p = &lan.pkgs[0];
    let g = lan.get(&p.file);
    let s = sanctions(&lan);
    report("resume trap", &g, &format!("sanctions {s:?}"));
    assert!(g.status == 200 && g.body == p.bytes);
    assert!(
        s.iter().all(|l| !l.contains("fake6")),
        "the honest peer was sanctioned: {s:?}"
    );
    // the honest peer still serves the next file
    let q = &lan.pkgs[1];
    let g = lan.get(&q.file);
    assert!(g.status == 200 && g.body == q.bytes);
    assert_eq!(lan.peers[honest].http.requests(&q.file).len(), 1);
}

#[test]
fn a_stalling_peer_costs_one_wait_not_one_per_file() {
    netns!("a_stalling_peer_costs_one_wait_not_one_per_file");
    for mode in ["stall", "head-stall", "half-stall", "drip:1"] {
        let mut lan = FaultLan::new("stall", &small_repo(), &[]);
        let i = lan.peer("127.0.0.5", &[("*.zst", mode)]);
        let mut took = Vec::new();
        for p in &lan.pkgs {
            let g = lan.get(&p.file);
            assert!(g.status == 200 && g.body == p.bytes, "{mode}: {}", g.head);
            // pacman's own rule: never 10 s without progress (a redirect restarts it)
            assert!(g.took < Duration::from_secs(60), "{mode}");
            took.push(g.took.as_secs_f64());
        }
        let paths: Vec<Option<String>> = (lan.peers[i].http.events().iter())
            .filter(|e| e.ev() == "req")
            .map(|e| e.str("path"))
            .collect();
        let asked = paths.len();
        eprintln!(
            "FAULT stalling peer {mode}: seconds per file {took:.2?}, peer asked {asked} times, sanctions {:?}",
            sanctions(&lan)
        );
        assert_eq!(
            asked, 1,
            "{mode}: the staller was asked again for later files: {paths:?}"
        );
    }
}

#[test]
fn a_peer_killed_at_60_percent_leaves_only_the_rest_to_the_mirror() {
    netns!("a_peer_killed_at_60_percent_leaves_only_the_rest_to_the_mirror");
    let mut lan = FaultLan::new("killed", &[("huge", 150_000_000, "x86_64")], &[]);
    lan.peer("127.0.0.5", &[("*.zst", "die:0.6")]);
    let p = &lan.pkgs[0];
    let g = lan.get(&p.file);
    let size = p.bytes.len() as u64;
    let from_mirror = lan.mirror.bytes_sent(&p.file);
    let ranges: Vec<_> = lan
        .mirror
        .requests(&p.file)
        .iter()
        .map(|e| e.str("range"))
        .collect();
    report(
        "peer killed at 60 %",
        &g,
        &format!(
            "mirror sent {from_mirror} of {size} bytes ({:.1} %), ranges {ranges:?}",
            from_mirror as f64 * 100.0 / size as f64
        ),
    );
    assert!(g.status == 200 && g.body == p.bytes, "{}", g.head);
    assert!(from_mirror * 100 <= size * 45, "{from_mirror} of {size}");
}

#[test]
fn a_too_slow_peer_hands_the_rest_to_the_mirror_early() {
    netns!("a_too_slow_peer_hands_the_rest_to_the_mirror_early");
    // 30 MB at 500 kB/s would take a minute: more than pacman's redirect budget
    let mut lan = FaultLan::new("slow", &[("slow", 30_000_000, "x86_64")], &[]);
    let i = lan.peer("127.0.0.5", &[("*.zst", "rate:500000")]);
    let p = &lan.pkgs[0];
    let g = lan.get(&p.file);
    let size = p.bytes.len() as u64;
    let from_mirror = lan.mirror.bytes_sent(&p.file);
    let peer_ended = wait_until(Duration::from_secs(5), || {
        lan.peers[i].http.events().iter().any(|e| e.ev() == "end")
    });
    let from_peer = lan.peers[i].http.bytes_sent(&p.file);
    report(
        "too slow peer",
        &g,
        &format!(
            "mirror sent {from_mirror}, peer sent {from_peer} (stopped: {peer_ended}) of {size}"
        ),
    );
    assert!(g.status == 200 && g.body == p.bytes);
    assert!(from_mirror < size, "the mirror sent the whole file again");
    assert!(
        peer_ended,
        "the LAN copy runs on after the mirror took over"
    );
    assert!(
        from_peer + from_mirror <= size + 1_000_000,
        "bytes fetched twice"
    );
}

/// `n` downloads of `path` from `addr` (with a 10 s limit each): how many got the whole body,
/// and what the others got (first line, or how the connection ended).
fn legit_downloads(addr: SocketAddr, path: &str, want: &[u8], n: usize) -> (usize, Vec<String>) {
    let mut ok = 0;
    let mut failed = Vec::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let Ok(s) = TcpStream::connect(addr) else {
            failed.push(format!(
                "connect refused after {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
            continue;
        };
        let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
        let connected = t0.elapsed().as_secs_f64();
        let limit = Duration::from_secs(10);
        let (all, closed) = raw_get_on(s, path, "Connection: close\r\n", limit);
        if body_of(&all) == want {
            ok += 1;
        } else {
            let first = head_of(&all).lines().next().unwrap_or("").to_string();
            failed.push(format!(
                "{first:?} {} bytes closed={closed} after {:.1} s (port {port}, connected after \
                 {connected:.1} s)",
                all.len(),
                t0.elapsed().as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (ok, failed)
}

/// This namespace's TCP counters of connections the kernel dropped before any accept:
/// (ListenOverflows, ListenDrops, TCPReqQFullDrop) from /proc/net/netstat.
fn listen_drops() -> [u64; 3] {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return [0; 3];
    };
    let pairs: Vec<(&str, u64)> = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .map(|(n, v)| (n, v.parse().unwrap_or(0)))
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
    [
        get("ListenOverflows"),
        get("ListenDrops"),
        get("TCPReqQFullDrop"),
    ]
}

#[test]
fn hogs_and_slow_headers_leave_room_for_a_legitimate_client() {
    netns!("hogs_and_slow_headers_leave_room_for_a_legitimate_client");
    let lan = FaultLan::new("hogs", &small_repo(), &[]);
    let p = &lan.pkgs[0];
    // B's cache holds the package: its peer port serves it
    std::fs::write(lan.t.join("b/cache").join(&p.file), &p.bytes).unwrap();
    let sources: Vec<String> = (20..30).map(|i| format!("127.0.0.{i}")).collect();
    let sources = sources.join(",");
    let listeners = [
        (
            "peer port",
            lan.b.peer,
            format!("/{}", p.file),
            "/nothing-1-1-any.pkg.tar.zst",
        ),
        ("front", lan.b.front, format!("{REPO}/{}", p.file), "/x"),
    ];
    for (name, addr, path, hog_path) in &listeners {
        for (what, args) in [
            (
                "300 keep-alive hogs",
                vec!["--keepalive", "300", "--every", "20"],
            ),
            ("1200 slow headers", vec!["--slow", "1200"]),
        ] {
            let mut a = args.clone();
            a.extend(["--sources", &sources, "--path", hog_path]);
            let drops0 = listen_drops();
            let crowd = Crowd::start(*addr, 25, &a);
            std::thread::sleep(Duration::from_secs(3));
            let n = 40;
            let (ok, failed) = legit_downloads(*addr, path, &p.bytes, n);
            let stats = crowd.finish();
            let drops = listen_drops();
            let drops: Vec<u64> = drops.iter().zip(drops0).map(|(a, b)| a - b).collect();
            eprintln!(
                "FAULT {what} on the {name}: {ok} of {n} downloads succeeded; crowd {}; \
                 kernel listen overflows/drops/reqq-full {drops:?}; failures {failed:?}",
                stats.trim()
            );
            assert!(ok * 100 >= n * 95, "{what} on the {name}: {ok} of {n}");
        }
    }
}

#[test]
fn a_cut_upstream_body_never_ends_cleanly() {
    netns!("a_cut_upstream_body_never_ends_cleanly");
    let lan = FaultLan::new(
        "cut",
        &small_repo(),
        &[("*.db", "chunked-cut"), ("*.files", "short")],
    );
    std::fs::write(lan.t.join("repo/flocontest.files"), pattern(2_000_000, 3)).unwrap();
    for file in ["flocontest.db", "flocontest.files"] {
        let g = lan.get(file);
        report("cut upstream", &g, file);
        assert!(
            !g.complete,
            "{file}: a cut body reached the client as complete"
        );
    }
}

#[test]
fn the_front_answers_only_loopback_hosts() {
    netns!("the_front_answers_only_loopback_hosts");
    let lan = FaultLan::new("host", &small_repo(), &[]);
    let paths = [
        "/.flocon/status.json".to_string(),
        "/.flocon/lookup/one-1.0-1-any.pkg.tar.zst".to_string(),
        format!("{REPO}/flocontest.db"),
    ];
    for path in &paths {
        for host in ["attacker.example", "attacker.example:19433", "192.168.1.1"] {
            let g = fetch(lan.b.front, path, host, "");
            report("foreign Host", &g, &format!("Host: {host}, {path}"));
            assert!(matches!(g.status, 421 | 403), "{host} {path}: {}", g.head);
        }
        for host in [
            "localhost",
            "localhost:19433",
            "127.0.0.1:19433",
            "[::1]:19433",
        ] {
            let g = fetch(lan.b.front, path, host, "");
            assert_eq!(g.status, 200, "{host} {path}: {}", g.head);
        }
    }
}

#[test]
fn names_reach_the_mirror_encoded_once() {
    netns!("names_reach_the_mirror_encoded_once");
    let lan = FaultLan::new("names", &small_repo(), &[]);
    for (asked, upstream) in [
        (
            "%252e%252e%252fx-1-1-any.pkg.tar.zst",
            "%252e%252e%252fx-1-1-any.pkg.tar.zst",
        ),
        ("a%3Fb-1-1-any.pkg.tar.zst", "a%3Fb-1-1-any.pkg.tar.zst"),
        ("a%2500-1-1-any.pkg.tar.zst", "a%2500-1-1-any.pkg.tar.zst"),
        (
            "a%250d%250a-1-1-any.pkg.tar.zst",
            "a%250d%250a-1-1-any.pkg.tar.zst",
        ),
    ] {
        let g = lan.get(asked);
        assert_eq!(g.status, 404, "{asked}: {}", g.head);
        let paths: Vec<String> = lan
            .mirror
            .events()
            .iter()
            .filter(|e| e.ev() == "req")
            .filter_map(|e| e.str("path"))
            .collect();
        let want = format!("{REPO}/{upstream}");
        report(
            "double-encoded name",
            &g,
            &format!("asked {asked}, the mirror saw {:?}", paths.last()),
        );
        assert!(paths.contains(&want), "{asked}: the mirror saw {paths:?}");
    }
}

#[test]
fn an_upstream_redirect_to_the_front_is_refused() {
    netns!("an_upstream_redirect_to_the_front_is_refused");
    let lan = FaultLan::new(
        "loop",
        &small_repo(),
        &[("loop-*", "redirect:http://127.0.0.3:19433{path}")],
    );
    let file = "loop-1-1-any.pkg.tar.zst";
    let (all, _) = raw_get(
        lan.b.front,
        &format!("{REPO}/{file}"),
        "Connection: close\r\n",
        Duration::from_secs(10),
    );
    let head = head_of(&all);
    eprintln!(
        "FAULT upstream redirect to the front: {}",
        head.lines().next().unwrap_or("")
    );
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert_eq!(lan.mirror.requests(file).len(), 1, "flocon called itself");
}
