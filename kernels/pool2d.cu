// 2-D max and average pooling kernels of the `cupy` backend (and of `cupy-emu`, which compiles this
// very file with g++). Semantics: the contract in src/polycnn/backends/base.py.
//
// Legend: N batch, C channels, H×W input, R×S window, P×Q output, sh/sw stride, ph/pw padding
// (both sides). Layout NCHW.
//
// Max pooling records, per output, the window offset r*S + s of its max: the first in row-major
// window order on ties, a NaN is the max of its window (the first NaN wins), and padding is never
// the argmax (PyTorch's rule; it is -inf, so it only matters for windows whose real entries are
// all -inf). The host keeps padding <= half the window, so every window holds a real entry.
// Average pooling counts padding as zeros (divides by R*S).
// Both backward passes are gathers, one thread per input pixel, summing the windows that contain
// it in (p, q) order: no atomics, so overlapping windows give bit-identical results run to run.
//
// Launch: a 1-D grid-stride loop over the outputs (forward) or inputs (backward); any grid works.

// f(i) for each i < count, a grid-stride loop: thread t of the grid takes t, t + the grid's
// threads, ... (any launch shape covers every index).
template <class F>
__device__ void grid_stride(long long count, F&& f) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride) f(i);
}

struct PoolShape {
    int N, C, H, W, R, S, P, Q;
    int sh, sw, ph, pw;
};

template <typename T>
__device__ bool is_nan(T v) { return v != v; }

// The range of outputs p whose window [p*stride - pad, p*stride - pad + size) contains h.
__device__ void windows_containing(int h, int size, int stride, int pad, int outputs,
                                   int* first, int* last) {
    const int hp = h + pad;
    const int lo = hp - size + 1;
    *first = lo <= 0 ? 0 : (lo + stride - 1) / stride;
    const int hi = hp / stride;
    *last = hi < outputs - 1 ? hi : outputs - 1;
}

// Output i (flat over N, C, P, Q): the offset of its input plane x[n, c] and its window's corner.
struct Window { long long plane; int h0, w0; };
__device__ Window window_of(long long i, const PoolShape& s) {
    const int q = i % s.Q, p = (i / s.Q) % s.P;
    return Window{(i / ((long long)s.P * s.Q)) * s.H * s.W, p * s.sh - s.ph, q * s.sw - s.pw};
}

// f(r * S + c, offset in x) for each tap (r, c) of window `win` inside the input, in row-major
// window order (padding is skipped).
template <class F>
__device__ void for_each_tap(const Window& win, const PoolShape& s, F&& f) {
    for (int r = 0; r < s.R; ++r) {
        const int h = win.h0 + r;
        if (h < 0 || h >= s.H) continue;
        for (int c = 0; c < s.S; ++c) {
            const int w = win.w0 + c;
            if (w >= 0 && w < s.W) f(r * s.S + c, win.plane + (long long)h * s.W + w);
        }
    }
}

// Input i (flat over N, C, H, W): the offset of its plane of outputs dy[n, c], its position, and
// the outputs [p0, p1] × [q0, q1] whose windows contain it.
struct Covering { long long plane; int h, w, p0, p1, q0, q1; };
__device__ Covering covering(long long i, const PoolShape& s) {
    Covering c;
    c.w = i % s.W;
    c.h = (i / s.W) % s.H;
    c.plane = (i / ((long long)s.H * s.W)) * s.P * s.Q;
    windows_containing(c.h, s.R, s.sh, s.ph, s.P, &c.p0, &c.p1);
    windows_containing(c.w, s.S, s.sw, s.pw, s.Q, &c.q0, &c.q1);
    return c;
}

template <typename T>
__device__ void maxpool2d_fwd(const T* x, T* y, int* argmax, PoolShape s) {
    const long long total = (long long)s.N * s.C * s.P * s.Q;
    grid_stride(total, [&](long long i) {
        T best = T(0);
        int arg = 0;
        bool first = true;
        for_each_tap(window_of(i, s), s, [&](int tap, long long at) {
            const T v = x[at];
            if (first || v > best || (is_nan(v) && !is_nan(best))) {
                best = v;
                arg = tap;
                first = false;
            }
        });
        y[i] = best;
        argmax[i] = arg;
    });
}

template <typename T>
__device__ void maxpool2d_bwd(const T* dy, const int* argmax, T* dx, PoolShape s) {
    const long long total = (long long)s.N * s.C * s.H * s.W;
    grid_stride(total, [&](long long i) {
        const Covering c = covering(i, s);
        T sum = T(0);
        for (int p = c.p0; p <= c.p1; ++p) {
            for (int q = c.q0; q <= c.q1; ++q) {
                const long long o = c.plane + (long long)p * s.Q + q;
                const int offset = (c.h + s.ph - p * s.sh) * s.S + (c.w + s.pw - q * s.sw);
                if (argmax[o] == offset) sum += dy[o];
            }
        }
        dx[i] = sum;
    });
}

template <typename T>
__device__ void avgpool2d_fwd(const T* x, T* y, PoolShape s) {
    const long long total = (long long)s.N * s.C * s.P * s.Q;
    const T scale = T(1) / T(s.R * s.S);
    grid_stride(total, [&](long long i) {
        T sum = T(0);
        for_each_tap(window_of(i, s), s, [&](int, long long at) { sum += x[at]; });
        y[i] = sum * scale;
    });
}

template <typename T>
__device__ void avgpool2d_bwd(const T* dy, T* dx, PoolShape s) {
    const long long total = (long long)s.N * s.C * s.H * s.W;
    const T scale = T(1) / T(s.R * s.S);
    grid_stride(total, [&](long long i) {
        const Covering c = covering(i, s);
        T sum = T(0);
        for (int p = c.p0; p <= c.p1; ++p)
            for (int q = c.q0; q <= c.q1; ++q) sum += dy[c.plane + (long long)p * s.Q + q];
        dx[i] = sum * scale;
    });
}

// ---- entry points: one per dtype, T = float and double ------------------------------------------
#define POOL2D_ENTRIES(T)                                                                        \
    extern "C" __global__ void maxpool2d_fwd_##T(const T* x, T* y, int* argmax, PoolShape s) {   \
        maxpool2d_fwd<T>(x, y, argmax, s);                                                       \
    }                                                                                            \
    extern "C" __global__ void maxpool2d_bwd_##T(const T* dy, const int* argmax, T* dx,          \
                                                 PoolShape s) {                                  \
        maxpool2d_bwd<T>(dy, argmax, dx, s);                                                     \
    }                                                                                            \
    extern "C" __global__ void avgpool2d_fwd_##T(const T* x, T* y, PoolShape s) {                \
        avgpool2d_fwd<T>(x, y, s);                                                               \
    }                                                                                            \
    extern "C" __global__ void avgpool2d_bwd_##T(const T* dy, T* dx, PoolShape s) {              \
        avgpool2d_bwd<T>(dy, dx, s);                                                             \
    }
POOL2D_ENTRIES(float)
POOL2D_ENTRIES(double)
