//! adaptd's depthwise convolution, as a tract op: channel-last f32, vectorised across channels
//! with AVX2 + FMA on x86_64, with a following ReLU6 (or any clamp) fused into it.
//!
//! tract 0.23.9 has a channel-inner depthwise kernel for aarch64 only; on x86_64 its channel-last
//! path is a plain loop compiled for baseline SSE2. [`replace_depthwise`] swaps every float
//! depthwise `Conv` that [`super::channel_last_depthwise`] left channel-last for this op, on CPUs
//! with AVX2 and FMA. Nothing here is a fork of tract: it is an op written against tract's public
//! `TypedOp` / `EvalOp` traits, like any op a tract user adds.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

/// Most taps one output point may have (a 7×7 kernel is 49, an 8×8 one 64).
const MAX_TAPS: usize = 64;

/// Shape of one channel-last depthwise convolution, all concrete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Batch; `has_n` says whether the tensors carry the axis (tract removes it when it is 1).
    pub n: usize,
    pub has_n: bool,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub dilation: (usize, usize),
    /// Zero padding before the first row and column (after is implied by `oh`, `ow`).
    pub pad: (usize, usize),
    pub oh: usize,
    pub ow: usize,
}

impl Geometry {
    fn output_shape(&self) -> TVec<usize> {
        let mut s: TVec<usize> = tvec![self.oh, self.ow, self.c];
        if self.has_n {
            s.insert(0, self.n);
        }
        s
    }
}

/// The op: `out[n, y, x, c] = clamp(bias[c] + Σ w[tap, c] · in[n, y·s + ky·d − p, …, c])`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NhwcDepthwise {
    geo: Geometry,
    /// Tap-major weights, `[kh · kw, C]`.
    weights: Arc<Tensor>,
    /// `[C]`.
    bias: Arc<Tensor>,
    /// Output clamp (ReLU6 is (0, 6)) as f32 bits, so the op stays `Eq + Hash`.
    clamp: (u32, u32),
}

impl NhwcDepthwise {
    /// The op for `geo`, from OIHW-ordered weights (`[C][kh][kw]`, flattened) and a bias.
    pub fn new(geo: Geometry, oihw: &[f32], bias: &[f32]) -> TractResult<NhwcDepthwise> {
        let taps = geo.kh * geo.kw;
        ensure!(
            oihw.len() == geo.c * taps,
            "depthwise weights: {} values",
            oihw.len()
        );
        ensure!(bias.len() == geo.c, "depthwise bias: {} values", bias.len());
        ensure!(taps <= MAX_TAPS, "depthwise kernel with {taps} taps");
        ensure!(geo.stride.0 * geo.stride.1 * geo.dilation.0 * geo.dilation.1 > 0);
        let mut w = vec![0f32; oihw.len()];
        for c in 0..geo.c {
            for t in 0..taps {
                w[t * geo.c + c] = oihw[c * taps + t];
            }
        }
        Ok(NhwcDepthwise {
            geo,
            weights: Arc::new(tensor1(&w)),
            bias: Arc::new(tensor1(bias)),
            clamp: (f32::NEG_INFINITY.to_bits(), f32::INFINITY.to_bits()),
        })
    }

    /// The same op with `[lo, hi]` applied to its output (on top of any clamp it has).
    pub fn clamped(&self, lo: f32, hi: f32) -> NhwcDepthwise {
        let (l, h) = self.bounds();
        NhwcDepthwise {
            clamp: (l.max(lo).to_bits(), h.min(hi).to_bits()),
            ..self.clone()
        }
    }

    /// The output clamp `(lo, hi)`; `(-inf, inf)` when nothing is fused.
    pub fn bounds(&self) -> (f32, f32) {
        (f32::from_bits(self.clamp.0), f32::from_bits(self.clamp.1))
    }

