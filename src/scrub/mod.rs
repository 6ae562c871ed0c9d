//! Scrubbing: no copy of a secret the broker holds leaves it in a response, a header, a
//! log line or a panic message.
//!
//! One Aho-Corasick automaton holds every encoded form of every secret ([`forms`]). It runs
//! over the bytes as they are and over decoding views ([`views`]): percent-decoded,
//! JSON-unescaped and with the line breaks of wrapped base64 left out, and each of those
//! decoded once more, so escaped copies are caught in
//! any mix of escaped and literal characters, also when escaped twice. Every match is
//! masked, overlapping ones included, by overwriting it in place with `*`: lengths stay,
//! so `Content-Length` stays true.
//!
//! Streams are scrubbed chunk by chunk ([`StreamScrubber`]): a chunk's final run of bytes
//! that occur in secrets is held back, as it could be the start of one, so an SSE event,
//! whose blank line can't be part of a secret, is released at once. Held bytes are kept as they arrived and masked only when
//! released, so a match found early never hides a longer one that completes later.

mod body;
mod forms;
mod views;

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::contiguous::NFA;
use aho_corasick::{Input, MatchKind};
use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};

pub use body::{BoxError, ScrubBody};

/// Byte written over every masked byte.
pub const MASK: u8 = b'*';
/// Shortest secret the scrubber accepts: shorter values would mask innocent text.
pub const MIN_SECRET_LEN: usize = 8;
/// How many decoding layers deep copies are looked for (percent inside JSON, and so on).
const VIEW_DEPTH: u8 = 2;

