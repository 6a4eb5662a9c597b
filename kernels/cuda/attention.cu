// Causal multi-head self-attention, FlashAttention-2 style, with the math and
// layouts of kernels/src/attention/mod.rs: queries are pre-scaled by 1/sqrt(hs),
// the forward keeps a running max and sum per query (online softmax) over
// shared-memory tiles of keys and values and saves the row log-sum-exp; the
// backward recomputes the probabilities from it.
//
// Dimension legend: B batch, T time, C channels = NH * HS, NH heads, HS head
// size (a compile-time constant: -DHS=<head size>).
//
// Layouts: qkv [B, T, 3C] (q | k | v; head h at channels h*HS..(h+1)*HS of
// each), out [B, T, C], lse and D [B, NH, T].
//
// Work split: the forward and the dQ kernel run one block per (query block,
// b*NH + h), one thread per query, with the outer loop over query blocks
// across the grid and an inner loop over key tiles in shared memory. The dK/dV
// kernel runs one thread per key and loops over query tiles. Each output
// element is written by one thread, with sums in a fixed order: no atomics,
// deterministic results.
//
// qkv, out, dout and dqkv are stored as floatX (storage.cuh); the tiles in
// shared memory, the scores, the softmax statistics (lse, D) and every sum are
// fp32.

#ifndef HS
#error "compile with -DHS=<head size>"
#endif

// Queries per block (one per thread) in the forward and dQ kernels.
#define BR 64
// Keys per shared-memory tile there.
#define BC 32
// Keys per block (one per thread) in the dK/dV kernel.
#define BK 64
// Queries per shared-memory tile there.
#define BQ 16
// Row stride of the per-thread key and value rows in shared memory: odd, so
// the threads of a warp reading their own rows hit distinct banks.
#define HSP (HS + 1)

#define NEG_INF __int_as_float(0xff800000)

// Offset in qkv of token `pos` of the sequence at `base`, part p (0 q, 1 k, 2 v).
#define QKV(base, pos, part) ((base) + (size_t)(pos) * 3 * c + (part) * c)

// Loads keys and values k0..k0+BC (zero past T) of head h into ks, vs [BC, HS].
__device__ __forceinline__ void load_kv_tile(float* ks, float* vs, const floatX* seq, int k0,
                                             int t, int c) {
    for (int idx = threadIdx.x; idx < BC * HS; idx += blockDim.x) {
        const int j = idx / HS;
        const int d = idx % HS;
        const int pos = k0 + j;
        ks[idx] = pos < t ? to_f32(QKV(seq, pos, 1)[d]) : 0.0f;
        vs[idx] = pos < t ? to_f32(QKV(seq, pos, 2)[d]) : 0.0f;
    }
}

// The set-up of the forward and dQ kernels, from their qkv, t, c and nh: ks and
// vs, the key and value tiles in shared memory; this block's bh = b*NH + h and
// first query q0 (later, heavier query blocks are scheduled first); this
// thread's query qi, active when below T; seq, head h of sequence b in qkv.
#define QUERY_BLOCK_SETUP                                                   \
    extern __shared__ float smem[];                                         \
    float* ks = smem;                                                       \
    float* vs = smem + BC * HS;                                             \
    const int bh = blockIdx.y;                                              \
    const int b = bh / nh;                                                  \
    const int h = bh % nh;                                                  \
    const int q0 = (gridDim.x - 1 - blockIdx.x) * BR;                       \
    const int qi = q0 + threadIdx.x;                                        \
    const bool active = qi < t;                                             \
    const floatX* seq = qkv + (size_t)b * t * 3 * c + h * HS

