//! The embedded broker (rumqttd, in-process on 127.0.0.1) used when no broker is configured,
//! so one board works alone and local clients can connect to it.
//!
//! rumqttd 0.20 neither reports its bound port nor has a shutdown API. adaptd therefore picks
//! the port itself (checking it is free), waits until the port accepts connections, and runs
//! the broker on a detached thread that ends with the process.

#[cfg(feature = "embedded-broker")]
use std::collections::HashMap;
#[cfg(feature = "embedded-broker")]
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
#[cfg(feature = "embedded-broker")]
use std::time::{Duration, Instant};

use anyhow::bail;
#[cfg(feature = "embedded-broker")]
use anyhow::Context;

/// Starts the embedded broker on 127.0.0.1:`port` (0 = a free port) and returns the port.
#[cfg(feature = "embedded-broker")]
pub fn start(port: u16, max_payload_bytes: usize) -> anyhow::Result<u16> {
    use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

    // Check the port is free (and learn it when 0 was asked for).
    let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).with_context(|| {
        format!(
            "embedded broker: 127.0.0.1:{port} is taken (another broker?); set broker.url \
             (ADAPTD_BROKER_URL) to use it, or broker.embedded_port to another port"
        )
    })?;
    let port = probe.local_addr()?.port();
    drop(probe);
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

/// Without the `embedded-broker` feature a broker URL is required.
#[cfg(not(feature = "embedded-broker"))]
pub fn start(_port: u16, _max_payload_bytes: usize) -> anyhow::Result<u16> {
    bail!("this build has no embedded broker (feature `embedded-broker`): set broker.url")
}
