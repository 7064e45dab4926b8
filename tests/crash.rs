//! Crash consistency: adaptd is killed with SIGKILL at seeded random moments (also while it is
//! still starting) while a client streams QoS 1 learn messages, and restarted each time. At
//! the end every message is in the head exactly once, the state directory loaded every time,
//! and no temporary file is left behind.
//!
//! `ADAPTD_TEST_KILLS` sets the number of kills (default 10 here; `scripts/crash-soak` runs
//! 100), `ADAPTD_TEST_SEED` the seed (default 1).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{class_counts, variants, wait_bound, Client, Daemon, Mosquitto};
use rand::{Rng, SeedableRng};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let kills = env_or("ADAPTD_TEST_KILLS", 10);
    let seed = env_or("ADAPTD_TEST_SEED", 1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().expect("tmp");
    let dir = state.path().join("s");
    let mut d = Daemon::start(
        &broker.url(),
        &dir,
        "crash",
        // Snapshots often, so kills also land during snapshot writes.
        &[("ADAPTD_STATE_SNAPSHOT_EVERY_SAMPLES", "7")],
    );
    let root = d.root();
    let c = Arc::new(Client::connect(broker.port, &[&format!("{root}/#")]).await);
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;

    // The stream: one message every 100 ms, each with its own label, until told to stop.
    let images = Arc::new(variants("coffee.jpg", 16, 99));
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (c, images, sent, stop, root) = (
            c.clone(),
            images.clone(),
            sent.clone(),
            stop.clone(),
            root.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                c.publish(
                    &format!("{root}/learn/m{i}"),
                    images[i % images.len()].clone(),
                )
                .await;
                i += 1;
                sent.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let onlines = || {
        c.on(&format!("{root}/status"))
            .iter()
            .filter(|m| m.payload == b"online")
            .count()
    };
    // "online" messages seen before the current process started (it takes far longer than
    // this bookkeeping to load the model and connect).
    let mut mark = 0;
    let mut before_online = 0;
    for k in 0..kills {
        // Half the kills hit a running daemon, the rest one that may still be starting.
        if rng.gen_bool(0.5) {
            let deadline = Instant::now() + wait_bound();
            while onlines() <= mark {
                assert!(
                    Instant::now() < deadline,
                    "restart {k}: the state directory did not load:\n{}",
                    d.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } else {
            before_online += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..1500))).await;
        d.kill9();
        mark = onlines();
        d.restart();
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let total = sent.load(Ordering::Relaxed);

    // Everything sent ends up learned exactly once (acknowledged ones from the WAL, the rest
    // redelivered by the broker's persistent session).
    let deadline = Instant::now() + wait_bound() * 3;
    loop {
        let done = c
            .on(&format!("{root}/info"))
            .last()
            .is_some_and(|m| m.json()["head"]["samples"].as_u64() >= Some(total as u64));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all {total} learned after {kills} kills:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    c.wait_for(&format!("{root}/result"), |m| {
        m.json()["command"] == "snapshot"
    })
    .await;
    let info = c.on(&format!("{root}/info")).last().expect("info").json();
    let counts = class_counts(&info);
    assert_eq!(info["head"]["samples"], total as u64, "duplicates");
    assert_eq!(counts.len(), total);
    for i in 0..total {
        assert_eq!(counts.get(&format!("m{i}")), Some(&1), "message {i}");
    }
    assert!(d.stop(), "clean stop");
    let leftovers: Vec<String> = walk(&dir)
        .into_iter()
        .filter(|p| p.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    eprintln!(
        "SIGKILL x{kills} (seed {seed}, {before_online} possibly during start): {total} samples, 0 lost, 0 duplicated"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}
