//! The wire codec: a 4-byte envelope header, then the event as bincode 2.0.1.
//!
//! ```text
//!  0      2          4
//!  | "KS" | version  | bincode(standard config) of the event of that schema version |
//!         (u16, LE)
//! ```
//!
//! Decoding is total: truncated, foreign, oversized or garbage bytes give a [`ProtoError`],
//! never a panic, and a decoded event is validated before it is returned. A later schema
//! version adds a new `match` arm and keeps the old types frozen, so the golden vectors under
//! `proto/tests/golden/` (every released version) decode forever.

use bincode::config;

use crate::ProtoError;
use crate::model::Event;

/// Magic bytes that open every event.
pub const MAGIC: [u8; 2] = *b"KS";
/// The schema version this build writes.
pub const SCHEMA_VERSION: u16 = 1;
/// Envelope header length.
pub const HEADER_LEN: usize = 4;
/// The largest payload we decode; anything larger is refused before allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;

fn bincode_config() -> impl config::Config {
    config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Validates and encodes an event at the current schema version.
pub fn encode(event: &Event) -> Result<Vec<u8>, ProtoError> {
    event.validate()?;
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SCHEMA_VERSION.to_le_bytes());
    bincode::encode_into_std_write(event, &mut out, bincode_config())
        .map_err(|e| ProtoError::Encode(e.to_string()))?;
    Ok(out)
}

/// Reads the schema version from the envelope header without decoding the payload.
pub fn peek_version(bytes: &[u8]) -> Result<u16, ProtoError> {
    if bytes.len() < HEADER_LEN {
        return Err(ProtoError::Truncated {
            len: bytes.len(),
            min: HEADER_LEN,
        });
    }
    let magic = [bytes[0], bytes[1]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic { found: magic });
    }
    Ok(u16::from_le_bytes([bytes[2], bytes[3]]))
}

/// Decodes and validates an event of any supported schema version.
pub fn decode(bytes: &[u8]) -> Result<Event, ProtoError> {
    let version = peek_version(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let event = match version {
        1 => decode_payload::<Event>(1, payload)?,
        found => {
            return Err(ProtoError::UnknownVersion {
                found,
                supported: SCHEMA_VERSION,
            });
        }
    };
    event.validate()?;
    Ok(event)
}

fn decode_payload<T: bincode::Decode<()>>(version: u16, payload: &[u8]) -> Result<T, ProtoError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ProtoError::Malformed {
            version,
            reason: format!("payload of {} bytes exceeds {MAX_PAYLOAD}", payload.len()),
        });
    }
    let (value, used) = bincode::decode_from_slice(payload, bincode_config()).map_err(|e| {
        ProtoError::Malformed {
            version,
            reason: e.to_string(),
        }
    })?;
    if used != payload.len() {
        return Err(ProtoError::TrailingBytes {
            extra: payload.len() - used,
        });
    }
    Ok(value)
}
