//! `ksrctl nats-auth`: one NKey per role and the nats-server `authorization` block that gives
//! each role exactly the subjects it needs.
//!
//! Roles: `watcher-<cluster>` publishes only its own cluster's subjects (and may create the
//! stream, never update, purge or delete it); `publisher-vulcand` and `publisher-consul` only
//! consume through their own durable consumer and acknowledge; `ksrctl` only reads (the
//! stream, consumer states, checkpoints); `checkpointer` reads and writes the checkpoint
//! bucket; `operator` reads and may publish removals and control requests (`retire-cluster`,
//! `confirm-removals`). Everybody may read the stream through ephemeral consumers (replay),
//! which cannot be durable: the server refuses a durable name on that API subject.

use std::collections::BTreeMap;
use std::path::Path;

use crate::Error;

/// The names the permissions depend on.
#[derive(Debug, Clone)]
pub struct Names {
    pub stream: String,
    pub owner: String,
    pub checkpoint_bucket: String,
}

/// What one role may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (control requests), nothing else on inboxes.
    pub allow_responses: bool,
}

/// A role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Watcher(String),
    Publisher(&'static str),
    Ksrctl,
    Checkpointer,
    Operator,
}

impl Role {
    /// The role's name (its seed file is `<name>.nk`).
    pub fn name(&self) -> String {
        match self {
            Role::Watcher(c) => format!("watcher-{c}"),
            Role::Publisher(kind) => format!("publisher-{kind}"),
            Role::Ksrctl => "ksrctl".into(),
            Role::Checkpointer => "checkpointer".into(),
            Role::Operator => "operator".into(),
        }
    }
}

/// Reading the stream and the checkpoints: what every role may do.
fn read(n: &Names, p: &mut Permissions) {
    let s = &n.stream;
    p.publish.extend([
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{s}"),
        // Ephemeral consumers only: a durable name is refused on this subject.
        format!("$JS.API.CONSUMER.CREATE.{s}"),
        format!("$JS.API.STREAM.MSG.GET.{s}"),
        format!("$JS.FC.{s}.>"),
    ]);
    p.subscribe.push("_INBOX.>".into());
}

/// Reading the publishers' per-Service status bucket (its newest entries, a watch of them).
fn read_status(n: &Names, p: &mut Permissions) {
    let b = format!("KV_{}", ksr_projection::status::bucket(&n.stream));
    p.publish.extend([
        format!("$JS.API.STREAM.INFO.{b}"),
        // Ephemeral (ordered) consumers only, as on the route stream.
        format!("$JS.API.CONSUMER.CREATE.{b}"),
        format!("$JS.API.STREAM.MSG.GET.{b}"),
        format!("$JS.API.DIRECT.GET.{b}.>"),
        format!("$JS.FC.{b}.>"),
    ]);
}

/// Reading checkpoints (an object store) and consumer states, as ksrctl does.
fn audit(n: &Names, p: &mut Permissions) {
    read_status(n, p);
    let (s, b) = (&n.stream, format!("OBJ_{}", n.checkpoint_bucket));
    p.publish.extend([
        "$JS.API.STREAM.NAMES".to_owned(),
        format!("$JS.API.CONSUMER.INFO.{s}.*"),
        format!("$JS.API.CONSUMER.LIST.{s}"),
        format!("$JS.API.CONSUMER.NAMES.{s}"),
        format!("$JS.API.STREAM.INFO.{b}"),
        format!("$JS.API.CONSUMER.CREATE.{b}"),
        format!("$JS.API.STREAM.MSG.GET.{b}"),
        format!("$JS.API.DIRECT.GET.{b}.>"),
        format!("$JS.FC.{b}.>"),
    ]);
}

