//! The configuration: `/etc/flocon.conf`, the layering of the command line over it over
//! pacman.conf over the built-in defaults, the validated [`Config`] the daemon runs with, and
//! its re-reading on SIGHUP ([`reload`]). Also the host facts it includes (hostname,
//! os-release `ID`, the machine's pacman architecture) and the shared error type.
//!
//! Precedence, highest first: command line (cli.rs), flocon.conf, pacman.conf
//! (pacman_conf.rs), built-in defaults. A repeatable option given in a higher layer replaces
//! the lower layer's list as a whole; within one layer its occurrences accumulate. No
//! sockets; every file read is bounded.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{CliArgs, Opt, Overrides};
use crate::pacman_conf::{FileStamp, PacmanConf, Repo};
use crate::{peers, protocol};

/// Loopback port pacman talks to (README, "Ports").
pub const DEFAULT_FRONT_PORT: u16 = 19433;
/// Packagers move these at build time (build.rs: FLOCON_DEFAULT_CONFIG etc.).
pub const DEFAULT_CONFIG_FILE: &str = env!("FLOCON_DEFAULT_CONFIG");
pub const DEFAULT_PACMAN_CONF: &str = env!("FLOCON_DEFAULT_PACMAN_CONF");
/// pacman's own defaults when pacman.conf says nothing.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/pacman/pkg/";
pub const DEFAULT_DB_PATH: &str = "/var/lib/pacman/";
pub const DEFAULT_STATE_DIR: &str = env!("FLOCON_DEFAULT_STATE_DIR");
/// Used when the hostname cannot be read or is not a valid name.
pub const DEFAULT_NAME: &str = "flocon";
/// Used when /etc/os-release has no usable `ID=`.
pub const DEFAULT_DISTRO: &str = "unknown";
/// Default `--keep-max-mb`: copies fetched from upstream and kept for the LAN (in flight and
/// for READY_LINGER after), at most this many MiB at once (docs/DESIGN.md, "One download per
/// LAN"): a few large packages of one upgrade, small enough for a Raspberry Pi's SD card.
pub const DEFAULT_KEEP_MAX_MB: u64 = 512;

/// Largest config file read (flocon.conf, pacman.conf, each include, os-release, hostname):
/// real ones are a few KiB; the bound keeps a mistaken `Include = /dev/zero` from eating memory.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;

/// A configuration problem, shown to the operator as one line: `{option}: {reason}`.
/// `option` is the command-line option (`--port`) or `file:line` for a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub option: String,
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(option: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.option, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Everything the daemon needs to start, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub config_file: PathBuf,
    pub pacman_conf: PathBuf,
    pub cache_dirs: Vec<PathBuf>,
    pub db_path: PathBuf,
    pub state_dir: PathBuf,
    /// Loopback only (checked), never empty.
    pub listen: Vec<SocketAddr>,
    pub port: u16,
    pub peer_addr: Option<IpAddr>,
    /// Empty means every multicast-capable interface that is up.
    pub interfaces: Vec<String>,
    /// `exclude-interface`: never used for discovery, and the peer server refuses
    /// connections that arrive on them.
    pub exclude_interfaces: Vec<String>,
    /// `peer = HOST[:PORT]`: peers announced to by unicast (beyond the multicast segment).
    pub static_peers: Vec<String>,
    /// Group keys: the first signs, each verifies (at most 2, for rotation).
    pub key_files: Vec<PathBuf>,
    pub debug: bool,
    pub lookup_budget: Duration,
    /// Bytes of upstream answers kept for the LAN at once (`keep-max-mb`; 0: none).
    pub keep_max_bytes: u64,
    /// `--announce-interval`: mean time between announcements (peers expire after 4×).
    pub announce_interval: Duration,
    pub name: String,
    pub distro: String,
    /// pacman architecture names, `auto` resolved, never empty.
    pub architectures: Vec<String>,
    pub repos: Vec<Repo>,
    /// Things worth one log line at startup and on every reload (e.g. pacman.conf not found).
    pub warnings: Vec<String>,
    /// pacman.conf and every file it includes, stamped when read (see [`crate::pacman_conf::changed_file`]).
    pub pacman_files: Vec<FileStamp>,
    /// The command line as parsed, so [`reload`] can re-apply it over re-read files.
    pub cli: CliArgs,
}

