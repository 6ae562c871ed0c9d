//! Counting the LLM tokens a response used, from the provider's own `usage` report, in a
//! JSON body or an SSE stream, while the body streams to the agent.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::scrub::BoxError;

/// Largest JSON body kept to read its usage (LLM answers are far smaller).
const MAX_JSON: usize = 8 * 1024 * 1024;
/// How long the rest of a response is read for its usage after the agent hung up.
const DRAIN_FOR: Duration = Duration::from_secs(300);
/// A response cut short without a usage report is charged one token per this many bytes.
const BYTES_PER_TOKEN: u64 = 4;

/// Usage reported so far in one response, and the model that answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    total: u64,
    input: u64,
    output: u64,
    model: Option<String>,
}

impl Usage {
    /// Tokens used: the reported total, or input plus output where no total is given.
    pub fn tokens(&self) -> u64 {
        self.total.max(self.input + self.output)
    }

    /// The model the answer names (`model`, Anthropic's `message.model`, Gemini's
    /// `modelVersion`, the Responses API's `response.model`).
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The usage one JSON document reports (none if it isn't JSON).
    pub fn reported_in(json: &[u8]) -> Usage {
        let mut usage = Usage::default();
        if let Some(doc) = usage_fields(json) {
            usage.absorb(&doc);
        }
        usage
    }

    /// Take in one JSON document (a body, or one SSE event): OpenAI-style `usage.total_tokens`
    /// (`response.usage` in Responses API events), Anthropic's `usage` / `message.usage`
    /// input and output (cumulative in streams), and Gemini's `usageMetadata.totalTokenCount`
    /// (in an array of chunks when Gemini streams without SSE).
    pub fn absorb(&mut self, doc: &Value) {
        if let Value::Array(items) = doc {
            items.iter().for_each(|item| self.absorb(item));
            return;
        }
        if self.model.is_none() {
            self.model = [
                &doc["model"],
                &doc["message"]["model"],
                &doc["modelVersion"],
                &doc["response"]["model"],
            ]
            .into_iter()
            .find_map(Value::as_str)
            .map(str::to_owned);
        }
        let n = |v: &Value| v.as_u64();
        if let Some(total) = n(&doc["usage"]["total_tokens"])
            .or_else(|| n(&doc["response"]["usage"]["total_tokens"]))
            .or_else(|| n(&doc["usageMetadata"]["totalTokenCount"]))
        {
            self.total = self.total.max(total);
        }
        for usage in [
            &doc["usage"],
            &doc["message"]["usage"],
            &doc["response"]["usage"],
        ] {
            if let Some(input) = n(&usage["input_tokens"]) {
                self.input = self.input.max(input);
            }
            if let Some(output) = n(&usage["output_tokens"]) {
                self.output = self.output.max(output);
            }
        }
    }
}

/// The members of a response document that [`Usage::absorb`] reads, borrowed as raw JSON:
/// serde skips the rest without building it, which matters on the path of every response.
#[derive(Deserialize)]
struct UsageMembers<'a> {
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "modelVersion")]
    model_version: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "usageMetadata")]
    usage_metadata: Option<&'a RawValue>,
}

/// A JSON document reduced to what usage is read from; `None` if it isn't JSON. Arrays
/// (Gemini's unframed streams) and documents the narrow reading refuses (a repeated member)
/// are read whole, so nothing odd elsewhere in a document can hide its usage.
fn usage_fields(json: &[u8]) -> Option<Value> {
    if !json.starts_with(b"[")
        && let Ok(members) = serde_json::from_slice::<UsageMembers>(json)
    {
        let fields = [
            ("model", members.model),
            ("message", members.message),
            ("modelVersion", members.model_version),
            ("response", members.response),
            ("usage", members.usage),
            ("usageMetadata", members.usage_metadata),
        ];
        let doc = fields
            .into_iter()
            .filter_map(|(name, raw)| {
                let value = serde_json::from_str::<Value>(raw?.get()).ok()?;
                Some((name.to_owned(), value))
            })
            .collect();
        return Some(Value::Object(doc));
    }
    serde_json::from_slice::<Value>(json).ok()
}

/// Reads usage out of a response as it passes.
#[derive(Debug)]
pub struct UsageMeter {
    sse: bool,
    /// A JSON body so far, or the current unfinished SSE line.
    buf: Vec<u8>,
    overflow: bool,
    usage: Usage,
    /// Body bytes seen.
    seen: u64,
    /// The body's declared length, when it has one.
    expected: Option<u64>,
}

