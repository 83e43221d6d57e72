//! The cache digest: a Bloom filter of the file names a daemon can serve, its strict wire
//! form (`GET /.flocon/digest`, docs/PROTOCOL.md §14), what we know of each peer's digest,
//! and the choice of whom a lookup asks. Pure logic: no sockets, no clocks (time passed in).
//!
//! A lookup asks the peers whose digest may hold the name (at most DIGEST_FANOUT, ranked),
//! plus every peer whose digest we do not hold for the version it announced (an old daemon
//! that publishes none, one whose new digest is still being fetched). When that set is empty
//! no peer holds the file as far as anyone published: a miss decided without a datagram.

use crate::names::{self, FileKind};
use sha2::{Digest as _, Sha256};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

/// "FLDG": first bytes of a digest body.
pub(crate) const DIGEST_MAGIC: [u8; 4] = *b"FLDG";
/// Layout version of the body (not the digest's own version number).
pub(crate) const DIGEST_FORMAT: u8 = 1;
/// magic 4 + format 1 + hashes 1 + log2 of the bit count 1 + zero 1 + version 4 + names 4.
pub(crate) const DIGEST_HEAD_LEN: usize = 16;
/// Smallest filter: 8,192 bits (1 KiB).
pub(crate) const MIN_LOG2_BITS: u8 = 13;
/// Largest filter: 524,288 bits (64 KiB): 32,768 names at 16 bits each; a cache with more
/// still gets a correct filter, with more false positives.
pub(crate) const MAX_LOG2_BITS: u8 = 19;
/// Largest body a peer may send: what a fetch reads at most.
pub(crate) const MAX_DIGEST_LEN: usize = DIGEST_HEAD_LEN + (1 << MAX_LOG2_BITS) / 8;
/// At least this many bits per name (then rounded up to a power of two: 16 to 32).
pub(crate) const BITS_PER_NAME: usize = 16;
/// Bits set per name. With 16 bits per name the false-positive rate is 0.046 %, with 32
/// 0.0001 %: among 250 peers, a miss finds a false "may hold" in one lookup of ten at worst.
pub(crate) const HASHES: u8 = 11;
/// The most peers with a digest that a lookup asks (intenders, then best ranked first).
/// With the INTENT it sends to both groups, a lookup sends at most 8 datagrams.
pub(crate) const DIGEST_FANOUT: usize = 6;
/// A lookup that found nobody decides no sooner than this after its INTENT left: longer
/// than an INTENT takes to reach the other hosts of the segment, so that two hosts asking
/// for one file at once each hear the other's before deciding (docs/DESIGN.md).
pub(crate) const MISS_WAIT: Duration = Duration::from_micros(500);
/// New digest versions: at most DIGEST_BURST within DIGEST_BURST × DIGEST_GAP (one per 30 s
/// on average). Every peer fetches each new version, and during an upgrade every cache
/// changes all the time; a file added now and then is published within a rescan (2 s).
/// Files that came in meanwhile through flocon are found by the INTENTs (`Intents`).
pub(crate) const DIGEST_GAP: Duration = Duration::from_secs(30);
pub(crate) const DIGEST_BURST: usize = 4;
/// How long an INTENT is remembered: longer than a copy of a large package takes.
pub(crate) const INTENT_TTL: Duration = Duration::from_secs(600);
/// INTENTs remembered at once (the oldest go first).
pub(crate) const MAX_INTENTS: usize = 4096;
/// Hosts remembered per file: the first ones to ask for it (the one that fetches it, the
/// first to join it).
pub(crate) const INTENDERS_PER_NAME: usize = 4;
/// Largest `hashes` accepted from a peer (bounds the work per lookup and peer).
const MAX_HASHES: u8 = 16;

/// One Bloom filter and the version it was published as.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    version: u32,
    hashes: u8,
    log2_bits: u8,
    names: u32,
    bits: Vec<u64>,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Digest(v{}, {} names, {} bits, k={})",
            self.version,
            self.names,
            1u64 << self.log2_bits,
            self.hashes
        )
    }
}

