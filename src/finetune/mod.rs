//! Fine-tuning the end of the backbone (issue #28), first part: the trainable tail — an
//! inverted-residual block (expand 1×1, ReLU6, depthwise k×k, ReLU6, project 1×1, plus the
//! input when the channels match), the head's 1×1 convolution and ReLU6, global average
//! pooling and a linear classifier — with its forward and backward passes in plain Rust and an
//! SGD step with weight decay toward the pretrained weights. Not used by the daemon yet: the
//! cut, the stored activations and the background trainer are the next parts.

#[cfg(test)]
mod gradcheck;
mod layers;

pub use layers::{cross_entropy, pool, relu6, Act, Depthwise, Pointwise};

use layers::{pool_backward, relu6_backward};

/// The trainable tail's parameters (also the shape of its gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct Tail {
    pub expand: Pointwise,
    pub depthwise: Depthwise,
    pub project: Pointwise,
    pub head: Pointwise,
    /// The linear classifier, as a 1×1 convolution of the pooled 1 × 1 × channels activation.
    pub classifier: Pointwise,
}

/// What the forward pass keeps for the backward pass.
pub struct Trace {
    x: Act,
    expanded: Act,
    expanded_relu: Act,
    spatial: Act,
    spatial_relu: Act,
    projected: Act,
    head: Act,
    head_relu: Act,
    pooled: Act,
    /// The classifier's outputs.
    pub logits: Vec<f32>,
}

impl Trace {
    /// The embedding: the pooled head output (what the frozen backbone hands the linear heads).
    pub fn embedding(&self) -> &[f32] {
        &self.pooled.data
    }
}

impl Tail {
    /// Whether the block adds its input to its output (same channels in and out).
    pub fn residual(&self) -> bool {
        self.expand.cin == self.project.cout
    }

    /// Zeros of this tail's shape, for gradients.
    pub fn zeros_like(&self) -> Tail {
        Tail {
            expand: Pointwise::zeros(self.expand.cin, self.expand.cout),
            depthwise: Depthwise::zeros(self.depthwise.c, self.depthwise.k),
            project: Pointwise::zeros(self.project.cin, self.project.cout),
            head: Pointwise::zeros(self.head.cin, self.head.cout),
            classifier: Pointwise::zeros(self.classifier.cin, self.classifier.cout),
        }
    }

    fn params(&self) -> [&Vec<f32>; 10] {
        [
            &self.expand.w,
            &self.expand.b,
            &self.depthwise.w,
            &self.depthwise.b,
            &self.project.w,
            &self.project.b,
            &self.head.w,
            &self.head.b,
            &self.classifier.w,
            &self.classifier.b,
        ]
    }

    fn params_mut(&mut self) -> [&mut Vec<f32>; 10] {
        [
            &mut self.expand.w,
            &mut self.expand.b,
            &mut self.depthwise.w,
            &mut self.depthwise.b,
            &mut self.project.w,
            &mut self.project.b,
            &mut self.head.w,
            &mut self.head.b,
            &mut self.classifier.w,
            &mut self.classifier.b,
        ]
    }

    /// The forward pass of one activation at the cut.
    pub fn forward(&self, x: &Act) -> Trace {
        let expanded = self.expand.forward(x);
        let expanded_relu = relu6(&expanded);
        let spatial = self.depthwise.forward(&expanded_relu);
        let spatial_relu = relu6(&spatial);
        let mut projected = self.project.forward(&spatial_relu);
        if self.residual() {
            for (p, v) in projected.data.iter_mut().zip(&x.data) {
                *p += v;
            }
        }
        let head = self.head.forward(&projected);
        let head_relu = relu6(&head);
        let pooled = Act {
            h: 1,
            w: 1,
            c: head_relu.c,
            data: pool(&head_relu),
        };
        let logits = self.classifier.forward(&pooled).data;
        Trace {
            x: x.clone(),
            expanded,
            expanded_relu,
            spatial,
            spatial_relu,
            projected,
            head,
            head_relu,
            pooled,
            logits,
        }
    }

    /// The cross-entropy loss of one activation labeled `target`; adds the parameters'
    /// gradients to `grad` and returns the loss and the gradient of the activation.
    pub fn backward(&self, x: &Act, target: usize, grad: &mut Tail) -> (f32, Act) {
        let t = self.forward(x);
        let (loss, dz) = cross_entropy(&t.logits, target);
        let dz = Act {
            h: 1,
            w: 1,
            c: dz.len(),
            data: dz,
        };
        let dpooled = self
            .classifier
            .backward(&t.pooled, &dz, &mut grad.classifier);
        let dhead_relu = pool_backward(&t.head_relu, &dpooled.data);
        let dhead = relu6_backward(&t.head, &dhead_relu);
        let dprojected = self.head.backward(&t.projected, &dhead, &mut grad.head);
        let dspatial_relu = self
            .project
            .backward(&t.spatial_relu, &dprojected, &mut grad.project);
        let dspatial = relu6_backward(&t.spatial, &dspatial_relu);
        let dexpanded_relu =
            self.depthwise
                .backward(&t.expanded_relu, &dspatial, &mut grad.depthwise);
        let dexpanded = relu6_backward(&t.expanded, &dexpanded_relu);
        let mut dx = self.expand.backward(&t.x, &dexpanded, &mut grad.expand);
        if self.residual() {
            for (d, g) in dx.data.iter_mut().zip(&dprojected.data) {
                *d += g;
            }
        }
        (loss, dx)
    }

