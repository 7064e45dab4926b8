//! `adaptd teach`: a folder-per-class dataset sent to a running board through its public MQTT
//! topics (JSON learn requests, replies matched by id, a journal that makes a re-run resume),
//! and the MQTT client side `adaptd watch` shares with it: the broker URL, the connection,
//! finding the board and reading its retained `{root}/info`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Args;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::eval::data::{self, InputKind, Origin};
use crate::model::Modality;

/// How long `teach`/`watch` collect the retained `adaptd/+/info` messages to find the board.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);
/// How long they wait for the board's retained `{root}/info` (and `{root}/status`).
const INFO_WAIT: Duration = Duration::from_secs(3);
/// Connection and subscription deadline.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Largest MQTT packet this client sends or accepts (an info document with a fleet is large).
const MAX_PACKET_BYTES: usize = 32 << 20;
/// The journal is written at least this often while learned replies arrive.
const JOURNAL_EVERY: Duration = Duration::from_secs(5);
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How to reach the broker and which board to talk to (shared by `teach` and `watch`).
#[derive(Debug, Clone, Args)]
pub struct BoardArgs {
    /// Broker URL: mqtt://host[:port] (port 1883 by default) or mqtts://host[:port] (8883,
    /// with --ca-file).
    #[arg(long, value_name = "URL")]
    pub broker: String,
    /// CA certificate(s), PEM, to verify an mqtts:// broker.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// MQTT user name.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password (with --username).
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// The board's device id: its root is adaptd/<ID>.
    #[arg(long, value_name = "ID", conflicts_with = "root")]
    pub device: Option<String>,
    /// The board's topic root (its `device.root`, e.g. adaptd/cam1). Without --root or
    /// --device: the one board whose retained adaptd/+/info is on the broker.
    #[arg(long)]
    pub root: Option<String>,
}

/// `adaptd teach` arguments.
#[derive(Debug, Args)]
pub struct TeachArgs {
    #[command(flatten)]
    pub board: BoardArgs,
    /// Learn requests in flight at once (each sent with QoS 1 and waiting for its `learned` or
    /// `error` reply).
    #[arg(long = "qos1-window", value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub window: u16,
    /// Seconds to wait for the reply to a file before reporting it unanswered.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub timeout: f64,
    /// Journal of the files the board has learned (ids), read to skip them and written as
    /// replies arrive. Default: $XDG_STATE_HOME/adaptd/teach/<root, / as _>.json
    /// (~/.local/state/adaptd/teach/… without XDG_STATE_HOME).
    #[arg(long, value_name = "FILE")]
    pub journal: Option<PathBuf>,
    /// Largest learn request sent, in bytes of JSON (a file's base64 is 4/3 of its size):
    /// larger files are refused here with `too_large` instead of being sent. The default is
    /// the board's default `service.max_payload_bytes`.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_payload: usize,
    /// The dataset: DIR/<label>/<files>, files .jpg .jpeg .png (an image model) or .wav (a
    /// sound model), searched recursively; hidden files are skipped.
    pub dir: PathBuf,
}

/// A broker URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (IPv6 in brackets), as the daemon's
/// `broker.url` (src/config/validate.rs, private there).
pub(crate) fn parse_broker_url(url: &str) -> Result<BrokerUrl> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        bail!("broker URL {url:?} must start with mqtt:// or mqtts://");
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') || rest.contains('/') {
        bail!(
            "broker URL {url:?}: give only host[:port] (credentials go in --username and \
             --password)"
        );
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        // [v6] or [v6]:port
        let (host, after) = v6
            .split_once(']')
            .with_context(|| format!("broker URL {url:?}: unclosed ["))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').unwrap_or(p)),
        };
        (host.to_string(), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .with_context(|| format!("broker URL {url:?}: bad port {p:?}"))?,
    };
    if host.is_empty() {
        bail!("broker URL {url:?} has no host");
    }
    Ok(BrokerUrl { tls, host, port })
}

/// What the connection task hands over.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A message on a subscribed topic.
    Message(Publish),
    /// A subscription was acknowledged.
    Subscribed,
    /// The connection dropped (the task reconnects).
    Lost(String),
    /// Connected again, subscriptions renewed.
    Reconnected,
}

/// A connection to the broker: the client, and what its event loop received.
pub(crate) struct Conn {
    pub client: AsyncClient,
    /// The broker, for messages.
    pub broker: BrokerUrl,
    rx: mpsc::UnboundedReceiver<Incoming>,
    backlog: VecDeque<Incoming>,
    filters: Arc<Mutex<Vec<String>>>,
}

