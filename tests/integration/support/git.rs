//! A smart-HTTP git server over TLS: `git http-backend` as CGI behind a small hyper server,
//! asking for Basic credentials (user `x-access-token`, password the expected key) the way
//! GitHub does, so git's 401-then-retry flow runs as it does against github.com.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::process::Command;

/// One request as the git server saw it.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

/// The running server.
pub struct GitServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<GitRequest>>>,
}

impl GitServer {
    /// Serve the repositories under `root` with `acceptor`, for Basic `x-access-token:<key>`.
    pub async fn start(root: &Path, acceptor: tokio_rustls::TlsAcceptor, key: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<GitRequest>>> = Arc::default();
        let expected = format!("Basic {}", BASE64.encode(format!("x-access-token:{key}")));
        let (root_dir, log) = (root.to_owned(), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, root, log, expected) = (
                    acceptor.clone(),
                    root_dir.clone(),
                    log.clone(),
                    expected.clone(),
                );
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req| {
                        let (root, log, expected) = (root.clone(), log.clone(), expected.clone());
                        async move { Ok::<_, Infallible>(handle(req, &root, &log, &expected).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GitServer { addr, seen }
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<GitRequest> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    req: Request<Incoming>,
    root: &Path,
    log: &Mutex<Vec<GitRequest>>,
    expected: &str,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    log.lock().unwrap().push(GitRequest {
        method: method.clone(),
        target: req.uri().to_string(),
        authorization: authorization.clone(),
    });
    if authorization.as_deref() != Some(expected) {
        return Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"GitHub\"")
            .body(Full::new(Bytes::from_static(b"authentication required\n")))
            .unwrap();
    }
    let content_type = header("content-type").unwrap_or_default();
    let encoding = header("content-encoding").unwrap_or_default();
    let protocol = header("git-protocol").unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let mut child = Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REMOTE_USER", "x-access-token")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", &query)
        .env("CONTENT_TYPE", &content_type)
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", &encoding)
        .env("GIT_PROTOCOL", &protocol)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    cgi_response(&out.stdout)
}

/// A CGI program's output as an HTTP response: headers (with `Status:`), a blank line, a body.
fn cgi_response(output: &[u8]) -> Response<Full<Bytes>> {
    let split = output
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| output.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(500)
            .body(Full::new(Bytes::from_static(b"bad CGI output")))
            .unwrap();
    };
    let mut response = Response::builder();
    for line in String::from_utf8_lossy(&output[..end]).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200");
            response = response.status(code.parse::<u16>().unwrap_or(500));
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(Full::new(Bytes::copy_from_slice(&output[end + sep..])))
        .unwrap()
}
