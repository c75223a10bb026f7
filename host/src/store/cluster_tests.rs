//! The store's own code in cluster mode: two nodes, each a [`Store`] with
//! its own view, on a real 3-server NATS cluster.

use crate::cluster::testing::NatsCluster;
use crate::cluster::{ClusterSettings, connect};
use crate::store::embedded::commit::tests::new_event;
use crate::store::subscriptions::tests::sub;
use crate::store::*;

struct Node {
    store: Store,
    _dir: tempfile::TempDir,
}

async fn node(url: String, name: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let client = connect(&ClusterSettings::new(vec![url])).await.unwrap();
    let store = Store::open_cluster(dir.path(), 16 << 20, client, 3, name, None)
        .await
        .unwrap();
    Node { store, _dir: dir }
}

fn at() -> Timestamp {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_records_and_decide_races_the_same_way() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let a = node(cluster.url(0), "a").await;
    let b = node(cluster.url(1), "b").await;

    // The same event id through both nodes at once: accepted once.
    for i in 0..10 {
        let id = format!("evt_{i}");
        let (ra, rb) = tokio::join!(
            a.store
                .accept(vec![new_event("ten_1", &id, &format!("dlv_a{i}"), at())]),
            b.store
                .accept(vec![new_event("ten_1", &id, &format!("dlv_b{i}"), at())]),
        );
        let (oa, ob) = (ra.unwrap().1, rb.unwrap().1);
        let winners: Vec<&str> = [("a", &oa), ("b", &ob)]
            .iter()
            .filter(|(_, o)| matches!(o[..], [Accepted::New]))
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(winners.len(), 1, "{oa:?} / {ob:?}");
        let (won, lost) = if winners[0] == "a" {
            ("a", "b")
        } else {
            ("b", "a")
        };
        b.store.check().await.unwrap();
        a.store.check().await.unwrap();
        for n in [&a, &b] {
            let stored = n.store.get_event("ten_1", &id).unwrap().unwrap();
            assert_eq!(stored.deliveries, [format!("dlv_{won}{i}")]);
            assert!(
                n.store
                    .get_delivery(&format!("dlv_{won}{i}"))
                    .unwrap()
                    .is_some()
            );
            assert!(
                n.store
                    .get_delivery(&format!("dlv_{lost}{i}"))
                    .unwrap()
                    .is_none()
            );
        }
    }
    assert_eq!(a.store.outbox_entries().count(), 10);
    assert_eq!(b.store.outbox_entries().count(), 10);

    // A subscription written through one node routes on the other (its
    // cached routes are dropped when the batch is applied there).
    assert!(b.store.routes("ten_1").unwrap().is_empty());
    a.store
        .put_subscription(&sub("sub_1", &["message.*"]))
        .await
        .unwrap();
    b.store.check().await.unwrap();
    assert_eq!(b.store.routes("ten_1").unwrap().len(), 1);

    // Two read-modify-writes of one subscription at once, one per node:
    // the log orders them and the later one re-runs, so neither is lost.
    let add = |store: &Store, t: &'static str| {
        let store = store.clone();
        async move {
            store
                .update_subscription("ten_1", "sub_1", |s| {
                    s.event_types.push(t.into());
                    true
                })
                .await
        }
    };
    let (x, y) = tokio::join!(add(&a.store, "x.created"), add(&b.store, "y.created"));
    x.unwrap();
    y.unwrap();
    for n in [&a, &b] {
        n.store.check().await.unwrap();
        let mut types = n.store.routes("ten_1").unwrap()[0].event_types.clone();
        types.sort();
        assert_eq!(types, ["message.*", "x.created", "y.created"]);
    }

    // An attempt recorded through one node moves the outbox on both.
    let mut d = a
        .store
        .get_delivery(
            &b.store
                .get_event("ten_1", "evt_0")
                .unwrap()
                .unwrap()
                .deliveries[0],
        )
        .unwrap()
        .unwrap();
    let leased = d.next_attempt_at;
    d.status = DeliveryStatus::Succeeded;
    d.next_attempt_at = None;
    b.store.record_delivery(&d, leased).await.unwrap();
    a.store.check().await.unwrap();
    assert_eq!(a.store.outbox_entries().count(), 9);
    assert_eq!(
        a.store.get_delivery(&d.id).unwrap().unwrap().status,
        DeliveryStatus::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_flushed_through_two_nodes_at_once_is_flushed_once() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let a = node(cluster.url(0), "a").await;
    let b = node(cluster.url(2), "b").await;
    let start = at();
    let mut held = new_event("ten_1", "evt_held", "dlv_held", at());
    held.deliveries.clear();
    held.event.deliveries.clear();
    for seq in 1..=3u64 {
        held.held.push(HeldWrite {
            tenant_id: "ten_1".into(),
            subscription_id: "sub_w".into(),
            start,
            end: start,
            close_at: start,
            seq,
            group: "conv".into(),
            item: format!("item {seq}"),
        });
    }
    a.store.accept(vec![held]).await.unwrap();
    b.store.check().await.unwrap();
    let items = b.store.held_items("sub_w", start).unwrap();
    assert_eq!(items.len(), 3);
    let flushed: Vec<(Vec<u8>, u64)> = items.iter().map(|(k, _)| (k.clone(), 10)).collect();

    let collection = |id: &str| {
        let mut d = new_event("ten_1", "evt_held", id, at())
            .deliveries
            .remove(0);
        d.subscription_id = "sub_w".into();
        d
    };
    let (da, db) = (collection("dlv_flush_a"), collection("dlv_flush_b"));
    let (fa, fb) = tokio::join!(
        a.store
            .commit_flush("ten_1", "sub_w", start, &flushed, std::slice::from_ref(&da)),
        b.store
            .commit_flush("ten_1", "sub_w", start, &flushed, std::slice::from_ref(&db)),
    );
    let (fa, fb) = (fa.unwrap(), fb.unwrap());
    assert!(fa ^ fb, "exactly one flush commits: {fa} / {fb}");
    for n in [&a, &b] {
        n.store.check().await.unwrap();
        assert!(n.store.held_items("sub_w", start).unwrap().is_empty());
        assert!(n.store.windows_of("sub_w").unwrap().is_empty());
        let sent = ["dlv_flush_a", "dlv_flush_b"]
            .iter()
            .filter(|id| n.store.get_delivery(id).unwrap().is_some())
            .count();
        assert_eq!(sent, 1, "the held items are in one collection");
    }
}

