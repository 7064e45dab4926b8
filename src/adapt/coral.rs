//! CORAL (Sun, Feng & Saenko, AAAI 2016) on embeddings: `x' = Σs^{1/2} Σt^{-1/2} (x − μt) + μs`
//! with both covariances shrunk toward a scaled identity; symmetric matrix roots by
//! eigendecomposition (O(d³), done off the hot path).

use nalgebra::DMatrix;

use super::{HeadDomain, InputMap};

/// `(1 − γ) Σ + γ · tr(Σ)/d · I`, in place.
pub fn shrink(m: &mut DMatrix<f64>, gamma: f64) {
    let d = m.nrows().max(1);
    let t = m.trace() / d as f64;
    *m *= 1.0 - gamma;
    for i in 0..m.nrows() {
        m[(i, i)] += gamma * t;
    }
}

/// `f(M)` for a symmetric `M`: `V diag(f(λ)) Vᵀ`, eigenvalues floored at a tiny fraction of
/// the largest one.
pub fn sym_fn(m: DMatrix<f64>, f: impl Fn(f64) -> f64) -> DMatrix<f64> {
    let e = m.symmetric_eigen();
    let top = e.eigenvalues.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let floor = (top * 1e-9).max(1e-300);
    let v = &e.eigenvectors;
    let mut scaled = v.clone();
    for (j, &l) in e.eigenvalues.iter().enumerate() {
        let s = f(l.max(floor));
        scaled.column_mut(j).scale_mut(s);
    }
    scaled * v.transpose()
}

/// The source side of CORAL: `Σs^{1/2}` (full when the head keeps a covariance, else the
/// diagonal) and `μs`.
#[derive(Clone, Debug)]
pub struct Colour {
    pub full: Option<DMatrix<f64>>,
    pub diag: Vec<f64>,
    pub mean: Vec<f64>,
}

impl Colour {
    /// The colouring of `source` with shrinkage `gamma`.
    pub fn of(source: &HeadDomain, gamma: f64) -> Colour {
        let full = source.cov.clone().map(|mut c| {
            shrink(&mut c, gamma);
            sym_fn(c, f64::sqrt)
        });
        let d = source.var.len().max(1) as f64;
        let t = source.var.iter().sum::<f64>() / d;
        let diag = source
            .var
            .iter()
            .map(|&v| ((1.0 - gamma) * v + gamma * t).max(0.0).sqrt())
            .collect();
        Colour {
            full,
            diag,
            mean: source.mean.clone(),
        }
    }
}

/// The CORAL map for the target mean and covariance `ct` (already shrunk toward the source's
/// by the evidence weight, see `Adapter::shrunk_cov`), or `None` when it is not finite.
pub fn map(
    colour: &Colour,
    target_mean: &[f64],
    mut ct: DMatrix<f64>,
    gamma: f64,
) -> Option<InputMap> {
    shrink(&mut ct, gamma);
    let whiten = sym_fn(ct, |l| 1.0 / l.sqrt());
    let a = match &colour.full {
        Some(s) => s * whiten,
        None => {
            let mut w = whiten;
            for (i, &s) in colour.diag.iter().enumerate() {
                w.row_mut(i).scale_mut(s);
            }
            w
        }
    };
    let d = a.nrows();
    let mut rows = Vec::with_capacity(d * d);
    for i in 0..d {
        rows.extend(a.row(i).iter().map(|&v| v as f32));
    }
    if !rows.iter().all(|v| v.is_finite()) {
        return None;
    }
    Some(InputMap::Full {
        a: rows,
        mt: target_mean.iter().map(|&v| v as f32).collect(),
        ms: colour.mean.iter().map(|&v| v as f32).collect(),
    })
}
