//! Golden vectors: every released schema version's bytes must decode forever.
//!
//! `KSR_BLESS=1 cargo test -p ksr-proto --test golden` writes the vectors of the current
//! version; never re-bless a released version — add new files instead.

mod common;

use std::path::PathBuf;

use ksr_proto::{Event, codec};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// With `KSR_BLESS` set, writes the newest version's vectors (once per test binary).
fn bless_if_requested() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var_os("KSR_BLESS").is_none() {
        return;
    }
    ONCE.call_once(|| {
        for (stem, event) in common::golden_v3() {
            let bin = golden_dir().join(format!("{stem}.bin"));
            let json = golden_dir().join(format!("{stem}.json"));
            let bytes = codec::encode(&event).expect("golden events are valid");
            std::fs::write(&bin, bytes).expect("write golden .bin");
            let text = serde_json::to_string_pretty(&event).expect("events serialize") + "\n";
            std::fs::write(&json, text).expect("write golden .json");
        }
    });
}

#[test]
fn golden_vectors_decode_to_the_recorded_events() {
    bless_if_requested();
    for (stem, _, event) in common::golden_all() {
        let bin = golden_dir().join(format!("{stem}.bin"));
        let json = golden_dir().join(format!("{stem}.json"));
        let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let decoded = codec::decode(&bytes).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let recorded: Event = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(decoded, recorded, "{stem} decodes to its recorded JSON");
        assert_eq!(decoded, event, "{stem} matches the event the test builds");
    }
}

#[test]
fn current_version_encodes_byte_identically_to_its_golden_vectors() {
    bless_if_requested();
    for (stem, version, event) in common::golden_all() {
        let bytes = std::fs::read(golden_dir().join(format!("{stem}.bin"))).unwrap();
        assert_eq!(codec::encode(&event).unwrap(), bytes, "{stem}");
        assert_eq!(codec::peek_version(&bytes).unwrap(), version, "{stem}");
    }
}
