//! Media: upload, download (authenticated `/_matrix/client/v1/media` and the legacy
//! `/_matrix/media/v3` paths), thumbnails, config (spec: client-server API, "Content
//! repository"). The store itself (files, remote fetches, thumbnails) is [`crate::media`].
//!
//! The authenticated paths fetch other servers' files over federation on first use; the legacy
//! paths are deprecated in the spec (v1.11) and unauthenticated, so they serve our uploads and
//! files already fetched, but never make this node fetch anything.
#![allow(deprecated)]

use axum::extract::State;
use ruma::api::client::authenticated_media as v1;
use ruma::api::client::media as legacy;
use ruma::{OwnedMxcUri, UInt};
use unitas_storage::{ClientExtras, MediaRow};

use crate::api::ApiError;
use crate::api::ruma::{Ruma, RumaResponse};
use crate::media::{MediaFile, dimension, find, local_path, thumbnail, write_file};
use crate::node::now_ms;
use crate::state::AppState;

type Result<T> = std::result::Result<RumaResponse<T>, ApiError>;

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
    let path = local_path(&state, &media_id);
    write_file(&path, &body.file)
        .await
        .map_err(|e| ApiError::internal(&e))?;
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

fn thumbnail_box(
    width: UInt,
    height: UInt,
    method: Option<&ruma::media::Method>,
) -> (u32, u32, bool) {
    (
        dimension(width),
        dimension(height),
        matches!(method, Some(ruma::media::Method::Crop)),
    )
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`.
pub async fn get_content_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content::v1::Request>,
) -> Result<v1::get_content::v1::Response> {
    let user = req.user()?;
    let media = find(
        &state,
        &req.body.server_name,
        &req.body.media_id,
        Some(&user.territory),
    )
    .await?;
    let disposition = media.disposition(None);
    Ok(v1::get_content::v1::Response::new(media.file, media.content_type, disposition).into())
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`.
pub async fn get_content_as_filename_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content_as_filename::v1::Request>,
) -> Result<v1::get_content_as_filename::v1::Response> {
    let user = req.user()?;
    let media = find(
        &state,
        &req.body.server_name,
        &req.body.media_id,
        Some(&user.territory),
    )
    .await?;
    let disposition = media.disposition(Some(req.body.filename.clone()));
    Ok(
        v1::get_content_as_filename::v1::Response::new(media.file, media.content_type, disposition)
            .into(),
    )
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub async fn get_content_thumbnail_v1_route(
    State(state): State<AppState>,
    req: Ruma<v1::get_content_thumbnail::v1::Request>,
) -> Result<v1::get_content_thumbnail::v1::Response> {
    let user = req.user()?;
    let media = find(
        &state,
        &req.body.server_name,
        &req.body.media_id,
        Some(&user.territory),
    )
    .await?;
    let (width, height, crop) =
        thumbnail_box(req.body.width, req.body.height, req.body.method.as_ref());
    let disposition = media.disposition(None);
    let MediaFile {
        file, content_type, ..
    } = thumbnail(media, width, height, crop).await;
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
    let media = find(&state, &req.body.server_name, &req.body.media_id, None).await?;
    let disposition = media.disposition(None);
    Ok(legacy::get_content::v3::Response::new(media.file, media.content_type, disposition).into())
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}` (legacy, unauthenticated).
pub async fn get_content_thumbnail_legacy_route(
    State(state): State<AppState>,
    req: Ruma<legacy::get_content_thumbnail::v3::Request>,
) -> Result<legacy::get_content_thumbnail::v3::Response> {
    let media = find(&state, &req.body.server_name, &req.body.media_id, None).await?;
    let (width, height, crop) =
        thumbnail_box(req.body.width, req.body.height, req.body.method.as_ref());
    let disposition = media.disposition(None);
    let MediaFile {
        file, content_type, ..
    } = thumbnail(media, width, height, crop).await;
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
