//! The sync-db index: reads pacman's `<DBPath>/sync/<repo>.db` (a gzip'd or plain tar of
//! `<pkgname>-<pkgver>/desc` files) into a compact per-repo index of `file name -> (compressed
//! size, SHA-256, detached signature)`, the reference that packages fetched from LAN peers are
//! verified against (docs/DESIGN.md, "Verified transfers").
//!
//! A db is parsed as a stream: fixed buffers for the compressed input, the inflated window and
//! one desc file, whatever the db's size. The result is one sorted array of fixed-size records
//! plus one arena of names, each a single allocation that a re-read replaces whole; the
//! `%PGPSIG%` signatures (most of an Arch db's bytes) go to an unlinked scratch file, not to
//! memory. Parsing is bounded: a crafted db (hostile member names, huge members, a
//! decompression bomb, too many entries, garbage) is refused with a typed error before any
//! bound is exceeded, and the caller keeps its last good index. Deciding when to re-read (a
//! cheap `stat` stamp, since pacman renames a new db into place) and on which thread is left
//! to the caller.

use crate::names;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Arch's largest db (extra.db) is ~9 MiB compressed; 7x headroom for big third-party repos,
/// while a stray huge file in the sync dir cannot keep the parser busy without limit.
pub const MAX_DB_FILE: u64 = 64 << 20;
/// Arch's extra.db inflates to ~35 MiB; anything past this is a decompression bomb (deflate
/// reaches ~1000:1, so 64 MiB of input could otherwise become 64 GiB). Streaming keeps the
/// memory fixed; this bounds the time.
pub const MAX_DECOMPRESSED: u64 = 512 << 20;
/// A desc file is well under 16 KiB even with long dependency lists; bigger members (a
/// `files` list, junk) are skipped without being held in memory.
pub const MAX_DESC: u64 = 64 << 10;
/// pax extended headers and GNU long names carry one path and a few attributes; unlike data
/// members they cannot be skipped (they change how the next header is read), so a bigger one
/// refuses the db.
const MAX_META: u64 = 64 << 10;
/// Arch's largest repo (extra) lists ~14,500 packages; 7x that for big third-party repos.
/// With MAX_NAME_BYTES this bounds one repo's index to ~13 MiB whatever a crafted db claims
/// (records are RECORD_BYTES each).
pub const MAX_ENTRIES: usize = 100_000;
/// All file names of one repo together: Arch's extra needs ~0.7 MiB.
pub const MAX_NAME_BYTES: usize = 8 << 20;
/// A detached OpenPGP signature: ~570 bytes with Arch's RSA-4096 keys, ~120 with ed25519;
/// a longer `%PGPSIG%` is not kept (the `.sig` then comes from elsewhere).
pub const MAX_SIG_LEN: usize = 8 << 10;
/// All signatures of one repo, on disk: Arch's extra needs ~8.5 MiB. Signatures past this
/// are not kept.
pub const MAX_SIG_BYTES: u64 = 64 << 20;
/// Linux PATH_MAX; real member names (`<pkgname>-<pkgver>/desc`) are far shorter.
pub const MAX_NAME_LEN: usize = 4096;
/// Compressed input per read(2).
const INPUT_CHUNK: usize = 32 << 10;
/// Inflate output per step: big enough to keep per-call overhead small, small enough that
/// the overshoot past MAX_DECOMPRESSED before we notice is negligible.
const INFLATE_CHUNK: usize = 64 << 10;
/// Longest decimal %CSIZE% that can fit in a u64.
const MAX_CSIZE_DIGITS: usize = 20;
/// Member names quoted in a Hostile error go to the log: keep the line readable.
const MAX_QUOTED_NAME: usize = 200;

const BLOCK: usize = 512;

/// The bounds one parse runs under (tests shrink them).
#[derive(Debug, Clone, Copy)]
struct Limits {
    inflated: u64,
    entries: usize,
    name_bytes: usize,
    sig_bytes: u64,
}

const LIMITS: Limits = Limits {
    inflated: MAX_DECOMPRESSED,
    entries: MAX_ENTRIES,
    name_bytes: MAX_NAME_BYTES,
    sig_bytes: MAX_SIG_BYTES,
};

/// What the local sync db says a package file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkgInfo {
    /// `%CSIZE%`: the package file's size in bytes.
    pub size: u64,
    /// `%SHA256SUM%`, `None` when the db has none (or an unreadable one).
    pub sha256: Option<[u8; 32]>,
}

#[derive(Debug)]
pub enum DbError {
    Io(std::io::Error),
    /// Which bound was hit.
    TooLarge(&'static str),
    /// Why the data is not a readable db (truncated, checksum, garbage).
    Corrupt(&'static str),
    /// A member name that would escape a directory (`..`, absolute): the db is crafted.
    Hostile(String),
    /// A compression we do not decode (yet).
    Unsupported(&'static str),
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbError::Io(e) => write!(f, "cannot read sync db: {e}"),
            DbError::TooLarge(what) => write!(f, "sync db refused: {what} exceeds its bound"),
            DbError::Corrupt(why) => write!(f, "sync db is corrupt: {why}"),
            DbError::Hostile(name) => write!(f, "sync db refused: hostile member name {name:?}"),
            DbError::Unsupported(what) => {
                write!(
                    f,
                    "sync db uses {what} compression, which flocon cannot read"
                )
            }
        }
    }
}

impl std::error::Error for DbError {}

impl From<std::io::Error> for DbError {
    fn from(e: std::io::Error) -> Self {
        DbError::Io(e)
    }
}

/// Identity of a db file as `stat` sees it. pacman installs a new db by renaming a fresh file
/// into place, so the inode (and usually size/mtime) changes; an in-place rewrite still
/// changes mtime or size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    fn of(meta: &Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// The stamp of `path` (following symlinks, as `load_db` does); `None` when it is missing.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
}

// ---------------------------------------------------------------------------------------
// One repo's index

/// One package: 52 bytes, no pointers. `size` is split so that the record needs 4-byte
/// alignment only (no padding).
#[derive(Debug, Clone, Copy)]
struct Record {
    sha256: [u8; 32],
    size_lo: u32,
    size_hi: u32,
    /// Offset of the file name in `DbIndex::names`.
    name_off: u32,
    /// Offset of the signature in the repo's `Sigs`.
    sig_off: u32,
    /// 0: no signature kept.
    sig_len: u16,
    name_len: u8,
    flags: u8,
}

const HAS_SHA: u8 = 1;
/// What one package costs in memory, besides its name.
pub const RECORD_BYTES: usize = std::mem::size_of::<Record>();

impl Record {
    fn info(&self) -> PkgInfo {
        PkgInfo {
            size: u64::from(self.size_lo) | (u64::from(self.size_hi) << 32),
            sha256: (self.flags & HAS_SHA != 0).then_some(self.sha256),
        }
    }

    fn name<'a>(&self, names: &'a [u8]) -> &'a [u8] {
        let start = self.name_off as usize;
        names
            .get(start..start + usize::from(self.name_len))
            .unwrap_or(&[])
    }
}

/// Where a repo's decoded `%PGPSIG%` signatures live.
#[derive(Debug, Default)]
enum Sigs {
    /// None kept: the db has none, no place was given, or the scratch file failed.
    #[default]
    None,
    /// In memory (`parse_db`: tests and small tools).
    Memory(Box<[u8]>),
    /// An unlinked file (O_TMPFILE) in flocon's staging dir: Arch's signatures are ~8.5 MiB,
    /// three times the memory budget of the whole index. The kernel frees it with the
    /// index.
    File(File),
}

/// One repo's packages: records sorted by file name (binary search), names in one arena.
/// Each is one allocation, freed whole when a re-read replaces the index.
#[derive(Debug, Default)]
pub struct DbIndex {
    records: Box<[Record]>,
    names: Box<[u8]>,
    sigs: Sigs,
}

impl DbIndex {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn find(&self, file: &str) -> Option<&Record> {
        let i = self
            .records
            .binary_search_by(|r| r.name(&self.names).cmp(file.as_bytes()))
            .ok()?;
        self.records.get(i)
    }

    pub fn get(&self, file: &str) -> Option<PkgInfo> {
        self.find(file).map(Record::info)
    }

    /// The detached signature the db's `%PGPSIG%` gives for `file` (binary OpenPGP, what a
    /// `<file>.sig` holds). `None` when the db has none or it was not kept.
    pub fn signature(&self, file: &str) -> Option<Vec<u8>> {
        let r = self.find(file)?;
        if r.sig_len == 0 {
            return None;
        }
        let (off, len) = (r.sig_off as usize, usize::from(r.sig_len));
        match &self.sigs {
            Sigs::None => None,
            Sigs::Memory(m) => m.get(off..off + len).map(<[u8]>::to_vec),
            Sigs::File(f) => {
                let mut out = vec![0; len];
                f.read_exact_at(&mut out, off as u64).ok()?;
                Some(out)
            }
        }
    }

    /// Every entry, in file name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, PkgInfo)> {
        self.records.iter().filter_map(|r| {
            let name = std::str::from_utf8(r.name(&self.names)).ok()?;
            Some((name, r.info()))
        })
    }

    /// Heap bytes held in memory (signatures on disk not counted).
    pub fn heap_bytes(&self) -> usize {
        let sigs = match &self.sigs {
            Sigs::Memory(m) => m.len(),
            _ => 0,
        };
        self.records.len() * RECORD_BYTES + self.names.len() + sigs
    }
}

/// Where the parser puts signatures while it builds an index.
enum SigSink {
    Drop,
    Memory(Vec<u8>),
    File(BufWriter<File>),
    /// A write failed: nothing already written is trusted.
    Failed,
}

