//! The outgoing federation HTTP client: discovery, the address filter, TLS, X-Matrix signing.
//!
//! ```text
//!  request(dest) -> Discovery::resolve(dest) -> Target {host, port, Host header, SRV name}
//!               -> sign (X-Matrix: origin, destination, key, sig)
//!               -> reqwest (rustls; FilteringResolver: SRV alias + IP filter) -> JSON
//! ```
//!
//! Redirects are never followed (a redirect could lead around the address filter), responses
//! are read up to [`MAX_RESPONSE_BYTES`].

use std::sync::Arc;
use std::time::Duration;

use ruma::ServerName;
use serde_json::Value;

use crate::discovery::{Discovery, DiscoveryError, FilteringResolver, IpFilter, Lookup, Target};
use crate::keys::SigningKey;
use crate::request_auth::sign_request;

/// Largest response body read from a peer.
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// Largest `.well-known/matrix/server` document read.
const MAX_WELL_KNOWN_BYTES: usize = 64 * 1024;

/// Settings of the client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Check peers' certificates (off only on test networks of self-signed peers).
    pub verify_tls: bool,
    /// Which addresses may be called.
    pub filter: IpFilter,
    /// Time limit of one request.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            verify_tls: true,
            filter: IpFilter::default(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Failures of an outgoing request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// The destination could not be resolved or is not allowed.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Connecting or transferring failed.
    #[error("request to {destination} failed: {reason}")]
    Transport {
        /// Destination server.
        destination: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("{destination} answered {status}: {errcode} {error}")]
    Status {
        /// Destination server.
        destination: String,
        /// HTTP status.
        status: u16,
        /// Matrix errcode, when the body had one.
        errcode: String,
        /// Matrix error message.
        error: String,
    },
    /// The answer was not what was asked for.
    #[error("bad response from {destination}: {reason}")]
    BadResponse {
        /// Destination server.
        destination: String,
        /// What was wrong.
        reason: String,
    },
    /// Signing the request failed.
    #[error("cannot sign the request: {0}")]
    Sign(String),
}

/// The network side of discovery: `.well-known` over the client, SRV over hickory.
#[derive(Debug, Clone)]
pub struct NetLookup {
    http: reqwest::Client,
    resolver: FilteringResolver,
}

fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    value.split(',').find_map(|part| {
        let secs = part.trim().strip_prefix("max-age=")?.parse().ok()?;
        Some(Duration::from_secs(secs))
    })
}

impl Lookup for NetLookup {
    async fn well_known(&self, host: &str) -> Result<(Option<String>, Option<Duration>), String> {
        let url = format!("https://{host}/.well-known/matrix/server");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            // 4xx: there is no delegation; 5xx: try again later.
            return if response.status().is_client_error() {
                Ok((None, None))
            } else {
                Err(format!("{url}: {}", response.status()))
            };
        }
        let ttl = max_age(response.headers());
        let body = read_limited(response, MAX_WELL_KNOWN_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let server = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("m.server")?.as_str().map(str::to_owned));
        Ok((server, ttl))
    }

    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        self.resolver.srv(name).await
    }
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where a server name goes when something other than DNS knows (the territory registry):
/// the federation base URL of the node serving it.
pub type Router = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The federation client. Cheap to share behind an `Arc`.
pub struct FederationClient {
    http: reqwest::Client,
    resolver: FilteringResolver,
    discovery: Discovery<NetLookup>,
    /// Asked before discovery (see [`FederationClient::set_router`]).
    router: std::sync::RwLock<Option<Router>>,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient").finish_non_exhaustive()
    }
}

