// Included by gemm_tile.cuh (kernel_source() inlines it). At the end, TF32_BODY keeps a TF32
// entry point's body to the targets that have tensor cores.

// ---- tensor cores: the subset of <mma.h> (nvcuda::wmma) that the TF32 kernels use -------------
// NVRTC has no <mma.h> built in (and CuPy may find no CUDA headers on the machine), and g++ has
// none at all: the names the kernels use are declared once here, then implemented twice, as
// inline PTX for NVRTC and as plain loops for cupy-emu (which compiles the kernels with g++).
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision { struct tf32 {}; }
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment;
template <class F> __device__ inline void fill_fragment(F& f, float v) {
    for (int i = 0; i < F::num_elements; ++i) f.x[i] = v;
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
// m16n16k8 TF32: A and B four 32-bit registers a lane, the fp32 accumulator eight
template <int E> struct lane_fragment {
    static constexpr int num_elements = E;
    float x[E];
};
template <class L> struct fragment<matrix_a, 16, 16, 8, precision::tf32, L> : lane_fragment<4> {};
template <class L> struct fragment<matrix_b, 16, 16, 8, precision::tf32, L> : lane_fragment<4> {};
template <> struct fragment<accumulator, 16, 16, 8, float, void> : lane_fragment<8> {};

// NOTE: the bodies exist for sm_80 and newer only; older targets never call them (TF32_BODY)
#if __CUDA_ARCH__ >= 800
#define WMMA_SM80(...) __VA_ARGS__
#else
#define WMMA_SM80(...)
#endif
__device__ inline float __float_to_tf32(float f) {
    unsigned r = 0;
#if __CUDA_ARCH__ >= 800
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(f));
#endif
    return __uint_as_float(r);
}
// load_matrix_sync of a TF32 operand: USE (matrix_a or matrix_b) in LAYOUT, PTX its wmma.load name
#define WMMA_TF32_LOAD(USE, LAYOUT, PTX)                                                           \
    __device__ inline void load_matrix_sync(fragment<USE, 16, 16, 8, precision::tf32, LAYOUT>& f,  \
                                            const float* p, unsigned ldm) {                        \
        WMMA_SM80(unsigned* r = reinterpret_cast<unsigned*>(f.x);                                  \
                  asm volatile("wmma.load." PTX ".m16n16k8.tf32 {%0, %1, %2, %3}, [%4], %5;"       \
                               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])                    \
                               : "l"(p), "r"(ldm) : "memory");)                                    \
    }
WMMA_TF32_LOAD(matrix_a, col_major, "a.sync.aligned.col")
WMMA_TF32_LOAD(matrix_b, row_major, "b.sync.aligned.row")
__device__ inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                                const fragment<matrix_a, 16, 16, 8, precision::tf32, col_major>& a,
                                const fragment<matrix_b, 16, 16, 8, precision::tf32, row_major>& b,
                                const fragment<accumulator, 16, 16, 8, float>& c) {
#if __CUDA_ARCH__ >= 800
    const unsigned* ra = reinterpret_cast<const unsigned*>(a.x);
    const unsigned* rb = reinterpret_cast<const unsigned*>(b.x);
    asm volatile("wmma.mma.sync.aligned.col.row.m16n16k8.f32.tf32.tf32.f32"
                 " {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, {%12, %13, %14, %15},"
                 " {%16, %17, %18, %19, %20, %21, %22, %23};"
                 : "=f"(d.x[0]), "=f"(d.x[1]), "=f"(d.x[2]), "=f"(d.x[3]), "=f"(d.x[4]),
                   "=f"(d.x[5]), "=f"(d.x[6]), "=f"(d.x[7])
                 : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]),
                   "r"(rb[2]), "r"(rb[3]), "f"(c.x[0]), "f"(c.x[1]), "f"(c.x[2]), "f"(c.x[3]),
                   "f"(c.x[4]), "f"(c.x[5]), "f"(c.x[6]), "f"(c.x[7]));
