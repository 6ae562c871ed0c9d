//! Decoding views: the body as a percent-decoding, JSON-unescaping or line-joining reader
//! would see it, with each decoded byte mapped back to the input bytes it came from, so a
//! match found in a view masks exactly the escaped text in the body.

/// The decodings the scrubber looks through.
#[derive(Debug, Clone, Copy)]
pub enum View {
    /// `%XX` escapes.
    Percent,
    /// JSON string escapes.
    Json,
    /// Line breaks in wrapped text: base64 cut at 64 or 76 columns, as PEM and MIME write it.
    Wrapped,
}

/// Base64 (or hex) characters a line must end with for its line break to be read as a wrap.
pub const WRAPPED_LINE_MIN: usize = 16;

impl View {
    /// Whether decoding could change what matches in `input`.
    pub fn matters(self, input: &[u8], alphabet: &[bool; 256]) -> bool {
        match self {
            View::Percent => percent_matters(input, alphabet),
            View::Json => json_matters(input, alphabet),
            View::Wrapped => wrapped_matters(input),
        }
    }

    /// Decode `input`; unless `at_end`, an escape cut off at the end is left out.
    pub fn decode(self, input: &[u8], at_end: bool) -> Decoded {
        match self {
            View::Percent => percent(input, at_end),
            View::Json => json(input, at_end),
            View::Wrapped => unwrapped(input),
        }
    }
}

/// A decoded view of an input buffer.
pub struct Decoded {
    /// The decoded bytes.
    pub bytes: Vec<u8>,
    /// For each decoded byte, the input range `[start, end)` it came from.
    pub spans: Vec<(u32, u32)>,
    /// Input bytes from here on are an escape that is not complete yet (more input may
    /// finish it); they are not in `bytes`.
    pub complete_to: usize,
}

impl Decoded {
    fn with_capacity(n: usize) -> Self {
        Decoded {
            bytes: Vec::with_capacity(n),
            spans: Vec::with_capacity(n),
            complete_to: n,
        }
    }

    fn push(&mut self, bytes: &[u8], start: usize, end: usize) {
        for &b in bytes {
            self.bytes.push(b);
            // Buffers are bounded by chunk size plus a held-back tail, far below 4 GiB.
            self.spans.push((start as u32, end as u32));
        }
    }

    /// Input position of decoded position `q` (`q` may be one past the end).
    pub fn input_pos(&self, q: usize) -> usize {
        self.spans.get(q).map_or(self.complete_to, |s| s.0 as usize)
    }

    /// Input range of decoded range `[a, b)`, `a < b`.
    pub fn input_range(&self, a: usize, b: usize) -> std::ops::Range<usize> {
        self.spans[a].0 as usize..self.spans[b - 1].1 as usize
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` decoded to one byte (either hex case); everything else literal.
fn percent(input: &[u8], at_end: bool) -> Decoded {
    let mut out = Decoded::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if !at_end && i + 2 >= input.len() {
                out.complete_to = i;
                break;
            }
            if let (Some(h), Some(l)) = (
                input.get(i + 1).copied().and_then(hex_value),
                input.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push(&[h << 4 | l], i, i + 3);
                i += 3;
                continue;
            }
        }
        out.push(&input[i..=i], i, i + 1);
        i += 1;
    }
    out
}

/// JSON string escapes decoded (`\/`, `\\`, `\"`, `\n`…, `\uXXXX` with surrogate pairs,
/// as UTF-8); everything else literal.
fn json(input: &[u8], at_end: bool) -> Decoded {
    let mut out = Decoded::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' {
            match escape_at(input, i) {
                Escape::Decoded(ch, len) => {
                    let mut utf8 = [0u8; 4];
                    out.push(ch.encode_utf8(&mut utf8).as_bytes(), i, i + len);
                    i += len;
                    continue;
                }
                Escape::Incomplete if !at_end => {
                    out.complete_to = i;
                    break;
                }
                Escape::Incomplete | Escape::Literal => {}
            }
        }
        out.push(&input[i..=i], i, i + 1);
        i += 1;
    }
    out
}

/// Line breaks left out; everything else literal.
fn unwrapped(input: &[u8]) -> Decoded {
    let mut out = Decoded::with_capacity(input.len());
    for (i, &b) in input.iter().enumerate() {
        if b != b'\r' && b != b'\n' {
            out.push(&[b], i, i + 1);
        }
    }
    out
}

/// Whether `input` has a line break after at least [`WRAPPED_LINE_MIN`] base64 characters
/// (an SSE event or a JSON line, ending in punctuation, has none).
fn wrapped_matters(input: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', input).any(|i| ends_a_wrapped_line(&input[..i]))
}

