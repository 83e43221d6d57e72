//! Misbehaving peers and mirrors for the fault tests (tests/faults.rs), always inside the
//! test's own network namespace: `FakeHttp` runs tests/fakes/fakehttp.py (a peer file server
//! or a mirror with a chosen misbehaviour per file), `Announcer` makes any address look like a
//! flocon peer on discovery (it announces and answers lookups with the real protocol code, so
//! it follows the protocol as it changes), `Crowd` runs tests/fakes/crowd.py (keep-alive hogs
//! and slow-header connections).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fakes")
        .join(name)
}

/// Starts a python3 script and waits for its first stdout line (`ready ...`).
fn spawn_ready(mut cmd: Command) -> (Child, String, BufReader<std::process::ChildStdout>) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("python3 is needed for the fake servers");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "fake did not start: {line:?}");
    (child, line.trim().to_string(), out)
}

/// One line of a fake's log: `req` when a request arrived, `end` when its answer ended.
#[derive(Debug, Clone)]
pub struct Ev {
    pub line: String,
}

impl Ev {
    /// A string field (`"k": "v"`), None for null or absent.
    pub fn str(&self, k: &str) -> Option<String> {
        let rest = self.line.split(&format!("\"{k}\": ")).nth(1)?;
        let v = rest.strip_prefix('"')?;
        let mut out = String::new();
        let mut chars = v.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => out.push(chars.next()?),
                c => out.push(c),
            }
        }
        None
    }
    pub fn num(&self, k: &str) -> Option<f64> {
        let rest = self.line.split(&format!("\"{k}\": ")).nth(1)?;
        rest.split([',', '}']).next()?.trim().parse().ok()
    }
    pub fn ev(&self) -> String {
        self.str("ev").unwrap_or_default()
    }
    pub fn name(&self) -> String {
        self.str("name").unwrap_or_default()
    }
}

/// tests/fakes/fakehttp.py on `listen` (IP:PORT, port 0 for any), serving `root`, with
/// `rules` ("GLOB", "MODE") tried in order (see the script for the modes). Killed on drop.
pub struct FakeHttp {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl FakeHttp {
    pub fn start(listen: &str, root: &Path, log: &Path, rules: &[(&str, &str)]) -> FakeHttp {
        let mut cmd = Command::new("python3");
        cmd.arg(script("fakehttp.py"))
            .args(["--listen", listen, "--root"])
            .arg(root)
            .arg("--log")
            .arg(log);
        for (glob, mode) in rules {
            cmd.arg(format!("{glob}={mode}"));
        }
        let (child, ready, _) = spawn_ready(cmd);
        let port: u16 = ready.split(' ').nth(1).unwrap().parse().unwrap();
        let ip = listen.rsplit_once(':').unwrap().0;
        FakeHttp {
            child,
            addr: format!("{ip}:{port}").parse().unwrap(),
            log: log.to_path_buf(),
        }
    }

    /// As an upstream line of pacman.conf.
    pub fn url(&self) -> String {
        format!("http://{}/$repo/os/$arch", self.addr)
    }

    pub fn events(&self) -> Vec<Ev> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| Ev {
                line: l.to_string(),
            })
            .collect()
    }

    /// Requests that arrived for `name`.
    pub fn requests(&self, name: &str) -> Vec<Ev> {
        self.events()
            .into_iter()
            .filter(|e| e.ev() == "req" && e.name() == name)
            .collect()
    }

    /// Body bytes sent for `name`, over every answer that ended.
    pub fn bytes_sent(&self, name: &str) -> u64 {
        self.events()
            .iter()
            .filter(|e| e.ev() == "end" && e.name() == name)
            .map(|e| e.num("sent").unwrap_or(0.0) as u64)
            .sum()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal to the fake (e.g. "STOP", "CONT").
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for FakeHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file an `Announcer` says it has: name, size, and the SHA-256 its "own db" names.
#[derive(Clone, Debug)]
pub struct Offer {
    pub name: String,
    pub size: u64,
    pub sha256: Option<[u8; 32]>,
}

/// Makes `ip` a flocon peer on discovery whose file server is at `ip:tcp_port`: announces
/// every 300 ms and answers lookups ("have" for its offers) after `delay` (set_delay).
/// `freeze` makes it silent, as a stopped daemon is. Stops on drop.
pub struct Announcer {
    stop: Arc<AtomicBool>,
    frozen: Arc<AtomicBool>,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub instance: u64,
    pub answered: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Announcer {
    pub fn start(ip: &str, tcp_port: u16, name: &str, offers: Vec<Offer>) -> Announcer {
        use flocon::protocol::{self, Announce, Answer, Header, Message};
        let ipv4: std::net::Ipv4Addr = ip.parse().unwrap();
        let udp = crate::common::discovery_socket(ipv4, Duration::from_millis(50));
        // "0fa4" and the address's last octet lead: short ids differ per fake
        let instance = 0x0fa4_0000_0000_005a | u64::from(ipv4.octets()[3]) << 40;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let frozen = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let (frozen2, delay2) = (frozen.clone(), delay_ms.clone());
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let group = SocketAddr::new(protocol::GROUP_V4.into(), protocol::PORT);
            let mut seq = 0u32;
            let mut last = Instant::now() - Duration::from_secs(10);
            let mut out = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                if frozen2.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                if last.elapsed() > Duration::from_millis(300) {
                    seq = seq.wrapping_add(1);
                    let a = Announce {
                        tcp_port,
                        uploads: 0,
                        name: name.clone(),
                        distro: "arch".into(),
                        archs: vec!["x86_64".into()],
                    };
                    protocol::encode(&Header { instance, seq }, &Message::Announce(a), &mut out);
                    let _ = udp.send_to(&out, group);
                    last = Instant::now();
                }
                let mut buf = [0u8; protocol::RECV_BUFFER];
                let Ok((n, src)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let Ok((_, Message::Query(q))) = protocol::decode(&buf[..n]) else {
                    continue;
                };
                // frozen while this query was on its way: a stopped daemon answers nothing
                if frozen2.load(Ordering::SeqCst) {
                    continue;
                }
                let offer = offers.iter().find(|o| o.name == q.name);
                let delay = delay2.load(Ordering::SeqCst);
                if delay > 0 {
                    std::thread::sleep(Duration::from_millis(delay));
                }
                seq = seq.wrapping_add(1);
                let ans = Answer {
                    id: q.id,
                    have: offer.is_some(),
                    size: offer.map(|o| o.size).unwrap_or(0),
                    sha256: offer.and_then(|o| o.sha256),
                    uploads: 0,
                };
                protocol::encode(&Header { instance, seq }, &Message::Answer(ans), &mut out);
                let _ = udp.send_to(&out, src);
                answered2.fetch_add(1, Ordering::SeqCst);
            }
        });
        Announcer {
            stop,
            frozen,
            delay_ms,
            instance,
            answered,
            thread: Some(thread),
        }
    }
}

impl Announcer {
    /// Answers lookups this long after they arrive (so another peer answers first).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops announcing and answering, as a frozen (SIGSTOP) daemon.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// tests/fakes/crowd.py: hogs on `target` for `seconds`. `finish` waits for its end and
/// returns its JSON stats line.
pub struct Crowd {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Crowd {
    pub fn start(target: SocketAddr, seconds: u64, args: &[&str]) -> Crowd {
        let mut cmd = Command::new("python3");
        cmd.arg(script("crowd.py"))
            .args(["--target", &target.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(args);
        let (child, _, out) = spawn_ready(cmd);
        Crowd { child, out }
    }

    pub fn finish(mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SHA-256 of `bytes`, as a sync db names it.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}
