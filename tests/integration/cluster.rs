//! Cluster mode: real `wasmhook` nodes on a real 3-server NATS cluster
//! (JetStream on, temp store dirs, loopback ports), a real receiver.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmhook::cluster::testing::NatsCluster;

use crate::harness::*;

/// A node of the cluster: short leases (3 s) and 8 partitions, so that
/// take-overs happen within a test's patience.
fn node(cluster: &NatsCluster, dir: &std::path::Path, name: &str) -> Server {
    node_with_lease(cluster, dir, name, 3)
}

/// A node of a cluster in `mode` ("replicas" or "partitioned").
fn node_in(cluster: &NatsCluster, dir: &std::path::Path, name: &str, mode: &str) -> Server {
    start_node(cluster, dir, name, 3, mode)
}

fn node_with_lease(cluster: &NatsCluster, dir: &std::path::Path, name: &str, lease: u64) -> Server {
    start_node(cluster, dir, name, lease, "replicas")
}

fn start_node(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    name: &str,
    lease: u64,
    mode: &str,
) -> Server {
    Server::start_with(
        dir,
        &["--nats", &cluster.urls_arg()],
        &[
            ("WASMHOOK_CLUSTER_LEASE_SECS", &lease.to_string()),
            ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
            ("WASMHOOK_CLUSTER_NODE_ID", name),
            ("WASMHOOK_CLUSTER_MODE", mode),
        ],
    )
}

/// Waits until the live nodes lease all 8 partitions between them.
async fn wait_for_leases(nodes: &[&Server]) {
    wait_for_leases_within(nodes, PATIENCE).await;
}

async fn leased(node: &Server) -> u64 {
    let (_, health) = node.call("GET", "/healthz", "", None).await;
    health["cluster"]["partitions_leased"].as_u64().unwrap_or(0)
}

/// No node holds more than its share of the 8 partitions, and each
/// holds some.
fn shares_settled(counts: &[u64]) -> bool {
    let share = 8u64.div_ceil(counts.len() as u64);
    counts.iter().all(|c| (1..=share).contains(c))
}

/// Every partition leased by the nodes, however they share them (after a
/// kill, the survivors may take minutes to even out: see docs/cluster.md
/// on a NATS server lost).
async fn wait_for_all_leased(nodes: &[&Server]) {
    wait_for_leases_as(nodes, PATIENCE, false).await;
}

async fn wait_for_leases_within(nodes: &[&Server], within: Duration) {
    wait_for_leases_as(nodes, within, true).await;
}

