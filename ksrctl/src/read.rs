//! Reading the stream for an audit: progress on a terminal, unreadable events reported
//! (with their sequence) and skipped, early stop.

use std::io::IsTerminal;
use std::ops::ControlFlow;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use ksr_proto::Event;
use ksr_runtime::replay::{Latest, Replay};

use crate::Error;
use crate::cli::NatsArgs;

/// Connects to NATS with the processes' own flags (several servers, credentials, TLS).
pub async fn connect(args: &NatsArgs) -> Result<async_nats::Client, Error> {
    Ok(ksr_runtime::nats::connect_once(args, "ksrctl").await?)
}

/// Connects and finds the stream (an unknown stream is named in the error).
pub async fn open(args: &NatsArgs) -> Result<(async_nats::jetstream::Context, Stream), Error> {
    let js = async_nats::jetstream::new(connect(args).await?);
    let stream = js
        .get_stream(&args.stream)
        .await
        .map_err(crate::nats_err(format!("stream {:?}", args.stream)))?;
    Ok((js, stream))
}

/// A progress bar on standard error when it is a terminal; nothing otherwise. Cleared when
/// dropped (also when Ctrl-C drops the command).
#[derive(Debug)]
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(total: u64, what: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {human_pos}/{human_len} events ({per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        Self(bar)
    }

    pub fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    /// Runs `f` (which prints) with the bar hidden.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Reports an unreadable event on standard error.
pub fn report_unreadable(seq: u64, subject: &str, reason: &str, message: &dyn std::fmt::Display) {
    eprintln!(
        "ksrctl: skipping unreadable event at sequence {seq} on {subject} ({reason}): {message}"
    );
}

/// Feeds every readable message `policy` selects on `filter` to `f`, in stream order,
/// until `f` breaks or the messages present at the start are read. Returns the sequence of
/// the last message read (0 when none).
pub async fn each(
    stream: &Stream,
    filter: &str,
    policy: DeliverPolicy,
    what: &str,
    mut f: impl FnMut(&Latest, &Event) -> ControlFlow<()>,
) -> Result<u64, Error> {
    each_owned(stream, filter, policy, what, |record| match &record.event {
        Ok(event) => f(&record, event),
        Err(_) => ControlFlow::Continue(()),
    })
    .await
}

/// [`each`], handing over every record, readable or not. An unreadable record is
/// reported unless `f` stops at it (it lies beyond the range read).
pub async fn each_owned(
    stream: &Stream,
    filter: &str,
    policy: DeliverPolicy,
    what: &str,
    mut f: impl FnMut(Latest) -> ControlFlow<()>,
) -> Result<u64, Error> {
    let mut replay = Replay::open(stream, filter, policy).await?;
    let progress = Progress::new(replay.total(), what);
    let (mut read, mut last) = (0u64, 0u64);
    while let Some(record) = replay.next().await? {
        read += 1;
        if read.is_multiple_of(4096) {
            progress.set(read);
        }
        last = record.seq;
        let unreadable = record
            .event
            .as_ref()
            .err()
            .map(|e| (record.seq, record.subject.clone(), e.clone()));
        if f(record).is_break() {
            break;
        }
        if let Some((seq, subject, e)) = unreadable {
            report_unreadable(seq, &subject, e.reason(), &e);
        }
    }
    Ok(last)
}

/// The newest readable event of every Service, as deliveries for planning.
pub async fn latest(stream: &Stream) -> Result<Vec<ksr_projection::Delivery>, Error> {
    let mut out = Vec::new();
    let incarnation = ksr_runtime::nats::incarnation(stream);
    each(
        stream,
        &ksr_proto::subject::all_filter(),
        DeliverPolicy::LastPerSubject,
        "reading the current state",
        |r, e| {
            out.push(ksr_projection::Delivery {
                seq: r.seq,
                incarnation,
                event: e.clone(),
            });
            ControlFlow::Continue(())
        },
    )
    .await?;
    Ok(out)
}
