//! Verified transfers from peers: a package that the local sync db lists is fetched from a
//! LAN peer into flocon's own staging dir while being hashed, and handed to pacman only when
//! its size and SHA-256 match the db (docs/DESIGN.md, "Verified transfers"). A `Transfer` is
//! shared by every local request for the same file. This module keeps a copy's record and
//! the checks that need no disk (the size); the disk work and the hash run on the stager
//! thread (stager.rs), whose verdict comes back later as a `stager::Report` for `settle`.
//! The daemon owns the sockets and decides what happens next from the `Verdict`s.

use crate::chunk::Chunk;
use crate::peers::Candidate;
use crate::stager::{Growth, Outcome, StageHandle};
use crate::syncdb::PkgInfo;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Total bytes staged at once. A full staging area means "go upstream", never an error.
pub(crate) const MAX_STAGED_BYTES: u64 = 4 << 30;
/// pacman aborts a download that delivers no body byte for 10 s. A request still waiting for
/// its verified copy after this long is answered with a redirect to the same URL, which makes
/// pacman start a new request (and a new 10 s clock) — see docs/DESIGN.md.
pub(crate) const REDIRECT_AFTER: Duration = Duration::from_secs(7);
/// pacman (curl) follows at most 10 redirects; we stop well before and go upstream.
pub(crate) const MAX_REDIRECT_ROUNDS: u32 = 6;
/// Peers tried for one file before giving up on the LAN.
pub(crate) const MAX_PEER_ATTEMPTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asking the peers who has it.
    Looking,
    /// Fetching from `candidates.front()`.
    Fetching,
    /// Every byte arrived and is queued for the stager; its verdict is pending.
    Verifying,
    /// Verified and complete: `open_copy` hands it out.
    Ready,
}

pub(crate) struct Transfer {
    pub file: String,
    pub repo: String,
    pub arch: String,
    pub expected: PkgInfo,
    pub phase: Phase,
    pub lookup: Option<u32>,
    pub candidates: VecDeque<(Candidate, SocketAddr)>,
    pub attempts: usize,
    /// Peers whose bytes are in the staging file (banned together if the hash fails).
    pub contributors: Vec<u64>,
    pub source: Option<(u64, SocketAddr)>,
    pub staged_path: PathBuf,
    stage: StageHandle,
    /// The stager's id for the bytes staged now (a new one after each reset).
    stage_id: u64,
    /// The staging file was asked for (first source).
    opened: bool,
    /// The verified copy, open for reading, shared with the connections serving it.
    copy: Option<Arc<File>>,
    /// How far the staging file is written, for peers sent it while it grows.
    growth: Arc<Growth>,
    pub received: u64,
    pub started: Instant,
    pub fetch_started: Option<Instant>,
    pub redirect_rounds: u32,
}

/// Why bytes could not be appended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The source sent more than the sync db's size.
    TooLong,
}

/// What verification concluded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Verified,
    WrongSize {
        got: u64,
    },
    WrongHash,
    /// Our staging file could not be opened or written (disk full, quota, I/O error): not
    /// the peer's fault; this copy cannot go on.
    Local(String),
}

/// In words: ban reasons end up in the log and in `flocon status`.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified => f.write_str("verified"),
            Verdict::WrongSize { got } => write!(f, "sent {got} bytes"),
            Verdict::WrongHash => f.write_str("sent bytes whose SHA-256 is not the sync db's"),
            Verdict::Local(e) => write!(f, "could not be staged here: {e}"),
        }
    }
}

impl Transfer {
    pub(crate) fn new(
        file: &str,
        repo: &str,
        arch: &str,
        expected: PkgInfo,
        stage: &StageHandle,
        serial: u64,
        now: Instant,
    ) -> Self {
        Transfer {
            file: file.to_string(),
            repo: repo.to_string(),
            arch: arch.to_string(),
            expected,
            phase: Phase::Looking,
            lookup: None,
            candidates: VecDeque::new(),
            attempts: 0,
            contributors: Vec::new(),
            source: None,
            staged_path: stage.dir().join(format!("{serial}.{file}")),
            stage: stage.clone(),
            stage_id: stage.new_id(),
            opened: false,
            copy: None,
            growth: Growth::new(),
            received: 0,
            started: now,
            fetch_started: None,
            redirect_rounds: 0,
        }
    }

