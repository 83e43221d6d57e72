//! The peer file server (SPEC §5): answers other flocon daemons' GET/HEAD for a package file
//! (or its `.sig`) in the shared cache dirs, with `sendfile`. One `Conn` per TCP connection,
//! an explicit state machine driven by readiness; bounds on head size and time, idle time and
//! send stalls. The connection is generic over the stream so tests can drive it over
//! `UnixStream::pair()`.

use crate::http::{self, FileKind, HttpError, Method, RangeOutcome, Request, Version};
use crate::sys;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Concurrent peer connections. Each costs a few KiB plus an open file; a LAN has far fewer
/// peers than this, so hitting it means a flood — answer 503 and keep serving the others.
pub const MAX_CONNECTIONS: usize = 256;
/// A peer must send its whole request head within this time (slowloris guard).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A receiver that takes nothing for this long is dead or hostile.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes per sendfile call: big enough for full throughput, small enough that one huge
/// transfer yields the loop to the other connections between calls.
pub const SENDFILE_CHUNK: usize = 1 << 20;
/// sendfile calls per readiness turn before the connection goes to the back of the queue.
pub const SENDFILE_CALLS_PER_TURN: usize = 4;

/// What the connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Reading a request head (possibly already buffered, pipelined).
    WaitingForHead,
    /// Writing the response head (and small bodies) from `out`.
    SendingHead,
    /// Sending `file[offset..end]` with sendfile.
    SendingFile,
    /// Finished; the owner closes it.
    Done,
}

/// What the owner should do after driving the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for readiness.
    Blocked,
    /// Yielded with work left and no WouldBlock seen: call again soon (fairness).
    Yielded,
    /// Close it.
    Close,
}

/// The directories whose package files are shared, with their canonical paths for the
/// symlink check.
#[derive(Debug, Clone)]
pub struct CacheDirs {
    dirs: Vec<(PathBuf, Option<PathBuf>)>,
}

impl CacheDirs {
    pub fn new(dirs: &[PathBuf]) -> Self {
        CacheDirs {
            dirs: dirs
                .iter()
                .map(|d| (d.clone(), std::fs::canonicalize(d).ok()))
                .collect(),
        }
    }