impl Default for Config {
    /// Built-in defaults without reading any file (for tests and as the base layer).
    fn default() -> Config {
        Config {
            config_file: PathBuf::from(DEFAULT_CONFIG_FILE),
            pacman_conf: PathBuf::from(DEFAULT_PACMAN_CONF),
            cache_dirs: vec![PathBuf::from(DEFAULT_CACHE_DIR)],
            db_path: PathBuf::from(DEFAULT_DB_PATH),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            listen: default_listen(),
            port: protocol::PORT,
            peer_addr: None,
            interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            static_peers: Vec::new(),
            key_files: Vec::new(),
            debug: false,
            lookup_budget: peers::LOOKUP_BUDGET,
            keep_max_bytes: DEFAULT_KEEP_MAX_MB << 20,
            announce_interval: peers::ANNOUNCE_INTERVAL,
            name: DEFAULT_NAME.to_string(),
            distro: DEFAULT_DISTRO.to_string(),
            architectures: vec![machine_arch().to_string()],
            repos: Vec::new(),
            warnings: Vec::new(),
            pacman_files: Vec::new(),
            cli: CliArgs::default(),
        }
    }
}

impl Config {
    /// The port of flocon's own entry in pacman.conf, for `upstream::upstreams`.
    pub fn front_port(&self) -> u16 {
        self.listen
            .first()
            .map_or(DEFAULT_FRONT_PORT, SocketAddr::port)
    }
}

/// The files read besides the ones named by options; tests point them into a temp dir.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sources {
    pub(crate) default_config: PathBuf,
    pub(crate) default_pacman_conf: PathBuf,
    pub(crate) hostname_file: PathBuf,
    pub(crate) os_release: Vec<PathBuf>,
}

impl Sources {
    pub(crate) fn system() -> Sources {
        Sources {
            default_config: PathBuf::from(DEFAULT_CONFIG_FILE),
            default_pacman_conf: PathBuf::from(DEFAULT_PACMAN_CONF),
            hostname_file: PathBuf::from("/proc/sys/kernel/hostname"),
            os_release: vec![
                PathBuf::from("/etc/os-release"),
                PathBuf::from("/usr/lib/os-release"),
            ],
        }
    }
}

/// A user-supplied value inside an error message, control characters escaped.
pub(crate) fn shown(s: &str) -> String {
    s.escape_debug().to_string()
}

pub(crate) fn default_listen() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_FRONT_PORT),
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), DEFAULT_FRONT_PORT),
    ]
}

/// pacman's name for the architecture this binary runs on (what `Architecture = auto` means).
pub fn machine_arch() -> &'static str {
    pacman_arch(std::env::consts::ARCH, cfg!(target_endian = "little"))
}

