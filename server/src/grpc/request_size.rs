//! Requests over `--max-request-bytes`. tonic refuses them while decoding,
//! from the length prefix alone (the message is never buffered), with
//! `OUT_OF_RANGE` and a bare message; gRPC's convention for a message over
//! the size limit is `RESOURCE_EXHAUSTED`, and Vow's for every error is an
//! `ErrorInfo`. [`RequestSizeLayer`] rewrites that one answer into
//! `RESOURCE_EXHAUSTED` with `ErrorInfo{reason: REQUEST_TOO_LARGE,
//! metadata{limit_bytes}}`. Vow's own code never answers `OUT_OF_RANGE`, so
//! only tonic's refusal is touched.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tonic::{Code, Status, body::Body};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::ERROR_DOMAIN;
use crate::telemetry::propagation::trace_id_of;

/// `ErrorInfo.reason` of a request over the size limit.
pub const REQUEST_TOO_LARGE: &str = "REQUEST_TOO_LARGE";
/// How tonic's decoder begins the message of a message over the limit.
const TONIC_OVER_LIMIT_MESSAGE: &str = "Error, decoded message length too large";

/// Answers requests over `limit_bytes` with `RESOURCE_EXHAUSTED` (see the module).
#[derive(Clone, Copy, Debug)]
pub struct RequestSizeLayer {
    pub limit_bytes: usize,
}

impl<S> tower::Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;

    fn layer(&self, inner: S) -> RequestSize<S> {
        RequestSize {
            inner,
            limit_bytes: self.limit_bytes,
        }
    }
}

/// See [`RequestSizeLayer`].
#[derive(Clone, Debug)]
pub struct RequestSize<S> {
    inner: S,
    limit_bytes: usize,
}

impl<S, B> tower::Service<http::Request<B>> for RequestSize<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = RewriteOverLimit<S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let trace_id = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
            .and_then(trace_id_of)
            .map(str::to_owned);
        RewriteOverLimit {
            inner: self.inner.call(request),
            limit_bytes: self.limit_bytes,
            trace_id,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of the inner service, rewritten if it is tonic's refusal.
    pub struct RewriteOverLimit<F> {
        #[pin]
        inner: F,
        limit_bytes: usize,
        trace_id: Option<String>,
    }
}

impl<F, E> Future for RewriteOverLimit<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(context))?;
        // A refusal before any message is a trailers-only response: the
        // status is in the headers.
        let over_limit = Status::from_header_map(response.headers()).is_some_and(|status| {
            status.code() == Code::OutOfRange
                && status.message().starts_with(TONIC_OVER_LIMIT_MESSAGE)
        });
        if !over_limit {
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(over_limit_status(
            *this.limit_bytes,
            this.trace_id.take(),
        )
        .into_http()))
    }
}

fn over_limit_status(limit_bytes: usize, trace_id: Option<String>) -> Status {
    let mut metadata = HashMap::from([("limit_bytes".to_owned(), limit_bytes.to_string())]);
    if let Some(trace_id) = trace_id {
        metadata.insert("trace_id".to_owned(), trace_id);
    }
    let details = ErrorDetails::with_error_info(REQUEST_TOO_LARGE, ERROR_DOMAIN, metadata);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!("the request is larger than the server's limit of {limit_bytes} bytes"),
        details,
    )
}