/// Collects records while the tar streams by; `finish` sorts them into a `DbIndex`.
struct Builder {
    limits: Limits,
    records: Vec<Record>,
    names: Vec<u8>,
    sigs: SigSink,
    sig_bytes: u64,
    /// Scratch for one decoded signature.
    sig_buf: Vec<u8>,
}

impl Builder {
    fn new(limits: Limits, sigs: SigSink) -> Builder {
        Builder {
            limits,
            records: Vec::new(),
            names: Vec::new(),
            sigs,
            sig_bytes: 0,
            sig_buf: Vec::new(),
        }
    }

    fn add(&mut self, d: &Desc<'_>) -> Result<(), DbError> {
        if self.records.len() >= self.limits.entries {
            return Err(DbError::TooLarge("entries"));
        }
        if self.names.len() + d.file.len() > self.limits.name_bytes {
            return Err(DbError::TooLarge("file names"));
        }
        let (sig_off, sig_len) = d.sig.map_or((0, 0), |b64| self.keep_sig(b64));
        let name_off = self.names.len() as u32;
        self.names.extend_from_slice(d.file.as_bytes());
        self.records.push(Record {
            sha256: d.sha256.unwrap_or([0; 32]),
            size_lo: d.size as u32,
            size_hi: (d.size >> 32) as u32,
            name_off,
            sig_off,
            sig_len,
            name_len: d.file.len() as u8,
            flags: if d.sha256.is_some() { HAS_SHA } else { 0 },
        });
        Ok(())
    }

    /// Decodes and stores one signature; `(0, 0)` when it is not kept.
    fn keep_sig(&mut self, b64: &[u8]) -> (u32, u16) {
        if matches!(self.sigs, SigSink::Drop | SigSink::Failed)
            || !base64_decode(b64, &mut self.sig_buf)
            || self.sig_buf.is_empty()
            || self.sig_buf.len() > MAX_SIG_LEN
            || self.sig_bytes + self.sig_buf.len() as u64 > self.limits.sig_bytes
        {
            return (0, 0);
        }
        let off = self.sig_bytes as u32;
        let ok = match &mut self.sigs {
            SigSink::Memory(v) => {
                v.extend_from_slice(&self.sig_buf);
                true
            }
            SigSink::File(w) => w.write_all(&self.sig_buf).is_ok(),
            SigSink::Drop | SigSink::Failed => false,
        };
        if !ok {
            self.sigs = SigSink::Failed;
            return (0, 0);
        }
        self.sig_bytes += self.sig_buf.len() as u64;
        (off, self.sig_buf.len() as u16)
    }

    fn finish(self) -> DbIndex {
        let Builder {
            mut records,
            names,
            sigs,
            ..
        } = self;
        let sigs = match sigs {
            SigSink::Memory(v) => Sigs::Memory(v.into_boxed_slice()),
            SigSink::File(w) => match w.into_inner() {
                Ok(f) => Sigs::File(f),
                Err(_) => Sigs::None,
            },
            SigSink::Drop | SigSink::Failed => Sigs::None,
        };
        if matches!(sigs, Sigs::None) {
            for r in &mut records {
                r.sig_len = 0;
            }
        }
        // A name listed twice keeps its last entry (the later member wins, as a map would):
        // equal names sort latest first, and dedup keeps the first of a run.
        records.sort_unstable_by(|a, b| {
            a.name(&names)
                .cmp(b.name(&names))
                .then(b.name_off.cmp(&a.name_off))
        });
        records.dedup_by(|later, kept| later.name(&names) == kept.name(&names));
        DbIndex {
            records: records.into_boxed_slice(),
            names: names.into_boxed_slice(),
            sigs,
        }
    }
}

