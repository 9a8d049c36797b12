// aal_k8s::fused_heads — K linear heads + per-head BCE-with-logits + per-head gradient reversal,
// as one forward and one backward operator.
//
// This translation unit holds the operator schemas, the CPU kernels, the autocast rule and the
// Python module stub (aal_k8s._C). The CUDA kernels live in cuda/fused_heads.cu, built as a
// separate extension (aal_k8s._C_cuda) that only adds a CUDA implementation to these schemas.
//
// Maths (see aal_k8s/heads.py for the contract):
//   z[b,k]   = h[b] . W[k] + bias[k]
//   e[b,k]   = (sigmoid(z[b,k]) - y[b,k]) * m[b,k]            ("residual", saved for backward)
//   n[k]     = sum_b m[b,k]                                   ("count")
//   loss[k]  = sum_b m[b,k] * bce(z[b,k], y[b,k]) / max(n[k], 1)
// where m[b,k] == 0 the residual and loss terms are selected as 0, not multiplied by 0, so a NaN
// or inf in a masked-out label or row (0 * NaN = NaN) cannot reach the loss or the residual.
// Backward with upstream g[k] (on loss) and G[b,k] (on logits):
//   dzp[b,k] = e[b,k] * g[k] * w[k] / max(n[k],1) + G[b,k]    -> dW = dzp^T h, db = sum_b dzp
//   dzf[b,k] = e[b,k] * g[k] * c[k] / max(n[k],1) + G[b,k]    -> dh = dzf W
//
// CPU strategy. Every output element is produced by exactly one task with a fixed summation
// order, so results are bitwise reproducible run to run and independent of the thread count
// (they do depend on the ISA path, e.g. FMA or not):
//   forward  : one parallel region over fixed chunks of kRowChunk rows; each chunk computes its
//              logits with register-tiled dot products, the element-wise BCE terms (vectorised
//              exp/log1p), and per-chunk partial sums of loss and count; the partials are then
//              added in chunk order.
//   backward : one parallel region of independent tasks: row chunks compute dzf and
//              dh = dzf W (register-tiled rank-1 updates); fixed 64-column blocks of D compute
//              dW[:, block] = dzp^T h summing over b in ascending order; one task sums db.
// No temporary of the size of h is made: h is read in place (any row pitch; float16/bfloat16
// rows are widened block by block inside the tasks) and dh is written in h's dtype.
// Inner loops use GCC/Clang vector extensions, compiled once per ISA (AVX-512, AVX2+FMA and the
// baseline) through target attributes and picked at run time with torch's own CPU capability,
// so the .so runs on any x86-64 and honours ATEN_CPU_CAPABILITY.

#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/Version.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fused_heads.h"
#include "fused_heads_math.h"

namespace aal_k8s {
namespace {

using at::Tensor;

// AAL_K8S_SCALAR_ONLY builds the plain-loop kernels (as for compilers without GCC vector
// extensions or __builtin_shufflevector); it exists to compile-check that path.
#if !defined(AAL_K8S_SCALAR_ONLY) && \
    (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12))  // __builtin_shufflevector
#define AAL_INLINE inline __attribute__((always_inline))
#define AAL_HAVE_VECTOR_EXT 1
#else
#define AAL_INLINE inline
#define AAL_HAVE_VECTOR_EXT 0
#endif

#if AAL_HAVE_VECTOR_EXT && defined(__x86_64__)
#define AAL_X86_DISPATCH 1
#define AAL_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")))
#define AAL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define AAL_X86_DISPATCH 0
#endif

// Columns of D per backward phase-B task. Fixed for the same reason as kRowChunk.
constexpr int64_t kColBlock = 64;

// Multiply-adds below which a thread is not worth waking (a parallel region costs a few
// microseconds, and far more when the cores are shared). Only the grouping of tasks onto threads
// depends on it, never the results.
constexpr int64_t kMinParallelWork = int64_t{1} << 18;

// parallel_for grain (tasks per thread at least) for tasks of about `work_per_task` multiply-adds.
inline int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, kMinParallelWork / std::max<int64_t>(work_per_task, 1));
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels. Written once over a vector width in bytes (VB) and tile shape; the tile shape is
// chosen per ISA so the accumulators fit in registers (32 zmm for AVX-512, 16 ymm/xmm otherwise).

#if AAL_HAVE_VECTOR_EXT
template <typename T, int VB>
struct Simd {
  typedef T V __attribute__((vector_size(VB)));
  static constexpr int L = VB / static_cast<int>(sizeof(T));
};

template <typename V, typename T>
AAL_INLINE V loadu(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));  // an unaligned vector load; rows have arbitrary pitch
  return v;
}

template <typename V, typename T>
AAL_INLINE void storeu(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

// Lane sum as a halving tree (fixed order, so it is part of the deterministic summation order).
template <typename T, int VB, std::size_t... I>
AAL_INLINE typename Simd<T, VB / 2>::V lo_half(const typename Simd<T, VB>::V& v,
                                               std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, I...);
}

template <typename T, int VB, std::size_t... I>
AAL_INLINE typename Simd<T, VB / 2>::V hi_half(const typename Simd<T, VB>::V& v,
                                               std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, (I + Simd<T, VB>::L / 2)...);
}

template <typename T, int VB>
AAL_INLINE T hsum(const typename Simd<T, VB>::V& v) {
  if constexpr (Simd<T, VB>::L == 1) {
    return v[0];
  } else {
    constexpr int H = Simd<T, VB>::L / 2;
    return hsum<T, VB / 2>(lo_half<T, VB>(v, std::make_index_sequence<H>{}) +
                           hi_half<T, VB>(v, std::make_index_sequence<H>{}));
  }
}

