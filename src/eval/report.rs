//! Output of `adaptd eval`: the text table, the JSON report, the offline baseline file and the
//! learning-curve SVG (hand-written: axes, log-scaled samples, one line per learner, legend).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::embed::EmbedStats;
use super::prequential::LearnerResult;
use crate::head::HeadConfig;

/// Offline baselines written by `scripts/ref_offline.py`.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    /// Test accuracy of the cross-validated logistic regression.
    pub logreg: f64,
    /// Test accuracy of the ridge classifier, if present.
    pub ridge: Option<f64>,
    /// The whole file, echoed into the JSON report.
    pub raw: serde_json::Value,
}

impl Baseline {
    /// Parses the baseline JSON (`{"logreg": {"accuracy": …}, "ridge": {"accuracy": …}}`).
    pub fn parse(text: &str) -> Result<Baseline> {
        let raw: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
        let acc = |k: &str| {
            raw.get(k)
                .and_then(|v| v.get("accuracy"))
                .and_then(serde_json::Value::as_f64)
                .filter(|a| (0.0..=1.0).contains(a))
        };
        let logreg = acc("logreg")
            .context("no logreg.accuracy in [0, 1] (expected ref_offline.py output)")?;
        Ok(Baseline {
            logreg,
            ridge: acc("ridge"),
            raw,
        })
    }

