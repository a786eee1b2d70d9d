//! The test harness itself: real redis-server processes that start, answer, die and come back.

use crate::support;

use fred::prelude::{KeysInterface, Value};
use std::time::Duration;
use support::{RedisCluster, RedisServer, fred_client};

#[tokio::test]
async fn set_get_kill_error_restart_set() {
    let mut server = RedisServer::start();
    let client = fred_client(&server.url()).await;
    let _: () = client.set("k", "v1", None, None, false).await.unwrap();
    let got: Option<String> = client.get("k").await.unwrap();
    assert_eq!(got.as_deref(), Some("v1"));

    server.kill();
    assert!(!server.is_running());
    let options = fred::prelude::Options {
        fail_fast: true,
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let err = fred::prelude::ClientLike::with_options(&client, &options)
        .get::<Option<String>, _>("k")
        .await;
    assert!(
        err.is_err(),
        "a killed server must fail commands, got {err:?}"
    );

    server.restart();
    assert!(server.is_running());
    // The client reconnects by itself; the restarted server is empty (no persistence).
    let mut reply = Err(fred::error::Error::new(
        fred::error::ErrorKind::Unknown,
        "not tried",
    ));
    for _ in 0..100 {
        reply = client
            .set::<Value, _, _>("k", "v2", None, None, false)
            .await;
        if reply.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reply.unwrap();
    let got: Option<String> = client.get("k").await.unwrap();
    assert_eq!(got.as_deref(), Some("v2"));
    assert_eq!(
        support::bulk_payload(&server.command(&[b"GET", b"k"])).as_deref(),
        Some(&b"v2"[..])
    );
}

/// A server whose port another server already holds is not taken for ready, though something answers `PING`
/// there: the harness checks that its own process answers, so two tests never share one server.
#[test]
fn a_taken_port_is_refused_not_shared() {
    let first = RedisServer::start();
    let error = match RedisServer::try_start_on(first.port()) {
        Ok(_) => panic!("a second server was taken for ready on a port the first holds"),
        Err(e) => e,
    };
    assert!(error.contains("exited"), "{error}");
    // The first server is untouched.
    assert!(first.command(&[b"PING"]).starts_with(b"+PONG"));
}

#[test]
fn requirepass_servers_need_the_password() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    assert!(server.url().contains(":s3cret@"));
    assert_eq!(server.command(&[b"PING"]), b"+PONG\r\n");
}

#[tokio::test]
async fn three_master_cluster_serves_keys_in_every_slot() {
    let cluster = RedisCluster::start();
    assert_eq!(cluster.nodes().len(), 3);
    let client = fred_client(&cluster.url()).await;
    assert!(fred::prelude::ClientLike::is_clustered(&client));
    for i in 0..30 {
        let key = format!("key-{i}");
        let _: () = client.set(&key, i, None, None, false).await.unwrap();
        let got: i64 = client.get(&key).await.unwrap();
        assert_eq!(got, i);
    }
    // Keys landed on more than one master.
    let with_keys = cluster
        .nodes()
        .iter()
        .filter(|n| !n.command(&[b"DBSIZE"]).starts_with(b":0"))
        .count();
    assert!(with_keys >= 2, "keys spread over {with_keys} masters");
}
