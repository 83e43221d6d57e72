//! HTTP/1.x without sockets: request-head parsing for the peer server (docs/DESIGN.md, "The peer server") and the
//! loopback front (docs/DESIGN.md, "The front"), response-head parsing and chunked decoding for flocon's own
//! client, single-range math, the file-name rules that keep every request inside the cache,
//! response-head formatting and HTTP dates. Everything here is a pure function of its input,
//! never panics on network bytes, and returns a typed `HttpError` that maps to a status code.

use crate::names;
use std::fmt::Display;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Request head bound. pacman (libcurl) sends heads of about 200-300 bytes; 8 KiB is the
/// usual server default (nginx, Apache), so no real client reaches it, and it caps what one
/// connection can make us hold before we answer 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// httparse header array size. curl sends about 5 header lines; 32 leaves room for proxies
/// while keeping the array on the stack. More lines -> 431, like an oversize head.
pub const MAX_HEADERS: usize = 32;
/// Response head bound for flocon's own client. Mirrors behind CDNs send long heads (cookies,
/// security policies), so twice the request bound; still small per outbound fetch.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Response header array size: CDN-fronted mirrors send 20-40 header lines.
pub const MAX_RESPONSE_HEADERS: usize = 64;
/// Longest chunk-size line including extensions. Real servers send "1f40\r\n"; the bound
/// stops a peer from trickling an endless line at us.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Total trailer bytes accepted after the last chunk (we discard them; the bound only
/// limits how long a sender can keep us reading nothing useful).
pub const MAX_TRAILERS: usize = 8 * 1024;

/// Compressor suffixes makepkg can give a package (`PKGEXT`) and repo-add a database.
const COMPRESSORS: &[&str] = &["gz", "xz", "zst", "bz2", "lz4", "lrz", "lzo", "Z", "lz"];

/// Latest date `http_date` writes: 9999-12-31T23:59:59Z, the last one with a 4-digit year.
const MAX_DATE_SECS: u64 = 253_402_300_799;

const USER_AGENT: &str = concat!("flocon/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request, bad percent-encoding, a body, duplicate Range/Host.
    BadRequest,
    /// A well-formed target that names nothing we may serve (`..`, dot files, `.part`, ...).
    NotFound,
    /// Anything but GET and HEAD.
    MethodNotAllowed,
    /// Head longer than `MAX_HEAD` or more than `MAX_HEADERS` lines.
    HeadTooLarge,
    /// An HTTP version other than 1.0 and 1.1.
    VersionNotSupported,
    /// A peer or mirror sent a response we cannot frame safely (client side).
    BadResponse,
    /// Response head longer than `MAX_RESPONSE_HEAD` (client side).
    ResponseTooLarge,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed => 405,
            HttpError::HeadTooLarge => 431,
            HttpError::VersionNotSupported => 505,
            // Upstream trouble seen by the front: "bad gateway" is what pacman should hear.
            HttpError::BadResponse | HttpError::ResponseTooLarge => 502,
        }
    }
}

impl Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            HttpError::BadRequest => "bad request",
            HttpError::NotFound => "not found",
            HttpError::MethodNotAllowed => "method not allowed",
            HttpError::HeadTooLarge => "request head too large",
            HttpError::VersionNotSupported => "HTTP version not supported",
            HttpError::BadResponse => "malformed response",
            HttpError::ResponseTooLarge => "response head too large",
        };
        f.write_str(s)
    }
}

impl std::error::Error for HttpError {}

// ---------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------

/// Parses one request head from the start of `buf`. `Ok(None)`: incomplete, read more (only
/// while `buf.len() < MAX_HEAD`). A head is accepted iff it fits in `MAX_HEAD` bytes, however
/// the bytes were split across reads.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, HttpError> {
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
            if range.is_some() {
                return Err(HttpError::BadRequest);
            }
            range = Some(
                header_text(h.value)
                    .ok_or(HttpError::BadRequest)?
                    .to_string(),
            );
        } else if name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: more than one Host is a 400.
            if host.is_some() {
                return Err(HttpError::BadRequest);
            }
            host = Some(
                header_text(h.value)
                    .ok_or(HttpError::BadRequest)?
                    .to_string(),
            );
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

/// True when the request line ends in `HTTP/<digit>...` that httparse refused: a version we
/// do not speak (505) rather than garbage (400).
fn names_other_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = &buf[..line_end];
    let last = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
    last.len() > 5 && last.starts_with(b"HTTP/") && last[5].is_ascii_digit()
}

