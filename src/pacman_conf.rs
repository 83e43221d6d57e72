//! The reader of pacman.conf, the way pacman reads it: sections, `Include` (with its glob(3),
//! nesting bound and cycle detection), the `# flocon: Server = URL` comment lines, and the
//! stamps of every file read, so the daemon notices when pacman's configuration changes
//! ([`changed_file`]). What flocon takes from it: CacheDir, DBPath, Architecture and each
//! repo's server lines in file order ([`PacmanConf`]); which of those lines are upstreams is
//! upstream.rs's. Every file read is bounded and opened without blocking.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::config::{ConfigError, MAX_FILE_BYTES, io_reason, shown};
use crate::upstream;

/// Include nesting: pacman's own limit, so every pacman.conf pacman accepts is accepted here.
const MAX_INCLUDE_DEPTH: usize = 10;
/// Files read for one pacman.conf with its includes: a real setup reads about a dozen (the
/// mirrorlist once per repo); with `MAX_FILE_BYTES` this bounds the total work.
const MAX_INCLUDED_FILES: usize = 1024;
/// Files one `Include` glob may match: /etc/pacman.d holds a handful.
const MAX_GLOB_MATCHES: usize = 256;
/// Directory entries scanned to expand one glob component: bounds the work on a huge directory.
const MAX_GLOB_SCAN: usize = 65536;

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

/// Reads a pacman.conf and its includes. A missing file is an error here.
pub fn parse_pacman_conf(path: &Path) -> Result<PacmanConf, ConfigError> {
    read_pacman_conf(path, false)
        .0
        .map(|conf| conf.unwrap_or_default())
}

/// Like [`parse_pacman_conf`], but a missing top-level file is `None` (pacman's defaults).
pub(crate) fn load_pacman_conf(path: &Path) -> Result<Option<PacmanConf>, ConfigError> {
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
        if kind != ServerKind::CacheServer && !upstream::scheme_ok(url) {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::tests::{TempDir, fuzz_texts, p};
    use crate::config::{machine_arch, resolve_architectures};

    pub(crate) const SAMPLE: &str = "\
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
        assert_eq!(
            upstream::upstreams(&conf.repos[0], "x86_64", 19433),
            ["HTTP://c/core"]
        );
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
        assert_eq!(
            upstream::upstreams(&conf.repos[0], "x86_64", 19433),
            ["http://c/core"]
        );
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
    fn parser_mini_fuzz_never_panics() {
        let origin = Path::new("/nonexistent/fuzz.conf");
        // Every truncation of a real file.
        for cut in 0..=SAMPLE.len() {
            if SAMPLE.is_char_boundary(cut) {
                let _ = parse_pacman_conf_str(&SAMPLE[..cut], origin);
            }
        }
        for text in fuzz_texts() {
            if let Ok(conf) = parse_pacman_conf_str(&text, origin) {
                for r in &conf.repos {
                    let _ = upstream::upstreams(r, "x86_64", 19433);
                }
            }
        }
    }
}
