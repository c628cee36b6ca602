//! vulcand's keys of ours as they are and as route records project them, for verification.

use std::collections::BTreeMap;

use ksr_runtime::consumer::Delivery;
use ksr_runtime::drift::{Drift, compare};

use crate::Error;
use crate::plan::{State, VulcandTarget, projection_of};
use crate::publisher::{Sink, VulcandProjector};
use crate::store;

/// Every vulcand key of ours (under our owner's id prefix) with its value, as etcd holds
/// it now (through the v2 API when the projector writes there).
pub async fn live_keys(projector: &VulcandProjector) -> Result<BTreeMap<String, String>, Error> {
    let layout = projector.layout();
    let mut out = BTreeMap::new();
    if let Sink::V2(v2) = projector.sink() {
        let prefix = layout.vulcand_prefix();
        for dir in [format!("{prefix}/backends"), format!("{prefix}/frontends")] {
            for (key, value) in v2.tree(&dir).await? {
                if layout.id_of_vulcand_key(&key).is_some() {
                    out.insert(key, value);
                }
            }
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

/// How etcd differs from `latest` (the newest event of every Service in the stream)
/// applied to an empty etcd, with the events vulcand can never route (seq, reason).
pub async fn drift(
    projector: &VulcandProjector,
    latest: &[Delivery],
) -> Result<(Vec<Drift>, Vec<(u64, String)>), Error> {
    let target = VulcandTarget {
        layout: projector.layout().clone(),
    };
    let (state, refused) = ksr_runtime::plan::simulate(&target, latest);
    let expected = expected_keys(projector, &state);
    Ok((compare(&expected, &live_keys(projector).await?), refused))
}
