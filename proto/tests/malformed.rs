//! Malformed input gives typed errors, never panics: truncation, foreign bytes, garbage.

mod common;

use ksr_proto::{ProtoError, codec};
use proptest::prelude::*;

fn added_bytes() -> Vec<u8> {
    codec::encode(&common::golden_v1()[0].1).expect("golden event encodes")
}

#[test]
fn every_truncation_of_a_valid_event_is_an_error() {
    let bytes = added_bytes();
    for len in 0..bytes.len() {
        let err = codec::decode(&bytes[..len]).unwrap_err();
        let expected = if len < codec::HEADER_LEN {
            "truncated"
        } else {
            "malformed"
        };
        assert_eq!(err.reason(), expected, "len {len}: {err}");
    }
}

#[test]
fn header_errors_are_typed() {
    let mut bytes = added_bytes();
    bytes[0] = b'X';
    assert!(matches!(
        codec::decode(&bytes),
        Err(ProtoError::BadMagic { .. })
    ));

    let mut bytes = added_bytes();
    bytes[2] = 99;
    let err = codec::decode(&bytes).unwrap_err();
    assert!(
        matches!(err, ProtoError::UnknownVersion { found: 99, .. }),
        "{err}"
    );

    let mut bytes = added_bytes();
    bytes.push(0);
    assert!(matches!(
        codec::decode(&bytes),
        Err(ProtoError::TrailingBytes { extra: 1 })
    ));
}

#[test]
fn a_decodable_but_invalid_event_is_rejected() {
    let mut event = common::golden_v1()[0].1.clone();
    event.key.namespace = "Not_Valid".into();
    // Written by hand at the newest version (the in-memory event's own layout), bypassing
    // encode.
    let mut bytes = codec::MAGIC.to_vec();
    bytes.extend_from_slice(&codec::SCHEMA_VERSION.to_le_bytes());
    bytes.extend(bincode::encode_to_vec(&event, bincode::config::standard()).unwrap());
    assert_eq!(codec::decode(&bytes).unwrap_err().reason(), "invalid_name");
    assert_eq!(codec::encode(&event).unwrap_err().reason(), "invalid_name");
}

#[test]
fn a_huge_length_prefix_is_refused_without_allocating() {
    // Header, then a varint claiming a string of u64::MAX bytes.
    let mut bytes = codec::MAGIC.to_vec();
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.push(253);
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(codec::decode(&bytes).unwrap_err().reason(), "malformed");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn random_payload_behind_a_valid_header_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        let mut bytes = codec::MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend(payload);
        let _ = codec::decode(&bytes);
    }

    #[test]
    fn flipped_bytes_in_a_valid_event_never_panic(idx in any::<prop::sample::Index>(), val in any::<u8>()) {
        let mut bytes = added_bytes();
        let i = idx.index(bytes.len());
        bytes[i] = val;
        let _ = codec::decode(&bytes);
    }
}
