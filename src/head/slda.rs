//! `slda`: streaming linear discriminant analysis (Hayes & Kanan, CVPR-W 2020): class means and
//! one shared covariance (see [`super::scatter`]); the precision matrix is solved at snapshot
//! time only.

use nalgebra::DMatrix;

use super::linalg::{
    centered_transform, cholesky_solve, transform, transformed_mean, unpack_scaled,
};
use super::predictor::PredictorParts;
use super::scatter::ScatterState;
use super::Ctx;

/// A solved linear head in the (shifted, scaled) input space: `logits = Wᵀ z + b` with
/// `z = (x − shift) ⊙ scale`; `w` is `d × C` (column `c` = class `c`).
#[derive(Clone, Debug)]
pub(crate) struct Solution {
    pub w: DMatrix<f64>,
    pub b: Vec<f64>,
    pub shift: Vec<f64>,
    pub scale: Vec<f64>,
}

/// How the shrinkage target of `Λ = ((1 − ε) Σ + ε t I)⁻¹` is scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// `t = 1` (`slda`'s `slda_shrinkage`, in squared embedding units).
    Unit,
    /// `t = tr(Σ) / d`, the mean variance: shrinkage toward a scaled identity, the same for
    /// any scale of the embeddings (`auto`'s candidates).
    MeanVariance,
}

/// `Σ = S / count`, `Λ = ((1 − ε) Σ + ε I)⁻¹`, `W_c = Λ μ_c`, `b_c = −½ μ_cᵀ Λ μ_c` (equal
/// priors), all in the transformed space. `None` if the solve failed.
pub(crate) fn solve(scatter: &ScatterState, ctx: &Ctx<'_>) -> Option<Solution> {
    solve_with(
        scatter,
        ctx,
        ctx.config.effective_slda_shrinkage(),
        Target::Unit,
    )
}

/// [`solve`] with the shrinkage `eps` toward `target`.
pub(crate) fn solve_with(
    scatter: &ScatterState,
    ctx: &Ctx<'_>,
    eps: f64,
    target: Target,
) -> Option<Solution> {
    solve_extra(scatter, ctx, eps, target, &[]).map(|s| s.solution)
}

/// What [`solve_extra`] returns besides the solution, for `auto`'s leave-one-out check.
pub(crate) struct Solved {
    pub solution: Solution,
    /// The class means in the transformed space (`d × C`).
    pub means: DMatrix<f64>,
    /// `Λ z_i` for the extra inputs, transformed (`d × m`).
    pub extra: DMatrix<f64>,
    /// `(1 − ε) / count`, the scatter's weight in `Λ⁻¹ = (1 − ε) S / count + ε t I`.
    pub scatter_weight: f64,
}

/// [`solve_with`], solving `Λ z` for the transformed `extra` inputs in the same factorization.
pub(crate) fn solve_extra(
    scatter: &ScatterState,
    ctx: &Ctx<'_>,
    eps: f64,
    target: Target,
    extra: &[&[f32]],
) -> Option<Solved> {
    let d = ctx.dim;
    let c = ctx.classes.len();
    let (shift, scale) = centered_transform(ctx.source, ctx.config.standardize);
    let mut a = unpack_scaled(&scatter.packed, &scale);
    let inv_n = if scatter.count > 0 {
        1.0 / scatter.count as f64
    } else {
        0.0
    };
    let t = match target {
        Target::Unit => 1.0,
        Target::MeanVariance => {
            let mean_var = a.trace() * inv_n / d.max(1) as f64;
            if mean_var > 0.0 && mean_var.is_finite() {
                mean_var
            } else {
                1.0
            }
        }
    };
    a *= (1.0 - eps) * inv_n;
    for i in 0..d {
        a[(i, i)] += eps * t;
    }
    let mut rhs = DMatrix::<f64>::zeros(d, c + extra.len());
    for (k, class) in ctx.classes.iter().enumerate() {
        let mean = transformed_mean(&class.stats, &shift, &scale);
        rhs.column_mut(k)
            .iter_mut()
            .zip(mean)
            .for_each(|(r, v)| *r = v);
    }
    for (i, x) in extra.iter().enumerate() {
        let z = transform(x, &shift, &scale);
        rhs.column_mut(c + i)
            .iter_mut()
            .zip(z)
            .for_each(|(r, v)| *r = v);
    }
    let solved = cholesky_solve(a, &rhs)?;
    let w = solved.columns(0, c).clone_owned();
    let b = (0..c)
        .map(|k| -0.5 * rhs.column(k).dot(&w.column(k)))
        .collect();
    Some(Solved {
        solution: Solution { w, b, shift, scale },
        means: rhs.columns(0, c).clone_owned(),
        extra: solved.columns(c, extra.len()).clone_owned(),
        scatter_weight: (1.0 - eps) * inv_n,
    })
}

/// Predictor parts for `slda` (uniform scores with a warning if the solve failed).
pub(crate) fn snapshot(scatter: &ScatterState, ctx: &Ctx<'_>) -> PredictorParts {
    parts_from(solve(scatter, ctx), ctx, 1.0, "slda")
}

/// Turns a solution into predictor parts, dividing the logits by `temperature`.
pub(crate) fn parts_from(
    sol: Option<Solution>,
    ctx: &Ctx<'_>,
    temperature: f64,
    what: &str,
) -> PredictorParts {
    let labels: Vec<String> = ctx.classes.iter().map(|c| c.name.clone()).collect();
    let c = labels.len();
    match sol {
        Some(sol) => PredictorParts::from_f64(
            labels,
            sol.w.as_slice().iter().map(|v| v / temperature),
            sol.b.iter().map(|v| v / temperature),
            &sol.shift,
            &sol.scale,
            false,
        ),
        None => {
            tracing::warn!(learner = what, "head solve failed; predictions are uniform");
            let (shift, scale) = centered_transform(ctx.source, ctx.config.standardize);
            PredictorParts::from_f64(
                labels,
                std::iter::repeat_n(0.0, c * ctx.dim),
                std::iter::repeat_n(0.0, c),
                &shift,
                &scale,
                false,
            )
        }
    }
}
