//! What flocon does about a LAN source that let a request down, in one place: `judge` maps
//! what the source did (`Conduct`) to `Ban | Strike | NextSource`, `Strikes` turns strikes
//! into a short, growing bench, and `pace` says when a copy that is too slow must hand its
//! remainder to the mirror. Pure: no sockets, time passed in. The long bans themselves
//! (proven liars) are kept by peers.rs (`Bans`); see docs/DESIGN.md, "Faults and bans".
//!
//! The rule behind the table: only bytes proven wrong, from a source that alone served them,
//! ban a peer. Everything an honest but unlucky peer can also do (be busy, be gone, stall
//! while suspended, be slow on Wi-Fi) costs it at most a strike, and a strike only keeps it
//! out of the current pacman transaction.

use std::time::{Duration, Instant};

/// What a source did to one request (a package copy or a `.sig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conduct {
    /// The copy's size or SHA-256 did not match the sync db, or the source sent more bytes
    /// than the db's size. `sources`: how many sources wrote into that copy.
    WrongBytes { sources: usize },
    /// Answered 503: it is full, a fair refusal.
    Busy,
    /// Refused the connection or unreachable: nothing is lost waiting for it.
    Unreachable,
    /// Answered 404 or 416 for a file it said it had: its cache changed since the lookup.
    Gone,
    /// Accepted and never answered, a head and then nothing, or the body stopped.
    Stall,
    /// The body arrives below any LAN's rate (see `DRIP_RATE`).
    Drip,
    /// Delivers steadily but cannot finish within pacman's budget: the mirror takes over.
    TooSlow,
    /// Reset the connection or closed it before the last byte.
    Cut,
    /// A head that is not what a flocon peer server sends for a file it has: another status
    /// (a redirect, 500), another length than its lookup answer.
    BadHead,
    /// A `.sig` that is not one OpenPGP signature packet within `sig::MAX_SIG_BYTES`.
    BadSig,
}

/// In words, for the log, the status page and ban reasons.
impl std::fmt::Display for Conduct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conduct::WrongBytes { .. } => "sent bytes that are not the sync db's",
            Conduct::Busy => "was busy (503)",
            Conduct::Unreachable => "could not be reached",
            Conduct::Gone => "no longer had the file",
            Conduct::Stall => "stopped sending",
            Conduct::Drip => "sent too slowly to be useful",
            Conduct::TooSlow => "could not finish in time",
            Conduct::Cut => "cut the connection early",
            Conduct::BadHead => "answered with a wrong status or length",
            Conduct::BadSig => "sent a .sig that is not an OpenPGP signature",
        })
    }
}

/// What happens to the source; the request itself always moves on to the next source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Proven wrong: a long ban (peers.rs `Bans`, by instance and address).
    Ban,
    /// Not proven, but it cost pacman time: a bench (`Strikes`).
    Strike,
    /// Nothing held against it.
    NextSource,
}

/// The one ban policy.
pub(crate) const fn judge(c: Conduct) -> Action {
    match c {
        // a copy mixed from several sources proves nothing about any one of them: it starts
        // again from one source, and only a source proven wrong on its own is banned
        Conduct::WrongBytes { sources } if sources <= 1 => Action::Ban,
        Conduct::WrongBytes { .. } => Action::NextSource,
        Conduct::Stall | Conduct::Drip | Conduct::Cut | Conduct::BadHead | Conduct::BadSig => {
            Action::Strike
        }
        Conduct::Busy | Conduct::Unreachable | Conduct::Gone | Conduct::TooSlow => {
            Action::NextSource
        }
    }
}

/// What a failed fetch (fetch.rs: `Event::Failed`, or the loop's `timed_out` reason) says the
/// source did: refused outright, silent past a deadline, a head that is no HTTP, or a
/// connection cut before the end.
pub(crate) fn conduct_of_failure(why: &str) -> Conduct {
    match why {
        // the loop's time bounds (fetch::timed_out)
        "connect" | "response head" | "stall" => Conduct::Stall,
        w if w.starts_with("connect:") => Conduct::Unreachable,
        w if w.starts_with("response head:") || w.starts_with("unexpected") => Conduct::BadHead,
        _ => Conduct::Cut,
    }
}

