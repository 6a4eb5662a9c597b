// The one piece of the dense layer that is not a cuBLAS call: adding the bias
// to every row of the product. (The bias gradient is reduce.cu's column sum.)
//
// Dimension legend: N rows, OC output channels.

// out[r, j] += bias[j].
extern "C" __global__ void add_bias_rows(float* out, const float* bias, int n, int oc) {
    const long long total = (long long)n * oc;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] += bias[i % oc];
    }
}
