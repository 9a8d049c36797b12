// Runs the CUDA kernels of the fused heads op in the SIMT simulator (simt.h) and checks them
// against a direct float64 evaluation of the maths. Used by tests/test_ops.py; exits non-zero on
// any mismatch. Also checks that the results are bitwise identical whatever order the blocks
// run in (the last-block reductions must not depend on which block finishes last).
//
// Build: g++ -std=c++17 -O1 -I csrc tests/cuda_sim/run_kernels.cpp
//        (optionally -DAAL_CUDA_MAX_ROW_BLOCKS=.. -DAAL_CUDA_MAX_SPLITS=.. to force grid strides)

#include "simt.h"
// clang-format off
#include "cuda/fused_heads_kernels.cuh"
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace aal_k8s::cuda;

struct Case {
  int64_t B, K, D;
  bool mask, grad_logits, grad_loss, g_stride0;
  bool nan_masked_labels = false;  // NaN labels wherever the mask is 0: they must not get through
};

struct Ref {
  std::vector<double> z, resid, loss, count, dh, dW, db;
};

template <typename T>
struct Inputs {
  std::vector<T> h, w, bias, y, m, gl, g, loss_w, feat_c;
};

static Ref reference(const Case& c, const Inputs<double>& in) {
  const int64_t B = c.B, K = c.K, D = c.D;
  Ref r;
  r.z.assign(B * K, 0);
  r.resid.assign(B * K, 0);
  r.loss.assign(K, 0);
  r.count.assign(K, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      double z = in.bias[k];
      for (int64_t d = 0; d < D; ++d) z += in.h[b * D + d] * in.w[k * D + d];
      const double y = in.y[b * K + k], m = c.mask ? in.m[b * K + k] : 1.0;
      const double l = std::max(z, 0.0) - z * y + std::log1p(std::exp(-std::fabs(z)));
      const double sig = 1.0 / (1.0 + std::exp(-z));
      r.z[b * K + k] = z;
      // masked-out elements are selected away (0 * NaN would be NaN), as the kernels do
      r.resid[b * K + k] = m != 0.0 ? (sig - y) * m : 0.0;
      if (m != 0.0) r.loss[k] += l * m;
      r.count[k] += m;
    }
  for (int64_t k = 0; k < K; ++k) r.loss[k] /= std::max(r.count[k], 1.0);
  auto dz = [&](int64_t b, int64_t k, bool feat) {
    double v = 0;
    if (c.grad_loss) {
      const double g = in.g[c.g_stride0 ? 0 : k];
      v = r.resid[b * K + k] * g * (feat ? in.feat_c[k] : in.loss_w[k]) / std::max(r.count[k], 1.0);
    }
    if (c.grad_logits) v += in.gl[b * K + k];
    return v;
  };
  r.dh.assign(B * D, 0);
  r.dW.assign(K * D, 0);
  r.db.assign(K, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < K; ++k) {
      const double f = dz(b, k, true), p = dz(b, k, false);
      for (int64_t d = 0; d < D; ++d) {
        r.dh[b * D + d] += f * in.w[k * D + d];
        r.dW[k * D + d] += p * in.h[b * D + d];
      }
      r.db[k] += p;
    }
  return r;
}

template <typename T>
struct Outputs {
  std::vector<T> logits, resid, loss, count, dh, dW, db;
  bool operator==(const Outputs& o) const {
    auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
    };
    return same(logits, o.logits) && same(resid, o.resid) && same(loss, o.loss) &&
           same(count, o.count) && same(dh, o.dh) && same(dW, o.dW) && same(db, o.db);
  }
};

static std::vector<unsigned> block_order(unsigned n, int mode, std::mt19937& rng) {
  std::vector<unsigned> o(n);
  for (unsigned i = 0; i < n; ++i) o[i] = i;
  if (mode == 1) std::reverse(o.begin(), o.end());
  if (mode == 2) std::shuffle(o.begin(), o.end(), rng);
  return o;
}

template <typename T>
static Outputs<T> run(const Case& c, const Inputs<T>& in, int order_mode, std::mt19937& rng) {
  const int64_t B = c.B, K = c.K, D = c.D;
  Outputs<T> out;
  out.logits.assign(B * K, T(-7));  // poison: every element must be written
  out.resid.assign(B * K, T(-7));
  out.loss.assign(K, T(-7));
  out.count.assign(K, T(-7));
  if (B > 0) {  // the host code never launches the forward for B == 0
    const int64_t grid = forward_geometry(B).grid;
    std::vector<T> partial(grid * 2 * K, T(-7));
    unsigned sem = 0;
    simt::launch(static_cast<unsigned>(grid), kThreads, block_order(grid, order_mode, rng), [&] {
      fused_heads_forward_kernel<T, T>(in.h.data(), D, in.w.data(), D, in.bias.data(), in.y.data(),
                                       c.mask ? in.m.data() : nullptr, B, K, D, out.logits.data(),
                                       out.resid.data(), partial.data(), &sem, out.loss.data(),
                                       out.count.data());
    });
  } else {
    std::fill(out.loss.begin(), out.loss.end(), T(0));
    std::fill(out.count.begin(), out.count.end(), T(0));
  }
  const BackwardGeometry geo = backward_geometry(B, K, D);
  out.dh.assign(B * D, T(-7));
  out.dW.assign(K * D, T(-7));
  out.db.assign(K, T(-7));
  std::vector<T> ws_dw(geo.n_splits * K * D, T(-7)), ws_db(geo.n_splits * K, T(-7));
  std::vector<unsigned> sems(geo.n_tiles(), 0u);
  Coeffs<T> cf{out.resid.data(),
               c.grad_logits ? in.gl.data() : nullptr,
               c.grad_loss ? in.g.data() : nullptr,
               c.g_stride0 ? 0 : 1,
               in.loss_w.data(),
               in.feat_c.data(),
               out.count.data(),
               K};
  const unsigned grid = static_cast<unsigned>(geo.grid());
  simt::launch(grid, kThreads, block_order(grid, order_mode, rng), [&] {
    fused_heads_backward_kernel<T, T>(cf, in.h.data(), D, in.w.data(), D, B, K, D, geo.row_blocks,
                                      geo.n_splits, geo.rows_per_split, geo.n_col_tiles,
                                      out.dh.data(), out.dW.data(), out.db.data(), ws_dw.data(),
                                      ws_db.data(), sems.data());
  });
  return out;
}

