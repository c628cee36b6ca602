//! Claims on a projected name: multi-cluster fan-in and the older-claim-wins conflict rule.
//!
//! A projected name (a vulcand host+path, a Consul tag) can be claimed by several Services.
//! Claims are grouped (vulcand: by namespace and name, so one Service seen from several
//! clusters fans in; Consul: by namespace). The group whose earliest claim is oldest (lowest
//! stream sequence) owns the name; the others wait and take over when it goes. The rule only
//! depends on stream sequences, so every replica, replay and rebuild picks the same owner.
//! Each claim's `since` comes from the event itself (the watcher stamps when the Service's
//! continuous claim began), and a group's age is its oldest present member's: the owner is a
//! pure function of the newest event of every Service, whatever order replicas apply them in,
//! so live projections, replays and rebuilds agree.

use serde::{Deserialize, Deserializer, Serialize};

use ksr_proto::ServiceKey;

/// One Service's claim on a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim<D> {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    /// Stream sequence at which this Service's continuous claim on the name began.
    pub since: u64,
    /// Stream sequence of the event that last set `data`.
    pub seq: u64,
    /// What the Service contributes when its group owns the name.
    pub data: D,
}

impl<D> Claim<D> {
    pub fn key(&self) -> ServiceKey {
        ServiceKey::new(&self.cluster, &self.namespace, &self.name)
    }

    fn is(&self, key: &ServiceKey) -> bool {
        self.cluster == key.cluster && self.namespace == key.namespace && self.name == key.name
    }
}

/// All claims on one name, kept sorted by Service key.
///
/// Held at its exact length: almost every name has one claim, and a `Vec` grown by a push
/// or a deserializer reserves room for four (measured at 100,000 Services: 61 MiB of the
/// publisher's 150 MiB heap, three quarters of it unused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Claims<D> {
    claims: Vec<Claim<D>>,
}

impl<'de, D: Deserialize<'de>> Deserialize<'de> for Claims<D> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        let mut claims = Vec::<Claim<D>>::deserialize(d)?;
        claims.shrink_to_fit();
        Ok(Self { claims })
    }
}

impl<D> Default for Claims<D> {
    fn default() -> Self {
        Self { claims: Vec::new() }
    }
}

impl<D: Clone> Claims<D> {
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Claim<D>> {
        self.claims.iter()
    }

    pub fn get(&self, key: &ServiceKey) -> Option<&Claim<D>> {
        self.claims.iter().find(|c| c.is(key))
    }

    /// Sets `key`'s claim, begun at stream sequence `since`, last set by the event at `seq`.
    pub fn upsert(&mut self, key: &ServiceKey, seq: u64, since: u64, data: D) {
        if let Some(c) = self.claims.iter_mut().find(|c| c.is(key)) {
            c.seq = seq;
            c.since = since;
            c.data = data;
            return;
        }
        self.claims.reserve_exact(1);
        self.claims.push(Claim {
            cluster: key.cluster.clone(),
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            since,
            seq,
            data,
        });
        self.claims.sort_by_key(Claim::key);
    }

    /// Drops `key`'s claim; true if it had one.
    pub fn remove(&mut self, key: &ServiceKey) -> bool {
        let before = self.claims.len();
        self.claims.retain(|c| !c.is(key));
        self.claims.len() != before
    }

    /// The owning group: the one whose earliest claim is oldest (ties: the smaller group).
    pub fn winner<G: Ord + Clone>(&self, group: impl Fn(&ServiceKey) -> G) -> Option<G> {
        let mut best: Option<(u64, G)> = None;
        for c in &self.claims {
            let g = group(&c.key());
            let cand = (c.since, g);
            best = match best {
                None => Some(cand),
                Some(b) => Some(if (cand.0, &cand.1) < (b.0, &b.1) {
                    cand
                } else {
                    b
                }),
            };
        }
        best.map(|(_, g)| g)
    }

    /// The claims of the owning group, and those of every waiting group.
    pub fn split<G: Ord + Clone>(
        &self,
        group: impl Fn(&ServiceKey) -> G,
    ) -> (Vec<&Claim<D>>, Vec<&Claim<D>>) {
        let Some(w) = self.winner(&group) else {
            return (Vec::new(), Vec::new());
        };
        self.claims.iter().partition(|c| group(&c.key()) == w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, ns: &str, n: &str) -> ServiceKey {
        ServiceKey::new(c, ns, n)
    }

    fn by_service(k: &ServiceKey) -> (String, String) {
        (k.namespace.clone(), k.name.clone())
    }

    #[test]
    fn the_older_claim_wins_and_the_waiting_one_takes_over() {
        let mut claims = Claims::default();
        claims.upsert(&key("east", "b", "web"), 20, 20, 2);
        claims.upsert(&key("east", "a", "web"), 10, 10, 1);
        assert_eq!(claims.winner(by_service), Some(("a".into(), "web".into())));
        // An update continuing the claim carries the original `since`.
        claims.upsert(&key("east", "a", "web"), 30, 10, 3);
        assert_eq!(claims.winner(by_service), Some(("a".into(), "web".into())));
        assert!(claims.remove(&key("east", "a", "web")));
        assert_eq!(claims.winner(by_service), Some(("b".into(), "web".into())));
    }

    #[test]
    fn clusters_of_one_service_fan_in_and_the_group_is_as_old_as_its_oldest_member() {
        let mut claims = Claims::default();
        claims.upsert(&key("east", "a", "web"), 10, 10, 1);
        claims.upsert(&key("east", "z", "web"), 11, 11, 9);
        claims.upsert(&key("west", "a", "web"), 12, 12, 2);
        let (owners, waiting) = claims.split(by_service);
        assert_eq!(owners.len(), 2);
        assert_eq!(waiting.len(), 1);
        // The group's age is its oldest present member's: without east (10), a is younger
        // (12) than z (11), whatever order the events were applied in.
        assert!(claims.remove(&key("east", "a", "web")));
        assert_eq!(claims.winner(by_service), Some(("z".into(), "web".into())));
    }

    #[test]
    fn claims_are_held_at_their_exact_length() {
        let mut claims = Claims::default();
        claims.upsert(&key("east", "a", "web"), 10, 10, 1);
        assert_eq!(claims.claims.capacity(), 1);
        claims.upsert(&key("west", "a", "web"), 11, 11, 2);
        assert_eq!(claims.claims.capacity(), 2);
        let json = serde_json::to_vec(&claims).expect("serializable");
        let read: Claims<i32> = serde_json::from_slice(&json).expect("readable");
        assert_eq!(read, claims);
        assert_eq!(read.claims.capacity(), 2);
    }
}
