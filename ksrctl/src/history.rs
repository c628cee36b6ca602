//! The stream as history: filtered events, the routing table at an instant, and diffs.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use ksr_proto::{Event, EventKind, RouteState, ServiceKey, subject};
use ksr_runtime::replay::Latest;

/// An instant in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// Up to and including this stream sequence.
    Seq(u64),
    /// Up to and including this time (ns since the Unix epoch).
    Time(i64),
}

impl At {
    /// Whether `record` is at or before this instant.
    pub fn includes(&self, record: &Latest) -> bool {
        match *self {
            At::Seq(s) => record.seq <= s,
            At::Time(t) => record.published_unix_ns <= t,
        }
    }
}

/// Parses an instant: a stream sequence (`#123` or digits), an RFC 3339 time, or a time
/// relative to `now_ns` (`90s`, `15m`, `2h`, `7d` ago).
pub fn parse_instant(s: &str, now_ns: i64) -> Result<At, String> {
    let s = s.trim();
    if let Some(seq) = s
        .strip_prefix('#')
        .or(Some(s).filter(|s| s.chars().all(|c| c.is_ascii_digit())))
    {
        return seq
            .parse()
            .map(At::Seq)
            .map_err(|_| format!("{s:?} is not a stream sequence"));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(At::Time(
            i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX),
        ));
    }
    let relative = ksr_runtime::config::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither a sequence (#123), an RFC 3339 time nor a relative time (2h, 7d)")
    })?;
    Ok(At::Time(
        now_ns - i64::try_from(relative.as_nanos()).unwrap_or(i64::MAX),
    ))
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// RFC 3339 (UTC).
pub fn format_time(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ns.to_string())
}

/// `*` and `?` glob matching.
pub fn glob(pattern: &str, s: &str) -> bool {
    fn rec(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => rec(&p[1..], s) || (!s.is_empty() && rec(p, &s[1..])),
            (Some(b'?'), Some(_)) => rec(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => rec(&p[1..], &s[1..]),
            _ => false,
        }
    }
    rec(pattern.as_bytes(), s.as_bytes())
}

/// Which events to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub cluster: Option<String>,
    pub namespace: Option<String>,
    /// Service name glob.
    pub name: Option<String>,
    pub kinds: Vec<EventKind>,
    pub since: Option<At>,
    pub until: Option<At>,
}

impl Filter {
    /// The narrowest NATS subject filter for this filter.
    pub fn subject(&self) -> String {
        let token = |t: &Option<String>| t.clone().unwrap_or_else(|| "*".into());
        let mut filter = format!(
            "{}.{}.{}.>",
            subject::SUBJECT_PREFIX,
            token(&self.cluster),
            token(&self.namespace)
        );
        // Trailing `*` tokens before `>` add nothing.
        while filter.ends_with(".*.>") {
            filter.truncate(filter.len() - ".*.>".len());
            filter.push_str(".>");
        }
        filter
    }

    pub fn matches(&self, r: &Latest) -> bool {
        if let Some(since) = self.since
            && !match since {
                At::Seq(s) => r.seq >= s,
                At::Time(t) => r.published_unix_ns >= t,
            }
        {
            return false;
        }
        if let Some(until) = self.until
            && !until.includes(r)
        {
            return false;
        }
        let Ok(key) = subject::parse_subject(&r.subject) else {
            return true; // undecodable subjects are shown (and reported), never hidden
        };
        self.cluster.as_ref().is_none_or(|c| *c == key.cluster)
            && self.namespace.as_ref().is_none_or(|n| *n == key.namespace)
            && self.name.as_ref().is_none_or(|g| glob(g, &key.name))
            && (self.kinds.is_empty()
                || r.event
                    .as_ref()
                    .is_ok_and(|e| self.kinds.contains(&e.kind())))
    }
}

/// One routed Service in a routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Routed {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub path: String,
    /// The Service port routed, as far as the event tells (`http (80/TCP)`); in endpoints or
    /// node-port mode the backends' ports are target ports (`→ 8080`).
    pub port: String,
    /// How the edge speaks to the backends: `http`, `https`, or `https-unverified`
    /// (certificates not checked).
    pub scheme: String,
    pub backends: Vec<String>,
    /// Sequence and time of the event that set this state.
    pub seq: u64,
    pub since: String,
}

