//! The loopback front (docs/DESIGN.md, "The front"): what pacman gets, from peers (verified) or
//! upstream, with real package files and a real `repo-add` sync db, daemons on `lo` in a
//! private network namespace per test.

mod common;
use common::*;
use std::time::Duration;

struct Lan {
    t: TempDir,
    pkgs: Vec<Pkg>,
    mirror: Mirror,
    a: Option<Daemon>,
    b: Daemon,
}

const REPO: &str = "/flocontest/os/x86_64";

/// Host A (127.0.0.2) holds `on_a` in its cache; host B (127.0.0.3) asks. Both list flocon
/// first and the mirror (127.0.0.100) second.
fn lan(tag: &str, on_a: &[usize], chunked: bool, b_extra_upstreams: &[String]) -> Lan {
    lan_with(tag, on_a, chunked, &[], b_extra_upstreams)
}

/// `lan` with upstreams for B before (`first`) and after (`extra`) the mirror.
fn lan_with(
    tag: &str,
    on_a: &[usize],
    chunked: bool,
    first: &[String],
    b_extra_upstreams: &[String],
) -> Lan {
    lan_full(tag, on_a, chunked, first, b_extra_upstreams, None)
}

/// `lan_with`, where B's state dir is a tmpfs of `b_state_kib` KiB (a full disk, on demand).
fn lan_full(
    tag: &str,
    on_a: &[usize],
    chunked: bool,
    first: &[String],
    b_extra_upstreams: &[String],
    b_state_kib: Option<u64>,
) -> Lan {
    let t = TempDir::new(tag);
    let pkgs = make_repo(
        t.path(),
        &[
            ("small", 20_000, "any"),
            ("medium", 3_000_000, "x86_64"),
            ("big", 24_000_000, "x86_64"),
            ("other", 5_000, "any"),
        ],
    );
    let mirror = Mirror::start("127.0.0.100", t.join("repo"), chunked);
    let conf_a = host_conf(t.path(), "a", 19433, &[mirror.url()]);
    let mut ups = first.to_vec();
    ups.push(mirror.url());
    ups.extend_from_slice(b_extra_upstreams);
    let conf_b = host_conf(t.path(), "b", 19433, &ups);
    for &i in on_a {
        std::fs::write(t.join("a/cache").join(&pkgs[i].file), &pkgs[i].bytes).unwrap();
    }
    let start = |host: &str, ip: &str, conf: &std::path::Path| {
        let cache = t.join(&format!("{host}/cache"));
        let db = t.join(&format!("{host}/db"));
        let mut o = DaemonOpts::new(t.path(), &cache);
        o.peer_ip = ip;
        o.name = host;
        o.pacman_conf = Some(conf);
        o.db_path = Some(&db);
        Daemon::start(o)
    };
    if let Some(kib) = b_state_kib {
        // the test runs in a private mount namespace (netns!): this mount dies with it
        let state = t.join("state-b");
        std::fs::create_dir_all(&state).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k"),
                "flocon-test",
                state.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
    }
    let a = start("a", "127.0.0.2", &conf_a);
    let b = start("b", "127.0.0.3", &conf_b);
    assert!(
        wait_until(Duration::from_secs(5), || b
            .peer_names()
            .contains(&"a".to_string())),
        "B does not see A"
    );
    assert!(
        wait_until(Duration::from_secs(5), || b
            .status_json()
            .contains("\"indexed_packages\":4")),
        "{}",
        b.status_json()
    );
    Lan {
        t,
        pkgs,
        mirror,
        a: Some(a),
        b,
    }
}

impl Lan {
    /// Puts `bytes` in A's cache behind flocon's back, then waits until B holds A's digest
    /// listing it: a file that reaches a cache outside flocon is offered to the LAN by the
    /// holder's next digest (docs/PROTOCOL.md §14.5); before that B finds it only if A
    /// answers B's INTENT within the miss wait, which a loaded machine does not promise.
    fn put_in_a(&self, file: &str, bytes: &[u8]) {
        let a = self.a.as_ref().expect("A runs");
        let since = a.digest_version();
        std::fs::write(self.t.join("a/cache").join(file), bytes).unwrap();
        a.wait_published(since, file, &[&self.b]);
    }

