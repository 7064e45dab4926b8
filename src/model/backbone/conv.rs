//! adaptd's regular (k×k, one group) convolution for few input channels, as a tract op: the
//! patches of a block of output pixels gathered into a small buffer (zero padding included),
//! then run through [`super::pointwise`]'s matrix product with the bias and a clamp fused.
//!
//! This is the stem of an image network (EfficientNet-Lite0: 3×3, stride 2, 3 → 32 channels).
//! tract runs it as a separate `Pad` of the whole input, an im2col product and a separate
//! ReLU6 pass; here it is one pass, and it can read the model's NCHW input directly, which
//! removes the transpose [`super::channel_last_depthwise`] puts in front of it.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::identity::Identity;

use super::pointwise::NhwcPointwise;

/// Output pixels whose patches are gathered at a time (their buffer stays in L1).
const BLOCK: usize = 128;
/// Most values one patch may have: a larger one is a convolution this op is not for.
const MAX_PATCH: usize = 256;

/// Shape of one convolution, all concrete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    pub n: usize,
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
    /// Whether the input is `[N, C, H, W]` (else `[N?, H, W, C]`).
    pub nchw: bool,
}

/// The op: `out[n, y, x, o] = clamp(bias[o] + Σ w[o, ky, kx, c] · in[n, c, y·s + ky·d − p, …])`,
/// channel-last output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PatchConv {
    geo: Geometry,
    /// The product over one patch (`kh · kw · c` values, tap-major, channel inner).
    product: NhwcPointwise,
    shape: TVec<usize>,
}

impl PatchConv {
    /// The op for `geo` from OIHW weights (`[o][c][kh][kw]`, flattened) and a bias, writing an
    /// output of `shape` (`[N?, OH, OW, O]`).
    pub fn new(
        geo: Geometry,
        oihw: &[f32],
        bias: &[f32],
        shape: TVec<usize>,
    ) -> TractResult<PatchConv> {
        let patch = geo.kh * geo.kw * geo.c;
        ensure!(patch > 0 && patch <= MAX_PATCH, "patch of {patch} values");
        ensure!(geo.stride.0 * geo.stride.1 * geo.dilation.0 * geo.dilation.1 > 0);
        let o = bias.len();
        ensure!(
            oihw.len() == o * patch,
            "conv weights: {} values",
            oihw.len()
        );
        ensure!(shape.iter().product::<usize>() == geo.n * geo.oh * geo.ow * o);
        // Weights to the patch order: `[o][ky][kx][c]`.
        let mut w = vec![0f32; oihw.len()];
        for oc in 0..o {
            for c in 0..geo.c {
                for t in 0..geo.kh * geo.kw {
                    w[(oc * geo.kh * geo.kw + t) * geo.c + c] =
                        oihw[(oc * geo.c + c) * geo.kh * geo.kw + t];
                }
            }
        }
        let rows = geo.n * geo.oh * geo.ow;
        let product = NhwcPointwise::new(patch, &w, bias, tvec![rows.to_dim(), o.to_dim()])?;
        Ok(PatchConv {
            geo,
            product,
            shape,
        })
    }

    /// The same op with `[lo, hi]` applied to its output (on top of any clamp it has).
    pub fn clamped(&self, lo: f32, hi: f32) -> PatchConv {
        PatchConv {
            product: self.product.clamped(lo, hi),
            ..self.clone()
        }
    }

    /// Gathers the patches of output pixels `ox0..ox0 + cols` of output row `oy` of image `n`
    /// into `buf` (one row of `kh · kw · c` values per pixel), a tap at a time: each tap reads
    /// one input row, whatever the layout.
    fn gather(&self, x: &[f32], (n, oy, ox0): (usize, usize, usize), cols: usize, buf: &mut [f32]) {
        let g = &self.geo;
        let patch = g.kh * g.kw * g.c;
        for ky in 0..g.kh {
            let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize - g.pad.0 as isize;
            let row_in = iy >= 0 && iy < g.h as isize;
            for kx in 0..g.kw {
                for c in 0..g.c {
                    let t = (ky * g.kw + kx) * g.c + c;
                    let dst = buf[t..].iter_mut().step_by(patch).take(cols);
                    if !row_in {
                        dst.for_each(|d| *d = 0.0);
                        continue;
                    }
                    let iy = iy as usize;
                    // Input value of column `ix`: one row of one channel (NCHW) or the
                    // channel's lane of one row of pixels (NHWC).
                    let (base, step) = match g.nchw {
                        true => (((n * g.c + c) * g.h + iy) * g.w, 1),
                        false => (((n * g.h + iy) * g.w) * g.c + c, g.c),
                    };
                    // Columns whose tap falls inside the input: `r_lo..r_hi`; zeros around.
                    let sx = g.stride.1 as isize;
                    let first = (ox0 * g.stride.1 + kx * g.dilation.1) as isize - g.pad.1 as isize;
                    let r_lo = if first >= 0 {
                        0
                    } else {
                        (-first + sx - 1) / sx
                    };
                    let r_hi = (g.w as isize - first + sx - 1)
                        .div_euclid(sx)
                        .clamp(r_lo, cols as isize);
                    let (r_lo, r_hi) = (r_lo.min(cols as isize) as usize, r_hi as usize);
                    let mut dst = dst;
                    for d in dst.by_ref().take(r_lo) {
                        *d = 0.0;
                    }
                    let ix0 = (first + r_lo as isize * sx) as usize;
                    let src = x[base + ix0 * step..].iter().step_by(g.stride.1 * step);
                    for (d, v) in dst.by_ref().take(r_hi - r_lo).zip(src) {
                        *d = *v;
                    }
                    for d in dst {
                        *d = 0.0;
                    }
                }
            }
        }
    }

