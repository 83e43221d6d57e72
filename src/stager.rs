//! The helper thread that does a peer copy's disk work and hashing, so the loop never waits
//! for a disk (an SD card under dirty-page throttling stalls a `write` for seconds) or spends
//! its turn in SHA-256 (a Pi has no SHA instructions). The loop sends jobs in order — open a
//! staging file, write a chunk, verify, discard — and the thread answers through a channel
//! and the mio `Waker`, like dbload.rs. Each staged copy gets exactly one final report:
//! `Verified` (with the open file, ready to hand out), `WrongHash`, or `Local` (our disk
//! failed: not the peer's fault).
//!
//! Bytes queued and not yet written are bounded (`QUEUE_BYTES`): the loop reads a peer's
//! socket only while there is room (`StageHandle::room`), so a slow disk slows the copy
//! instead of filling memory. When the loop found no room, the thread wakes it once the
//! queue has drained to half (`Stager::take_room_freed`).

use crate::chunk::Chunk;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(test)]
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// Body bytes queued for the thread and not yet written, over all copies: 2 MiB keeps a
/// disk busy through a hiccup of the network and bounds memory on a Pi.
pub(crate) const QUEUE_BYTES: usize = 2 << 20;
/// How often the thread looks for discarded copies that no connection sends from any more.
const LINGER_CHECK: Duration = Duration::from_secs(1);

/// How far a staged copy is written, shared by the stager thread (which writes it), the
/// transfer (which owns it) and the peer connections that send it while it grows
/// (docs/DESIGN.md, "One download per LAN").
#[derive(Debug, Default)]
pub(crate) struct Growth {
    /// A handle on the staging file, set by the thread once it is created.
    file: OnceLock<Arc<File>>,
    /// Bytes written to it so far (the file is written in order, without holes).
    written: AtomicU64,
    /// GROWING, WHOLE (verified) or FAILED.
    state: AtomicU8,
    /// A connection ran out of bytes: the next write (or the failure) wakes the loop.
    want_wake: AtomicBool,
}

const GROWING: u8 = 0;
const WHOLE: u8 = 1;
const FAILED: u8 = 2;

impl Growth {
    pub(crate) fn new() -> Arc<Growth> {
        Arc::new(Growth::default())
    }

    pub(crate) fn file(&self) -> Option<Arc<File>> {
        self.file.get().cloned()
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// The copy failed or was thrown away before it was whole: what it sent is worth
    /// nothing more, a connection sending it is cut.
    pub(crate) fn failed(&self) -> bool {
        self.state.load(Ordering::Acquire) == FAILED
    }

    pub(crate) fn fail(&self) {
        let _ = self
            .state
            .compare_exchange(GROWING, FAILED, Ordering::AcqRel, Ordering::Acquire);
    }

    fn whole(&self) {
        self.state.store(WHOLE, Ordering::Release);
    }

    /// A connection waits for more: the thread wakes the loop at the next write.
    pub(crate) fn want_wake(&self) {
        self.want_wake.store(true, Ordering::Release);
    }

    /// Tests: as the stager thread does.
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, file: Option<File>, written: u64, failed: bool) {
        if let Some(f) = file {
            let _ = self.file.set(Arc::new(f));
        }
        self.written.store(written, Ordering::Release);
        if failed {
            self.fail();
        }
    }
}

enum Job {
    Open {
        id: u64,
        path: PathBuf,
        growth: Arc<Growth>,
    },
    Write {
        id: u64,
        chunk: Chunk,
    },
    Verify {
        id: u64,
        sha256: Option<[u8; 32]>,
    },
    /// Close (if open) and unlink: a copy that failed, was reset, or is no longer needed.
    /// `file`: the verified copy, kept here until no connection serves it any more, then
    /// closed here (the last close of a big unlinked file frees its pages, which takes a
    /// while: never on the loop).
    Discard {
        id: u64,
        path: PathBuf,
        file: Option<Arc<File>>,
        /// The handle peers were sent the growing copy through: closed here too.
        growing: Option<Arc<File>>,
    },
    /// Tests: the thread waits here until told, as behind a slow disk.
    #[cfg(test)]
    Hold(Receiver<()>),
}

/// The final word on one staged copy.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every byte written and the SHA-256 matches: the file, open for reading.
    Verified(File),
    WrongHash,
    /// Opening or writing the staging file failed.
    Local(io::Error),
}