    /// Runs on a `[N?, H, W, C]` input slice into `out` (`[N?, OH, OW, C]`).
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let g = &self.geo;
        ensure!(
            x.len() == g.n * g.h * g.w * g.c,
            "depthwise input: {} values",
            x.len()
        );
        ensure!(
            out.len() == g.n * g.oh * g.ow * g.c,
            "depthwise output: {} values",
            out.len()
        );
        let (wv, bv) = (
            self.weights.try_as_plain_ram()?,
            self.bias.try_as_plain_ram()?,
        );
        let (w, b) = (wv.as_slice::<f32>()?, bv.as_slice::<f32>()?);
        let (lo, hi) = self.bounds();
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked above); every offset `kernel` forms is
            // inside `x`, `w`, `b` and `out`, whose lengths were checked against `g` above.
            unsafe { avx2::kernel(g, x, w, b, lo, hi, out) };
            return Ok(());
        }
        portable(g, x, w, b, lo, hi, out);
        Ok(())
    }
}

/// Whether this CPU runs the vectorised kernel (the rewrite is only worth it then).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Calls `f(weight_offset, input_offset)` for every tap of output point `(n, oy, ox)` that falls
/// inside the input (padding contributes zeros, so it is skipped). Returns how many.
#[inline(always)]
fn taps_of(
    g: &Geometry,
    n: usize,
    oy: usize,
    ox: usize,
    buf: &mut [(usize, usize); MAX_TAPS],
) -> usize {
    let mut nt = 0;
    for ky in 0..g.kh {
        let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pad.0 as isize;
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        for kx in 0..g.kw {
            let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize - g.pad.1 as isize;
            if ix < 0 || ix >= g.w as isize {
                continue;
            }
            buf[nt] = (
                (ky * g.kw + kx) * g.c,
                ((n * g.h + iy as usize) * g.w + ix as usize) * g.c,
            );
            nt += 1;
        }
    }
    nt
}

/// `v` limited to `[lo, hi]`; NaN stays NaN, so a broken activation reaches the non-finite check on
/// the embedding instead of being clamped away. The vector path agrees: `_mm256_max_ps(lo, v)`
/// returns its second operand when either is NaN.
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

