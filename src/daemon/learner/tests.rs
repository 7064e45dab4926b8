//! The learner's unit tests: synthetic 4-d embeddings, a real state directory, a recording
//! transport instead of a broker, no model.

use std::sync::Arc;

use rumqttc::{Publish, QoS};

use super::*;
use crate::adapt::handle::{AdaptHandle, Msg};
use crate::daemon::broker::BrokerKind;
use crate::daemon::outbox::{Outbox, Recorder};
use crate::daemon::queue::WorkQueue;
use crate::daemon::reply::{BackboneSummary, InputSummary};
use crate::daemon::request::Command;
use crate::daemon::serving::PredictorSlot;
use crate::daemon::shutdown::Shutdown;
use crate::daemon::stats::Stats;
use crate::daemon::topics::Topics;
use crate::daemon::workers::message_key;
use crate::head::{Algorithm, Head, HeadConfig};
use crate::state::recovery::{restore, Budgets};
use crate::state::store::Store;

const SHA: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
const DIM: usize = 4;
const ROOT: &str = "adaptd/t";

struct Rig {
    learner: Learner,
    rec: Arc<Recorder>,
    stats: Arc<Stats>,
    predictor: Arc<PredictorSlot>,
    dir: tempfile::TempDir,
    seq: u64,
    _adapt_rx: std::sync::mpsc::Receiver<Msg>,
}

fn settings(dir: &std::path::Path) -> Settings {
    let env = [
        ("ADAPTD_STATE_DIR", dir.display().to_string()),
        ("ADAPTD_DEVICE_ID", "t".to_string()),
    ];
    Settings::from_parts(
        None,
        "test",
        env.into_iter().map(|(k, v)| (k.to_string(), v)),
    )
    .expect("settings")
}

fn backbone() -> BackboneSummary {
    BackboneSummary {
        name: "synthetic".into(),
        sha256: SHA.into(),
        modality: crate::model::Modality::Tensor,
        audio: None,
        text: None,
        sensor: None,
        input: InputSummary {
            shape: vec![1, DIM],
            layout: "nchw".into(),
            mean: [0.0; 3],
            std: [1.0; 3],
        },
        embedding_dim: DIM,
    }
}

/// A learner over the state directory `dir` (made when `None`), as the daemon builds it.
fn rig_in(dir: Option<tempfile::TempDir>) -> Rig {
    let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
    let settings = settings(dir.path());
    let (store, rec) = Store::open(dir.path(), settings.state.keep_heads).expect("store");
    let budgets = Budgets {
        samples: settings.state.samples_max_bytes,
        ledger: settings.state.unlearn_max_bytes,
    };
    let restored = restore(rec, &settings.head, DIM, SHA, budgets).expect("restore");
    let recorder = Arc::new(Recorder::default());
    let stats = Arc::new(Stats::default());
    let outbox = Arc::new(Outbox::new(
        Box::new(recorder.clone()),
        Topics::new(ROOT),
        stats.clone(),
    ));
    outbox.set_connected(true);
    let (outbox_for_dashboard, settings_for_dashboard) = (outbox.clone(), settings.clone());
    let predictor = Arc::new(PredictorSlot::new(restored.head.snapshot()));
    let (adapt, adapt_rx) = AdaptHandle::new(settings.adapt.clone());
    let fleet = FleetState::load(&settings.fleet, dir.path()).expect("fleet");
    let ctx = Context {
        settings,
        backbone: backbone(),
        broker: BrokerInUse {
            host: "127.0.0.1".into(),
            port: 1883,
            kind: BrokerKind::Local,
        },
        outbox,
        predictor: predictor.clone(),
        adapt: Arc::new(adapt),
        queue: Arc::new(WorkQueue::new(4, Shutdown::new())),
        stats: stats.clone(),
        dashboard: Arc::new(crate::daemon::dashboard::Dashboard::new(
            outbox_for_dashboard,
            &settings_for_dashboard,
            false,
            &backbone(),
            Vec::new(),
        )),
    };
    Rig {
        learner: Learner::new(ctx, restored, store, fleet),
        rec: recorder,
        stats,
        predictor,
        dir,
        seq: 0,
        _adapt_rx: adapt_rx,
    }
}

fn rig() -> Rig {
    rig_in(None)
}

/// A one-hot-ish embedding for class `c` with a little variation `v`.
fn x(c: usize, v: f32) -> Vec<f32> {
    let mut e = vec![v; DIM];
    e[c % DIM] = 1.0 + v;
    e
}