impl Conn {
    /// Connects (clean session, client id `adaptd-<role>-<random>`) and waits for the broker's
    /// acknowledgement.
    pub async fn connect(args: &BoardArgs, role: &str) -> Result<Conn> {
        let broker = parse_broker_url(&args.broker)?;
        let id = format!("adaptd-{role}-{:08x}", rand::random::<u32>());
        let mut o = MqttOptions::new(id, broker.host.clone(), broker.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(user) = &args.username {
            o.set_credentials(user, args.password.clone().unwrap_or_default());
        }
        if broker.tls {
            let ca_file = args
                .ca_file
                .as_ref()
                .context("an mqtts:// broker needs --ca-file (the CA certificate, PEM)")?;
            let ca = std::fs::read(ca_file)
                .with_context(|| format!("reading CA file {}", ca_file.display()))?;
            let _ = rustls::crypto::ring::default_provider().install_default();
            o.set_transport(Transport::Tls(TlsConfiguration::Simple {
                ca,
                alpn: None,
                client_auth: None,
            }));
        }
        let (client, mut eventloop) = AsyncClient::new(o, 256);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(CONNECT_WAIT.as_secs());
        eventloop.set_network_options(net);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let filters = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(drive(
            eventloop,
            client.clone(),
            tx,
            filters.clone(),
            ready_tx,
        ));
        match tokio::time::timeout(CONNECT_WAIT + Duration::from_secs(1), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("cannot connect to the broker {broker}: {e}"),
            Ok(Err(_)) => bail!("cannot connect to the broker {broker}: connection task ended"),
            Err(_) => bail!(
                "cannot connect to the broker {broker}: no answer within {} s",
                CONNECT_WAIT.as_secs()
            ),
        }
        Ok(Conn {
            client,
            broker,
            rx,
            backlog: VecDeque::new(),
            filters,
        })
    }

    /// The next event; `None` once the connection task ended.
    pub async fn recv(&mut self) -> Option<Incoming> {
        match self.backlog.pop_front() {
            Some(m) => Some(m),
            None => self.rx.recv().await,
        }
    }

    /// Subscribes to `filters` (QoS 1) and waits for the acknowledgement, keeping what
    /// arrives meanwhile for [`Conn::recv`]. The filters are renewed after a reconnection.
    pub async fn subscribe(&mut self, filters: &[String]) -> Result<()> {
        if let Ok(mut f) = self.filters.lock() {
            f.extend(filters.iter().cloned());
        }
        self.client
            .subscribe_many(
                filters
                    .iter()
                    .map(|f| rumqttc::SubscribeFilter::new(f.clone(), QoS::AtLeastOnce)),
            )
            .await
            .context("subscribing")?;
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Incoming::Subscribed)) => return Ok(()),
                Ok(Some(other)) => self.backlog.push_back(other),
                Ok(None) => bail!("connection to {} ended while subscribing", self.broker),
                Err(_) => bail!(
                    "the broker {} did not acknowledge the subscription to {} within {} s",
                    self.broker,
                    filters.join(", "),
                    CONNECT_WAIT.as_secs()
                ),
            }
        }
    }

    /// Stops receiving `filters`.
    pub async fn unsubscribe(&mut self, filters: &[String]) -> Result<()> {
        if let Ok(mut f) = self.filters.lock() {
            f.retain(|x| !filters.contains(x));
        }
        for f in filters {
            self.client
                .unsubscribe(f.clone())
                .await
                .context("unsubscribing")?;
        }
        Ok(())
    }

    /// Disconnects cleanly (after what was queued has gone out).
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        // Give the event loop a moment to send it; nothing depends on it.
        let mut rx = self.rx;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while rx.recv().await.is_some() {}
        })
        .await;
    }
}

