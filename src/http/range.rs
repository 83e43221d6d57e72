//! Single-range math for the peer server and the front: which bytes a `Range` header asks of
//! a file of known length (RFC 9110 §14), and the `Content-Range` values that answer it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeOutcome {
    /// No usable Range: send the whole file with 200.
    Full,
    /// 206 with these bytes, both ends inclusive.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

enum RangeSpec {
    /// `a-` or `a-b`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Single-range only. Anything we do not understand (several ranges, other units, garbage,
/// `b < a`) yields `Full`: RFC 9110 §14.2 lets a server ignore Range, and a whole file is
/// always a correct answer.
pub(crate) fn resolve_range(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(spec) = header.and_then(parse_range_spec) else {
        return RangeOutcome::Full;
    };
    match spec {
        RangeSpec::From(start, _) if start >= len => RangeOutcome::Unsatisfiable,
        RangeSpec::From(start, last) => RangeOutcome::Partial {
            start,
            end: last.unwrap_or(u64::MAX).min(len - 1),
        },
        RangeSpec::Suffix(n) if n == 0 || len == 0 => RangeOutcome::Unsatisfiable,
        // A suffix longer than the file means the whole file (RFC 9110 §14.1.2), still 206.
        RangeSpec::Suffix(n) => RangeOutcome::Partial {
            start: len - n.min(len),
            end: len - 1,
        },
    }
}

fn parse_range_spec(header: &str) -> Option<RangeSpec> {
    let (unit, set) = header.trim_matches([' ', '\t']).split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // A list may carry empty elements and whitespace around commas (RFC 9110 §5.6.1.2).
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    if first.is_empty() {
        return Some(RangeSpec::Suffix(saturating_digits(last)?));
    }
    let first = saturating_digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(saturating_digits(last)?)
    };
    match last {
        Some(l) if l < first => None,
        _ => Some(RangeSpec::From(first, last)),
    }
}

/// `1*DIGIT`, saturating: a position past u64::MAX is past the end of any file, which is
/// what the client meant, so it must not turn into a wrapped small number or an error.
fn saturating_digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        b.is_ascii_digit()
            .then(|| acc.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

/// `Content-Range` value of a 206.
pub(crate) fn content_range(start: u64, end: u64, len: u64) -> String {
    format!("bytes {start}-{end}/{len}")
}

/// `Content-Range` value of a 416.
pub(crate) fn content_range_unsatisfied(len: u64) -> String {
    format!("bytes */{len}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeOutcome::*;
        let p = |start, end| Partial { start, end };
        let cases: &[(Option<&str>, u64, RangeOutcome)] = &[
            (None, 10, Full),
            (Some("bytes=0-"), 10, p(0, 9)),
            (Some("bytes=0-0"), 10, p(0, 0)),
            (Some("bytes=2-5"), 10, p(2, 5)),
            (Some("bytes=9-"), 10, p(9, 9)),
            (Some("bytes=10-"), 10, Unsatisfiable),
            (Some("bytes=11-"), 10, Unsatisfiable),
            (Some("bytes=10-20"), 10, Unsatisfiable),
            (Some("bytes=5-100"), 10, p(5, 9)),
            (Some("bytes=-3"), 10, p(7, 9)),
            (Some("bytes=-10"), 10, p(0, 9)),
            (Some("bytes=-11"), 10, p(0, 9)),
            (Some("bytes=-0"), 10, Unsatisfiable),
            (Some("bytes=5-2"), 10, Full),
            (Some("bytes=0-1,3-4"), 10, Full),
            (Some("bytes=0-1, 3-4"), 10, Full),
            (Some("bytes=0-1,"), 10, p(0, 1)),
            (Some("bytes= 0-1"), 10, p(0, 1)),
            (Some("bytes=0-1 "), 10, p(0, 1)),
            (Some("  bytes=0-1"), 10, p(0, 1)),
            (Some("bytes=0 - 1"), 10, Full),
            (Some("bytes =0-1"), 10, Full),
            (Some("BYTES=3-"), 10, p(3, 9)),
            (Some("items=0-1"), 10, Full),
            (Some("bytes=a-b"), 10, Full),
            (Some("bytes=-"), 10, Full),
            (Some("bytes="), 10, Full),
            (Some("bytes"), 10, Full),
            (Some("bytes=1"), 10, Full),
            (Some("bytes=+1-2"), 10, Full),
            (Some("bytes=-1-2"), 10, Full),
            (Some("bytes=0x1-"), 10, Full),
            (Some("garbage"), 10, Full),
            (Some(""), 10, Full),
            (Some("bytes=99999999999999999999999-"), 10, Unsatisfiable),
            (Some("bytes=0-99999999999999999999999"), 10, p(0, 9)),
            (Some("bytes=-99999999999999999999999"), 10, p(0, 9)),
            (Some("bytes=18446744073709551615-"), u64::MAX, Unsatisfiable),
            (
                Some("bytes=18446744073709551614-"),
                u64::MAX,
                p(u64::MAX - 1, u64::MAX - 1),
            ),
            (Some("bytes=0-"), 0, Unsatisfiable),
            (Some("bytes=0-0"), 0, Unsatisfiable),
            (Some("bytes=-5"), 0, Unsatisfiable),
            (Some("bytes=5-2"), 0, Full),
            (None, 0, Full),
        ];
        for (h, len, want) in cases {
            assert_eq!(resolve_range(*h, *len), *want, "{h:?} len {len}");
        }
        assert_eq!(content_range(7, 9, 10), "bytes 7-9/10");
        assert_eq!(content_range_unsatisfied(10), "bytes */10");
    }
}
