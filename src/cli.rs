//! The command line: the options (named the same as flocon.conf's keys), the rule for each
//! option's value, one layer of given values (`Overrides`, also what flocon.conf parses
//! into), the lexopt parsing into a [`Command`], and the `--help` text. Layering the values
//! over the files and the defaults is config.rs's.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::protocol::{self, MAX_NAME_LEN};

use crate::config::{self, Config, ConfigError, DEFAULT_FRONT_PORT, Sources, check_paths, shown};

/// Upper bound of `--lookup-ms`: the lookup happens before pacman sees its first body byte,
/// and pacman aborts after 10 s without one, so the wait must stay far below that.
pub const MAX_LOOKUP_MS: u64 = 5000;
/// Upper bound of `--keep-max-mb` (the staging area as a whole holds at most 4 GiB).
pub const MAX_KEEP_MAX_MB: u64 = 4096;
/// Longest interface name: the kernel's IFNAMSIZ (16) minus its NUL terminator.
const MAX_IFACE_BYTES: usize = 15;
/// Values of one repeatable option (cache dirs, listen addresses, interfaces): far beyond real
/// use; bounds the sockets opened and the directories scanned.
const MAX_LIST_ENTRIES: usize = 64;

/// The parsed command line, opaque outside the crate: config.rs layers it over the files.
#[derive(Debug, Clone, PartialEq)]
pub struct CliArgs {
    pub(crate) overrides: Overrides,
    pub(crate) sources: Sources,
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

/// An option, named the same on the command line (`--name`) and in flocon.conf (`name =`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opt {
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

pub(crate) fn key_named(name: &str) -> Option<Opt> {
    KEYS.iter().find(|(n, _)| *n == name).map(|&(_, k)| k)
}

/// One layer of settings (command line or flocon.conf); `None` means "not given here".
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Overrides {
    pub(crate) config: Option<PathBuf>,
    pub(crate) pacman_conf: Option<PathBuf>,
    pub(crate) cache_dirs: Option<Vec<PathBuf>>,
    pub(crate) db_path: Option<PathBuf>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) listen: Option<Vec<SocketAddr>>,
    pub(crate) port: Option<u16>,
    pub(crate) peer_addr: Option<IpAddr>,
    pub(crate) interfaces: Option<Vec<String>>,
    pub(crate) exclude_interfaces: Option<Vec<String>>,
    pub(crate) static_peers: Option<Vec<String>>,
    pub(crate) key_files: Option<Vec<PathBuf>>,
    pub(crate) debug: Option<bool>,
    pub(crate) lookup_ms: Option<u64>,
    pub(crate) announce_secs: Option<u64>,
    pub(crate) name: Option<String>,
    pub(crate) keep_max_mb: Option<u64>,
}

impl Overrides {
    /// Validates `value` for `key` and records it; the error is the reason only.
    pub(crate) fn set(&mut self, key: Opt, value: &OsStr) -> Result<(), String> {
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
    pub(crate) fn over(self, lower: Overrides) -> Overrides {
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
    match crate::discovery::split_host_port(s, protocol::PORT) {
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

/// The name is announced to peers and appears in their logs: one printable line, within the
/// wire's bound (Linux's HOST_NAME_MAX, so every hostname fits).
pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("empty name".to_string());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long (at most {MAX_NAME_LEN})",
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

/// Parses the command line (without argv[0]) and reads the config file and pacman.conf.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, ConfigError> {
    let mut command = parse_args_from(args, Sources::system())?;
    if let Command::Daemon(config) = &mut command {
        check_paths(config);
    }
    Ok(command)
}

pub(crate) fn parse_args_from(
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
    let config = config::build(&cli)?;
    if !status {
        config::announcement(&config)?;
    }
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
    use crate::config::tests::{TempDir, p, sa};
    use crate::config::{
        DEFAULT_CONFIG_FILE, DEFAULT_DB_PATH, DEFAULT_KEEP_MAX_MB, DEFAULT_PACMAN_CONF,
        DEFAULT_STATE_DIR, default_listen,
    };
    use crate::xorshift::XorShift;
    use std::net::Ipv4Addr;
    use std::time::Duration;

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
            &format!("default {}", protocol::PORT),
            &format!(
                "1-{MAX_LOOKUP_MS}, default {}",
                crate::peers::LOOKUP_BUDGET.as_millis()
            ),
            &format!(
                "1-3600, default {}",
                crate::peers::ANNOUNCE_INTERVAL.as_secs()
            ),
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
