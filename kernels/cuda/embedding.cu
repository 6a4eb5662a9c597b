// Token plus position embeddings, forward and backward, with the math of
// kernels/src/embedding.rs.
//
// Dimension legend: B batch, T time, C channels, V vocabulary (rows of wte).
// A token outside 0..V reads nothing: its output row is NaN and it adds no
// gradient (the CPU kernel rejects it with a panic). The wte gradient is summed with atomics (the order of additions into a row
// shared by several positions varies from run to run); the wpe gradient is
// summed over the batch in order. Outputs, weights and output gradients are
// stored as floatX (storage.cuh); the weight gradients are fp32.

// out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]; overwrites out.
extern "C" __global__ void embedding_forward(floatX* out, const unsigned int* tokens,
                                             const floatX* wte, const floatX* wpe, int bt, int t,
                                             int c, int v) {
    const long long total = (long long)bt * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / c;
        const int ch = (int)(i % c);
        const int pos = (int)(row % t);
        const unsigned int tok = tokens[row];
        out[i] = to_x(tok < (unsigned int)v
                          ? to_f32(wte[(size_t)tok * c + ch]) + to_f32(wpe[(size_t)pos * c + ch])
                          : __int_as_float(0x7fc00000));
    }
}

// dwte[tokens[b, t], :] += dout[b, t, :].
extern "C" __global__ void embedding_backward_wte(float* dwte, const floatX* dout,
                                                  const unsigned int* tokens, int bt, int c,
                                                  int v) {
    const long long total = (long long)bt * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / c;
        const int ch = (int)(i % c);
        const unsigned int tok = tokens[row];
        if (tok < (unsigned int)v) {
            atomicAdd(&dwte[(size_t)tok * c + ch], to_f32(dout[i]));
        }
    }
}

// dwpe[t, :] += sum over b of dout[b, t, :], one thread per (t, channel).
extern "C" __global__ void embedding_backward_wpe(float* dwpe, const floatX* dout, int b, int t,
                                                  int c) {
    const long long total = (long long)t * c;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        float sum = 0.0f;
        for (int bi = 0; bi < b; ++bi) {
            sum += to_f32(dout[(size_t)bi * t * c + i]);
        }
        dwpe[i] += sum;
    }
}