    /// Reads and parses a baseline file.
    pub fn read(path: &Path) -> Result<Baseline> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Baseline::parse(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Warns when the baseline was computed on another split than this run's.
    pub fn check(&self, train: usize, test: usize, dim: usize) {
        let get = |k: &str| self.raw.get(k).and_then(serde_json::Value::as_u64);
        for (k, want) in [("train", train), ("test", test), ("dim", dim)] {
            if let Some(got) = get(k) {
                if got != want as u64 {
                    tracing::warn!(
                        "the baseline was computed with {k} = {got}, this run has {want}: \
                         export the embeddings of this run and recompute it"
                    );
                }
            }
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Dataset name.
    pub dataset: String,
    /// Embedding dimension.
    pub dim: usize,
    /// Number of classes (train ∪ test).
    pub classes: usize,
    /// Class names.
    pub class_names: Vec<String>,
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
    /// `"stratified"` (from `--data`) or `"given"` (`--train`/`--test`).
    pub split: String,
    /// Test fraction of the stratified split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fraction: Option<f64>,
    /// Seed of the split and the stream order.
    pub seed: u64,
    /// Backbone hash (all zeros for precomputed embeddings).
    pub backbone_sha256: String,
    /// Image embedding statistics, when the dataset had images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbedStats>,
    /// Head settings (`algorithm` and `standardize` vary per result).
    pub head_config: HeadConfig,
    /// The offline baselines, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// One entry per learner configuration.
    pub results: Vec<LearnerResult>,
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}"))
}

impl Report {
    /// The text table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let split = match self.test_fraction {
            Some(f) => format!("stratified, test fraction {f}, seed {}", self.seed),
            None => format!("given split, stream seed {}", self.seed),
        };
        let _ = writeln!(
            s,
            "{}: {} classes, dim {}, {} train / {} test ({split})",
            self.dataset, self.classes, self.dim, self.train, self.test
        );
        if let Some(b) = &self.baseline {
            let _ = writeln!(
                s,
                "offline baselines: logistic regression {:.3}, ridge classifier {}",
                b.logreg,
                opt(b.ridge)
            );
        }
        let shots: Vec<usize> = self
            .results
            .first()
            .map(|r| r.shots.iter().map(|s| s.k).collect())
            .unwrap_or_default();
        let mut header = format!(
            "{:<8} {:<4} {:>8} {:>8}",
            "learner", "std", "accuracy", "/logreg"
        );
        for k in &shots {
            let _ = write!(header, " {:>8}", format!("{k}/class"));
        }
        let _ = write!(
            header,
            " {:>11} {:>10} {:>10} {:>11} {:>9}",
            "prequential", "update µs", "predict µs", "snapshot ms", "head KiB"
        );
        let _ = writeln!(s, "{header}");
        for r in &self.results {
            let _ = write!(
                s,
                "{:<8} {:<4} {:>8.3} {:>8}",
                r.learner,
                if r.standardize { "yes" } else { "no" },
                r.accuracy,
                opt(r.ratio_to_logreg)
            );
            for shot in &r.shots {
                let _ = write!(s, " {:>8}", opt(shot.accuracy));
            }
            let _ = writeln!(
                s,
                " {:>11.3} {:>10.1} {:>10.1} {:>11.1} {:>9.1}",
                r.prequential_accuracy,
                r.update.median_us,
                r.predict.median_us,
                r.snapshot_ms,
                r.head_bytes as f64 / 1024.0
            );
        }
        s
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(learner: &str) -> &'static str {
    match learner {
        "ncm" => "#1f77b4",
        "slda" => "#ff7f0e",
        "ridge" => "#2ca02c",
        "sgd" => "#d62728",
        _ => "#7f7f7f",
    }
}

/// The learning curves as an SVG line plot: test accuracy vs training samples seen (log
/// scale), one line per result (dashed when standardized), the offline logistic regression as
/// a grey dashed line when known.
pub fn plot_svg(report: &Report) -> String {
    const W: f64 = 760.0;
    const H: f64 = 440.0;
    let (left, right, top, bottom) = (64.0, W - 200.0, 44.0, H - 52.0);
    let n = report.train.max(2) as f64;
    let mut lowest: f64 = 1.0;
    for r in &report.results {
        for p in &r.curve {
            lowest = lowest.min(p.accuracy);
        }
    }
    if let Some(b) = &report.baseline {
        lowest = lowest.min(b.logreg);
    }
    let y_min = ((lowest * 10.0).floor() / 10.0).clamp(0.0, 0.9);
    let x_of = |samples: f64| left + (samples.max(1.0).ln() / n.ln()) * (right - left);
    let y_of = |acc: f64| bottom - (acc - y_min) / (1.0 - y_min) * (bottom - top);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}: test accuracy vs training samples seen</text>"#,
        (left + right) / 2.0,
        xml_escape(&report.dataset)
    );
    // Grid and y ticks.
    let step = if 1.0 - y_min > 0.5 { 0.2 } else { 0.1 };
    let mut y = (y_min / step - 1e-9).ceil() * step;
    while y <= 1.0 + 1e-9 {
        let py = y_of(y);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#e0e0e0"/><text x="{}" y="{:.1}" text-anchor="end">{y:.1}</text>"##,
            left - 6.0,
            py + 4.0
        );
        y += step;
    }
    // x ticks: 1, 2, 5, 10, 20, 50, … up to n.
    let mut decade = 1.0;
    while decade <= n {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v > n {
                break;
            }
            let px = x_of(v);
            let _ = writeln!(
                s,
                r##"<line x1="{px:.1}" y1="{top}" x2="{px:.1}" y2="{bottom}" stroke="#f0f0f0"/><text x="{px:.1}" y="{}" text-anchor="middle">{v}</text>"##,
                bottom + 16.0
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">training samples seen (log scale), {} classes</text>"#,
        (left + right) / 2.0,
        H - 14.0,
        report.classes
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">test accuracy</text>"#,
        (top + bottom) / 2.0
    );
    // Legend entries: (label, color, dash pattern or "").
    let mut legend: Vec<(String, &str, &str)> = Vec::new();
    if let Some(b) = &report.baseline {
        let py = y_of(b.logreg);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#555" stroke-width="1.5" stroke-dasharray="2 3"/>"##
        );
        legend.push((format!("offline logreg {:.3}", b.logreg), "#555", "2 3"));
    }
    for r in &report.results {
        let c = color(&r.learner);
        let dash = if r.standardize {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = r
            .curve
            .iter()
            .map(|p| format!("{:.1},{:.1}", x_of(p.samples as f64), y_of(p.accuracy)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"{dash}/>"#,
            pts.join(" ")
        );
        for p in &r.curve {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{c}"/>"#,
                x_of(p.samples as f64),
                y_of(p.accuracy)
            );
        }
        let name = if r.standardize {
            format!("{} (std) {:.3}", r.learner, r.accuracy)
        } else {
            format!("{} {:.3}", r.learner, r.accuracy)
        };
        legend.push((name, c, if r.standardize { "6 4" } else { "" }));
    }
    for (i, (label, c, dashed)) in legend.iter().enumerate() {
        let ly = top + 10.0 + 20.0 * i as f64;
        let lx = right + 16.0;
        let dash = if dashed.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dashed}""#)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            lx + 32.0,
            ly + 4.0,
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::prequential::{Point, Shot, Timing};
    use super::*;

    fn result(learner: &str, standardize: bool) -> LearnerResult {
        LearnerResult {
            learner: learner.into(),
            standardize,
            accuracy: 0.9,
            ratio_to_logreg: Some(0.95),
            shots: vec![Shot {
                k: 1,
                samples: Some(12),
                accuracy: Some(0.5),
            }],
            prequential_accuracy: 0.8,
            prequential_refreshes: 3,
            update: Timing {
                median_us: 3.0,
                mean_us: 4.0,
            },
            predict: Timing::default(),
            snapshot_ms: 0.1,
            candidates_ms: 0.0,
            head_bytes: 2048,
            curve: vec![
                Point {
                    samples: 1,
                    accuracy: 0.1,
                },
                Point {
                    samples: 100,
                    accuracy: 0.9,
                },
            ],
        }
    }

    fn report() -> Report {
        Report {
            dataset: "a<b".into(),
            dim: 4,
            classes: 2,
            class_names: vec!["x".into(), "y".into()],
            train: 100,
            test: 40,
            split: "stratified".into(),
            test_fraction: Some(0.3),
            seed: 0,
            backbone_sha256: "0".repeat(64),
            embedding: None,
            head_config: HeadConfig::default(),
            baseline: Some(
                Baseline::parse(r#"{"logreg": {"accuracy": 0.947, "C": 1.0}}"#).unwrap(),
            ),
            results: vec![result("ncm", false), result("sgd", true)],
        }
    }

    #[test]
    fn baseline_parsing() {
        let b = Baseline::parse(r#"{"logreg": {"accuracy": 0.9}, "ridge": {"accuracy": 0.8}}"#)
            .unwrap();
        assert_eq!((b.logreg, b.ridge), (0.9, Some(0.8)));
        assert!(Baseline::parse("{}").is_err());
        assert!(Baseline::parse("not json").is_err());
        assert!(Baseline::parse(r#"{"logreg": {"accuracy": 93}}"#).is_err());
        assert!(Baseline::parse(r#"{"logreg": 0.9}"#).is_err());
    }

    #[test]
    fn table_and_json_have_every_learner() {
        let r = report();
        let t = r.table();
        assert!(t.contains("logistic regression 0.947"), "{t}");
        assert!(t
            .lines()
            .any(|l| l.starts_with("ncm ") && l.contains("0.950")));
        assert!(t
            .lines()
            .any(|l| l.starts_with("sgd ") && l.contains("yes")));
        assert!(t.contains("1/class"));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["results"][0]["learner"], "ncm");
        assert_eq!(v["results"][1]["accuracy"], 0.9);
        assert_eq!(v["classes"], 2);
        assert_eq!(v["baseline"]["raw"]["logreg"]["C"], 1.0);
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let svg = plot_svg(&report());
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("offline logreg 0.947"));
        assert!(svg.contains("stroke-dasharray=\"6 4\""));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }
}
