//! WebSocket upgrades, in base-URL and proxy mode alike: the handshake goes upstream like
//! any request (policy applied, credential injected), and once both sides have switched
//! protocols, messages are relayed; what comes from upstream is scrubbed like a body.
//!
//! No extension is offered upstream: a compressed message could hide a secret from the
//! scrubber. Messages are relayed whole (up to the body limit, past which both sides are
//! closed as too big, 1009), so a secret split across the frames of one message is still
//! found. Each message is scrubbed with the keyring's
//! scrubber in force when it arrives, not the one of the handshake: a session may last
//! hours, and a secret added or rotated meanwhile must be masked too.
//!
//! An upgraded connection leaves the listener's drain, so sessions are tracked here: shutdown
//! waits for them like for any request in flight, and once its grace is over tells both sides
//! of those still open that the broker is going away (1001) rather than dropping them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::task::TaskTracker;

use super::response::{Hidden, agent_headers};
use super::{ProxyError, TokenWatch};
use crate::clock;
use crate::keyring::Keyring;
use crate::policy::limits::{Admission, Limits};
use crate::policy::usage::Usage;
use crate::scrub::{Redactor, Scrubber};

/// The header naming negotiated extensions, which are never offered upstream.
const EXTENSIONS: &str = "sec-websocket-extensions";
/// The reason an agent's session closed by shutdown is given (with code 1001, going away).
const SHUTTING_DOWN: &str = "shutting_down";
/// The reason both sides of a session are given when a message is over the limit (with code
/// 1009, message too big).
const MESSAGE_TOO_BIG: &str = "message_too_big";
/// Longest wait to tell both sides a session was closed.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Whether a request asks to switch to WebSocket (`Connection: upgrade`, `Upgrade: websocket`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// The agent's side of a WebSocket handshake (HTTP/1.1), taken from its request so the
/// connection can switch once the upstream has.
pub fn take_upgrade(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    (parts.version == http::Version::HTTP_11 && is_upgrade(&parts.headers))
        .then(|| parts.extensions.remove::<OnUpgrade>())
        .flatten()
}

/// Make the upstream request (whose hop-by-hop headers were dropped) a WebSocket handshake
/// again, without extensions.
pub fn prepare_request(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.remove(EXTENSIONS);
}

/// The open WebSocket sessions, each relaying in its own task.
pub struct Sessions {
    /// Where each message's scrubber comes from.
    keyring: Arc<Keyring>,
    /// Largest message relayed, either way.
    max_message: usize,
    /// Every session, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Turns true when sessions still open must end (the shutdown grace is over).
    cut_off: watch::Receiver<bool>,
}

impl Sessions {
    /// No session yet; sessions will relay messages up to `max_message` bytes, scrub with
    /// `keyring`'s scrubber, and end when `cut_off` turns true.
    pub fn new(keyring: Arc<Keyring>, max_message: usize, cut_off: watch::Receiver<bool>) -> Self {
        Sessions {
            keyring,
            max_message,
            tasks: TaskTracker::new(),
            cut_off,
        }
    }

    /// Resolves once every session has ended; meant for shutdown, when no more can start.
    pub async fn drained(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Answer the agent's handshake with the upstream's 101 (headers cleaned and scrubbed),
    /// and relay messages between the two connections once both have switched, scrubbing the
    /// upstream's with the keyring's scrubber of the moment.
    pub fn switch(
        &self,
        agent: OnUpgrade,
        response: http::Response<Incoming>,
        hidden: &Hidden<'_>,
        watch: Option<TokenWatch>,
        admission: Option<Admission>,
    ) -> Result<Response, ProxyError> {
        let (response, upstream) = switched_response(response, hidden)?;
        let keyring = Arc::clone(&self.keyring);
        let max_message = self.max_message;
        let cut_off = self.cut_off.clone();
        self.tasks.spawn(async move {
            let (agent, upstream) = match tokio::try_join!(agent, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "websocket: a side did not switch protocols");
                    return;
                }
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(max_message))
                .max_frame_size(Some(max_message));
            let agent =
                WebSocketStream::from_raw_socket(TokioIo::new(agent), Role::Server, Some(config))
                    .await;
            let upstream = WebSocketStream::from_raw_socket(
                TokioIo::new(upstream),
                Role::Client,
                Some(config),
            )
            .await;
            let ended = closing_frame(watch, cut_off);
            // Under a token budget, the usage upstream messages report is charged as they come.
            let budget = admission.as_ref().filter(|a| a.counts_tokens());
            relay(agent, upstream, &keyring.redactor(), ended, budget).await;
            // Released only now: an open session counts against `concurrency` like a
            // streaming response does.
            drop(admission);
        });
        Ok(response)
    }
}

