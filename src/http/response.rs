//! Response heads: `write_head` and the error answers for the peer server and the front
//! (status line, headers that cannot split the head, keep-alive spelled for the client's
//! version), and `parse_response` for flocon's own client (framing of the body, the
//! `Content-Range` it claims, redirects' `Location`, `X-Flocon-*` headers).

use super::{
    HttpError, Version, connection_tokens, header_text, parse_decimal, strip_prefix_ignore_case,
    valid_header,
};
use std::io::Write as _;

/// Response head bound for flocon's own client. Mirrors behind CDNs send long heads (cookies,
/// security policies), so twice the request bound; still small per outbound fetch.
pub(crate) const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Response header array size: CDN-fronted mirrors send 20-40 header lines.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 64;

pub(crate) fn reason(status: u16) -> &'static str {
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
pub(crate) fn write_head(
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

fn error_body(status: u16) -> String {
    format!("{status} {}\n", reason(status))
}

/// The head of `error_response` without its body: the answer to a HEAD request.
pub(crate) fn error_head(out: &mut Vec<u8>, version: Version, err_status: u16, keep_alive: bool) {
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
pub(crate) fn error_response(
    out: &mut Vec<u8>,
    version: Version,
    err_status: u16,
    keep_alive: bool,
) {
    error_head(out, version, err_status, keep_alive);
    out.extend_from_slice(error_body(err_status).as_bytes());
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseInfo {
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
pub(crate) enum BodyFraming {
    /// No body at all (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the server closes; the connection cannot be reused.
    UntilClose,
}

impl ResponseInfo {
    /// RFC 9112 §6.3, for a response to a request whose method we know.
    pub(crate) fn framing(&self, head_request: bool) -> BodyFraming {
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
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<ResponseInfo>, HttpError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        write_head(
            &mut out,
            Version::Http11,
            307,
            &[("Location", "https://mirror/x"), ("Content-Length", "0")],
            true,
        );
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
}
