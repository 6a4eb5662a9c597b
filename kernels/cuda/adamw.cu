// AdamW over a flat range of parameters, with the math of kernels/src/adamw.rs
// (torch.optim.AdamW's single-tensor path). The scalars are formed on the host
// in f64 and rounded to f32 once; the per-element math is f32. Parameters,
// gradients and moments are fp32 (the master copy); when `copy` is not null the
// updated parameters are also written to it in the storage type floatX
// (storage.cuh): the compute copy of mixed precision, refreshed in the same pass.
//
// Dimension legend: flat buffers of n elements.

extern "C" __global__ void adamw_update(float* params, floatX* copy, const float* grads,
                                        float* m, float* v, long long n, float one_minus_beta1,
                                        float beta2, float one_minus_beta2, float step_size,
                                        float bc2_sqrt, float eps, float decay) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const float g = grads[i];
        const float mt = m[i] + one_minus_beta1 * (g - m[i]);
        const float vt = beta2 * v[i] + one_minus_beta2 * (g * g);
        const float denom = sqrtf(vt) / bc2_sqrt + eps;
        const float p = params[i] * decay - step_size * (mt / denom);
        params[i] = p;
        m[i] = mt;
        v[i] = vt;
        if (copy != nullptr) {
            copy[i] = to_x(p);
        }
    }
}