/// Polls the event loop: reports the first connection on `ready`, then forwards messages,
/// subscription acknowledgements and connection changes; reconnects (renewing the
/// subscriptions: the session is clean) until the disconnect went out or nobody listens.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::UnboundedSender<Incoming>,
    filters: Arc<Mutex<Vec<String>>>,
    ready: oneshot::Sender<std::result::Result<(), String>>,
) {
    let mut ready = Some(ready);
    loop {
        let event = eventloop.poll().await;
        let sent = match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => match ready.take() {
                Some(r) => r.send(Ok(())).is_ok(),
                None => {
                    let current: Vec<String> =
                        filters.lock().map(|f| f.clone()).unwrap_or_default();
                    if !current.is_empty() {
                        let _ = client.try_subscribe_many(
                            current
                                .into_iter()
                                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce)),
                        );
                    }
                    tx.send(Incoming::Reconnected).is_ok()
                }
            },
            Ok(Event::Incoming(Packet::Publish(p))) => tx.send(Incoming::Message(p)).is_ok(),
            Ok(Event::Incoming(Packet::SubAck(_))) => tx.send(Incoming::Subscribed).is_ok(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => true,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(e.to_string()));
                    return;
                }
                let alive = tx.send(Incoming::Lost(e.to_string())).is_ok();
                tokio::time::sleep(Duration::from_secs(1)).await;
                alive
            }
        };
        if !sent {
            return;
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A board as its retained messages describe it.
#[derive(Debug)]
pub(crate) struct Board {
    /// Its topic root.
    pub root: String,
    /// Its retained `{root}/info`, if any.
    pub info: Option<serde_json::Value>,
    /// Its retained `{root}/status` (`online`/`offline`), if any.
    pub status: Option<String>,
}

/// Checks a topic root given on the command line.
fn check_root(root: &str) -> Result<()> {
    if root.is_empty()
        || root.contains(['+', '#', '\0'])
        || root.starts_with('/')
        || root.ends_with('/')
    {
        bail!("--root {root:?}: must be non-empty, without + or #, and not start or end with /");
    }
    Ok(())
}

/// The board `args` name (`--root`, `--device`), or the only one whose retained
/// `adaptd/+/info` the broker holds; with its retained info and status.
pub(crate) async fn find_board(conn: &mut Conn, args: &BoardArgs) -> Result<Board> {
    let root = match (&args.root, &args.device) {
        (Some(root), _) => Some(root.clone()),
        (None, Some(device)) => {
            crate::head::validate_label(device)
                .map_err(|e| anyhow::anyhow!("--device {device:?}: {e}"))?;
            Some(format!("adaptd/{device}"))
        }
        (None, None) => None,
    };
    if let Some(root) = root {
        check_root(&root)?;
        return read_board(conn, &root).await;
    }
    let filters = ["adaptd/+/info".to_string(), "adaptd/+/status".to_string()];
    conn.subscribe(&filters).await?;
    let mut boards: BTreeMap<String, Board> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, conn.recv()).await {
        let Incoming::Message(p) = event else {
            continue;
        };
        if let Some(root) = p.topic.strip_suffix("/info") {
            let info: Option<serde_json::Value> = serde_json::from_slice(&p.payload).ok();
            // A retained info with an empty payload is a deleted one.
            let Some(info) = info else { continue };
            let root = info["root"].as_str().unwrap_or(root).to_string();
            board_entry(&mut boards, &root).info = Some(info);
        } else if let Some(root) = p.topic.strip_suffix("/status") {
            board_entry(&mut boards, root).status =
                Some(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    conn.unsubscribe(&filters).await?;
    boards.retain(|_, b| b.info.is_some());
    let online: Vec<&String> = boards
        .iter()
        .filter(|(_, b)| b.status.as_deref() != Some("offline"))
        .map(|(r, _)| r)
        .collect();
    let chosen = match (online.as_slice(), boards.len()) {
        ([one], _) => Some((*one).clone()),
        ([], 1) => boards.keys().next().cloned(),
        _ => None,
    };
    match chosen.and_then(|r| boards.remove(&r)) {
        Some(board) => Ok(board),
        None if boards.is_empty() => bail!(
            "no board found on {}: no retained adaptd/+/info within {} s (is adaptd running \
             and connected to this broker? a board with a custom device.root needs --root)",
            conn.broker,
            DISCOVERY_WAIT.as_secs()
        ),
        None => {
            let list: Vec<String> = boards
                .values()
                .map(|b| {
                    format!(
                        "{} ({})",
                        b.root,
                        b.status.as_deref().unwrap_or("no status")
                    )
                })
                .collect();
            bail!(
                "{} boards on {}: {}; choose one with --root or --device",
                boards.len(),
                conn.broker,
                list.join(", ")
            )
        }
    }
}

fn board_entry<'a>(boards: &'a mut BTreeMap<String, Board>, root: &str) -> &'a mut Board {
    boards.entry(root.to_string()).or_insert_with(|| Board {
        root: root.to_string(),
        info: None,
        status: None,
    })
}

/// Reads the retained `{root}/info` and `{root}/status` (waiting up to [`INFO_WAIT`]).
async fn read_board(conn: &mut Conn, root: &str) -> Result<Board> {
    let (info_topic, status_topic) = (format!("{root}/info"), format!("{root}/status"));
    let filters = [info_topic.clone(), status_topic.clone()];
    conn.subscribe(&filters).await?;
    let mut board = Board {
        root: root.to_string(),
        info: None,
        status: None,
    };
    let mut deadline = tokio::time::Instant::now() + INFO_WAIT;
    while board.info.is_none() || board.status.is_none() {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, conn.recv()).await else {
            break;
        };
        let Incoming::Message(p) = event else {
            continue;
        };
        if p.topic == info_topic {
            board.info = serde_json::from_slice(&p.payload).ok();
            // The status, when retained, comes right along: do not wait long for it.
            deadline = deadline.min(tokio::time::Instant::now() + Duration::from_millis(500));
        } else if p.topic == status_topic {
            board.status = Some(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    conn.unsubscribe(&filters).await?;
    Ok(board)
}

/// `adaptd teach`: runs [`teach_async`] on a small runtime.
pub fn teach(args: &TeachArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(teach_async(args))
}

/// One file to teach.
struct Work {
    label: String,
    path: PathBuf,
    /// The path below DIR, for messages.
    name: String,
}

/// What became of a file.
#[derive(Debug, Default)]
struct Tally {
    learned: usize,
    skipped: usize,
    /// Of `skipped`: a second copy of a file (same content, same label) in this dataset.
    duplicates: usize,
    /// (file, code, message)
    refused: Vec<(String, String, String)>,
    unanswered: Vec<String>,
}

impl Tally {
    fn done(&self) -> usize {
        self.learned + self.skipped + self.refused.len() + self.unanswered.len()
    }
}

/// A request waiting for its reply.
struct Pending {
    name: String,
    label: String,
    deadline: Instant,
}

/// The id of a learn request: `teach-` + the first 16 hex digits of SHA-256 over the label, a
/// NUL and the file's bytes, so the same file under the same label always has the same id.
pub(crate) fn request_id(label: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0u8]);
    h.update(bytes);
    let hex = hex::encode(h.finalize());
    format!("teach-{}", &hex[..16])
}

/// The JSON learn request of a file: images and clips base64, a text as itself.
fn learn_request(id: &str, label: &str, kind: InputKind, bytes: &[u8]) -> Result<String> {
    let b64 = || base64::engine::general_purpose::STANDARD.encode(bytes);
    let (field, value) = match kind {
        InputKind::Image => ("image", b64()),
        InputKind::Sound => ("audio", b64()),
        InputKind::Text => (
            "text",
            String::from_utf8(bytes.to_vec()).context("a .txt file must be UTF-8")?,
        ),
        InputKind::Window => {
            let text = std::str::from_utf8(bytes).context("a window file must be UTF-8")?;
            if !text.trim_start().starts_with(['[', '{']) {
                ("window", text.to_string())
            } else {
                // A JSON window file: its channel arrays (or its "window") go as they are.
                let v: serde_json::Value =
                    serde_json::from_str(text).context("a .json window is not JSON")?;
                let window = match v {
                    serde_json::Value::Object(mut o) => o
                        .remove("window")
                        .context("a .json window object needs a \"window\" field")?,
                    v => v,
                };
                let req = serde_json::json!({"id": id, "label": label, "window": window});
                return Ok(req.to_string());
            }
        }
    };
    Ok(serde_json::json!({"id": id, "label": label, field: value}).to_string())
}

/// What a dataset without a single input is told.
const NO_INPUTS: &str = "the dataset has no images (.jpg, .jpeg, .png), sound clips (.wav), \
                         texts (.txt) nor sensor windows (.csv, .json)";

/// The kind of input of the dataset the board's model takes (images, sound clips, texts or
/// sensor windows), and how many inputs of other kinds are left out (see
/// [`InputKind::for_model`]).
fn dataset_kind(work: &[Work], modality: Option<Modality>) -> Result<(InputKind, usize)> {
    InputKind::for_model(work.iter().map(|w| w.path.as_path()), modality)?.context(NO_INPUTS)
}

/// The inputs the board's model takes, from its info's `backbone.modality`; `None` (with a
/// warning) when the info does not say.
fn board_modality(root: &str, info: &serde_json::Value) -> Option<Modality> {
    match info["backbone"]["modality"].as_str() {
        Some("image") => Some(Modality::Image),
        Some("audio") => Some(Modality::Audio),
        Some("text") => Some(Modality::Text),
        Some("sensor") => Some(Modality::Sensor),
        Some("tensor") => Some(Modality::Tensor),
        other => {
            eprintln!(
                "adaptd teach: warning: the board {root} does not say which inputs its model \
                 takes (backbone.modality {other:?}); sending anyway"
            );
            None
        }
    }
}

/// Refuses a dataset the board's model (named in its info's `backbone`) cannot take.
fn check_modality(
    kind: InputKind,
    root: &str,
    info: &serde_json::Value,
    modality: Option<Modality>,
) -> Result<()> {
    let name = info["backbone"]["name"].as_str().unwrap_or("(unnamed)");
    let Some(modality) = modality else {
        return Ok(());
    };
    match kind.refused_by(modality, &format!("{name} of the board {root}")) {
        Some(why) => bail!("{why}"),
        None => Ok(()),
    }
}

/// What the journal file holds: the board's root and every id it learned, with its label.
#[derive(Debug, Default, Serialize, Deserialize)]
struct JournalFile {
    root: String,
    taught: BTreeMap<String, String>,
}

/// The journal of what a board learned from `teach`, written atomically.
struct Journal {
    path: PathBuf,
    data: JournalFile,
    dirty: bool,
    saved: Instant,
}

impl Journal {
    /// Reads the journal at `path` (empty when the file does not exist).
    fn load(path: &Path, root: &str) -> Result<Journal> {
        let data = match std::fs::read(path) {
            Ok(bytes) => {
                let data: JournalFile = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a teach journal (remove it, or pass another --journal)",
                        path.display()
                    )
                })?;
                if data.root != root {
                    bail!(
                        "the journal {} is the board {}'s, not {root}'s: pass --journal FILE",
                        path.display(),
                        data.root
                    );
                }
                data
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JournalFile {
                root: root.to_string(),
                taught: BTreeMap::new(),
            },
            Err(e) => {
                return Err(e).with_context(|| format!("reading the journal {}", path.display()))
            }
        };
        Ok(Journal {
            path: path.to_path_buf(),
            data,
            dirty: false,
            saved: Instant::now(),
        })
    }

    fn contains(&self, id: &str) -> bool {
        self.data.taught.contains_key(id)
    }

    fn record(&mut self, id: &str, label: &str) {
        self.data.taught.insert(id.to_string(), label.to_string());
        self.dirty = true;
    }

    /// Writes the journal when it changed: a temporary file beside it, synced, renamed over it.
    fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut tmp = self.path.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            let mut f = std::fs::File::create(&tmp)?;
            serde_json::to_writer_pretty(&mut f, &self.data)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().with_context(|| format!("writing the journal {}", self.path.display()))?;
        self.dirty = false;
        self.saved = Instant::now();
        Ok(())
    }
}

