//! The peer file server (docs/DESIGN.md, "The peer server") against the real binary, over real sockets, inside a
//! private network namespace per test.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const BIG: &str = "big-1.0-1-x86_64.pkg.tar.zst";

fn cache_with_big(t: &TempDir, len: usize) -> Vec<u8> {
    std::fs::create_dir_all(t.join("cache")).unwrap();
    let data = pattern(len, 7);
    std::fs::write(t.join("cache").join(BIG), &data).unwrap();
    data
}

#[test]
fn get_64_mib_is_byte_identical_and_head_matches() {
    netns!("get_64_mib_is_byte_identical_and_head_matches");
    let t = TempDir::new("get");
    let data = cache_with_big(&t, 64 << 20);
    let d = Daemon::start(DaemonOpts::new(t.path(), &t.join("cache")));
    let (r, body) = get(d.peer, &format!("/{BIG}"), &[]);
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.header("content-length").as_deref(), Some("67108864"));
    assert!(r.header("last-modified").is_some());
    assert!(body == data, "body differs (len {})", body.len());
    let (h, hbody) = request(d.peer, "HEAD", &format!("/{BIG}"), &[]);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length").as_deref(), Some("67108864"));
    assert!(hbody.is_empty());
}

#[test]
fn resume_gets_206_with_the_right_tail_and_416_past_the_end() {
    netns!("resume_gets_206_with_the_right_tail_and_416_past_the_end");
    let t = TempDir::new("range");
    let data = cache_with_big(&t, 1 << 20);
    let d = Daemon::start(DaemonOpts::new(t.path(), &t.join("cache")));
    // curl -C - : a partial file, then resume
    let part = t.join("out.part");
    std::fs::write(&part, &data[..300_000]).unwrap();
    let st = std::process::Command::new("curl")
        .args(["-sS", "-C", "-", "-o"])
        .arg(&part)
        .arg(format!("http://{}/{BIG}", d.peer))
        .args(["-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&st.stdout), "206", "{st:?}");
    assert!(
        std::fs::read(&part).unwrap() == data,
        "resumed file differs"
    );
    let (r, body) = get(d.peer, &format!("/{BIG}"), &[("Range", "bytes=1048570-")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 1048570-1048575/1048576")
    );
    assert_eq!(body, &data[1048570..]);
    let (r, _) = get(d.peer, &format!("/{BIG}"), &[("Range", "bytes=1048576-")]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes */1048576")
    );
    let (r, body) = get(d.peer, &format!("/{BIG}"), &[("Range", "bytes=-10")]);
    assert_eq!((r.status, body.as_slice()), (206, &data[data.len() - 10..]));
}

#[test]
fn hostile_names_and_special_files_are_refused() {
    netns!("hostile_names_and_special_files_are_refused");
    let t = TempDir::new("hostile");
    cache_with_big(&t, 1000);
    let cache = t.join("cache");
    std::fs::write(t.join("secret-1-1-any.pkg.tar.zst"), b"outside").unwrap();
    std::os::unix::fs::symlink(
        t.join("secret-1-1-any.pkg.tar.zst"),
        cache.join("link-1-1-any.pkg.tar.zst"),
    )
    .unwrap();
    std::fs::write(cache.join("part-1-1-any.pkg.tar.zst.part"), b"partial").unwrap();
    std::fs::create_dir(cache.join("dir-1-1-any.pkg.tar.zst")).unwrap();
    std::fs::write(cache.join("notes.txt"), b"not a package").unwrap();
    std::fs::write(cache.join(".hidden-1-1-any.pkg.tar.zst"), b"dot").unwrap();
    let fifo = cache.join("fifo-1-1-any.pkg.tar.zst");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let d = Daemon::start(DaemonOpts::new(t.path(), &cache));
    let hostile = [
        "/../secret-1-1-any.pkg.tar.zst",
        "/%2e%2e/secret-1-1-any.pkg.tar.zst",
        "/%2E%2e%2fsecret-1-1-any.pkg.tar.zst",
        "/..%2fsecret-1-1-any.pkg.tar.zst",
        "//etc/passwd",
        "/a//b.pkg.tar.zst",
        "/..\\secret-1-1-any.pkg.tar.zst",
        "/%5c..%5csecret-1-1-any.pkg.tar.zst",
        "/x%00.pkg.tar.zst",
        "/etc/passwd",
        "/%ef%bc%8e%ef%bc%8e/secret-1-1-any.pkg.tar.zst",
        "/%e2%80%aebig-1.0-1-x86_64.pkg.tar.zst",
        "/link-1-1-any.pkg.tar.zst",
        "/part-1-1-any.pkg.tar.zst.part",
        "/dir-1-1-any.pkg.tar.zst",
        "/notes.txt",
        "/.hidden-1-1-any.pkg.tar.zst",
        "/fifo-1-1-any.pkg.tar.zst",
        "/",
        "/%",
        "/%zz.pkg.tar.zst",
    ];
    for path in hostile {
        let (r, body) = get(d.peer, path, &[]);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.head);
        assert!(
            !body.windows(7).any(|w| w == b"outside"),
            "{path} leaked the file outside"
        );
    }
    let long = format!("/{}.pkg.tar.zst", "a".repeat(300));
    assert!(matches!(get(d.peer, &long, &[]).0.status, 400 | 404 | 414));
    // still serving after all that
    assert_eq!(get(d.peer, &format!("/{BIG}"), &[]).0.status, 200);
}

#[test]
fn oversized_head_gets_431_and_slow_senders_are_dropped() {
    netns!("oversized_head_gets_431_and_slow_senders_are_dropped");
    let t = TempDir::new("limits");
    cache_with_big(&t, 1000);
    let d = Daemon::start(DaemonOpts::new(t.path(), &t.join("cache")));
    let big_header = "x".repeat(20_000);
    let (r, _) = get(d.peer, &format!("/{BIG}"), &[("X-Junk", &big_header)]);
    assert_eq!(r.status, 431);
    // a slowloris: half a head, then silence
    let mut slow = TcpStream::connect(d.peer).unwrap();
    slow.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = Instant::now();
    // others are served meanwhile
    for _ in 0..5 {
        assert_eq!(get(d.peer, &format!("/{BIG}"), &[]).0.status, 200);
    }
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = t0.elapsed();
    assert!(
        n == 0 || buf.starts_with(b"HTTP/1.1 408"),
        "slow sender got an answer: {:?}",
        &buf[..n]
    );
    assert!(
        waited < Duration::from_secs(19),
        "slow sender not dropped ({waited:?})"
    );
}

#[test]
fn a_thousand_connections_are_served_or_refused_cleanly() {
    netns!("a_thousand_connections_are_served_or_refused_cleanly");
    let t = TempDir::new("many");
    let data = cache_with_big(&t, 100_000);
    let d = Daemon::start(DaemonOpts::new(t.path(), &t.join("cache")));
    let req = format!("GET /{BIG} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut conns = Vec::new();
    // from 40 addresses: one address alone holds at most its share (guard::MAX_PER_ADDRESS)
    let connect_from = |i: usize| -> std::io::Result<TcpStream> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        let src: std::net::SocketAddr = format!("127.0.0.{}:0", 10 + i % 40).parse().unwrap();
        s.bind(&src.into())?;
        s.connect(&d.peer.into())?;
        Ok(s.into())
    };
    for i in 0..1000 {
        match connect_from(i) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let _ = s.write_all(req.as_bytes());
                conns.push(s);
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }
    let (mut ok, mut busy) = (0, 0);
    for mut s in conns {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let (r, body) = split_response(&all);
        match r.status {
            200 => {
                assert!(body == data);
                ok += 1
            }
            503 => busy += 1,
            0 => busy += 1, // reset while the backlog was full: refused, not a crash
            s => panic!("unexpected status {s}"),
        }
    }
    eprintln!("1000 connections: {ok} served, {busy} refused");
    assert!(ok >= 200, "only {ok} served");
    assert_eq!(ok + busy, 1000);
    // the daemon survived and still serves
    assert_eq!(get(d.peer, &format!("/{BIG}"), &[]).0.status, 200);
}

#[test]
fn sigterm_exits_zero_promptly() {
    netns!("sigterm_exits_zero_promptly");
    let t = TempDir::new("term");
    cache_with_big(&t, 1000);
    let mut d = Daemon::start(DaemonOpts::new(t.path(), &t.join("cache")));
    // an idle keep-alive connection must not hold the exit
    let _idle = TcpStream::connect(d.peer).unwrap();
    d.signal("TERM");
    let (code, took) = d.wait_exit(Duration::from_secs(10)).expect("did not exit");
    assert_eq!(code, 0, "{}", d.log_text());
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn bad_options_exit_2_with_one_clear_line() {
    // no daemon starts: no namespace needed
    for args in [
        &["--port", "abc"][..],
        &["--listen", "10.0.0.1:19433"],
        &["--bogus"],
        &["--lookup-ms", "-1"],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("flocon: "), "{args:?}: {err}");
        assert!(
            err.contains(args[0]),
            "{args:?}: the message names the option: {err}"
        );
    }
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flocon "));
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--cache-dir"));
}
