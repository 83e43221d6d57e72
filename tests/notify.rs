//! The daemon under a service manager's eyes, with the real binary in a private network
//! namespace: a small `$NOTIFY_SOCKET` listener (a path socket, and an abstract `@` one)
//! receives `READY=1` only once the front accepts connections, a `STATUS=` line that follows
//! the peers, and `STOPPING=1` at SIGTERM; with `$JOURNAL_STREAM` naming its stderr, the log
//! lines carry `<N>` priorities and no `flocon:` prefix.

mod common;

use common::{Daemon, DaemonOpts, TempDir};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts flocon on 127.0.0.1 with `NOTIFY_SOCKET=notify` and stderr to `log`; `journal`:
/// also `JOURNAL_STREAM` naming that log file, as systemd names the journal's socket.
fn start(t: &TempDir, notify: &str, journal: bool) -> Daemon {
    let log = t.join("a.log");
    let stderr = std::fs::File::create(&log).unwrap();
    let meta = stderr.metadata().unwrap();
    std::fs::create_dir_all(t.join("cache")).unwrap();
    std::fs::write(t.join("pacman.conf"), "[options]\n").unwrap();
    std::fs::write(t.join("flocon.conf"), "# empty\n").unwrap();
    let mut cmd = Command::new(common::BIN);
    cmd.arg("--config")
        .arg(t.join("flocon.conf"))
        .arg("--pacman-conf")
        .arg(t.join("pacman.conf"))
        .arg("--cache-dir")
        .arg(t.join("cache"))
        .arg("--state-dir")
        .arg(t.join("state"))
        .arg("--db-path")
        .arg(t.join("db"))
        .args([
            "--listen",
            "127.0.0.1:19433",
            "--peer-addr",
            "127.0.0.1",
            "--interface",
            "lo",
            "--name",
            "a",
            "--announce-interval",
            "1",
        ])
        .env("NOTIFY_SOCKET", notify)
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(stderr);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    Daemon {
        child: Some(cmd.spawn().expect("start flocon")),
        name: "a".into(),
        log,
        front: "127.0.0.1:19433".parse().unwrap(),
        peer: "127.0.0.1:19432".parse().unwrap(),
    }
}

/// The next datagram, or a panic with the daemon's log after `limit`.
fn next(sock: &UnixDatagram, limit: Duration, d: &Daemon) -> String {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8(buf[..n].to_vec()).unwrap(),
        Err(e) => panic!(
            "no notification within {limit:?} ({e}); log:\n{}",
            d.log_text()
        ),
    }
}

/// Every datagram until one contains `want` (the others are returned too, in order).
fn until(sock: &UnixDatagram, want: &str, limit: Duration, d: &Daemon) -> Vec<String> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while !got.last().is_some_and(|m: &String| m.contains(want)) {
        let left = limit.saturating_sub(t0.elapsed());
        assert!(
            !left.is_zero(),
            "no '{want}' within {limit:?}; got {got:?}; log:\n{}",
            d.log_text()
        );
        got.push(next(sock, left, d));
    }
    got
}

fn lifecycle(t: &TempDir, listener: &UnixDatagram, name: &str, journal: bool) {
    let mut a = start(t, name, journal);
    let ready = next(listener, Duration::from_secs(20), &a);
    // READY=1 comes once the listeners are open: the front accepts at once
    assert!(
        TcpStream::connect(a.front).is_ok(),
        "READY=1 before the front listens"
    );
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= with READY=1: {ready:?}"));
    assert!(
        status.starts_with("0 peers, 0 LAN hits, 0 B from the LAN"),
        "{status}"
    );

    // a peer appears: the status follows (at most every 5 s)
    let b_cache = t.join("b-cache");
    std::fs::create_dir_all(&b_cache).unwrap();
    let mut o = DaemonOpts::new(t.path(), &b_cache);
    o.peer_ip = "127.0.0.2";
    o.name = "b";
    o.extra = vec!["--announce-interval".into(), "1".into()];
    let _b = Daemon::start(o);
    let msgs = until(listener, "STATUS=1 peer,", Duration::from_secs(30), &a);
    assert!(msgs.iter().all(|m| !m.contains("READY=1")), "{msgs:?}");

    a.signal("TERM");
    let msgs = until(listener, "STOPPING=1", Duration::from_secs(10), &a);
    assert!(msgs.last().unwrap().starts_with("STOPPING=1\n"), "{msgs:?}");
    let (code, _) = a
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert_eq!(code, 0, "{}", a.log_text());

    let log = a.log_text();
    if journal {
        for line in log.lines() {
            assert!(
                line.len() > 3 && line.starts_with('<') && line.as_bytes()[2] == b'>',
                "a journal line without its priority: {line:?}"
            );
            assert!(!line.contains("flocon:"), "{line:?}");
        }
        assert!(log.lines().any(|l| l.starts_with("<6>started")), "{log}");
    } else {
        assert!(log.lines().all(|l| l.starts_with("flocon: ")), "{log}");
    }
}

#[test]
fn notify_socket_path_gets_ready_status_stopping_and_the_journal_gets_priorities() {
    netns!("notify_socket_path_gets_ready_status_stopping_and_the_journal_gets_priorities");
    let t = TempDir::new("notify");
    let path = t.join("notify");
    let listener = UnixDatagram::bind(&path).unwrap();
    lifecycle(&t, &listener, path.to_str().unwrap(), true);
}

#[test]
fn notify_socket_abstract_and_a_terminal_log() {
    netns!("notify_socket_abstract_and_a_terminal_log");
    let t = TempDir::new("notify-abs");
    // abstract names are per network namespace: this one is private to the test
    let name = format!("flocon-notify-test-{}", std::process::id());
    let listener =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    lifecycle(&t, &listener, &format!("@{name}"), false);
}
