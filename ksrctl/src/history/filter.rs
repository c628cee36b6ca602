//! Which events to show: cluster, namespace, name glob, kinds, range.

use ksr_proto::{EventKind, subject};
use ksr_runtime::replay::Latest;

use super::At;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