async fn wait_for_leases_as(nodes: &[&Server], within: Duration, settled: bool) {
    let deadline = Instant::now() + within;
    loop {
        let mut counts = Vec::new();
        for n in nodes {
            counts.push(leased(n).await);
        }
        let total: u64 = counts.iter().sum();
        // Every partition leased and no node beyond its share: nothing
        // moves any more (a partition moving while its deliveries are in
        // flight could send one twice).
        if total == 8 && (!settled || shares_settled(&counts)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not leased: {counts:?} of 8"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_route_each_event_once_and_take_over_a_killed_nodes_work() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = node(&cluster, dirs[0].path(), "n0");
    let n1 = node(&cluster, dirs[1].path(), "n1");
    let n2 = node(&cluster, dirs[2].path(), "n2");
    let (_, health) = n0.call("GET", "/healthz", "", None).await;
    assert_eq!(health["backend"], "nats", "{health}");

    // Set up through different nodes: each sees the others' writes.
    let receiver = Receiver::ok().await;
    let (_, key) = n0.tenant("acme").await;
    let mut subs = Vec::new();
    for (i, n) in [&n1, &n2, &n0, &n1].iter().enumerate() {
        let sub = n
            .subscribe(
                &key,
                json!({"url": format!("{}/s{i}", receiver.url()), "event_types": ["message.*"]}),
            )
            .await;
        subs.push(sub["id"].as_str().unwrap().to_string());
    }
    let (status, listed) = n2.call("GET", "/v1/subscriptions", &key, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    wait_for_leases(&[&n0, &n1, &n2]).await;

    // 30 events spread over the nodes, each of the first ten sent to two
    // nodes at once: every event reaches the 4 subscriptions once.
    let nodes = [&n0, &n1, &n2];
    for i in 0..30 {
        let event = message_event(&format!("evt_{i}"));
        let (status, body) = nodes[i % 3]
            .call("POST", "/v1/events", &key, Some(event.clone()))
            .await;
        assert_eq!(status, 202, "{body}");
        if i < 10 {
            let (status, again) = nodes[(i + 1) % 3]
                .call("POST", "/v1/events", &key, Some(event))
                .await;
            assert_eq!(status, 202, "{again}");
            assert_eq!(again["duplicate"], true, "{again}");
            let id = format!("evt_{i}");
            let first = delivery_ids(nodes[i % 3], &key, &id).await;
            assert_eq!(first.len(), 4);
            assert_eq!(
                delivery_ids(nodes[(i + 2) % 3], &key, &id).await,
                first,
                "the same delivery ids from every node"
            );
        }
    }
    let received = receiver.wait_for(120, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = receiver.received().len().max(received.len());
    assert_eq!(received, 120, "each event once per subscription");
    let ids = receiver.by_delivery_id();
    assert_eq!(ids.len(), 120);
    assert!(ids.values().all(|n| *n == 1), "no delivery sent twice");

    // Any node answers for a delivery, whichever node sent it (once the
    // attempt's result, recorded after the receiver answered, reached it).
    let some = ids.keys().next().unwrap().clone();
    for n in nodes {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, d) = n
                .call("GET", &format!("/v1/deliveries/{some}"), &key, None)
                .await;
            assert_eq!(status, 200, "{d}");
            if d["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "{d}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // kill -9 of one node: the others take its partitions within the
    // lease time and deliver what arrives meanwhile.
    n2.kill9();
    for i in 30..50 {
        let (status, body) = [&n0, &n1][i % 2]
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(message_event(&format!("evt_{i}"))),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // The killed node's attempts in flight may arrive again under the same
    // id (at least once); every id arrives.
    let ids = receiver.wait_for_ids(200, PATIENCE).await;
    assert_eq!(ids.len(), 200, "every delivery id arrived");
    wait_for_all_leased(&[&n0, &n1]).await;
}

#[test]
fn a_node_refuses_to_start_without_its_cluster_and_names_why() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        let out = Command::new(crate::support::binary())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nats",
                "nats://127.0.0.1:1",
            ])
            .arg("--data")
            .arg(dir.path())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unreachable = run(&[
        ("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY),
    ]);
    assert!(
        unreachable.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{unreachable}"
    );
    let no_token = run(&[("WASMHOOK_ADMIN_TOKEN", "")]);
    assert!(
        no_token.contains("server.admin_token") && no_token.contains("cluster mode"),
        "{no_token}"
    );
    let no_key = run(&[
        ("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WASMHOOK_SERVER_SECRETS_KEY", ""),
    ]);
    assert!(
        no_key.contains("server.secrets_key") && no_key.contains("cluster mode"),
        "{no_key}"
    );
    // TLS and credential files are checked at start, each naming its key.
    let base = [
        ("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY),
    ];
    for (var, value, key) in [
        (
            "WASMHOOK_CLUSTER_CREDS_FILE",
            "/nonexistent/node.creds",
            "cluster.creds_file",
        ),
        (
            "WASMHOOK_CLUSTER_TLS_CA_FILE",
            "/nonexistent/ca.pem",
            "cluster.tls_ca_file",
        ),
        (
            "WASMHOOK_CLUSTER_TLS_CERT_FILE",
            "/dev/null",
            "cluster.tls_cert_file",
        ),
    ] {
        let mut env = base.to_vec();
        env.push((var, value));
        let refused = run(&env);
        assert!(refused.contains(key), "{var}: {refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_uploaded_through_one_node_runs_on_another() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = node(&cluster, dirs[0].path(), "p0");
    let n1 = node(&cluster, dirs[1].path(), "p1");
    let (_, key) = n0.tenant("acme").await;
    let wasm = wasmhook::runtime::bundled::find("helloclient-lead")
        .unwrap()
        .wasm
        .to_vec();
    let plugin = n0.upload_plugin(&key, "name=crm-lead", wasm).await;
    let lead: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::support::repo_root().join("examples/lead.json")).unwrap(),
    )
    .unwrap();
    // n1 never saw the bytes: it fetches them from the object store,
    // compiles them and runs them.
    let (status, dry) = n1
        .call(
            "POST",
            &format!("/v1/plugins/{}/dry-run", plugin["id"].as_str().unwrap()),
            &key,
            Some(json!({ "event": lead })),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["action"]["action"], "deliver", "{dry}");
    // Deleted through n1: gone for n0 too.
    let (status, _) = n1
        .call(
            "DELETE",
            &format!("/v1/plugins/{}", plugin["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, list) = n0.call("GET", "/v1/plugins", &key, None).await;
    assert!(
        !list.to_string().contains(plugin["id"].as_str().unwrap()),
        "{list}"
    );
}

/// `wasmhook listen` connected to one node gets the deliveries another
/// node attempts (the one leasing the subscription's partition): through
/// the node holding the stream, over the cluster's NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_gets_the_deliveries_another_node_attempts() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = [
        node(&cluster, dirs[0].path(), "l0"),
        node(&cluster, dirs[1].path(), "l1"),
    ];
    // Each node with its share (4 of the 8 partitions).
    let deadline = Instant::now() + PATIENCE;
    while leased(&nodes[0]).await != 4 || leased(&nodes[1]).await != 4 {
        assert!(Instant::now() < deadline, "the partitions were not shared");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let owned = |n: usize| {
        let node = &nodes[n];
        async move {
            let (_, health) = node.call("GET", "/healthz", "", None).await;
            health["cluster"]["partitions_owned"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32)
                .collect::<Vec<u32>>()
        }
    };
    let (_, key) = nodes[0].tenant("dev").await;
    let rx = Receiver::start(vec![], Answer::status(202).body("seen locally")).await;
    // A CLI on node 0 whose subscription node 1 works (a new subscription
    // until its partition is node 1's).
    let (mut cli, lines, sub) = loop {
        let (mut cli, lines) = listen_cli(&nodes[0].base, &key, &["--forward", &rx.url()]);
        let sub = next_line(&lines)["listening"].as_str().unwrap().to_string();
        assert_eq!(next_line(&lines)["connected"], sub.as_str());
        let partition = wasmhook::cluster::leases::partition_of(&sub, 8);
        if owned(1).await.contains(&partition) {
            break (cli, lines, sub);
        }
        assert!(owned(0).await.contains(&partition));
        let _ = Command::new("kill")
            .args(["-TERM", &cli.id().to_string()])
            .status();
        let _ = cli.wait();
    };
    let (status, _) = nodes[1]
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(message_event("via-node-1")),
        )
        .await;
    assert_eq!(status, 202);
    let line = next_line(&lines);
    assert_eq!(line["status"], 202, "{line}");
    let id = line["delivery_id"].as_str().unwrap().to_string();
    assert_eq!(rx.wait_for(1, PATIENCE).await[0].header("webhook-id"), id);
    // Recorded by node 1 (the attempt's node) with the local answer.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, d) = nodes[0]
            .call("GET", &format!("/v1/deliveries/{id}"), &key, None)
            .await;
        if d["status"] == "succeeded" {
            assert_eq!(d["attempt_log"][0]["status"], 202, "{d}");
            assert_eq!(d["attempt_log"][0]["response_body"], "seen locally");
            assert_eq!(d["subscription_id"], sub.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = cli.kill();
    let _ = cli.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_lost_while_running_is_a_503_then_work_resumes() {
    let Some(mut cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let n0 = node(&cluster, dir.path(), "solo");
    let receiver = Receiver::ok().await;
    let (_, key) = n0.tenant("acme").await;
    n0.subscribe(
        &key,
        json!({"url": receiver.url(), "event_types": ["message.*"]}),
    )
    .await;
    wait_for_leases(&[&n0]).await;
    let (status, _) = n0
        .call(
            "POST",
            "/v1/events",
            &key,
            Some(message_event("evt_before")),
        )
        .await;
    assert_eq!(status, 202);
    receiver.wait_for(1, PATIENCE).await;

    // Every NATS server gone: ingest and health answer 503, naming NATS.
    for i in 0..3 {
        cluster.kill(i);
    }
    let (status, body) = n0
        .call("POST", "/v1/events", &key, Some(message_event("evt_lost")))
        .await;
    assert_eq!(status, 503, "{body}");
    let (status, health) = n0.call("GET", "/healthz", "", None).await;
    assert_eq!(status, 503, "{health}");
    assert!(health.to_string().contains("NATS"), "{health}");

    // Back: the event sent again is accepted and delivered, and so is the
    // rest, without restarting the node.
    for i in 0..3 {
        cluster.restart(i);
    }
    cluster.ready().await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = n0
            .call("POST", "/v1/events", &key, Some(message_event("evt_lost")))
            .await;
        if status == 202 || status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, _) = n0
        .call("POST", "/v1/events", &key, Some(message_event("evt_after")))
        .await;
    assert_eq!(status, 202);
    // The first event's attempt record may have been lost with NATS, so it
    // may arrive twice under its id; each event arrives under one id.
    let ids = receiver.wait_for_ids(3, PATIENCE).await;
    assert_eq!(ids.len(), 3, "each event under one delivery id");
    let (status, health) = n0.call("GET", "/healthz", "", None).await;
    assert_eq!(status, 200, "{health}");
}

/// The delivery ids of event `id`, as `node` has them.
/// Load that keeps flowing while a node and then a NATS server are killed
/// with SIGKILL: every accepted event reaches each subscription under the
/// delivery ids its acceptance answered, and the cluster keeps accepting
/// and delivering after each kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_and_of_a_nats_server_under_load_loses_nothing() {
    let Some(mut cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = node(&cluster, dirs[0].path(), "k0");
    let n1 = node(&cluster, dirs[1].path(), "k1");
    let n2 = node(&cluster, dirs[2].path(), "k2");
    let receiver = Receiver::ok().await;
    let (_, key) = n0.tenant("acme").await;
    for i in 0..4 {
        n1.subscribe(
            &key,
            json!({"url": format!("{}/s{i}", receiver.url()), "event_types": ["message.*"]}),
        )
        .await;
    }
    wait_for_leases(&[&n0, &n1, &n2]).await;

    // Eight senders at a time; n2 is killed after 80 events, NATS server 2
    // after 160; 240 in all.
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    let mut n2 = Some(n2);
    for round in 0..30 {
        if round == 10 {
            n2.take().unwrap().kill9();
        }
        if round == 20 {
            cluster.kill(2);
        }
        let alive: Vec<&Server> = match &n2 {
            Some(n2) => vec![&n0, &n1, n2],
            None => vec![&n0, &n1],
        };
        let sends = (0..8).map(|j| {
            let id = format!("evt_{round}_{j}");
            let event = message_event(&id);
            let mut nodes = alive.clone();
            nodes.rotate_left(j % alive.len());
            let key = key.as_str();
            async move {
                let ids = send_until_accepted(&nodes, key, &event).await;
                (id, ids)
            }
        });
        for (id, ids) in futures_util::future::join_all(sends).await {
            assert_eq!(ids.len(), 4, "{id}: one delivery per subscription");
            expected.insert(id, ids);
        }
    }
    assert_eq!(expected.len(), 240);

    // Every delivery id answered arrives, and no other.
    let got = receiver.wait_for_ids(960, PATIENCE * 5).await;
    let want: std::collections::HashSet<&String> = expected.values().flatten().collect();
    assert_eq!(got.len(), 960, "one delivery id per event and subscription");
    assert!(
        got.keys().all(|id| want.contains(id)),
        "every delivery id received is one an acceptance answered"
    );
    // Each event's body arrived under its ids only.
    for r in receiver.received() {
        let event = r.json()["id"].as_str().unwrap().to_string();
        assert!(
            expected[&event].contains(&r.header("webhook-id")),
            "{event} under a delivery id of its own"
        );
    }
    wait_for_all_leased(&[&n0, &n1]).await;
}

/// A node stopped with SIGTERM gives its leases back: the other takes its
/// partitions at its next round (a third of the lease), not after the
/// lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_gives_its_partitions_back_at_once() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // Leases of 45 s, renewed every 15 s.
    let n0 = node_with_lease(&cluster, dirs[0].path(), "g0", 45);
    let n1 = node_with_lease(&cluster, dirs[1].path(), "g1", 45);
    // Shared out: n0 gives back half at its next round, n1 takes it.
    let deadline = Instant::now() + PATIENCE;
    while leased(&n1).await < 4 {
        assert!(Instant::now() < deadline, "n1 never got its share");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(n1.stop().success());
    // n1's leases were renewed at most 15 s before the stop: kept, they
    // would last 30 s more at least. n0's next round is within 15 s.
    wait_for_leases_within(&[&n0], Duration::from_secs(25)).await;
    assert_eq!(leased(&n0).await, 8);
}

/// Compaction through the binary: with snapshots every second the log is
/// purged, and a node that joins afterwards loads the snapshot and serves
/// the same records and deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_after_compaction_loads_the_snapshot() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = Server::start_with(
        dirs[0].path(),
        &["--nats", &cluster.urls_arg()],
        &[
            ("WASMHOOK_CLUSTER_LEASE_SECS", "3"),
            ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
            ("WASMHOOK_CLUSTER_SNAPSHOT_SECS", "1"),
        ],
    );
    let receiver = Receiver::ok().await;
    let (_, key) = n0.tenant("acme").await;
    n0.subscribe(
        &key,
        json!({"url": receiver.url(), "event_types": ["message.*"]}),
    )
    .await;
    wait_for_leases(&[&n0]).await;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.url(0)).await.unwrap());
    let first_sequence = || async {
        let mut stream = js.get_stream("WASMHOOK_LOG").await.unwrap();
        stream.info().await.unwrap().state.first_sequence
    };
    // Events until the log has been purged (two snapshots apart).
    let mut sent = 0;
    let deadline = Instant::now() + PATIENCE;
    while first_sequence().await <= 1 {
        assert!(Instant::now() < deadline, "the log was never compacted");
        let (status, body) = n0
            .call(
                "POST",
                "/v1/events",
                &key,
                Some(message_event(&format!("evt_{sent}"))),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    receiver.wait_for_ids(sent, PATIENCE).await;

    let n1 = node(&cluster, dirs[1].path(), "late");
    for i in 0..sent {
        let (status, event) = n1
            .call("GET", &format!("/v1/events/evt_{i}"), &key, None)
            .await;
        assert_eq!(status, 200, "evt_{i} on the late node: {event}");
    }
    // The same delivery log from both nodes, once the last attempts'
    // results (recorded after the receiver answered) reached both.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, n0_list) = n0.call("GET", "/v1/deliveries?limit=500", &key, None).await;
        assert_eq!(status, 200, "{n0_list}");
        let (status, n1_list) = n1.call("GET", "/v1/deliveries?limit=500", &key, None).await;
        assert_eq!(status, 200, "{n1_list}");
        let succeeded = n1_list.to_string().matches("\"succeeded\"").count();
        if n0_list == n1_list && succeeded >= sent {
            break;
        }
        assert!(Instant::now() < deadline, "n0: {n0_list}\nn1: {n1_list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The late node serves writes too: an event through it is delivered.
    let (status, _) = n1
        .call("POST", "/v1/events", &key, Some(message_event("evt_late")))
        .await;
    assert_eq!(status, 202);
    receiver.wait_for_ids(sent + 1, PATIENCE).await;
}

/// From one machine to a cluster without losing anything: an embedded
/// store with a delivery pending (its receiver failed the first attempt), a
/// plugin, a source and a held item moves with `wasmhook migrate` into an
/// empty cluster; a node then sends the delivery under its id, signed with
/// the same secret, and a second move into the now full cluster is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_into_a_cluster_with_its_pending_deliveries() {
    moves_into_a_cluster("replicas", None).await;
}

/// The same move into a partitioned cluster: each record goes to the log
/// of its tenant's partition, and the node that takes the partition reads
/// it from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_moves_into_a_partitioned_cluster_with_its_pending_deliveries() {
    moves_into_a_cluster("partitioned", None).await;
}

/// A replica set moves the same way (`wasmhook migrate --from-nats`, its
/// node stopped) into a partitioned cluster on other NATS servers: the
/// move reads the replica set's log and plugin store, not a data dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_moves_into_a_partitioned_cluster_with_its_pending_deliveries() {
    let Some(old) = NatsCluster::start(3).await else {
        return;
    };
    moves_into_a_cluster("partitioned", Some(&old)).await;
}

/// Moves a store with a pending delivery, a plugin and a source into a
/// cluster of `mode`: an embedded store (`from` None), or a replica set on
/// the NATS servers `from`.
async fn moves_into_a_cluster(mode: &str, from: Option<&NatsCluster>) {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = match from {
        None => {
            // The embedded server seals with the key it generates into its
            // data dir.
            let server =
                Server::start_with(data.path(), &[], &[("WASMHOOK_SERVER_SECRETS_KEY", "")]);
            assert!(data.path().join("secrets-key").exists());
            server
        }
        Some(old) => {
            let server = node_in(old, data.path(), "r0", "replicas");
            wait_for_leases(&[&server]).await;
            server
        }
    };
    let (_, key) = server.tenant("acme").await;
    let rx = Receiver::start(vec![Answer::status(503)], Answer::status(200)).await;
    let sub = server
        .subscribe(
            &key,
            json!({"url": rx.url(), "event_types": ["message.*"],
                   "retry": {"schedule_secs": [15], "jitter": 0}}),
        )
        .await;
    let secret = sub["secret"].as_str().unwrap().to_string();
    let wasm = wasmhook::runtime::bundled::find("helloclient-lead")
        .unwrap()
        .wasm
        .to_vec();
    let plugin = server.upload_plugin(&key, "name=crm-lead", wasm).await;
    let (status, source) = server
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "onwebchat"})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let (status, _) = server
        .call("POST", "/v1/events", &key, Some(message_event("moved-1")))
        .await;
    assert_eq!(status, 202);
    let first = rx.wait_for(1, PATIENCE).await;
    let delivery_id = first[0].header("webhook-id");
    // The failed attempt is recorded: the delivery waits for its retry.
    let deadline = Instant::now() + PATIENCE;
    let pending = loop {
        let (_, d) = server
            .call("GET", &format!("/v1/deliveries/{delivery_id}"), &key, None)
            .await;
        if d["attempts"] == 1 {
            assert_eq!(d["status"], "pending", "{d}");
            break d;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(server.stop().success());

    let migrate = || {
        let mut command = Command::new(crate::support::binary());
        command.args(["migrate", "--to-nats", &cluster.urls_arg()]);
        match from {
            None => command.arg("--data").arg(data.path()),
            Some(old) => command.args(["--from-nats", &old.urls_arg()]),
        };
        command
            .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY)
            .env("WASMHOOK_CLUSTER_MODE", mode)
            .env("WASMHOOK_CLUSTER_PARTITIONS", "8")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["records"]["tenants"], 1, "{report}");
    assert_eq!(report["records"]["deliveries"], 1, "{report}");
    assert_eq!(report["records"]["outbox"], 1, "{report}");
    assert!(report["plugin_components"].as_u64() >= Some(1), "{report}");
    // The subscription's and the source's secrets, under the cluster's key
    // (a replica set's were already).
    if from.is_none() {
        assert!(report["resealed"].as_u64() >= Some(2), "{report}");
    }
    let again = migrate();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already holds wasmhook data"), "{stderr}");
    if from.is_some() {
        // A cluster onto itself: refused, naming why.
        let onto_itself = Command::new(crate::support::binary())
            .args(["migrate", "--to-nats", &cluster.urls_arg()])
            .args(["--from-nats", &cluster.urls_arg()])
            .env("WASMHOOK_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("WASMHOOK_SERVER_SECRETS_KEY", SECRETS_KEY)
            .output()
            .unwrap();
        assert!(!onto_itself.status.success());
        let stderr = String::from_utf8_lossy(&onto_itself.stderr);
        assert!(stderr.contains("the same NATS servers"), "{stderr}");
    }

    // A node of the cluster, on a fresh data directory and its own
    // configuration only.
    let node_dir = tempfile::tempdir().unwrap();
    let n0 = node_in(&cluster, node_dir.path(), "m0", mode);
    wait_for_leases(&[&n0]).await;
    // Still due at its time, with its attempt: the node sends it then
    // (15 s after the first attempt; the move takes less).
    let path = format!("/v1/deliveries/{delivery_id}");
    let (status, moved) = n0.call("GET", &path, &key, None).await;
    assert_eq!(status, 200, "{moved}");
    if moved["status"] == "pending" {
        for field in ["attempts", "next_attempt_at", "event_id", "created_at"] {
            assert_eq!(moved[field], pending[field], "{field}");
        }
    }
    let got = rx.wait_for(2, PATIENCE).await;
    assert_eq!(
        got[1].header("webhook-id"),
        delivery_id,
        "the same delivery"
    );
    assert_eq!(
        verify_standard(&secret, &got[1]),
        1,
        "signed with the same secret"
    );
    let (status, _) = n0
        .call(
            "GET",
            &format!("/v1/sources/{}", source["id"].as_str().unwrap()),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let lead: Value = serde_json::from_str(
        &std::fs::read_to_string(crate::support::repo_root().join("examples/lead.json")).unwrap(),
    )
    .unwrap();
    let (status, dry) = n0
        .call(
            "POST",
            &format!("/v1/plugins/{}/dry-run", plugin["id"].as_str().unwrap()),
            &key,
            Some(json!({ "event": lead })),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, d) = n0.call("GET", &path, &key, None).await;
        if d["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sources that pull (a NATS feed, a poll) created through one node go on
/// after that node is killed: the other node finds them (it looks every
/// few seconds), consumes the feed's durable consumer and, owning the poll
/// source's partition now, polls it from the stored cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pulling_sources_outlive_the_node_they_were_created_on() {
    use std::sync::Arc;
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let Some(broker) = NatsCluster::start(1).await else {
        return;
    };
    let api = Arc::new(crate::polling::Api::default());
    api.put("c1", "open", "2026-12-01T10:00:00Z", "2026-12-01T10:00:00Z");
    let api_url = crate::polling::start_api(api.clone()).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |dir: &std::path::Path, name: &str| {
        Server::start_with(
            dir,
            &["--nats", &cluster.urls_arg()],
            &[
                ("WASMHOOK_CLUSTER_LEASE_SECS", "3"),
                ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
                ("WASMHOOK_CLUSTER_NODE_ID", name),
                (
                    "WASMHOOK_SOURCES_NATS_ALLOW",
                    &broker.url(0).replace("nats://", ""),
                ),
            ],
        )
    };
    let a = start(dirs[0].path(), "a");
    let b = start(dirs[1].path(), "b");
    wait_for_leases(&[&a, &b]).await;
    let (_, key) = a.tenant("pull").await;
    let rx = Receiver::ok().await;
    a.subscribe(&key, json!({"url": rx.url(), "event_types": ["*"]}))
        .await;
    let (status, feed) = a
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "nats", "nats": {"url": broker.url(0), "subject": "ohallo.events.>", "format": "ohallo"}})),
        )
        .await;
    assert_eq!(status, 201, "{feed}");
    let (status, poll) = a
        .call(
            "POST",
            "/v1/sources",
            &key,
            Some(json!({"kind": "poll", "secret": crate::polling::TOKEN,
                        "poll": {"url": api_url, "every_secs": 1, "format": "ohallo-conversation",
                                 "headers": {"X-Workspace": "w1"}}})),
        )
        .await;
    assert_eq!(status, 201, "{poll}");
    // The poll source's first item, by whichever node owns it.
    rx.wait_for(1, PATIENCE).await;
    // Node b has found the feed (the stream exists once a feed started).
    let js = async_nats::jetstream::new(async_nats::connect(broker.url(0)).await.unwrap());
    let deadline = Instant::now() + PATIENCE;
    while js.stream_by_subject("ohallo.events.>").await.is_err() {
        assert!(Instant::now() < deadline, "no stream for the subject");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;

    a.kill9();
    wait_for_leases(&[&b]).await;
    let body = br#"{"event":"conversation.updated","idempotency_key":"oh_after_kill","data":{"conversation_id":"c9","changes":{"status":"open"}}}"#;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let acked = match js.publish("ohallo.events.web", body.to_vec().into()).await {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if acked {
            break;
        }
        assert!(Instant::now() < deadline, "JetStream never acknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.put("c2", "open", "2026-12-01T10:05:00Z", "2026-12-01T10:05:00Z");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ids: Vec<String> = rx
            .received()
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
            .collect();
        if ids.iter().any(|i| i == "oh_after_kill") && ids.iter().any(|i| i.contains(":c2:")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the kill, node b got {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node started while JetStream cannot answer (2 of 3 servers frozen: no
/// meta leader) waits for it instead of refusing to start, and serves once
/// the servers are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_before_jetstream_answers_waits_for_it() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    cluster.freeze(1);
    cluster.freeze(2);
    let dir = tempfile::tempdir().unwrap();
    let (urls, data) = (cluster.urls_arg(), dir.path().to_path_buf());
    let starting = tokio::task::spawn_blocking(move || {
        Server::start_with(
            &data,
            &["--nats", &urls],
            &[
                ("WASMHOOK_CLUSTER_LEASE_SECS", "3"),
                ("WASMHOOK_CLUSTER_PARTITIONS", "8"),
                ("WASMHOOK_CLUSTER_NODE_ID", "early"),
            ],
        )
    });
    // Long enough for its first JetStream requests to fail.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!starting.is_finished(), "the node did not wait");
    cluster.thaw(1);
    cluster.thaw(2);
    cluster.ready().await;
    let n0 = starting.await.unwrap();
    wait_for_leases(&[&n0]).await;
    let receiver = Receiver::ok().await;
    let (_, key) = n0.tenant("acme").await;
    n0.subscribe(&key, json!({"url": receiver.url(), "event_types": ["*"]}))
        .await;
    let (status, body) = n0
        .call("POST", "/v1/events", &key, Some(message_event("early-1")))
        .await;
    assert_eq!(status, 202, "{body}");
    receiver.wait_for(1, PATIENCE).await;
}

/// Ordering and a rate limit hold across the cluster: events of five
/// conversations sent alternately to two nodes arrive in order per
/// conversation, at the subscription's rate (its work is on one node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_and_a_rate_limit_hold_across_two_nodes() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let (d0, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let n0 = node(&cluster, d0.path(), "left");
    let n1 = node(&cluster, d1.path(), "right");
    wait_for_leases(&[&n0, &n1]).await;
    let arrivals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, String, u64)>::new()));
    let seen = arrivals.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let seen = seen.clone();
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap();
            seen.lock().unwrap().push((
                Instant::now(),
                event["data"]["conversation_id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                event["data"]["seq"].as_u64().unwrap(),
            ));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (_, key) = n0.tenant("acme").await;
    n0.subscribe(
        &key,
        json!({"url": url, "event_types": ["*"], "max_in_flight": 16,
               "ordering": {"key": "/data/conversation_id"},
               "rate_limit": {"per_second": 20, "burst": 1}}),
    )
    .await;
    // The subscription reaches the other node's view before it routes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = 100;
    for i in 0..total {
        let node = if i % 2 == 0 { &n0 } else { &n1 };
        let event = json!({"id": format!("x{i}"), "type": "message.created",
                           "data": {"conversation_id": format!("c{}", i % 5), "seq": i / 5}});
        let (status, body) = node.call("POST", "/v1/events", &key, Some(event)).await;
        assert_eq!(status, 202, "{body}");
    }
    let posted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < total {
        assert!(
            Instant::now() < deadline,
            "{} arrived",
            arrivals.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrivals = arrivals.lock().unwrap().clone();
    let mut last: HashMap<String, u64> = HashMap::new();
    for (_, conv, seq) in &arrivals {
        if let Some(before) = last.insert(conv.clone(), *seq) {
            assert!(*seq > before, "{conv}: {seq} after {before}");
        }
    }
    // 100 deliveries at 20/s: about 5 s from the first to the last, unless
    // the events came in slower than that (a loaded machine): then soon
    // after the last was accepted.
    let span = arrivals.last().unwrap().0 - arrivals[0].0;
    let most = Duration::from_secs(8)
        .max(posted.saturating_duration_since(arrivals[0].0) + Duration::from_secs(3));
    assert!(
        span >= Duration::from_millis(4400) && span <= most,
        "100 deliveries in {span:?} at 20/s (all accepted {:?} after the first arrived)",
        posted.saturating_duration_since(arrivals[0].0)
    );
}

/// Broker destinations in cluster mode: any node's worker publishes, each
/// delivery id once, over one pooled connection per node; the cluster's
/// own NATS is never a destination, by its name or by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_destinations_work_from_every_node_and_never_the_clusters_own_nats() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let Some(redis) = crate::destinations::Redis::start() else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = node(&cluster, dirs[0].path(), "d0");
    let n1 = node(&cluster, dirs[1].path(), "d1");
    wait_for_leases(&[&n0, &n1]).await;
    let (_, key) = n0.tenant("bus").await;
    let sub = n0
        .subscribe(
            &key,
            json!({
                "destination": {"type": "redis", "url": redis.url(), "stream": "hooks"},
                "event_types": ["*"],
            }),
        )
        .await;
    let id = sub["id"].as_str().unwrap().to_string();
    let mut ids = crate::destinations::send(&n0, &key, "n0", 20).await;
    ids.extend(crate::destinations::send(&n1, &key, "n1", 20).await);
    crate::destinations::wait_all(&n1, &key, &id, &ids, &["succeeded"]).await;
    crate::destinations::once_each(
        &crate::destinations::read("redis", &redis.url(), "hooks"),
        &ids,
        false,
    );
    // Each node that worked a partition of it holds one connection.
    let clients = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "client", "list"])
        .output()
        .unwrap();
    let clients = String::from_utf8_lossy(&clients.stdout)
        .lines()
        .count()
        .saturating_sub(1);
    assert!(
        (1..=2).contains(&clients),
        "{clients} connections from two nodes"
    );

    // The cluster's own NATS: by the URL it was given, and by another name
    // for the same address.
    let own = cluster.url(1);
    let renamed = own.replace("127.0.0.1", "localhost");
    let unspecified = own.replace("127.0.0.1", "0.0.0.0");
    for url in [own, renamed, unspecified] {
        let (status, body) = n1
            .call(
                "POST",
                "/v1/subscriptions",
                &key,
                Some(json!({
                    "destination": {"type": "nats", "url": url, "subject": "crm.leads"},
                    "event_types": ["*"],
                })),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        let says = error_message(&body);
        assert!(
            says.contains("this cluster's own NATS") || says.contains("unspecified"),
            "{body}"
        );
    }
}
