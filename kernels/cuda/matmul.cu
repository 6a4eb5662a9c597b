// The one piece of the dense layer that is not a cuBLAS call: adding the bias
// to every row of the product. (The bias gradient is reduce.cu's column sum.)
// Values are stored as floatX (storage.cuh) and added in fp32.
//
// Dimension legend: N rows, OC output channels.

// out[r, j] += bias[j].
extern "C" __global__ void add_bias_rows(floatX* out, const floatX* bias, int n, int oc) {
    const long long total = (long long)n * oc;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        out[i] = to_x(to_f32(out[i]) + to_f32(bias[i % oc]));
    }
}
