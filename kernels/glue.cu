// The training glue of the `cupy` backend (and of `cupy-emu`): ReLU, dropout (mask and apply),
// softmax cross-entropy and the SGD update, one kernel each where CuPy's array functions take
// several launches (a dropout mask was 11, a cross-entropy 20). Semantics: the contract in
// src/polycnn/backends/base.py and optim.py; every result is the same on every backend up to
// float rounding, and bit-identical from run to run (no atomics, sums in a fixed order).
//
// Elementwise kernels take a flat `count` and walk it with a grid-stride loop: launch any grid
// and block. cross_entropy runs in one block of GLUE_THREADS.

#define GLUE_THREADS 256

// y = max(x, 0); a NaN stays NaN, as numpy.maximum keeps it.
template <typename T>
__device__ void relu_fwd(const T* x, T* y, long long count) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        const T v = x[i];
        y[i] = (v > T(0) || v != v) ? v : T(0);
    }
}

// dx = dy * (x > 0), a multiply, so that a NaN or inf in dy behaves as in `dy * mask`.
template <typename T>
__device__ void relu_bwd(const T* dy, const T* x, T* dx, long long count) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride)
        dx[i] = dy[i] * (x[i] > T(0) ? T(1) : T(0));
}

// keep[i] = (splitmix64(key + (i + 1) * GAMMA) >> 40) >= threshold: the contract's dropout mask,
// in unsigned 64-bit arithmetic, which wraps as the hash needs.
__device__ void dropout_mask(bool* keep, long long count, unsigned long long key,
                             unsigned long long threshold) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        unsigned long long z = key + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        keep[i] = (z >> 40) >= threshold;
    }
}

// y = (x * keep) * scale: Dropout's forward and backward, the two roundings of the default.
template <typename T>
__device__ void dropout_apply(const T* x, const bool* keep, T* y, long long count, T scale) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        const T kept = x[i] * (keep[i] ? T(1) : T(0));
        y[i] = kept * scale;
    }
}

// Mean softmax cross-entropy of n rows of k logits with label smoothing: dlogits[r, j] =
// (softmax - target) / n, and loss[0] = -sum of target * log-softmax / n, in double. One block:
// thread t takes rows t, t + GLUE_THREADS, ... in order, then a fixed-shape tree in shared memory
// adds the threads' sums (dynamic shared memory GLUE_THREADS * sizeof(double)). Launch: grid (1).
template <typename T>
__device__ void cross_entropy(const T* logits, const long long* labels, T* dlogits, double* loss,
                              int n, int k, T smoothing) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    double* part = reinterpret_cast<double*>(smem_raw);
    const int t = threadIdx.x;
    const T off = smoothing / T(k), on = T(1) - smoothing, inv_n = T(1) / T(n);
    double sum = 0.0;
    for (int r = t; r < n; r += GLUE_THREADS) {
        const T* row = logits + (long long)r * k;
        T* grad = dlogits + (long long)r * k;
        T mx = row[0];
        for (int j = 1; j < k; ++j) mx = row[j] > mx ? row[j] : mx;
        T se = T(0);
        for (int j = 0; j < k; ++j) se += exp(row[j] - mx);
        const T lse = log(se);
        const long long label = labels[r];
        for (int j = 0; j < k; ++j) {
            const T logp = row[j] - mx - lse;
            const T target = off + (j == label ? on : T(0));
            sum -= (double)(target * logp);
            grad[j] = (exp(logp) - target) * inv_n;
        }
    }
    part[t] = sum;
    __syncthreads();
    for (int half = GLUE_THREADS / 2; half > 0; half /= 2) {
        if (t < half) part[t] += part[t + half];
        __syncthreads();
    }
    if (t == 0) loss[0] = part[0] / n;
}

// One SGD step on a parameter (PyTorch's form, as optim.SGD): g = grad + wd * p;
// v = momentum * v + g; p -= lr * (nesterov ? g + momentum * v : v). Without momentum v is not
// read (pass any array of the parameter's shape).
template <typename T>
__device__ void sgd_step(T* p, const T* grad, T* v, long long count, T lr, T momentum, T wd,
                         int nesterov) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        T g = grad[i];
        if (wd != T(0)) g = g + wd * p[i];
        if (momentum != T(0)) {
            T vi = v[i] * momentum;
            vi += g;
            v[i] = vi;
            g = nesterov ? g + momentum * vi : vi;
        }
        p[i] -= lr * g;
    }
}

// ---- entry points: one per dtype, T = float and double (the dropout masks: bool only) ----------
#define GLUE_ENTRIES(T)                                                                          \
    extern "C" __global__ void relu_fwd_##T(const T* x, T* y, long long count) {                 \
        relu_fwd<T>(x, y, count);                                                                \
    }                                                                                            \
    extern "C" __global__ void relu_bwd_##T(const T* dy, const T* x, T* dx, long long count) {   \
        relu_bwd<T>(dy, x, dx, count);                                                           \
    }                                                                                            \
    extern "C" __global__ void dropout_apply_##T(const T* x, const bool* keep, T* y,             \
                                                 long long count, T scale) {                     \
        dropout_apply<T>(x, keep, y, count, scale);                                              \
    }                                                                                            \
    extern "C" __global__ void cross_entropy_##T(const T* logits, const long long* labels,       \
                                                 T* dlogits, double* loss, int n, int k,         \
                                                 T smoothing) {                                  \
        cross_entropy<T>(logits, labels, dlogits, loss, n, k, smoothing);                        \
    }                                                                                            \
    extern "C" __global__ void sgd_step_##T(T* p, const T* grad, T* v, long long count, T lr,    \
                                            T momentum, T wd, int nesterov) {                    \
        sgd_step<T>(p, grad, v, count, lr, momentum, wd, nesterov);                              \
    }
GLUE_ENTRIES(float)
GLUE_ENTRIES(double)

extern "C" __global__ void dropout_mask_bool(bool* keep, long long count, unsigned long long key,
                                             unsigned long long threshold) {
    dropout_mask(keep, count, key, threshold);
}
// The same mask with the key read from device memory (keys[0]): a CUDA graph replays a launch with
// the arguments it was captured with, so a key that changes every step must live on the device.
extern "C" __global__ void dropout_mask_keyed_bool(bool* keep, long long count,
                                                   const unsigned long long* keys,
                                                   unsigned long long threshold) {
    dropout_mask(keep, count, keys[0], threshold);
}