/// Below this a body is a drip, not a slow link: 64 KiB/s is ~0.5 Mbit/s, under the worst
/// Wi-Fi a LAN peer sits on, and far above the 1 byte/s that keeps a naive client waiting.
pub(crate) const DRIP_RATE: u64 = 64 * 1024;

/// First bench: long enough to keep a stalling peer out of the rest of a pacman transaction
/// (so it costs pacman one wait, not one per file), short enough that an honest peer that
/// stalled once (suspended, roaming) is back for the next one.
pub(crate) const BENCH_FIRST: Duration = Duration::from_secs(5 * 60);
/// A strike less than this after the previous bench ended counts with it (and doubles the
/// bench); later, the peer starts again from BENCH_FIRST.
pub(crate) const STRIKE_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Longest bench: a peer that keeps striking is broken or hostile, but nothing is proven.
pub(crate) const BENCH_MAX: Duration = Duration::from_secs(60 * 60);
/// Records kept. Strikes come from our own requests (one per failed fetch at most), so a
/// LAN never reaches this; the table must still be bounded.
pub(crate) const MAX_STRIKE_RECORDS: usize = 1024;
/// Reasons (of strikes and bans) are shown in logs and `flocon status`; one line is enough.
pub(crate) const MAX_REASON_LEN: usize = 200;

/// One source's strikes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrikeRecord {
    /// Strikes in the current run (each less than STRIKE_WINDOW after the previous bench).
    pub count: u32,
    pub last: Instant,
    /// Benched until then.
    pub until: Instant,
    pub reason: String,
}

/// Strikes and benches per source key (the daemon uses the peer's address: a restarted
/// daemon gets a new instance id on the same host).
#[derive(Debug)]
pub(crate) struct Strikes<K> {
    records: Vec<(K, StrikeRecord)>,
}

impl<K> Default for Strikes<K> {
    fn default() -> Self {
        Strikes {
            records: Vec::new(),
        }
    }
}

impl<K: Copy + Eq> Strikes<K> {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Records a strike and returns how long `key` is benched from `now`. A strike while
    /// benched (the other fetches from the same stalled peer failing) adds nothing: it is
    /// one bad state of that peer, not a repeat.
    pub(crate) fn strike(&mut self, key: K, now: Instant, reason: &str) -> Duration {
        let reason = one_line(reason);
        if let Some((_, r)) = self.records.iter_mut().find(|(k, _)| *k == key) {
            if now < r.until {
                return r.until - now;
            }
            r.count = if now.saturating_duration_since(r.until) < STRIKE_WINDOW {
                r.count.saturating_add(1)
            } else {
                1
            };
            let length = bench_length(r.count);
            r.last = now;
            r.until = now + length;
            r.reason = reason;
            return length;
        }
        if self.records.len() >= MAX_STRIKE_RECORDS {
            self.prune(now);
        }
        if self.records.len() >= MAX_STRIKE_RECORDS {
            // the record closest to its end is the one whose loss matters least
            if let Some(i) = (0..self.records.len()).min_by_key(|&i| self.records[i].1.until) {
                self.records.swap_remove(i);
            }
        }
        let length = bench_length(1);
        self.records.push((
            key,
            StrikeRecord {
                count: 1,
                last: now,
                until: now + length,
                reason,
            },
        ));
        length
    }

    pub(crate) fn is_benched(&self, key: K, now: Instant) -> bool {
        self.get(key).is_some_and(|r| now < r.until)
    }

    pub(crate) fn get(&self, key: K) -> Option<&StrikeRecord> {
        self.records.iter().find(|(k, _)| *k == key).map(|(_, r)| r)
    }

