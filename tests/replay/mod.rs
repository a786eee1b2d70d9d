//! What the retry and auth tests share to test the bodies they hold for replay: an upload that comes as a
//! stream, and an origin that refuses the first call of each path, holding that of `/a` until a gate opens.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::Service;
use tower_redis_cache::RequestBody;
use tower_redis_cache::error::BoxError;

/// A `PUT` to `path` whose body comes as a stream of `parts`, as a server's upload does.
pub(crate) fn streamed_put(
    path: &str,
    parts: &[&'static str],
) -> Request<impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static> {
    let frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = parts
        .iter()
        .map(|p| Ok(http_body::Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    Request::put(format!("http://api.test{path}"))
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap()
}

/// The calls an origin got: each one's path and body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An origin that answers the first call of each path with a refusal and every later one with `200`, and
/// holds the first call of `/a` until [`open`](Self::open).
#[derive(Clone)]
pub(crate) struct Gated {
    gate: Arc<Semaphore>,
    seen: Seen,
}

impl Gated {
    /// The origin's state: the gate shut, no call seen.
    pub(crate) fn new() -> Self {
        Gated {
            gate: Arc::new(Semaphore::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The origin, answering first calls with `refusal`.
    pub(crate) fn origin(
        &self,
        refusal: u16,
    ) -> impl Service<
        Request<RequestBody>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        tower::service_fn(move |request: Request<RequestBody>| {
            let this = this.clone();
            async move {
                let path = request.uri().path().to_owned();
                let body = request.into_body().collect().await?.to_bytes();
                let first = {
                    let mut seen = this.seen.lock().unwrap();
                    let first = !seen.iter().any(|(p, _)| *p == path);
                    // A copy: the bytes sent hold their share of the budget for as long as they live.
                    seen.push((path.clone(), body.to_vec()));
                    first
                };
                if first && path == "/a" {
                    let _ = this.gate.acquire().await?;
                }
                let status = if first { refusal } else { 200 };
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::new()))?,
                )
            }
        })
    }

    /// Waits, in paused time, until a first call has reached the origin: each sleep lets a token fetch, if any,
    /// and the call run.
    pub(crate) async fn reached(&self) {
        while self.seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets the held call of `/a` answer.
    pub(crate) fn open(&self) {
        self.gate.add_permits(1);
    }

    /// The bodies the origin got for `path`, in order.
    pub(crate) fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }
}
