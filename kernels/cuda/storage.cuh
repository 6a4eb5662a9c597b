// The storage type of activations and of the compute copy of the weights,
// `floatX`, chosen when NVRTC compiles a source (kernels/src/cuda/compile.rs
// prepends this file): bf16 with -DFLOATX_BF16, fp32 otherwise. Arithmetic is
// always fp32: `to_f32` widens a stored value, `to_x` rounds an fp32 result to
// the storage type (round to nearest even; NaN stays NaN). In the fp32 build
// both are the identity, so those kernels compute exactly what they did before
// the type existed.
//
// bf16 is kept as its raw 16-bit pattern (the upper half of an fp32) rather than
// cuda_bf16.h's __nv_bfloat16, whose header NVRTC does not ship everywhere.

#ifdef FLOATX_BF16
typedef unsigned short floatX;

__device__ __forceinline__ float to_f32(floatX x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

__device__ __forceinline__ floatX to_x(float f) {
    const unsigned int bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return (floatX)((bits >> 16) | 0x40u);
    }
    const unsigned int rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (floatX)((bits + rounding) >> 16);
}
#else
typedef float floatX;

__device__ __forceinline__ float to_f32(float x) { return x; }

__device__ __forceinline__ float to_x(float f) { return f; }
#endif