    /// Starts a source: the first one has the staging file created (on the stager; a
    /// failure arrives as `Verdict::Local`), a later one resumes it.
    pub(crate) fn begin_source(&mut self, instance: u64, addr: SocketAddr, now: Instant) {
        if !self.opened {
            self.stage
                .open(self.stage_id, self.staged_path.clone(), self.growth.clone());
            self.opened = true;
        }
        self.source = Some((instance, addr));
        if !self.contributors.contains(&instance) {
            self.contributors.push(instance);
        }
        self.fetch_started = Some(now);
        self.phase = Phase::Fetching;
        self.attempts += 1;
    }

    /// Queues body bytes for writing and hashing. More bytes than the db's size is the
    /// peer's lie, found here at once.
    pub(crate) fn append(&mut self, chunk: Chunk) -> Result<(), AppendError> {
        if self.received + chunk.len() as u64 > self.expected.size {
            return Err(AppendError::TooLong);
        }
        self.received += chunk.len() as u64;
        self.stage.write(self.stage_id, chunk);
        Ok(())
    }

    /// The source ended cleanly. A wrong size is known at once; otherwise the stager checks
    /// the hash and its report goes to `settle` (`Phase::Verifying` until then).
    pub(crate) fn finish(&mut self) -> Result<(), Verdict> {
        if self.received != self.expected.size {
            return Err(Verdict::WrongSize { got: self.received });
        }
        self.stage.verify(self.stage_id, self.expected.sha256);
        self.phase = Phase::Verifying;
        Ok(())
    }

    /// The stager id of the bytes staged now: a `Report` with another id is stale.
    pub(crate) fn stage_id(&self) -> u64 {
        self.stage_id
    }

    /// Takes the stager's final report for `stage_id()`.
    pub(crate) fn settle(&mut self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Verified(f) => {
                self.copy = Some(Arc::new(f));
                self.phase = Phase::Ready;
                Verdict::Verified
            }
            Outcome::WrongHash => Verdict::WrongHash,
            Outcome::Local(e) => Verdict::Local(e.to_string()),
        }
    }

    /// The verified copy for one client: no path lookup, valid after the name is gone.
    /// Shared: read it at explicit offsets (`sendfile` with an offset, as
    /// `Conn::answer_file` does). None before `Phase::Ready`.
    pub(crate) fn open_copy(&self) -> Option<Arc<File>> {
        self.copy.clone()
    }

    /// The staging file's progress, for the peer server (a new one after each reset).
    pub(crate) fn growth(&self) -> Arc<Growth> {
        self.growth.clone()
    }

    /// Throws away what was staged (after a failed hash) so the next source starts at 0.
    pub(crate) fn reset_staging(&mut self) {
        self.remove_staged();
        self.growth = Growth::new();
        self.stage_id = self.stage.new_id();
        self.received = 0;
        self.contributors.clear();
        self.source = None;
    }

    /// Bytes per second from the current source so far.
    pub(crate) fn rate(&self, now: Instant) -> f64 {
        match self.fetch_started {
            Some(t) => self.received as f64 / now.duration_since(t).as_secs_f64().max(0.001),
            None => 0.0,
        }
    }

    /// Closes and unlinks the staged copy, on the stager thread. Requests already handed
    /// the copy keep their own handles.
    pub(crate) fn remove_staged(&mut self) {
        // peers being sent it are cut (a verified copy stays whole)
        self.growth.fail();
        if self.opened || self.copy.is_some() {
            self.stage.discard(
                self.stage_id,
                self.staged_path.clone(),
                self.copy.take(),
                self.growth.file(),
            );
            self.opened = false;
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.remove_staged();
    }
}