    /// Directories that do not exist (yet): served as empty, with a warning from the caller.
    pub fn missing(&self) -> Vec<&Path> {
        self.dirs
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(d, _)| d.as_path())
            .collect()
    }

    /// Opens a shared file by (already validated) name: a regular file whose real path is
    /// inside its cache dir. O_NONBLOCK so that a FIFO cannot block the loop at open.
    pub fn open(&self, name: &str) -> Option<(File, std::fs::Metadata)> {
        if !http::is_safe_name(name)
            || !matches!(
                http::classify(name),
                FileKind::Package | FileKind::PackageSig
            )
        {
            return None;
        }
        for (dir, canonical) in &self.dirs {
            // a dir created after start is picked up here
            let canonical = match canonical {
                Some(c) => c.clone(),
                None => match std::fs::canonicalize(dir) {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            let Ok(file) = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(canonical.join(name))
            else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            // the path the kernel actually opened, after every symlink
            let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
            if real.parent() != Some(canonical.as_path()) {
                continue;
            }
            return Some((file, meta));
        }
        None
    }

    /// Size of a shared file, for answering "who has it?" without opening it for long.
    pub fn size_of(&self, name: &str) -> Option<u64> {
        self.open(name).map(|(_, m)| m.len())
    }
}

pub struct Conn<S> {
    pub stream: S,
    state: State,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    file: Option<File>,
    offset: u64,
    end: u64,
    keep_alive: bool,
    /// Last time bytes moved in either direction.
    last_active: Instant,
    /// When the head now being read began (first byte, or end of the previous response).
    head_started: Instant,
    /// Whether any byte of the current head has arrived (idle vs slow head).
    head_bytes: bool,
    /// Bytes sent in bodies, for stats.
    pub body_bytes: u64,
}

fn last_modified(meta: &std::fs::Metadata) -> String {
    let secs = meta.mtime().max(0) as u64;
    http::http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

impl<S: Read + Write + AsRawFd> Conn<S> {
    pub fn new(stream: S, now: Instant) -> Self {
        Conn {
            stream,
            state: State::WaitingForHead,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            file: None,
            offset: 0,
            end: 0,
            keep_alive: false,
            last_active: now,
            head_started: now,
            head_bytes: false,
            body_bytes: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a bound on time has passed: a head that takes too long, an idle keep-alive,
    /// or a receiver that stopped taking bytes.
    pub fn timed_out(&self, now: Instant) -> bool {
        match self.state {
            State::WaitingForHead if self.head_bytes => {
                now.duration_since(self.head_started) > HEAD_TIMEOUT
            }
            State::WaitingForHead => now.duration_since(self.last_active) > IDLE_TIMEOUT,
            State::SendingHead | State::SendingFile => {
                now.duration_since(self.last_active) > SEND_STALL_TIMEOUT
            }
            State::Done => true,
        }
    }

    /// Drives the connection as far as it goes without blocking.
    pub fn drive(&mut self, dirs: &CacheDirs, now: Instant) -> Progress {
        loop {
            let step = match self.state {
                State::WaitingForHead => self.read_head(dirs, now),
                State::SendingHead => self.send_head(now),
                State::SendingFile => self.send_file(now),
                State::Done => return Progress::Close,
            };
            match step {
                Ok(None) => continue,
                Ok(Some(p)) => return p,
                Err(_) => return Progress::Close,
            }
        }
    }

    fn read_head(&mut self, dirs: &CacheDirs, now: Instant) -> io::Result<Option<Progress>> {
        debug_assert_eq!(self.state, State::WaitingForHead);
        loop {
            match http::parse_request(&self.inbuf) {
                Ok(Some(req)) => {
                    self.inbuf.drain(..req.head_len);
                    self.respond(&req, dirs);
                    self.state = State::SendingHead;
                    return Ok(None);
                }
                Ok(None) => {}
                Err(e) => {
                    self.respond_error(Version::Http11, e, false);
                    self.state = State::SendingHead;
                    return Ok(None);
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(n) => {
                    if !self.head_bytes {
                        self.head_bytes = true;
                        self.head_started = now;
                    }
                    self.last_active = now;
                    self.inbuf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn respond_error(&mut self, version: Version, e: HttpError, keep_alive: bool) {
        self.keep_alive = keep_alive;
        self.out.clear();
        self.out_pos = 0;
        self.file = None;
        http::error_response(&mut self.out, version, e.status(), keep_alive);
    }

    fn respond(&mut self, req: &Request, dirs: &CacheDirs) {
        let name = match http::peer_file_name(&req.target) {
            Ok(n) => n,
            Err(e) => return self.respond_error(req.version, e, req.keep_alive),
        };
        let Some((file, meta)) = dirs.open(&name) else {
            return self.respond_error(req.version, HttpError::NotFound, req.keep_alive);
        };
        let len = meta.len();
        let lm = last_modified(&meta);
        self.keep_alive = req.keep_alive;
        self.out.clear();
        self.out_pos = 0;
        let (status, start, end) = match http::resolve_range(req.range.as_deref(), len) {
            RangeOutcome::Full => (200, 0, len),
            RangeOutcome::Partial { start, end } => (206, start, end + 1),
            RangeOutcome::Unsatisfiable => {
                let cr = format!("bytes */{len}");
                http::write_head(
                    &mut self.out,
                    req.version,
                    416,
                    &[
                        ("Content-Length", "0"),
                        ("Content-Range", &cr),
                        ("Last-Modified", &lm),
                    ],
                    self.keep_alive,
                );
                self.file = None;
                return;
            }
        };
        let clen = (end - start).to_string();
        let cr = format!("bytes {}-{}/{}", start, end.saturating_sub(1), len);
        let mut headers: Vec<(&str, &str)> = vec![
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", &clen),
            ("Last-Modified", &lm),
            ("Accept-Ranges", "bytes"),
        ];
        if status == 206 {
            headers.push(("Content-Range", &cr));
        }
        http::write_head(
            &mut self.out,
            req.version,
            status,
            &headers,
            self.keep_alive,
        );
        if req.method == Method::Get && end > start {
            self.file = Some(file);
            self.offset = start;
            self.end = end;
        } else {
            self.file = None;
        }
    }

    fn send_head(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        debug_assert_eq!(self.state, State::SendingHead);
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(n) => {
                    self.out_pos += n;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        self.state = if self.file.is_some() {
            State::SendingFile
        } else {
            self.finish_response(now)
        };
        Ok(None)
    }

    fn send_file(&mut self, now: Instant) -> io::Result<Option<Progress>> {
        debug_assert_eq!(self.state, State::SendingFile);
        let Some(file) = &self.file else {
            self.state = self.finish_response(now);
            return Ok(None);
        };
        for _ in 0..SENDFILE_CALLS_PER_TURN {
            if self.offset >= self.end {
                self.file = None;
                self.state = self.finish_response(now);
                return Ok(None);
            }
            let want = (self.end - self.offset).min(SENDFILE_CHUNK as u64) as usize;
            match sys::sendfile(
                self.stream.as_raw_fd(),
                file.as_raw_fd(),
                &mut self.offset,
                want,
            ) {
                // the file shrank under us: the promised length can no longer be kept
                Ok(0) => return Ok(Some(Progress::Close)),
                Ok(n) => {
                    self.body_bytes += n as u64;
                    self.last_active = now;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Some(Progress::Blocked));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(Progress::Yielded))
    }

    /// After a complete response: the next request on a keep-alive connection, or the end.
    fn finish_response(&mut self, now: Instant) -> State {
        if !self.keep_alive {
            return State::Done;
        }
        self.head_bytes = !self.inbuf.is_empty();
        self.head_started = now;
        self.last_active = now;
        State::WaitingForHead
    }
}

/// The fixed answer for a connection accepted while the table is full.
pub fn busy_response() -> Vec<u8> {
    let mut out = Vec::new();
    http::error_response(&mut out, Version::Http11, 503, false);
    out
}

/// Seconds since the epoch, for logs that compare with other hosts.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    struct Fixture {
        dir: PathBuf,
        dirs: CacheDirs,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(tag: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("flocon-server-{}-{}", tag, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.join("cache/a-1-1-any.pkg.tar.zst"), &data).unwrap();
        std::fs::write(dir.join("cache/a-1-1-any.pkg.tar.zst.part"), &data).unwrap();
        std::fs::write(dir.join("secret.pkg.tar.zst"), b"secret").unwrap();
        std::os::unix::fs::symlink(
            dir.join("secret.pkg.tar.zst"),
            dir.join("cache/out-1-1-any.pkg.tar.zst"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "a-1-1-any.pkg.tar.zst",
            dir.join("cache/in-1-1-any.pkg.tar.zst"),
        )
        .unwrap();
        let dirs = CacheDirs::new(&[dir.join("cache")]);
        Fixture { dir, dirs }
    }

    /// Runs one exchange over a socket pair: writes `req`, drives until the response is out.
    fn exchange(dirs: &CacheDirs, req: &[u8]) -> Vec<u8> {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(req).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut conn = Conn::new(a, Instant::now());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        while conn.drive(dirs, Instant::now()) != Progress::Close {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(conn);
        reader.join().unwrap()
    }

    fn status_of(resp: &[u8]) -> u16 {
        std::str::from_utf8(&resp[9..12]).unwrap().parse().unwrap()
    }

    #[test]
    fn get_sends_the_whole_file() {
        let f = fixture("get");
        let resp = exchange(
            &f.dirs,
            b"GET /a-1-1-any.pkg.tar.zst HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&resp), 200);
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&resp[..head_end]).to_lowercase();
        assert!(head.contains("content-length: 100000"));
        assert!(head.contains("last-modified: "));
        assert_eq!(resp.len() - head_end, 100_000);
        assert_eq!(resp[head_end + 300], (300 % 253) as u8);
    }

    #[test]
    fn range_and_keep_alive_pipelining() {
        let f = fixture("range");
        let resp = exchange(
            &f.dirs,
            b"GET /a-1-1-any.pkg.tar.zst HTTP/1.1\r\nRange: bytes=99990-\r\n\r\nHEAD /a-1-1-any.pkg.tar.zst HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 206"));
        assert!(text.contains("Content-Range: bytes 99990-99999/100000"));
        let second = text.find("HTTP/1.1 200").expect("second response");
        let first_body_end = second;
        let first_head_end = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(first_body_end - first_head_end, 10);
        assert!(text[second..].ends_with("\r\n\r\n"), "HEAD has no body");
    }

    #[test]
    fn unsatisfiable_range_gets_416() {
        let f = fixture("416");
        let resp = exchange(
            &f.dirs,
            b"GET /a-1-1-any.pkg.tar.zst HTTP/1.0\r\nRange: bytes=100000-\r\n\r\n",
        );
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 416"), "{text}");
        assert!(text.contains("Content-Range: bytes */100000"));
    }

    #[test]
    fn refusals() {
        let f = fixture("refuse");
        for (target, want) in [
            ("/a-1-1-any.pkg.tar.zst.part", 404),
            ("/out-1-1-any.pkg.tar.zst", 404),
            ("/../secret.pkg.tar.zst", 404),
            ("/missing-1-1-any.pkg.tar.zst", 404),
        ] {
            let req = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
            let resp = exchange(&f.dirs, req.as_bytes());
            let got = status_of(&resp);
            assert!(
                got == want || (got == 400 && want == 404),
                "{target}: {got}"
            );
        }
        // a symlink that stays inside the cache dir is fine
        let resp = exchange(
            &f.dirs,
            b"HEAD /in-1-1-any.pkg.tar.zst HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(status_of(&resp), 200);
    }

    #[test]
    fn timeouts() {
        let (a, _b) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        let mut c = Conn::new(a, t0);
        assert!(!c.timed_out(t0 + IDLE_TIMEOUT - Duration::from_millis(1)));
        assert!(c.timed_out(t0 + IDLE_TIMEOUT + Duration::from_millis(1)));
        c.head_bytes = true;
        assert!(c.timed_out(t0 + HEAD_TIMEOUT + Duration::from_millis(1)));
    }
}