/// Standard base64 with padding, no whitespace; `false` on anything else.
fn base64_decode(s: &[u8], out: &mut Vec<u8>) -> bool {
    /// Each byte's 6-bit value, 0xff for a byte outside the alphabet.
    const VAL: [u8; 256] = {
        let mut t = [0xffu8; 256];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut i = 0;
        while i < 64 {
            t[alphabet[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    out.clear();
    if !s.len().is_multiple_of(4) || s.len() / 4 * 3 > MAX_SIG_LEN + 2 {
        return false;
    }
    let quads = s.len() / 4;
    for (i, q) in s.chunks_exact(4).enumerate() {
        let pad = if i + 1 == quads {
            q.iter().rev().take_while(|&&c| c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return false;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            let v = VAL[usize::from(c)];
            if v == 0xff {
                return false;
            }
            n = (n << 6) | u32::from(v);
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    true
}

// ---------------------------------------------------------------------------------------
// Reading a db

/// Reads and parses one db file, signatures kept in memory (tests and small tools).
pub fn load_db(path: &Path) -> Result<DbIndex, DbError> {
    let file = open_db(path)?;
    parse_stream(file, LIMITS, SigSink::Memory(Vec::new()))
}

/// Like `load_db`, plus the stamp of the very file that was read (from the open descriptor),
/// so a rename racing with the read is seen as a change on the next `changed()`. Signatures
/// go to an unlinked file in `sig_dir` (the daemon's staging dir); when that cannot be
/// created they are not kept.
pub fn load_db_stamped(path: &Path, sig_dir: &Path) -> Result<(DbIndex, FileStamp), DbError> {
    let file = open_db(path)?;
    let meta = file.metadata()?;
    let sigs = match scratch_file(sig_dir) {
        Ok(f) => SigSink::File(BufWriter::new(f)),
        Err(e) => {
            warn!(
                "{}: {e}; signatures of {} are not kept",
                sig_dir.display(),
                path.display()
            );
            SigSink::Drop
        }
    };
    Ok((parse_stream(file, LIMITS, sigs)?, FileStamp::of(&meta)))
}

/// A file with no name: it disappears with its last descriptor, even after a crash.
fn scratch_file(dir: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .mode(0o600)
        .open(dir)
}

fn open_db(path: &Path) -> Result<File, DbError> {
    // O_NONBLOCK: a FIFO planted in the sync dir must not hang the reader in open().
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(DbError::Corrupt("not a regular file"));
    }
    if meta.len() > MAX_DB_FILE {
        return Err(DbError::TooLarge("db file"));
    }
    Ok(file)
}

/// Parses a db held in memory (gzip'd or plain tar), signatures kept in memory.
pub fn parse_db(bytes: &[u8]) -> Result<DbIndex, DbError> {
    parse_stream(bytes, LIMITS, SigSink::Memory(Vec::new()))
}

fn parse_stream(r: impl Read, limits: Limits, sigs: SigSink) -> Result<DbIndex, DbError> {
    let mut src = Source::new(r);
    let head = src.fill_at_least(BLOCK)?;
    if head.is_empty() {
        // An interrupted download, not an empty repo (repo-add writes an empty tar).
        return Err(DbError::Corrupt("empty file"));
    }
    let mut out = Builder::new(limits, sigs);
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut input = GzipInput::new(src, limits.inflated)?;
        parse_tar(&mut input, &mut out)?;
        // Inflate the rest (end-of-archive padding) so the CRC and length get checked.
        input.drain()?;
        return Ok(out.finish());
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(DbError::Unsupported("zstd"));
    }
    if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Err(DbError::Unsupported("xz"));
    }
    if head.starts_with(b"BZh") {
        return Err(DbError::Unsupported("bzip2"));
    }
    let looks_like_tar = head
        .get(..BLOCK)
        .is_some_and(|b| b.iter().all(|&x| x == 0) || checksum_ok(b));
    if !looks_like_tar {
        return Err(DbError::Corrupt("neither gzip nor tar"));
    }
    parse_tar(&mut src, &mut out)?;
    Ok(out.finish())
}

// ---------------------------------------------------------------------------------------
// Byte sources for the tar reader: the file itself, or a streaming gzip inflater over it.

/// A minimal BufRead: `fill` returns the next available bytes (empty at the end).
trait Input {
    fn fill(&mut self) -> Result<&[u8], DbError>;
    fn consume(&mut self, n: usize);
}

/// The db's bytes, read INPUT_CHUNK at a time; more than MAX_DB_FILE of them is refused (the
/// file may grow after the size check).
struct Source<R> {
    r: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    total: u64,
    eof: bool,
}

impl<R: Read> Source<R> {
    fn new(r: R) -> Self {
        Source {
            r,
            buf: vec![0; INPUT_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            total: 0,
            eof: false,
        }
    }

    /// At least `n` (<= INPUT_CHUNK) buffered bytes, or fewer at the end of the file.
    fn fill_at_least(&mut self, n: usize) -> Result<&[u8], DbError> {
        if self.end - self.start < n && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < n && !self.eof {
            let got = match self.r.read(&mut self.buf[self.end..]) {
                Ok(g) => g,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DbError::Io(e)),
            };
            if got == 0 {
                self.eof = true;
            }
            self.end += got;
            self.total += got as u64;
            if self.total > MAX_DB_FILE {
                return Err(DbError::TooLarge("db file"));
            }
        }
        Ok(&self.buf[self.start..self.end])
    }

    /// Exactly `out.len()` bytes; `truncated` when the file ends first.
    fn read_exact(&mut self, out: &mut [u8], truncated: &'static str) -> Result<(), DbError> {
        let mut got = 0;
        while got < out.len() {
            let avail = self.fill()?;
            if avail.is_empty() {
                return Err(DbError::Corrupt(truncated));
            }
            let n = avail.len().min(out.len() - got);
            out[got..got + n].copy_from_slice(&avail[..n]);
            self.consume(n);
            got += n;
        }
        Ok(())
    }
}

impl<R: Read> Input for Source<R> {
    fn fill(&mut self) -> Result<&[u8], DbError> {
        self.fill_at_least(1)
    }
    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
    }
}

const GZ_FHCRC: u8 = 0x02;
const GZ_FEXTRA: u8 = 0x04;
const GZ_FNAME: u8 = 0x08;
const GZ_FCOMMENT: u8 = 0x10;
const GZ_RESERVED: u8 = 0xe0;

/// Inflates one or more concatenated gzip members into a fixed window, checking each
/// member's CRC32 and ISIZE; the total output is capped, so a bomb costs no memory.
struct GzipInput<R> {
    src: Source<R>,
    state: Box<InflateState>,
    out: Box<[u8]>,
    start: usize,
    end: usize,
    crc: u32,
    member_len: u32,
    total: u64,
    max_total: u64,
    in_member: bool,
    done: bool,
}

impl<R: Read> GzipInput<R> {
    fn new(mut src: Source<R>, max_total: u64) -> Result<Self, DbError> {
        gzip_header(&mut src)?;
        Ok(GzipInput {
            src,
            state: InflateState::new_boxed(DataFormat::Raw),
            out: vec![0; INFLATE_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            crc: 0,
            member_len: 0,
            total: 0,
            max_total,
            in_member: true,
            done: false,
        })
    }

    /// Produces at least one byte into `out`, or sets `done`.
    fn refill(&mut self) -> Result<(), DbError> {
        self.start = 0;
        self.end = 0;
        while !self.done {
            if !self.in_member {
                if !self.src.fill_at_least(2)?.starts_with(&[0x1f, 0x8b]) {
                    // Like gzip(1), trailing non-gzip bytes (tape padding) are ignored.
                    self.done = true;
                    break;
                }
                gzip_header(&mut self.src)?;
                self.state.reset(DataFormat::Raw);
                self.crc = 0;
                self.member_len = 0;
                self.in_member = true;
            }
            let input = self.src.fill()?;
            let at_eof = input.is_empty();
            let res = inflate(&mut self.state, input, &mut self.out, MZFlush::None);
            self.src.consume(res.bytes_consumed);
            let n = res.bytes_written.min(self.out.len());
            self.total = self.total.saturating_add(n as u64);
            if self.total > self.max_total {
                return Err(DbError::TooLarge("decompressed db"));
            }
            self.crc = crc32_update(self.crc, &self.out[..n]);
            self.member_len = self.member_len.wrapping_add(n as u32);
            self.end = n;
            match res.status {
                Ok(MZStatus::StreamEnd) => {
                    self.check_trailer()?;
                    self.in_member = false;
                }
                Ok(_) if n == 0 && res.bytes_consumed == 0 && at_eof => {
                    return Err(DbError::Corrupt("truncated gzip stream"));
                }
                Ok(_) => {}
                Err(MZError::Buf) => return Err(DbError::Corrupt("truncated gzip stream")),
                Err(_) => return Err(DbError::Corrupt("invalid deflate data")),
            }
            if n > 0 {
                break;
            }
        }
        Ok(())
    }

    fn check_trailer(&mut self) -> Result<(), DbError> {
        let mut t = [0u8; 8];
        self.src.read_exact(&mut t, "truncated gzip trailer")?;
        if le32(&t[..4]) != self.crc {
            return Err(DbError::Corrupt("gzip CRC mismatch"));
        }
        if le32(&t[4..]) != self.member_len {
            return Err(DbError::Corrupt("gzip length mismatch"));
        }
        Ok(())
    }

    fn drain(&mut self) -> Result<(), DbError> {
        while !self.done {
            self.refill()?;
        }
        Ok(())
    }
}

impl<R: Read> Input for GzipInput<R> {
    fn fill(&mut self) -> Result<&[u8], DbError> {
        if self.start >= self.end && !self.done {
            self.refill()?;
        }
        Ok(self.out.get(self.start..self.end).unwrap_or(&[]))
    }
    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.end);
    }
}

fn le32(b: &[u8]) -> u32 {
    b.iter().rev().fold(0, |acc, &x| (acc << 8) | u32::from(x))
}

/// Reads the header of the gzip member that starts here (RFC 1952), up to its deflate data.
fn gzip_header<R: Read>(src: &mut Source<R>) -> Result<(), DbError> {
    const TRUNC: &str = "truncated gzip header";
    let mut crc = 0;
    let mut take = |src: &mut Source<R>, out: &mut [u8]| -> Result<(), DbError> {
        src.read_exact(out, TRUNC)?;
        crc = crc32_update(crc, out);
        Ok(())
    };
    let mut h = [0u8; 10];
    take(src, &mut h)?;
    if h[..2] != [0x1f, 0x8b] {
        return Err(DbError::Corrupt("bad gzip magic"));
    }
    if h[2] != 8 {
        return Err(DbError::Corrupt("gzip method is not deflate"));
    }
    let flags = h[3];
    if flags & GZ_RESERVED != 0 {
        return Err(DbError::Corrupt("reserved gzip flags set"));
    }
    let mut b = [0u8; 2];
    if flags & GZ_FEXTRA != 0 {
        take(src, &mut b)?;
        let mut skip = usize::from(b[0]) | (usize::from(b[1]) << 8);
        let mut chunk = [0u8; 256];
        while skip > 0 {
            let n = skip.min(chunk.len());
            take(src, &mut chunk[..n])?;
            skip -= n;
        }
    }
    for flag in [GZ_FNAME, GZ_FCOMMENT] {
        if flags & flag != 0 {
            loop {
                take(src, &mut b[..1])?;
                if b[0] == 0 {
                    break;
                }
            }
        }
    }
    if flags & GZ_FHCRC != 0 {
        let want = crc & 0xffff;
        src.read_exact(&mut b, TRUNC)?;
        if u32::from(b[0]) | (u32::from(b[1]) << 8) != want {
            return Err(DbError::Corrupt("gzip header CRC mismatch"));
        }
    }
    Ok(())
}

/// CRC-32 (IEEE, reflected, as gzip uses), slicing by 8 bytes: every inflated byte of a db
/// goes through it (a quarter of the parse time with one table, bytewise).
fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let lo = c ^ u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][usize::from(b[4])]
            ^ t[2][usize::from(b[5])]
            ^ t[1][usize::from(b[6])]
            ^ t[0][usize::from(b[7])];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// `[0]` is the classic bytewise table; `[k][i]` is the CRC of byte `i` followed by k zeros.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            i += 1;
        }
        k += 1;
    }
    t
};

// ---------------------------------------------------------------------------------------
// tar

/// Fills `out` completely; `Ok(false)` when the data ended before its first byte.
fn read_full(input: &mut impl Input, out: &mut [u8]) -> Result<bool, DbError> {
    let mut got = 0;
    while got < out.len() {
        let avail = input.fill()?;
        if avail.is_empty() {
            return if got == 0 {
                Ok(false)
            } else {
                Err(DbError::Corrupt("truncated tar"))
            };
        }
        let n = avail.len().min(out.len() - got);
        out[got..got + n].copy_from_slice(&avail[..n]);
        input.consume(n);
        got += n;
    }
    Ok(true)
}

fn read_exact(input: &mut impl Input, out: &mut [u8]) -> Result<(), DbError> {
    if out.is_empty() || read_full(input, out)? {
        Ok(())
    } else {
        Err(DbError::Corrupt("truncated tar"))
    }
}

