//! The status page (`/.flocon/status`, `/.flocon/status.json`, SIGUSR1): one snapshot of the
//! daemon's state, rendered as text for people and as JSON for tools. Both renderings show
//! every field of `Snapshot`, so they cannot drift apart.

use crate::config::Config;
use crate::discovery::Discovery;
use crate::env::Loop;
use crate::front::Front;
use crate::metrics::{date, fixed, human_bytes};
use crate::peers::BanKey;
use crate::syncdb::SyncIndex;
use crate::sys;
use std::fmt::Write;
use std::time::Instant;

/// What only the loop knows, for the snapshot.
pub(crate) struct Counters {
    pub started: Instant,
    pub peer_bytes_sent: u64,
    pub refused_busy: u64,
    pub connections: usize,
}

pub(crate) struct PeerRow {
    pub instance: u64,
    pub name: String,
    pub addr: String,
    pub tcp_port: u16,
    pub distro: String,
    pub archs: Vec<String>,
    pub version: u8,
    pub last_seen_ms: u128,
    /// The version of its digest we hold and may use (0: none, or an older one than it
    /// announced): a file it published is found once this reaches that version.
    pub digest: u32,
}

pub(crate) struct CopyRow {
    pub file: String,
    pub source: String,
    pub bytes: u64,
    pub size: u64,
    /// Bytes per second from the current source.
    pub rate: f64,
    pub phase: String,
}

/// Discovery's defences at work (docs/PROTOCOL.md §8, §10): what it dropped, checked, refused.
pub(crate) struct Defence {
    /// Keyed mode: dropped for a bad MAC, a stale stamp or a replay.
    pub auth_rejected: u64,
    pub rate_limited: u64,
    pub strangers_refused: u64,
    pub checks_sent: u64,
    pub checks_pending: usize,
    pub checks_failed: u64,
    pub claims_refuted: u64,
    pub send_errors: u64,
}

pub(crate) struct BanRow {
    /// The banned peer's announced name, when it is (or was just) in the peer table.
    pub name: String,
    pub peer: String,
    pub seconds_left: u64,
    pub reason: String,
}

/// Everything the status page shows, gathered in one place by the daemon.
pub(crate) struct Snapshot {
    pub version: &'static str,
    pub name: String,
    pub distro: String,
    pub archs: Vec<String>,
    pub instance: u64,
    pub uptime_s: u64,
    pub rss_kib: u64,
    pub multicast: Vec<String>,
    pub indexed_packages: usize,
    pub peers: Vec<PeerRow>,
    pub transfers: Vec<CopyRow>,
    pub bans: Vec<BanRow>,
    pub lan_hits: u64,
    pub lan_bytes: u64,
    pub upstream_bytes: u64,
    pub rejected_copies: u64,
    pub peer_bytes_sent: u64,
    pub refused_busy: u64,
    pub datagrams_in: u64,
    pub datagrams_rejected: u64,
    pub defence: Defence,
    pub connections: usize,
    /// The lifetime counters (they survive restarts): bytes and packages from the LAN,
    /// bytes served to peers, since the Unix time `saved_since`.
    pub saved_lan_bytes: u64,
    pub saved_lan_hits: u64,
    pub saved_served_bytes: u64,
    pub saved_since: u64,
    /// Cache digests and lookups' datagrams (docs/PROTOCOL.md §14), one JSON object.
    pub digest_json: String,
}

