//! Token-input backbones (text encoders): one plan for any sentence length up to
//! `text.max_tokens`, fed the ids and the attention mask and segment ids the graph asks for.

use super::*;
use crate::model::text::TextSpec;

/// What one graph input of a text encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TokenInput {
    /// The token ids.
    Ids,
    /// The attention mask: all ones (one sentence, never padded).
    Mask,
    /// The segment ids: all zeros (one sentence).
    Types,
}

/// Loads a text encoder: the sequence length stays symbolic (`S`), so a short sentence costs
/// what its tokens cost instead of `max_tokens`. Not cached (its load is dominated by reading
/// the weights, not by declutter).
pub(super) fn load(model: &ModelDir, text: &TextSpec) -> Result<Backbone, BackboneError> {
    let started = Instant::now();
    let spec = &model.spec;
    let (path, bytes, sha256) = read_model(model)?;
    check_sha256(spec.sha256.as_deref(), &path, &sha256)?;
    let shape = spec.input.shape.clone();
    let prepare = |e: TractError| BackboneError::Prepare {
        shape: shape.clone(),
        message: format!("{e:#}"),
    };
    let mut graph = parse_onnx(&path, &bytes)?;
    drop(bytes);
    let ids_name = spec.input.name.as_deref().unwrap_or("input_ids");
    let order = graph
        .input_outlets()
        .map_err(prepare)?
        .iter()
        .map(|o| {
            let name = graph.node(o.node).name.as_str();
            if name == ids_name {
                Ok(TokenInput::Ids)
            } else if text.attention_mask.as_deref() == Some(name) {
                Ok(TokenInput::Mask)
            } else if text.token_type_ids.as_deref() == Some(name) {
                Ok(TokenInput::Types)
            } else {
                Err(BackboneError::Prepare {
                    shape: shape.clone(),
                    message: format!(
                        "graph input {name:?} is not named in model.toml (input.name, \
                         text.attention_mask, text.token_type_ids)"
                    ),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !order.contains(&TokenInput::Ids) {
        return Err(BackboneError::Prepare {
            shape,
            message: format!("the graph has no input {ids_name:?} (input.name)"),
        });
    }
    let outlet = resolve_output(&graph, &spec.embedding_output)?;
    graph.select_output_outlets(&[outlet]).map_err(prepare)?;
    let s = graph.symbols.sym("S");
    let fact = InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), s.to_dim()]);
    for ix in 0..order.len() {
        graph.set_input_fact(ix, fact.clone()).map_err(prepare)?;
    }
    let decluttered = graph
        .into_typed()
        .and_then(|t| t.into_decluttered())
        .map_err(prepare)?;
    // The encoder's dense layers (constant weights, the sequence length symbolic) on adaptd's
    // matrix product where the CPU has one; tract's own graph if the rewrite fails.
    let (products, typed) = match pointwise::available() {
        true => {
            let mut m = decluttered.clone();
            match pointwise::replace_pointwise(&mut m) {
                Ok(n) => (n, m),
                Err(e) => {
                    tracing::warn!("adaptd's matrix product skipped: {e:#}");
                    (0, decluttered)
                }
            }
        }
        false => (0, decluttered),
    };
    let plan = typed
        .into_optimized()
        .and_then(|t| t.into_runnable())
        .map_err(prepare)?;
    let mut backbone = Backbone {
        plan,
        info: BackboneInfo {
            name: spec.name.clone(),
            sha256: spec.identity(&sha256),
            onnx_sha256: sha256,
            input_shape: shape.clone(),
            embedding_dim: 0,
            logits_dim: None,
            load_ms: 0.0,
            cached: false,
            channel_last_depthwise: [0, 0],
            adaptd_depthwise: 0,
            adaptd_products: products,
            cut_shape: None,
        },
        logits_plan_ix: None,
        cut_plan_ix: None,
        tokens: Some(order),
    };
    // The embedding must not depend on the sentence length (a pooled output, not per-token
    // states): two probes of different lengths give its size and check that.
    let one = backbone.run_tokens(&[0, 0])?.len();
    let other = backbone.run_tokens(&[0, 0, 0])?.len();
    if one != other || one == 0 {
        return Err(BackboneError::Prepare {
            shape,
            message: format!(
                "output {:?} has {one} values for 2 tokens and {other} for 3: it must be one \
                 pooled sentence embedding",
                spec.embedding_output
            ),
        });
    }
    backbone.info.embedding_dim = one;
    backbone.info.load_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(backbone)
}

impl Backbone {
    /// Runs one sentence's token ids (`[CLS] … [SEP]`, at most `input_shape[1]` of them) and
    /// returns its embedding.
    pub fn run_tokens(&self, ids: &[i64]) -> Result<Vec<f32>, BackboneError> {
        let Some(order) = &self.tokens else {
            return Err(BackboneError::Run(
                "this backbone takes tensors, not tokens".into(),
            ));
        };
        let max = self.info.input_shape.get(1).copied().unwrap_or(0);
        if ids.is_empty() || ids.len() > max {
            return Err(BackboneError::InputLength {
                got: ids.len(),
                want: max,
                shape: self.info.input_shape.clone(),
            });
        }
        let n = ids.len();
        let run_err = |e: TractError| BackboneError::Run(format!("{e:#}"));
        let inputs = order
            .iter()
            .map(|kind| {
                let values: Vec<i64> = match kind {
                    TokenInput::Ids => ids.to_vec(),
                    TokenInput::Mask => vec![1; n],
                    TokenInput::Types => vec![0; n],
                };
                Tensor::from_shape(&[1, n], &values).map(IntoTValue::into_tvalue)
            })
            .collect::<Result<TVec<_>, _>>()
            .map_err(run_err)?;
        let outputs = self.plan.run(inputs).map_err(run_err)?;
        let view = outputs[0].try_as_plain_ram().map_err(run_err)?;
        let embedding = view.as_slice::<f32>().map_err(run_err)?.to_vec();
        if embedding.iter().any(|v| !v.is_finite()) {
            return Err(BackboneError::NonFinite);
        }
        Ok(embedding)
    }
}
