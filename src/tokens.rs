//! Agent tokens: format, generation, checksum and hashing.
//!
//! A token looks like `seks_<provider>_<32 base62 random chars><6 base62 checksum chars>`.
//! The prefix makes it recognisable to secret scanners; the checksum lets the broker
//! reject typos and garbage before it touches the store. Only the SHA-256 of a token
//! is ever stored.

use std::fmt;

use aws_lc_rs::digest::{SHA256, digest};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::vault::Key;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "seks_";
/// Random base62 characters per token: 32 × log2(62) ≈ 190 bits.
const RANDOM_LEN: usize = 32;
/// Base62 characters of checksum (62^6 > 2^32).
const CHECKSUM_LEN: usize = 6;
/// Characters after `seks_<provider>_`: the random part and the checksum.
pub const TOKEN_BODY_LEN: usize = RANDOM_LEN + CHECKSUM_LEN;
/// Random characters shown in listings to tell tokens apart; 166 bits stay unknown.
const HINT_LEN: usize = 4;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a well-formed token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenFormatError {
    /// It does not start with `seks_`.
    #[error(
        "it does not start with `seks_` (give the agent a token from `seks token create`, not a provider key)"
    )]
    Prefix,
    /// The provider part or the random part is missing or has the wrong shape.
    #[error("it does not have the shape seks_<provider>_<random>")]
    Shape,
    /// The checksum does not match: a typo or a forged value.
    #[error("its checksum does not match (the token was altered or mistyped)")]
    Checksum,
}

/// SHA-256 of a token: the only form in which tokens are stored.
///
/// Equality is constant-time, so cache lookups compare hashes without timing leaks.
#[derive(Clone, Copy)]
pub struct TokenHash(pub [u8; 32]);

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TokenHash {}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl TokenHash {
    /// Hash a token's full text.
    pub fn of(token: &str) -> Self {
        let d = digest(&SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenHash(out)
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash([REDACTED])")
    }
}

/// A syntactically valid token, borrowed from the request that carried it.
#[derive(Clone, Copy)]
pub struct ParsedToken<'a> {
    text: &'a str,
    provider: &'a str,
}

impl<'a> ParsedToken<'a> {
    /// The provider the token was minted for.
    pub fn provider(&self) -> &'a str {
        self.provider
    }

    /// The hash to look the token up by.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.text)
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedToken({})", hint(self.text))
    }
}

/// Check a token's shape and checksum without any store lookup.
pub fn parse(text: &str) -> Result<ParsedToken<'_>, TokenFormatError> {
    let rest = text
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(TokenFormatError::Prefix)?;
    let (provider, body) = rest.rsplit_once('_').ok_or(TokenFormatError::Shape)?;
    if !is_provider_name(provider)
        || body.len() != RANDOM_LEN + CHECKSUM_LEN
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(TokenFormatError::Shape);
    }
    let (unchecked, checksum) = text.split_at(text.len() - CHECKSUM_LEN);
    if checksum.as_bytes().ct_eq(&checksum_of(unchecked)).into() {
        Ok(ParsedToken { text, provider })
    } else {
        Err(TokenFormatError::Checksum)
    }
}

/// Mint a new token for `provider`. The caller shows it once and stores only its hash.
pub fn generate(provider: &str) -> SecretString {
    with_checksum(format!(
        "{TOKEN_PREFIX}{provider}_{}",
        random_base62(RANDOM_LEN)
    ))
}

fn with_checksum(mut token: String) -> SecretString {
    let checksum = checksum_of(&token);
    token.extend(checksum.iter().map(|&b| b as char));
    SecretString::from(token)
}

/// Recomputes the tokens of providers that sign requests (AWS SigV4) from their row ids.
///
/// Checking an HMAC signature takes the key itself, and a store holds only token hashes;
/// so such a token is an HMAC of its id under a key derived from the master key, which the
/// broker recomputes from the access key id the request names. Still only the hash is stored.
pub struct SigningTokens(Key);

