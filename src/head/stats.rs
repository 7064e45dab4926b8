//! HeadDomain statistics: count, per-dimension sums and sums of squares of embeddings (f64),
//! exactly mergeable and removable; used per class and for the whole head.

use super::HeadError;

/// Count, mean and per-dimension variance of a set of embeddings.
///
/// Kept as the count plus f64 sums and sums of squares, so that adding, removing, merging
/// and subtracting sets are exact up to float rounding and independent of order.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceStats {
    count: u64,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl SourceStats {
    /// Empty statistics for `dim`-dimensional embeddings.
    pub fn new(dim: usize) -> SourceStats {
        SourceStats {
            count: 0,
            sum: vec![0.0; dim],
            sum_sq: vec![0.0; dim],
        }
    }

    /// Builds statistics from stored parts; the caller has checked lengths and finiteness.
    pub(crate) fn from_parts(count: u64, sum: Vec<f64>, sum_sq: Vec<f64>) -> SourceStats {
        SourceStats { count, sum, sum_sq }
    }

    /// The embedding dimension.
    pub fn dim(&self) -> usize {
        self.sum.len()
    }

    /// How many embeddings went in.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Per-dimension sums of the embeddings.
    pub fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// Per-dimension sums of the squared embeddings.
    pub fn sum_sq(&self) -> &[f64] {
        &self.sum_sq
    }

    /// Per-dimension mean (zeros when empty).
    pub fn mean(&self) -> Vec<f64> {
        if self.count == 0 {
            return vec![0.0; self.dim()];
        }
        let n = self.count as f64;
        self.sum.iter().map(|s| s / n).collect()
    }

    /// Per-dimension population variance (zeros when empty; never negative).
    pub fn var(&self) -> Vec<f64> {
        if self.count == 0 {
            return vec![0.0; self.dim()];
        }
        let n = self.count as f64;
        self.sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let m = s / n;
                (q / n - m * m).max(0.0)
            })
            .collect()
    }

    /// Adds one embedding after checking its dimension and finiteness.
    pub fn push(&mut self, x: &[f32]) -> Result<(), HeadError> {
        super::check_embedding(x, self.dim())?;
        self.add(x);
        Ok(())
    }

    /// Adds the statistics of another set (same dimension required).
    pub fn merge(&mut self, other: &SourceStats) -> Result<(), HeadError> {
        if other.dim() != self.dim() {
            return Err(HeadError::DimensionMismatch {
                expected: self.dim(),
                got: other.dim(),
            });
        }
        self.add_stats(other);
        Ok(())
    }

    /// Adds one embedding (already checked).
    pub(crate) fn add(&mut self, x: &[f32]) {
        self.count += 1;
        for ((s, q), &v) in self.sum.iter_mut().zip(self.sum_sq.iter_mut()).zip(x) {
            let v = f64::from(v);
            *s += v;
            *q += v * v;
        }
    }

    /// Removes one embedding that was added before (already checked).
    pub(crate) fn remove(&mut self, x: &[f32]) {
        self.count = self.count.saturating_sub(1);
        if self.count == 0 {
            self.clear();
            return;
        }
        for ((s, q), &v) in self.sum.iter_mut().zip(self.sum_sq.iter_mut()).zip(x) {
            let v = f64::from(v);
            *s -= v;
            *q -= v * v;
        }
    }

    /// Adds another set's statistics (same dimension, already checked).
    pub(crate) fn add_stats(&mut self, other: &SourceStats) {
        self.count += other.count;
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a += b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a += b;
        }
    }

    /// Removes a subset's statistics (same dimension, already checked).
    pub(crate) fn subtract(&mut self, other: &SourceStats) {
        self.count = self.count.saturating_sub(other.count);
        if self.count == 0 {
            self.clear();
            return;
        }
        for (a, b) in self.sum.iter_mut().zip(&other.sum) {
            *a -= b;
        }
        for (a, b) in self.sum_sq.iter_mut().zip(&other.sum_sq) {
            *a -= b;
        }
    }

    /// Empties the statistics (exact zeros).
    pub(crate) fn clear(&mut self) {
        self.count = 0;
        self.sum.iter_mut().for_each(|v| *v = 0.0);
        self.sum_sq.iter_mut().for_each(|v| *v = 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(xs: &[Vec<f32>], d: usize) -> (Vec<f64>, Vec<f64>) {
        let n = xs.len() as f64;
        let mut mean = vec![0.0; d];
        for x in xs {
            for (m, &v) in mean.iter_mut().zip(x) {
                *m += f64::from(v) / n;
            }
        }
        let mut var = vec![0.0; d];
        for x in xs {
            for ((s, &v), m) in var.iter_mut().zip(x).zip(&mean) {
                *s += (f64::from(v) - m).powi(2) / n;
            }
        }
        (mean, var)
    }

    fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= tol * (1.0 + y.abs()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn merge_and_remove_match_batch(
            xs in prop::collection::vec(prop::collection::vec(-50.0f32..50.0, 5), 2..40),
            split in 0usize..40,
        ) {
            let d = 5;
            let split = split % xs.len();
            let (mut a, mut b) = (SourceStats::new(d), SourceStats::new(d));
            for x in &xs[..split] { a.push(x).unwrap(); }
            for x in &xs[split..] { b.push(x).unwrap(); }
            a.merge(&b).unwrap();
            let (mean, var) = batch(&xs, d);
            prop_assert_eq!(a.count(), xs.len() as u64);
            prop_assert!(close(&a.mean(), &mean, 1e-9));
            prop_assert!(close(&a.var(), &var, 1e-7));
            // Removing B again leaves A's statistics.
            a.subtract(&b);
            if split > 0 {
                let (mean_a, var_a) = batch(&xs[..split], d);
                prop_assert!(close(&a.mean(), &mean_a, 1e-9));
                prop_assert!(close(&a.var(), &var_a, 1e-6));
            } else {
                prop_assert_eq!(a, SourceStats::new(d));
            }
        }
    }

    #[test]
    fn push_checks_input() {
        let mut s = SourceStats::new(3);
        assert_eq!(
            s.push(&[1.0, 2.0]).unwrap_err().code(),
            "dimension_mismatch"
        );
        assert_eq!(
            s.push(&[1.0, f32::NAN, 2.0]).unwrap_err().code(),
            "non_finite"
        );
        assert_eq!(s.count(), 0);
        s.push(&[1.0, 2.0, 3.0]).unwrap();
        s.remove(&[1.0, 2.0, 3.0]);
        assert_eq!(s, SourceStats::new(3));
        assert_eq!(
            s.merge(&SourceStats::new(4)).unwrap_err().code(),
            "dimension_mismatch"
        );
    }
}