impl Snapshot {
    /// Gathers the snapshot from the daemon's parts.
    pub(crate) fn gather(
        cfg: &Config,
        discovery: &Discovery,
        front: &Front,
        index: &SyncIndex,
        counters: &Counters,
        now: Instant,
    ) -> Snapshot {
        let peers = discovery.peers.iter().map(|p| PeerRow {
            instance: p.instance,
            name: p.name.clone(),
            addr: p.addr.to_string(),
            tcp_port: p.tcp_port,
            distro: p.distro.clone(),
            archs: p.archs.clone(),
            version: p.version,
            last_seen_ms: now.duration_since(p.last_seen).as_millis(),
            digest: match &p.digest {
                crate::digest::PeerDigest::Fresh(d) => d.version(),
                _ => 0,
            },
        });
        let transfers = front.copies(now).into_iter().map(|c| CopyRow {
            file: c.file,
            source: c.source.map(|a| a.to_string()).unwrap_or_default(),
            bytes: c.received,
            size: c.size,
            rate: c.rate,
            phase: format!("{:?}", c.phase),
        });
        let name_of = |key: &BanKey| {
            let p = match key {
                BanKey::Instance(i) => discovery.peers.get(*i),
                BanKey::Ip(ip) => discovery.peers.iter().find(|p| p.addr.ip() == *ip),
            };
            p.map(|p| p.name.clone()).unwrap_or_default()
        };
        let bans = discovery.bans.iter(now).map(|b| BanRow {
            name: name_of(&b.0),
            peer: b.0.to_string(),
            seconds_left: b.1.as_secs(),
            reason: b.2.to_string(),
        });
        let s = &front.stats;
        let saved = front.metrics.lifetime();
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            name: cfg.name.clone(),
            distro: cfg.distro.clone(),
            archs: cfg.architectures.clone(),
            instance: discovery.instance(),
            uptime_s: now.duration_since(counters.started).as_secs(),
            rss_kib: sys::rss_kib().unwrap_or(0),
            multicast: discovery.joined(),
            indexed_packages: index.len(),
            peers: peers.collect(),
            transfers: transfers.collect(),
            bans: bans.collect(),
            lan_hits: s.lan_hits,
            lan_bytes: s.lan_bytes,
            upstream_bytes: s.upstream_bytes,
            rejected_copies: s.rejected_copies,
            peer_bytes_sent: counters.peer_bytes_sent,
            refused_busy: counters.refused_busy,
            datagrams_in: discovery.stats.datagrams_in,
            datagrams_rejected: discovery.stats.rejected,
            defence: Defence {
                auth_rejected: discovery.stats.auth_rejected,
                rate_limited: discovery.stats.rate_limited,
                strangers_refused: discovery.stats.strangers_refused,
                checks_sent: discovery.stats.checks_sent,
                checks_pending: discovery.checks_pending(),
                checks_failed: discovery.stats.checks_failed,
                claims_refuted: discovery.stats.claims_refuted,
                send_errors: discovery.stats.send_errors,
            },
            connections: counters.connections,
            saved_lan_bytes: saved.lan_bytes,
            saved_lan_hits: saved.lan_hits,
            saved_served_bytes: saved.served_bytes,
            saved_since: saved.since,
            digest_json: digest_json(discovery),
        }
    }

    pub(crate) fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "flocon {} on {} ({}, {}), instance {:016x}, up {} s, rss {} KiB",
            self.version,
            self.name,
            self.distro,
            self.archs.join(","),
            self.instance,
            self.uptime_s,
            self.rss_kib
        );
        let _ = writeln!(s, "multicast: {}", self.multicast.join(" "));
        let _ = writeln!(s, "sync dbs: {} packages indexed", self.indexed_packages);
        let _ = writeln!(s, "peers: {}", self.peers.len());
        if !self.peers.is_empty() {
            let _ = writeln!(
                s,
                "  {:<20} {:<40} {:<8} {:<16} PROTOCOL, LAST SEEN",
                "NAME", "ADDRESS", "DISTRO", "ARCH"
            );
        }
        for p in &self.peers {
            let _ = writeln!(
                s,
                "  {:<20} {:<40} {:<8} {:<16} v{}, {} s ago ({:016x}, tcp {})",
                p.name,
                p.addr,
                p.distro,
                p.archs.join(","),
                p.version,
                fixed(p.last_seen_ms, 1000, 1),
                p.instance,
                p.tcp_port
            );
        }
        let _ = writeln!(s, "transfers: {}", self.transfers.len());
        for t in &self.transfers {
            let _ = writeln!(
                s,
                "  {} from {} {} of {} {} MB/s {}",
                t.file,
                if t.source.is_empty() { "-" } else { &t.source },
                human_bytes(t.bytes),
                human_bytes(t.size),
                fixed(t.rate as u128, 1_000_000, 1),
                t.phase
            );
        }
        let _ = writeln!(s, "bans: {}", self.bans.len());
        for b in &self.bans {
            let name = if b.name.is_empty() { "?" } else { &b.name };
            let _ = writeln!(
                s,
                "  {name} ({}) for {} s more: {}",
                b.peer, b.seconds_left, b.reason
            );
        }
        let _ = writeln!(
            s,
            "since start: {} LAN hits ({}), {} upstream, {} copies rejected, \
             {} to peers, {} refused (busy)",
            self.lan_hits,
            human_bytes(self.lan_bytes),
            human_bytes(self.upstream_bytes),
            self.rejected_copies,
            human_bytes(self.peer_bytes_sent),
            self.refused_busy
        );
        let _ = writeln!(
            s,
            "saved from the Internet: {} since {} ({} packages); served to peers: {}",
            human_bytes(self.saved_lan_bytes),
            date(self.saved_since),
            self.saved_lan_hits,
            human_bytes(self.saved_served_bytes)
        );
        let _ = writeln!(
            s,
            "datagrams: {} in, {} rejected; {} connections",
            self.datagrams_in, self.datagrams_rejected, self.connections
        );
        let d = &self.defence;
        let _ = writeln!(
            s,
            "discovery defence: {} failed the MAC check, {} over a rate limit, {} strangers \
             unanswered; checks {} sent, {} pending, {} silent, {} claims refuted; {} sends \
             dropped",
            d.auth_rejected,
            d.rate_limited,
            d.strangers_refused,
            d.checks_sent,
            d.checks_pending,
            d.checks_failed,
            d.claims_refuted,
            d.send_errors
        );
        s
    }

    pub(crate) fn json(&self) -> String {
        let list = |v: &[String]| v.iter().map(|x| json_str(x)).collect::<Vec<_>>().join(",");
        let peers: Vec<String> = self
            .peers
            .iter()
            .map(|p| {
                format!(
                    "{{\"instance\":\"{:016x}\",\"name\":{},\"addr\":{},\"tcp_port\":{},\"distro\":{},\"archs\":[{}],\"version\":{},\"last_seen_ms\":{},\"digest\":{}}}",
                    p.instance,
                    json_str(&p.name),
                    json_str(&p.addr),
                    p.tcp_port,
                    json_str(&p.distro),
                    list(&p.archs),
                    p.version,
                    p.last_seen_ms,
                    p.digest
                )
            })
            .collect();
        let transfers: Vec<String> = self
            .transfers
            .iter()
            .map(|t| {
                format!(
                    "{{\"file\":{},\"source\":{},\"bytes\":{},\"size\":{},\"rate\":{},\"phase\":{}}}",
                    json_str(&t.file),
                    json_str(&t.source),
                    t.bytes,
                    t.size,
                    t.rate.round() as u64,
                    json_str(&t.phase)
                )
            })
            .collect();
        let bans: Vec<String> = self
            .bans
            .iter()
            .map(|b| {
                format!(
                    "{{\"name\":{},\"peer\":{},\"seconds_left\":{},\"reason\":{}}}",
                    json_str(&b.name),
                    json_str(&b.peer),
                    b.seconds_left,
                    json_str(&b.reason)
                )
            })
            .collect();
        format!(
            "{{\"version\":{},\"name\":{},\"distro\":{},\"archs\":[{}],\"instance\":\"{:016x}\",\"uptime_s\":{},\"rss_kib\":{},\"multicast\":[{}],\"indexed_packages\":{},\"peers\":[{}],\"transfers\":[{}],\"bans\":[{}],\"lan_hits\":{},\"lan_bytes\":{},\"upstream_bytes\":{},\"rejected_copies\":{},\"peer_bytes_sent\":{},\"refused_busy\":{},\"datagrams_in\":{},\"datagrams_rejected\":{},\"auth_rejected\":{},\"rate_limited\":{},\"strangers_refused\":{},\"checks_sent\":{},\"checks_pending\":{},\"checks_failed\":{},\"claims_refuted\":{},\"send_errors\":{},\"digest\":{},\"connections\":{},\"saved_lan_bytes\":{},\"saved_lan_hits\":{},\"saved_served_bytes\":{},\"saved_since\":{}}}\n",
            json_str(self.version),
            json_str(&self.name),
            json_str(&self.distro),
            list(&self.archs),
            self.instance,
            self.uptime_s,
            self.rss_kib,
            list(&self.multicast),
            self.indexed_packages,
            peers.join(","),
            transfers.join(","),
            bans.join(","),
            self.lan_hits,
            self.lan_bytes,
            self.upstream_bytes,
            self.rejected_copies,
            self.peer_bytes_sent,
            self.refused_busy,
            self.datagrams_in,
            self.datagrams_rejected,
            self.defence.auth_rejected,
            self.defence.rate_limited,
            self.defence.strangers_refused,
            self.defence.checks_sent,
            self.defence.checks_pending,
            self.defence.checks_failed,
            self.defence.claims_refuted,
            self.defence.send_errors,
            self.digest_json,
            self.connections,
            self.saved_lan_bytes,
            self.saved_lan_hits,
            self.saved_served_bytes,
            self.saved_since
        )
    }
}

