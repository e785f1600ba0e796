//! Self-tests of the integration-test harness in `tests/common`: servers start, restart,
//! pause and form clusters as the other integration tests assume, and the stream reader
//! returns exactly what the stream holds.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, stream::StorageType};
use async_nats::HeaderMap;
use common::{NatsCluster, NatsServer};

#[test]
fn stream_receives_a_published_message_and_the_reader_returns_it() {
    let server = NatsServer::start();
    let url = server.url();
    common::create_stream_blocking(&url, "EVENTS", &["event.>"], StorageType::Memory, 1);

    let (first, repeat) = common::block_on(async {
        let context = common::jetstream(&url).await;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "msg-1");

        let mut acks = Vec::new();
        for _ in 0..2 {
            let ack = context
                .publish_with_headers("event.1.hello", headers.clone(), r#"{"a":1}"#.into())
                .await
                .expect("send the publish")
                .await
                .expect("acknowledgement of the publish");
            acks.push(ack);
        }
        (acks.remove(0), acks.remove(0))
    });
    assert_eq!(first.stream, "EVENTS");
    assert_eq!(first.sequence, 1);
    assert!(!first.duplicate);
    assert!(
        repeat.duplicate,
        "the same Nats-Msg-Id within the duplicate window is a duplicate"
    );

    let messages = common::stream_messages_blocking(&url, "EVENTS");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].sequence, 1);
    assert_eq!(messages[0].subject, "event.1.hello");
    assert_eq!(messages[0].header("Nats-Msg-Id"), Some("msg-1"));
    assert_eq!(messages[0].payload_str(), r#"{"a":1}"#);
    assert_eq!(messages[0].json()["a"], 1);
    assert_eq!(common::stream_len_blocking(&url, "EVENTS"), 1);
}

#[test]
fn servers_started_side_by_side_get_their_own_port_and_store() {
    let first = NatsServer::start();
    let second = NatsServer::start();

    assert_ne!(first.port(), second.port());
    assert_ne!(first.store_dir(), second.store_dir());
    assert_eq!(first.url(), format!("nats://127.0.0.1:{}", first.port()));

    common::create_stream_blocking(&first.url(), "ONLY_FIRST", &["a.>"], StorageType::Memory, 1);
    let on_second = common::block_on(async {
        let context = common::jetstream(&second.url()).await;
        context.get_stream("ONLY_FIRST").await.is_ok()
    });
    assert!(
        !on_second,
        "a stream created on one server must not exist on another"
    );
}

#[test]
fn reader_returns_every_message_in_order_and_skips_deleted_ones() {
    const COUNT: u64 = 1500;
    const DELETED: u64 = 700;

    let server = NatsServer::start();
    let url = server.url();
    common::create_stream_blocking(&url, "MANY", &["many.>"], StorageType::File, 1);

    common::block_on(async {
        let context = common::jetstream(&url).await;
        let mut acks = Vec::new();
        for index in 1..=COUNT {
            let subject = format!("many.{}", index % 3);
            let ack = context
                .publish(subject, index.to_string().into())
                .await
                .expect("send a publish");
            acks.push(ack);
        }
        for ack in acks {
            ack.await.expect("acknowledgement of a publish");
        }

        let stream = context.get_stream("MANY").await.expect("get stream MANY");
        assert!(stream
            .delete_message(DELETED)
            .await
            .expect("delete one message"));
    });

    let messages = common::stream_messages_blocking(&url, "MANY");
    assert_eq!(messages.len() as u64, COUNT - 1);
    let expected: Vec<u64> = (1..=COUNT)
        .filter(|&sequence| sequence != DELETED)
        .collect();
    let sequences: Vec<u64> = messages.iter().map(|message| message.sequence).collect();
    assert_eq!(sequences, expected);
    for message in &messages {
        assert_eq!(message.payload_str(), message.sequence.to_string());
        assert_eq!(message.subject, format!("many.{}", message.sequence % 3));
    }
}

#[test]
fn reader_returns_nothing_for_an_empty_stream() {
    let server = NatsServer::start();
    common::create_stream_blocking(&server.url(), "EMPTY", &["empty"], StorageType::Memory, 1);

    assert!(common::stream_messages_blocking(&server.url(), "EMPTY").is_empty());
    assert_eq!(common::stream_len_blocking(&server.url(), "EMPTY"), 0);
}

#[test]
fn restart_keeps_the_port_and_a_file_stream_messages() {
    let mut server = NatsServer::start();
    let url = server.url();
    let port = server.port();
    common::create_stream_blocking(&url, "DURABLE", &["durable.>"], StorageType::File, 1);
    for index in 0..3 {
        common::publish_acked_blocking(&url, "durable.x", format!("m{index}"));
    }

    server.stop();
    assert!(!server.is_running());
    assert!(server.pid().is_none());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a stopped server must not accept connections"
    );

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let payloads: Vec<String> = common::stream_messages_blocking(&url, "DURABLE")
        .iter()
        .map(|message| message.payload_str().to_owned())
        .collect();
    assert_eq!(payloads, ["m0", "m1", "m2"]);

    let ack = common::publish_acked_blocking(&url, "durable.x", "m3");
    assert_eq!(
        ack.sequence, 4,
        "the restarted stream continues its sequence"
    );
}

