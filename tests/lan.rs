//! Scenario scripts on a namespace LAN with a bridge (tests/lan.sh), run by `cargo test`:
//! each script builds its own isolated LAN (user + network + mount + pid namespaces) that
//! disappears with it, so nothing reaches a real interface.
//!
//! The end-to-end suite runs twice, one run after the other (they share the fixtures, and
//! two at once would only make each slower): with the host's pacman (6.0 on Debian bookworm)
//! in the `Server =` role, and with pacman 7 from the Debian trixie tree under
//! `target/trixie` (tests/trixie.sh) in the `CacheServer` role the README recommends. A
//! missing pacman or tree fails the test with the command that fixes it: never a silent "ok".

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// One end-to-end run at a time.
static E2E: Mutex<()> = Mutex::new(());

/// Runs SCRIPT ARGS... BIN in an isolated LAN; its output is also kept in
/// target/tmp/<log>.log (what .ci/run shows of a passing run: cargo test hides it).
fn run_isolated(script: &str, args: &[&str], log: &str) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{dir}/tests/lan.sh"))
        .arg("isolated")
        .arg(format!("{dir}/tests/{script}"))
        .args(args)
        .arg(env!("CARGO_BIN_EXE_flocon"))
        // built once, kept for both runs and the next `cargo test` (fixtures.sh checks them)
        .env(
            "E2E_FIXTURES",
            concat!(env!("CARGO_TARGET_TMPDIR"), "/e2e-fixtures"),
        )
        .output()
        .expect("run tests/lan.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    let _ = std::fs::write(
        format!("{}/{log}.log", env!("CARGO_TARGET_TMPDIR")),
        stdout.as_bytes(),
    );
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{script} {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
}

/// Panics (fails the test) when the host lacks the end-to-end suite's tools.
fn require_pacman_tools() {
    let missing: Vec<&str> = ["pacman", "makepkg", "repo-add", "openssl"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    assert!(
        missing.is_empty(),
        "tests/e2e.sh cannot run: {} not installed (Debian: apt-get install \
         pacman-package-manager makepkg libarchive-tools fakeroot gnupg zstd xz-utils openssl)",
        missing.join(", ")
    );
}

#[test]
fn discovery_on_a_bridged_lan_ipv4_ipv6_late_address_cut_heal() {
    run_isolated("lan_discovery.sh", &[], "lan_discovery");
}

/// A hostile host (raw sockets, a hub switch) against open and keyed flocon.
#[test]
fn attacks_from_a_lan_host_without_and_with_a_group_key() {
    run_isolated("lan_attack.sh", &[], "lan_attack");
}

/// Two segments and a router: static peers, a keyed copy across it, exclude-interface.
#[test]
fn static_peers_across_a_router_and_excluded_interfaces() {
    run_isolated("lan_routed.sh", &[], "lan_routed");
}

/// One download per LAN: 4 hosts with the host's pacman install the same set at the same
/// moment through a 20 Mbit/s mirror; the fetching host killed half-way; another build.
/// Shares the end-to-end fixtures, so it takes the same lock.
#[test]
fn one_download_per_lan_four_hosts_install_at_once() {
    require_pacman_tools();
    let _one = E2E.lock().unwrap_or_else(|e| e.into_inner());
    run_isolated("lan_join.sh", &[], "lan_join");
}

/// The end-to-end suite with the host's pacman (6.0.2 on bookworm), flocon as its first
/// `Server`: the way for pacman < 6.1.
#[test]
fn pacman_6_server_end_to_end_on_a_namespace_lan() {
    require_pacman_tools();
    let _one = E2E.lock().unwrap_or_else(|e| e.into_inner());
    run_isolated("e2e.sh", &[], "e2e-pacman6-server");
}

/// The end-to-end suite with pacman 7 (Debian trixie's, in a chroot), flocon as its
/// `CacheServer`: the README's recommended setup.
#[test]
fn pacman_7_cacheserver_end_to_end_on_a_namespace_lan() {
    if std::env::var_os("FLOCON_NO_PACMAN7").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED the pacman 7 end-to-end run (FLOCON_NO_PACMAN7=1)");
        return;
    }
    require_pacman_tools();
    let tree = concat!(env!("CARGO_MANIFEST_DIR"), "/target/trixie");
    assert!(
        Path::new(tree).join("usr/bin/pacman").is_file(),
        "no pacman 7 tree at {tree}: build it with `sudo tests/trixie.sh target/trixie` \
         (about 2 minutes; needs debootstrap and the Debian mirror), or set FLOCON_NO_PACMAN7=1 \
         to skip this run explicitly"
    );
    let _one = E2E.lock().unwrap_or_else(|e| e.into_inner());
    run_isolated("e2e.sh", &["--tree", tree], "e2e-pacman7-cacheserver");
}
