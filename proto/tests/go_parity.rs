//! Differential checks against Go: our verdicts equal those Go itself wrote.
//!
//! `proto/tests/golden/go-regexp.tsv` holds Go's verdict on every pattern of a generated
//! corpus (`ok` only when every checked Go release compiles it), and `go-route.tsv` Go's
//! verdict on whole vulcand route expressions, parsed the way vulcand parses them. Both were
//! written by `scripts/go-oracle.sh`, which runs Go; these tests need no Go.

use std::path::PathBuf;

use ksr_proto::{RoutePath, goregexp, route};

fn golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unquote(s: &str) -> String {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad golden string {s}: {e}"))
}

#[test]
fn regexp_verdicts_equal_gos_on_the_whole_corpus() {
    let text = golden("go-regexp.tsv");
    let (mut checked, mut accepted) = (0, 0);
    let mut wrong = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (verdict, quoted) = line.split_once('\t').expect("verdict<TAB>pattern");
        let pattern = unquote(quoted);
        let go_ok = verdict == "ok";
        let ours = goregexp::check(&pattern);
        if ours.is_ok() != go_ok {
            wrong.push(format!("{quoted}: Go {verdict}, ours {ours:?}"));
        }
        checked += 1;
        accepted += usize::from(go_ok);
    }
    assert!(checked > 30_000, "the corpus is too small: {checked}");
    assert!(accepted > 5_000, "too few valid patterns: {accepted}");
    assert!(
        wrong.is_empty(),
        "{} of {checked} verdicts differ from Go's:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Why we may refuse an expression Go would parse: rules of ours that are stricter on purpose.
fn deliberate(err: &ksr_proto::ProtoError) -> bool {
    let text = err.to_string();
    [
        "white space",
        "control character",
        "at most 1024 bytes",
        "invalid hostname",
    ]
    .iter()
    .any(|r| text.contains(r))
}

#[test]
fn every_route_expression_we_build_parses_in_go_as_vulcand_parses_it() {
    let text = golden("go-route.tsv");
    let (mut built, mut stricter) = (0, 0);
    let mut wrong = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let f: Vec<&str> = line.split('\t').collect();
        let [verdict, host, path, expr] = f[..] else {
            panic!("bad golden line {line}");
        };
        let (host, path, expr) = (unquote(host), unquote(path), unquote(expr));
        let built_route =
            RoutePath::new(path.as_str()).and_then(|p| route::route_expression(&host, &p));
        match built_route {
            // What we build must parse, to the same host and path, and be that exact string.
            Ok(ours) => {
                built += 1;
                if verdict != "ok" || ours != expr {
                    wrong.push(format!(
                        "{host:?} {path:?}: Go {verdict}, we built {ours:?}"
                    ));
                }
            }
            // What we refuse and Go parses must be refused by a deliberate rule of ours.
            Err(e) if verdict == "ok" => {
                stricter += 1;
                if !deliberate(&e) {
                    wrong.push(format!("{host:?} {path:?}: Go ok, we refuse: {e}"));
                }
            }
            Err(_) => {}
        }
    }
    assert!(built > 20_000, "too few expressions built: {built}");
    assert!(
        wrong.is_empty(),
        "{} disagreements ({stricter} deliberate refusals):\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
