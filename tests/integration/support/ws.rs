//! A WebSocket echo server over TLS: it records each handshake's headers and each close
//! frame it gets, echoes messages, answers `say-key` with the credential its handshake
//! carried (as a careless server might), so tests can see the broker scrub it, and `say-big`
//! with a message of [`BIG`] bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// The size of the message `say-big` is answered with.
pub const BIG: usize = 64 * 1024;

/// A handshake's headers.
type Headers = Vec<(String, String)>;

/// The running server.
pub struct WsEcho {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<Headers>>>,
    /// The code of each close frame received (`None` for a frame without one).
    closes: Arc<Mutex<Vec<Option<u16>>>>,
}

impl WsEcho {
    pub async fn start(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes: Arc<Mutex<Vec<Headers>>> = Arc::default();
        let closes: Arc<Mutex<Vec<Option<u16>>>> = Arc::default();
        let (log, closed) = (handshakes.clone(), closes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, log, closed) = (acceptor.clone(), log.clone(), closed.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut credential = String::new();
                    // The error type is tungstenite's, whatever its size.
                    #[allow(clippy::result_large_err)]
                    let record = |request: &Request, response: Response| {
                        let headers: Headers = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        credential = request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(|v| v.trim_start_matches("Bearer ").to_owned())
                            .unwrap_or_default();
                        log.lock().unwrap().push(headers);
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        let reply = match message {
                            Message::Text(t) if t.as_str() == "say-key" => {
                                Message::text(format!("the key is {credential}"))
                            }
                            Message::Text(t) if t.as_str() == "say-big" => {
                                Message::text("x".repeat(BIG))
                            }
                            Message::Text(_) | Message::Binary(_) => message,
                            Message::Close(frame) => {
                                closed
                                    .lock()
                                    .unwrap()
                                    .push(frame.map(|f| u16::from(f.code)));
                                break;
                            }
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        WsEcho {
            addr,
            handshakes,
            closes,
        }
    }

    /// The headers of every handshake so far.
    pub fn handshakes(&self) -> Vec<Headers> {
        self.handshakes.lock().unwrap().clone()
    }

    /// The codes of the close frames received so far.
    pub fn closes(&self) -> Vec<Option<u16>> {
        self.closes.lock().unwrap().clone()
    }
}