/// Why a peer's digest body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigestError {
    TooShort,
    BadMagic,
    BadFormat,
    BadField,
    /// The body's length is not exactly the head plus the filter it announces.
    BadLength,
}

/// The two halves of SHA-256(name) that place a name's bits (double hashing, Kirsch and
/// Mitzenmacher): bit i is (h1 + i × h2) mod m, h2 odd so every step moves.
fn hash_pair(name: &[u8]) -> (u64, u64) {
    let h = Sha256::digest(name);
    let h1 = u64::from_be_bytes(h[0..8].try_into().expect("8 bytes"));
    let h2 = u64::from_be_bytes(h[8..16].try_into().expect("8 bytes")) | 1;
    (h1, h2)
}

impl Digest {
    /// The digest of `names`, published as `version`. Duplicates count once in the sizing
    /// only as far as the caller removed them; a duplicate sets the same bits again.
    pub(crate) fn build<'a>(version: u32, names: impl IntoIterator<Item = &'a str>) -> Digest {
        let names: Vec<&str> = names.into_iter().collect();
        let want = names.len().saturating_mul(BITS_PER_NAME).max(1);
        let mut log2_bits = MIN_LOG2_BITS;
        while log2_bits < MAX_LOG2_BITS && (1usize << log2_bits) < want {
            log2_bits += 1;
        }
        let mut d = Digest {
            version,
            hashes: HASHES,
            log2_bits,
            names: u32::try_from(names.len()).unwrap_or(u32::MAX),
            bits: vec![0; (1usize << log2_bits) / 64],
        };
        for n in names {
            d.insert(n);
        }
        d
    }

    fn positions(&self, (h1, h2): (u64, u64)) -> impl Iterator<Item = usize> + '_ {
        let mask = (1u64 << self.log2_bits) - 1;
        (0..u64::from(self.hashes))
            .map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    fn insert(&mut self, name: &str) {
        let pos: Vec<usize> = self.positions(hash_pair(name.as_bytes())).collect();
        for p in pos {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    /// Whether `name` may be in the set: false means certainly not.
    pub(crate) fn may_hold(&self, name: &str) -> bool {
        self.may_hold_hashed(hash_pair(name.as_bytes()))
    }

    /// `may_hold` of the name whose `hash_pair` this is (one hash for all the peers).
    fn may_hold_hashed(&self, hash: (u64, u64)) -> bool {
        self.positions(hash)
            .all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }

    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    pub(crate) fn names(&self) -> u32 {
        self.names
    }

    /// Bytes of the encoded body.
    pub(crate) fn encoded_len(&self) -> usize {
        DIGEST_HEAD_LEN + self.bits.len() * 8
    }

    /// The body served at `/.flocon/digest` (docs/PROTOCOL.md §14.2).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&DIGEST_MAGIC);
        out.extend_from_slice(&[DIGEST_FORMAT, self.hashes, self.log2_bits, 0]);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.names.to_be_bytes());
        for w in &self.bits {
            // bit p of the filter is bit (p % 8) of byte p / 8
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Strict decoding of a peer's body: exactly one layout, every field in range, the length
    /// exactly what the head announces (so at most MAX_DIGEST_LEN is ever kept).
    pub(crate) fn decode(body: &[u8]) -> Result<Digest, DigestError> {
        if body.len() < DIGEST_HEAD_LEN {
            return Err(DigestError::TooShort);
        }
        if body[0..4] != DIGEST_MAGIC {
            return Err(DigestError::BadMagic);
        }
        if body[4] != DIGEST_FORMAT {
            return Err(DigestError::BadFormat);
        }
        let (hashes, log2_bits) = (body[5], body[6]);
        if !(1..=MAX_HASHES).contains(&hashes)
            || !(MIN_LOG2_BITS..=MAX_LOG2_BITS).contains(&log2_bits)
            || body[7] != 0
        {
            return Err(DigestError::BadField);
        }
        let version = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
        let names = u32::from_be_bytes(body[12..16].try_into().expect("4 bytes"));
        let filter = &body[DIGEST_HEAD_LEN..];
        if filter.len() != (1usize << log2_bits) / 8 {
            return Err(DigestError::BadLength);
        }
        let bits = filter
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(Digest {
            version,
            hashes,
            log2_bits,
            names,
            bits,
        })
    }
}

/// What we know of one peer's digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum PeerDigest {
    /// It never announced one: a daemon of the first protocol (or one that has not yet sent
    /// its DIGEST datagram). Asked in every lookup, as before digests.
    #[default]
    Unknown,
    /// It announced `announced`; we hold `held` (an older one, or none yet). Asked in every
    /// lookup until the fetch brings the announced version.
    Stale {
        announced: u32,
        held: Option<Box<Digest>>,
    },
    /// We hold the version it announced last.
    Fresh(Box<Digest>),
}

