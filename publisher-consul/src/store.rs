//! A small Consul HTTP API client: catalog, KV and transactions, with status classification.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use ksr_runtime::config::flag;
use ksr_runtime::tls::{identity_pem, misconfigured, read_flag_file};

use crate::Error;
use crate::config::ConsulArgs;
use crate::error::CONSUL_TLS;

/// One catalog service instance, as registered and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceBody {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "Tags", default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Port")]
    pub port: u16,
    #[serde(rename = "Meta", default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
}

impl ServiceBody {
    /// A digest of everything but the address (which differs from router to router), to
    /// compare an instance as registered with its projection without holding either.
    pub fn digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (&self.id, &self.service, &self.tags, self.port, &self.meta).hash(&mut h);
        h.finish()
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A node-level health check, as set and as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// `passing`, `warning` or `critical`.
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Output", default)]
    pub output: String,
    #[serde(rename = "Notes", default)]
    pub notes: String,
    /// Empty for a node-level check.
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

/// A KV entry.
#[derive(Debug, Clone)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub modify_index: u64,
}

#[derive(Deserialize)]
pub(crate) struct RawKv {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
}

impl RawKv {
    pub(crate) fn decode(self) -> KvEntry {
        KvEntry {
            value: self
                .value
                .and_then(|v| B64.decode(v).ok())
                .unwrap_or_default(),
            key: self.key,
            modify_index: self.modify_index,
        }
    }
}

/// One operation of a `/v1/txn` transaction.
#[derive(Debug, Clone)]
pub enum TxnOp {
    /// Write `value` if the key's ModifyIndex is `index` (0: only if absent).
    KvCas {
        key: String,
        value: Vec<u8>,
        index: u64,
    },
    /// Delete if the key's ModifyIndex is `index`.
    KvDeleteCas { key: String, index: u64 },
    /// Fail the transaction unless the key's ModifyIndex is `index` (0: unless absent).
    KvCheck { key: String, index: u64 },
    /// Fails the transaction unless instance `id` is registered on `node`.
    ServiceCheck { node: String, id: String },
    /// Register (or replace) a service instance on `node`.
    ServiceSet { node: String, body: ServiceBody },
    /// Deregister a service instance from `node` (`service` is its name, required in a txn).
    ServiceDelete {
        node: String,
        id: String,
        service: String,
    },
}

impl TxnOp {
    fn to_json(&self) -> Value {
        match self {
            TxnOp::KvCas { key, value, index } => {
                json!({"KV": {"Verb": "cas", "Key": key, "Value": B64.encode(value), "Index": index}})
            }
            TxnOp::KvDeleteCas { key, index } => {
                json!({"KV": {"Verb": "delete-cas", "Key": key, "Index": index}})
            }
            TxnOp::KvCheck { key, index: 0 } => {
                json!({"KV": {"Verb": "check-not-exists", "Key": key}})
            }
            TxnOp::KvCheck { key, index } => {
                json!({"KV": {"Verb": "check-index", "Key": key, "Index": index}})
            }
            TxnOp::ServiceCheck { node, id } => {
                json!({"Service": {"Verb": "get", "Node": node, "Service": {"ID": id}}})
            }
            TxnOp::ServiceSet { node, body } => {
                json!({"Service": {"Verb": "set", "Node": node, "Service": body}})
            }
            TxnOp::ServiceDelete { node, id, service } => {
                json!({"Service": {"Verb": "delete", "Node": node, "Service": {"ID": id, "Service": service}}})
            }
        }
    }
}

/// How a transaction went.
#[derive(Debug)]
pub enum TxnOutcome {
    /// Committed; the new ModifyIndex of every KV key written.
    Committed(BTreeMap<String, u64>),
    /// Rolled back: a check-and-set or check failed (another writer was first).
    Conflict(String),
}

/// How long a read of every record or every instance of our node may take.
pub const BULK_TIMEOUT: Duration = Duration::from_secs(300);

/// The Consul HTTP API.
#[derive(Debug, Clone)]
pub struct ConsulClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