impl Rig {
    fn step(&mut self, topic: &str, payload: &[u8], work: impl FnOnce(&Publish) -> Work) -> Step {
        let publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
        let work = work(&publish);
        self.seq += 1;
        Step {
            seq: self.seq,
            publish,
            work,
        }
    }

    fn sample(&mut self, label: &str, embedding: Vec<f32>) -> Step {
        let payload = format!("{label} {}", self.seq).into_bytes();
        let id = format!("s{}", self.seq);
        self.sample_with(id, label.to_string(), embedding, &payload)
    }

    /// A learn step with this id and MQTT payload.
    fn sample_with(
        &mut self,
        id: String,
        label: String,
        embedding: Vec<f32>,
        payload: &[u8],
    ) -> Step {
        self.step(&format!("{ROOT}/learn/{label}"), payload, |p| {
            Work::Sample(Sample {
                id,
                label,
                embedding,
                key: message_key(p),
            })
        })
    }

    fn command(&mut self, name: &str, payload: &[u8]) -> Step {
        let parsed = Command::parse(name, &bytes::Bytes::copy_from_slice(payload));
        self.step(&format!("{ROOT}/cmd/{name}"), payload, |_| {
            Work::Command(parsed)
        })
    }

    /// Teaches `n` samples of each of the first `classes` classes.
    fn teach(&mut self, classes: usize, n: usize) {
        let mut steps = Vec::new();
        for c in 0..classes {
            for i in 0..n {
                steps.push(self.sample(&format!("c{c}"), x(c, i as f32 * 0.01)));
            }
        }
        self.learner.apply(steps);
    }

    fn results(&self) -> Vec<serde_json::Value> {
        self.rec.json_on(&format!("{ROOT}/result"))
    }

    fn errors(&self) -> Vec<serde_json::Value> {
        self.rec.json_on(&format!("{ROOT}/error"))
    }

    fn classes(&self) -> Vec<String> {
        self.learner
            .head
            .classes()
            .into_iter()
            .map(|c| c.name)
            .collect()
    }

    /// The learner of a restarted daemon on the same state directory.
    fn restart(self) -> Rig {
        drop(self.learner);
        rig_in(Some(self.dir))
    }
}

#[test]
fn samples_are_durable_before_the_ack_and_replayed_after_a_restart() {
    let mut r = rig();
    r.teach(2, 3);
    assert_eq!(r.rec.acks(), 6);
    let learned = r.rec.json_on(&format!("{ROOT}/learned"));
    assert_eq!(learned.len(), 6);
    assert_eq!(learned[2]["label"], "c0");
    assert_eq!(learned[2]["samples"], 3);
    assert_eq!(r.classes(), ["c0", "c1"]);
    // No snapshot was taken: the restart finds the samples in the write-ahead log.
    let r = r.restart();
    assert_eq!(r.learner.head.samples(), 6);
    assert_eq!(r.learner.samples.len(), 6);
    assert_eq!(r.classes(), ["c0", "c1"]);
}

#[test]
fn redeliveries_are_acked_not_learned_twice_and_refusals_are_answered() {
    let mut r = rig();
    let first = r.sample("cat", x(0, 0.0));
    let mut again = Step {
        seq: first.seq + 1,
        publish: first.publish.clone(),
        work: match &first.work {
            Work::Sample(s) => Work::Sample(s.clone()),
            _ => unreachable!(),
        },
    };
    again.publish.dup = true;
    r.seq += 1;
    let refused = r.step(&format!("{ROOT}/learn/a+b"), b"x", |_| Work::Refused {
        id: Some("r1".into()),
        error: RequestError::BadRequest("no".into()),
    });
    r.learner.apply(vec![first, again, refused]);
    assert_eq!(r.learner.head.samples(), 1);
    assert_eq!(r.stats.duplicates.load(Ordering::Relaxed), 1);
    assert_eq!(
        r.rec.acks(),
        3,
        "learned, duplicate and refused are all acked"
    );
    let errors = r.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["code"], "bad_request");
    assert_eq!(errors[0]["id"], "r1");
}