fn skip(input: &mut impl Input, mut n: u64) -> Result<(), DbError> {
    while n > 0 {
        let avail = input.fill()?.len();
        if avail == 0 {
            return Err(DbError::Corrupt("truncated tar"));
        }
        let k = usize::try_from(n).map_or(avail, |n| n.min(avail));
        input.consume(k);
        n -= k as u64;
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Reads a metadata member (pax/GNU) whole, with its padding.
fn read_meta(input: &mut impl Input, size: u64, buf: &mut Vec<u8>) -> Result<(), DbError> {
    if size > MAX_META {
        return Err(DbError::TooLarge("tar extended header"));
    }
    buf.clear();
    buf.resize(size as usize, 0);
    read_exact(input, buf)?;
    skip(input, padding(size))
}

fn parse_tar(input: &mut impl Input, out: &mut Builder) -> Result<(), DbError> {
    let mut hdr = [0u8; BLOCK];
    let mut buf = Vec::new();
    // Overrides for the next real header, from a pax `x` header or a GNU `L` header.
    let mut pax_path: Option<Vec<u8>> = None;
    let mut pax_size: Option<u64> = None;
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        if !read_full(input, &mut hdr)? {
            // bsdtar always writes the end marker: without it the file was cut short.
            return Err(DbError::Corrupt("tar ends without end-of-archive marker"));
        }
        if hdr.iter().all(|&b| b == 0) {
            return Ok(());
        }
        if !checksum_ok(&hdr) {
            return Err(DbError::Corrupt("tar header checksum mismatch"));
        }
        let typeflag = hdr[156];
        let hdr_size = parse_number(&hdr[124..136]).ok_or(DbError::Corrupt("tar size field"))?;
        match typeflag {
            b'x' => {
                read_meta(input, hdr_size, &mut buf)?;
                parse_pax(&buf, &mut pax_path, &mut pax_size)?;
                continue;
            }
            b'g' => {
                // Global attributes would apply to every later member; nothing we read uses
                // them, but the records must still be well-formed.
                read_meta(input, hdr_size, &mut buf)?;
                parse_pax(&buf, &mut None, &mut None)?;
                continue;
            }
            b'L' => {
                if hdr_size > MAX_NAME_LEN as u64 + 1 {
                    return Err(DbError::TooLarge("member name"));
                }
                read_meta(input, hdr_size, &mut buf)?;
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                long_name = Some(buf[..end].to_vec());
                continue;
            }
            b'K' => {
                // GNU long link target: we never create links.
                read_meta(input, hdr_size, &mut buf)?;
                continue;
            }
            _ => {}
        }
        let size = pax_size.take().unwrap_or(hdr_size);
        let (from_pax, from_gnu) = (pax_path.take(), long_name.take());
        let ustar;
        let name: &[u8] = match (&from_pax, &from_gnu) {
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => {
                ustar = ustar_name(&hdr, &mut buf);
                &buf[..ustar]
            }
        };
        check_name(name)?;
        let padded = size
            .checked_add(padding(size))
            .ok_or(DbError::Corrupt("tar size field"))?;
        let regular = matches!(typeflag, b'0' | b'\0' | b'7');
        let last = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if regular && last == b"desc" && size <= MAX_DESC {
            buf.clear();
            buf.resize(size as usize, 0);
            read_exact(input, &mut buf)?;
            skip(input, padded - size)?;
            if let Some(d) = parse_desc(&buf) {
                out.add(&d)?;
            }
        } else {
            skip(input, padded)?;
        }
    }
}

fn checksum_ok(hdr: &[u8]) -> bool {
    let Some(want) = hdr.get(148..156).and_then(parse_octal) else {
        return false;
    };
    let Some(hdr) = hdr.get(..BLOCK) else {
        return false;
    };
    let field = 8 * u64::from(b' ');
    let unsigned: u64 = hdr.iter().map(|&b| u64::from(b)).sum::<u64>()
        - hdr[148..156].iter().map(|&b| u64::from(b)).sum::<u64>()
        + field;
    if want == unsigned {
        return true;
    }
    let signed: i64 = hdr.iter().map(|&b| i64::from(b as i8)).sum::<i64>()
        - hdr[148..156]
            .iter()
            .map(|&b| i64::from(b as i8))
            .sum::<i64>()
        + field as i64;
    i64::try_from(want).is_ok_and(|w| w == signed)
}

/// Octal (leading spaces, then digits, then spaces/NULs) or GNU base-256 (high bit set).
fn parse_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(&b) if b & 0x80 != 0 => {
            if b & 0x40 != 0 {
                return None; // negative
            }
            let mut v = u64::from(b & 0x3f);
            for &x in &field[1..] {
                if v > u64::MAX >> 8 {
                    return None;
                }
                v = (v << 8) | u64::from(x);
            }
            Some(v)
        }
        _ => parse_octal(field),
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let digits = field[start..]
        .iter()
        .position(|b| !(b'0'..=b'7').contains(b))
        .unwrap_or(field.len() - start);
    if field[start + digits..].iter().any(|&b| b != b' ' && b != 0) {
        return None;
    }
    field[start..start + digits].iter().try_fold(0u64, |v, &d| {
        v.checked_mul(8)?.checked_add(u64::from(d - b'0'))
    })
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// name, prefixed by the ustar prefix field (POSIX magic only: GNU uses that area for times),
/// written to `buf`; returns its length.
fn ustar_name(hdr: &[u8; BLOCK], buf: &mut Vec<u8>) -> usize {
    let name = cstr(&hdr[..100]);
    let prefix = cstr(&hdr[345..500]);
    buf.clear();
    if &hdr[257..263] == b"ustar\0" && !prefix.is_empty() {
        buf.extend_from_slice(prefix);
        buf.push(b'/');
    }
    buf.extend_from_slice(name);
    buf.len()
}
/// A name that could escape the extraction directory means the db was crafted.
fn check_name(name: &[u8]) -> Result<(), DbError> {
    if name.len() > MAX_NAME_LEN {
        return Err(DbError::TooLarge("member name"));
    }
    if name.first() == Some(&b'/') || name.split(|&b| b == b'/').any(|c| c == b"..") {
        let shown = String::from_utf8_lossy(name);
        let shown: String = shown.chars().take(MAX_QUOTED_NAME).collect();
        return Err(DbError::Hostile(shown));
    }
    Ok(())
}

/// pax records: `<len> <key>=<value>\n`, where len counts the whole record.
fn parse_pax(
    mut data: &[u8],
    path: &mut Option<Vec<u8>>,
    size: &mut Option<u64>,
) -> Result<(), DbError> {
    const BAD: DbError = DbError::Corrupt("malformed pax record");
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').ok_or(BAD)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or(BAD)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(BAD);
        }
        let record = &data[sp + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or(BAD)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        match key {
            b"path" => *path = Some(value.to_vec()),
            b"size" => *size = Some(parse_decimal(value).ok_or(BAD)?),
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_CSIZE_DIGITS || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// desc

/// What one desc file says; borrowed from its bytes.
struct Desc<'a> {
    file: &'a str,
    size: u64,
    sha256: Option<[u8; 32]>,
    /// `%PGPSIG%`, still base64.
    sig: Option<&'a [u8]>,
}

/// The entry a desc file describes; `None` when it has no usable %FILENAME% or %CSIZE%.
fn parse_desc(data: &[u8]) -> Option<Desc<'_>> {
    let (mut filename, mut csize, mut sha, mut sig) = (None, None, None, None);
    let mut key: Option<&[u8]> = None;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            key = None;
            continue;
        }
        let Some(k) = key else {
            if line.len() > 2 && line.starts_with(b"%") && line.ends_with(b"%") {
                key = Some(line);
            }
            continue;
        };
        // Only a block's first value line counts; later blocks with the same key do not.
        match k {
            b"%FILENAME%" if filename.is_none() => filename = Some(line),
            b"%CSIZE%" if csize.is_none() => csize = Some(line),
            b"%SHA256SUM%" if sha.is_none() => sha = Some(line),
            b"%PGPSIG%" if sig.is_none() => sig = Some(line),
            _ => {}
        }
        key = Some(b"");
    }
    let file = std::str::from_utf8(filename?).ok()?;
    if !names::is_file_name(file.as_bytes()) {
        return None;
    }
    let size = parse_decimal(csize?)?;
    let sha256 = sha
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(parse_sha256_hex);
    Some(Desc {
        file,
        size,
        sha256,
        sig,
    })
}

