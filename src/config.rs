//! Configuration: the command line (lexopt), `/etc/flocon.conf`, and the reader of pacman.conf.
//!
//! Everything the operator tells the daemon arrives here and leaves as one validated [`Config`].
//! Precedence, highest first: command line, flocon.conf, pacman.conf, built-in defaults. A
//! repeatable option given in a higher layer replaces the lower layer's list as a whole; within
//! one layer its occurrences accumulate. The repo list and the upstream rules (docs/DESIGN.md, "Upstreams") come
//! from pacman.conf ([`PacmanConf`], [`Repo::upstreams`]). No sockets; every file read is bounded.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use lexopt::prelude::*;

/// Loopback port pacman talks to (README, "Ports").
pub const DEFAULT_FRONT_PORT: u16 = 19433;
/// Peer TCP and UDP port (README, "Ports").
pub const DEFAULT_PEER_PORT: u16 = 19432;
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
/// How long a request waits for peers to answer before going upstream: a LAN round trip is
/// well under a millisecond, a busy Raspberry Pi on Wi-Fi a few tens.
pub const DEFAULT_LOOKUP_MS: u64 = 50;
/// Default mean seconds between announcements (docs/PROTOCOL.md).
pub const DEFAULT_ANNOUNCE_SECS: u64 = 30;
/// Upper bound of `--lookup-ms`: the lookup happens before pacman sees its first body byte,
/// and pacman aborts after 10 s without one, so the wait must stay far below that.
pub const MAX_LOOKUP_MS: u64 = 5000;
/// Default `--keep-max-mb`: copies fetched from upstream and kept for the LAN (in flight and
/// for READY_LINGER after), at most this many MiB at once (docs/DESIGN.md, "One download per
/// LAN"): a few large packages of one upgrade, small enough for a Raspberry Pi's SD card.
pub const DEFAULT_KEEP_MAX_MB: u64 = 512;
/// Upper bound of `--keep-max-mb` (the staging area as a whole holds at most 4 GiB).
pub const MAX_KEEP_MAX_MB: u64 = 4096;
/// Longest `--name`: Linux's HOST_NAME_MAX, so every hostname fits.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest interface name: the kernel's IFNAMSIZ (16) minus its NUL terminator.
const MAX_IFACE_BYTES: usize = 15;
/// Longest distro id kept from os-release: real ids are a few bytes; it is announced to peers.
const MAX_DISTRO_BYTES: usize = 64;
/// Largest config file read (flocon.conf, pacman.conf, each include, os-release, hostname):
/// real ones are a few KiB; the bound keeps a mistaken `Include = /dev/zero` from eating memory.
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Include nesting: pacman's own limit, so every pacman.conf pacman accepts is accepted here.
const MAX_INCLUDE_DEPTH: usize = 10;
/// Files read for one pacman.conf with its includes: a real setup reads about a dozen (the
/// mirrorlist once per repo); with `MAX_FILE_BYTES` this bounds the total work.
const MAX_INCLUDED_FILES: usize = 1024;
/// Files one `Include` glob may match: /etc/pacman.d holds a handful.
const MAX_GLOB_MATCHES: usize = 256;
/// Directory entries scanned to expand one glob component: bounds the work on a huge directory.
const MAX_GLOB_SCAN: usize = 65536;
/// Values of one repeatable option (cache dirs, listen addresses, interfaces): far beyond real
/// use; bounds the sockets opened and the directories scanned.
const MAX_LIST_ENTRIES: usize = 64;

/// A configuration problem, shown to the operator as one line: `{option}: {reason}`.
/// `option` is the command-line option (`--port`) or `file:line` for a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub option: String,
    pub reason: String,
}

impl ConfigError {
    fn new(option: impl Into<String>, reason: impl Into<String>) -> ConfigError {
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
    /// pacman.conf and every file it includes, stamped when read (see [`changed_file`]).
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
            port: DEFAULT_PEER_PORT,
            peer_addr: None,
            interfaces: Vec::new(),
            exclude_interfaces: Vec::new(),
            static_peers: Vec::new(),
            key_files: Vec::new(),
            debug: false,
            lookup_budget: Duration::from_millis(DEFAULT_LOOKUP_MS),
            keep_max_bytes: DEFAULT_KEEP_MAX_MB << 20,
            announce_interval: Duration::from_secs(DEFAULT_ANNOUNCE_SECS),
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
    /// The port of flocon's own entry in pacman.conf, for [`Repo::upstreams`].
    pub fn front_port(&self) -> u16 {
        self.listen
            .first()
            .map_or(DEFAULT_FRONT_PORT, SocketAddr::port)
    }
}

/// The parsed command line, opaque outside this module.
#[derive(Debug, Clone, PartialEq)]
pub struct CliArgs {
    overrides: Overrides,
    sources: Sources,
}

impl Default for CliArgs {
    fn default() -> CliArgs {
        CliArgs {
            overrides: Overrides::default(),
            sources: Sources::system(),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Daemon(Config),
    Status { config: Config, json: bool },
    Help,
    Version,
}

/// The files read besides the ones named by options; tests point them into a temp dir.
#[derive(Debug, Clone, PartialEq)]
struct Sources {
    default_config: PathBuf,
    default_pacman_conf: PathBuf,
    hostname_file: PathBuf,
    os_release: Vec<PathBuf>,
}

impl Sources {
    fn system() -> Sources {
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

/// An option, named the same on the command line (`--name`) and in flocon.conf (`name =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Config,
    PacmanConf,
    CacheDir,
    DbPath,
    StateDir,
    Listen,
    Port,
    PeerAddr,
    Interface,
    KeyFile,
    ExcludeInterface,
    Peer,
    Debug,
    LookupMs,
    AnnounceInterval,
    Name,
    KeepMaxMb,
}

const KEYS: [(&str, Opt); 17] = [
    ("config", Opt::Config),
    ("pacman-conf", Opt::PacmanConf),
    ("cache-dir", Opt::CacheDir),
    ("db-path", Opt::DbPath),
    ("state-dir", Opt::StateDir),
    ("listen", Opt::Listen),
    ("port", Opt::Port),
    ("peer-addr", Opt::PeerAddr),
    ("interface", Opt::Interface),
    ("key-file", Opt::KeyFile),
    ("exclude-interface", Opt::ExcludeInterface),
    ("peer", Opt::Peer),
    ("debug", Opt::Debug),
    ("lookup-ms", Opt::LookupMs),
    ("announce-interval", Opt::AnnounceInterval),
    ("name", Opt::Name),
    ("keep-max-mb", Opt::KeepMaxMb),
];

fn key_named(name: &str) -> Option<Opt> {
    KEYS.iter().find(|(n, _)| *n == name).map(|&(_, k)| k)
}

/// One layer of settings (command line or flocon.conf); `None` means "not given here".
#[derive(Debug, Clone, Default, PartialEq)]
struct Overrides {
    config: Option<PathBuf>,
    pacman_conf: Option<PathBuf>,
    cache_dirs: Option<Vec<PathBuf>>,
    db_path: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<Vec<SocketAddr>>,
    port: Option<u16>,
    peer_addr: Option<IpAddr>,
    interfaces: Option<Vec<String>>,
    exclude_interfaces: Option<Vec<String>>,
    static_peers: Option<Vec<String>>,
    key_files: Option<Vec<PathBuf>>,
    debug: Option<bool>,
    lookup_ms: Option<u64>,
    announce_secs: Option<u64>,
    name: Option<String>,
    keep_max_mb: Option<u64>,
}

impl Overrides {
    /// Validates `value` for `key` and records it; the error is the reason only.
    fn set(&mut self, key: Opt, value: &OsStr) -> Result<(), String> {
        match key {
            Opt::Config => self.config = Some(parse_path(value)?),
            Opt::PacmanConf => self.pacman_conf = Some(parse_path(value)?),
            Opt::CacheDir => push_unique(&mut self.cache_dirs, parse_path(value)?)?,
            Opt::DbPath => self.db_path = Some(parse_path(value)?),
            Opt::StateDir => self.state_dir = Some(parse_path(value)?),
            Opt::Listen => push_unique(&mut self.listen, parse_listen(utf8(value)?)?)?,
            Opt::Port => self.port = Some(parse_port(utf8(value)?)?),
            Opt::PeerAddr => self.peer_addr = Some(parse_peer_addr(utf8(value)?)?),
            Opt::Interface => push_unique(&mut self.interfaces, parse_interface(utf8(value)?)?)?,
            Opt::KeyFile => push_unique(&mut self.key_files, parse_path(value)?)?,
            Opt::ExcludeInterface => {
                push_unique(&mut self.exclude_interfaces, parse_interface(utf8(value)?)?)?
            }
            Opt::Peer => push_unique(&mut self.static_peers, parse_static_peer(utf8(value)?)?)?,
            Opt::Debug => self.debug = Some(parse_bool(utf8(value)?)?),
            Opt::LookupMs => self.lookup_ms = Some(parse_lookup_ms(utf8(value)?)?),
            Opt::AnnounceInterval => self.announce_secs = Some(parse_announce_secs(utf8(value)?)?),
            Opt::Name => self.name = Some(parse_name(utf8(value)?)?),
            Opt::KeepMaxMb => self.keep_max_mb = Some(parse_keep_max_mb(utf8(value)?)?),
        }
        Ok(())
    }

    /// `self` wins field by field over `lower`; lists are replaced, never merged.
    fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            config: self.config.or(lower.config),
            pacman_conf: self.pacman_conf.or(lower.pacman_conf),
            cache_dirs: self.cache_dirs.or(lower.cache_dirs),
            db_path: self.db_path.or(lower.db_path),
            state_dir: self.state_dir.or(lower.state_dir),
            listen: self.listen.or(lower.listen),
            port: self.port.or(lower.port),
            peer_addr: self.peer_addr.or(lower.peer_addr),
            interfaces: self.interfaces.or(lower.interfaces),
            exclude_interfaces: self.exclude_interfaces.or(lower.exclude_interfaces),
            static_peers: self.static_peers.or(lower.static_peers),
            key_files: self.key_files.or(lower.key_files),
            debug: self.debug.or(lower.debug),
            lookup_ms: self.lookup_ms.or(lower.lookup_ms),
            announce_secs: self.announce_secs.or(lower.announce_secs),
            name: self.name.or(lower.name),
            keep_max_mb: self.keep_max_mb.or(lower.keep_max_mb),
        }
    }
}

/// Appends to a repeatable option's list; repeats of one value are harmless and dropped.
fn push_unique<T: PartialEq>(list: &mut Option<Vec<T>>, value: T) -> Result<(), String> {
    let list = list.get_or_insert_with(Vec::new);
    if list.contains(&value) {
        return Ok(());
    }
    if list.len() >= MAX_LIST_ENTRIES {
        return Err(format!("more than {MAX_LIST_ENTRIES} values"));
    }
    list.push(value);
    Ok(())
}

/// A user-supplied value inside an error message, control characters escaped.
fn shown(s: &str) -> String {
    s.escape_debug().to_string()
}

fn utf8(value: &OsStr) -> Result<&str, String> {
    value
        .to_str()
        .ok_or_else(|| format!("'{}' is not valid UTF-8", value.to_string_lossy()))
}

fn parse_path(value: &OsStr) -> Result<PathBuf, String> {
    if value.is_empty() {
        return Err("missing path".to_string());
    }
    if value.as_bytes().contains(&0) {
        return Err("path contains a NUL byte".to_string());
    }
    Ok(PathBuf::from(value))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("invalid port '{}' (expected 1-65535)", shown(s))),
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!(
            "invalid address '{}' (expected IP:PORT, e.g. 127.0.0.1:{DEFAULT_FRONT_PORT} or [::1]:{DEFAULT_FRONT_PORT})",
            shown(s)
        )
    })?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "'{s}' is not a loopback address (the front must never be reachable from the LAN)"
        ));
    }
    if addr.port() == 0 {
        return Err(format!(
            "invalid port 0 in '{s}' (expected 1-65535: pacman.conf names a fixed port)"
        ));
    }
    Ok(addr)
}

