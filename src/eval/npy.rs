//! Embedding files: `.npy` (format versions 1–3, f4/f8, either byte order, C or Fortran order,
//! 1-D = one vector, 2-D = one vector per row) and `.csv` (one vector per row) readers, and the
//! small `.npy` writer used by `--export-embeddings`.

use std::fmt::Write as _;
use std::path::Path;

/// Largest embedding file read, in bytes (a guard against reading a huge file by mistake).
pub const MAX_FILE_BYTES: u64 = 1 << 31;

/// Errors reading an embedding file. Messages name the problem, not the file (the caller adds
/// the path).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReadError {
    /// Not an `.npy` file or a version this reader does not know.
    #[error("not an .npy file: {0}")]
    NotNpy(String),
    /// The header is malformed.
    #[error("malformed .npy header: {0}")]
    Header(String),
    /// The dtype is not a float type this reader accepts.
    #[error("unsupported dtype {0:?} (expected little- or big-endian f4 or f8)")]
    Dtype(String),
    /// The array is not 1-D or 2-D, or empty.
    #[error("unsupported shape {0:?} (expected one vector (d,) or rows of vectors (n, d))")]
    Shape(Vec<usize>),
    /// The data section is shorter or longer than the shape says.
    #[error("data is {got} bytes, shape and dtype need {want}")]
    Length {
        /// Bytes present.
        got: usize,
        /// Bytes required.
        want: usize,
    },
    /// A CSV field is not a number.
    #[error("line {line}: {field:?} is not a number")]
    CsvNumber {
        /// 1-based line number.
        line: usize,
        /// The offending field.
        field: String,
    },
    /// CSV rows of different lengths.
    #[error("line {line}: {got} values, earlier rows have {want}")]
    CsvRagged {
        /// 1-based line number.
        line: usize,
        /// Values on this line.
        got: usize,
        /// Values on the first row.
        want: usize,
    },
    /// No vectors at all.
    #[error("no values")]
    Empty,
    /// NaN or infinity.
    #[error("vector {row} contains a non-finite value")]
    NonFinite {
        /// 0-based vector index.
        row: usize,
    },
}

/// Vectors read from one file: `rows` vectors of `dim` values, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of vectors.
    pub rows: usize,
    /// Values per vector.
    pub dim: usize,
    /// `rows × dim` values.
    pub data: Vec<f32>,
}

impl Matrix {
    /// The vectors, one slice each.
    pub fn iter_rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim.max(1))
    }

    fn check_finite(self) -> Result<Matrix, ReadError> {
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            return Err(ReadError::NonFinite {
                row: i / self.dim.max(1),
            });
        }
        Ok(self)
    }
}

/// Reads an `.npy` or `.csv` file by its extension (case-insensitive).
pub fn read_vectors(path: &Path) -> anyhow::Result<Matrix> {
    use anyhow::Context;
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE_BYTES,
        "{}: {len} bytes is larger than the {MAX_FILE_BYTES}-byte limit",
        path.display()
    );
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = match extension(path).as_deref() {
        Some("npy") => parse_npy(&bytes),
        Some("csv") => parse_csv(&String::from_utf8_lossy(&bytes)),
        _ => anyhow::bail!("{}: not a .npy or .csv file", path.display()),
    };
    parsed.with_context(|| format!("reading {}", path.display()))
}

/// The lowercase extension of a path.
pub fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

/// Parses an `.npy` file holding one vector (1-D) or one vector per row (2-D) of f4 or f8.
pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, ReadError> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(ReadError::NotNpy("bad magic".into()));
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 => {
            let b = bytes
                .get(8..12)
                .ok_or_else(|| ReadError::NotNpy("truncated header length".into()))?;
            let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        v => return Err(ReadError::NotNpy(format!("format version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| ReadError::Header("header longer than the file".into()))?;
    let header = std::str::from_utf8(&bytes[start..end])
        .map_err(|_| ReadError::Header("header is not text".into()))?;
    let descr = dict_value(header, "descr")?;
    let descr = unquote(descr).ok_or_else(|| ReadError::Header("descr is not a string".into()))?;
    let fortran = match dict_value(header, "fortran_order")? {
        "True" => true,
        "False" => false,
        other => return Err(ReadError::Header(format!("fortran_order = {other}"))),
    };
    let shape = parse_shape(dict_value(header, "shape")?)?;
    let (size, big_endian) = match descr {
        "<f4" | "|f4" | "=f4" => (4, false),
        ">f4" => (4, true),
        "<f8" | "|f8" | "=f8" => (8, false),
        ">f8" => (8, true),
        other => return Err(ReadError::Dtype(other.to_string())),
    };
    let (rows, dim) = match shape[..] {
        [d] if d > 0 => (1, d),
        [n, d] if n > 0 && d > 0 => (n, d),
        _ => return Err(ReadError::Shape(shape)),
    };
    let want = rows
        .checked_mul(dim)
        .and_then(|c| c.checked_mul(size))
        .ok_or_else(|| ReadError::Shape(shape.clone()))?;
    let data = &bytes[end..];
    if data.len() != want {
        return Err(ReadError::Length {
            got: data.len(),
            want,
        });
    }
    let values: Vec<f32> = if size == 4 {
        data.chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                if big_endian {
                    f32::from_be_bytes(b)
                } else {
                    f32::from_le_bytes(b)
                }
            })
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                let v = if big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                };
                v as f32
            })
            .collect()
    };
    let data = if fortran && rows > 1 {
        // Column-major: element (i, j) is at j * rows + i.
        let mut t = vec![0.0f32; values.len()];
        for i in 0..rows {
            for j in 0..dim {
                t[i * dim + j] = values[j * rows + i];
            }
        }
        t
    } else {
        values
    };
    Matrix { rows, dim, data }.check_finite()
}

