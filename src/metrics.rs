//! The daemon's counters: what `GET /metrics` on the loopback front shows in Prometheus's text
//! format (per repo LAN hits and misses, bytes from the LAN and from upstream; bytes served
//! to peers, rejected copies, bans, peers known, a lookup latency histogram), and the few
//! counters that matter to a user across restarts ("saved from the Internet: X GiB since
//! DATE"), kept in `<state-dir>/counters`.
//!
//! That file is rewritten rarely (SAVE_INTERVAL, and at shutdown) and atomically: a
//! temporary file renamed over the old one, so a crash leaves either version, never a mix.
//! Periodic saves skip fsync (on a busy SD card one can stall for seconds and the loop must
//! not); the save at shutdown syncs. A missing or unreadable file starts the counters at 0.
//! Pure bookkeeping: time is passed in, the file is read and written only when asked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// How often changed lifetime counters are written (and the most a crash can lose).
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// The file in the state directory.
pub(crate) const COUNTERS_FILE: &str = "counters";
/// Longer than any file we write: a bigger one is not ours.
pub(crate) const MAX_COUNTERS_FILE: u64 = 4096;
/// Repos with their own label; a request names its repo, so the label set must be bounded.
/// A real pacman.conf has a handful; more land under `repo="other"`.
pub(crate) const MAX_REPOS: usize = 64;
/// Upper bounds of the lookup latency buckets, in microseconds (then +Inf). Lookups wait at
/// most `--lookup-ms` (default 50, at most 5000).
pub(crate) const LOOKUP_BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// Counters of one repository, since start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RepoCounters {
    /// Packages copied from a LAN peer and verified.
    pub lan_hits: u64,
    /// Packages in the sync db that no peer had (fetched upstream instead).
    pub lan_misses: u64,
    pub lan_bytes: u64,
    /// Files fetched from an upstream mirror (proxied), and their bytes.
    pub upstream_files: u64,
    pub upstream_bytes: u64,
}

/// Lookup latency: counts per bucket (not cumulative; rendered cumulative), sum, count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Histogram {
    buckets: [u64; LOOKUP_BUCKETS_US.len() + 1],
    sum_us: u64,
    count: u64,
}

impl Histogram {
    pub(crate) fn observe(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LOOKUP_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LOOKUP_BUCKETS_US.len());
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// What survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// Unix time (seconds) of the first start that counted.
    pub since: u64,
    pub lan_bytes: u64,
    pub lan_hits: u64,
    pub served_bytes: u64,
}

impl Lifetime {
    pub(crate) fn new(since: u64) -> Lifetime {
        Lifetime {
            since,
            lan_bytes: 0,
            lan_hits: 0,
            served_bytes: 0,
        }
    }

    /// The file's text: `key value` lines.
    pub(crate) fn to_text(self) -> String {
        format!(
            "# flocon's lifetime counters, rewritten by flocon (delete to start again at 0)\n\
             since {}\nlan_bytes {}\nlan_hits {}\nserved_bytes {}\n",
            self.since, self.lan_bytes, self.lan_hits, self.served_bytes
        )
    }

