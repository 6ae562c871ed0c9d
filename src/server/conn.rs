//! Serving connections: agent connections accepted with `TCP_NODELAY` (answers are small
//! and latency counts) and counted for the `connections_active` metric, and the accept loop
//! both listeners share.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutBody;
use tower_service::Service;

use crate::metrics;

/// Longest a client may leave a request unfinished: no byte of its head, or of its body
/// once the broker reads it, for this long and the request is dropped.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest an idle connection being closed waits for its client's part of the handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A request body that fails once the client has sent nothing for [`CLIENT_TIMEOUT`], so
/// whatever reads it (policy, a capability, the upstream) gets an error, not a hang.
pub fn timed_body(body: Incoming) -> Body {
    Body::new(TimeoutBody::new(CLIENT_TIMEOUT, body))
}

/// Serve `router` on `listener` until `shutdown` resolves, then wait for open connections
/// to finish, or until `cut_off` (when given) turns true. Unlike `axum::serve`, connections
/// get hyper's timer, so a client that never finishes its request head (or sits idle
/// between requests) is cut after [`CLIENT_TIMEOUT`] instead of holding its connection and
/// task forever; hyper has no such timer for HTTP/2, so a connection with no request open
/// for that long is closed too.
pub async fn serve<L>(
    mut listener: L,
    router: Router,
    shutdown: impl Future<Output = ()>,
    cut_off: Option<watch::Receiver<bool>>,
) -> io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let (stop, _) = watch::channel(false);
    let tasks = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let router = router.clone();
        let requests = OpenRequests::default();
        let counted = requests.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut request = request.map(timed_body);
            request
                .extensions_mut()
                .insert(ConnectInfo(ClientAddr(addr)));
            let held = counted.hold();
            let response = router.clone().call(request);
            async move { Ok::<_, Infallible>(held.on(response.await?)) }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(CLIENT_TIMEOUT);
        builder.http2().timer(TokioTimer::new());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let mut stopped = stop.subscribe();
        let cut_off = cut_off.clone();
        tasks.spawn(async move {
            let stopping = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let cut = async move {
                match cut_off {
                    Some(cut_off) => cut_off_signal(cut_off).await,
                    None => std::future::pending().await,
                }
            };
            if let Err(e) = serve_until_idle(conn, &requests, stopping, cut).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    let _ = stop.send(true);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Resolves once `cut_off` turns true, or its sender is gone (the broker is going away).
pub(crate) async fn cut_off_signal(mut cut_off: watch::Receiver<bool>) {
    let _ = cut_off.wait_for(|cut| *cut).await;
}

/// Serve `conn` until it ends; once `stop` resolves, or once it has had no request open
/// for [`CLIENT_TIMEOUT`] (hyper times out idle HTTP/1 connections, but not HTTP/2 ones), it
/// is shut down gracefully. Once stopping, `cut_off` drops it with whatever it still has in
/// flight.
pub(crate) async fn serve_until_idle<C: GracefulConnection>(
    conn: C,
    requests: &OpenRequests,
    stop: impl Future<Output = ()>,
    cut_off: impl Future<Output = ()>,
) -> Result<(), C::Error> {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => served,
        () = requests.idle_for(CLIENT_TIMEOUT) => {
            conn.as_mut().graceful_shutdown();
            // Unless a request slipped in, a client that doesn't take part in the closing
            // handshake is dropped.
            tokio::select! {
                served = conn.as_mut() => served,
                () = requests.idle_for(CLOSE_WAIT) => Ok(()),
            }
        }
        () = stop => {
            conn.as_mut().graceful_shutdown();
            // A response its client stopped reading never gets to end its body when cut off
            // (its writes wait on a full socket); dropping it is what submits its record.
            tokio::select! {
                served = conn.as_mut() => served,
                () = cut_off => Ok(()),
            }
        }
    }
}

/// How many requests of one connection are open (until their response bodies end), and how
/// many have begun or ended, so a quick one still counts as activity. Atomics, not a channel
/// that wakes a watcher: they change on every request, and the idle check reads them rarely.
#[derive(Debug, Default)]
struct Count {
    open: AtomicUsize,
    events: AtomicU64,
}

impl Count {
    fn begin(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// The requests open on one connection.
#[derive(Clone, Default)]
pub(crate) struct OpenRequests(Arc<Count>);

impl OpenRequests {
    /// Count a request as open, until [`Held::on`]'s response body is done with.
    pub(crate) fn hold(&self) -> Held {
        self.0.begin();
        Held(self.0.clone())
    }

    /// Resolves once no request has been open, and none has begun or ended, for `wait` (up
    /// to a sixth longer: the count is looked at six times per `wait`).
    async fn idle_for(&self, wait: Duration) {
        const LOOKS: u32 = 6;
        let every = wait / LOOKS;
        let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut seen = self.0.events.load(Ordering::Relaxed);
        let mut quiet = 0;
        while quiet < LOOKS {
            looks.tick().await;
            let events = self.0.events.load(Ordering::Relaxed);
            if events == seen && self.0.open.load(Ordering::Relaxed) == 0 {
                quiet += 1;
            } else {
                (seen, quiet) = (events, 0);
            }
        }
    }
}

/// One open request of a connection.
pub(crate) struct Held(Arc<Count>);

impl Held {
    /// The response, whose body keeps the request open until it is done with.
    pub(crate) fn on(self, response: Response<Body>) -> Response<Body> {
        response.map(|body| Body::new(HeldBody { body, _held: self }))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request counted as open until it is done with.
struct HeldBody {
    body: Body,
    /// Dropped with the body, ending the request.
    _held: Held,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A TCP listener whose connections are counted while open.
pub struct CountedListener(pub TcpListener);

/// An open agent connection.
pub struct CountedStream(TcpStream);

/// The agent's address, as request handlers see it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

impl Listener for CountedListener {
    type Io = CountedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountedStream, SocketAddr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        metrics::get().connections.inc();
        (CountedStream(stream), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        metrics::get().connections.dec();
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
