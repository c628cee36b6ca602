//! vulcand route rules: which path regexps are safe to write, and the route expression itself.
//!
//! vulcand parses a route as a Go expression and compiles `PathRegexp` with Go's `regexp`
//! (Perl flags); one frontend it cannot parse stops every vulcand that starts afterwards. A
//! path is accepted exactly when Go accepts it ([`goregexp`], proven against Go itself), and
//! when it can be quoted as a Go raw string (no backtick, no control character, no byte
//! order mark) and can match a request (no white space at either end).

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::ProtoError;
use crate::goregexp;
use crate::names;

/// The path a Service gets when it has no `path` annotation.
pub const DEFAULT_PATH: &str = "/.*";
/// Longest path regexp we accept.
pub const MAX_PATH: usize = 1024;

fn invalid(value: &str, reason: impl Into<String>) -> ProtoError {
    ProtoError::InvalidPath {
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// Checks that `path` is a non-empty Go regexp that can be quoted as a Go raw string.
pub fn validate_path(path: &str) -> Result<(), ProtoError> {
    if path.is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid(path, format!("must be at most {MAX_PATH} bytes")));
    }
    if path.trim() != path {
        return Err(invalid(
            path,
            "has white space at its start or end, so no request path can match it",
        ));
    }
    if path.contains('`') {
        return Err(invalid(
            path,
            "contains a backtick, which cannot be quoted in a vulcand route",
        ));
    }
    if path.chars().any(char::is_control) {
        return Err(invalid(path, "contains a control character"));
    }
    if path.contains('\u{feff}') {
        return Err(invalid(
            path,
            "contains a byte order mark, which Go refuses inside a route",
        ));
    }
    goregexp::check(path).map_err(|source| ProtoError::PathSyntax {
        value: path.to_owned(),
        source,
    })
}

/// A path regexp vulcand accepts ([`validate_path`]). It is checked once, where it enters:
/// [`RoutePath::new`] at normalization, [`crate::codec::decode`] for an event read from the
/// stream, and deserialization for a record read back from a store; everything after trusts
/// it.
///
/// Its bincode `Decode` does not check: only [`crate::codec::decode`] decodes events, and it
/// checks the path right after (so a bad path keeps its own reason, `invalid_path`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode, Serialize)]
#[serde(transparent)]
pub struct RoutePath(String);

impl RoutePath {
    /// `path`, when vulcand accepts it.
    pub fn new(path: impl Into<String>) -> Result<Self, ProtoError> {
        let path = path.into();
        validate_path(&path)?;
        Ok(Self(path))
    }

    /// The path a Service gets when it has no `path` annotation ([`DEFAULT_PATH`]).
    pub fn default_path() -> Self {
        Self(DEFAULT_PATH.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks a path that was decoded without checking (see the type's docs).
    pub(crate) fn check(&self) -> Result<(), ProtoError> {
        validate_path(&self.0)
    }

    /// A path from a frozen schema's payload, checked by [`crate::codec::decode`].
    pub(crate) fn decoded(path: String) -> Self {
        Self(path)
    }
}

impl std::ops::Deref for RoutePath {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoutePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for RoutePath {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, ProtoError> {
        Self::new(s)
    }
}

impl PartialEq<str> for RoutePath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RoutePath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl<'de> Deserialize<'de> for RoutePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let path = String::deserialize(d)?;
        Self::new(path).map_err(serde::de::Error::custom)
    }
}

/// Whether `path` looks escaped twice, as people write it after migrating from
/// vulcaningress: it built routes with Go *interpreted* strings, so `/v1/\\d+` meant
/// `/v1/\d+` there, while here (raw strings) it means a literal backslash followed by `d`.
/// Accepted (a literal backslash is legal), but worth a warning.
pub fn looks_double_escaped(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'\\' && w[1] == b'\\' && b"dDsSwWbBpPnrtfvx.*+?()[]{}|^$/".contains(&w[2])
    })
}

