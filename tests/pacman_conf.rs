//! flocon reads pacman.conf the way pacman reads it: a table of files, each read by flocon's
//! parser and by real `pacman-conf` — the host's (Debian bookworm: pacman 6.0) and pacman 7's
//! from the Debian trixie tree `tests/trixie.sh` builds under `target/trixie` (run there with
//! `chroot`, the case files bind-mounted at the same path in a mount namespace of its own) —
//! and the two answers compared: accepted or refused, repositories, Server and CacheServer
//! lines, CacheDir, DBPath. The shipped `etc/pacman.d-flocon` and the README's snippet are in
//! the table.
//!
//! No pacman-conf, or no tree, is a failure with the command that fixes it, never a silent
//! pass; `FLOCON_NO_PACMAN7=1` skips the tree explicitly (and says so).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flocon::pacman_conf::{PacmanConf, ServerKind, parse_pacman_conf};

/// One case: files written into a fresh directory (`@D@` in their text is that directory),
/// `pacman.conf` among them; what flocon must say (None: refuse; Some: accept with these
/// warnings, by substring); the lowest pacman major version whose pacman-conf agrees (pacman
/// 6.0 does not know CacheServer); whether pacman-conf can be asked at all.
struct Case {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    flocon: Option<&'static [&'static str]>,
    since_major: u32,
    ask_pacman: bool,
}

