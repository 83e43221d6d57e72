//! Shared test harness: every test that starts the daemon runs in a private user + network
//! namespace of its own (docs/DESIGN.md, "Testing"), so no datagram can reach a real interface and every test
//! can use the default ports (and a private mount namespace, for tests that mount a small
//! tmpfs). A test calls `netns!()` first: outside a namespace it re-runs
//! itself inside a fresh one (via `unshare`) and reports that run's result.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flocon");

/// Re-runs the calling test inside a private network namespace unless already in one.
/// Returns true when the caller should run its body (we are inside).
pub fn enter_netns(test: &str) -> bool {
    if std::env::var_os("FLOCON_IN_NETNS").is_some() {
        return true;
    }
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("unshare");
    if unsafe_is_root() {
        cmd.args(["--net", "--mount"]);
    } else {
        cmd.args(["--user", "--map-root-user", "--net", "--mount"]);
    }
    cmd.args([
        "--",
        "sh",
        "-c",
        "ip link set lo up && ip link set lo multicast on && exec \"$@\"",
        "sh",
    ]);
    cmd.arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"]);
    cmd.env("FLOCON_IN_NETNS", "1");
    let out = cmd
        .output()
        .expect("unshare (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "test {test} failed inside its network namespace:\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // evidence lines a test prints for its report (see with `cargo test -- --nocapture`)
    for l in stderr.lines().chain(stdout.lines()) {
        if l.starts_with("FAULT ") {
            eprintln!("{l}");
        }
    }
    false
}

fn unsafe_is_root() -> bool {
    // /proc/self/status "Uid:" first field; avoids libc in tests
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[macro_export]
macro_rules! netns {
    ($name:expr) => {
        if !common::enter_netns($name) {
            return;
        }
        // the namespace must really be private: only `lo`
        let links = std::fs::read_to_string("/proc/net/dev").unwrap();
        assert_eq!(
            links.lines().skip(2).count(),
            1,
            "not in a private netns: {links}"
        );
    };
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("flocon-it-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // a failed test keeps its files: its daemons' logs (printed by their drop, which
        // runs after this one when a test holds the directory first) and what they served
        if std::env::var_os("FLOCON_KEEP_TMP").is_some() || std::thread::panicking() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon; killed on drop. Its stderr goes to `log`.
pub struct Daemon {
    pub child: Option<Child>,
    /// Its `--name`: how its peers list it.
    pub name: String,
    pub log: PathBuf,
    pub front: SocketAddr,
    pub peer: SocketAddr,
}

pub struct DaemonOpts<'a> {
    pub dir: &'a Path,
    pub peer_ip: &'a str,
    pub front_port: u16,
    pub cache: &'a Path,
    pub pacman_conf: Option<&'a Path>,
    pub db_path: Option<&'a Path>,
    pub extra: Vec<String>,
    pub name: &'a str,
    /// Extra environment (e.g. FLOCON_NO_DIGEST=1).
    pub env: Vec<(String, String)>,
}

impl<'a> DaemonOpts<'a> {
    pub fn new(dir: &'a Path, cache: &'a Path) -> Self {
        DaemonOpts {
            dir,
            peer_ip: "127.0.0.1",
            front_port: 19433,
            cache,
            pacman_conf: None,
            db_path: None,
            extra: vec![],
            name: "t",
            env: vec![],
        }
    }
}

impl Daemon {
    pub fn start(o: DaemonOpts) -> Daemon {
        let state = o.dir.join(format!("state-{}", o.name));
        let log = o.dir.join(format!("{}.log", o.name));
        // each daemon's front on its own loopback address, next to its peer port
        let front: SocketAddr = format!("{}:{}", o.peer_ip, o.front_port).parse().unwrap();
        let empty_conf = o.dir.join("empty-pacman.conf");
        if o.pacman_conf.is_none() {
            std::fs::write(&empty_conf, "[options]\n").unwrap();
        }
        let mut cmd = Command::new(BIN);
        let conf = o.dir.join("flocon.conf");
        if !conf.exists() {
            std::fs::write(
                &conf,
                "# empty: every setting comes from the command line\n",
            )
            .unwrap();
        }
        cmd.arg("--config").arg(&conf);
        cmd.arg("--pacman-conf")
            .arg(o.pacman_conf.unwrap_or(&empty_conf));
        cmd.arg("--cache-dir").arg(o.cache);
        cmd.arg("--state-dir").arg(&state);
        cmd.arg("--db-path").arg(
            o.db_path
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| o.dir.join("db")),
        );
        cmd.args([
            "--listen",
            &front.to_string(),
            "--peer-addr",
            o.peer_ip,
            "--interface",
            "lo",
            "--name",
            o.name,
            "--debug",
        ]);
        cmd.args(&o.extra);
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start flocon");
        let d = Daemon {
            child: Some(child),
            name: o.name.to_string(),
            log,
            front,
            peer: format!("{}:19432", o.peer_ip).parse().unwrap(),
        };
        d.wait_ready();
        d
    }

    /// Names of the peers this daemon lists (from `flocon status --json`).
    pub fn peer_names(&self) -> Vec<String> {
        let out = std::process::Command::new(BIN)
            .args(["status", "--json", "--listen", &self.front.to_string()])
            .output()
            .unwrap();
        let json = String::from_utf8_lossy(&out.stdout).into_owned();
        let Some(peers) = json.split("\"peers\":[").nth(1) else {
            return vec![];
        };
        let peers = peers.split("],\"transfers\"").next().unwrap_or("");
        peers
            .split("\"name\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(str::to_string))
            .collect()
    }

    /// The version of the cache digest this daemon publishes (0: none yet, or digests off).
    pub fn digest_version(&self) -> u32 {
        let json = self.status_json();
        let ours = json.split("\"digest\":{").nth(1).unwrap_or("");
        u32::try_from(json_num(ours, "version")).unwrap_or(0)
    }

    /// The version of `peer`'s digest this daemon holds and uses (0: none).
    pub fn held_digest(&self, peer: &str) -> u32 {
        let json = self.status_json();
        let peers = json.split("\"peers\":[").nth(1).unwrap_or("");
        let peers = peers.split("],\"transfers\"").next().unwrap_or("");
        peers
            .split("{\"instance\"")
            .find(|p| p.contains(&format!("\"name\":\"{peer}\"")))
            .map_or(0, |p| u32::try_from(json_num(p, "digest")).unwrap_or(0))
    }

    /// The version of the digest this daemon serves at `/.flocon/digest` if that digest
    /// may hold `file` (docs/PROTOCOL.md §14.2: k bits of SHA-256(file)), else None.
    pub fn serves_digest_with(&self, file: &str) -> Option<u32> {
        use sha2::{Digest as _, Sha256};
        let (r, b) = get(self.peer, "/.flocon/digest", &[]);
        if r.status != 200 || b.len() < 16 || &b[..5] != b"FLDG\x01" {
            return None;
        }
        let (k, m) = (u64::from(b[5]), 1u64 << b[6]);
        if b.len() as u64 != 16 + m / 8 {
            return None;
        }
        let h = Sha256::digest(file.as_bytes());
        let h1 = u64::from_be_bytes(h[0..8].try_into().unwrap());
        let h2 = u64::from_be_bytes(h[8..16].try_into().unwrap()) | 1;
        let holds = (0..k).all(|i| {
            let p = h1.wrapping_add(i.wrapping_mul(h2)) & (m - 1);
            b[16 + (p / 8) as usize] >> (p % 8) & 1 == 1
        });
        holds.then(|| u32::from_be_bytes(b[8..12].try_into().unwrap()))
    }

    /// Waits until this daemon publishes a digest newer than `since` (its `digest_version`
    /// before `file` was put in its cache behind flocon's back) that holds `file`, and every
    /// one of `askers` holds that digest. Until then such a file is found only if this
    /// daemon answers the asker's INTENT within its miss wait (docs/PROTOCOL.md §14.5): the
    /// tests that need the file found wait for what the protocol promises instead. No-op
    /// with digests off.
    pub fn wait_published(&self, since: u32, file: &str, askers: &[&Daemon]) {
        if self.status_json().contains("\"digest\":{\"on\":false") {
            return;
        }
        let mut v = None;
        let ok = wait_until(Duration::from_secs(45), || {
            v = self.serves_digest_with(file).filter(|&v| v > since);
            v.is_some_and(|v| askers.iter().all(|a| a.held_digest(&self.name) >= v))
        });
        assert!(
            ok,
            "{}'s digest holding {file} (after v{since}: {v:?}) not held by {:?} within 45 s",
            self.name,
            askers.iter().map(|a| &a.name).collect::<Vec<_>>()
        );
    }

    /// This daemon's instance id (hex) from its status.
    pub fn instance(&self) -> u64 {
        let json = self.status_json();
        let hex = json
            .split("\"instance\":\"")
            .nth(1)
            .and_then(|s| s.get(..16))
            .unwrap();
        u64::from_str_radix(hex, 16).unwrap()
    }

    /// Asks the daemon's debug lookup endpoint: (asked, answered, names that have it, micros).
    pub fn lookup(&self, name: &str, size: Option<u64>) -> (usize, usize, Vec<String>, u64) {
        let q = match size {
            Some(s) => format!("/.flocon/lookup/{name}?size={s}"),
            None => format!("/.flocon/lookup/{name}"),
        };
        let (r, body) = get(self.front, &q, &[]);
        assert_eq!(r.status, 200, "{}", r.head);
        let j = String::from_utf8_lossy(&body).into_owned();
        let num = |k: &str| -> u64 {
            j.split(&format!("\"{k}\":"))
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .unwrap()
                .parse()
                .unwrap()
        };
        let have = j
            .split("\"peer\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(str::to_string))
            .collect();
        (
            num("asked") as usize,
            num("answered") as usize,
            have,
            num("micros"),
        )
    }

    fn wait_ready(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect(self.front).is_ok() && TcpStream::connect(self.peer).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not start:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for exit; returns the exit code and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<(i32, Duration)> {
        let t0 = Instant::now();
        let child = self.child.as_mut()?;
        while t0.elapsed() < limit {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return Some((st.code().unwrap_or(-1), t0.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn status_json(&self) -> String {
        let (_, body) = get(self.front, "/.flocon/status.json", &[]);
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // a failed test shows what each of its daemons said (they run with --debug)
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
            eprintln!("--- last lines of {}", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Lines of a daemon's log shown when its test fails.
const LOG_TAIL_LINES: usize = 150;

/// A response: status line + headers (lowercased names) and the body.
pub struct Resp {
    pub status: u16,
    pub head: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request with Connection: close; returns the parsed head and the raw body.
pub fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (Resp, Vec<u8>) {
    request(addr, "GET", path, headers)
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (Resp, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    split_response(&all)
}

pub fn split_response(all: &[u8]) -> (Resp, Vec<u8>) {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(all.len());
    let head = String::from_utf8_lossy(&all[..end]).into_owned();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let resp = Resp { status, head };
    let body = match resp.header("transfer-encoding") {
        // a body of unknown length comes chunked; one cut short has no last chunk, and then
        // what arrived is returned with a marker that no expected body contains
        Some(te) if te.eq_ignore_ascii_case("chunked") => match dechunk(&all[end..]) {
            Some(b) => b,
            None => b"<cut: no last chunk>".to_vec(),
        },
        _ => all[end..].to_vec(),
    };
    (resp, body)
}

/// A chunked body decoded; None when it does not end with its last chunk.
pub fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return b.starts_with(b"\r\n").then_some(out);
        }
        if b.len() < size + 2 || &b[size..size + 2] != b"\r\n" {
            return None;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// Deterministic pseudo-random bytes (xorshift), so files are not all zeros.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = flocon::xorshift::XorShift::new(seed | 1);
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The number after the first `"key":` in `json` (-1 if absent).
pub fn json_num(json: &str, key: &str) -> i64 {
    json.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit() && c != '-').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1)
}

pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One package of a test repo: file name, size in bytes of its payload.
pub struct Pkg {
    pub name: String,
    pub file: String,
    pub bytes: Vec<u8>,
}

/// Builds real package files (bsdtar, with a .PKGINFO) and a sync db with `repo-add`, in
/// `dir/repo/`. Returns the packages; `dir/repo/flocontest.db` is the db.
pub fn make_repo(dir: &Path, specs: &[(&str, usize, &str)]) -> Vec<Pkg> {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let mut out = Vec::new();
    for (i, (name, size, arch)) in specs.iter().enumerate() {
        let root = dir.join(format!("pkgroot-{name}"));
        std::fs::create_dir_all(root.join("usr/share").join(name)).unwrap();
        std::fs::write(
            root.join("usr/share").join(name).join("blob"),
            pattern(*size, 1000 + i as u64),
        )
        .unwrap();
        std::fs::write(
            root.join(".PKGINFO"),
            format!("pkgname = {name}\npkgbase = {name}\npkgver = 1.0-1\npkgdesc = flocon test\nurl = https://example.invalid\nbuilddate = 1700000000\npackager = test\nsize = {size}\narch = {arch}\nlicense = MIT\n"),
        )
        .unwrap();
        let file = format!("{name}-1.0-1-{arch}.pkg.tar.zst");
        let st = Command::new("bsdtar")
            .arg("--zstd")
            .arg("-cf")
            .arg(repo.join(&file))
            .arg("-C")
            .arg(&root)
            .args([".PKGINFO", "usr"])
            .status()
            .expect("bsdtar (libarchive-tools) is needed");
        assert!(st.success());
        out.push(Pkg {
            name: name.to_string(),
            bytes: std::fs::read(repo.join(&file)).unwrap(),
            file,
        });
    }
    let mut cmd = Command::new("repo-add");
    cmd.arg("-q").arg(repo.join("flocontest.db.tar.gz"));
    for p in &out {
        cmd.arg(repo.join(&p.file));
    }
    let o = cmd
        .output()
        .expect("repo-add (pacman-package-manager) is needed");
    assert!(
        o.status.success(),
        "repo-add: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// A pacman.conf for one host: its own DBPath with the repo's db, flocon first, `upstream`s after.
pub fn host_conf(dir: &Path, host: &str, front_port: u16, upstreams: &[String]) -> PathBuf {
    let h = dir.join(host);
    std::fs::create_dir_all(h.join("db/sync")).unwrap();
    std::fs::create_dir_all(h.join("cache")).unwrap();
    std::fs::copy(
        dir.join("repo/flocontest.db.tar.gz"),
        h.join("db/sync/flocontest.db"),
    )
    .unwrap();
    let mut conf = format!(
        "[options]\nDBPath = {}/db/\nCacheDir = {}/cache/\nArchitecture = x86_64\n\n[flocontest]\nServer = http://localhost:{front_port}/$repo/os/$arch\n",
        h.display(),
        h.display()
    );
    for u in upstreams {
        conf.push_str(&format!("Server = {u}\n"));
    }
    let p = h.join("pacman.conf");
    std::fs::write(&p, conf).unwrap();
    p
}

/// A tiny HTTP/1.1 mirror for tests: serves `root` (files under any `/<repo>/os/<arch>/`
/// prefix resolve to `root/<file>`), Range, If-Modified-Since → 304, optional chunked
/// replies; every request is logged.
pub struct Mirror {
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Mirror {
    pub fn start(ip: &str, root: PathBuf, chunked: bool) -> Mirror {
        let l = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
        let addr = l.local_addr().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let root = root.clone();
                let log = log2.clone();
                std::thread::spawn(move || mirror_conn(s, &root, chunked, &log));
            }
        });
        Mirror { addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}/$repo/os/$arch", self.addr)
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn mirror_conn(mut s: TcpStream, root: &Path, chunked: bool, log: &std::sync::Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    loop {
        let mut b = [0u8; 4096];
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut b) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("").to_string();
        let mut parts = first.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let hdr = |name: &str| {
            head.lines().skip(1).find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let range = hdr("range");
        let ims = hdr("if-modified-since");
        log.lock()
            .unwrap()
            .push(format!("{method} {path} range={range:?} ims={ims:?}"));
        let file = path.rsplit('/').next().unwrap_or("");
        let data = std::fs::read(root.join(file)).ok();
        let lm = "Sat, 01 Jan 2022 00:00:00 GMT";
        let resp = match data {
            None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Some(_) if ims.is_some() => {
                format!("HTTP/1.1 304 Not Modified\r\nLast-Modified: {lm}\r\n\r\n").into_bytes()
            }
            Some(d) => {
                let start = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<usize>().ok());
                let (status, body, extra) = match start {
                    Some(st) if st >= d.len() => {
                        let h = format!(
                            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\n\r\n",
                            d.len()
                        );
                        let _ = s.write_all(h.as_bytes());
                        continue;
                    }
                    Some(st) => (
                        "206 Partial Content",
                        d[st..].to_vec(),
                        format!(
                            "Content-Range: bytes {}-{}/{}\r\n",
                            st,
                            d.len() - 1,
                            d.len()
                        ),
                    ),
                    None => ("200 OK", d, String::new()),
                };
                let mut r =
                    format!("HTTP/1.1 {status}\r\nLast-Modified: {lm}\r\n{extra}").into_bytes();
                if chunked {
                    r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    if method != "HEAD" {
                        for c in body.chunks(7777) {
                            r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                            r.extend_from_slice(c);
                            r.extend_from_slice(b"\r\n");
                        }
                        r.extend_from_slice(b"0\r\n\r\n");
                    }
                } else {
                    r.extend_from_slice(
                        format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    if method != "HEAD" {
                        r.extend_from_slice(&body);
                    }
                }
                r
            }
        };
        if s.write_all(&resp).is_err() {
            return;
        }
    }
}

/// How a fake peer's file server misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PeerMode {
    /// Headers, then silence.
    Stall,
    /// Announces the right size but its Content-Length is larger.
    TooMany,
    /// The right Content-Length, half the body, then the connection closes (a crash).
    TooFew,
}

/// A peer that speaks the discovery protocol correctly (it announces, and answers "have"
/// with the size it is told) but whose file server misbehaves. For fault tests.
pub struct FakePeer {
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A fake peer's discovery socket: the well-known port on `ipv4` (shared with the daemon
/// under test by SO_REUSEADDR), multicast out of that address, reads bounded by `timeout`.
pub fn discovery_socket(ipv4: std::net::Ipv4Addr, timeout: Duration) -> std::net::UdpSocket {
    use socket2::{Domain, Socket, Type};
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
    udp.set_reuse_address(true).unwrap();
    udp.bind(&SocketAddr::new(ipv4.into(), flocon::protocol::PORT).into())
        .unwrap();
    udp.set_multicast_if_v4(&ipv4).unwrap();
    udp.set_read_timeout(Some(timeout)).unwrap();
    udp.into()
}

impl FakePeer {
    pub fn start(ip: &str, file: &str, body: Vec<u8>, mode: PeerMode) -> FakePeer {
        use flocon::protocol::{self, Announce, Answer, Header, Message};
        let ipv4: std::net::Ipv4Addr = ip.parse().unwrap();
        let udp = discovery_socket(ipv4, Duration::from_millis(100));
        let size = body.len() as u64;
        let instance = 0x0fa4_e000_0000_0000 | ipv4.octets()[3] as u64;
        let file = file.to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop_udp, stop_tcp) = (stop.clone(), stop.clone());
        std::thread::spawn(move || {
            let group = SocketAddr::new(protocol::GROUP_V4.into(), protocol::PORT);
            let mut seq = 0u32;
            let mut last = Instant::now() - Duration::from_secs(10);
            let mut out = Vec::new();
            while !stop_udp.load(std::sync::atomic::Ordering::SeqCst) {
                if last.elapsed() > Duration::from_millis(300) {
                    seq += 1;
                    let a = Announce {
                        tcp_port: protocol::PORT,
                        uploads: 0,
                        name: "fake".into(),
                        distro: "arch".into(),
                        archs: vec!["x86_64".into()],
                    };
                    protocol::encode(&Header { instance, seq }, &Message::Announce(a), &mut out);
                    let _ = udp.send_to(&out, group);
                    last = Instant::now();
                }
                let mut buf = [0u8; 1500];
                let Ok((n, src)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Ok((_, Message::Query(q))) = protocol::decode(&buf[..n]) {
                    seq += 1;
                    let have = q.name == file;
                    let ans = Answer {
                        id: q.id,
                        have,
                        size: if have { size } else { 0 },
                        sha256: None,
                        uploads: 0,
                    };
                    protocol::encode(&Header { instance, seq }, &Message::Answer(ans), &mut out);
                    let _ = udp.send_to(&out, src);
                }
            }
        });
        let l = std::net::TcpListener::bind(SocketAddr::new(ipv4.into(), protocol::PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r2 = requests.clone();
        std::thread::spawn(move || {
            while !stop_tcp.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    let _ = s.read(&mut b);
                    let len = if mode == PeerMode::TooMany {
                        body.len() + 100
                    } else {
                        body.len()
                    };
                    let _ = s.write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
                    );
                    match mode {
                        PeerMode::Stall => std::thread::sleep(Duration::from_secs(60)),
                        PeerMode::TooMany => {
                            let _ = s.write_all(&body);
                            let _ = s.write_all(&[0u8; 100]);
                        }
                        PeerMode::TooFew => {
                            let _ = s.write_all(&body[..body.len() / 2]);
                        }
                    }
                });
            }
        });
        FakePeer { requests, stop }
    }
}
