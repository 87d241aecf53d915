//! Many tensors in one flat buffer, each starting at an aligned offset so it
//! can be bound on its own. A network's parameters, gradients and momentum
//! share one layout, so one SGD dispatch updates them all and one copy reads
//! them back.

use crate::kernel::aligned;
use sprout_core::error::{Error, Result};

/// Where each tensor starts in a flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// First element of each tensor.
    pub offsets: Vec<usize>,
    /// Elements of each tensor.
    pub lens: Vec<usize>,
    /// Length of the flat buffer.
    pub total: usize,
}

impl Layout {
    /// Tensors of these lengths, back to back at aligned offsets.
    pub fn new(lens: impl IntoIterator<Item = usize>) -> Layout {
        let lens: Vec<usize> = lens.into_iter().collect();
        let mut offsets = Vec::with_capacity(lens.len());
        let mut at = 0;
        for &l in &lens {
            offsets.push(at);
            at = aligned(at + l);
        }
        Layout {
            offsets,
            lens,
            total: at.max(1),
        }
    }

    /// The tensors as one flat vector (zeros between them).
    pub fn pack(&self, tensors: &[Vec<f32>]) -> Result<Vec<f32>> {
        if tensors.len() != self.lens.len()
            || tensors.iter().zip(&self.lens).any(|(t, &l)| t.len() != l)
        {
            return Err(Error::Mismatch(
                "tensors do not match the buffer layout".into(),
            ));
        }
        let mut flat = vec![0.0; self.total];
        for (t, &o) in tensors.iter().zip(&self.offsets) {
            flat[o..o + t.len()].copy_from_slice(t);
        }
        Ok(flat)
    }

    /// Splits a flat vector back into tensors.
    pub fn unpack(&self, flat: &[f32]) -> Result<Vec<Vec<f32>>> {
        if flat.len() < self.total {
            return Err(Error::shape("flat buffer values", self.total, flat.len()));
        }
        Ok(self
            .offsets
            .iter()
            .zip(&self.lens)
            .map(|(&o, &l)| flat[o..o + l].to_vec())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_round_trip_at_aligned_offsets() {
        let l = Layout::new([3, 64, 65, 1]);
        assert_eq!(l.offsets, vec![0, 64, 128, 256]);
        assert_eq!(l.total, 320);
        let t: Vec<Vec<f32>> = l
            .lens
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 1000 + j) as f32).collect())
            .collect();
        let flat = l.pack(&t).unwrap();
        assert_eq!(l.unpack(&flat).unwrap(), t);
        assert!(l.pack(&t[..2]).is_err());
    }
}
