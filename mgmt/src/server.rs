//! The REST API (`/api/v1/...`), the SSE event stream, Prometheus metrics and the web
//! console, served with axum over any [`NodeApi`].
//!
//! Authentication: `Authorization: Bearer <token>`. With tokens configured, every
//! request but the console page needs one; the read token reads, the admin token reads
//! and changes. With no token configured the API is open for reading (the node refuses
//! to listen anywhere but loopback then) and refuses every change.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use volume::MappingTable;

use crate::model::{ChangeState, Event, RemapRequest};
use crate::node::{ApiError, NodeApi};

/// The console: one static page, no external resources.
pub const CONSOLE_HTML: &str = include_str!("../console/index.html");

/// Who may do what.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Reads and changes.
    pub admin_token: Option<String>,
    /// Reads only.
    pub read_token: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    // Tokens are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("read_token", &self.read_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AuthConfig {
    /// True when no token is configured (open reads on loopback, no changes).
    pub fn is_open(&self) -> bool {
        self.admin_token.is_none() && self.read_token.is_none()
    }
}

/// What the caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Admin,
}

#[derive(Clone)]
struct AppState {
    api: Arc<dyn NodeApi>,
    auth: Arc<AuthConfig>,
    shutdown: CancellationToken,
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(*self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"switchyard\""),
            );
        }
        r
    }
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from timing.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn role_of(auth: &AuthConfig, headers: &HeaderMap) -> Result<Role, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
    match given {
        None if auth.is_open() => Ok(Role::Read),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request needs a token",
            "send `Authorization: Bearer <token>` (CLI: --token or SWITCHYARD_TOKEN) with the \
             read or admin token from the node's [management] section",
        )),
        Some(t) => {
            if auth.admin_token.as_deref().is_some_and(|a| same(a, &t)) {
                Ok(Role::Admin)
            } else if auth.read_token.as_deref().is_some_and(|r| same(r, &t)) {
                Ok(Role::Read)
            } else if auth.is_open() {
                // No tokens configured: a token is pointless but harmless.
                Ok(Role::Read)
            } else {
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "the token is not valid for this node",
                    "use the read or admin token from the node's [management] section",
                ))
            }
        }
    }
}

async fn authenticate(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let role = role_of(&st.auth, req.headers())?;
    req.extensions_mut().insert(role);
    Ok(next.run(req).await)
}

fn require_admin(st: &AppState, role: Role) -> Result<(), ApiError> {
    if role == Role::Admin {
        return Ok(());
    }
    let hint = if st.auth.admin_token.is_none() {
        "no admin token is configured on this node, so it accepts no changes; set \
         [management] admin_token (or SWITCHYARD_ADMIN_TOKEN) and restart it"
    } else {
        "this token may only read; use the admin token"
    };
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "this request changes the node and needs the admin role",
        hint,
    ))
}

/// The router: API, metrics, console. `shutdown` ends open event streams.
pub fn router(api: Arc<dyn NodeApi>, auth: AuthConfig, shutdown: CancellationToken) -> Router {
    let st = AppState {
        api,
        auth: Arc::new(auth),
        shutdown,
    };
    let protected = Router::new()
        .route("/api/v1", get(index))
        .route("/api/v1/status", get(status))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{name}/state", post(node_state))
        .route("/api/v1/nodes/{name}", axum::routing::delete(remove_node))
        .route("/api/v1/faults", post(faults))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/targets", get(targets))
        .route("/api/v1/backends", get(backends).post(add_backend))
        .route(
            "/api/v1/backends/{id}",
            axum::routing::delete(remove_backend),
        )
        .route("/api/v1/volumes", get(volumes).post(create_volume))
        .route("/api/v1/volumes/{name}", get(volume).delete(delete_volume))
        .route("/api/v1/volumes/{name}/exports", post(export_volume))
        .route(
            "/api/v1/volumes/{name}/exports/{target}/{lun}",
            axum::routing::delete(unexport_volume),
        )
        .route("/api/v1/zoning", get(zoning).put(set_zoning))
        .route("/api/v1/config", get(config_doc))
        .route("/api/v1/volumes/{name}/remap", post(remap))
        .route("/api/v1/volumes/{name}/migrate", post(migrate))
        .route("/api/v1/migrations", get(migrations))
        .route("/api/v1/migrations/{id}", get(migration))
        .route("/api/v1/migrations/{id}/{action}", post(migration_action))
        .route("/api/v1/mapping", get(mapping))
        .route("/api/v1/mapping/validate", post(validate))
        .route("/api/v1/changes", get(changes))
        .route("/api/v1/changes/{id}", get(change))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(stream))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(st.clone(), authenticate));
    Router::new()
        .route("/", get(console))
        .route("/index.html", get(console))
        .merge(protected)
        .fallback(not_found)
        .with_state(st)
}