const fn case(
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
    flocon: Option<&'static [&'static str]>,
) -> Case {
    Case {
        name,
        files,
        flocon,
        since_major: 6,
        ask_pacman: true,
    }
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        case(
            "the old README snippet: a comment after an Include",
            &[
                (
                    "pacman.conf",
                    "[options]\nArchitecture = auto\n[core]\n\
                     Include = @D@/flocon       # CacheServer = http://localhost:19433/$repo/os/$arch\n\
                     Include = @D@/mirrorlist\n",
                ),
                (
                    "flocon",
                    "CacheServer = http://localhost:19433/$repo/os/$arch\n",
                ),
                ("mirrorlist", "Server = http://m/$repo/os/$arch\n"),
            ],
            None,
        ),
        case(
            "values are whole: a '#' inside one is part of it",
            &[(
                "pacman.conf",
                "[options]\nArchitecture = auto\n[core]\nServer = http://a/x#y\n\
                 Server = http://b/$repo  # c\n",
            )],
            Some(&["contains '#'", "contains '#'"]),
        ),
        case(
            "comments only at line start, indented ones too; CRLF",
            &[(
                "pacman.conf",
                "# top\r\n[options]\r\n  # indented\r\n\t#Server = x\r\nArchitecture = auto\r\n\
                 [core]\r\nServer=http://a/$repo\r\n",
            )],
            Some(&[]),
        ),
        case(
            "Server without '=': refused",
            &[("pacman.conf", "[options]\n[core]\nServer\n")],
            None,
        ),
        case(
            "Server with an empty value: pacman keeps an empty server, flocon warns",
            &[(
                "pacman.conf",
                "[options]\n[core]\nServer =\nServer = http://a/\n",
            )],
            Some(&["Server line without a value"]),
        ),
        Case {
            since_major: 7,
            ..case(
                "CacheServer without '=': refused (pacman 6.0 does not know the key)",
                &[("pacman.conf", "[options]\n[core]\nCacheServer\n")],
                None,
            )
        },
        Case {
            since_major: 7,
            ..case(
                "CacheServer with an empty value",
                &[("pacman.conf", "[options]\n[core]\nCacheServer =\n")],
                Some(&["CacheServer line without a value"]),
            )
        },
        case(
            "unknown directives are skipped",
            &[(
                "pacman.conf",
                "[options]\nNoSuch = 1\nColor\nArchitecture = auto\n[core]\nFoo = bar\n\
                 SigLevel = Never\nUsage = Sync\nServer = http://a/$repo\n",
            )],
            Some(&[]),
        ),
        case(
            "a directive outside of any section: refused",
            &[("pacman.conf", "Server = http://a/\n[core]\n")],
            None,
        ),
        case(
            "a glob matching nothing is read as a name: refused",
            &[(
                "pacman.conf",
                "[options]\n[core]\nInclude = @D@/nothing-*.conf\n",
            )],
            None,
        ),
        case(
            "a glob matching files and a directory, in order",
            &[
                (
                    "pacman.conf",
                    "[options]\n[core]\nInclude = @D@/d/*.conf\nServer = http://after/\n",
                ),
                ("d/b.conf", "Server = http://b/\n"),
                ("d/a.conf", "Server = http://a/\n"),
                ("d/.hidden.conf", "Server = http://hidden/\n"),
                ("d/x.txt", "Server = http://x/\n"),
                ("d/sub.conf/keep", ""),
            ],
            Some(&["sub.conf: a directory"]),
        ),
        case(
            "Include of a directory: nothing read",
            &[
                (
                    "pacman.conf",
                    "[options]\n[core]\nInclude = @D@/adir\nServer = http://a/\n",
                ),
                ("adir/x", "Server = http://x/\n"),
            ],
            Some(&["a directory, not a regular file"]),
        ),
        case(
            "Include without a value: refused",
            &[("pacman.conf", "[options]\n[core]\nInclude\n")],
            None,
        ),
        case(
            "Include with an empty value: refused",
            &[("pacman.conf", "[options]\n[core]\nInclude =\n")],
            None,
        ),
        case(
            "a line opening no section ('[core' without ']') is a skipped directive",
            &[(
                "pacman.conf",
                "[options]\n[a]\nServer = http://a/\n[core\nServer = http://b/\n",
            )],
            Some(&["not a section header"]),
        ),
        case(
            "a section name is taken as written, spaces included; [] is a section",
            &[(
                "pacman.conf",
                "[options]\n[ core ]\nServer = http://a/\n[]\nServer = http://e/\n",
            )],
            Some(&["empty name"]),
        ),
        case(
            "a repeated section continues (pacman lists it twice; compared merged)",
            &[(
                "pacman.conf",
                "[options]\n[core]\nServer = http://a/\n[extra]\nServer = http://e/\n\
                 [core]\nServer = http://b/\n",
            )],
            Some(&[]),
        ),
        case(
            "CacheDir split on spaces only, '#' and all; the first DBPath wins",
            &[(
                "pacman.conf",
                "[options]\nCacheDir = /a/ /b/\t/c/\nCacheDir = /d/ # e\nDBPath = /x/\n\
                 DBPath = /y/\n[core]\n",
            )],
            Some(&["contains '#'"]),
        ),
        case(
            "an ftp:// and a file:// mirror: pacman's alone",
            &[(
                "pacman.conf",
                "[options]\n[core]\nServer = ftp://f/$repo\nServer = file:///srv/$repo\n",
            )],
            Some(&["only http://", "only http://"]),
        ),
        case(
            "includes nested 10 deep: accepted",
            &[
                ("pacman.conf", "[options]\n[core]\nInclude = @D@/i1\n"),
                ("i1", "Include = @D@/i2\n"),
                ("i2", "Include = @D@/i3\n"),
                ("i3", "Include = @D@/i4\n"),
                ("i4", "Include = @D@/i5\n"),
                ("i5", "Include = @D@/i6\n"),
                ("i6", "Include = @D@/i7\n"),
                ("i7", "Include = @D@/i8\n"),
                ("i8", "Include = @D@/i9\n"),
                ("i9", "Include = @D@/i10\n"),
                ("i10", "Server = http://deep/\n"),
            ],
            Some(&[]),
        ),
        case(
            "includes nested 11 deep: refused",
            &[
                ("pacman.conf", "[options]\n[core]\nInclude = @D@/i1\n"),
                ("i1", "Include = @D@/i2\n"),
                ("i2", "Include = @D@/i3\n"),
                ("i3", "Include = @D@/i4\n"),
                ("i4", "Include = @D@/i5\n"),
                ("i5", "Include = @D@/i6\n"),
                ("i6", "Include = @D@/i7\n"),
                ("i7", "Include = @D@/i8\n"),
                ("i8", "Include = @D@/i9\n"),
                ("i9", "Include = @D@/i10\n"),
                ("i10", "Include = @D@/i11\n"),
                ("i11", "Server = http://deep/\n"),
            ],
            None,
        ),
        // pacman-conf waits forever on a FIFO: flocon refuses it without waiting.
        Case {
            ask_pacman: false,
            ..case(
                "Include of a FIFO (pacman hangs; flocon does not)",
                &[
                    (
                        "pacman.conf",
                        "[options]\n[core]\nInclude = @D@/fifo\nServer = http://a/\n",
                    ),
                    ("fifo", "@FIFO@"),
                ],
                Some(&["a FIFO, not a regular file"]),
            )
        },
    ];
    // The shipped include file and the README's snippet, each in a pacman.conf like Arch's.
    v.push(case(
        "etc/pacman.d-flocon included in two repos, before their mirrorlist",
        &[
            (
                "pacman.conf",
                "[options]\nHoldPkg = pacman glibc\nArchitecture = auto\nCheckSpace\n\
                 SigLevel = Required DatabaseOptional\n\n\
                 [core]\nInclude = @D@/pacman.d/flocon\nInclude = @D@/pacman.d/mirrorlist\n\n\
                 [extra]\nInclude = @D@/pacman.d/flocon\nInclude = @D@/pacman.d/mirrorlist\n",
            ),
            ("pacman.d/flocon", "@SHIPPED@"),
            (
                "pacman.d/mirrorlist",
                "## Worldwide\nServer = https://geo.mirror.pkgbuild.com/$repo/os/$arch\n\
                 #Server = https://mirror.rackspace.com/archlinux/$repo/os/$arch\n",
            ),
        ],
        Some(&[]),
    ));
    v.push(case(
        "the README's pacman.conf snippet",
        &[
            (
                "pacman.conf",
                "[options]\nArchitecture = auto\n\n@README@\n",
            ),
            ("pacman.d/flocon", "@SHIPPED@"),
            (
                "pacman.d/mirrorlist",
                "Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch\n",
            ),
        ],
        Some(&[]),
    ));
    v
}

