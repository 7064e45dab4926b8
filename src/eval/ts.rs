//! The UCR/UEA time-series archive's `.ts` files (sktime/aeon format) for `adaptd eval`:
//! header (`@problemName`, `@dimensions`, `@classLabel`, …), then one series per line,
//! channels separated by `:`, values by `,`, the class label last; `?` is a missing value.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// One `.ts` file.
#[derive(Debug, Clone, PartialEq)]
pub struct TsFile {
    /// `@problemName`, when given.
    pub name: Option<String>,
    /// The series: one vector per channel (`None`: missing), and the class label.
    pub series: Vec<(Vec<Vec<Option<f64>>>, String)>,
}

impl TsFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<TsFile> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        parse(&text).with_context(|| format!("{} is not a usable .ts file", path.display()))
    }

    /// `(channels, samples)` of every series; an error naming the lengths when they differ
    /// (adaptd's windows have one length: pad the series to one length first).
    pub fn shape(&self) -> Result<(usize, usize)> {
        let Some((first, _)) = self.series.first() else {
            bail!("no series");
        };
        let channels = first.len();
        let mut lengths = std::collections::BTreeSet::new();
        for (s, _) in &self.series {
            if s.len() != channels {
                bail!("series with {} and {} channels", channels, s.len());
            }
            lengths.extend(s.iter().map(Vec::len));
        }
        match (lengths.first(), lengths.last()) {
            (Some(a), Some(b)) if a == b => Ok((channels, *a)),
            (Some(a), Some(b)) => bail!(
                "unequal-length series ({a} to {b} samples): a model takes windows of one \
                 length; pad or cut the series to one length first"
            ),
            _ => bail!("no samples"),
        }
    }
}

/// Parses the text of a `.ts` file.
pub fn parse(text: &str) -> Result<TsFile> {
    let mut name = None;
    let mut labels_declared = false;
    let mut in_data = false;
    let mut series = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !in_data {
            let Some(rest) = line.strip_prefix('@') else {
                bail!("line {}: data before @data", n + 1);
            };
            let (key, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let value = value.trim();
            match key.to_ascii_lowercase().as_str() {
                "problemname" => name = Some(value.to_string()),
                "timestamps" if value.eq_ignore_ascii_case("true") => {
                    bail!("line {}: series with timestamps are not supported", n + 1)
                }
                "classlabel" => {
                    labels_declared = value
                        .split_whitespace()
                        .next()
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                }
                "targetlabel" if value.eq_ignore_ascii_case("true") => {
                    bail!(
                        "line {}: a regression set (@targetlabel): adaptd classifies",
                        n + 1
                    )
                }
                "data" => in_data = true,
                _ => {}
            }
            continue;
        }
        if !labels_declared {
            bail!("no @classLabel true: a classification set has a class label per series");
        }
        let mut fields: Vec<&str> = line.split(':').collect();
        let label = fields.pop().unwrap_or_default().trim();
        if label.is_empty() || fields.is_empty() {
            bail!(
                "line {}: a series needs its channels and a class label",
                n + 1
            );
        }
        let channels = fields
            .iter()
            .map(|f| {
                f.split(',')
                    .map(|v| {
                        let v = v.trim();
                        if v == "?" || v.eq_ignore_ascii_case("nan") {
                            Ok(None)
                        } else {
                            v.parse::<f64>()
                                .map(Some)
                                .with_context(|| format!("line {}: {v:?} is not a number", n + 1))
                        }
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        series.push((channels, label.to_string()));
    }
    if !in_data {
        bail!("no @data line");
    }
    Ok(TsFile { name, series })
}

/// True when `path` names a `.ts` file.
pub fn is_ts(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ts"))
        && path.is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "# comment\n@problemName Toy\n@timeStamps false\n@missing true\n\
        @univariate false\n@dimensions 2\n@equalLength true\n@seriesLength 3\n\
        @classLabel true up down\n@data\n1,2,3:4,5,6:up\n\n3,?,1:6,5,NaN:down\n";

    #[test]
    fn reads_channels_labels_and_missing_values() {
        let t = parse(TWO).unwrap();
        assert_eq!(t.name.as_deref(), Some("Toy"));
        assert_eq!(t.series.len(), 2);
        assert_eq!(t.series[0].1, "up");
        assert_eq!(
            t.series[0].0,
            vec![
                vec![Some(1.0), Some(2.0), Some(3.0)],
                vec![Some(4.0), Some(5.0), Some(6.0)]
            ]
        );
        assert_eq!(t.series[1].0[0][1], None);
        assert_eq!(t.series[1].0[1][2], None);
        assert_eq!(t.shape().unwrap(), (2, 3));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let unequal = TWO.replace("3,?,1:6,5,NaN:down", "3,1:6,5:down");
        let e = parse(&unequal).unwrap().shape().unwrap_err().to_string();
        assert!(e.contains("unequal-length series (2 to 3 samples)"), "{e}");
        let bad = |t: &str| parse(t).is_err();
        assert!(bad(&TWO.replace("@timeStamps false", "@timeStamps true")));
        assert!(bad(
            &TWO.replace("@classLabel true up down", "@classLabel false")
        ));
        assert!(bad(&TWO.replace("1,2,3:4", "1,x,3:4")));
        assert!(bad(&TWO.replace("@data\n", "")));
        assert!(bad("1,2,3:up\n"));
        assert!(bad(&TWO.replace(":up", ":")));
    }
}
