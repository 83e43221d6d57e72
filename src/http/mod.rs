//! HTTP/1.x without sockets, one file per concern: `request` (request heads, parsed for the
//! peer server and the front and built for flocon's own client, and request targets decoded
//! into checked file names), `response` (response heads, written by both servers and parsed by
//! the client), `chunked` (the client's chunked-body decoder), `range` (single-range math)
//! and `date` (the one HTTP date we write). This file owns what they share: the typed
//! `HttpError` that maps to a status code, `Method`, `Version`, and the header-value helpers.
//! Everything is a pure function of its input and never panics on network bytes. What a file
//! name may be, and which kind of file it is, is `names.rs`.

use std::fmt::Display;

pub(crate) mod chunked;
pub(crate) mod date;
pub(crate) mod range;
pub(crate) mod request;
pub(crate) mod response;

pub(crate) use chunked::ChunkedDecoder;
pub(crate) use date::http_date;
pub(crate) use range::{RangeOutcome, content_range, content_range_unsatisfied, resolve_range};
pub(crate) use request::{
    MAX_HEAD, Request, build_request, front_path, parse_request, peer_file_name,
};
pub(crate) use response::{
    BodyFraming, MAX_RESPONSE_HEAD, ResponseInfo, error_head, error_response, parse_response,
    write_head,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Method {
    Get,
    Head,
}

impl Method {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Version {
    Http10,
    Http11,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HttpError {
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
    pub(crate) fn status(self) -> u16 {
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

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn valid_header(name: &str, value: &str) -> bool {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    !name.is_empty()
        && name.bytes().all(token)
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

#[cfg(test)]
mod tests {
    //! The mini-fuzz: mutated messages through every parser of the submodules at once.
    use super::request::percent_decode;
    use super::*;
    use crate::names::{classify, is_file_name};

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
            let _ = classify(&text);
        }
        // The mutations must keep reaching the deep paths, or this test proves nothing.
        assert!(reached.iter().all(|&n| n > 300), "{reached:?}");
    }
}