/// The README's first ```ini block (the pacman.conf lines it asks for), with /etc/pacman.d/
/// pointed into the case directory.
fn readme_snippet() -> String {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```ini\n")
        .expect("README.md has an ```ini block")
        + 7;
    let len = readme[start..].find("```").unwrap();
    readme[start..start + len].replace("/etc/pacman.d/", "@D@/pacman.d/")
}

/// Where a pacman-conf runs.
enum Runner {
    Host,
    Tree(PathBuf),
}

impl Runner {
    fn label(&self) -> String {
        match self {
            Runner::Host => "host".into(),
            Runner::Tree(t) => format!("chroot {}", t.display()),
        }
    }

    fn command(&self, args: &[&str], case_dir: &Path) -> Command {
        match self {
            Runner::Host => {
                let mut c = Command::new("timeout");
                c.arg("20").arg("pacman-conf").args(args);
                c
            }
            // the case directory (under /tmp) appears at the same path inside the tree, over a
            // tmpfs /tmp of this command's own mount namespace: the tree is not modified
            Runner::Tree(tree) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(
                        "mount -t tmpfs tmpfs \"$1/tmp\" && mkdir -p \"$1$2\" && \
                         mount --bind \"$2\" \"$1$2\" && shift 2 && exec timeout 20 chroot \"$0\" \"$@\"",
                    )
                    .arg(tree)
                    .arg(tree)
                    .arg(case_dir)
                    .arg("pacman-conf")
                    .args(args);
                c
            }
        }
    }

    fn version(&self) -> Result<(u32, String), String> {
        let out = match self {
            Runner::Host => Command::new("pacman").arg("--version").output(),
            Runner::Tree(t) => Command::new("chroot")
                .arg(t)
                .args(["pacman", "--version"])
                .output(),
        }
        .map_err(|e| format!("{}: pacman --version: {e}", self.label()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let v = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v").filter(|v| v.contains('.')))
            .ok_or_else(|| format!("{}: no version in {text:?}", self.label()))?
            .to_string();
        let major = v.split('.').next().unwrap().parse().unwrap();
        Ok((major, v))
    }
}

/// What a pacman.conf says, as both sides are compared.
#[derive(Debug, PartialEq)]
struct Seen {
    repos: Vec<(String, Vec<String>, Vec<String>)>,
    cache_dirs: Vec<String>,
    db_path: String,
}

/// pacman-conf's dump: `[section]` lines, `Key = value` lines.
fn from_pacman_conf(text: &str, with_cache_servers: bool) -> Seen {
    let mut seen = Seen {
        repos: Vec::new(),
        cache_dirs: Vec::new(),
        db_path: String::new(),
    };
    // pacman lists a repeated section twice, each with every server of the repo
    let mut order: Vec<String> = Vec::new();
    let mut repos: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with('[') && line.ends_with(']') {
            let name = line[1..line.len() - 1].to_string();
            section = (name != "options").then(|| name.clone());
            if let Some(n) = &section
                && !order.contains(n)
            {
                order.push(n.clone());
                repos.insert(n.clone(), Default::default());
            }
            continue;
        }
        let Some((k, v)) = line
            .split_once(" = ")
            .or_else(|| line.strip_suffix(" =").map(|k| (k, "")))
        else {
            continue;
        };
        match (&section, k) {
            (None, "CacheDir") => seen.cache_dirs.push(v.to_string()),
            (None, "DBPath") => seen.db_path = v.to_string(),
            (Some(r), "Server") if !v.is_empty() => {
                let s = &mut repos.get_mut(r).unwrap().0;
                if !s.contains(&v.to_string()) {
                    s.push(v.to_string());
                }
            }
            (Some(r), "CacheServer") if !v.is_empty() && with_cache_servers => {
                let s = &mut repos.get_mut(r).unwrap().1;
                if !s.contains(&v.to_string()) {
                    s.push(v.to_string());
                }
            }
            _ => {}
        }
    }
    for name in order {
        let (s, c) = repos.remove(&name).unwrap();
        seen.repos.push((name, s, c));
    }
    seen
}

