// 1-D k-means assignment and Lloyd-step accumulation (see kmeans.cpp).
#pragma once
#include <cstdint>

namespace kk {

struct KmeansArgs {
  const void* x;  // [n] float (x64 false) or double (x64 true)
  bool x64;
  int64_t n;
  const double* centroids;  // [k], sorted ascending
  int64_t k;
  int64_t* indices;  // [n] nearest centroid (ties to the lower one), or nullptr
  double* sums;      // [k] sum of the values assigned to each centroid, or nullptr
  int64_t* counts;   // [k] how many; required when sums is given
  int nthreads;
};

void kmeans1d_step(const KmeansArgs& a);

}  // namespace kk
