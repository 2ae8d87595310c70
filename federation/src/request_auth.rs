//! Request authentication between servers (spec: server-server API, "Request Authentication").
//!
//! ```text
//!  outgoing: {method, uri, origin, destination, content?} --sign--> X-Matrix origin=..,
//!            destination=.., key="ed25519:..", sig=".."
//!  incoming: Authorization header -> parse -> destination must be a hosted territory ->
//!            origin's verify key (key ring, valid now) -> verify the same object -> the request's
//!            typed origin server
//! ```
//!
//! The X-Matrix parsing and the signed object come from ruma; this module ties them to our keys
//! and says which failures are the peer's (401 `M_UNAUTHORIZED`).

use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use ruma::{OwnedServerName, ServerName};

use crate::keys::SigningKey;

/// Why a request's signature was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestAuthError {
    /// No `Authorization: X-Matrix ...` header, or a malformed one.
    #[error("missing or malformed X-Matrix authorization: {0}")]
    Header(String),
    /// The request names another server as its destination.
    #[error("the request is addressed to {0}, not to this server")]
    WrongDestination(String),
    /// The origin's key could not be found.
    #[error("no verify key {key} of {origin}: {reason}")]
    UnknownKey {
        /// Origin server.
        origin: String,
        /// Key ID.
        key: String,
        /// Why.
        reason: String,
    },
    /// The signature does not match the request.
    #[error("bad request signature: {0}")]
    BadSignature(String),
    /// The body is not canonical JSON (it cannot have been signed).
    #[error("request body is not JSON: {0}")]
    Body(String),
}

/// The `Authorization` header value for a request from `origin` to `destination`.
/// `uri` is the path and query exactly as sent; `body` the JSON body, if any.
pub fn sign_request(
    key: &SigningKey,
    origin: &ServerName,
    destination: &ServerName,
    method: &http::Method,
    uri: &str,
    body: Option<&[u8]>,
) -> Result<String, RequestAuthError> {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body.unwrap_or_default())
        .map_err(|e| RequestAuthError::Header(e.to_string()))?;
    let input = XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), key.pair());
    let header = XMatrix::sign_http_request(&request, input)
        .map_err(|e| RequestAuthError::Body(e.to_string()))?;
    Ok(header.to_string())
}

/// A parsed X-Matrix header, before its signature is checked.
#[derive(Debug, Clone)]
pub struct Claimed {
    header: XMatrix,
}

impl Claimed {
    /// Parses the `Authorization` header of an incoming request.
    pub fn parse(value: Option<&str>) -> Result<Claimed, RequestAuthError> {
        let value = value.ok_or_else(|| RequestAuthError::Header("no Authorization".into()))?;
        let header = XMatrix::parse(value).map_err(|e| RequestAuthError::Header(e.to_string()))?;
        Ok(Claimed { header })
    }

    /// The server the request claims to come from.
    pub fn origin(&self) -> &ServerName {
        &self.header.origin
    }

    /// The key it claims to be signed with (`ed25519:...`).
    pub fn key_id(&self) -> String {
        self.header.key.to_string()
    }

    /// Checks the signature against the origin's `public_key` (unpadded base64) for a request
    /// received by `destination` (the territory the request reached). The destination in the
    /// header, when present, must be that territory.
    pub fn verify(
        self,
        destination: &ServerName,
        public_key: &str,
        method: &http::Method,
        uri: &str,
        body: &[u8],
    ) -> Result<OwnedServerName, RequestAuthError> {
        if let Some(named) = &self.header.destination
            && named != destination
        {
            return Err(RequestAuthError::WrongDestination(named.to_string()));
        }
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| RequestAuthError::Header(e.to_string()))?;
        let key =
            crate::keys::decode_base64(public_key).ok_or_else(|| RequestAuthError::UnknownKey {
                origin: self.header.origin.to_string(),
                key: self.key_id(),
                reason: "not base64".into(),
            })?;
        let mut set = ruma::signatures::PublicKeySet::new();
        set.insert(self.key_id(), ruma::serde::Base64::new(key));
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(self.header.origin.to_string(), set);
        self.header
            .verify_http_request(&request, destination, &map)
            .map_err(|e| match e {
                ruma::api::federation::authentication::XMatrixVerificationError::DestinationMismatch => {
                    RequestAuthError::WrongDestination(destination.to_string())
                }
                other => RequestAuthError::BadSignature(other.to_string()),
            })?;
        Ok(self.header.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OwnedServerName {
        ServerName::parse(s).unwrap()
    }

    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let key = SigningKey::generate().unwrap();
        let public = key.public_key_base64();
        let (a, b) = (name("a.example"), name("b.example:8448"));
        let body = br#"{"pdus":[],"edus":[]}"#;
        let uri = "/_matrix/federation/v1/send/1?x=%20y";
        let header =
            sign_request(&key, &a, &b, &http::Method::PUT, uri, Some(body.as_slice())).unwrap();
        assert!(header.starts_with("X-Matrix "));

        let ok = Claimed::parse(Some(&header)).unwrap();
        assert_eq!(ok.origin().as_str(), "a.example");
        let origin = ok
            .verify(&b, &public, &http::Method::PUT, uri, body)
            .unwrap();
        assert_eq!(origin, a);

        // Another body, method, path, destination or key: refused.
        let claimed = || Claimed::parse(Some(&header)).unwrap();
        let other_body = br#"{"pdus":[1],"edus":[]}"#;
        assert!(matches!(
            claimed().verify(&b, &public, &http::Method::PUT, uri, other_body),
            Err(RequestAuthError::BadSignature(_))
        ));
        assert!(
            claimed()
                .verify(&b, &public, &http::Method::POST, uri, body)
                .is_err()
        );
        assert!(
            claimed()
                .verify(
                    &b,
                    &public,
                    &http::Method::PUT,
                    "/_matrix/federation/v1/send/2",
                    body
                )
                .is_err()
        );
        assert!(matches!(
            claimed().verify(&name("c.example"), &public, &http::Method::PUT, uri, body),
            Err(RequestAuthError::WrongDestination(_))
        ));
        let stranger = SigningKey::generate().unwrap().public_key_base64();
        assert!(
            claimed()
                .verify(&b, &stranger, &http::Method::PUT, uri, body)
                .is_err()
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            None,
            Some("Bearer abc"),
            Some("X-Matrix origin=a.example"),
            Some("X-Matrix origin=\"not a server\",key=\"ed25519:1\",sig=\"AAAA\""),
        ] {
            assert!(Claimed::parse(bad).is_err(), "{bad:?}");
        }
    }
}