#[test]
fn a_command_sees_every_sample_before_it_and_none_after() {
    let mut r = rig();
    let steps = vec![
        r.sample("cat", x(0, 0.0)),
        r.sample("dog", x(1, 0.0)),
        r.command("reset", b""),
        r.sample("cup", x(2, 0.0)),
    ];
    r.learner.apply(steps);
    assert_eq!(r.classes(), ["cup"]);
    assert_eq!(r.results()[0]["command"], "reset");
}

#[test]
fn reset_forgets_every_class_and_sample_durably() {
    let mut r = rig();
    r.teach(3, 2);
    let before = r.learner.head.version();
    let s = r.command("reset", b"");
    r.learner.apply(vec![s]);
    let res = r.results();
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["ok"], true);
    assert!(res[0]["head_version"].as_u64().expect("version") > before);
    assert!(r.classes().is_empty());
    assert_eq!(r.learner.samples.len(), 0);
    assert!(r.predictor.get().is_empty(), "predictions stop at once");
    let r = r.restart();
    assert!(r.classes().is_empty(), "the reset survives a restart");
    assert_eq!(r.learner.head.samples(), 0);
}

#[test]
fn merge_adds_another_heads_statistics_and_refuses_foreign_heads() {
    let mut r = rig();
    r.teach(2, 2);
    let mut other = Head::new(&HeadConfig::default(), DIM, SHA);
    for i in 0..3 {
        other
            .update(&x(3, i as f32 * 0.01), "bird")
            .expect("update");
    }
    let bytes = other.to_bytes().expect("bytes");
    let s = r.command("merge", &bytes);
    r.learner.apply(vec![s]);
    assert_eq!(r.classes(), ["c0", "c1", "bird"]);
    assert_eq!(r.learner.head.samples(), 7);
    assert_eq!(r.results()[0]["classes"], 3);
    let p = r.predictor.get().predict(&x(3, 0.0), 1).expect("predict");
    assert_eq!(p.top[0].label, "bird");

    let foreign = Head::new(&HeadConfig::default(), DIM, &"0".repeat(64));
    let s = r.command("merge", &foreign.to_bytes().expect("bytes"));
    r.learner.apply(vec![s]);
    assert_eq!(r.errors()[0]["code"], "backbone_mismatch");
    assert_eq!(
        r.classes(),
        ["c0", "c1", "bird"],
        "a refused merge changes nothing"
    );
    let r = r.restart();
    assert_eq!(
        r.classes(),
        ["c0", "c1", "bird"],
        "the merge survives a restart"
    );
}

#[test]
fn forget_removes_one_class_and_unknown_labels_are_errors() {
    let mut r = rig();
    r.teach(2, 2);
    let s = r.command("forget", b"c0");
    let t = r.command("forget", b"{\"label\": \"nope\"}");
    r.learner.apply(vec![s, t]);
    assert_eq!(r.classes(), ["c1"]);
    assert_eq!(r.learner.samples.len(), 2);
    assert_eq!(r.results()[0]["label"], "c0");
    assert_eq!(r.errors()[0]["code"], "unknown_label");
}

#[test]
fn rollback_restores_the_kept_head() {
    let mut r = rig();
    r.teach(1, 2);
    let s = r.command("snapshot", b"");
    r.learner.apply(vec![s]);
    let kept = r.learner.head.version();
    r.teach(2, 2);
    let s = r.command("snapshot", b"");
    r.learner.apply(vec![s]);
    assert_eq!(r.classes(), ["c0", "c1"]);
    let s = r.command("rollback", format!("{kept}").as_bytes());
    let t = r.command("rollback", b"{\"version\": 999999}");
    r.learner.apply(vec![s, t]);
    assert_eq!(r.classes(), ["c0"]);
    let res = r.results();
    let last = res.last().expect("result");
    assert_eq!(last["command"], "rollback");
    assert_eq!(last["restored"], kept);
    assert_eq!(r.errors()[0]["code"], "no_such_version");
}

#[test]
fn algorithm_retrains_from_the_stored_samples() {
    let mut r = rig();
    r.teach(3, 4);
    let s = r.command("algorithm", b"ridge");
    r.learner.apply(vec![s]);
    assert_eq!(r.learner.head.algorithm(), Algorithm::Ridge);
    assert_eq!(r.results()[0]["retrained_samples"], 12);
    let p = r.predictor.get().predict(&x(2, 0.0), 1).expect("predict");
    assert_eq!(p.top[0].label, "c2");
}

