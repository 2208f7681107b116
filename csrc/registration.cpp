// The one place where the schemas of rankdistill's ops are defined.
// Kernels are registered per dispatch key next to their implementation
// (csrc/<op>/<op>_cpu.cpp, csrc/<op>/<op>_cuda.cu); fake (meta) kernels and
// autograd are registered from Python (rankdistill/ops.py).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

// `import rankdistill._C` loads this shared library, which runs the
// TORCH_LIBRARY static initialisers below.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(rankdistill, m) {
  m.def(
      "rank_positions(Tensor scores, Tensor? targets, Tensor? exclude_indptr, "
      "Tensor? exclude_indices) -> Tensor");
  m.def(
      "weighted_sample(Tensor weights, int k, bool sorted, Generator? generator) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "discrepancy_sample(Tensor student_rank, Tensor teacher_rank, int k, float mu, "
      "bool under, bool sorted, Generator? generator) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  // Returns the per-row loss and the per-entry denominators D_k, which the
  // backward reads instead of recomputing.
  m.def(
      "relaxed_listmle(Tensor ranked, Tensor tail, Tensor? ranked_mask, "
      "Tensor? tail_mask) -> (Tensor, Tensor)");
  m.def(
      "relaxed_listmle_backward(Tensor grad_loss, Tensor ranked, Tensor tail, "
      "Tensor? ranked_mask, Tensor? tail_mask, Tensor denominators) -> (Tensor, Tensor)");
}
