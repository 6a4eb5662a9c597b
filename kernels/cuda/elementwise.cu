// Elementwise helpers: the residual forward and backward (kernels/src/residual.rs),
// scaling (kernels/src/norm.rs) and fp32 -> bf16 conversion for cuBLAS.
//
// Dimension legend: elementwise over n elements.

#define GRID_STRIDE(i, n)                                                              \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);      \
         i += (long long)gridDim.x * blockDim.x)

// out = a + b; overwrites out.
extern "C" __global__ void residual_forward(float* out, const float* a, const float* b,
                                            long long n) {
    GRID_STRIDE(i, n) { out[i] = a[i] + b[i]; }
}

// acc += x (the residual backward, and gradient accumulation).
extern "C" __global__ void add_inplace(float* acc, const float* x, long long n) {
    GRID_STRIDE(i, n) { acc[i] += x[i]; }
}

// x *= s.
extern "C" __global__ void scale_inplace(float* x, float s, long long n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}

// out = bf16(x), round to nearest even (NaN stays NaN), as raw 16-bit patterns.
extern "C" __global__ void f32_to_bf16(unsigned short* out, const float* x, long long n) {
    GRID_STRIDE(i, n) {
        const unsigned int bits = __float_as_uint(x[i]);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            out[i] = (unsigned short)((bits >> 16) | 0x40u);
        } else {
            const unsigned int rounding = 0x7fffu + ((bits >> 16) & 1u);
            out[i] = (unsigned short)((bits + rounding) >> 16);
        }
    }
}
