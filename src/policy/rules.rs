//! Path rules: `METHOD /path/glob`, where the method may be `*`, `*` in the path matches
//! within one segment and `**` any number of segments.
//!
//! Rules that refuse (`deny`, `require_approval`) match broadly, so an agent can't slip past
//! them with a spelling the upstream treats the same: case-insensitively, with `;params`
//! cut from segments and a trailing slash ignored, and `/dir/**` also covers `/dir`. Rules
//! that grant (`allow`) match exactly as written. Ambiguity always resolves toward refusal.

use std::fmt;

use http::Method;

/// One `METHOD /path/glob` rule.
#[derive(Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    /// `None` matches any method.
    method: Option<Method>,
    /// The glob for granting: a lone `*` segment needs at least one character, so
    /// `GET /v1/models/*` grants one model, not the listing at `/v1/models/`.
    glob_exact: String,
    /// The glob lowercased, for broad matching.
    glob_broad: String,
    /// The broad glob's last segment when it has no glob syntax: a path it catches ends with
    /// it, which rules most paths out without running the glob.
    last_literal: Option<String>,
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for Rule {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "rule `{text}`: {why} (expected `METHOD /path/glob`, e.g. `POST /v1/chat/completions`)"
            )
        };
        let (method, glob) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("missing the path"))?;
        let glob = glob.trim();
        let method = match method {
            "*" => None,
            m if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) => {
                Some(Method::from_bytes(m.as_bytes()).map_err(|_| bad("invalid method"))?)
            }
            _ => return Err(bad("the method must be upper case, or `*`")),
        };
        if !glob.starts_with('/') {
            return Err(bad("the path must start with `/`"));
        }
        if glob
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'?' || b == b'#')
        {
            return Err(bad("the path may not contain spaces, `?` or `#`"));
        }
        let glob_exact = glob
            .split('/')
            .map(|segment| if segment == "*" { "?*" } else { segment })
            .collect::<Vec<_>>()
            .join("/");
        let glob_broad = glob.to_ascii_lowercase();
        let last_literal = glob_broad
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|last| {
                !last.is_empty() && !last.contains(['*', '?', '[', ']', '{', '}', '\\', '!'])
            })
            .map(str::to_owned);
        Ok(Rule {
            glob_exact,
            glob_broad,
            last_literal,
            method,
            text: text.trim().to_owned(),
        })
    }
}

impl From<Rule> for String {
    fn from(rule: Rule) -> String {
        rule.text
    }
}

impl serde::Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Rule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rule::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Whether a raw path holds `%2F`, in either case.
fn has_encoded_slash(raw: &str) -> bool {
    raw.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'))
}

/// A request's method and path in the two spellings rules match against.
#[derive(Debug, Clone)]
pub struct RequestPath {
    method: Method,
    /// Percent-decoded path below the provider's base, e.g. `/v1/chat/completions`.
    exact: String,
    /// Lowercased, `;params` cut, no trailing slash.
    broad: String,
}

impl RequestPath {
    /// From a method and a validated raw path (see `proxy::target`). An encoded slash stays
    /// `%2F`: it is part of its segment, so `*` matches `group%2Fproject` as one.
    pub fn new(method: &Method, raw_path: &str) -> Self {
        let exact = if raw_path.is_empty() {
            "/".to_owned()
        } else if has_encoded_slash(raw_path) {
            raw_path
                .split('/')
                .map(|segment| {
                    percent_encoding::percent_decode_str(segment)
                        .decode_utf8_lossy()
                        .replace('/', "%2F")
                })
                .collect::<Vec<_>>()
                .join("/")
        } else {
            percent_encoding::percent_decode_str(raw_path)
                .decode_utf8_lossy()
                .into_owned()
        };
        // Lowercased, each segment cut at its first `;`.
        let mut broad = String::with_capacity(exact.len());
        let mut in_params = false;
        for c in exact.chars() {
            match c {
                '/' => {
                    in_params = false;
                    broad.push('/');
                }
                ';' => in_params = true,
                c if !in_params => broad.push(c.to_ascii_lowercase()),
                _ => {}
            }
        }
        while broad.len() > 1 && broad.ends_with('/') {
            broad.pop();
        }
        RequestPath {
            method: method.clone(),
            exact,
            broad,
        }
    }