    /// Reads the file's text. Unknown keys are skipped (a newer version may add some); a
    /// line that is not `key number` makes the whole file suspect.
    pub(crate) fn parse(text: &str) -> Result<Lifetime, String> {
        let mut l = Lifetime::new(0);
        let mut since = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("line {}: expected 'key number'", n + 1);
            let (key, value) = line.split_once(' ').ok_or_else(bad)?;
            let value: u64 = value.trim().parse().map_err(|_| bad())?;
            match key {
                "since" => since = Some(value),
                "lan_bytes" => l.lan_bytes = value,
                "lan_hits" => l.lan_hits = value,
                "served_bytes" => l.served_bytes = value,
                _ => {}
            }
        }
        l.since = since.ok_or("no 'since' line")?;
        Ok(l)
    }

    /// `<dir>/counters`, or None when there is none yet.
    pub(crate) fn load(dir: &Path) -> Result<Option<Lifetime>, String> {
        let path = dir.join(COUNTERS_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut text = String::new();
        file.take(MAX_COUNTERS_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_COUNTERS_FILE {
            return Err(format!("{}: too long", path.display()));
        }
        Lifetime::parse(&text)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `<dir>/counters` through a temporary file and a rename; `sync` also flushes
    /// it to the disk first (shutdown).
    pub(crate) fn save(&self, dir: &Path, sync: bool) -> io::Result<()> {
        let tmp = dir.join(format!("{COUNTERS_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(self.to_text().as_bytes())?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, dir.join(COUNTERS_FILE))
    }
}

/// Everything `/metrics` shows, plus the lifetime counters and when they were last saved.
#[derive(Debug)]
pub(crate) struct Metrics {
    repos: BTreeMap<String, RepoCounters>,
    pub served_bytes: u64,
    pub rejected_copies: u64,
    pub bans: u64,
    pub lookups: Histogram,
    lifetime: Lifetime,
    /// Unix time of this start.
    started: u64,
    saved_at: Instant,
    dirty: bool,
}

/// Counting from now, nothing loaded (the daemon replaces it with the loaded counters).
impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None, Instant::now(), unix_now())
    }
}

impl Metrics {
    /// `loaded` is what `Lifetime::load` found, if anything; otherwise counting starts now.
    pub(crate) fn new(loaded: Option<Lifetime>, now: Instant, now_unix: u64) -> Metrics {
        Metrics {
            repos: BTreeMap::new(),
            served_bytes: 0,
            rejected_copies: 0,
            bans: 0,
            lookups: Histogram::default(),
            lifetime: loaded.unwrap_or_else(|| Lifetime::new(now_unix)),
            started: now_unix,
            saved_at: now,
            dirty: false,
        }
    }

    fn repo(&mut self, repo: &str) -> &mut RepoCounters {
        let key = if self.repos.contains_key(repo) || self.repos.len() < MAX_REPOS {
            repo
        } else {
            "other"
        };
        self.repos.entry(key.to_string()).or_default()
    }

    #[cfg(test)]
    pub(crate) fn repo_counters(&self, repo: &str) -> Option<&RepoCounters> {
        self.repos.get(repo)
    }

    /// A package copied from a peer and verified.
    pub(crate) fn lan_hit(&mut self, repo: &str, bytes: u64) {
        let r = self.repo(repo);
        r.lan_hits += 1;
        r.lan_bytes += bytes;
        self.lifetime.lan_hits += 1;
        self.lifetime.lan_bytes += bytes;
        self.dirty = true;
    }

    /// A verifiable package that no peer could give.
    pub(crate) fn lan_miss(&mut self, repo: &str) {
        self.repo(repo).lan_misses += 1;
    }

    /// A file fetched from upstream has ended; `bytes` is what came through.
    pub(crate) fn upstream_file(&mut self, repo: &str, bytes: u64) {
        let r = self.repo(repo);
        r.upstream_files += 1;
        r.upstream_bytes += bytes;
    }

    /// Bytes sent by the peer server, counted as they go.
    pub(crate) fn served(&mut self, bytes: u64) {
        self.served_bytes += bytes;
        self.lifetime.served_bytes += bytes;
        self.dirty |= bytes > 0;
    }

    pub(crate) fn rejected_copy(&mut self) {
        self.rejected_copies += 1;
    }

    pub(crate) fn banned(&mut self) {
        self.bans += 1;
    }

    pub(crate) fn lookup(&mut self, elapsed: Duration) {
        self.lookups.observe(elapsed);
    }

    pub(crate) fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    /// Sums over repos since start: (LAN hits, LAN bytes, upstream bytes).
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        self.repos.values().fold((0, 0, 0), |(h, b, u), r| {
            (h + r.lan_hits, b + r.lan_bytes, u + r.upstream_bytes)
        })
    }

    /// Whether the lifetime counters changed and the last save is SAVE_INTERVAL old.
    pub(crate) fn save_due(&self, now: Instant) -> bool {
        self.dirty && now.saturating_duration_since(self.saved_at) >= SAVE_INTERVAL
    }

    /// A starting daemon's counters, the lifetime ones loaded from the state dir `dir` (from 0
    /// when they cannot be read, with a warning).
    pub(crate) fn start(dir: &Path, now: Instant) -> Metrics {
        let lifetime = Lifetime::load(dir).unwrap_or_else(|e| {
            warn!("{e}; counting what the LAN saved starts again at 0");
            None
        });
        Metrics::new(lifetime, now, unix_now())
    }

    /// Saves the lifetime counters in the state dir `dir` when a save is due, a failure
    /// logged.
    pub(crate) fn save_when_due(&mut self, dir: &Path, now: Instant) {
        if self.save_due(now) {
            self.save_or_warn(dir, now, false);
        }
    }

    /// Saves them to the disk (a stop), a failure logged.
    pub(crate) fn save_at_exit(&mut self, dir: &Path, now: Instant) {
        self.save_or_warn(dir, now, true);
    }

    fn save_or_warn(&mut self, dir: &Path, now: Instant, sync: bool) {
        if let Err(e) = self.save(dir, now, sync) {
            warn!("saving the counters in {}: {e}", dir.display());
        }
    }

    /// Saves the lifetime counters if they changed (`sync` at shutdown).
    pub(crate) fn save(&mut self, dir: &Path, now: Instant, sync: bool) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // a failed save is retried at the next interval, not at every tick
        self.saved_at = now;
        self.lifetime.save(dir, sync)?;
        self.dirty = false;
        Ok(())
    }

    /// "saved from the Internet: 3.2 GiB since 2026-11-30" (the bytes this host got from
    /// peers instead of a mirror), with what it gave to the others.
    pub(crate) fn saved_line(&self) -> String {
        let l = &self.lifetime;
        format!(
            "saved from the Internet: {} since {} ({} packages); served to peers: {}",
            human_bytes(l.lan_bytes),
            date(l.since),
            l.lan_hits,
            human_bytes(l.served_bytes)
        )
    }

    /// The one line systemd shows as the unit's status (`STATUS=`): peers, LAN hits and
    /// bytes from the LAN since start, and the lifetime saving.
    pub(crate) fn systemd_status(&self, peers: usize) -> String {
        let (hits, bytes, _) = self.totals();
        format!(
            "{peers} {}, {hits} LAN {}, {} from the LAN; saved {} since {}",
            if peers == 1 { "peer" } else { "peers" },
            if hits == 1 { "hit" } else { "hits" },
            human_bytes(bytes),
            human_bytes(self.lifetime.lan_bytes),
            date(self.lifetime.since)
        )
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, peers_known: usize) -> String {
        let mut o = String::with_capacity(4096);
        type Field = fn(&RepoCounters) -> u64;
        let per_repo: [(&str, &str, Field); 5] = [
            (
                "flocon_lan_hits_total",
                "Packages copied from a LAN peer and verified against the sync db.",
                |r| r.lan_hits,
            ),
            (
                "flocon_lan_misses_total",
                "Packages in the sync db that no LAN peer could give.",
                |r| r.lan_misses,
            ),
            (
                "flocon_lan_bytes_total",
                "Verified bytes copied from LAN peers.",
                |r| r.lan_bytes,
            ),
            (
                "flocon_upstream_files_total",
                "Files fetched from an upstream mirror.",
                |r| r.upstream_files,
            ),
            (
                "flocon_upstream_bytes_total",
                "Bytes fetched from upstream mirrors.",
                |r| r.upstream_bytes,
            ),
        ];
        for (name, help, field) in per_repo {
            head(&mut o, name, help, "counter");
            for (repo, r) in &self.repos {
                let _ = writeln!(o, "{name}{{repo=\"{}\"}} {}", label(repo), field(r));
            }
        }
        let plain: [(&str, &str, &str, u64); 8] = [
            (
                "flocon_served_bytes_total",
                "Bytes the peer server sent to LAN peers.",
                "counter",
                self.served_bytes,
            ),
            (
                "flocon_rejected_copies_total",
                "Copies from peers that failed verification.",
                "counter",
                self.rejected_copies,
            ),
            (
                "flocon_bans_total",
                "Peers banned for sending wrong bytes or lying about sizes.",
                "counter",
                self.bans,
            ),
            (
                "flocon_peers",
                "LAN peers known now.",
                "gauge",
                peers_known as u64,
            ),
            (
                "flocon_lifetime_lan_bytes",
                "Verified bytes from LAN peers since flocon_lifetime_since_seconds.",
                "gauge",
                self.lifetime.lan_bytes,
            ),
            (
                "flocon_lifetime_served_bytes",
                "Bytes served to LAN peers since flocon_lifetime_since_seconds.",
                "gauge",
                self.lifetime.served_bytes,
            ),
            (
                "flocon_lifetime_since_seconds",
                "Unix time the lifetime counters started.",
                "gauge",
                self.lifetime.since,
            ),
            (
                "flocon_start_time_seconds",
                "Unix time this daemon started.",
                "gauge",
                self.started,
            ),
        ];
        for (name, help, kind, v) in plain {
            head(&mut o, name, help, kind);
            let _ = writeln!(o, "{name} {v}");
        }
        let name = "flocon_lookup_duration_seconds";
        head(
            &mut o,
            name,
            "Time from asking the LAN for a package to deciding where it comes from.",
            "histogram",
        );
        let h = &self.lookups;
        let mut cumulative = 0;
        for (i, n) in h.buckets.iter().enumerate() {
            cumulative += n;
            let le = LOOKUP_BUCKETS_US
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |us| seconds(*us));
            let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(o, "{name}_sum {}", seconds(h.sum_us));
        let _ = writeln!(o, "{name}_count {}", h.count);
        o
    }
}

