//! The helper thread that parses sync databases, so that reading a 10 MB db never stalls
//! transfers in flight. The loop sends (repo, path); the thread answers through a channel
//! and wakes the loop with the mio `Waker`. Signatures from the dbs go to unlinked scratch
//! files in `sig_dir` (the staging dir), not to memory.

use crate::syncdb::{self, DbIndex, FileStamp};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};

/// Pending parse requests; a pacman.conf has a handful of repos, so this is generous.
const QUEUE: usize = 64;

pub(crate) type Loaded = (String, Result<(DbIndex, FileStamp), syncdb::DbError>);

pub(crate) struct DbLoader {
    tx: SyncSender<(String, PathBuf)>,
    rx: Receiver<Loaded>,
    /// Repos sent and not yet answered: not sent again while in flight.
    pub in_flight: Vec<String>,
}

impl DbLoader {
    pub(crate) fn new(waker: Arc<mio::Waker>, sig_dir: PathBuf) -> std::io::Result<Self> {
        let (tx, jobs) = mpsc::sync_channel::<(String, PathBuf)>(QUEUE);
        let (done, rx) = mpsc::sync_channel::<Loaded>(QUEUE);
        std::thread::Builder::new()
            .name("flocon-db".into())
            .spawn(move || {
                for (repo, path) in jobs {
                    let r = syncdb::load_db_stamped(&path, &sig_dir);
                    if done.send((repo, r)).is_err() {
                        return;
                    }
                    let _ = waker.wake();
                }
            })?;
        Ok(DbLoader {
            tx,
            rx,
            in_flight: Vec::new(),
        })
    }

    pub(crate) fn load(&mut self, repo: &str, path: PathBuf) {
        if self.in_flight.iter().any(|r| r == repo) {
            return;
        }
        match self.tx.try_send((repo.to_string(), path)) {
            Ok(()) => self.in_flight.push(repo.to_string()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
        }
    }

    pub(crate) fn results(&mut self) -> Vec<Loaded> {
        let out: Vec<Loaded> = self.rx.try_iter().collect();
        self.in_flight.retain(|r| !out.iter().any(|(o, _)| o == r));
        out
    }
}