/// Serve the router on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    api: Arc<dyn NodeApi>,
    auth: AuthConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(api, auth, shutdown.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Refuse to expose an API without tokens beyond this machine.
pub fn check_listen(addr: &SocketAddr, auth: &AuthConfig) -> Result<(), String> {
    if auth.is_open() && !addr.ip().is_loopback() {
        return Err(format!(
            "[management] listen = \"{addr}\" is not a loopback address, and no admin_token or \
             read_token is set: anyone on the network could read the node. Set tokens \
             (or SWITCHYARD_ADMIN_TOKEN / SWITCHYARD_READ_TOKEN), or listen on 127.0.0.1"
        ));
    }
    Ok(())
}

async fn console() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
            ),
        ],
        Html(CONSOLE_HTML),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no such endpoint",
        "see GET /api/v1 for the list of endpoints (mgmt/API.md documents them)",
    )
}

async fn index() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": "v1",
        "endpoints": [
            "GET /api/v1/status", "GET /api/v1/nodes", "POST /api/v1/nodes/{name}/state", "DELETE /api/v1/nodes/{name}", "GET /api/v1/sessions",
            "GET /api/v1/targets", "GET /api/v1/backends", "GET /api/v1/volumes",
            "GET /api/v1/volumes/{name}", "POST /api/v1/volumes/{name}/remap",
            "POST /api/v1/volumes/{name}/migrate", "GET /api/v1/migrations",
            "GET /api/v1/migrations/{id}", "POST /api/v1/migrations/{id}/{pause|resume|abort}",
            "GET /api/v1/mapping", "POST /api/v1/mapping/validate",
            "GET /api/v1/changes", "GET /api/v1/changes/{id}",
            "GET /api/v1/events", "GET /api/v1/events/stream", "GET /metrics"
        ]
    }))
}

async fn status(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.status())
}

async fn nodes(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.status().nodes)
}

async fn node_state(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<crate::model::NodeView>, ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::NodeStateRequest = parse_json(
        &body,
        "a node state: {\"state\": \"active\"|\"draining\", \"alua\": \"active-optimized\"|...}",
    )?;
    let api = st.api.clone();
    tokio::task::spawn_blocking(move || api.set_node_state(&name, req))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("node state task failed: {e}"),
                "",
            )
        })?
        .map(Json)
}

async fn remove_node(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&st, role)?;
    let api = st.api.clone();
    tokio::task::spawn_blocking(move || api.remove_node(&name))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("remove task failed: {e}"),
                "",
            )
        })??;
    Ok(StatusCode::NO_CONTENT)
}

/// Runs a blocking API call off the runtime.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what} task failed: {e}"),
            "",
        )
    })?
}

async fn migrate(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<crate::model::MigrationView>), ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::MigrateRequest = parse_json(
        &body,
        "a migration: {\"to\": \"BACKEND-LU\", \"at\": LBA, \"vstart\": N, \"blocks\": N, \"window_mib\": 16, ...}",
    )?;
    let api = st.api.clone();
    let v = blocking("migration", move || api.start_migration(&name, req)).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn create_volume(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    body: Bytes,
) -> Result<(StatusCode, Json<crate::model::VolumeView>), ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::CreateVolumeRequest = parse_json(
        &body,
        "a volume: {\"name\": \"NAME\", \"extents\": [{\"vstart\": 0, \"blocks\": N, \"backend\": \"LU\", \"bstart\": 0}], \"exports\": [{\"target\": \"IQN\", \"lun\": 0}]}",
    )?;
    let api = st.api.clone();
    let v = blocking("create", move || api.create_volume(req)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Deserialize)]
