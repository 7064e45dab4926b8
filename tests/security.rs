//! Broker security against a real mosquitto: TLS with a private CA, mutual TLS with a client
//! certificate, username/password with the password read from a file, an ACL that keeps other
//! clients from teaching this board; wrong credentials back off instead of spinning; no secret
//! in the log or in `{root}/info`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fixture, free_port, variants, Client, Daemon, Mosquitto};

const PASSWORD: &str = "s3cret-pw-7f1c";
const INTRUDER_PASSWORD: &str = "intruder-pw";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate (P-256).
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=adaptd test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        let subj = format!("/CN={}", if who == "server" { "localhost" } else { "cam1" });
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", &subj, "-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
}

fn passwd(dir: &Path) {
    let file = dir.join("passwd");
    for (i, (user, pw)) in [("cam1", PASSWORD), ("intruder", INTRUDER_PASSWORD)]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        cmd.arg("-b");
        if i == 0 {
            cmd.arg("-c");
        }
        let ok = cmd
            .arg(&file)
            .arg(user)
            .arg(pw)
            .status()
            .expect("mosquitto_passwd (apt-get install mosquitto)");
        assert!(ok.success());
    }
}

/// mosquitto with a plain loopback listener for the test's observer (anonymous, no ACL) and a
/// TLS listener with client certificates, passwords and an ACL for the boards.
fn secure_broker() -> (Mosquitto, u16) {
    let tls_port = free_port();
    let broker = Mosquitto::start_custom(|port, dir| {
        make_certs(dir);
        passwd(dir);
        std::fs::write(
            dir.join("acl"),
            "user cam1\ntopic readwrite adaptd/cam1/#\n\n\
             user intruder\ntopic read adaptd/cam1/#\n",
        )
        .expect("acl");
        let d = dir.display();
        format!(
            "user root\nper_listener_settings true\npersistence false\n\
             log_dest file {d}/mosquitto.log\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\n\
             cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
             require_certificate true\npassword_file {d}/passwd\nacl_file {d}/acl\n"
        )
    });
    (broker, tls_port)
}

fn tls_env(dir: &Path, tls_port: u16, password_file: &Path) -> Vec<(String, String)> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        (
            "ADAPTD_BROKER_URL".into(),
            format!("mqtts://localhost:{tls_port}"),
        ),
        ("ADAPTD_BROKER_CA_FILE".into(), p("ca.pem")),
        ("ADAPTD_BROKER_CLIENT_CERT_FILE".into(), p("client.pem")),
        ("ADAPTD_BROKER_CLIENT_KEY_FILE".into(), p("client.key")),
        ("ADAPTD_BROKER_USERNAME".into(), "cam1".into()),
        (
            "ADAPTD_BROKER_PASSWORD_FILE".into(),
            password_file.display().to_string(),
        ),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn secret_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{secret}\n")).expect("password file");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_password_file_and_acl() {
    let (broker, tls_port) = secure_broker();
    let state = tempfile::tempdir().expect("tmp");
    let pw = secret_file(state.path(), "mqtt-password", PASSWORD);
    let env = tls_env(broker.dir(), tls_port, &pw);
    let d = Daemon::start(
        &broker.url(),
        &state.path().join("s"),
        "cam1",
        &as_refs(&env),
    );
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;

    // The board works through TLS: it receives learn messages and publishes its results.
    let cats = variants("chelsea.jpg", 3, 31);
    for img in &cats[..2] {
        c.publish(&format!("{root}/learn/cat"), img.clone()).await;
    }
    c.wait_for(&format!("{root}/info"), |m| {
        m.json()["head"]["samples"] == 2
    })
    .await;

    // Another client of the TLS listener may read but not teach (ACL): mosquitto drops the
    // publish silently under MQTT 3.1.1, so check the effect.
    let d_ = broker.dir();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &tls_port.to_string(), "-q", "1"])
        .args(["--cafile", &d_.join("ca.pem").display().to_string()])
        .args(["--cert", &d_.join("client.pem").display().to_string()])
        .args(["--key", &d_.join("client.key").display().to_string()])
        .args(["-u", "intruder", "-P", INTRUDER_PASSWORD])
        .args(["-t", &format!("{root}/learn/evil")])
        .args(["-f", &fixture("coffee.jpg").display().to_string()])
        .status()
        .expect("mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(
        status.success(),
        "the intruder's publish itself is accepted by the broker"
    );
    // A legitimate sample after it: once it is learned, the intruder's would have been too.
    c.publish(&format!("{root}/learn/cat"), cats[2].clone())
        .await;
    let info = c
        .wait_for(&format!("{root}/info"), |m| {
            m.json()["head"]["samples"] == 3
        })
        .await
        .json();
    let classes = info["head"]["classes"].to_string();
    assert!(!classes.contains("evil"), "{classes}");

    // No secret in the log or in info.
    assert!(!info.to_string().contains(PASSWORD));
    assert!(!d.log().contains(PASSWORD), "password in the log");
    assert!(d.log().contains("connected to broker"));
}

/// Runs adaptd with `env` against `broker` for 4 s and checks it is refused every time,
/// with backoff, keeps running and never logs `secret`. Returns the log.
async fn refused(broker: &Mosquitto, env: &[(String, String)], secret: &str) -> String {
    let state = tempfile::tempdir().expect("tmp");
    let mut d = Daemon::start(
        &broker.url(),
        &state.path().join("s"),
        "cam1",
        &as_refs(env),
    );
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        assert!(
            d.alive(),
            "adaptd must keep running while the broker refuses it"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = d.log();
    // Backoff from 200 ms up to 1 s: a handful of attempts (a tight loop makes thousands).
    let attempts = log.matches("retrying in").count();
    assert!(
        (2..=25).contains(&attempts),
        "{attempts} connection attempts in 4 s:\n{log}"
    );
    assert!(c
        .on(&format!("{root}/status"))
        .iter()
        .all(|m| m.payload != b"online"));
    assert!(!log.contains(secret), "secret in the log");
    assert!(d.stop(), "clean stop while disconnected");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_or_no_client_certificate_are_refused_with_backoff() {
    let (broker, tls_port) = secure_broker();
    let tmp = tempfile::tempdir().expect("tmp");
    let backoff = [
        (
            "ADAPTD_BROKER_RECONNECT_MIN_MS".to_string(),
            "200".to_string(),
        ),
        (
            "ADAPTD_BROKER_RECONNECT_MAX_MS".to_string(),
            "1000".to_string(),
        ),
    ];

    let wrong = "not-the-password-93";
    let pw = secret_file(tmp.path(), "wrong-password", wrong);
    let mut env = tls_env(broker.dir(), tls_port, &pw);
    env.extend(backoff.iter().cloned());
    refused(&broker, &env, wrong).await;

    // The right password but no client certificate: the TLS listener requires one.
    let pw = secret_file(tmp.path(), "mqtt-password", PASSWORD);
    let mut env = tls_env(broker.dir(), tls_port, &pw);
    env.retain(|(k, _)| !k.starts_with("ADAPTD_BROKER_CLIENT_"));
    env.extend(backoff.iter().cloned());
    refused(&broker, &env, PASSWORD).await;
}
