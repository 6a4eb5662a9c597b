//! The HTTP server: an actix-web system on its own thread, its routes, and the
//! bearer-token check for mutating requests.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;

use crate::error::{ControlError, DrainError};
use crate::exporter::{self, prometheus};
use crate::status::Cluster;

/// The dashboard page served at `GET /`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Largest request body `POST /scale` reads, in bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// How long in-flight requests get to finish when the server stops, in seconds.
const SHUTDOWN_SECS: u64 = 3;

/// How long `start` waits for the server thread to report that it serves.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler shares.
struct Shared {
    /// The cluster token mutating requests must carry.
    token: String,
    /// The coordinator.
    cluster: Arc<dyn Cluster>,
    /// The process-wide recorder `/metrics` renders.
    metrics: PrometheusHandle,
}

/// A running control plane: an actix-web server on its own thread.
///
/// Dropping it stops the server without waiting for the thread; [`ControlPlane::stop`]
/// also waits for it.
pub struct ControlPlane {
    /// Where it listens.
    addr: SocketAddr,
    /// Stops the server.
    handle: ServerHandle,
    /// The thread running the server's event loop; `None` once joined.
    thread: Option<JoinHandle<()>>,
}

impl ControlPlane {
    /// Serves `cluster` at `addr` (port 0: a free port). `token`: the cluster
    /// token that mutating requests must carry as `Authorization: Bearer TOKEN`.
    ///
    /// Installs the Prometheus recorder ([`prometheus`]) if it is not yet.
    pub fn start(
        addr: SocketAddr,
        token: String,
        cluster: Arc<dyn Cluster>,
    ) -> Result<Self, ControlError> {
        if token.is_empty() {
            return Err(ControlError::EmptyToken);
        }
        let metrics = prometheus()?;
        let listener =
            TcpListener::bind(addr).map_err(|source| ControlError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        let shared = web::Data::new(Shared {
            token,
            cluster,
            metrics,
        });
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("shoal-control".into())
            .spawn(move || serve(listener, shared, ready_tx))
            .map_err(ControlError::Thread)?;
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(handle)) => {
                tracing::info!("control plane serving at http://{local_addr}/");
                Ok(Self {
                    addr: local_addr,
                    handle,
                    thread: Some(thread),
                })
            }
            Ok(Err(e)) => {
                // The thread returns right after reporting the error.
                let _ = thread.join();
                Err(ControlError::Server(e))
            }
            Err(_) => Err(ControlError::StartTimeout(START_TIMEOUT)),
        }
    }

    /// The address the server listens at (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and joins its thread (graceful, bounded by a few seconds:
    /// requests still running after that are dropped, and a thread that still
    /// has not ended is left to finish on its own).
    pub fn stop(mut self) {
        // Sends the stop command now; the returned future only waits for it.
        drop(self.handle.stop(true));
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(SHUTDOWN_SECS + 2);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            tracing::warn!("control plane thread did not stop in time; leaving it");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.thread.is_some() {
            drop(self.handle.stop(true));
        }
    }
}

/// Runs the server on this thread until it is stopped; reports its handle (or
/// why it could not start) on `ready` first.
fn serve(
    listener: TcpListener,
    shared: web::Data<Shared>,
    ready: mpsc::SyncSender<std::io::Result<ServerHandle>>,
) {
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = HttpServer::new(move || app(shared.clone()))
            .workers(1)
            .disable_signals()
            .shutdown_timeout(SHUTDOWN_SECS)
            .listen(listener);
        let server = match server {
            Ok(server) => server.run(),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(server.handle()));
        if let Err(e) = server.await {
            tracing::warn!("control plane server ended with an error: {e}");
        }
    });
}

/// The routes.
fn app(
    shared: web::Data<Shared>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(shared)
        .service(endpoint("/", web::get().to(dashboard)))
        .service(endpoint("/status", web::get().to(status)))
        .service(endpoint("/metrics", web::get().to(metrics)))
        .service(endpoint("/scale", web::post().to(scale)))
        .default_service(web::to(not_found))
}

/// `path` answering `route`, and 405 to any other method.
fn endpoint(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// A JSON body `{"error": message}` with `code`.
fn json_error(code: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(code).json(serde_json::json!({ "error": message.into() }))
}

/// `GET /`: the dashboard.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(DASHBOARD)
}

/// `GET /status`: the cluster snapshot as JSON.
async fn status(shared: web::Data<Shared>) -> HttpResponse {
    let cluster = Arc::clone(&shared.cluster);
    match web::block(move || cluster.status()).await {
        Ok(snapshot) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(snapshot),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the coordinator failed to report its status",
        ),
    }
}