struct ForceQuery {
    force: Option<bool>,
}

async fn delete_volume(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Result<StatusCode, ApiError> {
    require_admin(&st, role)?;
    let api = st.api.clone();
    blocking("delete", move || {
        api.delete_volume(&name, q.force.unwrap_or(false))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn export_volume(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<crate::model::VolumeView>, ApiError> {
    require_admin(&st, role)?;
    let at: crate::model::ExportView =
        parse_json(&body, "an export: {\"target\": \"IQN\", \"lun\": N}")?;
    let api = st.api.clone();
    blocking("export", move || api.export_volume(&name, at))
        .await
        .map(Json)
}

async fn unexport_volume(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path((name, target, lun)): Path<(String, String, String)>,
) -> Result<Json<crate::model::VolumeView>, ApiError> {
    require_admin(&st, role)?;
    let lun: u16 = lun.parse().map_err(|_| {
        ApiError::bad_request(
            format!("{lun:?} is not a LUN number"),
            "DELETE /api/v1/volumes/{name}/exports/{target}/{lun}, with lun 0..=16383",
        )
    })?;
    let api = st.api.clone();
    blocking("unexport", move || {
        api.unexport_volume(&name, crate::model::ExportView { target, lun })
    })
    .await
    .map(Json)
}

async fn add_backend(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    body: Bytes,
) -> Result<(StatusCode, Json<crate::model::BackendView>), ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::AddBackendRequest = parse_json(
        &body,
        "an array: {\"id\": \"ID\", \"portal\": \"IP:PORT\", \"target\": \"IQN\", \"chap_username\": ..., \"chap_secret\": ...}",
    )?;
    let api = st.api.clone();
    let v = blocking("add back-end", move || api.add_backend(req)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

async fn remove_backend(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&st, role)?;
    let api = st.api.clone();
    blocking("remove back-end", move || api.remove_backend(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn config_doc(
    State(st): State<AppState>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Response {
    let doc = st.api.config_doc();
    if wants_toml(q.format.as_deref(), &headers) {
        match toml::to_string(&doc) {
            Ok(text) => ([(header::CONTENT_TYPE, "application/toml")], text).into_response(),
            Err(e) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot write the configuration as TOML: {e}"),
                "ask for JSON (?format=json)",
            )
            .into_response(),
        }
    } else {
        Json(doc).into_response()
    }
}

async fn zoning(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.zoning())
}

async fn set_zoning(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    body: Bytes,
) -> Result<Json<crate::model::ZoningView>, ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::ZoningRequest = parse_json(
        &body,
        "{\"expected_version\": N, \"zoning\": {\"groups\": [...], \"rules\": [...]}} (GET /api/v1/zoning gives the version)",
    )?;
    let api = st.api.clone();
    blocking("zoning", move || api.set_zoning(req))
        .await
        .map(Json)
}

async fn migrations(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.migrations())
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::bad_request(
            format!("{id:?} is not a migration id"),
            "GET /api/v1/migrations lists them",
        )
    })
}

async fn migration(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::model::MigrationView>, ApiError> {
    let id = parse_id(&id)?;
    st.api
        .migrations()
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(
                format!("there is no migration {id}"),
                "GET /api/v1/migrations lists them (finished ones are kept for a while)",
            )
        })
}

async fn migration_action(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<crate::model::MigrationView>, ApiError> {
    require_admin(&st, role)?;
    let id = parse_id(&id)?;
    let action = match action.as_str() {
        "pause" => crate::model::MigrationAction::Pause,
        "resume" => crate::model::MigrationAction::Resume,
        "abort" => crate::model::MigrationAction::Abort,
        other => {
            return Err(ApiError::not_found(
                format!("no migration action {other:?}"),
                "POST /api/v1/migrations/{id}/pause, /resume or /abort",
            ))
        }
    };
    let api = st.api.clone();
    blocking("migration", move || api.migration_action(id, action))
        .await
        .map(Json)
}

async fn faults(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    body: Bytes,
) -> Result<Json<crate::model::FaultRequest>, ApiError> {
    require_admin(&st, role)?;
    let req: crate::model::FaultRequest = parse_json(&body, "{\"isolate\": true|false}")?;
    st.api.inject_fault(req.clone())?;
    Ok(Json(req))
}

async fn sessions(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.sessions())
}

async fn targets(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.targets())
}

async fn backends(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.backends())
}

