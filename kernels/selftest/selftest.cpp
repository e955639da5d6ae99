// The kernels' C++ entry points against scalar references, with no Python: for targets where
// the extension cannot be imported here (arm64, run under qemu-user by
// scripts/check_arm64_build.sh) and as a native control run (tests/unit/kernels/test_selftest.py).
//
// Covers what the Python tests cover per ISA unit, on every unit this CPU has: fp32 sparse linear
// on the CSR kernels and on either or both panel layouts (and the sliced layout where the unit
// uses one), int8 bit for bit against the quantisation it specifies (and, where the unit has one,
// on the sliced layout), both index widths, row-major and feature-major x, 1 and 2 threads,
// shapes with partial blocks, panels and empty rows; and the fused distillation loss and its
// gradient; the 1-D k-means step (ISA-independent). Build this file with -ffp-contract=off: the references must round as written.
// Prints one line per failure (at most 20) and a summary; exits 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../csrc/dispatch.h"
#include "../csrc/kmeans.h"
#include "../csrc/sliced.h"

namespace {

int g_checks = 0, g_failures = 0;

void fail(const std::string& what) {
  if (++g_failures <= 20) std::printf("FAIL %s\n", what.c_str());
}

struct Rng {  // xorshift64*, uniform in [0, 1) and roughly normal
  uint64_t s = 0x9E3779B97F4A7C15ull;
  double uniform() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return (double)((s * 0x2545F4914F6CDD1Dull) >> 11) * 0x1.0p-53;
  }
  float normal() { return (float)(uniform() + uniform() + uniform() - 1.5) * 2.f; }
};

// CSR weights with both index widths; every 7th row empty, plus the density's own empties.
struct Csr {
  int64_t out = 0, in = 0;
  std::vector<int32_t> row_ptr{0};
  std::vector<uint16_t> col16;
  std::vector<int32_t> col32;
  std::vector<float> val;
  std::vector<int8_t> val8;  // symmetric per-row quantisation of val
  std::vector<float> wscale;
  std::vector<int32_t> rowsum;
};

Csr random_csr(int64_t out, int64_t in, double density, Rng& rng) {
  Csr w;
  w.out = out;
  w.in = in;
  for (int64_t r = 0; r < out; ++r) {
    float amax = 0.f;
    const size_t k0 = w.val.size();
    for (int64_t c = 0; c < in; ++c) {
      if (r % 7 == 6 || rng.uniform() >= density) continue;
      const float v = rng.normal();
      w.col16.push_back((uint16_t)c);
      w.col32.push_back((int32_t)c);
      w.val.push_back(v);
      amax = std::max(amax, std::fabs(v));
    }
    const float scale = amax > 0.f ? amax / 127.f : 1.f;
    int32_t sum = 0;
    for (size_t k = k0; k < w.val.size(); ++k) {
      const int8_t q = (int8_t)std::nearbyint(w.val[k] / scale);
      w.val8.push_back(q);
      sum += q;
    }
    w.wscale.push_back(scale);
    w.rowsum.push_back(sum);
    w.row_ptr.push_back((int32_t)w.val.size());
  }
  return w;
}

const void* cols(const Csr& w, bool col16) {
  return col16 ? static_cast<const void*>(w.col16.data()) : w.col32.data();
}

// A panel layout of w (sliced.h), built in its two passes as _sliced.py does.
struct Panels {
  std::vector<int32_t> group_start, step_off;
  std::vector<uint8_t> rows;
  std::vector<uint16_t> off;
  std::vector<float> w;
  int64_t cols;
  kk::PanelView view() const {
    return {group_start.data(), step_off.data(), rows.data(), off.data(), w.data(), cols};
  }
};

Panels build_panels(const Csr& w, bool col16, int64_t width) {
  const int64_t blocks = (w.out + kk::kPanelRows - 1) / kk::kPanelRows;
  const int64_t panels = (w.in + width - 1) / width;
  const int64_t groups = blocks * panels * (kk::kPanelRows / kk::kPanelGroup);
  Panels p{std::vector<int32_t>(blocks * panels + 1), std::vector<int32_t>(groups + 1),
           std::vector<uint8_t>(groups * kk::kPanelGroup), {}, {}, width};
  kk::PanelLayoutArgs a{w.row_ptr.data(), cols(w, col16), col16, w.val.data(), w.out, w.in,
                        width, p.group_start.data(), p.step_off.data(), p.rows.data(),
                        nullptr, nullptr};
  const int64_t slots = kk::panel_layout(a) * kk::kPanelGroup;
  p.off.assign(slots, 0);
  p.w.assign(slots, 0.f);
  a.off = p.off.data();
  a.w = p.w.data();
  kk::panel_layout(a);
  return p;
}

