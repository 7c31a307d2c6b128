//! Ends open response streams with UNAVAILABLE when the server shuts down.
//!
//! Graceful shutdown in hyper waits for every open stream, and some (WatchMetrics, health Watch)
//! never end by themselves. This layer wraps every response body: once shutdown starts, a body
//! that has nothing ready ends with `grpc-status: 14` trailers, so clients learn to reconnect
//! instead of hanging. Frames that are already ready still flow.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{Layer, Service};

/// The layer; cloning it shares the token.
#[derive(Clone)]
pub struct EndStreamsOnShutdownLayer {
    token: CancellationToken,
}

impl EndStreamsOnShutdownLayer {
    /// Ends streams when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        Self { token }
    }
}

impl<S> Layer<S> for EndStreamsOnShutdownLayer {
    type Service = EndStreamsOnShutdown<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreamsOnShutdown { inner, token: self.token.clone() }
    }
}

/// The service produced by [`EndStreamsOnShutdownLayer`].
#[derive(Clone)]
pub struct EndStreamsOnShutdown<S> {
    inner: S,
    token: CancellationToken,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for EndStreamsOnShutdown<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = bytes::Bytes>,
{
    type Response = http::Response<ShutdownBody<ResBody>>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, Box<dyn FnOnce(S::Response) -> Self::Response + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        use futures::TryFutureExt as _;
        let token = self.token.clone();
        self.inner.call(request).map_ok(Box::new(move |response: http::Response<ResBody>| {
            response.map(|inner| ShutdownBody { inner, shutdown: token.cancelled_owned(), ended: false })
        }))
    }
}

pin_project! {
    /// A response body that ends with UNAVAILABLE trailers once shutdown starts.
    pub struct ShutdownBody<B> {
        #[pin]
        inner: B,
        #[pin]
        shutdown: WaitForCancellationFutureOwned,
        ended: bool,
    }
}

impl<B> Body for ShutdownBody<B>
where
    B: Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame);
        }
        ready!(this.shutdown.poll(cx));
        *this.ended = true;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        trailers.insert(
            "grpc-message",
            HeaderValue::from_static("berth%20is%20shutting%20down%3B%20reconnect%20and%20retry"),
        );
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
