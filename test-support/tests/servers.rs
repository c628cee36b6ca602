//! Each guard starts a real server that a real client can use, and keeps data across restarts.

use std::time::Duration;

use futures::StreamExt;
use ksr_test_support::{
    ConsulOptions, ConsulServer, EtcdOptions, EtcdServer, NatsServer, dns, http_client,
};

#[tokio::test]
async fn nats_guard_serves_jetstream_and_keeps_streams_across_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "T".into(),
            subjects: vec!["t.>".into()],
            ..Default::default()
        })
        .await?;
    js.publish("t.a", "hello".into()).await?.await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("c".into()),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.fetch().max_messages(1).messages().await?;
    let msg = messages
        .next()
        .await
        .expect("one message")
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(&msg.payload[..], b"hello");
    msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;

    nats.restart().await?;
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("T").await?;
    assert_eq!(
        stream.info().await?.state.messages,
        1,
        "file storage survives a restart"
    );
    Ok(())
}

#[tokio::test]
async fn etcd_guard_serves_v3_and_keeps_data_across_restart() -> anyhow::Result<()> {
    let mut etcd = EtcdServer::start().await?;
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    client.put("vulcand/x", "1", None).await?;
    let got = client.get("vulcand/x", None).await?;
    assert_eq!(got.kvs()[0].value(), b"1");

    etcd.restart().await?;
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await?;
    let got = client.get("vulcand/x", None).await?;
    assert_eq!(got.kvs()[0].value(), b"1", "data dir survives a restart");
    Ok(())
}

#[tokio::test]
async fn etcd_guard_can_serve_the_v2_api() -> anyhow::Result<()> {
    let etcd = EtcdServer::start_with(EtcdOptions {
        enable_v2: true,
        ..Default::default()
    })
    .await?;
    let http = http_client();
    let put = http
        .put(format!(
            "{}/v2/keys/vulcand/backends/b1/backend",
            etcd.url()
        ))
        .form(&[("value", r#"{"Type":"http"}"#)])
        .send()
        .await?;
    assert!(put.status().is_success(), "{}", put.status());
    let got: serde_json::Value = http
        .get(format!(
            "{}/v2/keys/vulcand/backends/b1/backend",
            etcd.url()
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got["node"]["value"], r#"{"Type":"http"}"#);
    Ok(())
}

#[tokio::test]
async fn consul_guard_registers_and_resolves_through_dns_and_survives_restart() -> anyhow::Result<()>
{
    let mut consul = ConsulServer::start().await?;
    let http = http_client();
    let body = serde_json::json!({
        "Node": "ksr-synthetic",
        "Address": "127.0.0.1",
        "NodeMeta": {"owner": "ksr"},
        "Service": {"ID": "web-1", "Service": "test", "Tags": ["web-default"],
                    "Address": "127.0.0.9", "Port": 80}
    });
    let r = http
        .put(format!("{}/v1/catalog/register", consul.url()))
        .json(&body)
        .send()
        .await?;
    assert!(r.status().is_success(), "{}", r.text().await?);

    let answer = dns::query_a(consul.dns_port(), "web-default.test.service.consul").await?;
    assert_eq!(answer.rcode, dns::NOERROR);
    assert_eq!(
        answer.addrs,
        vec!["127.0.0.9".parse::<std::net::Ipv4Addr>()?]
    );
    let missing = dns::query_a(consul.dns_port(), "nope-default.test.service.consul").await?;
    assert_eq!(missing.rcode, dns::NXDOMAIN);

    consul.restart().await?;
    let answer = ksr_test_support::eventually(Duration::from_secs(20), || async {
        let a = dns::query_a(consul.dns_port(), "web-default.test.service.consul").await?;
        anyhow::ensure!(
            a.rcode == dns::NOERROR && !a.addrs.is_empty(),
            "not yet: {a:?}"
        );
        Ok(a)
    })
    .await?;
    assert_eq!(
        answer.addrs,
        vec!["127.0.0.9".parse::<std::net::Ipv4Addr>()?]
    );
    Ok(())
}

#[tokio::test]
async fn consul_guard_with_acls_denies_by_default_and_accepts_the_master_token()
-> anyhow::Result<()> {
    let consul = ConsulServer::start_with(ConsulOptions {
        acl: true,
        ..Default::default()
    })
    .await?;
    let http = http_client();
    let body = serde_json::json!({
        "Node": "ksr-synthetic", "Address": "127.0.0.1",
        "Service": {"ID": "web-1", "Service": "test", "Port": 80}
    });
    let denied = http
        .put(format!("{}/v1/catalog/register", consul.url()))
        .json(&body)
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    let allowed = http
        .put(format!("{}/v1/catalog/register", consul.url()))
        .header("X-Consul-Token", consul.master_token().expect("acl on"))
        .json(&body)
        .send()
        .await?;
    assert!(allowed.status().is_success(), "{}", allowed.text().await?);
    Ok(())
}

#[tokio::test]
async fn a_missing_binary_fails_with_the_setup_command() {
    let err = ksr_test_support::server_binary("no-such-server").unwrap_err();
    assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
}
