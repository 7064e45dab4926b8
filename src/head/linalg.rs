//! Numeric kernels for the learners: packed symmetric rank-1 updates, Cholesky solves with a
//! jitter fallback, f32 dot products and the standardization transform.

use nalgebra::DMatrix;

use super::stats::SourceStats;

/// Variance floor for standardization, relative to the mean per-dimension variance: a
/// dimension that never varied in training is amplified at most ~1/sqrt(0.01) = 10 times
/// more than a typical one when it starts to vary.
pub(crate) const STD_VAR_FLOOR_REL: f64 = 1e-2;

/// Number of stored elements of a packed symmetric `d`×`d` matrix (lower triangle).
pub(crate) fn packed_len(d: usize) -> usize {
    d * (d + 1) / 2
}

/// `P += alpha * v vᵀ` on a packed symmetric matrix: the lower triangle column by column
/// (column `j` holds rows `j..d`), i.e. the upper triangle row by row.
pub(crate) fn syr_packed(p: &mut [f64], alpha: f64, v: &[f64]) {
    let d = v.len();
    let mut off = 0;
    for (j, &vj) in v.iter().enumerate() {
        let a = alpha * vj;
        let len = d - j;
        if let Some(col) = p.get_mut(off..off + len) {
            for (c, &vi) in col.iter_mut().zip(&v[j..]) {
                *c += a * vi;
            }
        }
        off += len;
    }
}

/// Unpacks a packed symmetric matrix into a full one, scaling entry `(i, j)` by
/// `s[i] * s[j]` (i.e. computes `diag(s) P diag(s)`).
pub(crate) fn unpack_scaled(p: &[f64], s: &[f64]) -> DMatrix<f64> {
    let d = s.len();
    let mut m = DMatrix::<f64>::zeros(d, d);
    let mut off = 0;
    for (j, &sj) in s.iter().enumerate() {
        let len = d - j;
        if let Some(col) = p.get(off..off + len) {
            for (k, (&v, &si)) in col.iter().zip(&s[j..]).enumerate() {
                let v = v * si * sj;
                m[(j + k, j)] = v;
                m[(j, j + k)] = v;
            }
        }
        off += len;
    }
    m
}

/// Block size of the Cholesky factorization and triangular solves.
const BLOCK: usize = 64;

/// Blocked right-looking Cholesky: overwrites the lower triangle of `a` with `L` (`A = L Lᵀ`);
/// the strict upper triangle is left as garbage. The trailing updates are matrix products
/// (nalgebra's `gemm`, i.e. `matrixmultiply`), which is several times faster than an unblocked
/// factorization at d ≈ 1000. False if `A` is not numerically positive definite.
pub(crate) fn cholesky_in_place(a: &mut DMatrix<f64>) -> bool {
    let n = a.nrows();
    if a.ncols() != n {
        return false;
    }
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + BLOCK).min(n);
        // Panel (columns k0..k1, rows j..n), left-looking within the panel.
        let data = a.as_mut_slice();
        for j in k0..k1 {
            let (left, right) = data.split_at_mut(j * n);
            let col_j = &mut right[j..n];
            for k in k0..j {
                let col_k = &left[k * n + j..(k + 1) * n];
                let f = col_k[0];
                for (c, &l) in col_j.iter_mut().zip(col_k) {
                    *c -= f * l;
                }
            }
            let d = col_j[0];
            if !(d > 0.0 && d.is_finite()) {
                return false;
            }
            let r = d.sqrt();
            col_j[0] = r;
            let inv = 1.0 / r;
            col_j[1..].iter_mut().for_each(|v| *v *= inv);
        }
        // Trailing update of the lower part, block column by block column:
        // A[k1.., k1..] -= L21 L21ᵀ.
        if k1 < n {
            let l21 = a.view((k1, k0), (n - k1, k1 - k0)).clone_owned();
            let mut j0 = k1;
            while j0 < n {
                let j1 = (j0 + BLOCK).min(n);
                let lhs = l21.rows(j0 - k1, n - j0);
                let rhs = l21.rows(j0 - k1, j1 - j0).transpose();
                a.view_mut((j0, j0), (n - j0, j1 - j0))
                    .gemm(-1.0, &lhs, &rhs, 1.0);
                j0 = j1;
            }
        }
        k0 = k1;
    }
    true
}