impl PeerDigest {
    /// A DIGEST datagram announced `version`. Returns whether a fetch is needed now.
    pub(crate) fn announced(&mut self, version: u32) -> bool {
        match self {
            PeerDigest::Fresh(d) if d.version() == version => false,
            PeerDigest::Stale { announced, .. } if *announced == version => true,
            _ => {
                let held = match std::mem::take(self) {
                    PeerDigest::Fresh(d) => Some(d),
                    PeerDigest::Stale { held, .. } => held,
                    PeerDigest::Unknown => None,
                };
                *self = PeerDigest::Stale {
                    announced: version,
                    held,
                };
                true
            }
        }
    }

    /// A fetch brought `d`. It becomes the peer's digest only if it is the announced version
    /// (a body that is older than the announcement leaves the peer stale: asked as before).
    pub(crate) fn fetched(&mut self, d: Digest) {
        if let PeerDigest::Stale { announced, .. } = self
            && (*announced == d.version() || *announced == 0)
        {
            *self = PeerDigest::Fresh(Box::new(d));
        }
    }

    /// A fetch failed: a peer that never announced a digest goes back to unknown (it may
    /// simply publish none).
    pub(crate) fn not_published(&mut self) {
        if matches!(self, PeerDigest::Stale { announced: 0, .. }) {
            *self = PeerDigest::Unknown;
        }
    }

    /// Whether a lookup must ask this peer for `name`: no usable digest, or one that may
    /// hold it. `Some(false)`: certainly not there; `Some(true)`: its digest says maybe;
    /// `None`: we cannot tell (asked regardless of the fan-out bound).
    pub(crate) fn may_hold(&self, name: &str) -> Option<bool> {
        self.may_hold_hashed(hash_pair(name.as_bytes()))
    }

    fn may_hold_hashed(&self, hash: (u64, u64)) -> Option<bool> {
        match self {
            PeerDigest::Fresh(d) => Some(d.may_hold_hashed(hash)),
            _ => None,
        }
    }

    pub(crate) fn is_fresh(&self) -> bool {
        matches!(self, PeerDigest::Fresh(_))
    }

    /// The version a fetch should bring, if one is needed.
    pub(crate) fn wanted(&self) -> Option<u32> {
        match self {
            PeerDigest::Stale { announced, .. } => Some(*announced),
            _ => None,
        }
    }
}

/// Whom a lookup for `name` asks, from `peers` in rank order (best first), each with
/// whether it sent an INTENT for the name: every peer whose digest we cannot use, then at
/// most DIGEST_FANOUT of the others: those that sent an INTENT, then those whose digest may
/// hold the name.
pub(crate) fn select<'a, T: Copy>(
    name: &str,
    peers: impl IntoIterator<Item = (T, &'a PeerDigest, bool)>,
) -> Vec<T> {
    let mut out = Vec::new();
    let (mut intenders, mut maybes) = (Vec::new(), Vec::new());
    // the name is hashed once, not once per peer (a SHA-256 each, with 250 peers)
    let hash = hash_pair(name.as_bytes());
    for (id, d, intent) in peers {
        match (d.may_hold_hashed(hash), intent) {
            (None, _) => out.push(id),
            (Some(_), true) => intenders.push(id),
            (Some(true), false) => maybes.push(id),
            (Some(false), false) => {}
        }
    }
    out.extend(intenders.into_iter().chain(maybes).take(DIGEST_FANOUT));
    out
}