/// The scrubber could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building the scrubber failed: {0}")]
pub struct ScrubError(#[from] aho_corasick::BuildError);

/// A set of secrets to mask, compiled for fast search.
pub struct Scrubber {
    nfa: Option<NFA>,
    /// Lowercased raw and hex forms, for lowercased header names (HTTP lowercases them).
    names: Option<NFA>,
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
            names: None,
            max_len: 0,
            min_len: 0,
            alphabet: [false; 256],
        }
    }

    /// Compile every encoded form of every secret; values shorter than [`MIN_SECRET_LEN`]
    /// are skipped.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Result<Self, ScrubError> {
        let secrets: Vec<&[u8]> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        let patterns: Vec<_> = secrets
            .iter()
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
        // Standard semantics with overlapping search: every match is masked, also where
        // two secrets overlap. `runs` does the prefiltering; aho-corasick's own prefilter, a
        // heuristic that can fall to ~100 MB/s on unlucky text, would only slow it down.
        let nfa = NFA::builder()
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(patterns.iter().map(|p| p.as_slice()))?;
        // Matching lowercased forms in lowercased text is ASCII case-insensitive matching,
        // and builds much faster than `ascii_case_insensitive`, which doubles every letter's
        // transitions.
        let name_patterns: Vec<_> = secrets
            .iter()
            .flat_map(|s| forms::lowercase_forms(s, MIN_SECRET_LEN))
            .collect();
        let names = NFA::builder()
            .match_kind(MatchKind::Standard)
            .build(name_patterns.iter().map(|p| p.as_slice()))?;
        Ok(Scrubber {
            nfa: Some(nfa),
            names: Some(names),
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
        apply(buf, &masks, buf.len())
    }

    /// Whether a header name carries a secret, in any letter case.
    fn name_leaks(&self, name: &[u8]) -> bool {
        let lowercase = if name.iter().any(u8::is_ascii_uppercase) {
            std::borrow::Cow::Owned(name.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        let hit = |nfa: &NFA| {
            nfa.try_find_overlapping_iter(Input::new(&*lowercase))
                .is_ok_and(|mut m| m.next().is_some())
        };
        self.names.as_ref().is_some_and(hit) || {
            let mut masks = Vec::new();
            self.find(name, true, &mut masks);
            !masks.is_empty()
        }
    }

    /// Collect the input ranges to mask; returns the first input position that is not final
    /// (everything from there on could still be the start of a secret).
    fn find(&self, buf: &[u8], at_end: bool, masks: &mut Vec<Range<usize>>) -> usize {
        let Some(nfa) = &self.nfa else {
            return buf.len();
        };
        self.scan_layers(nfa, buf, at_end, masks, &|r| r, &|q| q, VIEW_DEPTH)
    }

    /// Scan `hay` (whose positions map to the input through `to_input`/`pos_to_input`), then
    /// each decoding view of it, `depth` layers deep. A view is only built when it could
    /// change what matches: an escape decodes to a byte some pattern contains, is cut off at
    /// the end, or is a line break after a run of base64, which the line-joining view one
    /// layer down must see (other escapes, `\"`…, can't be part of a match); or a line break
    /// follows a run of base64.
    #[allow(
        clippy::too_many_arguments,
        reason = "the recursion carries the position maps of every layer"
    )]
    fn scan_layers(
        &self,
        nfa: &NFA,
        hay: &[u8],
        at_end: bool,
        masks: &mut Vec<Range<usize>>,
        to_input: &dyn Fn(Range<usize>) -> Range<usize>,
        pos_to_input: &dyn Fn(usize) -> usize,
        depth: u8,
    ) -> usize {
        let mut hold = self.scan(nfa, hay, at_end, masks, to_input, pos_to_input);
        if depth == 0 {
            return hold;
        }
        for view in [
            views::View::Percent,
            views::View::Json,
            views::View::Wrapped,
        ] {
            if !view.matters(hay, &self.alphabet) {
                continue;
            }
            let decoded = view.decode(hay, at_end);
            let inner_to_input = |r: Range<usize>| to_input(decoded.input_range(r.start, r.end));
            let inner_pos = |q: usize| pos_to_input(decoded.input_pos(q));
            hold = hold.min(self.scan_layers(
                nfa,
                &decoded.bytes,
                at_end,
                masks,
                &inner_to_input,
                &inner_pos,
                depth - 1,
            ));
        }
        hold
    }

    /// Search one layer: every match in a long enough run is recorded (as input ranges);
    /// the position of the live tail is returned.
    fn scan(
        &self,
        nfa: &NFA,
        hay: &[u8],
        at_end: bool,
        masks: &mut Vec<Range<usize>>,
        to_input: &dyn Fn(Range<usize>) -> Range<usize>,
        pos_to_input: &dyn Fn(usize) -> usize,
    ) -> usize {
        for run in self.runs(hay) {
            // An overlapping search with standard semantics on an NFA cannot fail.
            let Ok(matches) = nfa.try_find_overlapping_iter(Input::new(hay).range(run)) else {
                continue;
            };
            for m in matches {
                masks.push(to_input(m.range()));
            }
        }
        let live = if at_end {
            hay.len()
        } else {
            self.live_tail(hay)
        };
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

    /// Where the held tail starts: the final run of alphabet bytes, at most one byte short of
    /// the longest pattern, whether or not it begins a secret. Holding only a true prefix of
    /// one would make the release time an oracle: an upstream that echoes the agent's text
    /// and pauses would show, guess by guess, which texts begin a secret.
    ///
    /// The final [`views::WRAPPED_LINE_MIN`] base64 characters are held too: the
    /// line-joining view is only built where a line break follows that many, so when the
    /// next chunk brings the break, the end of a wrapped line must still be there. The final
    /// alphabet run alone can be shorter (a base64 character no pattern contains, or only
    /// short patterns), and a copy split by that wrap would go out unmasked.
    fn live_tail(&self, hay: &[u8]) -> usize {
        let run_start = hay
            .iter()
            .rposition(|&b| !self.alphabet[usize::from(b)])
            .map_or(0, |i| i + 1);
        let alphabet_tail = run_start.max(hay.len().saturating_sub(self.max_len.saturating_sub(1)));
        let base64_start = hay
            .iter()
            .rposition(|b| !views::is_base64(b))
            .map_or(0, |i| i + 1);
        let line_tail = base64_start.max(hay.len().saturating_sub(views::WRAPPED_LINE_MIN));
        alphabet_tail.min(line_tail)
    }

    /// A scrubber for one streamed body.
    pub fn stream(self: &Arc<Self>) -> StreamScrubber {
        StreamScrubber {
            scrubber: Arc::clone(self),
            pending: BytesMut::new(),
            carried: Vec::new(),
        }
    }
}

/// Mask secrets in header values and drop headers whose names carry one (response headers,
/// trailers).
pub fn scrub_headers(scrubber: &Scrubber, headers: &mut http::HeaderMap) {
    if scrubber.is_empty() {
        return;
    }
    let leaking_names: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| scrubber.name_leaks(name.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in leaking_names {
        headers.remove(name);
    }
    let mut masks = Vec::new();
    for value in headers.values_mut() {
        masks.clear();
        scrubber.find(value.as_bytes(), true, &mut masks);
        if masks.is_empty() {
            continue;
        }
        crate::metrics::get().scrub_hits.inc_by(masks.len() as u64);
        let mut bytes = value.as_bytes().to_vec();
        apply(&mut bytes, &masks, usize::MAX);
        *value = http::HeaderValue::from_bytes(&bytes)
            .unwrap_or_else(|_| http::HeaderValue::from_static("[redacted]"));
    }
}

/// Mask the part of each range below `upto`; true if any range was given.
fn apply(buf: &mut [u8], masks: &[Range<usize>], upto: usize) -> bool {
    let limit = upto.min(buf.len());
    for range in masks {
        let end = range.end.min(limit);
        if range.start < end {
            buf[range.start..end].fill(MASK);
        }
    }
    !masks.is_empty()
}

/// Scrubs one body chunk by chunk, holding back a tail that could start a secret.
pub struct StreamScrubber {
    scrubber: Arc<Scrubber>,
    /// Held-back bytes, exactly as they arrived.
    pending: BytesMut,
    /// Masks found earlier that reach into `pending` (relative to its start).
    carried: Vec<Range<usize>>,
}

impl StreamScrubber {
    /// The scrubber this stream uses.
    pub fn scrubber(&self) -> &Scrubber {
        &self.scrubber
    }

    /// Go on with `scrubber`, one built since (after a secret was added or rotated). What is
    /// held back stays valid: a newer scrubber knows every value the older one did (replaced
    /// secrets are kept while the broker runs), so it finds at least the same masks.
    pub fn renew(&mut self, scrubber: Arc<Scrubber>) {
        // An empty scrubber passes chunks through untouched, which would overtake what is
        // held back.
        let overtakes = scrubber.is_empty() && !self.pending.is_empty();
        if !Arc::ptr_eq(&self.scrubber, &scrubber) && !overtakes {
            self.scrubber = scrubber;
        }
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
        let mut masks = std::mem::take(&mut self.carried);
        let ready = self.scrubber.find(&buf, false, &mut masks);
        apply(&mut buf, &masks, ready);
        // A mask reaching past `ready` is carried and counted when it completes.
        let done = masks.iter().filter(|r| r.end <= ready).count();
        if done > 0 {
            crate::metrics::get().scrub_hits.inc_by(done as u64);
        }
        self.carried = masks
            .into_iter()
            .filter(|r| r.end > ready)
            .map(|r| r.start.max(ready) - ready..r.end - ready)
            .collect();
        self.pending = buf.split_off(ready);
        buf.freeze()
    }

    /// The body ended: scrub and return whatever was held back.
    pub fn finish(&mut self) -> Bytes {
        let mut rest = std::mem::take(&mut self.pending);
        let mut masks = std::mem::take(&mut self.carried);
        self.scrubber.find(&rest, true, &mut masks);
        if !masks.is_empty() {
            crate::metrics::get().scrub_hits.inc_by(masks.len() as u64);
        }
        apply(&mut rest, &masks, usize::MAX);
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
mod tests;
