#pragma once
// The relaxed ListMLE of one row, forward and backward, shared by the CPU and
// CUDA kernels. Over the valid entries, with U = logsumexp(t) and
// D_k = log(sum_{i>=k} exp(s_i) + sum_l exp(t_l)), i.e. the recurrence
// D_k = logaddexp(s_k, D_{k+1}) from D_{K+1} = U (computed in scaled form below):
//   loss       = sum_k (D_k - s_k)
//   dL/ds_j    = exp(s_j - D_j) * Y_j - 1,   Y_j = sum_{k<=j} exp(D_j - D_k)
//   dL/dt_l    = exp(t_l - D_K) * Y_K
// D_k does not increase with k, so Y_j = 1 + Y_{j-1} exp(D_j - D_{j-1}) and
// every exponent above is <= 0: stable for any finite scores, with one
// log-add-exp per entry forward and two exponentials per entry backward.
#include <ATen/core/Tensor.h>

#include <cmath>
#include <optional>

#include "../common/accumulate.h"
#include "../common/checks.h"
#include "../common/macros.h"

namespace rankdistill {

// One row of the inputs: contiguous values, and a mask (nullptr = all valid).
template <typename scalar_t>
struct ListRow {
  const scalar_t* values;
  const bool* mask;
  int64_t size;
  RD_HOST_DEVICE bool valid(int64_t i) const { return mask == nullptr || mask[i]; }
};

// Writes D_k into denominators[k] (0 for padding) and returns the row's loss.
// D_k = peak + log(scaled) with peak the largest score so far (tail included)
// and scaled = sum exp(x - peak) >= 1: the recurrence carries only products
// and sums, so the exponentials and logs stay off its critical path and
// pipeline, where a chain of log-add-exps would wait on each log.
template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE acc_t listmle_denominators(const ListRow<scalar_t>& ranked, const ListRow<scalar_t>& tail,
                                          acc_t* denominators) {
  acc_t peak = -INFINITY;
  for (int64_t l = 0; l < tail.size; ++l) {
    if (tail.valid(l) && static_cast<acc_t>(tail.values[l]) > peak) peak = static_cast<acc_t>(tail.values[l]);
  }
  acc_t scaled = 0;
  if (peak != -INFINITY) {
    for (int64_t l = 0; l < tail.size; ++l) {
      if (tail.valid(l)) scaled += std::exp(static_cast<acc_t>(tail.values[l]) - peak);
    }
  }
  acc_t loss = 0;
  for (int64_t k = ranked.size - 1; k >= 0; --k) {
    if (!ranked.valid(k)) {
      denominators[k] = 0;
      continue;
    }
    const acc_t s = static_cast<acc_t>(ranked.values[k]);
    if (s > peak) {  // exp(-inf) = 0 when the first peak is set, and 0 * 0 = 0
      scaled = scaled * std::exp(peak - s) + acc_t(1);
      peak = s;
    } else {
      scaled += std::exp(s - peak);
    }
    denominators[k] = peak + std::log(scaled);
    loss += denominators[k] - s;
  }
  return loss;
}

// The gradients of one row, from the denominators its forward wrote.
template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE void listmle_row_backward(acc_t grad_loss, const ListRow<scalar_t>& ranked,
                                         const ListRow<scalar_t>& tail, const acc_t* denominators,
                                         scalar_t* grad_ranked, scalar_t* grad_tail) {
  acc_t weight_sum = 0, last_denominator = 0;  // Y_j and D_j of the last valid j
  for (int64_t j = 0; j < ranked.size; ++j) {
    if (!ranked.valid(j)) {
      grad_ranked[j] = scalar_t(0);
      continue;
    }
    const acc_t denominator = denominators[j];
    weight_sum = weight_sum == 0 ? acc_t(1) : acc_t(1) + weight_sum * std::exp(denominator - last_denominator);
    last_denominator = denominator;
    const acc_t s = static_cast<acc_t>(ranked.values[j]);
    grad_ranked[j] = static_cast<scalar_t>(grad_loss * (std::exp(s - denominator) * weight_sum - acc_t(1)));
  }
  for (int64_t l = 0; l < tail.size; ++l) {
    const acc_t t = static_cast<acc_t>(tail.values[l]);
    grad_tail[l] = tail.valid(l) && weight_sum != 0
                       ? static_cast<scalar_t>(grad_loss * std::exp(t - last_denominator) * weight_sum)
                       : scalar_t(0);
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
                                                  const std::optional<at::Tensor>& tail_mask,
                                                  const at::Tensor& denominators) {
  check_relaxed_listmle_inputs(ranked, tail, ranked_mask, tail_mask);
  check_same_device(denominators, ranked, "denominators", "ranked");
  TORCH_CHECK_VALUE(denominators.sizes() == ranked.sizes() &&
                        denominators.scalar_type() == accumulate_dtype(ranked.scalar_type()),
                    "denominators must be the second output of relaxed_listmle for these inputs");
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


}  // namespace rankdistill
