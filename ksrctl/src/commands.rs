//! Running one command: reading, folding and printing.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;

use ksr_proto::{Event, ServiceKey};
use ksr_runtime::replay::Replay;

use crate::checkpoints::{self, Checkpoints, Replayed};
use crate::cli::{Command, FilterArgs, Output};
use crate::history::{self, At, EventRow, Filter};
use crate::{Error, Outcome, changes, checkpointer, explain, read, routes, status, verify};

fn instant(s: &str) -> Result<At, Error> {
    history::parse_instant(s, history::now_ns()).map_err(Error::Usage)
}

fn filter_of(args: &FilterArgs) -> Result<Filter, Error> {
    Ok(Filter {
        cluster: args.cluster.clone(),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
        kinds: args.kind.iter().map(|k| (*k).into()).collect(),
        since: args.since.as_deref().map(instant).transpose()?,
        until: args.until.as_deref().map(instant).transpose()?,
    })
}

/// Prints events as they are read (one line or block each).
struct EventPrinter {
    output: Output,
    /// The previous event of each Service, for the diff output.
    previous: HashMap<ServiceKey, Event>,
    /// Column widths of the table output.
    widths: Vec<usize>,
}

impl EventPrinter {
    fn render(&mut self, row: &EventRow, event: &Event) -> Result<String, Error> {
        Ok(match self.output {
            Output::Json => format!("{}\n", serde_json::to_string(row)?),
            Output::Diff => {
                let lines = changes::changes(self.previous.get(&event.key), event);
                changes::block(row, &lines)
            }
            // Live rows (`--follow`) line up with the table printed before them.
            Output::Table => {
                let cells = history::event_cells(row);
                for (w, c) in self.widths.iter_mut().zip(&cells) {
                    *w = (*w).max(c.chars().count());
                }
                history::line(&cells, &self.widths)
            }
        })
    }

    fn remember(&mut self, event: &Event) {
        if self.output == Output::Diff {
            self.previous.insert(event.key.clone(), event.clone());
        }
    }
}