#[derive(Debug)]
pub(crate) struct Report {
    /// `StageHandle::new_id` of the copy.
    pub id: u64,
    pub outcome: Outcome,
}

struct Shared {
    queued: AtomicUsize,
    want_room: AtomicBool,
    room_freed: AtomicBool,
    /// A growing copy that a connection waited for got bytes (or failed).
    grown: AtomicBool,
    next_id: AtomicU64,
    dir: PathBuf,
    waker: Box<dyn Fn() + Send + Sync>,
}

/// What a transfer holds to send jobs (cheap to clone; loop thread only).
#[derive(Clone)]
pub(crate) struct StageHandle {
    jobs: Sender<Job>,
    shared: Arc<Shared>,
}

/// The loop's end: reports and the thread.
pub(crate) struct Stager {
    handle: StageHandle,
    reports: Receiver<Report>,
}

impl Stager {
    /// Starts the thread. `dir` is the staging directory (already prepared).
    pub(crate) fn new(dir: &Path, waker: Arc<mio::Waker>) -> io::Result<Self> {
        Stager::with_wake(
            dir,
            Box::new(move || {
                let _ = waker.wake();
            }),
        )
    }

    /// As `new`, with any wake-up function (tests).
    pub(crate) fn with_wake(dir: &Path, wake: Box<dyn Fn() + Send + Sync>) -> io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (done, reports) = mpsc::channel::<Report>();
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            want_room: AtomicBool::new(false),
            room_freed: AtomicBool::new(false),
            grown: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            dir: dir.to_path_buf(),
            waker: wake,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("flocon-stage".into())
            .spawn(move || run(rx, done, &thread_shared))?;
        Ok(Stager {
            handle: StageHandle { jobs, shared },
            reports,
        })
    }

    pub(crate) fn handle(&self) -> StageHandle {
        self.handle.clone()
    }

    /// Final reports that arrived since the last call.
    pub(crate) fn reports(&mut self) -> Vec<Report> {
        self.reports.try_iter().collect()
    }

    /// True once after the queue drained while the loop waited for room: copies paused for
    /// the disk may read again.
    pub(crate) fn take_room_freed(&self) -> bool {
        self.handle.shared.room_freed.swap(false, Ordering::AcqRel)
    }

    /// True once after a growing copy that a connection waited for got bytes or failed:
    /// the connections waiting (`Conn::starved`) may send again.
    pub(crate) fn take_grown(&self) -> bool {
        self.handle.shared.grown.swap(false, Ordering::AcqRel)
    }
}

impl StageHandle {
    /// The staging directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// A fresh id for a staged copy (a copy that is reset gets a new one, so a late report
    /// about the old bytes cannot be taken for the new ones).
    pub(crate) fn new_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Body bytes that may be queued now. When there are none, the thread wakes the loop
    /// (`Stager::take_room_freed`) once the queue has drained to half.
    pub(crate) fn room(&self) -> usize {
        let room = QUEUE_BYTES.saturating_sub(self.shared.queued.load(Ordering::Acquire));
        if room == 0 {
            self.shared.want_room.store(true, Ordering::Release);
            // drained meanwhile? then nobody would wake us
            let queued = self.shared.queued.load(Ordering::Acquire);
            if queued <= QUEUE_BYTES / 2 {
                self.shared.want_room.store(false, Ordering::Release);
                return QUEUE_BYTES - queued;
            }
        }
        room
    }

    pub(crate) fn open(&self, id: u64, path: PathBuf, growth: Arc<Growth>) {
        let _ = self.jobs.send(Job::Open { id, path, growth });
    }

    /// Queues a chunk (the caller stays within `room`; a bigger total only delays the
    /// backpressure, it loses nothing).
    pub(crate) fn write(&self, id: u64, chunk: Chunk) {
        self.shared.queued.fetch_add(chunk.len(), Ordering::AcqRel);
        let _ = self.jobs.send(Job::Write { id, chunk });
    }

    pub(crate) fn verify(&self, id: u64, sha256: Option<[u8; 32]>) {
        let _ = self.jobs.send(Job::Verify { id, sha256 });
    }

    pub(crate) fn discard(
        &self,
        id: u64,
        path: PathBuf,
        file: Option<Arc<File>>,
        growing: Option<Arc<File>>,
    ) {
        let _ = self.jobs.send(Job::Discard {
            id,
            path,
            file,
            growing,
        });
    }