/// The permissions of `role`.
pub fn permissions(role: &Role, n: &Names) -> Permissions {
    let mut p = Permissions::default();
    read(n, &mut p);
    let s = &n.stream;
    match role {
        Role::Watcher(cluster) => {
            p.publish.extend([
                format!("ksr.routes.{cluster}.>"),
                format!("$JS.API.STREAM.CREATE.{s}"),
            ]);
            p.subscribe.push(format!("ksr.control.{cluster}.>"));
            p.allow_responses = true;
            // The publishers' status of this cluster's Services, for Kubernetes Events.
            read_status(n, &mut p);
        }
        Role::Publisher(kind) => {
            let d = ksr_runtime::config::default_durable(kind, &n.owner);
            // Its reconciliation pulls the stream's newest events through a consumer of its
            // own name, one replica at a time, and deletes it when done.
            let r = ksr_runtime::config::replay_consumer(&d);
            p.publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{s}.{d}.>"),
                format!("$JS.API.CONSUMER.INFO.{s}.{d}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{d}"),
                format!("$JS.ACK.{s}.{d}.>"),
                format!("$JS.API.CONSUMER.CREATE.{s}.{r}.>"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{s}.{r}"),
                format!("$JS.API.CONSUMER.DELETE.{s}.{r}"),
            ]);
            // Its own per-Service status entries, and the bucket when it is missing; read
            // back when it starts (so a restart rewrites only what changed).
            read_status(n, &mut p);
            let b = ksr_projection::status::bucket(s);
            p.publish.extend([
                format!("$KV.{b}.{d}.>"),
                format!("$JS.API.STREAM.CREATE.KV_{b}"),
            ]);
        }
        Role::Ksrctl => audit(n, &mut p),
        Role::Checkpointer => {
            audit(n, &mut p);
            let b = &n.checkpoint_bucket;
            p.publish.extend([
                format!("$O.{b}.>"),
                format!("$JS.API.STREAM.CREATE.OBJ_{b}"),
                format!("$JS.API.STREAM.PURGE.OBJ_{b}"),
            ]);
        }
        Role::Operator => {
            audit(n, &mut p);
            p.publish.extend([
                "ksr.routes.>".to_owned(),
                "ksr.control.>".to_owned(),
                // `ksrctl stream-upgrade`: replicas and the incarnation stamp.
                format!("$JS.API.STREAM.UPDATE.{s}"),
            ]);
        }
    }
    p
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `authorization` block for `users` (role → public NKey).
pub fn render(users: &BTreeMap<Role, String>, n: &Names) -> String {
    let mut out = String::from(
        "# Written by `ksrctl nats-auth`: one NKey user per kube-service-router role.\n\
         # Include it from nats-server's configuration (`include ksr-auth.conf`).\n\
         authorization {\n  users: [\n",
    );
    for (role, public) in users {
        let p = permissions(role, n);
        out.push_str(&format!("    # {}\n", role.name()));
        out.push_str(&format!("    {{ nkey: \"{public}\", permissions: {{\n"));
        out.push_str(&format!(
            "        publish: {{ allow: [{}] }}\n",
            quoted(&p.publish)
        ));
        out.push_str(&format!(
            "        subscribe: {{ allow: [{}] }}\n",
            quoted(&p.subscribe)
        ));
        if p.allow_responses {
            out.push_str("        allow_responses: true\n");
        }
        out.push_str("    } }\n");
    }
    out.push_str("  ]\n}\n");
    out
}

