//! The health and metrics endpoints: `/healthz` (the process serves
//! requests), `/readyz` (200 only after the first successful sync and while
//! the last sync succeeded), `/metrics` (Prometheus, OpenMetrics text).
//!
//! Served from a thread and runtime of their own: the agent's runtime can
//! be busy for seconds decoding the first list of a large cluster, and a
//! kubelet probe that times out meanwhile would restart a healthy agent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::task::JoinHandle;

use super::metrics::Metrics;

pub fn router(metrics: Arc<Metrics>) -> Router {
    let ready = metrics.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.is_ready() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    let reasons: String = ready.unready_reasons().iter().map(|r| format!("not ready: {r}\n")).collect();
                    (StatusCode::SERVICE_UNAVAILABLE, reasons)
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                if let Some(counters) = metrics.rule_counters() {
                    // Reads the kernel at most once per interval; off the
                    // async threads, since it runs nft. A slow read (a
                    // large table) finishes in the background: this scrape
                    // serves the last values rather than time out.
                    let read = tokio::task::spawn_blocking(move || counters.refresh());
                    let _ = tokio::time::timeout(COUNTERS_WAIT, read).await;
                }
                let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
                ([(header::CONTENT_TYPE, ct)], metrics.render()).into_response()
            }),
        )
}

/// Longest a scrape waits for the rule counters to be read.
const COUNTERS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Bind `addr` (port 0 picks one, in the calling thread's network
/// namespace) and serve on a thread of its own until the returned task is
/// aborted.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let app = router(metrics);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("metrics-http".into()).spawn(move || {
        runtime.block_on(async move {
            let served = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => axum::serve(l, app).with_graceful_shutdown(async move {
                    let _ = stopped.await;
                }),
                Err(e) => return tracing::error!(error = %e, "metrics server cannot start"),
            };
            if let Err(e) = served.await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        })
    })?;
    // Aborting this task drops `stop`, which ends the server.
    let task = tokio::spawn(async move {
        let _stop = stop;
        std::future::pending::<()>().await
    });
    Ok((bound, task))
}

/// A minimal HTTP/1.0 GET for tests and probes: (status, body).
pub async fn get_text(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request(addr, path).as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    response(&buf)
}

/// [`get_text`] without a runtime, each step bounded by `timeout`: for a
/// thread inside another network namespace, where the agent under test
/// serves on its own loopback.
pub fn get_text_blocking(addr: SocketAddr, path: &str, timeout: std::time::Duration) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(request(addr, path).as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    response(&buf)
}

fn request(addr: SocketAddr, path: &str) -> String {
    format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
}

fn response(buf: &[u8]) -> std::io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(buf);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an HTTP response: {text:?}"));
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).ok_or_else(bad)?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), metrics.clone()).await.unwrap();
        let check = |path: &'static str, status: u16, body: &'static str| async move {
            let (s, b) = get_text(addr, path).await.unwrap();
            assert_eq!(s, status, "{path}: {b}");
            assert!(b.contains(body), "{path}: {b}");
        };
        check("/healthz", 200, "ok").await;
        check("/readyz", 503, "not ready").await;
        check("/metrics", 200, "netfence_ready 0").await;
        metrics.set_ready(true);
        check("/readyz", 200, "ready").await;
        check("/metrics", 200, "netfence_ready 1").await;
        check("/nope", 404, "").await;
        // A failed precondition makes it unready, says why, and clears.
        let bypass = crate::agent::precondition::Failure { reason: "bridge_nf_call_iptables_off", message: "cni0 bypasses".into() };
        metrics.set_precondition_failures(std::slice::from_ref(&bypass));
        check("/readyz", 503, "not ready: cni0 bypasses").await;
        check("/metrics", 200, "netfence_precondition_failed{reason=\"bridge_nf_call_iptables_off\"} 1").await;
        check("/metrics", 200, "netfence_ready 0").await;
        metrics.set_precondition_failures(&[]);
        check("/readyz", 200, "ready").await;
        check("/metrics", 200, "netfence_precondition_failed{reason=\"bridge_nf_call_iptables_off\"} 0").await;
        let blocking = tokio::task::spawn_blocking(move || get_text_blocking(addr, "/readyz", std::time::Duration::from_secs(2)));
        assert_eq!(blocking.await.unwrap().unwrap(), (200, "ready\n".to_string()));
        task.abort();
    }
}
