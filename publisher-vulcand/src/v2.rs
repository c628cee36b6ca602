//! etcd v2 sink for vulcand v0.8 (the seed's image), which reads only the v2 API under
//! `/vulcand`.
//!
//! The v2 API has no multi-key transactions, so our fences and claim records stay in etcd v3
//! (same etcd, 3.4/3.5 with `--enable-v2`; the two keyspaces are separate) and are committed
//! exactly as in v3 mode. After a batch's commits every route whose record changed is
//! *synced*: its v2 keys are read, the difference to the record's projection is written in
//! vulcand's order (deletes frontend → servers → backend, puts backend → servers → frontend),
//! directories left empty are removed (an empty v2 directory crashes a restarted v0.8), and
//! the record's v3 revision is checked again: if another replica changed the route meanwhile,
//! the sync repeats from the newer record. Guarantee: per route, v2 converges to the newest
//! committed record; vulcand may see the previous projection for the moments between the v3
//! commit and the v2 writes; a failed sync is retried after the next commits (the failed batch's
//! redelivery among them, see [`crate::v2sync`]), and a crash in between leaves the v2 keys
//! behind until the next reconciliation (at start-up and every `--reconcile-interval`)
//! repairs them.

use std::collections::BTreeMap;

use ksr_runtime::config::flag;
use ksr_runtime::tls::{identity_pem, misconfigured, read_flag_file};

use crate::Error;
use crate::config::EtcdArgs;
use crate::error::ETCD_TLS;
use crate::keys::{KeyClass, KeyOp, Projection, diff};
use crate::v2tree::{Child, Reply, flatten};

/// The v2 HTTP API of an etcd cluster: every `--etcd-endpoints` member (a request that cannot
/// reach one goes to the next, and the one that answered is tried first afterwards), over TLS
/// verified against `--etcd-ca` with the client certificate of `--etcd-cert`/`--etcd-key`,
/// and with `--etcd-user`/`--etcd-password` as basic authentication — the same flags v3 mode
/// honours.
#[derive(Debug, Clone)]
pub struct V2Client {
    http: reqwest::Client,
    bases: Vec<String>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    auth: Option<(String, String)>,
}

/// The write-order class of a vulcand key.
pub fn class_of(key: &str) -> KeyClass {
    if key.ends_with("/frontend") {
        KeyClass::Frontend
    } else if key.contains("/servers/") {
        KeyClass::Server
    } else {
        KeyClass::Backend
    }
}