/// (close, keep-alive) tokens of a Connection value (a comma list, case-insensitive).
fn connection_tokens(value: &[u8]) -> (bool, bool) {
    let mut close = false;
    let mut keep = false;
    for token in value.split(|&b| b == b',') {
        let token = token.trim_ascii();
        close |= token.eq_ignore_ascii_case(b"close");
        keep |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    (close, keep)
}

/// A header value as trimmed text, or None when it is not UTF-8.
fn header_text(value: &[u8]) -> Option<&str> {
    std::str::from_utf8(value)
        .ok()
        .map(|s| s.trim_matches([' ', '\t']))
}

/// `1*DIGIT` as u64; None on anything else, including overflow.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable Range: send the whole file with 200.
    Full,
    /// 206 with these bytes, both ends inclusive.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

enum RangeSpec {
    /// `a-` or `a-b`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Single-range only. Anything we do not understand (several ranges, other units, garbage,
/// `b < a`) yields `Full`: RFC 9110 §14.2 lets a server ignore Range, and a whole file is
/// always a correct answer.
pub fn resolve_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(spec) = header.and_then(parse_range_spec) else {
        return RangeOutcome::Full;
    };
    match spec {
        RangeSpec::From(start, _) if start >= len => RangeOutcome::Unsatisfiable,
        RangeSpec::From(start, last) => RangeOutcome::Partial {
            start,
            end: last.unwrap_or(u64::MAX).min(len - 1),
        },
        RangeSpec::Suffix(n) if n == 0 || len == 0 => RangeOutcome::Unsatisfiable,
        // A suffix longer than the file means the whole file (RFC 9110 §14.1.2), still 206.
        RangeSpec::Suffix(n) => RangeOutcome::Partial {
            start: len - n.min(len),
            end: len - 1,
        },
    }
}

fn parse_range_spec(header: &str) -> Option<RangeSpec> {
    let (unit, set) = header.trim_matches([' ', '\t']).split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list may carry empty elements and whitespace around commas (RFC 9110 §5.6.1.2).
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(RangeSpec::Suffix(saturating_digits(last)?));
    }
    let first = saturating_digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(saturating_digits(last)?)
    };
    match last {
        Some(l) if l < first => None,
        _ => Some(RangeSpec::From(first, last)),
    }
}