    fn get(&self, file: &str, headers: &[(&str, &str)]) -> (Resp, Vec<u8>) {
        get(self.b.front, &format!("{REPO}/{file}"), headers)
    }
    fn mirror_asked_for(&self, file: &str) -> usize {
        self.mirror
            .requests()
            .iter()
            .filter(|r| r.contains(&format!("/{file} ")))
            .count()
    }
}

#[test]
fn a_hit_comes_from_the_peer_byte_identical_and_the_mirror_is_not_asked() {
    netns!("a_hit_comes_from_the_peer_byte_identical_and_the_mirror_is_not_asked");
    let lan = lan("hit", &[0, 1, 2], false, &[]);
    for p in &lan.pkgs[..3] {
        let (r, body) = lan.get(&p.file, &[]);
        assert_eq!(r.status, 200, "{}: {}", p.file, r.head);
        assert_eq!(r.header("content-length"), Some(p.bytes.len().to_string()));
        assert!(body == p.bytes, "{} differs", p.file);
        assert_eq!(lan.mirror_asked_for(&p.file), 0, "{}", p.file);
    }
    let json = lan.b.status_json();
    assert!(json.contains("\"lan_hits\":3"), "{json}");
    // resuming a partial download from the verified copy
    let big = &lan.pkgs[2];
    let (r, body) = lan.get(&big.file, &[("Range", "bytes=1000000-")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(format!(
            "bytes 1000000-{}/{}",
            big.bytes.len() - 1,
            big.bytes.len()
        ))
    );
    assert!(body == big.bytes[1_000_000..]);
    // nothing was ever written into A's or B's pacman cache by flocon
    assert_eq!(std::fs::read_dir(lan.t.join("b/cache")).unwrap().count(), 0);
}

#[test]
fn misses_go_upstream_proxied_with_304_range_and_chunked() {
    netns!("misses_go_upstream_proxied_with_304_range_and_chunked");
    for chunked in [false, true] {
        let lan = lan(
            if chunked { "miss-chunked" } else { "miss" },
            &[],
            chunked,
            &[],
        );
        let p = &lan.pkgs[1];
        let (r, body) = lan.get(&p.file, &[]);
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(body == p.bytes, "chunked={chunked}: proxied bytes differ");
        assert_eq!(lan.mirror_asked_for(&p.file), 1);
        let (r, body) = lan.get(&p.file, &[("Range", "bytes=100-")]);
        assert_eq!(r.status, 206, "{}", r.head);
        assert!(body == p.bytes[100..]);
        let (r, body) = lan.get(
            "flocontest.db",
            &[("If-Modified-Since", "Sat, 01 Jan 2022 00:00:00 GMT")],
        );
        assert_eq!(r.status, 304, "{}", r.head);
        assert!(body.is_empty());
        let (r, body) = lan.get("flocontest.db", &[]);
        assert_eq!(r.status, 200);
        assert!(body == std::fs::read(lan.t.join("repo/flocontest.db")).unwrap());
        assert_eq!(
            lan.get("nonexistent-1-1-any.pkg.tar.zst", &[]).0.status,
            404
        );
    }
}

#[test]
fn https_upstream_is_a_redirect_and_no_upstream_is_404() {
    netns!("https_upstream_is_a_redirect_and_no_upstream_is_404");
    let t = TempDir::new("https");
    make_repo(t.path(), &[("small", 1000, "any")]);
    let conf = host_conf(
        t.path(),
        "b",
        19433,
        &["https://mirror.example.org/$repo/os/$arch".into()],
    );
    let cache = t.join("b/cache");
    let db = t.join("b/db");
    let mut o = DaemonOpts::new(t.path(), &cache);
    o.pacman_conf = Some(&conf);
    o.db_path = Some(&db);
    let b = Daemon::start(o);
    let (r, _) = get(b.front, &format!("{REPO}/flocontest.db"), &[]);
    assert_eq!(r.status, 307);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://mirror.example.org/flocontest/os/x86_64/flocontest.db")
    );
    let (r, _) = get(
        b.front,
        "/unknownrepo/os/x86_64/foo-1-1-any.pkg.tar.zst",
        &[],
    );
    assert_eq!(r.status, 404);
    for bad in [
        "/flocontest/os/x86_64/../../etc/passwd",
        "/flocontest/os/x86_64/%2e%2e",
        "/x",
        "/flocontest/os/x86_64/a%2fb.pkg.tar.zst",
    ] {
        assert!(
            matches!(get(b.front, bad, &[]).0.status, 400 | 404),
            "{bad}"
        );
    }
}

