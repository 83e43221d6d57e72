//! systemd's service notification protocol (sd_notify(3)) without libsystemd: one datagram of
//! `KEY=value` lines to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). The unit is `Type=notify`: `READY=1` once the listeners are open,
//! `STATUS=` kept current (shown by `systemctl status`), `STOPPING=1` at shutdown.
//!
//! Sends never block the loop (the socket is non-blocking): a `READY=1` that finds systemd's
//! queue full is retried with the next status, a status that cannot go is dropped (the next
//! one replaces it). Without `$NOTIFY_SOCKET` (a terminal, the tests) every call is a no-op.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// A changed status goes out at most this often: `systemctl status` is read by people.
pub(crate) const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Status text longer than this is cut (one line in `systemctl status`).
pub(crate) const MAX_STATUS_LEN: usize = 240;

/// Where the service manager is in our life, as far as it has been told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Starting,
    /// `ready()` was called but the datagram could not be sent yet.
    ReadyPending,
    Ready,
    Stopping,
}

pub(crate) struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    state: State,
    /// The last status sent and when.
    last: Option<(String, Instant)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a value we cannot use is reported once and ignored.
    pub(crate) fn from_env() -> Notifier {
        let var = std::env::var_os("NOTIFY_SOCKET");
        match var.as_deref().map(open) {
            None => Notifier::disabled(),
            Some(Ok(t)) => Notifier::with_target(t),
            Some(Err(e)) => {
                warn!("NOTIFY_SOCKET={}: {e}", var.unwrap_or_default().display());
                Notifier::disabled()
            }
        }
    }

    pub(crate) fn disabled() -> Notifier {
        Notifier {
            target: None,
            state: State::Starting,
            last: None,
        }
    }

    fn with_target(t: (UnixDatagram, SocketAddr)) -> Notifier {
        Notifier {
            target: Some(t),
            ..Notifier::disabled()
        }
    }

    /// For tests: notify the socket at `name` (a path, or `@abstract`).
    #[cfg(test)]
    pub(crate) fn to(name: &str) -> io::Result<Notifier> {
        open(OsStr::new(name)).map(Notifier::with_target)
    }

    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.target.is_some()
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The listeners are open: `READY=1` with the first status.
    pub(crate) fn ready(&mut self, status: &str, now: Instant) {
        if self.state != State::Starting {
            return;
        }
        self.state = State::ReadyPending;
        self.send_ready(status, now);
    }

    fn send_ready(&mut self, status: &str, now: Instant) {
        let status = clean(status);
        if self.send(&format!("READY=1\nSTATUS={status}\n")) {
            self.state = State::Ready;
            self.last = Some((status, now));
        }
    }

    /// Keeps `STATUS=` current: sends `status` when it differs from the last one sent and
    /// that one is at least STATUS_INTERVAL old. Cheap to call on every timer tick.
    pub(crate) fn status(&mut self, status: &str, now: Instant) {
        match self.state {
            State::ReadyPending => self.send_ready(status, now),
            State::Ready if status_due(self.last.as_ref(), status, now) => {
                let status = clean(status);
                if self.send(&format!("STATUS={status}\n")) {
                    self.last = Some((status, now));
                }
            }
            _ => {}
        }
    }

    /// Shutdown has begun: `STOPPING=1`, with a last status.
    pub(crate) fn stopping(&mut self, status: &str) {
        if self.state == State::Stopping {
            return;
        }
        self.state = State::Stopping;
        self.send(&format!("STOPPING=1\nSTATUS={}\n", clean(status)));
    }

    /// Sends one datagram; false when it could not go. Errors other than a full queue mean
    /// nobody listens (the manager went away): say so once and stop trying.
    fn send(&mut self, msg: &str) -> bool {
        let Some((sock, addr)) = &self.target else {
            return false;
        };
        match sock.send_to_addr(msg.as_bytes(), addr) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) => {
                warn!("NOTIFY_SOCKET: {e}; no more notifications to the service manager");
                self.target = None;
                false
            }
        }
    }
}