fn parse_peer_addr(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s.parse().map_err(|_| {
        format!(
            "invalid address '{}' (expected an IP address such as 192.168.1.10 or fe80::1)",
            shown(s)
        )
    })?;
    if ip.is_multicast() {
        return Err(format!("'{s}' is a multicast address"));
    }
    Ok(ip)
}

/// The kernel's own rule for interface names (dev_valid_name), so a name it rejects is
/// refused here, with a clear message, instead of failing later inside an ioctl.
fn parse_interface(s: &str) -> Result<String, String> {
    let bad = s.is_empty()
        || s.len() > MAX_IFACE_BYTES
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(format!(
            "invalid interface name '{}' (1-{MAX_IFACE_BYTES} bytes, no '/', ':' or whitespace)",
            shown(s)
        ));
    }
    Ok(s.to_string())
}

/// `HOST[:PORT]`, `[IPV6]:PORT` or a bare IPv6 address (the port defaults to `--port`).
fn parse_static_peer(s: &str) -> Result<String, String> {
    match crate::discovery::split_host_port(s, DEFAULT_PEER_PORT) {
        Some(_) => Ok(s.trim().to_string()),
        None => Err(format!(
            "invalid peer '{}' (expected HOST[:PORT], e.g. pi4.lan, 10.1.2.3:19432 or [fd00::7]:19432)",
            shown(s)
        )),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!(
            "invalid value '{}' (expected yes, no, true or false)",
            shown(s)
        )),
    }
}

/// Seconds between announcements; peers expire after four missed ones. Short values are for
/// tests (a killed daemon is forgotten quickly); long ones cost nothing but slower expiry.
fn parse_announce_secs(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid value '{}' (expected seconds, 1-3600)",
            shown(s)
        )),
    }
}

fn parse_lookup_ms(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(ms) if (1..=MAX_LOOKUP_MS).contains(&ms) => Ok(ms),
        _ => Err(format!(
            "invalid value '{}' (expected milliseconds, 1-{MAX_LOOKUP_MS})",
            shown(s)
        )),
    }
}

fn parse_keep_max_mb(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(mb) if mb <= MAX_KEEP_MAX_MB => Ok(mb),
        _ => Err(format!(
            "invalid value '{}' (expected MiB, 0-{MAX_KEEP_MAX_MB})",
            shown(s)
        )),
    }
}

/// The name is announced to peers and appears in their logs: bounded, one printable line.
fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty name".to_string());
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(format!(
            "name is {} bytes long (at most {MAX_NAME_BYTES})",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("name '{}' contains control characters", shown(s)));
    }
    if s.trim() != s {
        return Err(format!("name '{s}' starts or ends with whitespace"));
    }
    Ok(s.to_string())
}

fn default_listen() -> Vec<SocketAddr> {
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
fn io_reason(e: &io::Error) -> String {
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

/// Parses the command line (without argv[0]) and reads the config file and pacman.conf.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, ConfigError> {
    let mut command = parse_args_from(args, Sources::system())?;
    if let Command::Daemon(config) = &mut command {
        check_paths(config);
    }
    Ok(command)
}

fn parse_args_from(
    args: impl IntoIterator<Item = OsString>,
    sources: Sources,
) -> Result<Command, ConfigError> {
    let mut parser = lexopt::Parser::from_args(args);
    let mut cli = Overrides::default();
    let mut status = false;
    let mut json = false;
    let mut first = true;
    while let Some(arg) = parser.next().map_err(lexopt_error)? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(word) if first && word == "status" => status = true,
            Long("json") if status => json = true,
            Long("json") => {
                return Err(ConfigError::new(
                    "--json",
                    "only valid with 'flocon status'",
                ));
            }
            Long(name) => {
                let option = format!("--{name}");
                let Some(key) = key_named(name) else {
                    return Err(ConfigError::new(option, "unknown option (see --help)"));
                };
                if status && key != Opt::Listen && key != Opt::Config {
                    return Err(ConfigError::new(
                        option,
                        "not accepted by 'flocon status' (it takes --json, --listen and --config)",
                    ));
                }
                if key == Opt::Debug {
                    cli.debug = Some(true);
                } else {
                    let value = parser.value().map_err(lexopt_error)?;
                    cli.set(key, &value)
                        .map_err(|reason| ConfigError::new(option, reason))?;
                }
            }
            Short(c) => {
                return Err(ConfigError::new(
                    format!("-{c}"),
                    "unknown option (see --help)",
                ));
            }
            Value(word) => {
                return Err(ConfigError::new(
                    word.to_string_lossy(),
                    "unexpected argument (flocon takes options, or 'status')",
                ));
            }
        }
        first = false;
    }
    let cli = CliArgs {
        overrides: cli,
        sources,
    };
    let config = build(&cli)?;
    Ok(if status {
        Command::Status { config, json }
    } else {
        Command::Daemon(config)
    })
}

fn lexopt_error(e: lexopt::Error) -> ConfigError {
    use lexopt::Error as E;
    match e {
        E::MissingValue {
            option: Some(option),
        } => ConfigError::new(option, "missing value"),
        E::MissingValue { option: None } => ConfigError::new("command line", "missing value"),
        E::UnexpectedOption(option) => ConfigError::new(option, "unknown option (see --help)"),
        E::UnexpectedArgument(word) => {
            ConfigError::new(word.to_string_lossy(), "unexpected argument")
        }
        E::UnexpectedValue { option, value } => ConfigError::new(
            option,
            format!("takes no value (got '{}')", value.to_string_lossy()),
        ),
        E::NonUnicodeValue(value) => ConfigError::new(
            "command line",
            format!("'{}' is not valid UTF-8", value.to_string_lossy()),
        ),
        E::ParsingFailed { value, error } => {
            ConfigError::new("command line", format!("invalid value '{value}': {error}"))
        }
        E::Custom(error) => ConfigError::new("command line", error.to_string()),
    }
}

/// SIGHUP: re-reads the config file and pacman.conf; command-line values still win.
pub fn reload(config: &Config) -> Result<Config, ConfigError> {
    let mut config = build(&config.cli)?;
    check_paths(&mut config);
    Ok(config)
}

/// Layers the command line over flocon.conf over pacman.conf over the defaults.
fn build(cli: &CliArgs) -> Result<Config, ConfigError> {
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
    let pacman = match load_pacman_conf(&config.pacman_conf)? {
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
    config.distro = read_distro(&sources.os_release);
    config.architectures = resolve_architectures(&pacman.architectures);
    config.repos = pacman.repos;
    Ok(config)
}

/// One warning per thing that makes flocon quietly useless although it starts: a cache it
/// cannot list, no sync dbs to verify against, an interface that is not there. Run for the
/// daemon at start and on every reload (not by the unit tests of the layering).
fn check_paths(config: &mut Config) {
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
        let key = match key_named(name) {
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
        .and_then(|text| parse_name(text.trim()).ok())
        .unwrap_or_else(|| DEFAULT_NAME.to_string())
}

fn read_distro(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .filter_map(|path| read_bounded(path).ok())
        .find_map(|text| os_release_id(&text))
        .unwrap_or_else(|| DEFAULT_DISTRO.to_string())
}

/// `ID=` of os-release(5): possibly quoted, and only `[a-z0-9._-]` by that spec.
fn os_release_id(text: &str) -> Option<String> {
    let value = text.lines().find_map(|l| l.trim().strip_prefix("ID="))?;
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|&q| value.strip_prefix(q).and_then(|v| v.strip_suffix(q)))
        .unwrap_or(value);
    let valid = !unquoted.is_empty()
        && unquoted.len() <= MAX_DISTRO_BYTES
        && unquoted
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    valid.then(|| unquoted.to_string())
}

fn resolve_architectures(listed: &[String]) -> Vec<String> {
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

/// What flocon needs from pacman.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PacmanConf {
    pub cache_dirs: Vec<PathBuf>,
    pub db_path: Option<PathBuf>,
    /// As written (`auto` not resolved).
    pub architectures: Vec<String>,
    pub repos: Vec<Repo>,
    /// Lines pacman accepts but that are probably not what was meant, `file:line: what`.
    pub warnings: Vec<String>,
    /// Every file read (and directory scanned) for it, to notice when pacman's configuration
    /// changes.
    pub files: Vec<FileStamp>,
}

/// One `[repo]` section, servers in file order (includes expanded in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    pub name: String,
    pub servers: Vec<ServerLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Server,
    CacheServer,
    /// `# flocon: Server = URL`, the original daemon's way to name an upstream pacman ignores.
    FloconComment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    pub kind: ServerKind,
    /// As written, `$repo`/`$arch` not substituted.
    pub url: String,
}

