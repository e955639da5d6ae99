// 1-D k-means (weight sharing): nearest-centroid assignment fused with the per-cluster sums
// and counts of one Lloyd step, in one pass and without materialising the index tensor.
// Plain scalar C++ (compiled once for the baseline target): the search is a branchless binary
// search over the padded midpoints, which is latency-bound, not vector-bound.
#include "kmeans.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kk {
namespace {

constexpr int64_t kBlock = 1 << 15;  // values per partial sum: fixes the summation order

// Midpoints between sorted centroids, padded with +inf to 2^m - 1 entries.
struct Search {
  std::vector<double> mid;
  int64_t top = 0;  // largest power of two <= number of padded slots + 1, halved each step
};

Search make_search(const double* c, int64_t k) {
  Search s;
  int64_t p = 1;
  while (p < k) p *= 2;
  s.mid.assign(std::max<int64_t>(p - 1, 1), std::numeric_limits<double>::infinity());
  for (int64_t i = 0; i + 1 < k; ++i) s.mid[i] = (c[i] + c[i + 1]) / 2;
  s.top = p / 2;
  return s;
}

// Number of midpoints strictly below v (torch.bucketize(v, midpoints), right=False); NaN goes
// to the last cluster as bucketize puts it past every boundary.
inline int64_t bucket(const Search& s, const double* mid, double v, int64_t last) {
  if (v != v) return last;
  int64_t pos = 0;
  for (int64_t step = s.top; step > 0; step >>= 1) pos += (mid[pos + step - 1] < v) ? step : 0;
  return pos;
}

template <class T>
void step_impl(const KmeansArgs& a, const T* x) {
  const Search s = make_search(a.centroids, a.k);
  const double* mid = s.mid.data();
  const int64_t k = a.k, n = a.n, last = a.k - 1;
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  const bool acc = a.sums != nullptr;
  // Per block: four interleaved copies of the sums and counts, so that runs of values in the
  // same cluster do not serialise on one memory location.
  std::vector<double> bsum(acc ? nblocks * k : 0);
  std::vector<int64_t> bcnt(acc ? nblocks * k : 0);
  auto run = [&](int64_t b0, int64_t b1) {
    std::vector<double> s4(acc ? 4 * k : 0);
    std::vector<int64_t> c4(acc ? 4 * k : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      if (acc) {
        std::fill(s4.begin(), s4.end(), 0.0);
        std::fill(c4.begin(), c4.end(), 0);
      }
      for (int64_t i = lo; i < hi; ++i) {
        const double v = (double)x[i];
        const int64_t j = bucket(s, mid, v, last);
        if (a.indices) a.indices[i] = j;
        if (acc) {
          const int64_t r = (i & 3) * k + j;
          s4[r] += v;
          c4[r] += 1;
        }
      }
      if (acc) {
        for (int64_t j = 0; j < k; ++j) {
          bsum[b * k + j] = (s4[j] + s4[k + j]) + (s4[2 * k + j] + s4[3 * k + j]);
          bcnt[b * k + j] = (c4[j] + c4[k + j]) + (c4[2 * k + j] + c4[3 * k + j]);
        }
      }
    }
  };
#if defined(_OPENMP)
  if (a.nthreads > 1 && nblocks > 1) {
#pragma omp parallel num_threads(a.nthreads)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      run(nblocks * t / nt, nblocks * (t + 1) / nt);
    }
  } else {
    run(0, nblocks);
  }
#else
  run(0, nblocks);
#endif
  if (!acc) return;
  for (int64_t j = 0; j < k; ++j) {
    double sum = 0.0;
    int64_t cnt = 0;
    for (int64_t b = 0; b < nblocks; ++b) {
      sum += bsum[b * k + j];
      cnt += bcnt[b * k + j];
    }
    a.sums[j] = sum;
    a.counts[j] = cnt;
  }
}

}  // namespace

void kmeans1d_step(const KmeansArgs& a) {
  if (a.k <= 0) return;
  if (a.n == 0) {
    if (a.sums) std::fill(a.sums, a.sums + a.k, 0.0);
    if (a.counts) std::fill(a.counts, a.counts + a.k, 0);
    return;
  }
  if (a.x64)
    step_impl(a, static_cast<const double*>(a.x));
  else
    step_impl(a, static_cast<const float*>(a.x));
}

}  // namespace kk