/// The close frame of a session the broker ends itself, once it must: when its token may no
/// longer be used (1008, policy violation, with the error's code), or when the shutdown grace
/// is over (1001, going away).
async fn closing_frame(
    watch: Option<TokenWatch>,
    mut cut_off: watch::Receiver<bool>,
) -> CloseFrame {
    let token_ended = async move {
        match watch {
            Some(token) => token.ended().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        reason = token_ended => {
            tracing::info!(%reason, "a WebSocket session was closed: its token may no longer be used");
            CloseFrame {
                code: CloseCode::Policy,
                // A close frame's reason has room for 123 bytes: the code, not the message.
                reason: reason.code().into(),
            }
        }
        // A dropped sender (the broker is going away) also ends the session.
        _ = cut_off.wait_for(|cut| *cut) => {
            tracing::info!("a WebSocket session was closed: the broker is shutting down");
            CloseFrame {
                code: CloseCode::Away,
                reason: SHUTTING_DOWN.into(),
            }
        }
    }
}

/// The agent's 101 made from the upstream's (headers cleaned and scrubbed), and the
/// upstream's side of the connection, once it has switched.
fn switched_response(
    mut response: http::Response<Incoming>,
    hidden: &Hidden<'_>,
) -> Result<(Response, OnUpgrade), ProxyError> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    // An extension the broker did not offer would carry messages it can't read.
    if parts.headers.contains_key(EXTENSIONS) {
        return Err(ProxyError::UnsupportedEncoding);
    }
    parts.extensions = http::Extensions::new();
    agent_headers(&mut parts.headers, hidden);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    Ok((Response::from_parts(parts, Body::empty()), upstream))
}

/// Relay messages both ways until either side closes, the agent's as they are, the
/// upstream's scrubbed with `redactor`'s scrubber as each arrives; or until `ended` says the
/// session must end, which closes both sides: the agent's with the frame it gives, the
/// upstream's as going away (1001); or until either side sends a message over the limit,
/// which closes both as too big (1009); or until the usage the upstream's messages report
/// uses up `budget`'s token budget, which closes both as a policy violation (1008,
/// `budget_exhausted`).
async fn relay<A, U>(
    agent: WebSocketStream<A>,
    upstream: WebSocketStream<U>,
    redactor: &Redactor,
    ended: impl Future<Output = CloseFrame>,
    budget: Option<&Admission>,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut to_agent, from_agent) = agent.split();
    let (mut to_upstream, from_upstream) = upstream.split();
    let outbound = pump(from_agent, &mut to_upstream, |message| (message, None));
    let inbound = pump(from_upstream, &mut to_agent, |message| {
        let spent = match (budget, &message) {
            (Some(admission), Message::Text(text)) => {
                charge_reported_usage(admission, text.as_str())
            }
            _ => None,
        };
        (scrubbed(message, &redactor.load()), spent)
    });
    // When one direction ends, so does the session: the frames each side is then sent.
    let closing = tokio::select! {
        last = outbound => last.map(|frame| (frame.clone(), frame)),
        last = inbound => last.map(|frame| (frame.clone(), frame)),
        close = ended => Some((close, CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        })),
    };
    // Both directions have stopped, so each side can be told the session is over (unless it
    // has stopped reading) instead of finding its connection dropped.
    if let Some((to_agent_close, to_upstream_close)) = closing {
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            tokio::join!(
                to_agent.send(Message::Close(Some(to_agent_close))),
                to_upstream.send(Message::Close(Some(to_upstream_close))),
            )
        })
        .await;
    }
}