#[test]
fn databases_never_come_from_peers() {
    netns!("databases_never_come_from_peers");
    let lan = lan("db", &[], false, &[]);
    // A's cache holds a file named like the db (a stale or hostile copy)
    std::fs::write(lan.t.join("a/cache/flocontest.db"), b"stale db").unwrap();
    let (r, body) = lan.get("flocontest.db", &[]);
    assert_eq!(r.status, 200);
    assert!(body != b"stale db");
    assert_eq!(lan.mirror_asked_for("flocontest.db"), 1);
}

#[test]
fn a_corrupt_copy_is_never_handed_out_and_its_peer_is_banned() {
    netns!("a_corrupt_copy_is_never_handed_out_and_its_peer_is_banned");
    let lan = lan("corrupt", &[], false, &[]);
    let p = &lan.pkgs[1];
    let mut bad = p.bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    lan.put_in_a(&p.file, &bad);
    let (r, body) = lan.get(&p.file, &[]);
    assert_eq!(r.status, 200);
    assert!(body == p.bytes, "the corrupt copy reached the client");
    assert_eq!(
        lan.mirror_asked_for(&p.file),
        1,
        "the good bytes came from upstream"
    );
    let json = lan.b.status_json();
    assert!(json.contains("\"bans\":[{"), "A is not banned: {json}");
    assert!(json.contains("\"rejected_copies\":1"), "{json}");
    // the ban holds for the host, not only that daemon instance: a restarted A is skipped
    let mut lan = lan;
    drop(lan.a.take());
    let p0 = &lan.pkgs[0];
    std::fs::write(lan.t.join("a/cache").join(&p0.file), &p0.bytes).unwrap();
    let conf_a = lan.t.join("a/pacman.conf");
    let (cache_a, db_a) = (lan.t.join("a/cache"), lan.t.join("a/db"));
    let mut o = DaemonOpts::new(lan.t.path(), &cache_a);
    o.peer_ip = "127.0.0.2";
    o.name = "a2";
    o.pacman_conf = Some(&conf_a);
    o.db_path = Some(&db_a);
    lan.a = Some(Daemon::start(o));
    assert!(wait_until(Duration::from_secs(5), || lan
        .b
        .peer_names()
        .contains(&"a2".to_string())));
    let (r, body) = lan.get(&p0.file, &[]);
    assert_eq!(r.status, 200);
    assert!(body == p0.bytes);
    assert_eq!(
        lan.mirror_asked_for(&p0.file),
        1,
        "the banned host was used again after a restart"
    );
    // nor for another file it publishes afterwards (here another build, of another size,
    // which B would refuse anyway: its size check has its own test in discovery.rs)
    let q = &lan.pkgs[3];
    lan.put_in_a(&q.file, &pattern(q.bytes.len() + 7, 5));
    let (r, body) = lan.get(&q.file, &[]);
    assert_eq!(r.status, 200);
    assert!(body == q.bytes);
}

#[test]
fn faulty_peers_never_deliver_wrong_bytes() {
    netns!("faulty_peers_never_deliver_wrong_bytes");
    for (mode, ip) in [
        (PeerMode::TooFew, "127.0.0.7"),
        (PeerMode::TooMany, "127.0.0.8"),
        (PeerMode::Stall, "127.0.0.9"),
    ] {
        // A has nothing; the fake peer at 127.0.0.7 claims the medium package
        let lan = lan(&format!("fault-{mode:?}"), &[], false, &[]);
        let p = &lan.pkgs[1];
        let fake = FakePeer::start(ip, &p.file, p.bytes.clone(), mode);
        assert!(
            wait_until(Duration::from_secs(5), || lan
                .b
                .peer_names()
                .contains(&"fake".to_string())),
            "{:?}",
            lan.b.peer_names()
        );
        let t0 = std::time::Instant::now();
        let (r, body) = lan.get(&p.file, &[]);
        let took = t0.elapsed();
        assert_eq!(r.status, 200, "{mode:?}: {}", r.head);
        assert!(body == p.bytes, "{mode:?}: wrong bytes reached the client");
        assert!(
            fake.requests.load(std::sync::atomic::Ordering::SeqCst) >= 1,
            "{mode:?}: the fake peer was not tried"
        );
        assert!(
            took < Duration::from_secs(10),
            "{mode:?}: took {took:?}, pacman would have aborted"
        );
        eprintln!("{mode:?}: right bytes after {took:?}");
    }
}

