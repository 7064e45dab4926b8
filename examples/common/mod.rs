//! What the examples share: a free loopback port, mosquitto started on it, an MQTT client
//! that hands every message to a callback, child processes killed when dropped, a process's
//! RSS.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto on 127.0.0.1:`port` with its config in `dir`, `extra` appended to it.
pub fn start_mosquitto(dir: &Path, port: u16, extra: &str) -> Result<Killed> {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
             max_queued_messages 0\n{extra}"
        ),
    )?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mosquitto (apt-get install mosquitto)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Killed(child))
}

/// Peak and current RSS of a process, from /proc (bytes).
pub fn rss(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// An MQTT client on 127.0.0.1:`port` as `id` that subscribes to `filters` on every connection
/// and hands every message to `on_message(topic, payload)`; returns once subscribed.
pub async fn connect(
    port: u16,
    id: &str,
    filters: Vec<String>,
    on_message: impl Fn(&str, &[u8]) + Send + 'static,
) -> Result<AsyncClient> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_max_packet_size(64 << 20, 64 << 20);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (client, mut el) = AsyncClient::new(o, 4096);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let c = client.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = c.subscribe(f.clone(), QoS::AtMostOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => on_message(&p.topic, &p.payload),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("connecting and subscribing")??;
    Ok(client)
}