async fn volumes(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.volumes())
}

fn unknown_volume(st: &AppState, name: &str) -> ApiError {
    let known: Vec<String> = st.api.volumes().into_iter().map(|v| v.name).collect();
    ApiError::not_found(
        format!("no volume named {name:?}"),
        if known.is_empty() {
            "this node serves no volumes; add [[mapping.volumes]] to its config".to_string()
        } else {
            format!("volumes on this node: {}", known.join(", "))
        },
    )
}

async fn volume(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    st.api
        .volume(&name)
        .map(Json)
        .ok_or_else(|| unknown_volume(&st, &name))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<bool>,
}

/// How long a waiting remap request may take before the answer is sent anyway (the
/// change goes on; poll `GET /api/v1/changes/{id}`).
const REMAP_WAIT: Duration = Duration::from_secs(600);

async fn remap(
    State(st): State<AppState>,
    axum::Extension(role): axum::Extension<Role>,
    Path(name): Path<String>,
    Query(q): Query<WaitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_admin(&st, role)?;
    let req: RemapRequest = parse_json(&body, "a remap request: {\"extents\": [{\"vstart\": 0, \"blocks\": N, \"backend\": \"ID\", \"bstart\": 0}, ...]}")?;
    if st.api.volume(&name).is_none() {
        return Err(unknown_volume(&st, &name));
    }
    let api = st.api.clone();
    let n = name.clone();
    let id = tokio::task::spawn_blocking(move || api.start_remap(&n, req))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("remap task failed: {e}"),
                "",
            )
        })??;
    let location = format!("/api/v1/changes/{id}");
    if q.wait == Some(false) {
        let rec = st.api.journal().change(id);
        let mut r = (StatusCode::ACCEPTED, Json(rec)).into_response();
        r.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
        return Ok(r);
    }
    let rec = st
        .api
        .journal()
        .wait_final(id, REMAP_WAIT)
        .await
        .ok_or_else(|| ApiError::not_found(format!("change {id} vanished"), ""))?;
    let status = match rec.state {
        ChangeState::Done => StatusCode::OK,
        s if !s.is_final() => StatusCode::ACCEPTED,
        _ => {
            let err = rec.error.clone().unwrap_or_else(|| "remap failed".into());
            let hint = rec.hint.clone().unwrap_or_default();
            let status = if err.contains("drain") || err.contains("held") {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            return Err(ApiError::new(status, err, hint).with_change(rec));
        }
    };
    let mut r = (status, Json(rec)).into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).unwrap());
    Ok(r)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            format!("the request body is not valid: {e}"),
            format!("send JSON: {expected}"),
        )
    })
}

#[derive(Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn wants_toml(format: Option<&str>, headers: &HeaderMap) -> bool {
    match format {
        Some(f) => f.eq_ignore_ascii_case("toml"),
        None => headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("toml")),
    }
}

async fn mapping(
    State(st): State<AppState>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let table = st.api.mapping();
    if let Some(f) = q.format.as_deref() {
        if !f.eq_ignore_ascii_case("toml") && !f.eq_ignore_ascii_case("json") {
            return Err(ApiError::bad_request(
                format!("unknown format {f:?}"),
                "use ?format=toml or ?format=json",
            ));
        }
    }
    if wants_toml(q.format.as_deref(), &headers) {
        Ok((
            [(header::CONTENT_TYPE, "application/toml; charset=utf-8")],
            table.to_toml(),
        )
            .into_response())
    } else {
        Ok(Json(table).into_response())
    }
}

