//! The HTTP edge: routers, middleware, extractors, errors. The only place that knows axum.
//!
//! Request path: listener -> [`crate::serve`] (TLS, connection info) -> CORS -> trace span
//! `http.request` -> body limit -> territory routing (Host header) -> route -> `<endpoint>_route`
//! handler -> storage / federation crates. Errors leave as one [`ApiError`].
//!
//! The route lists in [`client_router`] and [`federation_router`] are the index of the API.

pub(crate) mod client;
mod error;
mod federation;
pub(crate) mod federation_rooms;
mod health;
mod json;
mod peer;
pub mod restricted;
pub mod ruma;
mod territory;
mod versions;
mod well_known;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

pub use error::ApiError;
pub use json::MatrixJson;
pub use territory::Territory;

use crate::state::AppState;

/// The client-server API listener's routes.
#[allow(deprecated)] // the legacy media paths, still served for older clients
pub fn client_router(state: AppState) -> Router {
    use ::ruma::api::client as c;
    use client::{
        account as a, directory as d, ephemeral as e, keys as k, media as m, rooms as r,
        security as x, sync as s,
    };
    use ruma::route;
    let mut routes = Router::new()
        .route(
            "/_matrix/client/versions",
            get(versions::get_versions_route),
        )
        .route(
            "/_unitas/client/v1/territories",
            get(crate::registry::list_territories_route),
        )
        .route(
            "/_unitas/client/v1/territories/{code}",
            get(crate::registry::get_territory_route),
        )
        .route(
            "/_unitas/client/v1/route",
            get(crate::registry::route_route),
        )
        .route(
            "/_unitas/client/v1/nodes",
            get(crate::registry::list_nodes_route),
        )
        .route(
            "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
            get(crate::api::client::voip::rtc_transports_route),
        );
    routes = route::<c::room::report_content::v3::Request, _, _>(
        routes,
        crate::api::client::reports::report_event_route,
    );
    routes = route::<c::room::report_room::v3::Request, _, _>(
        routes,
        crate::api::client::reports::report_room_route,
    );
    routes = route::<c::reporting::report_user::v3::Request, _, _>(
        routes,
        crate::api::client::reports::report_user_route,
    );
    {
        use crate::api::client::relations as rel;
        routes = route::<c::relations::get_relating_events::v1::Request, _, _>(
            routes,
            rel::relations_route,
        );
        routes = route::<c::relations::get_relating_events_with_rel_type::v1::Request, _, _>(
            routes,
            rel::relations_by_type_route,
        );
        routes = route::<
            c::relations::get_relating_events_with_rel_type_and_event_type::v1::Request,
            _,
            _,
        >(routes, rel::relations_by_type_and_event_type_route);
        routes = route::<c::threads::get_threads::v1::Request, _, _>(routes, rel::threads_route);
    }
    {
        use crate::api::client::push as p;
        use c::push as cp;
        routes = route::<cp::get_pushrules_all::v3::Request, _, _>(routes, p::get_all_route);
        routes =
            route::<cp::get_pushrules_global_scope::v3::Request, _, _>(routes, p::get_global_route);
        routes = route::<cp::get_pushrule::v3::Request, _, _>(routes, p::get_rule_route);
        routes = route::<cp::set_pushrule::v3::Request, _, _>(routes, p::set_rule_route);
        routes = route::<cp::delete_pushrule::v3::Request, _, _>(routes, p::delete_rule_route);
        routes = route::<cp::get_pushrule_enabled::v3::Request, _, _>(routes, p::get_enabled_route);
        routes = route::<cp::set_pushrule_enabled::v3::Request, _, _>(routes, p::set_enabled_route);
        routes = route::<cp::get_pushrule_actions::v3::Request, _, _>(routes, p::get_actions_route);
        routes = route::<cp::set_pushrule_actions::v3::Request, _, _>(routes, p::set_actions_route);
        routes = route::<cp::get_notifications::v3::Request, _, _>(routes, p::notifications_route);
        routes = route::<cp::get_pushers::v3::Request, _, _>(routes, p::get_pushers_route);
        routes = route::<cp::set_pusher::v3::Request, _, _>(routes, p::set_pusher_route);
    }
    routes = route::<c::sync::sync_events::v5::Request, _, _>(
        routes,
        crate::api::client::sliding::sliding_sync_route,
    );
    routes = route::<c::space::get_hierarchy::v1::Request, _, _>(
        routes,
        crate::api::client::spaces::hierarchy_route,
    );
    routes = route::<c::search::search_events::v3::Request, _, _>(
        routes,
        crate::api::client::search::search_route,
    );
    routes = route::<c::voip::get_turn_server_info::v3::Request, _, _>(
        routes,
        crate::api::client::voip::turn_server_route,
    );
    routes =
        route::<c::session::get_login_types::v3::Request, _, _>(routes, a::get_login_types_route);
    routes = route::<c::session::login::v3::Request, _, _>(routes, a::login_route);
    routes = route::<c::session::logout::v3::Request, _, _>(routes, a::logout_route);
    routes = route::<c::session::logout_all::v3::Request, _, _>(routes, a::logout_all_route);
    routes = route::<c::account::whoami::v3::Request, _, _>(routes, a::whoami_route);
    routes = route::<c::account::register::v3::Request, _, _>(routes, a::register_route);
    routes = route::<c::account::get_username_availability::v3::Request, _, _>(
        routes,
        a::get_username_availability_route,
    );
    routes = route::<c::device::get_devices::v3::Request, _, _>(routes, a::get_devices_route);
    routes = route::<c::device::get_device::v3::Request, _, _>(routes, a::get_device_route);
    routes = route::<c::device::update_device::v3::Request, _, _>(routes, a::update_device_route);
    routes = route::<c::profile::get_profile::v3::Request, _, _>(routes, a::get_profile_route);
    routes =
        route::<c::profile::set_display_name::v3::Request, _, _>(routes, a::set_display_name_route);
    routes =
        route::<c::profile::set_avatar_url::v3::Request, _, _>(routes, a::set_avatar_url_route);
    routes = route::<c::discovery::get_capabilities::v3::Request, _, _>(
        routes,
        a::get_capabilities_route,
    );
    routes = route::<c::filter::create_filter::v3::Request, _, _>(routes, a::create_filter_route);
    routes = route::<c::filter::get_filter::v3::Request, _, _>(routes, a::get_filter_route);
    routes = route::<c::room::create_room::v3::Request, _, _>(routes, r::create_room_route);
    routes = route::<c::membership::join_room_by_id::v3::Request, _, _>(
        routes,
        r::join_room_by_id_route,
    );
    routes = route::<c::membership::join_room_by_id_or_alias::v3::Request, _, _>(
        routes,
        r::join_room_by_id_or_alias_route,
    );
    routes = route::<c::membership::invite_user::v3::Request, _, _>(routes, r::invite_user_route);
    routes = route::<c::membership::leave_room::v3::Request, _, _>(routes, r::leave_room_route);
    routes = route::<c::membership::kick_user::v3::Request, _, _>(routes, r::kick_user_route);
    routes = route::<c::membership::ban_user::v3::Request, _, _>(routes, r::ban_user_route);
    routes = route::<c::membership::unban_user::v3::Request, _, _>(routes, r::unban_user_route);
    routes = route::<c::membership::joined_rooms::v3::Request, _, _>(routes, r::joined_rooms_route);
    routes =
        route::<c::membership::joined_members::v3::Request, _, _>(routes, r::joined_members_route);
    routes = route::<c::membership::get_member_events::v3::Request, _, _>(
        routes,
        r::get_member_events_route,
    );
    routes = route::<c::message::send_message_event::v3::Request, _, _>(
        routes,
        r::send_message_event_route,
    );
    routes = route::<c::message::get_message_events::v3::Request, _, _>(
        routes,
        r::get_message_events_route,
    );
    routes =
        route::<c::state::send_state_event::v3::Request, _, _>(routes, r::send_state_event_route);
    routes = route::<c::state::get_state_event_for_key::v3::Request, _, _>(
        routes,
        r::get_state_event_for_key_route,
    );
    routes =
        route::<c::state::get_state_events::v3::Request, _, _>(routes, r::get_state_events_route);
    routes = route::<c::room::get_room_event::v3::Request, _, _>(routes, r::get_room_event_route);
    routes = route::<c::sync::sync_events::v3::Request, _, _>(routes, s::sync_events_route);
    routes = route::<c::typing::create_typing_event::v3::Request, _, _>(
        routes,
        e::create_typing_event_route,
    );
    routes = route::<c::presence::set_presence::v3::Request, _, _>(routes, e::set_presence_route);
    routes = route::<c::presence::get_presence::v3::Request, _, _>(routes, e::get_presence_route);
    routes =
        route::<c::receipt::create_receipt::v3::Request, _, _>(routes, e::create_receipt_route);
    routes = route::<c::read_marker::set_read_marker::v3::Request, _, _>(
        routes,
        e::set_read_marker_route,
    );
    routes = route::<c::config::set_global_account_data::v3::Request, _, _>(
        routes,
        e::set_global_account_data_route,
    );
    routes = route::<c::config::get_global_account_data::v3::Request, _, _>(
        routes,
        e::get_global_account_data_route,
    );
    routes = route::<c::config::set_room_account_data::v3::Request, _, _>(
        routes,
        e::set_room_account_data_route,
    );
    routes = route::<c::config::get_room_account_data::v3::Request, _, _>(
        routes,
        e::get_room_account_data_route,
    );
    routes = route::<c::tag::get_tags::v3::Request, _, _>(routes, e::get_tags_route);
    routes = route::<c::tag::create_tag::v3::Request, _, _>(routes, e::create_tag_route);
    routes = route::<c::tag::delete_tag::v3::Request, _, _>(routes, e::delete_tag_route);
    {
        use crate::api::client::backup as b;
        use c::backup as cb;
        routes =
            route::<cb::create_backup_version::v3::Request, _, _>(routes, b::create_version_route);
        routes = route::<cb::get_latest_backup_info::v3::Request, _, _>(
            routes,
            b::get_latest_version_route,
        );
        routes = route::<cb::get_backup_info::v3::Request, _, _>(routes, b::get_version_route);
        routes =
            route::<cb::update_backup_version::v3::Request, _, _>(routes, b::update_version_route);
        routes =
            route::<cb::delete_backup_version::v3::Request, _, _>(routes, b::delete_version_route);
        routes = route::<cb::add_backup_keys::v3::Request, _, _>(routes, b::put_keys_route);
        routes = route::<cb::add_backup_keys_for_room::v3::Request, _, _>(
            routes,
            b::put_room_keys_route,
        );
        routes = route::<cb::add_backup_keys_for_session::v3::Request, _, _>(
            routes,
            b::put_session_key_route,
        );
        routes = route::<cb::get_backup_keys::v3::Request, _, _>(routes, b::get_keys_route);
        routes = route::<cb::get_backup_keys_for_room::v3::Request, _, _>(
            routes,
            b::get_room_keys_route,
        );
        routes = route::<cb::get_backup_keys_for_session::v3::Request, _, _>(
            routes,
            b::get_session_key_route,
        );
        routes = route::<cb::delete_backup_keys::v3::Request, _, _>(routes, b::delete_keys_route);
        routes = route::<cb::delete_backup_keys_for_room::v3::Request, _, _>(
            routes,
            b::delete_room_keys_route,
        );
        routes = route::<cb::delete_backup_keys_for_session::v3::Request, _, _>(
            routes,
            b::delete_session_key_route,
        );
    }
    routes = route::<c::keys::upload_keys::v3::Request, _, _>(routes, k::upload_keys_route);
    routes = route::<c::keys::upload_signing_keys::v3::Request, _, _>(
        routes,
        k::upload_signing_keys_route,
    );
    routes = route::<c::keys::get_key_changes::v3::Request, _, _>(routes, k::key_changes_route);
    routes =
        route::<c::keys::upload_signatures::v3::Request, _, _>(routes, k::upload_signatures_route);
    routes = route::<c::keys::get_keys::v3::Request, _, _>(routes, k::get_keys_route);
    routes = route::<c::keys::claim_keys::v3::Request, _, _>(routes, k::claim_keys_route);
    routes = route::<c::to_device::send_event_to_device::v3::Request, _, _>(
        routes,
        k::send_to_device_route,
    );
    routes = route::<c::media::create_content::v3::Request, _, _>(routes, m::create_content_route);
    routes = route::<c::media::get_content::v3::Request, _, _>(routes, m::get_content_legacy_route);
    routes = route::<c::media::get_content_thumbnail::v3::Request, _, _>(
        routes,
        m::get_content_thumbnail_legacy_route,
    );
    routes = route::<c::media::get_media_config::v3::Request, _, _>(
        routes,
        m::get_media_config_legacy_route,
    );
    routes = route::<c::authenticated_media::get_content::v1::Request, _, _>(
        routes,
        m::get_content_v1_route,
    );
    routes = route::<c::authenticated_media::get_content_as_filename::v1::Request, _, _>(
        routes,
        m::get_content_as_filename_v1_route,
    );
    routes = route::<c::authenticated_media::get_content_thumbnail::v1::Request, _, _>(
        routes,
        m::get_content_thumbnail_v1_route,
    );
    routes = route::<c::authenticated_media::get_media_config::v1::Request, _, _>(
        routes,
        m::get_media_config_v1_route,
    );
    routes = route::<c::alias::create_alias::v3::Request, _, _>(routes, d::create_alias_route);
    routes = route::<c::alias::get_alias::v3::Request, _, _>(routes, d::get_alias_route);
    routes = route::<c::alias::delete_alias::v3::Request, _, _>(routes, d::delete_alias_route);
    routes = route::<c::room::aliases::v3::Request, _, _>(routes, d::get_room_aliases_route);
    routes = route::<c::directory::get_room_visibility::v3::Request, _, _>(
        routes,
        d::get_room_visibility_route,
    );
    routes = route::<c::directory::set_room_visibility::v3::Request, _, _>(
        routes,
        d::set_room_visibility_route,
    );
    routes = route::<c::directory::get_public_rooms::v3::Request, _, _>(
        routes,
        d::get_public_rooms_route,
    );
    routes = route::<c::directory::get_public_rooms_filtered::v3::Request, _, _>(
        routes,
        d::get_public_rooms_filtered_route,
    );
    routes =
        route::<c::user_directory::search_users::v3::Request, _, _>(routes, d::search_users_route);
    routes =
        route::<c::account::change_password::v3::Request, _, _>(routes, x::change_password_route);
    routes = route::<c::account::deactivate::v3::Request, _, _>(routes, x::deactivate_route);
    routes = route::<c::device::delete_device::v3::Request, _, _>(routes, x::delete_device_route);
    routes = route::<c::device::delete_devices::v3::Request, _, _>(routes, x::delete_devices_route);
    routes = route::<c::session::refresh_token::v3::Request, _, _>(routes, x::refresh_token_route);
    routes = routes.route(
        "/_synapse/admin/v1/register",
        get(x::get_admin_register_nonce_route).post(x::post_admin_register_route),
    );
    routes = route::<c::redact::redact_event::v3::Request, _, _>(routes, r::redact_event_route);
    routes = route::<c::membership::forget_room::v3::Request, _, _>(routes, r::forget_room_route);
    routes = route::<c::context::get_context::v3::Request, _, _>(routes, r::get_context_route);
    routes = route::<c::account::check_registration_token_validity::v1::Request, _, _>(
        routes,
        a::check_registration_token_validity_route,
    );
    routes = route::<c::knock::knock_room::v3::Request, _, _>(routes, r::knock_room_route);
    finish(routes, state, territory::Fallback::DefaultTerritory)
}

