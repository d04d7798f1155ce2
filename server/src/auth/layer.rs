//! The tower layer that authenticates every call before any service sees
//! it, and hands the services the caller's [`Scope`].

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{
    AccessControl, Denial, NAMESPACE_HEADER, authenticate, authorize, peer, permission_for,
};
use crate::grpc::ERROR_DOMAIN;

/// Authenticates calls when access control is on; passes them through
/// untouched when it is off.
#[derive(Clone, Default)]
pub struct AccessLayer {
    control: Option<Arc<AccessControl>>,
}

impl AccessLayer {
    pub fn new(control: Option<Arc<AccessControl>>) -> Self {
        Self { control }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            control: self.control.clone(),
        }
    }
}

/// See [`AccessLayer`].
#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    control: Option<Arc<AccessControl>>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let Some(control) = &self.control else {
            return Either::Right(self.inner.call(request));
        };
        let Some(permission) = permission_for(request.uri().path()) else {
            return Either::Right(self.inner.call(request));
        };
        let config = control.current();
        let headers = request.headers();
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        let has_authorization = headers.contains_key(http::header::AUTHORIZATION);
        let named_namespace = headers
            .get(NAMESPACE_HEADER)
            .map(|value| value.to_str().unwrap_or("\u{fffd}").to_owned());
        let sans = peer::client_sans(request.extensions());
        let decided = match (bearer, has_authorization) {
            (None, true) => Err((
                None,
                Denial::Unauthenticated("authorization must be \"Bearer <key or token>\"".into()),
            )),
            _ => authenticate(&config, bearer, &sans)
                .map_err(|denial| (None, denial))
                .and_then(|grant| {
                    authorize(&grant, permission, named_namespace.as_deref())
                        .map(|scope| (grant.clone(), scope))
                        .map_err(|denial| (Some(grant), denial))
                }),
        };
        match decided {
            Ok((_, scope)) => {
                request.extensions_mut().insert(scope);
                Either::Right(self.inner.call(request))
            }
            Err((grant, denial)) => {
                let (code, reason, message) = match denial {
                    Denial::Unauthenticated(message) => {
                        (Code::Unauthenticated, "UNAUTHENTICATED", message)
                    }
                    Denial::Forbidden(message) => {
                        (Code::PermissionDenied, "PERMISSION_DENIED", message)
                    }
                };
                tracing::warn!(
                    target: "vow::audit",
                    method = request.uri().path(),
                    identity = grant.as_ref().map_or("unknown", |grant| grant.name.as_str()),
                    namespace = grant.as_ref().map_or("", |grant| grant.namespace_label()),
                    peer = %peer::peer_address(request.extensions()),
                    reason = %message,
                    "call denied"
                );
                let details = ErrorDetails::with_error_info(
                    reason,
                    ERROR_DOMAIN,
                    std::collections::HashMap::new(),
                );
                let status = Status::with_error_details(code, message, details);
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}
