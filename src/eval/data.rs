//! Datasets for `adaptd eval`: folder-per-class discovery, the seeded stratified split, the
//! seeded stream order, and the portable random generator behind both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::npy;

/// Image file extensions (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Sound file extensions (case-insensitive): WAV clips, for a sound model.
pub const SOUND_EXTENSIONS: [&str; 1] = ["wav"];

/// Text file extensions (case-insensitive): one UTF-8 text per file, for a text model.
pub const TEXT_EXTENSIONS: [&str; 1] = ["txt"];

/// Input file extensions embedded through the backbone (case-insensitive): the images, the
/// sound clips and the texts.
pub const INPUT_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "wav", "txt"];

/// Embedding file extensions read as vectors (case-insensitive).
pub const VECTOR_EXTENSIONS: [&str; 2] = ["npy", "csv"];

/// Sensor window extensions (case-insensitive): one window per file, CSV (a reading per line,
/// a column per channel) or JSON (`[[…], […]]`, one array per channel, or `{"window": …}`), for
/// a sensor model. Without one, a `.csv` is an embedding file and a `.json` is not read.
pub const WINDOW_EXTENSIONS: [&str; 2] = ["csv", "json"];

/// What kind of input a file is, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A photo (`.jpg`, `.jpeg`, `.png`), for an image model.
    Image,
    /// A sound clip (`.wav`), for a sound model.
    Sound,
    /// A text (`.txt`, UTF-8, the whole file is one sample), for a text model.
    Text,
    /// A sensor window (`.csv`, a reading per line), for a sensor model: only where the scan
    /// takes `.csv` files as windows ([`InputKind::of_in`]).
    Window,
}

impl InputKind {
    /// The kind of an input file where `.csv` files are sensor windows (`windows`) or
    /// embeddings.
    pub fn of_in(path: &Path, windows: bool) -> Option<InputKind> {
        match npy::extension(path) {
            Some(ext) if windows && WINDOW_EXTENSIONS.contains(&ext.as_str()) => {
                Some(InputKind::Window)
            }
            _ => InputKind::of(path),
        }
    }

    /// The kind of an input file, or `None` when it is not one (an embedding file, or other).
    pub fn of(path: &Path) -> Option<InputKind> {
        let ext = npy::extension(path)?;
        if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
            Some(InputKind::Image)
        } else if SOUND_EXTENSIONS.contains(&ext.as_str()) {
            Some(InputKind::Sound)
        } else if TEXT_EXTENSIONS.contains(&ext.as_str()) {
            Some(InputKind::Text)
        } else {
            None
        }
    }

    /// Plural noun for messages.
    pub fn plural(self) -> &'static str {
        match self {
            InputKind::Image => "images",
            InputKind::Sound => "sound clips",
            InputKind::Text => "texts",
            InputKind::Window => "sensor windows",
        }
    }

    /// The model kind that takes these inputs.
    pub fn modality(self) -> crate::model::Modality {
        use crate::model::Modality;
        match self {
            InputKind::Image => Modality::Image,
            InputKind::Sound => Modality::Audio,
            InputKind::Text => Modality::Text,
            InputKind::Window => Modality::Sensor,
        }
    }

    /// The kind of input to embed among `paths` for a model that takes `modality`, and how many
    /// inputs of other kinds to leave out. With one kind, that kind (whether the model takes it
    /// is [`InputKind::refused_by`]'s question). With several, the model's kind and the others
    /// left out — a stray `notes.txt` in a folder of photos is not a reason to refuse the
    /// photos — or an error naming the counts when the model takes none of them or is not
    /// known (`None`).
    pub fn for_model<'a>(
        paths: impl Iterator<Item = &'a Path>,
        modality: Option<crate::model::Modality>,
    ) -> Result<Option<(InputKind, usize)>> {
        let windows = modality == Some(crate::model::Modality::Sensor);
        let mut counts = BTreeMap::new();
        for kind in paths.filter_map(|p| InputKind::of_in(p, windows)) {
            counts.entry(kind.plural()).or_insert((kind, 0usize)).1 += 1;
        }
        let total: usize = counts.values().map(|(_, n)| n).sum();
        let taken = counts
            .values()
            .find(|(k, _)| Some(k.modality()) == modality)
            .copied();
        match (counts.len(), taken) {
            (0, _) => Ok(None),
            (1, _) => Ok(counts.values().next().map(|(k, _)| (*k, 0))),
            (_, Some((kind, n))) => Ok(Some((kind, total - n))),
            _ => anyhow::bail!(
                "the dataset mixes {}; a model embeds one kind: keep them in separate datasets",
                counts
                    .iter()
                    .map(|(name, (_, n))| format!("{n} {name}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        }
    }

    /// Why a model of `modality` named `model` cannot take these inputs, if it cannot.
    pub fn refused_by(self, modality: crate::model::Modality, model: &str) -> Option<String> {
        use crate::model::Modality;
        if self.modality() == modality {
            return None;
        }
        let wants = match self {
            InputKind::Image => "an image model (the shipped one is models/efficientnet-lite0)",
            InputKind::Sound => "a sound model (e.g. models/yamnet-l10)",
            InputKind::Text => "a text model (e.g. models/paraphrase-minilm-l3)",
            InputKind::Window => "a sensor model (e.g. models/minirocket-basicmotions-acc)",
        };
        let takes = match modality {
            Modality::Image => "images",
            Modality::Audio => "sound",
            Modality::Text => "text",
            Modality::Sensor => "sensor windows",
            Modality::Tensor => "tensors only",
        };
        Some(format!(
            "the dataset has {} but the model {model} takes {takes}: use {wants}",
            self.plural()
        ))
    }
}

/// Where a sample comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// An input file to embed through the backbone: an image or a sound clip.
    Input(PathBuf),
    /// A precomputed embedding (one row of an `.npy` or `.csv` file).
    Vector(Vec<f32>),
}

/// One labeled sample before embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The class label (the folder name).
    pub label: String,
    /// The file, with `#row` for multi-vector files; for messages and ordering.
    pub id: String,
    /// Input file or vector.
    pub origin: Origin,
}

/// What a folder scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Samples, sorted by label then file then row.
    pub items: Vec<Item>,
    /// Files skipped because of their extension.
    pub skipped: usize,
}