impl SigningTokens {
    /// Tokens under `key` (see [`crate::vault::Vault::signing_tokens`]).
    pub fn new(key: Key) -> Self {
        SigningTokens(key)
    }

    /// The token with row id `id` for `provider`.
    pub fn token(&self, provider: &str, id: &str) -> SecretString {
        let mac = zeroize::Zeroizing::new(self.0.mac(format!("{provider}\0{id}").as_bytes()));
        // 32 characters from 32 bytes: the slight bias of `% 62` leaves over 180 bits.
        let random: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
            mac.iter()
                .map(|&b| BASE62[usize::from(b % 62)] as char)
                .collect(),
        );
        with_checksum(format!("{TOKEN_PREFIX}{provider}_{}", random.as_str()))
    }
}

impl fmt::Debug for SigningTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningTokens([REDACTED])")
    }
}

/// A short, safe-to-show prefix of a token, e.g. `seks_openai_Ab3x…`.
pub fn hint(token: &str) -> String {
    let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
        return "[not a seks token]".to_owned();
    };
    match rest.rsplit_once('_') {
        Some((provider, body)) if is_provider_name(provider) => {
            let shown: String = body.chars().take(HINT_LEN).collect();
            format!("{TOKEN_PREFIX}{provider}_{shown}…")
        }
        _ => "[malformed seks token]".to_owned(),
    }
}

/// Replace every token-like `seks_<provider>_<random>` in `text` by its short hint, so text
/// the broker writes never carries a whole token.
pub fn redact_tokens(text: &[u8]) -> Vec<u8> {
    let run = |bytes: &[u8], ok: fn(&u8) -> bool| bytes.iter().take_while(|b| ok(b)).count();
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = memchr::memmem::find(rest, TOKEN_PREFIX.as_bytes()) {
        let after_prefix = at + TOKEN_PREFIX.len();
        out.extend_from_slice(&rest[..after_prefix]);
        rest = &rest[after_prefix..];
        let provider = run(rest, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'
        });
        if rest.get(provider) != Some(&b'_') {
            continue;
        }
        let random = run(&rest[provider + 1..], u8::is_ascii_alphanumeric);
        if random > HINT_LEN {
            // Token-like: keep the provider and a few characters, like `hint`.
            out.extend_from_slice(&rest[..provider + 1 + HINT_LEN]);
            out.extend_from_slice("…".as_bytes());
            rest = &rest[provider + 1 + random..];
        }
    }
    out.extend_from_slice(rest);
    out
}

/// The hint for a freshly minted token.
pub fn hint_of(token: &SecretString) -> String {
    hint(token.expose_secret())
}

/// Provider names are short lowercase identifiers, so they are safe in tokens, paths and logs.
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `n` in exactly `N` base62 digits (the highest ones dropped if it needs more).
pub fn base62_digits<const N: usize>(mut n: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// A random base62 identifier, used for tokens and row ids.
pub fn random_base62(len: usize) -> String {
    // Rejection sampling keeps every character uniform: 248 = 4 × 62.
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill_random(&mut buf);
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(BASE62[usize::from(b % 62)] as char);
            }
        }
    }
    buf.zeroize();
    out
}

/// Fill `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // The kernel's generator directly, not aws-lc's: aws-lc seeds its own with CPU-jitter
    // entropy on first use, some 30 ms that `serve` would otherwise spend starting up.
    // The system RNG failing means the process can't do any crypto safely; stopping is right.
    getrandom::fill(buf).expect("operating system random number generator failed");
}

