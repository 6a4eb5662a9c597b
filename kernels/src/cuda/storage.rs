//! The storage types of device buffers that kernels read and write in either
//! precision: fp32 or bf16 ([`Bf16`]), chosen per call by the element type of
//! the buffers (the [`Storage`] trait). Each `.cu` source that uses the `floatX`
//! type of `kernels/cuda/storage.cuh` is compiled once per storage type
//! ([`Dtype`]); arithmetic inside the kernels is always fp32.

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};

/// The storage type a kernel module is compiled for (`floatX` in the `.cu` files).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// 32-bit IEEE floats.
    F32,
    /// bfloat16: the upper 16 bits of an fp32 (8 exponent bits, 7 mantissa bits).
    Bf16,
}

impl Dtype {
    /// Both storage types, for checks that compile every variant.
    pub const ALL: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }

    /// The NVRTC option selecting this type, if any (`-DFLOATX_BF16`).
    pub(crate) fn define(self) -> Option<&'static str> {
        match self {
            Dtype::F32 => None,
            Dtype::Bf16 => Some("-DFLOATX_BF16"),
        }
    }
}

/// A bfloat16 value as its raw bit pattern (the upper half of an fp32), the
/// element type of bf16 device buffers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Rounds `x` to the nearest bf16 (ties to even; NaN stays NaN, as on the
    /// device).
    pub fn from_f32(x: f32) -> Self {
        let bits = x.to_bits();
        if bits & 0x7fff_ffff > 0x7f80_0000 {
            return Bf16(((bits >> 16) | 0x40) as u16);
        }
        let rounding = 0x7fff + ((bits >> 16) & 1);
        Bf16((bits.wrapping_add(rounding) >> 16) as u16)
    }

    /// The exact fp32 value.
    pub fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

// SAFETY: `Bf16` is a `repr(transparent)` `u16`: plain bits with the layout the
// kernels expect for `unsigned short`.
unsafe impl DeviceRepr for Bf16 {}
// SAFETY: all-zero bits are the bf16 value +0.0.
unsafe impl ValidAsZeroBits for Bf16 {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::Bf16 {}
}

/// An element type that kernels can store activations and weights in: `f32` or
/// [`Bf16`].
pub trait Storage:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + 'static + sealed::Sealed
{
    /// The kernel variant that reads and writes this type.
    const DTYPE: Dtype;

    /// `x` in this type (rounded to nearest even for bf16).
    fn from_f32(x: f32) -> Self;

    /// The value as an fp32 (exact).
    fn to_f32(self) -> f32;
}

impl Storage for f32 {
    const DTYPE: Dtype = Dtype::F32;

    fn from_f32(x: f32) -> Self {
        x
    }

    fn to_f32(self) -> f32 {
        self
    }
}

impl Storage for Bf16 {
    const DTYPE: Dtype = Dtype::Bf16;

    fn from_f32(x: f32) -> Self {
        Bf16::from_f32(x)
    }

    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

/// `x` rounded to storage type `X` on the host.
pub fn to_storage<X: Storage>(x: &[f32]) -> Vec<X> {
    x.iter().map(|&v| X::from_f32(v)).collect()
}

/// `x` widened to fp32 on the host.
pub fn to_f32s<X: Storage>(x: &[X]) -> Vec<f32> {
    x.iter().map(|&v| v.to_f32()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        assert_eq!(Bf16::from_f32(1.0).to_f32(), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.
        assert_eq!(Bf16::from_f32(1.0 + 2f32.powi(-8)).to_f32(), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even 1 + 2^-6.
        let up = Bf16::from_f32(1.0 + 3.0 * 2f32.powi(-8)).to_f32();
        assert_eq!(up, 1.0 + 2f32.powi(-6));
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
        assert_eq!(Bf16::from_f32(f32::MAX).to_f32(), f32::INFINITY);
        for x in [0.1f32, -3.7, 1e-30, 65504.0, 123456.78] {
            let y = Bf16::from_f32(x).to_f32();
            assert!((y - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {y}");
        }
    }
}
