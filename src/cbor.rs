//! CBOR byte strings for serde (serde's `Vec<u8>` would be an array of integers): raw bytes and
//! little-endian f32 arrays, read in chunks as they arrive, never allocated from an untrusted
//! declared length.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        // ciborium's byte_buf path reads byte strings chunk by chunk (its bytes path would
        // fall back to a sequence for strings above its 4 KiB scratch buffer).
        d.deserialize_byte_buf(V)
    }
}

/// f32 values stored as one little-endian byte string.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct F32s(pub Vec<f32>);

impl Serialize for F32s {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        F32Slice(&self.0).serialize(s)
    }
}

/// Borrowed f32 values, serialized like [`F32s`] without copying them first (on little-endian
/// machines, every target adaptd ships for, the values already are their byte string).
#[derive(Clone, Copy, Debug)]
pub struct F32Slice<'a>(pub &'a [f32]);

impl Serialize for F32Slice<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[cfg(target_endian = "little")]
        {
            s.serialize_bytes(bytemuck::cast_slice(self.0))
        }
        #[cfg(not(target_endian = "little"))]
        {
            let bytes: Vec<u8> = self.0.iter().flat_map(|x| x.to_le_bytes()).collect();
            s.serialize_bytes(&bytes)
        }
    }
}

/// A `Write` that only counts: the exact size of an encoding before allocating for it.
#[derive(Default)]
pub struct CountingWriter(pub usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// CBOR of `v` in a buffer of exactly its size (a growing `Vec` would hold up to twice that,
/// and large short-lived buffers are what make a long-running process's RSS creep).
pub fn to_vec_exact<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    let mut n = CountingWriter::default();
    ciborium::into_writer(v, &mut n).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n.0);
    ciborium::into_writer(v, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

impl<'de> Deserialize<'de> for F32s {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<F32s, D::Error> {
        let Bytes(b) = Bytes::deserialize(d)?;
        if b.len() % 4 != 0 {
            return Err(de::Error::custom(
                "f32 byte string length not a multiple of 4",
            ));
        }
        Ok(F32s(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_strings_round_trip_and_bad_lengths_fail() {
        let v = F32s((0..5000).map(|i| i as f32 * 0.5).collect());
        let mut buf = Vec::new();
        ciborium::into_writer(&v, &mut buf).expect("encode");
        let back: F32s = ciborium::from_reader(buf.as_slice()).expect("decode");
        assert_eq!(back, v);
        let mut odd = Vec::new();
        ciborium::into_writer(&Bytes(vec![1, 2, 3]), &mut odd).expect("encode");
        assert!(ciborium::from_reader::<F32s, _>(odd.as_slice()).is_err());
    }

    #[test]
    fn borrowed_slices_encode_like_owned_values_in_exactly_sized_buffers() {
        let v: Vec<f32> = (0..3000).map(|i| (i as f32).sin() * 1e3).collect();
        let owned = to_vec_exact(&F32s(v.clone())).expect("encode");
        let borrowed = to_vec_exact(&F32Slice(&v)).expect("encode");
        assert_eq!(owned, borrowed);
        assert_eq!(borrowed.len(), borrowed.capacity());
        // Little-endian bytes after the 3-byte CBOR header (major type 2, 16-bit length).
        assert_eq!(&borrowed[3..7], &v[0].to_le_bytes());
        let back: F32s = ciborium::from_reader(borrowed.as_slice()).expect("decode");
        assert_eq!(back.0, v);
    }
}
