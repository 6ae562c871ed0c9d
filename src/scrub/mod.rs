//! Scrubbing: no copy of a secret the broker holds leaves it in a response, a header, a
//! log line or a panic message.
//!
//! One Aho-Corasick automaton holds every encoded form of every secret ([`forms`]). It runs
//! over the bytes as they are and over two decoding views ([`views`]): percent-decoded and
//! JSON-unescaped, so escaped copies are caught in any mix of escaped and literal
//! characters. A match is overwritten in place with `*` of the same length, so
//! `Content-Length` stays true.
//!
//! Streams are scrubbed chunk by chunk ([`StreamScrubber`]): only a tail that could still be
//! the start of a secret is held back, so an SSE event is released as soon as its last byte
//! can no longer begin a match.

mod body;
mod forms;
mod views;

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Anchored, Input, MatchKind};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

pub use body::{BoxError, ScrubBody};

/// Byte written over every masked byte.
pub const MASK: u8 = b'*';
/// Shortest secret the scrubber accepts: shorter values would mask innocent text.
pub const MIN_SECRET_LEN: usize = 8;

/// The scrubber could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the scrubber failed: {0}")]
pub struct ScrubError(#[from] aho_corasick::BuildError);

/// A set of secrets to mask, compiled for fast search.
pub struct Scrubber {
    nfa: Option<NFA>,
    /// Length of the longest pattern, in (decoded) bytes.
    max_len: usize,
    /// Length of the shortest pattern.
    min_len: usize,
    /// Bytes that occur in some pattern. A match lies inside a run of them at least
    /// `min_len` long, so only such runs are searched: ordinary text, where spaces and
    /// punctuation break runs every few bytes, is skipped at table-lookup speed.
    alphabet: [bool; 256],
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl Default for Scrubber {
    fn default() -> Self {
        Scrubber::empty()
    }
}

impl Scrubber {
    /// A scrubber that masks nothing.
    pub fn empty() -> Self {
        Scrubber {
            nfa: None,
            max_len: 0,
            min_len: 0,
            alphabet: [false; 256],
        }
    }

    /// Compile every encoded form of every secret; values shorter than [`MIN_SECRET_LEN`]
    /// are skipped.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, ScrubError> {
        let patterns: Vec<_> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .flat_map(|s| forms::all_forms(s, MIN_SECRET_LEN))
            .collect();
        if patterns.is_empty() {
            return Ok(Scrubber::empty());
        }
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let min_len = patterns.iter().map(|p| p.len()).min().unwrap_or(0);
        let mut alphabet = [false; 256];
        for &b in patterns.iter().flat_map(|p| p.iter()) {
            alphabet[usize::from(b)] = true;
        }
        // `runs` does the prefiltering; aho-corasick's own prefilter, a heuristic that can
        // fall to ~100 MB/s on unlucky text, would only slow things down on top of it.
        let nfa = NFA::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .prefilter(false)
            .build(patterns.iter().map(|p| p.as_slice()))?;
        Ok(Scrubber {
            nfa: Some(nfa),
            max_len,
            min_len,
            alphabet,
        })
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.nfa.is_none()
    }

    /// Mask every secret in a complete buffer (a header value, a log line); true if any was.
    pub fn scrub_all(&self, buf: &mut [u8]) -> bool {
        let mut masks = Vec::new();
        self.find(buf, true, &mut masks);
        apply(buf, &masks)
    }

    /// Mask what is certain in a buffer that more bytes may follow, and return how many
    /// leading bytes are final: the rest could still be the start of a secret.
    fn scrub_prefix(&self, buf: &mut [u8]) -> usize {
        let mut masks = Vec::new();
        let hold = self.find(buf, false, &mut masks);
        apply(buf, &masks);
        hold
    }

    /// Collect the input ranges to mask; returns the first input position that is not final.
    fn find(&self, buf: &[u8], at_end: bool, masks: &mut Vec<Range<usize>>) -> usize {
        let Some(nfa) = &self.nfa else {
            return buf.len();
        };
        let mut hold = self.scan(nfa, buf, at_end, masks, |q| q, |r| r);
        // A view is only built when an escape in the buffer decodes to a byte some pattern
        // contains (or is cut off at the end); other escapes (`\n`, `\"`…) can't be in a match.
        if views::percent_matters(buf, &self.alphabet) {
            let view = views::percent(buf, at_end);
            hold = hold.min(self.scan_view(nfa, &view, at_end, masks));
        }
        if views::json_matters(buf, &self.alphabet) {
            let view = views::json(buf, at_end);
            hold = hold.min(self.scan_view(nfa, &view, at_end, masks));
        }
        hold
    }

    fn scan_view(
        &self,
        nfa: &NFA,
        view: &views::Decoded,
        at_end: bool,
        masks: &mut Vec<Range<usize>>,
    ) -> usize {
        self.scan(
            nfa,
            &view.bytes,
            at_end,
            masks,
            |q| view.input_pos(q),
            |r| view.input_range(r.start, r.end),
        )
    }

    /// Search `hay` (the input or a view of it). Matches that start before the live tail are
    /// final and recorded via `to_input`; the live tail's input position is returned.
    fn scan(
        &self,
        nfa: &NFA,
        hay: &[u8],
        at_end: bool,
        masks: &mut Vec<Range<usize>>,
        pos_to_input: impl Fn(usize) -> usize,
        to_input: impl Fn(Range<usize>) -> Range<usize>,
    ) -> usize {
        let live = if at_end {
            hay.len()
        } else {
            self.live_tail(nfa, hay)
        };
        for run in self.runs(hay).take_while(|run| run.start < live) {
            // Leftmost-longest search on an unanchored NFA cannot fail.
            let Ok(matches) = nfa.try_find_iter(Input::new(hay).range(run)) else {
                continue;
            };
            for m in matches.take_while(|m| m.start() < live) {
                masks.push(to_input(m.range()));
            }
        }
        pos_to_input(live)
    }

    /// Maximal runs of alphabet bytes long enough to hold a pattern, in order.
    ///
    /// Only every `min_len`-th byte is probed: a run that long must cover a probe, and a
    /// probe outside the alphabet skips `min_len` bytes at once.
    fn runs<'h>(&'h self, hay: &'h [u8]) -> impl Iterator<Item = Range<usize>> + 'h {
        let in_alphabet = |b: &u8| self.alphabet[usize::from(*b)];
        let step = self.min_len.max(1);
        let mut probe = step - 1;
        let mut searched_to = 0;
        std::iter::from_fn(move || {
            while probe < hay.len() {
                if !in_alphabet(&hay[probe]) {
                    probe += step;
                    continue;
                }
                let start = hay[searched_to..probe]
                    .iter()
                    .rposition(|b| !in_alphabet(b))
                    .map_or(searched_to, |i| searched_to + i + 1);
                let end = hay[probe..]
                    .iter()
                    .position(|b| !in_alphabet(b))
                    .map_or(hay.len(), |i| probe + i);
                searched_to = end;
                probe = end + step;
                if end - start >= self.min_len {
                    return Some(start..end);
                }
            }
            None
        })
    }

    /// The earliest position whose remaining bytes are a prefix of some pattern: from there
    /// on, a match may still complete with the next chunk. Only the final run of alphabet
    /// bytes can be such a prefix.
    fn live_tail(&self, nfa: &NFA, hay: &[u8]) -> usize {
        let run_start = hay
            .iter()
            .rposition(|&b| !self.alphabet[usize::from(b)])
            .map_or(0, |i| i + 1);
        let from = run_start.max(hay.len().saturating_sub(self.max_len.saturating_sub(1)));
        (from..hay.len())
            .find(|&q| {
                let Ok(mut state) = nfa.start_state(Anchored::Yes) else {
                    return true;
                };
                hay[q..].iter().all(|&b| {
                    state = nfa.next_state(Anchored::Yes, state, b);
                    !nfa.is_dead(state)
                })
            })
            .unwrap_or(hay.len())
    }

    /// A scrubber for one streamed body.
    pub fn stream(self: &Arc<Self>) -> StreamScrubber {
        StreamScrubber {
            scrubber: Arc::clone(self),
            pending: BytesMut::new(),
        }
    }
}

/// Mask secrets in header values (response headers, trailers).
pub fn scrub_headers(scrubber: &Scrubber, headers: &mut http::HeaderMap) {
    if scrubber.is_empty() {
        return;
    }
    let mut masks = Vec::new();
    for value in headers.values_mut() {
        masks.clear();
        scrubber.find(value.as_bytes(), true, &mut masks);
        if masks.is_empty() {
            continue;
        }
        let mut bytes = value.as_bytes().to_vec();
        apply(&mut bytes, &masks);
        *value = http::HeaderValue::from_bytes(&bytes)
            .unwrap_or_else(|_| http::HeaderValue::from_static("[redacted]"));
    }
}

fn apply(buf: &mut [u8], masks: &[Range<usize>]) -> bool {
    for range in masks {
        buf[range.clone()].fill(MASK);
    }
    !masks.is_empty()
}

/// Scrubs one body chunk by chunk, holding back only a possible start of a secret.
pub struct StreamScrubber {
    scrubber: Arc<Scrubber>,
    pending: BytesMut,
}

impl StreamScrubber {
    /// The scrubber this stream uses.
    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// Feed a chunk; returns the bytes that are now final (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.scrubber.is_empty() {
            return chunk;
        }
        let mut buf = if self.pending.is_empty() {
            // Usually the only reference: scrubbed in place, no copy.
            chunk
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
        } else {
            let mut held = std::mem::take(&mut self.pending);
            held.extend_from_slice(&chunk);
            held
        };
        let ready = self.scrubber.scrub_prefix(&mut buf);
        self.pending = buf.split_off(ready);
        buf.freeze()
    }

    /// The body ended: scrub and return whatever was held back.
    pub fn finish(&mut self) -> Bytes {
        let mut rest = std::mem::take(&mut self.pending);
        self.scrubber.scrub_all(&mut rest);
        rest.freeze()
    }
}

