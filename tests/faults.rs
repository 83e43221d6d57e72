//! Faults (issue 9): the misbehaving peers and mirrors of tests/fakes/ (Python file servers,
//! and a discovery `Announcer` built on the real protocol code), checked on the wire. Every
//! test runs in a private network namespace of its own.

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
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (Vec::new(), true);
    };
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