fn head(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with the format's three escapes.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Microseconds as decimal seconds without float noise: 2500 -> "0.0025", 1000000 -> "1".
fn seconds(us: u64) -> String {
    let (s, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return s.to_string();
    }
    let f = format!("{frac:06}");
    format!("{s}.{}", f.trim_end_matches('0'))
}

/// Sizes for people: "512 B", "1.5 KiB", "3.2 GiB".
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut u = 1;
    while u < UNITS.len() - 1 && n >> (10 * u) >= 1024 {
        u += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB": say "1.0 MiB" instead
    if u < UNITS.len() - 1 && fixed(n.into(), 1 << (10 * u), 1) == "1024.0" {
        u += 1;
    }
    format!("{} {}", fixed(n.into(), 1 << (10 * u), 1), UNITS[u])
}

/// `n / unit` with `places` decimals, rounded half up, in integers: "2.35" for (2349, 1000,
/// 2). Log lines and status pages print fractions this way: formatting an `f64` would link
/// std's float printing (~15 KB; docs/DESIGN.md, "Binary size and memory").
pub(crate) fn fixed(n: u128, unit: u128, places: u32) -> String {
    let scale = 10u128.pow(places);
    let unit = unit.max(1);
    let v = n.saturating_mul(scale).saturating_add(unit / 2) / unit;
    match places {
        0 => v.to_string(),
        _ => format!("{}.{:0w$}", v / scale, v % scale, w = places as usize),
    }
}

/// A Unix time as a UTC date, YYYY-MM-DD (days to civil date, after Howard Hinnant).
pub(crate) fn date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Seconds since the Unix epoch now (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_764_547_200; // 2025-12-01 00:00:00 UTC

    fn scratch(tag: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("flocon-metrics-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The value of one sample line of a rendered page.
    fn sample(page: &str, series: &str) -> Option<String> {
        page.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn counters_render_per_repo() {
        let t0 = Instant::now();
        let mut m = Metrics::new(None, t0, T);
        m.lan_hit("core", 1000);
        m.lan_hit("core", 500);
        m.lan_miss("extra");
        m.upstream_file("extra", 4096);
        m.served(300);
        m.served(200);
        m.served(0);
        m.rejected_copy();
        m.banned();
        m.lookup(Duration::from_micros(700));
        m.lookup(Duration::from_millis(40));
        m.lookup(Duration::from_secs(60));
        let p = m.render(3);
        let want = [
            ("flocon_lan_hits_total{repo=\"core\"}", "2"),
            ("flocon_lan_bytes_total{repo=\"core\"}", "1500"),
            ("flocon_lan_hits_total{repo=\"extra\"}", "0"),
            ("flocon_lan_misses_total{repo=\"extra\"}", "1"),
            ("flocon_upstream_bytes_total{repo=\"extra\"}", "4096"),
            ("flocon_upstream_files_total{repo=\"extra\"}", "1"),
            ("flocon_served_bytes_total", "500"),
            ("flocon_rejected_copies_total", "1"),
            ("flocon_bans_total", "1"),
            ("flocon_peers", "3"),
            ("flocon_lifetime_lan_bytes", "1500"),
            ("flocon_lifetime_since_seconds", &T.to_string()),
            ("flocon_lookup_duration_seconds_bucket{le=\"0.001\"}", "1"),
            ("flocon_lookup_duration_seconds_bucket{le=\"0.025\"}", "1"),
            ("flocon_lookup_duration_seconds_bucket{le=\"0.05\"}", "2"),
            ("flocon_lookup_duration_seconds_bucket{le=\"5\"}", "2"),
            ("flocon_lookup_duration_seconds_bucket{le=\"+Inf\"}", "3"),
            ("flocon_lookup_duration_seconds_sum", "60.0407"),
            ("flocon_lookup_duration_seconds_count", "3"),
        ];
        for (series, v) in want {
            assert_eq!(sample(&p, series).as_deref(), Some(v), "{series} in\n{p}");
        }
        assert_eq!(m.totals(), (2, 1500, 4096));
        assert_eq!(
            m.systemd_status(3),
            "3 peers, 2 LAN hits, 1.5 KiB from the LAN; saved 1.5 KiB since 2025-12-01"
        );
        let fresh = Metrics::new(None, Instant::now(), T);
        assert_eq!(
            fresh.systemd_status(1),
            "1 peer, 0 LAN hits, 0 B from the LAN; saved 0 B since 2025-12-01"
        );
    }

    #[test]
    fn page_is_well_formed() {
        let mut m = Metrics::new(None, Instant::now(), T);
        m.lan_hit("we\"ird\\repo\n", 1);
        let p = m.render(0);
        assert!(p.contains("{repo=\"we\\\"ird\\\\repo\\n\"}"), "{p}");
        let mut typed = std::collections::HashSet::new();
        for line in p.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind));
                assert!(typed.insert(name.to_string()), "{name} typed twice");
            } else if !line.starts_with("# HELP ") {
                // every sample belongs to a declared family and has a numeric value
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(p.ends_with('\n'));
    }

    #[test]
    fn repo_labels_are_bounded() {
        let mut m = Metrics::new(None, Instant::now(), T);
        for i in 0..MAX_REPOS + 10 {
            m.lan_miss(&format!("r{i}"));
        }
        m.lan_miss("r0");
        assert_eq!(m.repos.len(), MAX_REPOS + 1);
        assert_eq!(m.repo_counters("other").unwrap().lan_misses, 10);
        assert_eq!(m.repo_counters("r0").unwrap().lan_misses, 2);
    }

    #[test]
    fn lifetime_counters_survive_a_restart_and_are_saved_rarely() {
        let dir = scratch("life");
        let t0 = Instant::now();
        assert_eq!(Lifetime::load(&dir), Ok(None));
        let mut m = Metrics::new(None, t0, T);
        assert!(!m.save_due(t0 + SAVE_INTERVAL * 2), "nothing changed");
        m.lan_hit("core", 3 << 30);
        m.served(1 << 20);
        assert!(!m.save_due(t0 + SAVE_INTERVAL / 2));
        assert!(m.save_due(t0 + SAVE_INTERVAL));
        m.save(&dir, t0 + SAVE_INTERVAL, false).unwrap();
        assert!(
            !m.save_due(t0 + SAVE_INTERVAL * 3),
            "saved, unchanged since"
        );
        assert!(!dir.join("counters.tmp").exists());

        // the next start goes on from there, keeping the first date
        let loaded = Lifetime::load(&dir).unwrap().unwrap();
        let mut m2 = Metrics::new(Some(loaded), t0, T + 86_400 * 5);
        assert_eq!(m2.lifetime().since, T);
        m2.lan_hit("extra", 1 << 30);
        assert_eq!(m2.lifetime().lan_bytes, 4 << 30);
        assert_eq!(m2.totals().1, 1 << 30, "since-start counters start at 0");
        assert_eq!(
            m2.saved_line(),
            "saved from the Internet: 4.0 GiB since 2025-12-01 (2 packages); \
             served to peers: 1.0 MiB"
        );
        m2.save(&dir, t0, true).unwrap();
        let again = Lifetime::load(&dir).unwrap().unwrap();
        assert_eq!(
            (again.lan_bytes, again.lan_hits, again.served_bytes),
            (4 << 30, 2, 1 << 20)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hostile_counter_files_are_refused() {
        let dir = scratch("bad");
        for bad in [
            "since 1\nlan_bytes lots\n",
            "since\n",
            "lan_bytes 5\n",
            "since -1\n",
            "since 18446744073709551616\n",
        ] {
            std::fs::write(dir.join(COUNTERS_FILE), bad).unwrap();
            assert!(Lifetime::load(&dir).is_err(), "{bad:?}");
        }
        std::fs::write(dir.join(COUNTERS_FILE), "x".repeat(5000)).unwrap();
        assert!(Lifetime::load(&dir).unwrap_err().contains("too long"));
        // unknown keys from a newer version are fine
        std::fs::write(
            dir.join(COUNTERS_FILE),
            "since 7\nfuture_key 1\nlan_hits 2\n",
        )
        .unwrap();
        let l = Lifetime::load(&dir).unwrap().unwrap();
        assert_eq!((l.since, l.lan_hits), (7, 2));
        // a directory where the file should be is an error, not a panic
        std::fs::remove_file(dir.join(COUNTERS_FILE)).unwrap();
        std::fs::create_dir(dir.join(COUNTERS_FILE)).unwrap();
        assert!(Lifetime::load(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn round_trip_of_the_file_text() {
        let l = Lifetime {
            since: T,
            lan_bytes: u64::MAX,
            lan_hits: 1,
            served_bytes: 2,
        };
        assert_eq!(Lifetime::parse(&l.to_text()), Ok(l));
    }

    #[test]
    fn human_sizes_and_dates() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            ((1 << 20) - 1, "1.0 MiB"),
            (3_435_973_837, "3.2 GiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want, "{n}");
        }
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(T), "2025-12-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(4_102_444_799), "2099-12-31");
        assert_eq!(fixed(2349, 1000, 2), "2.35");
        assert_eq!(fixed(2344, 1000, 2), "2.34");
        assert_eq!(fixed(999_950, 1_000_000, 1), "1.0");
        assert_eq!(fixed(5, 1, 0), "5");
        assert_eq!(fixed(7, 0, 1), "7.0");
        assert_eq!(fixed(40, 1000, 3), "0.040");
        assert_eq!(seconds(2_500), "0.0025");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(60_040_700), "60.0407");
    }
}
