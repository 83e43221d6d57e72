//! One line per event on stderr: `error`, `warn`, `info`, `debug` (only with `--debug`).
//! No timestamps: journald adds its own, and a terminal user rarely needs them.
//!
//! Two styles, chosen once at start by `init()`:
//! - terminal (and any other stderr): `flocon: message`, `flocon: warning: message`, as
//!   before;
//! - journal, when stderr *is* the journal stream systemd gave us (`$JOURNAL_STREAM` names
//!   stderr's device and inode, see systemd.exec(5)): `<N>message` with the syslog priority
//!   as prefix, which journald strips and stores as the entry's priority, and no `flocon:`
//!   (the journal already names the unit). A child whose stderr was redirected elsewhere
//!   inherits the variable but not the stream, hence the device/inode check.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static DEBUG: AtomicBool = AtomicBool::new(false);
static JOURNAL: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Picks the output style from the environment; call once, first thing in `main`.
pub fn init() {
    let journal = std::env::var("JOURNAL_STREAM")
        .ok()
        .zip(stderr_identity())
        .is_some_and(|(v, (dev, ino))| journal_stream_is(&v, dev, ino));
    JOURNAL.store(journal, Ordering::Relaxed);
}

/// Whether lines go to the journal in its native form.
pub fn journal() -> bool {
    JOURNAL.load(Ordering::Relaxed)
}

/// Severity, with its syslog priority (what journald files the line under).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
    Debug,
}

impl Level {
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 6,
            Level::Debug => 7,
        }
    }

    fn terminal_prefix(self) -> &'static str {
        match self {
            Level::Error | Level::Info => "flocon: ",
            Level::Warn => "flocon: warning: ",
            Level::Debug => "flocon: debug: ",
        }
    }
}

/// `$JOURNAL_STREAM` is `DEVICE:INODE`, both decimal.
fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// Device and inode of whatever fd 2 is (a socket, a file, a tty).
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The text written for one message. A message spanning lines gets the prefix on each, so
/// that journald files every line at the message's priority.
pub fn format_line(journal: bool, level: Level, msg: &str) -> String {
    let mut out = String::with_capacity(msg.len() + 20);
    for line in msg.split('\n') {
        if journal {
            out.push('<');
            out.push(char::from(b'0' + level.priority()));
            out.push('>');
        } else {
            out.push_str(level.terminal_prefix());
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Writes one message in a single `write` (lines from threads do not interleave).
pub fn write(level: Level, args: fmt::Arguments) {
    let line = format_line(journal(), level, &args.to_string());
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::write($crate::log::Level::Debug, format_args!($($arg)*))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_lines_are_unchanged() {
        assert_eq!(format_line(false, Level::Info, "up"), "flocon: up\n");
        assert_eq!(
            format_line(false, Level::Warn, "slow"),
            "flocon: warning: slow\n"
        );
        assert_eq!(format_line(false, Level::Debug, "x"), "flocon: debug: x\n");
        assert_eq!(format_line(false, Level::Error, "bad"), "flocon: bad\n");
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_name() {
        assert_eq!(format_line(true, Level::Error, "bad"), "<3>bad\n");
        assert_eq!(format_line(true, Level::Warn, "slow"), "<4>slow\n");
        assert_eq!(format_line(true, Level::Info, "up"), "<6>up\n");
        assert_eq!(format_line(true, Level::Debug, "x"), "<7>x\n");
        // every line of a multi-line message keeps the priority
        assert_eq!(format_line(true, Level::Warn, "a\nb"), "<4>a\n<4>b\n");
        assert_eq!(
            format_line(false, Level::Warn, "a\nb"),
            "flocon: warning: a\nflocon: warning: b\n"
        );
    }

    #[test]
    fn journal_stream_must_name_this_very_stream() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1235", 8, 1234));
        assert!(!journal_stream_is("9:1234", 8, 1234));
        for bad in [
            "", ":", "8", "8:", ":1234", "8:1234:5", "x:1234", " 8:1234", "-8:1234",
        ] {
            assert!(!journal_stream_is(bad, 8, 1234), "{bad:?}");
        }
    }

    #[test]
    fn stderr_identity_is_readable() {
        // fd 2 exists in every test process (a pipe, a file or a tty)
        assert!(stderr_identity().is_some());
    }
}
