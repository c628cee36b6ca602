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
use crate::v1::EventV1;
use crate::v2::EventV2;

/// Magic bytes that open every event.
pub const MAGIC: [u8; 2] = *b"KS";
/// The newest schema version this build writes (and every older one it decodes). An event
/// is written at the oldest version that can carry it ([`version_for`]).
pub const SCHEMA_VERSION: u16 = 3;
/// Envelope header length.
pub const HEADER_LEN: usize = 4;
/// The largest payload we decode; anything larger is refused before allocating.
pub const MAX_PAYLOAD: usize = 1 << 20;

fn bincode_config() -> impl config::Config {
    config::standard().with_limit::<MAX_PAYLOAD>()
}

/// The schema version `event` is written at: the oldest that can carry it (1; 2 for a full
/// hostname; 3 for https to the backends or Consul tags and metadata), so consumers of earlier releases keep reading
/// everything they can represent.
pub fn version_for(event: &Event) -> u16 {
    if EventV1::of(event).is_some() {
        1
    } else if EventV2::of(event).is_some() {
        2
    } else {
        3
    }
}

/// Validates and encodes an event at [`version_for`] it.
pub fn encode(event: &Event) -> Result<Vec<u8>, ProtoError> {
    event.validate()?;
    let version = version_for(event);
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    let written = match (version, EventV1::of(event), EventV2::of(event)) {
        (1, Some(v1), _) => bincode::encode_into_std_write(v1, &mut out, bincode_config()),
        (2, _, Some(v2)) => bincode::encode_into_std_write(v2, &mut out, bincode_config()),
        _ => bincode::encode_into_std_write(event, &mut out, bincode_config()),
    };
    written.map_err(|e| ProtoError::Encode(e.to_string()))?;
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
        1 => decode_payload::<EventV1>(1, payload)?.into(),
        2 => decode_payload::<EventV2>(2, payload)?.into(),
        3 => decode_payload::<Event>(3, payload)?,
        found => {
            return Err(ProtoError::UnknownVersion {
                found,
                supported: SCHEMA_VERSION,
            });
        }
    };
    event.validate()?;
    // Decoding does not check the path (a `RoutePath` is checked where it enters): here.
    if let Some(route) = event.route() {
        route.path.check()?;
    }
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
