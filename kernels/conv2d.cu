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
//                                     where h = p*sh-ph+r*dh and w = q*sw-pw+s*dw
//                                     (a gather, no scatter; one GEMM per stride phase, over the
//                                     taps that reach it)
//   backward-weight  dw[k, (c,r,s)] = sum over (n,p,q) of dy[n, k, p, q] * x(n, c, p*sh-ph+r*dh, q*sw-pw+s*dw)
// The weight pass splits its long (n,p,q) reduction over gridDim.z blocks that write partial sums;
// conv2d_reduce_* adds them in split order (the bias gradient splits and adds the same way). With
// at most four input channels, backward-data is a direct loop instead (conv2d_bwd_data_fewc_*).
// No float atomics anywhere: every result is bit-identical from run to run.
//
// Each GEMM kernel comes in the tile shapes of GEMM_TILES (gemm_tile.cuh; the host reads it too),
// today four: BM×BN = 64×64 (`conv2d_fwd_float`, ...), 32×128
// (`conv2d_fwd_mid_float`, ...) and 16×256 (`conv2d_fwd_narrow_float`, ...) for fewer rows, and
// 16×64 (`conv2d_fwd_small_float`, ...) for small outputs such as a first layer's weight gradient
// (16 × 27): a layer with 3, 16 or 32 channels would leave much of a 64-row tile idle; the host
// picks the biggest shape that pads the output within 5% of the least.
// Launch: blockDim = (BM * BN / 16, 1, 1) (256 threads, 64 for the small tile), dynamic shared
// memory GEMM_SMEM_BYTES(BM, BN, sizeof(T)), grid = (ceil(cols / BN), ceil(rows / BM), z) with
// z the weight pass's splits or backward-data's stride phases (1 for the forward).
// Sizes that index (rows, cols, reduction) and one sample's planes fit in int (the host checks);
// flat offsets are 64-bit.
//
// TF32 (precision="tf32", float only, sm_80 and newer): the 64×64 tile of each GEMM kernel with
// its products on the tensor cores (`conv2d_fwd_tf32_float`, `conv2d_bwd_data_tf32_float`,
// `conv2d_bwd_weight_tf32_float`). The operands are rounded to TF32 (10-bit mantissa, round to
// nearest, ties away from zero) as they enter shared memory; each warp multiplies 16×16×8 WMMA
// fragments and accumulates in fp32; the accumulators go through shared memory (a 64×68 staging
// tile after A and B, GEMM_TC_SMEM_BYTES) so the epilogue writes each output as the fp32 tile does.
//
// conv2d_fwd_relu_* (each tile, and _tf32): the forward with the ReLU that follows it in the
// epilogue (a training step's conv + bias + ReLU, one kernel and one write of y).

#include "gemm_tile.cuh"

struct ConvShape {
    int N, C, H, W, K, R, S, P, Q;
    int sh, sw, ph, pw, dh, dw;
    int chunk;  // backward-weight: reduction length per split, a multiple of TILE_K (else unused)
};

// A GEMM column n of an implicit-GEMM B operand is (image, position in the image): the image's
// offset in its tensor and the position's index among the per_image positions.
struct ImageColumn { long long base; int rem; };
__device__ inline ImageColumn image_column(int n, int per_image, long long image_elems) {
    return ImageColumn{(long long)(n / per_image) * image_elems, n % per_image};
}

// ---- forward: rows k, columns (n, p, q), reduction (c, r, s) ----------------------------------
template <typename T>
struct FwdA {  // w viewed as a K × CRS matrix
    const T* w;
    int crs;
    struct Red { int kk; };
    __device__ Red reduction(int kk, const RowInfo&, bool) const { return Red{kk}; }
    __device__ T operator()(int m, Red r) const { return w[(long long)m * crs + r.kk]; }
};

