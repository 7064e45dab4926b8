//! Training the tail on stored activations: first a linear probe (the new classifier alone on
//! the frozen tail's embeddings), then the whole tail with Adam and weight decay toward the
//! pretrained weights (Kumar et al., ICLR 2022: probing first keeps fine-tuning from
//! distorting the features with a random classifier's gradients). Shuffled mini-batches;
//! cancellable between batches; pure computation on the calling thread.

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::store::Stored;
use super::{cross_entropy, Act, Tail};

/// The trainer's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Passes of the linear probe over the samples.
    pub probe_epochs: usize,
    /// The probe's Adam step.
    pub probe_lr: f32,
    /// The probe's L2 penalty on the classifier.
    pub probe_l2: f32,
    /// Passes of fine-tuning over the samples (0: the probe only).
    pub epochs: usize,
    /// Samples per step.
    pub batch: usize,
    /// Adam's step for the tail's layers.
    pub lr: f32,
    /// Adam's step for the classifier while fine-tuning.
    pub classifier_lr: f32,
    /// Decoupled weight decay toward the pretrained weights (toward zero for the classifier):
    /// `w ← w − lr · decay · (w − w₀)` at each step.
    pub decay: f32,
    /// Dropout on the embedding while fine-tuning: the probability of zeroing each value.
    pub dropout: f32,
    /// Mirror each stored activation left to right with probability ½ while fine-tuning (for
    /// images whose mirror image is of the same class: not for text or digits).
    pub flip: bool,
    /// After the guard accepts a tail trained on the held-in samples, train it again on all
    /// of them (the same recipe) before it is served.
    pub refit: bool,
    /// Label smoothing while fine-tuning (0: plain cross-entropy).
    pub smoothing: f32,
    /// Lower the fine-tuning steps along a half cosine to zero over the epochs (else constant).
    pub cosine: bool,
    /// Seed of the batches' order.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            probe_epochs: 30,
            probe_lr: 1e-2,
            probe_l2: 1e-3,
            epochs: 8,
            batch: 16,
            lr: 1e-4,
            classifier_lr: 1e-3,
            decay: 1e-2,
            dropout: 0.0,
            flip: false,
            refit: true,
            smoothing: 0.0,
            cosine: false,
            seed: 0,
        }
    }
}

/// One labeled sample: its activation at the cut and its class index.
#[derive(Clone, Copy, Debug)]
pub struct Example<'a> {
    pub x: &'a Stored,
    pub label: usize,
}

/// The training was stopped between two batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("training cancelled")]
pub struct Cancelled;

/// Adam's moments for a list of parameter vectors.
struct Adam {
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    t: i32,
}

impl Adam {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(shapes: &[&Vec<f32>]) -> Adam {
        Adam {
            m: shapes.iter().map(|p| vec![0.0; p.len()]).collect(),
            v: shapes.iter().map(|p| vec![0.0; p.len()]).collect(),
            t: 0,
        }
    }

    /// One step: parameter `i` moves by its learning rate `lr[i]` along the gradient
    /// `grads[i] · scale`, and toward `anchor[i]` (zero when `None`) by `lr[i] · decay`.
    fn step(
        &mut self,
        params: Vec<&mut Vec<f32>>,
        grads: Vec<&Vec<f32>>,
        anchors: &[Option<&Vec<f32>>],
        lr: &[f32],
        scale: f32,
        decay: f32,
    ) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t);
        let c2 = 1.0 - Self::B2.powi(self.t);
        for (i, (p, g)) in params.into_iter().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            let anchor = anchors.get(i).copied().flatten();
            for j in 0..p.len() {
                let gj = g[j] * scale;
                m[j] = Self::B1 * m[j] + (1.0 - Self::B1) * gj;
                v[j] = Self::B2 * v[j] + (1.0 - Self::B2) * gj * gj;
                let update = (m[j] / c1) / ((v[j] / c2).sqrt() + Self::EPS);
                let w0 = anchor.map_or(0.0, |a| a[j]);
                p[j] -= lr[i] * (update + decay * (p[j] - w0));
            }
        }
    }
}

