//! Scrubber tests: every form, streaming against whole-buffer scrubbing, and the bypasses
//! a review found (kept as regressions).

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
        assert!(scrubbed.starts_with(b"{\"echo\": \"") && scrubbed.ends_with(b"\", \"ok\": true}"));
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
    // `sk-pr` could begin a secret: it waits for the next chunk.
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
fn what_is_held_back_does_not_tell_whether_it_begins_a_secret() {
    let s = scrubber();
    // Each guess is a run of bytes that occur in the secrets' forms; only the first one
    // begins a secret, yet all of them are held alike until more arrives.
    for guess in [
        &b"sk-proj-S3"[..],
        b"sk-proj-S4",
        b"Value+With",
        b"abcdef0123",
    ] {
        let mut st = s.stream();
        let mut chunk = b"echo: ".to_vec();
        chunk.extend_from_slice(guess);
        assert_eq!(st.push(Bytes::from(chunk)).as_ref(), b"echo: ", "{guess:?}");
        assert_eq!(st.finish().as_ref(), guess);
    }
}

/// The base64 of `offset` dots, `secret` and `after`, in lines of `width` characters (as PEM
/// and MIME wrap it).
fn base64_lines(offset: usize, secret: &[u8], after: &[u8], width: usize) -> Vec<String> {
    use base64::engine::general_purpose::STANDARD;
    let data = [&vec![b'.'; offset][..], secret, after].concat();
    STANDARD
        .encode(data)
        .as_bytes()
        .chunks(width)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[test]
fn wrapped_base64_is_masked_at_every_offset_and_width() {
    let s = scrubber();
    for width in [64, 76] {
        for offset in 0..width {
            let lines = base64_lines(offset, SECRET, b" and more text after the secret", width);
            for newline in ["\n", "\r\n"] {
                let body = format!(
                    "-----BEGIN X-----\n{}\n-----END X-----\n",
                    lines.join(newline)
                );
                let cut = body.len() / 2;
                let out = stream_through(&s, body.as_bytes(), &[cut]);
                assert_eq!(out.len(), body.len());
                // Every base64 character the secret alone determines is masked.
                let joined: Vec<u8> = out
                    .iter()
                    .filter(|b| !matches!(b, b'\r' | b'\n'))
                    .copied()
                    .collect();
                let at = "-----BEGIN X-----".len();
                let (start, end) = ((8 * offset).div_ceil(6), 8 * (offset + SECRET.len()) / 6);
                assert!(
                    joined[at + start..at + end].iter().all(|&b| b == MASK),
                    "width {width}, offset {offset}: {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
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

fn sc(secrets: &[&[u8]]) -> Arc<Scrubber> {
    Arc::new(Scrubber::new(secrets.iter().copied()).unwrap())
}

fn whole(s: &Scrubber, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    s.scrub_all(&mut b);
    b
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

fn json_unescape(b: &[u8]) -> Vec<u8> {
    serde_json::from_str::<String>(&format!("\"{}\"", String::from_utf8_lossy(b)))
        .unwrap()
        .into_bytes()
}

fn pct(b: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(b).collect()
}

#[test]
fn percent_inside_json_is_decoded_too() {
    let body =
        br#"{"next":"https:\/\/api.x\/v1?key=sk-proj-S3cr3t\/Value%2BWith%3DSpecial~Chars&p=2"}"#;
    let out = whole(&sc(&[SECRET]), body);
    assert!(
        !contains(&pct(&json_unescape(&out[9..out.len() - 2])), SECRET),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn double_percent_and_double_json_are_decoded_too() {
    let body =
        b"redirect=https%3A%2F%2Fx%2Fcb%3Fk%3Dsk-proj-S3cr3t%252FValue%252BWith%253DSpecial~Chars";
    let out = whole(&sc(&[SECRET]), body);
    assert!(
        !contains(&pct(&pct(&out)), SECRET),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let body = br#"{"error":{"message":"{\"detail\":\"bad key sk-proj-S3cr3t\\\/Value+With=Special~Chars\"}"}}"#;
    let out = whole(&sc(&[SECRET]), body);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let inner: serde_json::Value =
        serde_json::from_str(v["error"]["message"].as_str().unwrap()).unwrap();
    assert!(
        !inner["detail"].as_str().unwrap().contains("S3cr3t/Value"),
        "{inner}"
    );
}

#[test]
fn overlapping_secrets_are_both_masked() {
    let a: &[u8] = b"AAAAAAAAAAAA-shared";
    let b: &[u8] = b"shared-BBBBBBBBBBBBBBBBBBBB";
    let out = whole(
        &sc(&[a, b]),
        b"x AAAAAAAAAAAA-shared-BBBBBBBBBBBBBBBBBBBB y",
    );
    assert_eq!(out, [b"x ".as_slice(), &[MASK; 40], b" y"].concat());
}

#[test]
fn header_names_that_carry_a_secret_are_dropped_in_any_case() {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::HeaderName::from_bytes(b"x-sk-proj-abcdefghijklmnop").unwrap(),
        http::HeaderValue::from_static("1"),
    );
    h.insert("x-kept", http::HeaderValue::from_static("1"));
    scrub_headers(&sc(&[b"sk-proj-ABCDEFGHIJKLMNOP"]), &mut h);
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
}

#[test]
fn names_match_the_raw_core_and_hex_forms_in_any_letter_case() {
    let secret = b"sk-proj-AbCdEfGhIjKlMnOp";
    let s = sc(&[secret]);
    let upper_hex: String = secret.iter().map(|b| format!("{b:02X}")).collect();
    for name in [
        "x-SK-PROJ-abcdefghijklmnop".to_owned(),
        "x--PROJ-ABCDEFGHIJKLMN-y".to_owned(),
        format!("x-{upper_hex}"),
        format!("x-{}", upper_hex.to_lowercase()),
    ] {
        assert!(s.name_leaks(name.as_bytes()), "{name}");
    }
    assert!(!s.name_leaks(b"X-Request-Id"));
    assert!(!s.name_leaks(b"sk-proj-AbCdEf"));
}

#[test]
fn a_match_found_early_never_hides_a_longer_one_completing_later() {
    let esc = br#"{"k":"\u0073\u006b-proj-S3cr3t/Value+With=Special~Chars"}"#;
    let s = sc(&[SECRET]);
    assert_eq!(stream_through(&s, esc, &[esc.len() - 3]), whole(&s, esc));
    let a: &[u8] = b"org/team-deploy-key:ghp_second_secret_value#x9";
    let b: &[u8] = b"ghp_second_secret_value";
    let body = br#"{"k":"org\/team-deploy-key:ghp_second_secret_value#x9"}"#;
    let s = sc(&[a, b]);
    let out = stream_through(&s, body, &[body.len() - 4]);
    assert_eq!(out, whole(&s, body));
    assert!(
        !contains(&out, b"team-deploy"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_lone_high_surrogate_does_not_hold_an_sse_event() {
    let s = sc(&[SECRET]);
    let mut st = s.stream();
    let event = b"data: {\"t\":\"\\ud83d\"}\n\n";
    assert_eq!(st.push(Bytes::from_static(event)).as_ref(), event);
}

/// Each character of a secret written literally, as `%XX`, `%xx`, `\u00XX` or (for `/`) `\/`.
fn render(secret: &[u8], modes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &c) in secret.iter().enumerate() {
        match modes[i % modes.len()] % 5 {
            0 => out.push(c),
            1 => out.extend(format!("%{c:02X}").bytes()),
            2 => out.extend(format!("%{c:02x}").bytes()),
            3 => out.extend(format!("\\u{c:04x}").bytes()),
            _ if c == b'/' => out.extend(b"\\/"),
            _ => out.push(c),
        }
    }
    out
}

proptest! {
    #[test]
    fn mixed_escapes_stream_like_the_whole_body_and_never_leak_the_core(
        pre in "[a-zA-Z0-9%\\\\/+=_ ~\"u-]{0,60}",
        post in "[a-zA-Z0-9%\\\\/+=_ ~\"u-]{0,60}",
        modes in proptest::collection::vec(0u8..5, 1..8),
        second in any::<bool>(),
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        let secret: &[u8] = if second { b"ghp_second_secret_value" } else { SECRET };
        let body = [pre.as_bytes(), &render(secret, &modes), post.as_bytes()].concat();
        let s = scrubber();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
        cuts.sort_unstable();
        let streamed = stream_through(&s, &body, &cuts);
        prop_assert_eq!(&streamed, &whole(&s, &body));
        prop_assert!(!contains(&streamed, &secret[2..secret.len() - 2]));
    }

    #[test]
    fn secrets_full_of_escape_characters_are_masked_in_every_form(
        noise in proptest::collection::vec(prop_oneof![Just(b'%'), Just(b'\\'), Just(b'u'), Just(b'0'), Just(b'"'), any::<u8>()], 0..80),
        at in 0usize..80,
        form in 0usize..6,
        cuts in proptest::collection::vec(0usize..400, 0..8),
    ) {
        use base64::engine::general_purpose::STANDARD;
        let secret: &[u8] = br#"pa%41ss\u0041w"rd\x/+=%"#;
        let forms = [
            secret.to_vec(),
            secret.iter().map(|b| format!("%{b:02X}")).collect::<String>().into_bytes(),
            secret.iter().map(|b| format!("\\u{b:04x}")).collect::<String>().into_bytes(),
            serde_json::to_string(std::str::from_utf8(secret).unwrap()).unwrap().trim_matches('"').replace('/', "\\/").into_bytes(),
            secret.iter().map(|b| format!("{b:02x}")).collect::<String>().into_bytes(),
            STANDARD.encode([b"x".as_slice(), secret].concat()).into_bytes(),
        ];
        let form = &forms[form];
        let at = at.min(noise.len());
        let body = [&noise[..at], form.as_slice(), &noise[at..]].concat();
        let s = sc(&[secret]);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
        cuts.sort_unstable();
        let streamed = stream_through(&s, &body, &cuts);
        prop_assert_eq!(&streamed, &whole(&s, &body));
        prop_assert!(!contains(&streamed, form));
    }
}

/// Wrapped base64 inside a JSON string (a MIME part or PEM, its line breaks escaped as
/// `\r\n`) or a form field (`%0D%0A`): the escaped line breaks must be decoded for the
/// line-joining view to see the lines as one, though they are no part of any pattern.
#[test]
fn wrapped_base64_behind_escaped_line_breaks_is_masked() {
    use base64::engine::general_purpose::STANDARD;
    let s = scrubber();
    let found = |text: &str| {
        let joined: String = text.lines().skip(2).collect();
        STANDARD.decode(joined).is_ok_and(|d| contains(&d, SECRET))
    };
    for offset in 0..76 {
        let lines = base64_lines(offset, SECRET, b" and more text after the secret", 76);
        let mime = format!(
            "Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            lines.join("\r\n")
        );
        assert!(found(&mime), "the test body carries the secret");
        let json = serde_json::to_vec(&serde_json::json!({ "raw": mime })).unwrap();
        for cuts in [&[][..], &[json.len() / 2]] {
            let out = stream_through(&s, &json, cuts);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert!(!found(v["raw"].as_str().unwrap()), "offset {offset}: {v}");
        }
        let form = mime.replace("\r\n", "%0D%0A");
        let out = whole(&s, form.as_bytes());
        assert!(
            !found(&String::from_utf8(pct(&out)).unwrap()),
            "offset {offset}: {}",
            String::from_utf8_lossy(&out)
        );
    }
}

/// A chunk ending at (or just after) the end of a wrapped base64 line held back only the
/// line's final run of alphabet bytes: with a base64 character no pattern contains before
/// it (likely with a short secret, whose forms use few characters), fewer than 16 base64
/// characters were left before the break for the line-joining view, and a copy split by
/// that wrap went out unmasked.
#[test]
fn wrapped_base64_of_a_short_secret_is_masked_when_a_chunk_ends_at_a_line_end() {
    use base64::engine::general_purpose::STANDARD;
    for (secret, width) in [b"Zq8#kL2!", SECRET]
        .into_iter()
        .flat_map(|secret| [16, 20, 64, 76].map(|width| (secret, width)))
    {
        let s = sc(&[secret]);
        let found = |out: Vec<u8>| {
            let joined: String = String::from_utf8(out).unwrap().lines().collect();
            STANDARD.decode(joined).is_ok_and(|d| contains(&d, secret))
        };
        for offset in 0..width {
            let lines = base64_lines(offset, secret, b"..", width);
            let body = format!("{}\n", lines.join("\n"));
            for (at, _) in body.match_indices('\n') {
                for cut in [at, at + 1].into_iter().filter(|&c| c < body.len()) {
                    let out = stream_through(&s, body.as_bytes(), &[cut]);
                    assert!(!found(out), "width {width}, offset {offset}, cut {cut}");
                }
            }
        }
    }
}

/// Adversarial properties over random secrets: the reference decoders below are written
/// independently of `views`, so a decoding mistake there can't hide a leak here.
mod props {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

    fn b64_char(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
    }

    /// Whether any base64 or base64url run of `out`, read from any of its 4 starting
    /// positions, decodes to bytes holding `secret`.
    fn base64_reveals(out: &[u8], secret: &[u8]) -> bool {
        out.split(|b| !b64_char(*b)).any(|run| {
            let std: Vec<u8> = run
                .iter()
                .map(|&b| match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    other => other,
                })
                .collect();
            (0..4).any(|shift| {
                let part = std.get(shift..).unwrap_or_default();
                let part = &part[..part.len() - part.len() % 4];
                STANDARD.decode(part).is_ok_and(|d| contains(&d, secret))
            })
        })
    }

    fn percent_decoded(b: &[u8]) -> Vec<u8> {
        percent_encoding::percent_decode(b).collect()
    }

    /// A JSON-unescaping of `b` as a lenient reader would do it: simple escapes and
    /// `\uXXXX` (outside surrogates) decoded, anything else literal.
    fn json_decoded(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let unit = b
                .get(i + 2..i + 6)
                .and_then(|d| u32::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok())
                .and_then(char::from_u32);
            match (b[i], b.get(i + 1)) {
                (b'\\', Some(b'u')) if unit.is_some() => {
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(
                        unit.unwrap_or_default().encode_utf8(&mut utf8).as_bytes(),
                    );
                    i += 6;
                }
                (b'\\', Some(&c @ (b'/' | b'\\' | b'"'))) => {
                    out.push(c);
                    i += 2;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        out
    }

    /// Whether `out` holds `secret` in a form the README promises to mask.
    fn reveals(out: &[u8], secret: &[u8]) -> bool {
        let hex_lower: Vec<u8> = secret
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        let hex_upper = hex_lower.to_ascii_uppercase();
        let (pct, json) = (percent_decoded(out), json_decoded(out));
        [
            percent_decoded(&pct),
            json_decoded(&pct),
            percent_decoded(&json),
            json_decoded(&json),
            pct,
            json,
            out.to_vec(),
        ]
        .iter()
        .any(|view| {
            contains(view, secret)
                || contains(view, &hex_lower)
                || contains(view, &hex_upper)
                || base64_reveals(view, secret)
        })
    }

    /// Secrets: printable ASCII including the characters escapes are made of.
    fn secret() -> impl Strategy<Value = Vec<u8>> {
        "[A-Za-z0-9%/+=_~.\\\\\"-]{8,28}".prop_map(String::into_bytes)
    }

    /// One to three secrets, the second optionally a prefix of the first.
    fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
        (
            proptest::collection::vec(secret(), 1..4),
            any::<bool>(),
            8usize..28,
        )
            .prop_map(|(mut all, prefix, len)| {
                if prefix && all[0].len() > 8 {
                    all.push(all[0][..len.min(all[0].len() - 1).max(8)].to_vec());
                }
                all
            })
    }

    fn random_case(text: &[u8], cases: &[bool]) -> Vec<u8> {
        text.iter()
            .zip(cases.iter().cycle())
            .map(|(&b, &up)| {
                if up {
                    b.to_ascii_uppercase()
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect()
    }

    /// `secret` written in form `form`, with `pad` and `bits` choosing the variations.
    fn render(secret: &[u8], form: u8, pad: &[u8], bits: &[bool]) -> Vec<u8> {
        let hex = |upper: bool| -> Vec<u8> {
            secret
                .iter()
                .flat_map(|b| {
                    if upper {
                        format!("{b:02X}")
                    } else {
                        format!("{b:02x}")
                    }
                    .into_bytes()
                })
                .collect()
        };
        match form {
            0 => secret.to_vec(),
            1 => hex(false),
            2 => hex(true),
            // Base64 of the secret inside a longer encoded string, at every alignment.
            3..=6 => {
                let engine = [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
                    [usize::from(form - 3)];
                let before = &pad[..pad.len() % 4];
                let after = &pad[pad.len() % 4..];
                engine.encode([before, secret, after].concat()).into_bytes()
            }
            // Percent-encoded, each byte escaped or not, in either hex case.
            7 => secret
                .iter()
                .zip(bits.iter().cycle())
                .enumerate()
                .flat_map(|(i, (&b, &esc))| {
                    if esc || !b.is_ascii_alphanumeric() {
                        random_case(format!("%{b:02X}").as_bytes(), &bits[i % bits.len()..])
                    } else {
                        vec![b]
                    }
                })
                .collect(),
            // Base64 inside a longer base64 string, in a URL query (`+/=` percent-encoded) or
            // in JSON written with `\/`.
            12 | 13 => {
                let before = &pad[..pad.len() % 4];
                let after = &pad[pad.len() % 4..];
                let encoded = STANDARD.encode([before, secret, after].concat());
                let escaped = if form == 12 {
                    encoded
                        .replace('+', "%2B")
                        .replace('/', "%2F")
                        .replace('=', "%3D")
                } else {
                    encoded.replace('/', "\\/")
                };
                escaped.into_bytes()
            }
            // Percent-encoded twice, as a URL carried in another URL's query.
            9 => secret
                .iter()
                .flat_map(|b| format!("%25{b:02X}").into_bytes())
                .collect(),
            // JSON in a JSON string: every character `\uXXXX`, its backslash escaped.
            10 => secret
                .iter()
                .flat_map(|b| format!("\\\\u{b:04x}").into_bytes())
                .collect(),
            // Percent-encoded, then JSON-escaped with `\u` for every character.
            11 => secret
                .iter()
                .flat_map(|b| format!("%{b:02X}").into_bytes())
                .flat_map(|b| format!("\\u{b:04x}").into_bytes())
                .collect(),
            // JSON-escaped as a serializer writes it, and `\uXXXX` for any character.
            _ => secret
                .iter()
                .zip(bits.iter().cycle())
                .enumerate()
                .flat_map(|(i, (&b, &esc))| match b {
                    b'"' => b"\\\"".to_vec(),
                    b'\\' => b"\\\\".to_vec(),
                    b'/' if esc => b"\\/".to_vec(),
                    _ if esc => [
                        &b"\\u"[..],
                        &random_case(format!("{b:04x}").as_bytes(), &bits[i % bits.len()..]),
                    ]
                    .concat(),
                    _ => vec![b],
                })
                .collect(),
        }
    }

    /// Chunk boundaries: random ones, or every byte.
    fn cut_points(len: usize, cuts: &[usize], every_byte: bool) -> Vec<usize> {
        if every_byte {
            return (1..len).collect();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_form_of_any_secret_survives_streaming(
            secrets in secrets(),
            placed in proptest::collection::vec((0usize..4, prop_oneof![0u8..9, 12u8..14], proptest::collection::vec(any::<u8>(), 0..40), 0usize..200), 1..4),
            bits in proptest::collection::vec(any::<bool>(), 1..16),
            noise in "[ a-z,.:{}\"\n]{0,200}",
            cuts in proptest::collection::vec(0usize..10_000, 0..12),
            every_byte in proptest::bool::weighted(0.2),
        ) {
            let scrubber = Arc::new(Scrubber::new(secrets.iter().map(Vec::as_slice)).unwrap());
            let mut body = noise.into_bytes();
            for (which, form, pad, at) in &placed {
                let copy = render(&secrets[which % secrets.len()], *form, pad, &bits);
                let at = at % (body.len() + 1);
                body.splice(at..at, copy);
            }
            let cuts = cut_points(body.len(), &cuts, every_byte);
            let out = stream_through(&scrubber, &body, &cuts);
            prop_assert_eq!(out.len(), body.len());
            // Logs, audit records, WebSocket messages and capability answers are scrubbed whole.
            let mut whole = body.clone();
            scrubber.scrub_all(&mut whole);
            for secret in &secrets {
                prop_assert!(!reveals(&whole, secret), "{:?}", String::from_utf8_lossy(&whole));
                prop_assert!(
                    !reveals(&out, secret),
                    "{:?} leaks from {:?} as {:?}",
                    String::from_utf8_lossy(secret),
                    String::from_utf8_lossy(&body),
                    String::from_utf8_lossy(&out)
                );
            }
        }

        #[test]
        fn no_twice_escaped_copy_of_a_secret_survives_streaming(
            secrets in secrets(),
            which in 0usize..4,
            form in 9u8..12,
            noise in "[ a-z,.:{}\"\n]{0,100}",
            at in 0usize..100,
            cuts in proptest::collection::vec(0usize..10_000, 0..12),
            every_byte in proptest::bool::weighted(0.2),
        ) {
            let scrubber = Arc::new(Scrubber::new(secrets.iter().map(Vec::as_slice)).unwrap());
            let secret = &secrets[which % secrets.len()];
            let mut body = noise.into_bytes();
            let at = at % (body.len() + 1);
            body.splice(at..at, render(secret, form, &[], &[false]));
            let cuts = cut_points(body.len(), &cuts, every_byte);
            let out = stream_through(&scrubber, &body, &cuts);
            prop_assert!(
                !reveals(&out, secret),
                "{:?} leaks from {:?} as {:?}",
                String::from_utf8_lossy(secret),
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&out)
            );
        }

        #[test]
        fn text_without_secrets_streams_unchanged(
            secrets in secrets(),
            body in proptest::collection::vec(any::<u8>(), 0..1500),
            cuts in proptest::collection::vec(0usize..10_000, 0..12),
            every_byte in proptest::bool::weighted(0.2),
        ) {
            let scrubber = Arc::new(Scrubber::new(secrets.iter().map(Vec::as_slice)).unwrap());
            let cuts = cut_points(body.len(), &cuts, every_byte);
            prop_assert_eq!(stream_through(&scrubber, &body, &cuts), body);
        }
    }
}