#[test]
fn killed_server_restarts_with_its_acknowledged_file_messages() {
    let mut server = NatsServer::start();
    let url = server.url();
    common::create_stream_blocking(&url, "CRASH", &["crash"], StorageType::File, 1);
    common::publish_acked_blocking(&url, "crash", "before");

    server.kill();
    assert!(!server.is_running());
    server.restart();

    let info = common::stream_info_blocking(&url, "CRASH");
    assert_eq!(
        info.config.subjects,
        ["crash"],
        "the stream definition survives a crash"
    );
    let ack = common::publish_acked_blocking(&url, "crash", "after");
    assert_eq!(ack.sequence, 2);
    let payloads: Vec<String> = common::stream_messages_blocking(&url, "CRASH")
        .iter()
        .map(|message| message.payload_str().to_owned())
        .collect();
    assert_eq!(
        payloads,
        ["before", "after"],
        "an acknowledged message survives SIGKILL"
    );
}

#[tokio::test]
async fn paused_server_acknowledges_nothing_until_resumed() {
    // Starting a server from inside a runtime also checks that the blocking helpers
    // work there.
    let mut server = NatsServer::start();
    let url = server.url();
    common::create_stream(&url, "PAUSE", &["pause"], StorageType::Memory, 1).await;

    let client = common::connect(&url).await;
    let mut context = jetstream::new(client);
    context.set_timeout(Duration::from_millis(750));

    server.pause();
    assert!(server.is_paused());
    assert!(server.is_running(), "a paused server still exists");
    let while_paused = context
        .publish("pause", "while paused".into())
        .await
        .expect("sending only needs the client's buffer")
        .await;
    let error = while_paused.expect_err("a paused server must not acknowledge");
    assert_eq!(error.kind(), PublishErrorKind::TimedOut);

    server.resume();
    assert!(!server.is_paused());
    context.set_timeout(common::REQUEST_TIMEOUT);
    let ack = context
        .publish("pause", "after resume".into())
        .await
        .expect("send a publish")
        .await
        .expect("a resumed server acknowledges");
    assert_eq!(
        ack.sequence, 2,
        "the message sent while paused was stored after resuming"
    );

    let payloads: Vec<String> = common::stream_messages(&url, "PAUSE")
        .await
        .iter()
        .map(|message| message.payload_str().to_owned())
        .collect();
    assert_eq!(payloads, ["while paused", "after resume"]);
}

#[test]
fn max_payload_option_reaches_the_server() {
    let server = NatsServer::builder().max_payload(4096).start();

    let max_payload = common::block_on(async {
        let client = common::connect(&server.url()).await;
        client.server_info().max_payload
    });
    assert_eq!(max_payload, 4096);
}

#[test]
fn user_password_server_admits_only_clients_with_its_credentials() {
    let server = NatsServer::builder()
        .user_password("alice", "s3cret")
        .start();
    let url = server.url_with_credentials();
    assert_eq!(
        url,
        format!("nats://alice:s3cret@127.0.0.1:{}", server.port())
    );

    common::create_stream_blocking(&url, "AUTH", &["auth"], StorageType::Memory, 1);
    assert_eq!(
        common::publish_acked_blocking(&url, "auth", "hello").sequence,
        1
    );

    let anonymous = common::block_on(
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(server.url()),
    );
    assert!(
        anonymous.is_err(),
        "a client without credentials must be refused"
    );
}

#[test]
fn token_server_admits_clients_with_its_token() {
    let server = NatsServer::builder().token("tok-123").start();
    let url = server.url_with_credentials();
    assert_eq!(url, format!("nats://tok-123@127.0.0.1:{}", server.port()));

    common::create_stream_blocking(&url, "TOKEN", &["token"], StorageType::Memory, 1);
    assert_eq!(
        common::publish_acked_blocking(&url, "token", "hello").sequence,
        1
    );
}

#[test]
fn cluster_keeps_acknowledging_after_the_stream_leader_is_killed() {
    let mut cluster = NatsCluster::start(3);
    let names: Vec<&str> = cluster.nodes().iter().map(NatsServer::name).collect();
    assert_eq!(names, ["n0", "n1", "n2"]);

    let info = common::create_stream_blocking(
        &cluster.url(),
        "REPLICATED",
        &["r.>"],
        StorageType::File,
        3,
    );
    assert_eq!(info.config.num_replicas, 3);
    common::publish_acked_blocking(&cluster.url(), "r.1", "before");

    let old_leader = cluster.stream_leader("REPLICATED");
    cluster.node_mut(old_leader).kill();
    let survivors = cluster.running_url();
    assert!(!survivors.contains(&cluster.node(old_leader).url()));

    // The two remaining replicas elect a new leader; until they do, publishes fail or
    // time out. Retrying with the same message id keeps the stream free of duplicates.
    let ack = common::block_on(async {
        let client = common::connect(&survivors).await;
        let mut context = jetstream::new(client);
        context.set_timeout(Duration::from_secs(2));
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", "after-failover");

        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = async {
                context
                    .publish_with_headers("r.1", headers.clone(), "after".into())
                    .await?
                    .await
            };
            match attempt.await {
                Ok(ack) => break ack,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => panic!("no acknowledgement 30 s after killing the leader: {error}"),
            }
        }
    });
    assert_eq!(ack.sequence, 2);

    let new_leader = cluster.stream_leader("REPLICATED");
    assert_ne!(new_leader, old_leader);
    let payloads: Vec<String> = common::stream_messages_blocking(&survivors, "REPLICATED")
        .iter()
        .map(|message| message.payload_str().to_owned())
        .collect();
    assert_eq!(payloads, ["before", "after"]);

    cluster.node_mut(old_leader).restart();
    assert!(cluster.node_mut(old_leader).is_running());
    common::publish_acked_blocking(&cluster.url(), "r.1", "after rejoin");
    assert_eq!(common::stream_len_blocking(&cluster.url(), "REPLICATED"), 3);
}
