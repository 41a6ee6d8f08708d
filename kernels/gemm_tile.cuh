// The tiled GEMM that the three conv passes run (implicit GEMM: each pass gathers its operands
// on the fly through the A and B functors it passes), and the tile table of its shapes, which
// the host reads too. Included by conv2d.cu (see its top for the passes and the launch shape);
// kernel_source() inlines it, as NVRTC and the emulator compile one string.

#include "wmma_tf32.cuh"

// The GEMM tile table, the one list of tile shapes of the kernels and of the host (the host reads
// these two lines: polycnn/backends/_tiles.py): X(name suffix, BM, BN, HOLD) for each shape of
// the float and double kernels, squarest first (the host's order of preference), then the TF32
// kernels' one tile. HOLD: the blocks a multiprocessor that the float backward passes are held
// to, by their __launch_bounds__ (0: not held). The entry points at the end of conv2d.cu are
// made from it.
#define GEMM_TILES(X) X(, 64, 64, 3) X(_mid, 32, 128, 3) X(_narrow, 16, 256, 3) X(_small, 16, 64, 0)
#define GEMM_TF32_TILE(X) X(_tf32, 64, 64, 2)
#define TILE_K 16
#define GEMM_THREADS 256
// NOTE: the A and B tiles' rows are padded by 4 so that column-wise stores spread over banks
#define GEMM_SMEM_BYTES(BM, BN, elem) (2 * TILE_K * 16 + TILE_K * ((BM) + 4 + (BN) + 4) * (elem))
// the TF32 tile: the same, then the BM × (BN + 4) fp32 staging tile of the accumulators
#define GEMM_TC_SMEM_BYTES(BM, BN) (GEMM_SMEM_BYTES(BM, BN, 4) + (BM) * ((BN) + 4) * 4)

// What the operands need to know about one reduction index; computed by B once per tile, by
// TILE_K threads, into a table in shared memory (integer division is slow on a GPU). A reads the
// entry of its reduction column too.
struct RowInfo { int a, b, c, d; };

template <typename T> struct __align__(16) Vec4 { T v[4]; };

// An operand as it enters shared memory: rounded to TF32 for the tensor-core tile, else as is.
template <bool TC, typename T> __device__ inline T tc_operand(T v) {
    if constexpr (TC) return nvcuda::wmma::__float_to_tf32(v);
    else return v;
}

// A warp's 16×16 fp32 accumulator of the tensor-core tile
using TcAccumulator = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>;

// One shared-memory tile of the product, on the CUDA cores: this thread's 4×4 register tile
// acc (rows m.., columns n.. of the block's tile) += As[:, m..m+4]ᵀ Bs[:, n..n+4], in kk order.
template <int A_STRIDE, int B_STRIDE, typename T>
__device__ __forceinline__ void fma_multiply(const T* As, const T* Bs, int m, int n,
                                             T (&acc)[4][4]) {
    for (int kk = 0; kk < TILE_K; ++kk) {
        const Vec4<T> av = *reinterpret_cast<const Vec4<T>*>(&As[kk * A_STRIDE + m]);
        const Vec4<T> bv = *reinterpret_cast<const Vec4<T>*>(&Bs[kk * B_STRIDE + n]);
        for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) acc[i][j] += av.v[i] * bv.v[j];
    }
}

// The same on the tensor cores: this warp's TILES 16×16 accumulators (rows wm.., columns wn +
// 16 j..) += the 16×8×16 TF32 products of the tile, two k8 steps.
template <int A_STRIDE, int B_STRIDE, int TILES>
__device__ __forceinline__ void tc_multiply(const float* As, const float* Bs, int wm, int wn,
                                            TcAccumulator (&acc)[TILES]) {
    namespace wmma = nvcuda::wmma;
    for (int k8 = 0; k8 < TILE_K; k8 += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa;
        wmma::load_matrix_sync(fa, &As[k8 * A_STRIDE + wm], A_STRIDE);
        for (int j = 0; j < TILES; ++j) {
            wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
            wmma::load_matrix_sync(fb, &Bs[k8 * B_STRIDE + wn + 16 * j], B_STRIDE);
            wmma::mma_sync(acc[j], fa, fb, acc[j]);
        }
    }
}

