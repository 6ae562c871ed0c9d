//! Request-target checks: which provider a request is for, and whether its path stays
//! inside that provider's base URL.
//!
//! The broker forwards the agent's path bytes as they are, so it must be sure no upstream
//! could read them as a way out of the base path: no dot segments (also percent-encoded,
//! also `..;`), no encoded slashes or backslashes, no empty segments, no double encoding,
//! no control or non-URL characters. A provider whose API names things by paths inside one
//! segment (GitLab's `projects/group%2Fproject`) may allow encoded slashes; each part
//! between them is then checked as a segment of its own, so a server that decodes them
//! before routing still finds no way out.

use std::borrow::Cow;

use percent_encoding::percent_decode;

/// Where provider routes live.
pub const API_PREFIX: &str = "/api/";

/// A routed request: the provider name and the remaining path (raw, validated).
#[derive(Debug, PartialEq, Eq)]
pub struct Route<'a> {
    /// The provider segment.
    pub provider: &'a str,
    /// The path below `/api/<provider>`: empty or starting with `/`.
    pub rest: &'a str,
}

/// Why a target was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    /// The path is not under `/api/<provider>`.
    NoRoute,
    /// The path could reach outside the provider's base URL, or is not a clean URL path.
    BadPath(&'static str),
}

/// Validate the whole path, then split `/api/<provider>/<rest>`; `encoded_slashes`: the
/// provider reads `%2F` as part of a segment.
pub fn route(path: &str, encoded_slashes: bool) -> Result<Route<'_>, TargetError> {
    validate(path, encoded_slashes).map_err(TargetError::BadPath)?;
    let after = path.strip_prefix(API_PREFIX).ok_or(TargetError::NoRoute)?;
    let (provider, rest) = match after.find('/') {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    if provider.is_empty() {
        return Err(TargetError::NoRoute);
    }
    Ok(Route { provider, rest })
}

/// The provider a path names, before the path is validated: refusals of a malformed request
/// still come in that provider's error shape, which its SDK can parse.
pub fn provider_segment(path: &str) -> Option<&str> {
    let after = path.strip_prefix(API_PREFIX)?;
    after.split('/').next().filter(|name| !name.is_empty())
}

/// Validate a raw path that will be appended to an upstream base path; `encoded_slashes`:
/// the upstream reads `%2F` as part of a segment.
pub fn validate(rest: &str, encoded_slashes: bool) -> Result<(), &'static str> {
    if rest.is_empty() {
        return Ok(());
    }
    let Some(body) = rest.strip_prefix('/') else {
        return Err("the path must start with `/`");
    };
    if let Some(bad) = rest.bytes().find(|&b| !is_path_char(b)) {
        return Err(if bad == b'\\' {
            "backslashes are not allowed in the path"
        } else {
            "the path contains a character that is not allowed in a URL path"
        });
    }
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing slash is an ordinary path; an empty segment elsewhere (`//`) is not.
        if segment.is_empty() && segments.peek().is_some() {
            return Err("empty path segments (`//`) are not allowed");
        }
        check_segment(segment, encoded_slashes)?;
    }
    Ok(())
}

fn check_segment(raw: &str, encoded_slashes: bool) -> Result<(), &'static str> {
    let bytes = raw.as_bytes();
    let hex_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_hexdigit);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' && !(hex_at(i + 1) && hex_at(i + 2)) {
            return Err("malformed percent-encoding in the path");
        }
    }
    // Most segments have no escapes: nothing to decode, nothing to allocate.
    let decoded: Cow<[u8]> = if bytes.contains(&b'%') {
        Cow::Owned(percent_decode(bytes).collect())
    } else {
        Cow::Borrowed(bytes)
    };
    if decoded.contains(&b'\\') || (decoded.contains(&b'/') && !encoded_slashes) {
        return Err("encoded slashes or backslashes are not allowed in the path");
    }
    if decoded.contains(&b'%') {
        return Err("double percent-encoding is not allowed in the path");
    }
    if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("control characters are not allowed in the path");
    }
    // Only ASCII: an upstream that normalises Unicode (NFKC) could read U+FF0E as `.`, and
    // overlong UTF-8 (`%c0%ae`) as `.` too.
    if !decoded.is_ascii() {
        return Err(
            "non-ASCII (percent-encoded bytes of 0x80 and above) is not allowed in the path",
        );
    }
    // Slashes are only left with `encoded_slashes`: each part between them is a segment to
    // a server that decodes them before routing.
    let mut parts = decoded.split(|&b| b == b'/');
    if decoded.contains(&b'/') && parts.clone().any(<[u8]>::is_empty) {
        return Err("empty path segments (`//`, also encoded) are not allowed");
    }
    parts.try_for_each(check_dots)
}

