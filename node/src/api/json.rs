//! `MatrixJson<T>`: axum's JSON extractor with Matrix errors — `M_NOT_JSON` for a body that is
//! not JSON, `M_BAD_JSON` for JSON of the wrong shape, `M_TOO_LARGE` over the body limit.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body of type `T`. A missing `Content-Type` is tolerated (several clients omit
/// it); the body must still parse.
#[derive(Debug, Clone)]
pub struct MatrixJson<T>(pub T);

impl<S, T> FromRequest<S> for MatrixJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "M_TOO_LARGE",
                        rejection.body_text(),
                    )
                } else {
                    ApiError::new(rejection.status(), "M_UNKNOWN", rejection.body_text())
                }
            })?;
        let bytes = if bytes.is_empty() {
            axum::body::Bytes::from_static(b"{}")
        } else {
            bytes
        };
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(MatrixJson(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_json(e.body_text())),
            Err(e) => Err(ApiError::not_json(e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::MatrixJson;

    #[derive(Deserialize)]
    struct Body1 {
        #[allow(dead_code)]
        name: String,
    }

    async fn call(body: &'static str) -> (u16, serde_json::Value) {
        let app = Router::new()
            .route(
                "/t",
                post(|MatrixJson(_b): MatrixJson<Body1>| async { "ok" }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(64));
        let response = app
            .oneshot(Request::post("/t").body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn matrix_errors_for_bad_bodies() {
        assert_eq!(call(r#"{"name": "x"}"#).await.0, 200);
        let (status, body) = call("{not json").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_NOT_JSON"))
        );
        let (status, body) = call(r#"{"name": 5}"#).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_BAD_JSON"))
        );
        // An empty body is `{}`: here a missing field, so the shape is wrong.
        let (status, body) = call("").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("M_BAD_JSON"))
        );
        let (status, body) = call(
            r#"{"name": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (413, Some("M_TOO_LARGE"))
        );
    }
}