// out[r, c] = h[r] . w[c] + bias[c] for R rows and C heads. Each (r, c) pair accumulates lane j over
// d = j (mod L) in ascending order, then the scalar tail, whatever tile it sits in.
template <typename T, int VB, int R, int C>
AAL_INLINE void dot_tile(const T* __restrict h, int64_t ldh, const T* __restrict w, int64_t ldw,
                         const T* __restrict bias, int64_t D, T* __restrict out, int64_t ldo) {
  using S = Simd<T, VB>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) acc[r][c] = V{};
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    V hv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) hv[r] = loadu<V>(h + r * ldh + d);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const V wv = loadu<V>(w + c * ldw + d);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][c] += hv[r] * wv;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      T s = hsum<T, VB>(acc[r][c]);
      for (int64_t t = d; t < D; ++t) s += h[r * ldh + t] * w[c * ldw + t];
      out[r * ldo + c] = s + bias[c];
    }
  }
}

// out[r, d0 : d0 + NB*L] = sum_k dz[r, k] * w[k, d0 : ...] for R rows, k ascending.
template <typename T, int VB, int R, int NB>
AAL_INLINE void axpy_rows_tile(const T* __restrict dz, int64_t K, const T* __restrict w,
                               int64_t ldw, int64_t d0, T* __restrict out, int64_t ldo) {
  using S = Simd<T, VB>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[R][NB];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[r][j] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V wv[NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) wv[j] = loadu<V>(w + k * ldw + d0 + j * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T s = dz[r * K + k];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) acc[r][j] += wv[j] * s;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) storeu(out + r * ldo + d0 + j * L, acc[r][j]);
}

// dW[c, 0 : NB*L] (+)= sum_{r < rows} dzp[r, c] * h[r, 0 : NB*L] for C heads, r ascending.
// Continuing from the stored partial (accumulate) is exact, so splitting the batch into blocks
// does not change the summation order. Pointers are at the tile's first row/head and column.
template <typename T, int VB, int C, int NB>
AAL_INLINE void outer_cols_tile(const T* __restrict h, int64_t ldh, const T* __restrict dzp,
                                int64_t ldz, int64_t rows, T* __restrict dW, int64_t ldw,
                                bool accumulate) {
  using S = Simd<T, VB>;
  using V = typename S::V;
  constexpr int L = S::L;
  V acc[C][NB];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) acc[c][j] = accumulate ? loadu<V>(dW + c * ldw + j * L) : V{};
  for (int64_t r = 0; r < rows; ++r) {
    V hv[NB];
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) hv[j] = loadu<V>(h + r * ldh + j * L);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const T s = dzp[r * ldz + c];
#pragma GCC unroll 8
      for (int j = 0; j < NB; ++j) acc[c][j] += hv[j] * s;
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int j = 0; j < NB; ++j) storeu(dW + c * ldw + j * L, acc[c][j]);
}
#endif  // AAL_HAVE_VECTOR_EXT

// ---------------------------------------------------------------------------------------------
// Task bodies: one forward row chunk, one backward row chunk, one backward column block.

// Features are read in their own dtype: float/double in place, and float16/bfloat16 widened to
// float block by block inside the tasks (no [B, D] float copy). dh is written back the same way.
enum class HKind { kNative, kBFloat16, kHalf };

// The h block [r0, r0 + rows) x [c0, c0 + cols) as T with pitch ldd (float16/bfloat16 widened).
template <typename T>
AAL_INLINE void load_block(const void* src, HKind kind, int64_t ld, int64_t r0, int64_t rows,
                           int64_t c0, int64_t cols, T* __restrict dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = (r0 + r) * ld + c0;
    T* __restrict o = dst + r * ldd;
    if (kind == HKind::kBFloat16) {
      const c10::BFloat16* __restrict x = static_cast<const c10::BFloat16*>(src) + off;
      for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<T>(static_cast<float>(x[c]));
    } else if (kind == HKind::kHalf) {
      const c10::Half* __restrict x = static_cast<const c10::Half*>(src) + off;
      for (int64_t c = 0; c < cols; ++c) o[c] = static_cast<T>(static_cast<float>(x[c]));
    } else {
      std::memcpy(o, static_cast<const T*>(src) + off, cols * sizeof(T));
    }
  }
}

// Rows [r0, r0 + rows) of a [*, D] T block (pitch lds) into dst of the given kind (pitch D).
template <typename T>
AAL_INLINE void store_rows(const T* __restrict src, int64_t lds, int64_t r0, int64_t rows,
                           int64_t D, void* dst, HKind kind) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* __restrict x = src + r * lds;
    const int64_t off = (r0 + r) * D;
    if (kind == HKind::kBFloat16) {
      c10::BFloat16* __restrict o = static_cast<c10::BFloat16*>(dst) + off;
      for (int64_t c = 0; c < D; ++c) o[c] = c10::BFloat16(static_cast<float>(x[c]));
    } else if (kind == HKind::kHalf) {
      c10::Half* __restrict o = static_cast<c10::Half*>(dst) + off;
      for (int64_t c = 0; c < D; ++c) o[c] = c10::Half(static_cast<float>(x[c]));
    } else {
      std::memcpy(static_cast<T*>(dst) + off, x, D * sizeof(T));
    }
  }
}

// The chunk's rows of h as T: in place for T inputs, else widened into buf.
template <typename T>
AAL_INLINE const T* chunk_rows(const void* h, HKind kind, int64_t ldh, int64_t r0, int64_t rows,
                               int64_t D, std::unique_ptr<T[]>& buf, int64_t& ld) {
  if (kind == HKind::kNative) {
    ld = ldh;
    return static_cast<const T*>(h) + r0 * ldh;
  }
  buf.reset(new T[static_cast<size_t>(std::max<int64_t>(rows * D, 1))]);
  load_block(h, kind, ldh, r0, rows, 0, D, buf.get(), D);
  ld = D;
  return buf.get();
}

template <typename T>
struct FwdArgs {
  const void* h;  // [B, D] with row pitch ldh, of kind hkind
  HKind hkind;
  int64_t ldh;
  const T* w;
  int64_t ldw;
  const T* bias;  // [K]
  const T* y;     // [B, K] contiguous
  const T* m;     // [B, K] contiguous, or nullptr
  int64_t B, K, D;
  T* z;      // [B, K] out: logits
  T* resid;  // [B, K] out
  T* lterm;  // [B, K] scratch: masked per-element loss
  T* part;   // [n_chunks, 2, K] out: per-chunk loss sum and count
};

