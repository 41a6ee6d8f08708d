// 2-D convolution kernels of the `cupy` backend (and of `cupy-emu`, which compiles this very file
// with g++). Semantics: the contract in src/polycnn/backends/base.py.
//
// Legend: N batch, C input channels, H×W input, K output channels, R×S kernel, P×Q output,
// sh/sw stride, ph/pw padding before (top/left), dh/dw dilation. Layout NCHW, weights (K, C, R, S).
// Any pixel outside the input reads as zero, so the padding after (bottom/right, asymmetric for
// 'same') is implied by P and Q and never passed.
//
// The three passes are one tiled GEMM whose operands are gathered on the fly (implicit GEMM):
//   forward          y[k, (n,p,q)]  = sum over (c,r,s) of w[k, (c,r,s)] * x(n, c, p*sh-ph+r*dh, q*sw-pw+s*dw)
//   backward-data    dx[c, (n,h,w)] = sum over (k,r,s) of w[k, c, r, s] * dy(n, k, p, q)
//                                     where h = p*sh-ph+r*dh and w = q*sw-pw+s*dw   (a gather, no scatter)
//   backward-weight  dw[k, (c,r,s)] = sum over (n,p,q) of dy[n, k, p, q] * x(n, c, p*sh-ph+r*dh, q*sw-pw+s*dw)
// The weight pass splits its long (n,p,q) reduction over gridDim.z blocks that write partial sums;
// conv2d_reduce_* adds them in split order. No float atomics anywhere: every result is
// bit-identical from run to run.
//
// Each GEMM kernel comes in two tile shapes: BM×BN = 64×64 (`conv2d_fwd_float`, ...) and 16×256
// for few rows (`conv2d_fwd_narrow_float`, ...: a layer with 3 or 16 channels would leave most of
// a 64-row tile idle). Launch: blockDim = (GEMM_THREADS, 1, 1), dynamic shared memory
// GEMM_SMEM_BYTES(BM, BN, sizeof(T)), grid = (ceil(cols / BN), ceil(rows / BM), splits).
// Sizes that index (rows, cols, reduction) and one sample's planes fit in int (the host checks);
// flat offsets are 64-bit.

struct ConvShape {
    int N, C, H, W, K, R, S, P, Q;
    int sh, sw, ph, pw, dh, dw;
    int chunk;  // backward-weight: reduction length per split, a multiple of TILE_K (else unused)
};

#define TILE_K 16
#define GEMM_THREADS 256
// NOTE: the A tile's rows are padded by 4 so that its column-wise stores spread over banks
#define GEMM_SMEM_BYTES(BM, BN, elem) (2 * TILE_K * 16 + TILE_K * ((BM) + 4 + (BN)) * (elem))

// What the B operand needs to know about one reduction index; computed once per tile, by
// TILE_K threads, into a table in shared memory (integer division is slow on a GPU).
struct RowInfo { int a, b, c, d; };

template <typename T> struct __align__(16) Vec4 { T v[4]; };

