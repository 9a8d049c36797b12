// CUDA kernels of aal_k8s::fused_heads, kept free of torch headers so that the exact same source
// can also be compiled for the CPU SIMT simulator in tests/cuda_sim (this project's CI has no GPU;
// the simulator runs these kernels thread by thread and checks them against the maths).
// Host-side launch code: fused_heads.cu.
//
// Launch plan (everything on the current stream, no host synchronisation, so the ops can be
// captured in a CUDA graph; workspaces come from the caching allocator):
//   forward : one zero-fill of a 4-byte semaphore + ONE kernel. Each warp computes one row's
//             logits for up to 32 heads at a time (lanes split D, then a warp "transpose
//             reduction" leaves head j's dot product in lane j), applies the BCE terms, and the
//             block writes per-block partial loss/count sums. The last block to finish (found
//             through the semaphore) adds the partials in block order.
//   backward: one zero-fill of the per-tile semaphores + ONE kernel with two kinds of blocks:
//             row blocks compute dh = dzf W (a warp per row, head coefficients broadcast with
//             shuffles); tile blocks compute split-batch partials of dW = dzp^T h and db over a
//             fixed number of batch splits, and the last split of each tile adds them in order.
// Determinism: every sum has a fixed shape that depends only on (B, K, D): fixed row/split
// assignment, fixed shuffle trees, partials added in index order. The semaphore atomics only
// decide WHICH block performs the final (ordered) sum, never the order of additions.

#pragma once

#include <cstdint>

#include "../fused_heads_math.h"

