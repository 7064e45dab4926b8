use super::*;
use crate::eval::data::Rng;
use crate::head::{Algorithm, HeadConfig};

const D: usize = 16;

/// Two Gaussian classes in `D` dimensions; `gain` multiplies every sample and `shift` moves
/// it toward the other class's side (−shift on the first half of the dimensions, +shift on
/// the second): a domain shift as the embedding sees a colour cast or a contrast change.
fn samples(n: usize, seed: u64, shift: f32, gain: f32) -> Vec<(Vec<f32>, &'static str)> {
    let mut rng = Rng::new(seed, 1);
    (0..n)
        .map(|i| {
            let label = if i % 2 == 0 { "a" } else { "b" };
            let x = (0..D)
                .map(|j| {
                    let centre = if (j < D / 2) == (label == "a") {
                        2.0
                    } else {
                        0.0
                    };
                    let dir = if j < D / 2 { -1.0 } else { 1.0 };
                    (centre + 0.7 * rng.normal() as f32 + 0.3 * j as f32) * gain + dir * shift
                })
                .collect();
            (x, label)
        })
        .collect()
}

fn head(algorithm: Algorithm, train: &[(Vec<f32>, &str)]) -> Head {
    let config = HeadConfig {
        algorithm,
        ..HeadConfig::default()
    };
    let mut h = Head::new(&config, D, "sha");
    for (x, l) in train {
        h.update(x, l).unwrap();
    }
    h
}

fn accuracy(a: &Adapted, p: &Predictor, test: &[(Vec<f32>, &str)]) -> f64 {
    let right = test
        .iter()
        .filter(|(x, l)| a.predict(p, x, 1).unwrap().top[0].label == *l)
        .count();
    right as f64 / test.len() as f64
}

fn config(method: Method) -> AdaptConfig {
    AdaptConfig {
        method,
        window: 0,
        min_samples: 10,
        ..AdaptConfig::default()
    }
}

#[test]
fn statistics_update_and_reset() {
    let train = samples(200, 1, 0.0, 1.0);
    let h = head(Algorithm::Ncm, &train);
    let p = h.snapshot();
    let mut a = Adapter::new(config(Method::Mean), D);
    for (x, _) in &samples(50, 2, 1.0, 1.0) {
        a.observe(x, &p);
    }
    assert_eq!(a.target().seen(), 50);
    a.observe(&[f32::NAN; D], &p);
    a.observe(&[0.0; 3], &p);
    assert_eq!(a.target().seen(), 50, "bad embeddings are ignored");
    let snap = a.recompute(&HeadDomain::of(&h, false), &p);
    assert!(snap.is_active());
    a.reset();
    assert_eq!(a.target().seen(), 0);
    assert!(!a.snapshot().is_active());
    // No sample: no correction; a few: a (shrunk) correction, but no drift value yet.
    assert!(!a.recompute(&HeadDomain::of(&h, false), &p).is_active());
    for (x, _) in &samples(5, 3, 1.0, 1.0) {
        a.observe(x, &p);
    }
    assert!(a.recompute(&HeadDomain::of(&h, false), &p).is_active());
    assert!(a.drift(&HeadDomain::of(&h, false)).is_none());
}

fn diag(a: &Adapted) -> (&[f32], &[f32], &[f32]) {
    match &a.map {
        InputMap::Diag { mt, r, ms } => (mt, r, ms),
        m => panic!("not a diagonal map: {m:?}"),
    }
}

/// The `mean` map of the commit before shrinkage, from the target statistics alone.
fn unshrunk_mean_map(t: &TargetStats, source: &HeadDomain) -> (Vec<f32>, Vec<f32>) {
    let (mt, vt) = (t.mean(), t.var());
    let d = vt.len() as f64;
    let floor_t = 1e-2 * vt.iter().sum::<f64>() / d + 1e-12;
    let floor_s = 1e-2 * source.var.iter().sum::<f64>() / d + 1e-12;
    let r = vt
        .iter()
        .zip(&source.var)
        .map(|(&t, &s)| (((s + floor_s) / (t + floor_t)).sqrt()) as f32)
        .collect();
    (mt.iter().map(|&v| v as f32).collect(), r)
}

