//! The layers of a trainable backbone tail, forward and backward on one sample's activation
//! (height × width × channels, channels last, f32): 1×1 convolution, depthwise convolution,
//! ReLU6, global average pooling, a linear layer and softmax cross-entropy. Each backward
//! pass returns the gradient of its input and adds its parameters' gradients to a buffer of
//! the same shape, so a batch sums them.

/// An activation: `h × w` positions of `c` channels, channels last.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Act {
    /// Zeros of the given shape.
    pub fn zeros(h: usize, w: usize, c: usize) -> Act {
        Act {
            h,
            w,
            c,
            data: vec![0.0; h * w * c],
        }
    }

    /// From a value of batch one in NCHW layout (`shape` = `[1, c, h, w]`, as an ONNX graph
    /// has it), e.g. the backbone's output at the cut.
    pub fn from_nchw(shape: &[usize], values: &[f32]) -> Result<Act, String> {
        let [1, c, h, w] = shape[..] else {
            return Err(format!("a value of shape {shape:?}, not [1, c, h, w]"));
        };
        if values.len() != c * h * w {
            return Err(format!(
                "a value of {} elements, its shape {shape:?} says {}",
                values.len(),
                c * h * w
            ));
        }
        let mut data = vec![0.0; values.len()];
        for (ch, plane) in values.chunks_exact(h * w).enumerate() {
            for (p, v) in plane.iter().enumerate() {
                data[p * c + ch] = *v;
            }
        }
        Ok(Act { h, w, c, data })
    }

    /// The activation mirrored left to right.
    pub fn flipped(&self) -> Act {
        let mut data = Vec::with_capacity(self.data.len());
        for row in self.data.chunks_exact(self.w * self.c) {
            for p in row.chunks_exact(self.c).rev() {
                data.extend_from_slice(p);
            }
        }
        Act { data, ..*self }
    }

    /// Positions (h × w).
    pub fn positions(&self) -> usize {
        self.h * self.w
    }
}

/// A 1×1 convolution with bias: `y[p, o] = b[o] + Σ_i w[o, i] x[p, i]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pointwise {
    pub cin: usize,
    pub cout: usize,
    /// `cout × cin`, row-major.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Pointwise {
    /// Zero weights (for gradient buffers).
    pub fn zeros(cin: usize, cout: usize) -> Pointwise {
        Pointwise {
            cin,
            cout,
            w: vec![0.0; cin * cout],
            b: vec![0.0; cout],
        }
    }

    pub fn forward(&self, x: &Act) -> Act {
        debug_assert_eq!(x.c, self.cin);
        let mut y = Act::zeros(x.h, x.w, self.cout);
        for p in y.data.chunks_exact_mut(self.cout) {
            p.copy_from_slice(&self.b);
        }
        // y[P × cout] += x[P × cin] · wᵀ
        gemm(
            (x.positions(), self.cin, self.cout),
            (&x.data, self.cin, 1),
            (&self.w, 1, self.cin),
            (&mut y.data, self.cout, 1),
            1.0,
        );
        y
    }

    /// The input's gradient; adds the weights' and bias's to `grad`.
    pub fn backward(&self, x: &Act, dy: &Act, grad: &mut Pointwise) -> Act {
        let mut dx = Act::zeros(x.h, x.w, self.cin);
        let p = x.positions();
        for dyp in dy.data.chunks_exact(self.cout) {
            for (gb, g) in grad.b.iter_mut().zip(dyp) {
                *gb += g;
            }
        }
        // dw[cout × cin] += dyᵀ · x
        gemm(
            (self.cout, p, self.cin),
            (&dy.data, 1, self.cout),
            (&x.data, self.cin, 1),
            (&mut grad.w, self.cin, 1),
            1.0,
        );
        // dx[P × cin] = dy · w
        gemm(
            (p, self.cout, self.cin),
            (&dy.data, self.cout, 1),
            (&self.w, self.cin, 1),
            (&mut dx.data, self.cin, 1),
            0.0,
        );
        dx
    }
}

