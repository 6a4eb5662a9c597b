// Deterministic column reductions shared by the backward passes (layernorm
// weights, matmul bias, position embeddings): a first kernel writes one partial
// sum per chunk of rows, a second adds the partials in chunk order.
//
// Dimension legend: N rows, C columns, R chunks of rows.
//
// The summed rows are stored as floatX (storage.cuh); partials and results are fp32.

// partial[chunk, col] = sum of x[r, col] over the rows r of `chunk`
// (rows_per_chunk each). Grid: (ceil(C/32), R); block: (32, 8).
extern "C" __global__ void column_partial_sums(float* partial, const floatX* x, int n, int c,
                                               int rows_per_chunk) {
    __shared__ float shared[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    const int chunk = blockIdx.y;
    const int r0 = chunk * rows_per_chunk;
    const int r1 = min(n, r0 + rows_per_chunk);
    float sum = 0.0f;
    if (col < c) {
        for (int r = r0 + threadIdx.y; r < r1; r += 8) {
            sum += to_f32(x[(size_t)r * c + col]);
        }
    }
    shared[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < c) {
        float total = 0.0f;
        for (int k = 0; k < 8; ++k) {
            total += shared[k][threadIdx.x];
        }
        partial[(size_t)chunk * c + col] = total;
    }
}

// dst[col] += sum over r < chunks of partial[r * stride + col], in order.
extern "C" __global__ void accumulate_partials(float* dst, const float* partial, int chunks,
                                               int c, int stride) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) {
        return;
    }
    float sum = 0.0f;
    for (int r = 0; r < chunks; ++r) {
        sum += partial[(size_t)r * stride + col];
    }
    dst[col] += sum;
}