/// How long reading a whole directory of routes may take (requests otherwise time out after
/// 10 s): its reply grows with the number of routes.
const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl V2Client {
    pub fn new(args: &EtcdArgs) -> Result<Self, Error> {
        let scheme = if args.ca.is_some() { "https" } else { "http" };
        let bases: Vec<String> = args
            .endpoint_list()
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.trim_end_matches('/').to_owned()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .connect_timeout(std::time::Duration::from_secs(3));
        if let Some(ca) = &args.ca {
            let cert = reqwest::Certificate::from_pem(&read_flag_file("--etcd-ca", ca)?)
                .map_err(flag(format!("--etcd-ca {}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let pem = identity_pem(("--etcd-cert", cert), ("--etcd-key", key))?;
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(flag("--etcd-cert/--etcd-key"))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(flag("HTTP client"))?;
        Ok(Self {
            http,
            bases,
            current: Default::default(),
            auth: args.user.clone().zip(args.password.clone()),
        })
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::EtcdV2 {
            url: self.bases.join(","),
            message: message.into(),
        }
    }

    /// Sends the request `make` builds for an endpoint's base URL, to the endpoint that last
    /// answered, then to each other one while they cannot be reached.
    async fn send(
        &self,
        make: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Error> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len().max(1);
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (first + i) % n;
            let Some(base) = self.bases.get(idx) else {
                break;
            };
            let mut req = make(base);
            if let Some((user, password)) = &self.auth {
                req = req.basic_auth(user, Some(password));
            }
            match req.send().await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => {
                    if let Some(tls) = misconfigured(&e, base, ETCD_TLS) {
                        return Err(Error::Runtime(tls));
                    }
                    if !(e.is_connect() || e.is_timeout()) {
                        return Err(Error::EtcdV2Request {
                            url: base.clone(),
                            source: e,
                        });
                    }
                    last = Some(e);
                }
            }
        }
        Err(match last {
            Some(source) => Error::EtcdV2Unreachable {
                urls: self.bases.join(","),
                source,
            },
            None => self.err("no endpoint configured"),
        })
    }

    /// etcd's `/version`: whether an endpoint answers (TLS and all) before any route is written.
    pub async fn version(&self) -> Result<(), Error> {
        let resp = self
            .send(|base| self.http.get(format!("{base}/version")))
            .await?;
        if !resp.status().is_success() {
            return Err(self.err(format!("/version answered {}", resp.status())));
        }
        Ok(())
    }

    fn url(base: &str, key: &str) -> String {
        format!("{base}/v2/keys{key}")
    }

    /// Every value below `dir` (empty when it does not exist).
    pub async fn tree(&self, dir: &str) -> Result<BTreeMap<String, String>, Error> {
        let resp = self
            .send(|b| {
                self.http
                    .get(Self::url(b, dir))
                    .query(&[("recursive", "true")])
            })
            .await?;
        match resp.status().as_u16() {
            404 => Ok(BTreeMap::new()),
            200 => {
                let url = resp.url().to_string();
                let reply: Reply = resp
                    .json()
                    .await
                    .map_err(|source| Error::EtcdV2Request { url, source })?;
                Ok(flatten(reply.node))
            }
            s => Err(self.err(format!(
                "GET {dir}: HTTP {s}: {}",
                resp.text().await.unwrap_or_default()
            ))),
        }
    }

    /// Calls `each` with every child of `dir` (nothing when it does not exist), reading the
    /// recursive GET as it streams in: memory holds one child at a time, never the reply
    /// ([`crate::v2tree`]). For directories too large for [`Self::tree`].
    pub async fn children(&self, dir: &str, each: impl FnMut(Child)) -> Result<(), Error> {
        let resp = self
            .send(|b| {
                self.http
                    .get(Self::url(b, dir))
                    .query(&[("recursive", "true")])
                    .timeout(LISTING_TIMEOUT)
            })
            .await?;
        match resp.status().as_u16() {
            404 => Ok(()),
            200 => {
                crate::v2tree::children(resp, each)
                    .await
                    .map_err(|source| Error::EtcdV2Listing {
                        dir: dir.to_owned(),
                        source,
                    })
            }
            s => Err(self.err(format!(
                "GET {dir}: HTTP {s}: {}",
                resp.text().await.unwrap_or_default()
            ))),
        }
    }

    async fn put(&self, key: &str, value: &str) -> Result<(), Error> {
        let resp = self
            .send(|b| self.http.put(Self::url(b, key)).form(&[("value", value)]))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(self.err(format!(
                "PUT {key}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            )))
        }
    }

    async fn delete(&self, key: &str, dir: bool) -> Result<(), Error> {
        let resp = self
            .send(|b| {
                let req = self.http.delete(Self::url(b, key));
                if dir {
                    req.query(&[("dir", "true")])
                } else {
                    req
                }
            })
            .await?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        // 404: already gone; 403 errorCode 108: directory not empty (not ours to remove).
        if (200..300).contains(&status) || status == 404 || (status == 403 && body.contains("108"))
        {
            Ok(())
        } else {
            Err(self.err(format!("DELETE {key}: HTTP {status}: {body}")))
        }
    }

    /// Applies ordered key writes: each run of writes of one kind and class (a route's
    /// servers, say) at once, the runs one after the other, so vulcand's order holds.
    pub async fn apply(&self, ops: &[KeyOp]) -> Result<Written, Error> {
        let mut written = Written::default();
        for run in ops.chunk_by(|a, b| a.order() == b.order()) {
            futures::future::try_join_all(run.iter().map(|op| async move {
                match op {
                    KeyOp::Put { key, value, .. } => self.put(key, value).await,
                    KeyOp::Delete { key, .. } => self.delete(key, false).await,
                }
            }))
            .await?;
            for op in run {
                match op {
                    KeyOp::Put { .. } => written.puts += 1,
                    KeyOp::Delete { .. } => written.deletes += 1,
                }
            }
        }
        Ok(written)
    }

    /// The v2 keys of route `id` under `prefix` (its two directories read at once).
    pub async fn route_keys(&self, prefix: &str, id: &str) -> Result<Projection, Error> {
        let (backends, frontends) = (
            format!("{prefix}/backends/{id}"),
            format!("{prefix}/frontends/{id}"),
        );
        let (backend, frontend) = futures::try_join!(self.tree(&backends), self.tree(&frontends))?;
        Ok(backend
            .into_iter()
            .chain(frontend)
            .map(|(k, v)| {
                let class = class_of(&k);
                (k, (class, v))
            })
            .collect())
    }

    /// Makes route `id`'s v2 keys equal `want`, then removes its directories left empty.
    /// Returns the keys it wrote and deleted.
    pub async fn sync_route(
        &self,
        prefix: &str,
        id: &str,
        want: &Projection,
    ) -> Result<Written, Error> {
        let have = self.route_keys(prefix, id).await?;
        let written = self.apply(&diff(&have, want)).await?;
        let has_servers = want.values().any(|(c, _)| *c == KeyClass::Server);
        if !has_servers {
            self.delete(&format!("{prefix}/backends/{id}/servers"), true)
                .await?;
        }
        if want.is_empty() {
            self.delete(&format!("{prefix}/frontends/{id}"), true)
                .await?;
            self.delete(&format!("{prefix}/backends/{id}"), true)
                .await?;
        }
        Ok(written)
    }
}

/// v2 keys written and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub puts: u64,
    pub deletes: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Self) {
        self.puts += other.puts;
        self.deletes += other.deletes;
    }
}
