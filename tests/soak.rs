//! The short soak (the long one is `cargo run --release --example loadgen -- --soak-secs 1800`):
//! 20 s of mixed traffic at the rate adaptd sustains — two closed-loop inference clients,
//! feedback on every 5th prediction, a labeled sample every 500 ms — through mosquitto. No
//! valid request may get an error reply, every labeled sample is learned once, the process
//! stays up and keeps its pid.

mod common;

use std::time::{Duration, Instant};

use common::{base64_encode, info, learn_all, variants, Client, Daemon, Mosquitto};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_for_20_seconds_without_errors() {
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().expect("tmp");
    let mut d = Daemon::start(&broker.url(), &state.path().join("s"), "soak", &[]);
    let root = d.root();
    let c = std::sync::Arc::new(Client::connect(broker.port, &[&format!("{root}/#")]).await);
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let cats = variants("chelsea.jpg", 40, 50);
    let cups = variants("coffee.jpg", 40, 51);
    learn_all(&c, &root, "cat", &cats[..2]).await;
    learn_all(&c, &root, "cup", &cups[..2]).await;
    info(&c, &root, |i| i["head"]["samples"] == 4).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for p in 0..2usize {
        let (c, root, imgs) = (
            c.clone(),
            root.clone(),
            if p == 0 { cats.clone() } else { cups.clone() },
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < deadline {
                let id = format!("p{p}-{n}");
                let img = &imgs[2 + n % 38];
                let req = serde_json::json!({"id": id, "image": base64_encode(img)});
                c.publish(&format!("{root}/infer"), req.to_string()).await;
                c.wait_for(&format!("{root}/prediction"), |m| {
                    m.json()["id"] == id.as_str()
                })
                .await;
                if n % 5 == 4 {
                    let label = if p == 0 { "cat" } else { "cup" };
                    let fb = serde_json::json!({"id": id, "label": label});
                    c.publish(&format!("{root}/feedback"), fb.to_string()).await;
                }
                n += 1;
            }
            n
        }));
    }
    let mut labeled = 4u64;
    let mut k = 0usize;
    while Instant::now() < deadline {
        let (label, img) = if k.is_multiple_of(2) {
            ("cat", &cats[2 + k % 38])
        } else {
            ("cup", &cups[2 + k % 38])
        };
        let req =
            serde_json::json!({"id": format!("l{k}"), "label": label, "image": base64_encode(img)});
        c.publish(&format!("{root}/learn"), req.to_string()).await;
        labeled += 1;
        k += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut predictions = 0;
    let mut feedback = 0u64;
    for t in tasks {
        let n = t.await.expect("client");
        predictions += n;
        feedback += (n / 5) as u64; // every 5th prediction of each client
    }
    // Every labeled sample and every feedback is learned, exactly once.
    let want = labeled + feedback;
    info(&c, &root, |i| i["head"]["samples"] == want).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let i = c.on(&format!("{root}/info")).last().expect("info").json();
    assert_eq!(i["head"]["samples"], want, "duplicates");
    assert!(d.alive(), "adaptd restarted or died");
    let errors = c.on(&format!("{root}/error"));
    assert!(
        errors.is_empty(),
        "error replies to valid requests: {:?}",
        errors.iter().map(|m| m.json()).collect::<Vec<_>>()
    );
    eprintln!(
        "soak 20 s: {predictions} predictions, {labeled} labeled + {feedback} feedback, head {} samples",
        i["head"]["samples"]
    );
    assert!(predictions > 0);
    assert!(d.stop());
}