/// The vulcand route expression: `Host(`host`) && PathRegexp(`path`)`.
///
/// The host is checked here and the path is a [`RoutePath`], so an expression vulcand
/// cannot parse can never be built.
pub fn route_expression(host: &str, path: &RoutePath) -> Result<String, ProtoError> {
    names::validate_hostname(host)?;
    Ok(format!("Host(`{host}`) && PathRegexp(`{path}`)"))
}

/// Reads back a route expression: Ok((host, path)) when it is exactly what
/// [`route_expression`] builds for a valid host and path (so vulcand can load it), an error
/// saying why not otherwise. Used to audit frontends already in etcd.
pub fn parse_route_expression(expr: &str) -> Result<(String, RoutePath), ProtoError> {
    let not_ours = || {
        ProtoError::InvalidEvent(format!(
            "route {expr:?} is not of the form Host(`host`) && PathRegexp(`path`)"
        ))
    };
    let rest = expr.strip_prefix("Host(`").ok_or_else(not_ours)?;
    let (host, rest) = rest.split_once("`) && PathRegexp(`").ok_or_else(not_ours)?;
    let path = RoutePath::new(rest.strip_suffix("`)").ok_or_else(not_ours)?)?;
    if route_expression(host, &path)? != expr {
        return Err(not_ours());
    }
    Ok((host.to_owned(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seeds_paths() {
        for ok in [
            DEFAULT_PATH,
            "/mycontext/.*",
            "/contextpath/.*",
            "^/api/v[0-9]+/",
            "/a--b",
        ] {
            validate_path(ok).unwrap();
        }
    }

    #[test]
    fn rejects_unquotable_or_invalid_paths() {
        for (bad, why) in [
            ("", "empty"),
            ("/a`b", "backtick"),
            ("/a\nb", "control"),
            ("/(unclosed", "missing closing )"),
            ("/x{5000}", "invalid repeat count"),
            ("/static/**", "invalid nested repetition operator"),
            (" /api", "white space"),
            ("/api\u{feff}", "byte order mark"),
        ] {
            let err = validate_path(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn route_expression_uses_raw_strings() {
        assert_eq!(
            route_expression(
                "web-default.test.service.consul",
                &RoutePath::default_path()
            )
            .unwrap(),
            "Host(`web-default.test.service.consul`) && PathRegexp(`/.*`)"
        );
        let root = RoutePath::new("/").unwrap();
        assert!(RoutePath::new("/`").is_err());
        assert!(route_expression("Web.example.com", &root).is_err());
        assert!(route_expression("a b", &root).is_err());
    }

    #[test]
    fn route_expressions_read_back_only_when_vulcand_can_load_them() {
        let api = RoutePath::new("/api/.*").unwrap();
        let expr = route_expression("web-default.test.service.consul", &api).unwrap();
        assert_eq!(
            parse_route_expression(&expr).unwrap(),
            ("web-default.test.service.consul".into(), api)
        );
        let bad = "Host(`gamma-default.test.service.consul`) && PathRegexp(`/static/**`)";
        let err = parse_route_expression(bad).unwrap_err();
        assert!(err.to_string().contains("nested repetition"), "{err}");
        assert!(parse_route_expression("Path(`/`)").is_err());
    }

    #[test]
    fn a_route_path_is_checked_when_made_and_when_read_back() {
        assert_eq!(RoutePath::new("/api/.*").unwrap(), "/api/.*");
        assert!("/static/**".parse::<RoutePath>().is_err());
        let json = serde_json::to_string(&RoutePath::default_path()).unwrap();
        assert_eq!(json, r#""/.*""#);
        assert!(serde_json::from_str::<RoutePath>(&json).is_ok());
        let err = serde_json::from_str::<RoutePath>(r#""/static/**""#).unwrap_err();
        assert!(err.to_string().contains("nested repetition"), "{err}");
    }

    #[test]
    fn double_escapes_from_vulcaningress_are_spotted() {
        assert!(looks_double_escaped(r"/v1/\\d+"));
        assert!(looks_double_escaped(r"/a\\.b"));
        assert!(!looks_double_escaped(r"/v1/\d+"));
        assert!(!looks_double_escaped("/.*"));
    }
}
