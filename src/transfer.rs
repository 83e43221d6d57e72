//! Verified transfers from peers (SPEC §6): a package that the local sync db lists is fetched
//! from a LAN peer into flocon's own staging dir while being hashed, and handed to pacman only
//! when its size and SHA-256 match the db. A `Transfer` is shared by every local request for
//! the same file. This module owns the staging files and the verification; the daemon owns
//! the sockets and decides what happens next from the `Verdict`s returned here.

use crate::peers::Candidate;
use crate::syncdb::PkgInfo;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Total bytes staged at once. A full staging area means "go upstream", never an error.
pub const MAX_STAGED_BYTES: u64 = 4 << 30;
/// pacman aborts a download that delivers no body byte for 10 s. A request still waiting for
/// its verified copy after this long is answered with a redirect to the same URL, which makes
/// pacman start a new request (and a new 10 s clock) — see docs/DESIGN.md.
pub const REDIRECT_AFTER: Duration = Duration::from_secs(7);
/// pacman (curl) follows at most 10 redirects; we stop well before and go upstream.
pub const MAX_REDIRECT_ROUNDS: u32 = 6;
/// Peers tried for one file before giving up on the LAN.
pub const MAX_PEER_ATTEMPTS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Asking the peers who has it.
    Looking,
    /// Fetching from `candidates.front()`.
    Fetching,
    /// Verified and complete in `staged_path`.
    Ready,
}

pub struct Transfer {
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
    staged: Option<File>,
    hasher: Sha256,
    pub received: u64,
    pub started: Instant,
    pub fetch_started: Option<Instant>,
    pub redirect_rounds: u32,
}

/// Why bytes could not be appended.
#[derive(Debug)]
pub enum AppendError {
    /// The source sent more than the sync db's size.
    TooLong,
    /// Writing the staging file failed (disk full, quota, I/O error).
    Local(io::Error),
}

/// What verification concluded once the source said it was done.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    WrongSize { got: u64 },
    WrongHash,
}

/// In words: ban reasons end up in the log and in `flocon status`.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified => f.write_str("verified"),
            Verdict::WrongSize { got } => write!(f, "sent {got} bytes"),
            Verdict::WrongHash => f.write_str("sent bytes whose SHA-256 is not the sync db's"),
        }
    }
}