// out = softmax(q k^T / sqrt(HS) + causal mask) v per head; lse = row
// log-sum-exp of the scaled scores. Grid: (ceil(T/BR), B*NH); block: BR;
// dynamic shared memory: 2 * BC * HS floats.
extern "C" __global__ void attention_forward(floatX* out, float* lse, const floatX* qkv, int t,
                                             int c, int nh) {
    QUERY_BLOCK_SETUP;
    const float scale = 1.0f / sqrtf((float)HS);
    float q[HS];
    float o[HS];
#pragma unroll
    for (int d = 0; d < HS; ++d) {
        q[d] = active ? to_f32(QKV(seq, qi, 0)[d]) * scale : 0.0f;
        o[d] = 0.0f;
    }
    float m = NEG_INF;
    float l = 0.0f;
    const int kend = min(t, q0 + BR);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        load_kv_tile(ks, vs, seq, k0, t, c);
        __syncthreads();
        if (active) {
            const int jn = min(BC, qi - k0 + 1);
            for (int j = 0; j < jn; ++j) {
                const float* kj = ks + j * HS;
                const float* vj = vs + j * HS;
                float s = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    s += q[d] * kj[d];
                }
                if (s > m) {
                    const float alpha = expf(m - s);
                    l *= alpha;
#pragma unroll
                    for (int d = 0; d < HS; ++d) {
                        o[d] *= alpha;
                    }
                    m = s;
                }
                const float p = expf(s - m);
                l += p;
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    o[d] += p * vj[d];
                }
            }
        }
    }
    if (active) {
        const float inv = 1.0f / l;
        floatX* dst = out + ((size_t)b * t + qi) * c + h * HS;
#pragma unroll
        for (int d = 0; d < HS; ++d) {
            dst[d] = to_x(o[d] * inv);
        }
        lse[(size_t)bh * t + qi] = m + logf(l);
    }
}

// D[b, h, i] = sum_d dout[b, i, h*HS + d] * out[b, i, h*HS + d]. One thread
// per (b*NH + h, i).
extern "C" __global__ void attention_backward_rowdot(float* dd, const floatX* dout,
                                                     const floatX* out, int bnh, int t, int c,
                                                     int nh) {
    const long long total = (long long)bnh * t;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int bh = (int)(i / t);
        const int pos = (int)(i % t);
        const size_t at = ((size_t)(bh / nh) * t + pos) * c + (bh % nh) * HS;
        float sum = 0.0f;
        for (int d = 0; d < HS; ++d) {
            sum += to_f32(dout[at + d]) * to_f32(out[at + d]);
        }
        dd[i] = sum;
    }
}

// dq += (1/sqrt(HS)) * sum_j dS[i, j] k_j, with P = exp(S - lse) and
// dS = P * (dout v^T - D). Grid and block as the forward; dynamic shared
// memory: 2 * BC * HS floats.
extern "C" __global__ void attention_backward_dq(floatX* dqkv, const floatX* dout,
                                                 const floatX* qkv, const float* lse,
                                                 const float* dd, int t, int c, int nh) {
    QUERY_BLOCK_SETUP;
    const floatX* g = dout + ((size_t)b * t + (active ? qi : 0)) * c + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    float q[HS];
    float go[HS];
    float dq[HS];
#pragma unroll
    for (int d = 0; d < HS; ++d) {
        q[d] = active ? to_f32(QKV(seq, qi, 0)[d]) * scale : 0.0f;
        go[d] = active ? to_f32(g[d]) : 0.0f;
        dq[d] = 0.0f;
    }
    const float li = active ? lse[(size_t)bh * t + qi] : 0.0f;
    const float di = active ? dd[(size_t)bh * t + qi] : 0.0f;
    const int kend = min(t, q0 + BR);
    for (int k0 = 0; k0 < kend; k0 += BC) {
        __syncthreads();
        load_kv_tile(ks, vs, seq, k0, t, c);
        __syncthreads();
        if (active) {
            const int jn = min(BC, qi - k0 + 1);
            for (int j = 0; j < jn; ++j) {
                const float* kj = ks + j * HS;
                const float* vj = vs + j * HS;
                float s = 0.0f;
                float dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    s += q[d] * kj[d];
                    dp += go[d] * vj[d];
                }
                const float ds = expf(s - li) * (dp - di);
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    dq[d] += ds * kj[d];
                }
            }
        }
    }
    if (active) {
        floatX* dst = dqkv + ((size_t)b * t + qi) * 3 * c + h * HS;
#pragma unroll
        for (int d = 0; d < HS; ++d) {
            dst[d] = to_x(to_f32(dst[d]) + dq[d] * scale);
        }
    }
}

