//! Consul's bulk reads — every record under our KV prefix, every instance on a router's
//! node — parsed as they stream in, one entry at a time ([`ksr_runtime::json_stream`]).
//!
//! At 100,000 names these replies are 57 MiB (KV, values in base64) and 38 MiB (the node);
//! read whole, then parsed, then converted, they made a reconciliation peak at 546 MiB.
//!
//! Every read here is `consistent`: in Consul's default mode a server that has just
//! restarted answers from its snapshot before it has applied its log (measured: fences
//! thousands of sequences old), and writes planned from such a read would be refused by
//! their checks at best; consistent reads wait until the leader may answer (Consul says
//! "Not ready to serve consistent reads", a 500 that is retried). Measured at 100,000
//! Services, Consul takes longer than the 15 s that bound every other request to answer
//! these, so they get [`BULK_TIMEOUT`].

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use ksr_runtime::json_stream::{self, Deserializer, Sink};

use crate::Error;
use crate::store::{BULK_TIMEOUT, ConsulClient, KvEntry, RawKv, ServiceBody};

impl ConsulClient {
    /// Calls `each` with every KV entry under `prefix` as the reply streams in.
    pub async fn kv_tree_each(&self, prefix: &str, each: impl FnMut(KvEntry)) -> Result<(), Error> {
        let path = format!("/v1/kv/{prefix}?recurse=true&consistent");
        self.get_each(
            &path,
            "reading our records",
            |json, send| OrNull(KvEntries(send)).deserialize(json),
            each,
        )
        .await
    }

    /// Calls `each` with every instance registered on `node`, as Consul lists it (none when
    /// the node does not exist), as the listing streams in.
    pub async fn node_services_each(
        &self,
        node: &str,
        each: impl FnMut(ServiceBody),
    ) -> Result<(), Error> {
        let path = format!("/v1/catalog/node/{node}?consistent");
        self.get_each(
            &path,
            "listing our node",
            |json, send| OrNull(NodeServices(send)).deserialize(json),
            each,
        )
        .await
    }

    /// GETs `path` and hands `each` every item `parse` finds in the reply as it streams in;
    /// nothing when Consul has nothing there (404).
    async fn get_each<T, P>(
        &self,
        path: &str,
        what: &str,
        parse: P,
        each: impl FnMut(T),
    ) -> Result<(), Error>
    where
        T: Send + 'static,
        P: FnOnce(&mut Deserializer, &mut Sink<'_, T>) -> Result<(), serde_json::Error>
            + Send
            + 'static,
    {
        let resp = self
            .request(Method::GET, path, None, Some(BULK_TIMEOUT))
            .await?;
        match resp.status() {
            StatusCode::OK => json_stream::each(json_stream::chunks_of(resp), parse, each)
                .await
                .map_err(|source| Error::Listing {
                    what: what.to_owned(),
                    source,
                }),
            StatusCode::NOT_FOUND => Ok(()),
            _ => Self::answer(resp, what).await.and_then(|(status, text)| {
                Err(Error::Server {
                    what: what.to_owned(),
                    status: status.as_u16(),
                    message: text.trim().to_owned(),
                })
            }),
        }
    }
}

/// One router's node as listed, an instance a digest ([`ServiceBody::digest`]): what the
/// catalog pass of reconciliation compares with the name records: per instance its ID, a
/// digest, a flag and its service name, instead of its tags, metadata and address.
#[derive(Debug, Default)]
pub struct NodeListing {
    instances: HashMap<String, Listed>,
}

/// One instance of a [`NodeListing`].
#[derive(Debug)]
pub struct Listed {
    digest: u64,
    /// Whether it is at the router's address.
    at_router: bool,
    /// The Consul service it is an instance of.
    pub service: String,
}

impl NodeListing {
    /// Lists `node`, whose instances should be at `address`.
    pub async fn read(client: &ConsulClient, node: &str, address: &str) -> Result<Self, Error> {
        let mut instances = HashMap::new();
        client
            .node_services_each(node, |body| {
                let listed = Listed {
                    digest: body.digest(),
                    at_router: body.address == address,
                    service: body.service,
                };
                instances.insert(body.id, listed);
            })
            .await?;
        Ok(Self { instances })
    }

    /// Whether instance `id` is registered with `digest` at the router's address.
    pub fn matches(&self, id: &str, digest: u64) -> bool {
        self.instances
            .get(id)
            .is_some_and(|l| l.digest == digest && l.at_router)
    }

    /// Every instance by ID.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Listed)> {
        self.instances.iter()
    }
}

/// A reply that may be `null` (Consul's answer for nothing there).
struct OrNull<S>(S);

impl<'de, S: DeserializeSeed<'de, Value = ()>> DeserializeSeed<'de> for OrNull<S> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de, Value = ()>> Visitor<'de> for OrNull<S> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Consul reply or null")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.0.deserialize(d)
    }
}