impl Transfer {
    pub fn new(
        file: &str,
        repo: &str,
        arch: &str,
        expected: PkgInfo,
        staging: &Path,
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
            staged_path: staging.join(format!("{serial}.{file}")),
            staged: None,
            hasher: Sha256::new(),
            received: 0,
            started: now,
            fetch_started: None,
            redirect_rounds: 0,
        }
    }

    /// Opens the staging file (first source) or keeps it (a later source resumes it).
    pub fn begin_source(
        &mut self,
        instance: u64,
        addr: SocketAddr,
        now: Instant,
    ) -> io::Result<()> {
        if self.staged.is_none() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.staged_path)?;
            self.staged = Some(f);
        }
        self.source = Some((instance, addr));
        if !self.contributors.contains(&instance) {
            self.contributors.push(instance);
        }
        self.fetch_started = Some(now);
        self.phase = Phase::Fetching;
        self.attempts += 1;
        Ok(())
    }

    /// Appends body bytes, hashing them. More bytes than the db's size is the peer's lie;
    /// a write that fails is ours (the file may now hold a partial write, so this copy
    /// cannot go on).
    pub fn append(&mut self, data: &[u8]) -> Result<(), AppendError> {
        if self.received + data.len() as u64 > self.expected.size {
            return Err(AppendError::TooLong);
        }
        let f = self
            .staged
            .as_mut()
            .ok_or(AppendError::Local(io::ErrorKind::NotFound.into()))?;
        f.write_all(data).map_err(AppendError::Local)?;
        self.hasher.update(data);
        self.received += data.len() as u64;
        Ok(())
    }

    /// The source ended cleanly: does what we have match the db?
    pub fn verify(&mut self) -> Verdict {
        if self.received != self.expected.size {
            return Verdict::WrongSize { got: self.received };
        }
        let digest: [u8; 32] = std::mem::replace(&mut self.hasher, Sha256::new())
            .finalize()
            .into();
        self.staged = None;
        match self.expected.sha256 {
            Some(want) if want != digest => Verdict::WrongHash,
            _ => {
                self.phase = Phase::Ready;
                Verdict::Verified
            }
        }
    }

    /// Throws away what was staged (after a failed hash) so the next source starts at 0.
    pub fn reset_staging(&mut self) {
        self.staged = None;
        let _ = std::fs::remove_file(&self.staged_path);
        self.hasher = Sha256::new();
        self.received = 0;
        self.contributors.clear();
    }

    /// Bytes per second from the current source so far.
    pub fn rate(&self, now: Instant) -> f64 {
        match self.fetch_started {
            Some(t) => self.received as f64 / now.duration_since(t).as_secs_f64().max(0.001),
            None => 0.0,
        }
    }

    /// Whether, at the current rate, the copy will be complete within `within`.
    pub fn likely_done_within(&self, now: Instant, within: Duration) -> bool {
        let rate = self.rate(now);
        if rate <= 0.0 {
            return false;
        }
        let left = self.expected.size.saturating_sub(self.received) as f64;
        left / rate <= within.as_secs_f64()
    }

    pub fn remove_staged(&mut self) {
        self.staged = None;
        let _ = std::fs::remove_file(&self.staged_path);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        self.remove_staged();
    }
}

/// Empties the staging dir (left-overs of a crash) and makes sure it exists.
pub fn prepare_staging(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let _ = std::fs::remove_file(e.path());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    fn staging(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("flocon-transfer-{tag}-{}", std::process::id()));
        prepare_staging(&d).unwrap();
        d
    }

    fn addr() -> SocketAddr {
        "127.0.0.2:19432".parse().unwrap()
    }

    #[test]
    fn verified_when_size_and_hash_match() {
        let dir = staging("ok");
        let data = b"hello package".to_vec();
        let mut t = Transfer::new(
            "a.pkg.tar.zst",
            "core",
            "x86_64",
            PkgInfo {
                size: 13,
                sha256: Some(sha(&data)),
            },
            &dir,
            1,
            Instant::now(),
        );
        t.begin_source(7, addr(), Instant::now()).unwrap();
        t.append(&data[..5]).unwrap();
        t.append(&data[5..]).unwrap();
        assert_eq!(t.verify(), Verdict::Verified);
        assert_eq!(std::fs::read(&t.staged_path).unwrap(), data);
        let p = t.staged_path.clone();
        drop(t);
        assert!(!p.exists(), "staged copy removed with the transfer");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_or_short_or_long_is_refused() {
        let dir = staging("bad");
        let good = b"0123456789".to_vec();
        let info = PkgInfo {
            size: 10,
            sha256: Some(sha(&good)),
        };
        let mut t = Transfer::new(
            "b.pkg.tar.zst",
            "core",
            "x86_64",
            info,
            &dir,
            2,
            Instant::now(),
        );
        t.begin_source(1, addr(), Instant::now()).unwrap();
        t.append(b"0123456788").unwrap();
        assert_eq!(t.verify(), Verdict::WrongHash);
        t.reset_staging();
        t.begin_source(2, addr(), Instant::now()).unwrap();
        t.append(b"01234").unwrap();
        assert_eq!(t.verify(), Verdict::WrongSize { got: 5 });
        // ban reasons are words, not enum names
        assert_eq!(Verdict::WrongSize { got: 5 }.to_string(), "sent 5 bytes");
        assert!(!Verdict::WrongHash.to_string().contains("WrongHash"));
        assert!(t.append(b"0123456789").is_err(), "more than the db size");
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