/// Whether `b` can be part of base64 or base64url text.
pub fn is_base64(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// Whether a line break after `before` would be read as a wrap: `before` ends in at least
/// [`WRAPPED_LINE_MIN`] base64 characters.
fn ends_a_wrapped_line(before: &[u8]) -> bool {
    before
        .len()
        .checked_sub(WRAPPED_LINE_MIN)
        .is_some_and(|start| before[start..].iter().all(is_base64))
}

/// Whether an escape from `i` to `end` decoding to `byte` could change what matches: the byte
/// occurs in a pattern, it opens an escape of a copy escaped twice (`%2541`, `\u0025`, see
/// [`opens_an_escape_that_matters`]), or it is a line break ending a wrapped base64 line.
/// Neither the opening nor the break is part of a match, but the views of this decoding need
/// them decoded: a twice-escaped copy, or wrapped base64 inside a JSON string or a form field
/// (`\r\n`, `%0D%0A`), is only found one layer down.
fn escape_matters(input: &[u8], i: usize, end: usize, byte: u8, alphabet: &[bool; 256]) -> bool {
    let before = &input[..i];
    alphabet[usize::from(byte)]
        || (matches!(byte, b'%' | b'\\')
            && opens_an_escape_that_matters(
                byte,
                before,
                input.get(end..).unwrap_or(&[]),
                alphabet,
            ))
        || (matches!(byte, b'\r' | b'\n') && ends_a_wrapped_line(before))
}

/// Whether a decoded `%` or `\`, after `before` and followed by `after` as sent, begins an
/// escape one layer down that matters as [`escape_matters`] says. Code in a JSON string is
/// full of `\\n`, whose inner `\n` rarely matters, and the view that decodes it costs as much
/// as the search. Where the inner escape's own characters are escaped too, or cut off at the
/// end of the input, it can't be told here, so it counts.
fn opens_an_escape_that_matters(
    opener: u8,
    before: &[u8],
    after: &[u8],
    alphabet: &[bool; 256],
) -> bool {
    let matters = |byte: u8| {
        alphabet[usize::from(byte)]
            || (matches!(byte, b'\r' | b'\n') && ends_a_wrapped_line(before))
    };
    // The inner escape's characters, some of which may be escaped themselves.
    let inner = &after[..after.len().min(5)];
    let escaped = || inner.iter().any(|b| matches!(b, b'%' | b'\\'));
    if opener == b'%' {
        return match inner {
            [h, l, ..] => match (hex_value(*h), hex_value(*l)) {
                (Some(h), Some(l)) => matters(h << 4 | l),
                _ => escaped(),
            },
            _ => true,
        };
    }
    // An inner escape whose kind is escaped itself (`\\\u0075…`) reads as something else here.
    if inner.first().is_some_and(|b| matches!(b, b'%' | b'\\')) {
        return true;
    }
    let mut escape = [b'\\'; 6];
    escape[1..=inner.len()].copy_from_slice(inner);
    match escape_at(&escape[..=inner.len()], 0) {
        Escape::Decoded(ch, _) => {
            let mut utf8 = [0u8; 4];
            matters(ch.encode_utf8(&mut utf8).as_bytes()[0])
        }
        Escape::Incomplete => true,
        Escape::Literal => escaped(),
    }
}

/// Whether decoding percent escapes could change what matches in `input`: some escape
/// decodes to a byte a pattern can contain, or an escape is cut off at the end.
fn percent_matters(input: &[u8], alphabet: &[bool; 256]) -> bool {
    memchr::memchr_iter(b'%', input).any(|i| {
        match (
            input.get(i + 1).copied().and_then(hex_value),
            input.get(i + 2).copied().and_then(hex_value),
        ) {
            (Some(h), Some(l)) => escape_matters(input, i, i + 3, h << 4 | l, alphabet),
            _ => i + 2 >= input.len(),
        }
    })
}

/// Whether decoding JSON escapes could change what matches in `input` (as for percent).
fn json_matters(input: &[u8], alphabet: &[bool; 256]) -> bool {
    memchr::memchr_iter(b'\\', input).any(|i| match escape_at(input, i) {
        Escape::Decoded(ch, len) => {
            let mut utf8 = [0u8; 4];
            let byte = ch.encode_utf8(&mut utf8).as_bytes()[0];
            escape_matters(input, i, i + len, byte, alphabet)
        }
        Escape::Incomplete => true,
        Escape::Literal => false,
    })
}

enum Escape {
    Decoded(char, usize),
    Incomplete,
    Literal,
}

fn escape_at(input: &[u8], i: usize) -> Escape {
    let Some(&kind) = input.get(i + 1) else {
        return Escape::Incomplete;
    };
    let simple = match kind {
        b'/' => '/',
        b'\\' => '\\',
        b'"' => '"',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => return unicode_escape(input, i),
        _ => return Escape::Literal,
    };
    Escape::Decoded(simple, 2)
}

/// `\uXXXX`, or a surrogate pair `\uD8xx\uDCxx`, starting at `i`.
fn unicode_escape(input: &[u8], i: usize) -> Escape {
    let unit = |at: usize| -> Option<Option<u16>> {
        let digits = input.get(at..at + 4)?;
        Some(
            digits
                .iter()
                .try_fold(0u16, |acc, &d| Some(acc << 4 | u16::from(hex_value(d)?))),
        )
    };
    let first = match unit(i + 2) {
        None => return Escape::Incomplete,
        Some(None) => return Escape::Literal,
        Some(Some(u)) => u,
    };
    if (0xD800..0xDC00).contains(&first) {
        if input.len() < i + 12 {
            // Only incomplete if what follows could still become `\uDC00`-`\uDFFF`.
            let could_pair = input[i + 6..].iter().zip(b"\\u").all(|(a, b)| a == b)
                && input.get(i + 8).is_none_or(|d| matches!(d, b'd' | b'D'))
                && input
                    .get(i + 9)
                    .is_none_or(|d| matches!(d, b'c'..=b'f' | b'C'..=b'F'));
            return if could_pair {
                Escape::Incomplete
            } else {
                Escape::Literal
            };
        }
        if input[i + 6] == b'\\'
            && input[i + 7] == b'u'
            && let Some(Some(second)) = unit(i + 8)
            && (0xDC00..0xE000).contains(&second)
        {
            let code = 0x10000 + ((u32::from(first) - 0xD800) << 10) + (u32::from(second) - 0xDC00);
            if let Some(ch) = char::from_u32(code) {
                return Escape::Decoded(ch, 12);
            }
        }
        return Escape::Literal;
    }
    char::from_u32(u32::from(first)).map_or(Escape::Literal, |ch| Escape::Decoded(ch, 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_escaped_escape_opens_a_view_only_when_its_inner_escape_can_matter() {
        // A secret's alphabet: letters and digits.
        let mut alphabet = [false; 256];
        for b in (b'0'..=b'9').chain(b'a'..=b'z').chain(b'A'..=b'Z') {
            alphabet[usize::from(b)] = true;
        }
        let json = |input: &[u8]| View::Json.matters(input, &alphabet);
        let percent = |input: &[u8]| View::Percent.matters(input, &alphabet);
        // Code in a JSON string: every escape decodes to a byte no pattern holds.
        assert!(!json(br#"print(\"a\\nb\\t\")\n"#));
        assert!(!percent(b"100%25 sure, 50%25 off"));
        // A copy escaped twice, its inner escapes escaped too, or cut off at the end.
        for twice in [
            &br#"\\u0041"#[..],
            br#"\\\u00750041"#,
            br#"\u005Cu0041"#,
            br#"\\\\"#,
            br#"\\"#,
        ] {
            assert!(json(twice), "{}", String::from_utf8_lossy(twice));
        }
        for twice in [&b"%2541"[..], b"%25%34%31", b"%5Cu0041", b"%25"] {
            assert!(percent(twice), "{}", String::from_utf8_lossy(twice));
        }
        // A twice-escaped line break matters only after a wrapped base64 line.
        assert!(!json(br#"ab\\ncd"#));
        assert!(json(br#"QUJDREVGR0hJSktMTU5PUFFS\\r\\n"#));
    }

    fn lone_len() -> usize {
        br#"x\ud83d"}"#.len()
    }

    #[test]
    fn percent_decoding_maps_back_to_the_escape() {
        let d = percent(b"a%2Fb%2fc%zz", true);
        assert_eq!(d.bytes, b"a/b/c%zz");
        assert_eq!(d.input_range(1, 2), 1..4);
        assert_eq!(d.input_range(1, 5), 1..9);
        let partial = percent(b"ab%2", false);
        assert_eq!(
            (partial.bytes.as_slice(), partial.complete_to),
            (&b"ab"[..], 2)
        );
        assert_eq!(percent(b"ab%2", true).bytes, b"ab%2");
    }

    #[test]
    fn json_unescaping_handles_every_escape_and_surrogates() {
        let d = json(br#"a\/b\u0041\u00e9\ud83d\ude00\n\q"#, true);
        assert_eq!(String::from_utf8(d.bytes.clone()).unwrap(), "a/bAé😀\n\\q");
        assert_eq!(d.input_range(1, 2), 1..3);
        assert_eq!(d.input_range(2, 3), 3..4);
        assert_eq!(d.input_range(3, 4), 4..10);
        let partial = json(br"ab\u00", false);
        assert_eq!(
            (partial.bytes.as_slice(), partial.complete_to),
            (&b"ab"[..], 2)
        );
        let partial_pair = json(br"x\ud83d\ude", false);
        assert_eq!(partial_pair.complete_to, 1);
        // A lone high surrogate followed by something else is not held back.
        let lone = json(br#"x\ud83d"}"#, false);
        assert_eq!(lone.complete_to, lone_len());
    }
}
