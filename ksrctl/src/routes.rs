//! The routes vulcand serves, read back from etcd, with their Consul DNS answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use etcd_client::{GetOptions, KvClient};

use crate::Error;

/// One vulcand frontend and the servers of its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    pub host: String,
    pub path: String,
    pub servers: Vec<String>,
}

/// The argument of `Name(`…`)` in a vulcand route expression.
fn raw_arg<'a>(route: &'a str, name: &str) -> Option<&'a str> {
    let start = route.find(&format!("{name}(`"))? + name.len() + 2;
    let len = route[start..].find("`)")?;
    Some(&route[start..start + len])
}

/// Parses `Host(`h`) && PathRegexp(`p`)`.
pub fn parse_route(route: &str) -> Option<(String, String)> {
    Some((
        raw_arg(route, "Host")?.to_owned(),
        raw_arg(route, "PathRegexp")?.to_owned(),
    ))
}

/// Every route under `prefix` (vulcand's etcd v3 keys), sorted by host and path.
pub async fn read(kv: &mut KvClient, prefix: &str) -> Result<Vec<Route>, Error> {
    let prefix = prefix.trim_end_matches('/');
    let all = kv
        .get(format!("{prefix}/"), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut frontends = Vec::new();
    let mut servers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kv in all.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let rest = &key[prefix.len()..];
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let value: serde_json::Value = serde_json::from_slice(kv.value()).unwrap_or_default();
        match parts.as_slice() {
            ["frontends", id, "frontend"] => {
                let route = value["Route"].as_str().unwrap_or_default();
                let backend = value["BackendId"].as_str().unwrap_or(id).to_owned();
                let (host, path) = parse_route(route).ok_or_else(|| Error::BadKey {
                    key: key.clone(),
                    reason: format!("route {route:?} is not Host(`…`) && PathRegexp(`…`)"),
                })?;
                frontends.push((backend, host, path));
            }
            ["backends", id, "servers", _] => {
                let url = value["URL"].as_str().unwrap_or_default().to_owned();
                servers.entry((*id).to_owned()).or_default().push(url);
            }
            _ => {}
        }
    }
    let mut routes: Vec<Route> = frontends
        .into_iter()
        .map(|(id, host, path)| Route {
            servers: servers.get(&id).cloned().unwrap_or_default(),
            id,
            host,
            path,
        })
        .collect();
    routes.sort_by(|a, b| (&a.host, &a.path).cmp(&(&b.host, &b.path)));
    Ok(routes)
}

/// What Consul DNS answers for `host` (addresses, or the error).
pub async fn resolve(dns: SocketAddr, host: &str) -> String {
    match crate::dns::query_a_at(dns, host).await {
        Ok(a) if a.rcode == crate::dns::NXDOMAIN => "NXDOMAIN".into(),
        Ok(a) if a.addrs.is_empty() => format!("no address (rcode {})", a.rcode),
        Ok(a) => a
            .addrs
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("error: {e}"),
    }
}

/// An aligned table of routes and their DNS answers.
pub fn render(routes: &[Route], answers: &BTreeMap<String, String>) -> String {
    let rows: Vec<[String; 5]> = routes
        .iter()
        .map(|r| {
            let split = |s: &str| -> (String, String) {
                match s.split_once("://") {
                    Some((scheme, addr)) => (scheme.to_owned(), addr.to_owned()),
                    None => (String::new(), s.to_owned()),
                }
            };
            let (mut schemes, servers): (Vec<String>, Vec<String>) =
                r.servers.iter().map(|s| split(s)).unzip();
            schemes.sort();
            schemes.dedup();
            let servers = servers.join(" ");
            let dns = answers.get(&r.host).cloned().unwrap_or_else(|| "-".into());
            [
                r.host.clone(),
                r.path.clone(),
                if schemes.is_empty() {
                    "-".into()
                } else {
                    schemes.join(",")
                },
                if servers.is_empty() {
                    "(no ready servers)".into()
                } else {
                    servers
                },
                dns,
            ]
        })
        .collect();
    let header = ["HOST", "PATH", "SCHEME", "SERVERS", "CONSUL DNS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no routes)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_expressions_parse_back() {
        let (h, p) =
            parse_route("Host(`web-default.test.service.consul`) && PathRegexp(`/a/.*`)").unwrap();
        assert_eq!(
            (h.as_str(), p.as_str()),
            ("web-default.test.service.consul", "/a/.*")
        );
        assert!(parse_route("Path(`/`)").is_none());
    }

    #[test]
    fn the_table_is_aligned() {
        let routes = vec![Route {
            id: "x".into(),
            host: "a-b.test.service.consul".into(),
            path: "/.*".into(),
            servers: vec!["http://10.0.0.1:80".into()],
        }];
        let answers =
            BTreeMap::from([("a-b.test.service.consul".to_owned(), "127.0.0.1".to_owned())]);
        let table = render(&routes, &answers);
        assert!(table.starts_with("HOST"), "{table}");
        assert!(
            table.contains("10.0.0.1:80") && table.contains("127.0.0.1"),
            "{table}"
        );
    }
}