impl ConsulClient {
    pub fn new(args: &ConsulArgs) -> Result<Self, Error> {
        let url = reqwest::Url::parse(&args.address)
            .map_err(flag(format!("--consul-address {:?}", args.address)))?;
        let host = url.host_str().ok_or_else(|| {
            Error::Config(format!("--consul-address {:?} has no host", args.address))
        })?;
        let base = match url.port() {
            Some(port) => format!("{}://{host}:{port}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(5));
        if let Some(ca) = &args.ca {
            let pem = read_flag_file("--consul-ca", ca)?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(flag(format!("--consul-ca {}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let pem = identity_pem(("--consul-cert", cert), ("--consul-key", key))?;
            let identity =
                reqwest::Identity::from_pem(&pem).map_err(flag("--consul-cert/--consul-key"))?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(flag("HTTP client"))?;
        let client = Self {
            http,
            base,
            token: args.token.clone(),
            token_file: args.token_file.clone(),
        };
        // A token file that cannot be read at start-up is a configuration error.
        client.token().map_err(flag("--consul-token-file"))?;
        Ok(client)
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The token to send: `--consul-token`, or `--consul-token-file` read now (so a rotated
    /// token takes effect without a restart). A configured file that is missing, unreadable
    /// or empty is an error — never an anonymous request.
    fn token(&self) -> Result<Option<String>, Error> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let unreadable = |source| Error::TokenFile {
            path: file.clone(),
            source,
        };
        let token = std::fs::read_to_string(file).map_err(unreadable)?;
        let token = token.trim();
        if token.is_empty() {
            return Err(unreadable(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file is empty",
            )));
        }
        Ok(Some(token.to_owned()))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(StatusCode, String), Error> {
        self.send_within(method, path, body, what, None).await
    }

    /// GETs `path` and parses the answer; `None` when Consul has nothing there (404, or
    /// `null`). `bulk` marks a read whose answer grows with the estate (every record, every
    /// instance of our node): measured at 100,000 Services, Consul takes longer than the 15 s
    /// that bound every other request to answer one, so these get [`BULK_TIMEOUT`].
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
        bulk: bool,
    ) -> Result<Option<T>, Error> {
        let timeout = bulk.then_some(BULK_TIMEOUT);
        let (status, text) = self
            .send_within(Method::GET, path, None, what, timeout)
            .await?;
        if status == StatusCode::NOT_FOUND || text.trim() == "null" {
            return Ok(None);
        }
        Self::parse(what, &text).map(Some)
    }

    async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<(StatusCode, String), Error> {
        let resp = self.request(method, path, body, timeout).await?;
        Self::answer(resp, what).await
    }

    /// Sends a request; its reply unread.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, Error> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        if let Some(token) = self.token()? {
            req = req.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.map_err(
            |source| match misconfigured(&source, &self.base, CONSUL_TLS) {
                Some(tls) => Error::Runtime(tls),
                None => Error::Unreachable { url, source },
            },
        )
    }

    /// Reads a reply whole, classifying its status (`what`: the request, for errors).
    pub(crate) async fn answer(
        resp: reqwest::Response,
        what: &str,
    ) -> Result<(StatusCode, String), Error> {
        let status = resp.status();
        let url = resp.url().to_string();
        let text = resp
            .text()
            .await
            .map_err(|source| Error::Unreachable { url, source })?;
        match status.as_u16() {
            403 => Err(Error::PermissionDenied {
                what: what.to_owned(),
                message: text.trim().to_owned(),
            }),
            400 | 413 | 422 => Err(Error::Invalid {
                what: what.to_owned(),
                status: status.as_u16(),
                message: text.trim().to_owned(),
            }),
            500..=599 if text.to_lowercase().contains("invalid") => Err(Error::Invalid {
                what: what.to_owned(),
                status: status.as_u16(),
                message: text.trim().to_owned(),
            }),
            500..=599 => Err(Error::Server {
                what: what.to_owned(),
                status: status.as_u16(),
                message: text.trim().to_owned(),
            }),
            _ => Ok((status, text)),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, Error> {
        serde_json::from_str(text).map_err(|e| Error::Server {
            what: what.to_owned(),
            status: 200,
            message: format!("unreadable reply: {e}"),
        })
    }

    /// Creates our synthetic node if missing; an existing node is left as it is
    /// (`SkipNodeUpdate`), so its metadata is never wiped.
    pub async fn ensure_node(
        &self,
        node: &str,
        address: &str,
        meta: &BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let body =
            json!({"Node": node, "Address": address, "NodeMeta": meta, "SkipNodeUpdate": true});
        self.send(
            Method::PUT,
            "/v1/catalog/register",
            Some(&body),
            "registering our node",
        )
        .await?;
        Ok(())
    }

    /// Registers one instance on `node` outside a transaction (the router's own entry).
    pub async fn register_service(
        &self,
        node: &str,
        address: &str,
        body: &ServiceBody,
    ) -> Result<(), Error> {
        let req =
            json!({"Node": node, "Address": address, "SkipNodeUpdate": true, "Service": body});
        self.send(
            Method::PUT,
            "/v1/catalog/register",
            Some(&req),
            "registering the router",
        )
        .await?;
        Ok(())
    }

    /// The checks of `node` (empty when the node does not exist).
    pub async fn node_checks(&self, node: &str) -> Result<Vec<NodeCheck>, Error> {
        let path = format!("/v1/health/node/{node}?consistent");
        let checks = self.get(&path, "reading a node's checks", false).await?;
        Ok(checks.unwrap_or_default())
    }

    /// Sets a node-level check of `node` (every instance on the node is answered by DNS only
    /// while it is not critical). The node is left as it is (`SkipNodeUpdate`).
    pub async fn set_node_check(
        &self,
        node: &str,
        address: &str,
        check: &NodeCheck,
    ) -> Result<(), Error> {
        let mut check = serde_json::to_value(check).map_err(|e| Error::Server {
            what: "setting a router's check".into(),
            status: 0,
            message: e.to_string(),
        })?;
        check["Node"] = json!(node);
        let body =
            json!({"Node": node, "Address": address, "SkipNodeUpdate": true, "Check": check});
        self.send(
            Method::PUT,
            "/v1/catalog/register",
            Some(&body),
            "setting a router's check",
        )
        .await?;
        Ok(())
    }

    /// Removes check `check_id` from `node`.
    pub async fn remove_node_check(&self, node: &str, check_id: &str) -> Result<(), Error> {
        let body = json!({"Node": node, "CheckID": check_id});
        self.send(
            Method::PUT,
            "/v1/catalog/deregister",
            Some(&body),
            "removing a router's check",
        )
        .await?;
        Ok(())
    }

    /// The nodes whose metadata has every `key: value` of `meta`.
    pub async fn nodes_with_meta(&self, meta: &[(&str, &str)]) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Node {
            #[serde(rename = "Node")]
            node: String,
        }
        let query: Vec<String> = meta
            .iter()
            .map(|(k, v)| format!("node-meta={k}:{v}"))
            .collect();
        let path = format!("/v1/catalog/nodes?consistent&{}", query.join("&"));
        let nodes: Option<Vec<Node>> = self.get(&path, "listing our nodes", false).await?;
        Ok(nodes
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.node)
            .collect())
    }

    /// Deregisters `node` with every instance and check on it.
    pub async fn deregister_node(&self, node: &str) -> Result<(), Error> {
        self.send(
            Method::PUT,
            "/v1/catalog/deregister",
            Some(&json!({"Node": node})),
            "deregistering a node of a removed router",
        )
        .await?;
        Ok(())
    }

    /// One KV entry, `None` when absent.
    pub async fn kv_get(&self, key: &str) -> Result<Option<KvEntry>, Error> {
        let path = format!("/v1/kv/{key}?consistent");
        let raw: Option<Vec<RawKv>> = self.get(&path, "reading a record", false).await?;
        Ok(raw
            .unwrap_or_default()
            .into_iter()
            .next()
            .map(RawKv::decode))
    }

    /// Every instance of catalog service `service`, on any node, as (node, instance).
    pub async fn service_instances(
        &self,
        service: &str,
    ) -> Result<Vec<(String, ServiceBody)>, Error> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Node")]
            node: String,
            #[serde(rename = "ServiceID")]
            id: String,
            #[serde(rename = "ServiceName")]
            service: String,
            #[serde(rename = "ServiceTags", default, deserialize_with = "null_as_default")]
            tags: Vec<String>,
            #[serde(rename = "ServiceAddress", default)]
            address: String,
            #[serde(rename = "ServicePort", default)]
            port: u16,
            #[serde(rename = "ServiceMeta", default, deserialize_with = "null_as_default")]
            meta: BTreeMap<String, String>,
        }
        let path = format!("/v1/catalog/service/{service}?consistent");
        let entries: Vec<Entry> = self
            .get(&path, "listing a service", true)
            .await?
            .unwrap_or_default();
        Ok(entries
            .into_iter()
            .map(|e| {
                let body = ServiceBody {
                    id: e.id,
                    service: e.service,
                    tags: e.tags,
                    address: e.address,
                    port: e.port,
                    meta: e.meta,
                };
                (e.node, body)
            })
            .collect())
    }

    /// Runs a transaction (at most 64 operations).
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, Error> {
        let body = Value::Array(ops.iter().map(TxnOp::to_json).collect());
        let (status, text) = self
            .send(Method::PUT, "/v1/txn", Some(&body), "a transaction")
            .await?;
        if status == StatusCode::CONFLICT {
            return Ok(TxnOutcome::Conflict(text));
        }
        if !status.is_success() {
            return Err(Error::Server {
                what: "a transaction".into(),
                status: status.as_u16(),
                message: text,
            });
        }
        #[derive(Deserialize)]
        struct Reply {
            #[serde(rename = "Results", default)]
            results: Option<Vec<Value>>,
        }
        let reply: Reply = Self::parse("a transaction", &text)?;
        let mut indexes = BTreeMap::new();
        for r in reply.results.unwrap_or_default() {
            if let (Some(key), Some(index)) =
                (r["KV"]["Key"].as_str(), r["KV"]["ModifyIndex"].as_u64())
            {
                indexes.insert(key.to_owned(), index);
            }
        }
        Ok(TxnOutcome::Committed(indexes))
    }
}