#[test]
fn a_few_frames_give_a_correction_between_source_and_target() {
    let train = samples(400, 1, 0.0, 1.0);
    let shifted = samples(400, 9, 1.5, 0.6);
    let h = head(Algorithm::Ncm, &train);
    let p = h.snapshot();
    let source = HeadDomain::of(&h, false);
    let mut a = Adapter::new(
        AdaptConfig {
            prior_samples: 16.0,
            ..config(Method::Mean)
        },
        D,
    );
    for (x, _) in &shifted[..8] {
        a.observe(x, &p);
    }
    let snap = a.recompute(&source, &p);
    let (mt, _, ms) = diag(&snap);
    let full = a.target().mean();
    let w = 8.0 / (8.0 + 16.0);
    assert!((a.weight() - w).abs() < 1e-12);
    for j in 0..D {
        // A third of the way from the source mean to the mean of the 8 frames.
        let want = w * full[j] + (1.0 - w) * source.mean[j];
        assert!(
            (f64::from(mt[j]) - want).abs() < 1e-5,
            "{j}: {} vs {want}",
            mt[j]
        );
        assert!((f64::from(ms[j]) - source.mean[j]).abs() < 1e-5);
    }
    let moved: f64 = full
        .iter()
        .zip(&source.mean)
        .map(|(t, s)| (t - s).abs())
        .sum();
    assert!(moved / D as f64 > 0.5, "the shift is visible: {moved}");
    // The corrected frames moved part of the way back toward the source mean.
    let gap = |f: &dyn Fn(&[f32]) -> Vec<f32>| -> f64 {
        let mut m = [0.0f64; D];
        for (x, _) in &shifted {
            for (a, v) in m.iter_mut().zip(f(x)) {
                *a += f64::from(v) / shifted.len() as f64;
            }
        }
        m.iter()
            .zip(&source.mean)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let before = gap(&|x| x.to_vec());
    let after = gap(&|x| snap.apply(x).into_owned());
    assert!(
        after < 0.9 * before && after > 0.1 * before,
        "{before} → {after}"
    );
}

#[test]
fn without_a_prior_the_correction_is_the_full_target_one() {
    let train = samples(400, 1, 0.0, 1.0);
    let shifted = samples(100, 9, 1.5, 0.6);
    let h = head(Algorithm::Ncm, &train);
    let p = h.snapshot();
    let source = HeadDomain::of(&h, false);
    for prior in [0.0, 1e-12] {
        let mut a = Adapter::new(
            AdaptConfig {
                prior_samples: prior,
                ..config(Method::Mean)
            },
            D,
        );
        shifted.iter().for_each(|(x, _)| a.observe(x, &p));
        let s = a.shrunk(&source);
        for (u, v) in s.mean.iter().zip(a.target().mean()) {
            assert!(
                (u - v).abs() <= 1e-9 * (1.0 + v.abs()),
                "{prior}: {u} vs {v}"
            );
        }
        for (u, v) in s.var.iter().zip(a.target().var()) {
            assert!(
                (u - v).abs() <= 1e-9 * (1.0 + v.abs()),
                "{prior}: {u} vs {v}"
            );
        }
        let snap = a.recompute(&source, &p);
        let (mt, r, _) = diag(&snap);
        let (old_mt, old_r) = unshrunk_mean_map(a.target(), &source);
        for j in 0..D {
            assert!((mt[j] - old_mt[j]).abs() <= 1e-6 * (1.0 + old_mt[j].abs()));
            assert!((r[j] - old_r[j]).abs() <= 1e-6 * old_r[j]);
        }
    }
}

#[test]
fn coral_is_shrunk_toward_the_source_covariance() {
    let train = samples(300, 4, 0.0, 1.0);
    let shifted = samples(300, 9, 1.5, 0.6);
    let h = head(Algorithm::Ridge, &train);
    let p = h.snapshot();
    let source = HeadDomain::of(&h, true);
    let cs = source.cov.clone().unwrap();
    let mut a = Adapter::new(config(Method::Coral), D);
    for (x, _) in &shifted[..8] {
        a.observe(x, &p);
    }
    let w = a.weight();
    assert!(w > 0.0 && w < 1.0);
    let ct = a.target().cov().unwrap();
    let shrunk = a.shrunk_cov(&source).unwrap();
    assert!((&shrunk - (&ct * w + &cs * (1.0 - w))).amax() < 1e-9);
    let snap = a.recompute(&source, &p);
    let InputMap::Full { a: m, .. } = &snap.map else {
        panic!("coral with a ridge head is a full map")
    };
    assert!(m.iter().all(|v| v.is_finite()));
    let moved = shifted[..8]
        .iter()
        .map(|(x, _)| {
            snap.apply(x)
                .iter()
                .zip(x)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max);
    assert!(moved > 0.1, "the correction moves the frames: {moved}");
    // With w = 1 the shrunk covariance is the target's own.
    let mut b = Adapter::new(
        AdaptConfig {
            prior_samples: 0.0,
            ..config(Method::Coral)
        },
        D,
    );
    shifted[..8].iter().for_each(|(x, _)| b.observe(x, &p));
    assert!((b.shrunk_cov(&source).unwrap() - ct).amax() < 1e-12);
}

#[test]
fn recomputes_as_soon_as_the_weight_moved_enough() {
    let h = head(Algorithm::Ncm, &samples(100, 1, 0.0, 1.0));
    let p = h.snapshot();
    let source = HeadDomain::of(&h, false);
    let cfg = AdaptConfig {
        prior_samples: 16.0,
        recompute_change: 0.1,
        recompute_every: 64,
        ..config(Method::Mean)
    };
    let mut a = Adapter::new(cfg, D);
    assert!(!a.due());
    let mut at = Vec::new();
    for (i, (x, _)) in samples(400, 2, 1.0, 1.0).iter().enumerate() {
        a.observe(x, &p);
        if a.due() {
            a.recompute(&source, &p);
            at.push(i + 1);
        }
    }
    // Every frame at first (w: 1/17, 2/18, …), then sparser, then every 64 samples.
    assert_eq!(&at[..5], &[1, 2, 3, 4, 5], "{at:?}");
    let gaps: Vec<usize> = at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g <= 64), "{at:?}");
    assert!(gaps.windows(2).all(|g| g[0] <= g[1]), "{at:?}");
    assert!(at.iter().filter(|&&i| i <= 32).count() >= 8, "{at:?}");
    assert!(at.len() < 40, "{at:?}");
}

