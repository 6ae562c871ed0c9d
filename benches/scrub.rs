//! Scrubber throughput: how many bytes per second a response body streams through
//! `StreamScrubber`, with 1 and with 1,000 secrets loaded, on plain text and on JSON full
//! of escapes (which turns on the JSON-unescaping view). Run: `cargo bench --bench scrub`.

use std::sync::Arc;

use bytes::Bytes;
use divan::counter::BytesCount;
use seks::scrub::Scrubber;

fn main() {
    divan::main();
}

const BODY_BYTES: usize = 16 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;

fn secrets(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("sk-proj-{i:04}-{}", seks::tokens::random_base62(40)))
        .collect()
}

fn scrubber(n: usize) -> Arc<Scrubber> {
    let secrets = secrets(n);
    Arc::new(Scrubber::new(secrets.iter().map(|s| s.as_bytes())).unwrap())
}

/// Streaming chat-completion text: JSON with `\n` and `\"` escapes, like an LLM answer.
fn llm_json() -> Vec<Bytes> {
    let event = br#"data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"Here is the code:\n```python\nprint(\"hello\")\n```\n"}}]}"#;
    body_of(event)
}

/// Streaming code with escaped backslashes (`"\\n"` in the code), which turns on the
/// JSON-unescaping view for a second layer of escapes.
fn llm_code_json() -> Vec<Bytes> {
    let event =
        br#"data: {"id":"chatcmpl-1","choices":[{"delta":{"content":"print(\"a\\nb\")\n"}}]}"#;
    body_of(event)
}

/// Plain text without escapes (a file download).
fn plain() -> Vec<Bytes> {
    body_of(b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopqrstuvwxyz. ")
}

fn body_of(pattern: &[u8]) -> Vec<Bytes> {
    let body: Vec<u8> = pattern.iter().copied().cycle().take(BODY_BYTES).collect();
    body.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

fn run(scrubber: &Arc<Scrubber>, chunks: &[Bytes]) -> usize {
    let mut stream = scrubber.stream();
    let mut total = 0;
    for chunk in chunks {
        total += stream.push(chunk.clone()).len();
    }
    total + stream.finish().len()
}

#[divan::bench(args = [1, 1000], sample_count = 10)]
fn stream_llm_json(bencher: divan::Bencher, secrets: usize) {
    let s = scrubber(secrets);
    let chunks = llm_json();
    bencher
        .counter(BytesCount::new(BODY_BYTES))
        .bench(|| run(&s, &chunks));
}

#[divan::bench(args = [1, 1000], sample_count = 10)]
fn stream_llm_code_json(bencher: divan::Bencher, secrets: usize) {
    let s = scrubber(secrets);
    let chunks = llm_code_json();
    bencher
        .counter(BytesCount::new(BODY_BYTES))
        .bench(|| run(&s, &chunks));
}

#[divan::bench(args = [1, 1000], sample_count = 10)]
fn stream_plain(bencher: divan::Bencher, secrets: usize) {
    let s = scrubber(secrets);
    let chunks = plain();
    bencher
        .counter(BytesCount::new(BODY_BYTES))
        .bench(|| run(&s, &chunks));
}

/// Small JSON answers, one per request: the per-response cost.
#[divan::bench(args = [1, 1000])]
fn small_json_response(bencher: divan::Bencher, secrets: usize) {
    let s = scrubber(secrets);
    let body = Bytes::from_static(
        br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the mock"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9}}"#,
    );
    bencher.bench(|| run(&s, std::slice::from_ref(&body)));
}

/// Rebuilding the scrubber, as a broker does when a secret is added, rotated or removed.
#[divan::bench(args = [1, 1000], sample_count = 10)]
fn build(bencher: divan::Bencher, secrets: usize) {
    let values = self::secrets(secrets);
    bencher.bench(|| Scrubber::new(values.iter().map(|s| s.as_bytes())).unwrap());
}
