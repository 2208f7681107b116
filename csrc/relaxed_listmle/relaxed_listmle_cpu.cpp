// Relaxed ListMLE on the CPU: one fused pass per row for the forward, which
// also returns the per-entry denominators, and one for the backward, which
// reads them; parallel over rows.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>


#include "relaxed_listmle.h"

namespace rankdistill {
namespace {

constexpr int64_t kRowGrain = 64;

std::tuple<at::Tensor, at::Tensor> relaxed_listmle_cpu(const at::Tensor& ranked, const at::Tensor& tail,
                                                       const std::optional<at::Tensor>& ranked_mask,
                                                       const std::optional<at::Tensor>& tail_mask) {
  check_relaxed_listmle_inputs(ranked, tail, ranked_mask, tail_mask);
  const ListmleInputs in(ranked, tail, ranked_mask, tail_mask);
  const int64_t num_rows = ranked.size(0), K = ranked.size(1);
  const auto acc_options = ranked.options().dtype(accumulate_dtype(ranked.scalar_type()));
  at::Tensor loss = at::empty({num_rows}, acc_options), denominators = at::empty({num_rows, K}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ranked.scalar_type(), "relaxed_listmle_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;  // float for half inputs, double for double
    acc_t* loss_data = loss.mutable_data_ptr<acc_t>();
    acc_t* denominator_data = denominators.mutable_data_ptr<acc_t>();
    at::parallel_for(0, num_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        loss_data[row] = listmle_denominators<scalar_t, acc_t>(in.ranked_row<scalar_t>(row),
                                                               in.tail_row<scalar_t>(row), denominator_data + row * K);
      }
    });
  });
  return {loss, denominators};
}

std::tuple<at::Tensor, at::Tensor> relaxed_listmle_backward_cpu(const at::Tensor& grad_loss,
                                                                const at::Tensor& ranked, const at::Tensor& tail,
                                                                const std::optional<at::Tensor>& ranked_mask,
                                                                const std::optional<at::Tensor>& tail_mask,
                                                                const at::Tensor& denominators) {
  check_relaxed_listmle_backward_inputs(grad_loss, ranked, tail, ranked_mask, tail_mask, denominators);
  const ListmleInputs in(ranked, tail, ranked_mask, tail_mask);
  const int64_t num_rows = ranked.size(0), K = ranked.size(1), L = tail.size(1);
  at::Tensor grad_ranked = at::empty_like(in.ranked), grad_tail = at::empty_like(in.tail);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ranked.scalar_type(), "relaxed_listmle_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const at::Tensor grad = grad_loss.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const at::Tensor denominators_contiguous = denominators.contiguous();
    const acc_t* grad_data = grad.const_data_ptr<acc_t>();
    const acc_t* denominator_data = denominators_contiguous.const_data_ptr<acc_t>();
    scalar_t* grad_ranked_data = grad_ranked.mutable_data_ptr<scalar_t>();
    scalar_t* grad_tail_data = grad_tail.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        listmle_row_backward<scalar_t, acc_t>(grad_data[row], in.ranked_row<scalar_t>(row),
                                              in.tail_row<scalar_t>(row), denominator_data + row * K,
                                              grad_ranked_data + row * K, grad_tail_data + row * L);
      }
    });
  });
  return {grad_ranked, grad_tail};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) {
  m.impl("relaxed_listmle", &relaxed_listmle_cpu);
  m.impl("relaxed_listmle_backward", &relaxed_listmle_backward_cpu);
}

}  // namespace rankdistill
