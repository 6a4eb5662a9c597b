// Layer normalization over the channel dimension, forward and backward, with
// the math of kernels/src/layernorm.rs (biased variance, rstd = 1/sqrt(var+eps)).
// Inputs, outputs and weights are stored as floatX (storage.cuh); the statistics
// (mean, rstd), every sum and the weight and bias gradients are fp32.
//
// Dimension legend: N rows (B*T), C channels.
//
// The forward and the input gradient run one warp per row. The weight and bias
// gradients are column sums: `layernorm_backward_params_partial` writes one
// partial sum per chunk of rows and column, and reduce.cu's
// `accumulate_partials` adds the chunks in order (no atomics: deterministic).

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

// out = (inp - mean) * rstd * weight + bias per row; saves mean[N], rstd[N].
extern "C" __global__ void layernorm_forward(floatX* out, float* mean, float* rstd,
                                             const floatX* inp, const floatX* weight,
                                             const floatX* bias, int n, int c, float eps) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) {
        return;
    }
    const floatX* x = inp + (size_t)row * c;
    float sum = 0.0f;
    for (int i = lane; i < c; i += 32) {
        sum += to_f32(x[i]);
    }
    const float mu = warp_sum(sum) / c;
    float sq = 0.0f;
    for (int i = lane; i < c; i += 32) {
        const float d = to_f32(x[i]) - mu;
        sq += d * d;
    }
    const float var = warp_sum(sq) / c;
    const float r = 1.0f / sqrtf(var + eps);
    floatX* o = out + (size_t)row * c;
    for (int i = lane; i < c; i += 32) {
        o[i] = to_x((to_f32(x[i]) - mu) * r * to_f32(weight[i]) + to_f32(bias[i]));
    }
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// dinp += (dnorm - mean(dnorm) - norm * mean(dnorm * norm)) * rstd, with
// dnorm = weight * dout, one warp per row.
extern "C" __global__ void layernorm_backward_input(floatX* dinp, const floatX* dout,
                                                    const floatX* inp, const floatX* weight,
                                                    const float* mean, const float* rstd,
                                                    int n, int c) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) {
        return;
    }
    const floatX* x = inp + (size_t)row * c;
    const floatX* g = dout + (size_t)row * c;
    floatX* d = dinp + (size_t)row * c;
    const float mu = mean[row];
    const float r = rstd[row];
    float dnorm_sum = 0.0f;
    float dnorm_norm_sum = 0.0f;
    for (int i = lane; i < c; i += 32) {
        const float dnorm = to_f32(weight[i]) * to_f32(g[i]);
        dnorm_sum += dnorm;
        dnorm_norm_sum += dnorm * ((to_f32(x[i]) - mu) * r);
    }
    const float dnorm_mean = warp_sum(dnorm_sum) / c;
    const float dnorm_norm_mean = warp_sum(dnorm_norm_sum) / c;
    for (int i = lane; i < c; i += 32) {
        const float norm = (to_f32(x[i]) - mu) * r;
        const float dnorm = to_f32(weight[i]) * to_f32(g[i]);
        d[i] = to_x(to_f32(d[i]) + (dnorm - dnorm_mean - norm * dnorm_norm_mean) * r);
    }
}

// partial[chunk, 0, col] = sum of norm * dout and partial[chunk, 1, col] = sum
// of dout over the rows of `chunk` (rows_per_chunk rows each). Grid: (ceil(C/32),
// chunks); block: (32, 8).
extern "C" __global__ void layernorm_backward_params_partial(float* partial, const floatX* dout,
                                                             const floatX* inp,
                                                             const float* mean,
                                                             const float* rstd, int n, int c,
                                                             int rows_per_chunk) {
    __shared__ float dw_shared[8][32];
    __shared__ float db_shared[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int chunk = blockIdx.y;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    float dw = 0.0f;
    float db = 0.0f;
    if (col < c) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            const size_t at = (size_t)r * c + col;
            const float g = to_f32(dout[at]);
            dw += (to_f32(inp[at]) - mean[r]) * rstd[r] * g;
            db += g;
        }
    }
    dw_shared[threadIdx.y][threadIdx.x] = dw;
    db_shared[threadIdx.y][threadIdx.x] = db;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        float sw = 0.0f;
        float sb = 0.0f;
        for (int k = 0; k < 8; ++k) {
            sw += dw_shared[k][threadIdx.x];
            sb += db_shared[k][threadIdx.x];
        }
        partial[(size_t)chunk * 2 * c + col] = sw;
        partial[(size_t)chunk * 2 * c + c + col] = sb;
    }
}