impl Repo {
    /// Upstream URLs for `arch`: `Server` lines that come after flocon's own entry
    /// (a Server/CacheServer URL whose host is localhost, 127.0.0.1 or [::1] and whose port is
    /// `front_port`), plus every `# flocon: Server = URL` comment line, in file order, with $repo
    /// and $arch substituted, trailing '/' trimmed. Flocon's own entry and CacheServer lines are
    /// never upstreams. If flocon's own entry is absent (pacman >= 6.1 CacheServer role), all
    /// Server lines are upstreams.
    pub fn upstreams(&self, arch: &str, front_port: u16) -> Vec<String> {
        let is_own = |line: &ServerLine| is_own_url(&line.url, front_port);
        // Servers listed before flocon's own `Server` line were tried by pacman already.
        // A CacheServer entry is tried before every Server line, so it starts nothing.
        let start = self
            .servers
            .iter()
            .position(|line| line.kind == ServerKind::Server && is_own(line))
            .map_or(0, |i| i + 1);
        let mut out: Vec<String> = Vec::new();
        for (i, line) in self.servers.iter().enumerate() {
            let upstream = match line.kind {
                ServerKind::Server => i >= start && !is_own(line),
                ServerKind::CacheServer => false,
                // Pointing flocon at itself would loop.
                ServerKind::FloconComment => !is_own(line),
            };
            if upstream && upstream_scheme_ok(&line.url) {
                let url = substitute(&line.url, &self.name, arch);
                if !url.is_empty() && !out.contains(&url) {
                    out.push(url);
                }
            }
        }
        out
    }
}

fn substitute(url: &str, repo: &str, arch: &str) -> String {
    url.replace("$repo", repo)
        .replace("$arch", arch)
        .trim_end_matches('/')
        .to_string()
}

/// Whether `url` is flocon's own front: an http(s) URL to a loopback host on `front_port`.
fn is_own_url(url: &str, front_port: u16) -> bool {
    loopback_port(url) == Some(front_port)
}

/// The port of `url` when its host is loopback, else `None`.
fn loopback_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host_port)| host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    let port = match port {
        None | Some("") => default_port,
        Some(port) => port.parse().ok()?,
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case("localhost.")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    loopback.then_some(port)
}

/// Reads a pacman.conf and its includes. A missing file is an error here.
pub fn parse_pacman_conf(path: &Path) -> Result<PacmanConf, ConfigError> {
    read_pacman_conf(path, false)
        .0
        .map(|conf| conf.unwrap_or_default())
}

/// Like [`parse_pacman_conf`], but a missing top-level file is `None` (pacman's defaults).
fn load_pacman_conf(path: &Path) -> Result<Option<PacmanConf>, ConfigError> {
    read_pacman_conf(path, true).0
}

/// The files [`parse_pacman_conf`] reads for `path` now, stamped, even when one of them is
/// broken: after a failed re-read, a change to any of them (the broken one included) is
/// worth another try.
pub fn pacman_conf_stamps(path: &Path) -> Vec<FileStamp> {
    read_pacman_conf(path, true).1
}

/// The first file whose stamp no longer matches (changed, appeared, vanished), if any: a stat
/// per file, cheap enough for every rescan of the sync dbs.
pub fn changed_file(stamps: &[FileStamp]) -> Option<&Path> {
    stamps
        .iter()
        .find(|s| FileStamp::of(&s.path).meta != s.meta)
        .map(|s| s.path.as_path())
}

fn read_pacman_conf(
    path: &Path,
    missing_ok: bool,
) -> (Result<Option<PacmanConf>, ConfigError>, Vec<FileStamp>) {
    let mut reader = PacmanReader {
        conf: PacmanConf::default(),
        section: Section::Outside,
        stack: Vec::new(),
        files: 1,
        db_path_seen: false,
    };
    let result = match open_config_file(path) {
        Ok((text, stamp)) => {
            reader.conf.files.push(stamp);
            reader.file(&text, path).map(|()| reader.finish(path))
        }
        Err((Unread::Io(e), stamp)) if e.kind() == io::ErrorKind::NotFound && missing_ok => {
            reader.conf.files.push(stamp);
            Ok(false)
        }
        Err((unread, stamp)) => {
            reader.conf.files.push(stamp);
            Err(ConfigError::new(
                path.display().to_string(),
                format!("cannot read: {}", unread.reason()),
            ))
        }
    };
    let files = reader.conf.files.clone();
    (result.map(|found| found.then_some(reader.conf)), files)
}

/// Parses pacman.conf text; `origin` names it in errors and warnings. Relative Includes are
/// read from the working directory, as pacman reads them.
pub fn parse_pacman_conf_str(text: &str, origin: &Path) -> Result<PacmanConf, ConfigError> {
    let mut reader = PacmanReader {
        conf: PacmanConf::default(),
        section: Section::Outside,
        stack: Vec::new(),
        files: 1,
        db_path_seen: false,
    };
    reader.file(text, origin)?;
    Ok(reader.conf)
}

/// A file (or a directory an Include glob scanned) read for pacman.conf, with its metadata
/// at that moment: when it differs, pacman would now read something else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    pub path: PathBuf,
    /// (modification time in ns, inode, size); `None`: absent or unreadable.
    meta: Option<(i128, u64, u64)>,
}

impl FileStamp {
    fn of(path: &Path) -> FileStamp {
        FileStamp {
            path: path.to_path_buf(),
            meta: fs::metadata(path).ok().as_ref().map(stamp_of),
        }
    }
}

fn stamp_of(m: &fs::Metadata) -> (i128, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    (ns, m.ino(), m.len())
}

/// Why a file named in pacman.conf was not read.
enum Unread {
    Io(io::Error),
    /// What it is instead of a regular file ("FIFO", "directory", ...).
    NotRegular(&'static str),
}

impl Unread {
    fn reason(&self) -> String {
        match self {
            Unread::Io(e) => io_reason(e),
            Unread::NotRegular(kind) => format!("a {kind}, not a regular file"),
        }
    }
}

/// Opens without blocking (a FIFO would otherwise wait for a writer, forever), checks on the
/// open file that it is a regular one, then reads at most `MAX_FILE_BYTES`. The stamp is the
/// open file's, taken before reading: a write after it changes the modification time.
fn open_config_file(path: &Path) -> Result<(String, FileStamp), (Unread, FileStamp)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let absent = || FileStamp {
        path: path.to_path_buf(),
        meta: None,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| (Unread::Io(e), absent()))?;
    let meta = file.metadata().map_err(|e| (Unread::Io(e), absent()))?;
    let stamp = FileStamp {
        path: path.to_path_buf(),
        meta: Some(stamp_of(&meta)),
    };
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("directory")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else {
        Some("special file")
    };
    if let Some(kind) = kind {
        return Err((Unread::NotRegular(kind), stamp));
    }
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes) {
        return Err((Unread::Io(e), stamp));
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        let e = io::Error::other(format!("larger than {MAX_FILE_BYTES} bytes"));
        return Err((Unread::Io(e), stamp));
    }
    Ok((String::from_utf8_lossy(&bytes).into_owned(), stamp))
}

#[derive(Debug, Clone, Copy)]
enum Section {
    Outside,
    Options,
    Repo(usize),
}

/// One pass over pacman.conf and its includes, the way pacman's own parser (util/ini.c and
/// conf.c) goes: a line is trimmed; empty or starting with `#`, it is a comment (and `#`
/// nowhere else is one); `[name]` opens a section; anything else is `key = value`, both
/// trimmed, the value whole. Unknown directives are skipped, as pacman skips them.
struct PacmanReader {
    conf: PacmanConf,
    /// Like pacman, a section opened inside an included file stays open after it.
    section: Section,
    /// Files being read, outermost first, for the depth bound and cycle detection.
    stack: Vec<PathBuf>,
    files: usize,
    /// pacman keeps the first DBPath line, even an empty one.
    db_path_seen: bool,
}

/// A file's identity for cycle detection: two spellings of one file must compare equal.
fn file_identity(path: &Path) -> PathBuf {
    fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// pacman's strtrim(): ASCII whitespace, vertical tab included.
fn pacman_trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
}

/// `# flocon: Server = URL` (the marker's case exact, whitespace free); returns the URL,
/// taken whole like every pacman.conf value.
fn flocon_comment(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("flocon:")?.trim_start();
    let rest = rest.strip_prefix("Server")?.trim_start();
    let url = pacman_trim(rest.strip_prefix('=')?);
    (!url.is_empty()).then_some(url)
}