async fn validate(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the table is not UTF-8 text", ""))?;
    let looks_json = ctype.contains("json") || text.trim_start().starts_with('{');
    let table: MappingTable = if looks_json {
        parse_json(&body, "a mapping table {\"epoch\": N, \"volumes\": [...]}")?
    } else {
        MappingTable::from_toml(text).map_err(|e| {
            ApiError::bad_request(
                format!("the table is not valid TOML: {e}"),
                "send the table as exported by GET /api/v1/mapping?format=toml (or as JSON)",
            )
        })?
    };
    let report = st.api.validate_mapping(&table);
    let status = if report.valid {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, Json(report)).into_response())
}

async fn changes(State(st): State<AppState>) -> impl IntoResponse {
    Json(st.api.journal().changes())
}

async fn change(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            format!("{id:?} is not a change id"),
            "change ids are numbers",
        )
    })?;
    st.api.journal().change(id).map(Json).ok_or_else(|| {
        ApiError::not_found(
            format!("no change {id}"),
            "GET /api/v1/changes lists the changes this node keeps",
        )
    })
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<u64>,
    limit: Option<usize>,
}

async fn events(State(st): State<AppState>, Query(q): Query<EventsQuery>) -> impl IntoResponse {
    Json(
        st.api
            .journal()
            .events(q.since.unwrap_or(0), q.limit.unwrap_or(200).min(2000)),
    )
}

fn sse_event(ev: &Event) -> SseEvent {
    SseEvent::default()
        .id(ev.seq.to_string())
        .event(ev.kind.clone())
        .data(serde_json::to_string(ev).unwrap_or_default())
}

