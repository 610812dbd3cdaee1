// A minimal CUDA execution model on the CPU, so the kernels' logic can be checked on a
// machine with no GPU (dev/cuda/emu/check.cpp; run with dev/cuda/emu/run.sh).
//
// Why it is built this way: the kernels use only a small part of CUDA — grid-stride
// loops, __syncthreads, warp shuffles/votes, float/int atomics, shared arrays — so each
// block is run as blockDim real std::threads with a std::barrier for __syncthreads and a
// per-warp barrier plus exchange buffer for shuffles. Blocks run one after another, so
// `__shared__` can be a function-static array. f16 conversion uses GCC's _Float16
// (round to nearest even, as PTX cvt.rn). This checks indexing, reductions, masking and
// synchronisation logic; it says nothing about speed, and nothing about cuBLAS.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#define FB_HOST_EMU 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __restrict__

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
inline std::barrier<>* g_block_bar = nullptr;
inline std::vector<std::barrier<>*> g_warp_bar;
inline unsigned long long g_xchg[32][32];
inline std::mutex g_atomic_mu;

inline int emu_tid() { return (int)(threadIdx.x + threadIdx.y * blockDim.x); }

inline void __syncthreads() { g_block_bar->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    int t = emu_tid(), lane = t & 31, w = t >> 5;
    std::memcpy(&g_xchg[w][lane], &v, sizeof(T));
    g_warp_bar[w]->arrive_and_wait();
    T r;
    std::memcpy(&r, &g_xchg[w][lane ^ o], sizeof(T));
    g_warp_bar[w]->arrive_and_wait();
    return r;
}

inline bool __any_sync(unsigned, bool p) {
    int t = emu_tid(), lane = t & 31, w = t >> 5;
    g_xchg[w][lane] = p ? 1 : 0;
    g_warp_bar[w]->arrive_and_wait();
    bool any = false;
    for (int i = 0; i < 32; ++i) any |= g_xchg[w][i] != 0;
    g_warp_bar[w]->arrive_and_wait();
    return any;
}

inline float atomicAdd(float* p, float v) {
    std::lock_guard<std::mutex> g(g_atomic_mu);
    float o = *p;
    *p = o + v;
    return o;
}
inline int atomicOr(int* p, int v) {
    std::lock_guard<std::mutex> g(g_atomic_mu);
    int o = *p;
    *p = o | v;
    return o;
}

inline int atomicCAS(int* p, int cmp, int v) {
    std::lock_guard<std::mutex> g(g_atomic_mu);
    int o = *p;
    if (o == cmp) *p = v;
    return o;
}

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

typedef unsigned short fb_half;
inline float fb_h2f(fb_half h) {
    _Float16 f;
    std::memcpy(&f, &h, 2);
    return (float)f;
}
inline fb_half fb_f2h(float x) {
    _Float16 f = (_Float16)x;
    fb_half h;
    std::memcpy(&h, &f, 2);
    return h;
}

// Run `k(args...)` over grid x block (x, y), one block at a time.
template <class... P, class... A>
void emu_launch(void (*k)(P...), dim3 grid, dim3 block, A... args) {
    gridDim = grid;
    blockDim = block;
    unsigned n = block.x * block.y;
    unsigned nw = (n + 31) / 32;
    for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
            std::barrier<> bar(n);
            g_block_bar = &bar;
            std::vector<std::barrier<>*> wb;
            for (unsigned w = 0; w < nw; ++w) wb.push_back(new std::barrier<>(n - w * 32 < 32 ? n - w * 32 : 32));
            g_warp_bar = wb;
            std::vector<std::thread> ts;
            for (unsigned ty = 0; ty < block.y; ++ty)
                for (unsigned tx = 0; tx < block.x; ++tx)
                    ts.emplace_back([=]() {
                        threadIdx = dim3{tx, ty, 0};
                        blockIdx = dim3{bx, by, 0};
                        k(((P)args)...);
                    });
            for (auto& t : ts) t.join();
            for (auto* b : wb) delete b;
        }
}
