// A small SIMT simulator: just enough of CUDA's execution model to run the fused-heads kernels
// (csrc/cuda/fused_heads_kernels.cuh) on a CPU, so that a machine without a GPU still executes
// the real kernel source — indexing, shuffle trees, shared-memory staging, block barriers and
// the last-block semaphore logic.
//
// Model: every thread of a block is a ucontext fiber. __syncthreads() is a barrier over the
// block's live threads; warp shuffles are a write / warp-barrier / read / warp-barrier sequence.
// Blocks run one at a time in a caller-chosen order (any order is a legal CUDA schedule), which
// lets the tests check that results do not depend on which block finishes last.
// Not modelled: memory-model races between concurrently running blocks (blocks never overlap
// here), timing, and anything the kernels do not use.
#pragma once

#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static  // one instance per kernel instantiation, shared by the block's fibers

namespace simt {

struct Idx {
  unsigned x, y, z;
};

enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  unsigned tid = 0;
  bool done = false;
  Wait wait = Wait::kNone;
};

struct State {
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots;  // one shuffle slot per thread
  ucontext_t sched;
  Fiber* cur = nullptr;
  Idx block_idx{0, 0, 0}, grid_dim{1, 1, 1}, block_dim{1, 1, 1};
  std::function<void()> body;
};

inline State& st() {
  static State s;
  return s;
}

inline void yield(Wait w) {
  State& s = st();
  s.cur->wait = w;
  swapcontext(&s.cur->ctx, &s.sched);
}

inline void trampoline() {
  State& s = st();
  s.body();
  s.cur->done = true;
  // returning resumes uc_link (the scheduler)
}

// Runs one block to completion.
inline void run_block(unsigned nthreads) {
  State& s = st();
  constexpr size_t kStack = 64 * 1024;
  s.fibers.resize(nthreads);
  s.slots.assign(nthreads, 0);
  for (unsigned t = 0; t < nthreads; ++t) {
    Fiber& f = s.fibers[t];
    f.tid = t;
    f.done = false;
    f.wait = Wait::kNone;
    f.stack.resize(kStack);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = &s.sched;
    makecontext(&f.ctx, trampoline, 0);
  }
  for (;;) {
    bool ran = false;
    for (Fiber& f : s.fibers) {
      if (f.done || f.wait != Wait::kNone) continue;
      s.cur = &f;
      swapcontext(&s.sched, &f.ctx);
      ran = true;
    }
    if (ran) continue;
    // Everyone live is parked at a barrier: release what can be released.
    bool any_live = false, released = false;
    for (unsigned w0 = 0; w0 < nthreads; w0 += 32) {
      bool all_warp = true, any = false;
      for (unsigned t = w0; t < w0 + 32 && t < nthreads; ++t) {
        const Fiber& f = s.fibers[t];
        if (f.done) continue;
        any = true;
        if (f.wait != Wait::kWarp) all_warp = false;
      }
      if (any && all_warp) {
        for (unsigned t = w0; t < w0 + 32 && t < nthreads; ++t) s.fibers[t].wait = Wait::kNone;
        released = true;
      }
    }
    if (released) continue;
    bool all_block = true;
    for (const Fiber& f : s.fibers) {
      if (f.done) continue;
      any_live = true;
      if (f.wait != Wait::kBlock) all_block = false;
    }
    if (!any_live) return;
    if (!all_block) throw std::runtime_error("simt: deadlock (divergent barrier or shuffle)");
    for (Fiber& f : s.fibers) f.wait = Wait::kNone;
  }
}

// Launch a kernel over `grid` blocks of `block` threads, running blocks in `order` (a
// permutation of 0..grid-1; empty = ascending).
template <typename F>
void launch(unsigned grid, unsigned block, const std::vector<unsigned>& order, F&& kernel_call) {
  State& s = st();
  s.grid_dim = {grid, 1, 1};
  s.block_dim = {block, 1, 1};
  s.body = std::forward<F>(kernel_call);
  for (unsigned i = 0; i < grid; ++i) {
    s.block_idx = {order.empty() ? i : order[i], 0, 0};
    run_block(block);
  }
}

template <typename T>
T shfl(T v, unsigned src_lane) {
  State& s = st();
  const unsigned tid = s.cur->tid, base = tid - tid % 32;
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a wide type");
  std::memcpy(&s.slots[tid], &v, sizeof(T));
  yield(Wait::kWarp);
  T r;
  std::memcpy(&r, &s.slots[base + (src_lane % 32)], sizeof(T));
  yield(Wait::kWarp);
  return r;
}

}  // namespace simt

#define threadIdx (simt::Idx{simt::st().cur->tid, 0, 0})
#define blockIdx (simt::st().block_idx)
#define gridDim (simt::st().grid_dim)
#define blockDim (simt::st().block_dim)

inline void __syncthreads() { simt::yield(simt::Wait::kBlock); }
inline void __threadfence() {}

template <typename T>
T __shfl_xor_sync(unsigned, T v, int lane_mask) {
  return simt::shfl(v, (simt::st().cur->tid % 32) ^ static_cast<unsigned>(lane_mask));
}

template <typename T>
T __shfl_sync(unsigned, T v, int src_lane) {
  return simt::shfl(v, static_cast<unsigned>(src_lane));
}

inline unsigned atomicAdd(unsigned* p, unsigned v) {  // fibers never preempt each other
  const unsigned old = *p;
  *p = old + v;
  return old;
}

template <typename T>
T __ldcg(const T* p) {
  return *p;
}