/// Scalar version: the reference for the tests, and the path on a CPU without AVX2.
fn portable(g: &Geometry, x: &[f32], w: &[f32], b: &[f32], lo: f32, hi: f32, out: &mut [f32]) {
    let mut taps = [(0usize, 0usize); MAX_TAPS];
    for n in 0..g.n {
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                let nt = taps_of(g, n, oy, ox, &mut taps);
                let o = ((n * g.oh + oy) * g.ow + ox) * g.c;
                let o = &mut out[o..o + g.c];
                o.copy_from_slice(b);
                for &(wo, xo) in &taps[..nt] {
                    for ((o, w), x) in o.iter_mut().zip(&w[wo..wo + g.c]).zip(&x[xo..xo + g.c]) {
                        *o = w.mul_add(*x, *o);
                    }
                }
                for o in o.iter_mut() {
                    *o = clamp(*o, lo, hi);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Index loops on purpose: see `points`.
#[allow(clippy::needless_range_loop)]
mod avx2 {
    use super::{taps_of, Geometry, MAX_TAPS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA; the slices must have the lengths `g` implies.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(
        g: &Geometry,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        lo: f32,
        hi: f32,
        out: &mut [f32],
    ) {
        let (xp, wp, bp, op) = (x.as_ptr(), w.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let c = g.c;
        // Interior points (every tap inside the input) use fixed tap offsets from the point's
        // top-left input corner; only the border recomputes its taps.
        let mut rel = [(0usize, 0usize); MAX_TAPS];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let t = ky * g.kw + kx;
                rel[t] = (t * c, (ky * g.dilation.0 * g.w + kx * g.dilation.1) * c);
            }
        }
        let rel = &rel[..g.kh * g.kw];
        let inside = |o: usize, stride: usize, pad: usize, k: usize, d: usize, len: usize| {
            o * stride >= pad && o * stride - pad + (k - 1) * d < len
        };
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        for n in 0..g.n {
            for oy in 0..g.oh {
                let y_in = inside(oy, g.stride.0, g.pad.0, g.kh, g.dilation.0, g.h);
                let x_in = |ox| inside(ox, g.stride.1, g.pad.1, g.kw, g.dilation.1, g.w);
                let mut ox = 0;
                while ox < g.ow {
                    let o = op.add(((n * g.oh + oy) * g.ow + ox) * c);
                    if y_in && x_in(ox) {
                        let iy = oy * g.stride.0 - g.pad.0;
                        let ix = ox * g.stride.1 - g.pad.1;
                        let base = xp.add(((n * g.h + iy) * g.w + ix) * c);
                        if ox + 1 < g.ow && x_in(ox + 1) {
                            // Two neighbours share every weight load.
                            let next = base.add(g.stride.1 * c);
                            points(c, rel, [base, next], wp, bp, lo, hi, [o, o.add(c)]);
                            ox += 2;
                            continue;
                        }
                        points(c, rel, [base], wp, bp, lo, hi, [o]);
                    } else {
                        let nt = taps_of(g, n, oy, ox, &mut taps);
                        points(c, &taps[..nt], [xp], wp, bp, lo, hi, [o]);
                    }
                    ox += 1;
                }
            }
        }
    }

    /// `N` output points that share their taps' weight loads: for each point `p`,
    /// `os[p][ch] = clamp(b[ch] + Σ w[wo + ch] · xs[p][xo + ch])` over `taps`. `N = 2` for
    /// neighbouring interior points (one weight load feeds two FMAs: the loads, not the FMAs,
    /// bound a single point), `N = 1` for the rest.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn points<const N: usize>(
        c: usize,
        taps: &[(usize, usize)],
        xs: [*const f32; N],
        wp: *const f32,
        bp: *const f32,
        lo: f32,
        hi: f32,
        os: [*mut f32; N],
    ) {
        // Plain index loops only: an iterator adapter or a closure here is a function without
        // the target feature, which the compiler may leave uninlined inside the hot loop.
        let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        let mut cb = 0;
        // 32 channels at a time: four independent accumulators per point hide the FMA latency.
        while cb + 32 <= c {
            let mut acc = [[_mm256_setzero_ps(); 4]; N];
            for j in 0..4 {
                let b = _mm256_loadu_ps(bp.add(cb + 8 * j));
                for p in 0..N {
                    acc[p][j] = b;
                }
            }
            for t in 0..taps.len() {
                let (wo, xo) = taps[t];
                let wv = wp.add(wo + cb);
                let mut w = [_mm256_setzero_ps(); 4];
                for j in 0..4 {
                    w[j] = _mm256_loadu_ps(wv.add(8 * j));
                }
                for p in 0..N {
                    let x = xs[p].add(xo + cb);
                    for j in 0..4 {
                        acc[p][j] = _mm256_fmadd_ps(w[j], _mm256_loadu_ps(x.add(8 * j)), acc[p][j]);
                    }
                }
            }
            for p in 0..N {
                for j in 0..4 {
                    let y = _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc[p][j]));
                    _mm256_storeu_ps(os[p].add(cb + 8 * j), y);
                }
            }
            cb += 32;
        }
        while cb + 8 <= c {
            let mut acc = [_mm256_loadu_ps(bp.add(cb)); N];
            for t in 0..taps.len() {
                let (wo, xo) = taps[t];
                let w = _mm256_loadu_ps(wp.add(wo + cb));
                for p in 0..N {
                    acc[p] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xs[p].add(xo + cb)), acc[p]);
                }
            }
            for p in 0..N {
                _mm256_storeu_ps(
                    os[p].add(cb),
                    _mm256_min_ps(vhi, _mm256_max_ps(vlo, acc[p])),
                );
            }
            cb += 8;
        }
        while cb < c {
            let mut acc = [*bp.add(cb); N];
            for t in 0..taps.len() {
                let (wo, xo) = taps[t];
                let w = *wp.add(wo + cb);
                for p in 0..N {
                    acc[p] = w.mul_add(*xs[p].add(xo + cb), acc[p]);
                }
            }
            for p in 0..N {
                *os[p].add(cb) = super::clamp(acc[p], lo, hi);
            }
            cb += 1;
        }
    }
}

