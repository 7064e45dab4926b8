//! Test harness: a real mosquitto on a free loopback port, the real adaptd binary as a child
//! process (or `adaptd::run` inside the test process), and an MQTT client that records what
//! adaptd publishes.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Generous bound for anything to happen (no test asserts durations): 120 s, or
/// `ADAPTD_TEST_WAIT_SECS` (scripts/arm-check raises it: under qemu the backbone is ~100× slower).
pub fn wait_bound() -> Duration {
    let secs = std::env::var("ADAPTD_TEST_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// The mosquitto broker binary: `$MOSQUITTO` when set, else the first `mosquitto` on the PATH or
/// in /usr/sbin, /usr/local/sbin, /sbin (Debian installs it in /usr/sbin, which is not on a
/// normal user's PATH). Panics with what to install when there is none.
pub fn mosquitto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "mosquitto not found on the PATH nor in /usr/sbin, /usr/local/sbin, /sbin: \
                 install it (apt-get install mosquitto) or set MOSQUITTO=/path/to/mosquitto"
            )
        })
}

/// Whether the tests run as root (the network-fault test needs it for its namespace).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Waits for the `{root}/result` reply of `command` and returns it.
pub async fn result_of(c: &Client, root: &str, command: &str) -> serde_json::Value {
    c.wait_for(&format!("{root}/result"), |m| {
        m.json()["command"] == command
    })
    .await
    .json()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path of a test fixture.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A mosquitto broker owned by the test.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts mosquitto on a free port with persistence (sessions survive a restart).
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// Starts mosquitto with extra configuration lines.
    pub fn start_with(extra: &str) -> Mosquitto {
        Mosquitto::start_custom(|port, dir| {
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
                 persistence true\npersistence_location {}/\nautosave_interval 1\n\
                 autosave_on_changes true\nmax_queued_messages 0\nmax_inflight_messages 20\n\
                 log_dest file {}/mosquitto.log\n{extra}\n",
                dir.display(),
                dir.display()
            )
        })
    }

    /// Starts mosquitto with a whole configuration written by `make(port, dir)`, where
    /// `port` is a free port the config must listen on (plain TCP on 127.0.0.1: the
    /// readiness check connects there) and `dir` a private directory for its files.
    pub fn start_custom(make: impl FnOnce(u16, &Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = make(port, dir.path());
        std::fs::write(dir.path().join("mosquitto.conf"), conf).expect("conf");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.restart();
        m
    }

    /// The broker's private directory.
    #[allow(dead_code)]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// (Re)starts the broker process on the same port and persistence directory.
    pub fn restart(&mut self) {
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + wait_bound();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker with SIGTERM (it saves its sessions) and waits for it to exit.
    pub fn stop_graceful(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// Sends a signal to the broker process (SIGSTOP pauses it, SIGCONT resumes it).
    #[allow(dead_code)]
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Kills the broker (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The broker URL for adaptd.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ADAPTD_*` settings every test daemon runs with (broker, state directory, device id, fast
/// publishing and reconnects, two workers), with `extra` added or replacing a default.
pub fn daemon_env(
    broker_url: &str,
    state: &Path,
    device: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("ADAPTD_BROKER_URL".into(), broker_url.into()),
        ("ADAPTD_STATE_DIR".into(), state.display().to_string()),
        ("ADAPTD_DEVICE_ID".into(), device.into()),
        ("ADAPTD_PUBLISH_HEAD_INTERVAL_SECS".into(), "0".into()),
        ("ADAPTD_PUBLISH_STATS_INTERVAL_SECS".into(), "1".into()),
        ("ADAPTD_BROKER_RECONNECT_MIN_MS".into(), "100".into()),
        ("ADAPTD_BROKER_RECONNECT_MAX_MS".into(), "1000".into()),
        ("ADAPTD_SERVICE_WORKERS".into(), "2".into()),
    ];
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// adaptd inside the test process, as tokio's mini-redis tests run their server: `adaptd::run`
/// on a task of the test's runtime, with a oneshot channel as its shutdown future.
pub struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcess {
    /// Settings as the child-process [`Daemon`] gets them ([`daemon_env`]), built without the
    /// process environment: `toml` is a config file's text on top of the defaults, the pairs
    /// are the `ADAPTD_*` overrides.
    pub fn settings(
        toml: &str,
        broker_url: &str,
        state: &Path,
        device: &str,
        extra: &[(&str, &str)],
    ) -> adaptd::config::Settings {
        adaptd::config::Settings::from_parts(
            Some(toml),
            "the test's config text",
            daemon_env(broker_url, state, device, extra).into_iter(),
        )
        .expect("test settings are valid")
    }

    /// Spawns `adaptd::run(settings, <shutdown>)` on the current tokio runtime.
    pub fn start(settings: adaptd::config::Settings) -> InProcess {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(adaptd::run(settings, async move {
            // A dropped sender is a shutdown too.
            let _ = rx.await;
        }));
        InProcess {
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// True until `run` returned (an error, or a shutdown).
    pub fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Resolves the shutdown future and returns what `run` returned (panics if it did not
    /// return within [`wait_bound`] or panicked).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("started");
        tokio::time::timeout(wait_bound(), task)
            .await
            .expect("adaptd::run returned in time")
            .expect("adaptd::run did not panic")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        // A test that failed half-way: ask the daemon to stop; the runtime ends the task.
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The adaptd binary running as a child process.
pub struct Daemon {
    pub state: PathBuf,
    pub device: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Starts adaptd against `broker_url` with its state in `state`.
    pub fn start(broker_url: &str, state: &Path, device: &str, extra: &[(&str, &str)]) -> Daemon {
        let env = daemon_env(broker_url, state, device, extra);
        let log = state.with_extension("log");
        let mut d = Daemon {
            state: state.to_path_buf(),
            device: device.into(),
            env,
            child: None,
            log,
        };
        d.restart();
        d
    }

    /// Starts the process again with the same settings.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_adaptd"));
        // Test knobs are not config keys: adaptd refuses unknown ADAPTD_* variables.
        for (k, _) in std::env::vars() {
            if k.starts_with("ADAPTD_TEST_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADAPTD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("adaptd binary");
        self.child = Some(child);
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + wait_bound();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `adaptd/<device>`.
    pub fn root(&self) -> String {
        format!("adaptd/{}", self.device)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    /// A short description for assertion messages: a head's sample count and classes when the
    /// payload is an info message, else its first 200 characters.
    pub fn summary(&self) -> String {
        match serde_json::from_slice::<serde_json::Value>(&self.payload) {
            Ok(v) if v["head"].is_object() => format!(
                "head: version {} samples {} classes {}",
                v["head"]["version"], v["head"]["samples"], v["head"]["classes"]
            ),
            _ => String::from_utf8_lossy(&self.payload)
                .chars()
                .take(200)
                .collect(),
        }
    }

    /// The payload as JSON (panics with the payload when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {:?}", self.topic, self.payload))
    }
}

/// A test MQTT client recording every message on the topics it subscribed to.
pub struct Client {
    pub client: AsyncClient,
    seen: Arc<Mutex<Vec<Msg>>>,
}

impl Client {
    /// Connects to 127.0.0.1:`port` and subscribes to `filters`.
    pub async fn connect(port: u16, filters: &[&str]) -> Client {
        Client::connect_to("127.0.0.1", port, filters).await
    }

    /// Connects to `host`:`port` and subscribes to `filters`.
    pub async fn connect_to(host: &str, port: u16, filters: &[&str]) -> Client {
        let id = format!("test-{}", rand_id());
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(64 << 20, 64 << 20);
        o.set_inflight(20);
        let (client, mut eventloop) = AsyncClient::new(o, 1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let subs: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        let c2 = client.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for f in &subs {
                            let _ = c2.subscribe(f.clone(), QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(m))) => {
                        s.lock().expect("lock").push(Msg {
                            topic: m.topic.clone(),
                            payload: m.payload.to_vec(),
                            retain: m.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        if filters.is_empty() {
            return Client { client, seen };
        }
        tokio::time::timeout(wait_bound(), ready_rx)
            .await
            .expect("subscribed in time")
            .expect("subscribed");
        // One SubAck per filter; give the rest a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Client { client, seen }
    }

    /// Publishes with QoS 1.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .expect("publish");
    }

    /// Publishes with QoS 1 and the retain flag.
    #[allow(dead_code)]
    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await
            .expect("publish");
    }

    /// Everything received so far on `topic`.
    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Everything received so far on topics starting with `prefix`.
    pub fn on_prefix(&self, prefix: &str) -> Vec<Msg> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|m| m.topic.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Forgets what was received.
    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }

    /// Waits until a message on `topic` satisfies `pred`; returns it.
    pub async fn wait_for(&self, topic: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let deadline = Instant::now() + wait_bound();
        loop {
            if let Some(m) = self.on(topic).into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "nothing on {topic} matched in time; got {:?}",
                self.on(topic).iter().map(Msg::summary).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `n` messages arrived on `topic`.
    pub async fn wait_count(&self, topic: &str, n: usize) -> Vec<Msg> {
        let deadline = Instant::now() + wait_bound();
        loop {
            let got = self.on(topic);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages on {topic}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn rand_id() -> String {
    use rand::Rng;
    format!("{:08x}", rand::thread_rng().gen::<u32>())
}

/// Reads a JPEG fixture and makes `n` distinct variants of it (crops, flips, brightness),
/// JPEG-encoded: real images of one class that are not byte-identical.
pub fn variants(name: &str, n: usize, seed: u64) -> Vec<Vec<u8>> {
    use rand::{Rng, SeedableRng};
    let img = image::open(fixture(name)).expect("fixture image");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (w, h) = (img.width(), img.height());
            let cw = rng.gen_range(w * 7 / 10..=w);
            let ch = rng.gen_range(h * 7 / 10..=h);
            let x = rng.gen_range(0..=w - cw);
            let y = rng.gen_range(0..=h - ch);
            let mut v = img.crop_imm(x, y, cw, ch);
            if rng.gen_bool(0.5) {
                v = v.fliph();
            }
            let v = v.brighten(rng.gen_range(-20..20));
            let mut out = Vec::new();
            v.to_rgb8()
                .write_to(
                    &mut std::io::Cursor::new(&mut out),
                    image::ImageFormat::Jpeg,
                )
                .expect("jpeg");
            out
        })
        .collect()
}

/// Counts of each class in an `{root}/info` document.
pub fn class_counts(info: &serde_json::Value) -> HashMap<String, u64> {
    info["head"]["classes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_string(),
                        c["samples"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a `{root}/info` document satisfying `pred`.
#[allow(dead_code)]
pub async fn info(
    c: &Client,
    root: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    c.wait_for(&format!("{root}/info"), |m| pred(&m.json()))
        .await
        .json()
}

/// Publishes every image on `{root}/learn/{label}` (QoS 1).
#[allow(dead_code)]
pub async fn learn_all(c: &Client, root: &str, label: &str, images: &[Vec<u8>]) {
    for img in images {
        c.publish(&format!("{root}/learn/{label}"), img.clone())
            .await;
    }
}

/// Base64 (standard alphabet).
#[allow(dead_code)]
pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64 (test data only: panics on bad input).
#[allow(dead_code)]
pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64")
}

/// Sends `img` for inference with `id` and waits for its prediction.
#[allow(dead_code)]
pub async fn predict(c: &Client, root: &str, id: &str, img: &[u8]) -> serde_json::Value {
    let req = serde_json::json!({"id": id, "image": base64_encode(img)}).to_string();
    c.publish(&format!("{root}/infer"), req).await;
    c.wait_for(&format!("{root}/prediction"), |m| m.json()["id"] == id)
        .await
        .json()
}

/// Cosine similarity of two vectors, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
