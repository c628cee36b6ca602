//! Router health: probes each edge router and keeps its node's Consul check current, so
//! Consul DNS answers only with routers that are up.
//!
//! Every `--router-health-interval` each router's `--router-health-url` is fetched; a 2xx
//! answer marks it passing at once, `--router-health-failures` failures in a row mark it
//! critical. The check (`ksr-router-health`, node-level, so it covers every instance on the
//! router's node) is written only when Consul's copy differs from what the probes say — read
//! back on every round, so a check deleted or altered by hand is set again. Until a router's
//! first verdict the check is left as Consul has it. When the publisher stops, the checks
//! keep their last status (as with any catalog-registered check: Consul runs no agent for a
//! synthetic node).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use ksr_runtime::metrics::MetricsRegistry;

use crate::Error;
use crate::config::RouterHealthArgs;
use crate::routers::Router;
use crate::store::{ConsulClient, NodeCheck};

/// The check's ID on every router node.
pub const CHECK_ID: &str = "ksr-router-health";
const PLACEHOLDER: &str = "{address}";

/// Validates a `--router-health-url` template: an http(s) URL once `{address}` is filled in,
/// with no other `{…}` placeholder.
pub fn parse_url_template(s: &str) -> Result<String, String> {
    let filled = s.replace(PLACEHOLDER, "192.0.2.1");
    if filled.contains(['{', '}']) {
        return Err(format!("{s:?}: the only placeholder is {PLACEHOLDER}"));
    }
    let url = reqwest::Url::parse(&filled).map_err(|e| format!("{s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{s:?} must be an http:// or https:// URL with a host"
        ));
    }
    Ok(s.to_owned())
}

/// The health URL of the router at `address` (an IPv6 address in brackets).
pub fn url_for(template: &str, address: &str) -> String {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    template.replace(PLACEHOLDER, &host)
}

/// What the probes say about one router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passing,
    Critical,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passing => "passing",
            Verdict::Critical => "critical",
        }
    }
}

/// One router's probe history: a success passes at once, `failures` in a row fail.
#[derive(Debug, Clone)]
pub struct Tracker {
    failures: u32,
    failed_in_a_row: u32,
    verdict: Option<Verdict>,
    /// Why, as the check's output: stable text (no timings), so a router that keeps
    /// failing the same way costs no writes.
    output: String,
}

impl Tracker {
    pub fn new(failures: u32) -> Self {
        Self {
            failures: failures.max(1),
            failed_in_a_row: 0,
            verdict: None,
            output: String::new(),
        }
    }