impl UsageMeter {
    /// A meter for a response with this content type and declared length.
    pub fn new(content_type: Option<&str>, content_length: Option<u64>) -> Self {
        UsageMeter {
            sse: content_type.is_some_and(|t| t.starts_with("text/event-stream")),
            buf: Vec::new(),
            overflow: false,
            usage: Usage::default(),
            seen: 0,
            expected: content_length,
        }
    }

    /// See one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        self.seen += chunk.len() as u64;
        if !self.sse {
            if self.buf.len() + chunk.len() > MAX_JSON {
                self.overflow = true;
                self.buf = Vec::new();
            }
            if !self.overflow {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        self.buf.extend_from_slice(chunk);
        while let Some(end) = memchr::memchr(b'\n', &self.buf) {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            self.event_line(&line);
        }
        if self.buf.len() > MAX_JSON {
            self.buf.clear();
        }
    }

    fn event_line(&mut self, line: &[u8]) {
        if let Some(data) = line.strip_prefix(b"data:")
            && let Some(doc) = usage_fields(data.trim_ascii())
        {
            self.usage.absorb(&doc);
        }
    }

    /// Whether every byte of a body of declared length has been seen (a server may never
    /// poll such a body for its end).
    fn complete(&self) -> bool {
        self.expected == Some(self.seen)
    }

    /// The body ended: the usage it reported.
    pub fn finish(mut self) -> Usage {
        if self.sse {
            let rest = std::mem::take(&mut self.buf);
            self.event_line(&rest);
        } else if let Some(doc) = usage_fields(&self.buf) {
            self.usage.absorb(&doc);
        }
        self.usage
    }

    /// The body was cut short: the usage reported so far, or an estimate from its size
    /// when there is no report, so a stream that never reached its usage isn't free.
    fn finish_cut(self) -> Usage {
        let estimate = self.seen.div_ceil(BYTES_PER_TOKEN);
        let mut usage = self.finish();
        if usage.tokens() == 0 {
            usage.total = estimate;
        }
        usage
    }
}

/// A response body that meters usage and reports it once, when the body ends. When the
/// agent hangs up first, the rest is read in the background (for at most `DRAIN_FOR`) to
/// find the usage report, which providers send last: leaving early doesn't make a call
/// free. Whatever it owns besides (concurrency slots) is released at the same moment.
pub struct MeteredBody<T: Send + 'static> {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    meter: Option<UsageMeter>,
    on_end: Option<Box<dyn FnOnce(Usage, T) + Send>>,
    held: Option<T>,
}

impl<T: Send + 'static> MeteredBody<T> {
    /// Meter `inner` (without a meter, just hold `held` until the end); `on_end(usage,
    /// held)` runs exactly once.
    pub fn new(
        inner: UnsyncBoxBody<Bytes, BoxError>,
        meter: Option<UsageMeter>,
        held: T,
        on_end: impl FnOnce(Usage, T) + Send + 'static,
    ) -> Self {
        MeteredBody {
            inner,
            meter,
            on_end: Some(Box::new(on_end)),
            held: Some(held),
        }
    }

    fn report(&mut self) {
        if let (Some(on_end), Some(held)) = (self.on_end.take(), self.held.take()) {
            on_end(
                self.meter
                    .take()
                    .map(UsageMeter::finish)
                    .unwrap_or_default(),
                held,
            );
        }
    }
}

impl<T: Send + 'static> Drop for MeteredBody<T> {
    fn drop(&mut self) {
        if self.meter.as_ref().is_some_and(UsageMeter::complete) {
            self.report();
            return;
        }
        let (Some(mut meter), Some(on_end), Some(held), Ok(runtime)) = (
            self.meter.take(),
            self.on_end.take(),
            self.held.take(),
            tokio::runtime::Handle::try_current(),
        ) else {
            self.report();
            return;
        };
        let mut rest = std::mem::take(&mut self.inner);
        runtime.spawn(async move {
            let drained = tokio::time::timeout(DRAIN_FOR, async {
                loop {
                    match rest.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                meter.observe(data);
                            }
                        }
                        Some(Err(_)) => return false,
                        None => return true,
                    }
                }
            })
            .await;
            let usage = if drained == Ok(true) {
                meter.finish()
            } else {
                meter.finish_cut()
            };
            on_end(usage, held);
        });
    }
}

