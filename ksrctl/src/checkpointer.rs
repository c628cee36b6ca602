//! `ksrctl checkpoint`: catches up with the stream from the newest checkpoint, stores the
//! routing table every N stream sequences, and with `--follow` keeps doing so as events come.

use async_nats::jetstream::consumer::DeliverPolicy;

use ksr_runtime::config::ReplicasArgs;
use ksr_runtime::replay::Replay;

use crate::checkpoints::{Checkpoints, Replayed};
use crate::cli::{CheckpointArgs, NatsArgs};
use crate::history::At;
use crate::{Error, Outcome, read};

/// The first checkpoint sequence after `done` (a multiple of `every`).
pub fn next_boundary(done: u64, every: u64) -> u64 {
    (done / every + 1).saturating_mul(every)
}

pub async fn run(
    stream_args: &NatsArgs,
    args: &CheckpointArgs,
    replicas: ReplicasArgs,
    every: u64,
    follow: bool,
) -> Result<Outcome, Error> {
    let (js, stream) = read::open(stream_args).await?;
    let checkpoints = Checkpoints::create(&js, &args.bucket, &stream, replicas).await?;
    let stale = checkpoints.stale();
    if !stale.is_empty() {
        checkpoints.delete(stale).await?;
        println!(
            "deleted {} checkpoints of an earlier stream named {}",
            stale.len(),
            stream_args.stream
        );
    }
    // Resume from the newest checkpoint that loads (an unreadable one is rewritten).
    let mut replayed = checkpoints
        .nearest(At::Seq(u64::MAX), 0)
        .await
        .map_or_else(Replayed::start, |(_, r)| r);
    let last = stream.cached_info().state.last_sequence;
    let mut boundary = next_boundary(replayed.next - 1, every);
    if !follow && boundary > last {
        println!(
            "checkpoints up to date: next at #{boundary}, the stream is at #{last} ({} in bucket {})",
            checkpoints.listed().len(),
            checkpoints.bucket()
        );
        return Ok(Outcome::Clean);
    }
    let filter = ksr_proto::subject::all_filter();
    let mut replay = if follow {
        Replay::follow(&stream, &filter, replayed.next).await?
    } else {
        Replay::open(
            &stream,
            &filter,
            DeliverPolicy::ByStartSequence {
                start_sequence: replayed.next,
            },
        )
        .await?
    };
    // A bar for the catch-up only: a follower drops it once it has read what was there.
    let mut progress = Some(read::Progress::new(
        last.saturating_sub(replayed.next - 1),
        "checkpointing",
    ));
    let (first, mut read) = (replayed.next, 0u64);
    while let Some(record) = replay.next().await? {
        read += 1;
        if let Some(bar) = &progress
            && read.is_multiple_of(4096)
        {
            bar.set(read);
        }
        let (seq, published) = (record.seq, record.published_unix_ns);
        if seq >= last {
            progress = None;
        }
        if let Err(e) = &record.event {
            read::report_unreadable(seq, &record.subject, e.reason(), e);
        }
        replayed.apply(record);
        if seq < boundary {
            continue;
        }
        let bytes = checkpoints.write(seq, published, &replayed).await?;
        let line = format!(
            "checkpoint #{seq}: {} routed Services, {:.1} KiB",
            replayed.table.len(),
            bytes as f64 / 1024.0
        );
        match &progress {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
        boundary = next_boundary(seq, every);
        if !follow && boundary > last {
            break;
        }
    }
    drop(progress);
    if !follow {
        println!(
            "replayed #{first}..#{} ({read} events); next checkpoint at #{boundary}",
            replayed.next - 1
        );
    }
    Ok(Outcome::Clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_fall_on_multiples_of_every() {
        assert_eq!(next_boundary(0, 100), 100);
        assert_eq!(next_boundary(99, 100), 100);
        assert_eq!(next_boundary(100, 100), 200);
        assert_eq!(next_boundary(u64::MAX - 1, 100), u64::MAX);
    }
}