    /// Tests: the thread stops at this point of the queue until the sender says go.
    #[cfg(test)]
    fn hold(&self) -> Sender<()> {
        let (go, wait) = mpsc::channel();
        let _ = self.jobs.send(Job::Hold(wait));
        go
    }
}

/// One staging file being written.
struct Open {
    file: Option<File>,
    growth: Arc<Growth>,
    hasher: Sha256,
    /// Set once a failure was reported: later jobs for this copy do nothing.
    failed: bool,
}

fn run(jobs: Receiver<Job>, done: Sender<Report>, shared: &Shared) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    // discarded copies that connections still send from: closed here once they are done
    let mut lingering: Vec<Arc<File>> = Vec::new();
    let report = |id: u64, outcome: Outcome| {
        let _ = done.send(Report { id, outcome });
        (shared.waker)();
    };
    // a connection that waits for this copy's bytes gets its turn
    let grew = |g: &Growth| {
        if g.want_wake.swap(false, Ordering::AcqRel) {
            shared.grown.store(true, Ordering::Release);
            (shared.waker)();
        }
    };
    loop {
        let job = if lingering.is_empty() {
            jobs.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            jobs.recv_timeout(LINGER_CHECK)
        };
        lingering.retain(|f| Arc::strong_count(f) > 1);
        let job = match job {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match job {
            Job::Open { id, path, growth } => {
                let r = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path);
                let failed = r.is_err();
                match &r {
                    Err(e) => {
                        growth.fail();
                        grew(&growth);
                        report(id, Outcome::Local(io::Error::new(e.kind(), e.to_string())));
                    }
                    Ok(f) => {
                        if let Ok(dup) = f.try_clone() {
                            let _ = growth.file.set(Arc::new(dup));
                        }
                    }
                }
                open.insert(
                    id,
                    Open {
                        file: r.ok(),
                        growth,
                        hasher: Sha256::new(),
                        failed,
                    },
                );
            }
            Job::Write { id, chunk } => {
                if let Some(o) = open.get_mut(&id)
                    && !o.failed
                    && let Some(f) = &mut o.file
                {
                    match f.write_all(&chunk) {
                        Ok(()) => {
                            o.hasher.update(&*chunk);
                            o.growth
                                .written
                                .fetch_add(chunk.len() as u64, Ordering::AcqRel);
                        }
                        Err(e) => {
                            o.failed = true;
                            o.file = None;
                            o.growth.fail();
                            report(id, Outcome::Local(e));
                        }
                    }
                    grew(&o.growth);
                }
                let len = chunk.len();
                drop(chunk);
                let left = shared.queued.fetch_sub(len, Ordering::AcqRel) - len;
                if left <= QUEUE_BYTES / 2 && shared.want_room.swap(false, Ordering::AcqRel) {
                    shared.room_freed.store(true, Ordering::Release);
                    (shared.waker)();
                }
            }
            Job::Verify { id, sha256 } => {
                let Some(o) = open.remove(&id) else {
                    report(id, Outcome::Local(io::ErrorKind::NotFound.into()));
                    continue;
                };
                if o.failed {
                    continue; // already reported
                }
                let Some(file) = o.file else { continue };
                let digest: [u8; 32] = o.hasher.finalize().into();
                match sha256 {
                    Some(want) if want != digest => {
                        o.growth.fail();
                        grew(&o.growth);
                        report(id, Outcome::WrongHash)
                    }
                    _ => {
                        o.growth.whole();
                        report(id, Outcome::Verified(file))
                    }
                }
            }
            Job::Discard {
                id,
                path,
                file,
                growing,
            } => {
                if let Some(o) = open.remove(&id) {
                    o.growth.fail();
                    grew(&o.growth);
                }
                let _ = std::fs::remove_file(&path);
                lingering.extend(file);
                lingering.extend(growing);
            }
            #[cfg(test)]
            Job::Hold(wait) => {
                let _ = wait.recv();
            }
        }
    }
}

