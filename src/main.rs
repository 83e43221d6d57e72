//! flocon: share pacman package caches across a LAN. This file only dispatches the command
//! line: the daemon (daemon.rs) or `flocon status`, which asks the running daemon.

use flocon::{cli, config, daemon, error, log};

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

/// `flocon status` gives up on a daemon that does not answer within this time.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    log::init();
    std::panic::set_hook(Box::new(panic_line));
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "genkey") {
        return genkey(args.collect());
    }
    let cmd = match cli::parse_args(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            if !log::journal() {
                eprintln!("Try 'flocon --help'.");
            }
            return ExitCode::from(2);
        }
    };
    match cmd {
        cli::Command::Help => {
            print!("{}", cli::usage());
            ExitCode::SUCCESS
        }
        cli::Command::Version => {
            println!(
                "flocon {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("FLOCON_GIT_REV")
            );
            ExitCode::SUCCESS
        }
        cli::Command::Status { config, json } => status(&config, json),
        cli::Command::Daemon(config) => {
            log::set_debug(config.debug);
            match daemon::Daemon::new(config) {
                Ok(mut d) => ExitCode::from(d.run() as u8),
                Err(e) => {
                    error!("{}", e.0);
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// `flocon genkey FILE`: a new group key (32 random bytes, mode 600), never overwriting.
fn genkey(args: Vec<std::ffi::OsString>) -> ExitCode {
    let [path] = args.as_slice() else {
        eprintln!("usage: flocon genkey FILE");
        return ExitCode::from(2);
    };
    match flocon::auth::generate(std::path::Path::new(path)) {
        Ok(()) => {
            println!(
                "wrote {}: copy it to every peer and set key-file = {} in flocon.conf",
                path.to_string_lossy(),
                path.to_string_lossy()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flocon: genkey: {e}");
            ExitCode::from(1)
        }
    }
}

/// A panic aborts (`panic = "abort"`): one line with the message and where it happened, no
/// backtrace (static builds carry no unwinder to take one; docs/DESIGN.md, "Binary size").
fn panic_line(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let thread = std::thread::current();
    let at = info
        .location()
        .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
    // through the log: in the journal at priority 3 (err)
    error!(
        "panic in thread {}{at}: {msg}",
        thread.name().unwrap_or("?")
    );
}

/// Asks the running daemon over its loopback listener and prints the answer.
fn status(config: &config::Config, json: bool) -> ExitCode {
    let path = if json {
        "/.flocon/status.json"
    } else {
        "/.flocon/status"
    };
    let mut last_err = String::from("no --listen address");
    for addr in &config.listen {
        match fetch_status(addr, path) {
            Ok(body) => {
                print!("{body}");
                return ExitCode::SUCCESS;
            }
            Err(e) => last_err = format!("{addr}: {e}"),
        }
    }
    eprintln!("flocon: status: cannot reach the daemon ({last_err}); is it running?");
    ExitCode::from(1)
}

fn fetch_status(addr: &std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(addr, STATUS_TIMEOUT)?;
    s.set_read_timeout(Some(STATUS_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(16 << 20).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other("malformed answer"));
    };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(body.to_string())
}
