//! Credential injection: an agent's request turned into the upstream request as the proxy
//! does it — the token's path segment found, the pinned URI built, the agent's headers
//! filtered and the real credential written — for a key in a header (`openai`, Bearer;
//! `anthropic`, `x-api-key`) and in the path (`telegram`). Run: `cargo bench --bench inject`.

use std::collections::BTreeMap;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Request};
use secrecy::SecretString;
use seks::providers::Providers;
use seks::proxy::rewrite;

fn main() {
    divan::main();
}

/// The headers an official SDK sends with a chat completion, its token among them.
fn agent_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "127.0.0.1:8080"),
        (
            "authorization",
            "Bearer seks_openai_0123456789abcdef0123456789abcdef",
        ),
        (
            "x-api-key",
            "seks_anthropic_0123456789abcdef0123456789abcdef",
        ),
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.99.0"),
        ("x-stainless-retry-count", "0"),
        ("content-length", "96"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
}

#[divan::bench(args = [
    ("openai", "/v1/chat/completions"),
    ("anthropic", "/v1/messages"),
    ("telegram", "/botseks_telegram_0123456789abcdef/sendMessage"),
])]
fn rewrite_request(bencher: divan::Bencher, (name, rest): (&str, &str)) {
    let providers = Providers::load(&BTreeMap::new()).unwrap();
    let provider = providers.get(name).unwrap().clone();
    let agent = agent_headers();
    let key = SecretString::from("sk-live-0123456789abcdefghijklmnopqrstuvwxyzABCDEF");
    bencher.bench_local(|| {
        let path = rewrite::strip_token_segment(&provider, divan::black_box(rest));
        let uri = rewrite::upstream_uri(&provider, &path, None, &key).unwrap();
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri;
        *request.headers_mut() = rewrite::forwardable_headers(&provider, &agent);
        rewrite::inject(&provider, &mut request, &key).unwrap();
        request
    });
}
