//! `adaptd eval --finetune`: the learning curve of the linear heads on the frozen backbone and
//! of a fine-tuned tail (`crate::finetune`) on the same training stream. At each point (every
//! class at k samples for each --shots k, half the stream, all of it) the first n samples of
//! the stream teach each linear learner; a fifth of them are held out (the guard's), the rest
//! train the tail (linear probe, then fine-tuning), and the guard compares the tail with the
//! default learner taught the same samples on the held-out fifth: the tail is served only if it
//! is better there. Test accuracy of each, and the trainer's CPU seconds. See
//! docs/learners.md, "Fine-tuning".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use anyhow::{Context, Result};
use serde::Serialize;

use super::prequential::Data;
use crate::finetune::store::Stored;
use crate::finetune::train::{self, thread_cpu_seconds, Config, Example};
use crate::finetune::Tail;
use crate::head::{Algorithm, Head, HeadConfig};
use crate::model::backbone::Backbone;
use crate::model::{Embedder, ModelDir};

/// The fraction of a point's samples the guard holds out: every `HOLDOUT_EVERY`-th of each
/// class.
pub const HOLDOUT_EVERY: usize = 5;

/// One point of the curve.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Samples of the stream taught.
    pub samples: usize,
    /// The fewest samples of any class among them.
    pub min_per_class: usize,
    /// Test accuracy of each linear learner taught the `samples`.
    pub linear: Vec<(String, f64)>,
    /// Samples the tail trained on (the rest were held out).
    pub tail_samples: usize,
    /// Test accuracy after the linear probe alone (the classifier on frozen features).
    pub probe: f64,
    /// Test accuracy of the fine-tuned tail.
    pub tail: f64,
    /// Test accuracy of the tail trained again on all the samples once the guard accepted
    /// (`refit`).
    pub refit: Option<f64>,
    /// Test accuracy after each epoch of fine-tuning, with the CPU seconds spent so far.
    pub epochs: Vec<EpochPoint>,
    /// The guard's decision on the held-out samples.
    pub guard: Guard,
    /// Test accuracy of what would be served: the tail if the guard accepted it, else the
    /// default learner.
    pub served: f64,
    /// CPU seconds of the probe and the fine-tuning, and of the refit (one thread).
    pub cpu_seconds: f64,
}

/// One epoch of fine-tuning at a point.
#[derive(Debug, Clone, Serialize)]
pub struct EpochPoint {
    pub epoch: usize,
    pub loss: f64,
    pub test: f64,
    pub cpu_seconds: f64,
}

/// The guard: the default learner and the tail taught the same samples, scored on the
/// held-out ones.
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    pub held_out: usize,
    pub linear: f64,
    pub tail: f64,
    /// Held-out samples only the tail classifies right, and only the linear head.
    pub tail_only: usize,
    pub linear_only: usize,
    pub accepted: bool,
    pub reason: String,
}

/// The report of `--finetune`.
#[derive(Debug, Clone, Serialize)]
pub struct FinetuneReport {
    pub dataset: String,
    pub classes: usize,
    pub train: usize,
    pub test: usize,
    /// The cut (`[finetune] cut`) and its shape `[1, c, h, w]`.
    pub cut: String,
    pub cut_shape: Vec<usize>,
    /// Bytes of one stored activation (f16).
    pub bytes_per_sample: usize,
    /// Multiply-adds of one forward pass of the tail (a training step costs about three).
    pub tail_macs: usize,
    /// Milliseconds per image to compute the cut's value and the embedding (all threads).
    pub ms_per_image: f64,
    /// The default learner the guard compares with.
    pub guard_learner: String,
    pub config: Config,
    pub points: Vec<Point>,
}

