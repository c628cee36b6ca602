//! Large JSON replies parsed as they stream in, item by item, so a reply that grows with the
//! estate (every record, every instance of a node, a whole etcd v2 directory) is never held
//! whole: at 100,000 Services such replies are 40–100 MB.
//!
//! The body's chunks feed a `serde_json` reader on a blocking thread; the caller's parser
//! (a `DeserializeSeed` walking down to the items) hands each item back over a bounded channel.
//! Memory holds a few chunks and a few hundred items.

use std::io::Read;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

/// The reader a parser gets: the body's chunks, buffered.
pub type Reader = std::io::BufReader<Chunks>;

/// The deserializer a parser gets.
pub type Deserializer = serde_json::Deserializer<serde_json::de::IoRead<Reader>>;

/// Hands one item to the caller; false once the caller is gone (the parser should stop).
pub type Sink<'a, T> = dyn FnMut(T) -> bool + 'a;

/// Why a streamed reply could not be read (`E`: the body's error).
#[derive(Debug, thiserror::Error)]
pub enum StreamError<E: std::error::Error + 'static> {
    #[error("reading the reply: {0}")]
    Body(#[source] E),
    #[error("parsing the reply: {0}")]
    Json(#[source] serde_json::Error),
    #[error("the parser stopped: {0}")]
    Parser(#[source] tokio::task::JoinError),
}

/// A reqwest reply's body as a stream of chunks.
pub fn chunks_of(
    reply: reqwest::Response,
) -> impl Stream<Item = Result<Bytes, reqwest::Error>> + Unpin {
    Box::pin(futures::stream::unfold(Some(reply), |reply| async move {
        let mut reply = reply?;
        match reply.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(reply))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    }))
}

/// Calls `each` with every item `parse` finds in `body`, as the body streams in: `parse`
/// runs on a blocking thread with the body as its reader and hands items to its sink.
pub async fn each<T, E, P>(
    mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    parse: P,
    mut each: impl FnMut(T),
) -> Result<(), StreamError<E>>
where
    T: Send + 'static,
    E: std::error::Error + 'static,
    P: FnOnce(&mut Deserializer, &mut Sink<'_, T>) -> Result<(), serde_json::Error>
        + Send
        + 'static,
{
    let (chunk_tx, chunk_rx) = mpsc::channel::<Bytes>(16);
    let (item_tx, mut item_rx) = mpsc::channel::<T>(256);
    let parser = tokio::task::spawn_blocking(move || {
        let reader = std::io::BufReader::with_capacity(64 * 1024, Chunks::new(chunk_rx));
        let mut json = serde_json::Deserializer::from_reader(reader);
        let mut send = |item: T| item_tx.blocking_send(item).is_ok();
        parse(&mut json, &mut send)?;
        json.end()
    });
    let feed = async move {
        while let Some(chunk) = body.next().await {
            if chunk_tx
                .send(chunk.map_err(StreamError::Body)?)
                .await
                .is_err()
            {
                break; // the parser stopped; its error says why
            }
        }
        Ok::<_, StreamError<E>>(())
    };
    let consume = async {
        while let Some(item) = item_rx.recv().await {
            each(item);
        }
    };
    let (fed, ()) = tokio::join!(feed, consume);
    let parsed = parser.await.map_err(StreamError::Parser)?;
    fed?;
    parsed.map_err(StreamError::Json)
}

/// The body's chunks as a blocking reader.
#[derive(Debug)]
pub struct Chunks {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Chunks {
    fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            chunk: Bytes::new(),
        }
    }
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde::de::{DeserializeSeed, SeqAccess, Visitor};

    /// A JSON array of numbers, each handed over.
    struct Numbers<'a, 'b>(&'a mut Sink<'b, u64>);

    impl<'de> DeserializeSeed<'de> for Numbers<'_, '_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for Numbers<'_, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("numbers")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(n) = seq.next_element()? {
                if !(self.0)(n) {
                    return Err(serde::de::Error::custom("stopped"));
                }
            }
            Ok(())
        }
    }

    fn body(parts: &[&str]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        let parts: Vec<_> = parts
            .iter()
            .map(|p| Ok(Bytes::from(p.to_string())))
            .collect();
        futures::stream::iter(parts)
    }

    async fn numbers(parts: &[&str]) -> Result<Vec<u64>, StreamError<std::io::Error>> {
        let mut got = Vec::new();
        each(
            body(parts),
            |de, sink| Numbers(sink).deserialize(de),
            |n| got.push(n),
        )
        .await?;
        Ok(got)
    }

    #[tokio::test]
    async fn items_split_across_chunks_come_whole_and_in_order() {
        let got = numbers(&["[1,", "22", "3, 4", "5]"]).await.unwrap();
        assert_eq!(got, vec![1, 223, 45]);
    }

    #[tokio::test]
    async fn a_truncated_or_trailing_reply_is_an_error() {
        assert!(matches!(
            numbers(&["[1,2"]).await,
            Err(StreamError::Json(_))
        ));
        assert!(matches!(
            numbers(&["[1] x"]).await,
            Err(StreamError::Json(_))
        ));
    }

    #[tokio::test]
    async fn a_body_that_fails_is_the_body_error() {
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"[1,")),
            Err(std::io::Error::other("reset")),
        ]);
        let r = each(
            failing,
            |de, sink: &mut Sink<'_, u64>| Numbers(sink).deserialize(de),
            |_| {},
        )
        .await;
        assert!(matches!(r, Err(StreamError::Body(_))), "{r:?}");
    }
}
