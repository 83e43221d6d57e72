//! The client's incremental `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1), bounded in
//! line and trailer length, with no input buffer of its own.

use super::{HttpError, hex_value};

/// Longest chunk-size line including extensions. Real servers send "1f40\r\n"; the bound
/// stops a peer from trickling an endless line at us.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;
/// Total trailer bytes accepted after the last chunk (we discard them; the bound only
/// limits how long a sender can keep us reading nothing useful).
pub(crate) const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk-size.
    Size,
    /// Chunk extensions (ignored) up to the CR.
    Extension,
    /// CR of the size line seen, LF expected.
    SizeLf,
    /// Inside the chunk data.
    Data,
    DataCr,
    DataLf,
    /// Start of a trailer line, or the CR of the final empty line.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
    /// A malformed body was seen; every later feed fails too.
    Failed,
}

/// Incremental `Transfer-Encoding: chunked` decoder. It keeps no input buffer, so any split
/// of the input gives the same output; strict CRLF framing, since a lenient decoder is how
/// two parsers come to disagree on where a message ends.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    /// Size being read, then bytes left in the current chunk.
    remaining: u64,
    digits: usize,
    line_len: usize,
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending body bytes to `out`. Returns (bytes consumed, done).
    /// All of `input` is consumed unless the body ends inside it: bytes after the last
    /// trailer belong to the next response.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), HttpError> {
        let mut i = 0;
        while let Some(rest) = input.get(i..).filter(|r| !r.is_empty()) {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Failed => return Err(HttpError::BadResponse),
                ChunkState::Data => {
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    i += n;
                    self.remaining -= n as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                _ => {
                    i += 1;
                    if let Err(e) = self.step(rest[0]) {
                        self.state = ChunkState::Failed;
                        return Err(e);
                    }
                }
            }
        }
        if self.state == ChunkState::Failed {
            return Err(HttpError::BadResponse);
        }
        Ok((i, self.state == ChunkState::Done))
    }

    /// One framing byte (anything but chunk data).
    fn step(&mut self, b: u8) -> Result<(), HttpError> {
        let bad = Err(HttpError::BadResponse);
        match self.state {
            ChunkState::Size => {
                self.count_line_byte()?;
                if let Some(v) = hex_value(b) {
                    if self.remaining > u64::MAX >> 4 {
                        return bad;
                    }
                    self.remaining = self.remaining << 4 | u64::from(v);
                    self.digits += 1;
                } else if self.digits == 0 {
                    return bad;
                } else {
                    match b {
                        b'\r' => self.state = ChunkState::SizeLf,
                        // Whitespace before ';' is allowed (BWS in RFC 9112 §7.1.1).
                        b';' | b' ' | b'\t' => self.state = ChunkState::Extension,
                        _ => return bad,
                    }
                }
            }
            ChunkState::Extension => {
                self.count_line_byte()?;
                match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => {}
                    _ => return bad,
                }
            }
            ChunkState::SizeLf => {
                if b != b'\n' {
                    return bad;
                }
                self.line_len = 0;
                self.digits = 0;
                self.state = if self.remaining == 0 {
                    ChunkState::TrailerStart
                } else {
                    ChunkState::Data
                };
            }
            ChunkState::DataCr if b == b'\r' => self.state = ChunkState::DataLf,
            ChunkState::DataLf if b == b'\n' => self.state = ChunkState::Size,
            ChunkState::TrailerStart if b == b'\r' => self.state = ChunkState::EndLf,
            ChunkState::TrailerStart | ChunkState::Trailer => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILERS {
                    return bad;
                }
                match b {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\t' | b' '..=b'~' | 0x80..=0xff => self.state = ChunkState::Trailer,
                    _ => return bad,
                }
            }
            ChunkState::TrailerLf if b == b'\n' => self.state = ChunkState::TrailerStart,
            ChunkState::EndLf if b == b'\n' => self.state = ChunkState::Done,
            _ => return bad,
        }
        Ok(())
    }

    fn count_line_byte(&mut self) -> Result<(), HttpError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            Err(HttpError::BadResponse)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let (n, done) = d.feed(input, &mut out)?;
        Ok((out, n, done))
    }

    #[test]
    fn chunked_every_split() {
        let body: &[u8] = b"1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n6 ; x\r\n\r\n\r\n\r\n\r\n0000A\r\n0123456789\r\n0\r\nExpires: never\r\nX: y\r\n\r\nHTTP/1.1 200 OK";
        let end = body.len() - b"HTTP/1.1 200 OK".len();
        let want: &[u8] = b"abcdefghijklmnopqrstuvwxyz\r\n\r\n\r\n0123456789";
        assert_eq!(decode_all(body), Ok((want.to_vec(), end, true)));
        for split in 0..=body.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let (n1, done1) = d.feed(&body[..split], &mut out).unwrap();
            if split <= end {
                assert_eq!((n1, done1), (split, split == end && split > 0));
            }
            let (n2, done2) = d.feed(&body[n1..], &mut out).unwrap();
            assert!(done2, "split {split}");
            assert_eq!(n1 + n2, end);
            assert_eq!(out, want, "split {split}");
            assert!(d.is_done());
        }
        // Byte by byte.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for b in &body[..end] {
            used += d.feed(std::slice::from_ref(b), &mut out).unwrap().0;
        }
        assert_eq!((out.as_slice(), used, d.is_done()), (want, end, true));
        assert_eq!(d.feed(b"more", &mut out), Ok((0, true)));
        assert_eq!(decode_all(b"0\r\n\r\n"), Ok((Vec::new(), 5, true)));
    }

    #[test]
    fn chunked_malformed() {
        let huge_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_CHUNK_LINE));
        let huge_trailer = format!("0\r\nX: {}\r\n\r\n", "y".repeat(MAX_TRAILERS));
        let bad: &[&[u8]] = &[
            b"\r\n",
            b"g\r\n",
            b";ext\r\n",
            b" 1\r\na\r\n",
            b"-1\r\n",
            b"1\na\r\n0\r\n\r\n",
            b"1\r\nab\r\n",
            b"1\r\na\n0\r\n\r\n",
            b"1\r\naX\r\n",
            b"1x\r\n",
            b"1;a\x00b\r\n",
            b"0\r\nX: y\n\r\n",
            b"0\r\n\n",
            b"0\r\nX\x01\r\n\r\n",
            b"10000000000000000\r\n",
            b"ffffffffffffffff0\r\n",
            huge_ext.as_bytes(),
            huge_trailer.as_bytes(),
        ];
        for input in bad {
            assert_eq!(
                decode_all(input),
                Err(HttpError::BadResponse),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Largest size is accepted (and then simply waits for data).
        let (out, n, done) = decode_all(b"ffffffffffffffff\r\nabc").unwrap();
        assert_eq!((out.as_slice(), n, done), (&b"abc"[..], 21, false));
        // Once failed, stays failed.
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(d.feed(b"zz", &mut out).is_err());
        assert!(d.feed(b"0\r\n\r\n", &mut out).is_err());
        assert!(d.feed(b"", &mut out).is_err());
        // Empty input is a no-op.
        assert_eq!(ChunkedDecoder::new().feed(b"", &mut out), Ok((0, false)));
    }
}
