//! The backbone's trainable tail as the ONNX file holds it: the chain of nodes from the cut
//! (`[finetune] cut` of `model.toml`) to the embedding output, with their pretrained weights,
//! in a form that names no tract type (`crate::finetune` builds its layers from it).

use std::path::Path;

use tract_onnx::data_resolver::FopenDataResolver;
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::tensor::load_tensor;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::Framework;

use super::BackboneError;

/// One step of the tail, in order from the cut to the embedding.
#[derive(Debug, Clone, PartialEq)]
pub enum TailLayer {
    /// A convolution with bias: `w` is `[out, in / group, k, k]` row-major.
    Conv {
        name: String,
        out: usize,
        group: usize,
        k: usize,
        stride: usize,
        /// `[top, left, bottom, right]`.
        pads: [usize; 4],
        w: Vec<f32>,
        b: Vec<f32>,
    },
    /// `Clip(x, 0, 6)`.
    Relu6,
    /// Adds the cut's value (the residual connection of a block that starts at the cut).
    AddCut,
    /// Global average pooling (with the flattening after it).
    Pool,
}

/// Reads the layers between the value `cut` and the value `embedding` of the ONNX file at
/// `path`. The tail must be one chain of Conv, Clip(0, 6), Add (of the cut) and
/// GlobalAveragePool/Flatten nodes; anything else is refused with the node that is not.
pub fn read_tail(path: &Path, cut: &str, embedding: &str) -> Result<Vec<TailLayer>, BackboneError> {
    let bad = |message: String| BackboneError::Tail {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| BackboneError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut std::io::Cursor::new(bytes))
        .map_err(|e| BackboneError::NotOnnx {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        })?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| bad("the file has no graph".into()))?;
    let mut layers = Vec::new();
    let mut current = cut.to_string();
    let mut nodes = graph.node.iter();
    while current != embedding {
        let node = nodes
            .find(|n| n.input.first() == Some(&current) || is_add_of(n, &current, cut))
            .ok_or_else(|| {
                bad(format!(
                    "no node takes {current:?} on the way from the cut {cut:?} to the embedding \
                     {embedding:?}"
                ))
            })?;
        let layer = match node.op_type.as_str() {
            "Conv" => conv(graph, node).map_err(|e| bad(format!("{}: {e:#}", node.name)))?,
            "Clip" => {
                let bounds = clip_bounds(graph, node).map_err(|e| bad(format!("{e:#}")))?;
                if bounds != (0.0, 6.0) {
                    return Err(bad(format!(
                        "{} clips to {bounds:?}, only ReLU6 (0, 6) is trained",
                        node.name
                    )));
                }
                Some(TailLayer::Relu6)
            }
            "Add" if is_add_of(node, &current, cut) && current != cut => Some(TailLayer::AddCut),
            "GlobalAveragePool" => Some(TailLayer::Pool),
            "Flatten" if layers.last() == Some(&TailLayer::Pool) => None,
            other => {
                return Err(bad(format!(
                    "{} is a {other} node ({:?} → {:?}), which the trainable tail does not hold",
                    node.name, node.input, node.output
                )))
            }
        };
        layers.extend(layer);
        current = node
            .output
            .first()
            .cloned()
            .ok_or_else(|| bad(format!("{} has no output", node.name)))?;
    }
    Ok(layers)
}

/// Whether `node` adds `current` and `cut` (in either order).
fn is_add_of(node: &NodeProto, current: &str, cut: &str) -> bool {
    node.op_type == "Add"
        && node.input.len() == 2
        && ((node.input[0] == current && node.input[1] == cut)
            || (node.input[0] == cut && node.input[1] == current))
}

/// An initializer as f32 values with its shape.
fn initializer(graph: &GraphProto, name: &str) -> TractResult<(Vec<usize>, Vec<f32>)> {
    let proto = graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| format_err!("{name:?} is not an initializer"))?;
    let tensor = load_tensor(&FopenDataResolver, proto, None)?
        .cast_to::<f32>()?
        .into_owned();
    let values = tensor.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok((tensor.shape().to_vec(), values))
}

fn conv(graph: &GraphProto, node: &NodeProto) -> TractResult<Option<TailLayer>> {
    let weights = node
        .input
        .get(1)
        .ok_or_else(|| format_err!("a Conv without weights"))?;
    let (shape, w) = initializer(graph, weights)?;
    let [out, _, k, k2] = shape[..] else {
        bail!("weights of shape {shape:?}, not [out, in, k, k]");
    };
    ensure!(k == k2, "a {k}×{k2} kernel is not square");
    let b = match node.input.get(2) {
        Some(name) if !name.is_empty() => initializer(graph, name)?.1,
        _ => vec![0.0; out],
    };
    ensure!(b.len() == out, "{} biases for {out} outputs", b.len());
    let group = node.get_attr_opt::<i64>("group")?.unwrap_or(1);
    let strides = node
        .get_attr_opt_tvec::<i64>("strides")?
        .unwrap_or_default();
    let dilations = node
        .get_attr_opt_tvec::<i64>("dilations")?
        .unwrap_or_default();
    let pads = node.get_attr_opt_tvec::<i64>("pads")?.unwrap_or_default();
    ensure!(
        node.get_attr_opt::<String>("auto_pad")?
            .is_none_or(|p| p == "NOTSET"),
        "auto_pad is not supported"
    );
    ensure!(dilations.iter().all(|&d| d == 1), "dilated");
    let stride = strides.first().copied().unwrap_or(1);
    ensure!(strides.iter().all(|&s| s == stride), "unequal strides");
    let pads: [usize; 4] = match pads[..] {
        [] => [0; 4],
        [t, l, b, r] => [t, l, b, r].map(|p| p.max(0) as usize),
        _ => bail!("pads {pads:?}"),
    };
    Ok(Some(TailLayer::Conv {
        name: node.name.clone(),
        out,
        group: group.max(1) as usize,
        k,
        stride: stride.max(1) as usize,
        pads,
        w,
        b,
    }))
}

/// A Clip's (min, max): inputs 2 and 3 (opset ≥ 11) or attributes (before).
fn clip_bounds(graph: &GraphProto, node: &NodeProto) -> TractResult<(f32, f32)> {
    let bound = |ix: usize, attr: &str, default: f32| -> TractResult<f32> {
        match node.input.get(ix) {
            Some(name) if !name.is_empty() => {
                let (_, v) = initializer(graph, name)?;
                v.first().copied().ok_or_else(|| format_err!("empty bound"))
            }
            _ => Ok(node.get_attr_opt::<f32>(attr)?.unwrap_or(default)),
        }
    };
    Ok((
        bound(1, "min", f32::NEG_INFINITY)?,
        bound(2, "max", f32::INFINITY)?,
    ))
}