// A sliced layout of w's fp32 or int8 values (sliced.h), built in its two passes.
struct Sliced {
  std::vector<uint8_t> counts, idx;
  std::vector<int32_t> block_off;
  std::vector<float> wf;
  std::vector<int8_t> w8;
  kk::SlicedView view(bool f32) const {
    return {counts.data(), block_off.data(), idx.data(),
            f32 ? static_cast<const void*>(wf.data()) : w8.data()};
  }
};

Sliced build_sliced(const Csr& w, bool col16, bool f32) {
  const int64_t chunk = f32 ? kk::kSliceColsF32 : kk::kSliceColsI8;
  const int64_t depth = f32 ? kk::kSliceDepthF32 : kk::kSliceDepthI8;
  const int64_t blocks = (w.out + kk::kSliceRows - 1) / kk::kSliceRows;
  Sliced s{std::vector<uint8_t>(blocks * ((w.in + chunk - 1) / chunk)), {},
           std::vector<int32_t>(blocks + 1), {}, {}};
  const void* val = f32 ? static_cast<const void*>(w.val.data()) : w.val8.data();
  kk::SlicedLayoutArgs a{w.row_ptr.data(), cols(w, col16), col16, val, f32, w.out, w.in,
                         s.counts.data(), s.block_off.data(), nullptr, nullptr};
  const int64_t slots = kk::sliced_layout(a) * kk::kSliceRows * depth;
  s.idx.assign(slots, 0);
  if (f32)
    s.wf.assign(slots, 0.f);
  else
    s.w8.assign(slots, 0);
  a.idx = s.idx.data();
  a.w = f32 ? static_cast<void*>(s.wf.data()) : s.w8.data();
  kk::sliced_layout(a);
  return s;
}

// x [B][in] row-major, or its feature-major copy [in][B].
std::vector<float> lanes_inner(const std::vector<float>& x, int64_t B, int64_t in) {
  std::vector<float> t(x.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < in; ++i) t[i * B + b] = x[b * in + i];
  return t;
}

float y_at(const std::vector<float>& y, bool fm, int64_t B, int64_t out, int64_t b, int64_t r) {
  return fm ? y[r * B + b] : y[b * out + r];
}

// Which of x and y are feature-major: each on its own (a chain of sparse layers hands its
// activations on feature-major; its first layer reads a row-major x, its last writes y so).
struct Layouts {
  bool x, y;
};
constexpr Layouts kLayouts[] = {{false, false}, {true, true}, {false, true}, {true, false}};

// Thread counts to check a layout pair on: the mixed pairs only on two threads (each thread's
// rows are transposed in or out on their own), to keep the run short.
std::vector<int> thread_counts(Layouts fm) {
  return fm.x == fm.y ? std::vector{1, 2} : std::vector{2};
}

std::string where(const char* what, const Csr& w, double density, bool col16, int64_t B,
                  Layouts fm, int threads, const char* layout) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s isa=%d %lldx%lld density=%.2f col16=%d B=%lld x_fm=%d "
                "y_fm=%d threads=%d layout=%s", what, (int)kk::active_isa(), (long long)w.out,
                (long long)w.in, density, col16, (long long)B, fm.x, fm.y, threads, layout);
  return buf;
}

