//! Fine-tuning the end of the backbone (issue #28): the trainable tail — optionally an
//! inverted-residual block (expand 1×1, ReLU6, depthwise k×k, ReLU6, project 1×1, plus the
//! cut's value when the block has a residual connection), the head's 1×1 convolution and
//! ReLU6, global average pooling and a linear classifier — built from the ONNX file's layers
//! after the cut ([`Tail::from_layers`]), its forward and backward passes in plain Rust, the
//! stored activations ([`store`]) and the trainer ([`train`]: a linear probe, then the whole
//! tail, guarded by held-out samples).

#[cfg(test)]
mod gradcheck;
mod layers;
pub mod store;
pub mod train;

pub use layers::{cross_entropy, pool, relu6, smoothed_cross_entropy, Act, Depthwise, Pointwise};

use layers::{pool_backward, relu6_backward};

use crate::model::backbone::TailLayer;

/// An inverted-residual block's trainable layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub expand: Pointwise,
    pub depthwise: Depthwise,
    pub project: Pointwise,
    /// Whether the block adds its input to its output.
    pub residual: bool,
}

/// The trainable tail's parameters (also the shape of its gradients).
#[derive(Clone, Debug, PartialEq)]
pub struct Tail {
    /// The last block, when the cut is before it.
    pub block: Option<Block>,
    /// The head's 1×1 convolution (followed by ReLU6 and pooling: the embedding).
    pub head: Pointwise,
    /// The linear classifier, as a 1×1 convolution of the pooled 1 × 1 × channels activation.
    pub classifier: Pointwise,
}

/// Why the layers after a cut cannot make a [`Tail`].
#[derive(Debug, thiserror::Error)]
#[error("the layers after the cut are not a trainable tail: {0}")]
pub struct ShapeError(String);

/// What the forward pass keeps for the backward pass.
pub struct Trace {
    x: Act,
    block: Option<BlockTrace>,
    head_in: Act,
    head: Act,
    head_relu: Act,
    pooled: Act,
    /// The classifier's outputs.
    pub logits: Vec<f32>,
}

struct BlockTrace {
    expanded: Act,
    expanded_relu: Act,
    spatial: Act,
    spatial_relu: Act,
}

impl Trace {
    /// The embedding: the pooled head output (what the frozen backbone hands the linear heads).
    pub fn embedding(&self) -> &[f32] {
        &self.pooled.data
    }
}

/// Takes a 1×1 convolution (stride 1, no padding, one group) from the layers.
fn pointwise(layer: Option<&TailLayer>, what: &str, cin: usize) -> Result<Pointwise, ShapeError> {
    match layer {
        Some(TailLayer::Conv {
            out,
            group: 1,
            k: 1,
            stride: 1,
            pads: [0, 0, 0, 0],
            w,
            b,
            ..
        }) if w.len() == out * cin => Ok(Pointwise {
            cin,
            cout: *out,
            w: w.clone(),
            b: b.clone(),
        }),
        other => Err(ShapeError(format!(
            "the {what} should be a 1×1 convolution of {cin} channels, found {other:?}",
            other = other.map(short)
        ))),
    }
}

/// A layer's kind and shape, for messages (not its weights).
fn short(layer: &TailLayer) -> String {
    match layer {
        TailLayer::Conv {
            name,
            out,
            group,
            k,
            stride,
            pads,
            ..
        } => format!(
            "conv {name}: {out} outputs, group {group}, {k}×{k}, stride {stride}, pads {pads:?}"
        ),
        other => format!("{other:?}"),
    }
}

fn relu(layer: Option<&TailLayer>, after: &str) -> Result<(), ShapeError> {
    match layer {
        Some(TailLayer::Relu6) => Ok(()),
        other => Err(ShapeError(format!(
            "ReLU6 should follow the {after}, found {:?}",
            other.map(short)
        ))),
    }
}