template <typename T>
struct BwdArgs {
  const void* h;  // [B, D] with row pitch ldh, of kind hkind
  HKind hkind;
  int64_t ldh;
  const T* w;
  int64_t ldw;
  const T* resid;  // [B, K]
  const T* gl;     // [B, K] upstream gradient on logits, or nullptr
  const T* sp;     // [K] g*w/n: scale of the residual for the head parameters
  const T* sf;     // [K] g*c/n: scale of the residual for the features
  int64_t B, K, D;
  T* dzf;  // [B, K] scratch, each row chunk written and read by one task
  void* dh;  // [B, D] out, contiguous, of kind hkind
  T* dW;   // [K, D] out, contiguous
  T* db;   // [K] out
};

// Scalar versions: the reference shape of every loop, used for double on non-GCC compilers and
// for the ragged edges of the vector kernels.
template <typename T>
AAL_INLINE T dot_scalar(const T* h, const T* w, int64_t D) {
  T s = T(0);
  for (int64_t d = 0; d < D; ++d) s += h[d] * w[d];
  return s;
}

// Per-element terms over a flat slice of the [B, K] arrays: the masked residual and the masked
// loss term. Scalar form (double, and compilers without vector extensions).
template <typename T>
AAL_INLINE void terms_scalar(const T* z, const T* y, const T* m, T* resid, T* lterm, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T loss, sig_minus_y;
    bce_with_logits(z[i], y[i], loss, sig_minus_y);
    const T mi = m ? m[i] : T(1);
    resid[i] = mi != T(0) ? sig_minus_y * mi : T(0);  // select: 0 * NaN would be NaN
    lterm[i] = mi != T(0) ? loss * mi : T(0);
  }
}

#if AAL_HAVE_VECTOR_EXT
// float vector maths for the BCE terms, so the element-wise part costs a few cycles per element
// instead of two libm calls. Only exp(-|z|) and log1p(e) for e in [0, 1] are needed.
template <int VB>
struct VecMath {
  typedef float F __attribute__((vector_size(VB)));
  typedef int32_t I __attribute__((vector_size(VB)));
  static constexpr int L = VB / 4;

  static AAL_INLINE F splat(float v) { return F{} + v; }

  // exp(x) for x <= 0 (Cephes expf: ~1 ulp). x is clamped at -87, where exp is ~1.6e-38, so the
  // result stays a normal float; the true value below that is < 1.2e-38 and only ever appears
  // inside log1p(e) ~ e and sigmoid ~ e, i.e. as an absolute error under 2e-38.
  static AAL_INLINE F exp_nonpos(F x) {
    x = x < splat(-87.0f) ? splat(-87.0f) : x;
    // Round x*log2(e) to the nearest integer n by adding 1.5*2^23: n then sits in the low
    // mantissa bits of t, which gives 2^n below without an int/float conversion.
    const F t = x * 1.44269504088896341f + 12582912.0f;
    const F nf = t - 12582912.0f;
    F r = x - nf * 0.693359375f;
    r = r + nf * 2.12194440e-4f;
    F p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const F y = p * (r * r) + r + 1.0f;
    const I n = (I)t - 0x4B400000;  // vector casts reinterpret bits; 0x4B400000 = 1.5*2^23
    return y * (F)((n + 127) << 23);  // 2^n, n in [-126, 0]
  }

  // log1p(e) for e in [0, 1] as 2 atanh(s), s = e / (2 + e) in [0, 1/3]: no cancellation for
  // tiny e, and the series (to s^15) is below float rounding at s = 1/3.
  static AAL_INLINE F log1p_unit(F e) {
    const F s = e / (e + 2.0f);
    const F s2 = s * s;
    F p = splat(1.0f / 15.0f);
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return (s + s) * p;
  }

  static AAL_INLINE void terms(F z, F y, F m, F& resid, F& lterm) {
    const F zero = F{};
    const F e = exp_nonpos(z < zero ? z : -z);
    const F inv = 1.0f / (e + 1.0f);
    const F sig = z >= zero ? inv : e * inv;
    const F loss = (z > zero ? z : zero) - z * y + log1p_unit(e);
    resid = m != zero ? (sig - y) * m : zero;  // select: 0 * NaN would be NaN
    lterm = m != zero ? loss * m : zero;
  }
};

template <int VB>
AAL_INLINE void terms_vec(const float* z, const float* y, const float* m, float* resid,
                          float* lterm, int64_t n) {
  using VM = VecMath<VB>;
  using F = typename VM::F;
  constexpr int L = VM::L;
  const F one = VM::splat(1.0f);
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    F r, l;
    VM::terms(loadu<F>(z + i), loadu<F>(y + i), m ? loadu<F>(m + i) : one, r, l);
    storeu(resid + i, r);
    storeu(lterm + i, l);
  }
  if (i < n) {  // ragged end through the same vector code, so every element sees the same maths
    const int64_t t = n - i;
    float zb[L] = {}, yb[L] = {}, mb[L] = {}, rb[L], lb[L];
    for (int64_t j = 0; j < t; ++j) {
      zb[j] = z[i + j];
      yb[j] = y[i + j];
      mb[j] = m ? m[i + j] : 1.0f;
    }
    F r, l;
    VM::terms(loadu<F>(zb), loadu<F>(yb), loadu<F>(mb), r, l);
    storeu(rb, r);
    storeu(lb, l);
    for (int64_t j = 0; j < t; ++j) {
      resid[i + j] = rb[j];
      lterm[i + j] = lb[j];
    }
  }
}
#endif  // AAL_HAVE_VECTOR_EXT