/// The default journal of the board at `root`: `$XDG_STATE_HOME/adaptd/teach/<root>.json`
/// (`/` in the root as `_`), or under `~/.local/state` without `XDG_STATE_HOME`.
fn default_journal(root: &str) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local/state"))
            .context("neither XDG_STATE_HOME nor HOME is set: pass --journal FILE")?,
    };
    Ok(base
        .join("adaptd/teach")
        .join(format!("{}.json", journal_name(root))))
}

/// A root as a file name: `/` as `_`, and anything unusual as `%XX`.
fn journal_name(root: &str) -> String {
    let mut out = String::new();
    for c in root.chars() {
        match c {
            '/' => out.push('_'),
            c if c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') => out.push(c),
            c => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    if out.starts_with('.') {
        out.replace_range(0..1, "%2E");
    }
    out
}

/// The progress line on stderr (when it is a terminal).
struct Progress {
    enabled: bool,
    total: usize,
    start: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    fn draw(&mut self, t: &Tally, in_flight: usize, force: bool) {
        if !self.enabled {
            return;
        }
        if !force && self.drawn.is_some_and(|d| d.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.drawn = Some(Instant::now());
        let done = t.done();
        let width = 24;
        let filled = (done * width).checked_div(self.total).unwrap_or(width);
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r[{}{}] {done}/{} learned {} skipped {} refused {} unanswered {} in flight {in_flight} \
             {:.1} files/s\x1b[K",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.total,
            t.learned,
            t.skipped,
            t.refused.len(),
            t.unanswered.len(),
            (t.learned + t.refused.len()) as f64 / secs,
        );
        let _ = err.flush();
    }

    fn finish(&mut self, t: &Tally) {
        if self.enabled {
            self.draw(t, 0, true);
            eprintln!();
        }
    }
}

/// The id in a reply, a string or a number.
fn reply_id(v: &serde_json::Value) -> Option<String> {
    match &v["id"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn teach_async(args: &TeachArgs) -> Result<()> {
    anyhow::ensure!(
        args.timeout.is_finite() && args.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    let timeout = Duration::from_secs_f64(args.timeout);
    // A board learns from inputs, never from embeddings: a .csv file is a sensor window, for
    // the board's model to take or leave out.
    let scan = data::scan_in(&args.dir, true)?;
    let mut work = Vec::new();
    let mut not_inputs = 0usize;
    for item in scan.items {
        match item.origin {
            Origin::Input(path) => {
                let name = path
                    .strip_prefix(&args.dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                work.push(Work {
                    label: item.label,
                    path,
                    name,
                });
            }
            Origin::Vector(_) => not_inputs += 1,
        }
    }
    if not_inputs > 0 {
        eprintln!(
            "adaptd teach: ignoring {not_inputs} embedding(s) from .npy files: a board learns \
             from inputs (images, sound clips, texts, sensor windows)"
        );
    }
    if scan.skipped > 0 {
        eprintln!(
            "adaptd teach: ignoring {} file(s) that are not .jpg .jpeg .png .wav .txt .csv .json",
            scan.skipped
        );
    }
    // Fail before connecting when there is nothing to send; the kind is the board's to pick.
    anyhow::ensure!(!work.is_empty(), NO_INPUTS);

    let mut conn = Conn::connect(&args.board, "teach").await?;
    let board = find_board(&mut conn, &args.board).await?;
    let root = board.root.clone();
    let Some(info) = board.info else {
        bail!(
            "no retained {root}/info on {} within {} s: is the board running and connected to \
             this broker? (without --root, adaptd teach lists the boards it finds)",
            conn.broker,
            INFO_WAIT.as_secs()
        );
    };
    if board.status.as_deref() == Some("offline") {
        bail!("the board {root} is offline (retained {root}/status): start it, then teach");
    }
    let modality = board_modality(&root, &info);
    let (kind, left_out) = dataset_kind(&work, modality)?;
    if left_out > 0 {
        eprintln!(
            "adaptd teach: leaving out {left_out} file(s) that are not {}: the board's model \
             takes {}",
            kind.plural(),
            kind.plural()
        );
        work.retain(|w| InputKind::of_in(&w.path, true) == Some(kind));
    }
    check_modality(kind, &root, &info, modality)?;

    let journal_path = match &args.journal {
        Some(p) => p.clone(),
        None => default_journal(&root)?,
    };
    let mut journal = Journal::load(&journal_path, &root)?;
    if info["head"]["samples"].as_u64() == Some(0) && !journal.data.taught.is_empty() {
        eprintln!(
            "adaptd teach: warning: the board {root} has learned nothing, but the journal {} \
             lists {} file(s) taught: if the board was reset, delete the journal to teach them \
             again",
            journal_path.display(),
            journal.data.taught.len()
        );
    }

    let (learn_topic, learned_topic, error_topic) = (
        format!("{root}/learn"),
        format!("{root}/learned"),
        format!("{root}/error"),
    );
    conn.subscribe(&[learned_topic.clone(), error_topic.clone()])
        .await?;
    eprintln!(
        "adaptd teach: {} {} in {} class folder(s) to {root} on {} (journal {})",
        work.len(),
        kind.plural(),
        work.iter()
            .map(|w| w.label.as_str())
            .collect::<HashSet<_>>()
            .len(),
        conn.broker,
        journal_path.display()
    );

    let window = usize::from(args.window);
    let mut tally = Tally::default();
    let mut progress = Progress {
        enabled: std::io::stderr().is_terminal(),
        total: work.len(),
        start: Instant::now(),
        drawn: None,
    };
    let mut pending: HashMap<String, Pending> = HashMap::new();
    // Timed out, but a late reply still counts while the run goes on.
    let mut late: HashMap<String, Pending> = HashMap::new();
    let mut sent: HashSet<String> = HashSet::new();
    let mut queue = work.into_iter().peekable();
    // Set by a first Ctrl-C: nothing more is sent, the replies in flight are awaited (so the
    // journal has them); a second Ctrl-C stops at once.
    let mut interrupted_by_user = false;
    let stop = interrupted();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        while !interrupted_by_user && pending.len() < window {
            let Some(w) = queue.next() else { break };
            let bytes = match std::fs::read(&w.path) {
                Ok(b) => b,
                Err(e) => {
                    tally
                        .refused
                        .push((w.name, "unreadable".into(), format!("not sent: {e}")));
                    continue;
                }
            };
            let id = request_id(&w.label, &bytes);
            if journal.contains(&id) {
                tally.skipped += 1;
                continue;
            }
            if !sent.insert(id.clone()) {
                tally.skipped += 1;
                tally.duplicates += 1;
                continue;
            }
            let body = match learn_request(&id, &w.label, kind, &bytes) {
                Ok(body) => body,
                Err(e) => {
                    tally
                        .refused
                        .push((w.name, "invalid_text".into(), format!("not sent: {e:#}")));
                    continue;
                }
            };
            if body.len() > args.max_payload {
                tally.refused.push((
                    w.name,
                    "too_large".into(),
                    format!(
                        "not sent: the request would be {} bytes, above --max-payload {}",
                        body.len(),
                        args.max_payload
                    ),
                ));
                continue;
            }
            conn.client
                .publish(learn_topic.clone(), QoS::AtLeastOnce, false, body)
                .await
                .with_context(|| format!("publishing {} on {learn_topic}", w.name))?;
            pending.insert(
                id,
                Pending {
                    name: w.name,
                    label: w.label,
                    deadline: Instant::now() + timeout,
                },
            );
        }
        progress.draw(&tally, pending.len(), false);
        if pending.is_empty() && (interrupted_by_user || queue.peek().is_none()) {
            break;
        }
        let next_deadline = pending
            .values()
            .map(|p| p.deadline)
            .min()
            .unwrap_or_else(|| Instant::now() + timeout);
        tokio::select! {
            event = conn.recv() => match event {
                Some(Incoming::Message(p)) => {
                    let learned = p.topic == learned_topic;
                    if !learned && p.topic != error_topic {
                        continue;
                    }
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) else {
                        continue;
                    };
                    let Some(id) = reply_id(&v) else { continue };
                    let (req, was_late) = match pending.remove(&id) {
                        Some(r) => (r, false),
                        None => match late.remove(&id) {
                            Some(r) => (r, true),
                            None => continue,
                        },
                    };
                    if was_late {
                        tally.unanswered.retain(|n| *n != req.name);
                    }
                    if learned {
                        tally.learned += 1;
                        journal.record(&id, &req.label);
                    } else {
                        tally.refused.push((
                            req.name,
                            v["code"].as_str().unwrap_or("unknown").to_string(),
                            v["message"].as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
                Some(Incoming::Lost(e)) => {
                    progress.finish(&tally);
                    eprintln!("adaptd teach: connection to {} lost ({e}); reconnecting", conn.broker);
                }
                Some(Incoming::Reconnected) => {
                    eprintln!("adaptd teach: reconnected to {}", conn.broker);
                }
                Some(Incoming::Subscribed) => {}
                None => bail!("the connection to {} ended", conn.broker),
            },
            _ = tokio::time::sleep_until(next_deadline.into()) => {
                let now = Instant::now();
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(p) = pending.remove(&id) {
                        tally.unanswered.push(p.name.clone());
                        late.insert(id, p);
                    }
                }
            }
            _ = tick.tick() => {}
            _ = &mut stop => {
                if interrupted_by_user {
                    break;
                }
                interrupted_by_user = true;
                if !pending.is_empty() {
                    progress.finish(&tally);
                    eprintln!(
                        "adaptd teach: interrupted: waiting for the replies to the {} request(s) \
                         in flight (Ctrl-C again to stop at once)",
                        pending.len()
                    );
                }
                stop.set(interrupted());
            }
        }
        if journal.dirty && journal.saved.elapsed() >= JOURNAL_EVERY {
            journal.save()?;
        }
    }
    progress.finish(&tally);
    journal.save()?;
    let not_sent = queue.count();
    let in_flight: Vec<String> = pending.into_values().map(|p| p.name).collect();
    tally.unanswered.extend(in_flight);
    conn.disconnect().await;

    let secs = progress.start.elapsed().as_secs_f64();
    print!("{}", summary(&root, &tally, secs));
    if interrupted_by_user {
        bail!(
            "interrupted: {not_sent} file(s) not sent; run the same command again to resume \
             (the journal {} has what the board learned)",
            journal_path.display()
        );
    }
    if !tally.refused.is_empty() || !tally.unanswered.is_empty() {
        bail!(
            "{} file(s) refused, {} unanswered",
            tally.refused.len(),
            tally.unanswered.len()
        );
    }
    Ok(())
}

/// The closing report: the counts on one line, then every refused and unanswered file.
fn summary(root: &str, t: &Tally, secs: f64) -> String {
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, code, _) in &t.refused {
        *codes.entry(code).or_default() += 1;
    }
    let codes = if codes.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        format!(" ({})", list.join(", "))
    };
    let dups = if t.duplicates > 0 {
        format!(", {} of them copies within the dataset", t.duplicates)
    } else {
        String::new()
    };
    let sent = t.learned + t.refused.len() + t.unanswered.len();
    let mut out = format!(
        "{root}: learned {}, skipped {} (already taught{dups}), refused {}{codes}, unanswered {} \
         — {} files in {secs:.1} s ({:.1} sent per second)\n",
        t.learned,
        t.skipped,
        t.refused.len(),
        t.unanswered.len(),
        t.done(),
        sent as f64 / secs.max(1e-3),
    );
    for (name, code, message) in &t.refused {
        out.push_str(&format!("refused {name}: {code}: {message}\n"));
    }
    for name in &t.unanswered {
        out.push_str(&format!(
            "unanswered {name}: no reply in time (the board may still learn it; a re-run sends \
             it again)\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let u = parse_broker_url("mqtt://localhost").expect("ok");
        assert_eq!((u.tls, u.host.as_str(), u.port), (false, "localhost", 1883));
        let u = parse_broker_url("mqtts://broker.lan:8884/").expect("ok");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "broker.lan", 8884));
        let u = parse_broker_url("mqtt://[::1]:1999").expect("ok");
        assert_eq!((u.host.as_str(), u.port), ("::1", 1999));
        assert_eq!(u.to_string(), "mqtt://[::1]:1999");
        let u = parse_broker_url("mqtts://[fe80::1]").expect("ok");
        assert_eq!((u.host.as_str(), u.port), ("fe80::1", 8883));
        for bad in [
            "tcp://host",
            "mqtt://",
            "mqtt://host:x",
            "mqtt://host:0",
            "mqtt://host:70000",
            "mqtt://user:pw@host",
            "mqtt://host/path",
            "mqtt://[::1",
            "mqtt://[::1]x",
            "mqtt://::1",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_follow_content_and_label() {
        let a = request_id("cat", b"abc");
        assert_eq!(a, request_id("cat", b"abc"));
        assert_eq!(a.len(), "teach-".len() + 16);
        assert!(a.starts_with("teach-"));
        assert_ne!(a, request_id("cup", b"abc"));
        assert_ne!(a, request_id("cat", b"abd"));
        // The NUL separates label and content: "ca" + "tabc" is not "cat" + "abc".
        assert_ne!(a, request_id("ca", b"tabc"));
    }

    #[test]
    fn learn_requests_are_what_the_daemon_accepts() {
        let body = learn_request("teach-1", "cat", InputKind::Image, b"\xff\xd8\xff").expect("ok");
        let req =
            crate::daemon::request::parse_request(&bytes::Bytes::from(body)).expect("accepted");
        assert_eq!(req.id.as_deref(), Some("teach-1"));
        assert_eq!(req.label.as_deref(), Some("cat"));
        assert!(
            matches!(req.input, Some(crate::model::Input::Image(ref b)) if b == b"\xff\xd8\xff")
        );
        let body = learn_request("teach-2", "bell", InputKind::Sound, b"RIFF").expect("ok");
        let req =
            crate::daemon::request::parse_request(&bytes::Bytes::from(body)).expect("accepted");
        assert!(matches!(req.input, Some(crate::model::Input::Audio(_))));
        let body = learn_request(
            "teach-3",
            "lights_off",
            InputKind::Text,
            "Licht aus\n".as_bytes(),
        )
        .expect("ok");
        let req =
            crate::daemon::request::parse_request(&bytes::Bytes::from(body)).expect("accepted");
        assert!(matches!(req.input, Some(crate::model::Input::Text(ref t)) if t == "Licht aus\n"));
        assert!(learn_request("teach-4", "x", InputKind::Text, b"\xff").is_err());
        // A sensor window: CSV goes as text, a JSON file as its channel arrays.
        let csv = learn_request("teach-5", "walk", InputKind::Window, b"x,y\n1,2\n").expect("ok");
        let v: serde_json::Value = serde_json::from_str(&csv).expect("json");
        assert_eq!(v["window"], "x,y\n1,2\n");
        for body in [
            &b"[[1, 2], [3, 4]]"[..],
            &b"{\"window\": [[1, 2], [3, 4]]}"[..],
        ] {
            let req = learn_request("teach-6", "walk", InputKind::Window, body).expect("ok");
            let v: serde_json::Value = serde_json::from_str(&req).expect("json");
            assert_eq!(v["window"], serde_json::json!([[1, 2], [3, 4]]), "{req}");
            assert_eq!(v["label"], "walk");
        }
        assert!(learn_request("teach-7", "x", InputKind::Window, b"{\"w\": 1}").is_err());
    }

    #[test]
    fn journal_names_and_roundtrip() {
        assert_eq!(journal_name("adaptd/cam1"), "adaptd_cam1");
        assert_eq!(journal_name("home/a b"), "home_a%20b");
        assert_eq!(journal_name(".x"), "%2Ex");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/j.json");
        let mut j = Journal::load(&path, "adaptd/cam1").expect("empty");
        assert!(!j.contains("teach-1"));
        j.record("teach-1", "cat");
        j.save().expect("saved");
        let j = Journal::load(&path, "adaptd/cam1").expect("read");
        assert!(j.contains("teach-1"));
        assert!(Journal::load(&path, "adaptd/other").is_err());
        std::fs::write(&path, "not json").expect("write");
        assert!(Journal::load(&path, "adaptd/cam1").is_err());
    }

    #[test]
    fn modality_checks() {
        let info = |m: &str| serde_json::json!({"backbone": {"name": "m", "modality": m}});
        let check = |kind, m: &str| {
            let info = info(m);
            check_modality(kind, "r", &info, board_modality("r", &info))
        };
        assert!(check(InputKind::Image, "image").is_ok());
        assert!(check(InputKind::Sound, "audio").is_ok());
        let e = check(InputKind::Image, "audio").expect_err("refused");
        assert!(e.to_string().contains("takes sound"), "{e}");
        assert!(check(InputKind::Text, "text").is_ok());
        assert!(check(InputKind::Text, "image").is_err());
        assert!(check(InputKind::Sound, "image").is_err());
        assert!(check(InputKind::Image, "tensor").is_err());
        // A board that does not say: sent anyway.
        assert!(check(InputKind::Image, "unknown").is_ok());
        assert_eq!(board_modality("r", &info("text")), Some(Modality::Text));
    }

    #[test]
    fn summary_lists_codes_and_files() {
        let t = Tally {
            learned: 3,
            skipped: 2,
            duplicates: 1,
            refused: vec![("cat/x.jpg".into(), "bad_payload".into(), "bad".into())],
            unanswered: vec!["cup/y.jpg".into()],
        };
        let s = summary("adaptd/cam1", &t, 2.0);
        assert!(
            s.starts_with(
                "adaptd/cam1: learned 3, skipped 2 (already taught, 1 of them copies within the \
             dataset), refused 1 (bad_payload 1), unanswered 1"
            ),
            "{s}"
        );
        assert!(s.contains("refused cat/x.jpg: bad_payload: bad\n"));
        assert!(s.contains("unanswered cup/y.jpg"));
    }
}