/// Rust's architecture names differ from pacman's; 32-bit ARM maps to armv7h, the
/// Raspberry Pi 2/3 Arch Linux ARM port (armv6h hosts set `Architecture` explicitly).
fn pacman_arch(rust_arch: &'static str, little_endian: bool) -> &'static str {
    match rust_arch {
        "x86" => "i686",
        "arm" => "armv7h",
        "loongarch64" => "loong64",
        "powerpc64" if little_endian => "powerpc64le",
        other => other,
    }
}

/// Reads at most `MAX_FILE_BYTES`; larger files are an error, not silently cut.
fn read_bounded(path: &Path) -> io::Result<String> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::other(format!(
            "larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// An io::Error without the "(os error N)" suffix, which tells the operator nothing.
pub(crate) fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// flocon.conf's comment rule: `#` anywhere starts a comment, to the end of the line (not
/// pacman.conf's: there only a line starting with `#` is one).
fn strip_comment(line: &str) -> &str {
    line.split('#').next().unwrap_or("")
}

/// SIGHUP: re-reads the config file and pacman.conf; command-line values still win. What we
/// announce is refused alone, with one warning, when the protocol cannot carry it: the
/// running name, distro and architectures stay (the rest of the new configuration applies).
pub fn reload(running: &Config) -> Result<Config, ConfigError> {
    let mut config = build(&running.cli)?;
    if let Err(e) = announcement(&config) {
        config.warnings.push(format!(
            "{e}; keeping the old value ({})",
            running.architectures.join(" ")
        ));
        config.name.clone_from(&running.name);
        config.distro.clone_from(&running.distro);
        config.architectures.clone_from(&running.architectures);
    }
    check_paths(&mut config);
    Ok(config)
}

/// Our announcement, built by the protocol's validating constructor. A value that every
/// receiver drops (an uppercase or too long `Architecture`, more architectures than an
/// announcement carries) is an error naming it and the rule, never announcements no peer
/// hears (docs/PROTOCOL.md §5). `--name` and the os-release ID are checked where they are
/// read, so in practice only pacman.conf's `Architecture` fails here.
pub(crate) fn announcement(config: &Config) -> Result<protocol::Announce, ConfigError> {
    let (name, distro, archs) = (&config.name, &config.distro, &config.architectures);
    protocol::Announce::new(config.port, 0, name, distro, archs).map_err(|e| match e.field {
        "architecture" | "architectures" => ConfigError::new(
            config.pacman_conf.display().to_string(),
            format!(
                "Architecture '{}': {} (peers drop an announcement carrying anything else)",
                shown(&e.value),
                e.rule
            ),
        ),
        _ => ConfigError::new("announcement", e.to_string()),
    })
}

/// Layers the command line over flocon.conf over pacman.conf over the defaults.
pub(crate) fn build(cli: &CliArgs) -> Result<Config, ConfigError> {
    let sources = &cli.sources;
    let mut config = Config {
        cli: cli.clone(),
        ..Config::default()
    };

    let explicit = cli.overrides.config.is_some();
    config.config_file = cli
        .overrides
        .config
        .clone()
        .unwrap_or_else(|| sources.default_config.clone());
    let file = match read_bounded(&config.config_file) {
        Ok(text) => parse_flocon_conf_str(&text, &config.config_file)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => Overrides::default(),
        Err(e) => {
            let option = if explicit {
                "--config".to_string()
            } else {
                config.config_file.display().to_string()
            };
            return Err(ConfigError::new(
                option,
                format!(
                    "cannot read '{}': {}",
                    config.config_file.display(),
                    io_reason(&e)
                ),
            ));
        }
    };
    let o = cli.overrides.clone().over(file);

    config.pacman_conf = o
        .pacman_conf
        .unwrap_or_else(|| sources.default_pacman_conf.clone());
    let pacman = match crate::pacman_conf::load_pacman_conf(&config.pacman_conf)? {
        Some(pacman) => pacman,
        None => {
            config.warnings.push(format!(
                "{} not found: using pacman's default cache and database paths, no repositories",
                config.pacman_conf.display()
            ));
            PacmanConf::default()
        }
    };
    config.warnings.extend(pacman.warnings);
    config.pacman_files = pacman.files;

    let mut pacman_cache_dirs = Vec::new();
    for dir in pacman.cache_dirs {
        if !pacman_cache_dirs.contains(&dir) {
            pacman_cache_dirs.push(dir);
        }
    }
    if let Some(dirs) = o.cache_dirs {
        config.cache_dirs = dirs;
    } else if !pacman_cache_dirs.is_empty() {
        config.cache_dirs = pacman_cache_dirs;
    }
    if let Some(db_path) = o.db_path.or(pacman.db_path) {
        config.db_path = db_path;
    }
    if let Some(dir) = o.state_dir {
        config.state_dir = dir;
    }
    if let Some(listen) = o.listen {
        config.listen = listen;
    }
    if let Some(port) = o.port {
        config.port = port;
    }
    config.peer_addr = o.peer_addr;
    config.interfaces = o.interfaces.unwrap_or_default();
    config.exclude_interfaces = o.exclude_interfaces.unwrap_or_default();
    config.static_peers = o.static_peers.unwrap_or_default();
    config.key_files = o.key_files.unwrap_or_default();
    config.debug = o.debug.unwrap_or(false);
    if let Some(ms) = o.lookup_ms {
        config.lookup_budget = Duration::from_millis(ms);
    }
    if let Some(secs) = o.announce_secs {
        config.announce_interval = Duration::from_secs(secs);
    }
    if let Some(mb) = o.keep_max_mb {
        config.keep_max_bytes = mb << 20;
    }
    config.name = match o.name {
        Some(name) => name,
        None => read_hostname(&sources.hostname_file),
    };
    let (distro, warning) = read_distro(&sources.os_release);
    config.distro = distro;
    config.warnings.extend(warning);
    config.architectures = resolve_architectures(&pacman.architectures);
    config.repos = pacman.repos;
    Ok(config)
}

/// One warning per thing that makes flocon quietly useless although it starts: a cache it
/// cannot list, no sync dbs to verify against, an interface that is not there. Run for the
/// daemon at start and on every reload (not by the unit tests of the layering).
pub(crate) fn check_paths(config: &mut Config) {
    for dir in &config.cache_dirs {
        if let Err(e) = fs::read_dir(dir) {
            config.warnings.push(format!(
                "cache dir {}: cannot be listed ({}): the LAN gets nothing from it",
                dir.display(),
                io_reason(&e)
            ));
        }
    }
    let sync = config.db_path.join("sync");
    if !sync.is_dir() {
        config.warnings.push(format!(
            "db path {}: no sync/ directory: no package can be verified, so none is taken \
             from the LAN until pacman -Sy has run (or --db-path names pacman's DBPath)",
            config.db_path.display()
        ));
    }
    for name in &config.interfaces {
        if crate::sys::if_nametoindex(name).is_none() {
            config.warnings.push(format!(
                "--interface {name}: no such interface (now): discovery joins it if it appears"
            ));
        }
    }
}

/// flocon.conf: `key = value` lines named like the long options; `#` starts a comment.
fn parse_flocon_conf_str(text: &str, origin: &Path) -> Result<Overrides, ConfigError> {
    let mut o = Overrides::default();
    for (index, raw) in text.lines().enumerate() {
        let at = || format!("{}:{}", origin.display(), index + 1);
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        if name.is_empty() {
            return Err(ConfigError::new(at(), "missing key before '='"));
        }
        let key = match crate::cli::key_named(name) {
            Some(Opt::Config) => {
                return Err(ConfigError::new(
                    at(),
                    "'config' cannot be set inside a config file",
                ));
            }
            Some(key) => key,
            None => {
                return Err(ConfigError::new(
                    at(),
                    format!("unknown key '{}'", shown(name)),
                ));
            }
        };
        match value {
            // A bare `debug` reads naturally, as pacman's bare keys do.
            None if key == Opt::Debug => o.debug = Some(true),
            None => {
                return Err(ConfigError::new(
                    at(),
                    format!("{name}: expected '{name} = value'"),
                ));
            }
            Some("") => return Err(ConfigError::new(at(), format!("{name}: missing value"))),
            Some(value) => o
                .set(key, OsStr::new(value))
                .map_err(|reason| ConfigError::new(at(), format!("{name}: {reason}")))?,
        }
    }
    Ok(o)
}

fn read_hostname(path: &Path) -> String {
    read_bounded(path)
        .ok()
        .and_then(|text| crate::cli::parse_name(text.trim()).ok())
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

/// The first valid os-release `ID`, else [`DEFAULT_DISTRO`] and, when an `ID=` line was
/// there but is not one peers accept (too long for an announcement, a character outside
/// os-release's own `[a-z0-9._-]`), a warning naming it: it is announced to peers, and
/// truncated it would name another distro.
fn read_distro(paths: &[PathBuf]) -> (String, Option<String>) {
    let mut warning = None;
    for path in paths {
        let Ok(text) = read_bounded(path) else {
            continue;
        };
        match os_release_id(&text) {
            Some(Ok(id)) => return (id, None),
            Some(Err(e)) => {
                warning.get_or_insert_with(|| {
                    format!("{}: {e}: announced as '{DEFAULT_DISTRO}'", path.display())
                });
            }
            None => {}
        }
    }
    (DEFAULT_DISTRO.to_string(), warning)
}

/// `ID=` of os-release(5), possibly quoted: `None` without one, an error when peers would
/// refuse it (the protocol's distro rule, os-release's charset within the wire bound).
fn os_release_id(text: &str) -> Option<Result<String, protocol::AnnounceError>> {
    let value = text.lines().find_map(|l| l.trim().strip_prefix("ID="))?;
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
        .unwrap_or(value);
    Some(protocol::check_distro(unquoted).map(|()| unquoted.to_string()))
}

pub(crate) fn resolve_architectures(listed: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for arch in listed {
        let arch = if arch == "auto" {
            machine_arch()
        } else {
            arch.as_str()
        };
        if !out.iter().any(|a| a == arch) {
            out.push(arch.to_string());
        }
    }
    if out.is_empty() {
        out.push(machine_arch().to_string());
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cli::{Command, parse_args_from};
    use crate::pacman_conf::tests::SAMPLE;
    use crate::xorshift::XorShift;
    use std::ffi::OsString;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "flocon-config-test-{}-{tag}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        pub(crate) fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }

        pub(crate) fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }

        pub(crate) fn sources(&self) -> Sources {
            Sources {
                default_config: self.path("flocon.conf"),
                default_pacman_conf: self.path("pacman.conf"),
                hostname_file: self.path("hostname"),
                os_release: vec![self.path("os-release"), self.path("usr-os-release")],
            }
        }

        pub(crate) fn parse(&self, args: &[&str]) -> Result<Command, ConfigError> {
            parse_args_from(args.iter().map(OsString::from), self.sources())
        }

        pub(crate) fn daemon(&self, args: &[&str]) -> Config {
            match self.parse(args) {
                Ok(Command::Daemon(config)) => config,
                other => panic!("expected a daemon config from {args:?}, got {other:?}"),
            }
        }

        pub(crate) fn error(&self, args: &[&str]) -> ConfigError {
            match self.parse(args) {
                Err(e) => e,
                Ok(other) => panic!("expected an error from {args:?}, got {other:?}"),
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    pub(crate) fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn no_files_gives_defaults() {
        let dir = TempDir::new("defaults");
        let config = dir.daemon(&[]);
        assert_eq!(config.config_file, dir.path("flocon.conf"));
        assert_eq!(config.pacman_conf, dir.path("pacman.conf"));
        assert_eq!(config.cache_dirs, vec![p("/var/cache/pacman/pkg/")]);
        assert_eq!(config.db_path, p("/var/lib/pacman/"));
        assert_eq!(config.state_dir, p("/var/cache/flocon"));
        assert_eq!(
            config.listen,
            vec![sa("127.0.0.1:19433"), sa("[::1]:19433")]
        );
        assert_eq!(config.port, 19432);
        assert_eq!(config.peer_addr, None);
        assert!(config.interfaces.is_empty());
        assert!(config.key_files.is_empty());
        assert!(!config.debug);
        assert_eq!(config.lookup_budget, Duration::from_millis(50));
        assert_eq!(config.name, "flocon");
        assert_eq!(config.distro, "unknown");
        assert_eq!(config.architectures, vec![machine_arch().to_string()]);
        assert!(config.repos.is_empty());
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("not found"));
        assert_eq!(config.front_port(), DEFAULT_FRONT_PORT);
    }

    #[test]
    fn hostname_and_os_release_are_read() {
        let dir = TempDir::new("host");
        dir.write("hostname", "pi4\n");
        dir.write(
            "usr-os-release",
            "NAME=\"Arch Linux ARM\"\nID_LIKE=arch\nID=\"archarm\"\n",
        );
        let config = dir.daemon(&[]);
        assert_eq!(config.name, "pi4");
        assert_eq!(config.distro, "archarm");
        // The first os-release file wins.
        dir.write("os-release", "ID=arch\n");
        assert_eq!(dir.daemon(&[]).distro, "arch");
        // A hostname that is not a valid name falls back.
        dir.write("hostname", &"x".repeat(65));
        assert_eq!(dir.daemon(&[]).name, "flocon");
        // An ID no announcement can carry (longer than the wire's 32 bytes, or outside
        // os-release's charset) is not cut into another distro: the default, and a warning
        // naming the file, the value and the rule.
        let max = "d".repeat(protocol::MAX_DISTRO_LEN);
        dir.write("os-release", &format!("ID={max}\n"));
        let config = dir.daemon(&[]);
        assert_eq!((config.distro.as_str(), config.warnings.len()), (&*max, 1));
        let long = "d".repeat(protocol::MAX_DISTRO_LEN + 1);
        for id in [long.as_str(), "Arch", ""] {
            dir.write("os-release", &format!("ID={id}\n"));
            let config = dir.daemon(&[]);
            assert_eq!(config.distro, "archarm", "{id}: the next file's ID");
            dir.write("usr-os-release", "ID=\n");
            let config = dir.daemon(&[]);
            assert_eq!(config.distro, DEFAULT_DISTRO, "{id}");
            let warning = format!(
                "{}: distro '{id}': must be 1-32 bytes of a-z, 0-9, '.', '_' and '-': \
                 announced as 'unknown'",
                dir.path("os-release").display()
            );
            assert_eq!(config.warnings[1..], [warning], "{id}");
            dir.write("usr-os-release", "ID=archarm\n");
        }
    }

    #[test]
    fn os_release_id_forms() {
        let id = |text| os_release_id(text).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(id("ID=arch"), Some(Ok("arch".into())));
        assert_eq!(id("ID='arch'\n"), Some(Ok("arch".into())));
        assert_eq!(id("ID_LIKE=arch\n"), None);
        assert!(id("ID=\"Bad Id\"").is_some_and(|r| r.is_err()));
        assert!(id("ID=").is_some_and(|r| r.is_err()));
        assert_eq!(id("NAME=x\n  ID=debian \n"), Some(Ok("debian".into())));
    }

    #[test]
    fn config_file_parsing() {
        let dir = TempDir::new("file");
        dir.write(
            "flocon.conf",
            "# flocon settings\n\
             \n\
             cache-dir = /one\n\
             cache-dir=/two   # trailing comment\n\
             \tdb-path = /db\n\
             state-dir = /st\n\
             listen = 127.0.0.1:1000\n\
             listen = [::1]:1000\n\
             port = 2000\n\
             peer-addr = 10.0.0.7\n\
             interface = eth0\n\
             interface = wlan0\n\
             key-file = /etc/flocon.key\n\
             debug = yes\n\
             lookup-ms = 120\n\
             name = shelf pi\n\
             port = 2001\n",
        );
        let config = dir.daemon(&[]);
        assert_eq!(config.cache_dirs, vec![p("/one"), p("/two")]);
        assert_eq!(config.db_path, p("/db"));
        assert_eq!(config.state_dir, p("/st"));
        assert_eq!(config.listen, vec![sa("127.0.0.1:1000"), sa("[::1]:1000")]);
        assert_eq!(
            config.port, 2001,
            "the last value of a single-valued key wins"
        );
        assert_eq!(config.peer_addr, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(config.interfaces, vec!["eth0", "wlan0"]);
        assert_eq!(config.key_files, vec![p("/etc/flocon.key")]);
        assert!(config.debug);
        assert_eq!(config.lookup_budget, Duration::from_millis(120));
        assert_eq!(config.name, "shelf pi");

        for (text, value) in [
            ("debug = no", false),
            ("debug = FALSE", false),
            ("debug = true", true),
            ("debug", true),
        ] {
            dir.write("flocon.conf", text);
            assert_eq!(dir.daemon(&[]).debug, value, "{text}");
        }
        dir.write("flocon.conf", "pacman-conf = /nonexistent/pacman.conf\n");
        assert_eq!(dir.daemon(&[]).pacman_conf, p("/nonexistent/pacman.conf"));
    }

    #[test]
    fn config_file_errors_name_file_line_and_key() {
        let dir = TempDir::new("fileerr");
        let file = dir.path("flocon.conf");
        let f = file.display().to_string();
        let cases: &[(&str, String, &str)] = &[
            (
                "# c\n\n\n\n\n\nprot = 1\n",
                format!("{f}:7"),
                "unknown key 'prot'",
            ),
            (
                "port = abc",
                format!("{f}:1"),
                "port: invalid port 'abc' (expected 1-65535)",
            ),
            (
                "x\nlisten = 10.1.1.1:19433",
                format!("{f}:2"),
                "listen: '10.1.1.1:19433' is not a loopback",
            ),
            ("port", format!("{f}:1"), "port: expected 'port = value'"),
            ("port =", format!("{f}:1"), "port: missing value"),
            ("= 5", format!("{f}:1"), "missing key"),
            ("config = /x", format!("{f}:1"), "'config' cannot be set"),
            ("--port = 5", format!("{f}:1"), "unknown key '--port'"),
            (
                "debug = maybe",
                format!("{f}:1"),
                "debug: invalid value 'maybe'",
            ),
            (
                "interface = a b",
                format!("{f}:1"),
                "interface: invalid interface name 'a b'",
            ),
            (
                "lookup-ms = 9999",
                format!("{f}:1"),
                "lookup-ms: invalid value",
            ),
            (
                "name = a\u{7}b",
                format!("{f}:1"),
                "name: name 'a\\u{7}b' contains control",
            ),
        ];
        for (text, option, reason) in cases {
            let text = if text.starts_with('x') {
                text.replacen('x', "# x", 1)
            } else {
                text.to_string()
            };
            dir.write("flocon.conf", &text);
            let e = dir.error(&[]);
            assert_eq!(&e.option, option, "{text:?} -> {e}");
            assert!(e.reason.contains(reason), "{text:?} -> {e}");
        }
        dir.write("flocon.conf", "# c\n\n\n\n\n\nprot = 1\n");
        assert_eq!(
            dir.error(&[]).to_string(),
            format!("{f}:7: unknown key 'prot'")
        );
    }

    #[test]
    fn cli_wins_over_file() {
        let dir = TempDir::new("prec");
        dir.write(
            "flocon.conf",
            "port = 1000\ncache-dir = /a\ncache-dir = /b\nlisten = 127.0.0.1:5000\n\
             interface = eth0\ndebug = yes\nname = filename\n",
        );
        let config = dir.daemon(&["--port", "2000", "--cache-dir", "/c", "--name", "cli"]);
        assert_eq!(config.port, 2000);
        assert_eq!(
            config.cache_dirs,
            vec![p("/c")],
            "a CLI list replaces the file's"
        );
        assert_eq!(config.name, "cli");
        // What the CLI does not give comes from the file.
        assert_eq!(config.listen, vec![sa("127.0.0.1:5000")]);
        assert_eq!(config.interfaces, vec!["eth0"]);
        assert!(config.debug);
        let config = dir.daemon(&["--interface", "lo", "--interface", "veth1"]);
        assert_eq!(config.interfaces, vec!["lo", "veth1"]);
        assert_eq!(config.cache_dirs, vec![p("/a"), p("/b")]);
    }

    #[test]
    fn cache_and_db_precedence_chain() {
        let dir = TempDir::new("chain");
        dir.write(
            "pacman.conf",
            "[options]\nCacheDir = /pm/cache1 /pm/cache2\nCacheDir = /pm/cache1\nDBPath = /pm/db\n",
        );
        let config = dir.daemon(&[]);
        assert_eq!(config.cache_dirs, vec![p("/pm/cache1"), p("/pm/cache2")]);
        assert_eq!(config.db_path, p("/pm/db"));
        dir.write("flocon.conf", "cache-dir = /fl/cache\ndb-path = /fl/db\n");
        let config = dir.daemon(&[]);
        assert_eq!(config.cache_dirs, vec![p("/fl/cache")]);
        assert_eq!(config.db_path, p("/fl/db"));
        let config = dir.daemon(&["--cache-dir", "/cli/cache", "--db-path", "/cli/db"]);
        assert_eq!(config.cache_dirs, vec![p("/cli/cache")]);
        assert_eq!(config.db_path, p("/cli/db"));
    }

    #[test]
    fn config_file_presence() {
        let dir = TempDir::new("presence");
        // Explicit and missing: an error naming --config.
        let missing = dir.path("nope.conf");
        let e = dir.error(&["--config", missing.to_str().unwrap()]);
        assert_eq!(e.option, "--config");
        assert!(e.reason.contains("No such file"), "{e}");
        // The default exists but cannot be read: an error naming it.
        fs::create_dir_all(dir.path("flocon.conf")).unwrap();
        let e = dir.error(&[]);
        assert_eq!(e.option, dir.path("flocon.conf").display().to_string());
        // pacman.conf named explicitly but missing: defaults, with a warning.
        let config = dir.daemon(&[
            "--config",
            dir.write("c.conf", "").to_str().unwrap(),
            "--pacman-conf",
            "/nonexistent/pacman.conf",
        ]);
        assert_eq!(config.cache_dirs, vec![p(DEFAULT_CACHE_DIR)]);
        assert_eq!(config.warnings.len(), 1);
        // An oversized file is refused rather than cut.
        let big = dir.write("big.conf", &"#".repeat(MAX_FILE_BYTES as usize + 1));
        let e = dir.error(&["--config", big.to_str().unwrap()]);
        assert!(e.reason.contains("larger than"), "{e}");
    }

    #[test]
    fn reload_keeps_cli_values() {
        let dir = TempDir::new("reload");
        dir.write("flocon.conf", "port = 1000\nname = before\n");
        dir.write("pacman.conf", "[core]\nServer = http://a/$repo\n");
        let config = dir.daemon(&["--port", "2000", "--debug"]);
        assert_eq!((config.port, config.name.as_str()), (2000, "before"));
        dir.write(
            "flocon.conf",
            "port = 3000\nname = after\ndebug = no\nlookup-ms = 7\n",
        );
        dir.write("pacman.conf", "[core]\n[extra]\n");
        let new = reload(&config).unwrap();
        assert_eq!(new.port, 2000);
        assert!(new.debug);
        assert_eq!(new.name, "after");
        assert_eq!(new.lookup_budget, Duration::from_millis(7));
        assert_eq!(new.repos.len(), 2);
        assert_eq!(new.cli, config.cli);
        dir.write("flocon.conf", "port = x\n");
        assert!(reload(&config).is_err());
    }

    /// An Architecture the protocol cannot carry would make every peer drop our
    /// announcements: refused at start with one line naming the value and the rule; on a
    /// reload the running value stays, with one warning, and the rest applies.
    #[test]
    fn architectures_the_protocol_cannot_carry() {
        let dir = TempDir::new("arch");
        let pacman = dir.path("pacman.conf").display().to_string();
        let rule = "must be 1-16 bytes of a-z, 0-9, '_' and '-' \
                    (peers drop an announcement carrying anything else)";
        let cases = [
            ("X86_64", format!("Architecture 'X86_64': {rule}")),
            (
                "auto x86_64 Aarch64",
                format!("Architecture 'Aarch64': {rule}"),
            ),
            (
                "x86_64_v3_and_then_some",
                format!("Architecture 'x86_64_v3_and_then_some': {rule}"),
            ),
            (
                "armv7\u{7}",
                format!("Architecture 'armv7\\u{{7}}': {rule}"),
            ),
            (
                "a b c d e",
                "Architecture 'a b c d e': an announcement carries at most 4 architectures \
                 (peers drop an announcement carrying anything else)"
                    .to_string(),
            ),
        ];
        for (archs, reason) in &cases {
            dir.write(
                "pacman.conf",
                &format!("[options]\nArchitecture = {archs}\n"),
            );
            let e = dir.error(&[]);
            assert_eq!(
                (e.option.as_str(), &e.reason),
                (pacman.as_str(), reason),
                "{archs}"
            );
            // `flocon status` announces nothing: it still asks the daemon.
            assert!(matches!(dir.parse(&["status"]), Ok(Command::Status { .. })));
        }
        dir.write(
            "pacman.conf",
            "[options]\nArchitecture = x86_64 armv7h\n[core]\n",
        );
        let running = dir.daemon(&["--name", "pi"]);
        assert_eq!(running.architectures, ["x86_64", "armv7h"]);
        dir.write(
            "pacman.conf",
            "[options]\nArchitecture = X86_64\n[core]\n[extra]\n",
        );
        let new = reload(&running).unwrap();
        assert_eq!(new.architectures, running.architectures);
        assert_eq!(
            new.repos.len(),
            2,
            "the rest of the new configuration applies"
        );
        let refused: Vec<&String> = new
            .warnings
            .iter()
            .filter(|w| w.contains("X86_64"))
            .collect();
        assert_eq!(
            refused,
            [&format!(
                "{pacman}: Architecture 'X86_64': {rule}; keeping the old value (x86_64 armv7h)"
            )]
        );
        assert_eq!(announcement(&new).unwrap().archs, ["x86_64", "armv7h"]);
    }

    #[test]
    fn pacman_conf_into_config() {
        let dir = TempDir::new("pmconfig");
        dir.write("pacman.conf", SAMPLE);
        let config = dir.daemon(&[]);
        assert_eq!(config.db_path, p("/srv/pacman/db/"));
        assert_eq!(config.cache_dirs.len(), 3);
        assert_eq!(config.repos.len(), 3);
        assert_eq!(
            config.architectures.last().map(String::as_str),
            Some("armv7h")
        );
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn architecture_names() {
        assert_eq!(pacman_arch("x86_64", true), "x86_64");
        assert_eq!(pacman_arch("aarch64", true), "aarch64");
        assert_eq!(pacman_arch("arm", true), "armv7h");
        assert_eq!(pacman_arch("x86", true), "i686");
        assert_eq!(pacman_arch("riscv64", true), "riscv64");
        assert_eq!(pacman_arch("loongarch64", true), "loong64");
        assert_eq!(pacman_arch("powerpc64", true), "powerpc64le");
        assert_eq!(pacman_arch("powerpc64", false), "powerpc64");
        assert_eq!(resolve_architectures(&[]), vec![machine_arch().to_string()]);
        assert_eq!(
            resolve_architectures(&["auto".into(), "auto".into()]),
            vec![machine_arch().to_string()]
        );
    }

    /// Random text from fragments that matter to the grammars of flocon.conf, pacman.conf
    /// and mirror URLs: the same texts for every module's mini-fuzz.
    pub(crate) fn fuzz_texts() -> Vec<String> {
        let fragments = [
            "[",
            "]",
            "=",
            "#",
            " ",
            "\n",
            "options",
            "core",
            "Server",
            "CacheServer",
            "flocon:",
            "Include",
            "CacheDir",
            "DBPath",
            "Architecture",
            "http://",
            "localhost",
            ":19433",
            "[::1]",
            "$repo",
            "$arch",
            "/",
            "port",
            "listen",
            "name",
            "debug",
            "127.0.0.1:5",
            "\u{0}",
            "é",
            "\t",
            "\r",
        ];
        let mut rng = XorShift::new(0x1234_5678_9abc_def1);
        (0..3000)
            .map(|_| {
                (0..rng.below(40))
                    .map(|_| fragments[rng.below(fragments.len())])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn parsers_mini_fuzz_never_panic() {
        let origin = Path::new("/nonexistent/fuzz.conf");
        // Every truncation of a real file.
        let flocon = "port = 2000\nlisten = [::1]:1\n# c\ndebug\nname = x # y\n";
        for cut in 0..=flocon.len() {
            let _ = parse_flocon_conf_str(&flocon[..cut], origin);
        }
        for text in fuzz_texts() {
            let _ = parse_flocon_conf_str(&text, origin);
            let _ = os_release_id(&text);
        }
    }
}