#[test]
fn import_replaces_the_head_with_a_version_above_every_earlier_one() {
    let mut r = rig();
    r.teach(2, 2);
    let before = r.learner.head.version();
    let mut other = Head::new(&HeadConfig::default(), DIM, SHA);
    other.update(&x(3, 0.0), "bird").expect("update");
    let s = r.command("import", &other.to_bytes().expect("bytes"));
    let t = r.command("import", b"not a head");
    r.learner.apply(vec![s, t]);
    assert_eq!(r.classes(), ["bird"]);
    assert!(r.learner.head.version() > before);
    assert_eq!(r.errors()[0]["code"], "bad_head");
}

#[test]
fn unparsable_commands_are_answered_acked_and_change_nothing() {
    let mut r = rig();
    r.teach(1, 1);
    let version = r.learner.head.version();
    let s = r.command("dance", b"");
    let t = r.command("algorithm", b"nope");
    r.learner.apply(vec![s, t]);
    let codes: Vec<_> = r.errors().iter().map(|e| e["code"].clone()).collect();
    assert_eq!(codes, ["unknown_command", "bad_config"]);
    assert_eq!(r.learner.head.version(), version);
    assert_eq!(r.rec.acks(), 3);
}

#[test]
fn adapt_reset_and_fleet_leave_succeed() {
    let mut r = rig();
    let s = r.command("adapt-reset", b"");
    let t = r.command("fleet-leave", b"cam2");
    r.learner.apply(vec![s, t]);
    let res = r.results();
    assert_eq!(res[0]["command"], "adapt-reset");
    assert_eq!(res[1]["peer"], "cam2");
    assert_eq!(res[1]["was_merged"], false);
    assert!(r.errors().is_empty());
}

#[test]
fn new_classes_past_max_classes_are_refused_and_change_nothing() {
    let mut r = rig();
    r.learner.ctx.settings.head.max_classes = 3;
    // Two new classes in one batch with a third: the third fills the limit, the fourth (new)
    // label is refused, a known label still learns.
    let steps = vec![
        r.sample("c0", x(0, 0.0)),
        r.sample("c1", x(1, 0.0)),
        r.sample("c1", x(1, 0.01)),
        r.sample("c2", x(2, 0.0)),
        r.sample("c3", x(3, 0.0)),
        r.sample("c0", x(0, 0.01)),
    ];
    r.learner.apply(steps);
    assert_eq!(r.classes(), ["c0", "c1", "c2"]);
    assert_eq!(r.learner.head.samples(), 5);
    assert_eq!(r.rec.acks(), 6, "the refused sample is acknowledged too");
    let errors = r.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "too_many_classes");
    assert_eq!(errors[0]["id"], "s4");
    // Refused before the write-ahead log: a restart does not bring it back.
    let mut r = r.restart();
    assert_eq!(r.classes(), ["c0", "c1", "c2"]);
    assert_eq!(r.learner.head.samples(), 5);

    // An imported head with more classes than the limit is refused as a whole.
    r.learner.ctx.settings.head.max_classes = 3;
    let mut other = Head::new(&HeadConfig::default(), DIM, SHA);
    for (c, label) in ["a", "b", "c", "d"].iter().enumerate() {
        other.update(&x(c, 0.0), label).expect("update");
    }
    let s = r.command("import", &other.to_bytes().expect("bytes"));
    r.learner.apply(vec![s]);
    assert_eq!(r.errors()[0]["code"], "too_many_classes");
    assert_eq!(r.classes(), ["c0", "c1", "c2"]);
}

/// The `n` samples of the unlearning tests: three classes, varied embeddings, ids `u0`…
fn unlearn_samples(n: usize) -> Vec<(String, String, Vec<f32>)> {
    (0..n)
        .map(|i| {
            let c = i % 3;
            let mut e = x(c, 0.03 * i as f32);
            e[(i + 1) % DIM] += 0.2 * ((i * 7 % 5) as f32 - 2.0);
            (format!("u{i}"), format!("c{c}"), e)
        })
        .collect()
}

impl Rig {
    /// A learner on `algorithm` (switched to while empty).
    fn on(algorithm: &str) -> Rig {
        let mut r = rig();
        let s = r.command("algorithm", algorithm.as_bytes());
        r.learner.apply(vec![s]);
        assert_eq!(r.learner.head.algorithm().as_str(), algorithm);
        r
    }