impl Tail {
    /// The tail of the ONNX layers after the cut (`crate::model::backbone::read_tail`), for a
    /// cut of `channels` channels and a new classifier of `classes` outputs (zero: a linear
    /// probe sets it first).
    pub fn from_layers(
        layers: &[TailLayer],
        channels: usize,
        classes: usize,
    ) -> Result<Tail, ShapeError> {
        let mut it = layers.iter().peekable();
        let mut c = channels;
        let block = match layers.len() {
            // conv, relu6, pool: the head alone.
            3 => None,
            _ => {
                let expand = pointwise(it.next(), "block's expansion", c)?;
                relu(it.next(), "expansion")?;
                let e = expand.cout;
                let depthwise = match it.next() {
                    Some(TailLayer::Conv {
                        out,
                        group,
                        k,
                        stride: 1,
                        pads,
                        w,
                        b,
                        ..
                    }) if *out == e
                        && *group == e
                        && k % 2 == 1
                        && pads.iter().all(|p| *p == k / 2)
                        && w.len() == e * k * k =>
                    {
                        Depthwise {
                            c: e,
                            k: *k,
                            w: w.clone(),
                            b: b.clone(),
                        }
                    }
                    other => {
                        return Err(ShapeError(format!(
                            "the block's depthwise convolution should be {e} channels, odd k×k,                              stride 1, padded k/2; found {:?}",
                            other.map(short)
                        )))
                    }
                };
                relu(it.next(), "depthwise convolution")?;
                let project = pointwise(it.next(), "block's projection", e)?;
                let residual = it.next_if_eq(&&TailLayer::AddCut).is_some();
                if residual && project.cout != channels {
                    return Err(ShapeError(format!(
                        "a residual block of {channels} channels projects to {}",
                        project.cout
                    )));
                }
                c = project.cout;
                Some(Block {
                    expand,
                    depthwise,
                    project,
                    residual,
                })
            }
        };
        let head = pointwise(it.next(), "head convolution", c)?;
        relu(it.next(), "head convolution")?;
        match (it.next(), it.next()) {
            (Some(TailLayer::Pool), None) => {}
            (a, b) => {
                return Err(ShapeError(format!(
                    "pooling should end the tail, found {:?} then {:?}",
                    a.map(short),
                    b.map(short)
                )))
            }
        }
        let classifier = Pointwise::zeros(head.cout, classes);
        Ok(Tail {
            block,
            head,
            classifier,
        })
    }

    /// Channels of the activation at the cut.
    pub fn channels(&self) -> usize {
        match &self.block {
            Some(b) => b.expand.cin,
            None => self.head.cin,
        }
    }

    /// Embedding dimension (the head's outputs).
    pub fn dim(&self) -> usize {
        self.head.cout
    }

    /// Multiply-adds of one forward pass over `positions` positions (the backward pass costs
    /// about twice as many).
    pub fn macs(&self, positions: usize) -> usize {
        let pw = |p: &Pointwise| p.cin * p.cout;
        let block = self.block.as_ref().map_or(0, |b| {
            pw(&b.expand) + b.depthwise.c * b.depthwise.k * b.depthwise.k + pw(&b.project)
        });
        (block + pw(&self.head)) * positions + pw(&self.classifier)
    }

    /// Zeros of this tail's shape, for gradients.
    pub fn zeros_like(&self) -> Tail {
        let mut z = self.clone();
        for p in z.params_mut() {
            p.iter_mut().for_each(|v| *v = 0.0);
        }
        z
    }

    /// Every parameter vector, in a fixed order.
    pub fn params(&self) -> Vec<&Vec<f32>> {
        let mut v = Vec::with_capacity(10);
        if let Some(b) = &self.block {
            v.extend([
                &b.expand.w,
                &b.expand.b,
                &b.depthwise.w,
                &b.depthwise.b,
                &b.project.w,
                &b.project.b,
            ]);
        }
        v.extend([
            &self.head.w,
            &self.head.b,
            &self.classifier.w,
            &self.classifier.b,
        ]);
        v
    }

    /// [`params`](Self::params), mutable.
    pub fn params_mut(&mut self) -> Vec<&mut Vec<f32>> {
        let mut v = Vec::with_capacity(10);
        if let Some(b) = &mut self.block {
            v.extend([
                &mut b.expand.w,
                &mut b.expand.b,
                &mut b.depthwise.w,
                &mut b.depthwise.b,
                &mut b.project.w,
                &mut b.project.b,
            ]);
        }
        v.extend([
            &mut self.head.w,
            &mut self.head.b,
            &mut self.classifier.w,
            &mut self.classifier.b,
        ]);
        v
    }

    /// The forward pass up to the embedding only (no classifier, nothing kept).
    pub fn embed(&self, x: &Act) -> Vec<f32> {
        let y = match &self.block {
            Some(b) => b.forward(x).1,
            None => x.clone(),
        };
        pool(&relu6(&self.head.forward(&y)))
    }