/// The raw text of `key`'s value in a Python dict literal header (up to the next top-level
/// comma or the closing brace).
fn dict_value<'a>(header: &'a str, key: &str) -> Result<&'a str, ReadError> {
    let missing = || ReadError::Header(format!("no {key:?} key"));
    let pos = [format!("'{key}'"), format!("\"{key}\"")]
        .iter()
        .find_map(|k| header.find(k.as_str()).map(|p| p + k.len()))
        .ok_or_else(missing)?;
    let rest = header[pos..].trim_start();
    let rest = rest.strip_prefix(':').ok_or_else(missing)?.trim_start();
    let mut depth = 0usize;
    for (i, ch) in rest.char_indices() {
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Ok(rest[..i].trim()),
            _ => {}
        }
    }
    Err(ReadError::Header(format!("unterminated value of {key:?}")))
}

fn unquote(s: &str) -> Option<&str> {
    let s = s.trim();
    ['\'', '"'].iter().find_map(|&q| {
        s.strip_prefix(q)
            .and_then(|r| r.strip_suffix(q))
            .filter(|inner| !inner.contains(q))
    })
}

fn parse_shape(s: &str) -> Result<Vec<usize>, ReadError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| ReadError::Header(format!("shape {s:?} is not a tuple")))?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.trim_end_matches('L')
                .parse::<usize>()
                .map_err(|_| ReadError::Header(format!("shape {s:?}")))
        })
        .collect()
}

/// Parses CSV text: one vector per non-empty row; values separated by commas, semicolons,
/// tabs or spaces. A first row that is not all numbers is taken as a header and skipped; lines
/// starting with `#` are comments.
pub fn parse_csv(text: &str) -> Result<Matrix, ReadError> {
    let mut data = Vec::new();
    let mut dim = 0usize;
    let mut rows = 0usize;
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line
            .split([',', ';', '\t', ' '])
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect();
        let parsed: Result<Vec<f32>, &str> = fields
            .iter()
            .map(|f| f.parse::<f32>().map_err(|_| *f))
            .collect();
        let values = match parsed {
            Ok(v) => v,
            Err(_) if first => {
                first = false;
                continue;
            }
            Err(field) => {
                return Err(ReadError::CsvNumber {
                    line: i + 1,
                    field: field.to_string(),
                })
            }
        };
        first = false;
        if rows == 0 {
            dim = values.len();
        } else if values.len() != dim {
            return Err(ReadError::CsvRagged {
                line: i + 1,
                got: values.len(),
                want: dim,
            });
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ReadError::NonFinite { row: rows });
        }
        data.extend(values);
        rows += 1;
    }
    if rows == 0 || dim == 0 {
        return Err(ReadError::Empty);
    }
    Ok(Matrix { rows, dim, data })
}

