//! The sync-db index: reads pacman's `<DBPath>/sync/<repo>.db` (a gzip'd or plain tar of
//! `<pkgname>-<pkgver>/desc` files) into `file name -> (compressed size, SHA-256)`, the
//! reference that packages fetched from LAN peers are verified against (SPEC §6).
//!
//! Parsing is pure and bounded: a crafted db (hostile member names, huge members, a
//! decompression bomb, garbage) is refused with a typed error before any bound is exceeded,
//! and the caller keeps its last good index. Deciding when to re-read (a cheap `stat` stamp,
//! since pacman renames a new db into place) and on which thread is left to the caller.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// Arch's largest db (extra.db) is ~8 MiB compressed; 8x headroom for big third-party repos,
/// while a stray huge file in the sync dir cannot make us allocate without limit.
pub const MAX_DB_FILE: u64 = 64 << 20;
/// Arch's extra.db inflates to a few tens of MiB; anything past this is a decompression bomb
/// (deflate reaches ~1000:1, so 64 MiB of input could otherwise become 64 GiB).
pub const MAX_DECOMPRESSED: u64 = 512 << 20;
/// A desc file is well under 16 KiB even with long dependency lists; bigger members (a
/// `files` list, junk) are skipped without being held in memory.
pub const MAX_DESC: u64 = 64 << 10;
/// pax extended headers and GNU long names carry one path and a few attributes; unlike data
/// members they cannot be skipped (they change how the next header is read), so a bigger one
/// refuses the db.
const MAX_META: u64 = 64 << 10;
/// All of Arch's repos together list ~15k packages; this bounds the map's memory (~100 MB at
/// worst) whatever a crafted db claims.
pub const MAX_ENTRIES: usize = 500_000;
/// Linux PATH_MAX; real member names (`<pkgname>-<pkgver>/desc`) are far shorter.
pub const MAX_NAME_LEN: usize = 4096;
/// NAME_MAX: a %FILENAME% longer than this cannot be a file in anyone's pacman cache.
const MAX_FILENAME_LEN: usize = 255;
/// Inflate output per step: big enough to keep per-call overhead small, small enough that
/// the overshoot past MAX_DECOMPRESSED before we notice is negligible.
const INFLATE_CHUNK: usize = 64 << 10;
/// Longest decimal %CSIZE% that can fit in a u64.
const MAX_CSIZE_DIGITS: usize = 20;
/// Member names quoted in a Hostile error go to the log: keep the line readable.
const MAX_QUOTED_NAME: usize = 200;

const BLOCK: usize = 512;

/// What the local sync db says a package file must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PkgInfo {
    /// `%CSIZE%`: the package file's size in bytes.
    pub size: u64,
    /// `%SHA256SUM%`, `None` when the db has none (or an unreadable one).
    pub sha256: Option<[u8; 32]>,
}

/// `%FILENAME%` -> what that file must be, for one repo.
pub type DbMap = HashMap<String, PkgInfo>;

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

/// Reads and parses one db file within MAX_DB_FILE.
pub fn load_db(path: &Path) -> Result<DbMap, DbError> {
    load_db_stamped(path).map(|(map, _)| map)
}

/// Like `load_db`, plus the stamp of the very file that was read (from the open descriptor),
/// so a rename racing with the read is seen as a change on the next `changed()`.
pub fn load_db_stamped(path: &Path) -> Result<(DbMap, FileStamp), DbError> {
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
    let bytes = read_bounded(file, meta.len())?;
    Ok((parse_db(&bytes)?, FileStamp::of(&meta)))
}

