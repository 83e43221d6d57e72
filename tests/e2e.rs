//! The end-to-end suite (tests/e2e.sh) under `cargo test`: real pacman, makepkg-built signed
//! packages and a mirror on a namespace LAN of its own (tests/lan.sh isolated), which
//! disappears with it. Skipped, with a message, only where pacman's tools are not installed
//! (.ci/run installs them, so CI always runs it).

use std::path::Path;
use std::process::Command;

/// The tools the suite cannot do without; everything else it checks itself.
const NEEDED: [&str; 3] = ["pacman", "makepkg", "repo-add"];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}

#[test]
fn pacman_end_to_end_on_a_namespace_lan() {
    let missing: Vec<&str> = NEEDED.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        eprintln!(
            "SKIPPED tests/e2e.sh: {} not installed (Debian: apt-get install \
             pacman-package-manager makepkg libarchive-tools fakeroot gnupg zstd xz-utils)",
            missing.join(", ")
        );
        return;
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{dir}/tests/lan.sh"))
        .arg("isolated")
        .arg(format!("{dir}/tests/e2e.sh"))
        .arg(env!("CARGO_BIN_EXE_flocon"))
        .output()
        .expect("run tests/lan.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "tests/e2e.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