/// Trains `tail.classifier` alone, from zero, on the embeddings of the frozen layers (a
/// softmax regression). Returns the last pass's mean loss.
pub fn probe(
    tail: &mut Tail,
    examples: &[Example<'_>],
    config: &Config,
    stop: &dyn Fn() -> bool,
) -> Result<f64, Cancelled> {
    let dim = tail.dim();
    let mut embeddings = Vec::with_capacity(examples.len() * dim);
    for e in examples {
        if stop() {
            return Err(Cancelled);
        }
        embeddings.extend(tail.embed(&e.x.act()));
    }
    let classifier = &mut tail.classifier;
    classifier.w.iter_mut().for_each(|w| *w = 0.0);
    classifier.b.iter_mut().for_each(|b| *b = 0.0);
    let mut adam = Adam::new(&[&classifier.w, &classifier.b]);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let batch = config.batch.max(1);
    let mut last = 0.0;
    for _ in 0..config.probe_epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(batch) {
            if stop() {
                return Err(Cancelled);
            }
            let x = Act {
                h: chunk.len(),
                w: 1,
                c: dim,
                data: chunk
                    .iter()
                    .flat_map(|&i| &embeddings[i * dim..(i + 1) * dim])
                    .copied()
                    .collect(),
            };
            let logits = classifier.forward(&x);
            let mut dz = Act::zeros(chunk.len(), 1, classifier.cout);
            for ((row, drow), &i) in logits
                .data
                .chunks_exact(classifier.cout)
                .zip(dz.data.chunks_exact_mut(classifier.cout))
                .zip(chunk)
            {
                let (loss, g) = cross_entropy(row, examples[i].label);
                total += f64::from(loss);
                drow.copy_from_slice(&g);
            }
            let mut grad = super::Pointwise::zeros(classifier.cin, classifier.cout);
            classifier.backward(&x, &dz, &mut grad);
            // L2 as part of the gradient (per sample: the batch mean below divides it).
            let n = chunk.len() as f32;
            for (g, w) in grad.w.iter_mut().zip(&classifier.w) {
                *g += config.probe_l2 * n * w;
            }
            let lr = [config.probe_lr; 2];
            adam.step(
                vec![&mut classifier.w, &mut classifier.b],
                vec![&grad.w, &grad.b],
                &[],
                &lr,
                1.0 / n,
                0.0,
            );
        }
        last = total / examples.len().max(1) as f64;
    }
    Ok(last)
}

/// What one pass of fine-tuning did.
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    /// 1, 2, …
    pub epoch: usize,
    /// Mean cross-entropy over the pass (at the weights of each batch).
    pub loss: f64,
}

