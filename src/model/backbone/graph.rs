//! Graph surgery the backbone's own ops share: tract's `change_axes` propagation, the splice
//! of an op over a fused chain, a following clamp, conv weights and bias in a fixed order.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::{Max, Min};

/// tract's `change_axes` propagation of `op` on `outlet` through the graph, with the model's
/// inputs and outputs locked (their layout is the model's interface): the patch, or `None` when
/// some node blocks it.
pub(crate) fn propagate(
    model: &TypedModel,
    outlet: OutletId,
    op: tract_onnx::tract_core::ops::change_axes::AxisOp,
) -> TractResult<Option<TypedModelPatch>> {
    use tract_onnx::tract_core::ops::change_axes::AxisChange;
    use tract_onnx::tract_core::optim::change_axes::change_axes;
    let mut locked = model.output_outlets()?.to_vec();
    locked.extend(model.input_outlets()?.iter());
    let change = AxisChange { outlet, op };
    let mut explored = std::collections::HashSet::new();
    Ok(change_axes(model, &change, &locked, &[], &mut explored)?.map(|(patch, _)| patch))
}

/// Replaces the chain that ends at `last` with `op` reading `inputs`: the splice every op of
/// adaptd's goes in with (the chain's nodes are left unconnected for `into_compact`).
pub(crate) fn splice(
    model: &mut TypedModel,
    name: &str,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    last: OutletId,
) -> TractResult<()> {
    let mut patch = TypedModelPatch::default();
    let taps = inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let y = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, last, y[0])?;
    patch.apply(model)
}

/// The constant a binary `op` node applies to its other input, when that is a uniform scalar.
pub(crate) fn uniform_operand(model: &TypedModel, node: &TypedNode, from: OutletId) -> Option<f32> {
    let other = node.inputs.iter().find(|&&i| i != from)?;
    let k = model.outlet_fact(*other).ok()?.konst.clone()?;
    let k = k.cast_to::<f32>().ok()?;
    let kv = k.try_as_plain_ram().ok()?;
    let v = kv.as_slice::<f32>().ok()?;
    let first = *v.first()?;
    v.iter().all(|&x| x == first).then_some(first)
}

/// The clamp `bounds` become when `next`, a binary op applied to `from`, is `Max(·, lo)` or
/// `Min(·, hi)` with a uniform constant (ReLU6 once decluttered); `None` when it is anything
/// else, or would make an ill-formed clamp (`Min(·, 0)` then `Max(·, 6)` is the constant 6,
/// which `[6, 0]` would not compute; a NaN bound is left to tract).
pub(crate) fn clamp_step(
    model: &TypedModel,
    next: &TypedNode,
    from: OutletId,
    bounds: (f32, f32),
) -> TractResult<Option<(f32, f32)>> {
    let Some(bin) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let Some(k) = uniform_operand(model, next, from) else {
        return Ok(None);
    };
    let fused = if bin.0.is::<Max>() {
        (bounds.0.max(k), bounds.1)
    } else if bin.0.is::<Min>() {
        (bounds.0, bounds.1.min(k))
    } else {
        return Ok(None);
    };
    Ok((!k.is_nan() && fused.0 <= fused.1).then_some(fused))
}

/// A conv kernel's weights in OIHW order (`[o][i][kh][kw]`, flattened) whatever its format,
/// checked to have `o` output and `i` input channels (1 for a depthwise one).
pub(crate) fn oihw_weights(
    kernel: &Tensor,
    fmt: tract_onnx::tract_core::ops::cnn::KernelFormat,
    o: usize,
    i: usize,
) -> TractResult<Vec<f32>> {
    let view = kernel.to_plain_array_view::<f32>()?;
    let shape = view.shape();
    let (o_axis, h_axis, i_axis) = (fmt.o_axis(shape), fmt.h_axis(), fmt.i_axis(shape));
    anyhow::ensure!(
        view.ndim() == 4 && shape[o_axis] == o && shape[i_axis] == i,
        "kernel of shape {shape:?} ({fmt:?}) for {o} × {i} channels"
    );
    let (kh, kw) = (shape[h_axis], shape[h_axis + 1]);
    let mut out = Vec::with_capacity(o * i * kh * kw);
    let mut ix = [0usize; 4];
    for oc in 0..o {
        for ic in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    ix[o_axis] = oc;
                    ix[i_axis] = ic;
                    ix[h_axis] = y;
                    ix[h_axis + 1] = x;
                    out.push(view[&ix[..]]);
                }
            }
        }
    }
    Ok(out)
}

/// A conv bias as `o` f32 values (a single value applies to every channel).
pub(crate) fn conv_bias(bias: &Tensor, o: usize) -> TractResult<Vec<f32>> {
    let bias = bias.cast_to::<f32>()?;
    let bv = bias.try_as_plain_ram()?;
    Ok(match bv.as_slice::<f32>()? {
        [b] => vec![*b; o],
        b => b.to_vec(),
    })
}

/// Values in [-1, 1) from a cheap deterministic generator, for the ops' unit tests.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Follows a chain of single-successor `Max`/`Min` with uniform constants from `start` (see
/// [`clamp_step`]), starting from the clamp `bounds`: the clamp they make and the chain's last
/// outlet (`start` when nothing follows that fuses).
pub(crate) fn follow_clamps(
    model: &TypedModel,
    start: OutletId,
    mut bounds: (f32, f32),
) -> TractResult<((f32, f32), OutletId)> {
    let mut last = start;
    loop {
        let succ = model.outlet_successors(last);
        if succ.len() != 1 || model.output_outlets()?.contains(&last) {
            break;
        }
        let next = model.node(succ[0].node);
        if model.outlet_fact(OutletId::new(next.id, 0))?.shape != model.outlet_fact(last)?.shape {
            break;
        }
        let Some(fused) = clamp_step(model, next, last, bounds)? else {
            break;
        };
        bounds = fused;
        last = OutletId::new(next.id, 0);
    }
    Ok((bounds, last))
}