    /// Runs on the input slice into `out` (`[N?, OH, OW, O]`).
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> TractResult<()> {
        let g = &self.geo;
        let (patch, o) = self.product.dims();
        ensure!(
            x.len() == g.n * g.h * g.w * g.c,
            "conv input: {} values",
            x.len()
        );
        let pixels = g.n * g.oh * g.ow;
        ensure!(out.len() == pixels * o, "conv output: {} values", out.len());
        let mut buf = vec![0f32; BLOCK.min(g.ow) * patch];
        for n in 0..g.n {
            for oy in 0..g.oh {
                let mut ox0 = 0;
                while ox0 < g.ow {
                    let cols = (g.ow - ox0).min(BLOCK);
                    self.gather(x, (n, oy, ox0), cols, &mut buf);
                    let p0 = (n * g.oh + oy) * g.ow + ox0;
                    let dst = &mut out[p0 * o..(p0 + cols) * o];
                    self.product
                        .run_rows(cols, &buf[..cols * patch], None, dst)?;
                    ox0 += cols;
                }
            }
        }
        Ok(())
    }
}

impl Op for PatchConv {
    fn name(&self) -> StaticName {
        "AdaptdConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        let layout = if g.nchw { "NCHW" } else { "NHWC" };
        let mut info = vec![format!(
            "{layout} {}x{}x{} kernel {}x{} stride {:?} dilation {:?} pad {:?}",
            g.h, g.w, g.c, g.kh, g.kw, g.stride, g.dilation, g.pad
        )];
        info.extend(self.product.info()?);
        Ok(info)
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for PatchConv {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        // SAFETY: `run` writes every element of the output before anything reads it.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.shape)? };
        let xv = x.try_as_plain_ram()?;
        self.run(
            xv.as_slice::<f32>()?,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }

    op_out_of_plan!();
}

impl TypedOp for PatchConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(f32::fact(self.shape.clone())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (patch, o) = self.product.dims();
        let g = &self.geo;
        let fma = g.n * g.oh * g.ow * patch * o;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma.to_dim())))
    }

    as_op!();
}

