//! Build script: embeds the git revision (`FLOCON_GIT_REV`, shown by `--version`) and the
//! compile-time default paths, so that packagers can move them without patching the code:
//!
//! ```text
//! FLOCON_DEFAULT_CONFIG=/etc/flocon.conf  FLOCON_DEFAULT_PACMAN_CONF=/etc/pacman.conf \
//! FLOCON_DEFAULT_STATE_DIR=/var/cache/flocon  cargo build --release
//! ```
//!
//! The code reads them with `env!("FLOCON_DEFAULT_CONFIG")` etc. No build-dependencies.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (variable, default). Each must be an absolute path: the daemon runs from `/` under systemd.
const DEFAULT_PATHS: [(&str, &str); 3] = [
    ("FLOCON_DEFAULT_CONFIG", "/etc/flocon.conf"),
    ("FLOCON_DEFAULT_PACMAN_CONF", "/etc/pacman.conf"),
    ("FLOCON_DEFAULT_STATE_DIR", "/var/cache/flocon"),
];

/// A revision longer than this is not an abbreviated hash: keep `--version` one short line.
const MAX_REV_LEN: usize = 40;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    for (var, default) in DEFAULT_PATHS {
        println!("cargo:rerun-if-env-changed={var}");
        let value = env::var(var).unwrap_or_else(|_| default.to_string());
        if !value.starts_with('/') || value.contains('\n') {
            panic!("{var} must be an absolute path on one line, got {value:?}");
        }
        println!("cargo:rustc-env={var}={value}");
    }

    // A source tarball has no .git: packagers may pass the revision themselves.
    println!("cargo:rerun-if-env-changed=FLOCON_GIT_REV");
    let rev = env::var("FLOCON_GIT_REV")
        .ok()
        .filter(|r| valid_rev(r))
        .or_else(git_rev)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FLOCON_GIT_REV={rev}");

    watch_git_head();
}

fn valid_rev(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= MAX_REV_LEN
        && rev
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `git rev-parse --short HEAD`, or None when git or the repository is missing.
fn git_rev() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env::var_os("CARGO_MANIFEST_DIR")?)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
    valid_rev(&rev).then_some(rev)
}

/// Re-run when HEAD moves: watch HEAD itself, the directory holding the branch ref it names
/// (a commit rewrites the ref; after `git gc` the ref lives only in packed-refs until the
/// next commit creates it again, which changes the directory), and packed-refs. Only paths
/// that exist are watched: Cargo re-runs the script on every build for a missing one.
fn watch_git_head() {
    let Some(manifest) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let Some(git_dir) = find_git_dir(Path::new(&manifest)) else {
        return;
    };
    let head = git_dir.join("HEAD");
    watch_if_exists(&head);
    let Ok(text) = fs::read_to_string(&head) else {
        return;
    };
    if let Some(reference) = text.trim().strip_prefix("ref: ") {
        // A worktree keeps HEAD private but shares refs with the main repository.
        let common = fs::read_to_string(git_dir.join("commondir"))
            .map(|c| git_dir.join(c.trim()))
            .unwrap_or_else(|_| git_dir.clone());
        if let Some(ref_dir) = common.join(reference).parent() {
            watch_if_exists(ref_dir);
        }
        watch_if_exists(&common.join("packed-refs"));
    }
}

fn watch_if_exists(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `.git` is a directory, or (worktrees, submodules) a file saying `gitdir: PATH`.
fn find_git_dir(manifest: &Path) -> Option<PathBuf> {
    let dot_git = manifest.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = fs::read_to_string(&dot_git).ok()?;
    let target = Path::new(text.trim().strip_prefix("gitdir: ")?);
    let dir = if target.is_absolute() {
        target.to_path_buf()
    } else {
        manifest.join(target)
    };
    dir.is_dir().then_some(dir)
}