pub fn sha256_hex(d: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for &b in d {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Exactly 64 hex digits (either case), else `None`.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// The index of all repos

struct Repo {
    name: String,
    /// `None`: the db was missing when last looked at.
    stamp: Option<FileStamp>,
    map: DbIndex,
}

/// All repos' indexes. Re-reading is done by the caller (possibly on a helper thread):
/// `changed()` is a cheap stat of each `<repo>.db`.
#[derive(Default)]
pub struct SyncIndex {
    /// In pacman.conf order once `retain_repos` has been called: `lookup_any` takes the first.
    repos: Vec<Repo>,
}

impl SyncIndex {
    pub fn new() -> Self {
        SyncIndex::default()
    }

    fn get(&self, repo: &str) -> Option<&Repo> {
        self.repos.iter().find(|r| r.name == repo)
    }

    fn get_or_add(&mut self, repo: &str) -> &mut Repo {
        let i = match self.repos.iter().position(|r| r.name == repo) {
            Some(i) => i,
            None => {
                self.repos.push(Repo {
                    name: repo.to_owned(),
                    stamp: None,
                    map: DbIndex::default(),
                });
                self.repos.len() - 1
            }
        };
        &mut self.repos[i]
    }

    /// Repos whose `<repo>.db` stamp differs from what was installed (never-seen repos, new
    /// files, and newly missing ones with stamp `None`). A name that is not a plain file name
    /// is never looked up.
    pub fn changed(
        &self,
        sync_dir: &Path,
        repos: &[String],
    ) -> Vec<(String, PathBuf, Option<FileStamp>)> {
        repos
            .iter()
            .filter(|r| !r.is_empty() && !r.starts_with('.') && !r.contains('/'))
            .filter_map(|r| {
                let path = sync_dir.join(format!("{r}.db"));
                let now = stamp(&path);
                match self.get(r) {
                    Some(known) if known.stamp == now => None,
                    _ => Some((r.clone(), path, now)),
                }
            })
            .collect()
    }

    /// Replaces that repo's index. The old one's allocations are freed whole, and the
    /// allocator is asked to give free pages back (glibc keeps them otherwise).
    pub fn install(&mut self, repo: &str, stamp: Option<FileStamp>, map: DbIndex) {
        let r = self.get_or_add(repo);
        r.stamp = stamp;
        r.map = map;
        crate::sys::release_free_memory();
    }

    /// Records the stamp after a failed parse so it is not retried every scan; the old map
    /// (if any) stays.
    pub fn keep_old(&mut self, repo: &str, stamp: Option<FileStamp>) {
        self.get_or_add(repo).stamp = stamp;
    }

    /// Drops repos no longer configured and puts the rest in `repos` order (pacman's order,
    /// which decides `lookup_any` when two repos list the same file name).
    pub fn retain_repos(&mut self, repos: &[String]) {
        self.repos.retain(|r| repos.contains(&r.name));
        self.repos
            .sort_by_key(|r| repos.iter().position(|n| *n == r.name));
    }

    pub fn lookup(&self, repo: &str, file: &str) -> Option<PkgInfo> {
        self.get(repo)?.map.get(file)
    }

    pub fn lookup_any(&self, file: &str) -> Option<(String, PkgInfo)> {
        self.repos
            .iter()
            .find_map(|r| r.map.get(file).map(|i| (r.name.clone(), i)))
    }

    /// The detached signature (`<file>.sig`'s bytes) that repo's db gives for `file`.
    pub fn signature(&self, repo: &str, file: &str) -> Option<Vec<u8>> {
        self.get(repo)?.map.signature(file)
    }

    /// The signature from the repo `lookup_any` would pick for `file`.
    pub fn signature_any(&self, file: &str) -> Option<Vec<u8>> {
        let r = self.repos.iter().find(|r| r.map.get(file).is_some())?;
        r.map.signature(file)
    }

    /// Heap bytes of all repos' indexes (signatures, on disk, not counted).
    pub fn heap_bytes(&self) -> usize {
        self.repos.iter().map(|r| r.map.heap_bytes()).sum()
    }

    /// Total entries over all repos.
    pub fn len(&self) -> usize {
        self.repos.iter().map(|r| r.map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(repo, entries)` for `flocon status`.
    pub fn repos(&self) -> impl Iterator<Item = (&str, usize)> {
        self.repos.iter().map(|r| (r.name.as_str(), r.map.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The index as a map, to compare whole results.
    type DbMap = std::collections::HashMap<String, PkgInfo>;

    fn to_map(ix: DbIndex) -> DbMap {
        ix.iter().map(|(n, i)| (n.to_string(), i)).collect()
    }

    fn parse_db(bytes: &[u8]) -> Result<DbMap, DbError> {
        super::parse_db(bytes).map(to_map)
    }

    fn parse_db_bounded(bytes: &[u8], max_inflated: u64) -> Result<DbMap, DbError> {
        let limits = Limits {
            inflated: max_inflated,
            ..LIMITS
        };
        parse_stream(bytes, limits, SigSink::Memory(Vec::new())).map(to_map)
    }

    fn load_db(path: &Path) -> Result<DbMap, DbError> {
        super::load_db(path).map(to_map)
    }

    // --- a tiny ustar writer and gzip framer, just enough to build test dbs ---

    fn header(name: &[u8], size: u64, typeflag: u8, gnu: bool) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"14500000000\0");
        h[156] = typeflag;
        if gnu {
            h[257..265].copy_from_slice(b"ustar  \0");
        } else {
            h[257..265].copy_from_slice(b"ustar\x0000");
        }
        set_checksum(&mut h);
        h
    }

    fn set_checksum(h: &mut [u8; BLOCK]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn member(out: &mut Vec<u8>, name: &str, typeflag: u8, data: &[u8]) {
        out.extend_from_slice(&header(name.as_bytes(), data.len() as u64, typeflag, false));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(BLOCK), 0);
    }

    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    /// Two zero blocks, then padding to bsdtar's 10 KiB record.
    fn finish(mut tar: Vec<u8>) -> Vec<u8> {
        tar.resize(tar.len() + 2 * BLOCK, 0);
        tar.resize(tar.len().next_multiple_of(10240), 0);
        tar
    }

    fn gzip_with(data: &[u8], level: u8, flags: u8, extras: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 3];
        out.extend_from_slice(extras);
        if flags & GZ_FHCRC != 0 {
            let c = crc32_update(0, &out) & 0xffff;
            out.extend_from_slice(&(c as u16).to_le_bytes());
        }
        out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, level));
        out.extend_from_slice(&crc32_update(0, data).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        gzip_with(data, 6, 0, &[])
    }

    fn desc(file: &str, csize: Option<&str>, sha: Option<&str>) -> Vec<u8> {
        let mut s = format!("%FILENAME%\n{file}\n\n%NAME%\nx\n\n%DESC%\nsome text\n\n");
        if let Some(c) = csize {
            s += &format!("%CSIZE%\n{c}\n\n%ISIZE%\n999\n\n");
        }
        if let Some(h) = sha {
            s += &format!("%MD5SUM%\n0123\n\n%SHA256SUM%\n{h}\n\n");
        }
        s += "%DEPENDS%\nglibc\nfoo\n\n";
        s.into_bytes()
    }

    fn sha(n: u8) -> String {
        sha256_hex(&[n; 32])
    }

    /// A normal three-package db, as an uncompressed tar.
    fn three() -> Vec<u8> {
        finish(three_members())
    }

    /// `three()` without the end-of-archive marker and padding.
    fn three_members() -> Vec<u8> {
        let mut t = Vec::new();
        for (i, (name, size)) in [("a-1.0-1", 100), ("b-2.0-3", 2000), ("c-0.1-1", 5)]
            .iter()
            .enumerate()
        {
            member(&mut t, &format!("{name}/"), b'5', b"");
            let file = format!("{name}-x86_64.pkg.tar.zst");
            let d = desc(&file, Some(&size.to_string()), Some(&sha(i as u8)));
            member(&mut t, &format!("{name}/desc"), b'0', &d);
        }
        t
    }

    fn three_expected() -> DbMap {
        let mut m = DbMap::new();
        for (i, (name, size)) in [("a-1.0-1", 100), ("b-2.0-3", 2000), ("c-0.1-1", 5)]
            .iter()
            .enumerate()
        {
            let info = PkgInfo {
                size: *size,
                sha256: Some([i as u8; 32]),
            };
            m.insert(format!("{name}-x86_64.pkg.tar.zst"), info);
        }
        m
    }

    use crate::xorshift::XorShift as Rng;

    fn corrupt(r: Result<DbMap, DbError>) -> bool {
        matches!(r, Err(DbError::Corrupt(_)))
    }

    // --- parsing ---

    #[test]
    fn gzip_db_with_three_entries() {
        assert_eq!(parse_db(&gzip(&three())).unwrap(), three_expected());
    }

    #[test]
    fn plain_tar_db() {
        assert_eq!(parse_db(&three()).unwrap(), three_expected());
        // A header whose checksum does not match its bytes.
        let mut tar = three();
        tar[BLOCK * 3 + 101] ^= 1;
        assert!(matches!(
            parse_db(&tar),
            Err(DbError::Corrupt("tar header checksum mismatch"))
        ));
    }

    #[test]
    fn gzip_header_fields_and_concatenated_members() {
        let tar = three();
        // FEXTRA + FNAME + FCOMMENT + FHCRC all present.
        let extras = [&[4u8, 0][..], b"abcd", b"core.db\0", b"a comment\0"].concat();
        let flags = GZ_FEXTRA | GZ_FNAME | GZ_FCOMMENT | GZ_FHCRC;
        let gz = gzip_with(&tar, 9, flags, &extras);
        assert_eq!(parse_db(&gz).unwrap(), three_expected());
        // A wrong header CRC is noticed.
        let mut bad = gz.clone();
        bad[12] ^= 1;
        assert!(corrupt(parse_db(&bad)));
        // gzip members may be concatenated; the split need not fall on a tar block.
        let mut cat = gzip_with(&tar[..1000], 1, 0, &[]);
        cat.extend(gzip_with(&tar[1000..], 0, 0, &[]));
        assert_eq!(parse_db(&cat).unwrap(), three_expected());
        // Trailing junk after the last member is ignored, as gzip(1) does.
        let mut junk = gzip(&tar);
        junk.extend_from_slice(&[0; 100]);
        assert_eq!(parse_db(&junk).unwrap(), three_expected());
    }

    #[test]
    fn gzip_crc_and_length_are_checked() {
        let tar = three();
        let mut gz = gzip(&tar);
        let n = gz.len();
        gz[n - 8] ^= 0x40;
        assert!(matches!(
            parse_db(&gz),
            Err(DbError::Corrupt("gzip CRC mismatch"))
        ));
        gz[n - 8] ^= 0x40;
        gz[n - 4] ^= 1;
        assert!(matches!(
            parse_db(&gz),
            Err(DbError::Corrupt("gzip length mismatch"))
        ));
    }

    #[test]
    fn pax_path_and_size_override_the_ustar_fields() {
        let mut t = Vec::new();
        let long_dir = format!("{}-1.0-1", "p".repeat(150));
        let d = desc("long-1.0-1-any.pkg.tar.zst", Some("42"), Some(&sha(7)));
        let pax = pax_record("path", &format!("{long_dir}/desc")) + &pax_record("mtime", "1.5");
        member(&mut t, "PaxHeader/x", b'x', pax.as_bytes());
        member(&mut t, "truncated-name", b'0', &d);
        // A pax size larger than the ustar field: the reader must skip by the pax size.
        let pax = pax_record("size", "1024");
        member(&mut t, "PaxHeader/y", b'x', pax.as_bytes());
        t.extend_from_slice(&header(b"z/files", 0, b'0', false));
        t.extend_from_slice(&[b'q'; 1024]);
        member(&mut t, "g", b'g', pax_record("comment", "hi").as_bytes());
        let d2 = desc("after-1-1-any.pkg.tar.zst", Some("1"), None);
        member(&mut t, "after-1-1/desc", b'0', &d2);
        let m = parse_db(&gzip(&finish(t))).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["long-1.0-1-any.pkg.tar.zst"].size, 42);
        assert_eq!(m["long-1.0-1-any.pkg.tar.zst"].sha256, Some([7; 32]));
        assert_eq!(m["after-1-1-any.pkg.tar.zst"].sha256, None);
    }

    #[test]
    fn malformed_pax_is_corrupt() {
        for bad in [
            "12 path=x\n",
            "5 p\n",
            "x path=a\n",
            "9 pathxx\n",
            "99 path=a\n",
        ] {
            let mut t = Vec::new();
            member(&mut t, "PaxHeader/x", b'x', bad.as_bytes());
            member(
                &mut t,
                "a/desc",
                b'0',
                &desc("a-1-1-any.pkg.tar.zst", Some("1"), None),
            );
            assert!(corrupt(parse_db(&finish(t))), "{bad:?}");
        }
    }

    #[test]
    fn gnu_long_name() {
        let mut t = Vec::new();
        let long = format!("{}-1.0-1/desc", "g".repeat(200));
        let mut data = long.clone().into_bytes();
        data.push(0);
        t.extend_from_slice(&header(b"././@LongLink", data.len() as u64, b'L', true));
        t.extend_from_slice(&data);
        t.resize(t.len().next_multiple_of(BLOCK), 0);
        let d = desc("g-1.0-1-any.pkg.tar.xz", Some("9"), Some(&sha(1)));
        t.extend_from_slice(&header(&long.as_bytes()[..100], d.len() as u64, b'0', true));
        t.extend_from_slice(&d);
        t.resize(t.len().next_multiple_of(BLOCK), 0);
        let m = parse_db(&gzip(&finish(t))).unwrap();
        assert_eq!(m["g-1.0-1-any.pkg.tar.xz"].size, 9);

        // The same with a hostile long name.
        let mut t = Vec::new();
        let data = b"a/../../etc/desc\0";
        t.extend_from_slice(&header(b"././@LongLink", data.len() as u64, b'L', true));
        t.extend_from_slice(data);
        t.resize(t.len().next_multiple_of(BLOCK), 0);
        member(&mut t, "innocent/desc", b'0', &d);
        assert!(matches!(parse_db(&finish(t)), Err(DbError::Hostile(_))));
    }

    #[test]
    fn ustar_prefix_is_part_of_the_name() {
        let d = desc("pre-1-1-any.pkg.tar.zst", Some("3"), None);
        let mut h = header(b"desc", d.len() as u64, b'0', false);
        h[345..352].copy_from_slice(b"pre-1-1");
        set_checksum(&mut h);
        let mut t = h.to_vec();
        t.extend_from_slice(&d);
        t.resize(t.len().next_multiple_of(BLOCK), 0);
        assert_eq!(parse_db(&finish(t)).unwrap().len(), 1);
        // A hostile prefix is caught like a hostile name.
        let mut h = header(b"desc", d.len() as u64, b'0', false);
        h[345..347].copy_from_slice(b"..");
        set_checksum(&mut h);
        let mut t = h.to_vec();
        t.extend_from_slice(&d);
        t.resize(t.len().next_multiple_of(BLOCK), 0);
        assert!(matches!(parse_db(&finish(t)), Err(DbError::Hostile(_))));
    }

    #[test]
    fn every_truncation_of_a_gzip_db_is_refused() {
        let gz = gzip(&three());
        for cut in 0..gz.len() {
            match parse_db(&gz[..cut]) {
                Err(DbError::Corrupt(_)) => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_plain_tar_is_refused_or_a_subset() {
        let tar = three();
        let full = three_expected();
        let mut cuts: Vec<usize> = (0..tar.len()).step_by(BLOCK).collect();
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        cuts.extend((0..2000).map(|_| rng.below(tar.len())));
        for cut in cuts {
            match parse_db(&tar[..cut]) {
                Err(DbError::Corrupt(_)) => {}
                // Cut inside the end-of-archive padding: the whole db is there.
                Ok(m) => assert_eq!(m, full, "cut at {cut}"),
                Err(e) => panic!("cut at {cut}: {e}"),
            }
        }
        // Without any end marker, the last entry cannot be told from a truncation.
        let end = three_members().len();
        assert!(corrupt(parse_db(&tar[..end])));
        assert_eq!(parse_db(&tar[..end + BLOCK]).unwrap(), full);
    }

    #[test]
    fn mini_fuzz_mutations_never_panic_and_gzip_never_yields_wrong_entries() {
        let tar = three();
        let gz = gzip(&tar);
        let full = three_expected();
        let mut rng = Rng::new(0x1234_5678_9abc_def1);
        for round in 0..3000 {
            let plain = round % 2 == 0;
            let mut data = if plain { tar.clone() } else { gz.clone() };
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            let r = parse_db(&data);
            if !plain {
                // CRC32 catches any change to the tar itself.
                if let Ok(m) = r {
                    assert_eq!(m, full, "round {round}");
                }
            }
        }
        // Pure noise, of many lengths.
        for len in 0..1500 {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = parse_db(&data);
            let mut gzish = vec![0x1f, 0x8b, 8, 0];
            gzish.extend_from_slice(&data);
            let _ = parse_db(&gzish);
        }
    }

    #[test]
    fn garbage_and_empty_input_are_corrupt() {
        assert!(corrupt(parse_db(b"")));
        assert!(corrupt(parse_db(b"hello, this is not a database")));
        assert!(corrupt(parse_db(&[0x55; 4096])));
        assert!(corrupt(parse_db(&[
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff
        ])));
        assert!(corrupt(parse_db(&[0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 3])));
        // A valid gzip around a non-tar.
        assert!(corrupt(parse_db(&gzip(&[0x55; 4096]))));
        // An empty repo (repo-add with no packages) is a valid, empty db.
        assert!(parse_db(&gzip(&[0; 10240])).unwrap().is_empty());
        assert!(parse_db(&[0; 1024]).unwrap().is_empty());
    }

    #[test]
    fn other_compressions_are_unsupported() {
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0];
        assert!(matches!(parse_db(&zstd), Err(DbError::Unsupported("zstd"))));
        let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
        assert!(matches!(parse_db(&xz), Err(DbError::Unsupported("xz"))));
        assert!(matches!(
            parse_db(b"BZh91AY&SY"),
            Err(DbError::Unsupported("bzip2"))
        ));
    }

    #[test]
    fn hostile_member_names_refuse_the_whole_db() {
        let d = desc("x-1-1-any.pkg.tar.zst", Some("1"), None);
        for name in [
            "../desc",
            "a/../../desc",
            "a/..",
            "/etc/desc",
            "/",
            "x/../y/desc",
        ] {
            let mut t = Vec::new();
            member(&mut t, "ok-1-1/desc", b'0', &d);
            member(&mut t, name, b'0', &d);
            match parse_db(&gzip(&finish(t))) {
                Err(DbError::Hostile(n)) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
        // A hostile name on a non-file member (symlink) counts too, and so does a pax path.
        let mut t = Vec::new();
        member(&mut t, "../link", b'2', b"");
        assert!(matches!(parse_db(&finish(t)), Err(DbError::Hostile(_))));
        let mut t = Vec::new();
        member(
            &mut t,
            "PaxHeader/x",
            b'x',
            pax_record("path", "/abs/desc").as_bytes(),
        );
        member(&mut t, "fine/desc", b'0', &d);
        assert!(matches!(parse_db(&finish(t)), Err(DbError::Hostile(_))));
        // Dots inside a component are fine.
        let mut t = Vec::new();
        member(&mut t, "a..b-1.0..2-1/desc", b'0', &d);
        member(
            &mut t,
            "./c/desc",
            b'0',
            &desc("c-1-1-any.pkg.tar.zst", Some("2"), None),
        );
        assert_eq!(parse_db(&finish(t)).unwrap().len(), 2);
    }

    #[test]
    fn decompression_bomb_stops_at_the_bound() {
        // A member claiming 4 MiB of zeros: a few KiB compressed.
        let size: u64 = 4 << 20;
        let mut t = Vec::new();
        member(
            &mut t,
            "a-1-1/desc",
            b'0',
            &desc("a-1-1-any.pkg.tar.zst", Some("1"), None),
        );
        t.extend_from_slice(&header(b"bomb/files", size, b'0', false));
        t.resize(t.len() + size as usize, 0);
        let gz = gzip_with(&finish(t), 1, 0, &[]);
        assert!(gz.len() < 64 << 10);
        assert!(matches!(
            parse_db_bounded(&gz, 1 << 20),
            Err(DbError::TooLarge("decompressed db"))
        ));
        // Under the real bound the same db is fine: the big member is skipped, not kept.
        assert_eq!(parse_db(&gz).unwrap().len(), 1);
        // Zeros past the end-of-archive marker are inflated too (to check the CRC): bounded.
        let gz = gzip_with(&vec![0; 4 << 20], 1, 0, &[]);
        assert!(matches!(
            parse_db_bounded(&gz, 1 << 20),
            Err(DbError::TooLarge(_))
        ));
    }

    #[test]
    fn oversized_members_are_skipped_or_refused() {
        let mut t = Vec::new();
        let mut big = desc("big-1-1-any.pkg.tar.zst", Some("1"), None);
        big.resize(MAX_DESC as usize + 1, b'\n');
        member(&mut t, "big-1-1/desc", b'0', &big);
        let mut fits = desc("fits-1-1-any.pkg.tar.zst", Some("2"), None);
        fits.resize(MAX_DESC as usize, b'\n');
        member(&mut t, "fits-1-1/desc", b'0', &fits);
        member(
            &mut t,
            "c-1-1/desc",
            b'0',
            &desc("c-1-1-any.pkg.tar.zst", Some("3"), None),
        );
        let m = parse_db(&gzip(&finish(t))).unwrap();
        let mut keys: Vec<_> = m.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["c-1-1-any.pkg.tar.zst", "fits-1-1-any.pkg.tar.zst"]);

        // A member claiming more than the file holds is a truncation.
        let mut h = header(b"a/desc", 0, b'0', false);
        h[124..136].copy_from_slice(b"77777777777\0");
        set_checksum(&mut h);
        let mut t = h.to_vec();
        t.resize(20 * BLOCK, 0);
        assert!(corrupt(parse_db(&t)));
        // A pax header bigger than its bound refuses the db (it cannot be skipped safely).
        let mut t = Vec::new();
        let pax = pax_record("comment", &"c".repeat(MAX_META as usize));
        member(&mut t, "PaxHeader/x", b'x', pax.as_bytes());
        assert!(matches!(
            parse_db(&finish(t)),
            Err(DbError::TooLarge("tar extended header"))
        ));
        // Base-256 sizes (GNU) are read; a negative one is corrupt.
        let mut h = header(b"a/files", 0, b'0', true);
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x00]);
        set_checksum(&mut h);
        let mut t = h.to_vec();
        t.resize(t.len() + 512, b'z');
        assert_eq!(parse_db(&finish(t)).unwrap().len(), 0);
        h[124] = 0xff;
        set_checksum(&mut h);
        assert!(corrupt(parse_db(&finish(h.to_vec()))));
    }

    #[test]
    fn desc_fields() {
        let ok = "f-1-1-any.pkg.tar.zst";
        let one = |d: Vec<u8>| {
            let mut t = Vec::new();
            member(&mut t, "f-1-1/desc", b'0', &d);
            parse_db(&finish(t)).unwrap()
        };
        // Missing or invalid CSIZE: entry skipped.
        assert!(one(desc(ok, None, Some(&sha(1)))).is_empty());
        for bad in ["", "-1", "12a", "1 2", "0x10", "99999999999999999999999"] {
            assert!(one(desc(ok, Some(bad), None)).is_empty(), "{bad:?}");
        }
        // Invalid SHA256SUM: entry kept without a hash.
        let short = &sha(1)[..63];
        let long = sha(1) + "0";
        let nonhex = "g".repeat(64);
        for bad in [short, &long, &nonhex, "", "  "] {
            let m = one(desc(ok, Some("5"), Some(bad)));
            assert_eq!(
                m[ok],
                PkgInfo {
                    size: 5,
                    sha256: None
                },
                "{bad:?}"
            );
        }
        // Upper-case hex is accepted.
        let m = one(desc(ok, Some("5"), Some(&sha(0xab).to_uppercase())));
        assert_eq!(m[ok].sha256, Some([0xab; 32]));
        // File names that could not be a cached package are skipped.
        for bad in ["", "../x.pkg.tar.zst", "a/b", ".hidden", "tab\there"] {
            assert!(one(desc(bad, Some("1"), None)).is_empty(), "{bad:?}");
        }
        // CRLF line ends, and only a block's first value line counts.
        let d = b"%FILENAME%\r\nf\r\nsecond\r\n\r\n%CSIZE%\r\n7\r\n8\r\n".to_vec();
        assert_eq!(one(d)["f"].size, 7);
        // Non-desc members are never parsed, even if they look like one.
        let mut t = Vec::new();
        member(&mut t, "f-1-1/files", b'0', &desc(ok, Some("1"), None));
        member(&mut t, "f-1-1/desc.bak", b'0', &desc(ok, Some("1"), None));
        member(&mut t, "f-1-1/desc/", b'5', b"");
        assert!(parse_db(&finish(t)).unwrap().is_empty());
    }

    #[test]
    fn sha_hex_round_trip() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let h = sha256_hex(&d);
        assert_eq!(h.len(), 64);
        assert_eq!(parse_sha256_hex(&h), Some(d));
        assert_eq!(parse_sha256_hex(&h[1..]), None);
        assert_eq!(parse_sha256_hex(&format!("+{}", &h[1..])), None);
        assert_eq!(parse_sha256_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32_update(0, b"123456789"), 0xcbf4_3926);
        assert_eq!(
            crc32_update(crc32_update(0, b"1234"), b"56789"),
            0xcbf4_3926
        );
        // Slicing by 8 agrees with the bytewise definition at every length and split.
        let bytewise = |crc: u32, data: &[u8]| {
            let mut c = !crc;
            for &b in data {
                c = CRC_TABLES[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
            }
            !c
        };
        let mut rng = Rng::new(8);
        let data = random_bytes(&mut rng, 100);
        for n in 0..data.len() {
            assert_eq!(crc32_update(0, &data[..n]), bytewise(0, &data[..n]), "{n}");
            let (a, b) = data.split_at(n);
            assert_eq!(crc32_update(crc32_update(0, a), b), bytewise(0, &data));
        }
    }

    #[test]
    fn tar_checksums_signed_or_unsigned() {
        let mut h = header("é-1-1/desc".as_bytes(), 0, b'0', false);
        assert!(checksum_ok(&h));
        let signed: i64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(b as i8)
                }
            })
            .sum();
        h[148..156].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert!(checksum_ok(&h));
        h[148..156].copy_from_slice(format!("{:06o}\0 ", signed + 1).as_bytes());
        assert!(!checksum_ok(&h));
        assert!(!checksum_ok(&h[..511]));
    }

    // --- streaming, signatures, bounds ---

    /// A reader that hands out at most `.1` bytes per call: every buffer boundary of the
    /// streaming parser gets crossed.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn parse_with(r: impl Read, limits: Limits) -> Result<DbIndex, DbError> {
        parse_stream(r, limits, SigSink::Memory(Vec::new()))
    }

    fn b64(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in data.chunks(3) {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..4 {
                s.push(if i <= c.len() {
                    char::from(A[(n >> (18 - 6 * i) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        s
    }

    fn desc_sig(file: &str, sig: &str) -> Vec<u8> {
        let mut d = desc(file, Some("10"), Some(&sha(3)));
        d.extend_from_slice(format!("%PGPSIG%\n{sig}\n\n").as_bytes());
        d
    }

    fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
        (0..n).map(|_| rng.next() as u8).collect()
    }

    #[test]
    fn record_is_52_bytes() {
        assert_eq!(RECORD_BYTES, 52);
    }

    #[test]
    fn streaming_in_small_reads_gives_the_same_index() {
        let extras = [&[4u8, 0][..], b"abcd", b"core.db\0", b"a comment\0"].concat();
        let flags = GZ_FEXTRA | GZ_FNAME | GZ_FCOMMENT | GZ_FHCRC;
        let tar = three();
        let gz = gzip_with(&tar, 9, flags, &extras);
        let mut cat = gzip_with(&tar[..1000], 1, 0, &[]);
        cat.extend(gzip_with(&tar[1000..], 0, 0, &[]));
        for data in [&gz, &tar, &cat] {
            for chunk in [1, 2, 3, 7, 511, 513, 4096, usize::MAX] {
                let ix = parse_with(Trickle(data, chunk), LIMITS).unwrap();
                assert_eq!(to_map(ix), three_expected(), "chunk {chunk}");
            }
        }
        // Truncations read one byte at a time are refused like whole ones.
        for cut in (0..gz.len()).step_by(7) {
            assert!(
                matches!(
                    parse_with(Trickle(&gz[..cut], 1), LIMITS),
                    Err(DbError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn base64_round_trip_and_refusals() {
        let mut rng = Rng::new(77);
        let mut out = Vec::new();
        for n in 0..64 {
            let data = random_bytes(&mut rng, n);
            assert!(base64_decode(b64(&data).as_bytes(), &mut out), "{n}");
            assert_eq!(out, data);
        }
        for bad in [
            "abc", "ab=c", "a===", "====", "ab\n=", "ab c", "abc*", "QQ==QQ==",
        ] {
            assert!(!base64_decode(bad.as_bytes(), &mut out), "{bad:?}");
        }
        let long = b64(&vec![0; MAX_SIG_LEN + 3]);
        assert!(!base64_decode(long.as_bytes(), &mut out));
    }

    #[test]
    fn signatures_are_decoded_and_bounded() {
        let mut rng = Rng::new(5);
        let sig = random_bytes(&mut rng, 566);
        let ed = random_bytes(&mut rng, 119);
        let mut t = Vec::new();
        let entries = [
            ("a-1-1-any.pkg.tar.zst", b64(&sig)),
            ("b-1-1-any.pkg.tar.zst", b64(&ed)),
            ("bad-1-1-any.pkg.tar.zst", "not base64!".to_string()),
            ("big-1-1-any.pkg.tar.zst", b64(&vec![7; MAX_SIG_LEN + 1])),
            ("empty-1-1-any.pkg.tar.zst", String::new()),
        ];
        for (file, s) in &entries {
            member(&mut t, &format!("{file}/desc"), b'0', &desc_sig(file, s));
        }
        member(
            &mut t,
            "none/desc",
            b'0',
            &desc("none-1-1-any.pkg.tar.zst", Some("1"), None),
        );
        let gz = gzip(&finish(t));
        let ix = super::parse_db(&gz).unwrap();
        // Every entry is kept, with or without a usable signature.
        assert_eq!(ix.len(), 6);
        assert_eq!(ix.signature("a-1-1-any.pkg.tar.zst"), Some(sig.clone()));
        assert_eq!(ix.signature("b-1-1-any.pkg.tar.zst"), Some(ed.clone()));
        for f in ["bad", "big", "empty", "none", "missing"] {
            assert_eq!(
                ix.signature(&format!("{f}-1-1-any.pkg.tar.zst")),
                None,
                "{f}"
            );
        }
        assert_eq!(ix.get("bad-1-1-any.pkg.tar.zst").unwrap().size, 10);
        // The repo's signature total is bounded: past it, signatures are not kept.
        let limits = Limits {
            sig_bytes: 600,
            ..LIMITS
        };
        let ix = parse_with(&gz[..], limits).unwrap();
        assert_eq!(ix.signature("a-1-1-any.pkg.tar.zst"), Some(sig.clone()));
        assert_eq!(ix.signature("b-1-1-any.pkg.tar.zst"), None);
        assert_eq!(ix.len(), 6);

        // The daemon's way: signatures in an unlinked file of the given dir.
        let dir = TempDir::new();
        let path = dir.0.join("core.db");
        std::fs::write(&path, &gz).unwrap();
        let (ix, _) = load_db_stamped(&path, &dir.0).unwrap();
        assert!(matches!(ix.sigs, Sigs::File(_)));
        assert_eq!(ix.signature("a-1-1-any.pkg.tar.zst"), Some(sig));
        assert_eq!(ix.signature("b-1-1-any.pkg.tar.zst"), Some(ed));
        assert_eq!(ix.heap_bytes(), ix.len() * RECORD_BYTES + ix.names.len());
        // Nothing is left with a name in the dir.
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
        // No usable dir: the index without signatures.
        let (ix, _) = load_db_stamped(&path, &dir.0.join("missing")).unwrap();
        assert_eq!(ix.len(), 6);
        assert_eq!(ix.signature("a-1-1-any.pkg.tar.zst"), None);
    }

    #[test]
    fn entries_are_sorted_and_the_last_duplicate_wins() {
        let mut t = Vec::new();
        for (file, size) in [("m.pkg", 1), ("a.pkg", 2), ("z.pkg", 3), ("m.pkg", 4)] {
            let d = desc(file, Some(&size.to_string()), None);
            member(&mut t, &format!("{file}{size}/desc"), b'0', &d);
        }
        let ix = super::parse_db(&finish(t)).unwrap();
        let all: Vec<(&str, u64)> = ix.iter().map(|(n, i)| (n, i.size)).collect();
        assert_eq!(all, [("a.pkg", 2), ("m.pkg", 4), ("z.pkg", 3)]);
        assert_eq!(ix.get("m.pkg").unwrap().size, 4);
        assert_eq!(ix.get("m.pk"), None);
        assert_eq!(ix.get(""), None);
    }

    #[test]
    fn entry_and_name_bounds_refuse_the_db() {
        let mut t = Vec::new();
        for i in 0..5 {
            let file = format!("p{i}-1-1-any.pkg.tar.zst");
            member(
                &mut t,
                &format!("{file}/desc"),
                b'0',
                &desc(&file, Some("1"), None),
            );
        }
        let tar = finish(t);
        let ok = |l: Limits| parse_with(&tar[..], l).map(|ix| ix.len());
        assert_eq!(ok(LIMITS).unwrap(), 5);
        let entries = Limits {
            entries: 4,
            ..LIMITS
        };
        assert!(matches!(ok(entries), Err(DbError::TooLarge("entries"))));
        let names = Limits {
            name_bytes: 5 * 22 - 1,
            ..LIMITS
        };
        assert!(matches!(ok(names), Err(DbError::TooLarge("file names"))));
        let names = Limits {
            name_bytes: 5 * 22,
            ..LIMITS
        };
        assert_eq!(ok(names).unwrap(), 5);
    }

    /// A file that keeps growing past MAX_DB_FILE while it is read is refused at the bound.
    #[test]
    fn a_growing_file_is_cut_at_the_bound() {
        struct Endless(Vec<u8>);
        impl Read for Endless {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = out.len().min(1 << 20);
                out[..n].fill(b'z');
                let h = self.0.len().min(n);
                out[..h].copy_from_slice(&self.0[..h]);
                self.0.drain(..h);
                Ok(n)
            }
        }
        let mut h = header(b"a/files", 0, b'0', false);
        h[124..136].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        set_checksum(&mut h);
        let r = parse_with(Endless(h.to_vec()), LIMITS);
        assert!(matches!(r, Err(DbError::TooLarge("db file"))), "{r:?}");
    }

    // --- files and the index ---

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("flocon-syncdb-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes like pacman does: a new file renamed into place.
    fn replace(path: &Path, bytes: &[u8]) {
        let tmp = path.with_extension("part");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn db_of(entries: &[(&str, u64)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (file, size) in entries {
            let d = desc(file, Some(&size.to_string()), Some(&sha(*size as u8)));
            member(&mut t, &format!("{file}/desc"), b'0', &d);
        }
        gzip(&finish(t))
    }

    /// What the daemon does on each scan.
    fn rescan(index: &mut SyncIndex, dir: &Path, repos: &[String]) -> Vec<String> {
        let changed = index.changed(dir, repos);
        for (repo, path, st) in &changed {
            match super::load_db(path) {
                Ok(map) => index.install(repo, *st, map),
                Err(_) => index.keep_old(repo, *st),
            }
        }
        changed.into_iter().map(|c| c.0).collect()
    }

    #[test]
    fn index_follows_renamed_dbs_and_keeps_the_last_good_one() {
        let dir = TempDir::new();
        let repos: Vec<String> = vec!["core".into(), "extra".into(), "../etc".into()];
        let core = dir.0.join("core.db");
        replace(
            &core,
            &db_of(&[("a.pkg.tar.zst", 1), ("shared.pkg.tar.zst", 2)]),
        );
        replace(
            &dir.0.join("extra.db"),
            &db_of(&[("shared.pkg.tar.zst", 3)]),
        );

        let mut index = SyncIndex::new();
        assert_eq!(rescan(&mut index, &dir.0, &repos), ["core", "extra"]);
        index.retain_repos(&repos);
        assert_eq!(index.len(), 3);
        assert!(rescan(&mut index, &dir.0, &repos).is_empty());
        assert_eq!(index.lookup("core", "a.pkg.tar.zst").unwrap().size, 1);
        assert_eq!(index.lookup("extra", "a.pkg.tar.zst"), None);
        assert_eq!(index.lookup("nope", "a.pkg.tar.zst"), None);
        let (repo, info) = index.lookup_any("shared.pkg.tar.zst").unwrap();
        assert_eq!((repo.as_str(), info.size), ("core", 2));
        assert!(index.heap_bytes() >= 3 * RECORD_BYTES);

        // pacman -Sy: a new core.db renamed into place.
        replace(&core, &db_of(&[("b.pkg.tar.zst", 4)]));
        assert_eq!(rescan(&mut index, &dir.0, &repos), ["core"]);
        assert_eq!(index.lookup("core", "a.pkg.tar.zst"), None);
        assert_eq!(index.lookup("core", "b.pkg.tar.zst").unwrap().size, 4);
        assert_eq!(index.lookup_any("shared.pkg.tar.zst").unwrap().0, "extra");

        // A crafted db: refused, the old map stays, and it is not re-read every scan.
        let mut t = Vec::new();
        member(
            &mut t,
            "../evil/desc",
            b'0',
            &desc("evil.pkg.tar.zst", Some("1"), None),
        );
        replace(&core, &gzip(&finish(t)));
        assert!(matches!(load_db(&core), Err(DbError::Hostile(_))));
        assert_eq!(rescan(&mut index, &dir.0, &repos), ["core"]);
        assert!(rescan(&mut index, &dir.0, &repos).is_empty());
        assert_eq!(index.lookup("core", "b.pkg.tar.zst").unwrap().size, 4);

        // A db that disappears is reported once, with no stamp.
        std::fs::remove_file(dir.0.join("extra.db")).unwrap();
        let changed = index.changed(&dir.0, &repos);
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].0, "extra");
        assert_eq!(changed[0].2, None);
        index.keep_old("extra", None);
        assert!(index.changed(&dir.0, &repos).is_empty());
        assert_eq!(index.lookup("extra", "shared.pkg.tar.zst").unwrap().size, 3);

        // Dropping a repo from the config drops its entries.
        index.retain_repos(&["core".to_string()]);
        assert_eq!(index.len(), 1);
        assert_eq!(index.repos().collect::<Vec<_>>(), [("core", 1)]);
    }

    #[test]
    fn load_db_bounds_and_errors() {
        let dir = TempDir::new();
        assert!(matches!(
            load_db(&dir.0.join("missing.db")),
            Err(DbError::Io(_))
        ));
        assert!(matches!(load_db(&dir.0), Err(DbError::Corrupt(_))));
        let big = dir.0.join("big.db");
        let f = File::create(&big).unwrap();
        f.set_len(MAX_DB_FILE + 1).unwrap();
        assert!(matches!(load_db(&big), Err(DbError::TooLarge("db file"))));
        let ok = dir.0.join("ok.db");
        std::fs::write(&ok, db_of(&[("x.pkg.tar.zst", 9)])).unwrap();
        let (map, st) = load_db_stamped(&ok, &dir.0).unwrap();
        assert_eq!(map.len(), 1);
        assert_eq!(Some(st), stamp(&ok));
    }

    fn on_path(bin: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    }

    /// Real dbs from pacman's own `repo-add` (skipped where it is not installed).
    #[test]
    fn repo_add_dbs() {
        if !on_path("repo-add") || !on_path("bsdtar") {
            eprintln!("repo-add or bsdtar missing: skipped");
            return;
        }
        use sha2::Digest;
        use std::process::Command;
        let dir = TempDir::new();
        let pkgdir = dir.0.join("p");
        std::fs::create_dir(&pkgdir).unwrap();
        let info = "pkgname = foo\npkgbase = foo\npkgver = 1.0-1\npkgdesc = t\n\
                    builddate = 1700000000\npackager = t\nsize = 10\narch = x86_64\n";
        std::fs::write(pkgdir.join(".PKGINFO"), info).unwrap();
        std::fs::write(pkgdir.join("hello"), "hi\n").unwrap();
        let pkg = "foo-1.0-1-x86_64.pkg.tar.gz";
        let st = Command::new("bsdtar")
            .current_dir(&pkgdir)
            .args(["-czf", &format!("../{pkg}"), ".PKGINFO", "hello"])
            .status()
            .unwrap();
        assert!(st.success());
        let bytes = std::fs::read(dir.0.join(pkg)).unwrap();
        let want = PkgInfo {
            size: bytes.len() as u64,
            sha256: Some(sha2::Sha256::digest(&bytes).into()),
        };
        for (db, expect_ok) in [
            ("gz.db.tar.gz", true),
            ("plain.db.tar", true),
            ("z.db.tar.zst", false),
        ] {
            let st = Command::new("repo-add")
                .current_dir(&dir.0)
                .args(["-q", db, pkg])
                .status()
                .unwrap();
            assert!(st.success());
            for file in [db.to_string(), db.replace(".db.", ".files.")] {
                match load_db(&dir.0.join(&file)) {
                    Ok(m) if expect_ok => assert_eq!(m.get(pkg), Some(&want), "{file}"),
                    Err(DbError::Unsupported("zstd")) if !expect_ok => {}
                    other => panic!("{file}: {other:?}"),
                }
            }
        }
    }
}
