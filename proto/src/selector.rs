//! Kubernetes label selectors, parsed and matched as the apiserver does it.
//!
//! A port of `k8s.io/apimachinery/pkg/labels` (its lexer, parser, requirement validation and
//! matching): equality (`=`, `==`, `!=`), set-based (`in`, `notin`), existence (`key`,
//! `!key`) and `>`/`<`. The selector is parsed once at start-up; the Kubernetes source sends
//! the same text to the apiserver (so the server filters), the files source matches with
//! [`LabelSelector::matches`] (and so does the test suite's fake apiserver). Agreement with the apiserver's own parser is proven by the
//! golden corpus `proto/tests/golden/k8s-selectors.tsv` (`scripts/go-oracle.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Why a selector does not parse (the apiserver's wording where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Equals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: BTreeSet<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            Op::In | Op::Equals => value.is_some_and(|v| self.values.contains(v)),
            Op::NotIn | Op::NotEquals => value.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(have), Some(want)) = (
                    value.and_then(|v| parse_int(v)),
                    self.values.iter().next().and_then(|v| parse_int(v)),
                ) else {
                    return false;
                };
                if self.op == Op::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// Go's `strconv.ParseInt(s, 10, 64)`: an optional sign, then decimal digits.
fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A parsed label selector; displays as the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    text: String,
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether a Service with `labels` is selected (every requirement holds).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The selector's text, as the apiserver accepts it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let fail = |reason: String| SelectorError {
            selector: s.to_owned(),
            reason,
        };
        let tokens = lex(s);
        let requirements = Parser { tokens, pos: 0 }.parse().map_err(fail)?;
        Ok(LabelSelector {
            text: s.to_owned(),
            requirements,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Error(String),
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier(String),
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

impl Token {
    fn literal(&self) -> &str {
        match self {
            Token::Error(s) | Token::Identifier(s) => s,
            Token::End => "",
            Token::ClosedPar => ")",
            Token::Comma => ",",
            Token::DoesNotExist => "!",
            Token::DoubleEquals => "==",
            Token::Equals => "=",
            Token::GreaterThan => ">",
            Token::In => "in",
            Token::LessThan => "<",
            Token::NotEquals => "!=",
            Token::NotIn => "notin",
            Token::OpenPar => "(",
        }
    }

    /// In a list of values, `in` and `notin` are ordinary identifiers.
    fn in_values(self) -> Token {
        match self {
            Token::In => Token::Identifier("in".into()),
            Token::NotIn => Token::Identifier("notin".into()),
            t => t,
        }
    }
}

fn symbol(s: &[u8]) -> Option<Token> {
    Some(match s {
        b")" => Token::ClosedPar,
        b"," => Token::Comma,
        b"!" => Token::DoesNotExist,
        b"==" => Token::DoubleEquals,
        b"=" => Token::Equals,
        b">" => Token::GreaterThan,
        b"<" => Token::LessThan,
        b"!=" => Token::NotEquals,
        b"(" => Token::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// The apiserver's lexer: every token up to and including the end (a NUL byte ends too).
fn lex(s: &str) -> Vec<Token> {
    let b = s.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while is_whitespace(at(pos)) {
            pos += 1;
        }
        let c = at(pos);
        if c == 0 {
            out.push(Token::End);
            return out;
        }
        if is_special(c) {
            // The longest run of special symbols that is a token.
            let start = pos;
            let mut last: Option<(Token, usize)> = None;
            while is_special(at(pos)) {
                pos += 1;
                if let Some(t) = symbol(&b[start..pos]) {
                    last = Some((t, pos));
                } else if last.is_some() {
                    break;
                }
            }
            match last {
                Some((t, end)) => {
                    pos = end;
                    out.push(t);
                }
                None => {
                    let found = String::from_utf8_lossy(&b[start..pos]);
                    out.push(Token::Error(format!(
                        "error expected: keyword found '{found}'"
                    )));
                }
            }
            continue;
        }
        let start = pos;
        while !matches!(at(pos), 0) && !is_special(at(pos)) && !is_whitespace(at(pos)) {
            pos += 1;
        }
        out.push(match &s[start..pos] {
            "in" => Token::In,
            "notin" => Token::NotIn,
            word => Token::Identifier(word.to_owned()),
        });
    }
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn lookahead(&self) -> Token {
        self.tokens
            .get(self.pos)
            .cloned()
            .unwrap_or(Token::End)
            .in_values()
    }

    fn consume_raw(&mut self) -> Token {
        let t = self.tokens.get(self.pos).cloned().unwrap_or(Token::End);
        self.pos += 1;
        t
    }

    fn consume(&mut self) -> Token {
        self.consume_raw().in_values()
    }

    fn parse(mut self) -> Result<Vec<Requirement>, String> {
        let mut out = Vec::new();
        loop {
            match self.lookahead() {
                Token::Identifier(_) | Token::DoesNotExist => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    out.push(r);
                    match self.consume() {
                        Token::End => return Ok(out),
                        Token::Comma => match self.lookahead() {
                            Token::Identifier(_) | Token::DoesNotExist => {}
                            t => {
                                return Err(format!(
                                    "found '{}', expected: identifier after ','",
                                    t.literal()
                                ));
                            }
                        },
                        t => {
                            return Err(format!(
                                "found '{}', expected: ',' or 'end of string'",
                                t.literal()
                            ));
                        }
                    }
                }
                Token::End => return Ok(out),
                t => {
                    return Err(format!(
                        "found '{}', expected: !, identifier, or 'end of string'",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let (key, inferred) = self.key_and_inferred_operator()?;
        if let Some(op) = inferred {
            return Ok(Requirement {
                key,
                op,
                values: BTreeSet::new(),
            });
        }
        let op = match self.consume_raw() {
            Token::In => Op::In,
            Token::Equals | Token::DoubleEquals => Op::Equals,
            Token::GreaterThan => Op::GreaterThan,
            Token::LessThan => Op::LessThan,
            Token::NotIn => Op::NotIn,
            Token::NotEquals => Op::NotEquals,
            t => {
                return Err(format!(
                    "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    t.literal()
                ));
            }
        };
        let values = match op {
            Op::In | Op::NotIn => self.values()?,
            _ => self.exact_value()?,
        };
        if matches!(op, Op::In | Op::NotIn) && values.is_empty() {
            return Err("for 'in', 'notin' operators, values set can't be empty".into());
        }
        if matches!(op, Op::GreaterThan | Op::LessThan)
            && !values.iter().all(|v| parse_int(v).is_some())
        {
            return Err("for 'Gt', 'Lt' operators, the value must be an integer".into());
        }
        for v in &values {
            validate_label_value(v)?;
        }
        Ok(Requirement { key, op, values })
    }

    /// The key, and `Exists`/`DoesNotExist` when no operator follows it.
    fn key_and_inferred_operator(&mut self) -> Result<(String, Option<Op>), String> {
        let mut t = self.consume();
        let negated = t == Token::DoesNotExist;
        if negated {
            t = self.consume();
        }
        let Token::Identifier(key) = t else {
            return Err(format!("found '{}', expected: identifier", t.literal()));
        };
        validate_label_key(&key)?;
        let op = if negated {
            Some(Op::DoesNotExist)
        } else if matches!(self.lookahead(), Token::End | Token::Comma) {
            Some(Op::Exists)
        } else {
            None
        };
        Ok((key, op))
    }

    fn values(&mut self) -> Result<BTreeSet<String>, String> {
        let t = self.consume();
        if t != Token::OpenPar {
            return Err(format!("found '{}' expected: '('", t.literal()));
        }
        match self.lookahead() {
            Token::Identifier(_) | Token::Comma => {
                let set = self.identifiers()?;
                let t = self.consume();
                if t != Token::ClosedPar {
                    return Err(format!("found '{}', expected: ')'", t.literal()));
                }
                Ok(set)
            }
            Token::ClosedPar => {
                self.consume();
                Ok(BTreeSet::from([String::new()]))
            }
            t => Err(format!(
                "found '{}', expected: ',', ')' or identifier",
                t.literal()
            )),
        }
    }

    fn identifiers(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            match self.consume() {
                Token::Identifier(v) => {
                    set.insert(v);
                    match self.lookahead() {
                        Token::Comma => continue,
                        Token::ClosedPar => return Ok(set),
                        t => return Err(format!("found '{}', expected: ',' or ')'", t.literal())),
                    }
                }
                Token::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    match self.lookahead() {
                        Token::ClosedPar => {
                            set.insert(String::new());
                            return Ok(set);
                        }
                        Token::Comma => {
                            self.consume();
                            set.insert(String::new());
                        }
                        _ => {}
                    }
                }
                t => {
                    return Err(format!(
                        "found '{}', expected: ',', or identifier",
                        t.literal()
                    ));
                }
            }
        }
    }

    fn exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        if matches!(self.lookahead(), Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.consume() {
            Token::Identifier(v) => Ok(BTreeSet::from([v])),
            t => Err(format!("found '{}', expected: identifier", t.literal())),
        }
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 bytes, or empty when `allow_empty`.
fn is_qualified_part(s: &str, allow_empty: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return allow_empty;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// An RFC 1123 subdomain: lower-case labels joined by dots, at most 253 bytes.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A label key: a qualified name with an optional DNS subdomain prefix and `/`.
fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split('/').collect::<Vec<_>>()[..] {
        [name] => (None, name),
        [prefix, name] => (Some(prefix), name),
        _ => return Err(format!("invalid label key {key:?}: more than one '/'")),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Err(format!(
            "invalid label key {key:?}: the prefix must be a DNS subdomain"
        ));
    }
    if !is_qualified_part(name, false) {
        return Err(format!(
            "invalid label key {key:?}: the name part must be 1-63 characters of [-A-Za-z0-9_.], \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if is_qualified_part(value, true) {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters of [-A-Za-z0-9_.], starting \
             and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn set_based_selectors_match_as_kubernetes_matches_them() {
        let sel: LabelSelector = "type=ingress,env in (prod,staging),!canary"
            .parse()
            .unwrap();
        assert!(sel.matches(&labels(&[("type", "ingress"), ("env", "prod")])));
        assert!(!sel.matches(&labels(&[("type", "ingress"), ("env", "dev")])));
        assert!(!sel.matches(&labels(&[
            ("type", "ingress"),
            ("env", "prod"),
            ("canary", "1")
        ])));
        let notin: LabelSelector = "tier notin (x)".parse().unwrap();
        assert!(notin.matches(&labels(&[])));
        assert!(!notin.matches(&labels(&[("tier", "x")])));
    }

    #[test]
    fn what_the_old_comma_split_got_wrong_is_refused_or_right_now() {
        // Splitting on commas made `env in (prod,staging)` two terms matching nothing.
        let sel: LabelSelector = "env in (prod,staging)".parse().unwrap();
        assert!(sel.matches(&labels(&[("env", "staging")])));
        for bad in [
            "type=ingress,",
            "env in (prod",
            "a=b c",
            "env IN (prod)",
            "!a=b",
        ] {
            assert!(bad.parse::<LabelSelector>().is_err(), "{bad:?}");
        }
    }
}