    /// The benches in force: key, time left, reason (for status output).
    pub(crate) fn iter(&self, now: Instant) -> impl Iterator<Item = (K, Duration, &str)> + '_ {
        self.records
            .iter()
            .filter(move |(_, r)| now < r.until)
            .map(move |(k, r)| (*k, r.until - now, r.reason.as_str()))
    }

    /// Forgets records whose bench is over and whose window has passed.
    pub(crate) fn prune(&mut self, now: Instant) {
        self.records
            .retain(|(_, r)| now.saturating_duration_since(r.until) < STRIKE_WINDOW);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn bench_length(count: u32) -> Duration {
    // 2^4 × 5 min already exceeds the cap; the bound keeps the shift small
    let doublings = count.saturating_sub(1).min(4);
    (BENCH_FIRST * (1u32 << doublings)).min(BENCH_MAX)
}

/// A reason as logged and shown: at most MAX_REASON_LEN bytes, control characters dropped.
pub(crate) fn one_line(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].chars().filter(|c| !c.is_control()).collect()
}

/// What a copy in progress should do, from its measured rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Keep going from this source.
    Keep,
    /// Too little to judge yet (the first bytes of a connection are not its rate).
    Measuring,
    /// Below `DRIP_RATE`: a strike, and the next source resumes.
    Drip,
    /// Cannot finish in the time left: the mirror resumes from the staged bytes.
    TooSlow,
}

/// How long a source is measured before its rate is trusted, and the longest silence that is
/// not yet a stall: TCP's slow start is over in milliseconds on a LAN, but a loaded peer (a
/// Raspberry Pi writing to its SD card) can pause for a second or two without being broken.
/// Well inside pacman's 10 s, and the mirror still has time to send something.
pub(crate) const PACE_MEASURE: Duration = Duration::from_secs(3);
/// The rate must finish the copy with this much of the remaining time to spare: rates
/// wobble, and the client still has to be handed the file.
const PACE_MARGIN: f64 = 1.25;

