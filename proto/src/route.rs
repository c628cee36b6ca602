//! vulcand route rules: which path regexps are safe to write, and the route expression itself.
//!
//! vulcand parses routes as Go expressions and compiles `PathRegexp` with Go's RE2 `regexp`.
//! We quote arguments as Go raw strings (backticks), so a backtick can never be quoted safely;
//! control characters are refused too. The regexp must parse as RE2: we parse it with
//! `regex-syntax` and additionally refuse the Rust-only syntax RE2 lacks.

use regex_syntax::ast::{self, Ast, Visitor};

use crate::ProtoError;

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

/// How many accepted paths each thread remembers (then it forgets them all and starts over).
const ACCEPTED_MEMO: usize = 4096;

thread_local! {
    /// Paths already accepted: decoding a long history validates the same few paths over
    /// and over, and parsing a regexp costs microseconds.
    static ACCEPTED: std::cell::RefCell<std::collections::HashSet<String>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Checks that `path` is a non-empty RE2 regexp that can be quoted as a Go raw string.
pub fn validate_path(path: &str) -> Result<(), ProtoError> {
    if ACCEPTED.with(|a| a.borrow().contains(path)) {
        return Ok(());
    }
    check_path(path)?;
    ACCEPTED.with(|a| {
        let mut a = a.borrow_mut();
        if a.len() >= ACCEPTED_MEMO {
            a.clear();
        }
        a.insert(path.to_owned());
    });
    Ok(())
}

fn check_path(path: &str) -> Result<(), ProtoError> {
    if path.is_empty() {
        return Err(invalid(path, "must not be empty"));
    }
    if path.len() > MAX_PATH {
        return Err(invalid(path, format!("must be at most {MAX_PATH} bytes")));
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
    let ast = ast::parse::Parser::new()
        .parse(path)
        .map_err(|e| invalid(path, format!("not a valid regexp: {}", e.kind())))?;
    ast::visit(&ast, Re2Only).map_err(|reason| invalid(path, reason))?;
    regex_syntax::hir::translate::Translator::new()
        .translate(path, &ast)
        .map_err(|e| invalid(path, format!("not a valid regexp: {}", e.kind())))?;
    Ok(())
}

/// Refuses the syntax `regex-syntax` accepts but Go's RE2 does not.
struct Re2Only;

impl Visitor for Re2Only {
    type Output = ();
    type Err = String;

    fn finish(self) -> Result<(), String> {
        Ok(())
    }

    fn visit_pre(&mut self, ast: &Ast) -> Result<(), String> {
        if let Ast::Repetition(rep) = ast
            && let ast::RepetitionKind::Range(range) = &rep.op.kind
        {
            let max = match *range {
                ast::RepetitionRange::Exactly(n) | ast::RepetitionRange::AtLeast(n) => n,
                ast::RepetitionRange::Bounded(_, n) => n,
            };
            if max > 1000 {
                return Err("repetition count over 1000 is not a valid RE2 regexp".into());
            }
        }
        if let Ast::Assertion(a) = ast {
            use ast::AssertionKind::*;
            match a.kind {
                StartLine | EndLine | StartText | EndText | WordBoundary | NotWordBoundary => {}
                _ => return Err("uses a word-boundary form that RE2 does not support".into()),
            }
        }
        Ok(())
    }

    fn visit_class_set_binary_op_pre(&mut self, _op: &ast::ClassSetBinaryOp) -> Result<(), String> {
        Err("uses a class set operation (&&, --, ~~) that RE2 does not support".into())
    }
}

/// The vulcand route expression: `Host(`host`) && PathRegexp(`path`)`.
///
/// Callers must have validated `path` (and the host is built from validated labels); the
/// function re-checks the quoting rule so an unquotable string can never be emitted.
pub fn route_expression(host: &str, path: &str) -> Result<String, ProtoError> {
    validate_path(path)?;
    if host.contains('`') || host.chars().any(char::is_control) || host.is_empty() {
        return Err(ProtoError::InvalidEvent(format!(
            "host {host:?} cannot be quoted"
        )));
    }
    Ok(format!("Host(`{host}`) && PathRegexp(`{path}`)"))
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
            ("/(unclosed", "regexp"),
            ("/[a-z&&b]", "class set"),
            (r"/\<word", "word-boundary"),
            ("/x{5000}", "regexp"),
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
    }
}