    /// One SGD step on gradients summed over `batch` samples, with weight decay `decay`
    /// toward `anchor` (the pretrained tail): `w ← w − lr (g / batch + decay (w − w₀))`.
    pub fn step(&mut self, grad: &Tail, batch: usize, lr: f32, decay: f32, anchor: &Tail) {
        let scale = 1.0 / batch.max(1) as f32;
        for ((w, g), w0) in self
            .params_mut()
            .into_iter()
            .zip(grad.params())
            .zip(anchor.params())
        {
            for ((wi, gi), w0i) in w.iter_mut().zip(g).zip(w0) {
                *wi -= lr * (gi * scale + decay * (*wi - w0i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use gradcheck::{check_each, KINKED};

    fn random(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
    }

    fn pointwise(rng: &mut SmallRng, cin: usize, cout: usize) -> Pointwise {
        Pointwise {
            cin,
            cout,
            w: random(rng, cin * cout, 0.6),
            b: random(rng, cout, 0.3),
        }
    }

    /// A small tail: `c` channels at the cut, expansion 3, `out` block outputs, 6 head
    /// channels, 3 classes.
    fn tail(rng: &mut SmallRng, c: usize, out: usize) -> Tail {
        let e = 3 * c;
        Tail {
            expand: pointwise(rng, c, e),
            depthwise: Depthwise {
                c: e,
                k: 3,
                w: random(rng, e * 9, 0.6),
                b: random(rng, e, 0.3),
            },
            project: pointwise(rng, e, out),
            head: pointwise(rng, out, 6),
            classifier: pointwise(rng, 6, 3),
        }
    }

    fn input(rng: &mut SmallRng, c: usize) -> Act {
        Act {
            h: 3,
            w: 3,
            c,
            data: random(rng, 9 * c, 1.5),
        }
    }

    fn loss(t: &Tail, x: &Act, target: usize) -> f64 {
        let logits = t.forward(x).logits;
        f64::from(cross_entropy(&logits, target).0)
    }

    #[test]
    fn every_gradient_matches_finite_differences() {
        let mut rng = SmallRng::seed_from_u64(5);
        // With and without the residual connection.
        for (c, out) in [(4, 4), (4, 5)] {
            let t = tail(&mut rng, c, out);
            assert_eq!(t.residual(), c == out);
            let x = input(&mut rng, c);
            let mut grad = t.zeros_like();
            let (l, dx) = t.backward(&x, 1, &mut grad);
            assert!((f64::from(l) - loss(&t, &x, 1)).abs() < 1e-6);
            let mut checked = 0;
            for (k, g) in grad.params().into_iter().enumerate() {
                checked += check_each(g, &KINKED, &format!("parameter {k}"), |i, d| {
                    let mut moved = t.clone();
                    moved.params_mut()[k][i] += d;
                    loss(&moved, &x, 1)
                });
            }
            checked += check_each(&dx.data, &KINKED, "input", |i, d| {
                let mut moved = x.clone();
                moved.data[i] += d;
                loss(&t, &moved, 1)
            });
            assert!(checked > 100);
        }
    }

    #[test]
    fn sgd_lowers_the_loss_and_decay_pulls_toward_the_anchor() {
        let mut rng = SmallRng::seed_from_u64(6);
        let anchor = tail(&mut rng, 4, 4);
        // Three classes told apart by which channel the input is brightest in.
        let data: Vec<(Act, usize)> = (0..30)
            .map(|i| {
                let mut x = input(&mut rng, 4);
                let class = i % 3;
                for p in x.data.chunks_exact_mut(4) {
                    p[class] += 2.0;
                }
                (x, class)
            })
            .collect();
        let mean_loss =
            |t: &Tail| data.iter().map(|(x, y)| loss(t, x, *y)).sum::<f64>() / data.len() as f64;
        let mut t = anchor.clone();
        let before = mean_loss(&t);
        for _ in 0..60 {
            let mut grad = t.zeros_like();
            for (x, y) in &data {
                t.backward(x, *y, &mut grad);
            }
            t.step(&grad, data.len(), 0.1, 0.0, &anchor);
        }
        let after = mean_loss(&t);
        assert!(after < 0.5 * before, "{before} → {after}");
        // With zero gradients, decay alone moves every weight toward the anchor.
        let mut pulled = t.clone();
        pulled.step(&t.zeros_like(), 1, 0.5, 1.0, &anchor);
        for ((a, b), c) in pulled.params().iter().zip(t.params()).zip(anchor.params()) {
            for ((p, q), r) in a.iter().zip(b.iter()).zip(c.iter()) {
                assert!((p - r).abs() <= (q - r).abs() + 1e-7);
            }
        }
    }
}
