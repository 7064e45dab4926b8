//! Cost of the head learners at d = 1280 with 10 and 100 classes: one update, one prediction
//! (top-5 from a snapshot) and one snapshot, on seeded random Gaussian data; and `auto`'s
//! candidates' refresh with and without its leave-one-out check.

use std::hint::black_box;
use std::time::Duration;

use adaptd::head::{Algorithm, Expect, Head, HeadConfig};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 1280;
const BACKBONE: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `n` samples per class of `classes` Gaussian blobs (unit noise around N(0.5, 1) centers).
fn data(classes: usize, per_class: usize, seed: u64) -> Vec<(Vec<f32>, String)> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut normal = move || {
        let u: f64 = rng.gen_range(f64::EPSILON..1.0);
        let v: f64 = rng.gen();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    };
    let centers: Vec<Vec<f64>> = (0..classes)
        .map(|_| (0..DIM).map(|_| 0.5 + normal()).collect())
        .collect();
    let mut out = Vec::with_capacity(classes * per_class);
    for i in 0..per_class {
        for (k, c) in centers.iter().enumerate() {
            let x = c.iter().map(|m| (m + 0.5 * normal()) as f32).collect();
            out.push((x, format!("class-{k}")));
            let _ = i;
        }
    }
    out
}

fn bench_heads(c: &mut Criterion) {
    for classes in [10usize, 100] {
        let train = data(classes, 3, 1);
        let more = data(classes, 2, 2);
        for algorithm in Algorithm::ALL {
            let cfg = HeadConfig {
                algorithm,
                ..HeadConfig::default()
            };
            let mut head = Head::new(&cfg, DIM, BACKBONE);
            for (x, y) in &train {
                head.update(x, y).expect("update");
            }
            let mut group = c.benchmark_group(format!("{algorithm}/{classes}"));
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(3));

            let mut h = head.clone();
            let mut i = 0;
            group.bench_function("update", |b| {
                b.iter(|| {
                    let (x, y) = &more[i % more.len()];
                    i += 1;
                    h.update(black_box(x), y).expect("update");
                })
            });

            let predictor = head.clone().snapshot();
            let mut j = 0;
            group.bench_function("predict", |b| {
                b.iter(|| {
                    let (x, _) = &more[j % more.len()];
                    j += 1;
                    black_box(predictor.predict(black_box(x), 5).expect("predict"))
                })
            });

            if matches!(algorithm, Algorithm::Slda | Algorithm::Ridge) {
                group.sample_size(10);
                group.measurement_time(Duration::from_secs(8));
            }
            group.bench_function("snapshot", |b| {
                b.iter_batched(|| head.clone(), |h| h.snapshot(), BatchSize::LargeInput)
            });
            group.finish();
        }
    }
}

/// `auto`'s candidates' refresh (8 d × d solves) on 300 samples of 10 classes: with the
/// leave-one-out check of its last 200 samples, and the same head read back from its file,
/// whose check has no samples yet (the refresh without it).
fn bench_auto_refresh(c: &mut Criterion) {
    let cfg = HeadConfig {
        algorithm: Algorithm::Auto,
        ..HeadConfig::default()
    };
    let mut head = Head::new(&cfg, DIM, BACKBONE);
    for (x, y) in &data(10, 30, 3) {
        head.update(x, y).expect("update");
    }
    let expect = Expect {
        backbone_sha256: Some(BACKBONE),
        dim: Some(DIM),
        max_bytes: 1 << 30,
    };
    let bytes = head.to_bytes().expect("encode");
    let without = Head::from_bytes(&bytes, &expect).expect("decode");
    let mut group = c.benchmark_group("auto/10");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for (name, h) in [("refresh+loo200", &head), ("refresh", &without)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || h.clone(),
                |mut h| h.refresh_candidates(),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_heads, bench_auto_refresh);
criterion_main!(benches);
