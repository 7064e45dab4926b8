//! Which broker adaptd talks to. With no broker configured: the embedded broker (rumqttd,
//! in-process on 127.0.0.1) when its port is free, or the MQTT broker already listening there
//! (Debian's mosquitto starts one on 127.0.0.1:1883), so one board works alone either way.
//!
//! rumqttd 0.20 neither reports its bound port nor has a shutdown API. adaptd therefore picks
//! the port itself (checking it is free), waits until the port accepts connections, and runs
//! the broker on a detached thread that ends with the process.

#[cfg(feature = "embedded-broker")]
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
#[cfg(feature = "embedded-broker")]
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::{BrokerSettings, BrokerTarget};

/// The broker in use, as the log and `{root}/info` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerInUse {
    pub host: String,
    pub port: u16,
    pub kind: BrokerKind,
}

/// How adaptd came to use its broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// adaptd's own, in-process.
    Embedded,
    /// No broker configured, and an MQTT broker already answered on the embedded port.
    Local,
    /// `broker.url`.
    Configured,
}

/// Resolves the configured target: starts the embedded broker, or finds the local one already
/// on its port. Fails when the port is taken by something that does not answer as MQTT.
pub fn resolve(settings: &BrokerSettings) -> anyhow::Result<BrokerInUse> {
    let port = match &settings.target {
        BrokerTarget::External { host, port, .. } => {
            return Ok(BrokerInUse {
                host: host.clone(),
                port: *port,
                kind: BrokerKind::Configured,
            })
        }
        BrokerTarget::Embedded { port } => *port,
    };
    let local = |port| BrokerInUse {
        host: Ipv4Addr::LOCALHOST.to_string(),
        port,
        kind: BrokerKind::Local,
    };
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(free) => {
            // Learn the port when 0 was asked for, then free it for the broker.
            let port = free.local_addr()?.port();
            drop(free);
            let port = start(port, settings.max_packet_bytes)?;
            Ok(BrokerInUse {
                kind: BrokerKind::Embedded,
                ..local(port)
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let creds = settings
                .username
                .as_deref()
                .map(|u| (u, settings.password.as_deref().unwrap_or_default()));
            match probe(addr, creds, Duration::from_secs(3)) {
                Ok(0) => {
                    tracing::info!(%addr, "an MQTT broker already listens on the embedded broker's port: using it");
                    Ok(local(port))
                }
                Ok(code) => bail!(
                    "embedded broker: 127.0.0.1:{port} is an MQTT broker that refused adaptd \
                     (CONNACK return code {code}); set broker.url and its credentials \
                     (broker.username, broker.password_file), or broker.embedded_port to a free port"
                ),
                Err(why) => bail!(
                    "embedded broker: 127.0.0.1:{port} is taken (another broker?) and does not \
                     answer as an MQTT broker ({why:#}); set broker.url (ADAPTD_BROKER_URL) to \
                     use a broker elsewhere, or broker.embedded_port to another port"
                ),
            }
        }
        Err(e) => Err(e).with_context(|| format!("embedded broker: cannot bind 127.0.0.1:{port}")),
    }
}

/// Sends an MQTT 3.1.1 CONNECT to `addr` and returns the CONNACK's return code (0 =
/// accepted); an error when the peer does not answer with a CONNACK within `timeout`.
pub fn probe(
    addr: SocketAddr,
    credentials: Option<(&str, &str)>,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).context("connecting")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&connect_packet(
        &format!("adaptd-probe-{}", std::process::id()),
        credentials,
    ))
    .context("sending CONNECT")?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).context("no CONNACK")?;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        bail!("answered {:02x} {:02x}, not a CONNACK", ack[0], ack[1]);
    }
    // DISCONNECT, so the broker does not publish a will or log a lost client.
    let _ = s.write_all(&[0xe0, 0x00]);
    Ok(ack[3])
}

/// An MQTT 3.1.1 CONNECT packet: clean session, keepalive 10 s.
fn connect_packet(client_id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut flags = 0x02u8;
    let mut body = Vec::new();
    field(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    let flags_at = body.len();
    body.push(0);
    body.extend_from_slice(&10u16.to_be_bytes());
    field(&mut body, client_id);
    if let Some((user, password)) = credentials {
        flags |= 0xc0;
        field(&mut body, user);
        field(&mut body, password);
    }
    body[flags_at] = flags;
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// Starts the embedded broker on the free 127.0.0.1:`port` and returns it.
#[cfg(feature = "embedded-broker")]
fn start(port: u16, max_payload_bytes: usize) -> anyhow::Result<u16> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = ServerSettings {
        name: "adaptd-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: max_payload_bytes,
            max_inflight_count: 100,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 256,
            max_outgoing_packet_count: 200,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    };
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .context("spawning the embedded broker thread")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("embedded broker did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded broker listening");
    Ok(port)
}

/// Without the `embedded-broker` feature a broker URL (or a local broker) is required.
#[cfg(not(feature = "embedded-broker"))]
fn start(_port: u16, _max_payload_bytes: usize) -> anyhow::Result<u16> {
    bail!("this build has no embedded broker (feature `embedded-broker`): set broker.url")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("id", None);
        assert_eq!(
            p,
            [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 2, b'i', b'd']
        );
        let p = connect_packet("id", Some(("u", "pw")));
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(p[9], 0xc2);
        assert_eq!(&p[16..], [0, 1, b'u', 0, 2, b'p', b'w']);
    }

    #[test]
    fn long_packets_use_a_multi_byte_length() {
        let id = "x".repeat(200);
        let p = connect_packet(&id, None);
        let len = (p[1] & 0x7f) as usize + 128 * p[2] as usize;
        assert_eq!(len, p.len() - 3);
    }

    #[test]
    fn a_silent_listener_is_not_a_broker() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = l.local_addr().expect("addr");
        let err = probe(addr, None, Duration::from_millis(300)).expect_err("no CONNACK");
        assert!(format!("{err:#}").contains("no CONNACK"), "{err:#}");
    }
}