/// The routing table at `at`, from the stream's records (in stream order). Undecodable
/// records are skipped (callers report them).
pub fn state_at(records: &[Latest], at: At) -> BTreeMap<ServiceKey, Routed> {
    let mut table = Table::default();
    for r in records.iter().filter(|r| at.includes(r)) {
        if let Ok(event) = &r.event {
            table.apply(r.seq, r.published_unix_ns, event.clone());
        }
    }
    table.routes()
}

/// A routing table built event by event (stream order). Events are kept as they came and
/// rendered only at the end: a replay of a million events formats only the survivors.
#[derive(Debug, Default, Clone)]
pub struct Table {
    /// Per Service: sequence, store time and the event that set its route.
    entries: HashMap<ServiceKey, (u64, i64, Event)>,
}

impl Table {
    pub fn apply(&mut self, seq: u64, published_unix_ns: i64, event: Event) {
        if event.route().is_none() {
            self.entries.remove(&event.key);
        } else if let Some(slot) = self.entries.get_mut(&event.key) {
            *slot = (seq, published_unix_ns, event);
        } else {
            self.entries
                .insert(event.key.clone(), (seq, published_unix_ns, event));
        }
    }

    /// How many Services are routed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every routed Service's event, with its sequence and store time, in Service order.
    pub fn entries(&self) -> Vec<(u64, i64, &Event)> {
        let mut out: Vec<(&ServiceKey, u64, i64, &Event)> = self
            .entries
            .iter()
            .map(|(key, (seq, ns, event))| (key, *seq, *ns, event))
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.into_iter()
            .map(|(_, seq, ns, e)| (seq, ns, e))
            .collect()
    }

    /// The routing table.
    pub fn routes(&self) -> BTreeMap<ServiceKey, Routed> {
        self.entries
            .iter()
            .filter_map(|(key, (seq, ns, event))| {
                Some((key.clone(), routed(key, event.route()?, *seq, *ns)))
            })
            .collect()
    }
}

fn routed(key: &ServiceKey, route: &RouteState, seq: u64, published_unix_ns: i64) -> Routed {
    Routed {
        cluster: key.cluster.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        host: route.hostname(),
        path: route.path.clone(),
        port: port_text(route),
        scheme: scheme_text(route),
        backends: route
            .ready_backends()
            .map(|b| std::net::SocketAddr::new(b.ip, b.port).to_string())
            .collect(),
        seq,
        since: format_time(published_unix_ns),
    }
}

