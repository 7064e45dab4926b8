//! End-to-end load generator: prediction latency and throughput of a running adaptd through a
//! real mosquitto, at 1, 2, … concurrent closed-loop publishers, next to the bare backbone time
//! measured in the same run (`adaptd bench`), and adaptd's memory.
//!
//! Everything stays on loopback: it starts its own mosquitto on a free port and its own adaptd
//! (the binary given by --adaptd) with a temporary state directory, teaches two classes, then
//! runs each load level for --secs seconds (bounded in time and count).
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example loadgen -- --adaptd target/release/adaptd --publishers 1,2,4
//! (`--learn N` first times N labeled images sent at once until all are learned)
//! ```

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};

mod common;
use common::{connect, free_port, rss, start_mosquitto, Killed};

#[derive(Parser, Debug)]
struct Args {
    /// The adaptd binary.
    #[arg(long, default_value = "target/release/adaptd")]
    adaptd: PathBuf,
    /// Concurrent publishers per level.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    publishers: Vec<usize>,
    /// Seconds per level.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// At most this many requests per level.
    #[arg(long, default_value_t = 5000)]
    max_requests: usize,
    /// Inference workers in adaptd (0 = one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// The JPEG sent for inference.
    #[arg(long, default_value = "tests/fixtures/chelsea.jpg")]
    image: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    /// Leave mosquitto's `set_tcp_nodelay` at its default (false) instead of true.
    #[arg(long)]
    broker_nagle: bool,
    /// Soak instead of levels: this many seconds of mixed traffic (2 closed-loop infer
    /// publishers, feedback on every 10th prediction, a labeled sample every 2 s), RSS
    /// sampled every --sample-secs with the sample reservoir's size from adaptd's stats;
    /// reports the RSS slope after warm-up (also less the reservoir) and error replies.
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
    /// RSS sampling period of the soak.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Before the levels: send this many labeled images (QoS 1, as fast as the broker takes
    /// them) and time until adaptd has learned them all (durably: `learned` follows the fsync).
    #[arg(long, default_value_t = 0)]
    learn: usize,
}

/// `{root}/learned` replies seen.
static LEARNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Error replies seen on `{root}/error`.
static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// `stored_samples_bytes` of adaptd's latest `{root}/stats` (the sample reservoir).
static RESERVOIR: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

type Waiters = Arc<Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Value>>>>;

