//! adaptd's pointwise (1×1) convolution, as a tract op: a channel-last f32 matrix product with
//! the weights packed once at load and the bias, a clamp (ReLU6) and a residual add fused into
//! its store; AVX-512 or AVX2 + FMA on x86_64, chosen at run time.
//!
//! tract declutters a 1×1 convolution into an `EinSum` (pixels × in-channels by out-channels ×
//! in-channels) plus a bias `Add`, and runs the `EinSum` by packing the activations into its
//! kernel's panel layout before every product. In channel-last layout the activations already
//! are a row-major `[pixels, in-channels]` matrix, so this op reads them in place: each output
//! tile is `MR` pixels × 32 out-channels, one in-channel at a time, the pixel's value broadcast
//! against a 32-wide row of the packed weights. [`replace_pointwise`] swaps every such `EinSum`
//! (with what follows it) for this op. Like [`super::depthwise`], nothing here is a fork of
//! tract: it is an op written against tract's public `TypedOp` / `EvalOp` traits.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

/// Out-channels per packed panel (two AVX-512 vectors, four AVX2 ones).
const NR: usize = 32;
/// Bytes of activations a block of rows may take so that it stays in L2 while every panel
/// passes over it.
#[cfg(target_arch = "x86_64")]
const ROW_BLOCK_BYTES: usize = 96 * 1024;

/// Which vector kernel this CPU runs (x86_64 only: elsewhere tract's products run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    Avx512,
    Avx2Fma,
}

fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Some(Isa::Avx512);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some(Isa::Avx2Fma);
        }
    }
    None
}

/// Whether this CPU runs a vectorised kernel (the rewrite is only worth it then: elsewhere,
/// tract's own matrix products, hand-written for NEON on aarch64, are the faster choice).
pub fn available() -> bool {
    isa().is_some()
}

/// The op: `out[m, o] = clamp(bias[o] + Σ_i x[m, i] · w[o, i], lo, hi) (+ residual[m, o])`,
/// where `m` runs over every leading axis of the channel-last input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NhwcPointwise {
    /// Output shape: concrete for an image, with the sequence length symbolic for text.
    shape: TVec<TDim>,
    /// For each output axis but the last, the input axis it is (`None`: an added axis of 1).
    rows_from: TVec<Option<usize>>,
    /// In-channels, out-channels.
    k: usize,
    n: usize,
    /// `[panels][k][NR]`: out-channels `p·NR..p·NR+NR` of in-channel `i` at `(p·k + i)·NR`,
    /// zero past `n`.
    packed: Arc<Tensor>,
    /// `[panels · NR]`, zero past `n`.
    bias: Arc<Tensor>,
    /// Output clamp as f32 bits, so the op stays `Eq + Hash`.
    clamp: (u32, u32),
    /// Whether a second input is added after the clamp.
    residual: bool,
}

impl NhwcPointwise {
    /// The op from `[n][k]` (out-channel-major) weights and an `n`-long bias, writing an
    /// output of `shape` (its last axis `n`).
    pub fn new(
        k: usize,
        weights_ok: &[f32],
        bias: &[f32],
        shape: TVec<TDim>,
    ) -> TractResult<NhwcPointwise> {
        let n = bias.len();
        ensure!(k > 0 && n > 0, "pointwise with {k} in and {n} out channels");
        ensure!(
            shape.last() == Some(&n.to_dim()),
            "pointwise output shape {shape:?} for {n} channels"
        );
        ensure!(
            weights_ok.len() == n * k,
            "pointwise weights: {} values",
            weights_ok.len()
        );
        let panels = n.div_ceil(NR);
        let mut packed = vec![0f32; panels * k * NR];
        for o in 0..n {
            let (p, j) = (o / NR, o % NR);
            for i in 0..k {
                packed[(p * k + i) * NR + j] = weights_ok[o * k + i];
            }
        }
        let mut b = vec![0f32; panels * NR];
        b[..n].copy_from_slice(bias);
        // By default the rows are the input's, in order.
        let rows_from = (0..shape.len() - 1).map(Some).collect();
        Ok(NhwcPointwise {
            shape,
            rows_from,
            k,
            n,
            packed: Arc::new(tensor1(&packed)),
            bias: Arc::new(tensor1(&b)),
            clamp: (f32::NEG_INFINITY.to_bits(), f32::INFINITY.to_bits()),
            residual: false,
        })
    }

