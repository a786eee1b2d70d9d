//! [`ClientCredentials`]: the OAuth2 client-credentials grant (RFC 6749 section 4.4), as Genesys Cloud does it.

use super::error::TokenError;
use super::token::{Secret, Token, TokenFuture, TokenSource};
use crate::buffer::{Collected, call_ready, collect_capped};
use crate::error::{BoxError, ConfigError, Setting, absolute_http_url};
use crate::retry::wait_of;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Mutex;
use std::time::Duration;
use tower_service::Service;

/// The largest token response read; a token endpoint has no reason to send more.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// Fetches tokens with the client-credentials grant: `POST {token_url}` with
/// `Authorization: Basic base64(client_id:client_secret)` and the form body `grant_type=client_credentials`.
///
/// Requests go through `http`, any Tower HTTP service (the same kind the API calls use). Redirects are not
/// followed: a 3xx is a [`TokenError::Rejected`], since following one could send the credentials elsewhere.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::service_fn;
/// use tower_redis_cache::AuthLayer;
/// use tower_redis_cache::auth::ClientCredentials;
/// use tower_redis_cache::error::BoxError;
///
/// // In a real stack `http` is the same HTTP client the API calls use (hyper-util, reqwest, ...).
/// let http = service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(
///         br#"{"access_token":"t","token_type":"bearer","expires_in":86399}"#,
///     ))))
/// });
/// let source = ClientCredentials::new(http, "https://login.mypurecloud.ie/oauth/token", "my-client-id", "my-secret")?;
/// assert!(!format!("{source:?}").contains("my-secret"));
/// let auth = AuthLayer::new(source);
/// # Ok::<(), tower_redis_cache::error::ConfigError>(())
/// ```
pub struct ClientCredentials<S, B> {
    http: Mutex<S>,
    token_url: Uri,
    client_id: String,
    client_secret: Secret,
    credentials_in_body: bool,
    scope: Option<String>,
    params: Vec<(String, String)>,
    _body: PhantomData<fn() -> B>,
}

impl<S, B> ClientCredentials<S, B> {
    /// A source posting to `token_url` (for Genesys Cloud, `{login_base}/oauth/token`).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when `token_url` is not an absolute `http` or `https` URL, or the client id is empty.
    pub fn new(
        http: S,
        token_url: &str,
        client_id: impl Into<String>,
        client_secret: impl Into<Secret>,
    ) -> Result<Self, ConfigError> {
        let token_url = absolute_http_url(Setting::TokenUrl, token_url)?;
        let client_id = client_id.into();
        if client_id.is_empty() {
            return Err(ConfigError::new(
                Setting::ClientCredentials,
                "the client id is empty",
            ));
        }
        Ok(ClientCredentials {
            http: Mutex::new(http),
            token_url,
            client_id,
            client_secret: client_secret.into(),
            credentials_in_body: false,
            scope: None,
            params: Vec::new(),
            _body: PhantomData,
        })
    }

    /// Sends `client_id` and `client_secret` as form fields instead of Basic auth, for OAuth servers that
    /// want them there. Default: `false` (Basic, as Genesys Cloud expects).
    #[must_use]
    pub fn credentials_in_body(mut self, in_body: bool) -> Self {
        self.credentials_in_body = in_body;
        self
    }

