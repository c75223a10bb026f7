//! A partitioned cluster (`cluster.mode = "partitioned"`, issue 25): real
//! `wasmhook` nodes on a real 3-server NATS cluster. Each tenant's data is
//! stored and worked only by the node leasing its partition; every node
//! answers every route (forwarding to the holder); a partition moves with
//! its data when a node joins or dies.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmhook::cluster::testing::NatsCluster;
use wasmhook::store::partitions::partition_of_tenant;

use crate::harness::*;

const PARTITIONS: u32 = 8;

fn node(cluster: &NatsCluster, dir: &std::path::Path, name: &str) -> Server {
    node_with(cluster, dir, name, &[])
}

/// [`node`] with more settings.
fn node_with(
    cluster: &NatsCluster,
    dir: &std::path::Path,
    name: &str,
    more: &[(&str, &str)],
) -> Server {
    let partitions = PARTITIONS.to_string();
    let mut env = vec![
        ("WASMHOOK_CLUSTER_MODE", "partitioned"),
        ("WASMHOOK_CLUSTER_LEASE_SECS", "3"),
        ("WASMHOOK_CLUSTER_PARTITIONS", partitions.as_str()),
        ("WASMHOOK_CLUSTER_NODE_ID", name),
    ];
    env.extend_from_slice(more);
    Server::start_with(dir, &["--nats", &cluster.urls_arg()], &env)
}

