#pragma once
// Input checks shared by every kernel. The TORCH_CHECK_* variants map to
// Python exception types: _TYPE -> TypeError, _VALUE -> ValueError,
// _INDEX -> IndexError, so users see a clear, catchable error.
#include <ATen/core/Tensor.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string>

namespace rankdistill {

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == dim, name, " must be a ", dim, "-D tensor, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* name,
                              const char* reference_name) {
  TORCH_CHECK_VALUE(t.device() == reference.device(), name, " is on ", t.device(), " but ", reference_name,
                    " is on ", reference.device(), ": all inputs must be on the same device");
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
                   name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

inline void check_dtype(const at::Tensor& t, at::ScalarType dtype, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

// A (B, n) boolean padding mask, True marking valid entries.
inline void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& values, const char* name,
                       const char* values_name) {
  if (!mask.has_value()) return;
  check_dtype(*mask, at::kBool, name);
  check_same_device(*mask, values, name, values_name);
  TORCH_CHECK_VALUE(mask->sizes() == values.sizes(), name, " must have the shape of ", values_name, " ",
                    values.sizes(), ", got ", mask->sizes());
}

// Checks 0 <= index < bound for every entry (one small reduction; on CUDA it
// synchronises once, which is the price of a clear error instead of a crash).
inline void check_index_range(const at::Tensor& index, int64_t bound, const char* name, const char* bound_name) {
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  const int64_t min_value = lo.item<int64_t>(), max_value = hi.item<int64_t>();
  TORCH_CHECK_INDEX(min_value >= 0 && max_value < bound, name, " must lie in [0, ", bound_name, " = ", bound,
                    "), got values in [", min_value, ", ", max_value, "]");
}

}  // namespace rankdistill