/// The file may grow between fstat and read: read at most one byte past the bound to tell.
fn read_bounded(file: File, expected: u64) -> Result<Vec<u8>, DbError> {
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    file.take(MAX_DB_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DB_FILE {
        return Err(DbError::TooLarge("db file"));
    }
    Ok(bytes)
}

/// Parses a db held in memory (gzip'd or plain tar).
pub fn parse_db(bytes: &[u8]) -> Result<DbMap, DbError> {
    parse_db_bounded(bytes, MAX_DECOMPRESSED)
}

fn parse_db_bounded(bytes: &[u8], max_inflated: u64) -> Result<DbMap, DbError> {
    if bytes.len() as u64 > MAX_DB_FILE {
        return Err(DbError::TooLarge("db file"));
    }
    if bytes.is_empty() {
        // An interrupted download, not an empty repo (repo-add writes an empty tar).
        return Err(DbError::Corrupt("empty file"));
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut input = GzipInput::new(bytes, max_inflated)?;
        let map = parse_tar(&mut input)?;
        // Inflate the rest (end-of-archive padding) so the CRC and length get checked.
        input.drain()?;
        return Ok(map);
    }
    if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(DbError::Unsupported("zstd"));
    }
    if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Err(DbError::Unsupported("xz"));
    }
    if bytes.starts_with(b"BZh") {
        return Err(DbError::Unsupported("bzip2"));
    }
    let looks_like_tar = bytes
        .get(..BLOCK)
        .is_some_and(|b| b.iter().all(|&x| x == 0) || checksum_ok(b));
    if !looks_like_tar {
        return Err(DbError::Corrupt("neither gzip nor tar"));
    }
    parse_tar(&mut PlainInput {
        data: bytes,
        pos: 0,
    })
}

// ---------------------------------------------------------------------------------------
// Byte sources for the tar reader: a plain slice, or a streaming gzip inflater.

/// A minimal BufRead: `fill` returns the next available bytes (empty at the end).
trait Input {
    fn fill(&mut self) -> Result<&[u8], DbError>;
    fn consume(&mut self, n: usize);
}

struct PlainInput<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input for PlainInput<'_> {
    fn fill(&mut self) -> Result<&[u8], DbError> {
        Ok(self.data.get(self.pos..).unwrap_or(&[]))
    }
    fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.data.len());
    }
}

const GZ_FHCRC: u8 = 0x02;
const GZ_FEXTRA: u8 = 0x04;
const GZ_FNAME: u8 = 0x08;
const GZ_FCOMMENT: u8 = 0x10;
const GZ_RESERVED: u8 = 0xe0;

/// Inflates one or more concatenated gzip members into a fixed window, checking each
/// member's CRC32 and ISIZE; the total output is capped, so a bomb costs no memory.
struct GzipInput<'a> {
    data: &'a [u8],
    pos: usize,
    state: Box<InflateState>,
    out: Vec<u8>,
    start: usize,
    end: usize,
    crc: u32,
    member_len: u32,
    total: u64,
    max_total: u64,
    in_member: bool,
    done: bool,
}