// C[m0.., n0..] = sum over kk in [k_begin, k_end) of a(m, kk) * b(kk, n), then out(m, n, value).
// Each thread owns a 4×4 register tile: rows 4*ty + i, columns 4*tx + j, read from shared memory
// as vectors. Software pipeline: the next tile's operands are fetched from global memory into
// registers while the current tile is multiplied out of shared memory. The table of B's
// reduction rows is double-buffered the same way, so it needs no barrier of its own.
// NOTE: every thread of the block reaches every __syncthreads: the loop bounds depend only on
// blockIdx and the shape.
template <typename T, int BM, int BN, class A, class B, class Out>
__device__ void gemm_tile(const A& a, const B& b, const Out& out, int rows, int cols,
                          int k_begin, int k_end) {
    constexpr int A_STRIDE = BM + 4;
    constexpr int A_LOADS = BM * TILE_K / GEMM_THREADS, B_LOADS = BN * TILE_K / GEMM_THREADS;
    static_assert((BM / 4) * (BN / 4) == GEMM_THREADS, "one 4x4 register tile per thread");
    static_assert(GEMM_THREADS % BN == 0 || BN % GEMM_THREADS == 0, "B loads");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    RowInfo* table = reinterpret_cast<RowInfo*>(smem_raw);                   // [2][TILE_K]
    T* As = reinterpret_cast<T*>(smem_raw + 2 * TILE_K * sizeof(RowInfo));  // [TILE_K][A_STRIDE]
    T* Bs = As + TILE_K * A_STRIDE;                                          // [TILE_K][BN]

    const int t = threadIdx.x;
    const int tx = t % (BN / 4), ty = t / (BN / 4);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    // This thread always loads A entries of reduction column a_kk (rows a_row + i*GEMM_THREADS/
    // TILE_K) and B entries of column b_nn (reduction rows b_kk + i*GEMM_THREADS/BN).
    const int a_kk = t % TILE_K, a_row = t / TILE_K;
    const int b_nn = t % BN, b_kk = t / BN;
    const typename B::Col bcol = b.column(n0 + b_nn, n0 + b_nn < cols);
    T a_next[A_LOADS], b_next[B_LOADS];
    auto fetch = [&](int k0, const RowInfo* rows_of_tile) {
        const int ka = k0 + a_kk;
        const typename A::Red ared = a.reduction(ka, ka < k_end);
        for (int i = 0; i < A_LOADS; ++i) {
            const int m = m0 + a_row + i * (GEMM_THREADS / TILE_K);
            a_next[i] = (m < rows && ka < k_end) ? a(m, ared) : T(0);
        }
        for (int i = 0; i < B_LOADS; ++i) {
            const int kk = b_kk + i * (GEMM_THREADS / BN);
            b_next[i] = (k0 + kk < k_end) ? b(rows_of_tile[kk], bcol) : T(0);
        }
    };

    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);

    if (t < TILE_K) table[t] = b.row(k_begin + t);
    __syncthreads();
    fetch(k_begin, table);
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (int i = 0; i < A_LOADS; ++i)
            As[a_kk * A_STRIDE + a_row + i * (GEMM_THREADS / TILE_K)] = a_next[i];
        for (int i = 0; i < B_LOADS; ++i) Bs[(b_kk + i * (GEMM_THREADS / BN)) * BN + b_nn] = b_next[i];
        const bool more = k0 + TILE_K < k_end;
        if (t < TILE_K && more) table[(buf ^ 1) * TILE_K + t] = b.row(k0 + TILE_K + t);
        __syncthreads();
        if (more) fetch(k0 + TILE_K, table + (buf ^ 1) * TILE_K);
        for (int kk = 0; kk < TILE_K; ++kk) {
            const Vec4<T> av = *reinterpret_cast<const Vec4<T>*>(&As[kk * A_STRIDE + 4 * ty]);
            const Vec4<T> bv = *reinterpret_cast<const Vec4<T>*>(&Bs[kk * BN + 4 * tx]);
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] += av.v[i] * bv.v[j];
        }
        __syncthreads();
        buf ^= 1;
    }
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + 4 * ty + i;
        if (m >= rows) continue;
        for (int j = 0; j < 4; ++j) {
            const int n = n0 + 4 * tx + j;
            if (n < cols) out(m, n, acc[i][j]);
        }
    }
}

// ---- forward: rows k, columns (n, p, q), reduction (c, r, s) ----------------------------------
template <typename T>
struct FwdA {  // w viewed as a K × CRS matrix
    const T* w;
    int crs;
    struct Red { int kk; };
    __device__ Red reduction(int kk, bool) const { return Red{kk}; }
    __device__ T operator()(int m, Red r) const { return w[(long long)m * crs + r.kk]; }
};

