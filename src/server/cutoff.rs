//! Ending responses still streaming when the shutdown grace runs out, so their connections
//! close and their audit records are written before the broker exits.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::watch;

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response body that ends with an error once `cut_off` turns true.
pub struct CutOffBody {
    inner: Body,
    cut_off: Signal,
}

impl CutOffBody {
    /// Wrap `inner`, watching `cut_off`.
    pub fn new(inner: Body, cut_off: watch::Receiver<bool>) -> Self {
        CutOffBody {
            inner,
            cut_off: Box::pin(super::cut_off_signal(cut_off)),
        }
    }
}

impl http_body::Body for CutOffBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.cut_off.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new("the broker is shutting down"))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