/// Solves `L Lᵀ X = B` in place, `L` in the lower triangle of `l` (blocked forward and back
/// substitution). False on a zero pivot.
pub(crate) fn cholesky_solve_factored(l: &DMatrix<f64>, b: &mut DMatrix<f64>) -> bool {
    let n = l.nrows();
    let mut k0 = 0;
    while k0 < n {
        let k1 = (k0 + BLOCK).min(n);
        let lkk = l.view((k0, k0), (k1 - k0, k1 - k0));
        if !lkk.solve_lower_triangular_mut(&mut b.rows_mut(k0, k1 - k0)) {
            return false;
        }
        if k1 < n {
            let y = b.rows(k0, k1 - k0).clone_owned();
            let below = l.view((k1, k0), (n - k1, k1 - k0));
            b.rows_mut(k1, n - k1).gemm(-1.0, &below, &y, 1.0);
        }
        k0 = k1;
    }
    let mut k1 = n;
    while k1 > 0 {
        let k0 = k1.saturating_sub(BLOCK);
        let lkk = l.view((k0, k0), (k1 - k0, k1 - k0));
        if !lkk.tr_solve_lower_triangular_mut(&mut b.rows_mut(k0, k1 - k0)) {
            return false;
        }
        if k0 > 0 {
            let x = b.rows(k0, k1 - k0).clone_owned();
            let left_t = l.view((k0, 0), (k1 - k0, k0)).transpose();
            b.rows_mut(0, k0).gemm(-1.0, &left_t, &x, 1.0);
        }
        k1 = k0;
    }
    true
}

/// Solves `A X = B` for symmetric positive (semi)definite `A` (lower triangle read) by
/// Cholesky. If the factorization fails (A is singular or slightly indefinite from rounding),
/// retries with a growing diagonal jitter relative to A's mean diagonal, up to 1e-2 of it.
/// `None` if nothing finite came out.
///
/// It factors `a` itself, not a copy: at d = 1,280 a copy is 13 MB more per solve, and `auto`
/// solves ten candidates every few labeled samples (docs/performance.md, "Memory under load").
/// A retry rebuilds A from what the factorization leaves alone (the strict upper triangle
/// outside the diagonal blocks, where the lower triangle is mirrored first) and a copy of the
/// diagonal blocks, so every attempt factors exactly what a fresh copy would hold.
pub(crate) fn cholesky_solve(mut a: DMatrix<f64>, b: &DMatrix<f64>) -> Option<DMatrix<f64>> {
    let n = a.nrows();
    if n == 0 || b.ncols() == 0 {
        return Some(DMatrix::zeros(n, b.ncols()));
    }
    let mean_diag = a.diagonal().iter().map(|v| v.abs()).sum::<f64>() / n as f64;
    let base = if mean_diag.is_finite() && mean_diag > 0.0 {
        mean_diag
    } else {
        1.0
    };
    a.fill_upper_triangle_with_lower_triangle();
    let diagonal_blocks: Vec<DMatrix<f64>> = (0..n)
        .step_by(BLOCK)
        .map(|k0| {
            let w = BLOCK.min(n - k0);
            a.view((k0, k0), (w, w)).clone_owned()
        })
        .collect();
    let mut jitter = 0.0;
    for attempt in 0..7 {
        if attempt > 0 {
            restore_lower(&mut a, &diagonal_blocks);
            for i in 0..n {
                a[(i, i)] += jitter;
            }
        }
        if cholesky_in_place(&mut a) {
            let mut x = b.clone();
            if cholesky_solve_factored(&a, &mut x) && x.iter().all(|v| v.is_finite()) {
                if jitter > 0.0 {
                    tracing::debug!(jitter, "cholesky needed diagonal jitter");
                }
                return Some(x);
            }
        }
        jitter = if jitter == 0.0 {
            base * 1e-12
        } else {
            jitter * 100.0
        };
    }
    None
}

