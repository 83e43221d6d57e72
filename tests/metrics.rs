//! `/metrics`, `flocon status` and the lifetime counters, with real daemons on `lo` in a
//! private network namespace: host A (127.0.0.2) holds two packages, host B (127.0.0.3)
//! takes them from A and a third from the mirror; the counters must say exactly that, on
//! both sides, and B's "saved from the Internet" must survive a restart.

mod common;
use common::*;
use std::time::Duration;

const REPO: &str = "/flocontest/os/x86_64";

/// The value of one sample (`name{labels}`) of a Prometheus page.
fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn metrics(d: &Daemon, path: &str) -> String {
    let (r, body) = get(d.front, path, &[]);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{}",
        r.head
    );
    String::from_utf8(body).unwrap()
}

fn status_text(d: &Daemon) -> String {
    let out = std::process::Command::new(BIN)
        .args(["status", "--listen", &d.front.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn start(t: &TempDir, host: &str, ip: &str, conf: &std::path::Path) -> Daemon {
    let cache = t.join(&format!("{host}/cache"));
    let db = t.join(&format!("{host}/db"));
    let mut o = DaemonOpts::new(t.path(), &cache);
    o.peer_ip = ip;
    o.name = host;
    o.pacman_conf = Some(conf);
    o.db_path = Some(&db);
    Daemon::start(o)
}

#[test]
fn lan_hits_misses_and_bytes_are_counted_and_the_saving_survives_a_restart() {
    netns!("lan_hits_misses_and_bytes_are_counted_and_the_saving_survives_a_restart");
    let t = TempDir::new("metrics");
    let pkgs = make_repo(
        t.path(),
        &[
            ("small", 20_000, "any"),
            ("medium", 3_000_000, "x86_64"),
            ("other", 5_000, "any"),
        ],
    );
    let mirror = Mirror::start("127.0.0.100", t.join("repo"), false);
    let conf_a = host_conf(t.path(), "a", 19433, &[mirror.url()]);
    let conf_b = host_conf(t.path(), "b", 19433, &[mirror.url()]);
    for p in &pkgs[..2] {
        std::fs::write(t.join("a/cache").join(&p.file), &p.bytes).unwrap();
    }
    let a = start(&t, "a", "127.0.0.2", &conf_a);
    let mut b = start(&t, "b", "127.0.0.3", &conf_b);
    assert!(
        wait_until(Duration::from_secs(10), || b.peer_names() == ["a"]
            && b.status_json().contains("\"indexed_packages\":3")),
        "B does not see A: {}",
        b.status_json()
    );

    for p in &pkgs {
        let (r, body) = get(b.front, &format!("{REPO}/{}", p.file), &[]);
        assert_eq!(r.status, 200, "{}: {}", p.file, r.head);
        assert!(body == p.bytes, "{} differs", p.file);
    }
    let from_lan = (pkgs[0].bytes.len() + pkgs[1].bytes.len()) as u64;
    let upstream = pkgs[2].bytes.len() as u64;

    let m = metrics(&b, "/metrics");
    let want = [
        ("flocon_lan_hits_total{repo=\"flocontest\"}", 2),
        ("flocon_lan_bytes_total{repo=\"flocontest\"}", from_lan),
        ("flocon_lan_misses_total{repo=\"flocontest\"}", 1),
        ("flocon_upstream_files_total{repo=\"flocontest\"}", 1),
        ("flocon_upstream_bytes_total{repo=\"flocontest\"}", upstream),
        ("flocon_rejected_copies_total", 0),
        ("flocon_bans_total", 0),
        ("flocon_peers", 1),
        ("flocon_lifetime_lan_bytes", from_lan),
        ("flocon_lookup_duration_seconds_count", 3),
    ];
    for (series, v) in want {
        assert_eq!(sample(&m, series), Some(v), "{series} in\n{m}");
    }
    // the other path gives the same page
    assert!(
        metrics(&b, "/.flocon/metrics").contains("flocon_lan_hits_total{repo=\"flocontest\"} 2")
    );
    println!("--- B's /metrics after two LAN hits and one miss\n{m}");

    let ma = metrics(&a, "/metrics");
    let served = sample(&ma, "flocon_served_bytes_total").unwrap();
    assert!(served >= from_lan, "A served {served} < {from_lan}\n{ma}");
    assert_eq!(sample(&ma, "flocon_lifetime_served_bytes"), Some(served));

    let today = {
        let out = std::process::Command::new("date")
            .args(["-u", "+%F"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let s = status_text(&b);
    println!("--- flocon status on B\n{s}");
    assert!(
        s.contains(&format!(
            "saved from the Internet: {} since {today}",
            human(from_lan)
        )),
        "{s}"
    );

    // a restart keeps the lifetime counters (saved at shutdown), not the since-start ones
    b.signal("TERM");
    assert_eq!(b.wait_exit(Duration::from_secs(10)).map(|x| x.0), Some(0));
    let saved = std::fs::read_to_string(t.join("state-b/counters")).unwrap();
    assert!(
        saved.contains(&format!("\nlan_bytes {from_lan}\n")),
        "{saved}"
    );
    let b2 = start(&t, "b", "127.0.0.3", &conf_b);
    let m2 = metrics(&b2, "/metrics");
    assert_eq!(
        sample(&m2, "flocon_lifetime_lan_bytes"),
        Some(from_lan),
        "{m2}"
    );
    assert_eq!(
        sample(&m2, "flocon_lan_hits_total{repo=\"flocontest\"}"),
        None,
        "{m2}"
    );
    assert!(
        status_text(&b2).contains(&format!("saved from the Internet: {}", human(from_lan))),
        "{}",
        status_text(&b2)
    );
}

/// The status page's size format, computed independently: one decimal, binary units.
fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
