//! vulcand route rules: which path regexps are safe to write, and the route expression itself.
//!
//! vulcand parses a route as a Go expression and compiles `PathRegexp` with Go's `regexp`
//! (Perl flags); one frontend it cannot parse stops every vulcand that starts afterwards. A
//! path is accepted exactly when Go accepts it ([`goregexp`], proven against Go itself), and
//! when it can be quoted as a Go raw string (no backtick, no control character, no byte
//! order mark) and can match a request (no white space at either end).

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
/// Both arguments are checked here, so an expression vulcand cannot parse can never be
/// built: the host must be a lower-case DNS name, the path a valid [`validate_path`].
pub fn route_expression(host: &str, path: &str) -> Result<String, ProtoError> {
    names::validate_hostname(host)?;
    validate_path(path)?;
    Ok(format!("Host(`{host}`) && PathRegexp(`{path}`)"))
}

/// Reads back a route expression: Ok((host, path)) when it is exactly what
/// [`route_expression`] builds for a valid host and path (so vulcand can load it), an error
/// saying why not otherwise. Used to audit frontends already in etcd.
pub fn parse_route_expression(expr: &str) -> Result<(String, String), ProtoError> {
    let not_ours = || {
        ProtoError::InvalidEvent(format!(
            "route {expr:?} is not of the form Host(`host`) && PathRegexp(`path`)"
        ))
    };
    let rest = expr.strip_prefix("Host(`").ok_or_else(not_ours)?;
    let (host, rest) = rest.split_once("`) && PathRegexp(`").ok_or_else(not_ours)?;
    let path = rest.strip_suffix("`)").ok_or_else(not_ours)?;
    if route_expression(host, path)? != expr {
        return Err(not_ours());
    }
    Ok((host.to_owned(), path.to_owned()))
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
            route_expression("web-default.test.service.consul", "/.*").unwrap(),
            "Host(`web-default.test.service.consul`) && PathRegexp(`/.*`)"
        );
        assert!(route_expression("h", "/`").is_err());
        assert!(route_expression("Web.example.com", "/").is_err());
        assert!(route_expression("a b", "/").is_err());
    }

    #[test]
    fn route_expressions_read_back_only_when_vulcand_can_load_them() {
        let expr = route_expression("web-default.test.service.consul", "/api/.*").unwrap();
        assert_eq!(
            parse_route_expression(&expr).unwrap(),
            ("web-default.test.service.consul".into(), "/api/.*".into())
        );
        let bad = "Host(`gamma-default.test.service.consul`) && PathRegexp(`/static/**`)";
        let err = parse_route_expression(bad).unwrap_err();
        assert!(err.to_string().contains("nested repetition"), "{err}");
        assert!(parse_route_expression("Path(`/`)").is_err());
    }

    #[test]
    fn double_escapes_from_vulcaningress_are_spotted() {
        assert!(looks_double_escaped(r"/v1/\\d+"));
        assert!(looks_double_escaped(r"/a\\.b"));
        assert!(!looks_double_escaped(r"/v1/\d+"));
        assert!(!looks_double_escaped("/.*"));
    }
}