impl FinetuneReport {
    /// A text table.
    pub fn table(&self) -> String {
        let learners: Vec<&str> = self
            .points
            .first()
            .map(|p| p.linear.iter().map(|(l, _)| l.as_str()).collect())
            .unwrap_or_default();
        let mut s = format!(
            "{}: {} classes, {} train / {} test; cut {} {:?}, {} B per stored sample, tail {:.1} M \
             multiply-adds per sample\n",
            self.dataset,
            self.classes,
            self.train,
            self.test,
            self.cut,
            self.cut_shape,
            self.bytes_per_sample,
            self.tail_macs as f64 / 1e6
        );
        s.push_str("samples  min/class ");
        for l in &learners {
            s.push_str(&format!(" {l:>6}"));
        }
        s.push_str(&format!(
            "   probe   tail  | guard: held-out {} / tail    | refit  served  cpu s\n",
            self.guard_learner
        ));
        for p in &self.points {
            s.push_str(&format!("{:>7}  {:>9} ", p.samples, p.min_per_class));
            for (_, a) in &p.linear {
                s.push_str(&format!(" {a:>6.3}"));
            }
            s.push_str(&format!(
                "   {:.3}  {:.3}  | {:>3} {:.3} / {:.3} {:<9} | {}  {:.3}  {:>6.1}\n",
                p.probe,
                p.tail,
                p.guard.held_out,
                p.guard.linear,
                p.guard.tail,
                if p.guard.accepted {
                    "accepted"
                } else {
                    "refused"
                },
                p.refit.map_or("  —  ".to_string(), |a| format!("{a:.3}")),
                p.served,
                p.cpu_seconds
            ));
        }
        s
    }
}

/// What `--finetune` needs besides the embedded data.
pub struct FinetunePlan<'a> {
    pub name: String,
    pub model: &'a ModelDir,
    /// Files of the training stream (in stream order) and of the test split.
    pub train_files: &'a [String],
    pub test_files: &'a [String],
    pub shots: &'a [usize],
    pub learners: &'a [Algorithm],
    pub head: &'a HeadConfig,
    pub backbone: &'a str,
    pub config: Config,
    pub jobs: usize,
}

/// Runs the benchmark.
pub fn run(data: &Data, plan: &FinetunePlan<'_>) -> Result<FinetuneReport> {
    let model = plan.model;
    let cut = model
        .spec
        .finetune
        .as_ref()
        .map(|f| f.cut.clone())
        .context("the model has no [finetune] cut in its model.toml")?;
    let embedder = Embedder::load_with_cut(model.clone(), None)
        .with_context(|| format!("loading {} with its cut", model.dir.display()))?;
    let shape = embedder
        .backbone
        .info()
        .cut_shape
        .clone()
        .context("the cut has no fixed shape")?;
    let layers = Backbone::tail(model)?;
    let pretrained = Tail::from_layers(
        &layers,
        shape.get(1).copied().unwrap_or(0),
        data.classes.len(),
    )?;
    anyhow::ensure!(
        pretrained.dim() == data.dim,
        "the tail ends in {} dimensions, the embeddings have {}",
        pretrained.dim(),
        data.dim
    );
    let started = std::time::Instant::now();
    let train_x = cut_values(&embedder, &shape, plan.train_files, plan.jobs)?;
    let test_x = cut_values(&embedder, &shape, plan.test_files, plan.jobs)?;
    let n_images = (train_x.len() + test_x.len()).max(1);
    let ms_per_image = started.elapsed().as_secs_f64() * 1e3 * plan.jobs as f64 / n_images as f64;
    drop(embedder);
    let test: Vec<Example<'_>> = test_x
        .iter()
        .zip(&data.test)
        .map(|(x, (_, y))| Example { x, label: *y })
        .collect();
    let guard_learner = plan.head.algorithm;
    // The training samples `idx` with their stored activations.
    let examples_of = |idx: &[usize]| -> Vec<Example<'_>> {
        idx.iter()
            .map(|&i| Example {
                x: &train_x[i],
                label: data.train[i].1,
            })
            .collect()
    };
    let mut points = Vec::new();
    for n in checkpoints(data, plan.shots) {
        let mut linear = Vec::new();
        for &a in plan.learners {
            let config = HeadConfig {
                algorithm: a,
                ..plan.head.clone()
            };
            let head = teach(&config, data, plan.backbone, (0..n).collect())?;
            linear.push((a.as_str().to_string(), accuracy(&head, &data.test, data)));
        }
        let (held_in, held_out) = holdout(data, n);
        let examples = examples_of(&held_in);
        let checks = examples_of(&held_out);
        let never = || false;
        let mut tail = pretrained.clone();
        let cpu0 = thread_cpu_seconds();
        train::probe(&mut tail, &examples, &plan.config, &never)?;
        let mut cpu = thread_cpu_seconds() - cpu0;
        let probe = train::accuracy(&tail, &test);
        let mut epochs = Vec::new();
        let mut mark = thread_cpu_seconds();
        train::finetune(
            &mut tail,
            &pretrained,
            &examples,
            &plan.config,
            &never,
            &mut |t, e| {
                cpu += thread_cpu_seconds() - mark;
                epochs.push(EpochPoint {
                    epoch: e.epoch,
                    loss: e.loss,
                    test: train::accuracy(t, &test),
                    cpu_seconds: cpu,
                });
                tracing::info!(
                    "{n} samples, epoch {}: loss {:.4}, test {:.3}, {cpu:.1} cpu s",
                    e.epoch,
                    e.loss,
                    epochs.last().map_or(0.0, |p| p.test)
                );
                mark = thread_cpu_seconds();
            },
        )?;
        let tail_accuracy = train::accuracy(&tail, &test);
        let guard_head = HeadConfig {
            algorithm: guard_learner,
            ..plan.head.clone()
        };
        let guard = judge(
            &tail,
            &teach(&guard_head, data, plan.backbone, held_in.clone())?,
            &checks,
            data,
            &held_out,
        );
        // The default learner taught all n: already among `linear` when it was asked for.
        let default_accuracy = match linear.iter().find(|(l, _)| l == guard_learner.as_str()) {
            Some((_, a)) => *a,
            None => accuracy(
                &teach(&guard_head, data, plan.backbone, (0..n).collect())?,
                &data.test,
                data,
            ),
        };
        // Accepted: the same recipe again on every sample (the held-out ones too), served.
        let refit = match guard.accepted && plan.config.refit {
            true => {
                let all = examples_of(&(0..n).collect::<Vec<_>>());
                let mark = thread_cpu_seconds();
                let mut refit = pretrained.clone();
                train::probe(&mut refit, &all, &plan.config, &never)?;
                train::finetune(
                    &mut refit,
                    &pretrained,
                    &all,
                    &plan.config,
                    &never,
                    &mut |_, _| {},
                )?;
                cpu += thread_cpu_seconds() - mark;
                Some(train::accuracy(&refit, &test))
            }
            false => None,
        };
        let served = match (guard.accepted, refit) {
            (true, Some(a)) => a,
            (true, None) => tail_accuracy,
            (false, _) => default_accuracy,
        };
        points.push(Point {
            samples: n,
            min_per_class: min_per_class(data, n),
            linear,
            tail_samples: held_in.len(),
            probe,
            tail: tail_accuracy,
            refit,
            epochs,
            guard,
            served,
            cpu_seconds: cpu,
        });
    }
    Ok(FinetuneReport {
        dataset: plan.name.clone(),
        classes: data.classes.len(),
        train: data.train.len(),
        test: data.test.len(),
        cut,
        bytes_per_sample: train_x.first().map_or(0, Stored::bytes),
        tail_macs: pretrained.macs(shape.iter().skip(2).product()),
        cut_shape: shape,
        ms_per_image,
        guard_learner: guard_learner.as_str().to_string(),
        config: plan.config.clone(),
        points,
    })
}