template <typename T>
struct FwdB {  // x gathered as im2col columns
    const T* x;
    ConvShape s;
    struct Col { long long base; int h0, w0; bool valid; };
    __device__ Col column(int n, bool valid) const {
        Col c{0, 0, 0, valid};
        if (!valid) return c;
        const int pq = s.P * s.Q;
        const int nb = n / pq, rem = n % pq;
        c.base = (long long)nb * s.C * s.H * s.W;
        c.h0 = (rem / s.Q) * s.sh - s.ph;
        c.w0 = (rem % s.Q) * s.sw - s.pw;
        return c;
    }
    // row (c, r, s): {offset of plane c, r*dh, s*dw}
    __device__ RowInfo row(int kk) const {
        const int rs = s.R * s.S;
        const int ch = kk / rs, r = (kk % rs) / s.S, q = kk % s.S;
        return RowInfo{ch * s.H * s.W, r * s.dh, q * s.dw, 0};
    }
    __device__ T operator()(const RowInfo& r, const Col& c) const {
        if (!c.valid) return T(0);
        const int h = c.h0 + r.b, w = c.w0 + r.c;
        if (h < 0 || h >= s.H || w < 0 || w >= s.W) return T(0);
        return x[c.base + r.a + (long long)h * s.W + w];
    }
};

template <typename T>
struct FwdOut {
    T* y;
    const T* b;  // may be null
    ConvShape s;
    __device__ void operator()(int k, int n, T v) const {
        const int pq = s.P * s.Q;
        const int nb = n / pq, rem = n % pq;
        y[((long long)nb * s.K + k) * pq + rem] = b ? v + b[k] : v;
    }
};

template <typename T, int BM, int BN>
__device__ void conv2d_fwd(const T* x, const T* w, const T* b, T* y, ConvShape s) {
    const int crs = s.C * s.R * s.S;
    gemm_tile<T, BM, BN>(FwdA<T>{w, crs}, FwdB<T>{x, s}, FwdOut<T>{y, b, s}, s.K, s.N * s.P * s.Q, 0, crs);
}

// ---- backward-data: rows c, columns (n, h, w), reduction (k, r, s) ----------------------------
template <typename T>
struct BwdDataA {  // w[k, c, r, s] read as a C × KRS matrix
    const T* w;
    ConvShape s;
    struct Red { long long base; bool valid; };  // offset of w[k, 0, r, s]
    __device__ Red reduction(int kk, bool valid) const {
        const int rs = s.R * s.S;
        if (!valid) return Red{0, false};
        return Red{(long long)(kk / rs) * s.C * rs + kk % rs, true};
    }
    __device__ T operator()(int c, Red r) const {
        return r.valid ? w[r.base + (long long)c * s.R * s.S] : T(0);
    }
};

template <typename T>
struct BwdDataB {  // dy gathered for the input pixel of this column
    const T* dy;
    ConvShape s;
    struct Col { long long base; int hp, wp; bool valid; };  // hp = h + ph, wp = w + pw
    __device__ Col column(int n, bool valid) const {
        Col c{0, 0, 0, valid};
        if (!valid) return c;
        const int hw = s.H * s.W;
        const int nb = n / hw, rem = n % hw;
        c.base = (long long)nb * s.K * s.P * s.Q;
        c.hp = rem / s.W + s.ph;
        c.wp = rem % s.W + s.pw;
        return c;
    }
    // row (k, r, s): {offset of plane k, r*dh, s*dw}
    __device__ RowInfo row(int kk) const {
        const int rs = s.R * s.S;
        const int k = kk / rs, r = (kk % rs) / s.S, q = kk % s.S;
        return RowInfo{k * s.P * s.Q, r * s.dh, q * s.dw, 0};
    }
    __device__ T operator()(const RowInfo& r, const Col& c) const {
        if (!c.valid) return T(0);
        int p = c.hp - r.b, q = c.wp - r.c;
        if (p < 0 || q < 0) return T(0);
        if (s.sh != 1) {
            if (p % s.sh != 0) return T(0);
            p /= s.sh;
        }
        if (s.sw != 1) {
            if (q % s.sw != 0) return T(0);
            q /= s.sw;
        }
        if (p >= s.P || q >= s.Q) return T(0);
        return dy[c.base + r.a + (long long)p * s.Q + q];
    }
};

template <typename T>
struct BwdDataOut {
    T* dx;
    ConvShape s;
    __device__ void operator()(int c, int n, T v) const {
        const int hw = s.H * s.W;
        const int nb = n / hw, rem = n % hw;
        dx[((long long)nb * s.C + c) * hw + rem] = v;
    }
};

