//! In-flight caps: up to `max` slots per key, dropping a slot frees it,
//! keys are independent, and counts return to zero.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use portcullis_contain::concurrency::InFlight;

#[test]
fn acquire_up_to_max_then_none() {
    let f = InFlight::default();
    assert_eq!(f.count("a"), 0);
    let slots: Vec<_> = (0..3).map(|_| f.acquire("a", 3).unwrap()).collect();
    assert_eq!(f.count("a"), 3);
    assert!(f.acquire("a", 3).is_none());
    assert_eq!(f.count("a"), 3, "a refused acquire takes nothing");
    // A larger max for the same key lets one more in.
    let extra = f.acquire("a", 4).unwrap();
    assert_eq!(f.count("a"), 4);
    drop(extra);
    drop(slots);
    assert_eq!(f.count("a"), 0);
}

#[test]
fn dropping_a_slot_frees_it() {
    let f = InFlight::default();
    let s1 = f.acquire("a", 2).unwrap();
    let s2 = f.acquire("a", 2).unwrap();
    assert!(f.acquire("a", 2).is_none());
    drop(s1);
    assert_eq!(f.count("a"), 1);
    let s3 = f.acquire("a", 2).unwrap();
    assert!(f.acquire("a", 2).is_none());
    drop(s2);
    drop(s3);
    assert_eq!(f.count("a"), 0);
    // And the key is fully usable again.
    let again: Vec<_> = (0..2).map(|_| f.acquire("a", 2).unwrap()).collect();
    assert_eq!(f.count("a"), 2);
    drop(again);
    assert_eq!(f.count("a"), 0);
}

#[test]
fn keys_are_independent() {
    let f = InFlight::default();
    let a = f.acquire("a", 1).unwrap();
    assert!(f.acquire("a", 1).is_none());
    let b = f.acquire("b", 1).unwrap();
    assert!(f.acquire("b", 1).is_none());
    assert_eq!((f.count("a"), f.count("b"), f.count("c")), (1, 1, 0));
    drop(a);
    assert_eq!((f.count("a"), f.count("b")), (0, 1));
    assert!(f.acquire("b", 1).is_none(), "freeing a does not free b");
    drop(b);
    assert_eq!(f.count("b"), 0);
}

#[test]
fn max_zero_admits_nothing() {
    let f = InFlight::default();
    assert!(f.acquire("a", 0).is_none());
    assert_eq!(f.count("a"), 0);
    let s = f.acquire("a", 1).unwrap();
    assert_eq!(f.count("a"), 1);
    drop(s);
    assert_eq!(f.count("a"), 0);
}

#[test]
fn slots_outlive_nothing_and_count_returns_to_zero_across_threads() {
    let f = Arc::new(InFlight::default());
    let max = 4;
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let f = f.clone();
            let peak = peak.clone();
            std::thread::spawn(move || {
                let mut got = 0;
                for _ in 0..2000 {
                    if let Some(slot) = f.acquire("shared", max) {
                        got += 1;
                        let n = f.count("shared");
                        peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                        assert!(n <= max, "{n} in flight");
                        drop(slot);
                    }
                }
                got
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(total > 0);
    assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= max);
    assert_eq!(f.count("shared"), 0);
}

#[test]
fn a_slot_moved_to_another_thread_still_frees() {
    let f = InFlight::default();
    let s = f.acquire("a", 1).unwrap();
    std::thread::spawn(move || drop(s)).join().unwrap();
    assert_eq!(f.count("a"), 0);
    assert!(f.acquire("a", 1).is_some());
}
