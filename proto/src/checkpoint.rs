//! Routing-table checkpoints: every routed Service's newest event as of one stream sequence,
//! so an audit replays only the events after it.
//!
//! ```text
//!  0      2          4
//!  | "KC" | version  | bincode(standard config) of the checkpoint of that version |
//!         (u16, LE)
//! ```
//!
//! Events inside are kept in their wire form (the event [`codec`](crate::codec)), so loading
//! a checkpoint decodes and validates every event exactly as a replay of the stream would,
//! and a checkpoint stays readable for as long as its events are.

use bincode::config;

use crate::ProtoError;

/// Magic bytes that open every checkpoint.
pub const MAGIC: [u8; 2] = *b"KC";
/// The checkpoint format this build writes.
pub const VERSION: u16 = 1;
/// The largest checkpoint decoded; anything larger is refused before allocating.
pub const MAX_LEN: usize = 1 << 30;
/// At most this many unreadable events are listed; the rest are only counted.
pub const MAX_UNREADABLE: usize = 1000;

/// The routing table at stream sequence `seq` of one incarnation of a stream.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Checkpoint {
    /// The stream's name.
    pub stream: String,
    /// When the stream was created (ns since the Unix epoch): a stream deleted and created
    /// again under the same name restarts its sequences, and its old checkpoints are void.
    pub stream_created_unix_ns: i64,
    /// Every event up to and including this sequence is accounted for.
    pub seq: u64,
    /// When the stream stored the event at `seq`.
    pub published_unix_ns: i64,
    /// The newest event of every Service routed at `seq`.
    pub entries: Vec<Entry>,
    /// Events up to `seq` that could not be decoded (the first [`MAX_UNREADABLE`]).
    pub unreadable: Vec<Unreadable>,
    /// Unreadable events beyond those listed.
    pub unreadable_unlisted: u64,
}

/// One routed Service: the event that set its route, and when the stream stored it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Entry {
    pub seq: u64,
    pub published_unix_ns: i64,
    /// The event as the [`codec`](crate::codec) encodes it.
    pub event: Vec<u8>,
}

/// An event that could not be decoded, as a replay reported it.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Unreadable {
    pub seq: u64,
    pub subject: String,
    pub reason: String,
    pub message: String,
}

fn bincode_config() -> impl config::Config {
    config::standard().with_limit::<MAX_LEN>()
}

/// Encodes a checkpoint at the current format version.
pub fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(64 + checkpoint.entries.len() * 160);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    bincode::encode_into_std_write(checkpoint, &mut out, bincode_config())
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a checkpoint. The events inside are not decoded here (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, ProtoError> {
    let bad = |reason: String| ProtoError::Checkpoint(reason);
    if bytes.len() < 4 {
        return Err(bad(format!(
            "{} bytes, shorter than its header",
            bytes.len()
        )));
    }
    if bytes[..2] != MAGIC {
        return Err(bad(format!("bad magic bytes {:02x?}", &bytes[..2])));
    }
    let version = u16::from_le_bytes([bytes[2], bytes[3]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}; this build reads version {VERSION}"
        )));
    }
    let payload = &bytes[4..];
    if payload.len() > MAX_LEN {
        return Err(bad(format!("{} bytes exceed {MAX_LEN}", payload.len())));
    }
    let (checkpoint, used): (Checkpoint, usize) =
        bincode::decode_from_slice(payload, bincode_config()).map_err(|e| bad(e.to_string()))?;
    if used != payload.len() {
        return Err(bad(format!(
            "{} trailing bytes after the checkpoint",
            payload.len() - used
        )));
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            stream: "KSR_ROUTES".into(),
            stream_created_unix_ns: 1_764_230_400_000_000_000,
            seq: 100_000,
            published_unix_ns: 1_764_230_500_000_000_000,
            entries: vec![Entry {
                seq: 99_999,
                published_unix_ns: 1_764_230_499_000_000_000,
                event: b"KS\x01\x00event".to_vec(),
            }],
            unreadable: vec![Unreadable {
                seq: 4,
                subject: "ksr.routes.east.shop.web".into(),
                reason: "bad_magic".into(),
                message: "not a ksr event".into(),
            }],
            unreadable_unlisted: 0,
        }
    }

    #[test]
    fn a_checkpoint_round_trips() {
        let c = sample();
        assert_eq!(decode(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn damaged_checkpoints_are_errors_not_panics() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut foreign = bytes.clone();
        foreign[0] = b'X';
        assert!(decode(&foreign).unwrap_err().to_string().contains("magic"));
        let mut newer = bytes.clone();
        newer[2] = 9;
        assert!(
            decode(&newer)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
        let mut longer = bytes;
        longer.push(0);
        assert!(
            decode(&longer)
                .unwrap_err()
                .to_string()
                .contains("trailing")
        );
    }
}