fn from_flocon(conf: &PacmanConf, with_cache_servers: bool) -> Seen {
    let urls = |r: &flocon::pacman_conf::Repo, kind: ServerKind| -> Vec<String> {
        r.servers
            .iter()
            .filter(|s| s.kind == kind)
            // pacman-conf prints them substituted (every case with $arch sets `auto`)
            .map(|s| {
                s.url
                    .replace("$repo", &r.name)
                    .replace("$arch", std::env::consts::ARCH)
            })
            .collect()
    };
    Seen {
        repos: conf
            .repos
            .iter()
            .map(|r| {
                let cache = if with_cache_servers {
                    urls(r, ServerKind::CacheServer)
                } else {
                    Vec::new()
                };
                (r.name.clone(), urls(r, ServerKind::Server), cache)
            })
            .collect(),
        cache_dirs: if conf.cache_dirs.is_empty() {
            vec![flocon::config::DEFAULT_CACHE_DIR.to_string()]
        } else {
            conf.cache_dirs
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        },
        db_path: conf
            .db_path
            .as_ref()
            .map_or(flocon::config::DEFAULT_DB_PATH.to_string(), |p| {
                p.display().to_string()
            }),
    }
}

fn write_case(case: &Case, dir: &Path) {
    let shipped =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/pacman.d-flocon")).unwrap();
    for (rel, text) in case.files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        if *text == "@FIFO@" {
            let ok = Command::new("mkfifo")
                .arg(&path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo {}", path.display());
            continue;
        }
        let text = text
            .replace("@README@", &readme_snippet())
            .replace("@SHIPPED@", &shipped)
            .replace("@D@", &dir.display().to_string());
        fs::write(&path, text).unwrap();
    }
}