namespace aal_k8s {
namespace cuda {

constexpr int kWarp = 32;
constexpr int kThreads = 256;                 // 8 warps per block, both kernels
constexpr int kWarps = kThreads / kWarp;
constexpr int kTileRows = 32;                 // dW tile: 32 batch rows staged per step,
constexpr int kTileHeads = 32;                //          32 heads x
constexpr int kTileCols = 128;                //          128 columns per block
constexpr int64_t kRowsPerSplit = 128;        // batch rows per dW split (before the cap)
// Grid caps. Overridable only so the CPU simulator can reach the grid-stride and multi-chunk
// paths with small, quickly simulated problems.
#ifndef AAL_CUDA_MAX_ROW_BLOCKS
#define AAL_CUDA_MAX_ROW_BLOCKS 1024
#endif
#ifndef AAL_CUDA_MAX_SPLITS
#define AAL_CUDA_MAX_SPLITS 64
#endif
constexpr int64_t kMaxRowBlocks = AAL_CUDA_MAX_ROW_BLOCKS;
constexpr int64_t kMaxSplits = AAL_CUDA_MAX_SPLITS;
constexpr unsigned kFull = 0xffffffffu;

__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launch geometry; a function of (B, K, D) only, which is what makes the reductions' shapes (and
// so the results) independent of the GPU model.
struct ForwardGeometry {
  int64_t grid;  // row blocks (B > 0)
};

inline ForwardGeometry forward_geometry(int64_t B) {
  const int64_t g = ceil_div(B, kWarps);
  return {g < kMaxRowBlocks ? g : kMaxRowBlocks};
}

struct BackwardGeometry {
  int64_t row_blocks, n_splits, rows_per_split, n_col_tiles, n_head_tiles;
  int64_t n_tiles() const { return n_head_tiles * n_col_tiles; }
  int64_t grid() const { return row_blocks + n_splits * n_tiles(); }
};

inline BackwardGeometry backward_geometry(int64_t B, int64_t K, int64_t D) {
  BackwardGeometry g;
  g.row_blocks = ceil_div(B, kWarps);
  if (g.row_blocks > kMaxRowBlocks) g.row_blocks = kMaxRowBlocks;
  g.n_splits = ceil_div(B, kRowsPerSplit);
  g.n_splits = g.n_splits < 1 ? 1 : (g.n_splits > kMaxSplits ? kMaxSplits : g.n_splits);
  g.rows_per_split = ceil_div(B, g.n_splits);
  if (g.rows_per_split < 1) g.rows_per_split = 1;
  g.n_col_tiles = ceil_div(D, kTileCols);
  if (g.n_col_tiles < 1) g.n_col_tiles = 1;  // one column tile even for D = 0: it computes db
  g.n_head_tiles = ceil_div(K, kTileHeads);
  return g;
}


// Sums acc[j] over the 32 lanes for all 32 j at once; afterwards lane j holds the total for j.
// 31 shuffles instead of 32 x 5, and a fixed addition tree.
template <typename T>
__device__ __forceinline__ T warp_transpose_reduce(T (&acc)[kWarp], int lane) {
#pragma unroll
  for (int o = kWarp / 2; o >= 1; o >>= 1) {
    const bool upper = (lane & o) != 0;
#pragma unroll
    for (int j = 0; j < o; ++j) {
      const T send = upper ? acc[j] : acc[j + o];
      const T keep = upper ? acc[j + o] : acc[j];
      acc[j] = keep + __shfl_xor_sync(kFull, send, o);
    }
  }
  return acc[0];
}

// ---------------------------------------------------------------------------------------------
// Forward

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
fused_heads_forward_kernel(const scalar_t* __restrict__ h, int64_t ldh,
                           const scalar_t* __restrict__ w, int64_t ldw,
                           const scalar_t* __restrict__ bias, const acc_t* __restrict__ y,
                           const acc_t* __restrict__ m, int64_t B, int64_t K, int64_t D,
                           scalar_t* __restrict__ logits, acc_t* __restrict__ resid,
                           acc_t* __restrict__ partial,  // [gridDim.x, 2, K]
                           unsigned int* __restrict__ semaphore, acc_t* __restrict__ loss,
                           acc_t* __restrict__ count) {
  __shared__ acc_t s_part[kWarps][2][kWarp];
  __shared__ bool s_is_last;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t row_step = static_cast<int64_t>(gridDim.x) * kWarps;

  for (int64_t kb = 0; kb < K; kb += kWarp) {
    const int nk = static_cast<int>(imin(kWarp, K - kb));
    acc_t loss_acc = acc_t(0), count_acc = acc_t(0);
    for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + warp; b < B; b += row_step) {
      acc_t acc[kWarp];
#pragma unroll
      for (int j = 0; j < kWarp; ++j) acc[j] = acc_t(0);
      const scalar_t* hr = h + b * ldh;
      for (int64_t d = lane; d < D; d += kWarp) {
        const acc_t hv = static_cast<acc_t>(hr[d]);
#pragma unroll
        for (int j = 0; j < kWarp; ++j) {
          if (j < nk) acc[j] += hv * static_cast<acc_t>(w[(kb + j) * ldw + d]);
        }
      }
      const acc_t dot = warp_transpose_reduce(acc, lane);
      if (lane < nk) {
        const int64_t k = kb + lane;
        const int64_t i = b * K + k;
        const acc_t z = dot + static_cast<acc_t>(bias[k]);
        const acc_t mi = m ? m[i] : acc_t(1);
        acc_t l, sig_minus_y;
        bce_with_logits(z, y[i], l, sig_minus_y);
        logits[i] = static_cast<scalar_t>(z);
        // select, not multiply: 0 * NaN would let a NaN in a masked-out label or row through
        resid[i] = mi != acc_t(0) ? sig_minus_y * mi : acc_t(0);
        if (mi != acc_t(0)) loss_acc += l * mi;
        count_acc += mi;
      }
    }
    s_part[warp][0][lane] = loss_acc;
    s_part[warp][1][lane] = count_acc;
    __syncthreads();
    if (threadIdx.x < 2 * kWarp) {
      const int which = threadIdx.x / kWarp, l = threadIdx.x % kWarp;
      acc_t s = acc_t(0);
#pragma unroll
      for (int v = 0; v < kWarps; ++v) s += s_part[v][which][l];
      if (l < nk) partial[(static_cast<int64_t>(blockIdx.x) * 2 + which) * K + kb + l] = s;
    }
    __syncthreads();
  }

