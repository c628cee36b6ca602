//! Our label-selector parser against the apiserver's own (`k8s.io/apimachinery/pkg/labels`):
//! the verdict on every selector of the corpus, and which label sets each accepted one
//! selects. The golden file was written by `scripts/go-oracle.sh`; this test needs no Go.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ksr_proto::selector::LabelSelector;

#[test]
fn selectors_parse_and_match_exactly_as_the_apiserver_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/k8s-selectors.tsv");
    let text = std::fs::read_to_string(&path).expect("golden selector corpus");
    let sets: Vec<BTreeMap<String, String>> = text
        .lines()
        .find_map(|l| l.strip_prefix("# sets: "))
        .map(|json| serde_json::from_str(json).expect("label sets"))
        .expect("a sets line");
    let (mut checked, mut accepted) = (0, 0);
    let mut wrong = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut f = line.split('\t');
        let (verdict, quoted, selected) = (
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
        );
        let selector: String = serde_json::from_str(quoted).expect("a JSON string");
        checked += 1;
        match (verdict, selector.parse::<LabelSelector>()) {
            ("ok", Ok(ours)) => {
                accepted += 1;
                let ours: Vec<String> = sets
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| ours.matches(s))
                    .map(|(i, _)| i.to_string())
                    .collect();
                if ours.join(",") != selected {
                    wrong.push(format!(
                        "{quoted}: selects {ours:?}, the apiserver {selected}"
                    ));
                }
            }
            ("err", Err(_)) => {}
            (v, ours) => wrong.push(format!("{quoted}: apiserver {v}, ours {ours:?}")),
        }
    }
    assert!(
        checked > 5_000 && accepted > 2_000,
        "{checked} checked, {accepted} accepted"
    );
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ:\n{}",
        wrong.len(),
        wrong
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