/// Whether a status is worth sending now, given the last one sent.
pub(crate) fn status_due(last: Option<&(String, Instant)>, status: &str, now: Instant) -> bool {
    match last {
        None => true,
        Some((text, at)) => {
            text != &clean(status) && now.saturating_duration_since(*at) >= STATUS_INTERVAL
        }
    }
}

/// One line, bounded: a newline would start a new `KEY=` assignment.
fn clean(status: &str) -> String {
    let mut s: String = status
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_STATUS_LEN {
        let mut cut = MAX_STATUS_LEN;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// The socket address `$NOTIFY_SOCKET` names and an unbound, non-blocking socket to send with.
fn open(name: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = name.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
        Some(b'/') => SocketAddr::from_pathname(name)?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a path nor an @abstract socket name",
            ));
        }
    };
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unique(tag: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        format!("flocon-notify-{tag}-{}-{n}", std::process::id())
    }

    fn recv(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn no_more(listener: &UnixDatagram) {
        listener.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        let r = listener.recv(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "unexpected datagram: {:?}",
            r.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
        );
        listener.set_nonblocking(false).unwrap();
    }

    #[test]
    fn lifecycle_over_a_path_socket() {
        let dir = std::env::temp_dir().join(unique("dir"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::to(path.to_str().unwrap()).unwrap();
        let t0 = Instant::now();

        // status before ready is not sent
        n.status("early", t0);
        n.ready("0 peers", t0);
        assert_eq!(recv(&listener), "READY=1\nSTATUS=0 peers\n");
        assert_eq!(n.state(), State::Ready);
        n.ready("again", t0);

        // unchanged: nothing; changed but too soon: nothing; later: sent
        n.status("0 peers", t0 + STATUS_INTERVAL * 2);
        n.status("1 peer", t0 + Duration::from_secs(1));
        no_more(&listener);
        n.status("1 peer", t0 + STATUS_INTERVAL);
        assert_eq!(recv(&listener), "STATUS=1 peer\n");

        n.stopping("stopping: 2 transfers");
        assert_eq!(
            recv(&listener),
            "STOPPING=1\nSTATUS=stopping: 2 transfers\n"
        );
        n.stopping("twice");
        n.status("after stop", t0 + STATUS_INTERVAL * 10);
        no_more(&listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn abstract_socket() {
        let name = unique("abs");
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let mut n = Notifier::to(&format!("@{name}")).unwrap();
        n.ready("up", Instant::now());
        assert_eq!(recv(&listener), "READY=1\nSTATUS=up\n");
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(clean("a\nREADY=1"), "a READY=1");
        let long = "é".repeat(MAX_STATUS_LEN);
        let c = clean(&long);
        assert!(c.len() <= MAX_STATUS_LEN && c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn unusable_names_and_gone_managers() {
        for bad in ["", "relative/path", "vsock:2:1234"] {
            assert!(Notifier::to(bad).is_err(), "{bad:?}");
        }
        // nobody listens: the first send fails, the notifier gives up quietly
        let path = std::env::temp_dir().join(unique("gone"));
        let mut n = Notifier::to(path.to_str().unwrap()).unwrap();
        n.ready("up", Instant::now());
        assert!(!n.enabled());
        assert_eq!(n.state(), State::ReadyPending);
        // and without a socket everything is a no-op
        let mut d = Notifier::disabled();
        d.ready("up", Instant::now());
        d.stopping("bye");
        assert!(!d.enabled());
    }

    #[test]
    fn status_due_rules() {
        let t0 = Instant::now();
        assert!(status_due(None, "x", t0));
        let last = ("x".to_string(), t0);
        assert!(!status_due(Some(&last), "x", t0 + STATUS_INTERVAL * 3));
        assert!(!status_due(Some(&last), "y", t0 + STATUS_INTERVAL / 2));
        assert!(status_due(Some(&last), "y", t0 + STATUS_INTERVAL));
        // a clock that steps back never panics
        assert!(!status_due(Some(&last), "y", t0 - Duration::from_millis(1)));
    }
}
