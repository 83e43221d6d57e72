//! flocon follows pacman's configuration: a rewritten mirrorlist (as reflector or a merged
//! .pacnew leaves it) is re-read on its own, with one log line, and the next package comes
//! from the new mirror; a broken one keeps the running configuration, said once; and a FIFO
//! named by an `Include` never blocks the start or a SIGHUP; an `Architecture` no
//! announcement can carry stops the start (exit 2) and is kept out on a reload. Real binary,
//! real sockets, in a private network namespace.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Replaces `path` the way reflector and pacdiff do: a new file renamed over it.
fn replace(path: &Path, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).unwrap();
    std::fs::rename(&new, path).unwrap();
}

#[test]
fn follows_a_rewritten_mirrorlist_and_never_blocks_on_a_fifo() {
    netns!("follows_a_rewritten_mirrorlist_and_never_blocks_on_a_fifo");
    let t = TempDir::new("follow");
    let pkgs = make_repo(t.path(), &[("one", 20_000, "any")]);
    let m1 = Mirror::start("127.0.0.101", t.join("repo"), false);
    let m2 = Mirror::start("127.0.0.102", t.join("repo"), false);
    let h = t.join("h");
    std::fs::create_dir_all(h.join("db/sync")).unwrap();
    std::fs::create_dir_all(h.join("cache")).unwrap();
    std::fs::copy(
        t.join("repo/flocontest.db.tar.gz"),
        h.join("db/sync/flocontest.db"),
    )
    .unwrap();
    let fifo = t.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mirrorlist = t.join("mirrorlist");
    replace(&mirrorlist, &format!("Server = {}\n", m1.url()));
    let conf = t.join("pacman.conf");
    std::fs::write(
        &conf,
        format!(
            "[options]\nDBPath = {h}/db/\nCacheDir = {h}/cache/\nArchitecture = x86_64\n\n\
             [flocontest]\nInclude = {fifo}\nCacheServer = http://localhost:19433/$repo/os/$arch\n\
             Include = {ml}\n",
            h = h.display(),
            fifo = fifo.display(),
            ml = mirrorlist.display()
        ),
    )
    .unwrap();

    // start: the FIFO is refused at once, with a warning (Daemon::start waits for an answer)
    let cache = h.join("cache");
    let db = h.join("db");
    let mut o = DaemonOpts::new(t.path(), &cache);
    o.pacman_conf = Some(&conf);
    o.db_path = Some(&db);
    let d = Daemon::start(o);
    assert_eq!(count(&d.log_text(), "a FIFO, not a regular file"), 1);

    // SIGHUP reads the FIFO's Include again: the loop keeps answering
    d.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || d
            .log_text()
            .contains("SIGHUP: configuration and sync dbs re-read")),
        "{}",
        d.log_text()
    );
    assert_eq!(count(&d.log_text(), "a FIFO, not a regular file"), 2);
    let path = format!("/flocontest/os/x86_64/{}", pkgs[0].file);
    let (r, body) = get(d.front, &path, &[]);
    assert_eq!(r.status, 200);
    assert!(body == pkgs[0].bytes, "the package, byte for byte");
    let from = |m: &Mirror| {
        m.requests()
            .iter()
            .filter(|l| l.contains(&pkgs[0].file))
            .count()
    };
    assert_eq!((from(&m1), from(&m2)), (1, 0));

    // the mirrorlist is rewritten: followed without a signal, one log line
    replace(&mirrorlist, &format!("Server = {}\n", m2.url()));
    let changed = format!("{} changed: pacman.conf re-read", mirrorlist.display());
    assert!(
        wait_until(Duration::from_secs(10), || d.log_text().contains(&changed)),
        "{}",
        d.log_text()
    );
    assert_eq!(count(&d.log_text(), &changed), 1);
    let (r, body) = get(d.front, &path, &[]);
    assert_eq!(r.status, 200);
    assert!(body == pkgs[0].bytes);
    assert_eq!((from(&m1), from(&m2)), (1, 1), "the new mirror served it");

    // a broken mirrorlist: the running configuration stays, said once (not every rescan)
    replace(&mirrorlist, "Server\n");
    let kept = "keeping the old configuration";
    assert!(
        wait_until(Duration::from_secs(10), || d.log_text().contains(kept)),
        "{}",
        d.log_text()
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(count(&d.log_text(), kept), 1, "{}", d.log_text());
    let (r, _) = get(d.front, &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(from(&m2), 2, "still the last good mirror");

    // fixed: noticed (the broken file was stamped too) and followed
    replace(&mirrorlist, &format!("Server = {}\n", m1.url()));
    assert!(
        wait_until(Duration::from_secs(10), || count(&d.log_text(), &changed)
            == 2),
        "{}",
        d.log_text()
    );
    let (r, _) = get(d.front, &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!((from(&m1), from(&m2)), (2, 2));
}

/// An `Architecture` that an announcement cannot carry (every peer would drop our
/// announcements, silently): at start, exit status 2 and one line naming the value and the
/// rule; on a reload, the running value stays, with one warning line per re-read, and the
/// daemon keeps serving.
#[test]
fn an_architecture_the_protocol_cannot_carry_is_refused() {
    netns!("an_architecture_the_protocol_cannot_carry_is_refused");
    let t = TempDir::new("arch");
    let cache = t.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let conf = t.join("pacman.conf");
    let flocon_conf = t.join("flocon.conf");
    std::fs::write(&flocon_conf, "").unwrap();
    let rule = "must be 1-16 bytes of a-z, 0-9, '_' and '-' \
                (peers drop an announcement carrying anything else)";
    let refused = format!("{}: Architecture 'X86_64': {rule}", conf.display());

    // at start: refused before any socket is opened
    std::fs::write(&conf, "[options]\nArchitecture = X86_64\n").unwrap();
    let mut child = std::process::Command::new(BIN)
        .arg("--config")
        .arg(&flocon_conf)
        .arg("--pacman-conf")
        .arg(&conf)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--state-dir")
        .arg(t.join("state"))
        .args(["--interface", "lo"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "still running after 10 s");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("X86_64")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].ends_with(&refused), "{stderr}");

    // on a reload: the old value stays, said once per re-read, and the daemon serves on
    std::fs::write(&conf, "[options]\nArchitecture = x86_64\n").unwrap();
    let mut o = DaemonOpts::new(t.path(), &cache);
    o.pacman_conf = Some(&conf);
    let d = Daemon::start(o);
    assert!(d.status_json().contains("\"archs\":[\"x86_64\"]"));
    replace(&conf, "[options]\nArchitecture = X86_64\n");
    d.signal("HUP");
    let reread = "SIGHUP: configuration and sync dbs re-read";
    assert!(
        wait_until(Duration::from_secs(10), || d.log_text().contains(reread)),
        "{}",
        d.log_text()
    );
    let log = d.log_text();
    let kept = format!("{refused}; keeping the old value (x86_64)");
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("X86_64")).collect();
    // the SIGHUP's re-read, and perhaps the rescan's that noticed the file first
    assert!((1..=2).contains(&warnings.len()), "{log}");
    assert!(warnings.iter().all(|l| l.ends_with(&kept)), "{log}");
    let status = d.status_json();
    assert!(status.contains("\"archs\":[\"x86_64\"]"), "{status}");
}
