//! Running one command: reading, folding and printing.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::ControlFlow;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;

use ksr_proto::{Event, ServiceKey};
use ksr_runtime::replay::Replay;

use crate::cli::{Command, FilterArgs, Output};
use crate::history::{self, At, EventRow, Filter, Table};
use crate::{Error, Outcome, changes, read, routes, status, verify};

fn instant(s: &str) -> Result<At, Error> {
    history::parse_instant(s, history::now_ns()).map_err(Error::Usage)
}

fn filter_of(args: &FilterArgs) -> Result<Filter, Error> {
    Ok(Filter {
        cluster: args.cluster.clone(),
        namespace: args.namespace.clone(),
        name: args.name.clone(),
        kinds: args
            .kind
            .iter()
            .filter_map(|k| ksr_proto::EventKind::parse(k))
            .collect(),
        since: args.since.as_deref().map(instant).transpose()?,
        until: args.until.as_deref().map(instant).transpose()?,
    })
}

/// Prints events as they are read (one line or block each).
struct EventPrinter {
    output: Output,
    /// The previous event of each Service, for the diff output.
    previous: HashMap<ServiceKey, Event>,
}

impl EventPrinter {
    fn render(&mut self, row: &EventRow, event: &Event) -> Result<String, Error> {
        Ok(match self.output {
            Output::Json => format!("{}\n", serde_json::to_string(row)?),
            Output::Diff => {
                let lines = changes::changes(self.previous.get(&event.key), event);
                changes::block(row, &lines)
            }
            Output::Table => history::event_table(std::slice::from_ref(row))
                .lines()
                .nth(1)
                .map(|l| format!("{l}\n"))
                .unwrap_or_default(),
        })
    }

    fn remember(&mut self, event: &Event) {
        if self.output == Output::Diff {
            self.previous.insert(event.key.clone(), event.clone());
        }
    }
}

async fn events(
    stream_args: &crate::cli::StreamArgs,
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
        let rows: Vec<EventRow> = shown.into_iter().map(|(r, _)| r).collect();
        write!(out, "{}", history::event_table(&rows))?;
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
            Err((reason, message)) => {
                read::report_unreadable(r.seq, &r.subject, reason, message);
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

/// The routing table at `at`, read up to that instant only.
async fn table_at(stream: &async_nats::jetstream::stream::Stream, at: At) -> Result<Table, Error> {
    let mut table = Table::default();
    read::each_owned(
        stream,
        &ksr_proto::subject::all_filter(),
        DeliverPolicy::All,
        "replaying",
        |r| {
            if !at.includes(&r) {
                return ControlFlow::Break(());
            }
            if let Ok(event) = r.event {
                table.apply(r.seq, r.published_unix_ns, event);
            }
            ControlFlow::Continue(())
        },
    )
    .await?;
    Ok(table)
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
            let client = etcd_client::Client::connect([etcd.as_str()], None).await?;
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
        Command::State { stream, at, output } => {
            let output = output.resolve();
            if output == Output::Diff {
                return Err(Error::Usage("--output diff is for `events`".into()));
            }
            let at = at
                .as_deref()
                .map(instant)
                .transpose()?
                .unwrap_or(At::Seq(u64::MAX));
            let (_, s) = read::open(&stream).await?;
            print_state(&table_at(&s, at).await?.routes(), output)?;
            Ok(Outcome::Clean)
        }
        Command::Diff {
            stream,
            from,
            to,
            output,
        } => {
            let (from, to) = (instant(&from)?, instant(&to)?);
            let (_, s) = read::open(&stream).await?;
            // One pass: the table at `from` is copied when the replay passes it.
            let mut table = Table::default();
            let mut before: Option<BTreeMap<ServiceKey, history::Routed>> = None;
            read::each_owned(
                &s,
                &ksr_proto::subject::all_filter(),
                DeliverPolicy::All,
                "replaying",
                |r| {
                    if before.is_none() && !from.includes(&r) {
                        before = Some(table.routes());
                    }
                    if !to.includes(&r) {
                        return ControlFlow::Break(());
                    }
                    if let Ok(event) = r.event {
                        table.apply(r.seq, r.published_unix_ns, event);
                    }
                    ControlFlow::Continue(())
                },
            )
            .await?;
            let after = table.routes();
            let before = before.unwrap_or_else(|| after.clone());
            let changes = history::diff(&before, &after);
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
        Command::Verify { target } => verify::verify(&target).await,
        Command::Rebuild { dry_run, target } => verify::rebuild(&target, dry_run).await,
        Command::Status { stream, output } => {
            let (_, mut s) = read::open(&stream).await?;
            let st = status::read(&mut s).await?;
            if output.resolve() == Output::Json {
                println!("{}", serde_json::to_string(&st)?);
            } else {
                print!("{}", status::render(&st));
            }
            Ok(Outcome::Clean)
        }
    }
}
