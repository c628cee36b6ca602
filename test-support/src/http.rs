//! A small HTTP GET on loopback (readiness probes, `/metrics`, Consul reads in tests).

use std::time::Duration;

/// `GET http://127.0.0.1:<port><path>`: the status code and body (chunked or not), or `None`
/// if unreachable within 2 s.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let resp = crate::http_client()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().await.ok()?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .ok()
        .flatten()
}