/// The op for a float, one-group, channel-last `Conv` with a kernel larger than 1×1 and a
/// small patch, constant weights and bias, on a concrete input; reading through a transpose
/// from NCHW in front of it when there is one (`AxisOp::Move(1, 3)`, the input pivot). Returns
/// the op and the outlet it reads.
fn from_conv(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(PatchConv, OutletId)>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let fmt = conv.pool_spec.data_format;
    if conv.group != 1
        || conv.q_params.is_some()
        || !fmt.c_is_last()
        || conv.pool_spec.rank() != 2
        || conv.pool_spec.kernel_shape.iter().product::<usize>() == 1
        || node.inputs.len() != 3
    {
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
    let Some(out_shape) = model
        .outlet_fact(OutletId::new(node.id, 0))?
        .shape
        .as_concrete()
        .map(|s| s.into())
    else {
        return Ok(None);
    };
    if kernel.datum_type() != f32::datum_type() || kernel.rank() != 4 {
        return Ok(None);
    }
    let ishape = fmt.shape(shape.to_vec())?;
    let (hw, c) = (ishape.hw_dims(), *ishape.c());
    let pads = conv.pool_spec.computed_padding(hw);
    let (strides, dilations) = (conv.pool_spec.strides(), conv.pool_spec.dilations());
    let (kh, kw) = (
        conv.pool_spec.kernel_shape[0],
        conv.pool_spec.kernel_shape[1],
    );
    if kh * kw * c > MAX_PATCH {
        return Ok(None);
    }
    // Weights to OIHW order whatever the kernel format.
    let o = kernel.shape()[conv.kernel_fmt.o_axis(kernel.shape())];
    let oihw = super::graph::oihw_weights(&kernel, conv.kernel_fmt, o, c)?;
    let bias = super::graph::conv_bias(&bias, o)?;
    let mut geo = Geometry {
        n: ishape.n().copied().unwrap_or(1),
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
        nchw: false,
    };
    // Read NCHW directly through a transpose to NHWC that only this conv reads (the input
    // pivot leaves it behind an `Identity`).
    let mut input = node.inputs[0];
    let single = |o: OutletId| model.outlet_successors(o).len() == 1;
    while model.node(input.node).op_is::<Identity>() && single(input) {
        input = model.node(input.node).inputs[0];
    }
    let pred = model.node(input.node);
    if let (Some(AxisOp::Move(1, 3)), true, true) =
        (pred.op_as::<AxisOp>(), ishape.n().is_some(), single(input))
    {
        geo.nchw = true;
        input = pred.inputs[0];
    } else {
        input = node.inputs[0];
    }
    PatchConv::new(geo, &oihw, &bias, out_shape).map(|op| Some((op, input)))
}

/// Replaces every float, one-group, channel-last `Conv` with a small patch (the stem) with
/// [`PatchConv`], fusing a directly following `Max(·, lo)` / `Min(·, hi)`. Returns how many.
pub fn replace_convs(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, input)) = from_conv(model, node)? else {
            continue;
        };
        let bounds = op.product.bounds();
        let ((lo, hi), last) = super::graph::follow_clamps(model, OutletId::new(id, 0), bounds)?;
        let op = op.clamped(lo, hi);
        let name = node.name.clone();
        super::graph::splice(model, &name, op, &[input], last)?;
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

    /// Straight from the definition, in f64, NHWC output; `x` in the layout `g.nchw` says.
    fn reference(
        g: &Geometry,
        x: &[f32],
        oihw: &[f32],
        b: &[f32],
        (lo, hi): (f32, f32),
    ) -> Vec<f32> {
        let o = b.len();
        let mut out = vec![0f32; g.n * g.oh * g.ow * o];
        for n in 0..g.n {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    for oc in 0..o {
                        let mut acc = f64::from(b[oc]);
                        for c in 0..g.c {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize
                                        - g.pad.0 as isize;
                                    let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize
                                        - g.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let (iy, ix) = (iy as usize, ix as usize);
                                    let xv = match g.nchw {
                                        true => x[((n * g.c + c) * g.h + iy) * g.w + ix],
                                        false => x[((n * g.h + iy) * g.w + ix) * g.c + c],
                                    };
                                    let wv = oihw[((oc * g.c + c) * g.kh + ky) * g.kw + kx];
                                    acc += f64::from(xv) * f64::from(wv);
                                }
                            }
                        }
                        out[((n * g.oh + oy) * g.ow + ox) * o + oc] = (acc as f32).max(lo).min(hi);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_in_both_input_layouts() {
        // (h, w, c, k, stride, dilation, pad before, pad after, n, out channels): the stem's
        // shape (SAME padding after only), padding on both sides, dilation, a batch, more
        // rows than one gathered block, out-channels past one panel.
        let cases = [
            (224, 224, 3, 3, 2, 1, 0, 1, 1, 32),
            (17, 13, 4, 3, 1, 1, 1, 1, 2, 40),
            (9, 11, 2, 5, 2, 2, 3, 1, 1, 7),
        ];
        for (ci, &(h, w, c, k, s, d, pb, pa, n, o)) in cases.iter().enumerate() {
            let span = d * (k - 1) + 1;
            let (oh, ow) = ((h + pb + pa - span) / s + 1, (w + pb + pa - span) / s + 1);
            for nchw in [false, true] {
                let geo = Geometry {
                    n,
                    h,
                    w,
                    c,
                    kh: k,
                    kw: k,
                    stride: (s, s),
                    dilation: (d, d),
                    pad: (pb, pb),
                    oh,
                    ow,
                    nchw,
                };
                let x = values(n * h * w * c, ci as u64);
                let oihw = values(o * c * k * k, 10 + ci as u64);
                let b = values(o, 20 + ci as u64);
                let shape: TVec<usize> = tvec![n, oh, ow, o];
                for clamp in [(f32::NEG_INFINITY, f32::INFINITY), (0.0, 0.5)] {
                    let op = PatchConv::new(geo, &oihw, &b, shape.clone())
                        .expect("op")
                        .clamped(clamp.0, clamp.1);
                    let want = reference(&geo, &x, &oihw, &b, clamp);
                    let mut got = vec![f32::NAN; want.len()];
                    op.run(&x, &mut got).expect("run");
                    for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - r).abs() <= 1e-5 * (1.0 + r.abs()),
                            "case {ci} nchw {nchw} clamp {clamp:?} [{i}]: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn refuses_what_it_is_not_for() {
        let geo = Geometry {
            n: 1,
            h: 8,
            w: 8,
            c: 64,
            kh: 3,
            kw: 3,
            stride: (1, 1),
            dilation: (1, 1),
            pad: (1, 1),
            oh: 8,
            ow: 8,
            nchw: false,
        };
        // 576 values a patch: past MAX_PATCH, tract's own kernels are the better choice.
        assert!(PatchConv::new(geo, &vec![0.0; 2 * 576], &[0.0; 2], tvec![1, 8, 8, 2]).is_err());
        let small = Geometry { c: 2, ..geo };
        assert!(PatchConv::new(small, &[0.0; 17], &[0.0; 1], tvec![1, 8, 8, 1]).is_err());
        let op = PatchConv::new(small, &[0.0; 18], &[0.0; 1], tvec![1, 8, 8, 1]).expect("op");
        assert!(op.run(&[0.0; 127], &mut [0.0; 64]).is_err());
        assert!(op.run(&[0.0; 128], &mut [0.0; 63]).is_err());
    }
}
