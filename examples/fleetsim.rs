//! Fleet simulator: N virtual boards, each with its own Ed25519 key, publish signed heads of a
//! given learner to a mosquitto on loopback beside one real adaptd, which merges them all.
//! Per fleet size it measures the real board's memory, CPU per peer update, the time from a
//! peer's new head to a changed prediction, restart time, and the broker's bytes per second.
//! `--drift` measures, in process, how far the running fleet total drifts from an exact
//! rebuild over one rebuild period. With `--deltas true` (the default, as the daemon's
//! `[fleet] deltas`) each virtual board publishes its whole head retained and what it learned
//! since as a signed delta, as a real board does; `--deltas false` only whole heads.
//!
//! ```sh
//! cargo build --release --examples
//! target/release/examples/fleetsim --adaptd target/release/adaptd --boards 10,100,1000
//! target/release/examples/fleetsim --learner slda --boards 10,100 --rate 1
//! target/release/examples/fleetsim --drift --learner slda --boards 100
//! ```
//!
//! The virtual boards' embeddings are synthetic (class centres scattered around the real
//! embeddings of the two fixture photos); the real board's backbone hash and dimension come
//! from its own head, so every virtual head is one it accepts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adaptd::fleet::{open, Identity, Peers};
use adaptd::head::{Algorithm, Expect, Head, HeadConfig};
use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, QoS};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod common;
use common::{connect, free_port, rss, start_mosquitto, Killed};

const GROUP: &str = "sim";

#[derive(Parser)]
struct Args {
    /// The adaptd binary.
    #[arg(long, default_value = "target/release/adaptd")]
    adaptd: PathBuf,
    /// Fleet sizes (virtual boards), one run each.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    boards: Vec<usize>,
    /// The learner of every head (the real board's too).
    #[arg(long, default_value = "ncm")]
    learner: String,
    /// Classes per virtual board, drawn from --labels fleet-wide labels.
    #[arg(long, default_value_t = 5)]
    classes: usize,
    #[arg(long, default_value_t = 50)]
    labels: usize,
    /// Samples per class in a virtual board's first head.
    #[arg(long, default_value_t = 10)]
    samples: usize,
    /// Samples learned per head update.
    #[arg(long, default_value_t = 2)]
    learn: usize,
    /// Head updates per second, whole fleet.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds of steady updates measured (CPU, memory, broker bytes).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Probes after the steady phase (updates go on): a new class whose mean is the probe
    /// photo's embedding, timed until the real board predicts it.
    #[arg(long, default_value_t = 5)]
    probes: usize,
    /// Instead of the broker run: the running total's drift against an exact rebuild, in
    /// process, at the real backbone's dimension (--dim).
    #[arg(long)]
    drift: bool,
    #[arg(long, default_value_t = 1280)]
    dim: usize,
    /// One JSON object per fleet size instead of the table.
    #[arg(long)]
    json: bool,
    /// Deltas beside the whole heads (the real board's `[fleet] deltas` too).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    deltas: bool,
    /// mosquitto's `set_tcp_nodelay` (off by default in mosquitto): small messages to the
    /// real board are not held back by Nagle's algorithm behind a larger one.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    broker_nodelay: bool,
    /// Where the real adaptd's log goes (default: nowhere).
    #[arg(long)]
    daemon_log: Option<PathBuf>,
    /// Extra environment of the real adaptd, KEY=VALUE (repeatable), e.g. allocator settings.
    #[arg(long = "env")]
    daemon_env: Vec<String>,
}

/// What the observer client saw.
#[derive(Default)]
struct Seen {
    info: Option<Value>,
    online: u64,
    errors: u64,
    error_codes: HashMap<String, u64>,
    waiters: HashMap<String, tokio::sync::oneshot::Sender<Value>>,
    head: Option<Vec<u8>>,
    /// Deepest learner queue in `{root}/stats` (`queues.learn`).
    max_learn_queue: u64,
}

static SYS_RECEIVED: AtomicU64 = AtomicU64::new(0);
static SYS_SENT: AtomicU64 = AtomicU64::new(0);

type Shared = Arc<Mutex<Seen>>;