/// Encodes a C-order `.npy` (version 1) with the given numpy dtype (`<f4` or `<i8`), shape and
/// little-endian data.
fn encode_npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut dims = String::new();
    for d in shape {
        let _ = write!(dims, "{d}, ");
    }
    let dims = if shape.len() == 1 {
        dims.trim_end().to_string()
    } else {
        dims.trim_end().trim_end_matches(',').to_string()
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    // Pad with spaces so that magic + version + length + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // The header of an exported file is a few dozen bytes, far below u16::MAX.
    out.extend_from_slice(&(header.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Encodes `rows × dim` f32 values as a 2-D `<f4` `.npy`.
pub fn encode_f32(rows: usize, dim: usize, values: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_npy("<f4", &[rows, dim], &data)
}

/// Encodes integers as a 1-D `<i8` `.npy`.
pub fn encode_i64(values: &[i64]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    encode_npy("<i8", &[values.len()], &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
        let header = if fortran {
            header.replace("true", "True")
        } else {
            header.replace("false", "False")
        };
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn f4(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_1d_and_2d_f4_f8() {
        let m = parse_npy(&npy("<f4", false, "(3,)", &f4(&[1.0, 2.0, 3.0]))).unwrap();
        assert_eq!((m.rows, m.dim, m.data), (1, 3, vec![1.0, 2.0, 3.0]));
        let d: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let m = parse_npy(&npy("<f8", false, "(2, 3)", &d)).unwrap();
        assert_eq!((m.rows, m.dim), (2, 3));
        assert_eq!(m.iter_rows().nth(1).unwrap(), &[4.0, 5.0, 6.0]);
        // Fortran order: the same matrix stored column by column.
        let m = parse_npy(&npy("<f4", true, "(2, 3)", &f4(&[1., 4., 2., 5., 3., 6.]))).unwrap();
        assert_eq!(m.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Big-endian.
        let be: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let m = parse_npy(&npy(">f4", false, "(2,)", &be)).unwrap();
        assert_eq!(m.data, vec![1.5, -2.0]);
    }

    #[test]
    fn round_trips_the_writer() {
        let bytes = encode_f32(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!((bytes.len() - 4 * 4) % 64, 0);
        let m = parse_npy(&bytes).unwrap();
        assert_eq!((m.rows, m.dim, m.data), (2, 2, vec![1.0, 2.0, 3.0, 4.0]));
        let ints = encode_i64(&[3, 1]);
        assert_eq!((ints.len() - 16) % 64, 0);
        // Integers are written for labels but not accepted as embeddings.
        assert!(matches!(parse_npy(&ints), Err(ReadError::Dtype(_))));
        let text = String::from_utf8_lossy(&ints[10..]).to_string();
        assert!(text.contains("'shape': (2,)"), "{text}");
    }

    #[test]
    fn malformed_npy_is_an_error() {
        let good = npy("<f4", false, "(2,)", &f4(&[1.0, 2.0]));
        assert!(parse_npy(&good).is_ok());
        // Truncated anywhere: never a panic.
        for n in 0..good.len() {
            assert!(parse_npy(&good[..n]).is_err(), "prefix {n}");
        }
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"hello world, not numpy".to_vec(), "magic"),
            (npy("<i4", false, "(2,)", &f4(&[1.0, 2.0])), "dtype"),
            (npy("<f4", false, "(1, 1, 2)", &f4(&[1.0, 2.0])), "3-d"),
            (npy("<f4", false, "()", &f4(&[1.0])), "scalar"),
            (npy("<f4", false, "(0, 3)", &[]), "empty"),
            (npy("<f4", false, "(3,)", &f4(&[1.0, 2.0])), "short"),
            (npy("<f4", false, "(1,)", &f4(&[1.0, 2.0])), "long"),
            (npy("<f4", false, "(2,)", &f4(&[1.0, f32::NAN])), "nan"),
            (npy("<f4", false, "[2]", &f4(&[1.0, 2.0])), "shape list"),
            (
                npy("<f4", false, "(99999999999999999999, 2)", &f4(&[1.0])),
                "huge",
            ),
            (
                npy(
                    "<f4",
                    false,
                    "(4611686018427387904, 4611686018427387904)",
                    &[],
                ),
                "overflow",
            ),
        ];
        for (bytes, what) in cases {
            assert!(parse_npy(&bytes).is_err(), "{what}");
        }
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(matches!(parse_npy(&v9), Err(ReadError::NotNpy(_))));
        let mut long_header = good;
        long_header[8] = 0xff;
        long_header[9] = 0xff;
        assert!(parse_npy(&long_header).is_err());
    }

    #[test]
    fn reads_csv() {
        let m = parse_csv("# comment\nx,y,z\n1, 2, 3\n\n4;5;6\n7 8\t9\n").unwrap();
        assert_eq!((m.rows, m.dim), (3, 3));
        assert_eq!(m.data, vec![1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let m = parse_csv("0.5,-1e-3\n").unwrap();
        assert_eq!(m.data, vec![0.5, -1e-3]);
    }

    #[test]
    fn malformed_csv_is_an_error() {
        assert_eq!(parse_csv(""), Err(ReadError::Empty));
        assert_eq!(parse_csv("a,b\n"), Err(ReadError::Empty));
        assert!(matches!(
            parse_csv("1,2\n3,x\n"),
            Err(ReadError::CsvNumber { line: 2, .. })
        ));
        assert!(matches!(
            parse_csv("1,2\n3,4,5\n"),
            Err(ReadError::CsvRagged { line: 2, .. })
        ));
        assert!(matches!(
            parse_csv("1,2\nnan,4\n"),
            Err(ReadError::NonFinite { row: 1 })
        ));
        assert!(matches!(
            parse_csv("1,inf\n"),
            Err(ReadError::NonFinite { row: 0 })
        ));
        // Binary garbage: an error, not a panic.
        let garbage: String = (0u8..=255).map(char::from).collect();
        assert!(parse_csv(&garbage).is_err());
    }

    #[test]
    fn read_vectors_dispatches_on_extension() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.CSV");
        std::fs::write(&p, "1,2\n").unwrap();
        assert_eq!(read_vectors(&p).unwrap().dim, 2);
        let p = dir.path().join("a.npy");
        std::fs::write(&p, encode_f32(1, 3, &[1.0, 2.0, 3.0])).unwrap();
        assert_eq!(read_vectors(&p).unwrap().dim, 3);
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "1,2\n").unwrap();
        assert!(read_vectors(&p).is_err());
        assert!(read_vectors(&dir.path().join("missing.npy")).is_err());
    }
}