async fn connect_to(port: u16, root: &str) -> Result<(AsyncClient, Waiters)> {
    let waiters: Waiters = Arc::default();
    let w = waiters.clone();
    let on_message = move |topic: &str, payload: &[u8]| {
        if topic.ends_with("/error") {
            ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if topic.ends_with("/learned") {
            LEARNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if topic.ends_with("/stats") {
            if let Some(b) = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v["stored_samples_bytes"].as_u64())
            {
                RESERVOIR.store(b, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let key = if topic.ends_with("/prediction") || topic.ends_with("/error") {
            serde_json::from_slice::<Value>(payload).ok().and_then(|v| {
                let id = v["id"].as_str()?.to_string();
                Some((id, v))
            })
        } else if topic.ends_with("/status") && payload == b"online" {
            Some(("status:online".to_string(), Value::Null))
        } else if topic.ends_with("/learned") {
            serde_json::from_slice::<Value>(payload)
                .ok()
                .map(|v| ("learned".to_string(), v))
        } else {
            None
        };
        if let Some((k, v)) = key {
            if let Some(tx) = w.lock().expect("lock").remove(&k) {
                let _ = tx.send(v);
            }
        }
    };
    let id = format!("loadgen-{}", std::process::id());
    let client = connect(port, &id, vec![format!("{root}/#")], on_message).await?;
    Ok((client, waiters))
}

/// Sends one JSON infer request and waits (≤ 30 s) for its prediction.
async fn ask(
    client: &AsyncClient,
    waiters: &Waiters,
    root: &str,
    id: &str,
    b64: &str,
) -> Option<Value> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    waiters.lock().expect("lock").insert(id.to_string(), tx);
    let req = json!({"id": id, "image": b64}).to_string();
    client
        .publish(format!("{root}/infer"), QoS::AtMostOnce, false, req)
        .await
        .ok()?;
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .ok()?
        .ok()
}

async fn wait_key(w: &Waiters, key: &str, timeout: Duration) -> Result<Value> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.lock().expect("lock").insert(key.to_string(), tx);
    Ok(tokio::time::timeout(timeout, rx)
        .await
        .with_context(|| format!("waiting for {key}"))??)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let image = std::fs::read(&args.image).with_context(|| format!("{}", args.image.display()))?;
    let tmp = std::env::temp_dir().join(format!("adaptd-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let port = free_port()?;
    let _broker = start_mosquitto(
        &tmp,
        port,
        &format!("set_tcp_nodelay {}\n", !args.broker_nagle),
    )?;

    // The bare backbone, same binary, same machine, same run.
    let bench = Command::new(&args.adaptd)
        .args(["bench", "--json", "--runs", "50", "--warmup", "5"])
        .output()
        .context("running adaptd bench")?;
    let bench: Value = serde_json::from_slice(&bench.stdout).context("adaptd bench --json")?;
    let backbone_ms = bench["median_ms"].as_f64().unwrap_or(f64::NAN);

    let device = "loadgen";
    let root = format!("adaptd/{device}");
    let (client, waiters) = connect_to(port, &root).await?;
    let online = {
        let w = waiters.clone();
        tokio::spawn(async move { wait_key(&w, "status:online", Duration::from_secs(60)).await })
    };
    let started = Instant::now();
    let child = Command::new(&args.adaptd)
        .arg("run")
        .env("ADAPTD_BROKER_URL", format!("mqtt://127.0.0.1:{port}"))
        .env("ADAPTD_DEVICE_ID", device)
        .env("ADAPTD_STATE_DIR", tmp.join("state"))
        .env("ADAPTD_SERVICE_WORKERS", args.workers.to_string())
        .env("ADAPTD_ADAPT_METHOD", "none")
        .env("ADAPTD_LOG", "warn")
        // The soak pairs each RSS sample with the reservoir size of a recent stats message;
        // the load levels keep adaptd's default stats interval.
        .envs((args.soak_secs > 0).then(|| {
            (
                "ADAPTD_PUBLISH_STATS_INTERVAL_SECS",
                args.sample_secs.max(1).to_string(),
            )
        }))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting adaptd")?;
    let pid = child.id();
    let _daemon = Killed(child);
    online.await??;
    let start_to_online_ms = started.elapsed().as_secs_f64() * 1e3;

    // Two classes.
    for (label, file) in [
        ("cat", "tests/fixtures/chelsea.jpg"),
        ("cup", "tests/fixtures/coffee.jpg"),
    ] {
        let bytes = std::fs::read(file)?;
        let learned = {
            let w = waiters.clone();
            tokio::spawn(async move { wait_key(&w, "learned", Duration::from_secs(60)).await })
        };
        client
            .publish(
                format!("{root}/learn/{label}"),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await?;
        learned.await??;
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(&image);
    if args.soak_secs > 0 {
        let mut report = soak(&args, &client, &waiters, &root, &b64, pid).await?;
        report["backbone_bench_median_ms"] = json!(backbone_ms);
        report["start_to_online_ms"] = json!(start_to_online_ms);
        println!("{}", serde_json::to_string_pretty(&report)?);
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }

    let learn = if args.learn > 0 {
        Some(learn_burst(&client, &root, &image, args.learn).await?)
    } else {
        None
    };

    let mut levels = Vec::new();
    for &n in &args.publishers {
        let deadline = Instant::now() + Duration::from_secs(args.secs);
        let budget = Arc::new(std::sync::atomic::AtomicUsize::new(args.max_requests));
        let lat = Arc::new(Mutex::new(Vec::<(f64, f64, f64)>::new()));
        let level_start = Instant::now();
        let mut tasks = Vec::new();
        for p in 0..n {
            let (client, waiters, lat, budget, root, b64) = (
                client.clone(),
                waiters.clone(),
                lat.clone(),
                budget.clone(),
                root.clone(),
                b64.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while Instant::now() < deadline
                    && budget
                        .fetch_update(
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                            |b| b.checked_sub(1),
                        )
                        .is_ok()
                {
                    let id = format!("n{n}-p{p}-{i}");
                    i += 1;
                    let sent = Instant::now();
                    let Some(v) = ask(&client, &waiters, &root, &id, &b64).await else {
                        break;
                    };
                    let e2e = sent.elapsed().as_secs_f64() * 1e3;
                    lat.lock().expect("lock").push((
                        e2e,
                        v["latency_ms"].as_f64().unwrap_or(f64::NAN),
                        v["backbone_ms"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = level_start.elapsed().as_secs_f64();
        let l = lat.lock().expect("lock").clone();
        let mut e2e: Vec<f64> = l.iter().map(|x| x.0).collect();
        let mut server: Vec<f64> = l.iter().map(|x| x.1).collect();
        let mut bb: Vec<f64> = l.iter().map(|x| x.2).collect();
        let (peak, now) = rss(pid);
        levels.push(json!({
            "publishers": n,
            "requests": l.len(),
            "seconds": secs,
            "throughput_per_s": l.len() as f64 / secs,
            "e2e_p50_ms": quantile(&mut e2e, 0.5),
            "e2e_p99_ms": quantile(&mut e2e, 0.99),
            "server_p50_ms": quantile(&mut server, 0.5),
            "backbone_in_daemon_p50_ms": quantile(&mut bb, 0.5),
            "rss_bytes": now,
            "peak_rss_bytes": peak,
        }));
    }
    let single = levels
        .first()
        .and_then(|l| l["throughput_per_s"].as_f64())
        .unwrap_or(f64::NAN);
    let report = json!({
        "adaptd": args.adaptd.display().to_string(),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "backbone_bench_median_ms": backbone_ms,
        "start_to_online_ms": start_to_online_ms,
        "learn": learn,
        "levels": levels,
        "throughput_vs_one_publisher": levels.iter().map(|l| l["throughput_per_s"].as_f64().unwrap_or(0.0) / single).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "bare backbone (adaptd bench, 1 thread): median {backbone_ms:.1} ms; start to online {start_to_online_ms:.0} ms"
        );
        if let Some(l) = &learn {
            println!(
                "learn burst: {} samples learned in {:.1} s ({:.1}/s), {} errors",
                l["samples"],
                l["seconds"].as_f64().unwrap_or(f64::NAN),
                l["learned_per_s"].as_f64().unwrap_or(f64::NAN),
                l["errors"]
            );
        }
        println!("| publishers | requests | throughput/s | × 1 publisher | e2e p50 ms | e2e p99 ms | p50 / backbone | server p50 ms | RSS MiB | peak RSS MiB |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for l in &levels {
            let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} |",
                l["publishers"],
                l["requests"],
                f("throughput_per_s"),
                f("throughput_per_s") / single,
                f("e2e_p50_ms"),
                f("e2e_p99_ms"),
                f("e2e_p50_ms") / backbone_ms,
                f("server_p50_ms"),
                f("rss_bytes") / 1048576.0,
                f("peak_rss_bytes") / 1048576.0
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Least-squares slope of `(t, y)`.
/// Sends `n` labeled images at once (alternating two labels) and waits until all are learned.
async fn learn_burst(client: &AsyncClient, root: &str, image: &[u8], n: usize) -> Result<Value> {
    let base = LEARNED.load(std::sync::atomic::Ordering::Relaxed);
    let errors = ERRORS.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    for i in 0..n {
        let label = if i % 2 == 0 { "cat" } else { "cup" };
        let req = json!({"id": format!("learn-{i}"), "image": base64::engine::general_purpose::STANDARD.encode(image)}).to_string();
        client
            .publish(
                format!("{root}/learn/{label}"),
                QoS::AtLeastOnce,
                false,
                req,
            )
            .await?;
    }
    let deadline = start + Duration::from_secs(600);
    while LEARNED.load(std::sync::atomic::Ordering::Relaxed) < base + n as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "learn burst: not all learned in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({
        "samples": n,
        "seconds": secs,
        "learned_per_s": n as f64 / secs,
        "errors": ERRORS.load(std::sync::atomic::Ordering::Relaxed) - errors,
    }))
}

fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return f64::NAN;
    }
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    sxy / sxx
}

async fn soak(
    args: &Args,
    client: &AsyncClient,
    waiters: &Waiters,
    root: &str,
    b64: &str,
    pid: u32,
) -> Result<Value> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.soak_secs);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let errors_before = ERRORS.load(std::sync::atomic::Ordering::Relaxed);
    let mut tasks = Vec::new();
    for p in 0..2 {
        let (client, waiters, root, b64, done) = (
            client.clone(),
            waiters.clone(),
            root.to_string(),
            b64.to_string(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let id = format!("soak-p{p}-{i}");
                i += 1;
                let Some(v) = ask(&client, &waiters, &root, &id, &b64).await else {
                    break;
                };
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if p == 0 && i.is_multiple_of(10) {
                    if let Some(label) = v["label"].as_str() {
                        let fb = json!({"id": v["id"], "label": label}).to_string();
                        let _ = client
                            .publish(format!("{root}/feedback"), QoS::AtLeastOnce, false, fb)
                            .await;
                    }
                }
            }
        }));
    }
    {
        let (client, root, b64) = (client.clone(), root.to_string(), b64.to_string());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let req = json!({"id": format!("learn-{i}"), "label": if i.is_multiple_of(2) { "cat" } else { "cup" }, "image": b64});
                i += 1;
                let _ = client
                    .publish(format!("{root}/learn"), QoS::AtLeastOnce, false, req.to_string())
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }
    let mut samples = Vec::new();
    let mut reservoir = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(args.sample_secs)).await;
        let (_, now) = rss(pid);
        if now == 0 {
            bail!(
                "adaptd is gone (restart or crash) after {:?}",
                start.elapsed()
            );
        }
        samples.push((start.elapsed().as_secs_f64(), now as f64 / 1048576.0));
        reservoir.push(RESERVOIR.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0);
    }
    for t in tasks {
        let _ = t.await;
    }
    let warm = args.soak_secs as f64 * 0.2;
    let after: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(t, _)| *t >= warm)
        .collect();
    // RSS less the sample reservoir: what is left must be flat whatever the reservoir does.
    let after_less_reservoir: Vec<(f64, f64)> = samples
        .iter()
        .zip(&reservoir)
        .filter(|((t, _), _)| *t >= warm)
        .map(|((t, r), s)| (*t, r - s))
        .collect();
    let (peak, last) = rss(pid);
    Ok(json!({
        "soak_secs": args.soak_secs,
        "predictions": done.load(std::sync::atomic::Ordering::Relaxed),
        "predictions_per_s": done.load(std::sync::atomic::Ordering::Relaxed) as f64 / args.soak_secs as f64,
        "error_replies": ERRORS.load(std::sync::atomic::Ordering::Relaxed) - errors_before,
        "alive": rss(pid).1 > 0,
        "rss_mib_samples": samples,
        "reservoir_mib_samples": reservoir,
        "rss_slope_mib_per_hour_after_warmup": slope(&after) * 3600.0,
        "rss_less_reservoir_slope_mib_per_hour_after_warmup": slope(&after_less_reservoir) * 3600.0,
        "rss_after_warmup_min_max_mib": [
            after.iter().map(|p| p.1).fold(f64::INFINITY, f64::min),
            after.iter().map(|p| p.1).fold(0.0, f64::max),
        ],
        "peak_rss_mib": peak as f64 / 1048576.0,
        "last_rss_mib": last as f64 / 1048576.0,
    }))
}