    /// Records one probe; returns the verdict when it changed.
    pub fn observe(&mut self, result: Result<u16, String>) -> Option<Verdict> {
        let before = self.verdict;
        match result {
            Ok(status) => {
                self.failed_in_a_row = 0;
                self.verdict = Some(Verdict::Passing);
                self.output = format!("the router's health URL answered HTTP {status}");
            }
            Err(why) => {
                self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
                if self.failed_in_a_row >= self.failures {
                    self.verdict = Some(Verdict::Critical);
                    self.output = format!(
                        "the router's health URL failed {} times in a row: {why}",
                        self.failures
                    );
                }
            }
        }
        (self.verdict != before).then_some(self.verdict).flatten()
    }

    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// The check this verdict makes (None before the first verdict).
    pub fn check(&self, url: &str) -> Option<NodeCheck> {
        Some(NodeCheck {
            check_id: CHECK_ID.to_owned(),
            name: "edge router health".to_owned(),
            status: self.verdict?.as_str().to_owned(),
            output: self.output.clone(),
            notes: format!("kept current by ksr-publisher-consul, which probes {url}"),
            service_id: String::new(),
        })
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterLabel {
    router: String,
}

/// `ksr_consul_router_up{router}` and friends (one series per router: at most 8).
#[derive(Debug, Clone, Default)]
pub struct RouterMetrics {
    up: Family<RouterLabel, Gauge>,
    probe_failures: Family<RouterLabel, Counter>,
    check_writes: Counter,
    check_errors: Counter,
}

impl RouterMetrics {
    pub fn new(registry: &MetricsRegistry) -> Self {
        let m = Self::default();
        registry.register(|r| {
            let r = r.sub_registry_with_prefix("consul");
            r.register(
                "router_up",
                "Whether the router's health URL says it is up (1), down (0) or not yet known (-1)",
                m.up.clone(),
            );
            r.register(
                "router_probe_failures",
                "Failed probes of the router's health URL",
                m.probe_failures.clone(),
            );
            r.register(
                "router_check_writes",
                "Router health checks written to Consul (status changes and repairs)",
                m.check_writes.clone(),
            );
            r.register(
                "router_check_errors",
                "Failed reads or writes of router health checks",
                m.check_errors.clone(),
            );
        });
        m
    }
}

/// Probes one router once: the HTTP status when it is 2xx, else why not.
async fn probe(http: &reqwest::Client, url: &str) -> Result<u16, String> {
    match http.get(url).send().await {
        Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(resp) => Err(format!("HTTP {}", resp.status().as_u16())),
        Err(e) if e.is_timeout() => Err("no answer within the timeout".to_owned()),
        Err(e) if e.is_connect() => Err("connection refused or unreachable".to_owned()),
        Err(_) => Err("the request failed".to_owned()),
    }
}

/// Writes `check` on `router`'s node unless Consul already holds it.
async fn sync_check(
    client: &ConsulClient,
    router: &Router,
    check: &NodeCheck,
) -> Result<bool, Error> {
    let current = client.node_checks(&router.node).await?;
    let ours = current.iter().find(|c| c.check_id == CHECK_ID);
    if ours == Some(check) {
        return Ok(false);
    }
    client
        .set_node_check(&router.node, &router.address, check)
        .await?;
    Ok(true)
}

/// Probes every router each interval and keeps their checks current until `shutdown`.
pub async fn run(
    client: ConsulClient,
    routers: Vec<Router>,
    args: RouterHealthArgs,
    template: String,
    metrics: RouterMetrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let http = reqwest::Client::builder()
        .timeout(args.timeout)
        .connect_timeout(args.timeout)
        .build()
        .map_err(ksr_runtime::config::flag(
            "--router-health-url: HTTP client",
        ))?;
    let urls: Vec<String> = routers
        .iter()
        .map(|r| url_for(&template, &r.address))
        .collect();
    let mut trackers = vec![Tracker::new(args.failures); routers.len()];
    for r in &routers {
        metrics
            .up
            .get_or_create(&RouterLabel {
                router: r.address.clone(),
            })
            .set(-1);
    }
    let mut tick = tokio::time::interval(args.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let results = futures::future::join_all(urls.iter().map(|url| probe(&http, url))).await;
        for (i, result) in results.into_iter().enumerate() {
            let (router, url, tracker) = (&routers[i], &urls[i], &mut trackers[i]);
            let label = RouterLabel {
                router: router.address.clone(),
            };
            if result.is_err() {
                metrics.probe_failures.get_or_create(&label).inc();
            }
            let failure = result.as_ref().err().cloned();
            if let Some(verdict) = tracker.observe(result) {
                metrics
                    .up
                    .get_or_create(&label)
                    .set(i64::from(verdict == Verdict::Passing));
                match verdict {
                    Verdict::Passing => tracing::info!(
                        router = router.address,
                        node = router.node,
                        url,
                        "router is up: Consul DNS answers with it"
                    ),
                    Verdict::Critical => tracing::warn!(
                        router = router.address,
                        node = router.node,
                        url,
                        why = failure,
                        "router is down: Consul DNS stops answering with it"
                    ),
                }
            }
            let Some(check) = tracker.check(url) else {
                continue;
            };
            match sync_check(&client, router, &check).await {
                Ok(true) => {
                    metrics.check_writes.inc();
                    tracing::debug!(
                        node = router.node,
                        status = check.status,
                        "router check written"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    metrics.check_errors.inc();
                    tracing::warn!(node = router.node, error = %e, "cannot keep the router's health check current; retrying next round");
                }
            }
        }
    }
}

/// Removes our check from every router node (health checking was switched off: a check left
/// critical would keep its router out of DNS for good).
pub async fn clear(client: &ConsulClient, routers: &[Router]) -> Result<(), Error> {
    for r in routers {
        if client
            .node_checks(&r.node)
            .await?
            .iter()
            .any(|c| c.check_id == CHECK_ID)
        {
            client.remove_node_check(&r.node, CHECK_ID).await?;
            tracing::info!(
                node = r.node,
                "removed the router health check (no --router-health-url)"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_takes_each_address_ipv6_in_brackets() {
        let t = "http://{address}:8182/v2/status";
        assert_eq!(url_for(t, "10.0.0.2"), "http://10.0.0.2:8182/v2/status");
        assert_eq!(url_for(t, "fd00::2"), "http://[fd00::2]:8182/v2/status");
        assert!(parse_url_template(t).is_ok());
        assert!(parse_url_template("https://edge.example/health").is_ok());
        for bad in [
            "edge:8182",
            "ftp://{address}/",
            "http://{address}/{x}",
            "http://",
        ] {
            assert!(parse_url_template(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn one_success_passes_and_failures_in_a_row_fail() {
        let mut t = Tracker::new(2);
        assert_eq!(t.check("u"), None, "no verdict before the first probe");
        assert_eq!(
            t.observe(Err("refused".into())),
            None,
            "one failure is not enough"
        );
        assert_eq!(t.verdict(), None);
        assert_eq!(t.observe(Err("refused".into())), Some(Verdict::Critical));
        assert_eq!(
            t.observe(Err("refused".into())),
            None,
            "no change, no event"
        );
        let c = t.check("u").unwrap();
        assert_eq!(c.status, "critical");
        assert!(c.output.contains("refused"), "{c:?}");
        assert_eq!(t.observe(Ok(200)), Some(Verdict::Passing));
        assert_eq!(
            t.observe(Err("refused".into())),
            None,
            "a blip after success"
        );
        assert_eq!(t.verdict(), Some(Verdict::Passing));
        assert_eq!(t.observe(Ok(204)), None);
        assert_eq!(t.check("u").unwrap().status, "passing");
    }

    #[test]
    fn the_output_is_stable_while_nothing_changes() {
        let mut t = Tracker::new(1);
        t.observe(Err("HTTP 503".into()));
        let first = t.check("u");
        t.observe(Err("HTTP 503".into()));
        assert_eq!(t.check("u"), first, "equal checks cost no writes");
    }
}