impl<T: Send + Unpin + 'static> Body for MeteredBody<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(meter)) = (f.data_ref(), this.meter.as_mut()) {
                    meter.observe(data);
                }
                if this.meter.as_ref().is_some_and(UsageMeter::complete) {
                    this.report();
                }
            }
            None => this.report(),
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meter(content_type: &str, chunks: &[&str]) -> u64 {
        let mut m = UsageMeter::new(Some(content_type), None);
        for c in chunks {
            m.observe(c.as_bytes());
        }
        m.finish().tokens()
    }

    #[test]
    fn each_providers_usage_is_read_from_json_bodies() {
        let openai =
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})
                .to_string();
        assert_eq!(
            meter("application/json", &[&openai[..10], &openai[10..]]),
            9
        );
        let anthropic = json!({"usage": {"input_tokens": 7, "output_tokens": 3}}).to_string();
        assert_eq!(meter("application/json", &[&anthropic]), 10);
        let gemini = json!({"usageMetadata": {"totalTokenCount": 12}}).to_string();
        assert_eq!(meter("application/json", &[&gemini]), 12);
        assert_eq!(meter("application/json", &["not json"]), 0);
    }

    #[test]
    fn odd_documents_still_give_up_their_usage() {
        let read = |text: &str| {
            let mut m = UsageMeter::new(Some("application/json"), None);
            m.observe(text.as_bytes());
            m.finish()
        };
        // A repeated member is refused by the narrow reading and read whole instead.
        let repeated = r#"{"usage":{"total_tokens":1},"usage":{"total_tokens":40}}"#;
        assert_eq!(read(repeated).tokens(), 40);
        let odd_model =
            r#"{"model":{"id":7},"choices":[{"x":[1,2,{"y":null}]}],"usage":{"total_tokens":12}}"#;
        let usage = read(odd_model);
        assert_eq!((usage.tokens(), usage.model()), (12, None));
        assert_eq!(read("not json").tokens(), 0);
    }

    #[test]
    fn a_body_of_declared_length_is_complete_at_its_last_byte() {
        let mut m = UsageMeter::new(Some("application/json"), Some(10));
        m.observe(b"{\"a\":");
        assert!(!m.complete());
        m.observe(b"1234}");
        assert!(m.complete());
        assert!(!UsageMeter::new(None, None).complete());
    }

    #[test]
    fn the_answering_model_is_read_once() {
        let mut m = UsageMeter::new(Some("text/event-stream"), None);
        m.observe(b"data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\"}}\n\n");
        m.observe(b"data: {\"model\":\"other\"}\n\n");
        assert_eq!(m.finish().model(), Some("claude-x"));
    }

    #[test]
    fn usage_in_sse_streams_is_read_across_chunk_boundaries() {
        let openai = "data: {\"choices\":[]}\n\ndata: {\"choices\":[],\"usage\":{\"total_tokens\":21}}\n\ndata: [DONE]\n\n";
        assert_eq!(
            meter(
                "text/event-stream",
                &[&openai[..30], &openai[30..50], &openai[50..]]
            ),
            21
        );
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":8,\"output_tokens\":1}}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n";
        assert_eq!(meter("text/event-stream; charset=utf-8", &[anthropic]), 13);
        let gemini = "data: {\"usageMetadata\":{\"totalTokenCount\":4}}\r\n\r\ndata: {\"usageMetadata\":{\"totalTokenCount\":9}}";
        assert_eq!(meter("text/event-stream", &[gemini]), 9);
        let responses = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":4,\"total_tokens\":7}}}\n\n";
        assert_eq!(meter("text/event-stream", &[responses]), 7);
    }

    #[test]
    fn gemini_json_array_streams_are_summed_from_their_last_report() {
        let chunks = json!([
            {"candidates": [], "usageMetadata": {"totalTokenCount": 5}},
            {"candidates": [], "usageMetadata": {"totalTokenCount": 11}}
        ])
        .to_string();
        assert_eq!(meter("application/json", &[&chunks]), 11);
    }

    #[test]
    fn a_cut_stream_without_a_report_is_charged_by_size() {
        let mut m = UsageMeter::new(Some("text/event-stream"), None);
        m.observe(&[b'x'; 401]);
        assert_eq!(m.finish_cut().tokens(), 101);
        let mut m = UsageMeter::new(Some("text/event-stream"), None);
        m.observe(b"data: {\"usage\":{\"total_tokens\":3}}\n\n");
        assert_eq!(m.finish_cut().tokens(), 3);
    }
}
