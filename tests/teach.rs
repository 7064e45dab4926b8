//! `adaptd teach` and `adaptd watch` as a person at a laptop runs them: the real binary against
//! a real mosquitto and a real adaptd (or a fake board that is only retained messages), through
//! the board's public topics only.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{base64_encode, class_counts, info, learn_all, variants, Client, Daemon, Mosquitto};

/// What a finished `adaptd teach`/`watch` run left.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `adaptd <args>` to the end (off the async runtime), with `env` added.
async fn adaptd(args: Vec<String>, env: Vec<(String, String)>) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_adaptd"))
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .expect("adaptd binary");
        let run = Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "adaptd {}\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            run.stdout,
            run.stderr
        );
        run
    })
    .await
    .expect("join")
}

/// `adaptd teach --broker URL --journal JOURNAL [extra…] DIR`.
async fn teach(url: &str, journal: &Path, extra: &[&str], dir: &Path) -> Run {
    let mut args: Vec<String> = vec![
        "teach".into(),
        "--broker".into(),
        url.into(),
        "--journal".into(),
        journal.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(dir.display().to_string());
    adaptd(args, Vec::new()).await
}

/// Writes `files` as DIR/<label>/<name>.
fn write(dir: &Path, label: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(label).join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, bytes).expect("write");
    path
}

/// A broker, a running adaptd and a client that saw it come online and watches `{root}/#`.
struct Setup {
    broker: Mosquitto,
    _state: tempfile::TempDir,
    _d: Daemon,
    c: Client,
    root: String,
}

async fn setup(device: &str) -> Setup {
    let broker = Mosquitto::start();
    let state = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(&broker.url(), &state.path().join("s"), device, &[]);
    let root = d.root();
    let c = Client::connect(broker.port, &[&format!("{root}/#")]).await;
    c.wait_for(&format!("{root}/status"), |m| m.payload == b"online")
        .await;
    // The retained info is published right after `online`.
    info(&c, &root, |_| true).await;
    Setup {
        broker,
        _state: state,
        _d: d,
        c,
        root,
    }
}