/// For tests without a mio loop: a wake-up function and how often it was called.
#[cfg(test)]
pub(crate) fn counting_wake() -> (Box<dyn Fn() + Send + Sync>, Arc<Mutex<u64>>) {
    let n = Arc::new(Mutex::new(0u64));
    let m = n.clone();
    (
        Box::new(move || {
            if let Ok(mut n) = m.lock() {
                *n += 1;
            }
        }),
        n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::CHUNK_SIZE;

    #[test]
    fn growth_follows_the_writes_and_fails_with_a_discard_or_a_wrong_hash() {
        let dir = std::env::temp_dir().join(format!("flocon-growth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (wake, wakes) = counting_wake();
        let mut s = Stager::with_wake(&dir, wake).unwrap();
        let h = s.handle();
        for (name, hash_ok) in [("a", true), ("b", false)] {
            let (id, g, path) = (h.new_id(), Growth::new(), dir.join(name));
            h.open(id, path.clone(), g.clone());
            g.want_wake();
            h.write(id, Chunk::copy_of(b"hello "));
            wait_for("bytes written", || g.written() == 6 && g.file().is_some());
            wait_for("a wake-up for the waiting connection", || s.take_grown());
            assert!(!s.take_grown(), "once per want_wake");
            h.write(id, Chunk::copy_of(b"world"));
            wait_for("more", || g.written() == 11);
            assert!(!s.take_grown(), "nobody waited");
            let sha: [u8; 32] = Sha256::digest(b"hello world").into();
            h.verify(id, Some(if hash_ok { sha } else { [0; 32] }));
            let mut r = Vec::new();
            wait_for("a verdict", || {
                r.extend(s.reports());
                !r.is_empty()
            });
            assert_eq!(g.failed(), !hash_ok, "{name}");
            g.fail();
            assert_eq!(g.failed(), !hash_ok, "a whole copy stays whole");
        }
        // thrown away while growing: failed, its waiting connection woken
        let (id, g, path) = (h.new_id(), Growth::new(), dir.join("c"));
        h.open(id, path.clone(), g.clone());
        h.write(id, Chunk::copy_of(b"x"));
        wait_for("written", || g.written() == 1);
        g.want_wake();
        h.discard(id, path.clone(), None, g.file());
        wait_for("failed and woken", || g.failed() && s.take_grown());
        wait_for("unlinked", || !path.exists());
        assert!(*wakes.lock().unwrap() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
    use std::time::{Duration, Instant};

    fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_disk_that_falls_behind_stops_the_reads_then_wakes_the_loop() {
        let dir = std::env::temp_dir().join(format!("flocon-stager-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (wake, wakes) = counting_wake();
        let mut s = Stager::with_wake(&dir, wake).unwrap();
        let h = s.handle();
        let id = h.new_id();
        let path = dir.join("x.pkg.tar.zst");
        h.open(id, path.clone(), Growth::new());
        let go = h.hold();
        let (mut queued, mut hasher) = (0, Sha256::new());
        while h.room() > 0 {
            let c = Chunk::copy_of(&[(queued / CHUNK_SIZE) as u8; CHUNK_SIZE]);
            hasher.update(&*c);
            h.write(id, c);
            queued += CHUNK_SIZE;
        }
        assert_eq!(queued, QUEUE_BYTES, "room runs out at the bound");
        assert!(!s.take_room_freed());
        assert_eq!(*wakes.lock().unwrap(), 0);
        go.send(()).unwrap();
        wait_for("a wake-up once the queue drained", || {
            *wakes.lock().unwrap() > 0
        });
        assert!(s.take_room_freed());
        assert!(!s.take_room_freed(), "once");
        assert!(h.room() >= QUEUE_BYTES / 2);
        h.verify(id, Some(hasher.finalize().into()));
        let mut reports = Vec::new();
        wait_for("a verdict", || {
            reports.extend(s.reports());
            !reports.is_empty()
        });
        assert!(
            matches!(reports[0].outcome, Outcome::Verified(_)),
            "{reports:?}"
        );
        assert_eq!(reports[0].id, id);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), QUEUE_BYTES as u64);
        let Outcome::Verified(file) = reports.remove(0).outcome else {
            unreachable!()
        };
        // a connection still sends from the copy when it is discarded: the name goes at
        // once, the file is closed by the thread once the connection lets go
        let copy = Arc::new(file);
        let serving = copy.clone();
        let fd = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&*copy));
        let target = std::fs::read_link(&fd).unwrap();
        h.discard(id, path.clone(), Some(copy), None);
        wait_for("the unlink", || !path.exists());
        std::thread::sleep(LINGER_CHECK + Duration::from_millis(100));
        assert_eq!(Arc::strong_count(&serving), 2, "kept while served");
        drop(serving);
        wait_for("the close, on the thread", || {
            std::fs::read_link(&fd).ok() != Some(target.clone())
        });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