    /// Adds a `scope` form field. Default: none (Genesys Cloud grants the client's configured roles).
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Adds a form field to the token request, for a server that wants more than the grant: Auth0's `audience`,
    /// RFC 8707's `resource` (Microsoft Entra ID's v1 endpoint). Fields added twice are sent twice, in order.
    /// Debug output shows the field's name, never its value.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for a field the grant sets itself (`grant_type`, `client_id`, `client_secret`, `scope`:
    /// see [`scope`](Self::scope)), or an empty name.
    pub fn param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        if name.is_empty() {
            return Err(ConfigError::new(
                Setting::ClientCredentials,
                "a token request field needs a name",
            ));
        }
        if ["grant_type", "client_id", "client_secret", "scope"].contains(&name.as_str()) {
            return Err(ConfigError::new(
                Setting::ClientCredentials,
                format!("the token request sets `{name}` itself"),
            ));
        }
        self.params.push((name, value.into()));
        Ok(self)
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    fn request(&self) -> Result<Request<Bytes>, TokenError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        for (name, value) in &self.params {
            form.append_pair(name, value);
        }
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if self.credentials_in_body {
            form.append_pair("client_id", &self.client_id);
            form.append_pair("client_secret", self.client_secret.expose());
        } else {
            let basic = basic_credentials(&self.client_id, self.client_secret.expose());
            let mut value = HeaderValue::try_from(basic)
                .map_err(|_| TokenError::Malformed("credentials are not a valid header".into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        builder
            .body(Bytes::from(form.finish()))
            .map_err(|_| TokenError::Malformed("could not build the token request".into()))
    }

    /// Removes any echo of the secret from server-provided text before it goes into an error.
    fn scrub(&self, text: &str) -> String {
        let secret = self.client_secret.expose();
        let text: String = text.chars().take(200).collect();
        if secret.len() >= 4 && text.contains(secret) {
            text.replace(secret, "***")
        } else {
            text
        }
    }
}

impl<S, B> fmt::Debug for ClientCredentials<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("credentials_in_body", &self.credentials_in_body)
            .field("scope", &self.scope)
            // Names only: a field's value may be a credential (`client_assertion`).
            .field(
                "params",
                &self.params.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: Option<String>,
    error_description: Option<String>,
}

impl<S, B, R> TokenSource for ClientCredentials<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: From<Bytes> + Send + 'static,
    R: Body + Send + 'static,
    R::Data: Send,
    R::Error: Into<BoxError>,
{
    fn fetch_token(&self) -> TokenFuture<'_> {
        Box::pin(async move {
            let request = self.request()?.map(B::from);
            let mut http = match self.http.lock() {
                Ok(http) => http.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            let response = call_ready(&mut http, request)
                .await
                .map_err(TokenError::Unreachable)?;
            let (parts, body) = response.into_parts();
            let bytes = match collect_capped(body, MAX_TOKEN_RESPONSE)
                .await
                .map_err(TokenError::Unreachable)?
            {
                // A token answer is read from its body; trailers say nothing about it.
                Collected::Complete(bytes) | Collected::Trailed { body: bytes, .. } => bytes,
                Collected::TooLarge(_) => {
                    return Err(TokenError::Malformed(format!(
                        "body over {MAX_TOKEN_RESPONSE} bytes"
                    )));
                }
            };
            if !parts.status.is_success() {
                let oauth: Option<OAuthError> = serde_json::from_slice(&bytes).ok();
                let (error, description) =
                    oauth.map_or((None, None), |o| (o.error, o.error_description));
                let retry_after = wait_of(parts.status, &parts.headers);
                return Err(TokenError::Rejected {
                    status: parts.status,
                    error: error.map(|e| self.scrub(&e)),
                    description: description.map(|d| self.scrub(&d)),
                    retry_after,
                });
            }
            parse_token(&bytes)
        })
    }
}

/// Parses a token response: `access_token` required, `token_type` bearer (any case) when present,
/// `expires_in` as a number or numeric string when present.
fn parse_token(bytes: &[u8]) -> Result<Token, TokenError> {
    let response: TokenResponse = serde_json::from_slice(bytes).map_err(|e| {
        TokenError::Malformed(format!(
            "not a JSON token object (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let access_token = response
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Malformed("missing access_token".into()))?;
    if let Some(kind) = &response.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::Malformed(format!(
            "token_type {:?} is not bearer",
            kind.chars().take(32).collect::<String>()
        )));
    }
    // Outer `None`: absent; inner `None`: present but not a number.
    let seconds: Option<Option<f64>> = match response.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_f64()),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse().ok()),
        Some(_) => Some(None),
    };
    let expires_in = match seconds {
        None => None,
        Some(Some(secs)) if secs.is_finite() && secs >= 0.0 => {
            Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
        }
        Some(Some(_)) => {
            return Err(TokenError::Malformed("expires_in is negative".into()));
        }
        Some(None) => return Err(TokenError::Malformed("expires_in is not a number".into())),
    };
    Ok(Token::new(access_token, expires_in))
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The `Basic` credentials of RFC 6749 section 2.3.1: the client id and secret each form-encoded, then
/// `id:secret` in base64.
fn basic_credentials(client_id: &str, client_secret: &str) -> String {
    let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
    format!("Basic {}", BASE64.encode(pair))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_then_base64() {
        // RFC 6749 section 2.3.1: each part form-encoded first, so a ':' in the id cannot shift the split.
        assert_eq!(basic_credentials("id", "secret"), "Basic aWQ6c2VjcmV0");
        // "a%3Ab:s+%26%C3%A9" in base64.
        assert_eq!(
            basic_credentials("a:b", "s &\u{e9}"),
            format!("Basic {}", BASE64.encode("a%3Ab:s+%26%C3%A9"))
        );
        assert_eq!(form_encode("a b&c=d/\u{e9}~*"), "a+b%26c%3Dd%2F%C3%A9%7E*");
    }

    #[test]
    fn token_responses() {
        let token =
            parse_token(br#"{"access_token":"abc","token_type":"BEARER","expires_in":86399}"#)
                .unwrap();
        assert_eq!(token.access_token().expose(), "abc");
        assert_eq!(token.expires_in(), Some(Duration::from_secs(86399)));
        let token = parse_token(br#"{"access_token":"abc","expires_in":"60"}"#).unwrap();
        assert_eq!(token.expires_in(), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_token(br#"{"access_token":"abc"}"#)
                .unwrap()
                .expires_in(),
            None
        );
        for (bad, says) in [
            (&br#"{"token_type":"bearer"}"#[..], "missing access_token"),
            (br#"{"access_token":""}"#, "missing access_token"),
            (br#"{"access_token":"a","token_type":"mac"}"#, "not bearer"),
            (br#"{"access_token":"a","expires_in":-1}"#, "negative"),
            (
                br#"{"access_token":"a","expires_in":"soon"}"#,
                "not a number",
            ),
            (br#"{"access_token":"a","expires_in":[1]}"#, "not a number"),
            (b"<html>", "not a JSON token object"),
            (br#"["access_token"]"#, "not a JSON token object"),
        ] {
            let error = parse_token(bad).unwrap_err();
            assert!(
                error.to_string().contains(says),
                "{error} for {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
