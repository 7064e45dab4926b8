//! Tests of the learners through the `Head` API: streaming vs batch solutions, exact merge and
//! unlearn, forgetting, determinism, accuracy on synthetic Gaussian blobs, input validation.

use nalgebra::{DMatrix, DVector};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng as _, SeedableRng};

use super::*;

pub(crate) const BACKBONE: &str =
    "ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34ab12cd34";

/// Seeded standard normals (Box–Muller).
pub(crate) struct Gauss(SmallRng);

impl Gauss {
    pub(crate) fn new(seed: u64) -> Gauss {
        Gauss(SmallRng::seed_from_u64(seed))
    }
    pub(crate) fn normal(&mut self) -> f64 {
        let u: f64 = self.0.gen_range(f64::EPSILON..1.0);
        let v: f64 = self.0.gen();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
    pub(crate) fn rng(&mut self) -> &mut SmallRng {
        &mut self.0
    }
}

/// Gaussian blobs: `classes` centers `~ N(offset, sep²)` per dimension, samples with unit
/// noise, shuffled. Returns (train, test).
pub(crate) type Sample = (Vec<f32>, String);

pub(crate) fn blobs(
    seed: u64,
    d: usize,
    classes: usize,
    per_class: usize,
    test_per_class: usize,
    sep: f64,
    offset: f64,
) -> (Vec<Sample>, Vec<Sample>) {
    let mut g = Gauss::new(seed);
    let centers: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..d).map(|_| offset + sep * g.normal()).collect())
        .collect();
    let make = |n: usize, g: &mut Gauss| {
        let mut out = Vec::new();
        for (k, c) in centers.iter().enumerate() {
            for _ in 0..n {
                let x = c.iter().map(|m| (m + g.normal()) as f32).collect();
                out.push((x, format!("c{k}")));
            }
        }
        out.shuffle(g.rng());
        out
    };
    let train = make(per_class, &mut g);
    let test = make(test_per_class, &mut g);
    (train, test)
}

fn config(algorithm: Algorithm, standardize: bool) -> HeadConfig {
    HeadConfig {
        algorithm,
        standardize,
        ..HeadConfig::default()
    }
}

pub(crate) fn train(cfg: &HeadConfig, d: usize, data: &[Sample]) -> Head {
    let mut h = Head::new(cfg, d, BACKBONE);
    for (x, y) in data {
        h.update(x, y).unwrap();
    }
    h
}

fn rel_close(a: &[f64], b: &[f64], tol: f64) -> bool {
    let scale = b.iter().chain(a).fold(1e-300f64, |m, v| m.max(v.abs()));
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * scale)
}

fn accuracy(h: &Head, test: &[Sample]) -> f64 {
    let p = h.snapshot();
    let right = test
        .iter()
        .filter(|(x, y)| p.predict(x, 1).unwrap().top[0].label == *y)
        .count();
    right as f64 / test.len() as f64
}

