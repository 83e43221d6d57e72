//! The peer file server (docs/DESIGN.md, "The peer server"): what another flocon daemon gets for GET/HEAD of a package
//! file (or its `.sig`) in the shared cache dirs — the file with sendfile, a single range, or
//! a refusal. The HTTP connection itself is conn.rs; this module owns the cache dirs and the
//! rules for what may leave them.

use crate::auth::Keys;
use crate::conn::Conn;
use crate::http::{self, HttpError, RangeOutcome, Request};
use crate::names::{self, FileKind};
use crate::stager::Growth;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Concurrent peer connections. Each costs a few KiB plus an open file; a LAN has far fewer
/// peers than this, so hitting it means a flood — answer 503 and keep serving the others.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// An idle keep-alive connection is closed after this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The directories whose package files are shared, with their canonical paths for the
/// symlink check.
#[derive(Debug, Clone)]
pub(crate) struct CacheDirs {
    dirs: Vec<(PathBuf, Option<PathBuf>)>,
}

impl CacheDirs {
    pub(crate) fn new(dirs: &[PathBuf]) -> Self {
        CacheDirs {
            dirs: dirs
                .iter()
                .map(|d| (d.clone(), std::fs::canonicalize(d).ok()))
                .collect(),
        }
    }

    /// Directories that do not exist (yet): served as empty, with a warning from the caller.
    pub(crate) fn missing(&self) -> Vec<&Path> {
        self.dirs
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(d, _)| d.as_path())
            .collect()
    }

    /// Opens a shared file by (already validated) name: a regular file whose real path is
    /// inside its cache dir. O_NONBLOCK so that a FIFO cannot block the loop at open.
    pub(crate) fn open(&self, name: &str) -> Option<(File, std::fs::Metadata)> {
        if !names::is_file_name(name.as_bytes())
            || !matches!(
                names::classify(name),
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
    pub(crate) fn size_of(&self, name: &str) -> Option<u64> {
        self.open(name).map(|(_, m)| m.len())
    }
}

fn last_modified(meta: &std::fs::Metadata) -> String {
    let secs = meta.mtime().max(0) as u64;
    http::http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Answers one request on a peer connection: the named file from the cache dirs (whole, a
/// single range, or 416), or a refusal.
pub(crate) fn answer<S: Read + Write + AsRawFd>(
    c: &mut Conn<S>,
    req: &Request,
    dirs: &CacheDirs,
    keys: &Keys,
) {
    answer_with(c, req, dirs, keys, &|_| None, &[])
}

/// A package this host is receiving (front.rs: a copy in flight or just verified): its
/// whole size and how far it is written.
pub(crate) type Arriving<'a> = dyn Fn(&str) -> Option<(u64, Arc<Growth>)> + 'a;

/// As `answer`; a package not in the cache dirs but `arriving` here is sent as it grows:
/// `Content-Length` of the whole (or of the range), the bytes written so far, then the rest
/// as it comes; the connection is cut if the copy fails (docs/DESIGN.md, "One download per
/// LAN"). The requester verifies the whole file against its own db, as always.
/// `/.flocon/digest` gets `digest`, this host's cache digest (docs/PROTOCOL.md §14.3), or
/// 404 when it has none.
pub(crate) fn answer_with<S: Read + Write + AsRawFd>(
    c: &mut Conn<S>,
    req: &Request,
    dirs: &CacheDirs,
    keys: &Keys,
    arriving: &Arriving<'_>,
    digest: &[u8],
) {
    // under a group key, nothing is served (not even a 404) without a valid Flocon-Auth
    if !keys.is_empty()
        && !keys.verify_request(
            req.method.as_str(),
            &req.target,
            req.flocon_auth.as_deref(),
            unix_now(),
        )
    {
        return c.answer_error(403);
    }
    if req.target == crate::env::DIGEST_PATH {
        if digest.is_empty() {
            return c.answer_error(HttpError::NotFound.status());
        }
        let headers = [("Content-Type", "application/octet-stream")];
        return c.answer_bytes(200, &headers, digest);
    }
    let name = match http::peer_file_name(&req.target) {
        Ok(n) => n,
        Err(e) => return c.answer_error(e.status()),
    };
    let Some((file, meta)) = dirs.open(&name) else {
        if names::classify(&name) == FileKind::Package
            && let Some((len, growth)) = arriving(&name)
        {
            return answer_growing(c, req, len, growth);
        }
        return c.answer_error(HttpError::NotFound.status());
    };
    let lm = last_modified(&meta);
    answer_range(c, req, meta.len(), &lm, |c, status, headers, start, end| {
        c.answer_file(status, headers, file, start, end)
    });
}

/// A package still arriving here: the head promises the whole (or the range), the body
/// follows as the copy grows.
fn answer_growing<S: Read + Write + AsRawFd>(
    c: &mut Conn<S>,
    req: &Request,
    len: u64,
    growth: Arc<Growth>,
) {
    let lm = http::http_date(UNIX_EPOCH + Duration::from_secs(unix_now()));
    answer_range(c, req, len, &lm, |c, status, headers, start, end| {
        c.answer_growing(status, headers, growth, start, end)
    });
}

/// The head of a file of `len` bytes, whole (200) or the range asked for (206), handed to
/// `send` with the body's bounds; an unsatisfiable range is answered 416 here.
fn answer_range<S: Read + Write + AsRawFd>(
    c: &mut Conn<S>,
    req: &Request,
    len: u64,
    lm: &str,
    send: impl FnOnce(&mut Conn<S>, u16, &[(&str, &str)], u64, u64),
) {
    let (status, start, end) = match http::resolve_range(req.range.as_deref(), len) {
        RangeOutcome::Full => (200, 0, len),
        RangeOutcome::Partial { start, end } => (206, start, end + 1),
        RangeOutcome::Unsatisfiable => {
            let cr = http::content_range_unsatisfied(len);
            return c.answer_bytes(416, &[("Content-Range", &cr), ("Last-Modified", lm)], b"");
        }
    };
    let clen = (end - start).to_string();
    let cr = http::content_range(start, end.saturating_sub(1), len);
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", &clen),
        ("Last-Modified", lm),
        ("Accept-Ranges", "bytes"),
    ];
    if status == 206 {
        headers.push(("Content-Range", &cr));
    }
    send(c, status, &headers, start, end);
}

/// Seconds since the epoch, for logs that compare with other hosts.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Progress;
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

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
        exchange_keyed(dirs, &Keys::default(), req)
    }

    fn exchange_keyed(dirs: &CacheDirs, keys: &Keys, req: &[u8]) -> Vec<u8> {
        exchange_arriving(dirs, keys, req, &|_| None)
    }

    fn exchange_arriving(
        dirs: &CacheDirs,
        keys: &Keys,
        req: &[u8],
        arriving: &Arriving<'_>,
    ) -> Vec<u8> {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.write_all(req).unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        let mut conn = Conn::new(a, Instant::now(), IDLE_TIMEOUT);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).unwrap();
            got
        });
        loop {
            match conn.drive(Instant::now()) {
                Progress::Close => break,
                Progress::Request => {
                    let req = conn.take_request().unwrap();
                    answer_with(&mut conn, &req, dirs, keys, arriving, &[]);
                }
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
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
    fn a_group_key_requires_flocon_auth() {
        let f = fixture("auth");
        let keys = Keys::from_secrets(&[b"0123456789abcdef"]);
        let path = "/a-1-1-any.pkg.tar.zst";
        let req = |auth: Option<String>| {
            let extra = auth
                .map(|v| format!("Flocon-Auth: {v}\r\n"))
                .unwrap_or_default();
            format!("GET {path} HTTP/1.1\r\n{extra}Connection: close\r\n\r\n")
        };
        assert_eq!(
            status_of(&exchange_keyed(&f.dirs, &keys, req(None).as_bytes())),
            403
        );
        let other = Keys::from_secrets(&[b"fedcba9876543210"]);
        let forged = other.sign_request("GET", path, unix_now());
        assert_eq!(
            status_of(&exchange_keyed(&f.dirs, &keys, req(forged).as_bytes())),
            403
        );
        let stale = keys.sign_request("GET", path, unix_now() - 3600);
        assert_eq!(
            status_of(&exchange_keyed(&f.dirs, &keys, req(stale).as_bytes())),
            403
        );
        let missing = keys.sign_request("GET", "/missing-1-1-any.pkg.tar.zst", unix_now());
        let r = format!(
            "GET /missing-1-1-any.pkg.tar.zst HTTP/1.1\r\nFlocon-Auth: {}\r\nConnection: close\r\n\r\n",
            missing.unwrap()
        );
        assert_eq!(
            status_of(&exchange_keyed(&f.dirs, &keys, r.as_bytes())),
            404
        );
        let good = keys.sign_request("GET", path, unix_now());
        let resp = exchange_keyed(&f.dirs, &keys, req(good).as_bytes());
        assert_eq!(status_of(&resp), 200);
        assert!(resp.len() > 100_000);
    }

    /// A copy in flight: `first` bytes written now, the rest (or a failure) 100 ms later,
    /// as the stager thread would.
    fn growing(f: &Fixture, data: &[u8], first: usize, fail: bool) -> Arc<Growth> {
        let path = f.dir.join("staged");
        std::fs::write(&path, &data[..first]).unwrap();
        let g = Growth::new();
        g.set_for_test(Some(File::open(&path).unwrap()), first as u64, false);
        let (g2, rest) = (g.clone(), data[first..].to_vec());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            if fail {
                g2.set_for_test(None, first as u64, true);
                return;
            }
            let mut w = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            for (i, piece) in rest.chunks(7000).enumerate() {
                w.write_all(piece).unwrap();
                let written = first + (i * 7000 + piece.len());
                g2.set_for_test(None, written as u64, false);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        g
    }

    #[test]
    fn a_copy_in_flight_is_sent_as_it_grows() {
        let f = fixture("grow");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let g = growing(&f, &data, 40_000, false);
        let len = data.len() as u64;
        let arriving = |n: &str| (n == "b-1-1-any.pkg.tar.zst").then(|| (len, g.clone()));
        let req = b"GET /b-1-1-any.pkg.tar.zst HTTP/1.1\r\nConnection: close\r\n\r\n";
        let resp = exchange_arriving(&f.dirs, &Keys::default(), req, &arriving);
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&resp[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("content-length: 300000"),
            "the whole size: {head}"
        );
        assert!(resp[head_end..] == data[..], "every byte, in order");
        // a range of it, from the part not written yet when asked
        let g = growing(&f, &data, 1000, false);
        let arriving = |n: &str| (n == "b-1-1-any.pkg.tar.zst").then(|| (len, g.clone()));
        let req = b"GET /b-1-1-any.pkg.tar.zst HTTP/1.1\r\nRange: bytes=200000-\r\nConnection: close\r\n\r\n";
        let resp = exchange_arriving(&f.dirs, &Keys::default(), req, &arriving);
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 206"), "{text:.80}");
        assert!(text.contains("Content-Range: bytes 200000-299999/300000"));
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(resp[head_end..] == data[200_000..]);
        // a file in the cache dirs is served from there, whatever is arriving
        let resp = exchange_arriving(
            &f.dirs,
            &Keys::default(),
            b"GET /a-1-1-any.pkg.tar.zst HTTP/1.1\r\nConnection: close\r\n\r\n",
            &|_| Some((5, Growth::new())),
        );
        assert!(String::from_utf8_lossy(&resp).contains("Content-Length: 100000"));
    }

    #[test]
    fn a_copy_that_fails_in_flight_is_cut() {
        let f = fixture("growfail");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let g = growing(&f, &data, 40_000, true);
        let len = data.len() as u64;
        let arriving = |n: &str| (n == "b-1-1-any.pkg.tar.zst").then(|| (len, g.clone()));
        let req = b"GET /b-1-1-any.pkg.tar.zst HTTP/1.1\r\n\r\n";
        let t0 = Instant::now();
        let resp = exchange_arriving(&f.dirs, &Keys::default(), req, &arriving);
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&resp[..head_end]).to_lowercase();
        assert!(head.contains("content-length: 300000"), "{head}");
        assert_eq!(resp.len() - head_end, 40_000, "what arrived, then the cut");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "cut, not left to time out"
        );
    }

    #[test]
    fn timeouts() {
        let (a, _b) = UnixStream::pair().unwrap();
        let t0 = Instant::now();
        let c = Conn::new(a, t0, IDLE_TIMEOUT);
        assert!(!c.timed_out(t0 + IDLE_TIMEOUT - Duration::from_millis(1)));
        assert!(c.timed_out(t0 + IDLE_TIMEOUT + Duration::from_millis(1)));
    }
}