impl<'a> GzipInput<'a> {
    fn new(data: &'a [u8], max_total: u64) -> Result<Self, DbError> {
        let pos = gzip_header(data, 0)?;
        Ok(GzipInput {
            data,
            pos,
            state: InflateState::new_boxed(DataFormat::Raw),
            out: vec![0; INFLATE_CHUNK],
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
                let rest = self.data.get(self.pos..).unwrap_or(&[]);
                if !rest.starts_with(&[0x1f, 0x8b]) {
                    // Like gzip(1), trailing non-gzip bytes (tape padding) are ignored.
                    self.done = true;
                    break;
                }
                self.pos = gzip_header(self.data, self.pos)?;
                self.state.reset(DataFormat::Raw);
                self.crc = 0;
                self.member_len = 0;
                self.in_member = true;
            }
            let input = self.data.get(self.pos..).unwrap_or(&[]);
            let res = inflate(&mut self.state, input, &mut self.out, MZFlush::None);
            self.pos = self.pos.saturating_add(res.bytes_consumed);
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
                Ok(_) if n == 0 && res.bytes_consumed == 0 => {
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
        let t = self
            .data
            .get(self.pos..self.pos.saturating_add(8))
            .ok_or(DbError::Corrupt("truncated gzip trailer"))?;
        if le32(&t[..4]) != self.crc {
            return Err(DbError::Corrupt("gzip CRC mismatch"));
        }
        if le32(&t[4..]) != self.member_len {
            return Err(DbError::Corrupt("gzip length mismatch"));
        }
        self.pos += 8;
        Ok(())
    }

    fn drain(&mut self) -> Result<(), DbError> {
        while !self.done {
            self.refill()?;
        }
        Ok(())
    }
}

impl Input for GzipInput<'_> {
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

/// Returns the offset of the deflate data of the gzip member starting at `pos` (RFC 1952).
fn gzip_header(d: &[u8], pos: usize) -> Result<usize, DbError> {
    const TRUNC: DbError = DbError::Corrupt("truncated gzip header");
    let h = d.get(pos..pos.saturating_add(10)).ok_or(TRUNC)?;
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
    let mut p = pos + 10;
    if flags & GZ_FEXTRA != 0 {
        let xlen = d.get(p..p.saturating_add(2)).ok_or(TRUNC)?;
        p = p.saturating_add(2 + usize::from(xlen[0]) + (usize::from(xlen[1]) << 8));
    }
    for flag in [GZ_FNAME, GZ_FCOMMENT] {
        if flags & flag != 0 {
            let nul = d.get(p..).unwrap_or(&[]).iter().position(|&b| b == 0);
            p = p.saturating_add(nul.ok_or(TRUNC)? + 1);
        }
    }
    if flags & GZ_FHCRC != 0 {
        let c = d.get(p..p.saturating_add(2)).ok_or(TRUNC)?;
        let want = u32::from(c[0]) | (u32::from(c[1]) << 8);
        if crc32_update(0, d.get(pos..p).ok_or(TRUNC)?) & 0xffff != want {
            return Err(DbError::Corrupt("gzip header CRC mismatch"));
        }
        p += 2;
    }
    if p > d.len() {
        return Err(TRUNC);
    }
    Ok(p)
}

/// CRC-32 (IEEE, reflected, as gzip uses), one table built at compile time.
fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
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
        table[i] = c;
        i += 1;
    }
    table
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

fn parse_tar(input: &mut impl Input) -> Result<DbMap, DbError> {
    let mut map = DbMap::new();
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
            return Ok(map);
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
        let name = from_pax.or(from_gnu).unwrap_or_else(|| ustar_name(&hdr));
        check_name(&name)?;
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
            if let Some((file, info)) = parse_desc(&buf) {
                if map.len() >= MAX_ENTRIES && !map.contains_key(&file) {
                    return Err(DbError::TooLarge("entries"));
                }
                map.insert(file, info);
            }
        } else {
            skip(input, padded)?;
        }
    }
}

/// ustar checksum: header bytes summed with the checksum field read as spaces; old tars
/// summed signed bytes, so either sum is accepted.
fn checksum_ok(hdr: &[u8]) -> bool {
    let Some(want) = hdr.get(148..156).and_then(parse_octal) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in hdr.iter().take(BLOCK).enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    want == unsigned || i64::try_from(want).is_ok_and(|w| w == signed)
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

/// name, prefixed by the ustar prefix field (POSIX magic only: GNU uses that area for times).
fn ustar_name(hdr: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&hdr[..100]);
    let prefix = cstr(&hdr[345..500]);
    if &hdr[257..263] == b"ustar\0" && !prefix.is_empty() {
        [prefix, b"/", name].concat()
    } else {
        name.to_vec()
    }
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

/// The entry a desc file describes; `None` when it has no usable %FILENAME% or %CSIZE%.
fn parse_desc(data: &[u8]) -> Option<(String, PkgInfo)> {
    let (mut filename, mut csize, mut sha) = (None, None, None);
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
            _ => {}
        }
        key = Some(b"");
    }
    let file = std::str::from_utf8(filename?).ok()?;
    if !valid_filename(file) {
        return None;
    }
    let size = parse_decimal(csize?)?;
    let sha256 = sha
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(parse_sha256_hex);
    Some((file.to_owned(), PkgInfo { size, sha256 }))
}

/// A name the front could ever be asked for: one path component, not hidden, printable.
fn valid_filename(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= MAX_FILENAME_LEN
        && !f.starts_with('.')
        && !f.contains('/')
        && !f.chars().any(char::is_control)
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
    map: DbMap,
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
                    map: DbMap::new(),
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

    /// Replaces that repo's map.
    pub fn install(&mut self, repo: &str, stamp: Option<FileStamp>, map: DbMap) {
        let r = self.get_or_add(repo);
        r.stamp = stamp;
        r.map = map;
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
        self.get(repo)?.map.get(file).copied()
    }

    pub fn lookup_any(&self, file: &str) -> Option<(String, PkgInfo)> {
        self.repos
            .iter()
            .find_map(|r| r.map.get(file).map(|i| (r.name.clone(), *i)))
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
            match load_db(path) {
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
        let (map, st) = load_db_stamped(&ok).unwrap();
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
