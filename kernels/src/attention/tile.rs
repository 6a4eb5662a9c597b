//! The register-blocked tile products of the attention kernels and the copies that feed
//! them (see the parent module for the layouts).

use super::*;

/// Index of `(pos, d)` in a blocked transposed `[tp / BLOCK][hs][BLOCK]` buffer.
#[inline(always)]
pub(super) fn blocked(pos: usize, d: usize, hs: usize) -> usize {
    (pos / BLOCK * hs + d) * BLOCK + pos % BLOCK
}

/// Copies part `part` (1 = k, 2 = v) of head `h` for tokens `pos0..pos0 + n` of
/// sequence `bi` into the rows of the `[BLOCK, hp]` buffer `dst`.
#[inline(always)]
pub(super) fn copy_rows(
    dst: &mut [f32],
    qkv: &[f32],
    shape: Shape,
    bi: usize,
    pos0: usize,
    n: usize,
    h: usize,
    part: usize,
) {
    let hp = padded(shape.hs);
    for (j, row) in dst.chunks_exact_mut(hp).take(n).enumerate() {
        row[..shape.hs]
            .copy_from_slice(&qkv[shape.qkv_offset(bi, pos0 + j, h, part)..][..shape.hs]);
    }
}

/// `C[m, n] += A[m, k] · B[k, n]`: `A(i, p)` is `a[i·a_rs + p·a_cs]` (row- or
/// column-major), `B` and `C` are row-major with row strides `ldb`, `ldc`;
/// `n` must be a multiple of [`NR`].
#[inline(always)]
pub(super) fn tile_matmul_impl<const FMA: bool>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    ldb: usize,
    m: usize,
    n: usize,
    k: usize,
) {
    assert_eq!(n % NR, 0);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!((m - 1) * a_rs + (k - 1) * a_cs < a.len());
    assert!((k - 1) * ldb + n <= b.len());
    assert!((m - 1) * ldc + n <= c.len());
    let a = Strided {
        data: a,
        rs: a_rs,
        cs: a_cs,
    };
    let mut i = 0;
    while i + MR <= m {
        micro_kernel::<FMA, MR>(c, ldc, a, b, ldb, i, n, k);
        i += MR;
    }
    match m - i {
        1 => micro_kernel::<FMA, 1>(c, ldc, a, b, ldb, i, n, k),
        2 => micro_kernel::<FMA, 2>(c, ldc, a, b, ldb, i, n, k),
        3 => micro_kernel::<FMA, 3>(c, ldc, a, b, ldb, i, n, k),
        4 => micro_kernel::<FMA, 4>(c, ldc, a, b, ldb, i, n, k),
        5 => micro_kernel::<FMA, 5>(c, ldc, a, b, ldb, i, n, k),
        _ => {}
    }
}

/// A matrix operand with arbitrary row and column strides.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// Rows `i0..i0 + R` of [`tile_matmul_impl`] (whose asserts make every access
/// below in bounds), `R×NR` outputs at a time held in registers across the
/// whole `k` loop.
#[inline(always)]
pub(super) fn micro_kernel<const FMA: bool, const R: usize>(
    c: &mut [f32],
    ldc: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    i0: usize,
    n: usize,
    k: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if FMA && crate::simd::has_avx2_fma() {
        // SAFETY: AVX2 and FMA are available (checked just above); the bounds
        // were asserted by `tile_matmul_impl`.
        unsafe { micro_kernel_avx2::<R>(c, ldc, a, b, ldb, i0, n, k) };
        return;
    }
    // Portable path. The compiler does not reliably keep these accumulators in
    // registers, hence the explicit AVX2 version above.
    for j in (0..n).step_by(NR) {
        let mut acc = [[0f32; NR]; R];
        for p in 0..k {
            let b_row = &b[p * ldb + j..p * ldb + j + NR];
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let x = a.data[(i0 + r) * a.rs + p * a.cs];
                for (s, &y) in acc_row.iter_mut().zip(b_row) {
                    *s = fmadd::<FMA>(x, y, *s);
                }
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            let c_row = &mut c[(i0 + r) * ldc + j..(i0 + r) * ldc + j + NR];
            for (s, &x) in c_row.iter_mut().zip(acc_row) {
                *s += x;
            }
        }
    }
}

/// [`micro_kernel`] with AVX2 intrinsics: `R` rows × 16 columns in `2R` registers.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `n` must be a multiple of 16, and
/// `(i0 + R - 1)·a.rs + (k - 1)·a.cs < a.data.len()`,
/// `(k - 1)·ldb + n <= b.len()`, `(i0 + R - 1)·ldc + n <= c.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn micro_kernel_avx2<const R: usize>(
    c: &mut [f32],
    ldc: usize,
    a: Strided<'_>,
    b: &[f32],
    ldb: usize,
    i0: usize,
    n: usize,
    k: usize,
) {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let (a_ptr, b, c) = (a.data.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    for j in (0..n).step_by(16) {
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            // SAFETY (this and the blocks below): in bounds by the contract.
            let (b0, b1) = unsafe {
                let row = b.add(p * ldb + j);
                (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)))
            };
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(unsafe { *a_ptr.add((i0 + r) * a.rs + p * a.cs) });
                acc_row[0] = _mm256_fmadd_ps(x, b0, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(x, b1, acc_row[1]);
            }
        }
        for (r, acc_row) in acc.iter().enumerate() {
            unsafe {
                let out = c.add((i0 + r) * ldc + j);
                _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), acc_row[0]));
                _mm256_storeu_ps(
                    out.add(8),
                    _mm256_add_ps(_mm256_loadu_ps(out.add(8)), acc_row[1]),
                );
            }
        }
    }
}