/// `1*DIGIT`, saturating: a position past u64::MAX is past the end of any file, which is
/// what the client meant, so it must not turn into a wrapped small number or an error.
fn saturating_digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        b.is_ascii_digit()
            .then(|| acc.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

/// `Content-Range` value of a 206.
pub fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// `Content-Range` value of a 416.
pub fn content_range_unsatisfied(len: u64) -> String {
    format!("bytes */{len}")
}

// ---------------------------------------------------------------------------------------
// Names and paths
// ---------------------------------------------------------------------------------------

/// The path of a request target: query dropped (nobody here uses one), absolute-form
/// (`http://host/path`, which RFC 9112 §3.2.2 says servers must accept) reduced to its path.
fn origin_path(target: &str) -> Result<&str, HttpError> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let authority = strip_prefix_ignore_case(path, "http://")
        .or_else(|| strip_prefix_ignore_case(path, "https://"));
    let path = match authority {
        Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(HttpError::BadRequest)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Name rules for a file requested from the peer server (docs/DESIGN.md, "The peer server"): the target must be "/"
/// plus one safe name of a package or a package signature. Bad encoding is 400; a name we
/// refuse is 404, which tells a prober nothing more.
pub fn peer_file_name(target: &str) -> Result<String, HttpError> {
    let rest = origin_path(target)?
        .strip_prefix('/')
        .ok_or(HttpError::BadRequest)?;
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
pub fn front_path(target: &str) -> Result<(String, String, String), HttpError> {
    let rest = origin_path(target)?
        .strip_prefix('/')
        .ok_or(HttpError::BadRequest)?;
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
pub fn percent_decode(s: &str) -> Result<String, HttpError> {
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

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `<stem>.pkg.tar` or `<stem>.pkg.tar.<compressor>`.
    Package,
    PackageSig,
    /// `<repo>.db`, `<repo>.files`, or those + `.tar` [+ `.<compressor>`].
    Database,
    DatabaseSig,
    Other,
}

pub fn classify(name: &str) -> FileKind {
    match name.strip_suffix(".sig") {
        Some(base) => match classify_unsigned(base) {
            FileKind::Package => FileKind::PackageSig,
            FileKind::Database => FileKind::DatabaseSig,
            _ => FileKind::Other,
        },
        None => classify_unsigned(name),
    }
}

fn classify_unsigned(name: &str) -> FileKind {
    let uncompressed = strip_compressor(name);
    if has_stem(uncompressed, ".pkg.tar") {
        return FileKind::Package;
    }
    // Databases are `x.db` (a symlink repo-add makes) or `x.db.tar[.comp]`; `x.db.gz` is not.
    let db = match uncompressed.strip_suffix(".tar") {
        Some(db) => db,
        None if uncompressed.len() == name.len() => name,
        None => return FileKind::Other,
    };
    if has_stem(db, ".db") || has_stem(db, ".files") {
        FileKind::Database
    } else {
        FileKind::Other
    }
}

fn strip_compressor(name: &str) -> &str {
    COMPRESSORS
        .iter()
        .find_map(|c| name.strip_suffix(c).and_then(|rest| rest.strip_suffix('.')))
        .unwrap_or(name)
}

fn has_stem(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|stem| !stem.is_empty())
}

// ---------------------------------------------------------------------------------------
// Response heads we send
// ---------------------------------------------------------------------------------------

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        // The reason phrase may be empty (RFC 9112 §4); clients must not rely on it.
        _ => "",
    }
}

/// Writes a response head. The status line always says HTTP/1.1 (RFC 9110 §6.2: our highest
/// version); `version` is the client's and decides how keep-alive is spelled. Adds the
/// Connection header itself, so a `Connection` in `headers` is dropped, as is any header
/// whose name or value could split the head (CR, LF, NUL...): values can come from upstream.
pub fn write_head(
    out: &mut Vec<u8>,
    version: Version,
    status: u16,
    headers: &[(&str, &str)],
    keep_alive: bool,
) {
    // A status outside the three-digit range would break the status line: a caller bug.
    let status = if (100..=599).contains(&status) {
        status
    } else {
        500
    };
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("connection") || !valid_header(name, value) {
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match (keep_alive, version) {
        (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, Version::Http10) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (true, Version::Http11) => {}
    }
    out.extend_from_slice(b"\r\n");
}

fn valid_header(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

/// A response head under construction, for callers that gather headers step by step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn new(status: u16) -> Self {
        ResponseHead {
            status,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Display) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn content_length(self, len: u64) -> Self {
        self.header("Content-Length", len)
    }

    pub fn write(&self, out: &mut Vec<u8>, version: Version, keep_alive: bool) {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        write_head(out, version, self.status, &headers, keep_alive);
    }
}

fn error_body(status: u16) -> String {
    format!("{status} {}\n", reason(status))
}

/// The head of `error_response` without its body: the answer to a HEAD request.
pub fn error_head(out: &mut Vec<u8>, version: Version, err_status: u16, keep_alive: bool) {
    let len = error_body(err_status).len().to_string();
    let mut headers = vec![
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", len.as_str()),
    ];
    if err_status == 405 {
        // RFC 9110 §15.5.6: a 405 must say what is allowed.
        headers.push(("Allow", "GET, HEAD"));
    }
    write_head(out, version, err_status, &headers, keep_alive);
}

/// A complete error response: head plus a one-line text body.
pub fn error_response(out: &mut Vec<u8>, version: Version, err_status: u16, keep_alive: bool) {
    error_head(out, version, err_status, keep_alive);
    out.extend_from_slice(error_body(err_status).as_bytes());
}

// ---------------------------------------------------------------------------------------
// HTTP dates
// ---------------------------------------------------------------------------------------

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const WEEKDAYS_LONG: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const SECS_PER_DAY: i64 = 86_400;

/// IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT". Times before 1970 are written as the
/// epoch and times past year 9999 as its last second: neither is a real file time.
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_DATE_SECS) as i64;
    let days = secs.div_euclid(SECS_PER_DAY);
    let in_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4 from Sunday).
    let weekday = WEEKDAYS[(days + 4).rem_euclid(7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[(month - 1) as usize],
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Days since 1970-01-01 -> (year, month 1..=12, day 1..=31), proleptic Gregorian.
/// Counting from 0000-03-01 puts the leap day last in each year, and 400-year eras repeat
/// exactly (146097 days), so each step is plain division.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    // Remove the leap days accumulated so far (every 4 years, except 100, except 400).
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months from March have lengths 31,30,31,30,31 repeating: 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Inverse of `civil_from_days`.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses the three date forms RFC 9110 §5.6.7 says a recipient must accept: IMF-fixdate
/// ("Sun, 06 Nov 1994 08:49:37 GMT"), RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime
/// ("Sun Nov  6 08:49:37 1994"). The weekday must be a weekday name but is not cross-checked.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let fields: Vec<&str> = s.split_ascii_whitespace().collect();
    let (year, month, day, time) = match fields.as_slice() {
        [wd, day, mon, year, time, "GMT"] => {
            let wd = wd.strip_suffix(',')?;
            WEEKDAYS.contains(&wd).then_some(())?;
            (fixed_digits(year, 4)?, month_number(mon)?, *day, *time)
        }
        [wd, date, time, "GMT"] => {
            let wd = wd.strip_suffix(',')?;
            WEEKDAYS_LONG.contains(&wd).then_some(())?;
            let mut parts = date.split('-');
            let (Some(day), Some(mon), Some(yy), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            // Two-digit years: RFC 9110 says pick the most recent past year; 70 is the
            // epoch, so 00-69 are 2000s.
            let yy = fixed_digits(yy, 2)?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            (year, month_number(mon)?, day, *time)
        }
        [wd, mon, day, time, year] => {
            WEEKDAYS.contains(wd).then_some(())?;
            (fixed_digits(year, 4)?, month_number(mon)?, *day, *time)
        }
        _ => return None,
    };
    let day = match day.len() {
        1 | 2 => fixed_digits(day, day.len())?,
        _ => return None,
    };
    let mut hms = time.split(':');
    let (Some(h), Some(m), Some(sec), None) = (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    let (h, m, sec) = (
        fixed_digits(h, 2)?,
        fixed_digits(m, 2)?,
        fixed_digits(sec, 2)?,
    );
    // Second 60 is a leap second, allowed by the grammar.
    if day < 1 || day > days_in_month(year, month) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * SECS_PER_DAY + h * 3600 + m * 60 + sec;
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

fn fixed_digits(s: &str, n: usize) -> Option<i64> {
    if s.len() != n || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn month_number(s: &str) -> Option<i64> {
    MONTHS.iter().position(|m| *m == s).map(|i| i as i64 + 1)
}

// ---------------------------------------------------------------------------------------
// flocon's own client: requests out, response heads and chunked bodies in
// ---------------------------------------------------------------------------------------

/// Writes an HTTP/1.1 request head. `path` should already be percent-encoded; bytes that
/// may not appear in a request target (space, controls, non-ASCII and the delimiters
/// RFC 3986 excludes) are encoded here so a stray one cannot split the request line. Headers that could split the head are
/// dropped, and so are bytes of `host_header` that could.
pub fn build_request(
    out: &mut Vec<u8>,
    method: Method,
    host_header: &str,
    path: &str,
    extra: &[(&str, &str)],
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    if !path.starts_with('/') {
        out.push(b'/');
    }
    for b in path.bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b) {
            out.push(b);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend(host_header.bytes().filter(|b| b.is_ascii_graphic()));
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseInfo {
    pub status: u16,
    pub content_length: Option<u64>,
    /// The body is chunked: feed it through `ChunkedDecoder`.
    pub chunked: bool,
    pub location: Option<String>,
    /// (first, last, complete length) of a satisfied `Content-Range`; None when absent,
    /// unparseable, or the unsatisfied form `bytes */len`.
    pub content_range: Option<(u64, u64, Option<u64>)>,
    /// The complete length named by an unsatisfied `Content-Range: bytes */len` (a 416).
    pub unsatisfied_length: Option<u64>,
    pub last_modified: Option<String>,
    /// From the version and Connection header only; see `framing` for bodies that end at
    /// close.
    pub keep_alive: bool,
    pub head_len: usize,
    /// X-Flocon-* headers, names lowercased so lookups need not care about case.
    pub headers_extra: Vec<(String, String)>,
}

/// How the body after a response head ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the server closes; the connection cannot be reused.
    UntilClose,
}

impl ResponseInfo {
    /// RFC 9112 §6.3, for a response to a request whose method we know.
    pub fn framing(&self, head_request: bool) -> BodyFraming {
        if head_request || self.status < 200 || self.status == 204 || self.status == 304 {
            BodyFraming::Empty
        } else if self.chunked {
            BodyFraming::Chunked
        } else if let Some(n) = self.content_length {
            BodyFraming::Length(n)
        } else {
            BodyFraming::UntilClose
        }
    }
}

/// Parses one response head from the start of `buf`; `Ok(None)` = incomplete (only while
/// `buf.len() < MAX_RESPONSE_HEAD`). A 1xx head is returned like any other: skip
/// `head_len` bytes and parse again.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseInfo>, HttpError> {
    let window = &buf[..buf.len().min(MAX_RESPONSE_HEAD)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(HttpError::ResponseTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::ResponseTooLarge),
        Err(_) => return Err(HttpError::BadResponse),
    };
    let status = resp.code.ok_or(HttpError::BadResponse)?;
    if !(100..=599).contains(&status) {
        return Err(HttpError::BadResponse);
    }
    let http11 = resp.version == Some(1);

    let mut info = ResponseInfo {
        status,
        content_length: None,
        chunked: false,
        location: None,
        content_range: None,
        unsatisfied_length: None,
        last_modified: None,
        keep_alive: false,
        head_len,
        headers_extra: Vec::new(),
    };
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep = false;
    for h in resp.headers.iter() {
        let name = h.name;
        let text = header_text(h.value);
        if name.eq_ignore_ascii_case("content-length") {
            // Several values (in one line or several) are fine only if all agree; else the
            // body length is ambiguous, the classic smuggling shape (RFC 9112 §6.3).
            for part in h.value.split(|&b| b == b',') {
                let n = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .and_then(parse_decimal)
                    .ok_or(HttpError::BadResponse)?;
                if info.content_length.is_some_and(|prev| prev != n) {
                    return Err(HttpError::BadResponse);
                }
                info.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only plain "chunked": any other coding would hand pacman bytes that are not
            // the file, so refuse rather than guess.
            for coding in h.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if coding.is_empty() {
                    continue;
                }
                if !coding.eq_ignore_ascii_case(b"chunked") || info.chunked {
                    return Err(HttpError::BadResponse);
                }
                info.chunked = true;
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let (c, k) = connection_tokens(h.value);
            close |= c;
            keep |= k;
        } else if name.eq_ignore_ascii_case("location") {
            if info.location.is_some() {
                return Err(HttpError::BadResponse);
            }
            info.location = Some(text.ok_or(HttpError::BadResponse)?.to_string());
        } else if name.eq_ignore_ascii_case("content-range") {
            info.content_range = text.and_then(parse_content_range);
            info.unsatisfied_length = text
                .and_then(|t| t.strip_prefix("bytes */"))
                .and_then(parse_decimal);
        } else if name.eq_ignore_ascii_case("last-modified") {
            info.last_modified = text.map(str::to_string);
        } else if strip_prefix_ignore_case(name, "x-flocon-").is_some()
            && let Some(v) = text
        {
            info.headers_extra
                .push((name.to_ascii_lowercase(), v.to_string()));
        }
    }
    if transfer_encoding && !info.chunked {
        return Err(HttpError::BadResponse);
    }
    info.keep_alive = if http11 { !close } else { keep && !close };
    if info.chunked && (info.content_length.is_some() || !http11) {
        // Chunked wins over Content-Length (RFC 9112 §6.3), but a sender mixing them, or
        // chunking in HTTP/1.0, is not trusted with a second message on this connection.
        info.content_length = None;
        info.keep_alive = false;
    }
    Ok(Some(info))
}

/// `bytes first-last/complete` or `bytes first-last/*`, with first <= last < complete.
fn parse_content_range(s: &str) -> Option<(u64, u64, Option<u64>)> {
    let (unit, rest) = s.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (span, complete) = rest.trim_start_matches(' ').split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (parse_decimal(first)?, parse_decimal(last)?);
    let complete = if complete == "*" {
        None
    } else {
        Some(parse_decimal(complete)?)
    };
    let ok = first <= last && complete.is_none_or(|c| last < c);
    ok.then_some((first, last, complete))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk-size.
    Size,
    /// Chunk extensions (ignored) up to the CR.
    Extension,
    /// CR of the size line seen, LF expected.
    SizeLf,
    /// Inside the chunk data.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
    /// A malformed body was seen; every later feed fails too.
    Failed,
}

/// Incremental `Transfer-Encoding: chunked` decoder. It keeps no input buffer, so any split
/// of the input gives the same output; strict CRLF framing, since a lenient decoder is how
/// two parsers come to disagree on where a message ends.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Size being read, then bytes left in the current chunk.
    remaining: u64,
    digits: usize,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns (bytes consumed, done).
    /// All of `input` is consumed unless the body ends inside it: bytes after the last
    /// trailer belong to the next response.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), HttpError> {
        let mut i = 0;
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Failed => return Err(HttpError::BadResponse),
                ChunkState::Data => {
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    i += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                _ => {
                    i += 1;
                    if let Err(e) = self.step(rest[0]) {
                        self.state = ChunkState::Failed;
                        return Err(e);
                    }
                }
            }
        }
        if self.state == ChunkState::Failed {
            return Err(HttpError::BadResponse);
        }
        Ok((i, self.state == ChunkState::Done))
    }

    /// One framing byte (anything but chunk data).
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let bad = Err(HttpError::BadResponse);
        match self.state {
            ChunkState::Size => {
                self.count_line_byte()?;
                if let Some(v) = hex_value(b) {
                    if self.remaining > u64::MAX >> 4 {
                        return bad;
                    }
                    self.remaining = self.remaining << 4 | u64::from(v);
                    self.digits += 1;
                } else if self.digits == 0 {
                    return bad;
                } else {
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        // Whitespace before ';' is allowed (BWS in RFC 9112 §7.1.1).
                        b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                        _ => return bad,
                    }
                }
            }
            ChunkState::Extension => {
                self.count_line_byte()?;
                match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return bad,
                }
            }
            ChunkState::SizeLf => {
                if b != b'\n' {
                    return bad;
                }
                self.line_len = 0;
                self.digits = 0;
                self.state = if self.remaining == 0 {
                    ChunkState::TrailerStart
                } else {
                    ChunkState::Data
                };
            }
            ChunkState::DataCr if b == b'\r' => self.state = ChunkState::DataLf,
            ChunkState::DataLf if b == b'\n' => self.state = ChunkState::Size,
            ChunkState::TrailerStart if b == b'\r' => self.state = ChunkState::EndLf,
            ChunkState::TrailerStart | ChunkState::Trailer => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return bad;
                }
                match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.state = ChunkState::Trailer,
                    _ => return bad,
                }
            }
            ChunkState::TrailerLf if b == b'\n' => self.state = ChunkState::TrailerStart,
            ChunkState::EndLf if b == b'\n' => self.state = ChunkState::Done,
            _ => return bad,
        }
        Ok(())
    }

    fn count_line_byte(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            Err(HttpError::BadResponse)
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::is_file_name;

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
    fn ranges() {
        use RangeOutcome::*;
        let p = |start, end| Partial { start, end };
        let cases: &[(Option<&str>, u64, RangeOutcome)] = &[
            (None, 10, Full),
            (Some("bytes=0-"), 10, p(0, 9)),
            (Some("bytes=0-0"), 10, p(0, 0)),
            (Some("bytes=2-5"), 10, p(2, 5)),
            (Some("bytes=9-"), 10, p(9, 9)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=11-"), 10, Unsatisfiable),
            (Some("bytes=10-20"), 10, Unsatisfiable),
            (Some("bytes=5-100"), 10, p(5, 9)),
            (Some("bytes=-3"), 10, p(7, 9)),
            (Some("bytes=-10"), 10, p(0, 9)),
            (Some("bytes=-11"), 10, p(0, 9)),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=5-2"), 10, Full),
            (Some("bytes=0-1,3-4"), 10, Full),
            (Some("bytes=0-1, 3-4"), 10, Full),
            (Some("bytes=0-1,"), 10, p(0, 1)),
            (Some("bytes= 0-1"), 10, p(0, 1)),
            (Some("bytes=0-1 "), 10, p(0, 1)),
            (Some("  bytes=0-1"), 10, p(0, 1)),
            (Some("bytes=0 - 1"), 10, Full),
            (Some("bytes =0-1"), 10, Full),
            (Some("BYTES=3-"), 10, p(3, 9)),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=a-b"), 10, Full),
            (Some("bytes=-"), 10, Full),
            (Some("bytes="), 10, Full),
            (Some("bytes"), 10, Full),
            (Some("bytes=1"), 10, Full),
            (Some("bytes=+1-2"), 10, Full),
            (Some("bytes=-1-2"), 10, Full),
            (Some("bytes=0x1-"), 10, Full),
            (Some("garbage"), 10, Full),
            (Some(""), 10, Full),
            (Some("bytes=99999999999999999999999-"), 10, Unsatisfiable),
            (Some("bytes=0-99999999999999999999999"), 10, p(0, 9)),
            (Some("bytes=-99999999999999999999999"), 10, p(0, 9)),
            (Some("bytes=18446744073709551615-"), u64::MAX, Unsatisfiable),
            (
                Some("bytes=18446744073709551614-"),
                u64::MAX,
                p(u64::MAX - 1, u64::MAX - 1),
            ),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=0-0"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=5-2"), 0, Full),
            (None, 0, Full),
        ];
        for (h, len, want) in cases {
            assert_eq!(resolve_range(*h, *len), *want, "{h:?} len {len}");
        }
        assert_eq!(content_range(7, 9, 10), "bytes 7-9/10");
        assert_eq!(content_range_unsatisfied(10), "bytes */10");
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
    fn classify_table() {
        use FileKind::*;
        let cases: &[(&str, FileKind)] = &[
            ("a-1-1-x86_64.pkg.tar.zst", Package),
            ("a-1-1-x86_64.pkg.tar.xz", Package),
            ("a-1-1-any.pkg.tar.gz", Package),
            ("a-1-1-any.pkg.tar.bz2", Package),
            ("a-1-1-any.pkg.tar.lz4", Package),
            ("a-1-1-any.pkg.tar.lrz", Package),
            ("a-1-1-any.pkg.tar.lzo", Package),
            ("a-1-1-any.pkg.tar.Z", Package),
            ("a-1-1-any.pkg.tar.lz", Package),
            ("a-1-1-any.pkg.tar", Package),
            ("a-1-1-any.pkg.tar.zst.sig", PackageSig),
            ("a-1-1-any.pkg.tar.sig", PackageSig),
            ("a.pkg.tar.rar", Other),
            ("a.pkg.tar.z", Other),
            ("a.pkg.tar.zst.gz", Other),
            ("a.pkg.tar.zst.sig.sig", Other),
            (".pkg.tar.zst", Other),
            ("pkg.tar.zst", Other),
            ("a.pkg.tar.", Other),
            ("a.pkg.tar.zst.part", Other),
            ("core.db", Database),
            ("core.files", Database),
            ("core.db.tar.gz", Database),
            ("core.files.tar.gz", Database),
            ("core.db.tar.zst", Database),
            ("core.db.tar", Database),
            ("core.db.sig", DatabaseSig),
            ("core.files.sig", DatabaseSig),
            ("core.db.tar.gz.sig", DatabaseSig),
            ("core.db.gz", Other),
            ("core.db.tar.rar", Other),
            (".db", Other),
            ("db", Other),
            ("core.db.old", Other),
            ("core.sig", Other),
            ("index.html", Other),
            ("", Other),
            (".sig", Other),
        ];
        for (name, kind) in cases {
            assert_eq!(classify(name), *kind, "{name:?}");
        }
    }

    #[test]
    fn dates() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(u64::MAX / 4)),
            "Fri, 31 Dec 9999 23:59:59 GMT"
        );
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(parse_http_date(form), Some(t), "{form}");
        }
        // Round trip over a spread of times, including leap days and century years.
        let mut s: u64 = 0;
        while s < MAX_DATE_SECS {
            let t = UNIX_EPOCH + Duration::from_secs(s);
            assert_eq!(parse_http_date(&http_date(t)), Some(t), "{s}");
            s += 86_400 * 97 + 3_607;
        }
        for s in [
            951_782_399,
            951_782_400,
            4_107_542_400,
            4_107_542_399,
            MAX_DATE_SECS,
        ] {
            let t = UNIX_EPOCH + Duration::from_secs(s);
            assert_eq!(parse_http_date(&http_date(t)), Some(t), "{s}");
        }
        // Days are checked against the calendar; the epoch days agree in both directions.
        for d in -800_000..800_000i64 {
            let (y, m, day) = civil_from_days(d);
            assert!((1..=days_in_month(y, m)).contains(&day));
            assert_eq!(days_from_civil(y, m, day), d);
        }
        assert_eq!(
            parse_http_date("Thu, 01 Jan 1960 00:00:00 GMT"),
            UNIX_EPOCH.checked_sub(Duration::from_secs(315_619_200))
        );
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37",
            "Xyz, 06 Nov 1994 08:49:37 GMT",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Sun, 31 Nov 1994 08:49:37 GMT",
            "Sun, 29 Feb 1900 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 006 Nov 1994 08:49:37 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-1994 08:49:37 GMT",
            "Sun, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
        assert!(parse_http_date("Sat, 29 Feb 2020 00:00:00 GMT").is_some());
    }

    #[test]
    fn heads_written() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            Version::Http11,
            206,
            &[
                ("Content-Length", "3"),
                ("Content-Range", "bytes 7-9/10"),
                ("Connection", "upgrade"),
                ("X-Evil", "a\r\nSet-Cookie: x"),
                ("Bad Name", "x"),
            ],
            true,
        );
        assert_eq!(
            out,
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nContent-Range: bytes 7-9/10\r\n\r\n"
        );
        out.clear();
        write_head(&mut out, Version::Http10, 200, &[], true);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n");
        out.clear();
        write_head(&mut out, Version::Http10, 200, &[], false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        out.clear();
        write_head(&mut out, Version::Http11, 7, &[], false);
        assert!(out.starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));

        out.clear();
        ResponseHead::new(307)
            .header("Location", "https://mirror/x")
            .content_length(0)
            .write(&mut out, Version::Http11, true);
        assert_eq!(
            out,
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://mirror/x\r\nContent-Length: 0\r\n\r\n"
        );

        out.clear();
        error_response(&mut out, Version::Http11, 405, false);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert_eq!(body, "405 Method Not Allowed\n");
        let mut only_head = Vec::new();
        error_head(&mut only_head, Version::Http11, 405, false);
        assert_eq!(only_head, format!("{head}\r\n\r\n").into_bytes());

        // What we write, our own parser reads back.
        out.clear();
        error_response(&mut out, Version::Http11, 404, true);
        let info = parse_response(&out).unwrap().unwrap();
        assert_eq!(info.status, 404);
        assert!(info.keep_alive);
        assert_eq!(
            info.content_length,
            Some((out.len() - info.head_len) as u64)
        );
    }

    #[test]
    fn requests_built() {
        let mut out = Vec::new();
        build_request(
            &mut out,
            Method::Get,
            "mirror.example:8080",
            "/core/os/x86_64/a b\r\n.pkg.tar.zst",
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
                "GET /core/os/x86_64/a%20b%0D%0A.pkg.tar.zst HTTP/1.1\r\nHost: mirror.example:8080\r\n{ua}Accept-Encoding: identity\r\nRange: bytes=5-\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
            )
        );
        // Our request parser reads it back.
        let r = parse_request(&out).unwrap().unwrap();
        assert_eq!(r.range.as_deref(), Some("bytes=5-"));
        assert_eq!(r.head_len, out.len());
        out.clear();
        build_request(&mut out, Method::Head, "h\r\nX: y", "x", &[]);
        assert!(out.starts_with(b"HEAD /x HTTP/1.1\r\nHost: hX:y\r\n"));
    }

    #[test]
    fn response_every_split() {
        let raw: &[u8] = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nContent-Range: bytes 7-9/10\r\nLast-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nX-Flocon-Sha256: abcd\r\nx-flocon-size: 10\r\nServer: x\r\n\r\nbody";
        let head_len = raw.len() - 4;
        let want = ResponseInfo {
            status: 206,
            content_length: Some(3),
            chunked: false,
            location: None,
            content_range: Some((7, 9, Some(10))),
            unsatisfied_length: None,
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".to_string()),
            keep_alive: true,
            head_len,
            headers_extra: vec![
                ("x-flocon-sha256".to_string(), "abcd".to_string()),
                ("x-flocon-size".to_string(), "10".to_string()),
            ],
        };
        for k in 0..head_len {
            assert_eq!(parse_response(&raw[..k]), Ok(None), "prefix {k}");
        }
        for k in head_len..=raw.len() {
            assert_eq!(parse_response(&raw[..k]), Ok(Some(want.clone())));
        }
        assert_eq!(want.framing(false), BodyFraming::Length(3));
        assert_eq!(want.framing(true), BodyFraming::Empty);
    }

    #[test]
    fn response_fields() {
        let p = |raw: &str| parse_response(raw.as_bytes());
        let r = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.chunked && r.keep_alive);
        assert_eq!(r.framing(false), BodyFraming::Chunked);
        let r = p("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.chunked && !r.keep_alive && r.content_length.is_none());
        let r = p("HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        assert_eq!(r.framing(false), BodyFraming::UntilClose);
        let r = p("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let r = p("HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!r.keep_alive);
        assert_eq!(r.framing(false), BodyFraming::Empty);
        let r = p("HTTP/1.1 301 Moved\r\nLocation: http://b/x\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.location.as_deref(), Some("http://b/x"));
        assert_eq!(r.content_length, Some(5));
        let r = p("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */10\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.content_range, None);
        let r = p("HTTP/1.1 206 x\r\nContent-Range: bytes 0-4/*\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.content_range, Some((0, 4, None)));
        for cr in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
        ] {
            let r = p(&format!("HTTP/1.1 206 x\r\nContent-Range: {cr}\r\n\r\n"))
                .unwrap()
                .unwrap();
            assert_eq!(r.content_range, None, "{cr}");
        }
        let r = p("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.head_len), (100, 25));
        assert_eq!(r.framing(false), BodyFraming::Empty);
        let r = p("HTTP/1.1 200\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.status, 200);

        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
            "HTTP/1.1 302 x\r\nLocation: a\r\nLocation: b\r\n\r\n",
            "HTTP/1.1 099 x\r\n\r\n",
            "HTTP/1.1 600 x\r\n\r\n",
            "HTTP/2 200\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert_eq!(p(bad), Err(HttpError::BadResponse), "{bad:?}");
        }
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_RESPONSE_HEAD, b'a');
        assert_eq!(parse_response(&big), Err(HttpError::ResponseTooLarge));
        assert_eq!(parse_response(&big[..MAX_RESPONSE_HEAD - 1]), Ok(None));
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_RESPONSE_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_response(&many), Err(HttpError::ResponseTooLarge));
        assert_eq!(HttpError::BadResponse.status(), 502);
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let (n, done) = d.feed(input, &mut out)?;
        Ok((out, n, done))
    }

    #[test]
    fn chunked_every_split() {
        let body: &[u8] = b"1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n6 ; x\r\n\r\n\r\n\r\n\r\n0000A\r\n0123456789\r\n0\r\nExpires: never\r\nX: y\r\n\r\nHTTP/1.1 200 OK";
        let end = body.len() - b"HTTP/1.1 200 OK".len();
        let want: &[u8] = b"abcdefghijklmnopqrstuvwxyz\r\n\r\n\r\n0123456789";
        assert_eq!(decode_all(body), Ok((want.to_vec(), end, true)));
        for split in 0..=body.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let (n1, done1) = d.feed(&body[..split], &mut out).unwrap();
            if split <= end {
                assert_eq!((n1, done1), (split, split == end && split > 0));
            }
            let (n2, done2) = d.feed(&body[n1..], &mut out).unwrap();
            assert!(done2, "split {split}");
            assert_eq!(n1 + n2, end);
            assert_eq!(out, want, "split {split}");
            assert!(d.is_done());
        }
        // Byte by byte.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for b in &body[..end] {
            used += d.feed(std::slice::from_ref(b), &mut out).unwrap().0;
        }
        assert_eq!((out.as_slice(), used, d.is_done()), (want, end, true));
        assert_eq!(d.feed(b"more", &mut out), Ok((0, true)));
        assert_eq!(decode_all(b"0\r\n\r\n"), Ok((Vec::new(), 5, true)));
    }

    #[test]
    fn chunked_malformed() {
        let huge_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        let huge_trailer = format!("0\r\nX: {}\r\n\r\n", "y".repeat(MAX_TRAILERS));
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"g\r\n",
            b";ext\r\n",
            b" 1\r\na\r\n",
            b"-1\r\n",
            b"1\na\r\n0\r\n\r\n",
            b"1\r\nab\r\n",
            b"1\r\na\n0\r\n\r\n",
            b"1\r\naX\r\n",
            b"1x\r\n",
            b"1;a\x00b\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\n\n",
            b"0\r\nX\x01\r\n\r\n",
            b"10000000000000000\r\n",
            b"ffffffffffffffff0\r\n",
            huge_ext.as_bytes(),
            huge_trailer.as_bytes(),
        ];
        for input in bad {
            assert_eq!(
                decode_all(input),
                Err(HttpError::BadResponse),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Largest size is accepted (and then simply waits for data).
        let (out, n, done) = decode_all(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!((out.as_slice(), n, done), (&b"abc"[..], 21, false));
        // Once failed, stays failed.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(d.feed(b"zz", &mut out).is_err());
        assert!(d.feed(b"0\r\n\r\n", &mut out).is_err());
        assert!(d.feed(b"", &mut out).is_err());
        // Empty input is a no-op.
        assert_eq!(ChunkedDecoder::new().feed(b"", &mut out), Ok((0, false)));
    }

    use crate::xorshift::XorShift as Rng;

    /// Valid messages to mutate: random bytes alone almost never get past a request line.
    const SEEDS: &[&[u8]] = &[
        b"GET /core/os/x86_64/a-1-1-x86_64.pkg.tar.zst HTTP/1.1\r\nHost: h\r\nRange: bytes=5-\r\n\r\n",
        b"HEAD /a-1:2-1-any.pkg.tar.xz.sig?q HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /extra/os/aarch64/extra.db HTTP/1.1\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n",
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nContent-Range: bytes 7-9/10\r\nX-Flocon-Size: 10\r\n\r\nabc",
        b"HTTP/1.0 301 Moved\r\nLocation: http://m/x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1a;e=v\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\nabc\r\n0\r\nT: x\r\n\r\n",
    ];
    /// Pieces spliced into the seeds to reach the edge cases.
    const PIECES: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b": ",
        b",",
        b";",
        b"-",
        b"0",
        b"ff",
        b"%2e",
        b"%2f",
        b"%00",
        b"..",
        b"/",
        b" ",
        b"\t",
        b"\0",
        b"\xff",
        b"\xef\xbc\x8e",
        b"Content-Length: 1\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Range: bytes=-0\r\n",
        b"Host: y\r\n",
        b"Connection: close\r\n",
        b"99999999999999999999",
        b".part",
        b"bytes=0-1,2-3",
    ];

    #[test]
    fn mini_fuzz() {
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        let mut reached = [0usize; 4];
        for _ in 0..8000 {
            let mut input = SEEDS[rng.below(SEEDS.len())].to_vec();
            for _ in 0..rng.below(4) {
                let at = rng.below(input.len() + 1);
                match rng.below(4) {
                    0 if at < input.len() => input[at] = rng.next() as u8,
                    1 => {
                        let piece = PIECES[rng.below(PIECES.len())];
                        input.splice(at..at, piece.iter().copied());
                    }
                    2 => {
                        let end = (at + rng.below(8)).min(input.len());
                        input.drain(at..end);
                    }
                    _ => input.truncate(at),
                }
            }
            if let Ok(Some(r)) = parse_request(&input) {
                reached[0] += 1;
                assert!(r.head_len <= input.len().min(MAX_HEAD));
                let _ = peer_file_name(&r.target);
                if let Ok((a, b, c)) = front_path(&r.target) {
                    assert!(
                        is_file_name(a.as_bytes())
                            && is_file_name(b.as_bytes())
                            && is_file_name(c.as_bytes())
                    );
                }
                if let RangeOutcome::Partial { start, end } =
                    resolve_range(r.range.as_deref(), 1000)
                {
                    assert!(start <= end && end < 1000);
                }
            }
            if let Ok(Some(r)) = parse_response(&input) {
                reached[1] += 1;
                assert!(r.head_len <= input.len());
            }
            let mut d = ChunkedDecoder::new();
            out.clear();
            let split = rng.below(input.len() + 1);
            let first = d.feed(&input[..split], &mut out);
            let mut whole = Vec::new();
            let all = ChunkedDecoder::new().feed(&input, &mut whole);
            reached[2] += usize::from(matches!(all, Ok((_, true))));
            reached[3] += usize::from(all.is_err());
            if let Ok((n, false)) = first {
                assert_eq!(n, split);
                if let Ok((n2, _)) = d.feed(&input[split..], &mut out) {
                    assert_eq!(Ok((n + n2, d.is_done())), all);
                    assert_eq!(out, whole);
                }
            }
            let text = String::from_utf8_lossy(&input);
            if let RangeOutcome::Partial { start, end } = resolve_range(Some(&text), 77) {
                assert!(start <= end && end < 77);
            }
            if let Ok(name) = peer_file_name(&text) {
                assert!(is_file_name(name.as_bytes()));
            }
            let _ = percent_decode(&text);
            let _ = parse_http_date(&text);
            let _ = classify(&text);
        }
        // The mutations must keep reaching the deep paths, or this test proves nothing.
        assert!(reached.iter().all(|&n| n > 300), "{reached:?}");
    }
}
