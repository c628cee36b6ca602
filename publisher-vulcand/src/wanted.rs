//! What every route of ours should hold in vulcand's keys, kept as one digest per route and
//! directory, and the routes that differ from it as vulcand's keys are read one route at a
//! time: the key pass of reconciliation in memory that grows with the number of routes, not
//! with their keys.
//!
//! At 100,000 Services reconciliation held every live key and every expected key with its
//! value at once (publisher peak 768 MiB on v3, 933 MiB on v2, for a process that projects in
//! 150 MiB). Then a route cost its id and a hash per key (23 MiB at 100,000); now it costs
//! three words per directory, keyed by a hash of its id (7 MiB); only the keys of routes that
//! differ are kept, to repair them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

use ksr_projection::RecordKey;
use ksr_projection::survey::Unreadable;

use crate::keys::KeyClass;
use crate::layout::Layout;
use crate::records::HostRecord;

/// The two directories of a route in vulcand's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Backends = 0,
    Frontends = 1,
}

impl Dir {
    pub const BOTH: [Dir; 2] = [Dir::Backends, Dir::Frontends];

    /// The directory a key of `class` lives in.
    pub fn of(class: KeyClass) -> Self {
        match class {
            KeyClass::Frontend => Dir::Frontends,
            KeyClass::Backend | KeyClass::Server => Dir::Backends,
        }
    }

    /// Its name under the vulcand prefix.
    pub fn name(self) -> &'static str {
        match self {
            Dir::Backends => "backends",
            Dir::Frontends => "frontends",
        }
    }
}

/// One route's keys in one directory as read: every key with its value, and whether a
/// directory in it is empty (v2 only; vulcand v0.8 refuses to start on one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    pub leaves: Vec<(String, String)>,
    pub empty_dir: bool,
}

/// What one directory of a route should hold.
#[derive(Debug, Default, Clone, Copy)]
struct WantedDir {
    /// The sum of the hashes of its (key, value) pairs (keys are unique in a directory, so a
    /// sum of keyed hashes tells a different set apart but for a 2^-64 chance).
    digest: u64,
    /// How many keys.
    count: u32,
    seen: bool,
    /// Found as wanted: exactly (and no empty directory), or with upsert-only every wanted
    /// key present with its value.
    ok: bool,
}

/// One route: its hostname's id (hashed) and its two directories.
#[derive(Debug, Default)]
struct Route {
    host: u64,
    dirs: [WantedDir; 2],
    /// With upsert-only only (keys no record wants are not drift, so a wanted key must be
    /// told apart from one that is not): each directory's key hashes, sorted.
    keys: Option<Box<[Vec<u64>; 2]>>,
}

/// The projection of our records, as digests, checked against vulcand's keys route by route;
/// collects the hostnames that need repair.
#[derive(Debug)]
pub struct Wanted {
    /// The etcd revision the records were read at (0: unknown); vulcand's keys are read at
    /// the same one, so that a route written or removed in between is not taken for drift.
    at: u64,
    /// Keyed hashing of route ids, hostnames and keys (a new key per pass: nobody can choose
    /// names or values that collide).
    hasher: RandomState,
    /// By route id's hash.
    routes: HashMap<u64, Route>,
    unreadable: HashSet<String>,
    upsert_only: bool,
    drifted: BTreeMap<String, BTreeSet<String>>,
    kept: BTreeMap<String, String>,
}

impl Wanted {
    /// Nothing wanted yet; records are added with [`Wanted::want`] as they are read. With
    /// `upsert_only`, keys no record wants are not drift.
    pub fn new(upsert_only: bool) -> Self {
        Self {
            at: 0,
            hasher: RandomState::new(),
            routes: HashMap::new(),
            unreadable: HashSet::new(),
            upsert_only,
            drifted: BTreeMap::new(),
            kept: BTreeMap::new(),
        }
    }

    /// The records were read as of etcd revision `at`.
    pub fn read_at(&mut self, at: u64) {
        self.at = at;
    }

    /// The etcd revision the records were read at (0: unknown).
    pub fn revision(&self) -> u64 {
        self.at
    }

