//! The floor for `bench/suite.py --floor`: the least a proxy built on seks's stack (tokio's
//! one-thread runtime, hyper's HTTP/1 server, hyper-util's pooled client) does for the job —
//! strip the `/api/openai` prefix, put a fixed key in `Authorization`, forward to one
//! upstream and stream the answer back. No token, policy, scrubbing, metering or audit log:
//! what seks costs beyond this is seks's own work, and what this costs beyond nginx is the
//! stack's.
//!
//! Usage: `hyper_floor LISTEN_PORT UPSTREAM_PORT` (both on 127.0.0.1).

use std::convert::Infallible;
use std::error::Error;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::signal::unix::{SignalKind, signal};

/// The key the floor injects, as nginx's configuration in the suite does.
const KEY: &str = "Bearer sk-bench-A1b2C3d4E5f6G7h8I9j0A1b2C3d4E5f6G7h8I9j0";

type Answer = Response<Either<Incoming, Empty<Bytes>>>;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: hyper_floor LISTEN_PORT UPSTREAM_PORT";
    let listen: u16 = args.next().ok_or(usage)?.parse()?;
    let upstream: u16 = args.next().ok_or(usage)?.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: u16, upstream: u16) -> Result<(), Box<dyn Error>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    // Returning on SIGTERM, rather than dying of it, lets a build for profile-guided
    // optimisation (bench/pgo.py) write its profile on the way out.
    let mut terminate = signal(SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = terminate.recv() => return Ok(()),
        };
        stream.set_nodelay(true)?;
        let client = client.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| forward(client.clone(), upstream, request));
            // A client that hangs up mid-request is no concern of a benchmark's.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    upstream: u16,
    request: Request<Incoming>,
) -> Result<Answer, Infallible> {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let path = path.strip_prefix("/api/openai").unwrap_or(path);
    let Ok(uri) = format!("http://127.0.0.1:{upstream}{path}").parse() else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    parts.uri = uri;
    parts.headers.remove(header::HOST);
    parts
        .headers
        .insert(header::AUTHORIZATION, HeaderValue::from_static(KEY));
    let answer = match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    };
    Ok(answer)
}

fn status(code: StatusCode) -> Answer {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = code;
    response
}