/// A JSON string literal (the only escaping the status document needs).
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl Snapshot {
    /// The running loop's snapshot: `gather`, with the addresses strikes bench (policy.rs)
    /// shown with the bans.
    pub(crate) fn of_loop(env: &Loop, front: &Front, counters: &Counters) -> Snapshot {
        let (cfg, index) = (env.cfg, &*env.index);
        let mut s = Snapshot::gather(cfg, env.discovery, front, index, counters, env.now);
        s.bans
            .extend(env.strikes.iter(env.now).map(|(ip, left, why)| {
                BanRow {
                    name: (env.discovery.peers.iter())
                        .find(|p| p.addr.ip() == ip)
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    peer: format!("address {ip}"),
                    seconds_left: left.as_secs(),
                    reason: format!("benched: {why}"),
                }
            }));
        s
    }
}

/// The pages the front answers itself, by path: the body and its Content-Type.
pub(crate) fn page(
    path: &str,
    env: &Loop,
    front: &Front,
    counters: &Counters,
) -> Option<(String, &'static str)> {
    let snapshot = || Snapshot::of_loop(env, front, counters);
    match path {
        "/.flocon/status" => Some((snapshot().text(), "text/plain; charset=utf-8")),
        "/.flocon/status.json" => Some((snapshot().json(), "application/json")),
        "/metrics" | "/.flocon/metrics" => Some((
            front.metrics.render(env.discovery.peers.len()),
            "text/plain; version=0.0.4; charset=utf-8",
        )),
        _ => None,
    }
}

