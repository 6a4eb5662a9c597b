// The non-matmul parts of causal attention through cuBLAS products
// (kernels/src/cuda/attention_gemm.rs): the heads split out of and merged back
// into the [B, T, C] streams, and the causal softmax with its backward over the
// full [T, T] score matrices the products write. Same math as
// kernels/src/attention/mod.rs: scores scaled by 1/sqrt(hs), masked above the
// diagonal, the row log-sum-exp saved.
//
// Dimension legend: B batch, T time, C channels = NH * HS, NH heads, HS head
// size, BNH = B * NH. Head-major buffers are [BNH, T, HS]; score and
// probability matrices [BNH, T, T]. Values are stored as floatX
// (storage.cuh), the scores and their gradients (from the products) as fp32;
// every sum is fp32.

#define NEG_INF __int_as_float(0xff800000)

// dst[bh, t, d] = src[(b*T + t)*stride + offset + h*HS + d] for bh = b*NH + h:
// one head-major copy of a part of a [B, T, stride] stream (q, k or v of qkv
// at offsets 0, C, 2C with stride 3C; an attention output gradient with
// stride C).
extern "C" __global__ void heads_split(floatX* dst, const floatX* src, int b, int t, int nh,
                                       int hs, int stride, int offset) {
    const long long n = (long long)b * nh * t * hs;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % hs);
        const long long row = i / hs;  // bh * T + t
        const int ti = (int)(row % t);
        const long long bh = row / t;
        const int h = (int)(bh % nh);
        const long long bi = bh / nh;
        dst[i] = src[(bi * t + ti) * stride + offset + (long long)h * hs + d];
    }
}

// The inverse of heads_split: dst[(b*T + t)*stride + offset + h*HS + d] = src[bh,
// t, d], or += with `accumulate` (gradients into dqkv).
extern "C" __global__ void heads_merge(floatX* dst, const floatX* src, int b, int t, int nh,
                                       int hs, int stride, int offset, int accumulate) {
    const long long n = (long long)b * nh * t * hs;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % hs);
        const long long row = i / hs;
        const int ti = (int)(row % t);
        const long long bh = row / t;
        const int h = (int)(bh % nh);
        const long long bi = bh / nh;
        const long long at = (bi * t + ti) * stride + offset + (long long)h * hs + d;
        const float v = to_f32(src[i]);
        dst[at] = to_x(accumulate ? to_f32(dst[at]) + v : v);
    }
}

// Block-wide sum or max of one value per thread (blockDim.x a multiple of 32,
// at most 1024); every thread gets the result.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float partial[32];
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    __syncthreads();  // `partial` may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : (is_max ? NEG_INF : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    return v;
}

// p[row, j] = softmax_j(scale * s[row, j]) over j <= i (the row's query), 0
// above the diagonal; lse[row] = the log-sum-exp of the scaled scores. One block
// per row of the BNH * T rows; s is read, p written (both [BNH, T, T]).
extern "C" __global__ void causal_softmax(floatX* p, float* lse, const float* s, int t,
                                          float scale) {
    const long long row = blockIdx.x;
    const int i = (int)(row % t);
    const float* srow = s + row * t;
    floatX* prow = p + row * t;
    float mx = NEG_INF;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, scale * srow[j]);
    mx = block_reduce(mx, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) sum += expf(scale * srow[j] - mx);
    sum = block_reduce(sum, false);
    const float inv = 1.0f / sum;
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        prow[j] = to_x(j <= i ? expf(scale * srow[j] - mx) * inv : 0.0f);
    }
    if (threadIdx.x == 0) lse[row] = mx + logf(sum);
}

// The softmax backward in place of the probabilities: p[row, j] becomes
// dS = scale * P * (dP - sum_k P dP) for j <= i and 0 above the diagonal, from
// the probability gradients dp (fp32, [BNH, T, T]). One block per row.
extern "C" __global__ void causal_softmax_backward(floatX* p, const float* dp, int t,
                                                   float scale) {
    const long long row = blockIdx.x;
    const int i = (int)(row % t);
    floatX* prow = p + row * t;
    const float* drow = dp + row * t;
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += to_f32(prow[j]) * drow[j];
    dot = block_reduce(dot, false);
    for (int j = threadIdx.x; j < t; j += blockDim.x) {
        const float pj = to_f32(prow[j]);
        prow[j] = to_x(j <= i ? scale * pj * (drow[j] - dot) : 0.0f);
    }
}