/// Puts back the lower triangle [`cholesky_in_place`] overwrote: from the mirrored strict
/// upper triangle, which it does not write outside the diagonal blocks, then the diagonal
/// blocks from their copies.
fn restore_lower(a: &mut DMatrix<f64>, diagonal_blocks: &[DMatrix<f64>]) {
    a.fill_lower_triangle_with_upper_triangle();
    for (block, k0) in diagonal_blocks.iter().zip((0..a.nrows()).step_by(BLOCK)) {
        let w = block.nrows();
        a.view_mut((k0, k0), (w, w)).copy_from(block);
    }
}

/// Lanes of the f32 kernels: 32 independent accumulators keep several SIMD registers busy
/// (4-wide SSE2 / NEON or 8-wide AVX) instead of waiting on one add chain.
const LANES: usize = 32;

/// Sums the lanes pairwise (fixed order).
#[inline]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

/// Scales `v` to unit length (left as is when zero or not finite).
pub(crate) fn normalize(v: &mut [f32]) {
    let n = dot_f32(v, v).sqrt();
    if n > 0.0 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Dot product of two f32 slices of equal length (vectorizes; deterministic for a given
/// length).
#[inline]
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0.0f32; LANES];
    for (x, y) in ca.zip(cb) {
        let (Ok(x), Ok(y)) = (<&[f32; LANES]>::try_from(x), <&[f32; LANES]>::try_from(y)) else {
            continue;
        };
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = reduce(acc);
    for (&u, &v) in ra.iter().zip(rb) {
        s += u * v;
    }
    s
}

/// `w = w * keep + coef * u` elementwise (equal lengths; vectorizes).
#[inline]
pub(crate) fn scale_add_f32(w: &mut [f32], keep: f32, coef: f32, u: &[f32]) {
    let mut cw = w.chunks_exact_mut(LANES);
    let mut cu = u.chunks_exact(LANES);
    for (x, y) in (&mut cw).zip(&mut cu) {
        let (Ok(x), Ok(y)) = (
            <&mut [f32; LANES]>::try_from(x),
            <&[f32; LANES]>::try_from(y),
        ) else {
            continue;
        };
        for i in 0..LANES {
            x[i] = x[i] * keep + coef * y[i];
        }
    }
    for (x, &y) in cw.into_remainder().iter_mut().zip(cu.remainder()) {
        *x = *x * keep + coef * y;
    }
}

/// [`scale_add_f32`] followed by [`dot_f32`]`(w, v)` in one pass over `w` (same results,
/// half the memory traffic).
#[inline]
pub(crate) fn scale_add_dot_f32(w: &mut [f32], keep: f32, coef: f32, u: &[f32], v: &[f32]) -> f32 {
    let mut cw = w.chunks_exact_mut(LANES);
    let mut cu = u.chunks_exact(LANES);
    let mut cv = v.chunks_exact(LANES);
    let mut acc = [0.0f32; LANES];
    for ((x, y), z) in (&mut cw).zip(&mut cu).zip(&mut cv) {
        let (Ok(x), Ok(y), Ok(z)) = (
            <&mut [f32; LANES]>::try_from(x),
            <&[f32; LANES]>::try_from(y),
            <&[f32; LANES]>::try_from(z),
        ) else {
            continue;
        };
        for i in 0..LANES {
            let r = x[i] * keep + coef * y[i];
            x[i] = r;
            acc[i] += r * z[i];
        }
    }
    let mut s = reduce(acc);
    for ((x, &y), &z) in cw
        .into_remainder()
        .iter_mut()
        .zip(cu.remainder())
        .zip(cv.remainder())
    {
        let r = *x * keep + coef * y;
        *x = r;
        s += r * z;
    }
    s
}

/// The standardization of a head's inputs: `z = (x - shift) * scale`, from source statistics.
/// `scale_j = 1 / sqrt(var_j + floor)`, `floor` = [`STD_VAR_FLOOR_REL`] times the mean
/// variance; all ones when nothing varies yet.
pub(crate) fn standardizer(source: &SourceStats) -> (Vec<f64>, Vec<f64>) {
    let mean = source.mean();
    let var = source.var();
    let d = var.len().max(1) as f64;
    let avg = var.iter().sum::<f64>() / d;
    let scale = if avg > 0.0 && avg.is_finite() {
        let floor = STD_VAR_FLOOR_REL * avg;
        var.iter().map(|v| 1.0 / (v + floor).sqrt()).collect()
    } else {
        vec![1.0; var.len()]
    };
    (mean, scale)
}

/// `(x − shift) ⊙ scale` of an embedding, in f64: the heads' input transform.
pub(crate) fn transform<'a>(
    x: &'a [f32],
    shift: &'a [f64],
    scale: &'a [f64],
) -> impl Iterator<Item = f64> + 'a {
    x.iter()
        .zip(shift)
        .zip(scale)
        .map(|((v, s), f)| (f64::from(*v) - s) * f)
}

