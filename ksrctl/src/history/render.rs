//! Rendering: event rows and aligned tables.

use std::collections::BTreeMap;

use serde::Serialize;

use ksr_proto::{RouteState, ServiceKey};
use ksr_runtime::replay::Latest;

use super::{Routed, format_time};

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
        path: route.map(|r| r.path.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