/// Writes a seed per role into `dir` (keeping seeds already there, so adding a cluster
/// rotates nobody) and `dir/ksr-auth.conf`; returns the roles written.
pub fn write(dir: &Path, clusters: &[String], n: &Names) -> Result<Vec<String>, Error> {
    std::fs::create_dir_all(dir)?;
    let mut roles: Vec<Role> = clusters.iter().cloned().map(Role::Watcher).collect();
    roles.extend([
        Role::Publisher("vulcand"),
        Role::Publisher("consul"),
        Role::Ksrctl,
        Role::Checkpointer,
        Role::Operator,
    ]);
    let mut users = BTreeMap::new();
    for role in roles {
        let path = dir.join(format!("{}.nk", role.name()));
        let pair = match std::fs::read_to_string(&path) {
            Ok(seed) => nkeys::KeyPair::from_seed(seed.trim())
                .map_err(|e| Error::Usage(format!("{}: not an NKey seed: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pair = nkeys::KeyPair::new_user();
                let seed = pair
                    .seed()
                    .map_err(|e| Error::Usage(format!("generating an NKey: {e}")))?;
                write_secret(&path, &seed)?;
                pair
            }
            Err(e) => return Err(e.into()),
        };
        users.insert(role, pair.public_key());
    }
    std::fs::write(dir.join("ksr-auth.conf"), render(&users, n))?;
    Ok(users.keys().map(Role::name).collect())
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, contents: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            stream: "KSR_ROUTES".into(),
            owner: "ksr".into(),
            checkpoint_bucket: "KSR_CHECKPOINTS".into(),
        }
    }

    #[test]
    fn a_watcher_publishes_only_its_own_cluster_and_never_administers_the_stream() {
        let p = permissions(&Role::Watcher("east".into()), &names());
        assert!(p.publish.contains(&"ksr.routes.east.>".to_owned()));
        assert!(
            !p.publish
                .iter()
                .any(|s| s.contains("west") || s == "ksr.routes.>")
        );
        for forbidden in ["DELETE", "PURGE", "UPDATE", "$JS.ACK"] {
            assert!(
                !p.publish.iter().any(|s| s.contains(forbidden)),
                "{forbidden}"
            );
        }
        assert_eq!(p.subscribe, vec!["_INBOX.>", "ksr.control.east.>"]);
        // It reads the publishers' status, never writes it.
        assert!(!p.publish.iter().any(|s| s.starts_with("$KV.")));
        assert!(
            p.publish
                .contains(&"$JS.API.CONSUMER.CREATE.KV_KSR_ROUTES_status".to_owned())
        );
    }

    #[test]
    fn only_the_operator_may_update_the_stream() {
        let update = "$JS.API.STREAM.UPDATE.KSR_ROUTES".to_owned();
        assert!(
            permissions(&Role::Operator, &names())
                .publish
                .contains(&update)
        );
        for role in [
            Role::Watcher("east".into()),
            Role::Publisher("vulcand"),
            Role::Checkpointer,
            Role::Ksrctl,
        ] {
            assert!(!permissions(&role, &names()).publish.contains(&update));
        }
    }

    #[test]
    fn publishers_consume_only_through_their_own_durable() {
        let p = permissions(&Role::Publisher("vulcand"), &names());
        assert!(!p.publish.iter().any(|s| s.starts_with("ksr.")));
        assert!(p.publish.iter().all(|s| !s.contains("consul")));
        assert!(
            p.publish
                .contains(&"$JS.ACK.KSR_ROUTES.ksr-vulcand-ksr.>".to_owned())
        );
        // Status entries under its own name only.
        let kv: Vec<_> = p.publish.iter().filter(|s| s.starts_with("$KV.")).collect();
        assert_eq!(kv, vec!["$KV.KSR_ROUTES_status.ksr-vulcand-ksr.>"]);
    }

    #[test]
    fn a_publisher_pulls_from_and_deletes_only_its_durable_and_its_replay_consumer() {
        for (kind, other) in [("vulcand", "consul"), ("consul", "vulcand")] {
            let p = permissions(&Role::Publisher(kind), &names());
            let own = [format!("ksr-{kind}-ksr"), format!("ksr-{kind}-ksr_replay")];
            let reach: Vec<_> = p
                .publish
                .iter()
                .filter(|s| s.contains(".MSG.NEXT.") || s.contains(".DELETE."))
                .collect();
            assert_eq!(reach.len(), 3, "{reach:?}");
            for s in reach {
                let consumer = s.rsplit('.').next().unwrap_or_default();
                assert!(own.iter().any(|o| o == consumer), "{s}");
                assert!(!s.contains(other), "{s}");
            }
            assert!(p.publish.contains(&format!(
                "$JS.API.CONSUMER.DELETE.KSR_ROUTES.ksr-{kind}-ksr_replay"
            )));
            // Never the stream, nor its durable.
            assert!(!p.publish.iter().any(|s| s.contains("STREAM.DELETE")
                || s.ends_with(&format!("DELETE.KSR_ROUTES.ksr-{kind}-ksr"))));
        }
    }

    #[test]
    fn the_rendered_block_lists_every_role_once() {
        let mut users = BTreeMap::new();
        users.insert(Role::Ksrctl, "UA".to_owned());
        users.insert(Role::Watcher("east".into()), "UB".to_owned());
        let conf = render(&users, &names());
        assert_eq!(conf.matches("nkey:").count(), 2);
        assert!(conf.contains("allow_responses: true"));
    }
}
