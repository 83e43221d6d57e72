//! The one URL type: `HttpUrl`, an `http://` URL (fetched by flocon's own client) or an
//! `https://` one (recognised so the front can send pacman there with a 307), parsed once and
//! refused when hostile: userinfo, a bad port, control bytes, over-long. It gives the `Host`
//! header, joins a redirect's `Location`, appends a checked file name as one path segment, and
//! says whether it names the loopback. Percent-encoding happens here and only here: a path
//! keeps its escapes as sent and encodes only the bytes a request target cannot carry;
//! `encode_segment` encodes a decoded name exactly once. Pure; see docs/DESIGN.md, "Upstreams".

use crate::names;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Longest URL accepted. Its request line still fits in the 8 KiB head servers accept by
/// default (nginx, Apache) with the other headers; mirror URLs are under 100 bytes and a CDN's
/// signed redirect a few hundred.
pub(crate) const MAX_URL: usize = 4096;
/// Longest host name DNS can carry (RFC 1035 §2.3.4, without the trailing dot).
const MAX_HOST: usize = 253;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// The scheme `url` starts with (case-insensitive `http://` or `https://`), if flocon can
    /// use it at all.
    pub(crate) fn of(url: &str) -> Option<Scheme> {
        let has = |prefix: &str| {
            url.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        if has("http://") {
            Some(Scheme::Http)
        } else if has("https://") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a string is not a URL flocon uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UrlError {
    /// Longer than `MAX_URL`.
    TooLong,
    /// A control byte or a space: it could split a request line or a header.
    ControlByte,
    /// Not `http://` or `https://` (ftp://, file://, a relative reference without a base).
    Scheme,
    /// `user:password@`: sent to nobody, and it hides the real host from a reader.
    Userinfo,
    /// Empty, not a DNS name or an IP literal, or too long.
    Host,
    /// Not 1..=65535 in at most five digits.
    Port,
    /// A file name `names::is_file_name` refuses.
    Name,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::TooLong => "URL too long",
            UrlError::ControlByte => "control byte or space in URL",
            UrlError::Scheme => "not an http:// or https:// URL",
            UrlError::Userinfo => "user name or password in URL",
            UrlError::Host => "bad host",
            UrlError::Port => "bad port",
            UrlError::Name => "not a file name",
        })
    }
}

impl std::error::Error for UrlError {}

/// An `http://` or `https://` URL, valid by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    scheme: Scheme,
    /// Lowercased; an IPv6 literal keeps its brackets (`[::1]`), as `Host` and the resolver
    /// expect.
    host: String,
    port: u16,
    /// The request target: starts with `/`, query kept, fragment dropped; only bytes a target
    /// may carry as themselves (the rest percent-encoded once, `%` never re-encoded).
    path: String,
}

impl HttpUrl {
    /// Parses an absolute `http://` or `https://` URL. Scheme and host are case-insensitive
    /// (the host is lowercased), an empty port is the default, an empty path is `/`, the
    /// fragment is dropped.
    pub(crate) fn parse(s: &str) -> Result<HttpUrl, UrlError> {
        parse(s, false)
    }

    /// Like `parse`, but a `user:password@` is dropped instead of refused: for reading the
    /// URLs pacman itself uses (curl sends the userinfo), never for one flocon fetches.
    pub(crate) fn parse_dropping_userinfo(s: &str) -> Result<HttpUrl, UrlError> {
        parse(s, true)
    }

    /// `http://<addr>/`: a LAN peer, which has an address and no name. An IPv6 scope id is
    /// not part of a Host header; the socket address carries it.
    pub(crate) fn peer(addr: SocketAddr) -> HttpUrl {
        let host = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        HttpUrl {
            scheme: Scheme::Http,
            host,
            port: addr.port(),
            path: "/".to_string(),
        }
    }

