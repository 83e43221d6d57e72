//! Shared test harness: every test that starts the daemon runs in a private user + network
//! namespace of its own (SPEC §9), so no datagram can reach a real interface and every test
//! can use the default ports. A test calls `netns!()` first: outside a namespace it re-runs
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
        cmd.arg("--net");
    } else {
        cmd.args(["--user", "--map-root-user", "--net"]);
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
        let p = std::env::temp_dir().join(format!(
            "flocon-it-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let p = PathBuf::from(p.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
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
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon; killed on drop. Its stderr goes to `log`.
pub struct Daemon {
    pub child: Option<Child>,
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
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start flocon");
        let d = Daemon {
            child: Some(child),
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
    }
}

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
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
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
    (Resp { status, head }, all[end..].to_vec())
}

/// Deterministic pseudo-random bytes (xorshift), so files are not all zeros.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
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