/// Refuse a dot segment in any spelling.
fn check_dots(decoded: &[u8]) -> Result<(), &'static str> {
    // Servers cut a segment at `;` (path parameters, `..;/`), and a decoding upstream at `?`
    // or `#`; Windows-style servers drop trailing dots and spaces (`.. ` and `...` mean `..`).
    let head = decoded
        .split(|&b| matches!(b, b';' | b'?' | b'#'))
        .next()
        .unwrap_or(&[]);
    if !head.is_empty() && head.iter().all(|&b| b == b'.' || b == b' ') {
        return Err("`.` and `..` path segments (in any spelling) are not allowed");
    }
    Ok(())
}

/// RFC 3986 `pchar` plus `/`: unreserved, percent, sub-delims, `:` and `@`.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_provider_is_named_even_in_a_path_that_is_refused() {
        assert_eq!(provider_segment("/api/s3/bucket/..%2fx"), Some("s3"));
        assert_eq!(provider_segment("/api/anthropic"), Some("anthropic"));
        assert_eq!(provider_segment("/api//x"), None);
        assert_eq!(provider_segment("/v1/models"), None);
    }

    #[test]
    fn routes_split_provider_and_rest() {
        assert_eq!(
            route("/api/openai/v1/chat/completions", false),
            Ok(Route {
                provider: "openai",
                rest: "/v1/chat/completions"
            })
        );
        assert_eq!(
            route("/api/openai", false),
            Ok(Route {
                provider: "openai",
                rest: ""
            })
        );
        assert_eq!(
            route("/api/openai/", false),
            Ok(Route {
                provider: "openai",
                rest: "/"
            })
        );
        assert_eq!(
            route(
                "/api/gemini/v1beta/models/gemini-2.0-flash:generateContent",
                false
            ),
            Ok(Route {
                provider: "gemini",
                rest: "/v1beta/models/gemini-2.0-flash:generateContent"
            })
        );
        assert_eq!(route("/v1/chat", false), Err(TargetError::NoRoute));
        assert_eq!(route("/api/", false), Err(TargetError::NoRoute));
        assert!(matches!(
            route("/api//v1", false),
            Err(TargetError::BadPath(_))
        ));
        assert!(matches!(
            route("//evil.example/api/openai/v1", false),
            Err(TargetError::BadPath(_))
        ));
    }

    #[test]
    fn escapes_are_refused() {
        for path in [
            "/api/openai/../github/user",
            "/api/openai/v1/..",
            "/api/openai/v1/./x",
            "/api/openai/%2e%2e/x",
            "/api/openai/%2E%2E/x",
            "/api/openai/.%2e/x",
            "/api/openai/%2e/x",
            "/api/openai/..;/x",
            "/api/openai/%2e%2e;foo/x",
            "/api/openai/v1%2f..%2fx",
            "/api/openai/v1%2F..",
            "/api/openai/v1%5c..",
            "/api/openai/v1\\..\\x",
            "/api/openai//evil.example/x",
            "/api/openai/v1//x",
            "/api/openai/%252e%252e/x",
            "/api/openai/%25",
            "/api/openai/%zz",
            "/api/openai/%2",
            "/api/openai/v1%00x",
            "/api/openai/v1%0d%0aHost:%20evil",
            "/api/openai/v1 x",
            "/api/openai/v1\"x",
            "/api/openai/%2e%2e%3fa/x",
            "/api/openai/.%2e%23/x",
            "/api/openai/..%20/x",
            "/api/openai/%2e%2e./x",
            "/api/openai/.../x",
            "/api/openai/%20/x",
            "/api/openai/%c0%ae%c0%ae/x",
            "/api/openai/%ef%bc%8e%ef%bc%8e/x",
        ] {
            for encoded_slashes in [false, true] {
                assert!(
                    matches!(route(path, encoded_slashes), Err(TargetError::BadPath(_))),
                    "{path} was accepted"
                );
            }
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for rest in [
            "/v1/models/gpt-4o",
            "/v1/files/file-abc~1",
            "/repos/acme/widgets/issues/1",
            "/v1/models/a%20b",
            "/v1/x;y=1",
            "/v1/a%3Fb",
            "/v1/.well-known",
            "/v1/a..b",
            "/user/",
        ] {
            assert_eq!(validate(rest, false), Ok(()), "{rest}");
        }
    }

    #[test]
    fn encoded_slashes_stay_inside_a_segment_where_the_provider_allows_them() {
        for rest in [
            "/api/v4/projects/group%2Fproject",
            "/api/v4/projects/group%2fsub%2Fproject/repository/files/src%2Fmain.rs",
        ] {
            assert_eq!(validate(rest, true), Ok(()), "{rest}");
            assert!(validate(rest, false).is_err(), "{rest}");
        }
        for rest in [
            "/api/v4/projects/%2Fproject",
            "/api/v4/projects/group%2F",
            "/api/v4/projects/group%2F%2Fproject",
            "/api/v4/projects/group%2F.%2Fproject",
            "/api/v4/projects/group%2F..",
            "/api/v4/projects/group%2F%2e%2e;x",
            "/api/v4/projects/group%5Cproject",
        ] {
            assert!(validate(rest, true).is_err(), "{rest} was accepted");
        }
    }

    /// What a lenient upstream might do: decode once, treat `\\` as `/`, cut segments at
    /// `;`, `?` or `#`, drop trailing dots and spaces, and resolve dot segments. Non-ASCII
    /// counts as an escape, since a Unicode-normalising server may read it as `.` or `/`.
    fn resolves_outside(rest: &str) -> bool {
        let decoded: Vec<u8> = percent_decode(rest.as_bytes()).collect();
        if !decoded.is_ascii() {
            return true;
        }
        let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut depth: i64 = 0;
        for seg in decoded.split('/').skip(1) {
            let head = seg.split([';', '?', '#']).next().unwrap_or("");
            let trimmed = head.trim_end_matches(['.', ' ']);
            if head == "." || head.is_empty() {
                continue;
            }
            depth += if trimmed.is_empty() { -1 } else { 1 };
            if depth < 0 {
                return true;
            }
        }
        false
    }

    proptest! {
        #[test]
        fn accepted_paths_never_climb_out_of_the_base(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("..".to_owned()), Just(".".to_owned()), Just("%2e%2e".to_owned()), Just("%2E.".to_owned()),
                    Just("..;x".to_owned()), Just("%2f".to_owned()), Just("%5C".to_owned()), Just("\\".to_owned()),
                    Just("".to_owned()), Just("%252e".to_owned()), Just("%".to_owned()), Just("%3f".to_owned()),
                    Just("%23".to_owned()), Just("%20".to_owned()), Just(". ".to_owned()), Just("%c0%ae".to_owned()),
                    Just("%ef%bc%8e".to_owned()), "[a-z0-9.%;:@ -]{1,6}",
                ],
                0..8,
            )
        ) {
            let rest = format!("/{}", parts.join("/"));
            for encoded_slashes in [false, true] {
                if validate(&rest, encoded_slashes).is_ok() {
                    prop_assert!(!resolves_outside(&rest), "{rest} accepted but escapes");
                }
                let _ = route(&format!("/api/openai{rest}"), encoded_slashes);
            }
        }

        #[test]
        fn route_never_panics(path in "\\PC{0,64}") {
            let _ = route(&path, true);
        }
    }
}
