// Sampling without replacement on the CPU: every positive-weight column gets
// a Philox key log(u) / w, and a per-row partial selection keeps the k
// largest. Parallel over rows; the draws do not depend on the thread count.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "sampling.h"

namespace rankdistill {
namespace {

uint64_t draw_seed(const std::optional<at::Generator>& generator) {
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

template <typename Weights>
at::Tensor sample_rows(const Weights& weights, int64_t num_rows, int64_t num_cols, int64_t k, bool sorted,
                       uint64_t seed, const at::TensorOptions& options) {
  at::Tensor out = at::empty({num_rows, k}, options.dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  std::atomic<bool> saw_invalid{false};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(num_cols, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<double, int64_t>> candidates;  // (key, column)
    const auto drawn_first = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    const auto by_column = [](const std::pair<double, int64_t>& a, const std::pair<double, int64_t>& b) {
      return a.second < b.second;
    };
    for (int64_t row = begin; row < end; ++row) {
      candidates.clear();
      bool invalid = false;
      for (int64_t col = 0; col < num_cols; ++col) {
        const double w = weights(row, col);
        invalid |= invalid_weight(w);
        if (w > 0.0 && w != INFINITY) candidates.emplace_back(sampling_key(seed, 0, row, col, w), col);
      }
      if (invalid) saw_invalid.store(true, std::memory_order_relaxed);
      const int64_t taken = std::min<int64_t>(k, static_cast<int64_t>(candidates.size()));
      if (taken < static_cast<int64_t>(candidates.size())) {
        std::nth_element(candidates.begin(), candidates.begin() + taken, candidates.end(), drawn_first);
      }
      if (sorted) {
        std::sort(candidates.begin(), candidates.begin() + taken, by_column);
      } else {
        std::sort(candidates.begin(), candidates.begin() + taken, drawn_first);
      }
      int64_t* row_out = out_data + row * k;
      for (int64_t j = 0; j < taken; ++j) row_out[j] = candidates[j].second;
      std::fill(row_out + taken, row_out + k, int64_t{-1});
    }
  });
  TORCH_CHECK_VALUE(!saw_invalid.load(), "sampling weights must be finite and non-negative (found a negative, ",
                    "infinite or NaN weight)");
  return out;
}

at::Tensor weighted_sample_cpu(const at::Tensor& weights, int64_t k, bool sorted,
                               const std::optional<at::Generator>& generator) {
  check_weighted_sample_inputs(weights, k);
  const at::Tensor w = weights.contiguous();
  const uint64_t seed = draw_seed(generator);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "weighted_sample_cpu", [&] {
    out = sample_rows(TensorWeights<scalar_t>{w.const_data_ptr<scalar_t>(), w.size(1)}, w.size(0), w.size(1), k,
                      sorted, seed, w.options());
  });
  return out;
}

at::Tensor discrepancy_sample_cpu(const at::Tensor& student_rank, const at::Tensor& teacher_rank, int64_t k,
                                  double mu, bool under, bool sorted, const std::optional<at::Generator>& generator) {
  check_discrepancy_sample_inputs(student_rank, teacher_rank, k, mu);
  const at::Tensor student = student_rank.contiguous(), teacher = teacher_rank.contiguous();
  const uint64_t seed = draw_seed(generator);
  at::Tensor out;
  AT_DISPATCH_V2(
      student.scalar_type(), "discrepancy_sample_cpu", AT_WRAP([&] {
        const DiscrepancyWeights<scalar_t> weights{student.const_data_ptr<scalar_t>(),
                                                   teacher.const_data_ptr<scalar_t>(), student.size(1), mu, under};
        out = sample_rows(weights, student.size(0), student.size(1), k, sorted, seed, student.options());
      }),
      AT_EXPAND(AT_FLOATING_TYPES), at::kLong, at::kInt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) {
  m.impl("weighted_sample", &weighted_sample_cpu);
  m.impl("discrepancy_sample", &discrepancy_sample_cpu);
}

}  // namespace rankdistill
