#pragma once
// The dtype sums are built in: float32 for float32 and the half types (a sum
// of tens of terms overflows float16 easily), float64 for float64. It is
// at::acc_type<scalar_t, /*is_cuda=*/true> as a ScalarType, for the outputs
// and buffers a kernel allocates before it dispatches on the input's type.
#include <c10/core/ScalarType.h>

namespace rankdistill {

inline at::ScalarType accumulate_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace rankdistill