fn checksum_of(text: &str) -> [u8; CHECKSUM_LEN] {
    let d = digest(&SHA256, text.as_bytes());
    let n = u32::from_be_bytes([d.as_ref()[0], d.as_ref()[1], d.as_ref()[2], d.as_ref()[3]]);
    base62_digits(u64::from(n))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_tokens_parse_and_carry_their_provider() {
        let token = generate("openai");
        let text = token.expose_secret();
        assert!(text.starts_with("seks_openai_"));
        assert_eq!(text.len(), "seks_openai_".len() + RANDOM_LEN + CHECKSUM_LEN);
        let parsed = parse(text).unwrap();
        assert_eq!(parsed.provider(), "openai");
        assert!(parsed.hash() == TokenHash::of(text));
    }

    #[test]
    fn signing_tokens_are_recomputable_well_formed_and_distinct() {
        let keys = SigningTokens::new(Key::from_bytes([9; 32]));
        let token = keys.token("s3", "tok_abc");
        let text = token.expose_secret();
        assert_eq!(parse(text).map(|p| p.provider()), Ok("s3"));
        assert_eq!(keys.token("s3", "tok_abc").expose_secret(), text);
        assert_ne!(keys.token("s3", "tok_abd").expose_secret(), text);
        assert_ne!(keys.token("s3x", "tok_abc").expose_secret(), text);
        let other = SigningTokens::new(Key::from_bytes([8; 32]));
        assert_ne!(other.token("s3", "tok_abc").expose_secret(), text);
        assert_eq!(format!("{keys:?}"), "SigningTokens([REDACTED])");
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let token = generate("github");
        let mut bytes = token.expose_secret().as_bytes().to_vec();
        let i = "seks_github_".len() + 3;
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&changed).err(), Some(TokenFormatError::Checksum));
    }

    #[test]
    fn shapes_that_are_not_tokens() {
        assert_eq!(parse("sk-live-123").err(), Some(TokenFormatError::Prefix));
        assert_eq!(parse("seks_").err(), Some(TokenFormatError::Shape));
        assert_eq!(parse("seks_openai").err(), Some(TokenFormatError::Shape));
        assert_eq!(
            parse("seks_OpenAI_abc").err(),
            Some(TokenFormatError::Shape)
        );
        assert_eq!(
            parse("seks_openai_short").err(),
            Some(TokenFormatError::Shape)
        );
    }

    #[test]
    fn hints_show_only_a_short_prefix() {
        let token = generate("anthropic");
        let hint = hint_of(&token);
        assert_eq!(hint.chars().count(), "seks_anthropic_".len() + HINT_LEN + 1);
        assert!(
            token
                .expose_secret()
                .starts_with(hint.trim_end_matches('…'))
        );
        assert!(
            !format!("{:?}", parse(token.expose_secret()).unwrap())
                .contains(&token.expose_secret()[20..])
        );
    }

    #[test]
    fn token_like_text_is_cut_to_a_hint() {
        let token = generate("openai");
        let text = format!(
            "a {} b seks_<provider> seks_openai_ c",
            token.expose_secret()
        );
        let out = String::from_utf8(redact_tokens(text.as_bytes())).unwrap();
        assert_eq!(
            out,
            format!("a {} b seks_<provider> seks_openai_ c", hint_of(&token))
        );
    }

    proptest! {
        #[test]
        fn redaction_never_panics_and_removes_whole_tokens(prefix in ".{0,20}", suffix in ".{0,20}") {
            let token = generate("gemini");
            let text = format!("{prefix}{}{suffix}", token.expose_secret());
            let out = redact_tokens(text.as_bytes());
            prop_assert!(!out.windows(token.expose_secret().len()).any(|w| w == token.expose_secret().as_bytes()));
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = parse(&s);
            let _ = hint(&s);
        }

        #[test]
        fn any_single_character_change_is_rejected(pos in 0usize..38, replacement in "[0-9A-Za-z]") {
            let token = generate("openai");
            let text = token.expose_secret();
            let i = "seks_openai_".len() + pos;
            let mut changed = text.to_owned();
            changed.replace_range(i..=i, &replacement);
            prop_assume!(changed != text);
            prop_assert!(parse(&changed).is_err());
        }

        #[test]
        fn every_generated_token_round_trips(provider in "[a-z][a-z0-9-]{0,15}") {
            let token = generate(&provider);
            let parsed = parse(token.expose_secret()).unwrap();
            prop_assert_eq!(parsed.provider(), provider.as_str());
        }
    }
}