/// The federation listener's routes (served over TLS).
pub fn federation_router(state: AppState) -> Router {
    let routes = Router::new()
        .route(
            "/_matrix/key/v2/server",
            get(federation::get_server_keys_route),
        )
        .route(
            "/_matrix/key/v2/server/{key_id}",
            get(federation::get_server_keys_by_id_route),
        )
        .route(
            "/_matrix/key/v2/query",
            axum::routing::post(federation::query_keys_route),
        )
        .route(
            "/_matrix/key/v2/query/{server_name}",
            get(federation::query_server_keys_route),
        )
        .route(
            "/_matrix/federation/v1/query/profile",
            get(federation::query_profile_route),
        )
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            axum::routing::put(federation_rooms::send_transaction_route),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(federation_rooms::make_join_route),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            axum::routing::put(federation_rooms::send_join_route),
        )
        .route(
            "/_matrix/federation/v1/event/{event_id}",
            get(federation_rooms::get_event_route),
        )
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            axum::routing::post(federation_rooms::get_missing_events_route),
        )
        .route(
            "/_matrix/federation/v1/hierarchy/{room_id}",
            get(crate::api::client::spaces::federation_hierarchy_route),
        )
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(federation_rooms::get_state_ids_route),
        )
        .route(
            "/_matrix/federation/v1/state/{room_id}",
            get(federation_rooms::get_state_route),
        )
        .route(
            "/_matrix/federation/v1/backfill/{room_id}",
            get(federation_rooms::backfill_route),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            axum::routing::put(federation_rooms::invite_route),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(federation_rooms::make_leave_route),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            axum::routing::put(federation_rooms::send_leave_route),
        )
        .route(
            "/_matrix/federation/v1/make_knock/{room_id}/{user_id}",
            get(federation_rooms::make_knock_route),
        )
        .route(
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            axum::routing::put(federation_rooms::send_knock_route),
        )
        .route(
            "/_matrix/federation/v1/query/directory",
            get(federation_rooms::query_directory_route),
        )
        .route(
            "/_matrix/federation/v1/publicRooms",
            get(federation_rooms::public_rooms_route).post(federation_rooms::public_rooms_route),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(federation::user_devices_route),
        )
        .route(
            "/_matrix/federation/v1/user/keys/query",
            axum::routing::post(federation::user_keys_query_route),
        )
        .route(
            "/_matrix/federation/v1/user/keys/claim",
            axum::routing::post(federation::user_keys_claim_route),
        )
        .route(
            "/_matrix/federation/v1/media/download/{media_id}",
            get(federation::media_download_route),
        )
        .route(
            "/_matrix/federation/v1/media/thumbnail/{media_id}",
            get(federation::media_thumbnail_route),
        )
        .route(
            "/_matrix/federation/v1/version",
            get(federation::get_server_version_route),
        );
    finish(routes, state, territory::Fallback::None)
}