/// The routed Service port: the Service port the backends' port is (cluster-ip mode), else the
/// backends' ports (target ports or node ports).
pub fn port_text(route: &RouteState) -> String {
    let mut ports: Vec<u16> = route.backends.iter().map(|b| b.port).collect();
    ports.sort_unstable();
    ports.dedup();
    match ports[..] {
        [] => "-".into(),
        [p] => match route.ports.iter().find(|s| s.port == p) {
            Some(s) if s.name.is_empty() => format!("{p}/{}", s.protocol),
            Some(s) => format!("{} ({p}/{})", s.name, s.protocol),
            None => format!("→ {p}"),
        },
        _ => format!(
            "→ {}",
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// `http`, `https` or `https-unverified`.
pub fn scheme_text(route: &RouteState) -> String {
    match (route.scheme, route.tls_skip_verify) {
        (s, false) => s.to_string(),
        (s, true) => format!("{s}-unverified"),
    }
}

/// How a route differs between two instants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum RouteChange {
    Appeared {
        route: Routed,
    },
    Disappeared {
        route: Routed,
    },
    Changed {
        before: Box<Routed>,
        after: Box<Routed>,
    },
}

/// What changed from `before` to `after` (ignoring which event set an unchanged route).
pub fn diff(
    before: &BTreeMap<ServiceKey, Routed>,
    after: &BTreeMap<ServiceKey, Routed>,
) -> Vec<RouteChange> {
    let same = |a: &Routed, b: &Routed| {
        (&a.host, &a.path, &a.port, &a.scheme, &a.backends)
            == (&b.host, &b.path, &b.port, &b.scheme, &b.backends)
    };
    let mut out = Vec::new();
    for (k, b) in before {
        match after.get(k) {
            None => out.push(RouteChange::Disappeared { route: b.clone() }),
            Some(a) if !same(a, b) => out.push(RouteChange::Changed {
                before: Box::new(b.clone()),
                after: Box::new(a.clone()),
            }),
            _ => {}
        }
    }
    for (k, a) in after {
        if !before.contains_key(k) {
            out.push(RouteChange::Appeared { route: a.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse_as_sequences_times_or_relative_times() {
        assert_eq!(parse_instant("#42", 0), Ok(At::Seq(42)));
        assert_eq!(parse_instant("42", 0), Ok(At::Seq(42)));
        assert_eq!(
            parse_instant("2h", 10_000_000_000_000),
            Ok(At::Time(10_000_000_000_000 - 7_200_000_000_000))
        );
        assert_eq!(
            parse_instant("1970-01-01T00:00:01Z", 0),
            Ok(At::Time(1_000_000_000))
        );
        assert!(parse_instant("yesterday", 0).is_err());
    }

    #[test]
    fn later_lines_line_up_with_a_table_printed_before_them() {
        let rows = vec![
            vec!["SEQ".to_owned(), "KIND".to_owned(), "HOST".to_owned()],
            vec!["9".to_owned(), "added".to_owned(), "a.test".to_owned()],
        ];
        let printed = table(&rows);
        let later = line(
            &["10".to_owned(), "added".to_owned(), "b.test".to_owned()],
            &widths(&rows),
        );
        let column = |l: &str| l.find(".test").expect("a host");
        assert_eq!(column(printed.lines().nth(1).unwrap()), column(&later));
    }

    #[test]
    fn globs_match_names() {
        assert!(glob("web*", "webtest1"));
        assert!(glob("w?b", "web"));
        assert!(!glob("api*", "webtest1"));
        assert!(glob("*", ""));
    }

    #[test]
    fn the_subject_filter_narrows_by_cluster_and_namespace() {
        let f = Filter {
            cluster: Some("east".into()),
            ..Default::default()
        };
        assert_eq!(f.subject(), "ksr.routes.east.>");
        let f = Filter {
            cluster: Some("east".into()),
            namespace: Some("shop".into()),
            ..Default::default()
        };
        assert_eq!(f.subject(), "ksr.routes.east.shop.>");
        assert_eq!(Filter::default().subject(), "ksr.routes.>");
    }

    #[test]
    fn the_routed_port_is_named_when_the_event_tells_it() {
        let mut r = ksr_proto::RouteState {
            ports: vec![
                ksr_proto::ServicePort {
                    name: "https".into(),
                    port: 443,
                    protocol: "TCP".into(),
                },
                ksr_proto::ServicePort {
                    name: "http".into(),
                    port: 80,
                    protocol: "TCP".into(),
                },
            ],
            backends: vec![ksr_proto::Backend {
                ip: "10.0.0.1".parse().unwrap(),
                port: 80,
                ready: true,
            }],
            ..serde_json::from_str(
                r#"{"label":"a-b","environment":"test","domain":"service.consul","path":"/.*",
                    "ports":[],"backends":[],"host_since":0,"route_since":0,"full_host":null}"#,
            )
            .unwrap()
        };
        assert_eq!(port_text(&r), "http (80/TCP)");
        assert_eq!(scheme_text(&r), "http");

        r.backends[0].port = 8443;
        r.scheme = ksr_proto::Scheme::Https;
        r.tls_skip_verify = true;
        assert_eq!(port_text(&r), "→ 8443", "a target port");
        assert_eq!(scheme_text(&r), "https-unverified");
        // Each column of the table stands under its header (in characters).
        let key = ServiceKey::new("east", "b", "a");
        let state = BTreeMap::from([(key.clone(), routed(&key, &r, 7, 0))]);
        let text = state_table(&state);
        let (header, row) = (text.lines().next().unwrap(), text.lines().nth(1).unwrap());
        let column = |line: &str, pat: &str| line.find(pat).map(|i| line[..i].chars().count());
        for (name, cell) in [
            ("PORT", "→ 8443"),
            ("SCHEME", "https-unverified"),
            ("BACKENDS", "10.0.0.1:8443"),
            ("SERVICE", "east/b/a"),
        ] {
            assert_eq!(column(header, name), column(row, cell), "{name}:\n{text}");
        }
    }
}

/// One event as `ksrctl events` prints it (stable field names for `--output json`).
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub host: Option<String>,
    pub path: Option<String>,
    pub backends: Vec<String>,
    pub resource_version: String,
    pub observer: String,
    pub manager: Option<String>,
}

/// The printable form of a record, or why it cannot be read.
pub fn event_row(r: &Latest) -> Result<EventRow, String> {
    let event = r.event.as_ref().map_err(|e| {
        format!(
            "unreadable event at sequence {} on {} ({}): {e}",
            r.seq,
            r.subject,
            e.reason()
        )
    })?;
    let route = event.route();
    Ok(EventRow {
        seq: r.seq,
        time: format_time(r.published_unix_ns),
        kind: event.kind().to_string(),
        cluster: event.key.cluster.clone(),
        namespace: event.key.namespace.clone(),
        name: event.key.name.clone(),
        host: route.map(RouteState::hostname),
        path: route.map(|r| r.path.clone()),
        backends: route
            .map(|r| {
                r.ready_backends()
                    .map(|b| std::net::SocketAddr::new(b.ip, b.port).to_string())
                    .collect()
            })
            .unwrap_or_default(),
        resource_version: event.resource_version.clone(),
        observer: event.observer.clone(),
        manager: event.manager.clone(),
    })
}

/// Column widths that align `rows`.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths = vec![0; rows.first().map(Vec::len).unwrap_or(0)];
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    widths
}

/// One line of an aligned table.
pub fn line(row: &[String], widths: &[usize]) -> String {
    let cells: Vec<String> = row
        .iter()
        .zip(widths)
        .map(|(c, w)| format!("{c:<w$}"))
        .collect();
    let mut out = cells.join("  ").trim_end().to_owned();
    out.push('\n');
    out
}

/// An aligned text table (first row: header).
pub fn table(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    rows.iter().map(|row| line(row, &widths)).collect()
}

/// The header of the events table.
pub fn event_header() -> Vec<String> {
    ["SEQ", "TIME", "KIND", "SERVICE", "HOST", "PATH", "BACKENDS"]
        .map(String::from)
        .to_vec()
}

/// The cells of one event in the events table.
pub fn event_cells(r: &EventRow) -> Vec<String> {
    vec![
        r.seq.to_string(),
        r.time.clone(),
        r.kind.clone(),
        format!("{}/{}/{}", r.cluster, r.namespace, r.name),
        r.host.clone().unwrap_or_default(),
        r.path.clone().unwrap_or_default(),
        r.backends.join(" "),
    ]
}

/// Table rows of a routing table.
pub fn state_table(state: &BTreeMap<ServiceKey, Routed>) -> String {
    let mut t = vec![
        [
            "HOST", "PATH", "PORT", "SCHEME", "BACKENDS", "SERVICE", "SEQ", "SINCE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut routes: Vec<&Routed> = state.values().collect();
    routes.sort_by(|a, b| (&a.host, &a.path, &a.cluster).cmp(&(&b.host, &b.path, &b.cluster)));
    for r in routes {
        t.push(vec![
            r.host.clone(),
            r.path.clone(),
            r.port.clone(),
            r.scheme.clone(),
            r.backends.join(" "),
            format!("{}/{}/{}", r.cluster, r.namespace, r.name),
            r.seq.to_string(),
            r.since.clone(),
        ]);
    }
    table(&t)
}

/// One line per change: `+` appeared, `-` disappeared, `~` changed.
pub fn diff_text(changes: &[RouteChange]) -> String {
    let show = |r: &Routed| {
        format!(
            "{} {} {} [{}] ({}/{}/{})",
            r.host,
            r.path,
            r.scheme,
            r.backends.join(" "),
            r.cluster,
            r.namespace,
            r.name
        )
    };
    let mut out = String::new();
    for c in changes {
        let line = match c {
            RouteChange::Appeared { route } => format!("+ {}", show(route)),
            RouteChange::Disappeared { route } => format!("- {}", show(route)),
            RouteChange::Changed { before, after } => {
                format!("~ {}  →  {}", show(before), show(after))
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
