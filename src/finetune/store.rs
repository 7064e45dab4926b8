//! Activations at the cut as the trainer keeps them: channels last, in f16 (half the bytes of
//! f32; the trainer computes in f32).

use half::f16;

use super::Act;

/// One sample's activation at the cut.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    data: Vec<f16>,
}

impl Stored {
    /// From the backbone's output at the cut (see [`Act::from_nchw`]).
    pub fn from_nchw(shape: &[usize], values: &[f32]) -> Result<Stored, String> {
        Ok(Stored::from_act(&Act::from_nchw(shape, values)?))
    }

    /// From a channels-last activation.
    pub fn from_act(x: &Act) -> Stored {
        Stored {
            h: x.h,
            w: x.w,
            c: x.c,
            data: x.data.iter().map(|v| f16::from_f32(*v)).collect(),
        }
    }

    /// The activation in f32, for the tail.
    pub fn act(&self) -> Act {
        Act {
            h: self.h,
            w: self.w,
            c: self.c,
            data: self.data.iter().map(|v| v.to_f32()).collect(),
        }
    }

    /// Bytes of the stored values.
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f16>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_becomes_channels_last_within_f16_precision() {
        // 2 channels of 2 × 3 positions.
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.37 - 1.0).collect();
        let s = Stored::from_nchw(&[1, 2, 2, 3], &values).expect("shape");
        assert_eq!((s.h, s.w, s.c, s.bytes()), (2, 3, 2, 24));
        let a = s.act();
        for ch in 0..2 {
            for p in 0..6 {
                let want = values[ch * 6 + p];
                let got = a.data[p * 2 + ch];
                assert!((got - want).abs() <= want.abs() * 1e-3, "{got} vs {want}");
            }
        }
        assert!(Stored::from_nchw(&[2, 2, 2, 3], &values).is_err());
        assert!(Stored::from_nchw(&[1, 2, 2, 2], &values).is_err());
    }
}
