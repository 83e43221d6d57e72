//! Request heads: `parse_request` reads one for the peer server (docs/DESIGN.md, "The peer
//! server") and the loopback front (docs/DESIGN.md, "The front"); `peer_file_name` and
//! `front_path` turn its target into checked file names, decoding each component exactly once;
//! `build_request` writes one for flocon's own client.

use super::{
    HttpError, Method, Version, connection_tokens, header_text, hex_value, parse_decimal,
    valid_header,
};
use crate::names::{self, FileKind, classify};
use crate::url::HttpUrl;
use std::io::Write as _;

/// Request head bound. pacman (libcurl) sends heads of about 200-300 bytes; 8 KiB is the
/// usual server default (nginx, Apache), so no real client reaches it, and it caps what one
/// connection can make us hold before we answer 431.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// httparse header array size. curl sends about 5 header lines; 32 leaves room for proxies
/// while keeping the array on the stack. More lines -> 431, like an oversize head.
pub(crate) const MAX_HEADERS: usize = 32;

const USER_AGENT: &str = concat!("flocon/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: Method,
    pub version: Version,
    /// Raw request target as sent (path [+ query]); decode it with `peer_file_name` or
    /// `front_path`, never by hand.
    pub target: String,
    /// HTTP/1.1: yes unless `Connection: close`; HTTP/1.0: only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Raw `Range` value, for `resolve_range`.
    pub range: Option<String>,
    pub if_modified_since: Option<String>,
    /// Raw `Host` value (the front answers only loopback names: `guard::is_loopback_host`).
    pub host: Option<String>,
    /// `Flocon-Auth` (peer requests under a group key, auth.rs).
    pub flocon_auth: Option<String>,
    /// Bytes taken by the head; pipelined bytes after it belong to the next request.
    pub head_len: usize,
}

/// Parses one request head from the start of `buf`. `Ok(None)`: incomplete, read more (only
/// while `buf.len() < MAX_HEAD`). A head is accepted iff it fits in `MAX_HEAD` bytes, however
/// the bytes were split across reads.
pub(crate) fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(httparse::Error::Version) if names_other_version(window) => {
            return Err(HttpError::VersionNotSupported);
        }
        Err(_) => return Err(HttpError::BadRequest),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => return Err(HttpError::MethodNotAllowed),
    };
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let target = match req.path {
        Some(p) if !p.is_empty() => p.to_string(),
        _ => return Err(HttpError::BadRequest),
    };

    let mut close = false;
    let mut keep = false;
    let mut range = None;
    let mut if_modified_since = None;
    let mut host = None;
    let mut flocon_auth = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let (c, k) = connection_tokens(h.value);
            close |= c;
            keep |= k;
        } else if name.eq_ignore_ascii_case("range") {
            // Two ranges would leave us guessing which one the client meant.
            only_once(&mut range, h.value)?;
        } else if name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: more than one Host is a 400.
            only_once(&mut host, h.value)?;
        } else if name.eq_ignore_ascii_case("content-length") {
            // We take no bodies: a non-zero length would desynchronise keep-alive framing.
            match header_text(h.value).and_then(parse_decimal) {
                Some(0) => {}
                _ => return Err(HttpError::BadRequest),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::BadRequest);
        } else if name.eq_ignore_ascii_case("if-modified-since") && if_modified_since.is_none() {
            // An unreadable date is ignored (RFC 9110 §13.1.3), not an error.
            if_modified_since = header_text(h.value).map(str::to_string);
        } else if name.eq_ignore_ascii_case(crate::auth::HTTP_HEADER) && flocon_auth.is_none() {
            flocon_auth = header_text(h.value).map(str::to_string);
        }
    }
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep && !close,
    };
    Ok(Some(Request {
        method,
        version,
        target,
        keep_alive,
        range,
        if_modified_since,
        host,
        flocon_auth,
        head_len,
    }))
}