/// A class's mean in the same space, `(μ − shift) ⊙ scale` (zeros' transform for an empty
/// class).
pub(crate) fn transformed_mean<'a>(
    stats: &'a SourceStats,
    shift: &'a [f64],
    scale: &'a [f64],
) -> impl Iterator<Item = f64> + 'a {
    let n = stats.count().max(1) as f64;
    stats
        .sum()
        .iter()
        .zip(shift)
        .zip(scale)
        .map(move |((s, m), f)| (s / n - m) * f)
}

/// The input transform of `slda`, `ridge` and `sgd`: always centered on the source mean (for
/// `slda` and `ridge` exactly equivalent thanks to the bias, and it keeps f32 scores
/// accurate), scaled only when standardizing.
pub(crate) fn centered_transform(source: &SourceStats, standardize: bool) -> (Vec<f64>, Vec<f64>) {
    if standardize {
        standardizer(source)
    } else {
        (source.mean(), vec![1.0; source.dim()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rank1_matches_dense() {
        let v = [1.0, -2.0, 0.5, 3.0];
        let w = [0.25, 1.0, -1.0, 2.0];
        let mut p = vec![0.0; packed_len(4)];
        syr_packed(&mut p, 2.0, &v);
        syr_packed(&mut p, -0.5, &w);
        let s = [1.0, 2.0, 0.5, 1.0];
        let m = unpack_scaled(&p, &s);
        for i in 0..4 {
            for j in 0..4 {
                let want = (2.0 * v[i] * v[j] - 0.5 * w[i] * w[j]) * s[i] * s[j];
                assert!((m[(i, j)] - want).abs() < 1e-12, "{i},{j}");
            }
        }
    }

    #[test]
    fn blocked_cholesky_matches_nalgebra() {
        // Sizes around the block size, several right-hand sides.
        for (n, c) in [(1, 1), (5, 3), (63, 2), (64, 1), (65, 4), (150, 7)] {
            let g = DMatrix::from_fn(n, n + 3, |i, j| ((i * 7 + j * 13) % 17) as f64 - 8.0);
            let a = &g * g.transpose() + DMatrix::identity(n, n) * 0.5;
            let b = DMatrix::from_fn(n, c, |i, j| (i as f64 * 0.3 + j as f64).sin());
            let x = cholesky_solve(a.clone(), &b).unwrap();
            assert!((&a * &x - &b).norm() <= 1e-8 * b.norm(), "n={n}");
            let mut l = a.clone();
            assert!(cholesky_in_place(&mut l));
            let want = nalgebra::Cholesky::new(a.clone()).unwrap().l();
            let got = l.lower_triangle();
            assert!((&got - &want).norm() <= 1e-10 * want.norm(), "n={n}");
        }
        let mut indefinite = DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 2.0, 1.0]);
        assert!(!cholesky_in_place(&mut indefinite));
    }

    /// The retries factor exactly what a fresh copy of A would hold: with a matrix larger than
    /// a block that needs jitter, the answer equals factoring a jittered copy.
    #[test]
    fn retries_rebuild_the_matrix_exactly() {
        let n = 2 * BLOCK + 17;
        // Rank-deficient PSD (n × 40 factor): the first attempt fails, a jittered one succeeds.
        let g = DMatrix::from_fn(n, 40, |i, j| ((i * 7 + j * 13) % 23) as f64 - 11.0);
        let a = &g * g.transpose();
        let b = DMatrix::from_fn(n, 3, |i, j| (i + j) as f64 / n as f64);
        assert!(!cholesky_in_place(&mut a.clone()), "needs a retry");
        // Only the lower triangle is read: garbage above must not matter.
        let mut lower_only = a.clone();
        for j in 0..n {
            for i in 0..j {
                lower_only[(i, j)] = f64::NAN;
            }
        }
        let got = cholesky_solve(lower_only, &b).expect("solved with jitter");
        let mean_diag = a.diagonal().iter().map(|v| v.abs()).sum::<f64>() / n as f64;
        let mut want = None;
        let mut jitter = mean_diag * 1e-12;
        for _ in 1..7 {
            let mut m = a.clone();
            for i in 0..n {
                m[(i, i)] += jitter;
            }
            if cholesky_in_place(&mut m) {
                let mut x = b.clone();
                if cholesky_solve_factored(&m, &mut x) && x.iter().all(|v| v.is_finite()) {
                    want = Some(x);
                    break;
                }
            }
            jitter *= 100.0;
        }
        assert_eq!(got, want.expect("a jittered copy factors"));
    }

    #[test]
    fn cholesky_solves_and_falls_back() {
        let a = DMatrix::from_row_slice(2, 2, &[4.0, 1.0, 1.0, 3.0]);
        let b = DMatrix::from_row_slice(2, 1, &[1.0, 2.0]);
        let x = cholesky_solve(a.clone(), &b).unwrap();
        assert!((&a * &x - &b).norm() < 1e-12);
        // Singular PSD matrix: jitter makes it solvable.
        let s = DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 1.0, 1.0]);
        assert!(cholesky_solve(s, &b).is_some());
        // Indefinite beyond any jitter: no answer, no panic.
        let bad = DMatrix::from_row_slice(2, 2, &[-1.0, 0.0, 0.0, -1.0]);
        assert!(cholesky_solve(bad, &b).is_none());
        let nan = DMatrix::from_row_slice(2, 2, &[f64::NAN, 0.0, 0.0, 1.0]);
        assert!(cholesky_solve(nan, &b).is_none());
    }

    #[test]
    fn scale_add_matches_naive() {
        for n in [0, 5, 32, 70] {
            let mut w: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let u: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
            scale_add_f32(&mut w, 0.5, 2.0, &u);
            for (i, v) in w.iter().enumerate() {
                assert_eq!(*v, i as f32 * 0.5 + 2.0 * (1.0 - i as f32));
            }
        }
    }

    #[test]
    fn fused_kernel_matches_separate_ones() {
        for n in [0, 3, 32, 70, 1280] {
            let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let u: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.05).sin()).collect();
            let mut a = w.clone();
            scale_add_f32(&mut a, 0.99, -0.3, &u);
            let want = dot_f32(&a, &v);
            let mut b = w.clone();
            let got = scale_add_dot_f32(&mut b, 0.99, -0.3, &u, &v);
            assert_eq!(a, b);
            assert_eq!(want.to_bits(), got.to_bits(), "{n}");
        }
    }

    #[test]
    fn dot_matches_naive() {
        for n in [0, 1, 7, 8, 9, 31, 1280] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            assert!((f64::from(dot_f32(&a, &b)) - want).abs() < 1e-4, "{n}");
        }
    }
}