template <typename T, int BM, int BN>
__device__ void conv2d_bwd_data(const T* dy, const T* w, T* dx, ConvShape s) {
    gemm_tile<T, BM, BN>(BwdDataA<T>{w, s}, BwdDataB<T>{dy, s}, BwdDataOut<T>{dx, s},
                 s.C, s.N * s.H * s.W, 0, s.K * s.R * s.S);
}

// ---- backward-weight: rows k, columns (c, r, s), reduction (n, p, q), split over blockIdx.z ----
template <typename T>
struct BwdWeightA {  // dy[n, k, p, q] read as a K × NPQ matrix
    const T* dy;
    ConvShape s;
    struct Red { long long base; bool valid; };  // offset of dy[n, 0, p, q]
    __device__ Red reduction(int kk, bool valid) const {
        const int pq = s.P * s.Q;
        if (!valid) return Red{0, false};
        return Red{(long long)(kk / pq) * s.K * pq + kk % pq, true};
    }
    __device__ T operator()(int k, Red r) const {
        return r.valid ? dy[r.base + (long long)k * s.P * s.Q] : T(0);
    }
};

template <typename T>
struct BwdWeightB {  // x gathered for kernel tap (c, r, s) of this column
    const T* x;
    ConvShape s;
    struct Col { long long base; int roff, soff; bool valid; };
    __device__ Col column(int n, bool valid) const {
        Col c{0, 0, 0, valid};
        if (!valid) return c;
        const int rs = s.R * s.S;
        c.base = (long long)(n / rs) * s.H * s.W;
        c.roff = ((n % rs) / s.S) * s.dh - s.ph;
        c.soff = (n % s.S) * s.dw - s.pw;
        return c;
    }
    // row (n, p, q): {n, p*sh, q*sw}
    __device__ RowInfo row(int kk) const {
        const int pq = s.P * s.Q;
        const int rem = kk % pq;
        return RowInfo{kk / pq, (rem / s.Q) * s.sh, (rem % s.Q) * s.sw, 0};
    }
    __device__ T operator()(const RowInfo& r, const Col& c) const {
        if (!c.valid) return T(0);
        const int h = r.b + c.roff, w = r.c + c.soff;
        if (h < 0 || h >= s.H || w < 0 || w >= s.W) return T(0);
        return x[(long long)r.a * s.C * s.H * s.W + c.base + (long long)h * s.W + w];
    }
};

template <typename T>
struct PartialOut {
    T* partial;  // [splits, K, C*R*S]
    long long split_offset;
    int crs;
    __device__ void operator()(int k, int n, T v) const {
        partial[split_offset + (long long)k * crs + n] = v;
    }
};

template <typename T, int BM, int BN>
__device__ void conv2d_bwd_weight(const T* dy, const T* x, T* partial, ConvShape s) {
    const int crs = s.C * s.R * s.S;
    const int npq = s.N * s.P * s.Q;
    const int k_begin = blockIdx.z * s.chunk;
    const int k_end = k_begin + s.chunk < npq ? k_begin + s.chunk : npq;
    gemm_tile<T, BM, BN>(BwdWeightA<T>{dy, s}, BwdWeightB<T>{x, s},
                 PartialOut<T>{partial, (long long)blockIdx.z * s.K * crs, crs},
                 s.K, crs, k_begin, k_end);
}

// out[i] = sum over split z (in order) of partial[z * count + i]; one thread per i.
template <typename T>
__device__ void conv2d_reduce(const T* partial, T* out, long long count, int splits) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) {
        T sum = T(0);
        for (int z = 0; z < splits; ++z) sum += partial[(long long)z * count + i];
        out[i] = sum;
    }
}

