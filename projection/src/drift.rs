//! Drift: how a target's live entries differ from the entries the stream implies.
//!
//! Both targets reduce to "key → rendered value" maps (vulcand: etcd key → JSON; Consul:
//! instance ID → registration), so `ksrctl verify` and `rebuild --dry-run` compare and print
//! them the same way.

use std::collections::BTreeMap;

use serde::Serialize;

/// One entry that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "drift", rename_all = "lowercase")]
pub enum Drift {
    /// Expected but absent.
    Missing { key: String, want: String },
    /// Present but not expected.
    Extra { key: String, have: String },
    /// Present with another value.
    Different {
        key: String,
        have: String,
        want: String,
    },
}

impl Drift {
    pub fn key(&self) -> &str {
        match self {
            Drift::Missing { key, .. }
            | Drift::Extra { key, .. }
            | Drift::Different { key, .. } => key,
        }
    }

    /// One line for people: `missing`, `extra` or `different`, the key, and the values.
    pub fn line(&self) -> String {
        match self {
            Drift::Missing { key, want } => format!("missing    {key}  want {want}"),
            Drift::Extra { key, have } => format!("extra      {key}  have {have}"),
            Drift::Different { key, have, want } => {
                format!("different  {key}  have {have}  want {want}")
            }
        }
    }

    /// The repair as one line: what a rebuild writes for this entry.
    pub fn action(&self) -> String {
        match self {
            Drift::Missing { key, want } | Drift::Different { key, want, .. } => {
                format!("put     {key}  {want}")
            }
            Drift::Extra { key, .. } => format!("delete  {key}"),
        }
    }
}

/// Every difference between `expected` and `actual`, in key order.
pub fn compare(
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<Drift> {
    let mut out = Vec::new();
    for (key, want) in expected {
        match actual.get(key) {
            None => out.push(Drift::Missing {
                key: key.clone(),
                want: want.clone(),
            }),
            Some(have) if have != want => out.push(Drift::Different {
                key: key.clone(),
                have: have.clone(),
                want: want.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, have) in actual {
        if !expected.contains_key(key) {
            out.push(Drift::Extra {
                key: key.clone(),
                have: have.clone(),
            });
        }
    }
    out.sort_by(|a, b| a.key().cmp(b.key()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_extra_and_different_entries_are_listed_in_key_order() {
        let map = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let expected = map(&[("a", "1"), ("b", "2"), ("c", "3")]);
        let actual = map(&[("b", "2"), ("c", "x"), ("d", "4")]);
        let drift = compare(&expected, &actual);
        assert_eq!(
            drift.iter().map(Drift::line).collect::<Vec<_>>(),
            vec![
                "missing    a  want 1",
                "different  c  have x  want 3",
                "extra      d  have 4",
            ]
        );
        assert!(compare(&expected, &expected).is_empty());
    }
}