/// Fine-tunes every layer of `tail` (its classifier probed first: [`probe`]) on `examples`,
/// decaying toward `anchor` (the pretrained tail; the classifier toward zero). `after_epoch`
/// sees the tail after each pass.
pub fn finetune(
    tail: &mut Tail,
    anchor: &Tail,
    examples: &[Example<'_>],
    config: &Config,
    stop: &dyn Fn() -> bool,
    after_epoch: &mut dyn FnMut(&Tail, Epoch),
) -> Result<(), Cancelled> {
    let mut adam = Adam::new(&tail.params());
    let n_params = tail.params().len();
    // The classifier's weight and bias are the last two parameter vectors.
    let lr: Vec<f32> = (0..n_params)
        .map(|i| match i + 2 >= n_params {
            true => config.classifier_lr,
            false => config.lr,
        })
        .collect();
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut rng = SmallRng::seed_from_u64(config.seed ^ 0x5eed);
    let batch = config.batch.max(1);
    let steps = (config.epochs * examples.len().div_ceil(batch)).max(1);
    let mut step = 0usize;
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for chunk in order.chunks(batch) {
            if stop() {
                return Err(Cancelled);
            }
            let mut grad = tail.zeros_like();
            for &i in chunk {
                let mut x = examples[i].x.act();
                if config.flip && rng.gen_bool(0.5) {
                    x = x.flipped();
                }
                let mask: Vec<f32> = match config.dropout > 0.0 && config.dropout < 1.0 {
                    true => {
                        let keep = 1.0 - config.dropout;
                        (0..tail.dim())
                            .map(|_| match rng.gen::<f32>() < keep {
                                true => 1.0 / keep,
                                false => 0.0,
                            })
                            .collect()
                    }
                    false => Vec::new(),
                };
                let (loss, _) =
                    tail.backward_masked(&x, examples[i].label, &mut grad, &mask, config.smoothing);
                total += f64::from(loss);
            }
            let anchors: Vec<Option<&Vec<f32>>> = anchor
                .params()
                .into_iter()
                .enumerate()
                .map(|(i, a)| (i + 2 < n_params).then_some(a))
                .collect();
            let scale = match config.cosine {
                true => 0.5 * (1.0 + (std::f32::consts::PI * step as f32 / steps as f32).cos()),
                false => 1.0,
            };
            step += 1;
            let lr_now: Vec<f32> = lr.iter().map(|l| l * scale).collect();
            adam.step(
                tail.params_mut(),
                grad.params(),
                &anchors,
                &lr_now,
                1.0 / chunk.len() as f32,
                config.decay,
            );
        }
        let loss = total / examples.len().max(1) as f64;
        after_epoch(tail, Epoch { epoch, loss });
    }
    Ok(())
}

/// The guard's verdict from the held-out samples that only one of the two classifies right:
/// `tail_only` that the tail gets and the linear head misses, `linear_only` the reverse. The
/// tail is accepted when it wins by at least two samples and by at least one standard
/// deviation of that difference under "no better" (McNemar's test, one-sided, about 84%): on
/// a few dozen held-out samples a difference of one is noise, and serving a worse tail is what
/// the guard is for.
pub fn guard_accepts(tail_only: usize, linear_only: usize) -> bool {
    let lead = tail_only.saturating_sub(linear_only);
    lead >= 2 && (lead as f64) >= ((tail_only + linear_only) as f64).sqrt()
}

/// The class the tail gives a stored activation.
pub fn predict(tail: &Tail, x: &Stored) -> usize {
    let logits = tail.forward(&x.act()).logits;
    argmax(&logits)
}

