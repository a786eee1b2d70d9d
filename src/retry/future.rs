//! The response future of [`Retry`](super::Retry).

use crate::error::BoxError;
use http::Response;

crate::macros::boxed_response_future! {
    /// The future [`Retry`](super::Retry) returns: the attempts and the sleeps between them.
    ResponseFuture<R> => Result<Response<R>, BoxError>
}
