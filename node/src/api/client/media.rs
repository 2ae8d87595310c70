//! Media: upload, download (authenticated `/_matrix/client/v1/media` and the legacy
//! `/_matrix/media/v3` paths), thumbnails, config (spec: client-server API, "Content
//! repository").
//!
//! Files live under `<data_dir>/media/<first two characters of the ID>/<ID>`, written to a
//! temporary file and renamed, so a failed upload leaves nothing behind. Thumbnails of images are
//! scaled (or cropped) PNGs made on request; other files are returned as they are. The legacy paths are
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

/// A thumbnail of at most `width` x `height` (spec: "Thumbnails"): `scale` keeps the aspect ratio
/// inside the box, `crop` fills the box and cuts the overflow. Images (PNG, JPEG, GIF, WebP) are
/// decoded and re-encoded as PNG on the blocking pool; anything else, or an image already inside
/// the box, is returned as it is.
async fn thumbnail(
    file: Vec<u8>,
    content_type: String,
    width: u32,
    height: u32,
    crop: bool,
) -> (Vec<u8>, String) {
    if !content_type.starts_with("image/")
        || content_type == "image/svg+xml"
        || width == 0
        || height == 0
    {
        return (file, content_type);
    }
    let file = std::sync::Arc::new(file);
    let source = std::sync::Arc::clone(&file);
    let scaled = tokio::task::spawn_blocking(move || {
        let image = image::load_from_memory(&source).ok()?;
        if image.width() <= width && image.height() <= height {
            return None;
        }
        let small = if crop {
            image.resize_to_fill(width, height, image::imageops::FilterType::Triangle)
        } else {
            image.thumbnail(width, height)
        };
        let mut out = std::io::Cursor::new(Vec::new());
        small.write_to(&mut out, image::ImageFormat::Png).ok()?;
        Some(out.into_inner())
    })
    .await;
    match scaled {
        Ok(Some(png)) => (png, "image/png".to_owned()),
        // Not decodable, or already small enough: the original.
        _ => (
            std::sync::Arc::try_unwrap(file).unwrap_or_else(|shared| (*shared).clone()),
            content_type,
        ),
    }
}

/// A requested thumbnail dimension, bounded (clients ask for at most a few hundred pixels).
fn dimension(value: UInt) -> u32 {
    u32::try_from(u64::from(value))
        .unwrap_or(u32::MAX)
        .min(1024)
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
    let crop = matches!(req.body.method, Some(ruma::media::Method::Crop));
    let (width, height) = (dimension(req.body.width), dimension(req.body.height));
    let (file, content_type) = thumbnail(file, content_type, width, height, crop).await;
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
    let crop = matches!(req.body.method, Some(ruma::media::Method::Crop));
    let (width, height) = (dimension(req.body.width), dimension(req.body.height));
    let (file, content_type) = thumbnail(file, content_type, width, height, crop).await;
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
