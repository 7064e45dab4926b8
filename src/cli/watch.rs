//! `adaptd watch`: follows a board's public reply topics (prediction, learned, error, result,
//! status, drift, and its info once) and prints one line per message, or the JSON, until
//! Ctrl-C.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;

use super::teach::{find_board, interrupted, BoardArgs, Conn, Incoming};

/// `adaptd watch` arguments.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub board: BoardArgs,
    /// One JSON object per line instead: {"time": unix seconds, "topic", "kind", "payload"}
    /// with the payload as the board published it (JSON, or a string for status).
    #[arg(long)]
    pub json: bool,
}

/// The topics watched, by kind (`info` is printed once).
const KINDS: [&str; 7] = [
    "prediction",
    "learned",
    "error",
    "result",
    "status",
    "drift",
    "info",
];

/// `adaptd watch`: runs until SIGINT or SIGTERM.
pub fn watch(args: &WatchArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(watch_async(args))
}

async fn watch_async(args: &WatchArgs) -> Result<()> {
    let mut conn = Conn::connect(&args.board, "watch").await?;
    let board = find_board(&mut conn, &args.board).await?;
    let root = board.root;
    let topics: Vec<String> = KINDS.iter().map(|k| format!("{root}/{k}")).collect();
    conn.subscribe(&topics).await?;
    eprintln!("adaptd watch: {root} on {} (Ctrl-C to stop)", conn.broker);
    let info_topic = format!("{root}/info");
    let mut info_seen = false;
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            event = conn.recv() => match event {
                Some(Incoming::Message(p)) => {
                    let Some(kind) = p.topic.strip_prefix(root.as_str())
                        .and_then(|k| k.strip_prefix('/'))
                        .filter(|k| KINDS.contains(k)) else {
                        continue;
                    };
                    if p.topic == info_topic {
                        if info_seen {
                            continue;
                        }
                        info_seen = true;
                        conn.unsubscribe(std::slice::from_ref(&info_topic)).await?;
                    }
                    let now = SystemTime::now();
                    if args.json {
                        println!("{}", json_line(now, &p.topic, kind, &p.payload));
                    } else {
                        println!("{} {}", clock(now), line(kind, &p.payload));
                    }
                }
                Some(Incoming::Lost(e)) => {
                    eprintln!("adaptd watch: connection to {} lost ({e}); reconnecting", conn.broker);
                }
                Some(Incoming::Reconnected) => {
                    eprintln!("adaptd watch: reconnected to {}", conn.broker);
                }
                Some(Incoming::Subscribed) => {}
                None => anyhow::bail!("the connection to {} ended", conn.broker),
            },
            _ = &mut stop => break,
        }
    }
    conn.disconnect().await;
    Ok(())
}

/// The `--json` line of a message.
fn json_line(now: SystemTime, topic: &str, kind: &str, payload: &[u8]) -> String {
    let time = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    let payload = serde_json::from_slice::<serde_json::Value>(payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(payload).into()));
    serde_json::json!({
        "time": (time * 1000.0).round() / 1000.0,
        "topic": topic,
        "kind": kind,
        "payload": payload,
    })
    .to_string()
}

/// Local wall-clock time, `HH:MM:SS.mmm`.
fn clock(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = libc::time_t::try_from(d.as_secs()).unwrap_or_default();
    // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer), and
    // localtime_r only writes into the `tm` it is given.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    let (h, m, s) = if ok {
        (tm.tm_hour, tm.tm_min, tm.tm_sec)
    } else {
        let t = (d.as_secs() % 86_400) as i32;
        (t / 3600, t / 60 % 60, t % 60)
    };
    format!("{h:02}:{m:02}:{s:02}.{:03}", d.subsec_millis())
}

/// A score as printed.
fn score(v: &serde_json::Value) -> String {
    v.as_f64().map_or_else(|| "-".into(), |s| format!("{s:.3}"))
}

