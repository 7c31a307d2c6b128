//! One span per RPC and one "rpc finished" log line with its gRPC status and latency.
//!
//! The latency runs from the request's arrival to the end of its response stream: after the
//! trailers of a unary call (its handler ran before the response headers, so timing from the
//! headers, as tower-http's `on_eos` does, reports almost nothing) and after the last message of
//! a stream. A response the client abandons before its end is logged as CANCELLED.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::{Instrument as _, Span, info, info_span};

/// gRPC's CANCELLED, for responses dropped before their end.
const CANCELLED: i32 = 1;
/// gRPC's UNKNOWN, for responses that end without a status.
const UNKNOWN: i32 = 2;

/// The layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestLogLayer;

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog { inner }
    }
}

/// The service produced by [`RequestLogLayer`].
#[derive(Clone, Debug)]
pub struct RequestLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body<Data = bytes::Bytes>,
{
    type Response = http::Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = info_span!("rpc", method = %request.uri().path(), workspace_id = tracing::field::Empty);
        let finish = Finish { span: span.clone(), started: Instant::now(), logged: false };
        let inner = span.in_scope(|| self.inner.call(request)).instrument(span);
        ResponseFuture { inner, finish: Some(finish) }
    }
}

pin_project! {
    /// The handler's future, run inside the RPC's span.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        finish: Option<Finish>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: Body<Data = bytes::Bytes>,
{
    type Output = Result<http::Response<LoggedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let mut finish = this.finish.take().expect("polled after completion");
        let response = match result {
            Ok(response) => response,
            Err(err) => {
                finish.log(UNKNOWN);
                return Poll::Ready(Err(err));
            }
        };
        let header_code = grpc_code(response.headers());
        // A trailers-only response (every error) ends with its headers: the body is empty and
        // may never be polled.
        if let Some(code) = header_code {
            finish.log(code);
        }
        Poll::Ready(Ok(response.map(|inner| LoggedBody { inner, header_code, finish })))
    }
}

pin_project! {
    /// A response body that logs the RPC once its stream ends (or is dropped before).
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        header_code: Option<i32>,
        finish: Finish,
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // Handler code that runs while the body is polled (streams) logs inside the RPC's span.
        let _entered = this.finish.span.clone().entered();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish.log(grpc_code(trailers).or(*this.header_code).unwrap_or(UNKNOWN));
                } else if this.inner.is_end_stream() {
                    this.finish.log(this.header_code.unwrap_or(UNKNOWN));
                }
            }
            Some(Err(_)) => this.finish.log(UNKNOWN),
            None => this.finish.log(this.header_code.unwrap_or(UNKNOWN)),
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

/// The pending log line of one RPC; written once, as CANCELLED if dropped unwritten.
struct Finish {
    span: Span,
    started: Instant,
    logged: bool,
}

impl Finish {
    fn log(&mut self, code: i32) {
        if self.logged {
            return;
        }
        self.logged = true;
        let duration = self.started.elapsed();
        self.span.in_scope(|| log_finished(code, duration));
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.log(CANCELLED);
    }
}

fn grpc_code(headers: &HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    Some(value.to_str().ok().and_then(|text| text.parse::<i32>().ok()).unwrap_or(UNKNOWN))
}

fn log_finished(code: i32, duration: Duration) {
    info!(
        grpc_code = code,
        grpc_status = ?tonic::Code::from(code),
        duration_ms = duration.as_secs_f64() * 1000.0,
        "rpc finished"
    );
}