/// `c ← a · b + beta c` for an `m × k` matrix `a`, a `k × n` matrix `b` and an `m × n` matrix
/// `c`, each given with its row and column strides (so a transpose is a swap of strides).
/// matrixmultiply picks its AVX2/FMA or NEON kernel at run time.
fn gemm(
    (m, k, n): (usize, usize, usize),
    (a, rsa, csa): (&[f32], usize, usize),
    (b, rsb, csb): (&[f32], usize, usize),
    (c, rsc, csc): (&mut [f32], usize, usize),
    beta: f32,
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    // The strides address only inside each slice: what makes the call below sound.
    assert!(m == 0 || k == 0 || last(m, k, rsa, csa) < a.len());
    assert!(k == 0 || n == 0 || last(k, n, rsb, csb) < b.len());
    assert!(m == 0 || n == 0 || last(m, n, rsc, csc) < c.len());
    // SAFETY: every element the strides reach lies in its slice (checked above), `c` is a
    // unique borrow, and the strides fit isize (the slices' lengths do).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// A depthwise `k × k` convolution with bias, stride 1, zero padding `k / 2` (the output has
/// the input's size): `y[r, s, c] = b[c] + Σ_{i,j} w[c, i, j] x[r + i − k/2, s + j − k/2, c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Depthwise {
    pub c: usize,
    pub k: usize,
    /// `c × k × k`.
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Depthwise {
    /// Zero weights (for gradient buffers).
    pub fn zeros(c: usize, k: usize) -> Depthwise {
        Depthwise {
            c,
            k,
            w: vec![0.0; c * k * k],
            b: vec![0.0; c],
        }
    }

    /// Calls `f(output position, input position, tap)` for every tap that lands inside.
    fn taps(&self, x: &Act, mut f: impl FnMut(usize, usize, usize)) {
        let pad = (self.k / 2) as isize;
        let (h, w) = (x.h as isize, x.w as isize);
        for r in 0..h {
            for s in 0..w {
                for i in 0..self.k as isize {
                    let rr = r + i - pad;
                    if rr < 0 || rr >= h {
                        continue;
                    }
                    for j in 0..self.k as isize {
                        let ss = s + j - pad;
                        if ss < 0 || ss >= w {
                            continue;
                        }
                        let tap = (i * self.k as isize + j) as usize;
                        f((r * w + s) as usize, (rr * w + ss) as usize, tap);
                    }
                }
            }
        }
    }

    pub fn forward(&self, x: &Act) -> Act {
        debug_assert_eq!(x.c, self.c);
        let (c, kk) = (self.c, self.k * self.k);
        let mut y = Act::zeros(x.h, x.w, c);
        for p in y.data.chunks_exact_mut(c) {
            p.copy_from_slice(&self.b);
        }
        self.taps(x, |out, inp, tap| {
            let (yp, xp) = (
                &mut y.data[out * c..(out + 1) * c],
                &x.data[inp * c..(inp + 1) * c],
            );
            for ch in 0..c {
                yp[ch] += self.w[ch * kk + tap] * xp[ch];
            }
        });
        y
    }

    /// The input's gradient; adds the weights' and bias's to `grad`.
    pub fn backward(&self, x: &Act, dy: &Act, grad: &mut Depthwise) -> Act {
        let (c, kk) = (self.c, self.k * self.k);
        let mut dx = Act::zeros(x.h, x.w, c);
        for p in dy.data.chunks_exact(c) {
            for (gb, g) in grad.b.iter_mut().zip(p) {
                *gb += g;
            }
        }
        self.taps(x, |out, inp, tap| {
            let g = &dy.data[out * c..(out + 1) * c];
            let xs = &x.data[inp * c..(inp + 1) * c];
            let dxs = &mut dx.data[inp * c..(inp + 1) * c];
            for (ch, ((gc, xc), dxc)) in g.iter().zip(xs).zip(dxs).enumerate() {
                grad.w[ch * kk + tap] += gc * xc;
                *dxc += self.w[ch * kk + tap] * gc;
            }
        });
        dx
    }
}

/// ReLU6: `min(max(x, 0), 6)`.
pub fn relu6(x: &Act) -> Act {
    Act {
        data: x.data.iter().map(|v| v.clamp(0.0, 6.0)).collect(),
        ..*x
    }
}

/// ReLU6's backward: the gradient passes where the input was strictly inside (0, 6).
pub fn relu6_backward(x: &Act, dy: &Act) -> Act {
    let data = x
        .data
        .iter()
        .zip(&dy.data)
        .map(|(v, g)| if *v > 0.0 && *v < 6.0 { *g } else { 0.0 })
        .collect();
    Act { data, ..*x }
}

/// Global average pooling: the mean of each channel over the positions.
pub fn pool(x: &Act) -> Vec<f32> {
    let mut v = vec![0.0f32; x.c];
    for p in x.data.chunks_exact(x.c) {
        for (a, b) in v.iter_mut().zip(p) {
            *a += b;
        }
    }
    let n = x.positions() as f32;
    v.iter_mut().for_each(|a| *a /= n);
    v
}

/// Pooling's backward: each position gets the channel's gradient over the positions.
pub fn pool_backward(x: &Act, dv: &[f32]) -> Act {
    let n = x.positions() as f32;
    let mut dx = Act::zeros(x.h, x.w, x.c);
    for p in dx.data.chunks_exact_mut(x.c) {
        for (a, g) in p.iter_mut().zip(dv) {
            *a = g / n;
        }
    }
    dx
}

/// Softmax cross-entropy of `logits` against class `target`: the loss and its gradient
/// (softmax minus the one-hot target).
pub fn cross_entropy(logits: &[f32], target: usize) -> (f32, Vec<f32>) {
    smoothed_cross_entropy(logits, target, 0.0)
}

/// Cross-entropy against the target smoothed by `eps` (`1 − eps` on the class, `eps / C`
/// spread over all C): the loss and its gradient (softmax minus the smoothed target).
pub fn smoothed_cross_entropy(logits: &[f32], target: usize, eps: f32) -> (f32, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut grad: Vec<f32> = exp.iter().map(|e| e / sum).collect();
    let spread = eps / logits.len().max(1) as f32;
    let mut loss = 0.0;
    for (i, g) in grad.iter_mut().enumerate() {
        let q = spread + if i == target { 1.0 - eps } else { 0.0 };
        if q > 0.0 {
            loss -= q * g.max(f32::MIN_POSITIVE).ln();
        }
        *g -= q;
    }
    (loss, grad)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;
    use crate::finetune::gradcheck::{check_each, random, SMOOTH};

    fn act(rng: &mut SmallRng, h: usize, w: usize, c: usize) -> Act {
        Act {
            h,
            w,
            c,
            data: random(rng, h * w * c, 1.0),
        }
    }

    /// `L = Σ r ⊙ y`: a loss whose output gradient is `r`.
    fn probe(y: &Act, r: &Act) -> f64 {
        y.data
            .iter()
            .zip(&r.data)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    #[test]
    fn pointwise_gradients_match_finite_differences() {
        let mut rng = SmallRng::seed_from_u64(1);
        let (cin, cout) = (5, 4);
        let conv = Pointwise {
            cin,
            cout,
            w: random(&mut rng, cin * cout, 0.5),
            b: random(&mut rng, cout, 0.5),
        };
        let x = act(&mut rng, 3, 2, cin);
        let r = act(&mut rng, 3, 2, cout);
        let mut grad = Pointwise::zeros(cin, cout);
        let dx = conv.backward(&x, &r, &mut grad);
        check_each(&dx.data, &SMOOTH, "pointwise dx", |i, d| {
            let mut m = x.clone();
            m.data[i] += d;
            probe(&conv.forward(&m), &r)
        });
        check_each(&grad.w, &SMOOTH, "pointwise dw", |i, d| {
            let mut m = conv.clone();
            m.w[i] += d;
            probe(&m.forward(&x), &r)
        });
        check_each(&grad.b, &SMOOTH, "pointwise db", |i, d| {
            let mut m = conv.clone();
            m.b[i] += d;
            probe(&m.forward(&x), &r)
        });
    }

    #[test]
    fn depthwise_gradients_match_finite_differences() {
        let mut rng = SmallRng::seed_from_u64(2);
        for k in [3, 5] {
            let c = 3;
            let conv = Depthwise {
                c,
                k,
                w: random(&mut rng, c * k * k, 0.5),
                b: random(&mut rng, c, 0.5),
            };
            let x = act(&mut rng, 4, 5, c);
            let r = act(&mut rng, 4, 5, c);
            let mut grad = Depthwise::zeros(c, k);
            let dx = conv.backward(&x, &r, &mut grad);
            check_each(&dx.data, &SMOOTH, "depthwise dx", |i, d| {
                let mut m = x.clone();
                m.data[i] += d;
                probe(&conv.forward(&m), &r)
            });
            check_each(&grad.w, &SMOOTH, "depthwise dw", |i, d| {
                let mut m = conv.clone();
                m.w[i] += d;
                probe(&m.forward(&x), &r)
            });
            check_each(&grad.b, &SMOOTH, "depthwise db", |i, d| {
                let mut m = conv.clone();
                m.b[i] += d;
                probe(&m.forward(&x), &r)
            });
        }
    }

    #[test]
    fn depthwise_forward_is_a_zero_padded_convolution() {
        // One channel, 3 × 3 of ones over a 3 × 3 input of ones: each output counts the
        // taps inside (4 at the corners, 6 on the edges, 9 in the middle), plus the bias.
        let conv = Depthwise {
            c: 1,
            k: 3,
            w: vec![1.0; 9],
            b: vec![0.5],
        };
        let x = Act {
            h: 3,
            w: 3,
            c: 1,
            data: vec![1.0; 9],
        };
        let y = conv.forward(&x);
        assert_eq!(y.data, vec![4.5, 6.5, 4.5, 6.5, 9.5, 6.5, 4.5, 6.5, 4.5]);
    }

    #[test]
    fn relu6_pool_and_cross_entropy_gradients() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut x = act(&mut rng, 2, 3, 4);
        x.data.iter_mut().for_each(|v| *v *= 8.0);
        // Keep away from the kinks, where the finite difference is not the derivative.
        x.data.iter_mut().for_each(|v| {
            if v.abs() < 0.05 || (v.abs() - 6.0).abs() < 0.05 {
                *v += 0.2
            }
        });
        let r = act(&mut rng, 2, 3, 4);
        let moved = |i: usize, d: f32| {
            let mut m = x.clone();
            m.data[i] += d;
            m
        };
        let dx = relu6_backward(&x, &r);
        check_each(&dx.data, &SMOOTH, "relu6", |i, d| {
            probe(&relu6(&moved(i, d)), &r)
        });
        let dv = random(&mut rng, 4, 1.0);
        let dx = pool_backward(&x, &dv);
        check_each(&dx.data, &SMOOTH, "pool", |i, d| {
            let v = pool(&moved(i, d));
            v.iter().zip(&dv).map(|(a, b)| f64::from(a * b)).sum()
        });
        let z = random(&mut rng, 6, 2.0);
        let (loss, dz) = cross_entropy(&z, 2);
        assert!(loss > 0.0);
        assert!(
            dz.iter().sum::<f32>().abs() < 1e-5,
            "softmax − one-hot sums to 0"
        );
        check_each(&dz, &SMOOTH, "cross-entropy", |i, d| {
            let mut m = z.clone();
            m[i] += d;
            f64::from(cross_entropy(&m, 2).0)
        });
        let (_, dz) = smoothed_cross_entropy(&z, 2, 0.1);
        check_each(&dz, &SMOOTH, "smoothed cross-entropy", |i, d| {
            let mut m = z.clone();
            m[i] += d;
            f64::from(smoothed_cross_entropy(&m, 2, 0.1).0)
        });
    }
}