    /// Teaches samples with their ids.
    fn teach_ids(&mut self, samples: &[(String, String, Vec<f32>)]) {
        let steps = samples
            .iter()
            .map(|(id, label, e)| {
                let payload = format!("{id} {label}").into_bytes();
                self.sample_with(id.clone(), label.clone(), e.clone(), &payload)
            })
            .collect();
        self.learner.apply(steps);
    }

    fn run(&mut self, name: &str, payload: &str) {
        let s = self.command(name, payload.as_bytes());
        self.learner.apply(vec![s]);
    }
}

/// A head of `algorithm` trained from scratch on `samples`, in order.
fn trained(algorithm: Algorithm, samples: &[(String, String, Vec<f32>)]) -> Head {
    let config = HeadConfig {
        algorithm,
        ..HeadConfig::default()
    };
    let mut h = Head::new(&config, DIM, SHA);
    for (_, label, e) in samples {
        h.update(e, label).expect("update");
    }
    h
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (p, q)) in a.iter().zip(b).enumerate() {
        assert!((p - q).abs() <= 1e-6, "{what}[{i}]: {p} vs {q}");
    }
}

/// Every statistic of two heads (per class, matched by name: the count, sum and sum of
/// squares; overall the same; the shared scatter of slda and ridge) and their predictions agree
/// within 1e-6. The order of the classes may differ (a class is appended when first taught).
fn assert_same_head(a: &Head, b: &Head) {
    assert_eq!(a.algorithm(), b.algorithm());
    let sorted = |h: &Head| {
        let mut c = h.classes();
        c.sort_by(|p, q| p.name.cmp(&q.name));
        c
    };
    assert_eq!(sorted(a), sorted(b), "classes and their sample counts");
    for ca in &a.classes {
        let cb = b.class_stats(&ca.name).expect("class");
        close(ca.stats.sum(), cb.sum(), &format!("{} sum", ca.name));
        close(
            ca.stats.sum_sq(),
            cb.sum_sq(),
            &format!("{} sum_sq", ca.name),
        );
    }
    assert_eq!(a.source.count(), b.source.count());
    close(a.source.sum(), b.source.sum(), "source sum");
    close(a.source.sum_sq(), b.source.sum_sq(), "source sum_sq");
    match (&a.learner, &b.learner) {
        (crate::head::Learner::Slda(p), crate::head::Learner::Slda(q))
        | (crate::head::Learner::Ridge(p), crate::head::Learner::Ridge(q)) => {
            assert_eq!(p.count, q.count);
            close(&p.packed, &q.packed, "scatter");
        }
        (crate::head::Learner::Ncm(_), crate::head::Learner::Ncm(_)) => {}
        (crate::head::Learner::Auto(p), crate::head::Learner::Auto(q)) => {
            assert_eq!(p.scatter.count, q.scatter.count);
            close(&p.scatter.packed, &q.scatter.packed, "scatter");
            for (i, ca) in a.classes.iter().enumerate() {
                let j = b
                    .classes
                    .iter()
                    .position(|c| c.name == ca.name)
                    .expect("class");
                let what = format!("{} ncm sum", ca.name);
                close(&p.ncm.normalized_sum[i], &q.ncm.normalized_sum[j], &what);
            }
        }
        _ => panic!("learners differ"),
    }
    // `auto` predicts with the candidate its own record chose: compare the same candidate.
    let mut b = b.clone();
    if let (crate::head::Learner::Auto(p), crate::head::Learner::Auto(q)) =
        (&a.learner, &mut b.learner)
    {
        q.record = p.record.clone();
    }
    let (pa, pb) = (a.snapshot(), b.snapshot());
    for probe in unlearn_samples(12) {
        let la = pa.probabilities(&probe.2).expect("probabilities");
        let lb = pb.probabilities(&probe.2).expect("probabilities");
        for (i, label) in pa.labels().iter().enumerate() {
            let j = pb.labels().iter().position(|l| l == label).expect("label");
            let (p, q) = (f64::from(la[i]), f64::from(lb[j]));
            assert!((p - q).abs() <= 1e-6, "p({label}) {p} vs {q}");
        }
    }
}

