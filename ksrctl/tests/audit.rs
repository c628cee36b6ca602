//! Audit over a scripted history in a real stream: events, the state at an instant in the
//! middle, diffs, and an unreadable message that is reported while the rest completes.

use async_nats::jetstream;
use ksr_proto::{Change, EventKind};
use ksr_runtime::nats::{StreamSettings, ensure_stream};
use ksr_test_support::NatsServer;
use ksr_test_support::events::{added, event, publish, publish_raw, removed, route};
use ksrctl::history::{self, At, Filter, RouteChange};

#[tokio::test]
async fn events_state_at_and_diff_answer_from_the_stream_alone() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = ensure_stream(&js, &StreamSettings::routes("KSR_ROUTES"), true).await?;

    let s1 = publish(&js, &added("east", "default", "web", &["10.0.0.1"])).await?;
    publish(&js, &added("west", "shop", "api", &["10.1.0.1"])).await?;
    let mid = publish(
        &js,
        &event(
            "east",
            "default",
            "web",
            Change::Updated(route("web-default", "test", "/v2/.*", &["10.0.0.2"])),
        ),
    )
    .await?;
    publish(&js, &removed("west", "shop", "api")).await?;
    publish_raw(
        &js,
        "ksr.routes.east.default.junk",
        "added",
        "east",
        b"not an event".to_vec(),
    )
    .await?;
    publish(&js, &added("east", "default", "db", &["10.0.0.3"])).await?;

    let records = ksr_runtime::replay::all_events(&stream, ">").await?;
    assert_eq!(records.len(), 6);
    let unreadable: Vec<u64> = records
        .iter()
        .filter(|r| r.event.is_err())
        .map(|r| r.seq)
        .collect();
    assert_eq!(unreadable.len(), 1, "the junk message is reported");
    assert!(
        history::event_row(records.iter().find(|r| r.event.is_err()).expect("junk"))
            .unwrap_err()
            .contains("sequence")
    );

    // events: by cluster, by name glob, by kind.
    let east = Filter {
        cluster: Some("east".into()),
        ..Default::default()
    };
    let rows: Vec<_> = records
        .iter()
        .filter(|r| east.matches(r))
        .filter_map(|r| history::event_row(r).ok())
        .collect();
    assert_eq!(
        rows.iter()
            .map(|r| (r.kind.as_str(), r.name.as_str()))
            .collect::<Vec<_>>(),
        vec![("added", "web"), ("updated", "web"), ("added", "db")]
    );
    let removals = Filter {
        kinds: vec![EventKind::Removed],
        ..Default::default()
    };
    assert_eq!(records.iter().filter(|r| removals.matches(r)).count(), 1);
    let globbed = Filter {
        name: Some("w*".into()),
        ..Default::default()
    };
    assert_eq!(records.iter().filter(|r| globbed.matches(r)).count(), 2);

    // state --at the middle (by sequence and by time), and now.
    let at_mid = history::state_at(&records, At::Seq(mid));
    let mid_time = records
        .iter()
        .find(|r| r.seq == mid)
        .expect("mid")
        .published_unix_ns;
    assert_eq!(history::state_at(&records, At::Time(mid_time)), at_mid);
    let hosts = |s: &std::collections::BTreeMap<_, history::Routed>| {
        s.values()
            .map(|r| (r.host.clone(), r.path.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        hosts(&at_mid),
        vec![
            ("web-default.test.service.consul".into(), "/v2/.*".into()),
            ("api-shop.test.service.consul".into(), "/.*".into())
        ]
    );
    let now = history::state_at(&records, At::Seq(u64::MAX));
    assert_eq!(
        hosts(&now),
        vec![
            ("db-default.test.service.consul".into(), "/.*".into()),
            ("web-default.test.service.consul".into(), "/v2/.*".into())
        ]
    );
    let first = history::state_at(&records, At::Seq(s1));
    assert_eq!(
        first.values().next().map(|r| r.backends.clone()),
        Some(vec!["10.0.0.1:80".to_owned()])
    );

    // diff between the middle and now: api went, db came, web unchanged.
    let changes = history::diff(&at_mid, &now);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, RouteChange::Disappeared { route } if route.name == "api"))
    );
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, RouteChange::Appeared { route } if route.name == "db"))
    );
    assert!(history::diff_text(&changes).contains("+ db-default.test.service.consul"));
    Ok(())
}