impl Op for NhwcDepthwise {
    fn name(&self) -> StaticName {
        "AdaptdDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        let (lo, hi) = self.bounds();
        Ok(vec![format!(
            "NHWC {}x{}x{} kernel {}x{} stride {:?} dilation {:?} pad {:?} clamp [{lo}, {hi}]",
            g.h, g.w, g.c, g.kh, g.kw, g.stride, g.dilation, g.pad
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for NhwcDepthwise {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        // SAFETY: `run` writes every element of the output before anything reads it (tract's
        // own ops allocate their outputs the same way); zeroing it first cost a pass over it.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.geo.output_shape())? };
        let xv = x.try_as_plain_ram()?;
        self.run(
            xv.as_slice::<f32>()?,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for NhwcDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.geo.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geo;
        let fma = g.n * g.oh * g.ow * g.c * g.kh * g.kw;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma.to_dim())))
    }

    as_op!();
}

/// The op for a float depthwise `Conv` node that runs channel-last on a concrete input, with
/// constant weights and bias; `None` for anything else.
fn from_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<NhwcDepthwise>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    if depthwise_layout(conv) != Some(true) || conv.pool_spec.rank() != 2 {
        return Ok(None);
    }
    let fact = model.outlet_fact(node.inputs[0])?;
    let (Some(shape), true) = (
        fact.shape.as_concrete(),
        fact.datum_type == f32::datum_type(),
    ) else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let ishape = conv.pool_spec.data_format.shape(shape.to_vec())?;
    let (hw, c) = (ishape.hw_dims(), *ishape.c());
    let pads = conv.pool_spec.computed_padding(hw);
    let (strides, dilations) = (conv.pool_spec.strides(), conv.pool_spec.dilations());
    let (kh, kw) = (
        conv.pool_spec.kernel_shape[0],
        conv.pool_spec.kernel_shape[1],
    );
    let geo = Geometry {
        n: ishape.n().copied().unwrap_or(1),
        has_n: ishape.n().is_some(),
        h: hw[0],
        w: hw[1],
        c,
        kh,
        kw,
        stride: (strides[0], strides[1]),
        dilation: (dilations[0], dilations[1]),
        pad: (pads[0].pad_before, pads[1].pad_before),
        oh: pads[0].convoluted,
        ow: pads[1].convoluted,
    };
    if kh * kw > MAX_TAPS || kernel.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    // Weights to OIHW order, `[C][kh][kw]`, whatever the kernel format.
    let oihw = super::graph::oihw_weights(&kernel, conv.kernel_fmt, c, 1)?;
    let bias = super::graph::conv_bias(&bias, c)?;
    NhwcDepthwise::new(geo, &oihw, &bias).map(Some)
}

/// Whether `conv` is a float depthwise convolution (one group per channel) and runs channel-last.
pub(crate) fn depthwise_layout(conv: &tract_onnx::tract_core::ops::cnn::Conv) -> Option<bool> {
    let depthwise = conv.group > 1
        && conv.group == conv.input_channels()
        && conv.group == conv.output_channels()
        && conv.q_params.is_none();
    depthwise.then(|| conv.pool_spec.data_format.c_is_last())
}

/// Replaces every channel-last float depthwise `Conv` in `model` with [`NhwcDepthwise`], fusing
/// a directly following `Max(·, lo)` / `Min(·, hi)` (ReLU6 once decluttered) into it. Returns how
/// many convolutions were replaced. Call only when [`available`].
pub fn replace_depthwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = from_conv(model, node)? else {
            continue;
        };
        // Fuse a following chain of single-successor Max/Min with uniform constants.
        let ((lo, hi), last) =
            super::graph::follow_clamps(model, OutletId::new(id, 0), op.bounds())?;
        let op = op.clamped(lo, hi);
        let (name, x) = (node.name.clone(), node.inputs[0]);
        super::graph::splice(model, &name, op, &[x], last)?;
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
    use tract_onnx::tract_core::ops::binary::TypedBinOp;
    use tract_onnx::tract_core::ops::math::{Max, Min};