template <typename T, int VB>
AAL_INLINE void forward_terms(const FwdArgs<T>& a, int64_t chunk, int64_t r0, int64_t r1) {
  const int64_t K = a.K, i0 = r0 * K, n = (r1 - r0) * K;
  const T* m = a.m ? a.m + i0 : nullptr;
#if AAL_HAVE_VECTOR_EXT
  if constexpr (std::is_same_v<T, float>) {
    terms_vec<VB>(a.z + i0, a.y + i0, m, a.resid + i0, a.lterm + i0, n);
  } else {
    terms_scalar(a.z + i0, a.y + i0, m, a.resid + i0, a.lterm + i0, n);
  }
#else
  terms_scalar(a.z + i0, a.y + i0, m, a.resid + i0, a.lterm + i0, n);
#endif
  // Per-chunk sums over rows in ascending order.
  T* __restrict lsum = a.part + chunk * 2 * K;
  T* __restrict cnt = lsum + K;
  for (int64_t k = 0; k < K; ++k) lsum[k] = cnt[k] = T(0);
  for (int64_t b = r0; b < r1; ++b) {
    const T* __restrict lt = a.lterm + b * K;
    for (int64_t k = 0; k < K; ++k) lsum[k] += lt[k];
  }
  if (a.m) {
    for (int64_t b = r0; b < r1; ++b) {
      const T* __restrict mr = a.m + b * K;
      for (int64_t k = 0; k < K; ++k) cnt[k] += mr[k];
    }
  } else {
    for (int64_t k = 0; k < K; ++k) cnt[k] = static_cast<T>(r1 - r0);
  }
}

// d loss / d z scaled for the features (dzf) or for the head parameters (dzp), rows [r0, r1),
// written with row pitch K starting at out.
template <typename T>
AAL_INLINE void head_coeffs(const BwdArgs<T>& a, const T* scale, int64_t r0, int64_t r1, T* out) {
  const int64_t K = a.K;
  for (int64_t b = r0; b < r1; ++b) {
    const T* __restrict er = a.resid + b * K;
    T* __restrict o = out + (b - r0) * K;
    if (a.gl) {
      const T* __restrict g = a.gl + b * K;
      for (int64_t k = 0; k < K; ++k) o[k] = er[k] * scale[k] + g[k];
    } else {
      for (int64_t k = 0; k < K; ++k) o[k] = er[k] * scale[k];
    }
  }
}

// db[k] = sum_b dzp[b, k], b ascending.
template <typename T>
void backward_bias(const BwdArgs<T>& a) {
  const int64_t K = a.K;
  for (int64_t k = 0; k < K; ++k) a.db[k] = T(0);
  for (int64_t b = 0; b < a.B; ++b) {
    const T* __restrict er = a.resid + b * K;
    const T* __restrict g = a.gl ? a.gl + b * K : nullptr;
    for (int64_t k = 0; k < K; ++k) a.db[k] += er[k] * a.sp[k] + (g ? g[k] : T(0));
  }
}

// Tile shapes for one ISA: forward R x C dot tiles, dh rows x vectors, dW heads x vectors.
template <int VB_, int FR_, int FC_, int AR_, int ANB_, int OC_, int ONB_>
struct Tiles {
  static constexpr int VB = VB_, FR = FR_, FC = FC_, AR = AR_, ANB = ANB_, OC = OC_, ONB = ONB_;
};

#if AAL_HAVE_VECTOR_EXT
template <typename T, int VB, int R, int C>
AAL_INLINE void dot_row_tile_all_heads(const FwdArgs<T>& a, const T* h, int64_t ldh, int64_t r) {
  int64_t k = 0;
  for (; k + C <= a.K; k += C)
    dot_tile<T, VB, R, C>(h, ldh, a.w + k * a.ldw, a.ldw, a.bias + k, a.D, a.z + r * a.K + k, a.K);
  if constexpr (C > 2)
    for (; k + 2 <= a.K; k += 2)
      dot_tile<T, VB, R, 2>(h, ldh, a.w + k * a.ldw, a.ldw, a.bias + k, a.D, a.z + r * a.K + k,
                            a.K);
  for (; k < a.K; ++k)
    dot_tile<T, VB, R, 1>(h, ldh, a.w + k * a.ldw, a.ldw, a.bias + k, a.D, a.z + r * a.K + k, a.K);
}

template <typename T, typename Cfg>
AAL_INLINE void forward_chunk_impl(const FwdArgs<T>& a, int64_t chunk) {
  const int64_t r0 = chunk * kRowChunk, r1 = std::min(a.B, r0 + kRowChunk);
  std::unique_ptr<T[]> buf;
  int64_t ldh;
  const T* h = chunk_rows(a.h, a.hkind, a.ldh, r0, r1 - r0, a.D, buf, ldh);
  int64_t r = r0;
  for (; r + Cfg::FR <= r1; r += Cfg::FR)
    dot_row_tile_all_heads<T, Cfg::VB, Cfg::FR, Cfg::FC>(a, h + (r - r0) * ldh, ldh, r);
  for (; r < r1; ++r) dot_row_tile_all_heads<T, Cfg::VB, 1, Cfg::FC>(a, h + (r - r0) * ldh, ldh, r);
  forward_terms<T, Cfg::VB>(a, chunk, r0, r1);
}

// dh[r0:r1, d : d + NB*L] from the W strip wp = W[:, d : d + NB*L] (pitch ldwp).
// out[0 : rows, d : d + NB*L] (pitch ldo) for rows r0.. from the W strip wp = W[:, d : d + NB*L]
// (pitch ldwp).
template <typename T, int VB, int R, int NB>
AAL_INLINE void dh_block(const BwdArgs<T>& a, int64_t r0, int64_t rows, const T* wp,
                         int64_t ldwp, T* out, int64_t ldo, int64_t d) {
  const T* dz = a.dzf + r0 * a.K;
  int64_t r = 0;
  for (; r + R <= rows; r += R)
    axpy_rows_tile<T, VB, R, NB>(dz + r * a.K, a.K, wp, ldwp, 0, out + r * ldo + d, ldo);
  for (; r < rows; ++r)
    axpy_rows_tile<T, VB, 1, NB>(dz + r * a.K, a.K, wp, ldwp, 0, out + r * ldo + d, ldo);
}