template <typename T>
static double max_rel_err(const std::vector<T>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return 1e30;
  double scale = 1e-30, err = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e == e)) return 1e30;  // NaN
    err = std::max(err, e);
  }
  return err / scale;
}

template <typename T>
static bool check(const Case& c, uint32_t seed, double tol, const char* tname) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::bernoulli_distribution coin(0.5), keep(0.7);
  Inputs<double> in64;
  const int64_t B = c.B, K = c.K, D = c.D;
  auto fill = [&](std::vector<double>& v, int64_t n, double scale) {
    v.resize(n);
    for (auto& x : v) x = nd(rng) * scale;
  };
  fill(in64.h, B * D, 1.0);
  fill(in64.w, K * D, 1.0 / std::sqrt(std::max<int64_t>(D, 1)));
  fill(in64.bias, K, 1.0);
  in64.y.resize(B * K);
  for (auto& x : in64.y) x = coin(rng);
  in64.m.resize(B * K);
  for (auto& x : in64.m) x = keep(rng);
  if (c.nan_masked_labels) {
    for (int64_t i = 0; i < B * K; ++i) {
      if (in64.m[i] == 0.0) in64.y[i] = std::nan("");
    }
  }
  fill(in64.gl, B * K, 0.1);
  fill(in64.g, K, 1.0);
  fill(in64.loss_w, K, 1.0);
  fill(in64.feat_c, K, 1.0);
  // Round through T first so the float64 reference sees exactly the kernel's inputs.
  Inputs<T> in;
  auto cast = [](const std::vector<double>& v) { return std::vector<T>(v.begin(), v.end()); };
  in.h = cast(in64.h), in.w = cast(in64.w), in.bias = cast(in64.bias), in.y = cast(in64.y);
  in.m = cast(in64.m), in.gl = cast(in64.gl), in.g = cast(in64.g);
  in.loss_w = cast(in64.loss_w), in.feat_c = cast(in64.feat_c);
  auto back = [](const std::vector<T>& v) { return std::vector<double>(v.begin(), v.end()); };
  in64.h = back(in.h), in64.w = back(in.w), in64.bias = back(in.bias), in64.gl = back(in.gl);
  in64.g = back(in.g), in64.loss_w = back(in.loss_w), in64.feat_c = back(in.feat_c);
  const Ref ref = reference(c, in64);

  std::mt19937 order_rng(seed + 1);
  const Outputs<T> out = run(c, in, 0, order_rng);
  const double errs[] = {max_rel_err(out.logits, ref.z),  max_rel_err(out.resid, ref.resid),
                         max_rel_err(out.loss, ref.loss), max_rel_err(out.count, ref.count),
                         max_rel_err(out.dh, ref.dh),     max_rel_err(out.dW, ref.dW),
                         max_rel_err(out.db, ref.db)};
  const char* names[] = {"logits", "resid", "loss", "count", "dh", "dW", "db"};
  bool ok = true;
  for (int i = 0; i < 7; ++i) {
    if (errs[i] > tol) {
      std::printf("  %s: %s rel err %.3g > %.3g\n", tname, names[i], errs[i], tol);
      ok = false;
    }
  }
  for (int mode = 1; mode <= 2; ++mode) {
    if (!(run(c, in, mode, order_rng) == out)) {
      std::printf("  %s: results change with block order (mode %d)\n", tname, mode);
      ok = false;
    }
  }
  std::printf("%s B=%lld K=%lld D=%lld mask=%d gl=%d g=%d g0=%d %s: %s\n", ok ? "ok  " : "FAIL",
              (long long)B, (long long)K, (long long)D, c.mask, c.grad_logits, c.grad_loss,
              c.g_stride0, tname, ok ? "matches float64 maths, order-independent" : "mismatch");
  return ok;
}

int main() {
  const Case cases[] = {
      {1, 1, 13, false, false, true, false},   // single row, single head
      {7, 2, 13, true, true, true, false},     // D below a warp, mask, both upstream grads
      {33, 40, 13, true, false, true, true},   // two head chunks, expanded grad_loss
      {40, 3, 300, false, true, false, false}, // logits-only upstream gradient, 3 column tiles
      {300, 33, 129, true, true, true, false}, // several splits, ragged head/column tiles
      {0, 2, 5, false, false, true, false},    // empty batch: backward still writes zeros
      {5, 2, 0, true, true, true, false},      // D = 0
      {70, 3, 37, true, true, true, false, true},  // NaN labels where the mask is 0
  };
  bool ok = true;
  uint32_t seed = 1234;
  for (const Case& c : cases) {
    ok &= check<float>(c, seed, 2e-5, "float32");
    ok &= check<double>(c, seed, 1e-12, "float64");
    ++seed;
  }
  std::printf(ok ? "ALL OK\n" : "FAILURES\n");
  return ok ? 0 : 1;
}