async fn observe(port: u16, filters: Vec<String>) -> Result<(AsyncClient, Shared)> {
    let seen: Shared = Arc::default();
    let s = seen.clone();
    let client = connect(port, "fleetsim", filters, move |t, p| on_message(&s, t, p)).await?;
    Ok((client, seen))
}

fn on_message(seen: &Shared, topic: &str, payload: &[u8]) {
    let num = || {
        std::str::from_utf8(payload)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    if topic == "$SYS/broker/bytes/received" {
        SYS_RECEIVED.store(num().unwrap_or(0), Ordering::Relaxed);
        return;
    }
    if topic == "$SYS/broker/bytes/sent" {
        SYS_SENT.store(num().unwrap_or(0), Ordering::Relaxed);
        return;
    }
    let mut s = seen.lock().expect("lock");
    if topic.ends_with("/status") && payload == b"online" {
        s.online += 1;
    } else if topic.ends_with("/info") {
        s.info = serde_json::from_slice(payload).ok();
    } else if topic.ends_with("/stats") {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let depth = v["queues"]["learn"].as_u64().unwrap_or(0);
        s.max_learn_queue = s.max_learn_queue.max(depth);
    } else if topic.ends_with("/head") {
        s.head = Some(payload.to_vec());
    } else if topic.ends_with("/prediction") || topic.ends_with("/error") {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        if topic.ends_with("/error") {
            s.errors += 1;
            let code = v["code"].as_str().unwrap_or("?").to_string();
            *s.error_codes.entry(code).or_default() += 1;
        }
        if let Some(id) = v["id"].as_str() {
            if let Some(tx) = s.waiters.remove(id) {
                let _ = tx.send(v);
            }
        }
    } else if topic.ends_with("/result") {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        if let Some(tx) = s.waiters.remove("result") {
            let _ = tx.send(v);
        }
    } else if topic.ends_with("/learned") {
        if let Some(tx) = s.waiters.remove("learned") {
            let _ = tx.send(Value::Null);
        }
    }
}

async fn wait_key(seen: &Shared, key: &str, timeout: Duration) -> Result<Value> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    seen.lock()
        .expect("lock")
        .waiters
        .insert(key.to_string(), tx);
    Ok(tokio::time::timeout(timeout, rx)
        .await
        .with_context(|| format!("waiting for {key}"))??)
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<f64> {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// User + system CPU seconds of a process.
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    // After ')' come fields 3 (state), 4, …: utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(14) + field(15);
    ticks as f64 / 100.0
}

/// The virtual boards: keys, heads, versions.
struct Fleet {
    ids: Vec<Identity>,
    heads: Vec<Head>,
    labels: Vec<Vec<String>>,
    centres: Vec<Vec<f32>>,
    rng: SmallRng,
    deltas: bool,
}

fn identity(i: usize) -> Result<Identity> {
    let seed: [u8; 32] = Sha256::digest(format!("fleetsim {i}")).into();
    Identity::from_seed(&seed).map_err(anyhow::Error::msg)
}

fn board_id(i: usize) -> String {
    format!("sim-{i:05}")
}

impl Fleet {
    /// `n` boards (+ the probe board, index n) with heads of `config` around `base`.
    fn new(n: usize, args: &Args, config: &HeadConfig, base: &[f32], sha: &str) -> Result<Fleet> {
        let mut rng = SmallRng::seed_from_u64(7);
        let centres: Vec<Vec<f32>> = (0..args.labels)
            .map(|_| {
                base.iter()
                    .map(|b| b * (rng.gen_range(-1.0f32..1.0) * 0.8).exp())
                    .collect()
            })
            .collect();
        let mut f = Fleet {
            ids: Vec::new(),
            heads: Vec::new(),
            labels: Vec::new(),
            centres,
            rng,
            deltas: args.deltas,
        };
        for i in 0..=n {
            f.ids.push(identity(i)?);
            let mut head = Head::new(config, base.len(), sha);
            let mut labels = Vec::new();
            if i < n {
                while labels.len() < args.classes.min(args.labels) {
                    let l = format!("c{:03}", f.rng.gen_range(0..args.labels));
                    if !labels.contains(&l) {
                        labels.push(l);
                    }
                }
                for l in &labels {
                    for _ in 0..args.samples {
                        let x = f.sample(l)?;
                        head.update(&x, l)?;
                    }
                }
            }
            // No journal yet: as a board's first publish after it starts, the first delta
            // tells peers to fetch the whole head.
            head.set_version(1);
            f.heads.push(head);
            f.labels.push(labels);
        }
        Ok(f)
    }

    /// A synthetic embedding of `label` ("c007": around centre 7).
    fn sample(&mut self, label: &str) -> Result<Vec<f32>> {
        let c: usize = label[1..].parse()?;
        let rng = &mut self.rng;
        Ok(self.centres[c]
            .iter()
            .map(|v| v * (1.0 + rng.gen_range(-0.3f32..0.3)))
            .collect())
    }

    /// Board `i` learns `k` samples of one of its classes; returns its new envelope and delta.
    fn step(&mut self, i: usize, k: usize) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let label = self.labels[i][self.rng.gen_range(0..self.labels[i].len())].clone();
        for _ in 0..k {
            let x = self.sample(&label)?;
            self.heads[i].update(&x, &label)?;
        }
        self.publish(i)
    }

    /// Board `i`'s envelope and, with deltas, its delta since the last publish.
    fn publish(&mut self, i: usize) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let whole = self.seal(i)?;
        if !self.deltas {
            return Ok((whole, None));
        }
        // As a board does (`publish_local_head`).
        let d = self.ids[i].next_delta(&board_id(i), GROUP, &self.heads[i], whole.len())?;
        if d.is_some() {
            self.heads[i].start_journal();
        }
        Ok((whole, d))
    }

    fn seal(&self, i: usize) -> Result<Vec<u8>> {
        Ok(self.ids[i].seal(&board_id(i), GROUP, &self.heads[i])?)
    }
}

