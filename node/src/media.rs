//! The media store: our territories' uploads, other servers' files fetched over federation, and
//! thumbnails of either.
//!
//! ```text
//!  <data_dir>/media/<first two chars>/<ID>                 uploads (table `media`)
//!  <data_dir>/remote_media/<origin>/<first two chars>/<ID>  fetched files (table `remote_media`)
//! ```
//!
//! Files are written to a temporary name and renamed, then recorded, so a failure leaves no row
//! without its file. A remote file is fetched once, through the federation media endpoint
//! (`/_matrix/federation/v1/media/download`, signed by the asking user's territory), and falls
//! back to the legacy `/_matrix/media/v3/download` for servers older than Matrix 1.11. Remote
//! files obey the same size limit as uploads. Thumbnails of remote images are made here from the
//! full file (one fetch serves every size).

use std::path::{Path, PathBuf};

use ruma::ServerName;
use ruma::api::IncomingResponseExt;
use ruma::api::federation::authenticated_media::{Content, FileOrLocation, get_content};
use ruma::http_headers::{ContentDisposition, ContentDispositionType};
use unitas_federation::client::FederationError;
use unitas_storage::{ClientExtras, RemoteMediaRow};

use crate::api::ApiError;
use crate::node::now_ms;
use crate::state::{AppState, HostedTerritory};

/// A file with what a client needs to show it.
#[derive(Debug)]
pub struct MediaFile {
    /// The bytes.
    pub file: Vec<u8>,
    /// Content type (`application/octet-stream` when unknown).
    pub content_type: String,
    /// File name given at upload.
    pub filename: Option<String>,
}

impl MediaFile {
    /// `Content-Disposition`: images, video and audio inline, anything else (and SVG, which can
    /// carry scripts) as an attachment; `filename` overrides the stored name.
    pub fn disposition(&self, filename: Option<String>) -> ContentDisposition {
        let inline = ["image/", "video/", "audio/"]
            .iter()
            .any(|p| self.content_type.starts_with(p))
            && self.content_type != "image/svg+xml";
        let kind = if inline {
            ContentDispositionType::Inline
        } else {
            ContentDispositionType::Attachment
        };
        ContentDisposition::new(kind).with_filename(filename.or_else(|| self.filename.clone()))
    }
}

/// Whether `id` can be a media ID of ours (and a safe file name).
pub fn valid_media_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn sharded(dir: PathBuf, media_id: &str) -> PathBuf {
    let prefix: String = media_id.chars().take(2).collect();
    dir.join(prefix).join(media_id)
}

/// Where an upload of ours lives under a data directory.
pub fn sharded_path(data_dir: &std::path::Path, media_id: &str) -> PathBuf {
    sharded(data_dir.join("media"), media_id)
}

/// Where an upload of ours lives.
pub fn local_path(state: &AppState, media_id: &str) -> PathBuf {
    sharded_path(&state.config.server.data_dir, media_id)
}

/// Where a fetched file of `origin` lives. Server names cannot contain `/`, and a name made only
/// of dots is not a server name, so the origin is a safe directory name.
fn remote_path(state: &AppState, origin: &ServerName, media_id: &str) -> PathBuf {
    sharded(
        state
            .config
            .server
            .data_dir
            .join("remote_media")
            .join(origin.as_str()),
        media_id,
    )
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub async fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.part", std::process::id()));
    tokio::fs::create_dir_all(&dir).await?;
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(err) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err);
    }
    Ok(())
}

fn not_found() -> ApiError {
    ApiError::not_found("Media not found")
}

/// An upload of `territory` (another territory's media ID is not found under this name).
pub async fn local(
    state: &AppState,
    territory: &HostedTerritory,
    media_id: &str,
) -> Result<MediaFile, ApiError> {
    if !valid_media_id(media_id) {
        return Err(not_found());
    }
    let row = state
        .store
        .get_media(media_id)
        .await?
        .filter(|row| row.territory == territory.config.code.as_str())
        .ok_or_else(not_found)?;
    let file = tokio::fs::read(local_path(state, media_id))
        .await
        .map_err(|_| not_found())?;
    Ok(MediaFile {
        file,
        content_type: row
            .content_type
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        filename: row.filename,
    })
}

/// The file `mxc://{server_name}/{media_id}`: ours, or another server's from the cache, or
/// (when `via` is given: the asking user's territory) fetched from its origin now.
pub async fn find(
    state: &AppState,
    server_name: &ServerName,
    media_id: &str,
    via: Option<&HostedTerritory>,
) -> Result<MediaFile, ApiError> {
    if let Some(territory) = state.territories.by_server_name(server_name.as_str()) {
        return local(state, territory, media_id).await;
    }
    if !valid_media_id(media_id) {
        return Err(not_found());
    }
    if let Some(row) = state
        .store
        .get_remote_media(server_name.as_str(), media_id)
        .await?
        && let Ok(file) = tokio::fs::read(remote_path(state, server_name, media_id)).await
    {
        return Ok(MediaFile {
            file,
            content_type: row
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            filename: row.filename,
        });
    }
    let Some(via) = via else {
        // The unauthenticated legacy paths serve what is here but never fetch (spec 1.11
        // "freezes" unauthenticated media).
        return Err(not_found());
    };
    fetch(state, via, server_name, media_id).await
}