  // Last block adds the per-block partials in block order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_is_last = atomicAdd(semaphore, 1u) == gridDim.x - 1;
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();
  // 256 threads = 4 groups x {loss, count} x 32 heads; group g sums blocks g, g+4, ...
  constexpr int kGroups = kThreads / (2 * kWarp);
  __shared__ acc_t s_red[kGroups][2][kWarp];
  const int g = threadIdx.x / (2 * kWarp);
  const int which = (threadIdx.x / kWarp) % 2;
  const int l = threadIdx.x % kWarp;
  for (int64_t kb = 0; kb < K; kb += kWarp) {
    const int64_t k = kb + l;
    acc_t s = acc_t(0);
    if (k < K) {
      for (int64_t blk = g; blk < gridDim.x; blk += kGroups) s += __ldcg(&partial[(blk * 2 + which) * K + k]);
    }
    s_red[g][which][l] = s;
    __syncthreads();
    if (threadIdx.x < kWarp && kb + threadIdx.x < K) {
      acc_t tot_loss = acc_t(0), tot_count = acc_t(0);
#pragma unroll
      for (int gg = 0; gg < kGroups; ++gg) {
        tot_loss += s_red[gg][0][threadIdx.x];
        tot_count += s_red[gg][1][threadIdx.x];
      }
      loss[kb + threadIdx.x] = tot_loss / (tot_count > acc_t(1) ? tot_count : acc_t(1));
      count[kb + threadIdx.x] = tot_count;
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Backward

template <typename acc_t>
struct Coeffs {
  const acc_t* resid;   // [B, K]
  const acc_t* gl;      // [B, K] or nullptr
  const acc_t* g;       // [K] with stride gs, or nullptr (no gradient on the loss)
  int64_t gs;
  const acc_t* loss_w;  // [K]
  const acc_t* feat_c;  // [K]
  const acc_t* count;   // [K]
  int64_t K;

  // dzp (for_features = false) or dzf (true) at (b, k).
  __device__ __forceinline__ acc_t dz(int64_t b, int64_t k, bool for_features) const {
    acc_t v = acc_t(0);
    if (g) {
      const acc_t n = count[k];
      const acc_t scale = g[k * gs] * (for_features ? feat_c[k] : loss_w[k]) /
                          (n > acc_t(1) ? n : acc_t(1));
      v = resid[b * K + k] * scale;
    }
    if (gl) v += gl[b * K + k];
    return v;
  }
};

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
fused_heads_backward_kernel(Coeffs<acc_t> cf, const scalar_t* __restrict__ h, int64_t ldh,
                            const scalar_t* __restrict__ w, int64_t ldw, int64_t B, int64_t K,
                            int64_t D, int64_t row_blocks, int64_t n_splits, int64_t rows_per_split,
                            int64_t n_col_tiles, scalar_t* __restrict__ dh,
                            scalar_t* __restrict__ dW, scalar_t* __restrict__ db,
                            acc_t* __restrict__ ws_dw,  // [n_splits, K, D]
                            acc_t* __restrict__ ws_db,  // [n_splits, K]
                            unsigned int* __restrict__ semaphores) {
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;

  if (static_cast<int64_t>(blockIdx.x) < row_blocks) {
    // ---- dh[b, :] = sum_k dzf[b, k] W[k, :], k ascending; one warp per row.
    constexpr int kPerLane = 4;  // columns per lane per pass: 128-column passes
    const int64_t row_step = row_blocks * kWarps;
    for (int64_t b = static_cast<int64_t>(blockIdx.x) * kWarps + warp; b < B; b += row_step) {
      for (int64_t d0 = 0; d0 < D; d0 += kWarp * kPerLane) {
        acc_t acc[kPerLane];
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) acc[j] = acc_t(0);
        for (int64_t kb = 0; kb < K; kb += kWarp) {
          const int nk = static_cast<int>(imin(kWarp, K - kb));
          const acc_t mine = lane < nk ? cf.dz(b, kb + lane, true) : acc_t(0);
          for (int kk = 0; kk < nk; ++kk) {
            const acc_t s = __shfl_sync(kFull, mine, kk);
            const scalar_t* wr = w + (kb + kk) * ldw;
#pragma unroll
            for (int j = 0; j < kPerLane; ++j) {
              const int64_t d = d0 + lane + j * kWarp;
              if (d < D) acc[j] += s * static_cast<acc_t>(wr[d]);
            }
          }
        }
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int64_t d = d0 + lane + j * kWarp;
          if (d < D) dh[b * D + d] = static_cast<scalar_t>(acc[j]);
        }
      }
    }
    return;
  }

  // ---- dW / db tiles: block = (split, head tile, column tile).
  __shared__ acc_t s_h[kTileRows][kTileCols];
  __shared__ acc_t s_p[kTileRows][kTileHeads + 1];
  __shared__ bool s_is_last;
  const int64_t t = static_cast<int64_t>(blockIdx.x) - row_blocks;
  const int64_t split = t % n_splits;
  const int64_t tile = t / n_splits;
  const int64_t ct = tile % n_col_tiles;
  const int64_t kt = tile / n_col_tiles;
  const int64_t k0 = kt * kTileHeads, c0 = ct * kTileCols;
  const int64_t b_begin = imin(B, split * rows_per_split);
  const int64_t b_end = imin(B, b_begin + rows_per_split);
  const int tx = threadIdx.x % kWarp;  // columns c0 + tx + 32 j
  const int ty = threadIdx.x / kWarp;  // heads   k0 + ty + 8 i
  constexpr int kHeadsPerThread = kTileHeads / kWarps;  // 4
  constexpr int kColsPerThread = kTileCols / kWarp;     // 4
  acc_t acc[kHeadsPerThread][kColsPerThread];
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) acc[i][j] = acc_t(0);
  acc_t db_acc = acc_t(0);