template <typename T, typename Cfg>
AAL_INLINE void backward_rows_impl(const BwdArgs<T>& a, int64_t chunk) {
  constexpr int VB = Cfg::VB, R = Cfg::AR, NB = Cfg::ANB, L = Simd<T, VB>::L;
  constexpr int64_t W_COLS = NB * L;
  const int64_t r0 = chunk * kRowChunk, r1 = std::min(a.B, r0 + kRowChunk), rows = r1 - r0;
  head_coeffs(a, a.sf, r0, r1, a.dzf + r0 * a.K);
  // dh rows go straight to the output for T outputs, through a chunk buffer for 16-bit ones.
  std::unique_ptr<T[]> buf;
  T* out;
  if (a.hkind == HKind::kNative) {
    out = static_cast<T*>(a.dh) + r0 * a.D;
  } else {
    buf.reset(new T[static_cast<size_t>(std::max<int64_t>(rows * a.D, 1))]);
    out = buf.get();
  }
  // Column blocks outer, so the W[:, block] strip (K x NB*L) is reused from L1 by all row tiles.
  int64_t d = 0;
  for (; d + W_COLS <= a.D; d += W_COLS)
    dh_block<T, VB, R, NB>(a, r0, rows, a.w + d, a.ldw, out, a.D, d);
  for (; d + L <= a.D; d += L) dh_block<T, VB, R, 1>(a, r0, rows, a.w + d, a.ldw, out, a.D, d);
  for (; d < a.D; ++d) {
    for (int64_t r = 0; r < rows; ++r) {
      T s = T(0);
      for (int64_t k = 0; k < a.K; ++k) s += a.dzf[(r0 + r) * a.K + k] * a.w[k * a.ldw + d];
      out[r * a.D + d] = s;
    }
  }
  if (a.hkind != HKind::kNative) store_rows(out, a.D, r0, rows, a.D, a.dh, a.hkind);
}

// dW[k0 : k0 + C, d0 : d1] over `rows` batch rows, from block-local dzp (pitch K) and the h
// block hp (pitch ldhp, first element = h[b0, d0]).
template <typename T, int VB, int C, int NB>
AAL_INLINE void dw_heads(const BwdArgs<T>& a, const T* dzp, const T* hp, int64_t ldhp,
                         int64_t rows, bool accumulate, int64_t k0, int64_t d0, int64_t d1) {
  constexpr int L = Simd<T, VB>::L;
  const T* z = dzp + k0;
  T* out = a.dW + k0 * a.D;
  int64_t d = d0;
  for (; d + NB * L <= d1; d += NB * L)
    outer_cols_tile<T, VB, C, NB>(hp + (d - d0), ldhp, z, a.K, rows, out + d, a.D, accumulate);
  for (; d + L <= d1; d += L)
    outer_cols_tile<T, VB, C, 1>(hp + (d - d0), ldhp, z, a.K, rows, out + d, a.D, accumulate);
  for (; d < d1; ++d) {
    for (int c = 0; c < C; ++c) {
      T s = accumulate ? out[c * a.D + d] : T(0);
      for (int64_t r = 0; r < rows; ++r) s += z[r * a.K + c] * hp[r * ldhp + (d - d0)];
      out[c * a.D + d] = s;
    }
  }
}

template <typename T, typename Cfg>
AAL_INLINE void backward_cols_impl(const BwdArgs<T>& a, int64_t block) {
  const int64_t d0 = block * kColBlock, d1 = std::min(a.D, d0 + kColBlock);
  if (a.B == 0) {
    for (int64_t k = 0; k < a.K; ++k)
      for (int64_t d = d0; d < d1; ++d) a.dW[k * a.D + d] = T(0);
    return;
  }
  // Batch blocks outer; the h[b0:b1, d0:d1] block and the block's dzp stay in L1 across all
  // head tiles. Each column task recomputes dzp for its
  // rows (2 flops per element, against 2*64 per element in the tiles) so no task waits on another.
  constexpr int64_t kBatchBlock = 2 * kRowChunk;
  const int64_t nb = std::min(a.B, kBatchBlock);
  std::unique_ptr<T[]> buf(new T[static_cast<size_t>(nb * a.K + nb * kColBlock)]);
  T* dzp = buf.get();
  T* hp = dzp + nb * a.K;
  for (int64_t b0 = 0; b0 < a.B; b0 += kBatchBlock) {
    const int64_t b1 = std::min(a.B, b0 + kBatchBlock), rows = b1 - b0;
    const bool accumulate = b0 > 0;
    head_coeffs(a, a.sp, b0, b1, dzp);
    // Packing (and widening 16-bit h) into a dense block: rows of h are D elements apart, and
    // for the usual power-of-two D that stride maps a strip of rows onto a handful of L1 sets,
    // where they evict each other while the head tiles reuse them. For a single head tile
    // float inputs are read in place.
    const T* hb;
    int64_t ldhb;
    if (a.K > Cfg::OC || a.hkind != HKind::kNative) {
      load_block(a.h, a.hkind, a.ldh, b0, rows, d0, d1 - d0, hp, kColBlock);
      hb = hp;
      ldhb = kColBlock;
    } else {
      hb = static_cast<const T*>(a.h) + b0 * a.ldh + d0;
      ldhb = a.ldh;
    }
    int64_t k = 0;
    for (; k + Cfg::OC <= a.K; k += Cfg::OC)
      dw_heads<T, Cfg::VB, Cfg::OC, Cfg::ONB>(a, dzp, hb, ldhb, rows, accumulate, k, d0, d1);
    if constexpr (Cfg::OC > 2)
      for (; k + 2 <= a.K; k += 2)
        dw_heads<T, Cfg::VB, 2, Cfg::ONB>(a, dzp, hb, ldhb, rows, accumulate, k, d0, d1);
    for (; k < a.K; ++k)
      dw_heads<T, Cfg::VB, 1, Cfg::ONB>(a, dzp, hb, ldhb, rows, accumulate, k, d0, d1);
  }
}

// Per-ISA entry points. The target attribute must sit on a non-lambda function so that the
// always-inline kernels above are compiled for that ISA; the parallel_for lambdas only call these.
using Avx512Tiles = Tiles<64, 4, 4, 4, 4, 4, 4>;
using Avx2Tiles = Tiles<32, 4, 2, 2, 4, 2, 4>;
using BaseTiles = Tiles<16, 4, 2, 2, 4, 2, 4>;

