//! Scenario scripts on a namespace LAN with a bridge (tests/lan.sh), run by `cargo test`:
//! each script builds its own isolated LAN (user + network + mount + pid namespaces) that
//! disappears with it, so nothing reaches a real interface.

use std::process::Command;

fn run_isolated(script: &str) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{dir}/tests/lan.sh"))
        .arg("isolated")
        .arg(format!("{dir}/tests/{script}"))
        .arg(env!("CARGO_BIN_EXE_flocon"))
        .output()
        .expect("run tests/lan.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn discovery_on_a_bridged_lan_ipv4_ipv6_late_address_cut_heal() {
    run_isolated("lan_discovery.sh");
}
