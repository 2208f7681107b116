#pragma once
// The relaxed ListMLE of one row, forward and backward, shared by the CPU and
// CUDA kernels. With R_k = logsumexp(s_k..s_K), U = logsumexp(t) and
// D_k = logaddexp(R_k, U) over the valid entries:
//   loss       = sum_k (D_k - s_k)
//   dL/ds_j    = sum_{k<=j} exp(s_j - D_k) - 1
//   dL/dt_l    = sum_k exp(t_l - D_k)
// Every exponent above is <= 0 (D_k >= s_j for k <= j, D_k >= t_l), so the
// computation is stable for any finite scores.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "../common/checks.h"
#include "../common/macros.h"

namespace rankdistill {

template <typename acc_t>
RD_HOST_DEVICE acc_t log_add_exp(acc_t a, acc_t b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  const acc_t hi = a > b ? a : b;
  const acc_t lo = a > b ? b : a;
  return hi + std::log1p(std::exp(lo - hi));
}

// One row of the inputs: contiguous values, and a mask (nullptr = all valid).
template <typename scalar_t>
struct ListRow {
  const scalar_t* values;
  const bool* mask;
  int64_t size;
  RD_HOST_DEVICE bool valid(int64_t i) const { return mask == nullptr || mask[i]; }
};

template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE acc_t tail_logsumexp(const ListRow<scalar_t>& tail) {
  acc_t peak = -INFINITY;
  for (int64_t l = 0; l < tail.size; ++l) {
    if (tail.valid(l) && static_cast<acc_t>(tail.values[l]) > peak) peak = static_cast<acc_t>(tail.values[l]);
  }
  if (peak == -INFINITY) return peak;
  acc_t total = 0;
  for (int64_t l = 0; l < tail.size; ++l) {
    if (tail.valid(l)) total += std::exp(static_cast<acc_t>(tail.values[l]) - peak);
  }
  return peak + std::log(total);
}

// Writes D_k into denominators[k] for the valid k and returns the row's loss.
template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE acc_t listmle_denominators(const ListRow<scalar_t>& ranked, const ListRow<scalar_t>& tail,
                                          acc_t* denominators) {
  const acc_t tail_lse = tail_logsumexp<scalar_t, acc_t>(tail);
  acc_t suffix_lse = -INFINITY, loss = 0;
  for (int64_t k = ranked.size - 1; k >= 0; --k) {
    if (!ranked.valid(k)) continue;
    const acc_t s = static_cast<acc_t>(ranked.values[k]);
    suffix_lse = log_add_exp(suffix_lse, s);
    denominators[k] = log_add_exp(suffix_lse, tail_lse);
    loss += denominators[k] - s;
  }
  return loss;
}

template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE void listmle_row_backward(acc_t grad_loss, const ListRow<scalar_t>& ranked,
                                         const ListRow<scalar_t>& tail, acc_t* scratch, scalar_t* grad_ranked,
                                         scalar_t* grad_tail) {
  listmle_denominators<scalar_t, acc_t>(ranked, tail, scratch);
  // prefix = log sum_{k<=j} exp(-D_k)
  acc_t prefix = -INFINITY;
  for (int64_t j = 0; j < ranked.size; ++j) {
    if (!ranked.valid(j)) {
      grad_ranked[j] = scalar_t(0);
      continue;
    }
    prefix = log_add_exp(prefix, -scratch[j]);
    const acc_t s = static_cast<acc_t>(ranked.values[j]);
    grad_ranked[j] = static_cast<scalar_t>(grad_loss * (std::exp(s + prefix) - acc_t(1)));
  }
  for (int64_t l = 0; l < tail.size; ++l) {
    const acc_t t = static_cast<acc_t>(tail.values[l]);
    grad_tail[l] = tail.valid(l) ? static_cast<scalar_t>(grad_loss * std::exp(t + prefix)) : scalar_t(0);
  }
}

inline void check_relaxed_listmle_inputs(const at::Tensor& ranked, const at::Tensor& tail,
                                         const std::optional<at::Tensor>& ranked_mask,
                                         const std::optional<at::Tensor>& tail_mask) {
  check_dim(ranked, 2, "ranked");
  check_dim(tail, 2, "tail");
  check_floating(ranked, "ranked");
  check_same_device(tail, ranked, "tail", "ranked");
  TORCH_CHECK_TYPE(tail.scalar_type() == ranked.scalar_type(), "ranked and tail must have the same dtype, got ",
                   ranked.scalar_type(), " and ", tail.scalar_type());
  TORCH_CHECK_VALUE(tail.size(0) == ranked.size(0), "ranked and tail must have the same number of rows, got ",
                    ranked.size(0), " and ", tail.size(0));
  check_mask(ranked_mask, ranked, "ranked_mask", "ranked");
  check_mask(tail_mask, tail, "tail_mask", "tail");
}

inline void check_relaxed_listmle_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& ranked,
                                                  const at::Tensor& tail,
                                                  const std::optional<at::Tensor>& ranked_mask,
                                                  const std::optional<at::Tensor>& tail_mask) {
  check_relaxed_listmle_inputs(ranked, tail, ranked_mask, tail_mask);
  check_dim(grad_loss, 1, "grad_loss");
  check_floating(grad_loss, "grad_loss");
  check_same_device(grad_loss, ranked, "grad_loss", "ranked");
  TORCH_CHECK_VALUE(grad_loss.size(0) == ranked.size(0), "grad_loss must have one entry per row of ranked (",
                    ranked.size(0), "), got ", grad_loss.size(0));
}

// The inputs made contiguous, with per-row views for the kernels. Masks may
// be undefined (every entry valid).
struct ListmleInputs {
  at::Tensor ranked, tail, ranked_mask, tail_mask;

  ListmleInputs(const at::Tensor& r, const at::Tensor& t, const std::optional<at::Tensor>& rm,
                const std::optional<at::Tensor>& tm)
      : ranked(r.contiguous()),
        tail(t.contiguous()),
        ranked_mask(rm.has_value() ? rm->contiguous() : at::Tensor()),
        tail_mask(tm.has_value() ? tm->contiguous() : at::Tensor()) {}

  template <typename scalar_t>
  ListRow<scalar_t> ranked_row(int64_t row) const {
    return row_of<scalar_t>(ranked, ranked_mask, row);
  }
  template <typename scalar_t>
  ListRow<scalar_t> tail_row(int64_t row) const {
    return row_of<scalar_t>(tail, tail_mask, row);
  }

 private:
  template <typename scalar_t>
  static ListRow<scalar_t> row_of(const at::Tensor& values, const at::Tensor& mask, int64_t row) {
    const int64_t n = values.size(1);
    return {values.const_data_ptr<scalar_t>() + row * n, mask.defined() ? mask.const_data_ptr<bool>() + row * n : nullptr,
            n};
  }
};

// The per-row loss is returned in float32 for half-precision inputs (a sum of
// K terms overflows float16 easily) and in the input dtype otherwise.
inline at::ScalarType listmle_loss_dtype(at::ScalarType input) {
  return (input == at::kHalf || input == at::kBFloat16) ? at::kFloat : input;
}

}  // namespace rankdistill
