// Fused softmax + cross-entropy over the vocabulary, with the math of
// kernels/src/crossentropy.rs: only the per-row log-sum-exp is saved, and the
// backward overwrites the logits with their gradient.
//
// Dimension legend: N rows (B*T), V vocabulary size. One block per row.
// Logits and their gradients are stored as floatX (storage.cuh); the max, the
// sum of exponentials, the log-sum-exp and the losses are fp32.
// A target outside 0..V gives a NaN loss and leaves its row's gradient NaN.

#define NEG_INF __int_as_float(0xff800000)

// Max (is_max) or sum of v over the block; every thread gets the result.
__device__ float block_reduce(float v, bool is_max) {
    __shared__ float shared[32];
    __shared__ float result;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = is_max ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    if (lane == 0) {
        shared[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / 32;
        v = lane < warps ? shared[lane] : (is_max ? NEG_INF : 0.0f);
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float other = __shfl_xor_sync(0xffffffffu, v, offset);
            v = is_max ? fmaxf(v, other) : v + other;
        }
        if (lane == 0) {
            result = v;
        }
    }
    __syncthreads();
    return result;
}

// lse[i] = log sum_j exp(logits[i, j]) and losses[i] = lse[i] - logits[i, targets[i]].
extern "C" __global__ void crossentropy_forward(float* losses, float* lse, const floatX* logits,
                                                const unsigned int* targets, int n, int v) {
    const int row = blockIdx.x;
    const floatX* x = logits + (size_t)row * v;
    float max = NEG_INF;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        max = fmaxf(max, to_f32(x[j]));
    }
    max = block_reduce(max, true);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        sum += expf(to_f32(x[j]) - max);
    }
    sum = block_reduce(sum, false);
    if (threadIdx.x == 0) {
        const float l = max + logf(sum);
        const unsigned int target = targets[row];
        lse[row] = l;
        losses[row] =
            target < (unsigned int)v ? l - to_f32(x[target]) : __int_as_float(0x7fc00000);
    }
}

// logits = dloss * (softmax(logits) - onehot(targets)), in place.
extern "C" __global__ void crossentropy_backward_inplace(floatX* logits, const float* lse,
                                                         const unsigned int* targets,
                                                         float dloss, int n, int v) {
    const int row = blockIdx.x;
    floatX* x = logits + (size_t)row * v;
    const float l = lse[row];
    const unsigned int target = targets[row];
    const bool valid = target < (unsigned int)v;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        float g = dloss * expf(to_f32(x[j]) - l);
        if (!valid) {
            g = __int_as_float(0x7fc00000);
        } else if ((unsigned int)j == target) {
            g -= dloss;
        }
        x[j] = to_x(g);
    }
}
