// nanobind bindings. The KD loss takes DLPack-backed ndarrays (re-checked here); the sparse-linear
// hot path takes raw pointers of tensors the Python side has fully validated (see below).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <optional>
#include <string>

#include "dispatch.h"
#include "kmeans.h"
#include "sliced.h"

namespace nb = nanobind;

namespace {
template <class T>
using In = nb::ndarray<const T, nb::c_contig, nb::device::cpu>;
template <class T>
using Out = nb::ndarray<T, nb::c_contig, nb::device::cpu>;

void require(bool ok, const char* what) {
  if (!ok) throw nb::value_error(what);
}

kk::SlicedView sliced_view(uintptr_t counts, uintptr_t block_off, uintptr_t idx, uintptr_t w) {
  return {reinterpret_cast<const uint8_t*>(counts), reinterpret_cast<const int32_t*>(block_off),
          reinterpret_cast<const uint8_t*>(idx), reinterpret_cast<const void*>(w)};
}

kk::PanelView panel_view(uintptr_t group_start, uintptr_t step_off, uintptr_t rows,
                         uintptr_t off, uintptr_t w, int64_t cols) {
  return {reinterpret_cast<const int32_t*>(group_start), reinterpret_cast<const int32_t*>(step_off),
          reinterpret_cast<const uint8_t*>(rows), reinterpret_cast<const uint16_t*>(off),
          reinterpret_cast<const float*>(w), cols};
}

// One layer's kernel arguments, all but the activations: called per batch with x and y.
// Derived layouts are built on first need: a call whose batch runs on one the plan lacks
// computes nothing and returns the missing ones (kLayout* bits) for Python to build and bind.
template <class Args, void (*Run)(const Args&), unsigned (*Uses)(int64_t)>
struct Plan {
  Args a;
  unsigned built;  // layouts bound, with every bit set where the layer never gets one
  unsigned operator()(uintptr_t x, int64_t batch, uintptr_t y, int nthreads,
                      bool x_feature_major, bool y_feature_major) const {
    if (const unsigned missing = Uses(batch) & ~built) return missing;
    Args r = a;
    r.x = reinterpret_cast<const float*>(x);
    r.B = batch;
    r.y = reinterpret_cast<float*>(y);
    r.nthreads = nthreads;
    r.x_feature_major = x_feature_major;
    r.y_feature_major = y_feature_major;
    nb::gil_scoped_release release;
    Run(r);
    return 0;
  }
};
using F32Plan = Plan<kk::SpmmF32Args, kk::spmm_f32, kk::spmm_f32_layouts>;
using I8Plan = Plan<kk::SpmmI8Args, kk::spmm_i8, kk::spmm_i8_layouts>;

}  // namespace