#[test]
fn mean_and_coral_are_the_identity_on_the_source_domain() {
    let train = samples(400, 1, 0.0, 1.0);
    for algorithm in [Algorithm::Ncm, Algorithm::Slda] {
        let h = head(algorithm, &train);
        let p = h.snapshot();
        let source = HeadDomain::of(&h, true);
        assert_eq!(source.cov.is_some(), algorithm == Algorithm::Slda);
        for method in [Method::Mean, Method::Coral] {
            let mut a = Adapter::new(config(method), D);
            // Identical source and target statistics: the same samples.
            for (x, _) in &train {
                a.observe(x, &p);
            }
            let snap = a.recompute(&source, &p);
            let mut worst = 0.0f32;
            for (x, _) in &train {
                let y = snap.apply(x);
                for (u, v) in y.iter().zip(x) {
                    worst = worst.max((u - v).abs() / (1.0 + v.abs()));
                }
            }
            if algorithm == Algorithm::Slda || method == Method::Mean {
                assert!(worst <= 1e-5, "{algorithm} {method}: {worst}");
            }
        }
    }
}

#[test]
fn coral_identity_with_full_source_statistics() {
    // The head's covariance and the target covariance of the same samples agree, so CORAL
    // must return every embedding unchanged (≤ 1e-5).
    let train = samples(300, 4, 0.0, 1.0);
    let h = head(Algorithm::Ridge, &train);
    let p = h.snapshot();
    let mut a = Adapter::new(config(Method::Coral), D);
    train.iter().for_each(|(x, _)| a.observe(x, &p));
    let snap = a.recompute(&HeadDomain::of(&h, true), &p);
    assert!(matches!(snap.map, InputMap::Full { .. }));
    for (x, _) in &train {
        for (u, v) in snap.apply(x).iter().zip(x) {
            assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{u} vs {v}");
        }
    }
}

#[test]
fn corrections_recover_a_synthetic_shift() {
    let train = samples(400, 1, 0.0, 1.0);
    let shifted = samples(400, 9, 1.5, 0.6);
    for algorithm in [Algorithm::Ncm, Algorithm::Slda] {
        let h = head(algorithm, &train);
        let p = h.snapshot();
        let none = accuracy(&Adapted::identity(Method::None), &p, &shifted);
        for method in [Method::Mean, Method::Coral] {
            let mut a = Adapter::new(config(method), D);
            shifted.iter().for_each(|(x, _)| a.observe(x, &p));
            let snap = a.recompute(&HeadDomain::of(&h, true), &p);
            let acc = accuracy(&snap, &p, &shifted);
            assert!(
                acc > none + 0.1 && acc > 0.9,
                "{algorithm} {method}: {none} → {acc}"
            );
        }
    }
}

#[test]
fn t3a_never_takes_a_pseudo_label_below_its_threshold() {
    let train = samples(200, 1, 0.0, 1.0);
    let h = head(Algorithm::Ncm, &train);
    let p = h.snapshot();
    let mut cfg = config(Method::T3a);
    cfg.t3a_confidence = 0.999_999;
    let mut t = t3a::T3a::new(&cfg);
    let test = samples(200, 5, 0.0, 1.0);
    let mut expected = 0;
    for (x, _) in &test {
        let top = p.predict(x, 1).unwrap().top[0].score;
        let added = t.observe(x, &p);
        if top < cfg.t3a_confidence as f32 {
            assert!(!added, "a pseudo-label with p = {top} got in");
        } else {
            expected += 1;
        }
    }
    assert!(t.held() <= 2 * cfg.t3a_support);
    assert!(t.added() <= expected);
    // A reachable threshold: supports fill up, bounded per class, and the classifier works.
    cfg.t3a_confidence = 0.5;
    let mut a = Adapter::new(cfg, D);
    test.iter().for_each(|(x, _)| a.observe(x, &p));
    let snap = a.recompute(&HeadDomain::of(&h, false), &p);
    assert!(snap.classifier.is_some());
    assert!(accuracy(&snap, &p, &test) > 0.9);
}