void check_f32(const Csr& w, double density, const std::vector<float>& bias, Rng& rng) {
  const bool avx512 = kk::active_isa() == kk::Isa::avx512;
  for (const bool col16 : {true, false}) {
    const Panels narrow = build_panels(w, col16, kk::kPanelColsNarrow);
    const Panels wide = build_panels(w, col16, kk::kPanelColsWide);
    const Sliced sliced = avx512 ? build_sliced(w, col16, true) : Sliced{};
    struct Layout {
      const char* name;
      kk::PanelView panels, wide_panels;
    };
    const Layout layouts[] = {{"csr", {}, {}},
                              {"narrow", narrow.view(), {}},
                              {"wide", {}, wide.view()},
                              {"both", narrow.view(), wide.view()}};
    for (const int64_t B : {1, 2, 3, 8, 16, 17, 24, 32, 41}) {
      std::vector<float> x(B * w.in);
      for (float& v : x) v = rng.normal();
      std::vector<double> ref(B * w.out), mag(B * w.out);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < w.out; ++r) {
          double s = bias[r], m = std::fabs(bias[r]);
          for (int32_t k = w.row_ptr[r]; k < w.row_ptr[r + 1]; ++k) {
            const double p = (double)w.val[k] * x[b * w.in + w.col32[k]];
            s += p;
            m += std::fabs(p);
          }
          ref[b * w.out + r] = s;
          mag[b * w.out + r] = m;
        }
      const std::vector<float> xt = lanes_inner(x, B, w.in);
      for (const Layout& l : layouts)
        for (const Layouts fm : kLayouts)
          for (const int threads : thread_counts(fm)) {
            std::vector<float> y(B * w.out, NAN);
            kk::SpmmF32Args a{fm.x ? xt.data() : x.data(), B, w.in, w.out, w.row_ptr.data(),
                              cols(w, col16), col16, w.val.data(), bias.data(), y.data(),
                              threads, B == 1 ? sliced.view(true) : kk::SlicedView{}, l.panels,
                              l.wide_panels, fm.x, fm.y};
            kk::spmm_f32(a);
            ++g_checks;
            for (int64_t b = 0; b < B; ++b)
              for (int64_t r = 0; r < w.out; ++r) {
                const double got = y_at(y, fm.y, B, w.out, b, r), want = ref[b * w.out + r];
                if (!(std::fabs(got - want) <= 1e-5 * (1.0 + mag[b * w.out + r]))) {
                  fail(where("spmm_f32", w, density, col16, B, fm, threads, l.name) +
                       " row " + std::to_string(r) + " lane " + std::to_string(b) + ": got " +
                       std::to_string(got) + ", want " + std::to_string(want));
                  b = B;
                  break;
                }
              }
          }
    }
  }
}

