//! An etcd channel that talks to one endpoint at a time and moves on to the next when that one
//! cannot be reached, the way etcd's own Go client pins an endpoint.
//!
//! etcd-client's default balanced channel spreads requests over every endpoint and fails the
//! ones it sends to an endpoint that is down (etcdv3/etcd-client#39), so one dead member of
//! `--etcd-endpoints` fails a share of every batch. Here a request that cannot reach its
//! endpoint — or that the endpoint answers `UNAVAILABLE` (no leader, shutting down) — fails,
//! and the next request goes to the next endpoint; callers already retry failed requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use etcd_client::{BalancedChannelBuilder, Channel};
use http::{Request, Response, Uri};
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

/// gRPC's `UNAVAILABLE` status code, as a trailers-only response carries it in its headers.
const UNAVAILABLE: &str = "14";

/// Builds the [`Failover`] channel for `etcd_client::Client::connect_with_balanced_channel`.
#[derive(Debug, Default)]
pub struct FailoverChannel;

impl BalancedChannelBuilder for FailoverChannel {
    type Error = etcd_client::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<(Channel, mpsc::Sender<Change<Uri, Endpoint>>), Self::Error> {
        let (tx, rx) = mpsc::channel(buffer_size);
        let failover = Failover {
            shared: Arc::new(Shared {
                changes: Mutex::new(rx),
                endpoints: Mutex::new(Vec::new()),
                current: AtomicUsize::new(0),
            }),
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(failover)), tx))
    }
}

/// The endpoints in the order given, and the one in use.
#[derive(Debug)]
struct Shared {
    /// Endpoints etcd-client inserts (or removes) after the channel is built.
    changes: Mutex<mpsc::Receiver<Change<Uri, Endpoint>>>,
    endpoints: Mutex<Vec<(Uri, tonic::transport::Channel)>>,
    current: AtomicUsize,
}

impl Shared {
    /// The endpoint in use (its index and channel), after applying pending changes.
    fn pick(&self) -> Option<(usize, tonic::transport::Channel)> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(change) = changes.try_recv() {
            match change {
                Change::Insert(uri, endpoint) => {
                    endpoints.retain(|(u, _)| *u != uri);
                    endpoints.push((uri, endpoint.connect_lazy()));
                }
                Change::Remove(uri) => endpoints.retain(|(u, _)| *u != uri),
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        let index = self.current.load(Ordering::Relaxed) % endpoints.len();
        endpoints.get(index).map(|(_, c)| (index, c.clone()))
    }

    /// Moves on from endpoint `index` (once, however many requests failed on it).
    fn failed(&self, index: usize) {
        let n = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1);
        let _ = self.current.compare_exchange(
            index,
            (index + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The channel: every request to the endpoint in use.
#[derive(Debug, Clone)]
struct Failover {
    shared: Arc<Shared>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Failover {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen endpoint's, awaited in `call` (it may change meanwhile).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (index, channel) = shared.pick().ok_or("no etcd endpoint configured")?;
            match channel.oneshot(request).await {
                Ok(response) => {
                    let status = response.headers().get("grpc-status");
                    if status.is_some_and(|s| s == UNAVAILABLE) {
                        shared.failed(index);
                    }
                    Ok(response)
                }
                Err(e) => {
                    shared.failed(index);
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_with(uris: &[&str]) -> Shared {
        let (tx, rx) = mpsc::channel(8);
        for uri in uris {
            let endpoint = Endpoint::from_shared(uri.to_string()).expect("a valid URI");
            tx.try_send(Change::Insert(endpoint.uri().clone(), endpoint))
                .expect("room in the channel");
        }
        Shared {
            changes: Mutex::new(rx),
            endpoints: Mutex::new(Vec::new()),
            current: AtomicUsize::new(0),
        }
    }

    #[tokio::test]
    async fn a_failed_endpoint_hands_over_to_the_next_in_order_and_wraps_around() {
        let shared = shared_with(&[
            "http://127.0.0.1:1",
            "http://127.0.0.1:2",
            "http://127.0.0.1:3",
        ]);
        assert_eq!(shared.pick().map(|p| p.0), Some(0));
        shared.failed(0);
        assert_eq!(shared.pick().map(|p| p.0), Some(1));
        // Several requests failing on the same endpoint move on once.
        shared.failed(1);
        shared.failed(1);
        assert_eq!(shared.pick().map(|p| p.0), Some(2));
        shared.failed(2);
        assert_eq!(shared.pick().map(|p| p.0), Some(0));
    }

    #[tokio::test]
    async fn no_endpoint_picks_nothing() {
        let shared = shared_with(&[]);
        assert!(shared.pick().is_none());
    }
}