template <typename T>
struct FwdB {  // x gathered as im2col columns
    const T* x;
    ConvShape s;
    struct Col { long long base; int h0, w0; bool valid; };
    __device__ Col column(int n, bool valid) const {
        if (!valid) return Col{0, 0, 0, false};
        const ImageColumn at = image_column(n, s.P * s.Q, (long long)s.C * s.H * s.W);
        return Col{at.base, (at.rem / s.Q) * s.sh - s.ph, (at.rem % s.Q) * s.sw - s.pw, true};
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

// RELU: the ReLU layer that follows, fused (conv2d_fwd_relu_*): glue.cu's relu_fwd of the biased
// sum, so the bits are those of the two kernels (a NaN passes, -0 becomes +0).
template <typename T, bool RELU = false>
struct FwdOut {
    T* y;
    const T* b;  // may be null
    ConvShape s;
    __device__ void operator()(int k, int n, T v) const {
        const int pq = s.P * s.Q;
        const int nb = n / pq, rem = n % pq;
        const T o = b ? v + b[k] : v;
        y[((long long)nb * s.K + k) * pq + rem] = (!RELU || o > T(0) || o != o) ? o : T(0);
    }
};

template <typename T, int BM, int BN, bool TC = false, bool RELU = false>
__device__ void conv2d_fwd(const T* x, const T* w, const T* b, T* y, ConvShape s) {
    const int crs = s.C * s.R * s.S;
    gemm_tile<T, BM, BN, false, TC>(FwdA<T>{w, crs}, FwdB<T>{x, s}, FwdOut<T, RELU>{y, b, s}, s.K,
                                    s.N * s.P * s.Q, 0, crs);
}

// ---- backward-data: rows c, columns (n, i, j), reduction (k, u, v), one stride phase a block ----
// Input pixel h receives from tap r only when h + ph - r*dh is a multiple of sh. Split by phase
// (ah, aw) = (h % sh, w % sw), blockIdx.z = ah * sw + aw: the pixels h = ah + sh*i, w = aw + sw*j
// of one phase all take the same taps r = r0 + rstep*u (u < nr), s = s0 + sstep*v (v < ns), each
// from the dy row p = i + (ah + ph - r*dh) / sh and column q = j + (aw + pw - s*dw) / sw. So a
// stride-2 layer reduces over a quarter of K*R*S, with no divisibility test per element (a
// single GEMM over all of K*R*S would multiply three zeros in four).
struct Phase {
    int ah, aw;            // the phase
    int hi, wj;            // its pixels: i < hi, j < wj
    int r0, rstep, nr;     // its taps along h
    int s0, sstep, ns;     // and along w
    __device__ int taps() const { return nr * ns; }
};

// The taps r in [0, R) with (a + pad - r*dil) divisible by stride: r0, r0 + step, ... (count n).
// They repeat every stride / gcd(stride, dil), so the first lies below that period or nowhere.
__device__ inline void phase_taps(int a, int pad, int stride, int dil, int R, int& r0, int& step,
                                  int& n) {
    int g = stride, d = dil;
    while (d != 0) {
        const int m = g % d;
        g = d;
        d = m;
    }
    step = stride / g;
    r0 = 0;
    n = 0;
    for (int r = 0; r < step && r < R; ++r) {
        if ((a + pad - r * dil) % stride == 0) {
            r0 = r;
            n = (R - r + step - 1) / step;
            break;
        }
    }
}

__device__ inline Phase make_phase(const ConvShape& s, int z) {
    Phase f;
    f.ah = z / s.sw;
    f.aw = z % s.sw;
    f.hi = f.ah < s.H ? (s.H - f.ah + s.sh - 1) / s.sh : 0;
    f.wj = f.aw < s.W ? (s.W - f.aw + s.sw - 1) / s.sw : 0;
    phase_taps(f.ah, s.ph, s.sh, s.dh, s.R, f.r0, f.rstep, f.nr);
    phase_taps(f.aw, s.pw, s.sw, s.dw, s.S, f.s0, f.sstep, f.ns);
    return f;
}

template <typename T>
struct BwdDataA {  // w[k, c, r, s] read as a C × (k, u, v) matrix
    const T* w;
    ConvShape s;
    Phase f;
    struct Red { int base; bool valid; };  // offset of w[k, 0, r, s], from B's row table
    __device__ Red reduction(int, const RowInfo& row, bool valid) const {
        return Red{valid ? row.d : 0, valid};
    }
    __device__ T operator()(int c, Red r) const {
        return r.valid ? w[r.base + (long long)c * s.R * s.S] : T(0);
    }
};

template <typename T>
struct BwdDataB {  // dy gathered for the phase pixel (i, j) of this column
    const T* dy;
    ConvShape s;
    Phase f;
    struct Col { long long base; int i, j; bool valid; };
    __device__ Col column(int n, bool valid) const {
        if (!valid) return Col{0, 0, 0, false};
        const ImageColumn at = image_column(n, f.hi * f.wj, (long long)s.K * s.P * s.Q);
        return Col{at.base, at.rem / f.wj, at.rem % f.wj, true};
    }
    // row (k, u, v): {offset of plane k, p - i, q - j, offset of w[k, 0, r, s] (for A)}
    __device__ RowInfo row(int kk) const {
        const int taps = f.taps();
        // past the reduction (the last tile's tail, or a phase no tap reaches): never read, and
        // k * P * Q could overflow there
        if (kk >= s.K * taps) return RowInfo{0, 0, 0, 0};
        const int k = kk / taps, t = kk % taps;
        const int r = f.r0 + (t / f.ns) * f.rstep, q = f.s0 + (t % f.ns) * f.sstep;
        return RowInfo{k * s.P * s.Q, (f.ah + s.ph - r * s.dh) / s.sh,
                       (f.aw + s.pw - q * s.dw) / s.sw, (k * s.C * s.R + r) * s.S + q};
    }
    __device__ T operator()(const RowInfo& r, const Col& c) const {
        if (!c.valid) return T(0);
        const int p = c.i + r.b, q = c.j + r.c;
        if (p < 0 || p >= s.P || q < 0 || q >= s.Q) return T(0);
        return dy[c.base + r.a + (long long)p * s.Q + q];
    }
};

template <typename T>
struct BwdDataOut {
    T* dx;
    ConvShape s;
    Phase f;
    __device__ void operator()(int c, int n, T v) const {
        const int ij = f.hi * f.wj;
        const int nb = n / ij, rem = n % ij;
        const int h = f.ah + s.sh * (rem / f.wj), w = f.aw + s.sw * (rem % f.wj);
        dx[((long long)nb * s.C + c) * s.H * s.W + (long long)h * s.W + w] = v;
    }
};

// Launch: grid (ceil(N * ceil(H/sh) * ceil(W/sw) / BN), ceil(C / BM), sh * sw); phase 0 has the
// most pixels, and a block past the end of its phase's columns returns at once (the whole block:
// no barrier is left half-reached).
template <typename T, int BM, int BN, bool TC = false>
__device__ void conv2d_bwd_data(const T* dy, const T* w, T* dx, ConvShape s) {
    const Phase f = make_phase(s, blockIdx.z);
    const int cols = s.N * f.hi * f.wj;
    if ((long long)blockIdx.x * BN >= cols) return;
    gemm_tile<T, BM, BN, false, TC>(BwdDataA<T>{w, s, f}, BwdDataB<T>{dy, s, f}, BwdDataOut<T>{dx, s, f},
                         s.C, cols, 0, s.K * f.taps());
}

// ---- backward-data for few input channels: one thread an input pixel, all its channels -------
// With C <= FEWC_MAX (an image's three colours) the GEMM's rows would be mostly padding: a tile
// has at least 16. Here thread i of a grid-stride loop takes input pixel (n, h, w) and sums, over
// the taps (r, s) that reach it and every k, w[k, c, r, s] * dy[n, k, p, q] into C registers.
// Neighbouring threads read neighbouring q of dy; every thread of a warp reads the same weight.
// Launch: any grid and block (the host uses its grid-stride launch of 256 threads).
#define FEWC_MAX 4
template <typename T>
__device__ void conv2d_bwd_data_fewc(const T* dy, const T* w, T* dx, ConvShape s) {
    const int hw = s.H * s.W, pq = s.P * s.Q, rs = s.R * s.S;
    const long long npix = (long long)s.N * hw;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < npix; i += step) {
        const int n = (int)(i / hw), rem = (int)(i % hw);
        const int h = rem / s.W, x = rem % s.W;
        T acc[FEWC_MAX];
        for (int c = 0; c < FEWC_MAX; ++c) acc[c] = T(0);
        for (int r = 0; r < s.R; ++r) {
            const int hp = h + s.ph - r * s.dh;  // p * sh
            if (hp < 0) break;                   // and for every larger r
            if (hp % s.sh != 0 || hp / s.sh >= s.P) continue;
            for (int q_ = 0; q_ < s.S; ++q_) {
                const int wq = x + s.pw - q_ * s.dw;  // q * sw
                if (wq < 0) break;
                if (wq % s.sw != 0 || wq / s.sw >= s.Q) continue;
                const T* d = dy + (long long)n * s.K * pq + (hp / s.sh) * s.Q + wq / s.sw;
                const T* wk = w + r * s.S + q_;
                for (int k = 0; k < s.K; ++k) {
                    const T v = d[(long long)k * pq];
                    for (int c = 0; c < FEWC_MAX; ++c)
                        if (c < s.C) acc[c] += wk[(k * s.C + c) * rs] * v;
                }
            }
        }
        T* out = dx + (long long)n * s.C * hw + rem;
        for (int c = 0; c < FEWC_MAX; ++c)
            if (c < s.C) out[(long long)c * hw] = acc[c];
    }
}

// ---- backward-weight: rows k, columns (c, r, s), reduction (n, p, q), split over blockIdx.z ----
template <typename T>
struct BwdWeightA {  // dy[n, k, p, q] read as a K × NPQ matrix
    const T* dy;
    ConvShape s;
    struct Red { long long base; bool valid; };  // offset of dy[n, 0, p, q]
    __device__ Red reduction(int kk, const RowInfo&, bool valid) const {
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
    // {offset of plane c, r*dh - ph, s*dw - pw}; a column past the end gets a row offset that
    // puts every h below 0 (three ints: the weight pass keeps four columns a thread)
    struct Col { int base, roff, soff; };
    __device__ Col column(int n, bool valid) const {
        if (!valid) return Col{0, -(1 << 30), 0};
        const int rs = s.R * s.S;
        return Col{(n / rs) * s.H * s.W, ((n % rs) / s.S) * s.dh - s.ph, (n % s.S) * s.dw - s.pw};
    }
    // row (n, p, q): {n, p*sh, q*sw}
    __device__ RowInfo row(int kk) const {
        const int pq = s.P * s.Q;
        const int rem = kk % pq;
        return RowInfo{kk / pq, (rem / s.Q) * s.sh, (rem % s.Q) * s.sw, 0};
    }
    __device__ T operator()(const RowInfo& r, const Col& c) const {
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

template <typename T, int BM, int BN, bool TC = false>
__device__ void conv2d_bwd_weight(const T* dy, const T* x, T* partial, ConvShape s) {
    const int crs = s.C * s.R * s.S;
    const int npq = s.N * s.P * s.Q;
    const int k_begin = blockIdx.z * s.chunk;
    const int k_end = k_begin + s.chunk < npq ? k_begin + s.chunk : npq;
    // along K where a thread then keeps at most four columns (not the 16 x 256 tile's sixteen)
    constexpr bool along_k = BN * TILE_K / ((BM / 4) * (BN / 4)) <= 4;
    gemm_tile<T, BM, BN, along_k, TC>(BwdWeightA<T>{dy, s}, BwdWeightB<T>{x, s},
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

// partial[z, k] = sum of dy[n, k, p, q] over the flat indices i = n*P*Q + p*Q + q of split z,
// [z * s.chunk, (z + 1) * s.chunk): one block per (k, z), each thread a strided sum along the
// planes that the range meets, then a fixed-shape tree in shared memory. conv2d_reduce adds the
// splits in order (with one split, partial is db itself). Launch: grid (K, splits), block
// (BIAS_THREADS), dynamic shared memory BIAS_THREADS * sizeof(T).
// NOTE: a block per k alone left all but K multiprocessors idle: each block then read a whole
// N*P*Q column of dy, one load in flight per thread.
#define BIAS_THREADS 256
template <typename T>
__device__ void conv2d_bias_grad(const T* dy, T* partial, ConvShape s) {
    extern __shared__ __align__(32) unsigned char smem_raw[];  // NOTE: as gemm_tile's (one array)
    T* part = reinterpret_cast<T*>(smem_raw);
    const int k = blockIdx.x, t = threadIdx.x;
    const int pq = s.P * s.Q;
    const int npq = s.N * pq;
    const int begin = blockIdx.y * s.chunk;
    const int end = begin + s.chunk < npq ? begin + s.chunk : npq;
    T sum = T(0);
    for (int i = begin; i < end;) {  // one plane dy[n, k] at a time: j in [j0, j1)
        const int n = i / pq, j0 = i - n * pq;
        const int j1 = end - i < pq - j0 ? j0 + (end - i) : pq;
        const T* plane = dy + ((long long)n * s.K + k) * pq;
        for (int j = j0 + t; j < j1; j += BIAS_THREADS) sum += plane[j];
        i += j1 - j0;
    }
    part[t] = sum;
    __syncthreads();
    for (int half = BIAS_THREADS / 2; half > 0; half /= 2) {
        if (t < half) part[t] += part[t + half];
        __syncthreads();
    }
    if (t == 0) partial[(long long)blockIdx.y * s.K + k] = part[0];
}

// ---- entry points: one per dtype (and per tile), made from the tile table ---------------------
// One tile's GEMM entry points for element type T (NAME: tile suffix and C type, e.g. _mid_float):
// forward, forward + ReLU, backward-data, backward-weight. TC: on the tensor cores; BODY wraps each
// body (TF32_BODY, or GEMM_BODY: as is); *_BOUNDS: the backward passes' __launch_bounds__.
#define GEMM_BODY(...) __VA_ARGS__
#define CONV2D_GEMM_ENTRIES(NAME, T, BM, BN, TC, BODY, DATA_BOUNDS, WEIGHT_BOUNDS)               \
    extern "C" __global__ void conv2d_fwd##NAME(                                                \
            const T* x, const T* w, const T* b, T* y, ConvShape s) {                            \
        BODY(conv2d_fwd<T, BM, BN, TC>(x, w, b, y, s);)                                         \
    }                                                                                           \
    extern "C" __global__ void conv2d_fwd_relu##NAME(                                           \
            const T* x, const T* w, const T* b, T* y, ConvShape s) {                            \
        BODY(conv2d_fwd<T, BM, BN, TC, true>(x, w, b, y, s);)                                   \
    }                                                                                           \
    extern "C" __global__ void DATA_BOUNDS conv2d_bwd_data##NAME(                               \
            const T* dy, const T* w, T* dx, ConvShape s) {                                      \
        BODY(conv2d_bwd_data<T, BM, BN, TC>(dy, w, dx, s);)                                     \
    }                                                                                           \
    extern "C" __global__ void WEIGHT_BOUNDS conv2d_bwd_weight##NAME(                           \
            const T* dy, const T* x, T* partial, ConvShape s) {                                 \
        BODY(conv2d_bwd_weight<T, BM, BN, TC>(dy, x, partial, s);)                              \
    }

// GEMM_HOLD(HOLD, BM, BN): the __launch_bounds__ that hold a tile's kernel to HOLD blocks a
// multiprocessor, or nothing for HOLD = 0.
// NOTE: the backward passes in float are held to 80 registers, three blocks of 256 threads a
// multiprocessor (backward-data took 90-95, the weight pass along K 93: two blocks); the compile
// gate shows they do not spill.
#define GEMM_HOLD(HOLD, BM, BN) GEMM_HOLD_##HOLD((BM) * (BN) / 16)
#define GEMM_HOLD_0(THREADS)
#define GEMM_HOLD_2(THREADS) __launch_bounds__(THREADS, 2)
#define GEMM_HOLD_3(THREADS) __launch_bounds__(THREADS, 3)
#define CONV2D_TILE_ENTRIES(SUFFIX, BM, BN, HOLD)                                               \
    CONV2D_GEMM_ENTRIES(SUFFIX##_float, float, BM, BN, false, GEMM_BODY,                        \
                        GEMM_HOLD(HOLD, BM, BN), GEMM_HOLD(HOLD, BM, BN))                       \
    CONV2D_GEMM_ENTRIES(SUFFIX##_double, double, BM, BN, false, GEMM_BODY, , )
GEMM_TILES(CONV2D_TILE_ENTRIES)

// TF32 on the tensor cores: float only; dynamic shared memory GEMM_TC_SMEM_BYTES(BM, BN).
// Backward-data is held (to 128 registers, two blocks a multiprocessor; it took 133 on sm_90); the
// others take 122-126 unbounded, and bounding the forward to 128 made it spill on sm_90.
#define CONV2D_TF32_ENTRIES(SUFFIX, BM, BN, HOLD)                                               \
    CONV2D_GEMM_ENTRIES(SUFFIX##_float, float, BM, BN, true, TF32_BODY, GEMM_HOLD(HOLD, BM, BN), )
GEMM_TF32_TILE(CONV2D_TF32_ENTRIES)

// The kernels outside the tile table, for T = float and double.
#define CONV2D_ENTRIES(T)                                                                       \
    extern "C" __global__ void conv2d_bwd_data_fewc_##T(                                        \
            const T* dy, const T* w, T* dx, ConvShape s) {                                      \
        conv2d_bwd_data_fewc<T>(dy, w, dx, s);                                                  \
    }                                                                                           \
    extern "C" __global__ void conv2d_reduce_##T(const T* partial, T* out, long long count,     \
                                                 int splits) {                                  \
        conv2d_reduce<T>(partial, out, count, splits);                                          \
    }                                                                                           \
    extern "C" __global__ void conv2d_bias_grad_##T(const T* dy, T* partial, ConvShape s) {     \
        conv2d_bias_grad<T>(dy, partial, s);                                                    \
    }
CONV2D_ENTRIES(float)
CONV2D_ENTRIES(double)