// The int8 arithmetic the kernels specify, written out: per-row asymmetric u8 activations,
// exact integer sums, then (acc - zp * rowsum) * (sx * ws), rounded, plus the bias. A row of x
// holding a NaN or an infinity gives NaN.
float i8_reference(const Csr& w, const float* x, int64_t r, float bias) {
  float mn = 0.f, mx = 0.f;
  for (int64_t i = 0; i < w.in; ++i) {
    if (!std::isfinite(x[i])) return NAN;
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  float scale = (mx - mn) / 255.f;
  if (scale == 0.f) scale = 1.f;
  const float zp = std::min(255.f, std::max(0.f, std::nearbyint(-mn / scale)));
  int32_t acc = 0;
  for (int32_t k = w.row_ptr[r]; k < w.row_ptr[r + 1]; ++k) {
    const float q = std::nearbyint(x[w.col32[k]] / scale) + zp;
    acc += (int32_t)std::min(255.f, std::max(0.f, q)) * w.val8[k];
  }
  const float p = (float)(acc - (int32_t)zp * w.rowsum[r]) * (scale * w.wscale[r]);
  return p + bias;
}

void check_i8(const Csr& w, double density, const std::vector<float>& bias, Rng& rng) {
  // The sliced layout runs on the x86 units: AVX-512 with vpermb where the CPU has VBMI and
  // (VBMI turned off, as on parts without it) with AVX512BW shuffles up to batch 8, AVX2 up to
  // batch 4; larger batches given it run the CSR kernels.
  const bool x86 = kk::active_isa() != kk::Isa::portable;
  const bool vbmi = kk::has_vbmi();
  for (const bool col16 : {true, false}) {
    const Sliced sliced = x86 ? build_sliced(w, col16, false) : Sliced{};
    for (const int layout : {0, 1, 2}) {  // CSR, sliced, sliced without VBMI
      if (layout > 0 && !x86) continue;
      if (layout == 2 && (!vbmi || kk::active_isa() != kk::Isa::avx512)) continue;
      const bool use_sliced = layout > 0;
      kk::set_vbmi(layout != 2 && vbmi);
      for (const int64_t B : {1, 2, 3, 4, 5, 8, 12, 17, 45, 70}) {
        std::vector<float> x(B * w.in);
        for (float& v : x) v = rng.normal();
        if (B >= 3) {  // a NaN in the first row, an infinity in the last
          x[(int64_t)(rng.uniform() * w.in)] = NAN;
          x[(B - 1) * w.in + (int64_t)(rng.uniform() * w.in)] = -INFINITY;
        }
        const std::vector<float> xt = lanes_inner(x, B, w.in);
        for (const Layouts fm : kLayouts)
          for (const int threads : thread_counts(fm)) {
            std::vector<float> y(B * w.out, NAN);
            kk::SpmmI8Args a{fm.x ? xt.data() : x.data(), B, w.in, w.out, w.row_ptr.data(),
                             cols(w, col16), col16, w.val8.data(), w.wscale.data(),
                             w.rowsum.data(), bias.data(), y.data(), threads,
                             use_sliced ? sliced.view(false) : kk::SlicedView{}, fm.x, fm.y};
            kk::spmm_i8(a);
            ++g_checks;
            for (int64_t b = 0; b < B; ++b)
              for (int64_t r = 0; r < w.out; ++r) {
                const float got = y_at(y, fm.y, B, w.out, b, r);
                const float want = i8_reference(w, x.data() + b * w.in, r, bias[r]);
                if (std::isnan(want) ? !std::isnan(got) : std::memcmp(&got, &want, sizeof got) != 0) {
                  fail(where("spmm_i8", w, density, col16, B, fm, threads,
                             layout == 2 ? "sliced without vbmi" : use_sliced ? "sliced" : "csr") +
                       " row " + std::to_string(r) + " lane " + std::to_string(b) + ": got " +
                       std::to_string(got) + ", want " + std::to_string(want));
                  b = B;
                  break;
                }
              }
          }
      }
    }
  }
  kk::set_vbmi(vbmi);
}

// alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, label) per row, and the
// gradient of the mean over the rows not labelled ignore_index (zero in those), in double;
// with no row ignored, with one, and with all (NaN loss, zero gradient).
void check_kd(Rng& rng) {
  const int64_t N = 5, V = 1001, ignore = -100;
  const float T = 2.f, alpha = 0.3f;
  std::vector<float> s(N * V), t(N * V);
  for (float& v : s) v = 3.f * rng.normal();
  for (float& v : t) v = 3.f * rng.normal();
  const std::vector<std::vector<int64_t>> label_sets{
      {0, 7, 1000, 500, 3}, {0, ignore, 1000, 500, 3}, {ignore, ignore, ignore, ignore, ignore}};
  for (const std::vector<int64_t>& labels : label_sets) {
    int64_t kept = 0;
    for (const int64_t l : labels) kept += l != ignore;
    double want = 0.0;
    std::vector<double> grad(N * V, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      if (labels[n] == ignore) continue;
      const float* sr = s.data() + n * V;
      const float* tr = t.data() + n * V;
      double ms = -INFINITY, mt = -INFINITY;
      for (int64_t j = 0; j < V; ++j) {
        ms = std::max(ms, (double)sr[j]);
        mt = std::max(mt, (double)tr[j]);
      }
      double zs = 0, zt = 0, z = 0;
      for (int64_t j = 0; j < V; ++j) {
        zs += std::exp((sr[j] - ms) / T);
        zt += std::exp((tr[j] - mt) / T);
        z += std::exp(sr[j] - ms);
      }
      double kl = 0;
      for (int64_t j = 0; j < V; ++j) {
        const double ls = (sr[j] - ms) / T - std::log(zs), lt = (tr[j] - mt) / T - std::log(zt);
        kl += std::exp(lt) * (lt - ls);
        const double g = alpha * T * (std::exp(ls) - std::exp(lt)) +
                         (1 - alpha) * (std::exp(sr[j] - ms) / z - (j == labels[n] ? 1.0 : 0.0));
        grad[n * V + j] = g / kept;
      }
      want += alpha * T * T * kl + (1 - alpha) * (std::log(z) + ms - sr[labels[n]]);
    }
    want = kept ? want / kept : NAN;
    for (const int threads : {1, 2}) {
      std::vector<float> g(N * V, NAN);
      const double got = kk::kd_loss(
          {s.data(), t.data(), labels.data(), N, V, T, alpha, ignore, g.data(), threads});
      ++g_checks;
      char buf[160];
      const bool ok = kept ? std::fabs(got - want) <= 1e-5 * std::fabs(want) : std::isnan(got);
      if (!ok) {
        std::snprintf(buf, sizeof buf, "kd_loss isa=%d threads=%d kept=%lld: loss %.8g, want %.8g",
                      (int)kk::active_isa(), threads, (long long)kept, got, want);
        fail(buf);
      }
      for (int64_t k = 0; k < N * V; ++k)
        if (!(std::fabs(g[k] - grad[k]) <= 1e-7 + 1e-4 * std::fabs(grad[k]))) {
          std::snprintf(buf, sizeof buf,
                        "kd_loss isa=%d threads=%d kept=%lld: grad[%lld] %.8g, want %.8g",
                        (int)kk::active_isa(), threads, (long long)kept, (long long)k, g[k],
                        grad[k]);
          fail(buf);
          break;
        }
    }
  }
}

// Nearest sorted centroid per value (ties, values exactly between two, to the lower one), and
// the per-cluster sums and counts of one Lloyd step; floats and doubles, 1 and 2 threads.
void check_kmeans(Rng& rng) {
  const int64_t n = 100003;
  for (const int64_t k : {1, 5, 256}) {
    std::vector<double> c(k);
    for (int64_t j = 0; j < k; ++j) c[j] = (double)j - 0.5 * (double)k + 0.25 * rng.uniform();
    std::vector<double> xd(n);
    for (int64_t i = 0; i < n; ++i)
      xd[i] = i % 97 == 0 && k > 1 ? (c[i % (k - 1)] + c[i % (k - 1) + 1]) / 2  // a tie
                                   : (double)k * (rng.uniform() - 0.5) * 1.2;
    for (const bool x64 : {false, true}) {
      std::vector<float> xf(xd.begin(), xd.end());
      std::vector<int64_t> want_idx(n), want_counts(k, 0);
      std::vector<double> want_sums(k, 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const double v = x64 ? xd[i] : (double)xf[i];
        int64_t j = 0;  // midpoints strictly below v
        while (j + 1 < k && (c[j] + c[j + 1]) / 2 < v) ++j;
        want_idx[i] = j;
        want_sums[j] += v;
        ++want_counts[j];
      }
      for (const int threads : {1, 2}) {
        std::vector<int64_t> idx(n, -1), counts(k, -1);
        std::vector<double> sums(k, NAN);
        kk::kmeans1d_step({x64 ? static_cast<const void*>(xd.data()) : xf.data(), x64, n,
                           c.data(), k, idx.data(), sums.data(), counts.data(), threads});
        ++g_checks;
        bool ok = idx == want_idx && counts == want_counts;
        for (int64_t j = 0; j < k; ++j)
          ok = ok && std::fabs(sums[j] - want_sums[j]) <= 1e-9 * (1.0 + std::fabs(want_sums[j]) +
                                                                  (double)want_counts[j] * k);
        if (!ok) {
          char buf[96];
          std::snprintf(buf, sizeof buf, "kmeans1d_step k=%lld x64=%d threads=%d", (long long)k,
                        x64, threads);
          fail(buf);
        }
      }
    }
  }
}

}  // namespace

int main() {
  struct Shape {
    int64_t out, in;
  };
  // Partial row blocks, panels, chunks and groups; 300 x 700 spans two narrow panels and
  // three 128-row blocks.
  const Shape shapes[] = {{1, 1}, {7, 5}, {133, 777}, {64, 1000}, {300, 700}};
  for (int isa = 0; isa <= (int)kk::best_isa(); ++isa) {
    kk::set_isa((kk::Isa)isa);
    Rng rng;
    for (const Shape& sh : shapes)
      for (const double density : {1.0, 0.5, 0.1, 0.01, 0.0}) {
        const Csr w = random_csr(sh.out, sh.in, density, rng);
        std::vector<float> bias(sh.out);
        for (float& b : bias) b = rng.normal();
        check_f32(w, density, bias, rng);
        check_i8(w, density, bias, rng);
      }
    check_kd(rng);
  }
  Rng rng;
  check_kmeans(rng);
  std::printf("%d checks on ISA units 0..%d, %d failed\n", g_checks, (int)kk::best_isa(),
              g_failures);
  return g_failures == 0 ? 0 : 1;
}