fn runners() -> Result<Vec<Runner>, String> {
    let mut runners = Vec::new();
    let on_path = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
    };
    if !on_path("pacman-conf") {
        return Err(
            "pacman-conf is not installed (Debian: apt-get install pacman-package-manager)".into(),
        );
    }
    runners.push(Runner::Host);
    let tree = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/trixie"));
    if std::env::var_os("FLOCON_NO_PACMAN7").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED pacman 7 (FLOCON_NO_PACMAN7=1): only the host's pacman-conf compared");
    } else if tree.join("usr/bin/pacman-conf").is_file() {
        runners.push(Runner::Tree(tree));
    } else {
        return Err(format!(
            "no pacman 7 tree at {}: build it with `sudo tests/trixie.sh target/trixie` \
             (or set FLOCON_NO_PACMAN7=1 to compare with the host's pacman only)",
            tree.display()
        ));
    }
    Ok(runners)
}

#[test]
fn pacman_conf_read_as_pacman_conf_reads_it() {
    let runners = runners().unwrap_or_else(|e| panic!("{e}"));
    let versions: Vec<(u32, String)> = runners
        .iter()
        .map(|r| r.version().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let base = std::env::temp_dir().join(format!("flocon-pacman-conf-{}", std::process::id()));
    let mut failures = Vec::new();
    let mut compared = 0;
    for (n, case) in cases().iter().enumerate() {
        let dir = base.join(n.to_string());
        fs::create_dir_all(&dir).unwrap();
        write_case(case, &dir);
        let main = dir.join("pacman.conf");
        let ours = parse_pacman_conf(&main);
        match (&ours, case.flocon) {
            (Ok(conf), Some(warnings)) => {
                let ok = conf.warnings.len() == warnings.len()
                    && conf
                        .warnings
                        .iter()
                        .zip(warnings)
                        .all(|(w, s)| w.contains(s));
                if !ok {
                    failures.push(format!(
                        "{}: flocon warned {:?}, expected {:?}",
                        case.name, conf.warnings, warnings
                    ));
                }
            }
            (Err(_), None) => {}
            (got, _) => failures.push(format!("{}: flocon said {got:?}", case.name)),
        }
        for (runner, (major, version)) in runners.iter().zip(&versions) {
            if !case.ask_pacman || *major < case.since_major {
                continue;
            }
            let main_s = main.display().to_string();
            let out = runner
                .command(&["--config", &main_s], &dir)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let who = format!("{} ({}, pacman {version})", case.name, runner.label());
            compared += 1;
            match (&ours, out.status.success()) {
                (Ok(conf), true) => {
                    let with_cache = *major >= 7;
                    let theirs = from_pacman_conf(&stdout, with_cache);
                    let mine = from_flocon(conf, with_cache);
                    if theirs != mine {
                        failures.push(format!(
                            "{who}: pacman-conf read {theirs:?}\n    flocon read {mine:?}"
                        ));
                    }
                }
                (Err(_), false) => {}
                (Ok(_), false) => failures.push(format!(
                    "{who}: pacman-conf refused it ({}), flocon accepted it",
                    stderr.trim()
                )),
                (Err(e), true) => failures.push(format!(
                    "{who}: pacman-conf accepted it, flocon refused it: {e}"
                )),
            }
        }
    }
    let _ = fs::remove_dir_all(&base);
    let names: Vec<String> = runners
        .iter()
        .zip(&versions)
        .map(|(r, (_, v))| format!("pacman {v} ({})", r.label()))
        .collect();
    eprintln!(
        "pacman.conf table: {} cases, {compared} comparisons with {}",
        cases().len(),
        names.join(" and ")
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