/// Send `from`'s messages, each passed through `each`, to `to` until either side stops, then
/// close `to`; unless a message was over the limit, or `each` said the one it gave must be
/// the last: then the frame both sides must be sent.
async fn pump<S, K>(
    mut from: S,
    to: &mut K,
    mut each: impl FnMut(Message) -> (Message, Option<CloseFrame>),
) -> Option<CloseFrame>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    K: futures_util::Sink<Message> + Unpin,
{
    let closing = loop {
        let message = match from.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => break too_big(&e),
            None => break None,
        };
        let (message, last) = each(message);
        if to.send(message).await.is_err() {
            break None;
        }
        if last.is_some() {
            break last;
        }
    };
    if closing.is_none() {
        let _ = to.close().await;
    }
    closing
}

/// The close frame for both sides when a side's message broke off with `error` because it
/// was over the limit; `None` for any other error, which just ends the session.
fn too_big(error: &tungstenite::Error) -> Option<CloseFrame> {
    matches!(
        error,
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. })
    )
    .then(|| CloseFrame {
        code: CloseCode::Size,
        reason: MESSAGE_TOO_BIG.into(),
    })
}

/// Charge the usage an upstream message reports to a token budget. Each of OpenAI Realtime's
/// `response.done` events reports its own response's usage, so a session's messages add up;
/// they are charged as they arrive, since a session may last for hours. Once the budget is
/// used up, gives the frame that ends the session (1008, `budget_exhausted`): checked only
/// at the handshake, it would let the session ask for responses without bound.
fn charge_reported_usage(admission: &Admission, text: &str) -> Option<CloseFrame> {
    let tokens = Usage::reported_in(text.as_bytes()).tokens();
    if tokens == 0 {
        return None;
    }
    let now = clock::now();
    Limits::add_tokens(admission.charged(), tokens, now);
    let spent = admission.budget_used_up(now)?;
    Some(CloseFrame {
        code: CloseCode::Policy,
        reason: ProxyError::Limited(spent).code().into(),
    })
}

/// A message from upstream with every secret masked (lengths stay, as in bodies).
fn scrubbed(message: Message, scrubber: &Scrubber) -> Message {
    let masked = |bytes: &[u8]| {
        let mut buf = bytes.to_vec();
        scrubber.scrub_all(&mut buf);
        buf
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(&masked(bytes)).into_owned();
    match message {
        Message::Text(t) => Message::text(text(t.as_bytes())),
        Message::Binary(b) => Message::Binary(Bytes::from(masked(&b))),
        // Control frames carry up to 125 bytes of the upstream's choosing: room for a key.
        Message::Ping(b) => Message::Ping(Bytes::from(masked(&b))),
        Message::Pong(b) => Message::Pong(Bytes::from(masked(&b))),
        Message::Close(Some(frame)) => Message::Close(Some(CloseFrame {
            code: frame.code,
            reason: text(frame.reason.as_bytes()).into(),
        })),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_recognised_and_go_upstream_without_extensions() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade(&h));
        let mut up = HeaderMap::new();
        up.insert(EXTENSIONS, "permessage-deflate".parse().unwrap());
        prepare_request(&mut up);
        assert!(is_upgrade(&up) && !up.contains_key(EXTENSIONS));
    }

    #[test]
    fn upstream_messages_are_scrubbed() {
        let scrubber = Scrubber::new([b"sk-secret-value".as_slice()]).unwrap();
        let Message::Text(t) = scrubbed(Message::text("key=sk-secret-value!"), &scrubber) else {
            panic!("text stays text");
        };
        assert_eq!(t.as_str(), "key=***************!");
        let Message::Binary(b) = scrubbed(Message::binary(&b"sk-secret-value"[..]), &scrubber)
        else {
            panic!("binary stays binary");
        };
        assert_eq!(&b[..], b"***************");
        for control in [Message::Ping, Message::Pong] {
            assert_eq!(
                scrubbed(control(Bytes::from_static(b"p:sk-secret-value")), &scrubber),
                control(Bytes::from_static(b"p:***************"))
            );
        }
    }
}