    /// The same op with `[lo, hi]` applied to its output (on top of any clamp it has).
    pub fn clamped(&self, lo: f32, hi: f32) -> NhwcPointwise {
        let (l, h) = self.bounds();
        NhwcPointwise {
            clamp: (l.max(lo).to_bits(), h.min(hi).to_bits()),
            ..self.clone()
        }
    }

    /// The output clamp `(lo, hi)`; `(-inf, inf)` when nothing is fused.
    pub fn bounds(&self) -> (f32, f32) {
        (f32::from_bits(self.clamp.0), f32::from_bits(self.clamp.1))
    }

    /// Rows of the product: every output axis but the last.
    fn rows(&self) -> TDim {
        self.shape[..self.shape.len() - 1].iter().product()
    }

    /// In-channels (`k`) and out-channels (`n`) of the product.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Runs on a `[m, k]` input into `out` (`[m, n]`), adding `residual` (`[m, n]`) if given.
    pub fn run(&self, x: &[f32], residual: Option<&[f32]>, out: &mut [f32]) -> TractResult<()> {
        ensure!(
            x.len().is_multiple_of(self.k),
            "pointwise input: {} values",
            x.len()
        );
        self.run_rows(x.len() / self.k, x, residual, out)
    }

    /// The output shape for an input of `input` shape.
    fn output_shape(&self, input: &[usize]) -> TVec<usize> {
        let mut s: TVec<usize> = self
            .rows_from
            .iter()
            .map(|from| from.and_then(|a| input.get(a).copied()).unwrap_or(1))
            .collect();
        s.push(self.n);
        s
    }

    /// [`NhwcPointwise::run`] on `m` rows instead of the op's own count (a convolution runs
    /// its patches through the product a block of rows at a time).
    pub fn run_rows(
        &self,
        m: usize,
        x: &[f32],
        residual: Option<&[f32]>,
        out: &mut [f32],
    ) -> TractResult<()> {
        let (k, n) = (self.k, self.n);
        ensure!(x.len() == m * k, "pointwise input: {} values", x.len());
        ensure!(out.len() == m * n, "pointwise output: {} values", out.len());
        if let Some(r) = residual {
            ensure!(r.len() == m * n, "pointwise residual: {} values", r.len());
        }
        let (pv, bv) = (
            self.packed.try_as_plain_ram()?,
            self.bias.try_as_plain_ram()?,
        );
        let (w, b) = (pv.as_slice::<f32>()?, bv.as_slice::<f32>()?);
        let (lo, hi) = self.bounds();
        let job = Job {
            m,
            k,
            n,
            x,
            w,
            b,
            lo,
            hi,
            residual,
        };
        match isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX-512F (checked by `isa`); the slice lengths were checked
            // against `m`, `k`, `n` above and the packed ones come from `new`.
            Some(Isa::Avx512) => unsafe { avx512::run(&job, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, with AVX2 and FMA.
            Some(Isa::Avx2Fma) => unsafe { avx2::run(&job, out) },
            _ => portable(&job, out),
        }
        Ok(())
    }
}

/// One product's operands, lengths checked.
struct Job<'a> {
    m: usize,
    k: usize,
    n: usize,
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    lo: f32,
    hi: f32,
    residual: Option<&'a [f32]>,
}

impl Job<'_> {
    /// Rows per block: as many as keep the block's activations in L2, a multiple of `mr`.
    #[cfg(target_arch = "x86_64")]
    fn row_block(&self, mr: usize) -> usize {
        let rows = ROW_BLOCK_BYTES / (4 * self.k);
        (rows / mr).max(1) * mr
    }
}