#[test]
fn a_peer_dying_mid_transfer_is_replaced_by_another_peer() {
    netns!("a_peer_dying_mid_transfer_is_replaced_by_another_peer");
    // A has the real file; the fake peer (fewer uploads in flight: preferred or not) dies
    let lan = lan("resume-peer", &[1], false, &[]);
    let p = &lan.pkgs[1];
    let _fake = FakePeer::start("127.0.0.7", &p.file, p.bytes.clone(), PeerMode::TooFew);
    assert!(wait_until(Duration::from_secs(5), || lan
        .b
        .peer_names()
        .len()
        == 2));
    let (r, body) = lan.get(&p.file, &[]);
    assert_eq!(r.status, 200);
    assert!(body == p.bytes);
    assert_eq!(
        lan.mirror_asked_for(&p.file),
        0,
        "a LAN peer could still deliver"
    );
}

#[test]
fn five_parallel_downloads_from_each_of_two_clients() {
    netns!("five_parallel_downloads_from_each_of_two_clients");
    let lan = lan("parallel", &[0, 1, 2], false, &[]);
    let front = lan.b.front;
    // all ten requests leave together: pkg 0 four times, 1 and 2 twice each, 3 (not on A) twice
    let go = std::sync::Arc::new(std::sync::Barrier::new(10));
    let mut handles = Vec::new();
    for _client in 0..2 {
        for i in 0..5 {
            let p = &lan.pkgs[i % 4];
            let (file, want, go) = (p.file.clone(), p.bytes.clone(), go.clone());
            handles.push(std::thread::spawn(move || {
                go.wait();
                let (r, body) = get(front, &format!("{REPO}/{file}"), &[]);
                assert_eq!(r.status, 200, "{file}: {}", r.head);
                assert!(body == want, "{file} differs");
            }));
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    for p in &lan.pkgs[..3] {
        assert_eq!(lan.mirror_asked_for(&p.file), 0, "{} is on A", p.file);
    }
    assert!(lan.mirror_asked_for(&lan.pkgs[3].file) >= 1);
    // the big file's two requests shared one copy from A (it takes far longer than the
    // requests take to arrive): A sent it once, whatever happened to the small ones
    let sent: u64 = lan
        .a
        .as_ref()
        .unwrap()
        .status_json()
        .split("\"peer_bytes_sent\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let size = |i: usize| lan.pkgs[i].bytes.len() as u64;
    let unshared_big = 4 * size(0) + 2 * size(1) + 2 * size(2);
    assert!(
        sent <= unshared_big - size(2),
        "A sent {sent} bytes: the big file went twice"
    );
    assert!(sent >= size(0) + size(1) + size(2));
}

#[test]
fn a_package_asked_right_after_the_db_is_replaced_still_comes_from_the_lan() {
    netns!("a_package_asked_right_after_the_db_is_replaced_still_comes_from_the_lan");
    let lan = lan("newdb", &[0], false, &[]);
    // a new package enters the repo (repo-add updates the db); A has it in its cache
    let new = make_repo(lan.t.path(), &[("fresh", 2_000_000, "any")]).remove(0);
    lan.put_in_a(&new.file, &new.bytes);
    // pacman -Sy renames the new db into place, then asks for the package at once
    let tmp = lan.t.join("b/db/sync/flocontest.db.part");
    std::fs::copy(lan.t.join("repo/flocontest.db.tar.gz"), &tmp).unwrap();
    std::fs::rename(&tmp, lan.t.join("b/db/sync/flocontest.db")).unwrap();
    let (r, body) = lan.get(&new.file, &[]);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(body == new.bytes);
    assert_eq!(
        lan.mirror_asked_for(&new.file),
        0,
        "went upstream: the new db was not waited for"
    );
    // a package in no db at all does not wait: straight upstream
    let t0 = std::time::Instant::now();
    assert_eq!(lan.get("unknown-1-1-any.pkg.tar.zst", &[]).0.status, 404);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// A package file (plain tar, so its size is exact) and a one-package sync db naming it.
fn plain_repo(
    dir: &std::path::Path,
    name: &str,
    payload: &[u8],
) -> (String, Vec<u8>, std::path::PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("usr")).unwrap();
    std::fs::write(root.join("usr/blob"), payload).unwrap();
    std::fs::write(
        root.join(".PKGINFO"),
        format!("pkgname = {name}\npkgver = 1.0-1\narch = any\nsize = 1\n"),
    )
    .unwrap();
    let file = format!("{name}-1.0-1-any.pkg.tar.zst");
    let st = std::process::Command::new("bsdtar")
        .arg("-cf")
        .arg(dir.join(&file))
        .arg("-C")
        .arg(&root)
        .args([".PKGINFO", "usr"])
        .status()
        .unwrap();
    assert!(st.success());
    let db = dir.join("alt.db.tar.gz");
    let o = std::process::Command::new("repo-add")
        .arg("-q")
        .arg(&db)
        .arg(dir.join(&file))
        .output()
        .unwrap();
    assert!(o.status.success());
    (file.clone(), std::fs::read(dir.join(&file)).unwrap(), db)
}

#[test]
fn a_peer_whose_db_names_another_build_of_the_same_size_is_skipped_not_banned() {
    netns!("a_peer_whose_db_names_another_build_of_the_same_size_is_skipped_not_banned");
    let lan = lan("samesize", &[], false, &[]);
    // what an Arch ARM peer has: the same file name and size, another build, in its own db
    let ours = lan.t.join("ours");
    let theirs = lan.t.join("theirs");
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::create_dir_all(&theirs).unwrap();
    let (file, good, our_db) = plain_repo(&ours, "twin", &pattern(100_000, 1));
    let (file2, other, their_db) = plain_repo(&theirs, "twin", &pattern(100_000, 2));
    assert_eq!((&file, good.len()), (&file2, other.len()));
    assert!(good != other);
    std::fs::copy(&our_db, lan.t.join("b/db/sync/flocontest.db")).unwrap();
    std::fs::copy(&their_db, lan.t.join("a/db/sync/flocontest.db")).unwrap();
    lan.put_in_a(&file, &other);
    std::fs::copy(ours.join(&file), lan.t.join("repo").join(&file)).unwrap();
    for d in [&lan.b, lan.a.as_ref().unwrap()] {
        assert!(wait_until(Duration::from_secs(5), || d
            .status_json()
            .contains("\"indexed_packages\":1")));
    }
    let (r, body) = lan.get(&file, &[]);
    assert_eq!(r.status, 200);
    assert!(body == good, "B got the other build");
    let json = lan.b.status_json();
    assert!(
        json.contains("\"bans\":[]"),
        "an honest peer of another build was banned: {json}"
    );
    assert!(
        json.contains("\"rejected_copies\":0"),
        "the other build was even fetched: {json}"
    );
    assert!(
        lan.a
            .as_ref()
            .unwrap()
            .status_json()
            .contains("\"peer_bytes_sent\":0")
    );
}

#[test]
fn a_dead_first_mirror_then_a_slow_client_still_gets_every_byte() {
    netns!("a_dead_first_mirror_then_a_slow_client_still_gets_every_byte");
    // nothing listens on 127.0.0.1:1: the first source fails at once, the mirror takes over
    let lan = lan_with(
        "deadfirst",
        &[],
        false,
        &["http://127.0.0.1:1/$repo/os/$arch".into()],
        &[],
    );
    let p = &lan.pkgs[2];
    let mut s = std::net::TcpStream::connect(lan.b.front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET {REPO}/{} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        p.file
    )
    .unwrap();
    // a slow reader: the proxy must pause the mirror and resume it, many times
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("stalled after {} bytes: {e}", all.len()),
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    let (r, body) = split_response(&all);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(body == p.bytes, "{} of {} bytes", body.len(), p.bytes.len());
}

#[test]
fn thousands_of_pipelined_requests_do_not_crash_the_front() {
    netns!("thousands_of_pipelined_requests_do_not_crash_the_front");
    let t = TempDir::new("pipeline");
    let cache = t.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let d = Daemon::start(DaemonOpts::new(t.path(), &cache));
    let n = 30_000;
    let mut s = std::net::TcpStream::connect(d.front).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reader = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut all = Vec::new();
            let _ = s.read_to_end(&mut all);
            all
        })
    };
    use std::io::Write;
    let one = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut req = one.repeat(n - 1);
    req.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(&req).unwrap();
    let all = reader.join().unwrap();
    let answers = all.windows(12).filter(|w| w == b"HTTP/1.1 404").count();
    assert_eq!(answers, n, "the front stopped answering pipelined requests");
    assert_eq!(
        get(d.front, "/.flocon/status.json", &[]).0.status,
        200,
        "the daemon died"
    );
}