/// `GET /metrics`: the Prometheus text format, with the snapshot's gauges set first.
async fn metrics(shared: web::Data<Shared>) -> HttpResponse {
    let cluster = Arc::clone(&shared.cluster);
    // Without a snapshot, the coordinator's own metrics are still worth serving.
    if let Ok(snapshot) = web::block(move || cluster.status()).await {
        exporter::record_snapshot(&snapshot);
    }
    HttpResponse::Ok()
        .content_type(PROMETHEUS_CONTENT_TYPE)
        .body(shared.metrics.render())
}

/// The body of `POST /scale`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    /// The node to drain.
    drain: String,
}

/// `POST /scale` with `{"drain": "NODE"}`: drains a node (needs the cluster token).
async fn scale(req: HttpRequest, body: web::Payload, shared: web::Data<Shared>) -> HttpResponse {
    if !authorized(req.headers().get(header::AUTHORIZATION), &shared.token) {
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "this request needs `Authorization: Bearer <cluster token>`",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over {MAX_BODY_BYTES} bytes"),
        )
    };
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let bytes = match body.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
        Err(_) => return too_large(),
    };
    // Through a `Value` so that only an object is accepted (serde would also
    // take `["NODE"]` for the struct).
    let request = serde_json::from_slice::<serde_json::Value>(&bytes).and_then(|value| {
        if value.is_object() {
            serde_json::from_value::<ScaleRequest>(value)
        } else {
            Err(serde::de::Error::custom("the body is not a JSON object"))
        }
    });
    let request = match request {
        Ok(request) => request,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("expected a body like {{\"drain\": \"NODE\"}}: {e}"),
            );
        }
    };
    if request.drain.is_empty() {
        return json_error(StatusCode::BAD_REQUEST, "`drain` names no node");
    }
    let cluster = Arc::clone(&shared.cluster);
    match web::block(move || cluster.drain(&request.drain)).await {
        Ok(Ok(message)) => HttpResponse::Ok().json(serde_json::json!({ "ok": message })),
        Ok(Err(e @ DrainError::Unknown(_))) => json_error(StatusCode::NOT_FOUND, e.to_string()),
        Ok(Err(e @ DrainError::Refused(_))) => json_error(StatusCode::CONFLICT, e.to_string()),
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the coordinator failed while draining",
        ),
    }
}

/// Any other path.
async fn not_found() -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// A known path with another method.
async fn method_not_allowed() -> HttpResponse {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "this endpoint does not take that method",
    )
}

/// Whether `authorization` is `Bearer <token>` (scheme case-insensitive; the
/// token compared in constant time).
fn authorized(authorization: Option<&HeaderValue>, token: &str) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let Some((scheme, given)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Compares `given` with `expected` in time that depends only on `expected`'s length.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, &e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_can_live_in_another_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ControlPlane>();
    }

    #[test]
    fn constant_time_eq_matches_only_equal_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secre", b"secret"));
        assert!(!constant_time_eq(b"secrets", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
        // A prefix padded with the byte a missing one would be compared against.
        assert!(!constant_time_eq(b"secre\0", b"secret"));
    }

    #[test]
    fn bearer_header_is_parsed_strictly() {
        let check = |v: &str| authorized(Some(&HeaderValue::from_str(v).unwrap()), "tok3n");
        assert!(check("Bearer tok3n"));
        assert!(check("bearer tok3n"));
        assert!(check("  Bearer   tok3n "));
        assert!(!check("Bearer"));
        assert!(!check("Bearer "));
        assert!(!check("Basic tok3n"));
        assert!(!check("tok3n"));
        assert!(!check("Bearer tok3n extra"));
        assert!(!authorized(None, "tok3n"));
        let non_ascii = HeaderValue::from_bytes(b"Bearer tok\xff3n").unwrap();
        assert!(!authorized(Some(&non_ascii), "tok3n"));
    }

    #[test]
    fn dashboard_has_the_elements_the_tests_look_for() {
        for needle in [
            "id=\"members\"",
            "id=\"loss-curve\"",
            "id=\"events\"",
            "<polyline",
        ] {
            assert!(DASHBOARD.contains(needle), "dashboard lacks {needle}");
        }
        // Self-contained: nothing loaded from elsewhere.
        for external in ["src=\"http", "href=\"http", "@import", "<link"] {
            assert!(!DASHBOARD.contains(external), "dashboard loads {external}");
        }
    }
}