    /// The forward pass of one activation at the cut.
    pub fn forward(&self, x: &Act) -> Trace {
        let (block, head_in) = match &self.block {
            Some(b) => {
                let (t, y) = b.forward(x);
                (Some(t), y)
            }
            None => (None, x.clone()),
        };
        let head = self.head.forward(&head_in);
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
            block,
            head_in,
            head,
            head_relu,
            pooled,
            logits,
        }
    }

    /// The cross-entropy loss of one activation labeled `target`; adds the parameters'
    /// gradients to `grad` and returns the loss and the gradient of the activation.
    pub fn backward(&self, x: &Act, target: usize, grad: &mut Tail) -> (f32, Act) {
        self.backward_masked(x, target, grad, &[], 0.0)
    }

    /// [`backward`](Self::backward) with dropout on the embedding: each pooled value is
    /// multiplied by `mask`'s (0, or 1 / keep probability) before the classifier; an empty
    /// mask keeps them all; and the target smoothed by `smoothing` ([`smoothed_cross_entropy`]).
    pub fn backward_masked(
        &self,
        x: &Act,
        target: usize,
        grad: &mut Tail,
        mask: &[f32],
        smoothing: f32,
    ) -> (f32, Act) {
        let mut t = self.forward(x);
        if !mask.is_empty() {
            for (p, m) in t.pooled.data.iter_mut().zip(mask) {
                *p *= m;
            }
            t.logits = self.classifier.forward(&t.pooled).data;
        }
        let (loss, dz) = smoothed_cross_entropy(&t.logits, target, smoothing);
        let dz = Act {
            h: 1,
            w: 1,
            c: dz.len(),
            data: dz,
        };
        let mut dpooled = self
            .classifier
            .backward(&t.pooled, &dz, &mut grad.classifier);
        for (d, m) in dpooled.data.iter_mut().zip(mask) {
            *d *= m;
        }
        let dhead_relu = pool_backward(&t.head_relu, &dpooled.data);
        let dhead = relu6_backward(&t.head, &dhead_relu);
        let dhead_in = self.head.backward(&t.head_in, &dhead, &mut grad.head);
        let dx = match (&self.block, &t.block, &mut grad.block) {
            (Some(b), Some(bt), Some(g)) => b.backward(&t.x, bt, &dhead_in, g),
            _ => dhead_in,
        };
        (loss, dx)
    }
}

impl Block {
    fn forward(&self, x: &Act) -> (BlockTrace, Act) {
        let expanded = self.expand.forward(x);
        let expanded_relu = relu6(&expanded);
        let spatial = self.depthwise.forward(&expanded_relu);
        let spatial_relu = relu6(&spatial);
        let mut projected = self.project.forward(&spatial_relu);
        if self.residual {
            for (p, v) in projected.data.iter_mut().zip(&x.data) {
                *p += v;
            }
        }
        let trace = BlockTrace {
            expanded,
            expanded_relu,
            spatial,
            spatial_relu,
        };
        (trace, projected)
    }

    fn backward(&self, x: &Act, t: &BlockTrace, dy: &Act, grad: &mut Block) -> Act {
        let dspatial_relu = self
            .project
            .backward(&t.spatial_relu, dy, &mut grad.project);
        let dspatial = relu6_backward(&t.spatial, &dspatial_relu);
        let dexpanded_relu =
            self.depthwise
                .backward(&t.expanded_relu, &dspatial, &mut grad.depthwise);
        let dexpanded = relu6_backward(&t.expanded, &dexpanded_relu);
        let mut dx = self.expand.backward(x, &dexpanded, &mut grad.expand);
        if self.residual {
            for (d, g) in dx.data.iter_mut().zip(&dy.data) {
                *d += g;
            }
        }
        dx
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use gradcheck::{check_each, pointwise, random, KINKED};

    /// A small tail: `c` channels at the cut, expansion 3, `out` block outputs, 6 head
    /// channels, 3 classes.
    fn tail(rng: &mut SmallRng, c: usize, out: usize) -> Tail {
        let e = 3 * c;
        Tail {
            block: Some(Block {
                expand: pointwise(rng, c, e),
                depthwise: Depthwise {
                    c: e,
                    k: 3,
                    w: random(rng, e * 9, 0.6),
                    b: random(rng, e, 0.3),
                },
                project: pointwise(rng, e, out),
                residual: c == out,
            }),
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
        // With and without the residual connection, and the head alone (a cut after the
        // last block).
        for (c, out, block) in [(4, 4, true), (4, 5, true), (4, 4, false)] {
            let mut t = tail(&mut rng, c, out);
            assert_eq!(t.block.as_ref().map(|b| b.residual), Some(c == out));
            if !block {
                t.block = None;
            }
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
            assert!(checked > 80, "{checked} derivatives checked");
        }
    }
}