    /// The decoded path, for messages and model lookup.
    pub fn path(&self) -> &str {
        &self.exact
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

impl Rule {
    /// HEAD is GET without a body, so a rule about GET covers it too.
    fn method_matches(&self, request: &RequestPath) -> bool {
        self.method.as_ref().is_none_or(|m| {
            *m == request.method || (*m == Method::GET && request.method == Method::HEAD)
        })
    }

    /// Exact match, for rules that grant.
    pub fn allows(&self, request: &RequestPath) -> bool {
        self.method_matches(request) && glob_match::glob_match(&self.glob_exact, &request.exact)
    }

    /// Broad match, for rules that refuse or hold.
    pub fn catches(&self, request: &RequestPath) -> bool {
        if !self.method_matches(request) {
            return false;
        }
        if let Some(last) = &self.last_literal
            && request.broad.rsplit('/').next() != Some(last.as_str())
        {
            return false;
        }
        let glob = &self.glob_broad;
        let glob = if glob.len() > 1 {
            glob.trim_end_matches('/')
        } else {
            glob
        };
        // `/dir/**` and `/dir/*` also catch `/dir` (and `/dir/`, which reads the same).
        glob_match::glob_match(glob, &request.broad)
            || glob
                .strip_suffix("/**")
                .or_else(|| glob.strip_suffix("/*"))
                .is_some_and(|dir| glob_match::glob_match(dir, &request.broad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::try_from(text.to_owned()).unwrap()
    }

    fn req(method: &str, path: &str) -> RequestPath {
        RequestPath::new(&Method::from_bytes(method.as_bytes()).unwrap(), path)
    }

    #[test]
    fn globs_match_within_and_across_segments() {
        let r = rule("GET /repos/acme/*");
        assert!(r.allows(&req("GET", "/repos/acme/widgets")));
        assert!(!r.allows(&req("GET", "/repos/acme/widgets/issues")));
        assert!(!r.allows(&req("POST", "/repos/acme/widgets")));
        assert!(r.allows(&req("HEAD", "/repos/acme/widgets")));
        let any = rule("* /v1/files/**");
        assert!(any.allows(&req("DELETE", "/v1/files/a/b")));
        assert!(any.catches(&req("GET", "/v1/files")));
        assert!(rule("POST /v1/chat/completions").allows(&req("POST", "/v1/chat/completions")));
    }

    #[test]
    fn a_lone_star_grants_one_segment_and_head_rules_match_head() {
        let one = rule("GET /v1/models/*");
        assert!(one.allows(&req("GET", "/v1/models/gpt-4o")));
        assert!(!one.allows(&req("GET", "/v1/models/")));
        assert!(!one.allows(&req("GET", "/v1/models")));
        let head = rule("HEAD /v1/files/*");
        assert!(head.allows(&req("HEAD", "/v1/files/a")));
        assert!(head.catches(&req("HEAD", "/v1/files/a")));
        assert!(!head.allows(&req("GET", "/v1/files/a")));
        assert!(rule("* /v1/*").catches(&req("GET", "/v1/")));
        assert!(rule("* /v1/*").catches(&req("GET", "/v1")));
    }

    #[test]
    fn refusing_rules_see_through_other_spellings() {
        let deny = rule("* /v1/files/**");
        for path in [
            "/v1/FILES/x",
            "/v1/%66iles/x",
            "/v1/files;v=1/x",
            "/v1/files/",
            "/V1/Files",
        ] {
            assert!(deny.catches(&req("GET", path)), "{path}");
        }
        let exact = rule("POST /v1/images/generations");
        assert!(exact.catches(&req("POST", "/v1/images/generations/")));
        assert!(exact.catches(&req("POST", "/v1/Images/Generations")));
        assert!(exact.catches(&req("POST", "/v1/images/generations;v=2")));
        assert!(!exact.catches(&req("POST", "/v1/images/generations/x")));
        let nested = rule("POST /api/**/keys");
        assert!(nested.catches(&req("POST", "/api/keys")));
        assert!(nested.catches(&req("POST", "/api/a%2Fb/c/KEYS/")));
        // An encoded slash is part of its segment, for rules that refuse and that grant.
        let one = rule("* /projects/*/variables");
        assert!(one.catches(&req("GET", "/projects/group%2fproject/variables")));
        assert!(one.catches(&req("GET", "/projects/group%2Fproject/Variables/")));
        assert!(rule("GET /projects/*").allows(&req("GET", "/projects/group%2Fproject")));
        assert!(
            rule("GET /projects/group%2Fproject").allows(&req("GET", "/projects/group%2fproject"))
        );
        assert!(!nested.catches(&req("POST", "/api/a/keys/1")));
        // Granting rules stay exact.
        assert!(!rule("GET /v1/models").allows(&req("GET", "/v1/MODELS")));
    }

    #[test]
    fn malformed_rules_are_explained() {
        for (text, why) in [
            ("/v1/x", "missing the path"),
            ("post /v1/x", "upper case"),
            ("GET v1/x", "start with `/`"),
            ("GET /v1/x?y", "may not contain"),
        ] {
            let err = Rule::try_from(text.to_owned()).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
