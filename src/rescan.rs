//! What a rescan and a re-read of the configuration change, for the daemon's Rescan timer,
//! SIGHUP and waker to call: pacman.conf and the files it includes followed, the
//! configuration re-read and applied (except the settings bound to sockets and identity,
//! which wait for a restart), the sync dbs checked and the loaded ones installed in the
//! index, static peers' names resolved again, our cache digest rebuilt and the peers'
//! fetched, and the warning when no multicast group is joined. It owns no state: the daemon passes what each step changes.

use crate::auth::Keys;
use crate::config::Config;
use crate::dbload::DbLoader;
use crate::discovery::{self, Discovery, Identity};
use crate::env::{Loop, check_dbs};
use crate::server::CacheDirs;
use crate::syncdb::SyncIndex;
use crate::transfer;

/// At start, what peers know this daemon by: the configuration, its announcement (built by
/// the validating constructor: config.rs refused what it cannot carry already) and its group
/// keys (the warnings of both logged).
pub(crate) fn identity(cfg: &Config) -> Result<Identity, String> {
    for w in &cfg.warnings {
        warn!("{w}");
    }
    let (keys, key_warnings) = Keys::load(&cfg.key_files)?;
    for w in key_warnings {
        warn!("{w}");
    }
    Ok(Identity {
        announce_interval: cfg.announce_interval,
        port: cfg.port,
        peer_addr: cfg.peer_addr,
        interfaces: cfg.interfaces.clone(),
        announce: crate::config::announcement(cfg).map_err(|e| e.to_string())?,
        exclude_interfaces: cfg.exclude_interfaces.clone(),
        keys,
        static_peers: cfg.static_peers.clone(),
    })
}

/// The sync dbs whose file changed go to the helper thread; static peers whose name is due
/// are resolved again; our cache digest is rebuilt if the cache changed (not while
/// stopping: `publish` false), and the peers' digests we lack are fetched.
pub(crate) fn check(publish: bool, env: &mut Loop) {
    check_dbs(env.cfg, env.index, env.dbload);
    for (i, host, port) in env.discovery.static_resolutions_due(env.now) {
        env.resolver
            .resolve(discovery::static_resolve_id(i), host, port);
    }
    if publish {
        env.publish_digest();
    }
    env.fetch_digests();
}

/// Installs the sync dbs the helper thread loaded (a failed one keeps its previous index).
/// Whether any was installed and none is still loading: what the front waits for.
pub(crate) fn install_loaded(cfg: &Config, index: &mut SyncIndex, dbload: &mut DbLoader) -> bool {
    let loaded = dbload.results();
    let any = !loaded.is_empty();
    for (repo, r) in loaded {
        match r {
            Ok((map, stamp)) => {
                info!("sync db {repo}: {} packages", map.len());
                index.install(&repo, Some(stamp), map);
            }
            Err(e) => {
                let path = cfg.db_path.join("sync").join(format!("{repo}.db"));
                warn!(
                    "sync db {}: {e}; keeping the previous index",
                    path.display()
                );
                index.keep_old(&repo, crate::syncdb::stamp(&path));
            }
        }
    }
    any && dbload.in_flight.is_empty()
}

/// pacman.conf, a file it includes or a mirrorlist changed (reflector, a merged .pacnew,
/// an edit): re-read the configuration as SIGHUP does; the sync dbs follow their own
/// stamps. One log line. Whether a new configuration was applied.
pub(crate) fn follow_pacman_conf(cfg: &mut Config, cache: &mut CacheDirs) -> bool {
    let Some(path) = crate::pacman_conf::changed_file(&cfg.pacman_files) else {
        return false;
    };
    let why = format!("{} changed", path.display());
    if !apply_config(cfg, cache, &why) {
        return false;
    }
    let servers: usize = cfg.repos.iter().map(|r| r.servers.len()).sum();
    info!(
        "{why}: pacman.conf re-read ({} repos, {servers} server lines)",
        cfg.repos.len()
    );
    true
}

/// Re-reads the configuration and applies it, logging each of its warnings; on failure
/// keeps the running one and re-stamps pacman's files (the broken one included), so that
/// only a further change tries again.
pub(crate) fn apply_config(running: &mut Config, cache: &mut CacheDirs, why: &str) -> bool {
    let mut cfg = match crate::config::reload(running) {
        Ok(cfg) => cfg,
        Err(e) => {
            warn!("{why}: keeping the old configuration: {e}");
            running.pacman_files = crate::pacman_conf::pacman_conf_stamps(&running.pacman_conf);
            return false;
        }
    };
    for w in &cfg.warnings {
        warn!("{w}");
    }
    let kept = keep_restart_settings(running, &mut cfg);
    if !kept.is_empty() {
        warn!(
            "{why}: {} changed; keeping the old value until flocon restarts",
            kept.join(", ")
        );
    }
    crate::log::set_debug(cfg.debug);
    *cache = CacheDirs::new(&cfg.cache_dirs);
    if cfg.state_dir != running.state_dir {
        prepare_staging(&cfg);
    }
    *running = cfg;
    true
}

/// Once after start and after each re-read: no multicast group joined means no peer.
pub(crate) fn warn_if_no_multicast(cfg: &Config, discovery: &Discovery) {
    if discovery.joined().is_empty() {
        let named = if cfg.interfaces.is_empty() {
            String::new()
        } else {
            format!(" (--interface {})", cfg.interfaces.join(", "))
        };
        warn!(
            "no multicast interface joined{named}: no peer can be found (flocon serves \
             from the mirrors only) until one comes up"
        );
    }
}

/// Settings bound to sockets or to the identity peers know: a reload keeps their old values
/// in `new` and returns the names of those that differed.
fn keep_restart_settings(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($($field:ident: $name:literal),*) => {$(
            if new.$field != old.$field {
                kept.push($name);
                new.$field = old.$field.clone();
            }
        )*};
    }
    keep!(listen: "listen", port: "port", peer_addr: "peer-addr", interfaces: "interface",
        name: "name", distro: "distro", architectures: "architecture", state_dir: "state-dir",
        announce_interval: "announce-interval");
    kept
}

pub(crate) fn prepare_staging(cfg: &Config) {
    let staging = cfg.state_dir.join("staging");
    if let Err(e) = transfer::prepare_staging(&staging) {
        let s = staging.display();
        warn!("staging dir {s}: {e}; every request goes upstream");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_reload_keeps_socket_and_identity_settings_and_names_them() {
        let old = Config::default();
        let mut new = Config {
            port: old.port + 1,
            name: "renamed".into(),
            interfaces: vec!["eth9".into()],
            announce_interval: old.announce_interval + Duration::from_secs(1),
            lookup_budget: old.lookup_budget + Duration::from_millis(10),
            debug: !old.debug,
            ..Config::default()
        };
        let kept = keep_restart_settings(&old, &mut new);
        assert_eq!(kept, ["port", "interface", "name", "announce-interval"]);
        assert_eq!(
            (new.port, &new.name, &new.interfaces),
            (old.port, &old.name, &old.interfaces)
        );
        assert_eq!(new.announce_interval, old.announce_interval);
        // the others apply at once
        assert_eq!(
            new.lookup_budget,
            old.lookup_budget + Duration::from_millis(10)
        );
        assert_eq!(new.debug, !old.debug);
        assert!(keep_restart_settings(&old, &mut old.clone()).is_empty());
    }
}