#define AAL_DEFINE_ENTRY_POINTS(SUFFIX, ATTR, CFG)                                                \
  ATTR void forward_chunk_##SUFFIX(const FwdArgs<float>& a, int64_t i) {                          \
    forward_chunk_impl<float, CFG>(a, i);                                                         \
  }                                                                                               \
  ATTR void forward_chunk_##SUFFIX(const FwdArgs<double>& a, int64_t i) {                         \
    forward_chunk_impl<double, CFG>(a, i);                                                        \
  }                                                                                               \
  ATTR void backward_rows_##SUFFIX(const BwdArgs<float>& a, int64_t i) {                          \
    backward_rows_impl<float, CFG>(a, i);                                                         \
  }                                                                                               \
  ATTR void backward_rows_##SUFFIX(const BwdArgs<double>& a, int64_t i) {                         \
    backward_rows_impl<double, CFG>(a, i);                                                        \
  }                                                                                               \
  ATTR void backward_cols_##SUFFIX(const BwdArgs<float>& a, int64_t i) {                          \
    backward_cols_impl<float, CFG>(a, i);                                                         \
  }                                                                                               \
  ATTR void backward_cols_##SUFFIX(const BwdArgs<double>& a, int64_t i) {                         \
    backward_cols_impl<double, CFG>(a, i);                                                        \
  }

AAL_DEFINE_ENTRY_POINTS(base, , BaseTiles)
#if AAL_X86_DISPATCH
AAL_DEFINE_ENTRY_POINTS(avx2, AAL_TARGET_AVX2, Avx2Tiles)
AAL_DEFINE_ENTRY_POINTS(avx512, AAL_TARGET_AVX512, Avx512Tiles)
#endif

#else  // !AAL_HAVE_VECTOR_EXT: plain loops, left to the compiler's auto-vectoriser.

template <typename T>
void forward_chunk_base(const FwdArgs<T>& a, int64_t chunk) {
  const int64_t r0 = chunk * kRowChunk, r1 = std::min(a.B, r0 + kRowChunk);
  std::unique_ptr<T[]> buf;
  int64_t ldh;
  const T* h = chunk_rows(a.h, a.hkind, a.ldh, r0, r1 - r0, a.D, buf, ldh);
  for (int64_t b = r0; b < r1; ++b)
    for (int64_t k = 0; k < a.K; ++k)
      a.z[b * a.K + k] = dot_scalar(h + (b - r0) * ldh, a.w + k * a.ldw, a.D) + a.bias[k];
  forward_terms<T, 16>(a, chunk, r0, r1);
}

template <typename T>
void backward_rows_base(const BwdArgs<T>& a, int64_t chunk) {
  const int64_t r0 = chunk * kRowChunk, r1 = std::min(a.B, r0 + kRowChunk);
  head_coeffs(a, a.sf, r0, r1, a.dzf + r0 * a.K);
  std::unique_ptr<T[]> buf(new T[static_cast<size_t>(std::max<int64_t>(a.D, 1))]);
  for (int64_t b = r0; b < r1; ++b) {
    T* out = a.hkind == HKind::kNative ? static_cast<T*>(a.dh) + b * a.D : buf.get();
    for (int64_t d = 0; d < a.D; ++d) out[d] = T(0);
    for (int64_t k = 0; k < a.K; ++k) {
      const T s = a.dzf[b * a.K + k];
      const T* wr = a.w + k * a.ldw;
      for (int64_t d = 0; d < a.D; ++d) out[d] += s * wr[d];
    }
    if (a.hkind != HKind::kNative) store_rows(out, a.D, b, 1, a.D, a.dh, a.hkind);
  }
}

template <typename T>
void backward_cols_base(const BwdArgs<T>& a, int64_t block) {
  const int64_t d0 = block * kColBlock, d1 = std::min(a.D, d0 + kColBlock);
  T hr[kColBlock];
  for (int64_t k = 0; k < a.K; ++k) {
    T* out = a.dW + k * a.D;
    for (int64_t d = d0; d < d1; ++d) out[d] = T(0);
    for (int64_t b = 0; b < a.B; ++b) {
      const T s = a.resid[b * a.K + k] * a.sp[k] + (a.gl ? a.gl[b * a.K + k] : T(0));
      load_block(a.h, a.hkind, a.ldh, b, 1, d0, d1 - d0, hr, kColBlock);
      for (int64_t d = d0; d < d1; ++d) out[d] += s * hr[d - d0];
    }
  }
}
#endif  // AAL_HAVE_VECTOR_EXT

#if AAL_X86_DISPATCH
enum class Isa { kBase, kAvx2, kAvx512 };

// Follow torch's own choice (which honours ATEN_CPU_CAPABILITY), double-checked against the
// CPU's feature bits in case torch was built to allow a capability this machine lacks.
Isa cpu_isa() {
  static const Isa isa = [] {
    // "DEFAULT" / "AVX2" / "AVX512" (the string API is the one libtorch exports).
    const std::string cap = at::get_cpu_capability();
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512bw");
    if (cap.find("AVX512") != std::string::npos && avx512) return Isa::kAvx512;
    if (cap.find("AVX") != std::string::npos && avx2) return Isa::kAvx2;
    return Isa::kBase;
  }();
  return isa;
}
#endif

template <typename T>
void forward_chunk(const FwdArgs<T>& a, int64_t i) {
#if AAL_X86_DISPATCH
  switch (cpu_isa()) {
    case Isa::kAvx512: return forward_chunk_avx512(a, i);
    case Isa::kAvx2: return forward_chunk_avx2(a, i);
    default: break;
  }
#endif
  forward_chunk_base(a, i);
}

template <typename T>
void backward_rows(const BwdArgs<T>& a, int64_t i) {
#if AAL_X86_DISPATCH
  switch (cpu_isa()) {
    case Isa::kAvx512: return backward_rows_avx512(a, i);
    case Isa::kAvx2: return backward_rows_avx2(a, i);
    default: break;
  }
#endif
  backward_rows_base(a, i);
}