NB_MODULE(_native, m) {
  m.doc() = "Kompaktor compiled kernels (CPU, runtime ISA dispatch)";
  m.def("version", []() { return 9; });
  m.def("best_isa", []() { return static_cast<int>(kk::best_isa()); },
        "Best path this CPU supports: 0 portable, 1 avx2, 2 avx512.");
  m.def("active_isa", []() { return static_cast<int>(kk::active_isa()); });
  m.def("has_vbmi", []() { return kk::has_vbmi(); },
        "Whether the avx512 path uses AVX512_VBMI: vpermb in the sliced int8 kernel (else "
        "AVX512BW byte shuffles), and the vpermi2b batch-1 gather (in_features <= 1024) where "
        "no sliced layout is given.");
  m.def("set_vbmi", [](bool on) { return kk::set_vbmi(on); },
        "Stop (or resume) using AVX512_VBMI, to run the AVX512BW paths on a VBMI CPU; returns "
        "False if asked to use it on a CPU without it.");
  m.def("set_isa", [](int isa) {
    require(isa >= 0 && isa <= 2, "isa must be 0, 1 or 2");
    return kk::set_isa(static_cast<kk::Isa>(isa));
  });

  // Sparse-linear plans: a layer's weight pointers, bound once, then called with x and y.
  // Importing a torch tensor through DLPack costs ~3 us each here, a third of a batch-1 layer,
  // and passing the 20-odd weight pointers on every call ~0.5 us more. The Python side
  // validated every tensor (dtype, device, contiguity, shapes, CSR invariants) and keeps them
  // alive, with the derived layouts, as long as the plan.
  nb::class_<F32Plan>(m, "F32Plan")
      .def("__call__", &F32Plan::operator(), nb::arg("x"), nb::arg("batch"), nb::arg("y"),
           nb::arg("nthreads"), nb::arg("x_feature_major"), nb::arg("y_feature_major"));
  nb::class_<I8Plan>(m, "I8Plan")
      .def("__call__", &I8Plan::operator(), nb::arg("x"), nb::arg("batch"), nb::arg("y"),
           nb::arg("nthreads"), nb::arg("x_feature_major"), nb::arg("y_feature_major"));
  m.def("spmm_f32_plan",
        [](int64_t in, int64_t out, uintptr_t row_ptr, uintptr_t col, bool col16, uintptr_t val,
           uintptr_t bias, unsigned built, uintptr_t sl_counts, uintptr_t sl_block_off,
           uintptr_t sl_idx, uintptr_t sl_w, uintptr_t pn_group_start, uintptr_t pn_step_off,
           uintptr_t pn_rows, uintptr_t pn_off, uintptr_t pn_w, uintptr_t pw_group_start,
           uintptr_t pw_step_off, uintptr_t pw_rows, uintptr_t pw_off, uintptr_t pw_w) {
          return F32Plan{{nullptr,
                          0,
                          in,
                          out,
                          reinterpret_cast<const int32_t*>(row_ptr),
                          reinterpret_cast<const void*>(col),
                          col16,
                          reinterpret_cast<const float*>(val),
                          reinterpret_cast<const float*>(bias),
                          nullptr,
                          1,
                          sliced_view(sl_counts, sl_block_off, sl_idx, sl_w),
                          panel_view(pn_group_start, pn_step_off, pn_rows, pn_off, pn_w,
                                     kk::kPanelColsNarrow),
                          panel_view(pw_group_start, pw_step_off, pw_rows, pw_off, pw_w,
                                     kk::kPanelColsWide)},
                         built};
        });
  m.def("spmm_i8_plan",
        [](int64_t in, int64_t out, uintptr_t row_ptr, uintptr_t col, bool col16, uintptr_t val,
           uintptr_t wscale, uintptr_t rowsum, uintptr_t bias, unsigned built,
           uintptr_t sl_counts, uintptr_t sl_block_off, uintptr_t sl_idx, uintptr_t sl_w) {
          return I8Plan{{nullptr,
                         0,
                         in,
                         out,
                         reinterpret_cast<const int32_t*>(row_ptr),
                         reinterpret_cast<const void*>(col),
                         col16,
                         reinterpret_cast<const int8_t*>(val),
                         reinterpret_cast<const float*>(wscale),
                         reinterpret_cast<const int32_t*>(rowsum),
                         reinterpret_cast<const float*>(bias),
                         nullptr,
                         1,
                         sliced_view(sl_counts, sl_block_off, sl_idx, sl_w)},
                        built};
        });
  // Two passes: without idx/w it sizes the layout (counts, block offsets; returns the number
  // of slices), with them (zero-filled by the caller) it fills it.
  m.def("sliced_layout",
        [](uintptr_t row_ptr, uintptr_t col, bool col16, uintptr_t val, bool f32, int64_t out,
           int64_t in, uintptr_t counts, uintptr_t block_off, uintptr_t idx, uintptr_t w) {
          kk::SlicedLayoutArgs a{reinterpret_cast<const int32_t*>(row_ptr),
                                 reinterpret_cast<const void*>(col),
                                 col16,
                                 reinterpret_cast<const void*>(val),
                                 f32,
                                 out,
                                 in,
                                 reinterpret_cast<uint8_t*>(counts),
                                 reinterpret_cast<int32_t*>(block_off),
                                 reinterpret_cast<uint8_t*>(idx),
                                 reinterpret_cast<void*>(w)};
          nb::gil_scoped_release release;
          return kk::sliced_layout(a);
        });
  // Two passes, as sliced_layout: without off/w it fills the group tables and returns the
  // number of steps, with them (zero-filled by the caller) it fills the slots.
  m.def("panel_layout",
        [](uintptr_t row_ptr, uintptr_t col, bool col16, uintptr_t val, int64_t out, int64_t in,
           int64_t cols, uintptr_t group_start, uintptr_t step_off, uintptr_t rows, uintptr_t off,
           uintptr_t w) {
          require(cols == kk::kPanelColsWide || cols == kk::kPanelColsNarrow,
                  "cols must be one of the kernels' panel widths");
          kk::PanelLayoutArgs a{reinterpret_cast<const int32_t*>(row_ptr),
                                reinterpret_cast<const void*>(col),
                                col16,
                                reinterpret_cast<const float*>(val),
                                out,
                                in,
                                cols,
                                reinterpret_cast<int32_t*>(group_start),
                                reinterpret_cast<int32_t*>(step_off),
                                reinterpret_cast<uint8_t*>(rows),
                                reinterpret_cast<uint16_t*>(off),
                                reinterpret_cast<float*>(w)};
          nb::gil_scoped_release release;
          return kk::panel_layout(a);
        });

  m.def(
      "kd_loss",
      [](In<float> s, In<float> t, In<int64_t> labels, float T, float alpha,
         int64_t ignore_index, std::optional<Out<float>> grad, int nthreads) {
        require(s.ndim() == 2 && t.ndim() == 2 && s.shape(0) == t.shape(0) &&
                    s.shape(1) == t.shape(1),
                "student and teacher logits must be 2-D with equal shapes");
        require(labels.ndim() == 1 && labels.shape(0) == s.shape(0), "labels must be [rows]");
        require(!grad || (grad->ndim() == 2 && grad->shape(0) == s.shape(0) &&
                          grad->shape(1) == s.shape(1)),
                "grad must match the logits");
        kk::KdArgs a{s.data(),     t.data(), labels.data(), (int64_t)s.shape(0),
                     (int64_t)s.shape(1), T,  alpha,         ignore_index,
                     grad ? grad->data() : nullptr, nthreads};
        nb::gil_scoped_release release;
        return kk::kd_loss(a);
      },
      nb::arg("student"), nb::arg("teacher"), nb::arg("labels"), nb::arg("temperature"),
      nb::arg("alpha"), nb::arg("ignore_index"), nb::arg("grad").none(), nb::arg("nthreads"),
      "Mean over the rows not labelled ignore_index (NaN if none) of the distillation loss; "
      "fills grad (of that mean) if given.");

  m.def(
      "kmeans1d_step",
      [](nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu> x, In<double> centroids,
         std::optional<Out<int64_t>> indices, std::optional<Out<double>> sums,
         std::optional<Out<int64_t>> counts, int nthreads) {
        const bool f32 = x.dtype() == nb::dtype<float>(), f64 = x.dtype() == nb::dtype<double>();
        require(f32 || f64, "values must be float32 or float64");
        require(x.ndim() == 1 && centroids.ndim() == 1 && centroids.shape(0) > 0,
                "values and centroids must be 1-D, centroids non-empty");
        const int64_t n = (int64_t)x.shape(0), k = (int64_t)centroids.shape(0);
        require(!indices || (indices->ndim() == 1 && (int64_t)indices->shape(0) == n),
                "indices must have one entry per value");
        require(sums.has_value() == counts.has_value(), "sums and counts go together");
        require(!sums || (sums->ndim() == 1 && (int64_t)sums->shape(0) == k && counts->ndim() == 1 &&
                          (int64_t)counts->shape(0) == k),
                "sums and counts must have one entry per centroid");
        kk::KmeansArgs a{x.data(),
                         f64,
                         n,
                         centroids.data(),
                         k,
                         indices ? indices->data() : nullptr,
                         sums ? sums->data() : nullptr,
                         counts ? counts->data() : nullptr,
                         nthreads};
        nb::gil_scoped_release release;
        kk::kmeans1d_step(a);
      },
      nb::arg("values"), nb::arg("centroids"), nb::arg("indices").none(), nb::arg("sums").none(),
      nb::arg("counts").none(), nb::arg("nthreads"),
      "Nearest sorted centroid of each value (ties to the lower), and/or per-centroid sums and "
      "counts of one Lloyd step.");
}
