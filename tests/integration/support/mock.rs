//! A real HTTP upstream on a loopback socket that records what it receives and answers
//! like the providers do (JSON and SSE), plus paths that misbehave on purpose, and an
//! OAuth2 token endpoint ([`token_endpoint`]).

pub mod token_endpoint;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use token_endpoint::TokenEndpoint;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: hyper::Version,
    pub method: String,
    /// Path and query, exactly as received.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Everything received, as text, to search for leaks.
    pub fn raw(&self) -> String {
        let mut s = format!("{} {}\n", self.method, self.target);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// The mock upstream server.
pub struct MockUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
    connections: Arc<Mutex<u32>>,
    in_flight: Arc<InFlight>,
    /// The OAuth2 token endpoint at `/oauth2/token`.
    pub oauth: Arc<TokenEndpoint>,
}

/// Requests being handled now, and the most at once.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl MockUpstream {
    /// Plain HTTP/1.1 on loopback.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with the given TLS acceptor.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        Self::start_with(Some(acceptor)).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let gate = Arc::new(Notify::new());
        let connections: Arc<Mutex<u32>> = Arc::default();
        let in_flight: Arc<InFlight> = Arc::default();
        let oauth: Arc<TokenEndpoint> = Arc::default();
        let (s, g, c, f, o) = (
            seen.clone(),
            gate.clone(),
            connections.clone(),
            in_flight.clone(),
            oauth.clone(),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *c.lock().unwrap() += 1;
                let (s, g, f, o, tls) = (s.clone(), g.clone(), f.clone(), o.clone(), tls.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        counted(req, s.clone(), g.clone(), f.clone(), o.clone())
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let _ = hyper_util::server::conn::auto::Builder::new(
                                hyper_util::rt::TokioExecutor::new(),
                            )
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        }
                    }
                });
            }
        });
        MockUpstream {
            addr,
            seen,
            gate,
            connections,
            in_flight,
            oauth,
        }
    }

    /// The most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.in_flight.max.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u32 {
        *self.connections.lock().unwrap()
    }

    /// Let a `/gated` stream send its second event.
    pub fn release(&self) {
        self.gate.notify_one();
    }
}

async fn counted(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
    in_flight: Arc<InFlight>,
    oauth: Arc<TokenEndpoint>,
) -> Result<Response<MockBody>, Infallible> {
    use std::sync::atomic::Ordering::SeqCst;
    let now = in_flight.now.fetch_add(1, SeqCst) + 1;
    in_flight.max.fetch_max(now, SeqCst);
    let response = handle(req, seen, gate, oauth).await;
    in_flight.now.fetch_sub(1, SeqCst);
    response
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    gate: Arc<Notify>,
    oauth: Arc<TokenEndpoint>,
) -> Result<Response<MockBody>, Infallible> {
    let version = req.version();
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let req_query = req.uri().query().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let stream = json["stream"] == true;
    let stream_usage = json["stream_options"]["include_usage"] == true;
    let injected = injected_credential(&headers);
    let query = req_query;
    let oauth_answer = oauth.serve(&method, &path, &headers, &body).await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let asked = header("x-mock-answer").map(|a| {
        let encoding = header("x-mock-encoding").unwrap_or_default();
        let status = header("x-mock-status").and_then(|s| s.parse::<u16>().ok());
        (
            a,
            encoding,
            header("x-mock-set-cookie"),
            status.unwrap_or(200),
        )
    });
    seen.lock().unwrap().push(Seen {
        version,
        method,
        target: target.clone(),
        headers,
        body: body.clone(),
    });

    let response = if let Some(response) = oauth_answer {
        response
    } else if let Some((answer, encoding, cookie, status)) = asked {
        // `x-mock-answer`: the body to answer, as JSON, compressed as `x-mock-encoding` says,
        // with `x-mock-set-cookie` as a cookie and `x-mock-status` as the status.
        let (body, builder) = encoded(&encoding, answer.into_bytes(), Response::builder());
        let mut builder = builder
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", body.len());
        if let Some(cookie) = cookie {
            builder = builder.header("set-cookie", cookie);
        }
        builder
            .body(
                http_body_util::Full::new(Bytes::from(body))
                    .map_err(|e| match e {})
                    .boxed(),
            )
            .unwrap()
    } else if path.ends_with("/late-usage/chat/completions") && stream {
        late_usage(stream_usage)
    } else if path.ends_with("/chat/completions") {
        if stream {
            sse(openai_stream(stream_usage))
        } else {
            json_response(openai_completion())
        }
    } else if path.ends_with("/messages") {
        if stream {
            sse(anthropic_stream())
        } else {
            json_response(anthropic_message())
        }
    } else if path.contains(":streamGenerateContent") && query.contains("alt=sse") {
        sse(vec![format!("data: {}\r\n\r\n", gemini_response())])
    } else if path.contains(":streamGenerateContent") {
        // Without `alt=sse`, Gemini streams one JSON array of chunks.
        json_response(serde_json::json!([gemini_response(), gemini_response()]))
    } else if path.contains(":generateContent") {
        json_response(gemini_response())
    } else if path == "/user" {
        json_response(serde_json::json!({"login": "octocat", "id": 1}))
    } else if path.ends_with("/gated") {
        gated(gate)
    } else if path.ends_with("/sleep") {
        tokio::time::sleep(Duration::from_millis(400)).await;
        json_response(serde_json::json!({"slept": true}))
    } else if path.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(30)).await;
        json_response(serde_json::json!({"late": true}))
    } else if path.ends_with("/stall") {
        stalled()
    } else if path.ends_with("/gated-say") {
        gated_say(gate, query.strip_prefix("say=").unwrap_or("").to_owned())
    } else if path.ends_with("/drip") {
        drip()
    } else if path.ends_with("/close") {
        // Answers, then closes the connection, as a server ending keep-alive does.
        Response::builder()
            .header("connection", "close")
            .body(full("{}".to_owned()))
            .unwrap()
    } else if path.ends_with("/reset") {
        reset_mid_stream()
    } else if path.ends_with("/reflect") {
        reflect(&injected, &query)
    } else if path.ends_with("/reflect-sse") {
        reflect_sse(&injected)
    } else if path.ends_with("/big") {
        big(query
            .strip_prefix("mb=")
            .and_then(|n| n.parse().ok())
            .unwrap_or(1))
    } else if path.ends_with("/echo-body") {
        Response::builder()
            .header("content-type", "text/plain")
            .body(full(String::from_utf8_lossy(&body).into_owned()))
            .unwrap()
    } else if path.ends_with("/redirect") {
        // `?to=<url>`: a redirect to wherever the test says.
        Response::builder()
            .status(302)
            .header("location", query.strip_prefix("to=").unwrap_or("/"))
            .body(full(String::new()))
            .unwrap()
    } else if path.ends_with("/echo-url") {
        echo_url(&target)
    } else if path.ends_with("/spoof") {
        Response::builder()
            .status(418)
            .header("x-seks-error", "spoofed")
            .header("x-upstream", "kept")
            .body(full("{}".to_owned()))
            .unwrap()
    } else {
        json_response(serde_json::json!({"path": path, "received_bytes": body.len()}))
    };
    Ok(response)
}