/// The names this host can serve from its cache dirs: packages and their signatures, by the
/// one file-name rule (what the peer server would serve; a directory entry that is not a
/// regular file costs a false positive at worst). In directory order, a name in two dirs twice.
pub(crate) fn cache_names(dirs: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if names::is_file_name(name.as_bytes())
                && matches!(
                    names::classify(&name),
                    FileKind::Package | FileKind::PackageSig
                )
                && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())
            {
                out.push(name);
            }
        }
    }
    // unsorted, and a name in two dirs twice: a Bloom filter does not mind either (no sort
    // of Strings in the binary for it)
    out
}

/// The cache dirs' modification times: a name added or removed changes its dir's.
pub(crate) fn cache_stamp(dirs: &[PathBuf]) -> Vec<Option<SystemTime>> {
    dirs.iter()
        .map(|d| std::fs::metadata(d).and_then(|m| m.modified()).ok())
        .collect()
}

/// This host's own digest: rebuilt when a cache dir changed, at most once per `gap`; a new
/// version only when the filter changed. Time passed in.
#[derive(Debug)]
pub(crate) struct Published {
    digest: Option<Digest>,
    body: Vec<u8>,
    stamp: Vec<Option<SystemTime>>,
    /// When the last versions were built (at most DIGEST_BURST, within the window).
    built: VecDeque<Instant>,
    gap: Duration,
}

impl Published {
    pub(crate) fn new(gap: Duration) -> Published {
        Published {
            digest: None,
            body: Vec::new(),
            stamp: Vec::new(),
            built: VecDeque::new(),
            gap,
        }
    }

    /// Whether to list the cache dirs again: nothing was built yet, or their `stamp`
    /// changed and fewer than DIGEST_BURST versions were built in the last
    /// DIGEST_BURST × `gap`.
    pub(crate) fn is_due(&self, stamp: &[Option<SystemTime>], now: Instant) -> bool {
        if self.digest.is_none() {
            return true;
        }
        let window = self.gap * DIGEST_BURST as u32;
        let recent = (self.built.iter())
            .filter(|t| now.saturating_duration_since(**t) < window)
            .count();
        stamp != self.stamp && recent < DIGEST_BURST
    }

    /// Builds from `names`; returns the new version when it differs from the last one.
    pub(crate) fn rebuild(
        &mut self,
        names: &[String],
        stamp: Vec<Option<SystemTime>>,
        now: Instant,
    ) -> Option<u32> {
        self.stamp = stamp;
        let next = self.version().wrapping_add(1).max(1);
        let d = Digest::build(next, names.iter().map(String::as_str));
        if let Some(old) = &self.digest
            && old.bits == d.bits
            && old.names == d.names
        {
            return None;
        }
        self.body = d.encode();
        self.digest = Some(d);
        if self.built.len() >= DIGEST_BURST {
            self.built.pop_front();
        }
        self.built.push_back(now);
        Some(next)
    }

    /// The version announced (0: none built yet, nothing announced).
    pub(crate) fn version(&self) -> u32 {
        self.digest.as_ref().map_or(0, Digest::version)
    }

    /// The body served at `/.flocon/digest` (empty before the first build).
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
}

/// The INTENTs heard: which peers said, and when, that they were about to fetch a file.
/// A later lookup for that file asks them first (their copy is on its way, or done), and a
/// lookup in flight learns that another host looks for the same file. Bounded: MAX_INTENTS
/// records, INTENDERS_PER_NAME per file, INTENT_TTL each. Time passed in.
#[derive(Debug, Default)]
pub(crate) struct Intents {
    /// (hash of the name, instance, when), oldest first.
    records: VecDeque<(u64, u64, Instant)>,
}

fn name_key(name: &str) -> u64 {
    hash_pair(name.as_bytes()).0
}

