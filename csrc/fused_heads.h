// Argument checking and output allocation shared by the CPU and CUDA implementations of
// aal_k8s::fused_heads. Both extensions compile this header, so both devices reject exactly the
// same inputs with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <optional>

namespace aal_k8s {

// Loss, residual and count are kept in the accumulation type: float for half/bfloat16/float
// features, double for double features (so that fp64 gradcheck is meaningful).
inline at::ScalarType acc_type_for(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The kernels read h as one of these four types: any other dtype would be reinterpreted (garbage)
// or read past its buffer (uint8/bool are narrower than the narrowest supported type).
inline void check_feature_dtype(at::ScalarType st, const char* op) {
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": h must be float16, bfloat16, float32 or float64, got ", st);
}

inline void check_forward_args(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& bias,
                               const at::Tensor& labels, const at::Tensor& loss_w,
                               const at::Tensor& feat_c, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(h.dim() == 2, "fused_heads: h must be [B, D], got ", h.sizes());
  TORCH_CHECK(weight.dim() == 2, "fused_heads: weight must be [K, D], got ", weight.sizes());
  const int64_t B = h.size(0), D = h.size(1), K = weight.size(0);
  TORCH_CHECK(weight.size(1) == D, "fused_heads: weight is ", weight.sizes(), " but h has D=", D);
  TORCH_CHECK(K >= 1, "fused_heads: need at least one head");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == K, "fused_heads: bias must be [K=", K, "], got ",
              bias.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == B && labels.size(1) == K,
              "fused_heads: labels must be [B=", B, ", K=", K, "], got ", labels.sizes());
  TORCH_CHECK(loss_w.dim() == 1 && loss_w.size(0) == K, "fused_heads: loss_w must be [K=", K,
              "], got ", loss_w.sizes());
  TORCH_CHECK(feat_c.dim() == 1 && feat_c.size(0) == K, "fused_heads: feat_c must be [K=", K,
              "], got ", feat_c.sizes());
  const auto st = h.scalar_type();
  check_feature_dtype(st, "fused_heads");
  TORCH_CHECK(weight.scalar_type() == st && bias.scalar_type() == st,
              "fused_heads: h, weight and bias must share a dtype, got ", st, ", ",
              weight.scalar_type(), ", ", bias.scalar_type(),
              " (under autocast the op casts them itself)");
  TORCH_CHECK(loss_w.is_floating_point() && feat_c.is_floating_point(),
              "fused_heads: loss_w and feat_c must be floating point");
  const auto dev = h.device();
  auto same_dev = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == dev, "fused_heads: ", name, " is on ", t.device(), " but h is on ",
                dev);
  };
  same_dev(weight, "weight");
  same_dev(bias, "bias");
  same_dev(labels, "labels");
  same_dev(loss_w, "loss_w");
  same_dev(feat_c, "feat_c");
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == B && mask->size(1) == K,
                "fused_heads: mask must be [B=", B, ", K=", K, "], got ", mask->sizes());
    same_dev(*mask, "mask");
  }
}

inline void check_backward_args(const std::optional<at::Tensor>& grad_loss,
                                const std::optional<at::Tensor>& grad_logits,
                                const at::Tensor& residual, const at::Tensor& count,
                                const at::Tensor& h, const at::Tensor& weight,
                                const at::Tensor& loss_w, const at::Tensor& feat_c) {
  TORCH_CHECK(h.dim() == 2 && weight.dim() == 2 && weight.size(1) == h.size(1),
              "fused_heads_backward: h [B, D] and weight [K, D] expected, got ", h.sizes(), " and ",
              weight.sizes());
  const int64_t B = h.size(0), K = weight.size(0);
  check_feature_dtype(h.scalar_type(), "fused_heads_backward");
  const auto acc = acc_type_for(h.scalar_type());
  TORCH_CHECK(weight.scalar_type() == h.scalar_type(),
              "fused_heads_backward: h and weight must share a dtype");
  TORCH_CHECK(residual.dim() == 2 && residual.size(0) == B && residual.size(1) == K &&
                  residual.scalar_type() == acc,
              "fused_heads_backward: residual must be [B, K] in ", acc, ", got ", residual.sizes(),
              " ", residual.scalar_type());
  TORCH_CHECK(count.dim() == 1 && count.size(0) == K && count.scalar_type() == acc,
              "fused_heads_backward: count must be [K] in ", acc);
  TORCH_CHECK(loss_w.dim() == 1 && loss_w.size(0) == K && feat_c.dim() == 1 && feat_c.size(0) == K,
              "fused_heads_backward: loss_w and feat_c must be [K]");
  TORCH_CHECK(loss_w.is_floating_point() && feat_c.is_floating_point(),
              "fused_heads_backward: loss_w and feat_c must be floating point");
  if (grad_loss.has_value()) {
    TORCH_CHECK(grad_loss->dim() == 1 && grad_loss->size(0) == K,
                "fused_heads_backward: grad_loss must be [K], got ", grad_loss->sizes());
    TORCH_CHECK(grad_loss->is_floating_point(),
                "fused_heads_backward: grad_loss must be floating point, got ", grad_loss->scalar_type());
  }
  if (grad_logits.has_value()) {
    TORCH_CHECK(grad_logits->dim() == 2 && grad_logits->size(0) == B && grad_logits->size(1) == K,
                "fused_heads_backward: grad_logits must be [B, K], got ", grad_logits->sizes());
    TORCH_CHECK(grad_logits->is_floating_point(),
                "fused_heads_backward: grad_logits must be floating point, got ",
                grad_logits->scalar_type());
  }
  const auto dev = h.device();
  for (const at::Tensor* t : {&weight, &residual, &count, &loss_w, &feat_c}) {
    TORCH_CHECK(t->device() == dev, "fused_heads_backward: all tensors must be on ", dev);
  }
  if (grad_loss.has_value()) TORCH_CHECK(grad_loss->device() == dev, "fused_heads_backward: device");
  if (grad_logits.has_value())
    TORCH_CHECK(grad_logits->device() == dev, "fused_heads_backward: device");
}

// A [rows, cols] tensor whose elements within a row are adjacent, so kernels can take a row pitch
// instead of forcing a copy of views such as h[:, :D] or W[::2]. Rows may overlap (stride 0 from
// expand()): inputs are only read.
inline at::Tensor rows_contiguous(const at::Tensor& t) {
  return (t.size(1) <= 1 || t.stride(1) == 1) ? t : t.contiguous();
}

inline int64_t row_pitch(const at::Tensor& t) { return t.stride(0); }

}  // namespace aal_k8s