  for (int64_t r0 = b_begin; r0 < b_end; r0 += kTileRows) {
    // Stage 32 rows of h[:, c0:c0+128] and of dzp[:, k0:k0+32]; out-of-range entries are 0 so
    // they add nothing (and never NaN * 0 from unrelated memory).
    for (int idx = threadIdx.x; idx < kTileRows * kTileCols; idx += kThreads) {
      const int r = idx / kTileCols, c = idx % kTileCols;
      const int64_t b = r0 + r, d = c0 + c;
      s_h[r][c] = (b < b_end && d < D) ? static_cast<acc_t>(h[b * ldh + d]) : acc_t(0);
    }
    for (int idx = threadIdx.x; idx < kTileRows * kTileHeads; idx += kThreads) {
      const int r = idx / kTileHeads, c = idx % kTileHeads;
      const int64_t b = r0 + r, k = k0 + c;
      s_p[r][c] = (b < b_end && k < K) ? cf.dz(b, k, false) : acc_t(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int r = 0; r < kTileRows; ++r) {
#pragma unroll
      for (int i = 0; i < kHeadsPerThread; ++i) {
        const acc_t p = s_p[r][ty + kWarps * i];
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) acc[i][j] += p * s_h[r][tx + kWarp * j];
      }
    }
    if (ct == 0 && threadIdx.x < kTileHeads) {
      for (int r = 0; r < kTileRows; ++r) db_acc += s_p[r][threadIdx.x];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) {
    const int64_t k = k0 + ty + kWarps * i;
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t d = c0 + tx + kWarp * j;
      if (k < K && d < D) ws_dw[(split * K + k) * D + d] = acc[i][j];
    }
  }
  if (ct == 0 && threadIdx.x < kTileHeads && k0 + threadIdx.x < K)
    ws_db[split * K + k0 + threadIdx.x] = db_acc;

  // The last split of this tile adds all splits in split order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) s_is_last = atomicAdd(&semaphores[tile], 1u) == n_splits - 1;
  __syncthreads();
  if (!s_is_last) return;
  __threadfence();
#pragma unroll
  for (int i = 0; i < kHeadsPerThread; ++i) {
    const int64_t k = k0 + ty + kWarps * i;
#pragma unroll
    for (int j = 0; j < kColsPerThread; ++j) {
      const int64_t d = c0 + tx + kWarp * j;
      if (k < K && d < D) {
        acc_t s = acc_t(0);
        for (int64_t sp = 0; sp < n_splits; ++sp) s += __ldcg(&ws_dw[(sp * K + k) * D + d]);
        dW[k * D + d] = static_cast<scalar_t>(s);
      }
    }
  }
  if (ct == 0 && threadIdx.x < kTileHeads && k0 + threadIdx.x < K) {
    acc_t s = acc_t(0);
    for (int64_t sp = 0; sp < n_splits; ++sp) s += __ldcg(&ws_db[sp * K + k0 + threadIdx.x]);
    db[k0 + threadIdx.x] = static_cast<scalar_t>(s);
  }
}

}  // namespace cuda
}  // namespace aal_k8s
