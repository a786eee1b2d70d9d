//! The response future of [`Auth`](super::Auth).

use crate::error::BoxError;
use http::Response;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

type Inner<R> = Pin<Box<dyn Future<Output = Result<Response<R>, BoxError>> + Send>>;

/// The future [`Auth`](super::Auth) returns: the token look-up, the call, and at most one replay after a `401`.
pub struct ResponseFuture<R> {
    inner: Inner<R>,
}

impl<R> ResponseFuture<R> {
    pub(crate) fn new(inner: Inner<R>) -> Self {
        ResponseFuture { inner }
    }
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<Response<R>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