    pub(crate) fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host as the resolver takes it (an IPv6 literal in brackets).
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// The request target (path and query), ready for the request line.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// The `Host` header: the port only when it is not the scheme's default (RFC 9110 §7.2).
    pub(crate) fn host_header(&self) -> String {
        if self.port == self.scheme.default_port() {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the host is this machine: `localhost` or a loopback address.
    pub(crate) fn is_loopback(&self) -> bool {
        let literal = self.host.trim_start_matches('[').trim_end_matches(']');
        self.host == "localhost"
            || self.host == "localhost."
            || literal.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// This URL with `name` appended as one path segment, encoded once (`encode_segment`).
    /// The name must pass `names::is_file_name`: it was decoded once from pacman's request and
    /// checked, and the mirror decodes it back to exactly that.
    pub(crate) fn join_file(&self, name: &str) -> Result<HttpUrl, UrlError> {
        if !names::is_file_name(name.as_bytes()) {
            return Err(UrlError::Name);
        }
        let path = format!(
            "{}/{}",
            self.path.trim_end_matches('/'),
            encode_segment(name)
        );
        self.with_path(path)
    }

    /// A redirect's `Location` resolved against this URL (RFC 3986 §5.2): an absolute
    /// `http(s)://` URL, a network-path (`//host/x`), an absolute path, a query, or a relative
    /// path, dot segments removed. Another scheme (`ftp://...`) is refused; a colon in a first
    /// segment without `//` after it (`a-1:2-1.pkg.tar.zst`) is read as a path, since mirrors
    /// name files with epochs.
    pub(crate) fn join(&self, location: &str) -> Result<HttpUrl, UrlError> {
        check_bytes(location)?;
        let location = location.split_once('#').map_or(location, |(l, _)| l);
        if let Some((scheme, _)) = location.split_once("://")
            && is_scheme(scheme)
        {
            return match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" => HttpUrl::parse(location),
                _ => Err(UrlError::Scheme),
            };
        }
        if location.starts_with("//") {
            return HttpUrl::parse(&format!("{}:{location}", self.scheme.as_str()));
        }
        let (base_path, _) = split_query(&self.path);
        let path = match location {
            "" => self.path.clone(),
            q if q.starts_with('?') => format!("{base_path}{q}"),
            _ => {
                let (loc_path, query) = split_query(location);
                let merged = if loc_path.starts_with('/') {
                    loc_path.to_string()
                } else {
                    let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
                    format!("{dir}{loc_path}")
                };
                format!("{}{query}", remove_dot_segments(&merged))
            }
        };
        self.with_path(path)
    }

    /// The same origin with another path, checked like a parsed one.
    fn with_path(&self, path: String) -> Result<HttpUrl, UrlError> {
        HttpUrl {
            scheme: self.scheme,
            host: self.host.clone(),
            port: self.port,
            path: normalize_path(&path),
        }
        .within_bound()
    }

    /// The length bound applies to the URL as written, after escaping: `é` takes six bytes.
    fn within_bound(self) -> Result<HttpUrl, UrlError> {
        if self.to_string().len() > MAX_URL {
            Err(UrlError::TooLong)
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            self.path
        )
    }
}

fn parse(s: &str, drop_userinfo: bool) -> Result<HttpUrl, UrlError> {
    check_bytes(s)?;
    let scheme = Scheme::of(s).ok_or(UrlError::Scheme)?;
    let rest = &s[scheme.as_str().len() + "://".len()..];
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (mut authority, path) = rest.split_at(end);
    if let Some((_, host_port)) = authority.rsplit_once('@') {
        if !drop_userinfo {
            return Err(UrlError::Userinfo);
        }
        authority = host_port;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or(UrlError::Host)?;
        addr.parse::<Ipv6Addr>().map_err(|_| UrlError::Host)?;
        (format!("[{}]", addr.to_ascii_lowercase()), after)
    } else {
        let (h, p) = authority.split_at(authority.find(':').unwrap_or(authority.len()));
        let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
        if h.is_empty() || h.len() > MAX_HOST + 1 || !h.bytes().all(ok) {
            return Err(UrlError::Host);
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => scheme.default_port(),
        None => return Err(UrlError::Host),
        Some("") => scheme.default_port(),
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or(UrlError::Port)?,
        Some(_) => return Err(UrlError::Port),
    };
    HttpUrl {
        scheme,
        host,
        port,
        path: normalize_path(path),
    }
    .within_bound()
}

/// Length and control bytes, checked before anything else reads the string.
fn check_bytes(s: &str) -> Result<(), UrlError> {
    if s.len() > MAX_URL {
        Err(UrlError::TooLong)
    } else if s.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        Err(UrlError::ControlByte)
    } else {
        Ok(())
    }
}

/// RFC 3986 `scheme`: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
}

/// (path, `?query` or "").
fn split_query(path: &str) -> (&str, &str) {
    path.find('?').map_or((path, ""), |i| path.split_at(i))
}

/// A path as a request target: a leading `/`, and every byte a target may not carry as itself
/// (non-ASCII and the delimiters RFC 3986 excludes) percent-encoded. `%` stays: the path's
/// escapes are the sender's, and encoding them again would change the name.
fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for &b in path.as_bytes() {
        if b.is_ascii_graphic() && !b"\"<>\\^`{|}#".contains(&b) {
            out.push(b as char);
        } else {
            push_escape(&mut out, b);
        }
    }
    out
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the one before (never
/// above the root).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                // "/a/." and "/a/.." name a directory: keep the trailing slash
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// A decoded name or path component as one path segment: every byte that is not allowed as
/// itself in a segment (RFC 3986 `pchar`) percent-encoded, `%` included, so the server decodes
/// exactly the name flocon checked (decoded once by the front, encoded once here).
pub(crate) fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            push_escape(&mut out, b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xorshift::XorShift;

    fn url(s: &str) -> HttpUrl {
        HttpUrl::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn urls_parsed() {
        use Scheme::*;
        let table: &[(&str, Scheme, &str, u16, &str, &str)] = &[
            // input, scheme, host, port, path, Host header
            (
                "HTTP://Mirror.Example.ORG:8080/a?b=c#frag",
                Http,
                "mirror.example.org",
                8080,
                "/a?b=c",
                "mirror.example.org:8080",
            ),
            ("http://host", Http, "host", 80, "/", "host"),
            ("http://host:", Http, "host", 80, "/", "host"),
            ("http://host:80/x", Http, "host", 80, "/x", "host"),
            ("http://host?q", Http, "host", 80, "/?q", "host"),
            ("http://host#f", Http, "host", 80, "/", "host"),
            (
                "http://10.0.0.1:19432/f.pkg.tar.zst",
                Http,
                "10.0.0.1",
                19432,
                "/f.pkg.tar.zst",
                "10.0.0.1:19432",
            ),
            ("http://[::1]/x", Http, "[::1]", 80, "/x", "[::1]"),
            (
                "http://[FE80::1]:81/x",
                Http,
                "[fe80::1]",
                81,
                "/x",
                "[fe80::1]:81",
            ),
            (
                "https://m.example/x",
                Https,
                "m.example",
                443,
                "/x",
                "m.example",
            ),
            (
                "HTTPS://M.example:443/x",
                Https,
                "m.example",
                443,
                "/x",
                "m.example",
            ),
            ("https://m:80/", Https, "m", 80, "/", "m:80"),
            ("http://m:443/", Http, "m", 443, "/", "m:443"),
            ("http://m:65535/", Http, "m", 65535, "/", "m:65535"),
            ("http://m:00080/", Http, "m", 80, "/", "m"),
            (
                "http://under_score.example/",
                Http,
                "under_score.example",
                80,
                "/",
                "under_score.example",
            ),
            // escapes kept as sent, bytes a target cannot carry encoded once
            ("http://m/a%2Fb%25", Http, "m", 80, "/a%2Fb%25", "m"),
            (
                "http://m/é<>\"\\^`{|}",
                Http,
                "m",
                80,
                "/%C3%A9%3C%3E%22%5C%5E%60%7B%7C%7D",
                "m",
            ),
            (
                "http://m/$repo/os/$arch",
                Http,
                "m",
                80,
                "/$repo/os/$arch",
                "m",
            ),
        ];
        for &(input, scheme, host, port, path, host_header) in table {
            let u = url(input);
            assert_eq!(
                (
                    u.scheme(),
                    u.host(),
                    u.port(),
                    u.path(),
                    u.host_header().as_str()
                ),
                (scheme, host, port, path, host_header),
                "{input}"
            );
            // what it prints, it parses back to itself
            assert_eq!(url(&u.to_string()), u, "{input}");
        }
        assert_eq!(
            url("HTTPS://M.example:443/x?y").to_string(),
            "https://m.example/x?y"
        );
        for (s, want) in [
            ("http://x", Some(Http)),
            ("HtTpS://x", Some(Https)),
            ("https:/x", None),
            ("ftp://x", None),
            ("http", None),
            ("é://", None),
        ] {
            assert_eq!(Scheme::of(s), want, "{s}");
        }
    }

    #[test]
    fn hostile_urls_refused() {
        use UrlError::*;
        let long_host = format!("http://{}/", "a".repeat(MAX_HOST + 2));
        let long_path = format!("http://m/{}", "a".repeat(MAX_URL));
        let table: &[(&str, UrlError)] = &[
            ("", Scheme),
            ("htt", Scheme),
            ("ftp://host/", Scheme),
            ("file:///etc/passwd", Scheme),
            ("http:/host/", Scheme),
            ("http:host", Scheme),
            ("//host/x", Scheme),
            ("/core/os/x86_64", Scheme),
            ("httpx://host/", Scheme),
            ("http://user:pw@host/", Userinfo),
            ("http://@host/", Userinfo),
            ("http://a@b@host/", Userinfo),
            ("http://127.0.0.1@evil.example/", Userinfo),
            ("http://", Host),
            ("http:///x", Host),
            ("http://:80/x", Host),
            ("http://[::1/", Host),
            ("http://[not-v6]/", Host),
            ("http://[::1]x/", Host),
            ("http://[fe80::1%25eth0]/", Host),
            ("http://[127.0.0.1]/", Host),
            ("http://h%41st/", Host),
            ("http://evil\\@good/", Userinfo),
            ("http://evil\\good/", Host),
            ("http://ехample.com/", Host),
            ("http://a.b!c/", Host),
            (long_host.as_str(), Host),
            ("http://host:0/", Port),
            ("http://host:65536/", Port),
            ("http://host:+80/", Port),
            ("http://host:-1/", Port),
            ("http://host:8o/", Port),
            ("http://host:123456/", Port),
            ("http://host:0x50/", Port),
            ("http://host:80:80/", Port),
            ("http://[::1]:x/", Port),
            ("http://ho st/", ControlByte),
            ("http://host/a b", ControlByte),
            ("http://host/a\r\nX: y", ControlByte),
            ("http://h\r\nX: y/", ControlByte),
            ("http://host/a\tb", ControlByte),
            ("http://host/\0", ControlByte),
            ("http://host/a\x7f", ControlByte),
            ("http://host/#a b", ControlByte),
            (" http://host/", ControlByte),
            (long_path.as_str(), TooLong),
        ];
        for (input, want) in table {
            assert_eq!(HttpUrl::parse(input), Err(*want), "{input:?}");
        }
        // the longest accepted, and the bound counts escapes as written
        let longest = format!("http://m/{}", "a".repeat(MAX_URL - 9));
        assert_eq!(url(&longest).path().len(), MAX_URL - 8);
        let escaped = format!("http://m/{}é", "a".repeat(MAX_URL - 14));
        assert_eq!(escaped.len(), MAX_URL - 3);
        assert_eq!(HttpUrl::parse(&escaped), Err(TooLong));
    }

    #[test]
    fn userinfo_dropped_only_when_asked() {
        let u = HttpUrl::parse_dropping_userinfo("HTTP://user:pw@LocalHost:19433/x").unwrap();
        assert_eq!((u.host(), u.port(), u.path()), ("localhost", 19433, "/x"));
        assert_eq!(
            HttpUrl::parse_dropping_userinfo("http://a@b@[::1]/").map(|u| u.host().to_string()),
            Ok("[::1]".to_string())
        );
        assert_eq!(
            HttpUrl::parse_dropping_userinfo("http://user@/"),
            Err(UrlError::Host)
        );
    }

    #[test]
    fn loopback() {
        for yes in [
            "http://localhost/",
            "http://LOCALHOST:19433",
            "http://localhost.:1/",
            "http://127.0.0.1/",
            "http://127.1.2.3/",
            "https://[::1]/",
            "http://[0:0:0:0:0:0:0:1]/",
        ] {
            assert!(url(yes).is_loopback(), "{yes}");
        }
        for no in [
            "http://example.com/",
            "http://localhost.example/",
            "http://10.0.0.1/",
            "http://[::2]/",
            "http://[::ffff:10.0.0.1]/",
            "http://0.0.0.0/",
            "http://128.0.0.1/",
        ] {
            assert!(!url(no).is_loopback(), "{no}");
        }
    }

    #[test]
    fn redirects_joined() {
        let base = url("http://m.example:8080/core/os/x86_64/a.pkg.tar.zst?t=1");
        let table: &[(&str, &str)] = &[
            ("http://other/x", "http://other/x"),
            ("HTTPS://Other.example/x", "https://other.example/x"),
            ("https://other:443/x#f", "https://other/x"),
            ("//cdn.example/p", "http://cdn.example/p"),
            ("/abs/x", "http://m.example:8080/abs/x"),
            ("/abs/x?q=1", "http://m.example:8080/abs/x?q=1"),
            ("b.pkg", "http://m.example:8080/core/os/x86_64/b.pkg"),
            ("../../y", "http://m.example:8080/core/y"),
            ("../../../../../../y", "http://m.example:8080/y"),
            ("./x/./y/../z", "http://m.example:8080/core/os/x86_64/x/z"),
            ("/a/b/..", "http://m.example:8080/a/"),
            ("/a/b/.", "http://m.example:8080/a/b/"),
            ("/..", "http://m.example:8080/"),
            ("/a//b", "http://m.example:8080/a//b"),
            (
                "?token=1",
                "http://m.example:8080/core/os/x86_64/a.pkg.tar.zst?token=1",
            ),
            (
                "#frag",
                "http://m.example:8080/core/os/x86_64/a.pkg.tar.zst?t=1",
            ),
            ("", "http://m.example:8080/core/os/x86_64/a.pkg.tar.zst?t=1"),
            // an epoch's colon is a path, not a scheme
            (
                "a-1:2-1-any.pkg.tar.zst",
                "http://m.example:8080/core/os/x86_64/a-1:2-1-any.pkg.tar.zst",
            ),
            ("/é", "http://m.example:8080/%C3%A9"),
            ("/a%2e%2e/x", "http://m.example:8080/a%2e%2e/x"),
            (
                "javascript:alert(1)",
                "http://m.example:8080/core/os/x86_64/javascript:alert(1)",
            ),
        ];
        for (loc, want) in table {
            let got = base.join(loc).unwrap_or_else(|e| panic!("{loc}: {e}"));
            assert_eq!(got.to_string(), *want, "{loc}");
        }
        let https = url("https://m.example/a/b");
        assert_eq!(https.join("//cdn/x").unwrap().to_string(), "https://cdn/x");
        assert_eq!(
            https.join("c").unwrap().to_string(),
            "https://m.example/a/c"
        );
        let long = format!("/{}", "a".repeat(MAX_URL));
        let near = format!("/{}", "a".repeat(MAX_URL - 10));
        for (loc, err) in [
            ("ftp://m.example/x", UrlError::Scheme),
            ("file:///etc/passwd", UrlError::Scheme),
            ("gopher://x/", UrlError::Scheme),
            ("http://user@evil/", UrlError::Userinfo),
            ("http://h:99999/", UrlError::Port),
            ("//", UrlError::Host),
            ("///x", UrlError::Host),
            ("/a\r\nSet-Cookie: x", UrlError::ControlByte),
            ("/a b", UrlError::ControlByte),
            (long.as_str(), UrlError::TooLong),
            // short enough alone, too long once the origin is in front of it
            (near.as_str(), UrlError::TooLong),
        ] {
            assert_eq!(base.join(loc), Err(err), "{loc:?}");
        }
    }

    #[test]
    fn file_names_joined_once() {
        let base = url("http://m/core/os/x86_64//");
        let table = [
            (
                "a-1-1-any.pkg.tar.zst",
                "/core/os/x86_64/a-1-1-any.pkg.tar.zst",
            ),
            (
                "gtk2+-1:2.0-1-any.pkg.tar.zst",
                "/core/os/x86_64/gtk2+-1:2.0-1-any.pkg.tar.zst",
            ),
            // what pacman's `%252e` decoded to: the mirror must see `%2e` again, not `.`
            ("a%2e.pkg.tar.zst", "/core/os/x86_64/a%252e.pkg.tar.zst"),
            ("a?b.pkg.tar.zst", "/core/os/x86_64/a%3Fb.pkg.tar.zst"),
            ("a#b", "/core/os/x86_64/a%23b"),
        ];
        for (name, want) in table {
            let u = base.join_file(name).unwrap();
            assert_eq!(u.path(), want, "{name}");
            let seg = u.path().rsplit('/').next().unwrap();
            assert_eq!(crate::http::request::percent_decode(seg).unwrap(), name);
        }
        for bad in ["", "..", ".x", "a/b", "a\\b", "a b", "é", "a.part"] {
            assert_eq!(base.join_file(bad), Err(UrlError::Name), "{bad:?}");
        }
        let peer = HttpUrl::peer("[fe80::1%3]:19432".parse().unwrap());
        assert_eq!(peer.host_header(), "[fe80::1]:19432");
        let peer = HttpUrl::peer("10.0.0.2:80".parse().unwrap());
        assert_eq!(
            peer.join_file("x.pkg.tar").unwrap().to_string(),
            "http://10.0.0.2/x.pkg.tar"
        );
    }

    #[test]
    fn names_are_encoded_once() {
        let table = [
            (
                "core-1.0-1-x86_64.pkg.tar.zst",
                "core-1.0-1-x86_64.pkg.tar.zst",
            ),
            // epochs and pluses stay readable
            (
                "gtk2+-1:2.0-1-any.pkg.tar.zst",
                "gtk2+-1:2.0-1-any.pkg.tar.zst",
            ),
            // what the front decoded from %252e%252e%252f, %3F, %2500, %250d%250a
            ("%2e%2e%2f", "%252e%252e%252f"),
            ("a?b", "a%3Fb"),
            ("%00", "%2500"),
            ("%0d%0a", "%250d%250a"),
            ("a#b c", "a%23b%20c"),
            ("é", "%C3%A9"),
        ];
        for (name, want) in table {
            assert_eq!(encode_segment(name), want, "{name}");
            // and the mirror decodes exactly the name
            assert_eq!(crate::http::request::percent_decode(want).unwrap(), name);
        }
    }

    /// Pieces of URLs spliced at random: nothing panics, and whatever parses or joins is a URL
    /// that prints, parses back to itself and can go on a request line.
    #[test]
    fn mini_fuzz() {
        let pieces = [
            "http://",
            "https://",
            "HTTP://",
            "//",
            "/",
            "?",
            "#",
            "@",
            ":",
            "[",
            "]",
            "::1",
            "80",
            "65536",
            "0",
            "m.example",
            "localhost",
            "127.0.0.1",
            "%",
            "%2e",
            "..",
            ".",
            " ",
            "\r\n",
            "\0",
            "é",
            "\\",
            "a",
            "ftp://",
            "$arch",
        ];
        let base = url("http://m.example:8080/core/os/x86_64/a.pkg.tar.zst");
        let mut rng = XorShift::new(0x0bad_cafe_f00d_d00d);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let s: String = (0..rng.below(10))
                .map(|_| pieces[rng.below(pieces.len())])
                .collect();
            for u in [HttpUrl::parse(&s), base.join(&s)].into_iter().flatten() {
                parsed += 1;
                let text = u.to_string();
                assert!(text.len() <= MAX_URL, "{s:?}");
                assert_eq!(url(&text), u, "{s:?}");
                assert!(u.path().starts_with('/'), "{s:?}");
                assert!(u.path().bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
                assert!(!u.host_header().is_empty());
            }
        }
        assert!(parsed > 5_000, "{parsed}");
    }
}
