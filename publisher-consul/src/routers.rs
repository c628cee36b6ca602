//! The edge routers every routed name resolves to, and the catalog node each one lives on.
//!
//! One synthetic node per router, so that a node-level health check (see
//! [`crate::router_health`]) takes exactly that router out of Consul DNS. The first router's
//! node is `--consul-node` itself (an installation with one router keeps the node it always
//! had); each further router's is `<node>-<address>`, dots and colons as dashes
//! (`ksr-10-0-0-2`, `ksr-fd00--2`), so adding or removing a router never moves the others.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::Error;

/// The most routers one installation registers: every name costs one catalog entry per
/// router.
pub const MAX_ROUTERS: usize = 8;

/// One edge router and the catalog node its entries live on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub node: String,
    pub address: String,
}

/// The routers of `addresses`, in order, on nodes derived from `base_node`.
pub fn routers(base_node: &str, addresses: &[IpAddr]) -> Result<Vec<Router>, Error> {
    if addresses.is_empty() {
        return Err(Error::Config(
            "--router-address: at least one address".into(),
        ));
    }
    if addresses.len() > MAX_ROUTERS {
        return Err(Error::Config(format!(
            "--router-address: {} addresses, at most {MAX_ROUTERS}",
            addresses.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(addresses.len());
    for (i, address) in addresses.iter().enumerate() {
        if !seen.insert(*address) {
            return Err(Error::Config(format!(
                "--router-address: {address} is given twice"
            )));
        }
        let node = if i == 0 {
            base_node.to_owned()
        } else {
            format!("{base_node}-{}", slug(address))
        };
        out.push(Router {
            node,
            address: address.to_string(),
        });
    }
    Ok(out)
}

/// An address as a node-name suffix: `10.0.0.2` → `10-0-0-2`, `fd00::2` → `fd00--2`.
fn slug(address: &IpAddr) -> String {
    address
        .to_string()
        .to_ascii_lowercase()
        .replace(['.', ':'], "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_first_router_keeps_the_installation_node() {
        let r = routers("ksr", &ips(&["10.0.0.1"])).unwrap();
        assert_eq!(
            r,
            vec![Router {
                node: "ksr".into(),
                address: "10.0.0.1".into()
            }]
        );
    }

    #[test]
    fn further_routers_get_a_node_named_after_their_address() {
        let r = routers("edge", &ips(&["10.0.0.1", "10.0.0.2", "fd00::2"])).unwrap();
        let nodes: Vec<_> = r.iter().map(|r| r.node.as_str()).collect();
        assert_eq!(nodes, ["edge", "edge-10-0-0-2", "edge-fd00--2"]);
        assert_eq!(r[2].address, "fd00::2");
    }

    #[test]
    fn duplicates_too_many_and_none_are_refused_naming_the_flag() {
        for bad in [
            ips(&["10.0.0.1", "10.0.0.1"]),
            ips(&[]),
            (1..=9).map(|i| IpAddr::from([10, 0, 0, i])).collect(),
        ] {
            let err = routers("ksr", &bad).unwrap_err().to_string();
            assert!(err.contains("--router-address"), "{err}");
        }
    }
}
