//! An upgraded board keeps what it knew: today's daemon on a state directory written by an
//! older adaptd (`tests/fixtures/state-v1`, see its README) loads the snapshot, replays the
//! write-ahead log, restores the adaptation statistics, rolls back to the kept head and keeps
//! its fleet key.

mod common;

use std::path::Path;
use std::process::Command;

use common::{class_counts, fixture, info, predict, result_of, Client, Daemon, Mosquitto};

/// The public key of the fixture's `fleet.key`, as printed by the adaptd that wrote it.
const FLEET_KEY: &str = "abcdb2a5a8d054a16f528fafa06159d2051decfc367ba73bb8fad00940b48e09";
/// Head version of the fixture's snapshot and of its one kept head.
const KEPT_VERSION: u64 = 2;

/// Copies the fixture directory tree to `to` (the daemon writes into its state directory).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("list fixture") {
        let entry = entry.expect("fixture entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else if entry.file_name() != "README.md" {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

fn fleet_key(state: &Path) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_adaptd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ADAPTD_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("fleet-key")
        .env("ADAPTD_STATE_DIR", state)
        .output()
        .expect("adaptd fleet-key");
    assert!(
        out.status.success(),
        "fleet-key failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_written_by_an_older_adaptd_loads_unchanged() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    copy_tree(&fixture("state-v1"), &state);
    assert_eq!(fleet_key(&state), FLEET_KEY);

    let broker = Mosquitto::start();
    let mut d = Daemon::start(&broker.url(), &state, "old", &[]);
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;

    // The snapshot (cat 1, cup 1 at version 2) plus the two WAL records after it.
    let i = info(&c, &root, |i| i["head"]["samples"] == 4).await;
    assert_eq!(i["head"]["algorithm"], "ncm");
    assert_eq!(i["head"]["version"], 4);
    assert_eq!(i["stored_samples"], 4);
    let counts = class_counts(&i);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert_eq!(counts.get("cat"), Some(&2));
    assert_eq!(counts.get("cup"), Some(&1));
    assert_eq!(counts.get("person"), Some(&1));
    assert_eq!(i["fleet"]["public_key"], FLEET_KEY);

    // The adaptation statistics of the five earlier requests, before any new one.
    c.wait_for(&format!("{root}/stats"), |m| {
        m.json()["adapt"]["target_samples"] == 5
    })
    .await;

    let chelsea = std::fs::read(fixture("chelsea.jpg")).expect("chelsea.jpg");
    let p = predict(&c, &root, "old-cat", &chelsea).await;
    assert_eq!(p["label"], "cat", "{p}");

    c.publish(
        &format!("{root}/cmd/rollback"),
        format!("{{\"version\": {KEPT_VERSION}}}"),
    )
    .await;
    let r = result_of(&c, &root, "rollback").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["restored"].as_u64(), Some(KEPT_VERSION));
    assert!(
        r["head_version"].as_u64().unwrap_or(0) > 4,
        "versions stay monotonic: {r}"
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 2).await;
    let counts = class_counts(&i);
    assert_eq!(counts.get("cat"), Some(&1));
    assert_eq!(counts.get("cup"), Some(&1));
    assert_eq!(counts.get("person"), None);

    assert!(d.stop(), "clean exit");
    assert_eq!(fleet_key(&state), FLEET_KEY);
}
