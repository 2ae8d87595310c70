//! Media: upload, download (authenticated `/_matrix/client/v1/media` and the legacy
//! `/_matrix/media/v3` paths), thumbnails, config (spec: client-server API, "Content
//! repository").
//!
//! Files live under `<data_dir>/media/<first two characters of the ID>/<ID>`, written to a
//! temporary file and renamed, so a failed upload leaves nothing behind. Thumbnails are the
//! original file for now (no image scaling); clients display it scaled. The legacy paths are
//! deprecated in the spec (v1.11) but still used by older clients, so they stay.
#![allow(deprecated)]

use std::path::PathBuf;

use axum::extract::State;
use ruma::api::client::authenticated_media as v1;
use ruma::api::client::media as legacy;
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use ruma::{OwnedMxcUri, ServerName, UInt};
use unitas_storage::{ClientExtras, MediaRow};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::node::now_ms;
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

fn path_of(state: &AppState, media_id: &str) -> PathBuf {
    let prefix: String = media_id.chars().take(2).collect();
    state
        .config
        .server
        .data_dir
        .join("media")
        .join(prefix)
        .join(media_id)
}

fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `POST /_matrix/media/v3/upload`.
pub async fn create_content_route(
    State(state): State<AppState>,
    req: Ruma<legacy::create_content::v3::Request>,
) -> Result<legacy::create_content::v3::Response> {
    let user = req.user()?.clone();
    let body = req.body;
    let size = body.file.len() as u64;
    if size > state.config.media.max_upload_bytes {
        return Err(ApiError::too_large(state.config.media.max_upload_bytes));
    }
    let media_id = crate::users::random_id(
        24,
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    )?;
    let path = path_of(&state, &media_id);
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let tmp = dir.join(format!(".{media_id}.part"));
    let io = |e: std::io::Error| ApiError::internal(&e);
    tokio::fs::create_dir_all(&dir).await.map_err(io)?;
    tokio::fs::write(&tmp, &body.file).await.map_err(io)?;
    tokio::fs::rename(&tmp, &path).await.map_err(io)?;
    let row = MediaRow {
        media_id: media_id.clone(),
        territory: user.territory.config.code.to_string(),
        uploader: user.user_id.to_string(),
        content_type: body.content_type.clone(),
        filename: body.filename.clone(),
        size: size as i64,
        created_ts: now_ms(),
    };
    if let Err(err) = state.store.create_media(&row).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(err.into());
    }
    let uri = OwnedMxcUri::from(format!("mxc://{}/{media_id}", user.territory.server_name()));
    Ok(legacy::create_content::v3::Response::new(uri).into())
}

/// The bytes, content type and disposition of a local upload.
async fn load(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    filename: Option<String>,
) -> std::result::Result<(Vec<u8>, String, ContentDisposition), ApiError> {
    let missing = || ApiError::not_found("Media not found");
    if !state
        .territories
        .all()
        .iter()
        .any(|t| t.server_name() == server_name.as_str())
    {
        // Fetching remote media comes with federation.
        return Err(missing());
    }
    if !valid_media_id(media_id) {
        return Err(missing());
    }
    let row = state.store.get_media(media_id).await?.ok_or_else(missing)?;
    let file = tokio::fs::read(path_of(state, media_id))
        .await
        .map_err(|_| missing())?;
    let content_type = row
        .content_type
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    // Only images, video and audio are shown inline; anything else is an attachment.
    let inline = ["image/", "video/", "audio/"]
        .iter()
        .any(|p| content_type.starts_with(p))
        && content_type != "image/svg+xml";
    let kind = if inline {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    Ok((
        file,
        content_type,
        ContentDisposition::new(kind).with_filename(filename.or(row.filename)),
    ))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`.
pub async fn get_content_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content::v1::Request>,
) -> Result<v1::get_content::v1::Response> {
    req.user()?;
    let (file, content_type, disposition) =
        load(&state, &req.body.server_name, &req.body.media_id, None).await?;
    Ok(v1::get_content::v1::Response::new(file, content_type, disposition).into())
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`.
pub async fn get_content_as_filename_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content_as_filename::v1::Request>,
) -> Result<v1::get_content_as_filename::v1::Response> {
    req.user()?;
    let (file, content_type, disposition) = load(
        &state,
        &req.body.server_name,
        &req.body.media_id,
        Some(req.body.filename.clone()),
    )
    .await?;
    Ok(v1::get_content_as_filename::v1::Response::new(file, content_type, disposition).into())
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub async fn get_content_thumbnail_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content_thumbnail::v1::Request>,
) -> Result<v1::get_content_thumbnail::v1::Response> {
    req.user()?;
    let (file, content_type, disposition) =
        load(&state, &req.body.server_name, &req.body.media_id, None).await?;
    Ok(v1::get_content_thumbnail::v1::Response::new(file, content_type, disposition).into())
}

/// `GET /_matrix/client/v1/media/config`.
pub async fn get_media_config_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_media_config::v1::Request>,
) -> Result<v1::get_media_config::v1::Response> {
    req.user()?;
    let size = UInt::new(state.config.media.max_upload_bytes).unwrap_or(UInt::MAX);
    Ok(v1::get_media_config::v1::Response::new(size).into())
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (legacy, unauthenticated).
pub async fn get_content_legacy_route(
    State(state): State<AppState>,
    req: Ruma<legacy::get_content::v3::Request>,
) -> Result<legacy::get_content::v3::Response> {
    let (file, content_type, disposition) =
        load(&state, &req.body.server_name, &req.body.media_id, None).await?;
    Ok(legacy::get_content::v3::Response::new(file, content_type, disposition).into())
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (legacy, unauthenticated).
pub async fn get_content_thumbnail_legacy_route(
    State(state): State<AppState>,
    req: Ruma<legacy::get_content_thumbnail::v3::Request>,
) -> Result<legacy::get_content_thumbnail::v3::Response> {
    let (file, content_type, disposition) =
        load(&state, &req.body.server_name, &req.body.media_id, None).await?;
    Ok(legacy::get_content_thumbnail::v3::Response::new(file, content_type, disposition).into())
}

/// `GET /_matrix/media/v3/config` (legacy).
pub async fn get_media_config_legacy_route(
    State(state): State<AppState>,
    req: Ruma<legacy::get_media_config::v3::Request>,
) -> Result<legacy::get_media_config::v3::Response> {
    req.user()?;
    let size = UInt::new(state.config.media.max_upload_bytes).unwrap_or(UInt::MAX);
    Ok(legacy::get_media_config::v3::Response::new(size).into())
}
