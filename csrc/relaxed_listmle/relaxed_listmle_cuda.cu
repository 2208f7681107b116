// Relaxed ListMLE on CUDA: one thread per row runs the shared row functions
// of relaxed_listmle.h, so the GPU computes exactly what the CPU does. Rows
// are short (K and L are tens to hundreds) and many, which one thread per row
// serves well. The forward writes the per-entry denominators, a second
// output in the accumulation type, which the backward reads.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>


#include "relaxed_listmle.h"

namespace rankdistill {
namespace {

constexpr int kThreads = 128;

// Row `row` of a [B, n] input, given its row 0 (values and mask contiguous).
template <typename scalar_t>
__device__ __forceinline__ ListRow<scalar_t> row_at(const ListRow<scalar_t>& first, int64_t row) {
  return {first.values + row * first.size, first.mask == nullptr ? nullptr : first.mask + row * first.size,
          first.size};
}

template <typename scalar_t, typename acc_t>
__global__ void listmle_forward_kernel(ListRow<scalar_t> ranked, ListRow<scalar_t> tail, int64_t num_rows,
                                       acc_t* denominators, acc_t* loss) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= num_rows) return;
  loss[row] = listmle_denominators<scalar_t, acc_t>(row_at(ranked, row), row_at(tail, row),
                                                    denominators + row * ranked.size);
}

template <typename scalar_t, typename acc_t>
__global__ void listmle_backward_kernel(const acc_t* grad_loss, ListRow<scalar_t> ranked, ListRow<scalar_t> tail,
                                        int64_t num_rows, const acc_t* denominators, scalar_t* grad_ranked,
                                        scalar_t* grad_tail) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= num_rows) return;
  listmle_row_backward<scalar_t, acc_t>(grad_loss[row], row_at(ranked, row), row_at(tail, row),
                                        denominators + row * ranked.size, grad_ranked + row * ranked.size,
                                        grad_tail + row * tail.size);
}

unsigned int row_blocks(int64_t num_rows) { return static_cast<unsigned int>((num_rows + kThreads - 1) / kThreads); }

std::tuple<at::Tensor, at::Tensor> relaxed_listmle_cuda(const at::Tensor& ranked, const at::Tensor& tail,
                                                        const std::optional<at::Tensor>& ranked_mask,
                                                        const std::optional<at::Tensor>& tail_mask) {
  check_relaxed_listmle_inputs(ranked, tail, ranked_mask, tail_mask);
  const c10::cuda::CUDAGuard device_guard(ranked.device());
  const ListmleInputs in(ranked, tail, ranked_mask, tail_mask);
  const int64_t num_rows = ranked.size(0), K = ranked.size(1);
  const auto acc_options = ranked.options().dtype(accumulate_dtype(ranked.scalar_type()));
  at::Tensor loss = at::empty({num_rows}, acc_options), denominators = at::empty({num_rows, K}, acc_options);
  if (num_rows == 0) return {loss, denominators};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ranked.scalar_type(), "relaxed_listmle_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    listmle_forward_kernel<scalar_t, acc_t><<<row_blocks(num_rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.ranked_row<scalar_t>(0), in.tail_row<scalar_t>(0), num_rows, denominators.mutable_data_ptr<acc_t>(),
        loss.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, denominators};
}

std::tuple<at::Tensor, at::Tensor> relaxed_listmle_backward_cuda(const at::Tensor& grad_loss,
                                                                 const at::Tensor& ranked, const at::Tensor& tail,
                                                                 const std::optional<at::Tensor>& ranked_mask,
                                                                 const std::optional<at::Tensor>& tail_mask,
                                                                 const at::Tensor& denominators) {
  check_relaxed_listmle_backward_inputs(grad_loss, ranked, tail, ranked_mask, tail_mask, denominators);
  const c10::cuda::CUDAGuard device_guard(ranked.device());
  const ListmleInputs in(ranked, tail, ranked_mask, tail_mask);
  const int64_t num_rows = ranked.size(0);
  at::Tensor grad_ranked = at::empty_like(in.ranked), grad_tail = at::empty_like(in.tail);
  if (num_rows == 0) return {grad_ranked, grad_tail};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ranked.scalar_type(), "relaxed_listmle_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const at::Tensor grad = grad_loss.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const at::Tensor denominators_contiguous = denominators.contiguous();
    listmle_backward_kernel<scalar_t, acc_t><<<row_blocks(num_rows), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<acc_t>(), in.ranked_row<scalar_t>(0), in.tail_row<scalar_t>(0), num_rows,
        denominators_contiguous.const_data_ptr<acc_t>(), grad_ranked.mutable_data_ptr<scalar_t>(),
        grad_tail.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_ranked, grad_tail};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) {
  m.impl("relaxed_listmle", &relaxed_listmle_cuda);
  m.impl("relaxed_listmle_backward", &relaxed_listmle_backward_cuda);
}

}  // namespace rankdistill
