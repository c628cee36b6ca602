//! The one error type of the `proto` crate.

/// Everything that can be wrong with an event, a name or a route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("event is {len} bytes, shorter than the {min}-byte envelope header")]
    Truncated { len: usize, min: usize },
    #[error("not a ksr event: bad magic bytes {found:02x?}")]
    BadMagic { found: [u8; 2] },
    #[error("unknown schema version {found}; this build decodes versions 1..={supported}")]
    UnknownVersion { found: u16, supported: u16 },
    #[error("malformed v{version} payload: {reason}")]
    Malformed { version: u16, reason: String },
    #[error("payload has {extra} trailing bytes after the event")]
    TrailingBytes { extra: usize },
    #[error("event could not be encoded: {0}")]
    Encode(String),
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid path {value:?}: {reason}")]
    InvalidPath { value: String, reason: String },
    #[error("invalid path {value:?}: Go's regexp refuses it: {source}")]
    PathSyntax {
        value: String,
        #[source]
        source: crate::goregexp::SyntaxError,
    },
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    #[error("unreadable checkpoint: {0}")]
    Checkpoint(String),
}

impl ProtoError {
    /// A short, fixed reason usable as a metric label (bounded cardinality).
    pub fn reason(&self) -> &'static str {
        match self {
            ProtoError::Truncated { .. } => "truncated",
            ProtoError::BadMagic { .. } => "bad_magic",
            ProtoError::UnknownVersion { .. } => "unknown_version",
            ProtoError::Malformed { .. } => "malformed",
            ProtoError::TrailingBytes { .. } => "trailing_bytes",
            ProtoError::Encode(_) => "encode",
            ProtoError::InvalidName { .. } => "invalid_name",
            ProtoError::InvalidPath { .. } | ProtoError::PathSyntax { .. } => "invalid_path",
            ProtoError::InvalidEvent(_) => "invalid_event",
            ProtoError::Checkpoint(_) => "checkpoint",
        }
    }
}
