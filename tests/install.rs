//! `make install` and `make uninstall` into a scratch root: the file list, and that
//! uninstalling never leaves pacman unable to parse its configuration (checked with the real
//! `pacman-conf`). The installed binary is run (`--version`) inside the test's private
//! network namespace, like every run of flocon.

mod common;

use common::TempDir;
use std::path::Path;
use std::process::Command;

const REPO_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn make(target: &str, root: &Path) -> String {
    let out = Command::new("make")
        .args(["--no-print-directory", "-C", REPO_DIR, target])
        .arg(format!("PREFIX={}/usr", root.display()))
        .arg(format!("SYSCONFDIR={}/etc", root.display()))
        .arg(format!("BIN={}", common::BIN))
        .output()
        .expect("make must be installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "make {target} failed:\n{text}");
    text
}

/// Every file and symlink under `root`, relative, sorted.
fn files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

/// Whether pacman accepts the configuration (pacman-conf parses it as pacman does).
fn pacman_parses(conf: &Path) -> Result<String, String> {
    let out = Command::new("pacman-conf")
        .arg("--config")
        .arg(conf)
        .args(["--repo", "core"])
        .output()
        .expect("pacman-conf (Debian: pacman-package-manager) must be installed");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn install_then_uninstall_never_breaks_pacman() {
    netns!("install_then_uninstall_never_breaks_pacman");
    let t = TempDir::new("install");
    let root = t.path();
    make("install", root);
    let want = [
        "etc/flocon.conf",
        "etc/pacman.d/flocon",
        "usr/bin/flocon",
        "usr/lib/systemd/system/flocon.service",
        "usr/share/doc/flocon/DESIGN.md",
        "usr/share/doc/flocon/PROTOCOL.md",
        "usr/share/doc/flocon/README.md",
        "usr/share/licenses/flocon/LICENSE",
        "usr/share/man/man5/flocon.conf.5",
        "usr/share/man/man8/flocon.8",
    ];
    assert_eq!(files(root), want);
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/flocon.service")).unwrap();
    assert!(
        unit.contains(&format!("\nExecStart={}/usr/bin/flocon\n", root.display())),
        "{unit}"
    );
    let v = Command::new(root.join("usr/bin/flocon"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("flocon "));

    // pacman set up as the README says, plus the old way in a mirrorlist
    let inc = root.join("etc/pacman.d/flocon");
    let mirrorlist = root.join("etc/pacman.d/mirrorlist");
    std::fs::write(
        &mirrorlist,
        "Server = http://localhost:19433/$repo/os/$arch\nServer = http://mirror.test/$repo/os/$arch\n",
    )
    .unwrap();
    let conf = root.join("etc/pacman.conf");
    let with_include = format!(
        "[options]\nArchitecture = x86_64\n\n[core]\nInclude = {}\nInclude = {}\n",
        inc.display(),
        mirrorlist.display()
    );
    std::fs::write(&conf, &with_include).unwrap();
    pacman_parses(&conf).expect("the installed setup parses");
    // a changed flocon.conf is the user's: kept
    std::fs::write(root.join("etc/flocon.conf"), "name = mine\n").unwrap();

    let out = make("uninstall", root);
    assert!(inc.exists(), "removed while still included:\n{out}");
    assert!(
        out.contains("still includes it")
            && out.contains(&format!("pacman.conf:5:Include = {}", inc.display())),
        "{out}"
    );
    assert!(
        out.contains("mirrorlist:1:Server = http://localhost:19433/"),
        "{out}"
    );
    assert!(out.contains("keeping modified"), "{out}");
    pacman_parses(&conf).expect("pacman still parses after uninstall");
    // the premise: without the file pacman would be broken
    std::fs::rename(&inc, root.join("aside")).unwrap();
    assert!(
        pacman_parses(&conf).is_err(),
        "pacman-conf accepts a missing Include?"
    );
    std::fs::rename(root.join("aside"), &inc).unwrap();

    // the user removes the line: the next uninstall removes the file
    std::fs::write(
        &conf,
        with_include.replace(&format!("Include = {}\n", inc.display()), ""),
    )
    .unwrap();
    std::fs::write(&mirrorlist, "Server = http://mirror.test/$repo/os/$arch\n").unwrap();
    let out = make("uninstall", root);
    assert!(!inc.exists(), "{out}");
    pacman_parses(&conf).expect("parses after the full uninstall");
    assert_eq!(
        files(root),
        [
            "etc/flocon.conf",
            "etc/pacman.conf",
            "etc/pacman.d/mirrorlist"
        ],
        "{out}"
    );
}
