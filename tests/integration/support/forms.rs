//! Every form of a secret that the broker must never let out, as a reflecting upstream
//! would write it, and a search for them.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Named encodings of `secret`: raw; base64 and base64url at each byte alignment inside a
/// longer string, padded and not; hex both cases; percent-encoding (every byte, or only
/// reserved ones, both hex cases); JSON escapes (`\/`, `\uXXXX` both cases).
pub fn encodings(secret: &str) -> Vec<(String, String)> {
    let b = secret.as_bytes();
    let mut out = vec![("raw".to_owned(), secret.to_owned())];
    for (i, prefix) in [&b""[..], b"\x01", b"\x01\x02"].iter().enumerate() {
        let data = [prefix, b, b"\xfe"].concat();
        for (name, engine) in [
            ("b64", &STANDARD),
            ("b64_nopad", &STANDARD_NO_PAD),
            ("b64url", &URL_SAFE),
            ("b64url_nopad", &URL_SAFE_NO_PAD),
        ] {
            out.push((format!("{name}_{i}"), engine.encode(&data)));
        }
    }
    out.push(("b64_alone".into(), STANDARD.encode(b)));
    out.push(("hex".into(), b.iter().map(|x| format!("{x:02x}")).collect()));
    out.push(("HEX".into(), b.iter().map(|x| format!("{x:02X}")).collect()));
    out.push((
        "pct_all".into(),
        b.iter().map(|x| format!("%{x:02X}")).collect(),
    ));
    out.push((
        "pct_all_lower".into(),
        b.iter().map(|x| format!("%{x:02x}")).collect(),
    ));
    let reserved: String = b
        .iter()
        .map(|&x| {
            if x.is_ascii_alphanumeric() || b"-._~".contains(&x) {
                (x as char).to_string()
            } else {
                format!("%{x:02X}")
            }
        })
        .collect();
    out.push(("pct_reserved".into(), reserved));
    out.push((
        "json_u".into(),
        b.iter().map(|x| format!("\\u{x:04x}")).collect(),
    ));
    out.push((
        "json_U".into(),
        b.iter().map(|x| format!("\\u{x:04X}")).collect(),
    ));
    out.push(("json_slash".into(), secret.replace('/', "\\/")));
    out
}

/// A JSON object quoting `secret` in every form between two intact fields. Written by hand
/// so JSON escapes (`\u0073`) stay single escapes in the text, as an upstream would send them.
pub fn reflect_json(secret: &str) -> String {
    let mut text = String::from("{\"before\":\"intact-before\"");
    for (name, form) in encodings(secret) {
        text.push_str(&format!(",\"{name}\":\"{form}\""));
    }
    text.push_str(",\"after\":\"intact-after\"}");
    text
}

/// The forms of `secret` (by name) found in `hay`.
pub fn found_in(secret: &str, hay: &[u8]) -> Vec<String> {
    encodings(secret)
        .into_iter()
        .filter(|(_, form)| {
            // A long enough slice of the form is a leak, whatever surrounds it.
            let core = core_of(form);
            hay.windows(core.len()).any(|w| w == core)
        })
        .map(|(name, _)| name)
        .collect()
}

/// The middle of an encoded form: the part no neighbouring byte can change.
fn core_of(form: &str) -> &[u8] {
    let bytes = form.as_bytes();
    if bytes.len() <= 8 {
        return bytes;
    }
    &bytes[4..bytes.len() - 4]
}