fn topic(i: usize) -> String {
    format!("adaptd/fleet/{GROUP}/heads/{}", board_id(i))
}

fn delta_topic(i: usize) -> String {
    format!("adaptd/fleet/{GROUP}/deltas/{}", board_id(i))
}

/// Publishes board `i`'s whole head (retained) and its delta.
async fn send(client: &AsyncClient, i: usize, env: (Vec<u8>, Option<Vec<u8>>)) -> Result<()> {
    client
        .publish(topic(i), QoS::AtLeastOnce, true, env.0)
        .await?;
    if let Some(d) = env.1 {
        client
            .publish(delta_topic(i), QoS::AtLeastOnce, false, d)
            .await?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let algorithm: Algorithm = args.learner.parse().map_err(anyhow::Error::msg)?;
    if args.drift {
        for &n in &args.boards {
            drift(&args, algorithm, n)?;
        }
        return Ok(());
    }
    if !args.json {
        println!(
            "| boards | learner | deltas | envelope KB | sync s | restart s | RSS MB (peak) | store MB | \
             CPU ms/update | probe s (median, max) | broker in KB/s | broker out KB/s | rejected | rebuilds |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for &n in &args.boards {
        let r = level(&args, algorithm, n).await?;
        if args.json {
            println!("{r}");
        } else {
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} ({:.0}) | {:.1} | {:.2} | {:.2}, {:.2} | {:.0} | {:.0} | {} | {} |",
                n,
                args.learner,
                args.deltas,
                r["envelope_bytes"].as_f64().unwrap_or(0.0) / 1024.0,
                r["sync_secs"].as_f64().unwrap_or(f64::NAN),
                r["restart_secs"].as_f64().unwrap_or(f64::NAN),
                r["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                r["rss_peak_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                r["stored_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                r["cpu_ms_per_update"].as_f64().unwrap_or(f64::NAN),
                r["probe_secs_median"].as_f64().unwrap_or(f64::NAN),
                r["probe_secs_max"].as_f64().unwrap_or(f64::NAN),
                r["broker_in_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1024.0,
                r["broker_out_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1024.0,
                r["rejected"],
                r["rebuilds"],
            );
        }
    }
    Ok(())
}

/// One fleet size against one real adaptd.
async fn level(args: &Args, algorithm: Algorithm, n: usize) -> Result<Value> {
    let tmp = tempfile::tempdir()?;
    let port = free_port()?;
    let conf = format!("sys_interval 1\nset_tcp_nodelay {}\n", args.broker_nodelay);
    let broker = start_mosquitto(tmp.path(), port, &conf)?;
    let broker_pid = broker.0.id();
    let device = "real";
    let root = format!("adaptd/{device}");
    let (client, seen) = observe(
        port,
        vec![format!("{root}/#"), "$SYS/broker/bytes/+".into()],
    )
    .await?;

    // The keys exist before the board starts: it reads the trusted keys file once.
    let keys: Vec<Identity> = (0..=n).map(identity).collect::<Result<_>>()?;
    let keys_file = tmp.path().join("trusted-keys");
    std::fs::write(
        &keys_file,
        keys.iter()
            .map(|id| id.public_hex() + "\n")
            .collect::<String>(),
    )?;
    drop(keys);
    let state = tmp.path().join("state");
    let start = || -> Result<Killed> {
        let child = Command::new(&args.adaptd)
            .arg("run")
            .env("ADAPTD_BROKER_URL", format!("mqtt://127.0.0.1:{port}"))
            .env("ADAPTD_DEVICE_ID", device)
            .env("ADAPTD_STATE_DIR", &state)
            .env("ADAPTD_FLEET_GROUP", GROUP)
            .env("ADAPTD_FLEET_TRUSTED_KEYS_FILE", &keys_file)
            .env("ADAPTD_FLEET_MAX_PEERS", (n + 1).to_string())
            .env("ADAPTD_FLEET_MAX_STORE_MB", "65536")
            .env("ADAPTD_HEAD_ALGORITHM", algorithm.as_str())
            .env("ADAPTD_ADAPT_METHOD", "none")
            .env("ADAPTD_PUBLISH_HEAD_INTERVAL_SECS", "1")
            .env("ADAPTD_FLEET_DELTAS", args.deltas.to_string())
            .env("ADAPTD_LOG", "warn")
            .envs(args.daemon_env.iter().filter_map(|kv| kv.split_once('=')))
            .stdout(Stdio::null())
            .stderr(match &args.daemon_log {
                Some(p) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .with_context(|| format!("{}", p.display()))?,
                ),
                None => Stdio::null(),
            })
            .spawn()
            .context("starting adaptd")?;
        Ok(Killed(child))
    };
    let mut daemon = start()?;
    let online = |k: u64| {
        let s = seen.clone();
        move || s.lock().expect("lock").online >= k
    };
    wait_until("adaptd online", Duration::from_secs(120), online(1)).await?;

    // The probe photo's embedding and the backbone: learn it, read the head back, forget it.
    let probe_image = std::fs::read("tests/fixtures/chelsea.jpg")?;
    let cup_image = std::fs::read("tests/fixtures/coffee.jpg")?;
    for (label, bytes) in [("cat", &probe_image), ("cup", &cup_image)] {
        let w = wait_key(&seen, "learned", Duration::from_secs(60));
        client
            .publish(
                format!("{root}/learn/{label}"),
                QoS::AtLeastOnce,
                false,
                bytes.clone(),
            )
            .await?;
        w.await?;
    }
    seen.lock().expect("lock").head = None;
    let w = wait_key(&seen, "result", Duration::from_secs(60));
    client
        .publish(format!("{root}/cmd/snapshot"), QoS::AtLeastOnce, false, "")
        .await?;
    w.await?;
    wait_until("the head", Duration::from_secs(30), || {
        seen.lock().expect("lock").head.is_some()
    })
    .await?;
    let head_bytes = seen.lock().expect("lock").head.clone().unwrap_or_default();
    let expect = Expect {
        backbone_sha256: None,
        dim: None,
        max_bytes: usize::MAX,
    };
    let local = Head::from_bytes(&head_bytes, &expect)?;
    let mean = |label: &str| -> Result<Vec<f32>> {
        let stats = local
            .class_stats(label)
            .with_context(|| format!("{label} in the head"))?;
        Ok(stats.mean().iter().map(|&v| v as f32).collect())
    };
    let (probe, cup) = (mean("cat")?, mean("cup")?);
    let base: Vec<f32> = probe.iter().zip(&cup).map(|(a, b)| (a + b) / 2.0).collect();
    let w = wait_key(&seen, "result", Duration::from_secs(60));
    client
        .publish(format!("{root}/cmd/forget"), QoS::AtLeastOnce, false, "cat")
        .await?;
    w.await?;

    let config = HeadConfig {
        algorithm,
        ..HeadConfig::default()
    };
    let mut fleet = Fleet::new(n, args, &config, &base, local.backbone_sha256())?;
    let envelope_bytes = fleet.seal(0)?.len();
    // The probe board starts with one class on the cup: its probes are then deltas.
    for _ in 0..args.samples {
        fleet.heads[n].update(&cup, "probe-idle")?;
    }

    // Initial sync: every board's first head, retained, as fast as the broker takes them.
    let peers_seen = |k: usize| {
        let s = seen.clone();
        move || {
            s.lock()
                .expect("lock")
                .info
                .as_ref()
                .and_then(|i| i["fleet"]["peers"].as_array().map(|p| p.len()))
                .unwrap_or(0)
                >= k
        }
    };
    let t = Instant::now();
    for i in 0..=n {
        let env = fleet.publish(i)?;
        send(&client, i, env).await?;
    }
    wait_until(
        "every peer merged",
        Duration::from_secs(1800),
        peers_seen(n + 1),
    )
    .await?;
    let sync_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Idle CPU (stats, housekeeping), to subtract.
    let pid = daemon.0.id();
    let (c0, t0) = (cpu_secs(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_per_sec = (cpu_secs(pid) - c0) / t0.elapsed().as_secs_f64();

    // Steady phase: updates at --rate, spread over the boards.
    let fleet = Arc::new(Mutex::new(fleet));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let updater = {
        let (fleet, stop, sent, client) =
            (fleet.clone(), stop.clone(), sent.clone(), client.clone());
        let (rate, learn) = (args.rate, args.learn);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut rng = SmallRng::seed_from_u64(11);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let i = rng.gen_range(0..n);
                let env = fleet.lock().expect("lock").step(i, learn);
                match env {
                    Ok(env) => {
                        if send(&client, i, env).await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => eprintln!("virtual board {i}: {e:#}"),
                }
            }
        })
    };
    let (cpu0, sent0) = (cpu_secs(pid), sent.load(Ordering::Relaxed));
    let (in0, out0) = (
        SYS_RECEIVED.load(Ordering::Relaxed),
        SYS_SENT.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    let mut peak = 0u64;
    while t0.elapsed() < Duration::from_secs(args.secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(rss(pid).1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let updates = sent.load(Ordering::Relaxed) - sent0;
    let cpu = cpu_secs(pid) - cpu0 - idle_per_sec * secs;
    let broker_in = (SYS_RECEIVED.load(Ordering::Relaxed).saturating_sub(in0)) as f64 / secs;
    let broker_out = (SYS_SENT.load(Ordering::Relaxed).saturating_sub(out0)) as f64 / secs;
    let (hwm, now_rss) = rss(pid);

    // Probes, with the updates going on: the probe board learns a new class between the cup
    // and the probe photo's embedding, each closer to the photo than the one before (so it is
    // the nearest class); time until the real board predicts it for that photo. With deltas
    // on, what reaches the real board is the probe board's delta.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&probe_image);
    let mut probe_secs = Vec::new();
    let mut infer_ms = Vec::new();
    for k in 0..args.probes {
        let label = format!("probe{k}");
        let env = {
            let mut f = fleet.lock().expect("lock");
            let a = 0.3 / f32::powi(2.0, k as i32);
            let x: Vec<f32> = probe
                .iter()
                .zip(&cup)
                .map(|(p, c)| (1.0 - a) * p + a * c)
                .collect();
            for _ in 0..args.samples {
                f.heads[n].update(&x, &label)?;
            }
            f.publish(n)?
        };
        let t = Instant::now();
        send(&client, n, env).await?;
        let mut q = 0u64;
        loop {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("probe {k}: the real board never predicted {label}");
            }
            q += 1;
            let id = format!("p{k}-{q}");
            let w = wait_key(&seen, &id, Duration::from_secs(30));
            let ti = Instant::now();
            client
                .publish(
                    format!("{root}/infer"),
                    QoS::AtMostOnce,
                    false,
                    json!({"id": id, "image": b64}).to_string(),
                )
                .await?;
            let p = w.await?;
            infer_ms.push(ti.elapsed().as_secs_f64() * 1e3);
            if p["top"][0]["label"] == label.as_str() {
                probe_secs.push(t.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = updater.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let info = seen
        .lock()
        .expect("lock")
        .info
        .clone()
        .unwrap_or(Value::Null);
    let fleet_info = info["fleet"].clone();

    // Restart: kill -9, then the time until the board is online again with every peer.
    drop(daemon);
    seen.lock().expect("lock").info = None;
    let online_before = seen.lock().expect("lock").online;
    seen.lock().expect("lock").max_learn_queue = 0;
    let t = Instant::now();
    daemon = start()?;
    wait_until(
        "adaptd online again",
        Duration::from_secs(600),
        online(online_before + 1),
    )
    .await?;
    let restart_secs = t.elapsed().as_secs_f64();
    wait_until(
        "every peer after the restart",
        Duration::from_secs(600),
        peers_seen(n + 1),
    )
    .await?;
    let restart_all_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (restart_hwm, restart_rss) = rss(daemon.0.id());
    let broker_rss = rss(broker_pid).1;
    let errors = seen.lock().expect("lock").error_codes.clone();
    let restart_queue = seen.lock().expect("lock").max_learn_queue;
    drop(daemon);
    drop(broker);

    let mut probes_sorted = probe_secs.clone();
    Ok(json!({
        "boards": n,
        "learner": algorithm.as_str(),
        "deltas": args.deltas,
        "deltas_applied": fleet_info["deltas"]["applied"],
        "heads_fetched": fleet_info["deltas"]["fetched"],
        "classes_per_board": args.classes,
        "rate_per_sec": args.rate,
        "envelope_bytes": envelope_bytes,
        "sync_secs": sync_secs,
        "steady_secs": secs,
        "updates": updates,
        "cpu_ms_per_update": if updates > 0 { cpu * 1e3 / updates as f64 } else { f64::NAN },
        "idle_cpu_per_sec": idle_per_sec,
        "rss_bytes": now_rss,
        "rss_peak_bytes": hwm.max(peak),
        "stored_bytes": fleet_info["stored_bytes"],
        "rejected": fleet_info["rejected"],
        "rebuilds": fleet_info["rebuilds"],
        "probe_secs": probe_secs,
        "probe_secs_median": median(&mut probes_sorted),
        "probe_secs_max": probe_secs.iter().copied().fold(f64::NAN, f64::max),
        "infer_ms_median": median(&mut infer_ms),
        "broker_in_bytes_per_sec": broker_in,
        "broker_out_bytes_per_sec": broker_out,
        "broker_rss_bytes": broker_rss,
        "restart_secs": restart_secs,
        "restart_all_peers_secs": restart_all_secs,
        "restart_rss_bytes": restart_rss,
        "restart_rss_peak_bytes": restart_hwm,
        "restart_max_learner_queue": restart_queue,
        "errors": errors,
    }))
}

/// The running total against an exact rebuild after one rebuild period of replacements, in
/// process: n boards, then `rebuild_period(n) - 1` updates.
fn drift(args: &Args, algorithm: Algorithm, n: usize) -> Result<()> {
    let config = HeadConfig {
        algorithm,
        ..HeadConfig::default()
    };
    let mut rng = SmallRng::seed_from_u64(3);
    let base: Vec<f32> = (0..args.dim).map(|_| rng.gen_range(0.0f32..2.0)).collect();
    let sha = "00".repeat(32);
    let mut fleet = Fleet::new(n, args, &config, &base, &sha)?;
    let trusted: Vec<[u8; 32]> = fleet
        .ids
        .iter()
        .map(|id| adaptd::fleet::parse_key(&id.public_hex()).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()?;
    let expect = Expect {
        backbone_sha256: Some(&sha),
        dim: Some(args.dim),
        max_bytes: usize::MAX,
    };
    let tmp = tempfile::tempdir()?;
    let mut peers = Peers::load(Some(tmp.path()), Vec::new());
    let take = |peers: &mut Peers, i: usize, env: &[u8]| -> Result<()> {
        let v = open(
            env,
            &board_id(i),
            GROUP,
            &trusted,
            &expect,
            algorithm,
            u64::MAX,
        )?;
        peers.accept(&board_id(i), v, usize::MAX, u64::MAX)?;
        Ok(())
    };
    for i in 0..n {
        let env = fleet.publish(i)?;
        take(&mut peers, i, &env.0)?;
    }
    peers.rebuild();
    let period = adaptd::fleet::rebuild_period(n);
    // The receiving side's time only (sealing a virtual board's head takes a snapshot).
    let mut receiving = Duration::ZERO;
    let mut fetched = 0u64;
    for _ in 0..period - 1 {
        let i = rng.gen_range(0..n);
        let (whole, delta) = fleet.step(i, args.learn)?;
        let t = Instant::now();
        let applied = match delta {
            Some(d) => {
                let d = adaptd::fleet::open_delta(
                    &d,
                    &board_id(i),
                    GROUP,
                    &trusted,
                    &expect,
                    algorithm,
                    u64::MAX,
                )?;
                peers.apply_delta(&board_id(i), d, u64::MAX)? == adaptd::fleet::Accepted::Updated
            }
            None => false,
        };
        if !applied {
            fetched += u64::from(fleet.deltas);
            take(&mut peers, i, &whole)?;
        }
        receiving += t.elapsed();
    }
    let per_update_ms = receiving.as_secs_f64() * 1e3 / (period - 1) as f64;
    let running = peers.total().context("a total")?.clone();
    let t = Instant::now();
    peers.rebuild();
    let rebuild_ms = t.elapsed().as_secs_f64() * 1e3;
    let exact = peers.total().context("a total")?;
    let rel = |a: &[f64], b: &[f64]| {
        let scale = b
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(f64::MIN_POSITIVE);
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
            / scale
    };
    let mut worst_sum = 0.0f64;
    for c in exact.classes() {
        let (a, b) = (
            running.class_stats(&c.name).context("class")?,
            exact.class_stats(&c.name).context("class")?,
        );
        if a.count() != b.count() {
            bail!("class {}: counts {} vs {}", c.name, a.count(), b.count());
        }
        worst_sum = worst_sum
            .max(rel(a.sum(), b.sum()))
            .max(rel(a.sum_sq(), b.sum_sq()));
    }
    let worst_cov = match (running.covariance(), exact.covariance()) {
        (Some(a), Some(b)) => rel(a.as_slice(), b.as_slice()),
        _ => 0.0,
    };
    println!(
        "{}",
        json!({
            "boards": n,
            "learner": algorithm.as_str(),
            "dim": args.dim,
            "updates_since_rebuild": period - 1,
            "deltas": args.deltas,
            "whole_heads_taken": fetched,
            "envelope_bytes": fleet.seal(0)?.len(),
            "delta_bytes": delta_bytes(&mut fleet, args.learn)?,
            "max_rel_drift_class_sums": worst_sum,
            "max_rel_drift_covariance": worst_cov,
            "update_ms": per_update_ms,
            "rebuild_ms": rebuild_ms,
        })
    );
    Ok(())
}

/// The size of a delta of `learn` samples (board 0's, as the steady phase sends them).
fn delta_bytes(fleet: &mut Fleet, learn: usize) -> Result<usize> {
    let deltas = fleet.deltas;
    fleet.deltas = true;
    fleet.heads[0].start_journal();
    let (_, d) = fleet.step(0, learn)?;
    fleet.deltas = deltas;
    Ok(d.map_or(0, |d| d.len()))
}