/// The object store is shared with whoever can write to the NATS account:
/// bytes that do not hash to the name a record gives them are refused,
/// never cached or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_bytes_from_the_object_store_are_checked_against_their_digest() {
    let Some(cluster) = NatsCluster::start(3).await else {
        return;
    };
    let a = node(cluster.url(0), "a").await;
    let b = node(cluster.url(1), "b").await;
    let good = b"a component".to_vec();
    let name = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&good));
    let blobs = a.store.blobs().unwrap();
    blobs.put(&name, &good).await.unwrap();
    // The put is acknowledged by a quorum; the server b reads through may
    // answer "not found" a moment longer (a busy machine): ask until found.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        // Until it is visible through b's server.
        if b.store.fetch_plugin(&name).await.unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never fetched");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(b.store.plugin_bytes(&name).unwrap(), Some(good));

    // Other bytes under a digest's name: refused on the node fetching them.
    let forged = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"another"));
    blobs.put(&forged, b"evil bytes").await.unwrap();
    let error = loop {
        match b.store.fetch_plugin(&forged).await {
            Err(e) => break e,
            Ok(true) => panic!("forged bytes were taken"),
            // Not visible through b's server yet.
            Ok(false) => {
                assert!(std::time::Instant::now() < deadline, "never fetched");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert_eq!(b.store.plugin_bytes(&forged).unwrap(), None, "not cached");
}