/// Fetches a remote file, stores it, and records it.
async fn fetch(
    state: &AppState,
    via: &HostedTerritory,
    origin: &ServerName,
    media_id: &str,
) -> Result<MediaFile, ApiError> {
    let limit = usize::try_from(state.config.media.max_upload_bytes).unwrap_or(usize::MAX);
    // Room for the multipart framing around the file.
    let framed = limit.saturating_add(64 * 1024);
    let own_name = ServerName::parse(via.server_name()).map_err(|e| ApiError::internal(&e))?;
    let path = format!("/_matrix/federation/v1/media/download/{media_id}");
    let answer = state
        .federation
        .get_bytes(Some((&own_name, &via.key)), origin, &path, framed)
        .await;
    let content = match answer {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let parsed = get_content::v1::Response::try_from_http_response(
                http::Response::from_parts(parts, body.as_slice()),
            )
            .map_err(|e| remote_failure(origin, &e.to_string()))?;
            match parsed.content {
                FileOrLocation::File(content) => content,
                FileOrLocation::Location(url) => {
                    let response = state
                        .federation
                        .get_url(&url, limit)
                        .await
                        .map_err(|e| fetch_error(origin, &e, limit))?;
                    plain_content(response)
                }
                _ => return Err(remote_failure(origin, "unknown kind of media answer")),
            }
        }
        // Servers before Matrix 1.11 do not know the endpoint: their legacy path, unsigned.
        Err(FederationError::Status {
            status: 404 | 400,
            errcode,
            ..
        }) if errcode == "M_UNRECOGNIZED" || errcode.is_empty() => {
            let legacy = format!(
                "/_matrix/media/v3/download/{}/{media_id}?allow_remote=false",
                origin.as_str()
            );
            let response = state
                .federation
                .get_bytes(None, origin, &legacy, limit)
                .await
                .map_err(|e| fetch_error(origin, &e, limit))?;
            plain_content(response)
        }
        Err(err) => return Err(fetch_error(origin, &err, limit)),
    };
    if content.file.len() > limit {
        return Err(too_large(limit));
    }
    let filename = content
        .content_disposition
        .as_ref()
        .and_then(|d| d.filename.clone());
    let file = MediaFile {
        content_type: content
            .content_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".to_owned()),
        file: content.file,
        filename,
    };
    write_file(&remote_path(state, origin, media_id), &file.file)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    state
        .store
        .put_remote_media(&RemoteMediaRow {
            origin: origin.to_string(),
            media_id: media_id.to_owned(),
            content_type: content.content_type,
            filename: file.filename.clone(),
            size: file.file.len() as i64,
            fetched_ts: now_ms(),
        })
        .await?;
    tracing::debug!(%origin, media_id, size = file.file.len(), "fetched remote media");
    Ok(file)
}

/// A plain (not multipart) download answer as content.
fn plain_content(response: http::Response<Vec<u8>>) -> Content {
    let header = |name: http::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(http::header::CONTENT_TYPE);
    let disposition = header(http::header::CONTENT_DISPOSITION)
        .and_then(|value| value.parse::<ContentDisposition>().ok());
    let mut content = Content::new(
        response.into_body(),
        content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        ContentDisposition::new(ContentDispositionType::Attachment),
    );
    content.content_disposition = disposition;
    content
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        http::StatusCode::BAD_GATEWAY,
        "M_TOO_LARGE",
        format!("The remote file is larger than {limit} bytes"),
    )
}

fn remote_failure(origin: &ServerName, reason: &str) -> ApiError {
    tracing::info!(%origin, reason, "remote media fetch failed");
    ApiError::new(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("Could not fetch the file from {origin}"),
    )
}

fn fetch_error(origin: &ServerName, err: &FederationError, limit: usize) -> ApiError {
    match err {
        FederationError::Status { status: 404, .. } => not_found(),
        FederationError::Transport { reason, .. } if reason.contains("larger than") => {
            too_large(limit)
        }
        other => remote_failure(origin, &other.to_string()),
    }
}

/// A thumbnail of at most `width` x `height` (spec: "Thumbnails"): `crop` fills the box and cuts
/// the overflow, otherwise the aspect ratio is kept inside the box. Images (PNG, JPEG, GIF,
/// WebP) are decoded and re-encoded as PNG on the blocking pool; anything else, or an image
/// already inside the box, is returned as it is.
pub async fn thumbnail(media: MediaFile, width: u32, height: u32, crop: bool) -> MediaFile {
    if !media.content_type.starts_with("image/")
        || media.content_type == "image/svg+xml"
        || width == 0
        || height == 0
    {
        return media;
    }
    let file = std::sync::Arc::new(media.file);
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
        Ok(Some(png)) => MediaFile {
            file: png,
            content_type: "image/png".to_owned(),
            filename: media.filename,
        },
        // Not decodable, or already small enough: the original.
        _ => MediaFile {
            file: std::sync::Arc::try_unwrap(file).unwrap_or_else(|shared| (*shared).clone()),
            content_type: media.content_type,
            filename: media.filename,
        },
    }
}

/// A requested thumbnail dimension, bounded (clients ask for at most a few hundred pixels).
pub fn dimension(value: ruma::UInt) -> u32 {
    u32::try_from(u64::from(value))
        .unwrap_or(u32::MAX)
        .min(1024)
}