    fn key_hash(&self, key: &str, value: &str) -> u64 {
        self.hasher.hash_one((key, value))
    }

    /// Wants the keys `record` (a hostname's) projects to.
    pub fn want(&mut self, layout: &Layout, record: &HostRecord) {
        let host = self.hasher.hash_one(layout.host_id(&record.meta.host));
        for (key, (class, value)) in crate::keys::project(layout, record) {
            let Some(id) = layout.id_of_vulcand_key(&key) else {
                continue;
            };
            let hash = self.key_hash(&key, &value);
            let id_hash = self.hasher.hash_one(id);
            let upsert_only = self.upsert_only;
            let route = self.routes.entry(id_hash).or_insert_with(|| Route {
                host,
                keys: upsert_only.then(Box::default),
                ..Default::default()
            });
            let dir = Dir::of(class) as usize;
            route.dirs[dir].digest = route.dirs[dir].digest.wrapping_add(hash);
            route.dirs[dir].count += 1;
            if let Some(keys) = &mut route.keys {
                let at = keys[dir].partition_point(|k| *k < hash);
                keys[dir].insert(at, hash);
            }
        }
    }

    /// Leaves alone the routes of hostnames whose record is unreadable.
    pub fn leave_unreadable(&mut self, unreadable: &[Unreadable]) {
        self.unreadable
            .extend(unreadable.iter().filter_map(|u| match &u.record {
                RecordKey::Name(id) => Some(id.clone()),
                RecordKey::Service(_) => None,
            }));
    }

    /// Checks route `id`'s keys in `dir` as read; a route that needs repair is noted (with
    /// its keys, when `keep`). A key wanted that is missing or altered needs repair, and
    /// (unless upsert-only) so does a key no record wants or an empty directory. Keys of a
    /// hostname whose record is unreadable are left alone.
    pub fn check(&mut self, layout: &Layout, id: &str, dir: Dir, found: Found, keep: bool) {
        let host = layout.host_id_of(id);
        if self.unreadable.contains(host) {
            return;
        }
        let hasher = &self.hasher;
        let key_hash = |(k, v): &(String, String)| hasher.hash_one((k.as_str(), v.as_str()));
        let ok = match self.routes.get_mut(&hasher.hash_one(id)) {
            None => self.upsert_only,
            Some(route) => {
                let want = &mut route.dirs[dir as usize];
                want.seen = true;
                want.ok = match &route.keys {
                    // Upsert-only: every wanted key present with its value.
                    Some(keys) => {
                        let mut have: Vec<u64> = found.leaves.iter().map(key_hash).collect();
                        have.sort_unstable();
                        keys[dir as usize]
                            .iter()
                            .all(|k| have.binary_search(k).is_ok())
                    }
                    None => {
                        let digest = found
                            .leaves
                            .iter()
                            .fold(0u64, |d, kv| d.wrapping_add(key_hash(kv)));
                        want.digest == digest
                            && want.count as usize == found.leaves.len()
                            && !found.empty_dir
                    }
                };
                want.ok
            }
        };
        if !ok {
            self.mark(layout, id);
            if keep {
                self.kept.extend(found.leaves);
            }
        }
    }

    fn mark(&mut self, layout: &Layout, id: &str) {
        self.drifted
            .entry(layout.host_id_of(id).to_owned())
            .or_default()
            .insert(id.to_owned());
    }

    /// Whether route `id`'s directory `dir` was found as wanted (a route that needs repair
    /// in its other directory needs no write in this one).
    pub fn ok(&self, id: &str, dir: Dir) -> bool {
        self.routes
            .get(&self.hasher.hash_one(id))
            .is_some_and(|r| r.dirs[dir as usize].ok)
    }