#[test]
fn a_full_staging_disk_means_upstream_not_an_error_and_no_ban() {
    netns!("a_full_staging_disk_means_upstream_not_an_error_and_no_ban");
    // B's state dir holds 1 MiB; the 3 MB package from A cannot be staged
    let lan = lan_full("fulldisk", &[1], false, &[], &[], Some(1024));
    let p = &lan.pkgs[1];
    let (r, body) = lan.get(&p.file, &[]);
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(body == p.bytes);
    assert_eq!(
        lan.mirror_asked_for(&p.file),
        1,
        "the bytes came from upstream"
    );
    let json = lan.b.status_json();
    assert!(
        json.contains("\"bans\":[]"),
        "A was banned for B's full disk: {json}"
    );
    // nothing is left behind in the staging dir
    let left = std::fs::read_dir(lan.t.join("state-b/staging"))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}

/// Open descriptors of a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn out_of_descriptors_the_front_resumes_accepting_and_serves_what_queued() {
    netns!("out_of_descriptors_the_front_resumes_accepting_and_serves_what_queued");
    use std::io::{Read, Write};
    let t = TempDir::new("emfile");
    let cache = t.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let d = Daemon::start(DaemonOpts::new(t.path(), &cache));
    // room for 4 more descriptors: the 5th connection finds none
    let limit = open_fds(d.pid()) + 4;
    let st = std::process::Command::new("prlimit")
        .args([
            &format!("--pid={}", d.pid()),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "prlimit");
    let idle: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(d.front).unwrap())
        .collect();
    // the kernel completed this handshake; the daemon cannot accept it yet
    let mut queued = std::net::TcpStream::connect(d.front).unwrap();
    queued
        .write_all(b"GET /.flocon/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = std::time::Instant::now();
    while !d.log_text().contains("retrying when descriptors free up") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no EMFILE seen:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // descriptors free up: the daemon sees these close and accepts what queued
    drop(idle);
    queued
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut all = Vec::new();
    let _ = queued.read_to_end(&mut all);
    let (r, body) = split_response(&all);
    assert_eq!(r.status, 200, "{}\n{}", r.head, d.log_text());
    assert!(String::from_utf8_lossy(&body).contains("flocon"));
}

#[test]
fn sighup_applies_what_it_can_and_names_what_needs_a_restart() {
    netns!("sighup_applies_what_it_can_and_names_what_needs_a_restart");
    let t = TempDir::new("sighup");
    let cache = t.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let d = Daemon::start(DaemonOpts::new(t.path(), &cache));
    // the peer port (needs a restart) and the lookup budget (applies) change in the file
    std::fs::write(t.join("flocon.conf"), "port = 19555\nlookup-ms = 400\n").unwrap();
    d.signal("HUP");
    let t0 = std::time::Instant::now();
    while !d.log_text().contains("SIGHUP: configuration") {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("SIGHUP: port")).collect();
    assert_eq!(
        warnings,
        ["flocon: warning: SIGHUP: port changed; keeping the old value until flocon restarts"]
    );
    // the old port still serves, the new one was never opened
    assert!(std::net::TcpStream::connect(d.peer).is_ok());
    assert!(std::net::TcpStream::connect("127.0.0.1:19555").is_err());
    // lookup-ms applied without a word; the front still answers on its address
    assert!(!log.contains("lookup-ms changed"));
    assert_eq!(get(d.front, "/.flocon/status.json", &[]).0.status, 200);
}
