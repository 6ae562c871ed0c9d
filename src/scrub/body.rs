//! An HTTP body adapter that scrubs data frames as they stream through.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;

use super::{Redactor, StreamScrubber};

/// Error type of bodies passing through the broker.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body with every secret masked; lengths are preserved.
pub struct ScrubBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    scrubber: StreamScrubber,
    /// Trailers that arrived while held-back bytes still had to be sent.
    trailers: Option<HeaderMap>,
    finished: bool,
    /// Where the scrubber in force is taken from for each frame, when set.
    following: Option<Arc<Redactor>>,
}

impl ScrubBody {
    /// Scrub `inner` with `scrubber`.
    pub fn new(inner: UnsyncBoxBody<Bytes, BoxError>, scrubber: StreamScrubber) -> Self {
        ScrubBody {
            inner,
            scrubber,
            trailers: None,
            finished: false,
            following: None,
        }
    }

    /// Scrub each frame with `redactor`'s scrubber at the time: a stream may last hours, and
    /// a secret added or rotated meanwhile must be masked too.
    pub fn following(mut self, redactor: Arc<Redactor>) -> Self {
        self.following = Some(redactor);
        self
    }

    fn renew(&mut self) {
        if let Some(redactor) = &self.following {
            self.scrubber.renew(redactor.load());
        }
    }

    /// Scrub trailer values like header values.
    fn scrub_trailers(&self, mut trailers: HeaderMap) -> HeaderMap {
        super::scrub_headers(self.scrubber.scrubber(), &mut trailers);
        trailers
    }
}

impl Body for ScrubBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let next = ready!(Pin::new(&mut this.inner).poll_frame(cx));
            this.renew();
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.scrubber.push(data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(this.scrub_trailers(trailers));
                        }
                        this.finished = true;
                        let rest = this.scrubber.finish();
                        if !rest.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(rest))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.finished = true;
                    let rest = this.scrubber.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Masks keep lengths, so the total is the inner body's.
        self.inner.size_hint()
    }
}