    /// Once every route was checked: the hostnames that need repair, each with the ids of its
    /// routes found differing (a route wanted in a directory that was not found at all is
    /// not named: its hostname is, and [`Wanted::ok`] is false for it), and the keys kept of
    /// them (of the directories that differ). `hosts` are the hostnames' ids with a record.
    pub fn finish<'a>(
        &mut self,
        hosts: impl Iterator<Item = &'a str>,
    ) -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
        let unseen: HashSet<u64> = self
            .routes
            .values()
            .filter(|r| r.dirs.iter().any(|d| !d.seen && d.count > 0))
            .map(|r| r.host)
            .collect();
        if !unseen.is_empty() {
            for host in hosts {
                if unseen.contains(&self.hasher.hash_one(host)) {
                    self.drifted.entry(host.to_owned()).or_default();
                }
            }
        }
        (
            std::mem::take(&mut self.drifted),
            std::mem::take(&mut self.kept),
        )
    }
}

/// Groups keys read in key order by the route they belong to: `push` each key, and every
/// completed route comes out (the keys of a route id are contiguous, being the range of
/// `<dir>/<id>/`).
#[derive(Debug, Default)]
pub struct ByRoute {
    id: String,
    found: Found,
}

impl ByRoute {
    /// Adds a key of route `id`; returns the previous route once `id` starts a new one.
    pub fn push(&mut self, id: &str, key: String, value: String) -> Option<(String, Found)> {
        let done = (id != self.id).then(|| self.take()).flatten();
        if self.id.is_empty() {
            self.id = id.to_owned();
        }
        self.found.leaves.push((key, value));
        done
    }