#[test]
fn unlearning_one_sample_equals_training_without_it_for_every_exact_learner() {
    for (name, algorithm) in [
        ("ncm", Algorithm::Ncm),
        ("slda", Algorithm::Slda),
        ("ridge", Algorithm::Ridge),
    ] {
        let all = unlearn_samples(10);
        let mut r = Rig::on(name);
        r.teach_ids(&all);
        let before = r.learner.head.version();
        r.run("unlearn", "{\"id\": \"u4\"}");
        let res = r.results();
        let last = res.last().expect("result");
        assert_eq!(last["command"], "unlearn", "{name}");
        assert_eq!(last["ok"], true);
        assert_eq!(last["id"], "u4");
        assert_eq!(last["label"], "c1");
        assert_eq!(last["head_version"], before + 1);
        let rest: Vec<_> = all.iter().filter(|s| s.0 != "u4").cloned().collect();
        assert_same_head(&r.learner.head, &trained(algorithm, &rest));
        // Its stored copy is gone too: retraining cannot bring it back.
        assert_eq!(r.learner.samples.len(), 9);
        assert!(!r
            .learner
            .samples
            .iter()
            .any(|(_, e)| e == all[4].2.as_slice()));
        // The predictions follow at once.
        assert_eq!(r.predictor.get().version(), r.learner.head.version());

        // Relabel equals training with the label changed.
        r.run("relabel", "{\"id\": \"u5\", \"label\": \"c0\"}");
        let res = r.results();
        let last = res.last().expect("result");
        assert_eq!(last["command"], "relabel");
        assert_eq!(
            (&last["label"], &last["from"]),
            (&"c0".into(), &"c2".into())
        );
        let relabeled: Vec<_> = rest
            .iter()
            .map(|(id, l, e)| {
                let l = if id == "u5" {
                    "c0".to_string()
                } else {
                    l.clone()
                };
                (id.clone(), l, e.clone())
            })
            .collect();
        let mut expected = trained(algorithm, &relabeled);
        assert_same_head(&r.learner.head, &expected);
        assert!(r.errors().is_empty(), "{:?}", r.errors());

        // A restart without a snapshot replays the records: the same head.
        let r = r.restart();
        assert_same_head(&r.learner.head, &expected);
        // And after a snapshot, with one more removal in the log.
        let mut r = r;
        r.run("snapshot", "");
        r.run("unlearn", "u0");
        expected = trained(
            algorithm,
            &relabeled
                .iter()
                .filter(|s| s.0 != "u0")
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert_same_head(&r.learner.head, &expected);
        let mut r = r.restart();
        assert_same_head(&r.learner.head, &expected);
        // The ledger came back too: u0 is known to be unlearned, u5 is kept under c0.
        r.run("unlearn", "u0");
        let e = r.errors();
        assert_eq!(e[0]["code"], "unknown_id", "{name}");
        assert!(
            e[0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already unlearned")),
            "{e:?}"
        );
        r.run("unlearn", "u5");
        assert_eq!(r.results().last().expect("result")["label"], "c0");
    }
}

#[test]
fn bad_unlearn_and_relabel_requests_are_stable_errors_that_change_nothing() {
    let mut r = rig();
    r.learner.ctx.settings.head.max_classes = 3;
    let all = unlearn_samples(6);
    r.teach_ids(&all);
    r.run("unlearn", "u1");
    let version = r.learner.head.version();
    let head = r.learner.head.clone();
    let wal = std::fs::metadata(r.dir.path().join(crate::state::files::WAL))
        .expect("wal")
        .len();
    let acks = r.rec.acks();
    for (cmd, payload, code, says) in [
        (
            "unlearn",
            "{\"id\": \"nope\"}",
            "unknown_id",
            "no sample with this id",
        ),
        ("unlearn", "u1", "unknown_id", "already unlearned"),
        (
            "relabel",
            "{\"id\": \"u1\", \"label\": \"c0\"}",
            "unknown_id",
            "already",
        ),
        (
            "relabel",
            "{\"id\": \"u2\", \"label\": \"a/b\"}",
            "bad_label",
            "forbidden",
        ),
        (
            "relabel",
            "{\"id\": \"u2\", \"label\": \"new\"}",
            "too_many_classes",
            "3",
        ),
        ("unlearn", "", "bad_request", "needs an id"),
    ] {
        let before = r.errors().len();
        r.run(cmd, payload);
        let e = r.errors();
        assert_eq!(e.len(), before + 1, "{cmd} {payload}");
        assert_eq!(e[before]["code"], code, "{cmd} {payload}: {}", e[before]);
        assert!(
            e[before]["message"]
                .as_str()
                .is_some_and(|m| m.contains(says)),
            "{cmd} {payload}: {}",
            e[before]
        );
    }
    assert_eq!(
        r.rec.acks(),
        acks + 6,
        "every refused command is acknowledged"
    );
    assert_eq!(r.learner.head.version(), version);
    assert_same_head(&r.learner.head, &head);
    let after = std::fs::metadata(r.dir.path().join(crate::state::files::WAL))
        .expect("wal")
        .len();
    assert_eq!(after, wal, "nothing was logged");

    // Relabel to the label it has: a success that changes nothing.
    r.run("relabel", "{\"id\": \"u2\", \"label\": \"c2\"}");
    let res = r.results();
    let last = res.last().expect("result");
    assert_eq!(last["changed"], false);
    assert_eq!(r.learner.head.version(), version);

    // A relabel that empties its class may create one even at the limit.
    r.run("unlearn", "u4");
    r.run("relabel", "{\"id\": \"u1x\", \"label\": \"c9\"}");
    assert_eq!(r.errors().last().expect("error")["code"], "unknown_id");
    r.run("relabel", "{\"id\": \"u3\", \"label\": \"c9\"}");
    assert_eq!(
        r.classes(),
        ["c0", "c2", "c9"],
        "c1 (u1, u4 gone) left, c9 came"
    );

    // sgd: unsupported, nothing changes, and the error says why.
    let mut r = Rig::on("sgd");
    r.teach_ids(&all);
    let version = r.learner.head.version();
    r.run("unlearn", "u2");
    r.run("relabel", "{\"id\": \"u2\", \"label\": \"c1\"}");
    let codes: Vec<_> = r.errors().iter().map(|e| e["code"].clone()).collect();
    assert_eq!(codes, ["unsupported", "unsupported"]);
    assert_eq!(r.learner.head.version(), version);
    assert_eq!(r.learner.head.samples(), 6);
}

#[test]
fn forget_import_and_retraining_keep_the_ledger_true_to_the_head() {
    let mut r = rig();
    r.teach_ids(&unlearn_samples(6));
    r.run("forget", "c0");
    r.run("unlearn", "u0");
    let e = r.errors();
    assert_eq!(e[0]["code"], "unknown_id");
    assert!(e[0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("forgotten")));
    // The class comes back with new samples: unlearning an old id must not subtract from it.
    r.teach_ids(&[("v0".into(), "c0".into(), x(0, 0.5))]);
    r.run("unlearn", "u3");
    assert_eq!(r.errors()[1]["code"], "unknown_id");
    assert_eq!(r.learner.head.class_stats("c0").map(|c| c.count()), Some(1));
    // A retrain keeps what it was trained from (here every stored sample).
    r.run("algorithm", "ridge");
    r.run("unlearn", "v0");
    assert_eq!(r.results().last().expect("result")["id"], "v0");
    assert_eq!(r.classes(), ["c1", "c2"]);
    // A redelivered removal (DUP, already logged) is acknowledged, not applied twice.
    r.teach_ids(&[
        ("w".into(), "c1".into(), x(1, 0.7)),
        ("w".into(), "c1".into(), x(1, 0.8)),
    ]);
    let first = r.command("unlearn", b"w");
    let mut again = r.command("unlearn", b"w");
    again.publish.dup = true;
    let samples = r.learner.head.samples();
    r.learner.apply(vec![first, again]);
    assert_eq!(r.learner.head.samples(), samples - 1);
    assert_eq!(r.stats.duplicates.load(Ordering::Relaxed), 1);
    // The id learned twice: the newest went first, the older is still there.
    r.run("unlearn", "w");
    assert_eq!(r.learner.head.samples(), samples - 2);
}

/// `auto`'s leave-one-out check keeps its samples in memory only: after a restart from a
/// snapshot the learner hands the head the stored samples, so the check decides again.
#[test]
fn auto_checks_the_stored_samples_after_a_restart() {
    let mut r = rig();
    r.teach(3, 6);
    let step = r.command("snapshot", b"");
    r.learner.apply(vec![step]);
    let mut r = r.restart();
    assert_eq!(r.learner.head.samples(), 18);
    let before = r.learner.head.auto_summary().expect("auto");
    assert_eq!(before.chosen_by, "prequential");
    r.learner.head.refresh_candidates();
    let after = r.learner.head.auto_summary().expect("auto");
    assert_eq!(after.chosen_by, "leave_one_out");
    assert_eq!(after.loo_scored, 18);
}