impl FederationClient {
    /// A client with `options`.
    pub fn new(options: ClientOptions) -> Result<FederationClient, FederationError> {
        let setup = |reason: String| FederationError::Transport {
            destination: "-".into(),
            reason,
        };
        let resolver = FilteringResolver::new(options.filter.clone()).map_err(setup)?;
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(resolver.clone()))
            .danger_accept_invalid_certs(!options.verify_tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(20)))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("Unitas/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| setup(e.to_string()))?;
        let lookup = NetLookup {
            http: http.clone(),
            resolver: resolver.clone(),
        };
        Ok(FederationClient {
            discovery: Discovery::new(lookup, options.filter),
            http,
            resolver,
            router: std::sync::RwLock::new(None),
        })
    }

    /// Sets what is asked before standard discovery: a server name it knows goes to the base
    /// URL it gives (the `Host` header stays the server name), through the same address filter.
    pub fn set_router(&self, router: Router) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = Some(router);
    }

    /// Where requests for `destination` go: the router's answer, else discovery.
    pub async fn target(&self, destination: &str) -> Result<Target, FederationError> {
        let routed = {
            let router = self.router.read().unwrap_or_else(|e| e.into_inner());
            router.as_ref().and_then(|route| route(destination))
        };
        let target = match routed {
            Some(base_url) => self.routed_target(destination, &base_url)?,
            None => self.discovery.resolve(destination).await?,
        };
        self.resolver.remember(&target);
        Ok(target)
    }

    /// Refuses a URL host that is an IP literal the address filter denies (host names go
    /// through the filtering resolver when they are looked up).
    fn check_literal(&self, host: &str) -> Result<(), FederationError> {
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        match literal.filter(|ip| !self.discovery.filter().allows(*ip)) {
            Some(ip) => Err(FederationError::Discovery(DiscoveryError::Denied(ip))),
            None => Ok(()),
        }
    }

    /// A target from a router's base URL (`https://host[:port]`, 8448 by default).
    fn routed_target(&self, destination: &str, base_url: &str) -> Result<Target, FederationError> {
        let bad = |reason: &str| FederationError::Transport {
            destination: destination.to_owned(),
            reason: format!("registry route {base_url:?}: {reason}"),
        };
        let url = reqwest::Url::parse(base_url).map_err(|_| bad("not a URL"))?;
        if url.scheme() != "https" {
            return Err(bad("federation is https only"));
        }
        let host = url.host_str().ok_or_else(|| bad("no host"))?.to_owned();
        self.check_literal(&host)?;
        Ok(Target {
            host,
            port: url.port().unwrap_or(8448),
            host_header: destination.to_owned(),
            connect_name: None,
        })
    }

    /// An unauthenticated request (key server, notary queries).
    pub async fn request_unsigned(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        self.send(destination, method, path_and_query, body, None)
            .await
    }

    /// A request signed with X-Matrix by `origin` (one of our territories) with `key`.
    pub async fn request(
        &self,
        origin: &ServerName,
        key: &SigningKey,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Value, FederationError> {
        self.request_as(origin, key, destination, method, path_and_query, body)
            .await
    }

    /// A signed request whose JSON answer is parsed straight into `T` (large answers: a whole
    /// room state parsed once, into the types the caller needs).
    pub async fn request_as<T: serde::de::DeserializeOwned>(
        &self,
        origin: &ServerName,
        key: &SigningKey,
        destination: &ServerName,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<T, FederationError> {
        let authorization =
            Self::authorize(key, origin, destination, &method, path_and_query, body)?;
        self.send(
            destination.as_str(),
            method,
            path_and_query,
            body,
            Some(authorization),
        )
        .await
    }

    /// A `GET` whose answer is not JSON (media), signed by `signer` (origin and key) when one
    /// is given: the successful response with its headers and at most `limit` bytes of body.
    /// Error statuses become [`FederationError::Status`] as for [`FederationClient::request`].
    pub async fn get_bytes(
        &self,
        signer: Option<(&ServerName, &SigningKey)>,
        destination: &ServerName,
        path_and_query: &str,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>, FederationError> {
        let method = http::Method::GET;
        let authorization = signer
            .map(|(origin, key)| {
                Self::authorize(key, origin, destination, &method, path_and_query, None)
            })
            .transpose()?;
        let (status, headers, bytes) = self
            .exchange(
                destination.as_str(),
                method,
                path_and_query,
                None,
                authorization,
                limit,
            )
            .await?;
        into_response(destination.as_str(), status, headers, bytes)
    }

    /// An unsigned `GET` of an `https` URL a peer pointed us to (a media `Location`), under the
    /// same address filter, redirect policy and size limit as every other request.
    pub async fn get_url(
        &self,
        url: &str,
        limit: usize,
    ) -> Result<http::Response<Vec<u8>>, FederationError> {
        let bad = |reason: &str| FederationError::BadResponse {
            destination: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|_| bad("not a URL"))?;
        if parsed.scheme() != "https" {
            return Err(bad("only https locations are followed"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        self.check_literal(host)?;
        let transport = |reason: String| FederationError::Transport {
            destination: url.to_owned(),
            reason,
        };
        let response = self
            .http
            .get(parsed)
            .send()
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = read_limited(response, limit).await.map_err(transport)?;
        into_response(url, status, headers, bytes)
    }

    fn authorize(
        key: &SigningKey,
        origin: &ServerName,
        destination: &ServerName,
        method: &http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<String, FederationError> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| FederationError::Sign(e.to_string()))?;
        sign_request(
            key,
            origin,
            destination,
            method,
            path_and_query,
            bytes.as_deref(),
        )
        .map_err(|e| FederationError::Sign(e.to_string()))
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
        authorization: Option<String>,
    ) -> Result<T, FederationError> {
        let (status, _, bytes) = self
            .exchange(
                destination,
                method,
                path_and_query,
                body,
                authorization,
                MAX_RESPONSE_BYTES,
            )
            .await?;
        if !status.is_success() {
            return Err(status_error(destination, status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| FederationError::BadResponse {
            destination: destination.to_owned(),
            reason: format!("unexpected answer: {e}"),
        })
    }

    /// One HTTP exchange with `destination`: status, headers and up to `limit` bytes of body.
    async fn exchange(
        &self,
        destination: &str,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
        authorization: Option<String>,
        limit: usize,
    ) -> Result<(http::StatusCode, http::HeaderMap, Vec<u8>), FederationError> {
        let target = self.target(destination).await?;
        let transport = |reason: String| FederationError::Transport {
            destination: destination.to_owned(),
            reason,
        };
        let url = format!("{}{path_and_query}", target.base_url());
        let mut request = self
            .http
            .request(method, &url)
            .header(reqwest::header::HOST, &target.host_header);
        if let Some(authorization) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, authorization);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = read_limited(response, limit).await.map_err(transport)?;
        Ok((status, headers, bytes))
    }
}

fn into_response(
    destination: &str,
    status: http::StatusCode,
    headers: http::HeaderMap,
    bytes: Vec<u8>,
) -> Result<http::Response<Vec<u8>>, FederationError> {
    if !status.is_success() {
        return Err(status_error(destination, status, &bytes));
    }
    let mut response = http::Response::new(bytes);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The error for a non-success answer, with the Matrix errcode and message when the body has them.
fn status_error(destination: &str, status: http::StatusCode, bytes: &[u8]) -> FederationError {
    let value: Option<Value> = serde_json::from_slice(bytes).ok();
    let field = |name: &str| {
        value
            .as_ref()
            .and_then(|v| v.get(name)?.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    FederationError::Status {
        destination: destination.to_owned(),
        status: status.as_u16(),
        errcode: field("errcode"),
        error: field("error"),
    }
}

/// An error with its causes (reqwest's own message hides the interesting part).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod location_tests {
    use super::{ClientOptions, FederationClient, FederationError};
    use crate::discovery::DiscoveryError;

    #[tokio::test]
    async fn a_media_location_must_be_https_and_pass_the_address_filter() {
        // The node's default denies private ranges (config); here the filter is given.
        let deny = ["127.0.0.0/8", "10.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        let options = ClientOptions {
            filter: crate::discovery::IpFilter::new(Vec::new(), deny),
            ..ClientOptions::default()
        };
        let client = FederationClient::new(options).unwrap_or_else(|e| panic!("{e}"));
        let plain = client.get_url("http://media.example/file", 1024).await;
        assert!(
            matches!(plain, Err(FederationError::BadResponse { .. })),
            "{plain:?}"
        );
        for private in [
            "https://10.1.2.3/file",
            "https://[::1]/file",
            "https://127.0.0.1:8448/x",
        ] {
            let answer = client.get_url(private, 1024).await;
            assert!(
                matches!(
                    answer,
                    Err(FederationError::Discovery(DiscoveryError::Denied(_)))
                ),
                "{private}: {answer:?}"
            );
        }
        let nonsense = client.get_url("not a url", 1024).await;
        assert!(matches!(nonsense, Err(FederationError::BadResponse { .. })));
    }
}