/// Reads a folder-per-class directory: every sub-folder is a class named after it; every input
/// file ([`INPUT_EXTENSIONS`]: images `.jpg`, `.jpeg`, `.png` and sound clips `.wav`) or
/// embedding file (`.npy`, `.csv`) below it (recursively) gives samples of that class. Hidden entries (starting with `.`) are ignored; other files are
/// counted as skipped.
pub fn scan(dir: &Path) -> Result<Scan> {
    scan_in(dir, false)
}

/// [`scan`], where `.csv` files are sensor windows (inputs) when `windows`, embeddings if not.
pub fn scan_in(dir: &Path, windows: bool) -> Result<Scan> {
    let mut scan = Scan::default();
    let mut classes: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if entry.path().is_dir() {
            crate::head::validate_label(&name).with_context(|| {
                format!(
                    "class folder {} is not a valid label",
                    entry.path().display()
                )
            })?;
            classes.push((name, entry.path()));
        } else {
            scan.skipped += 1;
        }
    }
    classes.sort();
    anyhow::ensure!(
        !classes.is_empty(),
        "{} has no class folders (expected DIR/<label>/<files>)",
        dir.display()
    );
    for (label, path) in classes {
        let mut files = Vec::new();
        collect_files(&path, &mut files, &mut scan.skipped, windows)?;
        files.sort();
        for file in files {
            let id = file.display().to_string();
            if InputKind::of_in(&file, windows).is_some() {
                scan.items.push(Item {
                    label: label.clone(),
                    id,
                    origin: Origin::Input(file),
                });
            } else {
                let m = npy::read_vectors(&file)?;
                let many = m.rows > 1;
                for (row, v) in m.iter_rows().enumerate() {
                    scan.items.push(Item {
                        label: label.clone(),
                        id: if many {
                            format!("{id}#{row}")
                        } else {
                            id.clone()
                        },
                        origin: Origin::Vector(v.to_vec()),
                    });
                }
            }
        }
    }
    Ok(scan)
}

fn collect_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut usize,
    windows: bool,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, out, skipped, windows)?;
            continue;
        }
        let ext = npy::extension(&path).unwrap_or_default();
        if INPUT_EXTENSIONS.contains(&ext.as_str())
            || VECTOR_EXTENSIONS.contains(&ext.as_str())
            || (windows && WINDOW_EXTENSIONS.contains(&ext.as_str()))
        {
            out.push(path);
        } else {
            *skipped += 1;
        }
    }
    Ok(())
}