/// How many requests a node forwarded `via` "direct" or "nats" (its
/// `/metrics`).
async fn forwarded_via(node: &Server, via: &str) -> u64 {
    let (status, metrics) = node.call("GET", "/metrics", ADMIN_TOKEN, None).await;
    assert_eq!(status, 200);
    let line = format!("wasmhook_forwarded_requests_total{{via=\"{via}\"}} ");
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The partitions whose data a node holds (its `/healthz`).
async fn data_partitions(node: &Server) -> Vec<u32> {
    let (_, health) = node.call("GET", "/healthz", "", None).await;
    assert_eq!(health["cluster"]["mode"], "partitioned", "{health}");
    health["cluster"]["data_partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("{health}"))
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

/// Waits until the nodes hold every partition's data between them, each
/// partition on one node only and no node beyond its share (so nothing
/// moves any more: a node below its share finds no free partition, none
/// above gives any back); returns who holds what.
async fn wait_for_partitions(nodes: &[&Server]) -> Vec<Vec<u32>> {
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let mut held = Vec::new();
        for n in nodes {
            held.push(data_partitions(n).await);
        }
        let all: Vec<u32> = held.iter().flatten().copied().collect();
        let distinct: HashSet<u32> = all.iter().copied().collect();
        if all.len() == PARTITIONS as usize
            && distinct.len() == all.len()
            && held.iter().all(|h| !h.is_empty())
            && held
                .iter()
                .all(|h| h.len() <= (PARTITIONS as usize).div_ceil(nodes.len()))
        {
            return held;
        }
        assert!(Instant::now() < deadline, "partitions not shared: {held:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Tenants created until every partition has `per_partition` of them
/// (tenant ids are random, so a fixed number of tenants can leave a
/// partition, and the node holding it, without any); the extra ones are
/// left unused. Ids and keys, in partition order.
async fn tenants_in_every_partition(node: &Server, per_partition: usize) -> Vec<(String, String)> {
    let mut by_partition: Vec<Vec<(String, String)>> = vec![Vec::new(); PARTITIONS as usize];
    for n in 0.. {
        if by_partition.iter().all(|t| t.len() == per_partition) {
            break;
        }
        assert!(
            n < 64 * per_partition,
            "tenant ids never covered every partition"
        );
        let (id, key) = node.tenant(&format!("t{n}")).await;
        let slot = &mut by_partition[partition_of_tenant(&id, PARTITIONS) as usize];
        if slot.len() < per_partition {
            slot.push((id, key));
        }
    }
    by_partition.into_iter().flatten().collect()
}

/// Posts a message event through `node` until it is accepted: a 503
/// (the tenant's partition between holders for a moment, the client's
/// cue to retry) is sent again. The 202's body.
async fn accepted(node: &Server, key: &str, id: &str) -> Value {
    post_until_accepted(&[node], key, &message_event(id), PATIENCE)
        .await
        .1
}

/// One event per tenant, each sent to the live nodes from a different
/// first one, all at once: their delivery ids by event id.
async fn send_round(
    tenants: &[(String, String)],
    round: usize,
    alive: &[&Server],
) -> Vec<(String, Vec<String>)> {
    let sends = tenants.iter().enumerate().map(|(t, (_, key))| {
        let id = format!("evt_{round}_{t}");
        let event = message_event(&id);
        let mut nodes = alive.to_vec();
        nodes.rotate_left(t % alive.len());
        async move {
            let ids = send_until_accepted(&nodes, key, &event).await;
            (id, ids)
        }
    });
    futures_util::future::join_all(sends).await
}

/// The tenants whose events a node's data directory holds (read after the
/// node is gone, straight from its sled database).
fn tenants_on_disk(dir: &std::path::Path) -> HashMap<String, usize> {
    let db = sled::open(dir).unwrap();
    let mut tenants: HashMap<String, usize> = HashMap::new();
    for key in db.open_tree("events").unwrap().iter().keys() {
        let key = key.unwrap();
        let tenant = key.split(|b| *b == 0).next().unwrap();
        *tenants
            .entry(String::from_utf8_lossy(tenant).into_owned())
            .or_default() += 1;
    }
    tenants
}

/// Three nodes share the partitions; events for six tenants go to every
/// node (the same event twice to two nodes for some): each is routed once,
/// every node answers the same for it, every delivery arrives once, and a
/// tenant's events are stored on its partition's node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_node_stores_only_its_partitions_and_every_node_answers_for_all() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Nothing is killed until the end: long leases, so that no partition
    // moves on a loaded machine between reading who holds what and the
    // check of the disks.
    // Node 2 advertises no API: requests for its partitions reach it over
    // NATS; the others' go to them directly.
    let start = |i: usize| {
        let advertise = if i == 2 { "none" } else { "listen" };
        node_with(
            &cluster,
            dirs[i].path(),
            &format!("p{i}"),
            &[
                ("WASMHOOK_CLUSTER_LEASE_SECS", "10"),
                ("WASMHOOK_CLUSTER_ADVERTISE_URL", advertise),
            ],
        )
    };
    let nodes = [start(0), start(1), start(2)];
    let receiver = Receiver::ok().await;
    let mut tenants = Vec::new();
    for t in 0..6 {
        let (id, key) = nodes[t % 3].tenant(&format!("t{t}")).await;
        for s in 0..2 {
            nodes[(t + s) % 3]
                .subscribe(
                    &key,
                    json!({"url": format!("{}/{t}/{s}", receiver.url()), "event_types": ["message.*"]}),
                )
                .await;
        }
        tenants.push((id, key));
    }
    let held = wait_for_partitions(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    // A lease round (a third of the lease) later every node knows who
    // holds what, so each forwarded request below goes the way its holder
    // advertises (before, one may go over NATS for a holder not known yet).
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Every node reads under a read lease by now (no round trip to the
    // control log per request), and what one node acknowledged is seen at
    // once through another: a tenant made on one node answers through the
    // next, a key made through one works through the next, and a key
    // revoked through one is refused through the next.
    let deadline = std::time::Instant::now() + PATIENCE;
    for n in &nodes {
        loop {
            let (_, health) = n.call("GET", "/healthz", "", None).await;
            if health["cluster"]["read_lease"] == true {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for i in 0..9 {
        let (_, key) = nodes[i % 3].tenant(&format!("lease{i}")).await;
        let (s, body) = nodes[(i + 1) % 3]
            .call("GET", "/v1/subscriptions", &key, None)
            .await;
        assert_eq!(s, 200, "a tenant made through node {}: {body}", i % 3);
        let (s, created) = nodes[(i + 1) % 3]
            .call("POST", "/v1/keys", &key, None)
            .await;
        assert_eq!(s, 201, "{created}");
        let second = created["api_key"].as_str().unwrap();
        let (s, body) = nodes[(i + 2) % 3]
            .call("GET", "/v1/subscriptions", second, None)
            .await;
        assert_eq!(s, 200, "a key made through node {}: {body}", (i + 1) % 3);
        let revoke = format!("/v1/keys/{}", created["id"].as_str().unwrap());
        let (s, _) = nodes[(i + 2) % 3].call("DELETE", &revoke, &key, None).await;
        assert_eq!(s, 204);
        let (s, body) = nodes[i % 3]
            .call("GET", "/v1/subscriptions", second, None)
            .await;
        assert_eq!(s, 401, "a key revoked through node {}: {body}", (i + 2) % 3);
    }

    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for (t, (_, key)) in tenants.iter().enumerate() {
        for e in 0..6 {
            let id = format!("evt_{t}_{e}");
            accepted(&nodes[e % 3], key, &id).await;
            if e == 0 {
                // The same event through another node: routed once.
                let again = accepted(&nodes[1], key, &id).await;
                assert_eq!(again["duplicate"], true, "{again}");
            }
            let ids = delivery_ids(&nodes[0], key, &id).await;
            assert_eq!(ids.len(), 2, "{id}");
            for n in &nodes[1..] {
                assert_eq!(delivery_ids(n, key, &id).await, ids, "{id} from every node");
            }
            expected.insert(id, ids);
        }
        // A listing and a delivery read answer the same from every node.
        let (status, first) = nodes[0].call("GET", "/v1/deliveries", key, None).await;
        assert_eq!(status, 200, "{first}");
        for n in &nodes[1..] {
            let (_, listed) = n.call("GET", "/v1/deliveries", key, None).await;
            let ids = |v: &Value| {
                v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&listed), ids(&first));
        }
    }
    let got = receiver.wait_for_ids(72, PATIENCE * 2).await;
    let want: HashSet<&String> = expected.values().flatten().collect();
    assert_eq!(got.len(), 72);
    assert!(got.keys().all(|id| want.contains(id)));
    assert!(
        got.values().all(|n| *n == 1),
        "no delivery sent twice: {got:?}"
    );

    // Another tenant's key reaches nothing of the first through any node.
    let (_, first_event) = nodes[2]
        .call("GET", "/v1/events/evt_0_0", &tenants[1].1, None)
        .await;
    assert!(first_event["error"].is_object(), "{first_event}");

    // Forwarded directly to the nodes that advertise their API, over NATS
    // to the one that does not (the events each node took for a tenant
    // another node holds).
    let mut want = [0u64; 2];
    for (tenant, _) in &tenants {
        let p = partition_of_tenant(tenant, PARTITIONS);
        let holder = held.iter().position(|h| h.contains(&p)).unwrap();
        // Events e went to node e % 3, e == 0 once more to node 1.
        let from = [0, 1, 2, 0, 1, 2, 1].into_iter();
        let forwarded = from.filter(|n| *n != holder).count() as u64;
        want[usize::from(holder == 2)] += forwarded;
    }
    let mut seen = [0u64; 2];
    for n in &nodes {
        seen[0] += forwarded_via(n, "direct").await;
        seen[1] += forwarded_via(n, "nats").await;
    }
    // At least the events (the reads above are forwarded too).
    assert!(
        seen[0] >= want[0] && seen[1] >= want[1],
        "direct, nats: {seen:?} for {want:?} events"
    );

    // A client cannot pass for a node: its own x-wasmhook-forwarded is
    // refused, with the reason, and nothing is stored.
    let (_, key) = &tenants[0];
    let now = wasmhook::api::forward::unix_now();
    for forged in [
        "p0".to_string(),
        format!("v2 p0 p1 - {now} 0000000000000001 00"),
        format!(
            "v2 p1 p2 203.0.113.9:1 {now} 0000000000000002 {}",
            "ab".repeat(32)
        ),
        format!("v1 p0 p1 - {now} 00"),
    ] {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/events", nodes[1].base))
            .bearer_auth(key)
            .header("x-wasmhook-forwarded", &forged)
            .json(&json!({"id": "evt_forged", "type": "message.created", "data": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{forged}");
        assert!(resp.headers().contains_key("x-wasmhook-forward-refused"));
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forwarded_unverified", "{body}");
    }
    let (status, _) = nodes[0]
        .call("GET", "/v1/events/evt_forged", key, None)
        .await;
    assert_eq!(status, 404, "a refused forgery stores nothing");

    // A header a node did sign (as one seen on the wire between two
    // nodes) serves one request: played again whole, it is refused.
    let signing = wasmhook::secrets::Key::parse(SECRETS_KEY).unwrap();
    let authorization = format!("Bearer {key}");
    let header = wasmhook::api::forward::sign(
        signing.forwarding(),
        "p0",
        "p1",
        None,
        (wasmhook::api::forward::unix_now(), 42),
        &wasmhook::api::forward::Signed {
            method: "GET",
            uri: "/v1/subscriptions",
            authorization: authorization.as_bytes(),
        },
    );
    let send = || {
        reqwest::Client::new()
            .get(format!("{}/v1/subscriptions", nodes[1].base))
            .header("authorization", &authorization)
            .header("x-wasmhook-forwarded", &header)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let again = send().await.unwrap();
    assert_eq!(again.status(), 400);
    assert_eq!(again.headers()["x-wasmhook-forward-refused"], "replayed");
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forwarded_replayed", "{body}");

    // On disk: each tenant's events on its partition's node only.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        wait_for_partitions(&[&nodes[0], &nodes[1], &nodes[2]]).await,
        held,
        "no partition moved during the test"
    );
    for n in nodes {
        n.kill9();
    }
    for (i, dir) in dirs.iter().enumerate() {
        let on_disk = tenants_on_disk(dir.path());
        for (tenant, _) in &tenants {
            let p = partition_of_tenant(tenant, PARTITIONS);
            let here = on_disk.get(tenant).copied().unwrap_or(0);
            if held[i].contains(&p) {
                assert_eq!(here, 6, "node {i} holds {tenant}'s partition {p}");
            } else {
                assert_eq!(
                    here, 0,
                    "node {i} stores {tenant}'s events without its partition {p}"
                );
            }
        }
    }
}

/// Under load, a third node joins (partitions move to it: it rebuilds them
/// from their logs and the old holders drop them), then a node is killed
/// with SIGKILL (its partitions move to the others): every accepted event
/// reaches each subscription under the delivery ids its acceptance
/// answered, and only those. Then a NATS server is killed under load:
/// the nodes' logs led or read through it go on (their appliers read by
/// sequence until a new consumer is made), and the same holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_move_with_their_data_when_a_node_joins_and_when_one_is_killed() {
    let Some(mut cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n0 = node(&cluster, dirs[0].path(), "m0");
    let n1 = node(&cluster, dirs[1].path(), "m1");
    let receiver = Receiver::ok().await;
    // Two tenants in every partition, so the joining node gets some.
    let tenants = tenants_in_every_partition(&n0, 2).await;
    for (t, (_, key)) in tenants.iter().enumerate() {
        n1.subscribe(
            key,
            json!({"url": format!("{}/{t}", receiver.url()), "event_types": ["message.*"]}),
        )
        .await;
    }
    wait_for_partitions(&[&n0, &n1]).await;

    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for round in 0..3 {
        for (id, ids) in send_round(&tenants, round, &[&n0, &n1]).await {
            expected.insert(id, ids);
        }
    }

    // A node joins: it takes its share, reading those partitions' logs.
    let n2 = node(&cluster, dirs[2].path(), "m2");
    for round in 3..6 {
        for (id, ids) in send_round(&tenants, round, &[&n0, &n1, &n2]).await {
            expected.insert(id, ids);
        }
    }
    let held = wait_for_partitions(&[&n0, &n1, &n2]).await;
    let moved: Vec<&(String, String)> = tenants
        .iter()
        .filter(|(id, _)| held[2].contains(&partition_of_tenant(id, PARTITIONS)))
        .collect();
    assert!(
        !moved.is_empty(),
        "the new node holds some tenant: {held:?}"
    );
    for (id, key) in &moved {
        // Events accepted before it joined, served from its own rebuilt view.
        let t = tenants.iter().position(|(t, _)| t == id).unwrap();
        let event = format!("evt_0_{t}");
        assert_eq!(
            delivery_ids(&n2, key, &event).await,
            expected[&event],
            "the same deliveries after the move"
        );
    }

    // A node dies under load: its partitions go to the others.
    let mut n1 = Some(n1);
    for round in 6..12 {
        if round == 8 {
            n1.take().unwrap().kill9();
        }
        let alive = match &n1 {
            Some(n1) => vec![&n0, n1, &n2],
            None => vec![&n0, &n2],
        };
        for (id, ids) in send_round(&tenants, round, &alive).await {
            expected.insert(id, ids);
        }
    }
    // A NATS server dies under load (kill -9): the leaders it held are
    // elected elsewhere, its clients reconnect to the others.
    for round in 12..18 {
        if round == 14 {
            cluster.kill(2);
        }
        for (id, ids) in send_round(&tenants, round, &[&n0, &n2]).await {
            expected.insert(id, ids);
        }
    }
    assert_eq!(expected.len(), 18 * 16);
    let got = receiver.wait_for_ids(18 * 16, PATIENCE * 5).await;
    let want: HashSet<&String> = expected.values().flatten().collect();
    assert_eq!(got.len(), 18 * 16, "one delivery id per event");
    assert!(
        got.keys().all(|id| want.contains(id)),
        "every delivery id received is one an acceptance answered"
    );
    for r in receiver.received() {
        let event = r.json()["id"].as_str().unwrap().to_string();
        assert!(expected[&event].contains(&r.header("webhook-id")));
    }
    wait_for_partitions(&[&n0, &n2]).await;
}

/// Compaction per partition: with snapshots every second each holder
/// stores its partitions' snapshots and purges their logs; a node that
/// joins afterwards rebuilds the partitions it takes from their snapshots
/// and what the logs kept, and serves the same records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_taken_after_compaction_is_rebuilt_from_its_snapshot() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |dir: &std::path::Path, name: &str| {
        node_with(
            &cluster,
            dir,
            name,
            &[("WASMHOOK_CLUSTER_SNAPSHOT_SECS", "1")],
        )
    };
    let n0 = start(dirs[0].path(), "c0");
    let receiver = Receiver::ok().await;
    let tenants = tenants_in_every_partition(&n0, 1).await;
    for (t, (_, key)) in tenants.iter().enumerate() {
        n0.subscribe(
            key,
            json!({"url": format!("{}/{t}", receiver.url()), "event_types": ["message.*"]}),
        )
        .await;
    }
    wait_for_partitions(&[&n0]).await;
    let js = async_nats::jetstream::new(async_nats::connect(cluster.url(0)).await.unwrap());
    let first_sequence = |p: u32| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(format!("WASMHOOK_P{p}")).await.unwrap();
            stream.info().await.unwrap().state.first_sequence
        }
    };
    // Events until every tenant's partition log has been purged (two
    // snapshots apart).
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    let deadline = Instant::now() + PATIENCE * 3;
    for round in 0.. {
        for (t, (_, key)) in tenants.iter().enumerate() {
            let id = format!("evt_{round}_{t}");
            let (status, body) = n0
                .call("POST", "/v1/events", key, Some(message_event(&id)))
                .await;
            assert_eq!(status, 202, "{body}");
            expected.insert(id.clone(), delivery_ids(&n0, key, &id).await);
        }
        let mut purged = true;
        for (id, _) in &tenants {
            purged &= first_sequence(partition_of_tenant(id, PARTITIONS)).await > 1;
        }
        if purged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the partitions' logs were never purged"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    receiver.wait_for_ids(expected.len(), PATIENCE * 2).await;

    // A second node takes half of the partitions: from their snapshots.
    let n1 = start(dirs[1].path(), "c1");
    let held = wait_for_partitions(&[&n0, &n1]).await;
    let mut checked = 0;
    for (t, (id, key)) in tenants.iter().enumerate() {
        if !held[1].contains(&partition_of_tenant(id, PARTITIONS)) {
            continue;
        }
        for (event, ids) in expected
            .iter()
            .filter(|(e, _)| e.ends_with(&format!("_{t}")))
        {
            assert_eq!(&delivery_ids(&n1, key, event).await, ids, "{event}");
            checked += 1;
        }
        let (status, listed) = n1.call("GET", "/v1/deliveries", key, None).await;
        assert_eq!(status, 200, "{listed}");
        assert!(!listed["items"].as_array().unwrap().is_empty(), "{listed}");
    }
    assert!(checked > 0, "the new node holds some tenant: {held:?}");
}
