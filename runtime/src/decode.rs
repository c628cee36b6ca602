//! Reading one stream message as an event: what can be wrong with it, typed, with the short
//! reason every metric and log line labels it with.

use ksr_proto::{Event, ProtoError, ServiceKey, codec, subject};

/// Why a stream message is not an event we can apply (poison: terminated, never retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not a valid event (version, framing, names, route).
    #[error(transparent)]
    Payload(ProtoError),
    /// The subject is not a route subject.
    #[error("bad subject: {0}")]
    Subject(#[source] ProtoError),
    /// The subject names another Service than the event.
    #[error("subject {subject} carries an event for {key}")]
    SubjectMismatch { subject: String, key: ServiceKey },
}

impl DecodeError {
    /// A short, fixed label (`ksr_<publisher>_events_terminated_total{reason}`, logs).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Payload(e) => e.reason(),
            DecodeError::Subject(_) => "bad_subject",
            DecodeError::SubjectMismatch { .. } => "subject_mismatch",
        }
    }
}

/// Decodes one message and checks that its subject names the event's Service.
pub fn decode_message(msg: &async_nats::Message) -> Result<Event, DecodeError> {
    let event = codec::decode(&msg.payload).map_err(DecodeError::Payload)?;
    let key = subject::parse_subject(msg.subject.as_str()).map_err(DecodeError::Subject)?;
    if key != event.key {
        return Err(DecodeError::SubjectMismatch {
            subject: msg.subject.to_string(),
            key: event.key,
        });
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksr_proto::Change;

    fn message(subject: &str, payload: Vec<u8>) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            length: payload.len(),
            payload: payload.into(),
            headers: None,
            status: None,
            description: None,
        }
    }

    fn removed(name: &str) -> Event {
        Event {
            key: ServiceKey::new("east", "ns", name),
            change: Change::Removed,
            resource_version: "1".into(),
            observed_unix_ms: 0,
            observer: String::new(),
            manager: None,
        }
    }

    #[test]
    fn every_kind_of_poison_is_named_by_its_reason() -> Result<(), ProtoError> {
        let a = removed("a");
        let bytes = codec::encode(&a)?;
        let good = decode_message(&message(&subject::subject(&a.key), bytes.clone()));
        assert_eq!(good, Ok(a.clone()));
        let other = subject::subject(&removed("b").key);
        let mismatch = decode_message(&message(&other, bytes.clone())).unwrap_err();
        assert_eq!(mismatch.reason(), "subject_mismatch");
        assert!(mismatch.to_string().contains(&other), "{mismatch}");
        let bad = decode_message(&message("not.a.route", bytes)).unwrap_err();
        assert_eq!(bad.reason(), "bad_subject");
        let garbage =
            decode_message(&message(&subject::subject(&a.key), vec![0xff; 3])).unwrap_err();
        assert!(matches!(garbage, DecodeError::Payload(_)), "{garbage:?}");
        Ok(())
    }
}