// This thread's 4×4 register tile, rows m.. and columns n.. of C, through out (within
// rows × cols).
template <typename T, class Out>
__device__ __forceinline__ void fma_store(const Out& out, const T (&acc)[4][4], int m, int n,
                                          int rows, int cols) {
    for (int i = 0; i < 4; ++i) {
        if (m + i >= rows) continue;
        for (int j = 0; j < 4; ++j)
            if (n + j < cols) out(m + i, n + j, acc[i][j]);
    }
}

// The tensor-core accumulators through out: each warp stores its tiles into the BM × (BN + 4)
// staging tile Cs (after A and B in shared memory), then the block writes C a row of BN at a
// time, from (m0, n0), within rows × cols.
template <int BM, int BN, int THREADS, int TILES, class Out>
__device__ __forceinline__ void tc_store(
        const Out& out, float* Cs,
        const TcAccumulator (&acc)[TILES],
        int wm, int wn, int m0, int n0, int rows, int cols) {
    constexpr int C_STRIDE = BN + 4;
    for (int j = 0; j < TILES; ++j)
        nvcuda::wmma::store_matrix_sync(&Cs[wm * C_STRIDE + wn + 16 * j], acc[j], C_STRIDE,
                                        nvcuda::wmma::mem_row_major);
    __syncthreads();
    for (int i = threadIdx.x; i < BM * BN; i += THREADS) {
        const int m = m0 + i / BN, n = n0 + i % BN;
        if (m < rows && n < cols) out(m, n, Cs[(i / BN) * C_STRIDE + i % BN]);
    }
}

// C[m0.., n0..] = sum over kk in [k_begin, k_end) of a(m, kk) * b(kk, n), then out(m, n, value).
// Each thread owns a 4×4 register tile: rows 4*ty + i, columns 4*tx + j, read from shared memory
// as vectors. Software pipeline: the next tile's operands are fetched from global memory into
// registers while the current tile is multiplied out of shared memory. The table of B's
// reduction rows is double-buffered the same way, so it needs no barrier of its own.
// B_ALONG_K: neighbouring threads fetch neighbouring reduction rows of one B column (each thread
// B_LOADS columns) instead of neighbouring columns of one row: the weight pass's columns are
// (c, r, s), far apart in x, while its reduction rows (n, p, q) are next to each other.
// TC: the products on the tensor cores (T = float, TF32 operands; see wmma_tf32.cuh): warp
// w owns 16-row band w % (BM/16) and TC_TILES 16-column tiles from (w / (BM/16)) * TC_TILES.
// NOTE: every thread of the block reaches every __syncthreads: the loop bounds depend only on
// blockIdx and the shape.
template <typename T, int BM, int BN, bool B_ALONG_K = false, bool TC = false, class A, class B,
          class Out>