/// `v` limited to `[lo, hi]`; NaN stays NaN, as in the vector paths (`max(lo, v)` returns its
/// second operand when either is NaN).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// Scalar version: the reference for the tests, and the path on any CPU without a kernel. The
/// same order of additions as the vector paths (bias first, then in-channels in order).
fn portable(j: &Job, out: &mut [f32]) {
    for r in 0..j.m {
        let xr = &j.x[r * j.k..(r + 1) * j.k];
        for o in 0..j.n {
            let (p, c) = (o / NR, o % NR);
            let mut acc = j.b[o];
            for (i, xv) in xr.iter().enumerate() {
                acc = xv.mul_add(j.w[(p * j.k + i) * NR + c], acc);
            }
            let mut v = clamp(acc, j.lo, j.hi);
            if let Some(res) = j.residual {
                v += res[r * j.n + o];
            }
            out[r * j.n + o] = v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Index loops on purpose: see `tile`.
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use super::{Job, NR};
    use std::arch::x86_64::*;

    /// Pixels per tile: 8 × 2 accumulators leave registers for the weights.
    const MR: usize = 8;

    /// # Safety
    /// The CPU must have AVX-512F; the slices must have the lengths `j` implies.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn run(j: &Job, out: &mut [f32]) {
        let block = j.row_block(MR);
        let panels = j.n.div_ceil(NR);
        let mut r0 = 0;
        while r0 < j.m {
            let r1 = (r0 + block).min(j.m);
            for p in 0..panels {
                let cols = (j.n - p * NR).min(NR);
                let mut r = r0;
                while r < r1 {
                    let rows = (r1 - r).min(MR);
                    match (rows, cols > 16) {
                        (8, true) => tile::<8, 2>(j, r, p, cols, out),
                        (8, false) => tile::<8, 1>(j, r, p, cols, out),
                        (7, true) => tile::<7, 2>(j, r, p, cols, out),
                        (7, false) => tile::<7, 1>(j, r, p, cols, out),
                        (6, true) => tile::<6, 2>(j, r, p, cols, out),
                        (6, false) => tile::<6, 1>(j, r, p, cols, out),
                        (5, true) => tile::<5, 2>(j, r, p, cols, out),
                        (5, false) => tile::<5, 1>(j, r, p, cols, out),
                        (4, true) => tile::<4, 2>(j, r, p, cols, out),
                        (4, false) => tile::<4, 1>(j, r, p, cols, out),
                        (3, true) => tile::<3, 2>(j, r, p, cols, out),
                        (3, false) => tile::<3, 1>(j, r, p, cols, out),
                        (2, true) => tile::<2, 2>(j, r, p, cols, out),
                        (2, false) => tile::<2, 1>(j, r, p, cols, out),
                        (_, true) => tile::<1, 2>(j, r, p, cols, out),
                        (_, false) => tile::<1, 1>(j, r, p, cols, out),
                    }
                    r += rows;
                }
            }
            r0 = r1;
        }
    }

    /// Rows `r..r + R` × out-channels `p·NR..p·NR + cols` (`V` 16-wide vectors cover `cols`).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const R: usize, const V: usize>(
        j: &Job,
        r: usize,
        p: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        let (k, n) = (j.k, j.n);
        let xp = j.x.as_ptr().add(r * k);
        let wp = j.w.as_ptr().add(p * k * NR);
        let bp = j.b.as_ptr().add(p * NR);
        // Plain index loops only: an iterator adapter or a closure here is a function without
        // the target feature, which the compiler may leave uninlined inside the hot loop.
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for v in 0..V {
            let b = _mm512_loadu_ps(bp.add(16 * v));
            for row in 0..R {
                acc[row][v] = b;
            }
        }
        let mut w = [_mm512_setzero_ps(); V];
        for i in 0..k {
            let wi = wp.add(i * NR);
            for v in 0..V {
                w[v] = _mm512_loadu_ps(wi.add(16 * v));
            }
            for row in 0..R {
                let xv = _mm512_set1_ps(*xp.add(row * k + i));
                for v in 0..V {
                    acc[row][v] = _mm512_fmadd_ps(xv, w[v], acc[row][v]);
                }
            }
        }
        let (lo, hi) = (_mm512_set1_ps(j.lo), _mm512_set1_ps(j.hi));
        let mut masks = [0 as __mmask16; V];
        for v in 0..V {
            let left = cols.saturating_sub(16 * v).min(16);
            masks[v] = ((1u32 << left) - 1) as __mmask16;
        }
        let op = out.as_mut_ptr().add(r * n + p * NR);
        let rp = match j.residual {
            Some(res) => res.as_ptr().add(r * n + p * NR),
            None => std::ptr::null(),
        };
        for row in 0..R {
            for v in 0..V {
                let mut y = _mm512_min_ps(hi, _mm512_max_ps(lo, acc[row][v]));
                if !rp.is_null() {
                    let res = _mm512_maskz_loadu_ps(masks[v], rp.add(row * n + 16 * v));
                    y = _mm512_add_ps(y, res);
                }
                _mm512_mask_storeu_ps(op.add(row * n + 16 * v), masks[v], y);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Index loops on purpose: see `tile`.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use super::{Job, NR};
    use std::arch::x86_64::*;

    /// Pixels per tile: 6 × 2 accumulators, two weight vectors and a broadcast fill the 16
    /// registers.
    const MR: usize = 6;

    /// # Safety
    /// The CPU must have AVX2 and FMA; the slices must have the lengths `j` implies.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run(j: &Job, out: &mut [f32]) {
        let block = j.row_block(MR);
        let panels = j.n.div_ceil(NR);
        let mut r0 = 0;
        while r0 < j.m {
            let r1 = (r0 + block).min(j.m);
            for p in 0..panels {
                // A panel is two halves of 16 out-channels for this kernel.
                for half in 0..2 {
                    let c0 = p * NR + 16 * half;
                    if c0 >= j.n {
                        break;
                    }
                    let cols = (j.n - c0).min(16);
                    let mut r = r0;
                    while r < r1 {
                        let rows = (r1 - r).min(MR);
                        match rows {
                            6 => tile::<6>(j, r, p, half, cols, out),
                            5 => tile::<5>(j, r, p, half, cols, out),
                            4 => tile::<4>(j, r, p, half, cols, out),
                            3 => tile::<3>(j, r, p, half, cols, out),
                            2 => tile::<2>(j, r, p, half, cols, out),
                            _ => tile::<1>(j, r, p, half, cols, out),
                        }
                        r += rows;
                    }
                }
            }
            r0 = r1;
        }
    }

    /// Rows `r..r + R` × out-channels `p·NR + 16·half ..` (`cols` of them, at most 16).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        j: &Job,
        r: usize,
        p: usize,
        half: usize,
        cols: usize,
        out: &mut [f32],
    ) {
        let (k, n) = (j.k, j.n);
        let c0 = p * NR + 16 * half;
        let xp = j.x.as_ptr().add(r * k);
        let wp = j.w.as_ptr().add(p * k * NR + 16 * half);
        let bp = j.b.as_ptr().add(c0);
        // Plain index loops only, as in the AVX-512 tile.
        let bias = [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))];
        let mut acc = [bias; R];
        for i in 0..k {
            let wi = wp.add(i * NR);
            let w0 = _mm256_loadu_ps(wi);
            let w1 = _mm256_loadu_ps(wi.add(8));
            for row in 0..R {
                let xv = _mm256_broadcast_ss(&*xp.add(row * k + i));
                acc[row][0] = _mm256_fmadd_ps(xv, w0, acc[row][0]);
                acc[row][1] = _mm256_fmadd_ps(xv, w1, acc[row][1]);
            }
        }
        let (lo, hi) = (_mm256_set1_ps(j.lo), _mm256_set1_ps(j.hi));
        let op = out.as_mut_ptr().add(r * n + c0);
        let rp = match j.residual {
            Some(res) => res.as_ptr().add(r * n + c0),
            None => std::ptr::null(),
        };
        for row in 0..R {
            let y = [
                _mm256_min_ps(hi, _mm256_max_ps(lo, acc[row][0])),
                _mm256_min_ps(hi, _mm256_max_ps(lo, acc[row][1])),
            ];
            if cols == 16 {
                for v in 0..2 {
                    let mut y = y[v];
                    if !rp.is_null() {
                        y = _mm256_add_ps(y, _mm256_loadu_ps(rp.add(row * n + 8 * v)));
                    }
                    _mm256_storeu_ps(op.add(row * n + 8 * v), y);
                }
            } else {
                // A partial last panel: through a buffer, only the real channels stored.
                let mut buf = [0f32; 16];
                _mm256_storeu_ps(buf.as_mut_ptr(), y[0]);
                _mm256_storeu_ps(buf.as_mut_ptr().add(8), y[1]);
                for c in 0..cols {
                    let res = if rp.is_null() {
                        0.0
                    } else {
                        *rp.add(row * n + c)
                    };
                    *op.add(row * n + c) = buf[c] + res;
                }
            }
        }
    }
}