/// The credential the broker injected, whichever header it went in.
fn injected_credential(headers: &[(String, String)]) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    get("authorization")
        .map(|v| v.trim_start_matches("Bearer ").to_owned())
        .or_else(|| get("x-api-key"))
        .or_else(|| get("x-goog-api-key"))
        .unwrap_or_default()
}

/// A JSON body and headers quoting `secret` in every form, compressed as `encoding=` asks.
fn reflect(secret: &str, query: &str) -> Response<MockBody> {
    let forms = super::forms::encodings(secret);
    let text = super::forms::reflect_json(secret);
    let mut builder = Response::builder().header("content-type", "application/json");
    for (name, form) in forms
        .iter()
        .filter(|(n, _)| ["raw", "b64_1", "hex", "pct_all", "json_u"].contains(&n.as_str()))
    {
        builder = builder.header(format!("x-reflect-{name}"), form.as_str());
    }
    let encoding = query.strip_prefix("encoding=").unwrap_or("");
    let encoding = percent_encoding::percent_decode_str(encoding).decode_utf8_lossy();
    let (body, builder) = encoded(&encoding, text.into_bytes(), builder);
    builder
        .header("content-length", body.len())
        .body(
            http_body_util::Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

/// `data` compressed with `encoding` (`gzip`, `deflate`, `br`, `zstd`; `""` for none).
/// `body` compressed by each of the comma-separated `codings` in turn, and `builder` with
/// a `Content-Encoding` line for each.
fn encoded(
    codings: &str,
    body: Vec<u8>,
    builder: http::response::Builder,
) -> (Vec<u8>, http::response::Builder) {
    codings
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .fold((body, builder), |(body, builder), coding| {
            (
                compress(coding, &body),
                builder.header("content-encoding", coding),
            )
        })
}

pub fn compress(encoding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match encoding {
        "" | "identity" => data.to_vec(),
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &data[..], &mut out, &Default::default()).unwrap();
            out
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        other => panic!("unknown encoding {other}"),
    }
}

/// SSE events that quote `secret` (raw and base64) split across chunks sent 30 ms apart.
fn reflect_sse(secret: &str) -> Response<MockBody> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    let text = format!(
        "data: {{\"n\":1,\"text\":\"key={secret}\"}}\n\ndata: {{\"n\":2,\"b64\":\"{b64}\"}}\n\ndata: [DONE]\n\n"
    );
    let bytes = text.into_bytes();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        // Small, uneven chunks, so every secret straddles several of them.
        for chunk in bytes.chunks(7) {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    stream_response(rx)
}

/// `mb` MiB of text in 64 KiB chunks, generated as it is sent.
fn big(mb: usize) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(
            b"{\"delta\":\"The quick brown fox jumps over the lazy dog 0123456789\\n\"}\n"
                .iter()
                .copied()
                .cycle()
                .take(64 * 1024)
                .collect::<Vec<u8>>(),
        );
        for _ in 0..mb * 16 {
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let mut response = stream_response(rx);
    response
        .headers_mut()
        .insert("content-length", (mb * 1024 * 1024).into());
    response
}

/// A 404 quoting the request URL as Telegram's does, raw and percent-encoded, in the body
/// and in headers: the way a sloppy upstream reflects a credential that travels in the path.
fn echo_url(target: &str) -> Response<MockBody> {
    let encoded: String = target.bytes().map(|b| format!("%{b:02X}")).collect();
    let body = serde_json::json!({
        "ok": false,
        "error_code": 404,
        "description": format!("Not Found: {target}"),
        "url": format!("https://api.telegram.org{target}"),
        "encoded": encoded,
    });
    Response::builder()
        .status(404)
        .header("content-type", "application/json")
        .header("x-request-url", target)
        .header("x-request-url-encoded", encoded.as_str())
        .body(full(body.to_string()))
        .unwrap()
}

fn json_response(value: serde_json::Value) -> Response<MockBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .unwrap()
}

