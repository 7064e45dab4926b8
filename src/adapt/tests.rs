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
    // Too few samples: no correction.
    for (x, _) in &samples(5, 3, 1.0, 1.0) {
        a.observe(x, &p);
    }
    assert!(!a.recompute(&HeadDomain::of(&h, false), &p).is_active());
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
    assert_eq!("coral".parse::<Method>(), Ok(Method::Coral));
    assert!("bogus".parse::<Method>().is_err());
}