impl Op for NhwcPointwise {
    fn name(&self) -> StaticName {
        "AdaptdPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let (lo, hi) = self.bounds();
        Ok(vec![format!(
            "{}x{} by {}x{} clamp [{lo}, {hi}] residual {}",
            self.rows(),
            self.k,
            self.k,
            self.n,
            self.residual
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for NhwcPointwise {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 + usize::from(self.residual));
        // SAFETY: `run` writes every element of the output before anything reads it (tract's
        // own ops allocate their outputs the same way); zeroing it first cost a pass over it.
        let shape = self.output_shape(inputs[0].shape());
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let xv = inputs[0].try_as_plain_ram()?;
        let rv = match self.residual {
            true => Some(inputs[1].try_as_plain_ram()?),
            false => None,
        };
        let residual = match &rv {
            Some(r) => Some(r.as_slice::<f32>()?),
            None => None,
        };
        self.run(
            xv.as_slice::<f32>()?,
            residual,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for NhwcPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 + usize::from(self.residual));
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()));
        Ok(tvec!(f32::fact(self.shape.clone())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        Ok(tvec!((
            Cost::FMA(f32::datum_type()),
            self.rows() * (self.k * self.n)
        )))
    }

    as_op!();
}

/// A float `EinSum` with a constant rank-2 operand: a 1×1 convolution, once decluttered (the
/// weights come second from the ONNX file, first from the model cache).
struct Product {
    /// Which input is the activations; the other is the weights.
    x_ix: usize,
    /// Axis labels of the activations, the weights and the output.
    x: Vec<char>,
    w: Vec<char>,
    y: Vec<char>,
    /// The contracted (in-channel) and the out-channel label.
    i: char,
    o: char,
}

impl Product {
    fn of(model: &TypedModel, node: &TypedNode) -> Option<Product> {
        let einsum = node.op_as::<EinSum>()?;
        if einsum.q_params.is_some()
            || einsum.operating_dt != f32::datum_type()
            || node.inputs.len() != 2
        {
            return None;
        }
        let konst = |ix: usize| {
            let f = model.outlet_fact(node.inputs[ix]).ok()?;
            Some(f.konst.is_some() && f.rank() == 2)
        };
        let x_ix = match (konst(0)?, konst(1)?) {
            (false, true) => 0,
            (true, false) => 1,
            _ => return None,
        };
        let (ins, outs) = einsum.axes.to_strs();
        let chars = |s: &str| s.chars().collect::<Vec<char>>();
        let (x, w, y) = (
            chars(ins.get(x_ix)?),
            chars(ins.get(1 - x_ix)?),
            chars(outs.first()?),
        );
        // The contracted axis is the weights' one that the output lacks.
        let i = *w.iter().find(|c| !y.contains(c))?;
        let o = *w.iter().find(|c| **c != i)?;
        (x.contains(&i) && !x.contains(&o) && y.contains(&o)).then_some(Product {
            x_ix,
            x,
            w,
            y,
            i,
            o,
        })
    }

    /// Positions of the in-channel axis in the activations and of the out-channel axis in the
    /// output.
    fn channel_axes(&self) -> (usize, usize) {
        let at = |v: &[char], c: char| v.iter().position(|&x| x == c).unwrap_or(0);
        (at(&self.x, self.i), at(&self.y, self.o))
    }
}

/// Moves the channel axis of every 1×1 convolution's input and output last, with tract's own
/// `change_axes` propagation: an exact layout rewrite. After [`super::channel_last_depthwise`]
/// the products still alternate layouts (a projection writes channel-first, the next expansion
/// reads it), which tract's matrix products absorb by packing; [`NhwcPointwise`] reads and
/// writes channel-last only.
pub fn channel_last_products(model: &mut TypedModel) -> TractResult<()> {
    use std::collections::HashSet;
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    let mut tried: HashSet<(String, bool)> = HashSet::new();
    loop {
        let mut patch = None;
        for node in model.nodes() {
            let Some(product) = Product::of(model, node) else {
                continue;
            };
            let (i, o) = product.channel_axes();
            let x_in = node.inputs[product.x_ix];
            let (x_rank, y_rank) = (product.x.len(), product.y.len());
            if o + 1 != y_rank && tried.insert((node.name.clone(), true)) {
                let out = OutletId::new(node.id, 0);
                patch = super::graph::propagate(model, out, AxisOp::Move(o, y_rank - 1))?;
            } else if i + 1 != x_rank && tried.insert((node.name.clone(), false)) {
                patch = super::graph::propagate(model, x_in, AxisOp::Move(i, x_rank - 1))?;
            }
            if patch.is_some() {
                break;
            }
        }
        let Some(patch) = patch else {
            return Ok(());
        };
        patch.apply(model)?;
        *model = std::mem::take(model).into_compact()?;
    }
}

/// The op for a float `EinSum` that is a channel-last 1×1 convolution or dense layer
/// (`…i, oi -> …o` or `…i, io -> …o`, every other axis passing through in order, the rows
/// concrete or symbolic) with constant weights, and the activations' outlet it reads; `None`
/// for anything else.
fn from_einsum(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(NhwcPointwise, OutletId)>> {
    let Some(Product {
        x_ix,
        x,
        w,
        y,
        i,
        o,
    }) = Product::of(model, node)
    else {
        return Ok(None);
    };
    let (Some((&xi, x_rows)), Some((&yo, y_rows))) = (x.split_last(), y.split_last()) else {
        return Ok(None);
    };
    if xi != i || yo != o {
        return Ok(None);
    }
    let out_major = w[..] == [o, i];
    let fact = model.outlet_fact(node.inputs[x_ix])?;
    let out_fact = model.outlet_fact(OutletId::new(node.id, 0))?;
    if fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let (shape, out_shape) = (fact.shape.to_tvec(), out_fact.shape.to_tvec());
    // Leading axes pass through in order; axes of size 1 may be dropped or added
    // (`NHWI,OI->HWO`, `HWI,OI->NHWO`, `amk,kn->mn`).
    let common = |a: &[char], b: &[char], dims: &[TDim]| -> Option<Vec<char>> {
        let unit = a.iter().zip(dims).all(|(c, d)| d.is_one() || b.contains(c));
        unit.then(|| a.iter().copied().filter(|c| b.contains(c)).collect())
    };
    let (Some(xc), Some(yc)) = (
        common(x_rows, y_rows, &shape),
        common(y_rows, x_rows, &out_shape),
    ) else {
        return Ok(None);
    };
    if xc != yc {
        return Ok(None);
    }
    let rows_from = y_rows
        .iter()
        .map(|c| x_rows.iter().position(|x| x == c))
        .collect();
    let Some(kernel) = model.outlet_fact(node.inputs[1 - x_ix])?.konst.clone() else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type() || kernel.rank() != 2 {
        return Ok(None);
    }
    let kv = kernel.to_plain_array_view::<f32>()?;
    let (n, k) = match out_major {
        true => (kv.shape()[0], kv.shape()[1]),
        false => (kv.shape()[1], kv.shape()[0]),
    };
    if shape.last() != Some(&k.to_dim()) {
        return Ok(None);
    }
    let mut weights = Vec::with_capacity(n * k);
    for oc in 0..n {
        for ic in 0..k {
            weights.push(match out_major {
                true => kv[[oc, ic]],
                false => kv[[ic, oc]],
            });
        }
    }
    let mut op = NhwcPointwise::new(k, &weights, &vec![0.0; n], out_shape)?;
    op.rows_from = rows_from;
    Ok(Some((op, node.inputs[x_ix])))
}

/// A constant `op` node's other operand, as one value per output channel (`n` of them), when it
/// broadcasts only along the last axis (a conv bias reshaped to `[1, …, 1, n]`) or is a scalar.
fn channel_operand(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    n: usize,
) -> Option<Vec<f32>> {
    let other = node.inputs.iter().find(|&&i| i != from)?;
    let k = model.outlet_fact(*other).ok()?.konst.clone()?;
    let k = k.cast_to::<f32>().ok()?;
    let shape = k.shape();
    let per_channel = shape
        .split_last()
        .is_some_and(|(&l, rest)| l == n && rest.iter().all(|&d| d == 1));
    let scalar = shape.iter().all(|&d| d == 1);
    let kv = k.try_as_plain_ram().ok()?;
    let v = kv.as_slice::<f32>().ok()?;
    match (per_channel, scalar) {
        (true, _) => Some(v.to_vec()),
        (false, true) => Some(vec![*v.first()?; n]),
        _ => None,
    }
}

/// Replaces every channel-last float 1×1 convolution in `model` (a decluttered `EinSum`) with
/// [`NhwcPointwise`], fusing what directly follows it: the bias `Add`, `Max(·, lo)` /
/// `Min(·, hi)` (ReLU6 once decluttered), and last a residual `Add` of an earlier activation.
/// Returns how many were replaced. Call only when [`available`].
pub fn replace_pointwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    let order = model.eval_order()?;
    // Nodes a patch adds get ids past these; each replaces one earlier in the order.
    let original = model.nodes().len();
    for (pos, &id) in order.iter().enumerate() {
        let node = model.node(id);
        let Some((mut op, x)) = from_einsum(model, node)? else {
            continue;
        };
        let outputs = model.output_outlets()?.to_vec();
        let mut last = OutletId::new(id, 0);
        let mut bias_done = false;
        let mut residual = None;
        loop {
            let succ = model.outlet_successors(last);
            if succ.len() != 1 || outputs.contains(&last) {
                break;
            }
            let next = model.node(succ[0].node);
            let Some(bin) = next.op_as::<TypedBinOp>() else {
                break;
            };
            let same_shape = model.outlet_fact(OutletId::new(next.id, 0))?.shape
                == model.outlet_fact(last)?.shape;
            if !same_shape || next.inputs.len() != 2 {
                break;
            }
            if bin.0.is::<Add>() {
                if let Some(b) = channel_operand(model, next, last, op.n) {
                    // A constant: the bias, before any clamp (after one it is not a bias).
                    if bias_done || op.bounds() != (f32::NEG_INFINITY, f32::INFINITY) {
                        break;
                    }
                    let mut bias = op.bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                    for (acc, b) in bias.iter_mut().zip(&b) {
                        *acc += b;
                    }
                    op.bias = Arc::new(tensor1(&bias));
                    bias_done = true;
                    last = OutletId::new(next.id, 0);
                    continue;
                }
                // An activation computed before this product (earlier in the evaluation
                // order, so it cannot depend on it): the residual, last in the chain.
                let other = *next
                    .inputs
                    .iter()
                    .find(|&&i| i != last)
                    .context("add input")?;
                let earlier = other.node >= original || order[..pos].contains(&other.node);
                let fact = model.outlet_fact(other)?;
                if earlier
                    && fact.datum_type == f32::datum_type()
                    && fact.shape.to_tvec() == op.shape
                {
                    op.residual = true;
                    residual = Some(other);
                    last = OutletId::new(next.id, 0);
                }
                break;
            }
            let Some(fused) = super::graph::clamp_step(model, next, last, op.bounds())? else {
                break;
            };
            op = op.clamped(fused.0, fused.1);
            last = OutletId::new(next.id, 0);
        }
        let mut inputs = vec![x];
        inputs.extend(residual);
        let name = node.name.clone();
        super::graph::splice(model, &name, op, &inputs, last)?;
        replaced += 1;
    }
    if replaced > 0 {
        *model = std::mem::take(model).into_compact()?;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backbone::graph::test_values as values;

    /// Straight from the definition, in f64.
    fn reference(
        (m, k, n): (usize, usize, usize),
        x: &[f32],
        w: &[f32],
        b: &[f32],
        (lo, hi): (f32, f32),
        res: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for o in 0..n {
                let mut acc = f64::from(b[o]);
                for i in 0..k {
                    acc += f64::from(x[r * k + i]) * f64::from(w[o * k + i]);
                }
                let add = res.map_or(0.0, |res| res[r * n + o]);
                out[r * n + o] = (acc as f32).max(lo).min(hi) + add;
            }
        }
        out
    }

    fn op(m: usize, k: usize, n: usize, seed: u64) -> (NhwcPointwise, Vec<f32>, Vec<f32>) {
        let w = values(n * k, seed);
        let b = values(n, seed + 1);
        let shape = tvec![m.to_dim(), n.to_dim()];
        (NhwcPointwise::new(k, &w, &b, shape).expect("op"), w, b)
    }

    #[test]
    fn matches_the_definition_on_every_path() {
        // (m, k, n): rows hit every tile height's tail (8 and 6 high), out-channels every
        // panel width (32, 16 and partial ones), in-channels one, few and many (the row block
        // shrinks to a few rows at k = 1152); the model's shapes are among them.
        let cases = [
            (12544, 16, 96),
            (49, 1152, 320),
            (196, 112, 672),
            (13, 40, 24),
            (7, 1, 1),
            (1, 3, 17),
            (29, 33, 45),
            (50, 1152, 1280),
        ];
        for (ci, &(m, k, n)) in cases.iter().enumerate() {
            let (base, w, b) = op(m, k, n, 10 * ci as u64);
            let x = values(m * k, 10 * ci as u64 + 2);
            let res = values(m * n, 10 * ci as u64 + 3);
            for (clamp, residual) in [
                ((f32::NEG_INFINITY, f32::INFINITY), false),
                ((0.0, 0.5), false),
                ((f32::NEG_INFINITY, f32::INFINITY), true),
            ] {
                let mut op = base.clamped(clamp.0, clamp.1);
                op.residual = residual;
                let r = residual.then_some(&res[..]);
                let want = reference((m, k, n), &x, &w, &b, clamp, r);
                let mut got = vec![f32::NAN; m * n];
                op.run(&x, r, &mut got).expect("run");
                let (pv, bv) = (
                    op.packed.try_as_plain_ram().expect("w"),
                    op.bias.try_as_plain_ram().expect("b"),
                );
                let job = Job {
                    m,
                    k,
                    n,
                    x: &x,
                    w: pv.as_slice().expect("w"),
                    b: bv.as_slice().expect("b"),
                    lo: clamp.0,
                    hi: clamp.1,
                    residual: r,
                };
                let mut scalar = vec![f32::NAN; m * n];
                portable(&job, &mut scalar);
                let mut paths = vec![("dispatched", got), ("portable", scalar)];
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut v = vec![f32::NAN; m * n];
                    // SAFETY: the CPU has AVX2 and FMA; `job` is consistent (built as `run` does).
                    unsafe { avx2::run(&job, &mut v) };
                    paths.push(("avx2", v));
                }
                for (name, got) in paths {
                    for (ix, (g, r)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-5 * (1.0 + r.abs()) * (k as f32).sqrt();
                        assert!(
                            (g - r).abs() <= tol,
                            "case {ci} {name} clamp {clamp:?} residual {residual} [{ix}]: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn nan_propagates_through_the_clamp() {
        let (m, k, n) = (9, 4, 41);
        let (op, _, _) = op(m, k, n, 7);
        let op = op.clamped(0.0, 6.0);
        let mut x = vec![1.0f32; m * k];
        x[4 * k + 2] = f32::NAN; // every output channel of row 4
        let mut out = vec![0f32; m * n];
        op.run(&x, None, &mut out).expect("run");
        for (ix, o) in out.iter().enumerate() {
            assert_eq!(o.is_nan(), ix / n == 4, "[{ix}] {o}");
        }
    }

    #[test]
    fn refuses_inconsistent_operands() {
        let shape = |m: usize, n: usize| tvec![m.to_dim(), n.to_dim()];
        assert!(NhwcPointwise::new(3, &[0.0; 5], &[0.0; 2], shape(4, 2)).is_err());
        assert!(NhwcPointwise::new(3, &[0.0; 6], &[0.0; 1], shape(4, 2)).is_err());
        assert!(NhwcPointwise::new(0, &[], &[0.0; 2], shape(4, 2)).is_err());
        let (op, _, _) = op(4, 3, 2, 1);
        let mut out = vec![0f32; 8];
        assert!(op.run(&[0.0; 11], None, &mut out).is_err());
        assert!(op.run(&[0.0; 12], Some(&[0.0; 3]), &mut out).is_err());
        assert!(op.run(&[0.0; 12], None, &mut out[..7]).is_err());
    }
}
