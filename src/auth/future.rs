//! The response future of [`Auth`](super::Auth).

use crate::error::BoxError;
use http::Response;

crate::macros::boxed_response_future! {
    /// The future [`Auth`](super::Auth) returns: the token look-up, the call, and at most one replay after a
    /// `401`.
    ResponseFuture<R> => Result<Response<R>, BoxError>
}