/// A JSON value as printed: strings bare, anything else as JSON.
fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The human line of a message of `kind` (without the time).
fn line(kind: &str, payload: &[u8]) -> String {
    let text = || {
        let t = String::from_utf8_lossy(payload);
        let mut t: String = t.chars().take(200).collect();
        if payload.len() > 200 {
            t.push('…');
        }
        t
    };
    if kind == "status" {
        return format!("status     {}", text());
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("{kind:<10} {}", text());
    };
    let id = plain(&v["id"]);
    match kind {
        "prediction" => {
            let others: Vec<String> = v["top"]
                .as_array()
                .map(|top| {
                    top.iter()
                        .skip(1)
                        .take(2)
                        .map(|s| format!("{} {}", plain(&s["label"]), score(&s["score"])))
                        .collect()
                })
                .unwrap_or_default();
            let others = if others.is_empty() {
                String::new()
            } else {
                format!(" ({})", others.join(", "))
            };
            let adapted = match &v["adapted"] {
                serde_json::Value::String(m) => format!(" adapted {m}"),
                _ => String::new(),
            };
            format!(
                "prediction {} {}{others}  source {}  id {id}  {} ms{adapted}",
                plain(&v["label"]),
                score(&v["score"]),
                plain(&v["source"]),
                v["latency_ms"]
                    .as_f64()
                    .map_or_else(|| "-".into(), |l| format!("{l:.1}")),
            )
        }
        "learned" => format!(
            "learned    {}  samples {}  head v{}  id {id}",
            plain(&v["label"]),
            plain(&v["samples"]),
            plain(&v["head_version"]),
        ),
        "error" => format!(
            "error      {}: {}  (topic {}, id {id})",
            plain(&v["code"]),
            plain(&v["message"]),
            plain(&v["topic"]),
        ),
        "result" => {
            let mut rest = v.as_object().cloned().unwrap_or_default();
            for k in ["command", "ok", "head_version"] {
                rest.remove(k);
            }
            let ok = if v["ok"] == true { "ok" } else { "FAILED" };
            let rest = if rest.is_empty() {
                String::new()
            } else {
                format!("  {}", serde_json::Value::Object(rest))
            };
            format!(
                "result     {} {ok}  head v{}{rest}",
                plain(&v["command"]),
                plain(&v["head_version"]),
            )
        }
        "drift" => {
            let state = if v["alarm"] == true {
                "ALARM"
            } else {
                "cleared"
            };
            format!(
                "drift      {state}  distance {} threshold {}  target samples {}  head v{}",
                score(&v["distance"]),
                score(&v["threshold"]),
                plain(&v["target_samples"]),
                plain(&v["head_version"]),
            )
        }
        "info" => {
            let b = &v["backbone"];
            let h = &v["head"];
            let classes = h["classes"].as_array().cloned().unwrap_or_default();
            let mut list: Vec<String> = classes
                .iter()
                .take(10)
                .map(|c| format!("{} {}", plain(&c["name"]), plain(&c["samples"])))
                .collect();
            if classes.len() > 10 {
                list.push(format!("… {} more", classes.len() - 10));
            }
            let list = if list.is_empty() {
                String::new()
            } else {
                format!(": {}", list.join(", "))
            };
            format!(
                "info       adaptd {}, model {} ({}, {}-d), head {} v{}, {} samples in {} \
                 classes{list}",
                plain(&v["adaptd"]),
                plain(&b["name"]),
                plain(&b["modality"]),
                plain(&b["embedding_dim"]),
                plain(&h["algorithm"]),
                plain(&h["version"]),
                plain(&h["samples"]),
                classes.len(),
            )
        }
        _ => format!("{kind:<10} {v}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_essentials() {
        let p = br#"{"id":"cam1-9","label":"cat","score":0.97,"top":[{"label":"cat","score":0.97},{"label":"cup","score":0.02}],"head_version":12,"adapted":null,"latency_ms":41.25,"backbone_ms":38.9,"source":"adaptd/cam1/infer"}"#;
        assert_eq!(
            line("prediction", p),
            "prediction cat 0.970 (cup 0.020)  source adaptd/cam1/infer  id cam1-9  41.2 ms"
        );
        let e = br#"{"code":"bad_payload","message":"not an image","topic":"adaptd/cam1/learn","id":"x"}"#;
        assert_eq!(
            line("error", e),
            "error      bad_payload: not an image  (topic adaptd/cam1/learn, id x)"
        );
        let l = br#"{"id":"t-1","label":"cup","samples":4,"head_version":7}"#;
        assert_eq!(
            line("learned", l),
            "learned    cup  samples 4  head v7  id t-1"
        );
        let r = br#"{"command":"rollback","ok":true,"head_version":31,"restored":7}"#;
        assert_eq!(
            line("result", r),
            r#"result     rollback ok  head v31  {"restored":7}"#
        );
        assert_eq!(line("status", b"online"), "status     online");
        let d = br#"{"alarm":true,"distance":0.5,"threshold":0.3,"target_samples":120,"head_version":5,"time":1}"#;
        assert!(line("drift", d).starts_with("drift      ALARM  distance 0.500 threshold 0.300"));
        let i = br#"{"adaptd":"0.1.0","backbone":{"name":"lite0","modality":"image","embedding_dim":1280},"head":{"algorithm":"ncm","version":3,"samples":8,"classes":[{"name":"cat","samples":4},{"name":"cup","samples":4}]}}"#;
        assert_eq!(
            line("info", i),
            "info       adaptd 0.1.0, model lite0 (image, 1280-d), head ncm v3, 8 samples in 2 \
             classes: cat 4, cup 4"
        );
        // Not JSON: shown as text, never a panic.
        assert_eq!(
            line("prediction", b"\xff garbage"),
            "prediction \u{fffd} garbage"
        );
    }

    #[test]
    fn json_lines_wrap_the_payload() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let v: serde_json::Value =
            serde_json::from_str(&json_line(t, "adaptd/a/status", "status", b"online"))
                .expect("json");
        assert_eq!(v["payload"], "online");
        assert_eq!(v["kind"], "status");
        assert_eq!(v["time"], 1_700_000_000.123);
        let v: serde_json::Value = serde_json::from_str(&json_line(
            t,
            "adaptd/a/learned",
            "learned",
            br#"{"id":"x"}"#,
        ))
        .expect("json");
        assert_eq!(v["payload"]["id"], "x");
        assert_eq!(clock(t).len(), "00:00:00.123".len());
    }
}
