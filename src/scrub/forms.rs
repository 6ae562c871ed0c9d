//! The encoded forms of a secret the scrubber looks for directly. Escaped forms
//! (percent-encoding, JSON escapes) are handled by decoding views instead, so any mix of
//! escaped and literal characters is caught too.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// Characters left out at each end of a secret for its "core" patterns.
const CORE_TRIM: usize = 2;

/// The forms of the whole secret, and of its core (all but [`CORE_TRIM`] characters at each
/// end) when that is still `min_len` long. The core catches a copy whose first or last
/// characters were mangled (e.g. an escaped backslash swallowing the first `\uXXXX`); the
/// whole secret still wins where it is intact, since the longest match is masked.
pub fn all_forms(secret: &[u8], min_len: usize) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = forms(secret);
    if secret.len() >= min_len + 2 * CORE_TRIM {
        out.extend(forms(&secret[CORE_TRIM..secret.len() - CORE_TRIM]));
    }
    out
}

/// Forms that survive lowercasing (header names are lowercased by HTTP), lowercased: the
/// raw value, its core and its hex. Lowercased base64 can't be decoded.
pub fn lowercase_forms(secret: &[u8], min_len: usize) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![
        Zeroizing::new(secret.to_ascii_lowercase()),
        Zeroizing::new(hex(secret, b"0123456789abcdef")),
    ];
    if secret.len() >= min_len + 2 * CORE_TRIM {
        out.push(Zeroizing::new(
            secret[CORE_TRIM..secret.len() - CORE_TRIM].to_ascii_lowercase(),
        ));
    }
    out
}

/// Raw bytes, hex (lower and upper case), and base64/base64url at each of the three byte
/// alignments a secret can have inside a longer encoded string.
fn forms(secret: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let mut out = vec![
        Zeroizing::new(secret.to_vec()),
        Zeroizing::new(hex(secret, b"0123456789abcdef")),
        Zeroizing::new(hex(secret, b"0123456789ABCDEF")),
    ];
    for align in 0..3 {
        let mut shifted = Zeroizing::new(vec![0u8; align]);
        shifted.extend_from_slice(secret);
        // Only characters whose 6 bits all come from the secret are fixed; the ones that
        // straddle the unknown neighbouring bytes (and any padding) are left out.
        let start = (8 * align).div_ceil(6);
        let end = 8 * (align + secret.len()) / 6;
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let encoded = Zeroizing::new(engine.encode(&*shifted).into_bytes());
            if end > start {
                out.push(Zeroizing::new(encoded[start..end].to_vec()));
            }
        }
    }
    out.sort_unstable_by(|a, b| a.as_slice().cmp(b.as_slice()));
    out.dedup_by(|a, b| a.as_slice() == b.as_slice());
    out
}

fn hex(bytes: &[u8], digits: &[u8; 16]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn every_alignment_of_base64_and_base64url_contains_a_form() {
        let secret = b"sk-test/abc+def?~~>>";
        let forms = forms(secret);
        for prefix_len in 0..6 {
            for suffix_len in 0..4 {
                let mut data = vec![0xA5u8; prefix_len];
                data.extend_from_slice(secret);
                data.extend(std::iter::repeat_n(0x5Au8, suffix_len));
                for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&data);
                    assert!(
                        forms.iter().any(|f| contains(encoded.as_bytes(), f)),
                        "prefix {prefix_len} suffix {suffix_len}: {encoded}"
                    );
                }
            }
        }
    }

    #[test]
    fn hex_in_both_cases_and_the_raw_value_are_forms() {
        let forms = forms(b"Key-1");
        for expected in [&b"Key-1"[..], b"4b65792d31", b"4B65792D31"] {
            assert!(forms.iter().any(|f| f.as_slice() == expected));
        }
    }
}