    /// The last route, if any.
    pub fn take(&mut self) -> Option<(String, Found)> {
        if self.id.is_empty() {
            return None;
        }
        Some((
            std::mem::take(&mut self.id),
            std::mem::take(&mut self.found),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{HostMeta, PathClaim};
    use crate::target::State;
    use ksr_proto::ServiceKey;

    impl Wanted {
        /// What `state`'s records want.
        fn of(layout: &Layout, state: &State, upsert_only: bool) -> Self {
            let mut w = Wanted::new(upsert_only);
            for (_, v) in state.names() {
                if let Some(record) = &v.value {
                    w.want(layout, record);
                }
            }
            w
        }
    }

    fn layout() -> Layout {
        Layout::new("vulcand", "ksr")
    }

    /// A state with one hostname routed at `/` to one address.
    fn state(layout: &Layout) -> (State, crate::keys::Projection) {
        let host = "web-shop.test.service.consul";
        let mut record = HostRecord::new(HostMeta { host: host.into() });
        record.claims.upsert(
            &ServiceKey::new("c1", "shop", "web"),
            1,
            1,
            PathClaim {
                path: "/".parse().expect("a valid path"),
                path_since: 1,
                backends: vec!["10.0.0.1:80".parse().expect("an address")],
                scheme: Default::default(),
                tls_skip_verify: false,
            },
        );
        let projection = crate::keys::project(layout, &record);
        let mut state = State::default();
        state.set_name(
            layout.host_id(host),
            ksr_projection::Versioned {
                rev: 1,
                value: Some(record),
            },
        );
        (state, projection)
    }

    fn found(projection: &crate::keys::Projection, dir: Dir) -> (String, Found) {
        let layout = layout();
        let leaves: Vec<(String, String)> = projection
            .iter()
            .filter(|(_, (c, _))| Dir::of(*c) == dir)
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let id = layout
            .id_of_vulcand_key(&leaves[0].0)
            .expect("ours")
            .to_owned();
        (
            id,
            Found {
                leaves,
                empty_dir: false,
            },
        )
    }

    /// The hostnames found drifted, each with the routes named.
    fn drifted(mut w: Wanted, state: &State) -> Vec<(String, Vec<String>)> {
        let hosts: Vec<String> = state.names().map(|(id, _)| id.clone()).collect();
        w.finish(
            hosts
                .iter()
                .map(String::as_str)
                .chain(["ksr.gone.test.service.consul"]),
        )
        .0
        .into_iter()
        .map(|(host, ids)| (host, ids.into_iter().collect()))
        .collect()
    }

    #[test]
    fn routes_as_wanted_are_not_drift_and_any_difference_is() {
        let layout = layout();
        let (state, projection) = state(&layout);
        let (id, backends) = found(&projection, Dir::Backends);
        let (_, frontends) = found(&projection, Dir::Frontends);
        let host = layout.host_id_of(&id).to_owned();

        let mut w = Wanted::of(&layout, &state, false);
        w.check(&layout, &id, Dir::Backends, backends.clone(), true);
        w.check(&layout, &id, Dir::Frontends, frontends.clone(), true);
        assert!(w.ok(&id, Dir::Backends) && w.ok(&id, Dir::Frontends));
        assert_eq!(drifted(w, &state), vec![]);

        // A directory missing altogether: its hostname needs repair, that directory only.
        for upsert_only in [false, true] {
            let mut w = Wanted::of(&layout, &state, upsert_only);
            w.check(&layout, &id, Dir::Backends, backends.clone(), true);
            assert!(w.ok(&id, Dir::Backends) && !w.ok(&id, Dir::Frontends));
            assert_eq!(drifted(w, &state), vec![(host.clone(), vec![])]);
        }

        // An altered value or a missing key, kept for the repair.
        let mut altered = frontends.clone();
        altered.leaves[0].1.push(' ');
        let mut missing = backends.clone();
        missing.leaves.pop();
        for upsert_only in [false, true] {
            for (dir, differs, other) in [
                (Dir::Frontends, &altered, &backends),
                (Dir::Backends, &missing, &frontends),
            ] {
                let other_dir = Dir::BOTH[1 - dir as usize];
                let mut w = Wanted::of(&layout, &state, upsert_only);
                w.check(&layout, &id, other_dir, other.clone(), true);
                w.check(&layout, &id, dir, differs.clone(), true);
                assert!(!w.ok(&id, dir) && w.ok(&id, other_dir));
                let (d, kept) = w.finish(std::iter::empty());
                assert_eq!(
                    d.into_iter().collect::<Vec<_>>(),
                    vec![(host.clone(), BTreeSet::from([id.clone()]))]
                );
                assert_eq!(kept, differs.leaves.iter().cloned().collect());
            }
        }

        // A key no record wants, and an empty directory: drift, unless upsert-only.
        let mut extra = backends.clone();
        extra
            .leaves
            .push((layout.server_key(&id, "c9-10-0-0-9-80"), "{}".into()));
        let mut empty = backends.clone();
        empty.empty_dir = true;
        for (upsert_only, want) in [
            (false, vec![(host.clone(), vec![id.clone()])]),
            (true, vec![]),
        ] {
            for b in [&extra, &empty] {
                let mut w = Wanted::of(&layout, &state, upsert_only);
                w.check(&layout, &id, Dir::Backends, b.clone(), false);
                w.check(&layout, &id, Dir::Frontends, frontends.clone(), false);
                assert_eq!(w.ok(&id, Dir::Backends), upsert_only);
                assert_eq!(drifted(w, &state), want, "upsert-only {upsert_only}");
            }
        }

        // A route of ours no record wants.
        let gone = layout.host_id("gone.test.service.consul");
        let stray = format!("{gone}.0123456789abcdef");
        for (upsert_only, want) in [
            (false, vec![(gone.clone(), vec![stray.clone()])]),
            (true, vec![]),
        ] {
            let mut w = Wanted::of(&layout, &state, upsert_only);
            w.check(&layout, &id, Dir::Backends, backends.clone(), false);
            w.check(&layout, &id, Dir::Frontends, frontends.clone(), false);
            w.check(&layout, &stray, Dir::Frontends, frontends.clone(), false);
            assert_eq!(drifted(w, &state), want);
        }
    }

    #[test]
    fn keys_read_in_order_come_out_route_by_route() {
        let mut g = ByRoute::default();
        let mut out = Vec::new();
        for (id, key) in [
            ("a", "a/1"),
            ("a", "a/2"),
            ("b", "b/1"),
            ("c", "c/1"),
            ("c", "c/2"),
        ] {
            out.extend(g.push(id, key.into(), "v".into()));
        }
        out.extend(g.take());
        let ids: Vec<(String, usize)> = out
            .iter()
            .map(|(id, f)| (id.clone(), f.leaves.len()))
            .collect();
        assert_eq!(ids, vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 2)]);
        assert!(g.take().is_none());
    }
}
