//! The response future of [`RedisCache`](super::RedisCache).

use super::body::ResponseBody;
use crate::error::BoxError;
use http::Response;

crate::macros::boxed_response_future! {
    /// The future [`RedisCache`](super::RedisCache) returns: store look-up, then the inner call on a miss.
    ResponseFuture<R> => Result<Response<ResponseBody<R>>, BoxError>
}