/// Routes and layers both listeners share.
fn finish(routes: Router<AppState>, state: AppState, fallback: territory::Fallback) -> Router {
    let limit = state.config.server.max_request_body_bytes;
    let media_limit = state.config.media.max_upload_bytes;
    routes
        .route("/health", get(health::get_health_route))
        .route("/live", get(health::get_live_route))
        .route("/ready", get(health::get_ready_route))
        .route(
            "/.well-known/matrix/server",
            get(well_known::get_well_known_server_route),
        )
        .route(
            "/.well-known/matrix/client",
            get(well_known::get_well_known_client_route),
        )
        .fallback(|| async { ApiError::unrecognized() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            move |s, r, n| territory::route_territory(s, fallback, r, n),
        ))
        .layer(middleware::from_fn(move |r, n| {
            limit_body(limit, media_limit, r, n)
        }))
        .layer(DefaultBodyLimit::max(
            usize::try_from(limit).unwrap_or(usize::MAX),
        ))
        .layer(middleware::from_fn(answer_options))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    // The path only: query strings may carry access tokens.
                    tracing::info_span!(
                        "http.request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        territory = tracing::field::Empty,
                        status = tracing::field::Empty,
                    )
                })
                .on_request(())
                .on_response(|response: &Response, latency: Duration, span: &Span| {
                    span.record("status", response.status().as_u16());
                    tracing::debug!(latency_ms = latency.as_secs_f64() * 1e3, "response");
                })
                .on_failure(()),
        )
        .layer(cors())
        .with_state(state)
}

/// CORS as the spec asks of every endpoint: any origin, the Matrix methods and headers.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ])
        .max_age(Duration::from_secs(86_400))
}

/// Browsers' preflights are answered by the CORS layer; any other `OPTIONS` request also gets an
/// empty 200 (with CORS headers), as the spec allows for every path.
async fn answer_options(req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return (
            axum::http::StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            "{}",
        )
            .into_response();
    }
    next.run(req).await
}

/// Refuses a body whose declared length is over the limit before reading any of it; bodies
/// without a length are cut at the limit by `DefaultBodyLimit` when read.
async fn limit_body(limit: u64, media_limit: u64, req: Request, next: Next) -> Response {
    let limit = if ruma::is_upload(req.method().as_str(), req.uri().path()) {
        media_limit
    } else {
        limit
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return ApiError::too_large(limit).into_response();
    }
    next.run(req).await
}