/// Probabilities keyed by label, for heads whose class order may differ.
fn probs_by_label(h: &Head, x: &[f32]) -> Vec<(String, f32)> {
    let p = h.snapshot();
    let mut v: Vec<(String, f32)> = p
        .labels()
        .iter()
        .cloned()
        .zip(p.probabilities(x).unwrap())
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Asserts two heads hold the same knowledge up to float error.
fn assert_heads_close(a: &Head, b: &Head, probes: &[Sample], tol: f64) {
    let mut ca = a.classes();
    let mut cb = b.classes();
    ca.sort_by(|x, y| x.name.cmp(&y.name));
    cb.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(ca, cb);
    assert_eq!(a.samples(), b.samples());
    assert!(rel_close(
        a.source_stats().sum(),
        b.source_stats().sum(),
        tol
    ));
    assert!(rel_close(
        a.source_stats().sum_sq(),
        b.source_stats().sum_sq(),
        tol
    ));
    for c in &ca {
        let (sa, sb) = (
            a.class_stats(&c.name).unwrap(),
            b.class_stats(&c.name).unwrap(),
        );
        assert!(rel_close(sa.sum(), sb.sum(), tol), "class sum {}", c.name);
        assert!(rel_close(sa.sum_sq(), sb.sum_sq(), tol));
    }
    match (&a.learner, &b.learner) {
        (Learner::Ncm(x), Learner::Ncm(y)) => {
            for c in &ca {
                let i = a.find(&c.name).unwrap();
                let j = b.find(&c.name).unwrap();
                assert!(rel_close(&x.normalized_sum[i], &y.normalized_sum[j], tol));
            }
        }
        (Learner::Slda(x), Learner::Slda(y)) | (Learner::Ridge(x), Learner::Ridge(y)) => {
            assert_eq!(x.count, y.count);
            assert!(rel_close(&x.packed, &y.packed, tol), "scatter differs");
        }
        (Learner::Auto(x), Learner::Auto(y)) => {
            for c in &ca {
                let i = a.find(&c.name).unwrap();
                let j = b.find(&c.name).unwrap();
                assert!(rel_close(
                    &x.ncm.normalized_sum[i],
                    &y.ncm.normalized_sum[j],
                    tol
                ));
            }
            assert_eq!(x.scatter.count, y.scatter.count);
            assert!(rel_close(&x.scatter.packed, &y.scatter.packed, tol));
        }
        (Learner::Sgd(_), Learner::Sgd(_)) => {}
        _ => panic!("different learners"),
    }
    for (x, _) in probes {
        let (pa, pb) = (probs_by_label(a, x), probs_by_label(b, x));
        for ((la, va), (lb, vb)) in pa.iter().zip(&pb) {
            assert_eq!(la, lb);
            assert!((va - vb).abs() <= 1e-3, "{la}: {va} vs {vb}");
        }
    }
}

/// Batch ridge with an unpenalized bias, by LU on the augmented normal equations, on inputs
/// standardized (or centered) exactly as the head documents: returns (W d×C, b, shift, scale).
fn batch_ridge(
    data: &[Sample],
    labels: &[String],
    d: usize,
    lambda: f64,
    standardize: bool,
) -> (DMatrix<f64>, Vec<f64>) {
    let n = data.len();
    let x = DMatrix::from_fn(n, d, |i, j| f64::from(data[i].0[j]));
    let mean: Vec<f64> = (0..d).map(|j| x.column(j).mean()).collect();
    let var: Vec<f64> = (0..d)
        .map(|j| {
            x.column(j)
                .iter()
                .map(|v| (v - mean[j]).powi(2))
                .sum::<f64>()
                / n as f64
        })
        .collect();
    let avg = var.iter().sum::<f64>() / d as f64;
    let scale: Vec<f64> = if standardize {
        var.iter().map(|v| 1.0 / (v + 0.01 * avg).sqrt()).collect()
    } else {
        vec![1.0; d]
    };
    let c = labels.len();
    let za = DMatrix::from_fn(n, d + 1, |i, j| {
        if j == d {
            1.0
        } else {
            (x[(i, j)] - mean[j]) * scale[j]
        }
    });
    let y = DMatrix::from_fn(n, c, |i, k| f64::from(u8::from(data[i].1 == labels[k])));
    let mut a = za.transpose() * &za;
    for i in 0..d {
        a[(i, i)] += lambda;
    }
    let theta = a.lu().solve(&(za.transpose() * y)).unwrap();
    let w = theta.rows(0, d).into_owned();
    let b = theta.row(d).iter().copied().collect();
    (w, b)
}

#[test]
fn ridge_streaming_equals_batch() {
    let cases = [
        (16, 3, 40, 1.0, false),
        (40, 5, 20, 0.1, true),
        (64, 10, 4, 1.0, false), // fewer samples than dimensions
        (64, 7, 30, 3.0, true),
        (24, 4, 3, 0.5, true),
    ];
    for (seed, &(d, c, per, lambda, standardize)) in cases.iter().enumerate() {
        let (data, _) = blobs(seed as u64, d, c, per, 0, 2.0, 1.5);
        let cfg = HeadConfig {
            ridge_lambda: lambda,
            ..config(Algorithm::Ridge, standardize)
        };
        let h = train(&cfg, d, &data);
        let Learner::Ridge(s) = &h.learner else {
            unreachable!()
        };
        let sol = ridge::solve(s, &h.ctx()).unwrap();
        let labels: Vec<String> = h.classes().into_iter().map(|k| k.name).collect();
        let (w, b) = batch_ridge(&data, &labels, d, lambda, standardize);
        let werr = (&sol.w - &w).norm() / w.norm();
        let berr = (DVector::from_vec(sol.b.clone()) - DVector::from_vec(b.clone())).norm()
            / DVector::from_vec(b).norm();
        assert!(
            werr <= 1e-5 && berr <= 1e-5,
            "case {seed}: W {werr:e} b {berr:e}"
        );
        assert!(accuracy(&h, &data) > 0.9, "case {seed}");
    }
}

#[test]
fn slda_streaming_matches_batch_lda() {
    let (d, c) = (24, 5);
    for standardize in [false, true] {
        let (data, _) = blobs(11, d, c, 25, 0, 2.0, 3.0);
        let cfg = HeadConfig {
            slda_shrinkage: 1e-3,
            ..config(Algorithm::Slda, standardize)
        };
        let h = train(&cfg, d, &data);
        let Learner::Slda(s) = &h.learner else {
            unreachable!()
        };
        // Batch within-class scatter.
        let labels: Vec<String> = h.classes().into_iter().map(|k| k.name).collect();
        let mut scatter = DMatrix::<f64>::zeros(d, d);
        let mut means = Vec::new();
        for l in &labels {
            let rows: Vec<&Vec<f32>> = data.iter().filter(|s| &s.1 == l).map(|s| &s.0).collect();
            let mu: DVector<f64> = rows
                .iter()
                .map(|x| DVector::from_iterator(d, x.iter().map(|&v| f64::from(v))))
                .sum::<DVector<f64>>()
                / rows.len() as f64;
            for x in &rows {
                let v = DVector::from_iterator(d, x.iter().map(|&v| f64::from(v))) - &mu;
                scatter += &v * v.transpose();
            }
            means.push(mu);
        }
        let packed = linalg::unpack_scaled(&s.packed, &vec![1.0; d]);
        assert!((&packed - &scatter).norm() <= 1e-9 * scatter.norm());
        assert_eq!(s.count, data.len() as u64);
        // Batch LDA in the documented transformed space.
        let sol = slda::solve(s, &h.ctx()).unwrap();
        let sc = DMatrix::from_diagonal(&DVector::from_vec(sol.scale.clone()));
        let shift = DVector::from_vec(sol.shift.clone());
        let sigma = &sc * (&scatter / data.len() as f64) * &sc;
        let a = sigma * (1.0 - 1e-3) + DMatrix::identity(d, d) * 1e-3;
        let inv = a.try_inverse().unwrap();
        for (k, mu) in means.iter().enumerate() {
            let m = &sc * (mu - &shift);
            let w = &inv * &m;
            let err = (w.clone() - sol.w.column(k)).norm() / w.norm();
            assert!(err < 1e-8, "class {k}: {err:e}");
            let b = -0.5 * m.dot(&w);
            assert!((b - sol.b[k]).abs() <= 1e-8 * b.abs().max(1.0));
        }
        assert!(accuracy(&h, &data) > 0.95);
    }
}

#[test]
fn merge_equals_union_for_exact_learners() {
    let d = 20;
    for algorithm in [Algorithm::Ncm, Algorithm::Slda, Algorithm::Ridge] {
        for standardize in [false, true] {
            let (data, probes) = blobs(3, d, 6, 12, 3, 2.0, 1.0);
            // A sees c0..c3, B sees c2..c5: shared classes c2, c3.
            let in_a = |y: &str| ["c0", "c1", "c2", "c3"].contains(&y);
            let in_b = |y: &str| ["c2", "c3", "c4", "c5"].contains(&y);
            let (mut a_data, mut b_data) = (Vec::new(), Vec::new());
            for (i, s) in data.iter().enumerate() {
                if in_a(&s.1) && (!in_b(&s.1) || i % 2 == 0) {
                    a_data.push(s.clone());
                } else {
                    b_data.push(s.clone());
                }
            }
            let cfg = config(algorithm, standardize);
            let mut a = train(&cfg, d, &a_data);
            let b = train(&cfg, d, &b_data);
            let v = a.version();
            a.merge(&b).unwrap();
            assert_eq!(a.version(), v + 1);
            let union: Vec<Sample> = a_data.iter().chain(&b_data).cloned().collect();
            let u = train(&cfg, d, &union);
            // Same class order too: A's classes, then B's new ones.
            assert_eq!(a.classes(), u.classes(), "{algorithm}");
            assert_heads_close(&a, &u, &probes, 1e-9);
            // And equal to training on a different order of the same samples.
            let mut shuffled = union.clone();
            shuffled.shuffle(&mut SmallRng::seed_from_u64(5));
            assert_heads_close(&a, &train(&cfg, d, &shuffled), &probes, 1e-9);
        }
    }
}

#[test]
fn unmerge_is_the_inverse_of_merge() {
    let d = 12;
    for algorithm in [
        Algorithm::Auto,
        Algorithm::Ncm,
        Algorithm::Slda,
        Algorithm::Ridge,
    ] {
        let cfg = config(algorithm, false);
        let (data, probes) = blobs(11, d, 5, 12, 2, 2.0, 1.5);
        // Three boards with overlapping classes: c0 is on all three, c4 only on C.
        let part = |k: usize| -> Vec<Sample> {
            data.iter()
                .enumerate()
                .filter(|(i, s)| match k {
                    0 => s.1 != "c4" && i % 3 == 0,
                    1 => s.1 != "c4" && i % 3 == 1,
                    _ => ["c0", "c4"].contains(&s.1.as_str()) && i % 3 == 2 || s.1 == "c4",
                })
                .map(|(_, s)| s.clone())
                .collect()
        };
        let (a, b, c) = (
            train(&cfg, d, &part(0)),
            train(&cfg, d, &part(1)),
            train(&cfg, d, &part(2)),
        );
        let mut total = Head::new(&cfg, d, BACKBONE);
        for h in [&a, &b, &c] {
            total.merge(h).unwrap();
        }
        let mut ac = Head::new(&cfg, d, BACKBONE);
        ac.merge(&a).unwrap();
        ac.merge(&c).unwrap();
        let mut without_b = total.clone();
        without_b.unmerge(&b).unwrap();
        assert_heads_close(&without_b, &ac, &probes, 1e-9);
        // C alone holds c4: removing C removes the class.
        let mut ab = total.clone();
        ab.unmerge(&c).unwrap();
        assert!(ab.find("c4").is_none(), "{algorithm}");
        let mut just_ab = a.clone();
        just_ab.merge(&b).unwrap();
        assert_heads_close(&ab, &just_ab, &probes, 1e-9);
        // Replacing a term (the fleet's running total): remove B's old head, add its new one.
        let b2 = train(&cfg, d, &part(1)[..7]);
        let mut replaced = total.clone();
        replaced.unmerge(&b).unwrap();
        replaced.merge(&b2).unwrap();
        let mut rebuilt = a.clone();
        rebuilt.merge(&c).unwrap();
        rebuilt.merge(&b2).unwrap();
        assert_heads_close(&replaced, &rebuilt, &probes, 1e-9);
        // Everything removed: nothing left.
        let mut empty = total.clone();
        for h in [&c, &a, &b] {
            empty.unmerge(h).unwrap();
        }
        assert!(empty.classes().is_empty());
        assert_eq!(empty.samples(), 0);
        // A head that was not merged in: refused, nothing changes.
        let v = ab.version();
        let err = ab.unmerge(&c).unwrap_err();
        assert_eq!(err.code(), "not_merged", "{algorithm}");
        assert_eq!(ab.version(), v);
        let big = train(&cfg, d, &data);
        assert_eq!(ab.unmerge(&big).unwrap_err().code(), "not_merged");
    }
    let sgd = train(
        &config(Algorithm::Sgd, false),
        2,
        &[(vec![1.0, 2.0], "a".into())],
    );
    let mut twice = sgd.clone();
    twice.merge(&sgd).unwrap();
    assert_eq!(twice.unmerge(&sgd).unwrap_err().code(), "unsupported");
}

#[test]
fn sgd_merge_averages_weights() {
    let d = 8;
    let (data, test) = blobs(4, d, 3, 30, 20, 3.0, 0.0);
    let cfg = config(Algorithm::Sgd, false);
    let (first, second) = data.split_at(60);
    let mut a = train(&cfg, d, first);
    let mut b = train(&cfg, d, second);
    b.update(&[0.5; 8], "only_b").unwrap();
    let (Learner::Sgd(sa), Learner::Sgd(sb)) = (a.learner.clone(), b.learner.clone()) else {
        unreachable!()
    };
    let i = a.find("c0").unwrap();
    let (na, nb) = (a.samples() as f64, b.samples() as f64);
    a.merge(&b).unwrap();
    let Learner::Sgd(m) = &a.learner else {
        unreachable!()
    };
    let j = b.find("c0").unwrap();
    let (wa, wb, wm) = (sa.weights(3), sb.weights(4), m.weights(4));
    let want = (na * f64::from(wa[i * d]) + nb * f64::from(wb[j * d])) / (na + nb);
    assert!((f64::from(wm[i * d]) - want).abs() < 1e-6);
    let k = a.find("only_b").unwrap();
    let jb = b.find("only_b").unwrap();
    assert_eq!(wm[k * d..(k + 1) * d], wb[jb * d..(jb + 1) * d]);
    assert_eq!(m.steps, sa.steps + sb.steps);
    assert_eq!(a.samples(), 91);
    assert!(accuracy(&a, &test) > 0.9);
    let mut std = Head::new(&config(Algorithm::Sgd, true), d, BACKBONE);
    assert_eq!(std.merge(&b).unwrap_err().code(), "config_mismatch");
}

#[test]
fn unlearn_restores_the_head() {
    let d = 16;
    for algorithm in [Algorithm::Ncm, Algorithm::Slda, Algorithm::Ridge] {
        for standardize in [false, true] {
            let cfg = config(algorithm, standardize);
            let (data, probes) = blobs(7, d, 4, 10, 3, 2.0, 2.0);
            let base = train(&cfg, d, &data);
            let mut h = base.clone();
            let mut g = Gauss::new(99);
            let extra: Vec<Sample> = (0..6)
                .map(|i| {
                    let x = (0..d).map(|_| (3.0 * g.normal()) as f32).collect();
                    let y = if i % 3 == 0 { "new" } else { "c1" };
                    (x, y.to_string())
                })
                .collect();
            for (x, y) in &extra {
                h.update(x, y).unwrap();
            }
            assert!(h.find("new").is_some());
            for (x, y) in extra.iter().rev().step_by(2).chain(extra.iter().step_by(2)) {
                h.unlearn(x, y).unwrap();
            }
            assert!(h.find("new").is_none(), "class emptied by unlearn is gone");
            assert_eq!(h.version(), base.version() + 12);
            assert_heads_close(&h, &base, &probes, 1e-9);
            // Unlearning everything empties the head.
            for (x, y) in &data {
                h.unlearn(x, y).unwrap();
            }
            assert!(h.classes().is_empty());
            assert_eq!(h.source_stats(), &SourceStats::new(d));
            if let Learner::Slda(s) | Learner::Ridge(s) = &h.learner {
                assert_eq!(s.count, 0);
                let (Learner::Slda(b) | Learner::Ridge(b)) = &base.learner else {
                    unreachable!()
                };
                let peak = b.packed.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                assert!(s.packed.iter().all(|v| v.abs() <= 1e-9 * peak));
            }
            assert_eq!(
                h.unlearn(&data[0].0, "c0").unwrap_err().code(),
                "unknown_class"
            );
        }
    }
    let mut sgd = train(
        &config(Algorithm::Sgd, false),
        2,
        &[(vec![1.0, 2.0], "a".into())],
    );
    let v = sgd.version();
    assert_eq!(
        sgd.unlearn(&[1.0, 2.0], "a").unwrap_err().code(),
        "unsupported"
    );
    assert_eq!(sgd.version(), v);
}

#[test]
fn late_class_is_predicted_after_one_sample() {
    let d = 32;
    let (data, _) = blobs(21, d, 6, 20, 0, 2.0, 1.0);
    let (late, early): (Vec<Sample>, Vec<Sample>) = data.into_iter().partition(|s| s.1 == "c5");
    for standardize in [false, true] {
        let mut h = train(&config(Algorithm::Ncm, standardize), d, &early);
        assert!(h.find("c5").is_none());
        h.update(&late[0].0, "c5").unwrap();
        let p = h.snapshot();
        let right = late[1..]
            .iter()
            .filter(|s| p.predict(&s.0, 1).unwrap().top[0].label == "c5")
            .count();
        assert!(right >= late.len() - 2, "{right} of {}", late.len() - 1);
    }
}

#[test]
fn sgd_is_deterministic_and_order_sensitive() {
    let d = 12;
    let (data, _) = blobs(8, d, 4, 15, 0, 2.0, 1.0);
    for standardize in [false, true] {
        let cfg = config(Algorithm::Sgd, standardize);
        let a = train(&cfg, d, &data).to_bytes().unwrap();
        let b = train(&cfg, d, &data).to_bytes().unwrap();
        assert_eq!(a, b);
        let mut other = data.clone();
        other.swap(0, 1);
        other.swap(10, 30);
        assert_ne!(train(&cfg, d, &other).to_bytes().unwrap(), a);
    }
}

#[test]
fn forget_removes_a_class() {
    let d = 16;
    let (data, probes) = blobs(13, d, 5, 10, 4, 2.0, 1.0);
    let without: Vec<Sample> = data.iter().filter(|s| s.1 != "c2").cloned().collect();
    for algorithm in Algorithm::ALL {
        for standardize in [false, true] {
            let cfg = config(algorithm, standardize);
            let mut h = train(&cfg, d, &data);
            let v = h.version();
            assert!(h.forget("c2"));
            assert_eq!(h.version(), v + 1);
            assert!(!h.forget("c2"));
            assert_eq!(h.version(), v + 1);
            assert!(h.classes().iter().all(|c| c.name != "c2"));
            assert_eq!(h.samples(), without.len() as u64);
            let p = h.snapshot();
            assert_eq!(p.len(), 4);
            for (x, _) in &probes {
                assert!(p.predict(x, 5).unwrap().top.iter().all(|s| s.label != "c2"));
            }
            let w = train(&cfg, d, &without);
            assert!(rel_close(
                h.source_stats().sum(),
                w.source_stats().sum(),
                1e-9
            ));
            match (&h.learner, &w.learner) {
                (Learner::Ncm(_), _) => assert_heads_close(&h, &w, &probes, 1e-9),
                (Learner::Slda(s), Learner::Slda(sw)) | (Learner::Ridge(s), Learner::Ridge(sw)) => {
                    // Documented: the class's within-class scatter stays.
                    assert_eq!(s.count, data.len() as u64);
                    assert!(sw.count < s.count);
                }
                (Learner::Auto(a), Learner::Auto(aw)) => {
                    assert_eq!(a.scatter.count, data.len() as u64);
                    assert!(aw.scatter.count < a.scatter.count);
                    assert_eq!(a.ncm.normalized_sum.len(), h.classes().len());
                }
                (Learner::Sgd(s), _) => {
                    assert_eq!(s.bias.len(), 4);
                    assert_eq!(s.weights(4).len(), 4 * d);
                }
                _ => unreachable!(),
            }
            // A forgotten label can come back.
            h.update(&data[0].0, "c2").unwrap();
            assert_eq!(h.classes().last().unwrap().name, "c2");
        }
    }
}

#[test]
fn all_learners_are_accurate_on_separable_blobs() {
    let (d, c) = (32, 6);
    for algorithm in Algorithm::ALL {
        for standardize in [false, true] {
            let (train_set, test) = blobs(17, d, c, 30, 50, 1.0, 4.0);
            let h = train(&config(algorithm, standardize), d, &train_set);
            let acc = accuracy(&h, &test);
            assert!(acc >= 0.95, "{algorithm} standardize={standardize}: {acc}");
            // Scores are calibrated probabilities.
            let top = h.snapshot().predict(&test[0].0, c).unwrap().top;
            let sum: f32 = top.iter().map(|s| s.score).sum();
            assert!((sum - 1.0).abs() < 1e-4);
        }
    }
}

#[test]
fn update_validates_input() {
    for algorithm in Algorithm::ALL {
        let mut h = Head::new(&config(algorithm, false), 3, BACKBONE);
        let cases: [(&[f32], &str, &str); 6] = [
            (&[1.0, 2.0], "a", "dimension_mismatch"),
            (&[1.0, f32::NAN, 2.0], "a", "non_finite"),
            (&[1.0, f32::INFINITY, 2.0], "a", "non_finite"),
            (&[1.0, 2.0, 3.0], "", "bad_label"),
            (&[1.0, 2.0, 3.0], "a/b", "bad_label"),
            (&[1.0, 2.0, 3.0], "a+", "bad_label"),
        ];
        for (x, y, code) in cases {
            assert_eq!(h.update(x, y).unwrap_err().code(), code);
        }
        assert_eq!(h.version(), 0);
        assert!(h.classes().is_empty());
        assert_eq!(
            h.snapshot().predict(&[0.0; 3], 1).unwrap_err().code(),
            "no_classes"
        );
        h.update(&[1.0, 2.0, 3.0], "a").unwrap();
        assert_eq!(h.version(), 1);
        assert_eq!(h.snapshot().version(), 1);
        h.set_version(41);
        assert_eq!(h.snapshot().version(), 41);
        h.update(&[1.0, 2.0, 3.5], "a").unwrap();
        assert_eq!(h.version(), 42);
        let p = h.snapshot().predict(&[1.0, 2.0, 3.0], 3).unwrap();
        assert_eq!(p.top.len(), 1);
        assert!((p.top[0].score - 1.0).abs() < 1e-6);
        assert_eq!(
            h.classes(),
            vec![ClassInfo {
                name: "a".into(),
                samples: 2
            }]
        );
        h.reset();
        assert_eq!(h.version(), 43);
        assert_eq!(h.samples(), 0);
        assert!(h.snapshot().is_empty());
    }
}

#[test]
fn class_limit() {
    let mut h = Head::new(&config(Algorithm::Ncm, false), 1, BACKBONE);
    for i in 0..MAX_CLASSES {
        h.update(&[1.0], &format!("k{i}")).unwrap();
    }
    assert_eq!(
        h.update(&[1.0], "one_more").unwrap_err().code(),
        "too_many_classes"
    );
    h.update(&[2.0], "k0").unwrap();
    let mut other = Head::new(&config(Algorithm::Ncm, false), 1, BACKBONE);
    other.update(&[1.0], "one_more").unwrap();
    assert_eq!(h.merge(&other).unwrap_err().code(), "too_many_classes");
}

#[test]
fn merge_checks_compatibility() {
    let base = Head::new(&config(Algorithm::Ncm, false), 4, BACKBONE);
    let mut h = base.clone();
    let slda = Head::new(&config(Algorithm::Slda, false), 4, BACKBONE);
    assert_eq!(h.merge(&slda).unwrap_err().code(), "algorithm_mismatch");
    let dim = Head::new(&config(Algorithm::Ncm, false), 5, BACKBONE);
    assert_eq!(h.merge(&dim).unwrap_err().code(), "dimension_mismatch");
    let other = Head::new(&config(Algorithm::Ncm, false), 4, "other");
    assert_eq!(h.merge(&other).unwrap_err().code(), "backbone_mismatch");
    assert_eq!(h.version(), 0);
}

#[test]
fn source_stats_track_what_is_learned() {
    let d = 6;
    let (data, _) = blobs(2, d, 3, 10, 0, 2.0, 5.0);
    for algorithm in Algorithm::ALL {
        let h = train(&config(algorithm, false), d, &data);
        let s = h.source_stats();
        assert_eq!(s.count(), 30);
        for j in 0..d {
            let col: Vec<f64> = data.iter().map(|x| f64::from(x.0[j])).collect();
            let mean = col.iter().sum::<f64>() / 30.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 30.0;
            assert!((s.mean()[j] - mean).abs() < 1e-9);
            assert!((s.var()[j] - var).abs() < 1e-9);
        }
    }
}

#[test]
fn degenerate_inputs_do_not_break_snapshots() {
    for algorithm in Algorithm::ALL {
        for standardize in [false, true] {
            let cfg = HeadConfig {
                ridge_lambda: 0.0,
                slda_shrinkage: 0.0,
                ..config(algorithm, standardize)
            };
            let mut h = Head::new(&cfg, 4, BACKBONE);
            h.update(&[0.0; 4], "zero").unwrap();
            h.update(&[0.0; 4], "zero").unwrap();
            h.update(&[1.0, 1.0, 1.0, 1.0], "one").unwrap();
            h.update(&[3e38, -3e38, 3e38, 1.0], "huge").unwrap();
            let p = h.snapshot();
            for x in [[0.0f32; 4], [1.0; 4], [1e-30; 4]] {
                match p.predict(&x, 3) {
                    Ok(pred) => assert!(pred.top.iter().all(|s| s.score.is_finite())),
                    Err(e) => assert_eq!(e.code(), "non_finite"),
                }
            }
            let back = Head::from_bytes(
                &h.to_bytes().unwrap(),
                &Expect {
                    backbone_sha256: None,
                    dim: None,
                    max_bytes: 1 << 20,
                },
            )
            .unwrap();
            assert_eq!(back.classes(), h.classes());
        }
    }
}

#[test]
fn config_parsing() {
    let cfg = HeadConfig::default();
    cfg.validate().unwrap();
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<HeadConfig>(&json).unwrap(), cfg);
    let partial: HeadConfig = serde_json::from_str(r#"{"algorithm":"slda"}"#).unwrap();
    assert_eq!(partial.algorithm, Algorithm::Slda);
    assert_eq!(partial.slda_shrinkage, 1e-4);
    assert!(serde_json::from_str::<HeadConfig>(r#"{"algorithm":"knn"}"#).is_err());
    assert!(serde_json::from_str::<HeadConfig>(r#"{"temperature":1}"#).is_err());
    for a in Algorithm::ALL {
        assert_eq!(a.to_string().parse::<Algorithm>().unwrap(), a);
        assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
    }
    assert_eq!("NCM".parse::<Algorithm>().unwrap_err().code(), "bad_config");
    let bad = [
        HeadConfig {
            ncm_temperature: 0.0,
            ..cfg.clone()
        },
        HeadConfig {
            ncm_temperature: f32::NAN,
            ..cfg.clone()
        },
        HeadConfig {
            slda_shrinkage: 1.5,
            ..cfg.clone()
        },
        HeadConfig {
            ridge_lambda: -1.0,
            ..cfg.clone()
        },
        HeadConfig {
            ridge_temperature: -0.1,
            ..cfg.clone()
        },
        HeadConfig {
            sgd_learning_rate: 0.0,
            ..cfg.clone()
        },
        HeadConfig {
            sgd_l2: f64::INFINITY,
            ..cfg.clone()
        },
        HeadConfig {
            sgd_lr_decay: -1.0,
            ..cfg.clone()
        },
    ];
    for b in bad {
        assert_eq!(b.validate().unwrap_err().code(), "bad_config", "{b:?}");
        // A head with an invalid config still works, with the default value instead.
        let mut h = Head::new(&b, 2, BACKBONE);
        h.update(&[1.0, 0.0], "a").unwrap();
        h.update(&[0.0, 1.0], "b").unwrap();
        let top = h.snapshot().predict(&[1.0, 0.1], 1).unwrap().top;
        assert_eq!(top[0].label, "a");
    }
}

#[test]
fn head_is_send_sync() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<Head>();
    check::<Predictor>();
}

/// Classes that differ in 3 low-noise dimensions among 13 of large shared noise: the cosine
/// to class means (`ncm`) is dominated by the noise, a shared covariance (`slda`, `ridge`)
/// removes it. `auto` must find that from its own prequential record.
fn nuisance_blobs(seed: u64, n_train: usize, n_test: usize) -> (Vec<Sample>, Vec<Sample>) {
    let (d, classes) = (16, 4);
    let mut g = Gauss::new(seed);
    let centers: Vec<Vec<f64>> = (0..classes)
        .map(|_| {
            (0..d)
                .map(|j| if j < 3 { 1.5 * g.normal() } else { 5.0 })
                .collect()
        })
        .collect();
    let mut make = |n: usize| -> Vec<Sample> {
        (0..n)
            .map(|i| {
                let k = i % classes;
                let x = centers[k]
                    .iter()
                    .enumerate()
                    .map(|(j, m)| (m + if j < 3 { 0.3 } else { 4.0 } * g.normal()) as f32)
                    .collect();
                (x, format!("c{k}"))
            })
            .collect()
    };
    let train = make(n_train);
    let test = make(n_test);
    (train, test)
}

/// Streams `data` into `head` with a snapshot and a refresh of `auto`'s candidates every
/// `every` samples (as the daemon refreshes its predictor).
fn stream(head: &mut Head, data: &[Sample], every: usize) {
    for (i, (x, y)) in data.iter().enumerate() {
        head.update(x, y).unwrap();
        if i % every == 0 {
            head.snapshot();
            head.refresh_candidates();
        }
    }
}

#[test]
fn auto_chooses_the_learner_the_data_wants() {
    let (train_set, test) = nuisance_blobs(7, 400, 400);
    let acc = |algorithm| {
        let mut h = Head::new(&config(algorithm, false), 16, BACKBONE);
        stream(&mut h, &train_set, 5);
        (accuracy(&h, &test), h)
    };
    let (ncm, _) = acc(Algorithm::Ncm);
    let (slda, _) = acc(Algorithm::Slda);
    let (ridge, _) = acc(Algorithm::Ridge);
    let (auto, h) = acc(Algorithm::Auto);
    let summary = h.auto_summary().expect("auto summary");
    assert!(
        slda.max(ridge) > ncm + 0.15,
        "ncm {ncm} slda {slda} ridge {ridge}"
    );
    assert!(
        summary.choice.starts_with("slda") || summary.choice.starts_with("ridge"),
        "{summary:?}"
    );
    assert!(
        auto >= slda.max(ridge) - 0.02,
        "auto {auto} slda {slda} ridge {ridge}"
    );
    // Every sample whose class the last snapshot knew was scored: all but the first of each
    // class, and c1 once more (learned before the snapshot that first had it).
    assert_eq!(summary.tested, 400 - 5);
    assert_eq!(summary.window, auto::WINDOW);
    assert!(h.algorithm().is_exact());
}

#[test]
fn auto_starts_with_ncm_and_scores_only_known_labels() {
    let (train_set, _) = blobs(3, 8, 3, 2, 0, 3.0, 0.0);
    let mut h = Head::new(&config(Algorithm::Auto, false), 8, BACKBONE);
    // Without a snapshot nothing is scored and ncm predicts.
    for (x, y) in &train_set {
        h.update(x, y).unwrap();
    }
    let s = h.auto_summary().unwrap();
    assert_eq!((s.choice.as_str(), s.tested), ("ncm", 0));
    let ncm = train(&config(Algorithm::Ncm, false), 8, &train_set);
    let (pa, pb) = (h.snapshot(), ncm.snapshot());
    for (x, _) in &train_set {
        assert_eq!(pa.probabilities(x).unwrap(), pb.probabilities(x).unwrap());
    }
    // Without the candidates' snapshot (taken apart from prediction snapshots) nothing is
    // scored either.
    h.update(&train_set[0].0, &train_set[0].1).unwrap();
    assert_eq!(h.auto_summary().unwrap().tested, 0);
    assert!(h.candidates_due());
    h.refresh_candidates();
    assert!(!h.candidates_due());
    // A new label after the candidates' snapshot is not scored; a known one is.
    h.update(&train_set[0].0, "new").unwrap();
    assert_eq!(h.auto_summary().unwrap().tested, 0);
    h.update(&train_set[0].0, &train_set[0].1).unwrap();
    assert_eq!(h.auto_summary().unwrap().tested, 1);
}

#[test]
fn auto_record_survives_the_head_file_and_reset_clears_it() {
    let (train_set, _) = nuisance_blobs(11, 60, 0);
    let mut h = Head::new(&config(Algorithm::Auto, false), 16, BACKBONE);
    stream(&mut h, &train_set, 3);
    let before = h.auto_summary().unwrap();
    assert!(before.tested > 0);
    let expect = Expect {
        backbone_sha256: Some(BACKBONE),
        dim: Some(16),
        max_bytes: 1 << 20,
    };
    let back = Head::from_bytes(&h.to_bytes().unwrap(), &expect).unwrap();
    // The leave-one-out check is memory only: the file keeps its choice and the record.
    let mut want = before.clone();
    want.chosen_by = "prequential";
    want.loo_scored = 0;
    want.candidates
        .iter_mut()
        .for_each(|c| c.loo_accuracy = None);
    assert_eq!(before.chosen_by, "leave_one_out");
    assert_eq!(back.auto_summary().unwrap(), want);
    let probe = &train_set[0].0;
    assert_eq!(
        back.snapshot().probabilities(probe).unwrap(),
        h.snapshot().probabilities(probe).unwrap()
    );
    h.reset();
    assert_eq!(h.auto_summary().unwrap().tested, 0);
}

/// Open set: a head taught three of four well-separated classes calibrates its threshold on
/// its own stream, so the fourth class is mostly answered unknown and the known ones mostly
/// not, with every learner; the calibration survives the head file.
#[test]
fn open_set_rejects_an_unseen_class_at_the_calibrated_threshold() {
    let (train_set, test) = blobs(21, 8, 4, 60, 40, 4.0, 0.0);
    let taught: Vec<Sample> = train_set.into_iter().filter(|(_, y)| y != "c3").collect();
    for algorithm in Algorithm::ALL {
        let mut h = Head::new(&config(algorithm, false), 8, BACKBONE);
        stream(&mut h, &taught, 4);
        let p = h.snapshot();
        let t = p.threshold(0.05).expect("calibrated after 180 samples");
        let (mut caught, mut unseen, mut rejected, mut known) = (0, 0, 0, 0);
        for (x, y) in &test {
            let pred = p.predict(x, 1).unwrap();
            let novel = pred.known(Some(t)) == Some(false);
            assert_eq!(pred.novelty, p.novelty(x));
            if y == "c3" {
                unseen += 1;
                caught += usize::from(novel);
            } else {
                known += 1;
                rejected += usize::from(novel);
            }
        }
        let (caught, rejected) = (
            caught as f64 / unseen as f64,
            rejected as f64 / known as f64,
        );
        assert!(caught > 0.8, "{algorithm}: caught {caught}");
        assert!(rejected < 0.2, "{algorithm}: rejected {rejected}");
        // Far from everything is unknown; the calibration is in the head file.
        assert_eq!(p.predict(&[1e3; 8], 1).unwrap().known(Some(t)), Some(false));
        let expect = Expect {
            backbone_sha256: Some(BACKBONE),
            dim: Some(8),
            max_bytes: 1 << 20,
        };
        let back = Head::from_bytes(&h.to_bytes().unwrap(), &expect).unwrap();
        assert_eq!(back.snapshot().threshold(0.05), Some(t), "{algorithm}");
    }
    // Without classes there is nothing to be novel against.
    let empty = Head::new(&config(Algorithm::Auto, false), 8, BACKBONE);
    assert_eq!(empty.snapshot().threshold(0.05), None);
}

/// The fleet's deltas: a head learned from its journal's base by the journal's samples equals
/// the head; anything but learning ends the journal, and a copy has none.
#[test]
fn the_journal_replays_to_the_same_head() {
    let d = 6;
    let x = |i: usize| -> Vec<f32> {
        (0..d)
            .map(|j| ((i * 7 + j * 3) % 11) as f32 * 0.1)
            .collect()
    };
    for algorithm in [
        Algorithm::Auto,
        Algorithm::Ncm,
        Algorithm::Slda,
        Algorithm::Ridge,
    ] {
        let mut h = Head::new(&config(algorithm, true), d, "ab");
        for i in 0..4 {
            h.update(&x(i), ["a", "b"][i % 2]).unwrap();
        }
        assert!(h.journal().is_none(), "not started");
        h.start_journal();
        let base = h.clone();
        for i in 4..9 {
            h.update(&x(i), ["a", "b", "c"][i % 3]).unwrap();
        }
        let (at, samples) = h.journal().unwrap();
        assert_eq!((at, samples.len()), (base.version(), 5));
        let mut replayed = base.clone();
        for (label, v) in samples {
            replayed.update(v, label).unwrap();
        }
        let probes: Vec<Vec<f32>> = (20..24).map(x).collect();
        for p in &probes {
            assert_eq!(
                probs_by_label(&replayed, p),
                probs_by_label(&h, p),
                "{algorithm}"
            );
        }
        assert!(h.clone().journal().is_none(), "a copy has no journal");
        let mut other = h.clone();
        other.unlearn(&x(8), "c").unwrap();
        assert!(other.journal().is_none());
        let mut other = h.clone();
        other.start_journal();
        other.forget("a");
        assert!(other.journal().is_none());
        let mut other = h.clone();
        other.start_journal();
        other.merge(&base).unwrap();
        assert!(other.journal().is_none());
        let mut other = h.clone();
        other.start_journal();
        other.reset();
        assert!(other.journal().is_none());
    }
    // sgd's merge is an average: its peers always get the whole head.
    let mut h = Head::new(&config(Algorithm::Sgd, true), d, "ab");
    h.start_journal();
    h.update(&x(0), "a").unwrap();
    assert!(h.journal().is_none());
}
