// cupy-emu: the CUDA built-ins that polycnn's kernels use, for g++ on a CPU.
//
// The builder (build.py) compiles  [this header] + [the .cu, with `extern __shared__` rewritten to
// emu::dynamic_shared()] + [a generated table of the `extern "C" __global__` entry points]  into one
// shared library. Each block's threads run as fibers on one OS thread and switch only at
// __syncthreads(); blocks are spread over OS threads. Safety nets:
//   - dynamic shared memory is filled with 0xFF bytes (NaN as float or double) at every block start;
//   - EMU_REVERSE runs the threads in reverse order between barriers, to expose races;
//   - a block in which some threads exit while others wait at a barrier is an error, not a hang;
//   - each kernel exports the parameter types the compiler saw, so Python can check arguments.
// NOTE: launches are synchronous and there is no notion of warps, streams or atomics ordering;
// out-of-bounds reads are not detected (build with -fsanitize=address for that).
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __align__(n) alignas(n)
#define __launch_bounds__(...)
#define __shared__ _Pragma("GCC error \"cupy-emu emulates only dynamic shared memory: declare it as extern __shared__\"")

using std::isnan;

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

template <typename T> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T max(T a, T b) { return a < b ? b : a; }

inline float __int_as_float(int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline float __int_as_float(unsigned int v) { float f; std::memcpy(&f, &v, sizeof f); return f; }
inline int __float_as_int(float f) { int v; std::memcpy(&v, &f, sizeof v); return v; }
inline double __longlong_as_double(long long v) { double d; std::memcpy(&d, &v, sizeof d); return d; }
inline long long __double_as_longlong(double d) { long long v; std::memcpy(&v, &d, sizeof v); return v; }
template <typename T> inline T __ldg(const T* p) { return *p; }

namespace emu {

// Context switches: a few instructions of assembly on x86-64 (swapcontext makes a system call
// per switch, about 100x slower), glibc's ucontext elsewhere or with -DEMU_USE_UCONTEXT.
#if defined(__x86_64__) && !defined(EMU_USE_UCONTEXT)
#define EMU_ASM_SWITCH 1
// emu_switch(save, load): push the callee-saved registers and the SSE/x87 control words, store
// the stack pointer in *save, load `load` as the stack pointer, pop the same, return there.
extern "C" void emu_switch(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#else
#define EMU_ASM_SWITCH 0
#endif

// A suspended execution context (a fiber's, or the scheduler's while a fiber runs), and the one
// switch between two: save the running context into *from, resume *to.
#if EMU_ASM_SWITCH
using Context = void*;  // the saved stack pointer
inline void switch_context(Context* from, Context* to) { emu_switch(from, *to); }
#else
using Context = ucontext_t;
inline void switch_context(Context* from, Context* to) { swapcontext(from, to); }
#endif

enum : int { RUNNABLE = 0, AT_BARRIER = 1, DONE = 2 };
enum : int { FLAG_REVERSE = 1 };

constexpr std::size_t kFiberStack = 128 * 1024;
constexpr std::size_t kMaxSharedBytes = 48 * 1024;  // CUDA's default limit without opt-in

struct Fiber {
    Context ctx{};  // saved while switched out
    int state = RUNNABLE;
    uint3 tid{0, 0, 0};
};

using Invoker = void (*)(void* fn, void** args);

// One per OS thread that runs blocks: its fibers, its dynamic shared memory, its scheduler context.
struct Worker {
    Context sched{};
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<unsigned char> shared;
    Fiber* current = nullptr;
    Invoker invoke = nullptr;
    void* fn = nullptr;
    void** args = nullptr;
    ~Worker() { for (char* s : stacks) std::free(s); }
};

inline thread_local Worker* tls_worker = nullptr;
inline thread_local uint3 tls_thread_idx{0, 0, 0};
inline thread_local uint3 tls_block_idx{0, 0, 0};
inline thread_local dim3 tls_block_dim;
inline thread_local dim3 tls_grid_dim;

inline std::mutex error_lock;
inline std::string error_message;
inline unsigned long long error_block = 0;
inline std::atomic<bool> failed{false};

// Records an error of block `block` (linear index). The lowest block's error wins, so the message
// is the one a sequential run would give: blocks are handed out in increasing order, so every
// lower block has started and runs to its end.
inline void fail(const std::string& msg, unsigned long long block = 0) {
    std::lock_guard<std::mutex> guard(error_lock);
    if (!failed.exchange(true) || block < error_block) {
        error_message = msg;
        error_block = block;
    }
}

inline void to_scheduler(Worker* w, Fiber* f) { switch_context(&f->ctx, &w->sched); }
inline void to_fiber(Worker* w, Fiber* f) { switch_context(&w->sched, &f->ctx); }

inline void syncthreads() {
    Worker* w = tls_worker;
    Fiber* f = w->current;
    f->state = AT_BARRIER;
    to_scheduler(w, f);
}

inline unsigned char* dynamic_shared() { return tls_worker->shared.data(); }

inline void fiber_main() {
    Worker* w = tls_worker;
    w->invoke(w->fn, w->args);
    w->current->state = DONE;
#if EMU_ASM_SWITCH
    to_scheduler(w, w->current);  // never resumed: the fiber is restarted from scratch
    __builtin_unreachable();
#endif
    // ucontext: returning resumes w->sched through uc_link
}

// Prepare fiber f to start fiber_main on `stack` at its next switch.
inline void fiber_start(Worker& w, Fiber& f, char* stack) {
#if EMU_ASM_SWITCH
    // Frame popped by emu_switch: control words, r15, r14, r13, r12, rbx, rbp, return address.
    // The stack top is 16-aligned, so after `ret` rsp = 8 mod 16, as at any function entry.
    auto top = reinterpret_cast<std::uintptr_t>(stack + kFiberStack) & ~std::uintptr_t(15);
    auto* frame = reinterpret_cast<std::uint64_t*>(top - 72);
    std::memset(frame, 0, 72);
    const std::uint32_t mxcsr = 0x1F80;  // default SSE state: round to nearest, exceptions masked
    const std::uint16_t fpucw = 0x037F;  // default x87 state
    std::memcpy(frame, &mxcsr, 4);
    std::memcpy(reinterpret_cast<char*>(frame) + 4, &fpucw, 2);
    frame[7] = reinterpret_cast<std::uint64_t>(&fiber_main);
    f.ctx = frame;
    (void)w;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stack;
    f.ctx.uc_stack.ss_size = kFiberStack;
    f.ctx.uc_link = &w.sched;
    makecontext(&f.ctx, fiber_main, 0);
#endif
}

inline std::string block_name() {
    return "block (" + std::to_string(tls_block_idx.x) + ", " + std::to_string(tls_block_idx.y) +
           ", " + std::to_string(tls_block_idx.z) + ")";
}

// Runs one block to completion; false after a reported error.
inline bool run_block(Worker& w, unsigned int nthreads, std::size_t shared_bytes, int flags) {
    if (w.fibers.size() < nthreads) {
        w.fibers.resize(nthreads);
        while (w.stacks.size() < nthreads) {
            char* stack = static_cast<char*>(std::malloc(kFiberStack));
            if (!stack) { fail("cupy-emu: out of memory for fiber stacks"); return false; }
            w.stacks.push_back(stack);
        }
    }
    std::memset(w.shared.data(), 0xFF, shared_bytes);
    const dim3 bd = tls_block_dim;
    for (unsigned int t = 0; t < nthreads; ++t) {
        Fiber& f = w.fibers[t];
        fiber_start(w, f, w.stacks[t]);
        f.state = RUNNABLE;
        f.tid = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    }
    for (;;) {
        for (unsigned int i = 0; i < nthreads; ++i) {
            const unsigned int t = (flags & FLAG_REVERSE) ? nthreads - 1 - i : i;
            Fiber& f = w.fibers[t];
            if (f.state != RUNNABLE) continue;
            w.current = &f;
            tls_thread_idx = f.tid;
            to_fiber(&w, &f);
        }
        unsigned int done = 0, waiting = 0;
        for (unsigned int t = 0; t < nthreads; ++t) {
            done += w.fibers[t].state == DONE;
            waiting += w.fibers[t].state == AT_BARRIER;
        }
        if (done == nthreads) return true;
        if (waiting == nthreads) {
            for (unsigned int t = 0; t < nthreads; ++t) w.fibers[t].state = RUNNABLE;
            continue;
        }
        const uint3 b = tls_block_idx;
        const dim3 g = tls_grid_dim;
        const unsigned long long linear = b.x + (unsigned long long)g.x * (b.y + (unsigned long long)g.y * b.z);
        fail("__syncthreads() not reached by every thread of " + block_name() + ": " +
             std::to_string(done) + " of " + std::to_string(nthreads) +
             " threads exited while the others wait at a barrier", linear);
        return false;
    }
}

inline std::vector<Worker>& workers(std::size_t n) {
    static std::vector<Worker> pool;
    if (pool.size() < n) pool = std::vector<Worker>(n);
    return pool;
}

inline int launch(Invoker invoke, void* fn, const unsigned int grid[3], const unsigned int block[3],
                  std::size_t shared_bytes, void** args, int flags, int nworkers) {
    static std::mutex launch_lock;  // one launch at a time: workers and fibers are reused
    std::lock_guard<std::mutex> guard(launch_lock);
    failed = false;
    error_message.clear();
    const unsigned long long nthreads = (unsigned long long)block[0] * block[1] * block[2];
    const unsigned long long nblocks = (unsigned long long)grid[0] * grid[1] * grid[2];
    if (nthreads == 0 || nthreads > 1024 || block[2] > 64) {
        fail("invalid block (" + std::to_string(block[0]) + ", " + std::to_string(block[1]) + ", " +
             std::to_string(block[2]) + "): CUDA allows at most 1024 threads a block, z <= 64");
        return 1;
    }
    if (grid[1] > 65535 || grid[2] > 65535 || grid[0] > 2147483647u) {
        fail("invalid grid: y and z must be at most 65535, x at most 2^31 - 1");
        return 1;
    }
    if (shared_bytes > kMaxSharedBytes) {
        fail("dynamic shared memory of " + std::to_string(shared_bytes) +
             " bytes exceeds CUDA's default limit of 49152 bytes a block");
        return 1;
    }
    if (nblocks == 0) return 0;
    const std::size_t n = (std::size_t)std::max(1, std::min<int>(nworkers, (int)std::min<unsigned long long>(nblocks, 1024)));
    std::vector<Worker>& pool = workers(n);
    std::atomic<unsigned long long> next{0};
    auto serve = [&](std::size_t wi) {
        Worker& w = pool[wi];
        w.invoke = invoke;
        w.fn = fn;
        w.args = args;
        if (w.shared.size() < shared_bytes) w.shared.resize(shared_bytes);
        tls_worker = &w;
        tls_block_dim = dim3(block[0], block[1], block[2]);
        tls_grid_dim = dim3(grid[0], grid[1], grid[2]);
        for (;;) {
            if (failed) return;  // NOTE: blocks below a failed one have all been handed out
            const unsigned long long b = next.fetch_add(1);
            if (b >= nblocks) return;
            tls_block_idx = uint3{(unsigned)(b % grid[0]), (unsigned)((b / grid[0]) % grid[1]),
                                  (unsigned)(b / ((unsigned long long)grid[0] * grid[1]))};
            if (!run_block(w, (unsigned)nthreads, shared_bytes, flags)) return;
        }
    };
    if (n == 1) {
        serve(0);
    } else {
        std::vector<std::thread> threads;
        for (std::size_t i = 0; i < n; ++i) threads.emplace_back(serve, i);
        for (auto& t : threads) t.join();
    }
    return failed ? 1 : 0;
}

// ---- parameter types as the compiler saw them ---------------------------------------------------
template <typename T> struct TypeName {
    static std::string get() {
        if constexpr (std::is_class_v<T>) {
            int status = 0;
            char* dem = abi::__cxa_demangle(typeid(T).name(), nullptr, nullptr, &status);
            std::string name = status == 0 && dem ? dem : typeid(T).name();
            std::free(dem);
            return "struct " + name + ":" + std::to_string(sizeof(T));
        } else {
            static_assert(sizeof(T) == 0, "cupy-emu: unsupported kernel parameter type");
            return "";
        }
    }
};
#define EMU_TYPE_NAME(T, S) template <> struct TypeName<T> { static std::string get() { return S; } };
EMU_TYPE_NAME(bool, "bool")
EMU_TYPE_NAME(signed char, "int8")
EMU_TYPE_NAME(unsigned char, "uint8")
EMU_TYPE_NAME(short, "int16")
EMU_TYPE_NAME(unsigned short, "uint16")
EMU_TYPE_NAME(int, "int32")
EMU_TYPE_NAME(unsigned int, "uint32")
EMU_TYPE_NAME(long, "int64")
EMU_TYPE_NAME(unsigned long, "uint64")
EMU_TYPE_NAME(long long, "int64")
EMU_TYPE_NAME(unsigned long long, "uint64")
EMU_TYPE_NAME(float, "float32")
EMU_TYPE_NAME(double, "float64")
#undef EMU_TYPE_NAME
template <typename T> struct TypeName<T*> {
    static std::string get() {
        using U = std::remove_cv_t<T>;
        return (std::is_const_v<T> ? "const " : "") + TypeName<U>::get() + "*";
    }
};

template <typename... Args> std::string signature() {
    std::string out;
    ((out += (out.empty() ? "" : ";") + TypeName<std::decay_t<Args>>::get()), ...);
    return out;
}

template <typename... Args, std::size_t... I>
void call_with(void (*fn)(Args...), void** args, std::index_sequence<I...>) {
    fn(*static_cast<std::decay_t<Args>*>(args[I])...);
}

template <typename... Args> void invoke(void* fn, void** args) {
    call_with(reinterpret_cast<void (*)(Args...)>(fn), args, std::index_sequence_for<Args...>{});
}

struct KernelInfo {
    const char* name;
    std::string signature;
    Invoker invoke;
    void* fn;
};

template <typename... Args> KernelInfo kernel_info(const char* name, void (*fn)(Args...)) {
    return KernelInfo{name, signature<Args...>(), &invoke<Args...>, reinterpret_cast<void*>(fn)};
}

}  // namespace emu

#define threadIdx (::emu::tls_thread_idx)
#define blockIdx (::emu::tls_block_idx)
#define blockDim (::emu::tls_block_dim)
#define gridDim (::emu::tls_grid_dim)
#define __syncthreads() ::emu::syncthreads()

// NOTE: the tensor cores' nvcuda::wmma (the subset the TF32 kernels use) is emulated in
// kernels/conv2d.cu itself, beside its PTX version, under the same names.
