//! Network faults between adaptd and its broker, inside a network namespace the test creates
//! and removes: mosquitto runs in the namespace behind a veth pair; nftables rules there
//! blackhole the daemon's connection, then drop a random 20% of its packets, then `tc tbf`
//! shapes everything the broker sends to 1 Mbit/s. Traffic never leaves the host: the only
//! addresses used are the veth pair's. Needs root, `ip`, `tc` and `nft`
//! (`.ci/run` installs iproute2 and nftables, and runs as root); as another user it is skipped
//! with a message.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{info, is_root, learn_all, mosquitto_bin, variants, wait_bound, Client, Daemon};

/// Port of the daemon's listener (the faults hit it) and of the test's own (untouched).
const DAEMON_PORT: u16 = 1883;
const TEST_PORT: u16 = 1884;

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (needs root, iproute2 and nftables)"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with mosquitto inside, reachable from the host over a veth pair.
struct FaultNet {
    ns: String,
    host_if: String,
    ns_if: String,
    broker_ip: String,
    dir: tempfile::TempDir,
    broker: Option<Child>,
}

impl FaultNet {
    fn new() -> FaultNet {
        let tag = std::process::id() % 100_000;
        let ns = format!("adaptd-nf-{tag}");
        let (host_if, ns_if) = (format!("adh{tag}"), format!("adn{tag}"));
        let net = 16 + (tag % 200) as u8;
        let (host_ip, broker_ip) = (format!("10.231.{net}.1"), format!("10.231.{net}.2"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        run(&["ip", "netns", "add", &ns]);
        let mut me = FaultNet {
            ns: ns.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            broker_ip: broker_ip.clone(),
            dir: tempfile::tempdir().expect("tmp"),
            broker: None,
        };
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
        ]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(args);
            run(&v);
        };
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{broker_ip}/30"),
            "dev",
            &ns_if,
        ]);
        inside(&["ip", "link", "set", &ns_if, "up"]);
        inside(&["ip", "link", "set", "lo", "up"]);
        let conf = me.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nmax_queued_messages 0\nset_tcp_nodelay true\n\
                 listener {DAEMON_PORT} {broker_ip}\nallow_anonymous true\n\
                 listener {TEST_PORT} {broker_ip}\n"
            ),
        )
        .expect("conf");
        me.broker = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(mosquitto_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto in the namespace"),
        );
        let deadline = Instant::now() + wait_bound();
        while std::net::TcpStream::connect((broker_ip.as_str(), TEST_PORT)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto in the namespace did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// Replaces the namespace's filter: `rule` applied to the daemon's port in both directions
    /// (empty = no filter).
    fn filter(&self, rule: &str) {
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "delete", "table", "inet", "fault",
            ])
            .output();
        if rule.is_empty() {
            return;
        }
        let script = format!(
            "table inet fault {{\n\
               chain in {{ type filter hook input priority 0; tcp dport {DAEMON_PORT} {rule}; }}\n\
               chain out {{ type filter hook output priority 0; tcp sport {DAEMON_PORT} {rule}; }}\n\
             }}\n"
        );
        let path = self.dir.path().join("fault.nft");
        std::fs::write(&path, script).expect("nft script");
        run(&[
            "ip",
            "netns",
            "exec",
            &self.ns,
            "nft",
            "-f",
            &path.display().to_string(),
        ]);
    }
}

impl FaultNet {
    /// Shapes the broker's side of the veth (everything the broker sends: deliveries to the
    /// daemon and to the test client) with `tc qdisc … tbf <spec>`; empty = unshaped.
    fn shape(&self, spec: &str) {
        let mut args = vec!["ip", "netns", "exec", &self.ns, "tc", "qdisc"];
        if spec.is_empty() {
            args.extend(["del", "dev", &self.ns_if, "root"]);
        } else {
            args.extend(["replace", "dev", &self.ns_if, "root", "tbf"]);
            args.extend(spec.split_whitespace());
        }
        run(&args);
    }
}

impl Drop for FaultNet {
    fn drop(&mut self) {
        if let Some(mut b) = self.broker.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_and_lossy_links_lose_nothing_and_back_off() {
    if !is_root() {
        eprintln!("skipped: network namespaces need root (run the tests as root, as CI does)");
        return;
    }
    let net = FaultNet::new();
    let state = tempfile::tempdir().expect("tmp");
    let url = format!("mqtt://{}:{DAEMON_PORT}", net.broker_ip);
    let mut d = Daemon::start(
        &url,
        &state.path().join("s"),
        "netfault",
        &[("ADAPTD_BROKER_KEEPALIVE_SECS", "5")],
    );
    let root = d.root();
    // Not `{root}/#`: the retained head (megabytes with auto's scatter) would share the shaped
    // link with the daemon's deliveries and measure the test client, not the daemon.
    let topics = ["status", "info", "learned", "error"].map(|t| format!("{root}/{t}"));
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let c = Client::connect_to(&net.broker_ip, TEST_PORT, &topics).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    let images = variants("coffee.jpg", 50, 60);
    learn_all(&c, &root, "cup", &images[..5]).await;
    info(&c, &root, |i| i["head"]["samples"] == 5).await;

    // Blackhole: every packet of the daemon's connection dropped for 15 s.
    net.filter("drop");
    let before = d.log().matches("retrying in").count();
    learn_all(&c, &root, "cup", &images[5..15]).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(d.alive());
    let attempts = d.log().matches("retrying in").count() - before;
    net.filter("");
    assert!(
        attempts <= 20,
        "{attempts} connection attempts in 15 s of blackhole:\n{}",
        d.log()
    );
    info(&c, &root, |i| i["head"]["samples"] == 15).await;

    // A lossy link: 20% of the daemon's packets dropped at random while learning continues.
    net.filter("numgen random mod 100 < 20 drop");
    learn_all(&c, &root, "cup", &images[15..40]).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    net.filter("");
    info(&c, &root, |i| i["head"]["samples"] == 40).await;

    // A slow link: everything the broker sends shaped to 1 Mbit/s (tc tbf; the burst must exceed
    // veth's 64 KiB GSO packets, or tbf drops them whole; 400 ms queue: the
    // excess is dropped and TCP retransmits) while 10 more photos arrive.
    net.shape("rate 1mbit burst 64kb latency 400ms");
    let slow = Instant::now();
    learn_all(&c, &root, "cup", &images[40..50]).await;
    info(&c, &root, |i| i["head"]["samples"] == 50).await;
    let slow = slow.elapsed();
    net.shape("");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = c.on(&format!("{root}/info")).last().expect("info").json();
    assert_eq!(last["head"]["samples"], 50, "duplicates");
    let late = Client::connect_to(&net.broker_ip, TEST_PORT, &[&format!("{root}/status")]).await;
    let status = late.wait_for(&format!("{root}/status"), |m| m.retain).await;
    assert_eq!(status.payload, b"online", "retained status after recovery");
    eprintln!(
        "blackhole 15 s: {attempts} reconnection attempts; 20% loss: 40/40 learned once; \
         1 Mbit/s: 50/50 learned once, the last 10 in {slow:.1?}"
    );
    assert!(d.stop());
}
