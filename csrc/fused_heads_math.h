// Element-wise maths of the fused heads, shared by the CPU and CUDA kernels so both devices
// agree on the formulation (and therefore on the rounding) of the per-element terms.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define AAL_HD __host__ __device__ __forceinline__
#else
#define AAL_HD inline
#endif

namespace aal_k8s {

// Rows of the batch handled by one forward/backward task on the CPU, and by one thread block's
// partial sums on the GPU. It is a constant (not derived from the thread count) because the
// per-head loss is summed chunk by chunk: a fixed chunking keeps the result bitwise identical
// whatever the number of threads.
constexpr int64_t kRowChunk = 32;

AAL_HD float aal_exp(float x) { return expf(x); }
AAL_HD double aal_exp(double x) { return exp(x); }
AAL_HD float aal_log1p(float x) { return log1pf(x); }
AAL_HD double aal_log1p(double x) { return log1p(x); }

// BCE-with-logits and its derivative for one element, in a form that stays finite and accurate
// for any finite z: only exp(-|z|) is ever evaluated (it underflows to 0 instead of overflowing),
// so |z| >= 100 gives loss = max(z, 0) - z*y exactly and sigmoid in {0, 1} exactly.
//   loss          = max(z, 0) - z*y + log1p(exp(-|z|))
//   sig_minus_y   = sigmoid(z) - y
template <typename T>
AAL_HD void bce_with_logits(T z, T y, T& loss, T& sig_minus_y) {
  const T e = aal_exp(-(z < T(0) ? -z : z));
  const T inv = T(1) / (T(1) + e);
  const T sig = z >= T(0) ? inv : e * inv;
  loss = (z > T(0) ? z : T(0)) - z * y + aal_log1p(e);
  sig_minus_y = sig - y;
}

}  // namespace aal_k8s