/// Whether flocon can use a mirror URL as an upstream: http:// is fetched, https:// redirected
/// to; ftp:// and file:// are pacman's alone.
fn upstream_scheme_ok(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

impl PacmanReader {
    fn file(&mut self, text: &str, origin: &Path) -> Result<(), ConfigError> {
        self.stack.push(file_identity(origin));
        for (index, raw) in text.lines().enumerate() {
            self.line(raw, origin, index + 1)?;
        }
        self.stack.pop();
        Ok(())
    }

    /// Checks across the whole file, once it is read; true (the file was found).
    fn finish(&mut self, origin: &Path) -> bool {
        let uses_arch = self
            .conf
            .repos
            .iter()
            .flat_map(|r| &r.servers)
            .any(|s| s.url.contains("$arch"));
        if uses_arch && self.conf.architectures.is_empty() {
            self.warn(
                &origin.display().to_string(),
                "mirrors use $arch but [options] sets no Architecture: pacman 7 refuses this \
                 file (add 'Architecture = auto')"
                    .to_string(),
            );
        }
        true
    }

    fn warn(&mut self, at: &str, what: String) {
        self.conf.warnings.push(format!("{at}: {what}"));
    }

    fn line(&mut self, raw: &str, origin: &Path, number: usize) -> Result<(), ConfigError> {
        let at = format!("{}:{}", origin.display(), number);
        let line = pacman_trim(raw);
        if line.is_empty() {
            return Ok(());
        }
        if line.starts_with('#') {
            if let Some(url) = flocon_comment(line)
                && let Section::Repo(i) = self.section
            {
                self.server(i, ServerKind::FloconComment, url, &at);
            }
            return Ok(());
        }
        if line.len() >= 2 && line.starts_with('[') && line.ends_with(']') {
            // The name as written: pacman trims nothing inside the brackets.
            let name = &line[1..line.len() - 1];
            if name.is_empty() {
                self.warn(&at, "'[]': a section with an empty name".to_string());
            }
            self.section = if name == "options" {
                Section::Options
            } else {
                Section::Repo(self.repo_index(name))
            };
            return Ok(());
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (pacman_trim(k), Some(pacman_trim(v))),
            None => (line, None),
        };
        if let Section::Outside = self.section {
            return Err(ConfigError::new(
                at,
                format!(
                    "'{}' is outside of any [section] (pacman: all directives must belong to a section)",
                    shown(key)
                ),
            ));
        }
        if key.starts_with('[') {
            self.warn(
                &at,
                format!(
                    "'{}' is not a section header (no closing ']'): pacman ignores the line",
                    shown(line)
                ),
            );
            return Ok(());
        }
        if let Some(v) = value
            && v.contains('#')
        {
            self.warn(
                &at,
                format!(
                    "the value of {} contains '#': it is part of the value, as pacman reads it \
                     (pacman.conf has comments only at the start of a line): '{}'",
                    shown(key),
                    shown(v)
                ),
            );
        }
        if key == "Include" {
            return self.include(value, &at);
        }
        match self.section {
            Section::Outside => {}
            // Bare keys and empty values of the keys we read are ignored, as pacman does.
            Section::Options => {
                let value = value.unwrap_or("");
                match key {
                    // pacman splits these on spaces only (a tab is part of a name)
                    "CacheDir" => self.conf.cache_dirs.extend(
                        value
                            .split(' ')
                            .filter(|v| !v.is_empty())
                            .map(PathBuf::from),
                    ),
                    // pacman keeps the first DBPath it reads, even an empty one.
                    "DBPath" if !self.db_path_seen => {
                        self.db_path_seen = true;
                        if value.is_empty() {
                            self.warn(&at, "DBPath without a value".to_string());
                        } else {
                            self.conf.db_path = Some(PathBuf::from(value));
                        }
                    }
                    "Architecture" => self.conf.architectures.extend(
                        value
                            .split(' ')
                            .filter(|v| !v.is_empty())
                            .map(str::to_string),
                    ),
                    _ => {}
                }
            }
            Section::Repo(i) => {
                let kind = match key {
                    "Server" => ServerKind::Server,
                    "CacheServer" => ServerKind::CacheServer,
                    _ => return Ok(()),
                };
                match value {
                    // pacman refuses the whole file here
                    None => {
                        return Err(ConfigError::new(
                            at,
                            format!("{key}: needs a value ('{key} = URL')"),
                        ));
                    }
                    Some(url) => self.server(i, kind, url, &at),
                }
            }
        }
        Ok(())
    }

    fn server(&mut self, repo: usize, kind: ServerKind, url: &str, at: &str) {
        let what = match kind {
            ServerKind::Server => "Server",
            ServerKind::CacheServer => "CacheServer",
            ServerKind::FloconComment => "'# flocon: Server'",
        };
        if url.is_empty() {
            self.warn(
                at,
                format!("{what} line without a value: ignored (pacman keeps an empty server)"),
            );
            return;
        }
        if kind != ServerKind::CacheServer && !upstream_scheme_ok(url) {
            self.warn(
                at,
                format!(
                    "{what} {}: flocon fetches only http:// (and sends pacman to https://) mirrors; \
                     it skips this one",
                    shown(url)
                ),
            );
        }
        self.conf.repos[repo].servers.push(ServerLine {
            kind,
            url: url.to_string(),
        });
    }

    /// A repeated `[repo]` section continues the first one.
    fn repo_index(&mut self, name: &str) -> usize {
        match self.conf.repos.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                self.conf.repos.push(Repo {
                    name: name.to_string(),
                    servers: Vec::new(),
                });
                self.conf.repos.len() - 1
            }
        }
    }

    /// pacman's process_include(): glob(3) with GLOB_NOCHECK (a pattern matching nothing is
    /// read as a file name, and so fails), a relative pattern taken from the working directory,
    /// every match read in order. A match that is not a regular file is skipped with a warning
    /// (pacman reads nothing from a directory and waits forever on a FIFO).
    fn include(&mut self, value: Option<&str>, at: &str) -> Result<(), ConfigError> {
        let error = |reason: String| ConfigError::new(at, format!("Include: {reason}"));
        let pattern = match value {
            Some(p) if !p.is_empty() => p,
            _ => return Err(error("missing value".to_string())),
        };
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(error(format!(
                "includes nested deeper than {MAX_INCLUDE_DEPTH} levels"
            )));
        }
        let path = Path::new(pattern);
        if path.is_relative() {
            self.warn(
                at,
                format!(
                    "Include {}: a relative path is read from the working directory (pacman's \
                     and flocon's may differ): use an absolute one",
                    shown(pattern)
                ),
            );
        }
        let mut files = if has_wildcard(pattern.as_bytes()) {
            expand_glob(path, &mut self.conf.files).map_err(error)?
        } else {
            Vec::new()
        };
        if files.is_empty() {
            files.push(path.to_path_buf());
        }
        for file in files {
            let identity = file_identity(&file);
            if let Some(start) = self.stack.iter().position(|p| *p == identity) {
                let chain: Vec<String> = self.stack[start..]
                    .iter()
                    .chain(std::iter::once(&identity))
                    .map(|p| p.display().to_string())
                    .collect();
                return Err(error(format!("include cycle: {}", chain.join(" -> "))));
            }
            if self.files >= MAX_INCLUDED_FILES {
                return Err(error(format!(
                    "more than {MAX_INCLUDED_FILES} files included"
                )));
            }
            self.files += 1;
            match open_config_file(&file) {
                Ok((text, stamp)) => {
                    self.conf.files.push(stamp);
                    self.file(&text, &file)?;
                }
                Err((Unread::NotRegular(kind), stamp)) => {
                    self.conf.files.push(stamp);
                    self.warn(
                        at,
                        format!(
                            "Include {}: a {kind}, not a regular file: not read",
                            file.display()
                        ),
                    );
                }
                Err((unread, stamp)) => {
                    self.conf.files.push(stamp);
                    let hint = if pattern.contains('#') {
                        " ('#' starts a comment only at the start of a line: pacman fails \
                         the same way)"
                    } else {
                        ""
                    };
                    return Err(error(format!(
                        "cannot read '{}': {}{hint}",
                        file.display(),
                        unread.reason()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn has_wildcard(s: &[u8]) -> bool {
    s.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// glob(3) as pacman uses it for `Include`: wildcards in any component, sorted results,
/// every kind of entry (the caller refuses what is not a regular file); a pattern matching
/// nothing gives nothing here (the caller reads it as a name, GLOB_NOCHECK). Every directory
/// scanned is stamped: a file added to it changes what the pattern matches.
fn expand_glob(pattern: &Path, stamps: &mut Vec<FileStamp>) -> Result<Vec<PathBuf>, String> {
    let mut found = vec![PathBuf::new()];
    for component in pattern.components() {
        let Component::Normal(name) = component else {
            for base in &mut found {
                base.push(component.as_os_str());
            }
            continue;
        };
        if !has_wildcard(name.as_bytes()) {
            for base in &mut found {
                base.push(name);
            }
            continue;
        }
        let mut next = Vec::new();
        for base in &found {
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            stamps.push(FileStamp::of(dir));
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            let mut names = Vec::new();
            for (count, entry) in entries.enumerate() {
                if count >= MAX_GLOB_SCAN {
                    return Err(format!(
                        "'{}' has more than {MAX_GLOB_SCAN} entries",
                        dir.display()
                    ));
                }
                let Ok(entry) = entry else { continue };
                let file_name = entry.file_name();
                if glob_match(name.as_bytes(), file_name.as_bytes()) {
                    names.push(file_name);
                }
            }
            names.sort();
            for matched in names {
                if next.len() >= MAX_GLOB_MATCHES {
                    return Err(format!(
                        "'{}' matches more than {MAX_GLOB_MATCHES} files",
                        pattern.display()
                    ));
                }
                next.push(base.join(matched));
            }
        }
        found = next;
    }
    found.retain(|path| fs::symlink_metadata(path).is_ok());
    found.sort();
    Ok(found)
}

/// One path component against a glob pattern: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
/// Like glob(3), a leading `.` must be matched explicitly. Linear backtracking on the last
/// `*`, so no input makes it slow.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match class_match(pattern, p, name[n]) {
                Some((true, after)) => Some(after),
                Some((false, _)) => None,
                // An unclosed `[` is an ordinary character.
                None => (name[n] == b'[').then_some(p + 1),
            },
            Some(&c) => (c == name[n]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(after), _) => {
                p = after;
                n += 1;
            }
            (None, Some((star_p, star_n))) => {
                p = star_p;
                n = star_n + 1;
                star = Some((star_p, star_n + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&b| b == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == b'['`; returns whether it
/// matched and the index after the closing `]`, or `None` when the class is not closed.
fn class_match(pattern: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negate = matches!(pattern.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &low = pattern.get(i)?;
        if low == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (pattern.get(i + 1), pattern.get(i + 2)) {
            (Some(b'-'), Some(&high)) if high != b']' => {
                matched |= low <= c && c <= high;
                i += 3;
            }
            _ => {
                matched |= low == c;
                i += 1;
            }
        }
    }
}

/// The `--help` text.
pub fn usage() -> &'static str {
    concat!(
        "\
Usage: flocon [OPTIONS]                 run the daemon in the foreground
       flocon status [--json] [--listen ADDR:PORT] [--config FILE]
                                        show the running daemon's peers, transfers and bans
       flocon genkey FILE               write a new group key (see --key-file)

Options (each is also a `key = value` line in the config file; the command line wins):
      --config FILE        config file (default ",
        env!("FLOCON_DEFAULT_CONFIG"),
        ")
      --pacman-conf FILE   pacman config read for CacheDir, DBPath and repos (default ",
        env!("FLOCON_DEFAULT_PACMAN_CONF"),
        ")
      --cache-dir DIR      pacman package cache to share, repeatable (default: pacman.conf's CacheDir)
      --db-path DIR        pacman database dir (default: pacman.conf's DBPath, else /var/lib/pacman/)
      --state-dir DIR      flocon's own staging dir (default ",
        env!("FLOCON_DEFAULT_STATE_DIR"),
        ")
      --listen ADDR:PORT   loopback address pacman connects to, repeatable (default 127.0.0.1:19433 and [::1]:19433)
      --port PORT          peer TCP and UDP port (default 19432)
      --peer-addr ADDR     bind the peer TCP and unicast UDP sockets to this address
      --interface IFACE    LAN interface for discovery, repeatable (default: every multicast-capable one)
      --key-file FILE      group key shared by the peers (`flocon genkey FILE` makes one);
                           repeatable once more for rotation: the first signs, both verify
      --exclude-interface IFACE  never discover or serve on IFACE, repeatable
      --peer HOST[:PORT]   a peer beyond the multicast segment (routed), repeatable
      --lookup-ms N        how long a request waits for peers, in ms (1-5000, default 50)
      --announce-interval S  seconds between announcements, peers expire after 4x (1-3600, default 30)
      --name NAME          name announced to peers (default: the hostname)
      --keep-max-mb N      MiB of upstream answers kept for the LAN at once (0-4096, default 512; 0: none)
      --debug              log more
      --json               (status only) print JSON
  -h, --help               print this help
  -V, --version            print the version
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A unique directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
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

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }

        fn write(&self, rel: &str, text: &str) -> PathBuf {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }

        fn sources(&self) -> Sources {
            Sources {
                default_config: self.path("flocon.conf"),
                default_pacman_conf: self.path("pacman.conf"),
                hostname_file: self.path("hostname"),
                os_release: vec![self.path("os-release"), self.path("usr-os-release")],
            }
        }

        fn parse(&self, args: &[&str]) -> Result<Command, ConfigError> {
            parse_args_from(args.iter().map(OsString::from), self.sources())
        }

        fn daemon(&self, args: &[&str]) -> Config {
            match self.parse(args) {
                Ok(Command::Daemon(config)) => config,
                other => panic!("expected a daemon config from {args:?}, got {other:?}"),
            }
        }

        fn error(&self, args: &[&str]) -> ConfigError {
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

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn p(s: &str) -> PathBuf {
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
    }

    #[test]
    fn os_release_id_forms() {
        assert_eq!(os_release_id("ID=arch"), Some("arch".into()));
        assert_eq!(os_release_id("ID='arch'\n"), Some("arch".into()));
        assert_eq!(os_release_id("ID_LIKE=arch\n"), None);
        assert_eq!(os_release_id("ID=\"Bad Id\""), None);
        assert_eq!(os_release_id("ID="), None);
        assert_eq!(
            os_release_id("NAME=x\n  ID=debian \n"),
            Some("debian".into())
        );
    }

    #[test]
    fn every_option_good() {
        let dir = TempDir::new("good");
        let conf = dir.write("my.conf", "# empty\n");
        let pacman = dir.write("pm.conf", "[options]\n");
        let config = dir.daemon(&[
            "--config",
            conf.to_str().unwrap(),
            "--pacman-conf",
            pacman.to_str().unwrap(),
            "--cache-dir",
            "/a",
            "--cache-dir=/b",
            "--cache-dir",
            "/a",
            "--db-path",
            "/db",
            "--state-dir",
            "/state",
            "--listen",
            "127.0.0.2:8000",
            "--listen",
            "[::1]:8001",
            "--port",
            "65535",
            "--peer-addr",
            "fe80::1",
            "--interface",
            "lo",
            "--interface",
            "enp3s0f1.100-x",
            "--key-file",
            "/k",
            "--debug",
            "--lookup-ms",
            "5000",
            "--name",
            "Living room Pi",
        ]);
        assert_eq!(config.config_file, conf);
        assert_eq!(config.pacman_conf, pacman);
        assert_eq!(config.cache_dirs, vec![p("/a"), p("/b")]);
        assert_eq!(config.db_path, p("/db"));
        assert_eq!(config.state_dir, p("/state"));
        assert_eq!(config.listen, vec![sa("127.0.0.2:8000"), sa("[::1]:8001")]);
        assert_eq!(config.front_port(), 8000);
        assert_eq!(config.port, 65535);
        assert_eq!(config.peer_addr, Some("fe80::1".parse().unwrap()));
        assert_eq!(config.interfaces, vec!["lo", "enp3s0f1.100-x"]);
        assert_eq!(config.key_files, vec![p("/k")]);
        assert!(config.debug);
        assert_eq!(config.lookup_budget, Duration::from_millis(5000));
        assert_eq!(config.name, "Living room Pi");
        assert!(config.warnings.is_empty());

        let config = dir.daemon(&["--port", "1", "--lookup-ms", "1", "--peer-addr", "0.0.0.0"]);
        assert_eq!(config.port, 1);
        assert_eq!(config.lookup_budget, Duration::from_millis(1));
        assert_eq!(config.peer_addr, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
    }

    #[test]
    fn every_option_bad() {
        let dir = TempDir::new("bad");
        let long_name = "n".repeat(65);
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--port", "abc"],
                "--port",
                "invalid port 'abc' (expected 1-65535)",
            ),
            (&["--port", "0"], "--port", "invalid port '0'"),
            (&["--port", "65536"], "--port", "invalid port '65536'"),
            (&["--port", "-1"], "--port", "invalid port '-1'"),
            (&["--port", ""], "--port", "invalid port ''"),
            (&["--port"], "--port", "missing value"),
            (
                &["--listen", "192.168.1.5:19433"],
                "--listen",
                "not a loopback address",
            ),
            (
                &["--listen", "0.0.0.0:19433"],
                "--listen",
                "not a loopback address",
            ),
            (
                &["--listen", "[::]:19433"],
                "--listen",
                "not a loopback address",
            ),
            (
                &["--listen", "[::ffff:127.0.0.1]:19433"],
                "--listen",
                "not a loopback",
            ),
            (
                &["--listen", "localhost:19433"],
                "--listen",
                "invalid address",
            ),
            (&["--listen", "127.0.0.1"], "--listen", "invalid address"),
            (&["--listen", "127.0.0.1:0"], "--listen", "invalid port 0"),
            (
                &["--peer-addr", "nope"],
                "--peer-addr",
                "invalid address 'nope'",
            ),
            (&["--peer-addr", "239.255.0.1"], "--peer-addr", "multicast"),
            (
                &["--peer-addr", "10.0.0.1:5"],
                "--peer-addr",
                "invalid address",
            ),
            (
                &["--interface", ""],
                "--interface",
                "invalid interface name",
            ),
            (
                &["--interface", "abcdefghijklmnop"],
                "--interface",
                "1-15 bytes",
            ),
            (
                &["--interface", "eth/0"],
                "--interface",
                "invalid interface name",
            ),
            (
                &["--interface", "eth 0"],
                "--interface",
                "invalid interface name",
            ),
            (
                &["--interface", "eth0:1"],
                "--interface",
                "invalid interface name",
            ),
            (
                &["--interface", ".."],
                "--interface",
                "invalid interface name",
            ),
            (
                &["--lookup-ms", "0"],
                "--lookup-ms",
                "expected milliseconds, 1-5000",
            ),
            (&["--lookup-ms", "5001"], "--lookup-ms", "1-5000"),
            (&["--lookup-ms", "x"], "--lookup-ms", "invalid value 'x'"),
            (&["--name", ""], "--name", "empty name"),
            (&["--name", &long_name], "--name", "65 bytes long"),
            (&["--name", "a\nb"], "--name", "control characters"),
            (&["--name", " a"], "--name", "whitespace"),
            (&["--debug=yes"], "--debug", "takes no value (got 'yes')"),
            (&["--cache-dir", ""], "--cache-dir", "missing path"),
            (&["--db-path", ""], "--db-path", "missing path"),
            (&["--state-dir", ""], "--state-dir", "missing path"),
            (&["--key-file", ""], "--key-file", "missing path"),
            (&["--pacman-conf", ""], "--pacman-conf", "missing path"),
            (&["--config", ""], "--config", "missing path"),
            (&["--bogus"], "--bogus", "unknown option"),
            (&["--prot", "1"], "--prot", "unknown option"),
            (&["-x"], "-x", "unknown option"),
            (&["foo"], "foo", "unexpected argument"),
            (&["--port", "1", "status"], "status", "unexpected argument"),
            (&["--json"], "--json", "only valid with 'flocon status'"),
            (
                &["status", "--port", "5"],
                "--port",
                "not accepted by 'flocon status'",
            ),
            (&["status", "status"], "status", "unexpected argument"),
        ];
        for (args, option, reason) in cases {
            let e = dir.error(args);
            assert_eq!(e.option, *option, "{args:?} -> {e}");
            assert!(e.reason.contains(reason), "{args:?} -> {e}");
        }
        assert_eq!(
            dir.error(&["--port", "abc"]).to_string(),
            "--port: invalid port 'abc' (expected 1-65535)"
        );
    }

    #[test]
    fn too_many_repeats_refused() {
        let dir = TempDir::new("many");
        let names: Vec<String> = (0..=MAX_LIST_ENTRIES).map(|i| format!("/c{i}")).collect();
        let mut args = Vec::new();
        for name in &names {
            args.push("--cache-dir");
            args.push(name.as_str());
        }
        let e = dir.error(&args);
        assert_eq!(e.option, "--cache-dir");
        assert!(e.reason.contains("more than"));
        args.truncate(2 * MAX_LIST_ENTRIES);
        assert_eq!(dir.daemon(&args).cache_dirs.len(), MAX_LIST_ENTRIES);
    }

    #[test]
    fn non_utf8_values() {
        use std::os::unix::ffi::OsStringExt;
        let dir = TempDir::new("utf8");
        let bad = OsString::from_vec(vec![b'/', 0xff]);
        let run = |opt: &str| parse_args_from([OsString::from(opt), bad.clone()], dir.sources());
        // Paths need not be UTF-8; everything else must be.
        match run("--cache-dir") {
            Ok(Command::Daemon(c)) => assert_eq!(c.cache_dirs, vec![PathBuf::from(&bad)]),
            other => panic!("{other:?}"),
        }
        let e = run("--name").unwrap_err();
        assert_eq!(e.option, "--name");
        assert!(e.reason.contains("UTF-8"));
    }

    #[test]
    fn help_and_version() {
        let dir = TempDir::new("help");
        for args in [
            &["--help"][..],
            &["-h"],
            &["status", "--help"],
            &["--port", "1", "-h"],
        ] {
            assert_eq!(dir.parse(args), Ok(Command::Help), "{args:?}");
        }
        assert_eq!(dir.parse(&["-V"]), Ok(Command::Version));
        assert_eq!(dir.parse(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn usage_lists_every_option_and_default() {
        let text = usage();
        for (name, _) in KEYS {
            assert!(text.contains(&format!("--{name} ")), "--{name} missing");
        }
        for needle in [
            "flocon status [--json]",
            "--help",
            "--version",
            DEFAULT_CONFIG_FILE,
            DEFAULT_PACMAN_CONF,
            DEFAULT_DB_PATH,
            DEFAULT_STATE_DIR,
            &format!("127.0.0.1:{DEFAULT_FRONT_PORT}"),
            &format!("[::1]:{DEFAULT_FRONT_PORT}"),
            &format!("default {DEFAULT_PEER_PORT}"),
            &format!("1-{MAX_LOOKUP_MS}, default {DEFAULT_LOOKUP_MS}"),
            &format!("0-{MAX_KEEP_MAX_MB}, default {DEFAULT_KEEP_MAX_MB}"),
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
        // One line per option.
        for (name, _) in KEYS {
            let count = text.matches(&format!("--{name} ")).count();
            assert!(count >= 1);
        }
    }

    #[test]
    fn status_command() {
        let dir = TempDir::new("status");
        match dir.parse(&["status"]) {
            Ok(Command::Status { config, json }) => {
                assert!(!json);
                assert_eq!(config.listen, default_listen());
            }
            other => panic!("{other:?}"),
        }
        let conf = dir.write("other.conf", "listen = 127.0.0.1:7000\n");
        match dir.parse(&["status", "--json", "--config", conf.to_str().unwrap()]) {
            Ok(Command::Status { config, json }) => {
                assert!(json);
                assert_eq!(config.listen, vec![sa("127.0.0.1:7000")]);
            }
            other => panic!("{other:?}"),
        }
        match dir.parse(&["status", "--listen", "[::1]:7001", "--json"]) {
            Ok(Command::Status { config, json }) => {
                assert!(json);
                assert_eq!(config.listen, vec![sa("[::1]:7001")]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            dir.error(&["status", "--listen", "10.0.0.1:1"]).option,
            "--listen"
        );
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

    const SAMPLE: &str = "\
#
# /etc/pacman.conf
#
[options]
#RootDir     = /
DBPath      = /srv/pacman/db/
DBPath      = /ignored/
CacheDir    = /var/cache/pacman/pkg/
CacheDir    = /mnt/extra/pkg/ /mnt/third/
HoldPkg     = pacman glibc
Architecture = auto armv7h
Color
ILoveCandy
ParallelDownloads = 5
SigLevel    = Required DatabaseOptional

[core]
Server = http://localhost:19433/$repo/os/$arch
Server = https://mirror.one/$repo/os/$arch/
  # a comment, indented
#Server = http://disabled/$repo
# flocon: Server = http://lan-mirror/$repo/$arch
##flocon: Server = http://disabled-flocon/

[empty]
SigLevel = Never

[extra]
Usage = Sync
CacheServer = http://[::1]:19433/$repo/os/$arch
Server = http://mirror.two/$arch/$repo
";

    #[test]
    fn pacman_conf_parsing() {
        let conf = parse_pacman_conf_str(SAMPLE, Path::new("/etc/pacman.conf")).unwrap();
        assert_eq!(conf.db_path, Some(p("/srv/pacman/db/")));
        assert_eq!(
            conf.cache_dirs,
            vec![
                p("/var/cache/pacman/pkg/"),
                p("/mnt/extra/pkg/"),
                p("/mnt/third/")
            ]
        );
        assert_eq!(conf.architectures, vec!["auto", "armv7h"]);
        let names: Vec<&str> = conf.repos.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["core", "empty", "extra"]);
        let core = &conf.repos[0].servers;
        assert_eq!(
            core,
            &vec![
                ServerLine {
                    kind: ServerKind::Server,
                    url: "http://localhost:19433/$repo/os/$arch".into()
                },
                ServerLine {
                    kind: ServerKind::Server,
                    url: "https://mirror.one/$repo/os/$arch/".into()
                },
                ServerLine {
                    kind: ServerKind::FloconComment,
                    url: "http://lan-mirror/$repo/$arch".into()
                },
            ]
        );
        assert!(conf.repos[1].servers.is_empty());
        assert_eq!(conf.repos[2].servers[0].kind, ServerKind::CacheServer);
        assert_eq!(
            conf.repos[2].servers[1].url,
            "http://mirror.two/$arch/$repo"
        );
        assert_eq!(
            resolve_architectures(&conf.architectures),
            if machine_arch() == "armv7h" {
                vec!["armv7h".to_string()]
            } else {
                vec![machine_arch().to_string(), "armv7h".to_string()]
            }
        );
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
    fn pacman_conf_errors() {
        let origin = Path::new("/etc/pacman.conf");
        // What pacman refuses too (its pacman-conf prints an error and exits 1).
        let cases = [
            (
                "Server = http://x\n",
                "/etc/pacman.conf:1",
                "outside of any [section]",
            ),
            (
                "[core]\nInclude =\n",
                "/etc/pacman.conf:2",
                "Include: missing value",
            ),
            (
                "[core]\nInclude\n",
                "/etc/pacman.conf:2",
                "Include: missing",
            ),
            (
                "[core]\nServer\n",
                "/etc/pacman.conf:2",
                "Server: needs a value",
            ),
            (
                "[core]\n  CacheServer  \n",
                "/etc/pacman.conf:2",
                "CacheServer: needs a value",
            ),
            (
                "[core]\nInclude = /nonexistent/flocon   # CacheServer = x\n",
                "/etc/pacman.conf:2",
                "'#' starts a comment only at the start of a line",
            ),
        ];
        for (text, option, reason) in cases {
            let e = parse_pacman_conf_str(text, origin).unwrap_err();
            assert_eq!(e.option, option, "{text:?} -> {e}");
            assert!(e.reason.contains(reason), "{text:?} -> {e}");
        }
        // Unknown keys, bare keys, stray '[' lines, empty keys: skipped, as pacman does.
        let ok = "# top\n[options]\nNoSuchKey = 1\nBare\n[r]\nWhatever = x # y\n= x\n\
                  [r2\nServer = http://s\n";
        let conf = parse_pacman_conf_str(ok, origin).unwrap();
        assert_eq!(conf.repos.len(), 1);
        // "[r2" opened nothing: the Server line after it is [r]'s, as in pacman
        assert_eq!(conf.repos[0].servers[0].url, "http://s");
        let e = parse_pacman_conf(Path::new("/nonexistent/pacman.conf")).unwrap_err();
        assert!(e.reason.contains("cannot read"));
    }

    /// Lines pacman accepts but that are surely not meant: read as pacman reads them, and
    /// one warning each naming the file and line.
    #[test]
    fn pacman_conf_warnings() {
        let origin = Path::new("/etc/pacman.conf");
        let cases: &[(&str, &str)] = &[
            ("[options]\n[core\n", "'[core' is not a section header"),
            ("[options]\n[]\n", "empty name"),
            ("[core]\nServer =\n", "Server line without a value"),
            (
                "[core]\nCacheServer =\n",
                "CacheServer line without a value",
            ),
            ("[core]\nServer = ftp://m/$repo\n", "only http://"),
            ("[core]\nServer = file:///srv/repo\n", "only http://"),
            ("[options]\nDBPath =\n", "DBPath without a value"),
            (
                "[core]\nServer = http://m/$repo # c\n",
                "the value of Server contains '#'",
            ),
            ("[core]\nServer = http://m/$arch\n", "sets no Architecture"),
        ];
        for (text, warning) in cases {
            let dir = TempDir::new("pmwarn");
            let path = dir.write("pacman.conf", text);
            let conf = parse_pacman_conf(&path).unwrap();
            let line = text.lines().count();
            assert!(
                conf.warnings.len() == 1 && conf.warnings[0].contains(warning),
                "{text:?} -> {:?}",
                conf.warnings
            );
            let at = format!("{}:", path.display());
            assert!(conf.warnings[0].starts_with(&at), "{:?}", conf.warnings);
            if !warning.contains("Architecture") {
                assert!(
                    conf.warnings[0].starts_with(&format!("{at}{line}: ")),
                    "{:?}",
                    conf.warnings
                );
            }
        }
        // Values are taken whole: a '#' inside one is part of it.
        let conf = parse_pacman_conf_str(
            "[options]\nCacheDir = /a/ /b/\t/c/ # x\n[core]\nServer = http://m/x#y\n",
            origin,
        )
        .unwrap();
        assert_eq!(conf.cache_dirs, [p("/a/"), p("/b/\t/c/"), p("#"), p("x")]);
        assert_eq!(conf.repos[0].servers[0].url, "http://m/x#y");
        // The name inside the brackets is taken as written; a repeated section continues.
        let conf = parse_pacman_conf_str(
            "[ core ]\nServer = http://a\n[x]\n[ core ]\nServer = http://b\n",
            origin,
        )
        .unwrap();
        assert_eq!(conf.repos[0].name, " core ");
        assert_eq!(conf.repos[0].servers.len(), 2);
        // ftp:// and file:// mirrors are never upstreams (flocon cannot fetch them).
        let conf = parse_pacman_conf_str(
            "[core]\nServer = ftp://a/$repo\nServer = FILE:///b\nServer = HTTP://c/$repo\n",
            origin,
        )
        .unwrap();
        assert_eq!(conf.repos[0].upstreams("x86_64", 19433), ["HTTP://c/core"]);
    }

    #[test]
    fn includes_that_are_not_regular_files() {
        let dir = TempDir::new("special");
        fs::create_dir_all(dir.path("adir")).unwrap();
        let fifo = dir.path("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let text = format!(
            "[core]\nInclude = {}\nInclude = {}\nInclude = /dev/null\nServer = http://after\n",
            fifo.display(),
            dir.path("adir").display()
        );
        let path = dir.write("pacman.conf", &text);
        // Opening the FIFO without a writer must not block.
        let conf = parse_pacman_conf(&path).unwrap();
        assert_eq!(conf.repos[0].servers.len(), 1);
        assert_eq!(conf.warnings.len(), 3, "{:?}", conf.warnings);
        for (w, kind) in conf
            .warnings
            .iter()
            .zip(["FIFO", "directory", "character device"])
        {
            assert!(w.contains(&format!("a {kind}, not a regular file")), "{w}");
        }
        // The top-level file itself: refused, not waited on.
        let e = parse_pacman_conf(&fifo).unwrap_err();
        assert!(e.reason.contains("FIFO"), "{e}");
    }

    #[test]
    fn changed_files_are_noticed() {
        let dir = TempDir::new("stamps");
        let mirrors = dir.write("mirrorlist", "Server = http://one/$repo\n");
        dir.write("pacman.d/a.conf", "");
        let main = dir.write(
            "pacman.conf",
            &format!(
                "[options]\nInclude = {}/pacman.d/*.conf\n[core]\nInclude = {}\n",
                dir.0.display(),
                mirrors.display()
            ),
        );
        let conf = parse_pacman_conf(&main).unwrap();
        let stamps = conf.files;
        let paths: Vec<&Path> = stamps.iter().map(|s| s.path.as_path()).collect();
        assert_eq!(
            paths,
            [
                main.as_path(),
                dir.path("pacman.d").as_path(),
                dir.path("pacman.d/a.conf").as_path(),
                mirrors.as_path()
            ]
        );
        assert_eq!(changed_file(&stamps), None);
        // rewritten by renaming a new file into place (reflector, pacdiff): another inode
        let new = dir.write("mirrorlist.new", "Server = http://two/$repo\n");
        fs::rename(&new, &mirrors).unwrap();
        assert_eq!(changed_file(&stamps), Some(mirrors.as_path()));
        let stamps = pacman_conf_stamps(&main);
        assert_eq!(changed_file(&stamps), None);
        // a new file matching the glob
        dir.write("pacman.d/b.conf", "");
        assert_eq!(changed_file(&stamps), Some(dir.path("pacman.d").as_path()));
        // a broken file is stamped too: fixing it is a change
        dir.write("mirrorlist", "[core]\nServer\n");
        assert!(parse_pacman_conf(&main).is_err());
        let stamps = pacman_conf_stamps(&main);
        assert_eq!(stamps.len(), 5);
        assert_eq!(changed_file(&stamps), None);
        dir.write("mirrorlist", "Server = http://three/$repo\n");
        assert_eq!(changed_file(&stamps), Some(mirrors.as_path()));
        // a missing pacman.conf is stamped as absent: its creation is a change
        let absent = dir.path("absent.conf");
        let stamps = pacman_conf_stamps(&absent);
        assert_eq!(changed_file(&stamps), None);
        dir.write("absent.conf", "");
        assert_eq!(changed_file(&stamps), Some(absent.as_path()));
    }

    #[test]
    fn flocon_comment_forms() {
        assert_eq!(
            flocon_comment("# flocon: Server = http://a"),
            Some("http://a")
        );
        assert_eq!(flocon_comment("#flocon:Server=http://a"), Some("http://a"));
        // taken whole, like every value in pacman.conf
        assert_eq!(
            flocon_comment("#  flocon:\tServer\t=  http://a  # x"),
            Some("http://a  # x")
        );
        assert_eq!(flocon_comment("# Flocon: Server = http://a"), None);
        assert_eq!(flocon_comment("# flocon: CacheServer = http://a"), None);
        assert_eq!(flocon_comment("# flocon: Servers = http://a"), None);
        assert_eq!(flocon_comment("# flocon: Server ="), None);
        assert_eq!(flocon_comment("## flocon: Server = http://a"), None);
        assert_eq!(flocon_comment("Server = http://a"), None);
        // Outside a repo section a flocon comment is ignored.
        let conf = parse_pacman_conf_str(
            "# flocon: Server = http://a\n[options]\n# flocon: Server = http://b\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(conf.repos.is_empty());
        // indented, it is still a comment line
        let conf = parse_pacman_conf_str(
            "[core]\n\t # flocon: Server = http://c/$repo\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(conf.repos[0].upstreams("x86_64", 19433), ["http://c/core"]);
    }

    #[test]
    fn includes_with_globs() {
        let dir = TempDir::new("include");
        dir.write("pacman.d/b.conf", "Server = http://b/$repo\n");
        dir.write("pacman.d/a.conf", "Server = http://a/$repo\n");
        dir.write("pacman.d/c.txt", "Server = http://c/$repo\n");
        dir.write("pacman.d/.hidden.conf", "Server = http://hidden/$repo\n");
        fs::create_dir_all(dir.path("pacman.d/dir.conf")).unwrap();
        dir.write(
            "pacman.d/mirrorlist",
            "## mirrors\nServer = http://m/$repo/os/$arch\n",
        );
        dir.write("sub/one/x.conf", "Server = http://one\n");
        dir.write("sub/two/x.conf", "Server = http://two\n");
        dir.write("sections.conf", "[fromfile]\nServer = http://f\n");
        let main = format!(
            "[options]\nArchitecture = auto\n\
             [core]\nInclude = {d}/pacman.d/*.conf\n\
             [extra]\nInclude = {d}/pacman.d/mirrorlist\n\
             [q]\nInclude = {d}/pacman.d/?.c[a-z]nf\n\
             [neg]\nInclude = {d}/pacman.d/[!a].conf\n\
             [nested]\nInclude = {d}/sub/*/x.conf\n\
             Include = {d}/sections.conf\n\
             Server = http://after-include\n",
            d = dir.0.display()
        );
        let path = dir.write("pacman.conf", &main);
        let conf = parse_pacman_conf(&path).unwrap();
        let urls = |name: &str| -> Vec<String> {
            conf.repos
                .iter()
                .find(|r| r.name == name)
                .unwrap()
                .servers
                .iter()
                .map(|s| s.url.clone())
                .collect()
        };
        assert_eq!(urls("core"), ["http://a/$repo", "http://b/$repo"]);
        assert_eq!(urls("extra"), ["http://m/$repo/os/$arch"]);
        assert_eq!(urls("q"), ["http://a/$repo", "http://b/$repo"]);
        assert_eq!(urls("neg"), ["http://b/$repo"]);
        assert_eq!(urls("nested"), ["http://one", "http://two"]);
        // A section opened in an included file stays open after it, as in pacman.
        assert_eq!(urls("fromfile"), ["http://f", "http://after-include"]);
        // The directory matched by *.conf: pacman reads nothing from it; flocon says so.
        assert_eq!(conf.warnings.len(), 1, "{:?}", conf.warnings);
        assert!(conf.warnings[0].contains("dir.conf: a directory"));

        // A glob matching nothing is read as a file name, and fails (pacman's GLOB_NOCHECK).
        let none = dir.write(
            "none.conf",
            &format!("[core]\nInclude = {}/nothing-*.conf\n", dir.0.display()),
        );
        let e = parse_pacman_conf(&none).unwrap_err();
        assert!(e.reason.contains("nothing-*.conf"), "{e}");
        // A missing include names the including file and line.
        let bad = dir.write(
            "bad.conf",
            &format!("[core]\n\nInclude = {}/pacman.d/absent\n", dir.0.display()),
        );
        let e = parse_pacman_conf(&bad).unwrap_err();
        assert_eq!(e.option, format!("{}:3", bad.display()));
        assert!(
            e.reason.contains("absent") && e.reason.contains("No such file"),
            "{e}"
        );
        // An error inside an include names the included file.
        dir.write("pacman.d/broken", "[oops]\nServer\n");
        let outer = dir.write(
            "outer.conf",
            &format!("[core]\nInclude = {}/pacman.d/broken\n", dir.0.display()),
        );
        let e = parse_pacman_conf(&outer).unwrap_err();
        assert_eq!(
            e.option,
            format!("{}:2", dir.path("pacman.d/broken").display())
        );
        // A relative Include is read from the working directory, with a warning.
        let rel = dir.write("rel.conf", "[core]\nInclude = Cargo.toml\n");
        let conf = parse_pacman_conf(&rel).unwrap();
        assert!(
            conf.warnings[0].contains("relative path"),
            "{:?}",
            conf.warnings
        );
    }

    #[test]
    fn include_cycles_and_depth() {
        let dir = TempDir::new("cycle");
        let d = dir.0.display().to_string();
        let a = dir.write("a.conf", &format!("[core]\nInclude = {d}/b.conf\n"));
        dir.write("b.conf", &format!("Include = {d}/./a.conf\n"));
        let e = parse_pacman_conf(&a).unwrap_err();
        assert!(e.reason.contains("include cycle"), "{e}");
        assert_eq!(e.option, format!("{}:1", dir.path("b.conf").display()));
        let selfish = dir.write("self.conf", &format!("[x]\nInclude = {d}/self.conf\n"));
        assert!(
            parse_pacman_conf(&selfish)
                .unwrap_err()
                .reason
                .contains("cycle")
        );
        let glob_self = dir.write("g.conf", &format!("[x]\nInclude = {d}/g.*\n"));
        assert!(
            parse_pacman_conf(&glob_self)
                .unwrap_err()
                .reason
                .contains("cycle")
        );

        // The same file included twice, not nested, is not a cycle.
        dir.write("mirrors", "Server = http://m\n");
        let twice = dir.write(
            "twice.conf",
            &format!("[a]\nInclude = {d}/mirrors\n[b]\nInclude = {d}/mirrors\n"),
        );
        assert_eq!(parse_pacman_conf(&twice).unwrap().repos.len(), 2);

        // A chain of exactly MAX_INCLUDE_DEPTH nested includes is accepted, one more is not.
        let chain = |len: usize| {
            dir.write("d0.conf", &format!("[top]\nInclude = {d}/d1.conf\n"));
            for i in 1..len {
                dir.write(
                    &format!("d{i}.conf"),
                    &format!("Include = {d}/d{}.conf\n", i + 1),
                );
            }
            dir.write(&format!("d{len}.conf"), "[deep]\n");
            parse_pacman_conf(&dir.path("d0.conf"))
        };
        assert_eq!(chain(MAX_INCLUDE_DEPTH).unwrap().repos.len(), 2);
        let e = chain(MAX_INCLUDE_DEPTH + 1).unwrap_err();
        assert!(e.reason.contains("deeper than 10"), "{e}");
    }

    fn repo(name: &str, lines: &[(ServerKind, &str)]) -> Repo {
        Repo {
            name: name.to_string(),
            servers: lines
                .iter()
                .map(|&(kind, url)| ServerLine {
                    kind,
                    url: url.to_string(),
                })
                .collect(),
        }
    }

    use ServerKind::{CacheServer as C, FloconComment as F, Server as S};

    #[test]
    fn upstreams_flocon_first() {
        let r = repo(
            "core",
            &[
                (S, "http://localhost:19433/$repo/os/$arch"),
                (S, "https://one.example/$repo/os/$arch/"),
                (S, "http://two.example/archlinux/$repo/os/$arch"),
            ],
        );
        assert_eq!(
            r.upstreams("x86_64", 19433),
            [
                "https://one.example/core/os/x86_64",
                "http://two.example/archlinux/core/os/x86_64"
            ]
        );
    }

    #[test]
    fn upstreams_flocon_in_the_middle() {
        let r = repo(
            "extra",
            &[
                (S, "http://before.example/$repo"),
                (F, "http://lan.example/$arch/$repo/"),
                (S, "http://127.0.0.1:19433/$repo/os/$arch"),
                (C, "http://cache.example/$repo"),
                (S, "http://after.example/$repo//"),
                (F, "http://later-comment.example/$repo"),
                (S, "http://[::1]:19433/$repo/os/$arch"),
                (S, "http://after.example/$repo"),
            ],
        );
        assert_eq!(
            r.upstreams("aarch64", 19433),
            [
                "http://lan.example/aarch64/extra",
                "http://after.example/extra",
                "http://later-comment.example/extra",
            ]
        );
    }

    #[test]
    fn upstreams_flocon_absent_or_cacheserver() {
        let absent = repo(
            "core",
            &[
                (S, "http://a.example/$repo"),
                (F, "http://c/$repo"),
                (S, "http://b.example/$repo"),
            ],
        );
        assert_eq!(
            absent.upstreams("x86_64", 19433),
            [
                "http://a.example/core",
                "http://c/core",
                "http://b.example/core"
            ]
        );
        // pacman >= 6.1: flocon is a CacheServer; every Server line is an upstream.
        let cache = repo(
            "core",
            &[
                (S, "http://a.example/$repo/os/$arch"),
                (C, "http://localhost:19433/$repo/os/$arch"),
                (S, "http://b.example/$repo/os/$arch"),
            ],
        );
        assert_eq!(
            cache.upstreams("armv7h", 19433),
            [
                "http://a.example/core/os/armv7h",
                "http://b.example/core/os/armv7h"
            ]
        );
        // Another port on localhost is not flocon: it is an upstream.
        let other = repo(
            "core",
            &[
                (S, "http://localhost:8080/$repo"),
                (S, "http://localhost:19433/$repo"),
            ],
        );
        assert!(other.upstreams("x86_64", 19433).is_empty());
        assert_eq!(
            other.upstreams("x86_64", 7000),
            ["http://localhost:8080/core", "http://localhost:19433/core"]
        );
        // A flocon comment that points at flocon itself is dropped (it would loop).
        let looping = repo("core", &[(F, "http://localhost:19433/$repo")]);
        assert!(looping.upstreams("x86_64", 19433).is_empty());
        assert!(repo("core", &[]).upstreams("x86_64", 19433).is_empty());
    }

    #[test]
    fn own_url_recognition() {
        for url in [
            "http://localhost:19433/$repo/os/$arch",
            "http://LOCALHOST:19433",
            "http://localhost.:19433/",
            "http://127.0.0.1:19433/x",
            "http://127.1.2.3:19433/x",
            "http://[::1]:19433/$repo",
            "HTTP://user:pw@localhost:19433/x",
            "https://localhost:19433/x",
        ] {
            assert!(is_own_url(url, 19433), "{url}");
        }
        for url in [
            "http://localhost/x",
            "http://localhost:19432/x",
            "http://example.com:19433/x",
            "http://10.0.0.1:19433/x",
            "http://[::2]:19433/x",
            "http://[::1]x:19433/",
            "ftp://localhost:19433/",
            "localhost:19433",
            "http://localhost:abc/",
            "",
        ] {
            assert!(!is_own_url(url, 19433), "{url}");
        }
        assert!(is_own_url("http://localhost/x", 80));
        assert!(is_own_url("https://[::1]/x", 443));
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

    #[test]
    fn glob_match_cases() {
        let m = |p: &str, n: &str| glob_match(p.as_bytes(), n.as_bytes());
        assert!(m("*.conf", "a.conf"));
        assert!(!m("*.conf", "a.conf.bak"));
        assert!(!m("*.conf", ".a.conf"));
        assert!(m(".*.conf", ".a.conf"));
        assert!(m("?", "x"));
        assert!(!m("?", ""));
        assert!(m("*", ""));
        assert!(m("a*b*c", "aXbYbc"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
        assert!(m("[ab", "[ab"), "an unclosed class is literal");
        assert!(!m("[ab", "a"));
        assert!(m("**x", "x"));
    }

    /// Reference matcher: plain recursion, obviously right, exponential, fine for short inputs.
    fn reference_match(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|i| reference_match(&p[1..], &n[i..])),
            Some(b'?') => !n.is_empty() && reference_match(&p[1..], &n[1..]),
            Some(b'[') => match class_match(p, 0, *n.first().unwrap_or(&0)) {
                Some((ok, after)) => !n.is_empty() && ok && reference_match(&p[after..], &n[1..]),
                None => n.first() == Some(&b'[') && reference_match(&p[1..], &n[1..]),
            },
            Some(&c) => n.first() == Some(&c) && reference_match(&p[1..], &n[1..]),
        }
    }

    use crate::xorshift::XorShift;

    #[test]
    fn glob_match_mini_fuzz() {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let pattern_alphabet = b"ab*?[]!-.";
        let name_alphabet = b"ab.-[]";
        for _ in 0..20_000 {
            let pattern: Vec<u8> = (0..rng.below(7))
                .map(|_| pattern_alphabet[rng.below(pattern_alphabet.len())])
                .collect();
            let name: Vec<u8> = (0..rng.below(6))
                .map(|_| name_alphabet[rng.below(name_alphabet.len())])
                .collect();
            let hidden_rule = name.first() == Some(&b'.') && pattern.first() != Some(&b'.');
            let expected = !hidden_rule && reference_match(&pattern, &name);
            assert_eq!(
                glob_match(&pattern, &name),
                expected,
                "pattern {:?} name {:?}",
                String::from_utf8_lossy(&pattern),
                String::from_utf8_lossy(&name)
            );
        }
    }

    #[test]
    fn parsers_mini_fuzz_never_panic() {
        let origin = Path::new("/nonexistent/fuzz.conf");
        // Every truncation of real files.
        let flocon = "port = 2000\nlisten = [::1]:1\n# c\ndebug\nname = x # y\n";
        for cut in 0..=SAMPLE.len() {
            if SAMPLE.is_char_boundary(cut) {
                let _ = parse_pacman_conf_str(&SAMPLE[..cut], origin);
            }
        }
        for cut in 0..=flocon.len() {
            let _ = parse_flocon_conf_str(&flocon[..cut], origin);
        }
        // Random lines from fragments that matter to the grammars.
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
        for _ in 0..3000 {
            let text: String = (0..rng.below(40))
                .map(|_| fragments[rng.below(fragments.len())])
                .collect();
            if let Ok(conf) = parse_pacman_conf_str(&text, origin) {
                for r in &conf.repos {
                    let _ = r.upstreams("x86_64", 19433);
                }
            }
            let _ = parse_flocon_conf_str(&text, origin);
            let _ = loopback_port(&text);
            let _ = os_release_id(&text);
        }
    }

    #[test]
    fn lexopt_argument_mini_fuzz_never_panics() {
        let dir = TempDir::new("argfuzz");
        let words = [
            "status",
            "--json",
            "--port",
            "1",
            "--listen",
            "127.0.0.1:1",
            "--debug",
            "-h",
            "-V",
            "--",
            "-",
            "--name",
            "x",
            "--interface",
            "lo",
            "--config",
            "--bogus",
            "=",
            "-x",
            "--port=2",
            "",
        ];
        let mut rng = XorShift::new(42);
        for _ in 0..2000 {
            let args: Vec<&str> = (0..rng.below(6))
                .map(|_| words[rng.below(words.len())])
                .collect();
            let _ = dir.parse(&args);
        }
    }
}