/// SplitMix64: a tiny, portable generator (the same numbers on every platform and every
/// version of this program), so that a seed names one split and one stream order everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` and a purpose (`stream`), so that the split and the order drawn
    /// from one seed are independent.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (unbiased; `n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// A standard normal number (Box–Muller), for tests and synthetic data.
    pub fn normal(&mut self) -> f64 {
        let u = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let v = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Stream ids for [`Rng::new`].
pub const SPLIT_STREAM: u64 = 1;
/// Stream id of the training order.
pub const ORDER_STREAM: u64 = 2;

/// Test samples of a class of `n`: `round(n · fraction)`, but at least one and leaving at
/// least one for training when the class has two or more samples; none for a single sample.
pub fn test_count(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    let want = (n as f64 * fraction).round() as usize;
    want.clamp(1, n - 1)
}

/// Seeded stratified split of samples labeled `labels` (class indices): per class, the samples
/// are shuffled and the first [`test_count`] go to the test split. Returns the train and test
/// indices, each in ascending order. The same labels, fraction and seed give the same split.
pub fn stratified_split(labels: &[usize], fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &c) in labels.iter().enumerate() {
        by_class.entry(c).or_default().push(i);
    }
    let mut rng = Rng::new(seed, SPLIT_STREAM);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for members in by_class.values_mut() {
        rng.shuffle(members);
        let k = test_count(members.len(), fraction);
        test.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The seeded order in which the training samples are streamed: a permutation of `0..n`.
pub fn stream_order(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::new(seed, ORDER_STREAM).shuffle(&mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_fixed_and_uniform() {
        // Fixed numbers: the split of a seed must not change between versions or platforms.
        let mut r = Rng::new(0, 0);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = Rng::new(0, 0);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        assert_ne!(Rng::new(0, 1).next_u64(), Rng::new(0, 2).next_u64());
        assert_ne!(Rng::new(1, 1).next_u64(), Rng::new(0, 1).next_u64());
        let mut counts = [0usize; 7];
        let mut r = Rng::new(42, 0);
        for _ in 0..70_000 {
            counts[r.below(7) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        let mut v: Vec<usize> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    #[test]
    fn test_count_rules() {
        assert_eq!(test_count(0, 0.3), 0);
        assert_eq!(test_count(1, 0.3), 0);
        assert_eq!(test_count(2, 0.3), 1);
        assert_eq!(test_count(2, 0.9), 1);
        assert_eq!(test_count(10, 0.3), 3);
        assert_eq!(test_count(100, 0.25), 25);
        assert_eq!(test_count(5, 0.01), 1);
    }

    #[test]
    fn split_is_stratified_seeded_and_deterministic() {
        // 3 classes of 11, 19 and 3 samples, interleaved.
        let mut labels = Vec::new();
        for i in 0..33 {
            labels.push(match i % 3 {
                0 if i < 9 => 2,
                0 | 1 => 1,
                _ => 0,
            });
        }
        let count = |idx: &[usize], c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
        let (train, test) = stratified_split(&labels, 0.3, 7);
        for c in 0..3 {
            let n = labels.iter().filter(|&&l| l == c).count();
            assert_eq!(count(&test, c), test_count(n, 0.3), "class {c}");
            assert_eq!(count(&train, c) + count(&test, c), n);
        }
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>());
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        // Same seed, same split; another seed, another split.
        assert_eq!(
            stratified_split(&labels, 0.3, 7),
            (train.clone(), test.clone())
        );
        assert_ne!(stratified_split(&labels, 0.3, 8).1, test);
    }

    #[test]
    fn stream_order_is_a_seeded_permutation() {
        let a = stream_order(50, 3);
        assert_eq!(a, stream_order(50, 3));
        assert_ne!(a, stream_order(50, 4));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert!(stream_order(0, 1).is_empty());
    }

    #[test]
    fn input_kinds_by_extension() {
        let kind = |p: &str| InputKind::of(Path::new(p));
        assert_eq!(kind("a/x.jpg"), Some(InputKind::Image));
        assert_eq!(kind("a/x.JPEG"), Some(InputKind::Image));
        assert_eq!(kind("x.png"), Some(InputKind::Image));
        assert_eq!(kind("a/x.wav"), Some(InputKind::Sound));
        assert_eq!(kind("a/x.WAV"), Some(InputKind::Sound));
        assert_eq!(kind("a/x.npy"), None);
        assert_eq!(kind("a/x.ogg"), None);
        assert_eq!(kind("a/wav"), None);
        assert_eq!(kind("a/x.TXT"), Some(InputKind::Text));
        // The inputs are exactly the images, the sound clips and the texts.
        let mut all: Vec<&str> = IMAGE_EXTENSIONS
            .iter()
            .chain(&SOUND_EXTENSIONS)
            .chain(&TEXT_EXTENSIONS)
            .copied()
            .collect();
        all.sort_unstable();
        let mut inputs = INPUT_EXTENSIONS.to_vec();
        inputs.sort_unstable();
        assert_eq!(all, inputs);
        assert!(VECTOR_EXTENSIONS.iter().all(|e| !inputs.contains(e)));
        assert_eq!(InputKind::Sound.plural(), "sound clips");
    }

    #[test]
    fn the_model_picks_the_kind_of_a_mixed_dataset() {
        use crate::model::Modality;
        let paths = ["a/1.jpg", "a/2.png", "b/3.jpg", "b/notes.txt", "x.npy"].map(Path::new);
        let pick = |m| InputKind::for_model(paths.iter().copied(), m);
        // The image model takes the photos and leaves the one text out.
        assert_eq!(
            pick(Some(Modality::Image)).unwrap(),
            Some((InputKind::Image, 1))
        );
        assert_eq!(
            pick(Some(Modality::Text)).unwrap(),
            Some((InputKind::Text, 3))
        );
        // A model that takes none of them, or no model known: refused, with the counts.
        let e = pick(Some(Modality::Audio)).unwrap_err().to_string();
        assert!(e.contains("3 images and 1 texts"), "{e}");
        assert!(pick(None).is_err());
        // One kind: that kind, whatever the model (refused_by says whether it takes it).
        let photos = ["a/1.jpg", "b/2.jpg"].map(Path::new);
        assert_eq!(
            InputKind::for_model(photos.iter().copied(), Some(Modality::Audio)).unwrap(),
            Some((InputKind::Image, 0))
        );
        assert_eq!(
            InputKind::for_model([Path::new("x.csv")].into_iter(), None).unwrap(),
            None
        );
    }

    #[test]
    fn scans_folder_per_class() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/sub")).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join(".hidden")).unwrap();
        std::fs::write(root.join("a/x.csv"), "1,2\n3,4\n").unwrap();
        std::fs::write(root.join("b/sub/y.npy"), npy::encode_f32(1, 2, &[5.0, 6.0])).unwrap();
        std::fs::write(root.join("b/z.PNG"), b"not really a png").unwrap();
        std::fs::write(root.join("b/clip.Wav"), b"RIFF....WAVE").unwrap();
        std::fs::write(root.join("b/clip.ogg"), b"OggS").unwrap();
        std::fs::write(root.join("b/notes.md"), "ignored").unwrap();
        std::fs::write(root.join("README"), "ignored").unwrap();
        let s = scan(root).unwrap();
        assert_eq!(s.skipped, 3);
        let labels: Vec<&str> = s.items.iter().map(|i| i.label.as_str()).collect();
        assert_eq!(labels, ["a", "a", "b", "b", "b"]);
        assert_eq!(s.items[1].origin, Origin::Vector(vec![3.0, 4.0]));
        assert!(s.items[1].id.ends_with("x.csv#1"));
        // Sorted by path: b/clip.Wav, b/sub/y.npy, b/z.PNG.
        assert_eq!(s.items[2].origin, Origin::Input(root.join("b/clip.Wav")));
        assert!(matches!(s.items[3].origin, Origin::Vector(_)));
        assert_eq!(s.items[4].origin, Origin::Input(root.join("b/z.PNG")));
        // A malformed embedding file is an error naming the file.
        std::fs::write(root.join("a/bad.csv"), "1,2\n3\n").unwrap();
        let err = format!("{:#}", scan(root).unwrap_err());
        assert!(err.contains("bad.csv"), "{err}");
        // Invalid labels and empty roots are errors.
        let dir2 = tempfile::tempdir().unwrap();
        assert!(scan(dir2.path()).is_err());
        std::fs::create_dir_all(dir2.path().join("a+b")).unwrap();
        assert!(scan(dir2.path()).is_err());
        assert!(scan(&dir2.path().join("missing")).is_err());
    }
}