impl Intents {
    /// Peer `instance` sent an INTENT for `name`.
    pub(crate) fn note(&mut self, name: &str, instance: u64, now: Instant) {
        self.expire(now);
        let key = name_key(name);
        let mut same = 0;
        for (k, i, _) in &self.records {
            if *k == key {
                if *i == instance {
                    return;
                }
                same += 1;
            }
        }
        if same >= INTENDERS_PER_NAME {
            return;
        }
        if self.records.len() >= MAX_INTENTS {
            self.records.pop_front();
        }
        self.records.push_back((key, instance, now));
    }

    /// The peers that sent an INTENT for `name` within INTENT_TTL, first first.
    pub(crate) fn intenders(&self, name: &str, now: Instant) -> Vec<u64> {
        let key = name_key(name);
        self.records
            .iter()
            .filter(|(k, _, t)| *k == key && now.saturating_duration_since(*t) < INTENT_TTL)
            .map(|(_, i, _)| *i)
            .collect()
    }

    /// A peer left: its INTENTs go with it.
    pub(crate) fn forget(&mut self, instance: u64) {
        self.records.retain(|(_, i, _)| *i != instance);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((_, _, t)) = self.records.front() {
            if now.saturating_duration_since(*t) < INTENT_TTL {
                break;
            }
            self.records.pop_front();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| format!("{tag}pkg{i}-1.{i}-1-x86_64.pkg.tar.zst"))
            .collect()
    }

    #[test]
    fn holds_every_name_it_was_built_from() {
        for n in [0, 1, 10, 3_000, 40_000] {
            let v = names(n, "");
            let d = Digest::build(7, v.iter().map(String::as_str));
            assert!(v.iter().all(|x| d.may_hold(x)), "{n} names");
            assert_eq!(d.names(), n as u32);
        }
    }

    #[test]
    fn sized_for_its_names_and_bounded() {
        let small = Digest::build(1, std::iter::empty());
        assert_eq!(small.encoded_len(), DIGEST_HEAD_LEN + 1024);
        let v = names(3_000, "");
        let d = Digest::build(1, v.iter().map(String::as_str));
        // 3,000 × 16 bits → 65,536 bits = 8 KiB
        assert_eq!(d.encoded_len(), DIGEST_HEAD_LEN + 8192);
        let v = names(100_000, "");
        let d = Digest::build(1, v.iter().map(String::as_str));
        assert_eq!(d.encoded_len(), MAX_DIGEST_LEN);
    }

    #[test]
    fn false_positives_as_computed() {
        // 3,000 names in 65,536 bits (21.8 per name): computed rate 0.003 %; allow 10×
        let held = names(3_000, "held-");
        let d = Digest::build(1, held.iter().map(String::as_str));
        let probes = names(100_000, "other-");
        let fp = probes.iter().filter(|x| d.may_hold(x)).count();
        assert!(fp <= 30, "{fp} false positives in 100,000");
        // at the worst ratio (exactly 16 bits per name): 0.046 %; allow 2×
        let held = names(4_096, "held-");
        let d = Digest::build(1, held.iter().map(String::as_str));
        assert_eq!(d.encoded_len(), DIGEST_HEAD_LEN + 8192);
        let fp = probes.iter().filter(|x| d.may_hold(x)).count();
        assert!(fp <= 92, "{fp} false positives in 100,000");
    }

    #[test]
    fn encoding_round_trips_and_is_fixed() {
        let d = Digest::build(0xdead_beef, ["a", "zstd-1.5.6-1-x86_64.pkg.tar.zst"]);
        let body = d.encode();
        assert_eq!(
            &body[..16],
            b"FLDG\x01\x0b\x0d\x00\xde\xad\xbe\xef\x00\x00\x00\x02"
        );
        let back = Digest::decode(&body).unwrap();
        assert_eq!(back, d);
        assert!(back.may_hold("a") && back.may_hold("zstd-1.5.6-1-x86_64.pkg.tar.zst"));
        // the bit positions are part of the protocol: SHA-256("a") = ca978112ca1bbdca
        // fac231b3…, so h1 = 0xca978112ca1bbdca, h2 = 0xfac231b39a23dc4d; the first bit is
        // h1 mod 8192 = 0x1dca = 7626: byte 953, bit 2
        assert_ne!(body[DIGEST_HEAD_LEN + 953] & 0x04, 0);
    }

