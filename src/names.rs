//! The one rule for a file name flocon handles (a package, its `.sig`, a sync db): one path
//! component of printable ASCII. The front (names from pacman's requests), the peer server
//! (names from peers' requests), the discovery codec (names in QUERY datagrams) and the
//! sync-db index (`%FILENAME%`) all call `is_file_name`, so a name one layer accepts is never
//! refused, or read differently, by another. `classify` says which kind of file a name is
//! (package, signature, database), which decides where the front and the peer server may take
//! it from. Pure; see docs/DESIGN.md, "File names".

/// Longest name: a file name's limit on Linux (NAME_MAX), and a QUERY's length byte.
pub(crate) const MAX_FILE_NAME: usize = 255;

/// 1..=MAX_FILE_NAME bytes of printable ASCII without space (0x21–0x7E), no `/`, no `\`, not
/// starting with `.` (so neither `.` nor `..` nor a dot file), not ending in `.part` in any
/// case (pacman's and flocon's half-written files). Package file names are ASCII, so refusing
/// the rest kills Unicode look-alikes (fullwidth dots, right-to-left overrides) outright.
pub(crate) fn is_file_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name[0] != b'.'
        && name
            .iter()
            .all(|&c| c.is_ascii_graphic() && c != b'/' && c != b'\\')
        && !(name.len() >= 5 && name[name.len() - 5..].eq_ignore_ascii_case(b".part"))
}

/// Compressor suffixes makepkg can give a package (`PKGEXT`) and repo-add a database.
const COMPRESSORS: &[&str] = &["gz", "xz", "zst", "bz2", "lz4", "lrz", "lzo", "Z", "lz"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `<stem>.pkg.tar` or `<stem>.pkg.tar.<compressor>`.
    Package,
    PackageSig,
    /// `<repo>.db`, `<repo>.files`, or those + `.tar` [+ `.<compressor>`].
    Database,
    DatabaseSig,
    Other,
}

pub(crate) fn classify(name: &str) -> FileKind {
    match name.strip_suffix(".sig") {
        Some(base) => match classify_unsigned(base) {
            FileKind::Package => FileKind::PackageSig,
            FileKind::Database => FileKind::DatabaseSig,
            _ => FileKind::Other,
        },
        None => classify_unsigned(name),
    }
}

fn classify_unsigned(name: &str) -> FileKind {
    let uncompressed = strip_compressor(name);
    if has_stem(uncompressed, ".pkg.tar") {
        return FileKind::Package;
    }
    // Databases are `x.db` (a symlink repo-add makes) or `x.db.tar[.comp]`; `x.db.gz` is not.
    let db = match uncompressed.strip_suffix(".tar") {
        Some(db) => db,
        None if uncompressed.len() == name.len() => name,
        None => return FileKind::Other,
    };
    if has_stem(db, ".db") || has_stem(db, ".files") {
        FileKind::Database
    } else {
        FileKind::Other
    }
}

fn strip_compressor(name: &str) -> &str {
    COMPRESSORS
        .iter()
        .find_map(|c| name.strip_suffix(c).and_then(|rest| rest.strip_suffix('.')))
        .unwrap_or(name)
}

fn has_stem(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|stem| !stem.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        use FileKind::*;
        let cases: &[(&str, FileKind)] = &[
            ("a-1-1-x86_64.pkg.tar.zst", Package),
            ("a-1-1-x86_64.pkg.tar.xz", Package),
            ("a-1-1-any.pkg.tar.gz", Package),
            ("a-1-1-any.pkg.tar.bz2", Package),
            ("a-1-1-any.pkg.tar.lz4", Package),
            ("a-1-1-any.pkg.tar.lrz", Package),
            ("a-1-1-any.pkg.tar.lzo", Package),
            ("a-1-1-any.pkg.tar.Z", Package),
            ("a-1-1-any.pkg.tar.lz", Package),
            ("a-1-1-any.pkg.tar", Package),
            ("a-1-1-any.pkg.tar.zst.sig", PackageSig),
            ("a-1-1-any.pkg.tar.sig", PackageSig),
            ("a.pkg.tar.rar", Other),
            ("a.pkg.tar.z", Other),
            ("a.pkg.tar.zst.gz", Other),
            ("a.pkg.tar.zst.sig.sig", Other),
            (".pkg.tar.zst", Other),
            ("pkg.tar.zst", Other),
            ("a.pkg.tar.", Other),
            ("a.pkg.tar.zst.part", Other),
            ("core.db", Database),
            ("core.files", Database),
            ("core.db.tar.gz", Database),
            ("core.files.tar.gz", Database),
            ("core.db.tar.zst", Database),
            ("core.db.tar", Database),
            ("core.db.sig", DatabaseSig),
            ("core.files.sig", DatabaseSig),
            ("core.db.tar.gz.sig", DatabaseSig),
            ("core.db.gz", Other),
            ("core.db.tar.rar", Other),
            (".db", Other),
            ("db", Other),
            ("core.db.old", Other),
            ("core.sig", Other),
            ("index.html", Other),
            ("", Other),
            (".sig", Other),
        ];
        for (name, kind) in cases {
            assert_eq!(classify(name), *kind, "{name:?}");
        }
    }

    #[test]
    fn real_names_pass() {
        for good in [
            "a",
            "zstd-1.5.6-1-x86_64.pkg.tar.zst",
            "zstd-1.5.6-1-x86_64.pkg.tar.zst.sig",
            "lib32-glibc-2.40+r16+gaa533d58ff-2-x86_64.pkg.tar.zst",
            "python-3.12.7-1-aarch64.pkg.tar.xz",
            "core.db",
            "extra.files.tar.gz",
            "a.b-c_d+e:f@g~h%i",
            "a.partial",
            "x.part.sig",
        ] {
            assert!(is_file_name(good.as_bytes()), "{good:?}");
        }
        assert!(is_file_name("a".repeat(MAX_FILE_NAME).as_bytes()));
    }

    /// Every hostile shape met so far, refused by the one rule (and so by every layer).
    #[test]
    fn hostile_names_are_refused() {
        let too_long = "a".repeat(MAX_FILE_NAME + 1);
        for bad in [
            "",
            ".",
            "..",
            ".a",
            ".hidden.pkg.tar.zst",
            "a/b",
            "../etc/passwd",
            "a\\b",
            "..\\x",
            "a b",
            "a\tb",
            "a\nb",
            "a\rb",
            "a\0",
            "a\x7f",
            "a\x1b[31m",
            "é",
            "ａ.pkg.tar.zst",       // fullwidth a
            "a\u{202e}tsz.rat.gkp", // right-to-left override
            "a\u{ff0e}pkg",         // fullwidth dot
            "a.part",
            "x.PaRt",
            "zstd-1.5.6-1-x86_64.pkg.tar.zst.part",
            too_long.as_str(),
        ] {
            assert!(!is_file_name(bad.as_bytes()), "{bad:?}");
        }
        // every single byte outside 0x21..=0x7e, and the two separators, alone and inside
        for b in (0u8..=0x20).chain(0x7f..=0xff).chain([b'/', b'\\']) {
            assert!(!is_file_name(&[b]), "{b:#x}");
            assert!(!is_file_name(&[b'a', b, b'a']), "{b:#x}");
        }
    }
}