/// The guard's decision ([`train::guard_accepts`]) from the held-out samples only one of the
/// tail and the linear head taught the same samples classifies right.
fn judge(
    tail: &Tail,
    linear: &Head,
    checks: &[Example<'_>],
    data: &Data,
    held_out: &[usize],
) -> Guard {
    if checks.is_empty() {
        return Guard {
            held_out: 0,
            linear: 0.0,
            tail: 0.0,
            tail_only: 0,
            linear_only: 0,
            accepted: false,
            reason: "too few samples to hold any out".into(),
        };
    }
    let p = linear.snapshot();
    let mut z = Vec::new();
    let (mut tail_right, mut linear_right, mut tail_only, mut linear_only) = (0, 0, 0, 0);
    for (e, &i) in checks.iter().zip(held_out) {
        let t = train::predict(tail, e.x) == e.label;
        let l = p
            .top1(&data.train[i].0, &mut z)
            .and_then(|i| p.labels().get(i))
            .is_some_and(|l| *l == data.classes[e.label]);
        tail_right += usize::from(t);
        linear_right += usize::from(l);
        tail_only += usize::from(t && !l);
        linear_only += usize::from(l && !t);
    }
    let accepted = train::guard_accepts(tail_only, linear_only);
    let n = checks.len() as f64;
    Guard {
        held_out: checks.len(),
        linear: linear_right as f64 / n,
        tail: tail_right as f64 / n,
        tail_only,
        linear_only,
        accepted,
        reason: match accepted {
            true => format!("the tail is right on {tail_only} held-out samples the linear head misses, wrong on {linear_only} it gets"),
            false => format!("not a clear win: the tail alone is right on {tail_only} held-out samples, the linear head alone on {linear_only}"),
        },
    }
}

/// The stream's first `n` samples split into those the tail trains on and those the guard
/// holds out: every [`HOLDOUT_EVERY`]-th sample of each class.
pub fn holdout(data: &Data, n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut seen = vec![0usize; data.classes.len()];
    let (mut held_in, mut held_out) = (Vec::new(), Vec::new());
    for (i, (_, y)) in data.train.iter().enumerate().take(n) {
        seen[*y] += 1;
        match seen[*y].is_multiple_of(HOLDOUT_EVERY) {
            true => held_out.push(i),
            false => held_in.push(i),
        }
    }
    (held_in, held_out)
}

/// The points of the curve: where every class has reached k samples (each of `shots`), half
/// the stream and all of it.
fn checkpoints(data: &Data, shots: &[usize]) -> Vec<usize> {
    let mut points = Vec::new();
    let mut seen = vec![0usize; data.classes.len()];
    let mut want: Vec<usize> = shots.to_vec();
    want.sort_unstable();
    let mut next = want.into_iter().peekable();
    for (i, (_, y)) in data.train.iter().enumerate() {
        seen[*y] += 1;
        let least = seen.iter().copied().min().unwrap_or(0);
        while next.peek().is_some_and(|k| least >= *k) {
            next.next();
            points.push(i + 1);
        }
    }
    points.extend([data.train.len() / 2, data.train.len()]);
    points.sort_unstable();
    points.dedup();
    points.retain(|&n| n > 0);
    points
}

fn min_per_class(data: &Data, n: usize) -> usize {
    let mut seen = vec![0usize; data.classes.len()];
    for (_, y) in data.train.iter().take(n) {
        seen[*y] += 1;
    }
    seen.into_iter().min().unwrap_or(0)
}

/// A head taught the training samples `idx` in order.
fn teach(config: &HeadConfig, data: &Data, backbone: &str, idx: Vec<usize>) -> Result<Head> {
    let mut head = Head::new(config, data.dim, backbone);
    for i in idx {
        let (x, y) = &data.train[i];
        head.update(x, &data.classes[*y])
            .with_context(|| format!("learning a sample of {}", data.classes[*y]))?;
        if head.candidates_due() {
            head.refresh_candidates();
        }
    }
    head.refresh_candidates();
    Ok(head)
}

/// The fraction of `samples` the head classifies right.
fn accuracy(head: &Head, samples: &[(Vec<f32>, usize)], data: &Data) -> f64 {
    super::prequential::accuracy_on(head, samples, &data.classes)
}

/// The cut's value of each file, on `jobs` threads.
fn cut_values(
    embedder: &Embedder,
    shape: &[usize],
    files: &[String],
    jobs: usize,
) -> Result<Vec<Stored>> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Result<Stored>)>();
    let mut out: Vec<Option<Stored>> = vec![None; files.len()];
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(file) = files.get(i) else { break };
                let value = std::fs::read(file)
                    .with_context(|| format!("reading {file}"))
                    .and_then(|bytes| Ok(embedder.run_payload(&bytes)?))
                    .and_then(|out| {
                        out.cut
                            .with_context(|| format!("{file}: no value at the cut"))
                    })
                    .and_then(|cut| Stored::from_nchw(shape, &cut).map_err(anyhow::Error::msg));
                if tx.send((i, value)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, value) in rx {
            out[i] = Some(value?);
        }
        Ok::<(), anyhow::Error>(())
    })?;
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("{}: not computed", files[i])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(labels: &[usize]) -> Data {
        Data {
            classes: vec!["a".into(), "b".into()],
            dim: 1,
            train: labels.iter().map(|&y| (vec![0.0], y)).collect(),
            test: Vec::new(),
        }
    }

    #[test]
    fn points_and_the_guards_holdout() {
        let d = data(&[0, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1]);
        // Every class at 1 after 3 samples, at 5 after 11 (b's fifth); half and all.
        assert_eq!(checkpoints(&d, &[1, 5]), vec![3, 7, 11, 14]);
        assert_eq!(min_per_class(&d, 11), 5);
        let (held_in, held_out) = holdout(&d, 14);
        // The fifth of each class: a's at index 8, b's at index 10.
        assert_eq!(held_out, vec![8, 10]);
        assert_eq!(held_in.len(), 12);
    }
}