/// Decides from `got` bytes in `over` (the current source's recent window), with `left`
/// bytes to go and `time_left` before pacman's redirect budget runs out.
pub(crate) fn pace(got: u64, over: Duration, left: u64, time_left: Duration) -> Pace {
    if over < PACE_MEASURE {
        return Pace::Measuring;
    }
    let rate = got as f64 / over.as_secs_f64();
    if rate < DRIP_RATE as f64 {
        return Pace::Drip;
    }
    if left as f64 * PACE_MARGIN > rate * time_left.as_secs_f64() {
        return Pace::TooSlow;
    }
    Pace::Keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_ban_table() {
        use Action::*;
        use Conduct::*;
        let table = [
            // wrong bytes from a single source: proven
            (WrongBytes { sources: 1 }, Ban),
            (WrongBytes { sources: 0 }, Ban),
            // a copy assembled from several sources: no one is proven wrong by it
            (WrongBytes { sources: 2 }, NextSource),
            (WrongBytes { sources: 5 }, NextSource),
            // an honest peer can be full, restarting, or have cleaned its cache
            (Busy, NextSource),
            (Unreachable, NextSource),
            (Gone, NextSource),
            (TooSlow, NextSource),
            // it cost pacman time, nothing proven
            (Stall, Strike),
            (Drip, Strike),
            (Cut, Strike),
            (BadHead, Strike),
            (BadSig, Strike),
        ];
        for (c, want) in table {
            assert_eq!(judge(c), want, "{c:?}");
        }
    }

    #[test]
    fn failed_fetches() {
        let table = [
            ("connect", Conduct::Stall),
            ("response head", Conduct::Stall),
            ("stall", Conduct::Stall),
            (
                "connect: Connection refused (os error 111)",
                Conduct::Unreachable,
            ),
            ("response head: bad status line", Conduct::BadHead),
            ("unexpected 101 Switching Protocols", Conduct::BadHead),
            ("connection closed without a response", Conduct::Cut),
            (
                "read: Connection reset by peer (os error 104)",
                Conduct::Cut,
            ),
            ("truncated chunked body: connection closed", Conduct::Cut),
        ];
        for (why, want) in table {
            assert_eq!(conduct_of_failure(why), want, "{why}");
        }
    }

    #[test]
    fn strikes_bench_short_then_longer_and_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Strikes::new();
        assert!(!s.is_benched(1u8, t0));
        assert_eq!(s.strike(1u8, t0, "stalled"), BENCH_FIRST);
        assert!(s.is_benched(1, t0 + BENCH_FIRST - secs(1)));
        assert!(!s.is_benched(1, t0 + BENCH_FIRST));
        assert!(!s.is_benched(2, t0), "only the striking source");
        // parallel fetches from the same stalled peer: one strike
        assert_eq!(s.strike(1, t0 + secs(10), "again"), BENCH_FIRST - secs(10));
        assert_eq!(s.get(1).unwrap().count, 1);
        // strikes within the window double the bench, up to the cap
        let mut t = t0 + BENCH_FIRST;
        for want in [2 * BENCH_FIRST, 4 * BENCH_FIRST, 8 * BENCH_FIRST, BENCH_MAX] {
            assert!(want <= BENCH_MAX);
            assert_eq!(s.strike(1, t, "stall"), want);
            t += want;
        }
        assert_eq!(s.strike(1, t, "stall"), BENCH_MAX);
        // a strike long after the last bench starts again from the first bench
        t += BENCH_MAX + STRIKE_WINDOW;
        assert_eq!(s.strike(1, t, "stall"), BENCH_FIRST);
        assert_eq!(s.get(1).unwrap().count, 1);
        let active: Vec<_> = s.iter(t).collect();
        assert_eq!(active, vec![(1, BENCH_FIRST, "stall")]);
    }

    #[test]
    fn strikes_are_bounded_and_pruned() {
        let t0 = Instant::now();
        let mut s = Strikes::new();
        for k in 0..MAX_STRIKE_RECORDS as u32 + 50 {
            s.strike(k, t0 + Duration::from_millis(k as u64), "x\ny");
            assert!(s.len() <= MAX_STRIKE_RECORDS);
        }
        // the newest is kept, the oldest went first
        let newest = MAX_STRIKE_RECORDS as u32 + 49;
        assert!(s.is_benched(newest, t0 + secs(2)));
        assert!(s.get(0).is_none());
        assert_eq!(s.get(newest).unwrap().reason, "xy");
        s.prune(t0 + BENCH_MAX + STRIKE_WINDOW + secs(10));
        assert!(s.is_empty());
    }

    #[test]
    fn pace_decisions() {
        let mb = 1_000_000u64;
        // too early to say
        assert_eq!(
            pace(0, Duration::from_millis(500), 150 * mb, secs(40)),
            Pace::Measuring
        );
        // 1 byte/s, 1 KB/s: drips
        assert_eq!(pace(3, secs(3), 150 * mb, secs(40)), Pace::Drip);
        assert_eq!(pace(3_000, secs(3), mb, secs(40)), Pace::Drip);
        // ~2.3 MB/s (20 Mbit/s) for 150 MB with 40 s left: cannot finish
        assert_eq!(pace(7 * mb, secs(3), 150 * mb, secs(40)), Pace::TooSlow);
        // the same rate for 50 MB: fine
        assert_eq!(pace(7 * mb, secs(3), 50 * mb, secs(40)), Pace::Keep);
        // 100 MB/s on a gigabit LAN
        assert_eq!(pace(300 * mb, secs(3), 150 * mb, secs(40)), Pace::Keep);
        // just at the margin
        assert_eq!(pace(3 * mb, secs(3), 32 * mb, secs(40)), Pace::Keep);
        assert_eq!(pace(3 * mb, secs(3), 33 * mb, secs(40)), Pace::TooSlow);
        // nothing left: always fine once measured
        assert_eq!(pace(DRIP_RATE * 4, secs(3), 0, Duration::ZERO), Pace::Keep);
    }
}