#endif
}
__device__ inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f,
                                         unsigned ldm, layout_t) {  // row-major only
#if __CUDA_ARCH__ >= 800
    asm volatile("wmma.store.d.sync.aligned.row.m16n16k8.f32"
                 " [%0], {%1, %2, %3, %4, %5, %6, %7, %8}, %9;"
                 :: "l"(p), "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]),
                    "f"(f.x[5]), "f"(f.x[6]), "f"(f.x[7]), "r"(ldm) : "memory");
#endif
}

#else  // cupy-emu (g++; cuda_emu.h comes first)
// On a GPU a fragment is spread over the 32 lanes of a warp, in an unspecified order; kernels may
// only fill it, load it, store it, multiply it and apply elementwise functions to x[0..
// num_elements). Here every thread holds the whole tile (row-major: A is 16 × 8, B 8 × 16, the
// accumulator 16 × 16) and computes the whole product itself: the same result, 32 times over.
// mma_sync reads its TF32 operands as the tensor cores do: the top 19 bits of each float (an
// operand not converted by __float_to_tf32 is truncated), products exact, sums in fp32 in k order.
// NOTE: load/store/mma need no barrier here, as on a GPU where they are warp-synchronous.
template <int ROWS, int COLS> struct emu_fragment {
    static constexpr int rows = ROWS, cols = COLS, num_elements = ROWS * COLS;
    float x[ROWS * COLS];
};
template <class L> struct fragment<matrix_a, 16, 16, 8, precision::tf32, L> : emu_fragment<16, 8> {};
template <class L> struct fragment<matrix_b, 16, 16, 8, precision::tf32, L> : emu_fragment<8, 16> {};
template <> struct fragment<accumulator, 16, 16, 8, float, void> : emu_fragment<16, 16> {};

// cvt.rna.tf32.f32: round the 23-bit mantissa to 10 bits, to nearest, ties away from zero (add
// half of the last kept bit to the magnitude, then clear the 13 dropped bits); NaN and infinity
// pass through.
inline float __float_to_tf32(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7F800000u) != 0x7F800000u) u = (u + 0x1000u) & ~0x1FFFu;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline float emu_tf32_operand(float f) {
    unsigned int u;
    std::memcpy(&u, &f, sizeof u);
    u &= ~0x1FFFu;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// element (i, j) of a ROWS × COLS matrix at p: p[i * ldm + j] row-major, p[i + j * ldm] column-major
template <class F, class L> inline void emu_load(F& f, const float* p, unsigned ldm, L) {
    for (int i = 0; i < F::rows; ++i)
        for (int j = 0; j < F::cols; ++j)
            f.x[i * F::cols + j] = std::is_same_v<L, row_major> ? p[(std::size_t)i * ldm + j]
                                                                 : p[i + (std::size_t)j * ldm];
}
template <class Use, class L>
inline void load_matrix_sync(fragment<Use, 16, 16, 8, precision::tf32, L>& f, const float* p,
                             unsigned ldm) {
    emu_load(f, p, ldm, L{});
}

inline void mma_sync(fragment<accumulator, 16, 16, 8, float>& d,
                     const emu_fragment<16, 8>& a, const emu_fragment<8, 16>& b,
                     const fragment<accumulator, 16, 16, 8, float>& c) {
    float out[16 * 16];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float sum = c.x[i * 16 + j];
            for (int k = 0; k < 8; ++k)
                sum += emu_tf32_operand(a.x[i * 8 + k]) * emu_tf32_operand(b.x[k * 16 + j]);
            out[i * 16 + j] = sum;
        }
    std::memcpy(d.x, out, sizeof out);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 8, float>& f,
                              unsigned ldm, layout_t layout) {
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j)
            (layout == mem_row_major ? p[(std::size_t)i * ldm + j] : p[i + (std::size_t)j * ldm]) =
                f.x[i * 16 + j];
}
#endif
}  // namespace wmma
}  // namespace nvcuda

// The TF32 entry points' bodies, compiled for sm_80 and newer (the host refuses precision="tf32"
// on an older device); the emulator compiles them always.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TF32_BODY(...) __VA_ARGS__
#else
#define TF32_BODY(...)
#endif