    /// Straight from the definition, in f64, NHWC.
    fn reference(g: &Geometry, x: &[f32], oihw: &[f32], b: &[f32], lo: f32, hi: f32) -> Vec<f32> {
        let mut out = vec![0f32; g.n * g.oh * g.ow * g.c];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for c in 0..g.c {
                        let mut acc = f64::from(b[c]);
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize
                                    - g.pad.0 as isize;
                                let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize
                                    - g.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv = x[((n * g.h + iy as usize) * g.w + ix as usize) * g.c + c];
                                let wv = oihw[(c * g.kh + ky) * g.kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                        out[((n * g.oh + oy) * g.ow + ox) * g.c + c] = (acc as f32).max(lo).min(hi);
                    }
                }
            }
        }
        out
    }

    /// A square `k`×`k` kernel with equal strides, dilations and padding on both axes, on an
    /// `(h, w, c)` input, batch `n` (the axis is present when `n > 1`).
    fn geometry(
        (h, w, c): (usize, usize, usize),
        k: usize,
        s: usize,
        d: usize,
        p: usize,
        n: usize,
    ) -> Geometry {
        let span = d * (k - 1) + 1;
        Geometry {
            n,
            has_n: n > 1,
            h,
            w,
            c,
            kh: k,
            kw: k,
            stride: (s, s),
            dilation: (d, d),
            pad: (p, p),
            oh: (h + 2 * p - span) / s + 1,
            ow: (w + 2 * p - span) / s + 1,
        }
    }

    #[test]
    fn matches_the_definition_on_every_path() {
        // (h, w, c, k, stride, dilation, pad, n): channel counts hit the 32-, 8- and 1-wide
        // loops; strides, asymmetric output sizes and dilation hit the tap bounds.
        let cases = [
            (7, 7, 1152, 5, 1, 1, 2, 1),
            (112, 112, 32, 3, 1, 1, 1, 1),
            (112, 112, 96, 3, 2, 1, 0, 1),
            (9, 11, 45, 3, 2, 1, 1, 2),
            (6, 5, 3, 5, 1, 2, 4, 1),
            (4, 4, 17, 1, 1, 1, 0, 1),
        ];
        for (ci, &(h, w, c, k, s, d, p, n)) in cases.iter().enumerate() {
            let geo = geometry((h, w, c), k, s, d, p, n);
            let x = values(n * h * w * c, ci as u64);
            let oihw = values(c * k * k, 100 + ci as u64);
            let b = values(c, 200 + ci as u64);
            for (lo, hi) in [(f32::NEG_INFINITY, f32::INFINITY), (0.0, 0.5)] {
                let op = NhwcDepthwise::new(geo, &oihw, &b)
                    .expect("op")
                    .clamped(lo, hi);
                let want = reference(&geo, &x, &oihw, &b, lo, hi);
                let mut got = vec![f32::NAN; want.len()];
                op.run(&x, &mut got).expect("run");
                let mut scalar = vec![f32::NAN; want.len()];
                let wv = op.weights.try_as_plain_ram().expect("w");
                portable(&geo, &x, wv.as_slice().expect("w"), &b, lo, hi, &mut scalar);
                for (i, ((g, r), s)) in got.iter().zip(&want).zip(&scalar).enumerate() {
                    assert!(
                        (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "case {ci} [{i}]: {g} vs {r}"
                    );
                    assert!(
                        (s - r).abs() <= 1e-5 * (1.0 + r.abs()),
                        "case {ci} [{i}]: {s} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn nan_propagates_through_the_clamp() {
        let geo = geometry((3, 3, 41), 1, 1, 1, 0, 1);
        let op = NhwcDepthwise::new(geo, &[1.0; 41], &[0.0; 41])
            .expect("op")
            .clamped(0.0, 6.0);
        let mut x = vec![7.0f32; 9 * 41];
        for c in [0, 8, 31, 33, 40] {
            x[4 * 41 + c] = f32::NAN; // the centre point: 32-wide, 8-wide and scalar lanes
        }
        let mut out = vec![0f32; x.len()];
        op.run(&x, &mut out).expect("run");
        for (i, (o, x)) in out.iter().zip(&x).enumerate() {
            assert_eq!(o.is_nan(), x.is_nan(), "[{i}] {o}");
            assert!(o.is_nan() || *o == 6.0, "[{i}] {o}");
        }
    }

    /// A channel-last depthwise `Conv` (stride 2, asymmetric padding) followed by `lo`/`hi`
    /// binary ops with uniform constants, as tract's declutter leaves ReLU6.
    fn graph(first: (bool, f32), second: (bool, f32)) -> TypedModel {
        use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec, PoolSpec};
        use tract_onnx::tract_core::ops::nn::DataFormat;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 9, 7, 12])).expect("source");
        let k = tract_ndarray::Array4::from_shape_vec((12, 1, 3, 3), values(108, 7)).expect("k");
        let k = m.add_const("k", k.into_tensor()).expect("k");
        let b = m.add_const("b", tensor1(&values(12, 8))).expect("b");
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec![3, 3],
                padding: PaddingSpec::Explicit(tvec![0, 1], tvec![1, 1]),
                dilations: None,
                strides: Some(tvec![2, 2]),
                input_channels: 12,
                output_channels: 12,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: 12,
            q_params: None,
        };
        let mut y = m.wire_node("conv", conv, &[x, k, b]).expect("conv")[0];
        for (ix, (is_max, v)) in [first, second].into_iter().enumerate() {
            let c = m
                .add_const(format!("c{ix}"), tensor4(&[[[[v]]]]))
                .expect("const");
            let op: Box<dyn tract_onnx::tract_core::ops::binary::BinMiniOp> = match is_max {
                true => Box::new(Max),
                false => Box::new(Min),
            };
            y = m
                .wire_node(format!("bin{ix}"), TypedBinOp(op, None), &[y, c])
                .expect("bin")[0];
        }
        m.select_output_outlets(&[y]).expect("output");
        m
    }

    fn run(m: TypedModel, x: &Tensor) -> Vec<f32> {
        let plan = m
            .into_optimized()
            .expect("optimize")
            .into_runnable()
            .expect("plan");
        let out = plan.run(tvec!(x.clone().into_tvalue())).expect("run");
        let v = out[0].try_as_plain_ram().expect("ram");
        v.as_slice::<f32>().expect("f32").to_vec()
    }

    #[test]
    fn replaces_the_conv_and_fuses_only_a_well_formed_clamp() {
        let x = tract_ndarray::Array4::from_shape_vec((1, 9, 7, 12), values(9 * 7 * 12, 9))
            .expect("x")
            .into_tensor();
        let count =
            |m: &TypedModel, name: &str| m.nodes().iter().filter(|n| n.op.name() == name).count();
        // ReLU6-like (bounds inside the data's range) fuses both; the inverted pair
        // `Min(·, -0.2)` then `Max(·, 0.3)` (always 0.3) fuses only the first.
        for (first, second, fused_bins) in [
            ((true, -0.3), (false, 0.4), 2),
            ((false, -0.2), (true, 0.3), 1),
        ] {
            let want = run(graph(first, second), &x);
            let mut m = graph(first, second);
            assert_eq!(replace_depthwise(&mut m).expect("replace"), 1);
            assert_eq!(count(&m, "AdaptdDepthwise"), 1);
            assert_eq!(count(&m, "Conv"), 0);
            let bins = m.nodes().iter().filter(|n| n.op_is::<TypedBinOp>()).count();
            assert_eq!(bins, 2 - fused_bins, "{first:?} {second:?}");
            let got = run(m, &x);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "[{i}] {g} vs {w}");
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let geo = geometry((4, 4, 8), 3, 1, 1, 1, 1);
        assert!(NhwcDepthwise::new(geo, &[0.0; 71], &[0.0; 8]).is_err());
        let op = NhwcDepthwise::new(geo, &[0.0; 72], &[0.0; 8]).expect("op");
        assert!(op.run(&[0.0; 127], &mut [0.0; 128]).is_err());
        assert!(op.run(&[0.0; 128], &mut [0.0; 127]).is_err());
    }
}