/// A header that may appear once: its text into `slot`; a second one, or a value that is not
/// text, is a 400.
fn only_once(slot: &mut Option<String>, value: &[u8]) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::BadRequest);
    }
    *slot = Some(header_text(value).ok_or(HttpError::BadRequest)?.to_string());
    Ok(())
}

/// True when the request line ends in `HTTP/<digit>...` that httparse refused: a version we
/// do not speak (505) rather than garbage (400).
fn names_other_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let last = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
    last.len() > 5 && last.starts_with(b"HTTP/") && last[5].is_ascii_digit()
}

/// The path of a request target, query dropped (nobody here uses one). An absolute-form
/// target (`http://host/path`, which RFC 9112 §3.2.2 says servers must accept) is read by the
/// one URL parser and reduced to its path.
fn origin_path(target: &str) -> Result<String, HttpError> {
    let url;
    let path = if target.starts_with('/') {
        target
    } else {
        url = HttpUrl::parse(target).map_err(|_| HttpError::BadRequest)?;
        url.path()
    };
    Ok(path.split_once('?').map_or(path, |(p, _)| p).to_string())
}

/// Name rules for a file requested from the peer server (docs/DESIGN.md, "The peer server"): the target must be "/"
/// plus one safe name of a package or a package signature. Bad encoding is 400; a name we
/// refuse is 404, which tells a prober nothing more.
pub(crate) fn peer_file_name(target: &str) -> Result<String, HttpError> {
    let path = origin_path(target)?;
    let rest = path.strip_prefix('/').ok_or(HttpError::BadRequest)?;
    if rest.contains('/') {
        return Err(HttpError::NotFound);
    }
    let name = decode_component(rest)?;
    match classify(&name) {
        FileKind::Package | FileKind::PackageSig => Ok(name),
        _ => Err(HttpError::NotFound),
    }
}

/// The loopback front's path `/<repo>/os/<arch>/<file>` (docs/DESIGN.md, "The front"), each part decoded once and
/// checked with `names::is_file_name`. Returns (repo, arch, file); the file may be of any kind, the
/// front decides what to do with it by `classify`.
pub(crate) fn front_path(target: &str) -> Result<(String, String, String), HttpError> {
    let path = origin_path(target)?;
    let rest = path.strip_prefix('/').ok_or(HttpError::BadRequest)?;
    let mut parts = rest.split('/');
    let (Some(repo), Some(os), Some(arch), Some(file), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(HttpError::NotFound);
    };
    let repo = decode_component(repo)?;
    let os = decode_component(os)?;
    let arch = decode_component(arch)?;
    let file = decode_component(file)?;
    if os != "os" {
        return Err(HttpError::NotFound);
    }
    Ok((repo, arch, file))
}

/// One path component, decoded once, then checked: the checks see what the filesystem
/// would see, so `%2e%2e` is refused as `..`.
fn decode_component(raw: &str) -> Result<String, HttpError> {
    let name = percent_decode(raw)?;
    if names::is_file_name(name.as_bytes()) {
        Ok(name)
    } else {
        Err(HttpError::NotFound)
    }
}

/// Percent-decodes exactly once. Refuses `%00` (C strings would end there), `%2f`/`%2F` (this
/// decodes one component, and a slash inside it would make two), invalid escapes and invalid
/// UTF-8. `+` stays `+`: it means space only in form data, not in paths.
pub(crate) fn percent_decode(s: &str) -> Result<String, HttpError> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hi = bytes.next().and_then(hex_value);
        let lo = bytes.next().and_then(hex_value);
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(HttpError::BadRequest);
        };
        let v = hi << 4 | lo;
        if v == 0 || v == b'/' {
            return Err(HttpError::BadRequest);
        }
        out.push(v);
    }
    String::from_utf8(out).map_err(|_| HttpError::BadRequest)
}

