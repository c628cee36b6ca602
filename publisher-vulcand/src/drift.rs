//! vulcand's keys of ours as they are and as route records project them, for verification.

use std::collections::BTreeMap;
use std::time::Instant;

use ksr_projection::Delivery;
use ksr_projection::drift::{Drift, compare};

use crate::Error;
use crate::projector::{Sink, VulcandProjector};
use crate::store;
use crate::target::{State, VulcandTarget, projection_of};

/// Every vulcand key of ours (under our owner's id prefix) with its value, as etcd holds
/// it now (through the v2 API when the projector writes there).
pub async fn live_keys(projector: &VulcandProjector) -> Result<BTreeMap<String, String>, Error> {
    let layout = projector.layout();
    let mut out = BTreeMap::new();
    if let Sink::V2(v2) = projector.sink() {
        let prefix = layout.vulcand_prefix();
        for dir in [format!("{prefix}/backends"), format!("{prefix}/frontends")] {
            v2.children(&dir, |child| {
                if layout.id_of_vulcand_key(&child.key).is_some() {
                    out.extend(child.leaves);
                }
            })
            .await?;
        }
        return Ok(out);
    }
    let mut kv = projector.kv();
    for prefix in [
        layout.owned_backends_prefix(),
        layout.owned_frontends_prefix(),
    ] {
        for (key, value, _) in store::read_prefix(&mut kv, &prefix).await? {
            out.insert(key, String::from_utf8_lossy(&value).into_owned());
        }
    }
    Ok(out)
}

/// The vulcand keys `state` projects to.
pub fn expected_keys(projector: &VulcandProjector, state: &State) -> BTreeMap<String, String> {
    projection_of(projector.layout(), state)
        .into_iter()
        .map(|(key, (_, value))| (key, value))
        .collect()
}

/// Frontends of ours that vulcand could not load, with the reason: one of them in etcd stops
/// every vulcand that starts afterwards. Older versions of ksr could write such routes.
pub fn unloadable(live: &BTreeMap<String, String>) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Frontend {
        #[serde(rename = "Route")]
        route: String,
    }
    live.iter()
        .filter(|(key, _)| key.ends_with("/frontend"))
        .filter_map(|(key, value)| {
            let reason = match serde_json::from_str::<Frontend>(value) {
                Ok(f) => ksr_proto::route::parse_route_expression(&f.route)
                    .err()?
                    .to_string(),
                Err(e) => format!("not a vulcand frontend: {e}"),
            };
            Some((key.clone(), reason))
        })
        .collect()
}

/// What `ksrctl verify vulcand` reports.
#[derive(Debug, Default)]
pub struct Report {
    /// How our keys differ from the stream's projection.
    pub drift: Vec<Drift>,
    /// Events vulcand can never route (seq, reason).
    pub refused: Vec<ksr_projection::Rejected>,
    /// Frontends of ours in etcd that vulcand could not load (key, reason).
    pub unloadable: Vec<(String, String)>,
}

/// How etcd differs from `latest` (the newest event of every Service in the stream)
/// applied to an empty etcd, with the events vulcand can never route and the frontends it
/// could not load.
pub async fn drift(projector: &VulcandProjector, latest: &[Delivery]) -> Result<Report, Error> {
    let target = VulcandTarget {
        layout: projector.layout().clone(),
    };
    let started = Instant::now();
    let (state, refused) = ksr_projection::plan::simulate(&target, latest);
    let expected = expected_keys(projector, &state);
    tracing::debug!(
        keys = expected.len(),
        seconds = started.elapsed().as_secs_f64(),
        "planned the expected keys"
    );
    let started = Instant::now();
    let live = live_keys(projector).await?;
    tracing::debug!(
        keys = live.len(),
        seconds = started.elapsed().as_secs_f64(),
        "read the live keys"
    );
    let started = Instant::now();
    let report = Report {
        drift: compare(&expected, &live),
        refused,
        unloadable: unloadable(&live),
    };
    tracing::debug!(seconds = started.elapsed().as_secs_f64(), "compared");
    Ok(report)
}