/// The index of the largest value (the first of ties; 0 for an empty slice).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// The fraction of `examples` the tail classifies right (0 when there are none).
pub fn accuracy(tail: &Tail, examples: &[Example<'_>]) -> f64 {
    if examples.is_empty() {
        return 0.0;
    }
    let right = examples
        .iter()
        .filter(|e| predict(tail, e.x) == e.label)
        .count();
    right as f64 / examples.len() as f64
}

/// CPU seconds this thread has used (what a duty cycle and the benchmarks count).
pub fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finetune::gradcheck::{pointwise, random};
    use crate::finetune::{Block, Depthwise, Pointwise};

    fn tail(rng: &mut SmallRng) -> Tail {
        Tail {
            block: Some(Block {
                expand: pointwise(rng, 4, 12),
                depthwise: Depthwise {
                    c: 12,
                    k: 3,
                    w: random(rng, 12 * 9, 0.6),
                    b: random(rng, 12, 0.3),
                },
                project: pointwise(rng, 12, 4),
                residual: true,
            }),
            head: pointwise(rng, 4, 8),
            classifier: Pointwise::zeros(8, 3),
        }
    }

    /// Three classes told apart only by where in the 3 × 3 field a channel is bright (the
    /// mean over positions is the same for all: pooling the frozen features loses it unless
    /// the layers before the pooling learn it).
    fn data(rng: &mut SmallRng, n: usize) -> Vec<(Stored, usize)> {
        (0..n)
            .map(|i| {
                let class = i % 3;
                let mut x = Act {
                    h: 3,
                    w: 3,
                    c: 4,
                    data: random(rng, 36, 0.3),
                };
                for (p, v) in x.data.chunks_exact_mut(4).enumerate() {
                    let lit = match class {
                        0 => p % 3 == 0,
                        1 => p % 3 == 1,
                        _ => p % 3 == 2,
                    };
                    if lit {
                        v[0] += 2.0;
                    }
                }
                (Stored::from_act(&x), class)
            })
            .collect()
    }

    #[test]
    fn probing_then_finetuning_lowers_the_loss_and_decay_holds_to_the_anchor() {
        let mut rng = SmallRng::seed_from_u64(7);
        let anchor = tail(&mut rng);
        let set = data(&mut rng, 60);
        let examples: Vec<Example<'_>> = set
            .iter()
            .map(|(x, label)| Example { x, label: *label })
            .collect();
        let config = Config {
            probe_epochs: 20,
            epochs: 30,
            batch: 8,
            lr: 1e-2,
            classifier_lr: 1e-2,
            decay: 0.0,
            ..Config::default()
        };
        let never = || false;
        let mut t = anchor.clone();
        let probed = probe(&mut t, &examples, &config, &never).expect("not cancelled");
        let probed_accuracy = accuracy(&t, &examples);
        let mut losses = Vec::new();
        finetune(&mut t, &anchor, &examples, &config, &never, &mut |_, e| {
            losses.push(e.loss)
        })
        .expect("not cancelled");
        let last = *losses.last().expect("epochs ran");
        assert!(last < 0.5 * probed, "probe {probed} → fine-tuned {last}");
        assert!(accuracy(&t, &examples) > probed_accuracy);
        // Only the classifier moved in the probe; fine-tuning moved the block too.
        assert_ne!(t.block, anchor.block);
        // With a strong decay the layers stay near the pretrained ones.
        let mut held = anchor.clone();
        probe(&mut held, &examples, &config, &never).expect("not cancelled");
        let strong = Config {
            decay: 50.0,
            ..config.clone()
        };
        finetune(
            &mut held,
            &anchor,
            &examples,
            &strong,
            &never,
            &mut |_, _| {},
        )
        .expect("ok");
        let distance = |a: &Tail| -> f32 {
            a.params()
                .iter()
                .zip(anchor.params())
                .take(a.params().len() - 2)
                .map(|(p, q)| p.iter().zip(q).map(|(x, y)| (x - y).abs()).sum::<f32>())
                .sum()
        };
        assert!(distance(&held) < 0.2 * distance(&t));
    }

    #[test]
    fn the_guard_wants_a_lead_beyond_noise() {
        assert!(!guard_accepts(1, 0), "one sample is noise");
        assert!(!guard_accepts(3, 3));
        assert!(!guard_accepts(2, 3));
        assert!(guard_accepts(2, 0));
        assert!(guard_accepts(8, 1), "7 ≥ √9");
        assert!(!guard_accepts(30, 24), "6 < √54");
        assert!(guard_accepts(31, 22), "9 ≥ √53");
    }

    #[test]
    fn a_stop_request_cancels_between_batches() {
        let mut rng = SmallRng::seed_from_u64(8);
        let anchor = tail(&mut rng);
        let set = data(&mut rng, 12);
        let examples: Vec<Example<'_>> = set
            .iter()
            .map(|(x, label)| Example { x, label: *label })
            .collect();
        let mut t = anchor.clone();
        let calls = std::cell::Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            calls.get() > 3
        };
        let r = finetune(
            &mut t,
            &anchor,
            &examples,
            &Config::default(),
            &stop,
            &mut |_, _| {},
        );
        assert_eq!(r, Err(Cancelled));
        assert_eq!(calls.get(), 4);
    }
}