template <typename T>
void backward_cols(const BwdArgs<T>& a, int64_t i) {
#if AAL_X86_DISPATCH
  switch (cpu_isa()) {
    case Isa::kAvx512: return backward_cols_avx512(a, i);
    case Isa::kAvx2: return backward_cols_avx2(a, i);
    default: break;
  }
#endif
  backward_cols_base(a, i);
}

// Converts to the accumulation dtype and the layout the kernels read; a no-op (no copy) for the
// common case of float32 tensors with unit inner stride.
Tensor as_acc_rows(const Tensor& t, at::ScalarType acc) {
  return rows_contiguous(t.scalar_type() == acc ? t : t.to(acc));
}

Tensor as_acc_contig(const Tensor& t, at::ScalarType acc) {
  if (t.scalar_type() == acc && t.is_contiguous()) return t;  // no dispatcher round trip
  return t.to(acc).contiguous();
}

HKind h_kind(at::ScalarType st) {
  return st == at::kBFloat16 ? HKind::kBFloat16 : st == at::kHalf ? HKind::kHalf : HKind::kNative;
}

// ---------------------------------------------------------------------------------------------
// CPU operator implementations.

template <typename T>
void forward_cpu_typed(const Tensor& hc, const Tensor& wc, const Tensor& bc, const Tensor& yc,
                       const std::optional<Tensor>& mc, Tensor& z, Tensor& resid, Tensor& loss,
                       Tensor& count) {
  const int64_t B = hc.size(0), D = hc.size(1), K = wc.size(0);
  const int64_t n_chunks = (B + kRowChunk - 1) / kRowChunk;
  // One scratch block: per-element loss terms, then the per-chunk partial sums.
  // Default-initialised (not zeroed): every element is written before it is read.
  std::unique_ptr<T[]> scratch(new T[static_cast<size_t>(B * K + n_chunks * 2 * K)]);
  T* part = scratch.get() + B * K;
  FwdArgs<T> a{hc.data_ptr(),
               h_kind(hc.scalar_type()),
               row_pitch(hc),
               wc.data_ptr<T>(),
               row_pitch(wc),
               bc.data_ptr<T>(),
               yc.data_ptr<T>(),
               mc ? mc->data_ptr<T>() : nullptr,
               B,
               K,
               D,
               z.data_ptr<T>(),
               resid.data_ptr<T>(),
               scratch.get(),
               part};
  at::parallel_for(0, n_chunks, grain_for(kRowChunk * K * std::max<int64_t>(D, 8)),
                   [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) forward_chunk(a, c);
  });
  T* lp = loss.data_ptr<T>();
  T* np = count.data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    T s = T(0), n = T(0);
    for (int64_t c = 0; c < n_chunks; ++c) {
      s += part[c * 2 * K + k];
      n += part[c * 2 * K + K + k];
    }
    lp[k] = s / std::max(n, T(1));
    np[k] = n;
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_heads_cpu(const Tensor& h, const Tensor& weight,
                                                           const Tensor& bias, const Tensor& labels,
                                                           const Tensor& loss_w,
                                                           const Tensor& feat_c,
                                                           const std::optional<Tensor>& mask) {
  check_forward_args(h, weight, bias, labels, loss_w, feat_c, mask);
  TORCH_CHECK(h.device().is_cpu(), "fused_heads_cpu: expected CPU tensors");
  const auto acc = acc_type_for(h.scalar_type());
  const auto acc_opts = h.options().dtype(acc);
  const int64_t B = h.size(0), K = weight.size(0);

  // h stays in its dtype (16-bit rows are widened inside the tasks); the small per-head
  // tensors are converted to the accumulation type.
  const Tensor hc = rows_contiguous(h);
  const Tensor wc = as_acc_rows(weight, acc);
  const Tensor bc = as_acc_contig(bias, acc);
  const Tensor yc = as_acc_contig(labels, acc);
  std::optional<Tensor> mc;
  if (mask) mc = as_acc_contig(*mask, acc);

  Tensor z = at::empty({B, K}, acc_opts);
  Tensor resid = at::empty({B, K}, acc_opts);
  Tensor loss = at::empty({K}, acc_opts);
  Tensor count = at::empty({K}, acc_opts);
  if (acc == at::kDouble) {
    forward_cpu_typed<double>(hc, wc, bc, yc, mc, z, resid, loss, count);
  } else {
    forward_cpu_typed<float>(hc, wc, bc, yc, mc, z, resid, loss, count);
  }
  Tensor logits = h.scalar_type() == acc ? z : z.to(h.scalar_type());
  return {loss, logits, resid, count};
}

