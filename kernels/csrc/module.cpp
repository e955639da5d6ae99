// nanobind bindings. Tensors arrive as DLPack-backed ndarrays; the Python wrappers have already
// validated dtypes, contiguity and shapes, and the checks here only guard against a crash if the
// raw functions are called directly.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <string>

#include "dispatch.h"

namespace nb = nanobind;

namespace {
template <class T>
using In = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;
template <class T>
using Out = nb::ndarray<T, nb::c_contig, nb::device::cpu>;

void require(bool ok, const char* what) {
  if (!ok) throw nb::value_error(what);
}

template <class X>
void check_csr(const X& x, int64_t out_features, const In<int32_t>& row_ptr,
               const In<int32_t>& col, size_t nval, const Out<float>& y) {
  require(x.ndim() == 2 && y.ndim() == 2, "x and y must be 2-D");
  require((int64_t)y.shape(0) == (int64_t)x.shape(0), "x and y batch sizes differ");
  require((int64_t)y.shape(1) == out_features, "y has the wrong number of columns");
  require(row_ptr.ndim() == 1 && (int64_t)row_ptr.shape(0) == out_features + 1,
          "row_ptr must have out_features + 1 entries");
  require(col.ndim() == 1 && col.shape(0) == nval, "col and values lengths differ");
  require(row_ptr.data()[0] == 0 && (size_t)row_ptr.data()[out_features] == nval,
          "row_ptr does not span the values");
}
}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "Kompaktor compiled kernels (CPU, runtime ISA dispatch)";
  m.def("version", []() { return 2; });
  m.def("best_isa", []() { return static_cast<int>(kk::best_isa()); },
        "Best path this CPU supports: 0 portable, 1 avx2, 2 avx512.");
  m.def("active_isa", []() { return static_cast<int>(kk::active_isa()); });
  m.def("set_isa", [](int isa) {
    require(isa >= 0 && isa <= 2, "isa must be 0, 1 or 2");
    return kk::set_isa(static_cast<kk::Isa>(isa));
  });

  m.def(
      "spmm_f32",
      [](In<float> x, In<int32_t> row_ptr, In<int32_t> col, In<float> val,
         std::optional<In<float>> bias, Out<float> y, int nthreads) {
        const int64_t out = (int64_t)y.shape(1);
        check_csr(x, out, row_ptr, col, val.shape(0), y);
        require(!bias || (int64_t)bias->shape(0) == out, "bias length differs from out_features");
        kk::SpmmF32Args a{x.data(),  (int64_t)x.shape(0), (int64_t)x.shape(1), out,
                          row_ptr.data(), col.data(), val.data(), bias ? bias->data() : nullptr,
                          y.data(),  nthreads};
        nb::gil_scoped_release release;
        kk::spmm_f32(a);
      },
      nb::arg("x"), nb::arg("row_ptr"), nb::arg("col"), nb::arg("values"), nb::arg("bias").none(),
      nb::arg("y"), nb::arg("nthreads"));

  m.def(
      "spmm_i8",
      [](In<float> x, In<int32_t> row_ptr, In<int32_t> col, In<int8_t> val, In<float> wscale,
         In<int32_t> rowsum, std::optional<In<float>> bias, Out<float> y, int nthreads) {
        const int64_t out = (int64_t)y.shape(1);
        check_csr(x, out, row_ptr, col, val.shape(0), y);
        require((int64_t)wscale.shape(0) == out && (int64_t)rowsum.shape(0) == out,
                "scales/rowsum length differs from out_features");
        require(!bias || (int64_t)bias->shape(0) == out, "bias length differs from out_features");
        kk::SpmmI8Args a{x.data(),      (int64_t)x.shape(0), (int64_t)x.shape(1), out,
                         row_ptr.data(), col.data(),         val.data(),          wscale.data(),
                         rowsum.data(), bias ? bias->data() : nullptr, y.data(), nthreads};
        nb::gil_scoped_release release;
        kk::spmm_i8(a);
      },
      nb::arg("x"), nb::arg("row_ptr"), nb::arg("col"), nb::arg("values"), nb::arg("scales"),
      nb::arg("rowsum"), nb::arg("bias").none(), nb::arg("y"), nb::arg("nthreads"));

  // Pointer entry points for the sparse-linear hot path: importing a torch tensor through DLPack
  // costs ~3 us each here, which is a third of a batch-1 layer. The Python op validated every
  // tensor (dtype, device, contiguity, shapes, CSR invariants) and keeps them alive for the call.
  m.def(
      "spmm_f32_ptr",
      [](uintptr_t x, int64_t B, int64_t in, int64_t out, uintptr_t row_ptr, uintptr_t col,
         uintptr_t val, uintptr_t bias, uintptr_t y, int nthreads) {
        kk::SpmmF32Args a{reinterpret_cast<const float*>(x),
                          B,
                          in,
                          out,
                          reinterpret_cast<const int32_t*>(row_ptr),
                          reinterpret_cast<const int32_t*>(col),
                          reinterpret_cast<const float*>(val),
                          reinterpret_cast<const float*>(bias),
                          reinterpret_cast<float*>(y),
                          nthreads};
        nb::gil_scoped_release release;
        kk::spmm_f32(a);
      });
  m.def(
      "spmm_i8_ptr",
      [](uintptr_t x, int64_t B, int64_t in, int64_t out, uintptr_t row_ptr, uintptr_t col,
         uintptr_t val, uintptr_t wscale, uintptr_t rowsum, uintptr_t bias, uintptr_t y,
         int nthreads) {
        kk::SpmmI8Args a{reinterpret_cast<const float*>(x),
                         B,
                         in,
                         out,
                         reinterpret_cast<const int32_t*>(row_ptr),
                         reinterpret_cast<const int32_t*>(col),
                         reinterpret_cast<const int8_t*>(val),
                         reinterpret_cast<const float*>(wscale),
                         reinterpret_cast<const int32_t*>(rowsum),
                         reinterpret_cast<const float*>(bias),
                         reinterpret_cast<float*>(y),
                         nthreads};
        nb::gil_scoped_release release;
        kk::spmm_i8(a);
      });

  m.def(
      "kd_loss",
      [](In<float> s, In<float> t, In<int64_t> labels, float T, float alpha,
         std::optional<Out<float>> grad, int nthreads) {
        require(s.ndim() == 2 && t.ndim() == 2 && s.shape(0) == t.shape(0) &&
                    s.shape(1) == t.shape(1),
                "student and teacher logits must be 2-D with equal shapes");
        require(labels.ndim() == 1 && labels.shape(0) == s.shape(0), "labels must be [rows]");
        require(!grad || (grad->ndim() == 2 && grad->shape(0) == s.shape(0) &&
                          grad->shape(1) == s.shape(1)),
                "grad must match the logits");
        kk::KdArgs a{s.data(), t.data(), labels.data(), (int64_t)s.shape(0), (int64_t)s.shape(1),
                     T,        alpha,    grad ? grad->data() : nullptr,      nthreads};
        nb::gil_scoped_release release;
        return kk::kd_loss(a);
      },
      nb::arg("student"), nb::arg("teacher"), nb::arg("labels"), nb::arg("temperature"),
      nb::arg("alpha"), nb::arg("grad").none(), nb::arg("nthreads"),
      "Sum over rows of the per-row distillation loss; fills grad (of the mean) if given.");
}
