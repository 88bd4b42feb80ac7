//! The store's outbox operations directly: dedup, ordering, retention,
//! dead letters, and reopening the file.

use mcp_alertd::store::{DeadLetter, Enqueue, ListedState, Store};

fn enqueue(store: &Store, ids: &[&str], sinks: &[String], now: i64) -> usize {
    let items: Vec<Enqueue<'_>> = ids
        .iter()
        .map(|id| Enqueue {
            id,
            json: b"{}",
            sinks,
        })
        .collect();
    store.enqueue(&items, now).unwrap()
}

#[test]
fn deliveries_come_out_in_enqueue_order_once_and_delivered_ids_expire_with_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sinks = vec!["a".to_owned(), "b".to_owned()];
    assert_eq!(enqueue(&store, &["z", "m", "a"], &sinks, 100), 6);
    // The same ids again: nothing new.
    assert_eq!(enqueue(&store, &["z", "m"], &sinks, 100), 0);
    let (due, next) = store.due("a", 100, 10).unwrap();
    let order: Vec<&str> = due.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(order, ["z", "m", "a"], "raise order, not id order");
    assert_eq!(next, None);
    let acks: Vec<(String, i64, u64)> = due
        .iter()
        .map(|d| (d.id.clone(), d.delivery.next_ms, d.delivery.seq))
        .collect();
    store.ack("a", &acks, 200).unwrap();
    assert_eq!(
        store.counts().unwrap(),
        (3, 3, 0),
        "alerts held while sink b still waits"
    );
    // Delivered to a: a duplicate is still refused for a, accepted nowhere new.
    assert_eq!(enqueue(&store, &["z"], &sinks, 300), 0);
    // Past the retention the delivered ids are forgotten.
    assert_eq!(store.prune_delivered(201).unwrap(), 3);
    assert_eq!(enqueue(&store, &["z"], &sinks[..1], 400), 1);
}

#[test]
fn dead_letters_keep_their_alert_and_the_store_reopens_with_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sinks = vec!["hook".to_owned()];
    {
        let store = Store::open(dir.path()).unwrap();
        enqueue(&store, &["x", "y"], &sinks, 0);
        let (due, _) = store.due("hook", 0, 10).unwrap();
        let letter = DeadLetter {
            attempts: 3,
            enqueued_ms: 0,
            died_ms: 5,
            error: "HTTP 400".to_owned(),
        };
        store.kill("hook", "x", &due[0].delivery, &letter).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let rows = store.list().unwrap();
    assert_eq!(rows.len(), 2);
    let dead = rows.iter().find(|r| r.id == "x").unwrap();
    assert!(matches!(&dead.state, ListedState::Dead(d) if d.error == "HTTP 400"));
    assert_eq!(dead.alert, b"{}");
    assert_eq!(store.counts().unwrap(), (2, 1, 1));
    assert_eq!(store.purge(None, &[], true, true).unwrap(), 2);
    assert_eq!(store.counts().unwrap(), (0, 0, 0));
}
