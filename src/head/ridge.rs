//! `ridge`: regularized least squares on one-hot targets with an unpenalized bias, from the
//! shared scatter statistics (see [`super::scatter`]), solved by Cholesky at snapshot time, so
//! the streaming result equals batch ridge regression.

use nalgebra::DMatrix;

use super::linalg::{centered_transform, cholesky_solve, transform, unpack_scaled};
use super::predictor::PredictorParts;
use super::scatter::ScatterState;
use super::slda::{parts_from, Solution};
use super::Ctx;

/// Minimizes `Σ_i |Wᵀ z_i + b − y_i|² + λ |W|²` over the samples of the current classes, with
/// `z = (x − shift) ⊙ scale` (centered on the source mean, scaled when standardizing) and one-hot `y`:
/// `W = (Z_cᵀ Z_c + λ I)⁻¹ Z_cᵀ Y_c` (centered), `b = ȳ − Wᵀ z̄`. `None` if the solve failed.
pub(crate) fn solve(scatter: &ScatterState, ctx: &Ctx<'_>) -> Option<Solution> {
    solve_with(
        scatter,
        ctx,
        Penalty::Absolute(ctx.config.effective_ridge_lambda()),
    )
}

/// The ridge penalty λ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Penalty {
    /// λ itself (`ridge_lambda`).
    Absolute(f64),
    /// `λ = α tr(Z_cᵀ Z_c) / d`: α times the mean eigenvalue of the centered second moment,
    /// which grows with the sample count, so the penalty does not vanish as n approaches d and
    /// does not depend on the embeddings' scale (`auto`'s candidates).
    Relative(f64),
}

/// [`solve`] with the penalty `penalty`.
pub(crate) fn solve_with(
    scatter: &ScatterState,
    ctx: &Ctx<'_>,
    penalty: Penalty,
) -> Option<Solution> {
    solve_extra(scatter, ctx, penalty, &[]).map(|s| s.solution)
}

/// What [`solve_extra`] returns besides the solution, for `auto`'s leave-one-out check.
pub(crate) struct Solved {
    pub solution: Solution,
    /// The leverage `h_i = 1/n + (z_i − z̄)ᵀ (Z_cᵀ Z_c + λ I)⁻¹ (z_i − z̄)` of each extra
    /// input (the diagonal of the hat matrix, unpenalized bias included).
    pub leverage: Vec<f64>,
}

/// [`solve_with`], with the leverage of the `extra` inputs from the same factorization.
pub(crate) fn solve_extra(
    scatter: &ScatterState,
    ctx: &Ctx<'_>,
    penalty: Penalty,
    extra: &[&[f32]],
) -> Option<Solved> {
    let d = ctx.dim;
    let c = ctx.classes.len();
    let (shift, scale) = centered_transform(ctx.source, ctx.config.standardize);
    let total: f64 = ctx.classes.iter().map(|k| k.stats.count() as f64).sum();
    if c == 0 || total == 0.0 {
        return Some(Solved {
            solution: Solution {
                w: DMatrix::zeros(d, c),
                b: vec![0.0; c],
                shift,
                scale,
            },
            leverage: vec![0.0; extra.len()],
        });
    }
    let mut mean = vec![0.0; d];
    for class in ctx.classes {
        for (m, s) in mean.iter_mut().zip(class.stats.sum()) {
            *m += s / total;
        }
    }
    let zbar: Vec<f64> = mean
        .iter()
        .zip(&shift)
        .zip(&scale)
        .map(|((m, s), k)| (m - s) * k)
        .collect();
    // Between-class part of the centered second moment (D Dᵀ) and the centered XᵀY (B),
    // followed by the centered extra inputs.
    let mut between = DMatrix::<f64>::zeros(d, c);
    let mut rhs = DMatrix::<f64>::zeros(d, c + extra.len());
    for (k, class) in ctx.classes.iter().enumerate() {
        let n = class.stats.count() as f64;
        if n == 0.0 {
            continue;
        }
        for (j, s) in class.stats.sum().iter().enumerate() {
            let diff = (s / n - mean[j]) * scale[j];
            between[(j, k)] = n.sqrt() * diff;
            rhs[(j, k)] = n * diff;
        }
    }
    for (i, x) in extra.iter().enumerate() {
        let z = transform(x, &shift, &scale).zip(&zbar).map(|(v, m)| v - m);
        rhs.column_mut(c + i)
            .iter_mut()
            .zip(z)
            .for_each(|(r, v)| *r = v);
    }
    let mut a = unpack_scaled(&scatter.packed, &scale);
    a.gemm(1.0, &between, &between.transpose(), 1.0);
    let lambda = match penalty {
        Penalty::Absolute(l) => l,
        Penalty::Relative(alpha) => {
            // Nothing varies yet (one sample): any positive λ gives the same prediction.
            let l = alpha * a.trace() / d.max(1) as f64;
            if l.is_finite() && l > 0.0 {
                l
            } else {
                alpha
            }
        }
    };
    for i in 0..d {
        a[(i, i)] += lambda;
    }
    let solved = cholesky_solve(a, &rhs)?;
    let w = solved.columns(0, c).clone_owned();
    let leverage = (0..extra.len())
        .map(|i| 1.0 / total + rhs.column(c + i).dot(&solved.column(c + i)))
        .collect();
    let zbar = nalgebra::DVector::from_vec(zbar);
    let b = ctx
        .classes
        .iter()
        .enumerate()
        .map(|(k, class)| class.stats.count() as f64 / total - w.column(k).dot(&zbar))
        .collect();
    Some(Solved {
        solution: Solution { w, b, shift, scale },
        leverage,
    })
}

/// Predictor parts for `ridge`: the regression outputs divided by `ridge_temperature`.
pub(crate) fn snapshot(scatter: &ScatterState, ctx: &Ctx<'_>) -> PredictorParts {
    let t = f64::from(ctx.config.effective_ridge_temperature());
    parts_from(solve(scatter, ctx), ctx, t, "ridge")
}