/// Empties the staging dir (left-overs of a crash) and makes sure it exists.
pub(crate) fn prepare_staging(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stager::{Report, Stager, counting_wake};
    use sha2::{Digest, Sha256};

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn staging(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flocon-transfer-{tag}-{}", std::process::id()));
        prepare_staging(&d).unwrap();
        d
    }

    fn stager(dir: &Path) -> Stager {
        Stager::with_wake(dir, counting_wake().0).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.2:19432".parse().unwrap()
    }

    /// The next final report (the thread answers within a few ms; 10 s means it is broken).
    fn report(s: &mut Stager) -> Report {
        let t0 = Instant::now();
        loop {
            if let Some(r) = s.reports().pop() {
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no report from the stager"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn gone(p: &Path) -> bool {
        let t0 = Instant::now();
        while p.exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        !p.exists()
    }

    fn transfer(s: &Stager, name: &str, data: &[u8], serial: u64) -> Transfer {
        let info = PkgInfo {
            size: data.len() as u64,
            sha256: Some(sha(data)),
        };
        Transfer::new(
            name,
            "core",
            "x86_64",
            info,
            &s.handle(),
            serial,
            Instant::now(),
        )
    }

    #[test]
    fn verified_when_size_and_hash_match() {
        let dir = staging("ok");
        let mut s = stager(&dir);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 247) as u8).collect();
        let mut t = transfer(&s, "a.pkg.tar.zst", &data, 1);
        t.begin_source(7, addr(), Instant::now());
        for piece in data.chunks(crate::chunk::CHUNK_SIZE - 5) {
            t.append(Chunk::copy_of(piece)).unwrap();
        }
        assert_eq!(t.finish(), Ok(()));
        assert_eq!(t.phase, Phase::Verifying);
        let r = report(&mut s);
        assert_eq!(r.id, t.stage_id());
        assert_eq!(t.settle(r.outcome), Verdict::Verified);
        assert_eq!(t.phase, Phase::Ready);
        let mut got = Vec::new();
        let copy = t.open_copy().unwrap();
        let mut f = &*copy;
        io::Seek::rewind(&mut f).unwrap();
        io::Read::read_to_end(&mut f, &mut got).unwrap();
        assert!(got == data, "the staged copy holds the bytes");
        let p = t.staged_path.clone();
        drop(t);
        assert!(gone(&p), "staged copy removed with the transfer");
        // a handle given out keeps the bytes after the name is gone
        let mut again = Vec::new();
        io::Seek::rewind(&mut f).unwrap();
        io::Read::read_to_end(&mut f, &mut again).unwrap();
        assert_eq!(again.len(), data.len());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_or_short_or_long_is_refused() {
        let dir = staging("bad");
        let mut s = stager(&dir);
        let good = b"0123456789".to_vec();
        let mut t = transfer(&s, "b.pkg.tar.zst", &good, 2);
        t.begin_source(1, addr(), Instant::now());
        t.append(Chunk::copy_of(b"0123456788")).unwrap();
        assert_eq!(t.finish(), Ok(()));
        let r = report(&mut s);
        assert_eq!(t.settle(r.outcome), Verdict::WrongHash);
        let old = t.stage_id();
        t.reset_staging();
        assert_ne!(
            t.stage_id(),
            old,
            "a late report about the old bytes is told apart"
        );
        t.begin_source(2, addr(), Instant::now());
        t.append(Chunk::copy_of(b"01234")).unwrap();
        assert_eq!(t.finish(), Err(Verdict::WrongSize { got: 5 }));
        assert_eq!(
            t.append(Chunk::copy_of(b"0123456789")),
            Err(AppendError::TooLong),
            "more than the db size"
        );
        // the second attempt, right this time, from the start of a fresh file
        t.reset_staging();
        t.begin_source(3, addr(), Instant::now());
        t.append(Chunk::copy_of(&good)).unwrap();
        assert_eq!(t.finish(), Ok(()));
        let r = report(&mut s);
        assert_eq!(r.id, t.stage_id());
        assert_eq!(t.settle(r.outcome), Verdict::Verified);
        assert!(s.reports().is_empty(), "one report per staged copy");
        drop(t);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn verdicts_read_as_words() {
        // ban reasons are words, not enum names
        assert_eq!(Verdict::WrongSize { got: 5 }.to_string(), "sent 5 bytes");
        assert_eq!(
            Verdict::WrongHash.to_string(),
            "sent bytes whose SHA-256 is not the sync db's"
        );
        assert!(
            Verdict::Local("disk full".into())
                .to_string()
                .ends_with("disk full")
        );
    }

    #[test]
    fn a_staging_file_that_cannot_be_created_is_a_local_error() {
        let dir = staging("local");
        let s = stager(&dir.join("missing"));
        let mut s = s;
        let mut t = transfer(&s, "c.pkg.tar.zst", b"abc", 3);
        t.begin_source(1, addr(), Instant::now());
        t.append(Chunk::copy_of(b"abc")).unwrap();
        assert_eq!(t.finish(), Ok(()));
        let r = report(&mut s);
        assert!(matches!(t.settle(r.outcome), Verdict::Local(_)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            s.reports().is_empty(),
            "the failure is reported once, not again at verify"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn prepare_staging_removes_leftovers() {
        let dir = staging("left");
        std::fs::write(dir.join("9.x.pkg.tar.zst"), b"junk").unwrap();
        prepare_staging(&dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