async fn stream(
    State(st): State<AppState>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // EventSource reconnects with Last-Event-ID: resume after it.
    let since = q.since.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    });
    let (backlog, rx) = st.api.journal().subscribe(since);
    let shutdown = st.shutdown.clone();
    let state = (backlog.into_iter(), rx, shutdown, 0u64);
    let s = futures::stream::unfold(state, |(mut backlog, mut rx, sd, last)| async move {
        if let Some(ev) = backlog.next() {
            let seq = ev.seq;
            return Some((Ok(sse_event(&ev)), (backlog, rx, sd, seq)));
        }
        loop {
            tokio::select! {
                _ = sd.cancelled() => return None,
                r = rx.recv() => match r {
                    Ok(ev) if ev.seq <= last => continue,
                    Ok(ev) => {
                        let seq = ev.seq;
                        return Some((Ok(sse_event(&ev)), (backlog, rx, sd, seq)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let e = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(e), (backlog, rx, sd, last)));
                    }
                    Err(_) => return None,
                }
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(st.api.as_ref()),
    )
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of a node.
pub fn render_metrics(api: &dyn NodeApi) -> String {
    let m = api.metrics();
    let node = label(api.journal().node());
    let mut o = String::new();
    let counter = |o: &mut String, name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(o, "{name}{{node=\"{node}\"}} {v}");
    };
    let c = &m.counters;
    counter(
        &mut o,
        "switchyard_commands_total",
        "SCSI commands executed.",
        "counter",
        c.commands,
    );
    counter(
        &mut o,
        "switchyard_logins_total",
        "Successful iSCSI logins.",
        "counter",
        c.logins,
    );
    counter(
        &mut o,
        "switchyard_login_failures_total",
        "Refused or failed iSCSI logins.",
        "counter",
        c.login_failures,
    );
    counter(
        &mut o,
        "switchyard_sessions",
        "iSCSI sessions logged in now.",
        "gauge",
        c.sessions,
    );
    counter(
        &mut o,
        "switchyard_uptime_seconds",
        "Seconds since the node started.",
        "gauge",
        m.uptime_secs,
    );
    counter(
        &mut o,
        "switchyard_mapping_epoch",
        "Epoch of the mapping table served.",
        "gauge",
        m.epoch,
    );
    counter(
        &mut o,
        "switchyard_backend_errors_total",
        "Failed I/Os to back-end LUs.",
        "counter",
        c.backend_errors,
    );
    let name = "switchyard_copy_bytes_total";
    let _ = writeln!(
        o,
        "# HELP {name} Data copied for remaps and migrations: engine=\"node\" counts bytes this node read plus wrote, engine=\"xcopy\" bytes the array moved by EXTENDED COPY.\n# TYPE {name} counter"
    );
    let _ = writeln!(
        o,
        "{name}{{node=\"{node}\",engine=\"node\"}} {}",
        c.copy_node_bytes
    );
    let _ = writeln!(
        o,
        "{name}{{node=\"{node}\",engine=\"xcopy\"}} {}",
        c.copy_offloaded_bytes
    );
    let migrations = api.migrations();
    type MField = fn(&crate::model::MigrationView) -> u64;
    let mig_fields: [(&str, &str, MField); 3] = [
        (
            "switchyard_migration_blocks",
            "Blocks a migration moves.",
            |m| m.blocks,
        ),
        (
            "switchyard_migration_copied_blocks",
            "Blocks a migration has copied.",
            |m| m.copied_blocks,
        ),
        (
            "switchyard_migration_offloaded_blocks",
            "Blocks the array copied for a migration (EXTENDED COPY).",
            |m| m.offloaded_blocks,
        ),
    ];
    for (name, help, f) in mig_fields {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for m in &migrations {
            let _ = writeln!(
                o,
                "{name}{{node=\"{node}\",migration=\"{}\",volume=\"{}\",state=\"{}\"}} {}",
                m.id,
                label(&m.volume),
                m.state,
                f(m)
            );
        }
    }

    type Field = fn(&crate::model::IoCounters) -> u64;
    let io_fields: [(&str, &str, Field); 5] = [
        ("reads_total", "Read commands.", |c| c.reads),
        ("writes_total", "Write commands.", |c| c.writes),
        ("read_bytes_total", "Bytes read.", |c| c.read_bytes),
        ("write_bytes_total", "Bytes written.", |c| c.write_bytes),
        ("errors_total", "Failed I/Os.", |c| c.errors),
    ];
    for (suffix, help, f) in io_fields {
        let name = format!("switchyard_volume_{suffix}");
        let _ = writeln!(
            o,
            "# HELP {name} Virtual volume: {help}\n# TYPE {name} counter"
        );
        for (v, io) in &m.volumes {
            let _ = writeln!(
                o,
                "{name}{{node=\"{node}\",volume=\"{}\"}} {}",
                label(v),
                f(io)
            );
        }
    }
    for (suffix, help, f) in io_fields {
        let name = format!("switchyard_backend_{suffix}");
        let _ = writeln!(
            o,
            "# HELP {name} Back-end LU: {help}\n# TYPE {name} counter"
        );
        for (b, io, _) in &m.backends {
            let _ = writeln!(
                o,
                "{name}{{node=\"{node}\",backend=\"{}\"}} {}",
                label(b),
                f(io)
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP switchyard_backend_up 1 when the back-end LU is reachable.\n# TYPE switchyard_backend_up gauge"
    );
    for (b, _, up) in &m.backends {
        let _ = writeln!(
            o,
            "switchyard_backend_up{{node=\"{node}\",backend=\"{}\"}} {}",
            label(b),
            u8::from(*up)
        );
    }

    let _ = writeln!(
        o,
        "# HELP switchyard_changes Changes kept, by state.\n# TYPE switchyard_changes gauge"
    );
    for (s, n) in api.journal().change_counts() {
        let _ = writeln!(o, "switchyard_changes{{node=\"{node}\",state=\"{s}\"}} {n}");
    }

    let name = "switchyard_remap_hold_seconds";
    let _ = writeln!(o, "# HELP {name} How long remaps held their ranges (hold, drain, copy, switch).\n# TYPE {name} histogram");
    crate::histogram::write_series(
        &mut o,
        name,
        &format!("node=\"{node}\""),
        &api.journal().hold_times(),
    );
    for (kind, help, series) in [
        ("volume", "Virtual volume", &m.volume_latency),
        ("backend", "Back-end LU", &m.backend_latency),
    ] {
        let name = format!("switchyard_{kind}_io_seconds");
        let _ = writeln!(o, "# HELP {name} {help}: time to complete a read or write, as the node's volume layer sees it.\n# TYPE {name} histogram");
        for (id, op, h) in series {
            crate::histogram::write_series(
                &mut o,
                &name,
                &format!("node=\"{node}\",{kind}=\"{}\",op=\"{op}\"", label(id)),
                h,
            );
        }
    }
    o
}