fn full(text: String) -> MockBody {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|e| match e {})
        .boxed()
}

/// An SSE response whose events are sent as separate chunks, a few ms apart.
fn sse(events: Vec<String>) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for e in events {
            if tx.send(Ok(Bytes::from(e))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    stream_response(rx)
}

fn stream_response(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> Response<MockBody> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(ChannelBody(rx).boxed())
        .unwrap()
}

/// An OpenAI stream whose answer comes at once and whose usage report (1000 tokens, when
/// asked for) follows 800 ms later, as a separate last chunk.
fn late_usage(stream_usage: bool) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let answer = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\n";
        let _ = tx.send(Ok(Bytes::from(answer))).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        if stream_usage {
            let usage = "data: {\"choices\":[],\"usage\":{\"total_tokens\":1000}}\n\n";
            let _ = tx.send(Ok(Bytes::from(usage))).await;
        }
        let _ = tx.send(Ok(Bytes::from("data: [DONE]\n\n"))).await;
    });
    stream_response(rx)
}

/// First event now, second only after the test calls `release`.
fn gated(gate: Arc<Notify>) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from("data: first\n\n"))).await;
        gate.notified().await;
        let _ = tx.send(Ok(Bytes::from("data: second\n\n"))).await;
    });
    stream_response(rx)
}

/// One event, then, once released, an event saying `what` (which the test may meanwhile
/// have made a secret).
fn gated_say(gate: Arc<Notify>, what: String) -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from("data: first\n\n"))).await;
        gate.notified().await;
        let _ = tx.send(Ok(Bytes::from(format!("data: {what}\n\n")))).await;
    });
    stream_response(rx)
}

/// An event every 200 ms, forever (until the client goes).
fn drip() -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while tx.send(Ok(Bytes::from("data: drip\n\n"))).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    stream_response(rx)
}

/// Headers and one event, then silence forever.
fn stalled() -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from("data: first\n\n"))).await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(tx);
    });
    stream_response(rx)
}

/// Headers and one event, then the connection is torn down.
fn reset_mid_stream() -> Response<MockBody> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Bytes::from("data: first\n\n"))).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(Err(std::io::Error::other("reset"))).await;
    });
    stream_response(rx)
}

struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

fn openai_completion() -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
    })
}

/// Like OpenAI: the usage chunk only comes when the request asked for it.
fn openai_stream(with_usage: bool) -> Vec<String> {
    let chunk = |content: &str, finish: Option<&str>| {
        let delta = if content.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({"content": content})
        };
        format!(
            "data: {}\n\n",
            serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            })
        )
    };
    let mut events = vec![
        chunk("Hello", None),
        chunk(" from", None),
        chunk(" the mock", None),
        chunk("", Some("stop")),
    ];
    if with_usage {
        let usage = serde_json::json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-mini",
            "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        });
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

fn anthropic_message() -> serde_json::Value {
    serde_json::json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello from the mock"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 4}
    })
}

fn anthropic_stream() -> Vec<String> {
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    vec![
        ev(
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
            "id": "msg_mock", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " from the mock"}}),
        ),
        ev(
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 4}}),
        ),
        ev("message_stop", serde_json::json!({"type": "message_stop"})),
    ]
}

fn gemini_response() -> serde_json::Value {
    serde_json::json!({
        "candidates": [{"content": {"parts": [{"text": "Hello from the mock"}], "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 4, "totalTokenCount": 9},
        "modelVersion": "gemini-2.0-flash"
    })
}