    #[test]
    fn decoding_refuses_every_malformed_body() {
        let good = Digest::build(3, ["x"]).encode();
        assert!(Digest::decode(&good).is_ok());
        assert_eq!(Digest::decode(&good[..15]), Err(DigestError::TooShort));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Digest::decode(&b), Err(DigestError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(Digest::decode(&b), Err(DigestError::BadFormat));
        for (at, v) in [(5, 0), (5, 17), (6, 12), (6, 20), (7, 1)] {
            let mut b = good.clone();
            b[at] = v;
            assert_eq!(
                Digest::decode(&b),
                Err(DigestError::BadField),
                "byte {at} = {v}"
            );
        }
        assert_eq!(
            Digest::decode(&good[..good.len() - 1]),
            Err(DigestError::BadLength)
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Digest::decode(&b), Err(DigestError::BadLength));
        // a head that announces the largest filter with a short body
        let mut b = good[..DIGEST_HEAD_LEN].to_vec();
        b[6] = MAX_LOG2_BITS;
        assert_eq!(Digest::decode(&b), Err(DigestError::BadLength));
        // random bytes never panic
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = Digest::decode(&body);
        }
    }

    #[test]
    fn peer_digest_goes_stale_and_fresh() {
        let mut p = PeerDigest::default();
        assert_eq!(p.may_hold("x"), None);
        assert_eq!(p.wanted(), None);
        assert!(p.announced(5));
        assert_eq!(p.wanted(), Some(5));
        assert!(p.announced(5), "still wanted while not fetched");
        // an older body does not make it fresh
        p.fetched(Digest::build(4, ["x"]));
        assert!(!p.is_fresh());
        p.fetched(Digest::build(5, ["x"]));
        assert!(p.is_fresh());
        assert_eq!(p.may_hold("x"), Some(true));
        assert_eq!(p.may_hold("y"), Some(false));
        assert!(!p.announced(5), "the same version again: nothing to fetch");
        assert!(p.announced(6));
        assert_eq!(p.may_hold("y"), None, "stale: asked again");
        p.not_published();
        assert!(
            matches!(p, PeerDigest::Stale { announced: 6, .. }),
            "announced: stays"
        );
        assert!(matches!(&p, PeerDigest::Stale { held: Some(d), .. } if d.version() == 5));
        p.fetched(Digest::build(6, ["y"]));
        assert_eq!(p.may_hold("y"), Some(true));
    }

    #[test]
    fn selection_asks_few_and_never_skips_a_peer_it_cannot_judge() {
        let has = |v: u32, n: &[&str]| {
            let mut p = PeerDigest::default();
            p.announced(v);
            p.fetched(Digest::build(v, n.iter().copied()));
            p
        };
        let mut peers: Vec<(u32, PeerDigest)> = Vec::new();
        for i in 0..20 {
            peers.push((i, has(1, &["a", "common"])));
        }
        peers.push((20, PeerDigest::Unknown));
        let mut stale = has(1, &["b"]);
        stale.announced(2);
        peers.push((21, stale));
        peers.push((22, has(1, &["b", "common"])));
        let sel = |name: &str, intent: &[u32]| {
            let it = peers.iter().map(|(i, d)| (*i, d, intent.contains(i)));
            select(name, it)
        };
        // a miss: only those we cannot judge
        assert_eq!(sel("nowhere", &[]), vec![20, 21]);
        // a name one peer holds
        assert_eq!(sel("b", &[]), vec![20, 21, 22]);
        // a name everyone holds: the first DIGEST_FANOUT in rank order
        assert_eq!(sel("common", &[]), vec![20, 21, 0, 1, 2, 3, 4, 5]);
        // peers that said they fetch it come first, whatever their digest says
        assert_eq!(sel("common", &[22, 9]), vec![20, 21, 9, 22, 0, 1, 2, 3]);
        assert_eq!(sel("nowhere", &[20, 3]), vec![20, 21, 3]);
    }