/// Our digest, what we hold of the peers', and what lookups sent.
fn digest_json(d: &Discovery) -> String {
    let (mut fresh, mut stale, mut unknown) = (0, 0, 0);
    for p in d.peers.iter() {
        match p.digest {
            crate::digest::PeerDigest::Fresh(_) => fresh += 1,
            crate::digest::PeerDigest::Stale { .. } => stale += 1,
            crate::digest::PeerDigest::Unknown => unknown += 1,
        }
    }
    let s = &d.stats;
    format!(
        "{{\"on\":{},\"version\":{},\"names\":{},\"bytes\":{},\"peers_fresh\":{fresh},\"peers_stale\":{stale},\"peers_unknown\":{unknown},\"fetched\":{},\"refused\":{},\"datagrams_out\":{},\"bytes_out\":{},\"lookups_unasked\":{},\"intents_sent\":{}}}",
        d.digests,
        d.published.version(),
        d.published.digest().map_or(0, |x| x.names()),
        d.published.body().len(),
        s.digests_fetched,
        s.digests_refused,
        s.datagrams_out,
        s.bytes_out,
        s.lookups_unasked,
        s.intents_sent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            version: "0.1.0",
            name: "host \"a\"".into(),
            distro: "arch".into(),
            archs: vec!["x86_64".into()],
            instance: 0xabc,
            uptime_s: 5,
            rss_kib: 1234,
            multicast: vec!["lo v4".into()],
            indexed_packages: 17,
            peers: vec![PeerRow {
                instance: 0xdef,
                name: "b".into(),
                addr: "127.0.0.3:19432".into(),
                tcp_port: 19432,
                distro: "arch".into(),
                archs: vec!["any".into(), "x86_64".into()],
                version: 1,
                last_seen_ms: 1500,
                digest: 3,
            }],
            transfers: vec![CopyRow {
                file: "x.pkg.tar.zst".into(),
                source: "127.0.0.3:19432".into(),
                bytes: 10,
                size: 20,
                rate: 5e6,
                phase: "Fetching".into(),
            }],
            bans: vec![BanRow {
                name: "c".into(),
                peer: "127.0.0.9".into(),
                seconds_left: 30,
                reason: "wrong hash".into(),
            }],
            lan_hits: 101,
            lan_bytes: 102,
            upstream_bytes: 103,
            rejected_copies: 104,
            peer_bytes_sent: 105,
            refused_busy: 106,
            datagrams_in: 107,
            datagrams_rejected: 108,
            defence: Defence {
                auth_rejected: 112,
                rate_limited: 113,
                strangers_refused: 114,
                checks_sent: 115,
                checks_pending: 116,
                checks_failed: 117,
                claims_refuted: 118,
                send_errors: 119,
            },
            connections: 109,
            saved_lan_bytes: 3 << 30,
            saved_lan_hits: 110,
            saved_served_bytes: 111,
            saved_since: 1_764_547_200,
            digest_json: "{}".into(),
        }
    }

    #[test]
    fn both_renderings_carry_every_counter() {
        let s = snapshot();
        let (text, json) = (s.text(), s.json());
        for n in 101..=119 {
            assert!(text.contains(&n.to_string()), "text lacks {n}:\n{text}");
            assert!(json.contains(&format!(":{n}")), "json lacks {n}: {json}");
        }
        for word in ["x.pkg.tar.zst", "wrong hash", "lo v4", "127.0.0.3:19432"] {
            assert!(text.contains(word) && json.contains(word), "{word}");
        }
        assert!(json.contains("\"name\":\"host \\\"a\\\"\""), "{json}");
        assert!(json.ends_with("}\n"));
        // people get sizes and dates, peer names in ban lines; tools get the numbers
        assert!(
            text.contains("saved from the Internet: 3.0 GiB since 2025-12-01 (110 packages)"),
            "{text}"
        );
        assert!(
            text.contains("  c (127.0.0.9) for 30 s more: wrong hash"),
            "{text}"
        );
        assert!(
            text.contains("x.pkg.tar.zst from 127.0.0.3:19432 10 B of 20 B"),
            "{text}"
        );
        assert!(
            json.contains(&format!("\"saved_lan_bytes\":{}", 3u64 << 30)),
            "{json}"
        );
        assert!(json.contains("\"saved_since\":1764547200"), "{json}");
        assert!(
            text.contains("checks 115 sent, 116 pending, 117 silent, 118 claims refuted"),
            "{text}"
        );
        assert!(json.contains("\"checks_pending\":116"), "{json}");
        assert!(
            json.contains("{\"name\":\"c\",\"peer\":\"127.0.0.9\""),
            "{json}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