fn stopped<E: de::Error>() -> E {
    E::custom("the reader of the listing stopped")
}

/// `[{"Key": …, "Value": …, "ModifyIndex": …}, …]`: each entry decoded and handed over.
struct KvEntries<'a, 'b>(&'a mut Sink<'b, KvEntry>);

impl<'de> DeserializeSeed<'de> for KvEntries<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KvEntries<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of KV entries")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<RawKv>()? {
            if !(self.0)(raw.decode()) {
                return Err(stopped());
            }
        }
        Ok(())
    }
}

/// `{"Node": …, "Services": {"<ID>": {…}, …}}`: only the instances are read, each handed over.
struct NodeServices<'a, 'b>(&'a mut Sink<'b, ServiceBody>);

impl<'de> DeserializeSeed<'de> for NodeServices<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodeServices<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Consul node listing")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "Services" {
                map.next_value_seed(OrNull(Instances(&mut *self.0)))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

struct Instances<'a, 'b>(&'a mut Sink<'b, ServiceBody>);

impl<'de> DeserializeSeed<'de> for Instances<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Instances<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the instances of a Consul node by ID")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((_, body)) = map.next_entry::<IgnoredAny, ServiceBody>()? {
            if !(self.0)(body) {
                return Err(stopped());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T>(
        json: &str,
        seed: impl FnOnce(
            &mut Sink<'_, T>,
            &mut serde_json::Deserializer<serde_json::de::StrRead<'_>>,
        ) -> Result<(), serde_json::Error>,
    ) -> Result<Vec<T>, serde_json::Error> {
        let mut out = Vec::new();
        let mut send = |item: T| {
            out.push(item);
            true
        };
        let mut de = serde_json::Deserializer::from_str(json);
        seed(&mut send, &mut de)?;
        de.end()?;
        Ok(out)
    }

    fn instances(json: &str) -> Result<Vec<ServiceBody>, serde_json::Error> {
        parse(json, |send, de| OrNull(NodeServices(send)).deserialize(de))
    }

    fn entries(json: &str) -> Result<Vec<KvEntry>, serde_json::Error> {
        parse(json, |send, de| OrNull(KvEntries(send)).deserialize(de))
    }

    #[test]
    fn a_node_listing_hands_over_each_instance_and_nothing_else() {
        let json = r#"{"Node":{"ID":"","Node":"ksr","Address":"127.0.0.9","Meta":{"ksr-owner":"ksr"}},
            "Services":{
              "a-test":{"ID":"a-test","Service":"test","Tags":["a"],"Address":"127.0.0.9","Port":80,"Meta":{"k":"v"},"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false},
              "vulcan-test":{"ID":"vulcan-test","Service":"vulcan","Tags":null,"Address":"127.0.0.9","Port":8181,"Meta":null}
            }}"#;
        let got = instances(json).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].id, "a-test");
        assert_eq!(got[0].tags, vec!["a"]);
        assert_eq!(got[0].meta.get("k").map(String::as_str), Some("v"));
        assert_eq!(got[1].service, "vulcan");
        assert!(got[1].tags.is_empty() && got[1].meta.is_empty());
    }

    #[test]
    fn a_missing_node_or_one_without_services_lists_nothing() {
        assert!(instances("null").unwrap().is_empty());
        assert!(
            instances(r#"{"Node":{},"Services":null}"#)
                .unwrap()
                .is_empty()
        );
        assert!(instances(r#"{"Node":{}}"#).unwrap().is_empty());
        assert!(instances(r#"{"Services":{"a":{"ID":1}}}"#).is_err());
        assert!(instances(r#"{"Services":{"a":{"ID":"a""#).is_err());
    }

    #[test]
    fn kv_entries_are_decoded_one_by_one() {
        let json = r#"[{"LockIndex":0,"Key":"ksr/a","Flags":0,"Value":"eyJ4IjoxfQ==","CreateIndex":5,"ModifyIndex":9},
                       {"Key":"ksr/b","Value":null,"ModifyIndex":10}]"#;
        let got = entries(json).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].key.as_str(), got[0].modify_index), ("ksr/a", 9));
        assert_eq!(got[0].value, br#"{"x":1}"#);
        assert!(got[1].value.is_empty());
        assert!(entries("null").unwrap().is_empty());
        assert!(entries(r#"[{"Key":"ksr/a"}]"#).is_err());
    }

    #[test]
    fn a_stopped_reader_stops_the_parse() {
        let json = r#"[{"Key":"a","Value":null,"ModifyIndex":1},{"Key":"b","Value":null,"ModifyIndex":2}]"#;
        let mut n = 0;
        let mut send = |_: KvEntry| {
            n += 1;
            false
        };
        let mut de = serde_json::Deserializer::from_str(json);
        assert!(OrNull(KvEntries(&mut send)).deserialize(&mut de).is_err());
        assert_eq!(n, 1);
    }
}
