//! The admin HTTP server: `/livez`, `/readyz` and `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::gauge::Gauge;

use crate::RuntimeError;
use crate::health::Health;
use crate::metrics::MetricsRegistry;

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: MetricsRegistry,
    /// `ksr_ready`: what `/readyz` answers, as a gauge (set at each scrape).
    ready: Gauge,
}

/// Binds the admin server; the returned future serves until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: MetricsRegistry,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), RuntimeError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Admin { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| RuntimeError::Admin { addr, source })?;
    let ready = Gauge::default();
    metrics.register(|r| {
        r.register(
            "ready",
            "1 while /readyz answers 200 (ready), 0 otherwise",
            ready.clone(),
        )
    });
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AdminState {
            health,
            metrics,
            ready,
        });
    let handle = tokio::spawn(async move {
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = server.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    tracing::info!(addr = %local, "admin server listening");
    Ok((local, handle))
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.health.status() {
        Ok(()) => {
            let mut body = "ready".to_owned();
            if let Some(d) = state.health.detail() {
                body.push_str(&format!(" ({d})"));
            }
            if let Some(w) = state.health.warning() {
                body.push_str(&format!("; warning: {w}"));
            }
            (StatusCode::OK, body + "\n")
        }
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    state.ready.set(i64::from(state.health.status().is_ok()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