// db[k] = sum over (n, p, q) of dy[n, k, p, q]: one block per k, a fixed-shape tree in shared
// memory. Launch: grid (K), block (BIAS_THREADS), dynamic shared memory BIAS_THREADS * sizeof(T).
#define BIAS_THREADS 256
template <typename T>
__device__ void conv2d_bias_grad(const T* dy, T* db, ConvShape s) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* part = reinterpret_cast<T*>(smem_raw);
    const int k = blockIdx.x, t = threadIdx.x;
    const int pq = s.P * s.Q;
    T sum = T(0);
    for (int n = 0; n < s.N; ++n) {
        const T* plane = dy + ((long long)n * s.K + k) * pq;
        for (int i = t; i < pq; i += BIAS_THREADS) sum += plane[i];
    }
    part[t] = sum;
    __syncthreads();
    for (int half = BIAS_THREADS / 2; half > 0; half /= 2) {
        if (t < half) part[t] += part[t + half];
        __syncthreads();
    }
    if (t == 0) db[k] = part[0];
}

// ---- entry points, one per dtype (spelled out so that tools can find them by name) ---------------
extern "C" __global__ void conv2d_fwd_float(
        const float* x, const float* w, const float* b, float* y, ConvShape s) {
    conv2d_fwd<float, 64, 64>(x, w, b, y, s);
}
extern "C" __global__ void conv2d_fwd_double(
        const double* x, const double* w, const double* b, double* y, ConvShape s) {
    conv2d_fwd<double, 64, 64>(x, w, b, y, s);
}
extern "C" __global__ void conv2d_fwd_narrow_float(
        const float* x, const float* w, const float* b, float* y, ConvShape s) {
    conv2d_fwd<float, 16, 256>(x, w, b, y, s);
}
extern "C" __global__ void conv2d_fwd_narrow_double(
        const double* x, const double* w, const double* b, double* y, ConvShape s) {
    conv2d_fwd<double, 16, 256>(x, w, b, y, s);
}
extern "C" __global__ void conv2d_bwd_data_float(
        const float* dy, const float* w, float* dx, ConvShape s) {
    conv2d_bwd_data<float, 64, 64>(dy, w, dx, s);
}
extern "C" __global__ void conv2d_bwd_data_double(
        const double* dy, const double* w, double* dx, ConvShape s) {
    conv2d_bwd_data<double, 64, 64>(dy, w, dx, s);
}
extern "C" __global__ void conv2d_bwd_data_narrow_float(
        const float* dy, const float* w, float* dx, ConvShape s) {
    conv2d_bwd_data<float, 16, 256>(dy, w, dx, s);
}
extern "C" __global__ void conv2d_bwd_data_narrow_double(
        const double* dy, const double* w, double* dx, ConvShape s) {
    conv2d_bwd_data<double, 16, 256>(dy, w, dx, s);
}
extern "C" __global__ void conv2d_bwd_weight_float(
        const float* dy, const float* x, float* partial, ConvShape s) {
    conv2d_bwd_weight<float, 64, 64>(dy, x, partial, s);
}
extern "C" __global__ void conv2d_bwd_weight_double(
        const double* dy, const double* x, double* partial, ConvShape s) {
    conv2d_bwd_weight<double, 64, 64>(dy, x, partial, s);
}
extern "C" __global__ void conv2d_bwd_weight_narrow_float(
        const float* dy, const float* x, float* partial, ConvShape s) {
    conv2d_bwd_weight<float, 16, 256>(dy, x, partial, s);
}
extern "C" __global__ void conv2d_bwd_weight_narrow_double(
        const double* dy, const double* x, double* partial, ConvShape s) {
    conv2d_bwd_weight<double, 16, 256>(dy, x, partial, s);
}

extern "C" __global__ void conv2d_reduce_float(const float* partial, float* out, long long count,
                                               int splits) { conv2d_reduce<float>(partial, out, count, splits); }
extern "C" __global__ void conv2d_reduce_double(const double* partial, double* out, long long count,
                                                int splits) { conv2d_reduce<double>(partial, out, count, splits); }

extern "C" __global__ void conv2d_bias_grad_float(const float* dy, float* db, ConvShape s) {
    conv2d_bias_grad<float>(dy, db, s);
}
extern "C" __global__ void conv2d_bias_grad_double(const double* dy, double* db, ConvShape s) {
    conv2d_bias_grad<double>(dy, db, s);
}
