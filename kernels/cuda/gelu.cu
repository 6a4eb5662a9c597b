// GELU with the tanh approximation (GPT-2's), forward and backward, with the
// math of kernels/src/gelu.rs: 0.5(1 + tanh z) = 1 / (1 + exp(-2z)). Values are
// stored as floatX (storage.cuh) and computed in fp32.
//
// Dimension legend: elementwise over n elements (typically N x 4C).

#define SQRT_2_OVER_PI 0.7978846f
#define CUBIC 0.044715f

// exp with its argument clamped to [-87.3, 88.3], as the CPU kernels' exp:
// never 0 or infinite, so 0 * inf cannot turn into NaN.
__device__ __forceinline__ float clamped_exp(float x) {
    return expf(fminf(fmaxf(x, -87.3f), 88.3f));
}

// out = gelu(inp); overwrites out.
extern "C" __global__ void gelu_forward(floatX* out, const floatX* inp, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = to_f32(inp[i]);
        const float z = SQRT_2_OVER_PI * (CUBIC * x * x * x + x);
        out[i] = to_x(x / (1.0f + clamped_exp(-2.0f * z)));
    }
}

// dinp += gelu'(inp) * dout.
extern "C" __global__ void gelu_backward(floatX* dinp, const floatX* inp, const floatX* dout,
                                         long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float x = to_f32(inp[i]);
        const float x2 = x * x;
        const float z = SQRT_2_OVER_PI * (CUBIC * x2 * x + x);
        const float dz = SQRT_2_OVER_PI * (3.0f * CUBIC * x2 + 1.0f);
        const float e = clamped_exp(-2.0f * z);
        const float s = 1.0f / (1.0f + e);
        const float grad = 2.0f * x * dz * (e * s * s) + s;
        dinp[i] = to_x(to_f32(dinp[i]) + grad * to_f32(dout[i]));
    }
}