__device__ void gemm_tile(const A& a, const B& b, const Out& out, int rows, int cols,
                          int k_begin, int k_end) {
    constexpr int THREADS = (BM / 4) * (BN / 4);  // one 4×4 register tile a thread
    constexpr int A_STRIDE = BM + 4, B_STRIDE = BN + 4;
    constexpr int A_LOADS = BM * TILE_K / THREADS, B_LOADS = BN * TILE_K / THREADS;
    static_assert(THREADS % BN == 0 || BN % THREADS == 0, "B loads");
    static_assert(THREADS % TILE_K == 0 && THREADS >= TILE_K, "A loads and the row table");
    // NOTE: WMMA loads and stores want 32-byte aligned tiles; every tile offset below is one
    extern __shared__ __align__(32) unsigned char smem_raw[];
    RowInfo* table = reinterpret_cast<RowInfo*>(smem_raw);                   // [2][TILE_K]
    T* As = reinterpret_cast<T*>(smem_raw + 2 * TILE_K * sizeof(RowInfo));  // [TILE_K][A_STRIDE]
    T* Bs = As + TILE_K * A_STRIDE;                                          // [TILE_K][B_STRIDE]

    const int t = threadIdx.x;
    const int tx = t % (BN / 4), ty = t / (BN / 4);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    // This thread always loads A entries of reduction column a_kk (rows a_row + i*THREADS/
    // TILE_K) and B entries (b_kk(i), b_nn(i)): columns b_nn + i*THREADS/TILE_K of reduction
    // row b_kk (B_ALONG_K), else column b_nn of reduction rows b_kk + i*THREADS/BN.
    const int a_kk = t % TILE_K, a_row = t / TILE_K;
    const int b_nn = B_ALONG_K ? t / TILE_K : t % BN, b_kk = B_ALONG_K ? t % TILE_K : t / BN;
    constexpr int B_COLS = B_ALONG_K ? B_LOADS : 1;
    auto b_kk_of = [&](int i) { return B_ALONG_K ? b_kk : b_kk + i * (THREADS / BN); };
    auto b_nn_of = [&](int i) { return B_ALONG_K ? b_nn + i * (THREADS / TILE_K) : b_nn; };
    typename B::Col bcol[B_COLS];
    for (int i = 0; i < B_COLS; ++i) bcol[i] = b.column(n0 + b_nn_of(i), n0 + b_nn_of(i) < cols);
    T a_next[A_LOADS], b_next[B_LOADS];
    auto fetch = [&](int k0, const RowInfo* rows_of_tile) {
        const int ka = k0 + a_kk;
        const typename A::Red ared = a.reduction(ka, rows_of_tile[a_kk], ka < k_end);
        for (int i = 0; i < A_LOADS; ++i) {
            const int m = m0 + a_row + i * (THREADS / TILE_K);
            a_next[i] = (m < rows && ka < k_end) ? a(m, ared) : T(0);
        }
        for (int i = 0; i < B_LOADS; ++i) {
            const int kk = b_kk_of(i);
            b_next[i] = (k0 + kk < k_end) ? b(rows_of_tile[kk], bcol[B_ALONG_K ? i : 0]) : T(0);
        }
    };

    T acc[4][4];
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) acc[i][j] = T(0);
    constexpr int TC_TILES = TC ? (BM / 16) * (BN / 16) / (THREADS / 32) : 1;
    static_assert(!TC || (TC_TILES >= 1 && (BN / 16) % TC_TILES == 0), "TF32 warp tiles");
    const int warp = t / 32;
    const int wm = 16 * (warp % (BM / 16)), wn = 16 * TC_TILES * (warp / (BM / 16));
    TcAccumulator tc_acc[TC_TILES];
    if constexpr (TC)
        for (int j = 0; j < TC_TILES; ++j) nvcuda::wmma::fill_fragment(tc_acc[j], 0.0f);

    if (t < TILE_K) table[t] = b.row(k_begin + t);
    __syncthreads();
    fetch(k_begin, table);
    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (int i = 0; i < A_LOADS; ++i)
            As[a_kk * A_STRIDE + a_row + i * (THREADS / TILE_K)] = tc_operand<TC>(a_next[i]);
        for (int i = 0; i < B_LOADS; ++i)
            Bs[b_kk_of(i) * B_STRIDE + b_nn_of(i)] = tc_operand<TC>(b_next[i]);
        const bool more = k0 + TILE_K < k_end;
        if (t < TILE_K && more) table[(buf ^ 1) * TILE_K + t] = b.row(k0 + TILE_K + t);
        __syncthreads();
        if (more) fetch(k0 + TILE_K, table + (buf ^ 1) * TILE_K);
        if constexpr (TC) tc_multiply<A_STRIDE, B_STRIDE>(As, Bs, wm, wn, tc_acc);
        else fma_multiply<A_STRIDE, B_STRIDE>(As, Bs, 4 * ty, 4 * tx, acc);
        __syncthreads();
        buf ^= 1;
    }
    if constexpr (TC) tc_store<BM, BN, THREADS>(out, Bs + TILE_K * B_STRIDE, tc_acc, wm, wn, m0, n0,
                                                 rows, cols);
    else fma_store(out, acc, m0 + 4 * ty, n0 + 4 * tx, rows, cols);
}