/// The scrubber in force, swapped atomically when secrets are added, rotated or removed.
#[derive(Debug)]
pub struct Redactor {
    current: ArcSwap<Scrubber>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            current: ArcSwap::from_pointee(Scrubber::empty()),
        }
    }
}

impl Redactor {
    /// The scrubber in force now.
    pub fn load(&self) -> Arc<Scrubber> {
        self.current.load_full()
    }

    /// Put a new scrubber in force.
    pub fn set(&self, scrubber: Arc<Scrubber>) {
        self.current.store(scrubber);
    }

    /// Redact text the broker itself writes (logs, panics): secrets are masked and agent
    /// tokens cut to a short prefix.
    pub fn redact_text(&self, text: &[u8]) -> Vec<u8> {
        let mut out = crate::tokens::redact_tokens(text);
        self.current.load().scrub_all(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use bytes::Bytes;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"sk-proj-S3cr3t/Value+With=Special~Chars";

    fn scrubber() -> Arc<Scrubber> {
        Arc::new(Scrubber::new([SECRET, b"ghp_second_secret_value".as_slice()]).unwrap())
    }

    fn stream_through(s: &Arc<Scrubber>, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut st = s.stream();
        let mut out = Vec::new();
        let mut last = 0;
        for &cut in cuts {
            out.extend_from_slice(&st.push(Bytes::copy_from_slice(&body[last..cut])));
            last = cut;
        }
        out.extend_from_slice(&st.push(Bytes::copy_from_slice(&body[last..])));
        out.extend_from_slice(&st.finish());
        out
    }

    /// Every form the issue names, as a reflecting upstream would write it.
    fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
        let mut out = vec![secret.to_vec()];
        for prefix in [&b""[..], b"x", b"xy"] {
            let data = [prefix, secret, b"tail"].concat();
            out.push(STANDARD.encode(&data).into_bytes());
            out.push(URL_SAFE.encode(&data).into_bytes());
            out.push(URL_SAFE_NO_PAD.encode(&data).into_bytes());
        }
        out.push(
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        );
        out.push(
            secret
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        );
        out.push(
            secret
                .iter()
                .map(|b| format!("%{b:02X}"))
                .collect::<String>()
                .into_bytes(),
        );
        out.push(
            secret
                .iter()
                .map(|b| format!("%{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        );
        let reserved: String = secret
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        out.push(reserved.into_bytes());
        out.push(
            secret
                .iter()
                .map(|b| format!("\\u{b:04x}"))
                .collect::<String>()
                .into_bytes(),
        );
        out.push(
            secret
                .iter()
                .map(|b| format!("\\u{b:04X}"))
                .collect::<String>()
                .into_bytes(),
        );
        out.push(
            String::from_utf8_lossy(secret)
                .replace('/', "\\/")
                .into_bytes(),
        );
        out
    }

    fn leaks(out: &[u8]) -> bool {
        let decoded_b64 = |s: &[u8]| {
            [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
            ]
            .iter()
            .any(|e| {
                e.decode(s)
                    .is_ok_and(|d| d.windows(SECRET.len()).any(|w| w == SECRET))
            })
        };
        encodings(SECRET)
            .iter()
            .any(|form| out.windows(form.len()).any(|w| w == form.as_slice()))
            || decoded_b64(out)
    }

    #[test]
    fn every_encoding_is_masked_with_the_same_length() {
        let s = scrubber();
        for form in encodings(SECRET) {
            let body = [&b"{\"echo\": \""[..], &form, b"\", \"ok\": true}"].concat();
            let mut scrubbed = body.clone();
            assert!(
                s.scrub_all(&mut scrubbed),
                "{}",
                String::from_utf8_lossy(&form)
            );
            assert_eq!(scrubbed.len(), body.len());
            assert!(!leaks(&scrubbed), "{}", String::from_utf8_lossy(&scrubbed));
            assert!(
                scrubbed.starts_with(b"{\"echo\": \"") && scrubbed.ends_with(b"\", \"ok\": true}")
            );
        }
    }

    #[test]
    fn an_sse_event_is_released_as_soon_as_it_cannot_start_a_secret() {
        let s = scrubber();
        let mut st = s.stream();
        assert_eq!(
            st.push(Bytes::from_static(b"data: {\"a\":1}\n\n")).as_ref(),
            b"data: {\"a\":1}\n\n"
        );
        // `sk-pr` could begin the secret: it waits for the next chunk.
        assert_eq!(
            st.push(Bytes::from_static(b"data: sk-pr")).as_ref(),
            b"data: "
        );
        let rest = st.push(Bytes::from_static(
            b"oj-S3cr3t/Value+With=Special~Chars\n\n",
        ));
        let expected = [vec![MASK; SECRET.len()], b"\n\n".to_vec()].concat();
        assert_eq!(rest.as_ref(), expected.as_slice());
        assert_eq!(st.finish().len(), 0);
    }

    #[test]
    fn text_redaction_cuts_tokens_and_masks_secrets() {
        let r = Redactor::default();
        r.set(Arc::new(Scrubber::new([SECRET]).unwrap()));
        let token = crate::tokens::generate("openai");
        let line = format!(
            "auth {} key {}",
            secrecy::ExposeSecret::expose_secret(&token),
            String::from_utf8_lossy(SECRET)
        );
        let out = String::from_utf8(r.redact_text(line.as_bytes())).unwrap();
        assert!(
            !out.contains(secrecy::ExposeSecret::expose_secret(&token)),
            "{out}"
        );
        assert!(out.contains(&crate::tokens::hint_of(&token)), "{out}");
        assert!(!out.contains("S3cr3t"), "{out}");
    }

    #[test]
    fn a_copy_with_a_mangled_first_character_is_still_masked() {
        // An escaped backslash swallows the first `\u0073`: a JSON reader gets the secret
        // minus its first character, so the core patterns must catch it.
        let escaped: String = SECRET.iter().map(|b| format!("\\u{b:04x}")).collect();
        let mut body = format!("{{\"x\":\"\\\\{escaped}\"}}").into_bytes();
        assert!(scrubber().scrub_all(&mut body));
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let seen = parsed["x"].as_str().unwrap();
        assert!(!seen.contains("S3cr3t/Value+With=Special"), "{seen}");
    }

    #[test]
    fn short_values_are_not_scrubbed_and_no_secrets_means_no_change() {
        assert!(Scrubber::new([b"short".as_slice()]).unwrap().is_empty());
        let mut body = b"anything at all".to_vec();
        assert!(!Scrubber::empty().scrub_all(&mut body));
    }

    proptest! {
        #[test]
        fn secrets_at_random_offsets_and_cuts_are_always_masked(
            noise in proptest::collection::vec(any::<u8>(), 0..400),
            form_index in 0usize..20,
            at in 0usize..400,
            cuts in proptest::collection::vec(0usize..500, 0..6),
        ) {
            let forms = encodings(SECRET);
            let form = &forms[form_index % forms.len()];
            let at = at.min(noise.len());
            let body = [&noise[..at], form.as_slice(), &noise[at..]].concat();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            let out = stream_through(&scrubber(), &body, &cuts);
            prop_assert_eq!(out.len(), body.len());
            prop_assert!(!leaks(&out));
        }

        #[test]
        fn bodies_without_secrets_pass_byte_for_byte(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            prop_assert_eq!(stream_through(&scrubber(), &body, &cuts), body);
        }

        #[test]
        fn streaming_equals_scrubbing_the_whole_body(
            text in "[a-zA-Z0-9%\\\\/+=_ ~-]{0,300}",
            insert in 0usize..300,
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let at = insert.min(text.len());
            let body = [&text.as_bytes()[..at], SECRET, &text.as_bytes()[at..]].concat();
            let mut whole = body.clone();
            scrubber().scrub_all(&mut whole);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
            cuts.sort_unstable();
            prop_assert_eq!(stream_through(&scrubber(), &body, &cuts), whole);
        }
    }
}