/// The board's retained info as a new client reads it now.
async fn retained_info(port: u16, root: &str) -> serde_json::Value {
    let c = Client::connect(port, &[&format!("{root}/info")]).await;
    info(&c, root, |_| true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teaches_every_file_once_and_resumes_with_new_files() {
    // Every part bound: a part left to `..` would be dropped at once (the daemon killed).
    let Setup {
        broker,
        _state,
        _d,
        c,
        root,
    } = setup("teach1").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, journal) = (tmp.path().join("data"), tmp.path().join("journal.json"));
    let cats = variants("chelsea.jpg", 4, 11);
    for (i, img) in cats.iter().enumerate().take(3) {
        write(&data, "cat", &format!("cat{i}.jpg"), img);
    }
    // Recursive, and a copy of a file under the same label is one sample, not two.
    write(&data, "cat", "more/cat3.jpeg", &cats[3]);
    write(&data, "cat", "more/copy-of-cat0.jpg", &cats[0]);
    // Hidden files and other extensions are not sent (this one would be refused).
    write(&data, "cat", ".hidden.jpg", b"not an image");
    write(&data, "cat", "notes.md", b"not an image");
    // A text among photos: the image board's model picks the photos, the text is left out.
    write(&data, "cat", "notes.txt", b"a stray note");

    let r = teach(&broker.url(), &journal, &["--root", &root], &data).await;
    assert!(r.ok, "first run failed");
    assert!(
        r.stderr
            .contains("leaving out 1 file(s) that are not images"),
        "{}",
        r.stderr
    );
    assert!(
        r.stdout.contains(&format!(
            "{root}: learned 4, skipped 1 (already taught, 1 of them copies within the \
             dataset), refused 0, unanswered 0"
        )),
        "{}",
        r.stdout
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 4).await;
    assert_eq!(class_counts(&i).get("cat"), Some(&4));
    let journaled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("journal written")).expect("json");
    assert_eq!(journaled["root"], root.as_str());
    assert_eq!(journaled["taught"].as_object().map(|o| o.len()), Some(4));

    // New files in the dataset: only they are sent.
    let cups = variants("coffee.jpg", 3, 12);
    for (i, img) in cups.iter().enumerate() {
        write(&data, "cup", &format!("cup{i}.png.jpg"), img);
    }
    let r = teach(&broker.url(), &journal, &["--root", &root], &data).await;
    assert!(r.ok, "second run failed");
    assert!(
        r.stdout.contains(&format!(
            "{root}: learned 3, skipped 5 (already taught), refused 0, unanswered 0"
        )),
        "{}",
        r.stdout
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 7).await;
    let counts = class_counts(&i);
    assert_eq!((counts.get("cat"), counts.get("cup")), (Some(&4), Some(&3)));

    // Everything taught: a re-run sends nothing and the board is unchanged.
    let r = teach(&broker.url(), &journal, &["--device", "teach1"], &data).await;
    assert!(r.ok, "third run failed");
    assert!(
        r.stdout.contains(&format!(
            "{root}: learned 0, skipped 8 (already taught), refused 0, unanswered 0"
        )),
        "{}",
        r.stdout
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.on(&format!("{root}/learned")).len(), 7);
    let i = retained_info(broker.port, &root).await;
    assert_eq!(i["head"]["samples"], 7);
    let counts = class_counts(&i);
    assert_eq!((counts.get("cat"), counts.get("cup")), (Some(&4), Some(&3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_file_is_refused_the_others_learned_and_sound_is_refused_early() {
    // Every part bound: a part left to `..` would be dropped at once (the daemon killed).
    let Setup {
        broker,
        _state,
        _d,
        c,
        root,
    } = setup("teach2").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, journal) = (tmp.path().join("data"), tmp.path().join("journal.json"));
    for (i, img) in variants("chelsea.jpg", 3, 21).iter().enumerate() {
        write(&data, "cat", &format!("cat{i}.jpg"), img);
    }
    let good = std::fs::read(common::fixture("coffee.jpg")).expect("fixture");
    write(&data, "cat", "broken.jpg", &good[..good.len().min(200)]);

    let r = teach(
        &broker.url(),
        &journal,
        &["--root", &root, "--qos1-window", "2"],
        &data,
    )
    .await;
    assert!(!r.ok, "a refused file must fail the run");
    assert!(
        r.stdout.contains(&format!(
            "{root}: learned 3, skipped 0 (already taught), refused 1 (bad_payload 1), \
             unanswered 0"
        )),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("refused cat/broken.jpg: bad_payload: "),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("1 file(s) refused"), "{}", r.stderr);
    let i = info(&c, &root, |i| i["head"]["samples"] == 3).await;
    assert_eq!(class_counts(&i).get("cat"), Some(&3));

    // Again: the learned files are skipped, the broken one is refused again.
    let r = teach(&broker.url(), &journal, &["--root", &root], &data).await;
    assert!(!r.ok);
    assert!(
        r.stdout
            .contains("learned 0, skipped 3 (already taught), refused 1 (bad_payload 1)"),
        "{}",
        r.stdout
    );

    // Sound clips to this image board: refused before anything is sent.
    let sounds = tmp.path().join("sounds");
    for name in ["doorbell.wav", "speech.wav"] {
        let bytes = std::fs::read(common::fixture(&format!("sound/{name}"))).expect("wav");
        write(&sounds, name.trim_end_matches(".wav"), name, &bytes);
    }
    let before = c.on(&format!("{root}/error")).len();
    let r = teach(&broker.url(), &journal, &["--root", &root], &sounds).await;
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("the dataset has sound clips but the model")
            && r.stderr.contains("takes images"),
        "{}",
        r.stderr
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.on(&format!("{root}/error")).len(), before);
    assert_eq!(c.on(&format!("{root}/learned")).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_root_finds_the_only_board_and_lists_several() {
    // Every part bound: a part left to `..` would be dropped at once (the daemon killed).
    let Setup {
        broker,
        _state,
        _d,
        c,
        root,
    } = setup("teach3").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    for (i, img) in variants("coffee.jpg", 2, 31).iter().enumerate() {
        write(&data, "cup", &format!("cup{i}.jpg"), img);
    }
    // The default journal goes under XDG_STATE_HOME.
    let state_home = tmp.path().join("xdg");
    let env = vec![
        (
            "XDG_STATE_HOME".to_string(),
            state_home.display().to_string(),
        ),
        ("HOME".to_string(), tmp.path().display().to_string()),
    ];
    let args = vec![
        "teach".to_string(),
        "--broker".into(),
        broker.url(),
        data.display().to_string(),
    ];
    let r = adaptd(args.clone(), env.clone()).await;
    assert!(r.ok, "teach without --root failed");
    assert!(
        r.stdout.contains(&format!("{root}: learned 2, skipped 0")),
        "{}",
        r.stdout
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == 2).await;
    assert_eq!(class_counts(&i).get("cup"), Some(&2));
    assert!(state_home.join("adaptd/teach/adaptd_teach3.json").is_file());

    // A second board on the broker: teach does not guess.
    let ghost = "adaptd/ghost";
    let info_doc = serde_json::json!({"root": ghost, "backbone": {"name": "m", "modality": "image"},
                                      "head": {"samples": 0, "classes": []}});
    c.publish_retained(&format!("{ghost}/info"), info_doc.to_string())
        .await;
    c.publish_retained(&format!("{ghost}/status"), "online")
        .await;
    let r = adaptd(args, env).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("2 boards on")
            && r.stderr.contains(&format!("{ghost} (online)"))
            && r.stderr.contains(&format!("{root} (online)"))
            && r.stderr.contains("--root"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_board_leaves_files_unanswered_and_a_sound_board_refuses_images() {
    // No adaptd: boards that are only retained messages.
    let broker = Mosquitto::start();
    let c = Client::connect(broker.port, &[]).await;
    for (root, modality) in [("adaptd/mute", "image"), ("adaptd/ears", "audio")] {
        let doc = serde_json::json!({"root": root, "backbone": {"name": "fake", "modality": modality},
                                     "head": {"samples": 0, "classes": []}});
        c.publish_retained(&format!("{root}/info"), doc.to_string())
            .await;
        c.publish_retained(&format!("{root}/status"), "online")
            .await;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, journal) = (tmp.path().join("data"), tmp.path().join("journal.json"));
    for (i, img) in variants("rocket.jpg", 2, 41).iter().enumerate() {
        write(&data, "rocket", &format!("r{i}.jpg"), img);
    }
    let r = teach(
        &broker.url(),
        &journal,
        &["--root", "adaptd/mute", "--timeout", "1"],
        &data,
    )
    .await;
    assert!(!r.ok);
    assert!(
        r.stdout
            .contains("learned 0, skipped 0 (already taught), refused 0, unanswered 2"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("unanswered rocket/r0.jpg"),
        "{}",
        r.stdout
    );
    // Nothing was learned, so nothing is journaled: a re-run sends them again.
    let journaled = std::fs::read(&journal).unwrap_or_default();
    assert!(!String::from_utf8_lossy(&journaled).contains("teach-"));

    let r = teach(&broker.url(), &journal, &["--root", "adaptd/ears"], &data).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("the dataset has images but the model")
            && r.stderr.contains("adaptd/ears takes sound"),
        "{}",
        r.stderr
    );

    // A board that is not there at all.
    let r = teach(&broker.url(), &journal, &["--root", "adaptd/nobody"], &data).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no retained adaptd/nobody/info"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_without_teaching_a_file_twice() {
    // Every part bound: a part left to `..` would be dropped at once (the daemon killed).
    let Setup {
        broker,
        _state,
        _d,
        c,
        root,
    } = setup("teach4").await;
    let tmp = tempfile::tempdir().expect("tmp");
    let (data, journal) = (tmp.path().join("data"), tmp.path().join("journal.json"));
    let n = 24;
    for (i, img) in variants("astronaut.jpg", n, 61).iter().enumerate() {
        write(&data, "astronaut", &format!("a{i:02}.jpg"), img);
    }
    let args = [
        "teach".to_string(),
        "--broker".into(),
        broker.url(),
        "--root".into(),
        root.clone(),
        "--journal".into(),
        journal.display().to_string(),
        "--qos1-window".into(),
        "2".into(),
        data.display().to_string(),
    ];
    let child = Command::new(env!("CARGO_BIN_EXE_adaptd"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("adaptd binary");
    // Ctrl-C once the board learned the first file (the run is then most likely mid-way).
    c.wait_for(&format!("{root}/learned"), |_| true).await;
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("waited");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    if !out.status.success() {
        assert!(stderr.contains("interrupted: "), "{stderr}");
        assert!(stdout.contains("unanswered 0"), "{stdout}");
    }
    // The run waited for the replies in flight: the journal holds every file the board learned.
    // The test's own subscriber may not have received the last replies yet: wait for as many as
    // the journal holds before counting.
    let journaled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&journal).expect("journal")).expect("json");
    let taught = journaled["taught"].as_object().map(|o| o.len());
    c.wait_count(&format!("{root}/learned"), taught.unwrap_or(0))
        .await;
    let first = c.on(&format!("{root}/learned")).len();
    assert_eq!(taught, Some(first));

    let r = adaptd(args.to_vec(), Vec::new()).await;
    assert!(r.ok, "the resumed run failed");
    assert!(
        r.stdout.contains(&format!(
            "{root}: learned {}, skipped {first} (already taught)",
            n - first
        )),
        "{}",
        r.stdout
    );
    let i = info(&c, &root, |i| i["head"]["samples"] == n).await;
    assert_eq!(class_counts(&i).get("astronaut"), Some(&(n as u64)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.on(&format!("{root}/learned")).len(), n);
}

/// A running `adaptd watch` whose stdout lines arrive on a channel.
struct Watcher {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    fn start(args: &[String]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_adaptd"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("adaptd binary");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watcher { child, lines }
    }

    /// Waits (off the runtime) for a line satisfying `pred`.
    async fn line(&mut self, what: &str, pred: impl Fn(&str) -> bool + Send + 'static) -> String {
        let deadline = std::time::Instant::now() + common::wait_bound();
        loop {
            match self.lines.try_recv() {
                Ok(l) if pred(&l) => return l,
                Ok(l) => eprintln!("watch: {l}"),
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no {what} line in time"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("watch ended before a {what} line: {e}"),
            }
        }
    }

    /// Ctrl-C; true when it then exited successfully.
    async fn interrupt(mut self) -> bool {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = std::time::Instant::now() + common::wait_bound();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_predictions_as_lines_and_json() {
    // Every part bound: a part left to `..` would be dropped at once (the daemon killed).
    let Setup {
        broker,
        _state,
        _d,
        c,
        root,
    } = setup("watch1").await;
    let cats = variants("chelsea.jpg", 3, 51);
    let cups = variants("coffee.jpg", 2, 52);
    learn_all(&c, &root, "cat", &cats[..2]).await;
    learn_all(&c, &root, "cup", &cups).await;
    info(&c, &root, |i| i["head"]["samples"] == 4).await;

    let mut text = Watcher::start(&[
        "--broker".into(),
        broker.url(),
        "--root".into(),
        root.clone(),
    ]);
    let mut json = Watcher::start(&[
        "--broker".into(),
        broker.url(),
        "--device".into(),
        "watch1".into(),
        "--json".into(),
    ]);
    // The retained info is printed once subscribed.
    let l = text.line("info", |l| l.contains(" info ")).await;
    assert!(l.contains("4 samples in 2 classes"), "{l}");
    json.line("info", |l| l.contains(r#""kind":"info""#)).await;

    let req = serde_json::json!({"id": "w-1", "image": base64_encode(&cats[2])}).to_string();
    c.publish(&format!("{root}/infer"), req).await;
    let infer = format!("{root}/infer");
    let l = text
        .line("prediction", |l| {
            l.contains(" prediction ") && l.contains("id w-1")
        })
        .await;
    assert!(l.contains(" prediction cat "), "{l}");
    assert!(l.contains(&format!("source {infer}")), "{l}");
    let l = json
        .line("prediction", |l| l.contains(r#""kind":"prediction""#))
        .await;
    let v: serde_json::Value = serde_json::from_str(&l).expect("a JSON line");
    assert_eq!(v["topic"], format!("{root}/prediction"));
    assert_eq!(v["payload"]["id"], "w-1");
    assert_eq!(v["payload"]["label"], "cat");

    assert!(text.interrupt().await, "watch exits cleanly on Ctrl-C");
    assert!(
        json.interrupt().await,
        "watch --json exits cleanly on Ctrl-C"
    );
}
