// Sum of squares in f64 for the global gradient norm (kernels/src/norm.rs).
// Each block reduces a grid-strided share in a fixed tree order and the block
// sums are added in order by one block: deterministic for a given grid size.
//
// Dimension legend: flat buffers of n elements.

#define THREADS 256

__device__ double block_sum(double v) {
    __shared__ double shared[THREADS];
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            shared[threadIdx.x] += shared[threadIdx.x + stride];
        }
        __syncthreads();
    }
    return shared[0];
}

// partial[block] = sum of x[i]^2 over the block's grid-strided elements.
extern "C" __global__ void sum_of_squares_partial(double* partial, const float* x,
                                                  long long n) {
    double acc = 0.0;
    for (long long i = blockIdx.x * (long long)THREADS + threadIdx.x; i < n;
         i += (long long)gridDim.x * THREADS) {
        const double value = x[i];
        acc += value * value;
    }
    const double total = block_sum(acc);
    if (threadIdx.x == 0) {
        partial[blockIdx.x] = total;
    }
}

// out[0] = sum of partial[0..count], with one block of THREADS threads.
extern "C" __global__ void sum_partials(double* out, const double* partial, int count) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += THREADS) {
        acc += partial[i];
    }
    const double total = block_sum(acc);
    if (threadIdx.x == 0) {
        out[0] = total;
    }
}
