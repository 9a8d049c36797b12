// CUDA implementation of aal_k8s::fused_heads / fused_heads_backward (schemas: ../fused_heads.cpp):
// argument handling, workspaces and launches. The kernels and the launch plan are described in
// fused_heads_kernels.cuh.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../fused_heads.h"
#include "fused_heads_kernels.cuh"

namespace aal_k8s {
namespace {

using at::Tensor;
using namespace aal_k8s::cuda;

// ---------------------------------------------------------------------------------------------
// Host side

Tensor as_acc_contig(const Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

std::tuple<Tensor, Tensor, Tensor, Tensor> fused_heads_cuda(const Tensor& h, const Tensor& weight,
                                                            const Tensor& bias,
                                                            const Tensor& labels,
                                                            const Tensor& loss_w,
                                                            const Tensor& feat_c,
                                                            const std::optional<Tensor>& mask) {
  check_forward_args(h, weight, bias, labels, loss_w, feat_c, mask);
  TORCH_CHECK(h.is_cuda(), "fused_heads_cuda: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(h.device());
  const auto acc = acc_type_for(h.scalar_type());
  const auto acc_opts = h.options().dtype(acc);
  const int64_t B = h.size(0), D = h.size(1), K = weight.size(0);

  const Tensor hc = rows_contiguous(h);
  const Tensor wc = rows_contiguous(weight);
  const Tensor bc = bias.contiguous();
  const Tensor yc = as_acc_contig(labels, acc);
  std::optional<Tensor> mc;
  if (mask) mc = as_acc_contig(*mask, acc);

  Tensor logits = at::empty({B, K}, h.options());
  Tensor resid = at::empty({B, K}, acc_opts);
  if (B == 0) {  // an empty grid is not launchable; the mean over no rows is 0 by contract
    return {at::zeros({K}, acc_opts), logits, resid, at::zeros({K}, acc_opts)};
  }
  Tensor loss = at::empty({K}, acc_opts);
  Tensor count = at::empty({K}, acc_opts);
  const int64_t grid = forward_geometry(B).grid;
  Tensor partial = at::empty({grid, 2, K}, acc_opts);
  Tensor semaphore = at::zeros({1}, h.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "fused_heads_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    fused_heads_forward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        hc.data_ptr<scalar_t>(), row_pitch(hc), wc.data_ptr<scalar_t>(), row_pitch(wc),
        bc.data_ptr<scalar_t>(), yc.data_ptr<acc_t>(), mc ? mc->data_ptr<acc_t>() : nullptr, B, K,
        D, logits.data_ptr<scalar_t>(), resid.data_ptr<acc_t>(), partial.data_ptr<acc_t>(),
        reinterpret_cast<unsigned int*>(semaphore.data_ptr<int>()), loss.data_ptr<acc_t>(),
        count.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, logits, resid, count};
}

std::tuple<Tensor, Tensor, Tensor> fused_heads_backward_cuda(
    const std::optional<Tensor>& grad_loss, const std::optional<Tensor>& grad_logits,
    const Tensor& residual, const Tensor& count, const Tensor& h, const Tensor& weight,
    const Tensor& loss_w, const Tensor& feat_c) {
  check_backward_args(grad_loss, grad_logits, residual, count, h, weight, loss_w, feat_c);
  TORCH_CHECK(h.is_cuda(), "fused_heads_backward_cuda: expected CUDA tensors");
  const c10::cuda::CUDAGuard guard(h.device());
  const auto acc = acc_type_for(h.scalar_type());
  const int64_t B = h.size(0), D = h.size(1), K = weight.size(0);

  const Tensor hc = rows_contiguous(h);
  const Tensor wc = rows_contiguous(weight);
  const Tensor rc = residual.contiguous();
  const Tensor nc = count.contiguous();
  const Tensor lw = as_acc_contig(loss_w, acc);
  const Tensor fc = as_acc_contig(feat_c, acc);
  // grad_loss is often an expanded scalar (loss.sum().backward()): read it through its stride.
  std::optional<Tensor> gc;
  if (grad_loss) gc = grad_loss->scalar_type() == acc ? *grad_loss : grad_loss->to(acc);
  std::optional<Tensor> glc;
  if (grad_logits) glc = as_acc_contig(*grad_logits, acc);

  Tensor dh = at::empty({B, D}, h.options());
  Tensor dW = at::empty({K, D}, weight.options());
  Tensor db = at::empty({K}, weight.options());

  const BackwardGeometry geo = backward_geometry(B, K, D);
  const int64_t grid = geo.grid();
  TORCH_CHECK(grid < (int64_t{1} << 31), "fused_heads_backward_cuda: problem too large");
  Tensor ws_dw = at::empty({geo.n_splits, K, D}, h.options().dtype(acc));
  Tensor ws_db = at::empty({geo.n_splits, K}, h.options().dtype(acc));
  Tensor semaphores = at::zeros({geo.n_tiles()}, h.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "fused_heads_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Coeffs<acc_t> cf{rc.data_ptr<acc_t>(),
                     glc ? glc->data_ptr<acc_t>() : nullptr,
                     gc ? gc->data_ptr<acc_t>() : nullptr,
                     gc ? gc->stride(0) : 0,
                     lw.data_ptr<acc_t>(),
                     fc.data_ptr<acc_t>(),
                     nc.data_ptr<acc_t>(),
                     K};
    fused_heads_backward_kernel<scalar_t, acc_t><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
        cf, hc.data_ptr<scalar_t>(), row_pitch(hc), wc.data_ptr<scalar_t>(), row_pitch(wc), B, K,
        D, geo.row_blocks, geo.n_splits, geo.rows_per_split, geo.n_col_tiles, dh.data_ptr<scalar_t>(),
        dW.data_ptr<scalar_t>(), db.data_ptr<scalar_t>(), ws_dw.data_ptr<acc_t>(),
        ws_db.data_ptr<acc_t>(), reinterpret_cast<unsigned int*>(semaphores.data_ptr<int>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dh, dW, db};
}

}  // namespace
}  // namespace aal_k8s

TORCH_LIBRARY_IMPL(aal_k8s, CUDA, m) {
  m.impl("fused_heads", &aal_k8s::fused_heads_cuda);
  m.impl("fused_heads_backward", &aal_k8s::fused_heads_backward_cuda);
}
