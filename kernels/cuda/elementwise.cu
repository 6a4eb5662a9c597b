// Elementwise helpers: the residual forward and backward (kernels/src/residual.rs),
// scaling (kernels/src/norm.rs) and conversions between fp32 and the storage
// type floatX (storage.cuh; fp32 -> bf16 feeds cuBLAS and the compute copy of
// the weights).
//
// Dimension legend: elementwise over n elements.

#define GRID_STRIDE(i, n)                                                              \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);      \
         i += (long long)gridDim.x * blockDim.x)

// out = a + b; overwrites out.
extern "C" __global__ void residual_forward(floatX* out, const floatX* a, const floatX* b,
                                            long long n) {
    GRID_STRIDE(i, n) { out[i] = to_x(to_f32(a[i]) + to_f32(b[i])); }
}

// acc += x (the residual backward, and gradient accumulation).
extern "C" __global__ void add_inplace(floatX* acc, const floatX* x, long long n) {
    GRID_STRIDE(i, n) { acc[i] = to_x(to_f32(acc[i]) + to_f32(x[i])); }
}

// x *= s, on fp32 buffers (gradients) in every build.
extern "C" __global__ void scale_inplace(float* x, float s, long long n) {
    GRID_STRIDE(i, n) { x[i] *= s; }
}

// out = floatX(x): round to nearest even in the bf16 build, a copy in fp32.
extern "C" __global__ void to_floatx(floatX* out, const float* x, long long n) {
    GRID_STRIDE(i, n) { out[i] = to_x(x[i]); }
}

// out = float(x) (exact).
extern "C" __global__ void from_floatx(float* out, const floatX* x, long long n) {
    GRID_STRIDE(i, n) { out[i] = to_f32(x[i]); }
}