    #[test]
    fn intents_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut it = Intents::default();
        it.note("x", 1, t0);
        it.note("x", 1, t0 + Duration::from_secs(1));
        it.note("y", 2, t0);
        for i in 2..10 {
            it.note("x", i, t0 + Duration::from_secs(2));
        }
        assert_eq!(it.intenders("x", t0), vec![1, 2, 3, 4]);
        assert_eq!(it.intenders("y", t0), vec![2]);
        assert_eq!(it.intenders("z", t0), Vec::<u64>::new());
        it.forget(2);
        assert_eq!(it.intenders("x", t0), vec![1, 3, 4]);
        assert_eq!(it.intenders("x", t0 + INTENT_TTL), vec![3, 4]);
        it.note("w", 9, t0 + INTENT_TTL + Duration::from_secs(2));
        assert_eq!(it.len(), 1, "expired records dropped");
        for i in 0..(MAX_INTENTS as u64 + 10) {
            it.note(&format!("n{i}"), 1, t0 + INTENT_TTL * 2);
        }
        assert_eq!(it.len(), MAX_INTENTS);
        assert!(it.intenders("n0", t0 + INTENT_TTL * 2).is_empty());
    }

    #[test]
    fn own_digest_is_rebuilt_when_the_cache_changes_a_few_times_per_window() {
        let t0 = Instant::now();
        let gap = Duration::from_secs(30);
        let mut p = Published::new(gap);
        assert_eq!(p.version(), 0);
        assert!(p.body().is_empty());
        let stamp = |i: u64| vec![Some(SystemTime::UNIX_EPOCH + Duration::from_secs(i))];
        assert!(p.is_due(&stamp(0), t0));
        let mut names = vec!["a-1-1-any.pkg.tar.zst".to_string()];
        assert_eq!(p.rebuild(&names, stamp(0), t0), Some(1));
        assert_eq!(Digest::decode(p.body()).unwrap().version(), 1);
        assert!(!p.is_due(&stamp(0), t0 + gap * 10), "unchanged dirs");
        // same names: rebuilt, no new version, and it does not count
        assert!(p.is_due(&stamp(1), t0));
        assert_eq!(p.rebuild(&names, stamp(1), t0), None);
        assert_eq!(p.version(), 1);
        // changes now and then: published at once, DIGEST_BURST versions in a window
        for i in 2..=DIGEST_BURST as u64 {
            assert!(p.is_due(&stamp(i), t0 + Duration::from_secs(i)));
            names.push(format!("n{i}-1-1-any.pkg.tar.zst"));
            let v = p.rebuild(&names, stamp(i), t0 + Duration::from_secs(i));
            assert_eq!(v, Some(i as u32));
        }
        let later = t0 + Duration::from_secs(10);
        assert!(!p.is_due(&stamp(99), later), "the burst is spent");
        assert!(p.is_due(&stamp(99), t0 + gap * DIGEST_BURST as u32));
        assert!(p.digest().unwrap().may_hold("n2-1-1-any.pkg.tar.zst"));
    }

    #[test]
    fn cache_names_lists_packages_and_signatures_only() {
        let dir = std::env::temp_dir().join(format!("flocon-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub.pkg.tar.zst")).unwrap();
        for n in [
            "a-1-1-any.pkg.tar.zst",
            "a-1-1-any.pkg.tar.zst.sig",
            "b-2-1-x86_64.pkg.tar.xz",
            "c-1-1-any.pkg.tar.zst.part",
            ".hidden-1-1-any.pkg.tar.zst",
            "notes.txt",
            "core.db",
        ] {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        let before = cache_stamp(std::slice::from_ref(&dir));
        let mut got = cache_names(&[dir.clone(), dir.join("missing")]);
        got.sort();
        assert_eq!(
            got,
            vec![
                "a-1-1-any.pkg.tar.zst",
                "a-1-1-any.pkg.tar.zst.sig",
                "b-2-1-x86_64.pkg.tar.xz"
            ]
        );
        assert_eq!(before.len(), 1);
        assert!(before[0].is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
