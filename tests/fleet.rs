//! Fleet learning across real adaptd processes on one mosquitto: exact merging of what two
//! boards learned, idempotent republishing, recovery from retained heads after a restart and
//! from the state directory without them, and
//! every kind of bad peer head rejected with an error and without effect.

mod common;

use std::collections::HashMap;

use adaptd::fleet::Identity;
use adaptd::head::{Head, HeadConfig};
use common::{info, learn_all, predict, result_of, variants, Client, Daemon, Mosquitto};

const GROUP: &str = "warehouse";

fn fleet_topic(device: &str) -> String {
    format!("adaptd/fleet/{GROUP}/heads/{device}")
}

fn peer_version(info: &serde_json::Value, peer: &str) -> Option<u64> {
    info["fleet"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"] == peer)
        .and_then(|p| p["version"].as_u64())
}

/// Label → score of a prediction.
fn scores(p: &serde_json::Value) -> HashMap<String, f64> {
    p["top"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|s| {
                    (
                        s["label"].as_str().unwrap_or_default().to_string(),
                        s["score"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn key_of(dir: &std::path::Path) -> String {
    Identity::load_or_create(dir).expect("key").public_hex()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boards_merged_predict_like_one_board_taught_everything() {
    let mut broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let (sa, sb, sc) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let trusted = format!("[\"{}\", \"{}\"]", key_of(&sa), key_of(&sb));
    let fleet_env = [
        ("ADAPTD_FLEET_GROUP", GROUP),
        ("ADAPTD_FLEET_TRUSTED_KEYS", trusted.as_str()),
        ("ADAPTD_ADAPT_METHOD", "none"),
    ];
    let mut a = Daemon::start(&broker.url(), &sa, "board-a", &fleet_env);
    let b = Daemon::start(&broker.url(), &sb, "board-b", &fleet_env);
    let all = Daemon::start(
        &broker.url(),
        &sc,
        "board-all",
        &[("ADAPTD_ADAPT_METHOD", "none")],
    );
    let c = Client::connect(broker.port, &["adaptd/#"]).await;
    for d in [&a, &b, &all] {
        c.wait_for(&format!("{}/status", d.root()), |m| m.payload == b"online")
            .await;
    }
    let (ra, rb, rall) = (a.root(), b.root(), all.root());

    // Disjoint halves: both boards see cats (different ones), each sees one other class.
    let cats = variants("chelsea.jpg", 9, 21);
    let cups = variants("coffee.jpg", 6, 22);
    let people = variants("astronaut.jpg", 6, 23);
    learn_all(&c, &ra, "cat", &cats[..3]).await;
    learn_all(&c, &ra, "cup", &cups[..4]).await;
    learn_all(&c, &rb, "cat", &cats[3..6]).await;
    learn_all(&c, &rb, "person", &people[..4]).await;
    learn_all(&c, &rall, "cat", &cats[..6]).await;
    learn_all(&c, &rall, "cup", &cups[..4]).await;
    learn_all(&c, &rall, "person", &people[..4]).await;
    info(&c, &rall, |i| i["head"]["samples"] == 14).await;

    // Each board merges the other's local head (its own info still shows local statistics).
    let ia = info(&c, &ra, |i| {
        i["head"]["samples"] == 7
            && i["fleet"]["peers"][0]["id"] == "board-b"
            && i["fleet"]["peers"][0]["samples"] == 7
    })
    .await;
    info(&c, &rb, |i| i["fleet"]["peers"][0]["samples"] == 7).await;
    assert_eq!(ia["fleet"]["group"], GROUP);
    assert_eq!(ia["fleet"]["public_key"].as_str().map(str::len), Some(64));

    // Exact merge: the fleet head predicts like the board that saw everything.
    let tests: Vec<(&str, &Vec<u8>)> = cats[6..]
        .iter()
        .chain(&cups[4..])
        .chain(&people[4..])
        .enumerate()
        .map(|(i, img)| (["t0", "t1", "t2", "t3", "t4", "t5", "t6"][i], img))
        .collect();
    let mut reference = Vec::new();
    for (id, img) in &tests {
        let want = predict(&c, &rall, id, img).await;
        for root in [&ra, &rb] {
            let got = predict(&c, root, id, img).await;
            assert_eq!(got["label"], want["label"], "{id} on {root}");
            let (g, w) = (scores(&got), scores(&want));
            for (label, s) in &w {
                let d = (g.get(label).copied().unwrap_or(f64::NAN) - s).abs();
                assert!(
                    d < 1e-4,
                    "{id} on {root}: {label} {s} vs {:?}",
                    g.get(label)
                );
            }
        }
        reference.push(want);
    }

    // Idempotent: republishing B's retained head changes nothing and is no error.
    let retained = Client::connect(broker.port, &[&fleet_topic("board-b")]).await;
    let env = retained
        .wait_for(&fleet_topic("board-b"), |m| m.retain)
        .await;
    c.clear();
    c.publish_retained(&fleet_topic("board-b"), env.payload.clone())
        .await;
    let again = predict(&c, &ra, "again", tests[0].1).await;
    assert_eq!(scores(&again), scores(&reference[0]));
    assert!(
        c.on(&format!("{ra}/error")).is_empty(),
        "republish is not an error"
    );

    // A restarted board gets the fleet head back from the retained messages at once.
    assert!(a.stop());
    c.clear();
    a.restart();
    info(&c, &ra, |i| peer_version(i, "board-b").is_some()).await;
    let after = predict(&c, &ra, "after-restart", tests[0].1).await;
    assert_eq!(after["label"], reference[0]["label"]);

    // Without the broker's copy: peers' heads are kept in the state directory. B and A stop
    // and the broker loses everything it kept (retained heads, sessions); A restarted still
    // predicts with B's statistics. (An empty retained message would not do: A's kept
    // session would deliver it, and it withdraws B's head, as it should.)
    let mut b = b;
    assert!(b.stop());
    assert!(a.stop());
    drop(c);
    broker.kill();
    let _ = std::fs::remove_file(broker.dir().join("mosquitto.db"));
    broker.restart();
    let c = Client::connect(broker.port, &["adaptd/#"]).await;
    a.restart();
    let i = info(&c, &ra, |i| peer_version(i, "board-b").is_some()).await;
    assert_eq!(i["fleet"]["rebuilds"], 1, "{i}");
    let alone = predict(&c, &ra, "restored", tests[0].1).await;
    assert_eq!(alone["label"], reference[0]["label"]);
    for (label, s) in &scores(&reference[0]) {
        let d = (scores(&alone).get(label).copied().unwrap_or(f64::NAN) - s).abs();
        assert!(d < 1e-4, "{label}: {s} vs {alone}");
    }
}

/// Two sites, each with its own mosquitto, joined by a mosquitto bridge that carries only the
/// fleet topics (as between a warehouse and a head office): a board at site A predicts what a
/// board at site B taught, and the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_behind_two_bridged_brokers_learn_from_each_other() {
    let site_a = Mosquitto::start();
    let site_b = Mosquitto::start_with(&format!(
        "connection site-a\naddress 127.0.0.1:{}\ntopic adaptd/fleet/# both 1\n\
         cleansession true\nrestart_timeout 1\n",
        site_a.port
    ));
    let tmp = tempfile::tempdir().expect("tmp");
    let (sa, sb) = (tmp.path().join("a"), tmp.path().join("b"));
    let trusted = format!("[\"{}\", \"{}\"]", key_of(&sa), key_of(&sb));
    let fleet_env = [
        ("ADAPTD_FLEET_GROUP", GROUP),
        ("ADAPTD_FLEET_TRUSTED_KEYS", trusted.as_str()),
        ("ADAPTD_ADAPT_METHOD", "none"),
    ];
    let a = Daemon::start(&site_a.url(), &sa, "board-a", &fleet_env);
    let b = Daemon::start(&site_b.url(), &sb, "board-b", &fleet_env);
    let ca = Client::connect(site_a.port, &["adaptd/#"]).await;
    let cb = Client::connect(site_b.port, &["adaptd/#"]).await;
    let (ra, rb) = (a.root(), b.root());
    ca.wait_for(&format!("{ra}/status"), |m| m.payload == b"online")
        .await;
    cb.wait_for(&format!("{rb}/status"), |m| m.payload == b"online")
        .await;
    // Each board's own topics stay on its site's broker.
    assert!(ca.on(&format!("{rb}/status")).is_empty());

    let cats = variants("chelsea.jpg", 4, 31);
    let cups = variants("coffee.jpg", 4, 32);
    learn_all(&ca, &ra, "cat", &cats[..3]).await;
    learn_all(&cb, &rb, "cup", &cups[..3]).await;
    info(&ca, &ra, |i| {
        i["fleet"]["peers"][0]["id"] == "board-b" && i["fleet"]["peers"][0]["samples"] == 3
    })
    .await;
    info(&cb, &rb, |i| {
        i["fleet"]["peers"][0]["id"] == "board-a" && i["fleet"]["peers"][0]["samples"] == 3
    })
    .await;
    let at_a = predict(&ca, &ra, "cup-at-a", &cups[3]).await;
    assert_eq!(at_a["top"][0]["label"], "cup", "{at_a}");
    let at_b = predict(&cb, &rb, "cat-at-b", &cats[3]).await;
    assert_eq!(at_b["top"][0]["label"], "cat", "{at_b}");
    assert!(ca.on(&format!("{ra}/error")).is_empty());
    assert!(cb.on(&format!("{rb}/error")).is_empty());
}

/// After the sync a board takes a peer's changes from its deltas (whole heads on the group
/// topic no longer reach it), fetches the retained head of a board that joins later, and
/// catches up after a restart; a bad delta is refused like a bad head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_changes_arrive_as_deltas_after_the_sync() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let (sa, sb, sc) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    let trusted = format!(
        "[\"{}\", \"{}\", \"{}\"]",
        key_of(&sa),
        key_of(&sb),
        key_of(&sc)
    );
    let fleet_env = [
        ("ADAPTD_FLEET_GROUP", GROUP),
        ("ADAPTD_FLEET_TRUSTED_KEYS", trusted.as_str()),
        ("ADAPTD_ADAPT_METHOD", "none"),
        ("ADAPTD_PUBLISH_HEAD_INTERVAL_SECS", "1"),
    ];
    let mut a = Daemon::start(&broker.url(), &sa, "board-a", &fleet_env);
    let mut b = Daemon::start(&broker.url(), &sb, "board-b", &fleet_env);
    let c = Client::connect(broker.port, &["adaptd/#"]).await;
    let (ra, rb) = (a.root(), b.root());
    for r in [&ra, &rb] {
        c.wait_for(&format!("{r}/status"), |m| m.payload == b"online")
            .await;
    }
    let cats = variants("chelsea.jpg", 4, 41);
    let cups = variants("coffee.jpg", 5, 42);
    let people = variants("astronaut.jpg", 4, 43);
    learn_all(&c, &rb, "cat", &cats[..2]).await;
    info(&c, &ra, |i| {
        peer_version(i, "board-b").is_some() && i["fleet"]["peers"][0]["samples"] == 2
    })
    .await;

    // Past the sync (quiet for 5 s), whole heads on the group topic no longer reach A: a
    // message there would be refused with an error if it did.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    c.clear();
    c.publish(&fleet_topic("probe"), b"not a head".to_vec())
        .await;
    learn_all(&c, &rb, "cup", &cups[..3]).await;
    let i = info(&c, &ra, |i| i["fleet"]["peers"][0]["samples"] == 5).await;
    assert!(i["fleet"]["deltas"]["applied"].as_u64() >= Some(1), "{i}");
    assert_eq!(i["fleet"]["deltas"]["fetched"], 0, "{i}");
    let at_a = predict(&c, &ra, "cup-at-a", &cups[3]).await;
    assert_eq!(at_a["top"][0]["label"], "cup", "{at_a}");
    assert!(
        c.on(&format!("{ra}/error")).is_empty(),
        "A still reads whole heads: {:?}",
        c.on(&format!("{ra}/error"))
            .iter()
            .map(|m| m.json())
            .collect::<Vec<_>>()
    );

    // A board that joins later: its first delta has nothing A can apply, so A fetches its
    // retained head.
    let late = Daemon::start(&broker.url(), &sc, "board-c", &fleet_env);
    let rc = late.root();
    c.wait_for(&format!("{rc}/status"), |m| m.payload == b"online")
        .await;
    learn_all(&c, &rc, "person", &people[..3]).await;
    let i = info(&c, &ra, |i| {
        i["fleet"]["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == "board-c" && p["samples"] == 3))
    })
    .await;
    assert!(i["fleet"]["deltas"]["fetched"].as_u64() >= Some(1), "{i}");
    let at_a = predict(&c, &ra, "person-at-a", &people[3]).await;
    assert_eq!(at_a["top"][0]["label"], "person", "{at_a}");

    // A bad delta is refused with an error and changes nothing.
    let stranger = Identity::load_or_create(&tmp.path().join("stranger")).expect("key");
    let sha = i["backbone"]["sha256"].as_str().expect("sha").to_string();
    let mut h = synthetic(&sha, "forklift", 1, 0.5, 1);
    h.start_journal();
    h.update(&vec![0.5; 1280], "forklift").expect("update");
    let forged = stranger.seal_delta("board-b", GROUP, &h).expect("seal");
    c.clear();
    c.publish(&format!("adaptd/fleet/{GROUP}/deltas/board-b"), forged)
        .await;
    c.wait_for(&format!("{ra}/error"), |m| {
        m.json()["code"] == "fleet_untrusted"
    })
    .await;

    // A stopped board catches up with what it missed when it comes back.
    assert!(a.stop());
    learn_all(&c, &rb, "cup", &cups[3..4]).await;
    info(&c, &rb, |i| i["head"]["samples"] == 6).await;
    c.clear();
    a.restart();
    info(&c, &ra, |i| {
        i["fleet"]["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["id"] == "board-b" && p["samples"] == 6))
    })
    .await;
    assert!(b.stop());
}

fn signed(id: &Identity, device: &str, head: &Head) -> Vec<u8> {
    id.seal(device, GROUP, head).expect("seal")
}

/// A head of `n` samples of class `label` around `level` (synthetic embeddings of the right
/// dimension), at `version`.
fn synthetic(backbone: &str, label: &str, n: usize, level: f32, version: u64) -> Head {
    let mut h = Head::new(&HeadConfig::default(), 1280, backbone);
    for i in 0..n {
        let x: Vec<f32> = (0..1280)
            .map(|j| level + ((i * 31 + j * 7) % 13) as f32 * 0.01)
            .collect();
        h.update(&x, label).expect("update");
    }
    h.set_version(version);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_heads_are_rejected_with_an_error_and_change_nothing() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().expect("tmp");
    let trusted_dir = tmp.path().join("trusted-signer");
    let stranger_dir = tmp.path().join("stranger");
    let signer = Identity::load_or_create(&trusted_dir).expect("key");
    let stranger = Identity::load_or_create(&stranger_dir).expect("key");
    let trusted = format!("[\"{}\"]", signer.public_hex());
    let d = Daemon::start(
        &broker.url(),
        &tmp.path().join("a"),
        "board-a",
        &[
            ("ADAPTD_FLEET_GROUP", GROUP),
            ("ADAPTD_FLEET_TRUSTED_KEYS", trusted.as_str()),
            ("ADAPTD_FLEET_MAX_PEER_SAMPLES", "50"),
            // Whole heads keep coming after the sync: every one of them is checked here.
            ("ADAPTD_FLEET_DELTAS", "false"),
        ],
    );
    let root = d.root();
    let c = Client::connect(broker.port, &["adaptd/#"]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    learn_all(&c, &root, "cat", &variants("chelsea.jpg", 3, 5)).await;
    let i = info(&c, &root, |i| i["head"]["samples"] == 3).await;
    let sha = i["backbone"]["sha256"].as_str().expect("sha").to_string();

    // A good head from the trusted signer is merged.
    let good = synthetic(&sha, "forklift", 10, 0.5, 5);
    c.publish(&fleet_topic("m1"), signed(&signer, "m1", &good))
        .await;
    info(&c, &root, |i| peer_version(i, "m1") == Some(5)).await;

    let reject = |payload: Vec<u8>, code: &'static str| {
        let c = &c;
        let root = &root;
        async move {
            c.clear();
            c.publish(&fleet_topic("m1"), payload).await;
            let e = c
                .wait_for(&format!("{root}/error"), |m| m.json()["code"] == code)
                .await
                .json();
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        }
    };
    // Unsigned: a bare head file.
    reject(good.to_bytes().expect("bytes"), "fleet_unsigned").await;
    // Signed by a key nobody trusts.
    reject(
        signed(&stranger, "m1", &synthetic(&sha, "x", 3, 0.1, 9)),
        "fleet_untrusted",
    )
    .await;
    // Tampered: one bit flipped inside the head bytes.
    let mut tampered = signed(&signer, "m1", &synthetic(&sha, "forklift", 12, 0.5, 8));
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    reject(tampered, "fleet_bad_signature").await;
    // An older version (a replay).
    reject(
        signed(&signer, "m1", &synthetic(&sha, "forklift", 4, 0.5, 3)),
        "fleet_replay",
    )
    .await;
    // Another backbone.
    let other = "11".repeat(32);
    reject(
        signed(&signer, "m1", &synthetic(&other, "forklift", 4, 0.5, 10)),
        "backbone_mismatch",
    )
    .await;
    // Inflated counts (above fleet.max_peer_samples = 50).
    reject(
        signed(&signer, "m1", &synthetic(&sha, "forklift", 51, 0.5, 11)),
        "fleet_too_many_samples",
    )
    .await;
    // Signed for another device than the topic says.
    reject(
        signed(&signer, "m2", &synthetic(&sha, "forklift", 4, 0.5, 12)),
        "fleet_wrong_peer",
    )
    .await;

    // None of them changed anything: still version 5 of m1, every rejection counted.
    c.publish(&format!("{root}/cmd/snapshot"), "").await;
    let i = info(&c, &root, |i| i["fleet"]["rejected"] == 7).await;
    assert_eq!(peer_version(&i, "m1"), Some(5), "{i}");

    // fleet-leave drops the peer.
    c.publish(&format!("{root}/cmd/fleet-leave"), "m1").await;
    let r = result_of(&c, &root, "fleet-leave").await;
    assert_eq!(r["was_merged"], true, "{r}");
    let i = info(&c, &root, |i| i["fleet"]["excluded"][0] == "m1").await;
    assert!(peer_version(&i, "m1").is_none());
}
