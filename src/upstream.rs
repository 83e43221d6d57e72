//! Which mirrors a request for a repo goes to when no peer has the file (docs/DESIGN.md,
//! "Upstreams"): the routing policy over pacman.conf's server lines, which pacman_conf.rs
//! reads. Flocon's own entry (a loopback URL on the front's port) splits the list: pacman
//! tried the servers before it already; CacheServer lines are never upstreams; `# flocon:
//! Server` comment lines always are. Only http:// and https:// mirrors can be upstreams.

use crate::pacman_conf::{Repo, ServerKind, ServerLine};
use crate::url::{HttpUrl, Scheme};

/// Upstream URLs for `arch`: `Server` lines that come after flocon's own entry
/// (a Server/CacheServer URL whose host is localhost, 127.0.0.1 or [::1] and whose port is
/// `front_port`), plus every `# flocon: Server = URL` comment line, in file order, with $repo
/// and $arch substituted, trailing '/' trimmed. Flocon's own entry and CacheServer lines are
/// never upstreams. If flocon's own entry is absent (pacman >= 6.1 CacheServer role), all
/// Server lines are upstreams.
pub(crate) fn upstreams(repo: &Repo, arch: &str, front_port: u16) -> Vec<String> {
    let is_own = |line: &ServerLine| is_own_url(&line.url, front_port);
    // Servers listed before flocon's own `Server` line were tried by pacman already.
    // A CacheServer entry is tried before every Server line, so it starts nothing.
    let start = repo
        .servers
        .iter()
        .position(|line| line.kind == ServerKind::Server && is_own(line))
        .map_or(0, |i| i + 1);
    let mut out: Vec<String> = Vec::new();
    for (i, line) in repo.servers.iter().enumerate() {
        let upstream = match line.kind {
            ServerKind::Server => i >= start && !is_own(line),
            ServerKind::CacheServer => false,
            // Pointing flocon at itself would loop.
            ServerKind::FloconComment => !is_own(line),
        };
        if upstream && scheme_ok(&line.url) {
            let url = substitute(&line.url, &repo.name, arch);
            if !url.is_empty() && !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out
}

fn substitute(url: &str, repo: &str, arch: &str) -> String {
    url.replace("$repo", repo)
        .replace("$arch", arch)
        .trim_end_matches('/')
        .to_string()
}

/// Whether `url` is flocon's own front: an http(s) URL to a loopback host on `front_port`. A
/// `user:password@` is dropped, not refused: curl sends it, and the URL still reaches the front.
fn is_own_url(url: &str, front_port: u16) -> bool {
    HttpUrl::parse_dropping_userinfo(url.trim())
        .is_ok_and(|u| u.is_loopback() && u.port() == front_port)
}

/// Whether flocon can use a mirror URL as an upstream: http:// is fetched, https:// redirected
/// to; ftp:// and file:// are pacman's alone.
pub(crate) fn scheme_ok(url: &str) -> bool {
    Scheme::of(url).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, lines: &[(ServerKind, &str)]) -> Repo {
        Repo {
            name: name.to_string(),
            servers: lines
                .iter()
                .map(|&(kind, url)| ServerLine {
                    kind,
                    url: url.to_string(),
                })
                .collect(),
        }
    }

    use ServerKind::{CacheServer as C, FloconComment as F, Server as S};

    #[test]
    fn upstreams_flocon_first() {
        let r = repo(
            "core",
            &[
                (S, "http://localhost:19433/$repo/os/$arch"),
                (S, "https://one.example/$repo/os/$arch/"),
                (S, "http://two.example/archlinux/$repo/os/$arch"),
            ],
        );
        assert_eq!(
            upstreams(&r, "x86_64", 19433),
            [
                "https://one.example/core/os/x86_64",
                "http://two.example/archlinux/core/os/x86_64"
            ]
        );
    }

    #[test]
    fn upstreams_flocon_in_the_middle() {
        let r = repo(
            "extra",
            &[
                (S, "http://before.example/$repo"),
                (F, "http://lan.example/$arch/$repo/"),
                (S, "http://127.0.0.1:19433/$repo/os/$arch"),
                (C, "http://cache.example/$repo"),
                (S, "http://after.example/$repo//"),
                (F, "http://later-comment.example/$repo"),
                (S, "http://[::1]:19433/$repo/os/$arch"),
                (S, "http://after.example/$repo"),
            ],
        );
        assert_eq!(
            upstreams(&r, "aarch64", 19433),
            [
                "http://lan.example/aarch64/extra",
                "http://after.example/extra",
                "http://later-comment.example/extra",
            ]
        );
    }

    #[test]
    fn upstreams_flocon_absent_or_cacheserver() {
        let absent = repo(
            "core",
            &[
                (S, "http://a.example/$repo"),
                (F, "http://c/$repo"),
                (S, "http://b.example/$repo"),
            ],
        );
        assert_eq!(
            upstreams(&absent, "x86_64", 19433),
            [
                "http://a.example/core",
                "http://c/core",
                "http://b.example/core"
            ]
        );
        // pacman >= 6.1: flocon is a CacheServer; every Server line is an upstream.
        let cache = repo(
            "core",
            &[
                (S, "http://a.example/$repo/os/$arch"),
                (C, "http://localhost:19433/$repo/os/$arch"),
                (S, "http://b.example/$repo/os/$arch"),
            ],
        );
        assert_eq!(
            upstreams(&cache, "armv7h", 19433),
            [
                "http://a.example/core/os/armv7h",
                "http://b.example/core/os/armv7h"
            ]
        );
        // Another port on localhost is not flocon: it is an upstream.
        let other = repo(
            "core",
            &[
                (S, "http://localhost:8080/$repo"),
                (S, "http://localhost:19433/$repo"),
            ],
        );
        assert!(upstreams(&other, "x86_64", 19433).is_empty());
        assert_eq!(
            upstreams(&other, "x86_64", 7000),
            ["http://localhost:8080/core", "http://localhost:19433/core"]
        );
        // A flocon comment that points at flocon itself is dropped (it would loop).
        let looping = repo("core", &[(F, "http://localhost:19433/$repo")]);
        assert!(upstreams(&looping, "x86_64", 19433).is_empty());
        assert!(upstreams(&repo("core", &[]), "x86_64", 19433).is_empty());
    }

    #[test]
    fn own_url_recognition() {
        for url in [
            "http://localhost:19433/$repo/os/$arch",
            "http://LOCALHOST:19433",
            "http://localhost.:19433/",
            "http://127.0.0.1:19433/x",
            "http://127.1.2.3:19433/x",
            "http://[::1]:19433/$repo",
            "HTTP://user:pw@localhost:19433/x",
            "https://localhost:19433/x",
        ] {
            assert!(is_own_url(url, 19433), "{url}");
        }
        for url in [
            "http://localhost/x",
            "http://localhost:19432/x",
            "http://example.com:19433/x",
            "http://10.0.0.1:19433/x",
            "http://[::2]:19433/x",
            "http://[::1]x:19433/",
            "ftp://localhost:19433/",
            "localhost:19433",
            "http://localhost:abc/",
            "",
        ] {
            assert!(!is_own_url(url, 19433), "{url}");
        }
        assert!(is_own_url("http://localhost/x", 80));
        assert!(is_own_url("https://[::1]/x", 443));
    }

    #[test]
    fn own_url_mini_fuzz_never_panics() {
        for text in crate::config::tests::fuzz_texts() {
            let _ = is_own_url(&text, 19433);
        }
    }
}
