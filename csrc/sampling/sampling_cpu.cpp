// Sampling without replacement on the CPU: weighted reservoir sampling with
// exponential jumps per row (see sample_row), parallel over rows. The draws
// do not depend on the thread count. The CUDA backend draws one Philox key
// per column instead; both give exactly the distribution of successive
// sampling, with different random streams.
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

using Candidate = std::pair<double, int64_t>;  // (key log(u) / w, column)

// Function objects rather than functions, so that the heap and sort inline them.
constexpr auto drawn_first = [](const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
};
constexpr auto by_column = [](const Candidate& a, const Candidate& b) { return a.second < b.second; };

// The row's own stream of uniforms: draw j of row r is a pure function of
// (seed, r, j), so rows can go to any thread.
class RowUniforms {
 public:
  RowUniforms(uint64_t seed, int64_t row) : seed_(seed), row_(row) {}
  double next() {
    if (has_odd_) {
      has_odd_ = false;
      return pending_odd_;
    }
    const UniformPair u = uniform_pair(seed_, 0, row_, pair_++);
    pending_odd_ = u.odd;
    has_odd_ = true;
    return u.even;
  }

 private:
  uint64_t seed_;
  int64_t row_, pair_ = 0;
  double pending_odd_ = 0.0;
  bool has_odd_ = false;
};

// Fills `best` with the row's sample, as a heap whose front is the worst, by
// weighted reservoir sampling with exponential jumps (Efraimidis & Spirakis,
// 2006, A-ExpJ): once k columns are held, the weight to skip before the next
// column that beats the worst key is drawn directly, so random numbers and
// logs are spent on about k log(C / k) columns, not C. The jumps run over the
// weights' cheap upper bounds; a column reached that way is kept with
// probability P(beat | w) / P(beat | bound) (thinning), which needs the exact
// weight (DCD's tanh) only there. Exact for any weights. Returns false if a
// weight was invalid.
template <typename Weights>
bool sample_row(const Weights& weights, int64_t row, int64_t num_cols, int64_t k, uint64_t seed,
                std::vector<Candidate>& best) {
  best.clear();
  RowUniforms uniform(seed, row);
  bool valid = true;
  const auto bound_at = [&](int64_t col) {
    const double bound = weights.upper(row, col);
    valid &= !invalid_weight(bound);
    return bound > 0.0 && bound != INFINITY ? bound : 0.0;
  };
  const auto hold = [&](const Candidate& candidate) {
    if (static_cast<int64_t>(best.size()) < k) {
      best.push_back(candidate);
      std::push_heap(best.begin(), best.end(), drawn_first);
    } else if (drawn_first(candidate, best.front())) {
      std::pop_heap(best.begin(), best.end(), drawn_first);
      best.back() = candidate;
      std::push_heap(best.begin(), best.end(), drawn_first);
    }
  };
  int64_t col = 0;
  for (; col < num_cols && static_cast<int64_t>(best.size()) < k; ++col) {
    if (bound_at(col) > 0.0) hold({key_from_uniform(uniform.next(), weights(row, col)), col});
  }
  while (k > 0 && col < num_cols) {
    const double threshold = best.front().first;  // the worst key held, < 0
    if (threshold == -INFINITY) {  // keys underflowed (denormal weights): go column by column
      if (bound_at(col) > 0.0) hold({key_from_uniform(uniform.next(), weights(row, col)), col});
      ++col;
      continue;
    }
    // Skip columns until their cumulated bound passes an Exp(|threshold|) draw.
    double jump = std::log(uniform.next()) / threshold;
    double bound = 0.0;
    for (; col < num_cols; ++col) {
      bound = bound_at(col);
      jump -= bound;
      if (bound > 0.0 && jump <= 0.0) break;
    }
    if (col == num_cols) break;
    const double weight = weights(row, col);
    if (weight < bound && uniform.next() * -std::expm1(threshold * bound) >= -std::expm1(threshold * weight)) {
      ++col;  // thinned out
      continue;
    }
    // Its key, given that it beats the threshold: u uniform in (exp(threshold * w), 1).
    const double low = std::exp(threshold * weight);
    hold({key_from_uniform(low + uniform.next() * (1.0 - low), weight), col});
    ++col;
  }
  for (; col < num_cols; ++col) bound_at(col);  // every weight is checked
  return valid;
}

template <typename Weights>
at::Tensor sample_rows(const Weights& weights, int64_t num_rows, int64_t num_cols, int64_t k, bool sorted,
                       uint64_t seed, const at::TensorOptions& options) {
  at::Tensor out = at::empty({num_rows, k}, options.dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  std::atomic<bool> saw_invalid{false};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(num_cols, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> best;
    best.reserve(k);
    for (int64_t row = begin; row < end; ++row) {
      if (!sample_row(weights, row, num_cols, k, seed, best)) saw_invalid.store(true, std::memory_order_relaxed);
      if (sorted) {
        std::sort(best.begin(), best.end(), by_column);
      } else {
        std::sort(best.begin(), best.end(), drawn_first);
      }
      const int64_t taken = static_cast<int64_t>(best.size());
      int64_t* row_out = out_data + row * k;
      for (int64_t j = 0; j < taken; ++j) row_out[j] = best[j].second;
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