/// Writes an HTTP/1.1 request head for `url`. Its target and `Host` come from an `HttpUrl`,
/// which holds no byte that could split the request line; extra headers that could split the
/// head are dropped.
pub(crate) fn build_request(
    out: &mut Vec<u8>,
    method: Method,
    url: &HttpUrl,
    extra: &[(&str, &str)],
) {
    let _ = write!(out, "{} {}", method.as_str(), url.path());
    let _ = write!(out, " HTTP/1.1\r\nHost: {}", url.host_header());
    // Without Accept-Encoding any content coding is allowed (RFC 9110 §12.5.3); we hash
    // and forward the bytes as the file, so they must arrive unencoded.
    let _ = write!(
        out,
        "\r\nUser-Agent: {USER_AGENT}\r\nAccept-Encoding: identity\r\n"
    );
    for (name, value) in extra {
        if valid_header(name, value) {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        method: Method,
        version: Version,
        target: &str,
        keep_alive: bool,
        range: Option<&str>,
        head_len: usize,
    ) -> Request {
        Request {
            method,
            version,
            target: target.to_string(),
            keep_alive,
            range: range.map(str::to_string),
            if_modified_since: None,
            host: None,
            flocon_auth: None,
            head_len,
        }
    }

    /// Every proper prefix is incomplete and the whole gives `expected`.
    fn check_every_split(raw: &[u8], expected: &Request) {
        for k in 0..raw.len() {
            assert_eq!(
                parse_request(&raw[..k]),
                Ok(None),
                "prefix {k} of {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(parse_request(raw), Ok(Some(expected.clone())));
    }

    #[test]
    fn request_every_split() {
        let cases: Vec<(&[u8], Request)> = vec![
            (
                b"GET /core/os/x86_64/a-1-1-x86_64.pkg.tar.zst HTTP/1.1\r\nHost: localhost:19433\r\nUser-Agent: pacman/7.0.0\r\nAccept: */*\r\n\r\n",
                req(
                    Method::Get,
                    Version::Http11,
                    "/core/os/x86_64/a-1-1-x86_64.pkg.tar.zst",
                    true,
                    None,
                    0,
                ),
            ),
            (
                b"HEAD /x.pkg.tar.zst HTTP/1.0\r\n\r\n",
                req(Method::Head, Version::Http10, "/x.pkg.tar.zst", false, None, 0),
            ),
            (
                b"GET /a?b=c HTTP/1.0\r\nConnection: Keep-Alive\r\nRange: bytes=10-\r\n\r\n",
                req(Method::Get, Version::Http10, "/a?b=c", true, Some("bytes=10-"), 0),
            ),
            (
                b"GET /a HTTP/1.1\r\nconnection: foo, CLOSE\r\nrange:   bytes=0-1  \r\n\r\n",
                req(Method::Get, Version::Http11, "/a", false, Some("bytes=0-1"), 0),
            ),
            (
                b"GET / HTTP/1.1\nHost: a\n\n",
                req(Method::Get, Version::Http11, "/", true, None, 0),
            ),
            (
                b"\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                req(Method::Get, Version::Http11, "/", true, None, 0),
            ),
        ];
        for (raw, mut expected) in cases {
            expected.head_len = raw.len();
            let text = String::from_utf8_lossy(raw);
            expected.host = text
                .split("Host: ")
                .nth(1)
                .and_then(|h| h.split(['\r', '\n']).next())
                .map(str::to_string);
            check_every_split(raw, &expected);
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &str| parse_request(raw.as_bytes()).unwrap().unwrap().keep_alive;
        assert!(ka("GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka("GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        assert!(ka("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn pipelined_bytes_stay() {
        let one = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = one.to_vec();
        buf.extend_from_slice(b"HEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c");
        let first = parse_request(&buf).unwrap().unwrap();
        assert_eq!(first.head_len, one.len());
        assert_eq!(first.target, "/a");
        let rest = &buf[first.head_len..];
        let second = parse_request(rest).unwrap().unwrap();
        assert_eq!(
            (second.method, second.target.as_str()),
            (Method::Head, "/b")
        );
        assert_eq!(parse_request(&rest[second.head_len..]), Ok(None));
    }

    #[test]
    fn if_modified_since_kept() {
        let r = parse_request(
            b"GET / HTTP/1.1\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            r.if_modified_since.as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
    }

    #[test]
    fn head_size_bound() {
        // A head of exactly MAX_HEAD bytes is fine; one more byte is 431, even if complete.
        let fill = |total: usize| {
            let start = b"GET / HTTP/1.1\r\nX: ";
            let mut v = start.to_vec();
            v.resize(total - 4, b'a');
            v.extend_from_slice(b"\r\n\r\n");
            v
        };
        assert!(parse_request(&fill(MAX_HEAD)).unwrap().is_some());
        assert_eq!(
            parse_request(&fill(MAX_HEAD + 1)),
            Err(HttpError::HeadTooLarge)
        );
        let endless = vec![b'a'; MAX_HEAD];
        let mut endless_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        endless_head.extend_from_slice(&endless);
        assert_eq!(parse_request(&endless_head), Err(HttpError::HeadTooLarge));
        assert_eq!(
            parse_request(&endless_head[..MAX_HEAD - 1]),
            Ok(None),
            "incomplete below the bound"
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(HttpError::HeadTooLarge));
        assert_eq!(HttpError::HeadTooLarge.status(), 431);
    }

    #[test]
    fn request_errors() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"POST / HTTP/1.1\r\n\r\n", HttpError::MethodNotAllowed),
            (
                b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                HttpError::MethodNotAllowed,
            ),
            (b"get / HTTP/1.1\r\n\r\n", HttpError::MethodNotAllowed),
            (b"OPTIONS * HTTP/1.1\r\n\r\n", HttpError::MethodNotAllowed),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -0\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nRange: bytes=0-1\r\nRange: bytes=2-3\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nRange: bytes=\xff\r\n\r\n",
                HttpError::BadRequest,
            ),
            (b"\x00\x01\x02\r\n\r\n", HttpError::BadRequest),
            (
                b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
                HttpError::BadRequest,
            ),
            (
                b"GET / HTTP/1.1\r\nFolded: a\r\n b\r\n\r\n",
                HttpError::BadRequest,
            ),
            (b"GET /\xff HTTP/1.1\r\n\r\n", HttpError::BadRequest),
            (b"GET / HTTP/2.0\r\n\r\n", HttpError::VersionNotSupported),
            (b"GET / HTTP/1.2\r\n\r\n", HttpError::VersionNotSupported),
            (b"GET / FTP/1.1\r\n\r\n", HttpError::BadRequest),
            (b"GET /\r\n\r\n", HttpError::BadRequest),
        ];
        for (raw, err) in cases {
            assert_eq!(
                parse_request(raw),
                Err(*err),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(HttpError::MethodNotAllowed.status(), 405);
        assert_eq!(HttpError::BadRequest.status(), 400);
        assert_eq!(HttpError::VersionNotSupported.status(), 505);
    }

    #[test]
    fn hostile_names_refused() {
        let long = format!("/{}.pkg.tar.zst", "a".repeat(300));
        let hostile: &[&str] = &[
            "/../etc/passwd",
            "/..",
            "/.",
            "/%2e%2e",
            "/%2E%2e/",
            "/%2e%2e%2fetc%2fpasswd",
            "/a%2fb.pkg.tar.zst",
            "/a%2Fb.pkg.tar.zst",
            "//",
            "/",
            "",
            "a.pkg.tar.zst",
            "/a//b",
            "//a.pkg.tar.zst",
            "/a.pkg.tar.zst/",
            "/..\\a.pkg.tar.zst",
            "/a\\b.pkg.tar.zst",
            "/a%5cb.pkg.tar.zst",
            "/a%5Cb.pkg.tar.zst",
            "/a\0.pkg.tar.zst",
            "/a%00.pkg.tar.zst",
            "/etc/passwd",
            "/%2fetc%2fpasswd",
            long.as_str(),
            "/\u{ff0e}\u{ff0e}",
            "/%ef%bc%8e%ef%bc%8e",
            "/a\u{202e}tsz.rat.gkp.pkg.tar.zst",
            "/a%e2%80%aetsz.pkg.tar.zst",
            "/.hidden.pkg.tar.zst",
            "/%2ehidden.pkg.tar.zst",
            "/a.pkg.tar.zst.part",
            "/a.pkg.tar.zst.PART",
            "/a.pkg.tar.zst%2epart",
            "/a%0a.pkg.tar.zst",
            "/a%0d%0a.pkg.tar.zst",
            "/a%7f.pkg.tar.zst",
            "/a%09.pkg.tar.zst",
            "/a%20b.pkg.tar.zst",
            "/a.pkg.tar.zst%",
            "/a.pkg.tar.zst%2",
            "/a%zz.pkg.tar.zst",
            "/a%g0.pkg.tar.zst",
            "/a%ff.pkg.tar.zst",
            "/a%c0%ae.pkg.tar.zst",
            "/%252e%252e",
            "/core.db",
            "/core.db.sig",
            "/index.html",
            "http://evil/../x.pkg.tar.zst",
            "*",
        ];
        // Refused by the peer (not a package) but a fine file name for the front.
        let front_may_serve = ["/core.db", "/core.db.sig", "/index.html", "/%252e%252e"];
        for t in hostile {
            assert!(peer_file_name(t).is_err(), "peer accepted {t:?}");
            assert!(front_path(t).is_err(), "front accepted {t:?}");
            if t.starts_with('/') && !front_may_serve.contains(t) {
                let in_front = format!("/core/os/x86_64{t}");
                assert!(
                    front_path(&in_front).is_err(),
                    "front accepted {in_front:?}"
                );
            }
        }
        // Each component of the front path gets the same treatment.
        for part in [
            "..", "%2e%2e", ".", "", "a%2fb", "a\\b", "%00", "\u{ff0e}", ".x", "a.part",
        ] {
            for (i, t) in [
                format!("/{part}/os/x86_64/a.pkg.tar.zst"),
                format!("/core/{part}/x86_64/a.pkg.tar.zst"),
                format!("/core/os/{part}/a.pkg.tar.zst"),
                format!("/core/os/x86_64/{part}"),
            ]
            .iter()
            .enumerate()
            {
                assert!(front_path(t).is_err(), "front accepted {t:?} ({i})");
            }
        }
        assert_eq!(peer_file_name("/%2e%2e"), Err(HttpError::NotFound));
        assert_eq!(peer_file_name("/a%zz"), Err(HttpError::BadRequest));
        assert_eq!(peer_file_name("/a%00"), Err(HttpError::BadRequest));
        assert_eq!(peer_file_name("/a%2f"), Err(HttpError::BadRequest));
        assert_eq!(peer_file_name("relative"), Err(HttpError::BadRequest));
        assert_eq!(front_path("/core/os/x86_64"), Err(HttpError::NotFound));
        assert_eq!(front_path("/core/os/x86_64/a/b"), Err(HttpError::NotFound));
        assert_eq!(front_path("/core/OS/x86_64/a"), Err(HttpError::NotFound));
    }

    #[test]
    fn good_names_accepted() {
        let s = |x: &str| x.to_string();
        assert_eq!(
            peer_file_name("/linux-6.9.1.arch1-1-x86_64.pkg.tar.zst"),
            Ok(s("linux-6.9.1.arch1-1-x86_64.pkg.tar.zst"))
        );
        assert_eq!(
            peer_file_name("/linux-6.9.1.arch1-1-x86_64.pkg.tar.zst.sig?x=1"),
            Ok(s("linux-6.9.1.arch1-1-x86_64.pkg.tar.zst.sig"))
        );
        assert_eq!(
            peer_file_name("/gtk%2B3-1%3A3.24-1-x86_64.pkg.tar.zst"),
            Ok(s("gtk+3-1:3.24-1-x86_64.pkg.tar.zst"))
        );
        assert_eq!(
            peer_file_name("/c++utils-1:2-1-any.pkg.tar.xz"),
            Ok(s("c++utils-1:2-1-any.pkg.tar.xz"))
        );
        assert_eq!(
            peer_file_name("http://10.0.0.2:19432/a-1-1-any.pkg.tar.zst"),
            Ok(s("a-1-1-any.pkg.tar.zst"))
        );
        let name255 = format!("{}.pkg.tar", "a".repeat(crate::names::MAX_FILE_NAME - 8));
        assert_eq!(peer_file_name(&format!("/{name255}")), Ok(name255.clone()));
        assert!(peer_file_name(&format!("/a{name255}")).is_err());
        assert_eq!(
            front_path("/core/os/x86_64/a-1-1-x86_64.pkg.tar.zst"),
            Ok((s("core"), s("x86_64"), s("a-1-1-x86_64.pkg.tar.zst")))
        );
        assert_eq!(
            front_path("/extra/os/aarch64/extra.db?t=1"),
            Ok((s("extra"), s("aarch64"), s("extra.db")))
        );
        assert_eq!(
            front_path("/core/os/x86_64/%252e"),
            Ok((s("core"), s("x86_64"), s("%2e")))
        );
        assert_eq!(classify("%2e"), FileKind::Other);
    }

    #[test]
    fn decoding_is_single() {
        assert_eq!(percent_decode("a%41%2b+"), Ok("aA++".to_string()));
        assert_eq!(percent_decode("%252e"), Ok("%2e".to_string()));
        assert_eq!(percent_decode("%e2%82%ac"), Ok("\u{20ac}".to_string()));
        assert_eq!(percent_decode(""), Ok(String::new()));
        for bad in [
            "%", "%a", "%zz", "a%2f", "%2F", "%00", "%ff", "%e2%82", "%%41",
        ] {
            assert_eq!(percent_decode(bad), Err(HttpError::BadRequest), "{bad:?}");
        }
    }

    #[test]
    fn requests_built() {
        let mut out = Vec::new();
        let url =
            HttpUrl::parse("http://Mirror.example:8080/core/os/x86_64/a%20b%0D%0A.pkg.tar.zst?t#f")
                .unwrap();
        build_request(
            &mut out,
            Method::Get,
            &url,
            &[
                ("Range", "bytes=5-"),
                ("X-Evil", "x\r\nHost: y"),
                ("If-Modified-Since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ],
        );
        let text = String::from_utf8(out.clone()).unwrap();
        let ua = format!("User-Agent: flocon/{}\r\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(
            text,
            format!(
                "GET /core/os/x86_64/a%20b%0D%0A.pkg.tar.zst?t HTTP/1.1\r\nHost: mirror.example:8080\r\n{ua}Accept-Encoding: identity\r\nRange: bytes=5-\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
            )
        );
        // Our request parser reads it back.
        let r = parse_request(&out).unwrap().unwrap();
        assert_eq!(r.range.as_deref(), Some("bytes=5-"));
        assert_eq!(r.head_len, out.len());
        // A target or a Host that could split the head never becomes a URL to build from.
        for bad in [
            "http://m/core/os/x86_64/a b\r\n.pkg.tar.zst",
            "http://h\r\nX: y/x",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?}");
        }
        out.clear();
        let peer = HttpUrl::peer("[::1]:80".parse().unwrap());
        build_request(&mut out, Method::Head, &peer, &[]);
        assert!(out.starts_with(b"HEAD / HTTP/1.1\r\nHost: [::1]\r\n"));
    }
}