// dv_j += sum_i P[i, j] dout_i and dk_j += sum_i dS[i, j] (scaled q_i), over
// the queries i >= j. Grid: (ceil(T/BK), B*NH); block: BK; dynamic shared
// memory: 2 * BK * HSP + 2 * BQ * HS + 2 * BQ floats.
extern "C" __global__ void attention_backward_dkv(floatX* dqkv, const floatX* dout,
                                                  const floatX* qkv, const float* lse,
                                                  const float* dd, int t, int c, int nh) {
    extern __shared__ float smem[];
    float* ks = smem;                 // [BK, HSP], this block's keys
    float* vs = ks + BK * HSP;        // [BK, HSP], this block's values
    float* qs = vs + BK * HSP;        // [BQ, HS], scaled queries of the tile
    float* gs = qs + BQ * HS;         // [BQ, HS], output gradients of the tile
    float* ls = gs + BQ * HS;         // [BQ], log-sum-exp of the tile
    float* ds_tile = ls + BQ;         // [BQ], D of the tile
    const int bh = blockIdx.y;
    const int b = bh / nh;
    const int h = bh % nh;
    const int k0 = (gridDim.x - 1 - blockIdx.x) * BK;
    const int kj = k0 + threadIdx.x;
    const bool active = kj < t;
    const floatX* seq = qkv + (size_t)b * t * 3 * c + h * HS;
    const floatX* gseq = dout + (size_t)b * t * c + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    for (int idx = threadIdx.x; idx < BK * HS; idx += blockDim.x) {
        const int j = idx / HS;
        const int d = idx % HS;
        const int pos = k0 + j;
        ks[j * HSP + d] = pos < t ? to_f32(QKV(seq, pos, 1)[d]) : 0.0f;
        vs[j * HSP + d] = pos < t ? to_f32(QKV(seq, pos, 2)[d]) : 0.0f;
    }
    float dk[HS];
    float dv[HS];
#pragma unroll
    for (int d = 0; d < HS; ++d) {
        dk[d] = 0.0f;
        dv[d] = 0.0f;
    }
    const float* kr = ks + threadIdx.x * HSP;
    const float* vr = vs + threadIdx.x * HSP;
    for (int i0 = k0; i0 < t; i0 += BQ) {
        __syncthreads();
        for (int idx = threadIdx.x; idx < BQ * HS; idx += blockDim.x) {
            const int i = idx / HS;
            const int d = idx % HS;
            const int pos = i0 + i;
            qs[idx] = pos < t ? to_f32(QKV(seq, pos, 0)[d]) * scale : 0.0f;
            gs[idx] = pos < t ? to_f32(gseq[(size_t)pos * c + d]) : 0.0f;
        }
        for (int i = threadIdx.x; i < BQ; i += blockDim.x) {
            const int pos = i0 + i;
            ls[i] = pos < t ? lse[(size_t)bh * t + pos] : 0.0f;
            ds_tile[i] = pos < t ? dd[(size_t)bh * t + pos] : 0.0f;
        }
        __syncthreads();
        if (active) {
            // Causal: query i0 + i sees this key when i0 + i >= kj.
            const int ibegin = max(0, kj - i0);
            const int iend = min(BQ, t - i0);
            for (int i = ibegin; i < iend; ++i) {
                const float* qi = qs + i * HS;
                const float* gi = gs + i * HS;
                float s = 0.0f;
                float dp = 0.0f;
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    s += qi[d] * kr[d];
                    dp += gi[d] * vr[d];
                }
                const float p = expf(s - ls[i]);
                const float ds = p * (dp - ds_tile[i]);
#pragma unroll
                for (int d = 0; d < HS; ++d) {
                    dv[d] += p * gi[d];
                    dk[d] += ds * qi[d];
                }
            }
        }
    }
    if (active) {
        floatX* dst = dqkv + ((size_t)b * t + kj) * 3 * c + h * HS;
#pragma unroll
        for (int d = 0; d < HS; ++d) {
            dst[c + d] = to_x(to_f32(dst[c + d]) + dk[d]);
            dst[2 * c + d] = to_x(to_f32(dst[2 * c + d]) + dv[d]);
        }
    }
}
