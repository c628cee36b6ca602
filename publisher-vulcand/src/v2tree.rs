//! etcd v2 replies as trees, and a large directory read without holding its reply: the
//! recursive GET is parsed as it streams in, one child directory at a time.
//!
//! At 100,000 routes `/vulcand/backends` is a reply of some 100 MB; buffered, parsed into
//! nodes and flattened, reconciliation held it three times over (a publisher peak of 933 MiB).
//! Streamed, memory holds one child directory and a few chunks of the body.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A v2 reply: `{"action": …, "node": {…}}`.
#[derive(Deserialize)]
pub(crate) struct Reply {
    pub(crate) node: Node,
}

/// A v2 node: a directory with its nodes, or a key with its value.
#[derive(Deserialize)]
pub(crate) struct Node {
    key: String,
    #[serde(default)]
    dir: bool,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    nodes: Vec<Node>,
}

impl Node {
    /// Every key below this node with its value, into `out`; returns whether a directory
    /// below it (or the node itself) is empty.
    pub(crate) fn flatten(self, out: &mut impl Extend<(String, String)>) -> bool {
        if !self.dir {
            if let Some(v) = self.value {
                out.extend([(self.key, v)]);
            }
            return false;
        }
        let mut empty = self.nodes.is_empty();
        for n in self.nodes {
            empty |= n.flatten(out);
        }
        empty
    }
}

/// One child of a directory read with [`children`]: its key, every key below it with its
/// value, and whether a directory in it is empty (vulcand v0.8 refuses to start on one).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Child {
    pub key: String,
    pub leaves: Vec<(String, String)>,
    pub empty_dir: bool,
}

impl From<Node> for Child {
    fn from(node: Node) -> Self {
        let key = node.key.clone();
        let mut leaves = Vec::new();
        let empty_dir = node.flatten(&mut leaves);
        Child {
            key,
            leaves,
            empty_dir,
        }
    }
}

/// Why a streamed directory could not be read.
pub type StreamError = ksr_runtime::json_stream::StreamError<reqwest::Error>;

/// Calls `each` with every child of the directory `reply` answers for, as the reply streams
/// in ([`ksr_runtime::json_stream`]): one child at a time, never the whole reply.
pub async fn children(
    reply: reqwest::Response,
    each: impl FnMut(Child),
) -> Result<(), StreamError> {
    ksr_runtime::json_stream::each(
        ksr_runtime::json_stream::chunks_of(reply),
        |json, send| ReplySeed(send).deserialize(json),
        each,
    )
    .await
}

/// Hands each child to the callback; false from it stops the parse.
type Hand<'a> = ksr_runtime::json_stream::Sink<'a, Child>;

/// The reply: only its `node` is read.
struct ReplySeed<'a, 'b>(&'a mut Hand<'b>);

impl<'de> DeserializeSeed<'de> for ReplySeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReplySeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an etcd v2 reply")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "node" && !seen {
                seen = true;
                map.next_value_seed(DirSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if seen {
            Ok(())
        } else {
            Err(de::Error::missing_field("node"))
        }
    }
}

/// The directory read: only its `nodes` are read, each handed over as it is parsed.
struct DirSeed<'a, 'b>(&'a mut Hand<'b>);

impl<'de> DeserializeSeed<'de> for DirSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DirSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an etcd v2 directory")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "nodes" {
                map.next_value_seed(NodesSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct NodesSeed<'a, 'b>(&'a mut Hand<'b>);

impl<'de> DeserializeSeed<'de> for NodesSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the nodes of an etcd v2 directory")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(node) = seq.next_element::<Node>()? {
            if !(self.0)(node.into()) {
                return Err(de::Error::custom("the reader of the directory stopped"));
            }
        }
        Ok(())
    }
}

/// Every key below `node` with its value.
pub(crate) fn flatten(node: Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    node.flatten(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Child>, serde_json::Error> {
        let mut out = Vec::new();
        let mut send = |c: Child| {
            out.push(c);
            true
        };
        let mut de = serde_json::Deserializer::from_reader(json.as_bytes());
        ReplySeed(&mut send).deserialize(&mut de)?;
        Ok(out)
    }

    #[test]
    fn children_come_one_by_one_with_their_leaves_and_empty_directories() {
        let reply = r#"{"action":"get","node":{"key":"/v/backends","dir":true,"nodes":[
            {"key":"/v/backends/a","dir":true,"nodes":[
                {"key":"/v/backends/a/backend","value":"{\"Type\":\"http\"}","modifiedIndex":4,"createdIndex":4},
                {"key":"/v/backends/a/servers","dir":true,"nodes":[
                    {"key":"/v/backends/a/servers/s1","value":"u1","modifiedIndex":5,"createdIndex":5}
                ],"modifiedIndex":5,"createdIndex":5}
            ],"modifiedIndex":4,"createdIndex":4},
            {"key":"/v/backends/b","dir":true,"nodes":[
                {"key":"/v/backends/b/backend","value":"x"},
                {"key":"/v/backends/b/servers","dir":true}
            ]},
            {"key":"/v/backends/c","dir":true}
        ],"modifiedIndex":3,"createdIndex":3}}"#;
        let got = parse(reply).expect("parses");
        assert_eq!(
            got,
            vec![
                Child {
                    key: "/v/backends/a".into(),
                    leaves: vec![
                        ("/v/backends/a/backend".into(), r#"{"Type":"http"}"#.into()),
                        ("/v/backends/a/servers/s1".into(), "u1".into()),
                    ],
                    empty_dir: false,
                },
                Child {
                    key: "/v/backends/b".into(),
                    leaves: vec![("/v/backends/b/backend".into(), "x".into())],
                    empty_dir: true,
                },
                Child {
                    key: "/v/backends/c".into(),
                    leaves: vec![],
                    empty_dir: true,
                },
            ]
        );
    }

    #[test]
    fn an_empty_directory_has_no_children_and_a_broken_reply_is_an_error() {
        let empty = r#"{"action":"get","node":{"key":"/v/frontends","dir":true}}"#;
        assert_eq!(parse(empty).expect("parses"), vec![]);
        assert!(parse(r#"{"action":"get"}"#).is_err());
        assert!(
            parse(r#"{"action":"get","node":{"key":"/v","dir":true,"nodes":[{"key":"#).is_err()
        );
        assert!(parse(r#"{"node":{"nodes":[{"key":1}]}}"#).is_err());
    }

    #[test]
    fn a_stopped_reader_stops_the_parse() {
        let reply = r#"{"node":{"key":"/v","dir":true,"nodes":[{"key":"/v/a","value":"1"},{"key":"/v/b","value":"2"}]}}"#;
        let mut n = 0;
        let mut send = |_: Child| {
            n += 1;
            false
        };
        let mut de = serde_json::Deserializer::from_reader(reply.as_bytes());
        assert!(ReplySeed(&mut send).deserialize(&mut de).is_err());
        assert_eq!(n, 1);
    }
}