#[test]
fn drift_fires_on_a_shift_and_stays_quiet_on_the_training_domain() {
    let train = samples(400, 1, 0.0, 1.0);
    let h = head(Algorithm::Ncm, &train);
    let p = h.snapshot();
    let source = HeadDomain::of(&h, false);
    // A threshold for this synthetic data (16 dimensions, 300 samples).
    let threshold = 0.5;
    let mut same = Adapter::new(config(Method::None), D);
    samples(300, 7, 0.0, 1.0)
        .iter()
        .for_each(|(x, _)| same.observe(x, &p));
    let quiet = same.drift(&source).unwrap();
    let mut moved = Adapter::new(config(Method::None), D);
    samples(300, 8, 1.5, 0.6)
        .iter()
        .for_each(|(x, _)| moved.observe(x, &p));
    let loud = moved.drift(&source).unwrap();
    assert!(quiet < 0.1 * threshold, "held-out drift {quiet}");
    assert!(loud > threshold, "shifted drift {loud}");
    assert!(Adapter::new(config(Method::None), D)
        .drift(&source)
        .is_none());
}

#[test]
fn imported_heads_carry_their_source_statistics() {
    let h = head(Algorithm::Sgd, &samples(100, 1, 0.0, 1.0));
    let bytes = h.to_bytes().unwrap();
    let back = Head::from_bytes(
        &bytes,
        &crate::head::Expect {
            backbone_sha256: Some("sha"),
            dim: Some(D),
            max_bytes: 1 << 24,
        },
    )
    .unwrap();
    assert_eq!(back.source_stats(), h.source_stats());
    let (a, b) = (HeadDomain::of(&h, false), HeadDomain::of(&back, false));
    assert_eq!((a.count, a.mean, a.var), (b.count, b.mean, b.var));
}

#[test]
fn config_is_validated() {
    assert!(AdaptConfig::default().validate().is_ok());
    let bad = AdaptConfig {
        coral_shrinkage: 2.0,
        ..AdaptConfig::default()
    };
    assert!(bad.validate().is_err());
    for (prior, change) in [(-1.0, 0.1), (f64::NAN, 0.1), (16.0, 0.0)] {
        let bad = AdaptConfig {
            prior_samples: prior,
            recompute_change: change,
            ..AdaptConfig::default()
        };
        assert!(bad.validate().is_err(), "{prior} {change}");
    }
    // A config file written before the prior existed still loads, with the defaults.
    let old: AdaptConfig =
        toml::from_str("method = \"mean\"\nmin_samples = 64\nrecompute_every = 64").unwrap();
    assert_eq!(old, AdaptConfig::default());
    assert_eq!("coral".parse::<Method>(), Ok(Method::Coral));
    assert!("bogus".parse::<Method>().is_err());
}

#[test]
fn t3a_waits_for_every_class_and_keeps_the_heads_scale() {
    let train = samples(200, 1, 0.0, 1.0);
    for algorithm in [Algorithm::Ncm, Algorithm::Ridge] {
        let h = head(algorithm, &train);
        let p = h.snapshot();
        let mut t = t3a::T3a::new(&config(Method::T3a));
        let test = samples(40, 5, 0.0, 1.0);
        let confident = |want: &str| {
            test.iter()
                .find(|(x, l)| *l == want && p.predict(x, 1).unwrap().top[0].label == want)
                .map(|(x, _)| x.clone())
                .unwrap()
        };
        // One class supported: the head stays as it is.
        assert!(t.observe(&confident("a"), &p));
        assert!(t.classifier(&p).is_none(), "{algorithm}");
        assert!(t.observe(&confident("b"), &p));
        let c = t.classifier(&p).expect("every class has a support");
        let (hp, cp) = (p.parts(), c.parts());
        assert_eq!(hp.bias, cp.bias, "{algorithm}");
        let d = hp.dim();
        for k in 0..2 {
            let norm = |w: &[f32]| w[k * d..(k + 1) * d].iter().map(|v| v * v).sum::<f32>();
            assert!((norm(&hp.weights) - norm(&cp.weights)).abs() <= 1e-4 * norm(&hp.weights));
        }
        assert_ne!(hp.weights, cp.weights, "{algorithm}: the rows moved");
    }
}
