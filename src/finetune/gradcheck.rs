//! For the tail's unit tests: finite-difference checks of analytic gradients, and random
//! weights and activations to check them on.

use rand::rngs::SmallRng;
use rand::Rng;

use super::Pointwise;

/// How a derivative is checked: the step, the tolerance (relative, plus as much absolute),
/// and whether a one-sided difference may stand in for the central one (where a ReLU6 kink
/// lies within the step the function is piecewise linear there, and the analytic gradient is
/// one of the two slopes).
pub struct Step {
    pub h: f32,
    pub tol: f64,
    pub one_sided: bool,
}

/// For layers without kinks in reach: central differences only.
pub const SMOOTH: Step = Step {
    h: 1e-2,
    tol: 2e-3,
    one_sided: false,
};

/// For chains of layers through ReLU6.
pub const KINKED: Step = Step {
    h: 1e-3,
    tol: 5e-3,
    one_sided: true,
};

/// Checks every `analytic[i]` against the finite differences of `at(i, d)`, the loss with
/// element `i` moved by `d`; panics naming `what` and `i` on the first that differs. Returns
/// how many were checked.
pub fn check_each(
    analytic: &[f32],
    step: &Step,
    what: &str,
    at: impl Fn(usize, f32) -> f64,
) -> usize {
    let h = f64::from(step.h);
    for (i, a) in analytic.iter().enumerate() {
        let (up, down) = (at(i, step.h), at(i, -step.h));
        let central = (up - down) / (2.0 * h);
        let mut candidates = vec![central];
        if step.one_sided {
            let mid = at(i, 0.0);
            candidates.extend([(up - mid) / h, (mid - down) / h]);
        }
        let a = f64::from(*a);
        assert!(
            candidates
                .iter()
                .any(|n| (a - n).abs() <= step.tol * (1.0 + n.abs())),
            "{what}[{i}]: analytic {a} vs finite differences {candidates:?}"
        );
    }
    analytic.len()
}

/// `n` values uniform in (−scale, scale).
pub fn random(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// A 1×1 convolution with random weights and biases.
pub fn pointwise(rng: &mut SmallRng, cin: usize, cout: usize) -> Pointwise {
    Pointwise {
        cin,
        cout,
        w: random(rng, cin * cout, 0.6),
        b: random(rng, cout, 0.3),
    }
}