template <typename T>
void backward_cpu_typed(const std::optional<Tensor>& grad_loss, const Tensor& count,
                        const Tensor& loss_w, const Tensor& feat_c, const Tensor& hc,
                        const Tensor& wc, const Tensor& resid, const std::optional<Tensor>& glc,
                        Tensor& dh, Tensor& dW, Tensor& db) {
  const int64_t B = hc.size(0), D = hc.size(1), K = wc.size(0);
  // Per-head scales of the residual, g*w/n and g*c/n (plain loops: K-sized tensor ops would
  // cost more in dispatch than the whole small-batch kernel). grad_loss is read through its
  // stride because it is often an expanded scalar (loss.sum().backward()).
  std::unique_ptr<T[]> scratch(new T[static_cast<size_t>(2 * K + B * K)]);
  T* sp = scratch.get();
  T* sf = sp + K;
  {
    const T* n = count.data_ptr<T>();
    const T* lw = loss_w.data_ptr<T>();
    const T* fc = feat_c.data_ptr<T>();
    const T* g = grad_loss ? grad_loss->data_ptr<T>() : nullptr;
    const int64_t gs = grad_loss ? grad_loss->stride(0) : 0;
    for (int64_t k = 0; k < K; ++k) {
      const T gk = g ? g[k * gs] : T(0);
      const T nk = std::max(n[k], T(1));
      sp[k] = gk * lw[k] / nk;
      sf[k] = gk * fc[k] / nk;
    }
  }
  BwdArgs<T> a{hc.data_ptr(),
               h_kind(hc.scalar_type()),
               row_pitch(hc),
               wc.data_ptr<T>(),
               row_pitch(wc),
               resid.data_ptr<T>(),
               glc ? glc->data_ptr<T>() : nullptr,
               sp,
               sf,
               B,
               K,
               D,
               sf + K,
               dh.data_ptr(),
               dW.data_ptr<T>(),
               db.data_ptr<T>()};
  // One parallel region: row chunks (dh), column blocks (dW), then db. The tasks are
  // independent, so the phases need no barrier between them.
  const int64_t n_chunks = (B + kRowChunk - 1) / kRowChunk;
  const int64_t n_blocks = (D + kColBlock - 1) / kColBlock;
  // Task sizes: a row chunk is kRowChunk*K*D multiply-adds, a column block B*K*kColBlock; the
  // first serves as the estimate (they are equal at B = D/2).
  at::parallel_for(0, n_chunks + n_blocks + 1, grain_for(kRowChunk * K * std::max<int64_t>(D, 8)),
                   [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (t < n_chunks) {
        backward_rows(a, t);
      } else if (t < n_chunks + n_blocks) {
        backward_cols(a, t - n_chunks);
      } else {
        backward_bias(a);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor> fused_heads_backward_cpu(
    const std::optional<Tensor>& grad_loss, const std::optional<Tensor>& grad_logits,
    const Tensor& residual, const Tensor& count, const Tensor& h, const Tensor& weight,
    const Tensor& loss_w, const Tensor& feat_c) {
  check_backward_args(grad_loss, grad_logits, residual, count, h, weight, loss_w, feat_c);
  TORCH_CHECK(h.device().is_cpu(), "fused_heads_backward_cpu: expected CPU tensors");
  const auto acc = acc_type_for(h.scalar_type());
  const auto acc_opts = h.options().dtype(acc);
  const int64_t B = h.size(0), D = h.size(1), K = weight.size(0);

  std::optional<Tensor> gc;
  if (grad_loss) gc = grad_loss->scalar_type() == acc ? *grad_loss : grad_loss->to(acc);
  const Tensor nc = count.contiguous();
  const Tensor lw = as_acc_contig(loss_w, acc);
  const Tensor fc = as_acc_contig(feat_c, acc);
  const Tensor hc = rows_contiguous(h);
  const Tensor wc = as_acc_rows(weight, acc);
  const Tensor rc = residual.contiguous();
  std::optional<Tensor> glc;
  if (grad_logits) glc = as_acc_contig(*grad_logits, acc);

  Tensor dh = at::empty({B, D}, h.options());  // written in h's dtype by the row tasks
  Tensor dW = at::empty({K, D}, acc_opts);
  Tensor db = at::empty({K}, acc_opts);
  if (acc == at::kDouble) {
    backward_cpu_typed<double>(gc, nc, lw, fc, hc, wc, rc, glc, dh, dW, db);
  } else {
    backward_cpu_typed<float>(gc, nc, lw, fc, hc, wc, rc, glc, dh, dW, db);
  }
  const auto st = weight.scalar_type();
  if (st != acc) {
    dW = dW.to(st);
    db = db.to(st);
  }
  return {dh, dW, db};
}

// ---------------------------------------------------------------------------------------------
// Autocast rule: the op is a matmul followed by a loss, so it follows F.linear — h, weight and
// bias are cast to the autocast dtype (fp32 accumulation is built into the kernels) — while
// labels, mask and the per-head coefficients keep their precision: casting c = -lambda/B to
// bfloat16 would change the reversal strength by up to 0.4%. The loss stays fp32.
template <c10::DeviceType device, c10::DispatchKey autocast_key>
std::tuple<Tensor, Tensor, Tensor, Tensor> fused_heads_autocast(
    const Tensor& h, const Tensor& weight, const Tensor& bias, const Tensor& labels,
    const Tensor& loss_w, const Tensor& feat_c, const std::optional<Tensor>& mask) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("aal_k8s::fused_heads", "")
                             .typed<decltype(fused_heads_cpu)>();
  // Double stays double, as in autocast's own rules; mixed double/other is left to the checks.
  if (h.scalar_type() == at::kDouble || weight.scalar_type() == at::kDouble) {
    return op.call(h, weight, bias, labels, loss_w, feat_c, mask);
  }
  const auto dt = at::autocast::get_autocast_dtype(device);
  return op.call(at::autocast::cached_cast(dt, h, device),
                 at::autocast::cached_cast(dt, weight, device),
                 at::autocast::cached_cast(dt, bias, device), labels, loss_w, feat_c, mask);
}

}  // namespace
}  // namespace aal_k8s

TORCH_LIBRARY(aal_k8s, m) {
  m.def(
      "fused_heads(Tensor h, Tensor weight, Tensor bias, Tensor labels, Tensor loss_w, "
      "Tensor feat_c, Tensor? mask=None) -> "
      "(Tensor loss, Tensor logits, Tensor residual, Tensor count)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "fused_heads_backward(Tensor? grad_loss, Tensor? grad_logits, Tensor residual, "
      "Tensor count, Tensor h, Tensor weight, Tensor loss_w, Tensor feat_c) -> "
      "(Tensor grad_h, Tensor grad_weight, Tensor grad_bias)",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(aal_k8s, CPU, m) {
  m.impl("fused_heads", &aal_k8s::fused_heads_cpu);
  m.impl("fused_heads_backward", &aal_k8s::fused_heads_backward_cpu);
}

TORCH_LIBRARY_IMPL(aal_k8s, AutocastCPU, m) {
  m.impl("fused_heads",
         &aal_k8s::fused_heads_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(aal_k8s, AutocastCUDA, m) {
  m.impl("fused_heads",
         &aal_k8s::fused_heads_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>);
}

// Importing aal_k8s._C loads this library, which runs the registrations above; the module itself
// has no Python-visible members (the ops are reached through torch.ops.aal_k8s).
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "aal_k8s fused head operators (CPU + schemas)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