async fn events(
    stream_args: &crate::cli::NatsArgs,
    filter: Filter,
    output: Output,
    newest_first: bool,
    follow: bool,
) -> Result<Outcome, Error> {
    let (_, stream) = read::open(stream_args).await?;
    let subject = filter.subject();
    let mut printer = EventPrinter {
        output,
        previous: HashMap::new(),
        widths: Vec::new(),
    };
    // Rows are kept (for alignment and ordering); diff blocks need the previous event of
    // each Service even when it is outside the range shown.
    let mut shown: Vec<(EventRow, String)> = Vec::new();
    let mut failure = None;
    let last = read::each(
        &stream,
        &subject,
        DeliverPolicy::All,
        "reading events",
        |r, e| {
            if filter.matches(r)
                && let Ok(row) = history::event_row(r)
            {
                match printer.render(&row, e) {
                    Ok(text) => shown.push((row, text)),
                    Err(err) => {
                        failure = Some(err);
                        return ControlFlow::Break(());
                    }
                }
            }
            printer.remember(e);
            ControlFlow::Continue(())
        },
    )
    .await?;
    if let Some(e) = failure {
        return Err(e);
    }
    if newest_first {
        shown.reverse();
    }
    let mut out = std::io::stdout().lock();
    if output == Output::Table {
        let mut cells = vec![history::event_header()];
        cells.extend(shown.iter().map(|(r, _)| history::event_cells(r)));
        printer.widths = history::widths(&cells);
        write!(out, "{}", history::table(&cells))?;
    } else {
        for (_, text) in &shown {
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(Outcome::Clean);
    }
    let from = last.max(stream.cached_info().state.last_sequence) + 1;
    let mut live = Replay::follow(&stream, &subject, from).await?;
    while let Some(r) = live.next().await? {
        let event = match &r.event {
            Ok(e) => e,
            Err(e) => {
                read::report_unreadable(r.seq, &r.subject, e.reason(), e);
                continue;
            }
        };
        if filter.matches(&r)
            && let Ok(row) = history::event_row(&r)
        {
            let text = printer.render(&row, event)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
        printer.remember(event);
    }
    Ok(Outcome::Clean)
}

/// Applies the events from `replayed.next` on, up to `at` (unreadable ones reported).
async fn replay_until(
    stream: &async_nats::jetstream::stream::Stream,
    replayed: &mut Replayed,
    at: At,
) -> Result<(), Error> {
    if let At::Seq(s) = at
        && replayed.next > s
    {
        return Ok(());
    }
    let read = read::each_owned(
        stream,
        &ksr_proto::subject::all_filter(),
        DeliverPolicy::ByStartSequence {
            start_sequence: replayed.next,
        },
        "replaying",
        |r| {
            if !at.includes(&r) {
                return ControlFlow::Break(());
            }
            replayed.apply(r);
            ControlFlow::Continue(())
        },
    )
    .await?;
    if read > 200_000 && std::io::stderr().is_terminal() {
        eprintln!(
            "ksrctl: replayed {read} events; `ksrctl checkpoint` would let this start from a \
             nearby checkpoint"
        );
    }
    Ok(())
}

/// The routing table at `at`: the nearest checkpoint, then the events after it.
async fn table_at(
    stream: &async_nats::jetstream::stream::Stream,
    source: Option<&Checkpoints>,
    at: At,
) -> Result<Replayed, Error> {
    let mut replayed = checkpoints::resume(source, at, 0)
        .await
        .unwrap_or_else(Replayed::start);
    replay_until(stream, &mut replayed, at).await?;
    Ok(replayed)
}

fn print_state(state: &BTreeMap<ServiceKey, history::Routed>, output: Output) -> Result<(), Error> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if output == Output::Json {
        for r in state.values() {
            serde_json::to_writer(&mut out, r)?;
            out.write_all(b"\n")?;
        }
    } else {
        write!(out, "{}", history::state_table(state))?;
    }
    out.flush()?;
    Ok(())
}

/// Runs `command`; `Outcome::Drift` when a verification found differences.
pub async fn run(command: Command) -> Result<Outcome, Error> {
    match command {
        Command::Routes {
            etcd,
            prefix,
            consul_dns,
            watch,
        } => {
            let client = ksr_publisher_vulcand::app::connect_etcd(&etcd).await?;
            let mut last = String::new();
            loop {
                let found = routes::read(&mut client.kv_client(), &prefix).await?;
                let mut answers = BTreeMap::new();
                for r in &found {
                    answers.insert(r.host.clone(), routes::resolve(consul_dns, &r.host).await);
                }
                let table = routes::render(&found, &answers);
                if table != last {
                    if watch {
                        println!("--- {} routes ---", found.len());
                    }
                    print!("{table}");
                    last = table;
                }
                if !watch {
                    return Ok(Outcome::Clean);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        Command::Events {
            stream,
            filter,
            output,
            newest_first,
            follow,
        } => {
            let filter = filter_of(&filter)?;
            events(&stream, filter, output.resolve(), newest_first, follow).await
        }
        Command::State {
            stream,
            at,
            replay,
            output,
        } => {
            let output = output.resolve();
            if output == Output::Diff {
                return Err(Error::Usage("--output diff is for `events`".into()));
            }
            let at = at
                .as_deref()
                .map(instant)
                .transpose()?
                .unwrap_or(At::Seq(u64::MAX));
            let (js, s) = read::open(&stream).await?;
            let source = checkpoints::for_reading(&js, &s, &replay).await;
            print_state(
                &table_at(&s, source.as_ref(), at).await?.table.routes(),
                output,
            )?;
            Ok(Outcome::Clean)
        }
        Command::Diff {
            stream,
            from,
            to,
            replay,
            output,
        } => {
            let (from, to) = (instant(&from)?, instant(&to)?);
            let reversed = match (from, to) {
                (At::Seq(a), At::Seq(b)) => a > b,
                (At::Time(a), At::Time(b)) => a > b,
                _ => false,
            };
            if reversed {
                return Err(Error::Usage("FROM is later than TO".into()));
            }
            let (js, s) = read::open(&stream).await?;
            let source = checkpoints::for_reading(&js, &s, &replay).await;
            let mut replayed = table_at(&s, source.as_ref(), from).await?;
            let before = replayed.table.routes();
            // On from a checkpoint past `from` when there is one, from `from` otherwise.
            if let Some(nearer) = checkpoints::resume(source.as_ref(), to, replayed.next).await {
                replayed = nearer;
            }
            replay_until(&s, &mut replayed, to).await?;
            let changes = history::diff(&before, &replayed.table.routes());
            let mut out = std::io::stdout().lock();
            if output.resolve() == Output::Json {
                for c in &changes {
                    writeln!(out, "{}", serde_json::to_string(c)?)?;
                }
            } else {
                write!(out, "{}", history::diff_text(&changes))?;
            }
            Ok(Outcome::Clean)
        }
        Command::Checkpoint {
            stream,
            checkpoints,
            replicas,
            every,
            follow,
        } => checkpointer::run(&stream, &checkpoints, replicas, every, follow).await,
        Command::ConfirmRemovals { stream, cluster } => confirm_removals(&stream, &cluster).await,
        Command::StreamUpgrade { stream, replicas } => stream_upgrade(&stream, replicas).await,
        Command::NatsAuth {
            out,
            clusters,
            owner,
            stream,
            checkpoints,
        } => {
            let names = crate::natsauth::Names {
                stream,
                owner,
                checkpoint_bucket: checkpoints.bucket,
            };
            let roles = crate::natsauth::write(&out, &clusters, &names)?;
            println!(
                "wrote {} and a seed per role: {}",
                out.join("ksr-auth.conf").display(),
                roles.join(", ")
            );
            Ok(Outcome::Clean)
        }
        Command::RetireCluster { stream, cluster } => {
            crate::retire::retire(&stream, &cluster).await
        }
        Command::Verify { target } => verify::verify(&target).await,
        Command::Rebuild { dry_run, target } => verify::rebuild(&target, dry_run).await,
        Command::Status {
            stream,
            checkpoints,
            output,
        } => {
            let (js, mut s) = read::open(&stream).await?;
            let st = status::read(&js, &mut s, &checkpoints.bucket).await?;
            if output.resolve() == Output::Json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                print!("{}", status::render(&st));
            }
            Ok(Outcome::Clean)
        }
        Command::Explain {
            stream,
            service,
            output,
        } => {
            let e = explain::explain(&stream, &service).await?;
            if output.resolve() == Output::Json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                print!("{}", explain::render(&e));
            }
            Ok(Outcome::Clean)
        }
    }
}

/// Asks the watchers of `cluster` to publish the removals they hold back.
async fn stream_upgrade(
    stream: &crate::cli::NatsArgs,
    replicas: ksr_runtime::config::ReplicasArgs,
) -> Result<Outcome, Error> {
    let js = async_nats::jetstream::new(crate::read::connect(stream).await?);
    let done =
        ksr_runtime::nats::upgrade_stream(&js, &stream.stream, usize::from(replicas.replicas))
            .await?;
    let (from, to) = done.replicas;
    println!(
        "stream {}: replicas {from} → {to}; incarnation {}",
        stream.stream,
        done.stamped
            .map_or_else(|| "already stamped".to_owned(), |i| format!("stamped {i}"))
    );
    Ok(Outcome::Clean)
}

async fn confirm_removals(stream: &crate::cli::NatsArgs, cluster: &str) -> Result<Outcome, Error> {
    let client = crate::read::connect(stream).await?;
    let subject = ksr_proto::subject::confirm_removals_subject(cluster);
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.request(subject, Vec::new().into()),
    )
    .await
    .map_err(crate::nats_err(format!(
        "no watcher of cluster {cluster} answered within 10 s"
    )))?
    .map_err(crate::nats_err(format!(
        "no watcher of cluster {cluster} answered"
    )))?;
    let released = String::from_utf8_lossy(&reply.payload).into_owned();
    if released == "0" {
        println!("the watcher of cluster {cluster} holds no removals");
    } else {
        println!("the watcher of cluster {cluster} publishes the {released} removals it held");
    }
    Ok(Outcome::Clean)
}
