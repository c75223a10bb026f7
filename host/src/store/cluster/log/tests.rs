//! The log against a real 3-server NATS cluster: each "node" is a `Log`
//! with its own sled view, connected through its own server.

use std::sync::{Arc, Mutex};

use super::*;
use crate::cluster::testing::NatsCluster;
use crate::cluster::{ClusterSettings, connect};

struct Node {
    log: Log,
    _dir: tempfile::TempDir,
}

async fn node(urls: Vec<String>, name: &str, replicas: usize) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let log = log_at(urls, name, replicas, dir.path()).await;
    Node { log, _dir: dir }
}

/// A node whose view is in `path` (kept by the caller).
async fn log_at(urls: Vec<String>, name: &str, replicas: usize, path: &std::path::Path) -> Log {
    let client = connect(&ClusterSettings::new(urls)).await.unwrap();
    // sled releases a directory's lock once every handle of it is gone.
    let db = loop {
        match sled::open(path) {
            Ok(db) => break db,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    };
    let view = Arc::new(View::open(db).unwrap());
    Log::open(client, replicas, name, view).await.unwrap()
}

/// Everything in a tree of a view, in key order.
fn dump(view: &View, tree: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    view.tree(tree)
        .unwrap()
        .iter()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

/// "Accept event `key` unless it exists": the guarded change an acceptance
/// makes, written by `node`.
fn accept_once(log: &Log, key: &str, by: &str) -> Batch {
    let mut r = Recorder::new(log.view());
    if r.get("events", key.as_bytes()).unwrap().is_none() {
        r.insert("events", key.as_bytes(), by.as_bytes().to_vec());
        r.insert("outbox", format!("{key}/{by}").as_bytes(), vec![]);
    }
    r.into_batch(log.node())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_through_two_nodes_is_applied_once_and_every_view_agrees() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let a = node(vec![cluster.url(0)], "a", 3).await;
    let b = node(vec![cluster.url(1)], "b", 3).await;
    let c = node(vec![cluster.url(2)], "c", 3).await;

    for i in 0..40 {
        let key = format!("tenant\0event-{i}");
        // Both nodes read "absent" before either batch is sequenced.
        let from_a = accept_once(&a.log, &key, "a");
        let from_b = accept_once(&b.log, &key, "b");
        assert_eq!(from_a.guards.len(), 1);
        let (oa, ob) = tokio::join!(a.log.publish(&from_a), b.log.publish(&from_b));
        let (oa, ob) = (oa.unwrap(), ob.unwrap());
        let applied = [&oa, &ob]
            .iter()
            .filter(|o| matches!(o, Outcome::Applied { .. }))
            .count();
        assert_eq!(applied, 1, "exactly one of {oa:?} / {ob:?} applies");
        let (lost, loser) = if matches!(oa, Outcome::Applied { .. }) {
            (&ob, &b)
        } else {
            (&oa, &a)
        };
        let Outcome::Conflict { tree, key: k, .. } = lost else {
            unreachable!()
        };
        assert_eq!((tree.as_str(), k.as_slice()), ("events", key.as_bytes()));
        // The loser's re-run on its (now newer) view finds the event and
        // writes nothing.
        let rerun = accept_once(&loser.log, &key, loser.log.node());
        assert!(rerun.writes.is_empty());
    }

    for n in [&a, &b, &c] {
        n.log.caught_up().await.unwrap();
    }
    let events = dump(a.log.view(), "events");
    assert_eq!(events.len(), 40);
    assert_eq!(
        dump(a.log.view(), "outbox").len(),
        40,
        "one outbox entry per event"
    );
    for n in [&b, &c] {
        assert_eq!(dump(n.log.view(), "events"), events);
        assert_eq!(dump(n.log.view(), "outbox"), dump(a.log.view(), "outbox"));
        assert_eq!(
            n.log.view().applied().unwrap(),
            a.log.view().applied().unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_resumes_and_an_empty_view_is_rebuilt_from_the_log() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = log_at(cluster.urls(), "a", 3, dir.path()).await;
    for i in 0..20u32 {
        let mut r = Recorder::new(a.view());
        r.insert("deliveries", &i.to_be_bytes(), vec![b'x'; 1000]);
        if i % 2 == 1 {
            r.remove("deliveries", &(i - 1).to_be_bytes());
        }
        let outcome = a.publish(&r.into_batch("a")).await.unwrap();
        assert!(matches!(outcome, Outcome::Applied { .. }));
    }
    let before = dump(a.view(), "deliveries");
    let applied = a.view().applied().unwrap();
    assert_eq!(before.len(), 10);
    drop(a);

    // The same view directory: nothing re-applied, then new batches apply.
    let reopened = log_at(cluster.urls(), "a", 3, dir.path()).await;
    assert_eq!(reopened.caught_up().await.unwrap(), applied);
    assert_eq!(dump(reopened.view(), "deliveries"), before);
    let mut r = Recorder::new(reopened.view());
    r.insert("deliveries", b"late", b"y".to_vec());
    let outcome = reopened.publish(&r.into_batch("a")).await.unwrap();
    assert_eq!(outcome, Outcome::Applied { seq: applied + 1 });

    // A node with an empty view ends up with the same records.
    let fresh = node(vec![cluster.url(2)], "fresh", 3).await;
    assert_eq!(fresh.log.caught_up().await.unwrap(), applied + 1);
    assert_eq!(
        dump(fresh.log.view(), "deliveries"),
        dump(reopened.view(), "deliveries")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_server_of_three_killed_the_log_takes_batches_and_views_agree() {
    let Some(mut cluster) = NatsCluster::start(3).await else {
        return;
    };
    let a = node(cluster.urls(), "a", 3).await;
    let b = node(vec![cluster.url(0), cluster.url(1)], "b", 3).await;
    cluster.kill(2);
    for i in 0..30u32 {
        let n = if i % 2 == 0 { &a } else { &b };
        let key = format!("k{i}");
        // What the store's writers do: a publish may fail while the stream
        // elects a new leader; the change is then run again on the view,
        // which shows whether the first publish took effect after all.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let batch = accept_once(&n.log, &key, n.log.node());
            if batch.writes.is_empty() {
                break;
            }
            match n.log.publish(&batch).await {
                Ok(Outcome::Applied { .. }) => break,
                Ok(conflict) => panic!("nothing else writes {key}: {conflict:?}"),
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    eprintln!("retrying after {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }
    a.log.caught_up().await.unwrap();
    b.log.caught_up().await.unwrap();
    assert_eq!(dump(a.log.view(), "events").len(), 30);
    assert_eq!(dump(a.log.view(), "events"), dump(b.log.view(), "events"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_another_replication_is_named_at_start() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let _one = node(cluster.urls(), "a", 1).await;
    let client = connect(&ClusterSettings::new(cluster.urls()))
        .await
        .unwrap();
    assert_eq!(
        crate::cluster::replicas(&ClusterSettings::new(vec![]), &client),
        3
    );
    let dir = tempfile::tempdir().unwrap();
    let view = Arc::new(View::open(sled::open(dir.path()).unwrap()).unwrap());
    let Err(e) = Log::open(client, 3, "b", view).await else {
        panic!("a stream with 1 replica was accepted for 3");
    };
    assert!(matches!(e, ClusterError::Incompatible { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "stream WASMHOOK_LOG exists with num_replicas = 1, but this node needs 3"
    );
}

#[tokio::test]
async fn an_unreachable_cluster_is_named() {
    let settings = ClusterSettings {
        request_timeout: std::time::Duration::from_millis(500),
        ..ClusterSettings::new(vec![
            "nats://127.0.0.1:1".into(),
            "nats://127.0.0.1:2".into(),
        ])
    };
    let Err(e) = connect(&settings).await else {
        panic!("connected to nothing");
    };
    let text = e.to_string();
    assert!(
        text.starts_with("cannot reach NATS at nats://127.0.0.1:1,nats://127.0.0.1:2: "),
        "{text}"
    );
}

#[test]
fn a_conflicting_guard_changes_nothing_but_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let view = View::open(sled::open(dir.path()).unwrap()).unwrap();
    let mut r = Recorder::new(&view);
    assert_eq!(r.get("t", b"k").unwrap(), None);
    r.insert("t", b"k", b"1".to_vec());
    r.insert("u", b"other", b"x".to_vec());
    // Reads see the recorder's own writes and add no guard for them.
    assert_eq!(r.get("t", b"k").unwrap(), Some(b"1".to_vec()));
    let first = r.into_batch("n");
    assert_eq!(first.guards.len(), 1);

    let mut r = Recorder::new(&view);
    assert_eq!(r.get("t", b"k").unwrap(), None);
    r.insert("t", b"k", b"2".to_vec());
    let second = r.into_batch("n");

    assert_eq!(view.apply(1, &first).unwrap(), Outcome::Applied { seq: 1 });
    assert_eq!(
        view.apply(2, &second).unwrap(),
        Outcome::Conflict {
            seq: 2,
            tree: "t".into(),
            key: b"k".to_vec()
        }
    );
    assert_eq!(
        view.tree("t").unwrap().get(b"k").unwrap().unwrap(),
        &b"1"[..]
    );
    assert_eq!(view.applied().unwrap(), 2);
    // A sequence seen again (a recreated consumer) is skipped.
    assert_eq!(view.apply(1, &second).unwrap(), Outcome::Applied { seq: 1 });
    assert_eq!(
        view.tree("t").unwrap().get(b"k").unwrap().unwrap(),
        &b"1"[..]
    );
    // A guard on a value (not only on absence) holds until it changes.
    let mut r = Recorder::new(&view);
    assert_eq!(r.get("t", b"k").unwrap(), Some(b"1".to_vec()));
    r.remove("t", b"k");
    let remove = r.into_batch("n");
    assert_eq!(view.apply(3, &remove).unwrap(), Outcome::Applied { seq: 3 });
    assert_eq!(view.tree("t").unwrap().get(b"k").unwrap(), None);
    assert_eq!(
        view.tree("u").unwrap().get(b"other").unwrap().unwrap(),
        &b"x"[..]
    );
}

/// Batches applied in one group give the outcomes and the state that
/// applying them one by one gives: a guard sees the writes of the batches
/// before it in the group, a conflict changes nothing, a sequence seen
/// before is skipped, and the hooks see only the applied batches.
#[test]
fn a_group_applies_as_its_batches_one_by_one() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let one_by_one = View::open(sled::open(dirs[0].path()).unwrap()).unwrap();
    let grouped = View::open(sled::open(dirs[1].path()).unwrap()).unwrap();
    let hooked = Arc::new(Mutex::new(Vec::new()));
    let seen = hooked.clone();
    grouped.on_applied(Box::new(move |b: &Batch| {
        seen.lock().unwrap().push(b.id.clone())
    }));

    // Each batch computed on the empty view: "k absent" guards all three,
    // so the second and third conflict behind the first; the fourth guards
    // nothing and writes another tree.
    let write = |id: &str, tree: &str, value: &[u8], guarded: bool| {
        let mut r = Recorder::new(&one_by_one);
        if guarded {
            assert_eq!(r.get("t", b"k").unwrap(), None);
        }
        r.insert(tree, b"k", value.to_vec());
        let mut batch = r.into_batch("n");
        batch.id = id.into();
        batch
    };
    let batches = [
        write("b1", "t", b"1", true),
        write("b2", "t", b"2", true),
        write("b3", "t", b"3", true),
        write("b4", "u", b"4", false),
    ];
    let expected: Vec<Outcome> = batches
        .iter()
        .enumerate()
        .map(|(i, b)| one_by_one.apply(i as u64 + 1, b).unwrap())
        .collect();
    assert!(matches!(expected[1], Outcome::Conflict { seq: 2, .. }));

    let applying: Vec<Applying<'_>> = batches
        .iter()
        .enumerate()
        .map(|(i, batch)| Applying {
            seq: i as u64 + 1,
            batch,
            parts: &[],
        })
        .collect();
    assert_eq!(grouped.apply_group(&applying).unwrap(), expected);
    assert_eq!(grouped.applied().unwrap(), 4);
    for tree in ["t", "u"] {
        assert_eq!(dump(&grouped, tree), dump(&one_by_one, tree), "{tree}");
    }
    assert_eq!(*hooked.lock().unwrap(), ["b1", "b4"]);

    // The same group again (a recreated consumer): skipped, no hook.
    let again = grouped.apply_group(&applying).unwrap();
    assert!(again.iter().all(|o| matches!(o, Outcome::Applied { .. })));
    assert_eq!(grouped.applied().unwrap(), 4);
    assert_eq!(hooked.lock().unwrap().len(), 2);
}

/// The keys of a view's log tree that hold parts of batches.
fn kept_parts(view: &View) -> usize {
    view.log.scan_prefix(PARTS).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_a_message_goes_in_parts_and_applies_whole() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let a = node(cluster.urls(), "a", 1).await;
    let b = node(cluster.urls(), "b", 1).await;
    // Guarded, 3 MiB: three parts or more under the default 1 MiB limit.
    let mut r = Recorder::new(a.log.view());
    assert!(r.get("windows", b"w").unwrap().is_none());
    for i in 0..3u8 {
        r.insert("windows", &[i], vec![i; 1 << 20]);
    }
    let big = r.into_batch("a");
    let small = {
        let mut r = Recorder::new(b.log.view());
        r.insert("other", b"k", b"v".to_vec());
        r.into_batch("b")
    };
    // Another node's batch may land between the parts.
    let (big_outcome, small_outcome) = tokio::join!(a.log.publish(&big), b.log.publish(&small));
    let Outcome::Applied { seq } = big_outcome.unwrap() else {
        panic!("the big batch conflicted");
    };
    assert!(matches!(small_outcome.unwrap(), Outcome::Applied { .. }));
    assert!(seq >= 3, "applied at its last part's sequence: {seq}");
    b.log.caught_up().await.unwrap();
    for view in [a.log.view(), b.log.view()] {
        let windows = dump(view, "windows");
        assert_eq!(windows.len(), 3);
        assert!(
            windows
                .iter()
                .all(|(k, v)| v.len() == 1 << 20 && v[0] == k[0])
        );
        assert_eq!(kept_parts(view), 0, "parts dropped once applied");
    }
    // The same guard again: a conflict, decided at the last part.
    let mut r = Recorder::new(b.log.view());
    assert!(r.get("windows", &[0]).unwrap().is_some());
    r.insert("windows", &[9], vec![9; 2 << 20]);
    let stale = r.into_batch("b");
    let mut r = Recorder::new(a.log.view());
    r.remove("windows", &[0]);
    a.log.publish(&r.into_batch("a")).await.unwrap();
    assert!(matches!(
        b.log.publish(&stale).await.unwrap(),
        Outcome::Conflict { .. }
    ));
    b.log.caught_up().await.unwrap();
    assert!(
        b.log
            .view()
            .tree("windows")
            .unwrap()
            .get([9])
            .unwrap()
            .is_none()
    );
    assert_eq!(kept_parts(b.log.view()), 0);
}

#[test]
fn a_batch_missing_a_part_applies_nothing_and_orphan_parts_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let view = View::open(sled::open(dir.path()).unwrap()).unwrap();
    let whole = postcard::to_allocvec(&Batch {
        id: "b1".into(),
        node: "n".into(),
        guards: vec![],
        writes: vec![Write {
            tree: "t".into(),
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
        }],
    })
    .unwrap();
    let (first, last) = whole.split_at(whole.len() / 2);
    // Kept across a restart of the view (same sled directory).
    view.stash_part(1, "b1", 0, first).unwrap();
    assert_eq!(view.applied().unwrap(), 1);
    let (bytes, drop) = view.assemble(2, "b1", 2, last).unwrap();
    assert_eq!(bytes.as_deref(), Some(&whole[..]));
    assert_eq!(drop.len(), 1);

    // Part 0 of 3 of "b2" never came: nothing to assemble.
    view.stash_part(3, "b2", 1, b"x").unwrap();
    let (bytes, _) = view.assemble(4, "b2", 3, b"y").unwrap();
    assert!(bytes.is_none());

    // An orphan (its last part never comes) is dropped far enough on.
    view.stash_part(5, "b3", 0, b"z").unwrap();
    let (_, drop) = view.assemble(6, "b4", 1, b"").unwrap();
    assert!(!drop.contains(&part_key(PARTS, "b3", 0)));
    let (_, drop) = view.assemble(6 + ORPHAN_PARTS_AFTER, "b4", 1, b"").unwrap();
    assert!(drop.contains(&part_key(PARTS, "b3", 0)));
    assert!(drop.contains(&part_key(PARTS, "b2", 1)));
}

/// A tree's rows, in key order.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Every replicated tree of a view (what a snapshot carries), in order.
fn records(view: &View) -> Vec<(String, Rows)> {
    let mut names: Vec<String> = view
        .db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .filter(|n| !n.starts_with("__") && n != "meta" && n != "plugin_blobs")
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let rows = dump(view, &n);
            (n, rows)
        })
        .filter(|(_, rows)| !rows.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_log_is_rebuilt_from_the_snapshot_by_new_and_lagging_nodes() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let lagging_dir = tempfile::tempdir().unwrap();
    let a = node(cluster.urls(), "a", 1).await;
    let write = |log: &Log, i: u32| {
        let mut r = Recorder::new(log.view());
        r.insert("deliveries", &i.to_be_bytes(), vec![b'x'; 100]);
        if i.is_multiple_of(3) {
            r.remove("deliveries", &(i / 2).to_be_bytes());
        }
        r.insert("tenants", b"t", i.to_be_bytes().to_vec());
        r.into_batch(log.node())
    };
    // A node that saw the first five batches, then stopped.
    {
        let lagging = log_at(cluster.urls(), "lagging", 1, lagging_dir.path()).await;
        for i in 0..5 {
            lagging.publish(&write(&lagging, i)).await.unwrap();
        }
        assert_eq!(lagging.view().applied().unwrap(), 5);
    }
    for i in 5..25 {
        a.log.publish(&write(&a.log, i)).await.unwrap();
    }
    // The first snapshot purges nothing; the second purges below the first.
    let (first, purged) = a.log.compact().await.unwrap();
    assert_eq!((first, purged), (25, None));
    for i in 25..40 {
        a.log.publish(&write(&a.log, i)).await.unwrap();
    }
    let (second, purged) = a.log.compact().await.unwrap();
    assert_eq!((second, purged), (40, Some(26)));
    // Nothing new: not stored again.
    assert_eq!(a.log.compact().await.unwrap(), (40, None));
    for i in 40..45 {
        a.log.publish(&write(&a.log, i)).await.unwrap();
    }
    let want = records(a.log.view());
    assert!(want.iter().any(|(n, _)| n == "deliveries"));

    // A new node: the snapshot at 40, then the batches after it.
    let fresh = node(cluster.urls(), "fresh", 1).await;
    assert_eq!(fresh.log.caught_up().await.unwrap(), 45);
    assert_eq!(records(fresh.log.view()), want);
    // The lagging node (at 5, the log now starts at 26): the same.
    let lagging = log_at(cluster.urls(), "lagging", 1, lagging_dir.path()).await;
    assert_eq!(lagging.caught_up().await.unwrap(), 45);
    assert_eq!(records(lagging.view()), want);
    // And both go on with the log.
    let outcome = fresh.log.publish(&write(&fresh.log, 45)).await.unwrap();
    assert_eq!(outcome, Outcome::Applied { seq: 46 });
    a.log.caught_up().await.unwrap();
    lagging.caught_up().await.unwrap();
    assert_eq!(records(lagging.view()), records(a.log.view()));
}

/// A log compacted while still empty (a partition no tenant has written
/// to yet) stores no snapshot, and the next compaction purges nothing:
/// NATS treats a purge "below sequence 1" as a purge of the whole stream,
/// which took the batches written since with it (found at 10,000 tenants:
/// the holders' appliers stopped, "compacted past this node's view").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacting_an_empty_log_keeps_what_is_written_after() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let a = node(cluster.urls(), "a", 1).await;
    assert_eq!(a.log.compact().await.unwrap(), (0, None));
    let write = |log: &Log, i: u32| {
        let mut r = Recorder::new(log.view());
        r.insert("deliveries", &i.to_be_bytes(), vec![b'x'; 100]);
        r.into_batch(log.node())
    };
    for i in 0..10 {
        a.log.publish(&write(&a.log, i)).await.unwrap();
    }
    // The first snapshot of anything: nothing purged.
    assert_eq!(a.log.compact().await.unwrap(), (10, None));
    for i in 10..15 {
        a.log.publish(&write(&a.log, i)).await.unwrap();
    }
    // A node that reads the whole log finds every batch there.
    let fresh = node(cluster.urls(), "fresh", 1).await;
    assert_eq!(fresh.log.caught_up().await.unwrap(), 15);
    assert_eq!(records(fresh.log.view()), records(a.log.view()));
}

/// A log stopped (its partition given up) answers a writer at once
/// instead of leaving it to wait out the time limit for an apply that
/// never comes (a request hung 30 s while partitions moved at 1,000
/// tenants).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_log_answers_its_writers_at_once() {
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let a = node(cluster.urls(), "a", 1).await;
    let mut r = Recorder::new(a.log.view());
    r.insert("deliveries", b"k", b"v".to_vec());
    a.log.publish(&r.into_batch(a.log.node())).await.unwrap();
    a.log.stop();
    let mut r = Recorder::new(a.log.view());
    r.insert("deliveries", b"k2", b"v".to_vec());
    let started = std::time::Instant::now();
    let refused = a.log.publish(&r.into_batch(a.log.node())).await;
    assert!(matches!(refused, Err(ClusterError::Stopped)), "{refused:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn a_snapshot_carries_the_records_and_unfinished_parts_but_not_the_nodes_own_trees() {
    let from_dir = tempfile::tempdir().unwrap();
    let from = View::open(sled::open(from_dir.path()).unwrap())
        .unwrap()
        .with_local_trees(&["__sled__default", "meta"]);
    from.tree("events").unwrap().insert(b"e1", b"one").unwrap();
    from.tree("meta")
        .unwrap()
        .insert(b"health", b"mine")
        .unwrap();
    from.stash_part(7, "big", 0, b"half").unwrap();
    let (file, seq) = from.export().unwrap();
    assert_eq!(seq, 7);

    let to_dir = tempfile::tempdir().unwrap();
    let to = View::open(sled::open(to_dir.path()).unwrap())
        .unwrap()
        .with_local_trees(&["__sled__default", "meta"]);
    to.tree("events")
        .unwrap()
        .insert(b"stale", b"gone")
        .unwrap();
    to.tree("meta")
        .unwrap()
        .insert(b"health", b"its own")
        .unwrap();
    assert_eq!(to.restore(file.path()).unwrap(), 7);
    assert_eq!(to.applied().unwrap(), 7);
    assert_eq!(dump(&to, "events"), vec![(b"e1".to_vec(), b"one".to_vec())]);
    assert_eq!(
        dump(&to, "meta"),
        vec![(b"health".to_vec(), b"its own".to_vec())]
    );
    // The batch whose last part comes after the snapshot still assembles.
    let (bytes, _) = to.assemble(8, "big", 2, b"!").unwrap();
    assert_eq!(bytes.as_deref(), Some(&b"half!"[..]));

    let damaged = to_dir.path().join("damaged");
    std::fs::write(&damaged, b"not a snapshot at all").unwrap();
    assert!(matches!(
        to.restore(&damaged),
        Err(ClusterError::Snapshot(_))
    ));
}

/// The next entry of a reader, within 10 s.
async fn next(entries: &mut read::Entries) -> read::Entry {
    tokio::time::timeout(std::time::Duration::from_secs(10), entries.next())
        .await
        .expect("an entry within 10 s")
        .expect("the reader goes on")
        .unwrap()
}

/// The reader by sequence (what the applier uses while no consumer can be
/// made): the log in order, through direct gets and through the leader's
/// gets; woken by a publish; and, once a consumer can be made again, it
/// hands one over from where it stopped and ends. A stream made before
/// direct gets is allowed them when a node opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_read_by_sequence_while_no_consumer_is_made() {
    use std::time::{Duration, Instant};
    let Some(cluster) = NatsCluster::start(1).await else {
        return;
    };
    let a = node(cluster.urls(), "a", 1).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let batch = accept_once(&a.log, &format!("k{i}"), "a");
        ids.push(batch.id.clone());
        a.log.publish(&batch).await.unwrap();
    }
    let js = jetstream::new(a.log.client());
    let stream = js.get_stream(STREAM).await.unwrap();
    assert!(stream.cached_info().config.allow_direct);
    // As a version before direct gets made it.
    js.update_stream(stream::Config {
        allow_direct: false,
        ..stream.cached_info().config.clone()
    })
    .await
    .unwrap();
    let leaders = js.get_stream(STREAM).await.unwrap();
    assert!(!leaders.cached_info().config.allow_direct);

    let never = Instant::now() + Duration::from_secs(3600);
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut entries = read::by_sequence(leaders, 2, wake, never, read::Handover::default());
    for (seq, id) in (2..=5).zip(&ids[1..]) {
        let entry = next(&mut entries).await;
        assert_eq!(
            (entry.seq, &decode(seq, &entry.payload).unwrap().id),
            (seq, id)
        );
    }
    // A reader that believes direct gets allowed asks the leader.
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut entries = read::by_sequence(stream, 3, wake, never, read::Handover::default());
    assert_eq!(next(&mut entries).await.seq, 3);

    // A node opening it allows direct gets again.
    let b = node(cluster.urls(), "b", 1).await;
    let stream = js.get_stream(STREAM).await.unwrap();
    assert!(stream.cached_info().config.allow_direct);
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut entries = read::by_sequence(stream.clone(), 1, wake, never, read::Handover::default());
    for (seq, id) in (1..=5).zip(&ids) {
        let entry = next(&mut entries).await;
        assert_eq!(
            (entry.seq, &decode(seq, &entry.payload).unwrap().id),
            (seq, id)
        );
    }

    // At the log's end it waits; a publish is read next.
    let handover = read::Handover::default();
    let mut entries = read::by_sequence(
        stream.clone(),
        1,
        Arc::new(tokio::sync::Notify::new()),
        never,
        handover.clone(),
    );
    for seq in 1..=5 {
        assert_eq!(next(&mut entries).await.seq, seq);
    }
    let batch = accept_once(&b.log, "k5", "b");
    let late = batch.id.clone();
    b.log.publish(&batch).await.unwrap();
    let entry = next(&mut entries).await;
    assert_eq!(
        (entry.seq, decode(6, &entry.payload).unwrap().id),
        (6, late)
    );
    assert!(handover.lock().unwrap().is_none());

    // Allowed to make a consumer: it is made beside the gets (whether or
    // not they are at the end) and handed over, and the reader ends; what
    // it gave meanwhile is a run from 5, and the consumer gives from
    // where it was made (5: its first round).
    let mut entries = read::by_sequence(
        stream,
        5,
        Arc::new(tokio::sync::Notify::new()),
        Instant::now(),
        handover.clone(),
    );
    let mut read_first = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), entries.next()).await {
            Ok(Some(entry)) => read_first.push(entry.unwrap().seq),
            Ok(None) => break,
            Err(_) => panic!("the reader never ended with a consumer"),
        }
    }
    assert!(
        read_first.len() <= 2
            && read_first
                .iter()
                .copied()
                .eq(5..5 + read_first.len() as u64),
        "{read_first:?}"
    );
    let consumer = handover
        .lock()
        .unwrap()
        .take()
        .expect("a consumer handed over");
    let batch = accept_once(&a.log, "k6", "a");
    a.log.publish(&batch).await.unwrap();
    let mut consumed = read::consumed(consumer);
    assert_eq!(next(&mut consumed).await.seq, 5);
    assert_eq!(next(&mut consumed).await.seq, 6);
    let entry = next(&mut consumed).await;
    assert_eq!(
        (entry.seq, decode(7, &entry.payload).unwrap().id),
        (7, batch.id)
    );
}

/// Waits (up to 10 s) until `log` reads under its read lease.
async fn until_leased(log: &Log) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !log.reads_under_lease() {
        assert!(std::time::Instant::now() < deadline, "no read lease");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_acknowledged_once_every_node_reading_under_a_lease_has_it() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let ttl = std::time::Duration::from_secs(3);
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Arc::new(log_at(vec![cluster.url(0)], "a", 3, da.path()).await);
    let b = Arc::new(log_at(vec![cluster.url(1)], "b", 3, db.path()).await);
    let c = Arc::new(log_at(vec![cluster.url(2)], "c", 3, dc.path()).await);
    // A member without a lease record (a node of an older version, which
    // would not wait) keeps every node asking the log.
    let members = Arc::new(Mutex::new(
        ["a", "b", "c", "old"].map(String::from).to_vec(),
    ));
    for n in [&a, &b, &c] {
        let members = members.clone();
        n.lease_reads(
            Some(ttl),
            Arc::new(move || Some(members.lock().unwrap().iter().cloned().collect())),
        )
        .await
        .unwrap();
    }
    tokio::time::sleep(ttl).await;
    for n in [&a, &b, &c] {
        assert!(
            !n.reads_under_lease(),
            "{} reads beside an old node",
            n.node()
        );
    }
    members.lock().unwrap().pop();
    for n in [&a, &b, &c] {
        until_leased(n).await;
    }
    let write = |log: &Log, i: u32| {
        let mut r = Recorder::new(log.view());
        r.insert("subscriptions", &i.to_be_bytes(), vec![b'x'; 10]);
        r.into_batch(log.node())
    };
    let seq = |o: Outcome| match o {
        Outcome::Applied { seq } => seq,
        other => panic!("{other:?}"),
    };

    // Acknowledged: every node under lease has it, with no request of its
    // own (its reads come from its view).
    for i in 0..20 {
        let s = seq(a.publish(&write(&a, i)).await.unwrap());
        for n in [&b, &c] {
            assert!(
                n.view().applied().unwrap() >= s || !n.reads_under_lease(),
                "{} reads under its lease without {s}",
                n.node()
            );
            assert!(n.caught_up().await.unwrap() >= s);
        }
    }

    // b's view stalls (its applier cannot take the view's lock): a's next
    // write waits until b's lease has run out, and b, unable to apply its
    // own renewals, no longer reads under it by then.
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let stalled = b.clone();
    let holder = std::thread::spawn(move || {
        let _applying = stalled.view().applying.lock().unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    locked.recv().unwrap();
    let s = seq(a.publish(&write(&a, 100)).await.unwrap());
    assert!(b.view().applied().unwrap() < s);
    assert!(
        !b.reads_under_lease(),
        "acknowledged while b read under its lease"
    );
    // c answered at once and has it.
    assert!(c.view().applied().unwrap() >= s);
    release.send(()).unwrap();
    holder.join().unwrap();
    // b asks the log meanwhile, then reads under a lease again.
    assert!(b.caught_up().await.unwrap() >= s);
    until_leased(&b).await;

    // A node that leaves is not waited for.
    c.leave().await;
    assert!(!c.reads_under_lease());
    let s = seq(a.publish(&write(&a, 200)).await.unwrap());
    a.caught_up().await.unwrap();
    let readers = a.readers.get().unwrap();
    assert!(!readers.knows(c.node()), "c's record is gone");
    assert!(readers.knows(b.node()));
    drop(c);

    // A node that dies without leaving: a's write waits its lease out (as
    // a reckons it), and no longer (its record stays until it is ten
    // leases old).
    b.stop();
    drop(b);
    let started = std::time::Instant::now();
    let waits_until = readers.waits_for_until("b").unwrap();
    let after = seq(a.publish(&write(&a, 300)).await.unwrap());
    assert!(after > s);
    assert!(
        std::time::Instant::now() >= waits_until,
        "acknowledged before b's lease ran out"
    );
    assert!(readers.knows("b"));
    assert!(
        started.elapsed() < ttl + std::time::Duration::from_secs(10),
        "a dead node held a write for {:?}",
        started.elapsed()
    );
}
