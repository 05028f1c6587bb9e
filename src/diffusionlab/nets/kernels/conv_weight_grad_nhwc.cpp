// Weight and bias gradients of a stride-1 k x k convolution (k odd, zero padding (k - 1) / 2, no groups) for
// channels_last bfloat16 tensors, with AVX512-BF16 dot products (vdpbf16ps) and float32 accumulation.
//
// dy is [N, Co, H, W] and x is [N, Ci, H, W], both stored channels_last (channel stride 1; other strides free, so
// a channel slice of a larger tensor is read in place). Returns dw [Co, Ci, k, k] float32 (channels_last) and
// db [Co] float32:
//   dw[co, ci, kh, kw] = sum over n, h, w of dy[n, co, h, w] * x[n, ci, h + kh - p, w + kw - p]  (0 outside)
//   db[co] = sum over n, h, w of dy[n, co, h, w]
// Every product of two bfloat16 numbers is exact in float32, so the only rounding is the float32 summation.
//
// Why not oneDNN's: without AMX, oneDNN runs this pass with an older kernel at 65-75% of the rate of its forward
// convolution (measured on an AMD Zen 5, 2026-12-06: 280-410 GFLOP/s per core against 500-600 forward). The
// loop below is a GEMM per tap, dw_tap[co, ci] += dy[p, co] * x[p + shift, ci] over pixels p, whose reduction
// runs over pixels. vdpbf16ps multiplies pairs of bfloat16 along the reduction, so the pairs are formed along
// the batch: images 2q and 2q + 1 at the same pixel (a zero image pads an odd batch). Shifting by a tap then
// never splits a pair, odd widths need nothing special, and x is repacked once per block (not once per tap):
//   A pack, per block: [pixel][co] uint32 = (dy[2q, co, pixel], dy[2q + 1, co, pixel])
//   B pack, per block: [row + 2p][col + 2p][ci] uint32 = the same pairs of x with a zero border of p pixels
// A block is a band of rows of one image pair, or several whole pairs of small images (~512 pixels either
// way): its packs stay in L2 while every (tap, co, ci) register tile walks them, and the next block's rows are
// prefetched into L2 a few lines per tile. Blocks are split over PyTorch's threads (at::parallel_for); each
// thread sums into its own float32 dw, added up at the end.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define DIFFUSIONLAB_CONV_WGRAD_AVX512 1
#include <immintrin.h>
#endif

namespace {

bool supported() {
#ifdef DIFFUSIONLAB_CONV_WGRAD_AVX512
  return true;
#else
  return false;
#endif
}

#ifdef DIFFUSIONLAB_CONV_WGRAD_AVX512

// One row of `count` pixels (pixel stride ps, in bf16 elements): out[w * n + c] (uint32) = low half
// p0[w * ps + c], high half p1[w * ps + c], for c < n (a null row reads as zeros); when db is given,
// db[c] += the row's sum of p0 + p1 (dot products with (1, 1), exact in float32, kept in registers per row).
inline void interleave_row(const uint16_t* p0, const uint16_t* p1, int64_t ps, int64_t count, int64_t n, uint32_t* out,
                           float* db) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6,
                                      37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54,
                                      22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int64_t c = 0; c < n; c += 32) {
    const int64_t r = std::min<int64_t>(32, n - c);
    const __mmask32 m = r == 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << r) - 1);
    const __mmask16 m0 = (__mmask16)(r >= 16 ? 0xffff : (1u << r) - 1);
    const __mmask16 m1 = (__mmask16)(r >= 32 ? 0xffff : r > 16 ? (1u << (r - 16)) - 1 : 0);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    for (int64_t w = 0; w < count; ++w) {
      const __m512i a = p0 ? _mm512_maskz_loadu_epi16(m, p0 + w * ps + c) : _mm512_setzero_si512();
      const __m512i b = p1 ? _mm512_maskz_loadu_epi16(m, p1 + w * ps + c) : _mm512_setzero_si512();
      const __m512i o0 = _mm512_permutex2var_epi16(a, lo, b), o1 = _mm512_permutex2var_epi16(a, hi, b);
      _mm512_mask_storeu_epi32(out + w * n + c, m0, o0);
      if (m1) _mm512_mask_storeu_epi32(out + w * n + c + 16, m1, o1);
      if (db) {
        s0 = _mm512_dpbf16_ps(s0, (__m512bh)o0, ones);
        s1 = _mm512_dpbf16_ps(s1, (__m512bh)o1, ones);
      }
    }
    if (db) {
      _mm512_mask_storeu_ps(db + c, m0, _mm512_add_ps(_mm512_maskz_loadu_ps(m0, db + c), s0));
      if (m1) _mm512_mask_storeu_ps(db + c + 16, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, db + c + 16), s1));
    }
  }
}

struct Geometry {
  int64_t N, H, W, Co, Ci, pad, Wp;
  int64_t rows;      // output rows per segment (a band of one image pair)
  int64_t segments;  // segments per block
  int64_t a_size() const { return rows * W * Co; }                // uint32 per segment of the A pack
  int64_t b_size() const { return (rows + 2 * pad) * Wp * Ci; }  // uint32 per segment of the B pack
};

struct Segment {
  int64_t pair, h0, rows;  // images 2 * pair and 2 * pair + 1, output rows h0 .. h0 + rows - 1
};

// Byte ranges of the next block's inputs, touched into L2 a few cache lines at a time.
struct Prefetcher {
  std::vector<std::pair<const char*, int64_t>> ranges;
  size_t range = 0;
  int64_t offset = 0, lines = 0;
  void reset() {
    ranges.clear();
    range = 0;
    offset = 0;
    lines = 0;
  }
  void add(const uint16_t* start, int64_t bytes) {
    ranges.emplace_back(reinterpret_cast<const char*>(start), bytes);
    lines += bytes / 64 + 1;
  }
  void some(int64_t n) {
    for (; n > 0 && range < ranges.size(); --n) {
      _mm_prefetch(ranges[range].first + offset, _MM_HINT_T1);
      offset += 64;
      if (offset >= ranges[range].second) {
        ++range;
        offset = 0;
      }
    }
  }
};

// acc_out[co0 .. co0 + CT, ci0 .. ci0 + 16 * CZ] (one tap's [Co, Ci] float32) += the block's products for tap
// (kh, kw): CT x CZ accumulators of 16 floats, each step one broadcast pair of dy per co and one vector of 16
// x pairs per 16 ci.
template <int CT, int CZ>
void tile(const Geometry& g, const Segment* segs, int64_t nseg, const uint32_t* A, const uint32_t* B, int64_t kh,
          int64_t kw, int64_t co0, int64_t ci0, float* acc_out) {
  __m512 acc[CT][CZ];
  for (int t = 0; t < CT; ++t)
    for (int z = 0; z < CZ; ++z) acc[t][z] = _mm512_loadu_ps(acc_out + (co0 + t) * g.Ci + ci0 + 16 * z);
  const int64_t Ci = g.Ci, Co = g.Co, W = g.W;
  for (int64_t s = 0; s < nseg; ++s) {
    const uint32_t* As = A + s * g.a_size() + co0;
    const uint32_t* Bs = B + s * g.b_size() + ci0;
    for (int64_t r = 0; r < segs[s].rows; ++r) {
      const uint32_t* a = As + r * W * Co;
      const uint32_t* b = Bs + ((r + kh) * g.Wp + kw) * Ci;
      for (int64_t w = 0; w < W; ++w) {
        __m512bh bz[CZ];
        for (int z = 0; z < CZ; ++z) bz[z] = (__m512bh)_mm512_loadu_si512(b + w * Ci + 16 * z);
        for (int t = 0; t < CT; ++t) {
          const __m512bh at = (__m512bh)_mm512_set1_epi32((int)a[w * Co + t]);
          for (int z = 0; z < CZ; ++z) acc[t][z] = _mm512_dpbf16_ps(acc[t][z], at, bz[z]);
        }
      }
    }
  }
  for (int t = 0; t < CT; ++t)
    for (int z = 0; z < CZ; ++z) _mm512_storeu_ps(acc_out + (co0 + t) * g.Ci + ci0 + 16 * z, acc[t][z]);
}

using TileFn = void (*)(const Geometry&, const Segment*, int64_t, const uint32_t*, const uint32_t*, int64_t, int64_t,
                        int64_t, int64_t, float*);

// At most 24 accumulators (+ CZ loaded x vectors + 1 broadcast <= 32 registers).
constexpr int max_ct(int cz) { return std::min(12, 24 / cz); }

constexpr int64_t co_tiles(int64_t co, int64_t cz) { return (co + max_ct(cz) - 1) / max_ct(cz); }

template <int CZ, int... CTs>
TileFn pick(int ct, std::integer_sequence<int, CTs...>) {
  static constexpr TileFn fns[] = {tile<CTs + 1, CZ>...};
  return fns[ct - 1];
}

TileFn tile_fn(int ct, int cz) {
  switch (cz) {
    case 1: return pick<1>(ct, std::make_integer_sequence<int, max_ct(1)>{});
    case 2: return pick<2>(ct, std::make_integer_sequence<int, max_ct(2)>{});
    case 3: return pick<3>(ct, std::make_integer_sequence<int, max_ct(3)>{});
    default: return pick<4>(ct, std::make_integer_sequence<int, max_ct(4)>{});
  }
}

void pack_segment(const Geometry& g, const Segment& sg, const uint16_t* D, const int64_t* ds, const uint16_t* X,
                  const int64_t* xs, uint32_t* As, uint32_t* Bs, float* db) {
  const int64_t n0 = 2 * sg.pair;
  const bool second = n0 + 1 < g.N;
  const uint16_t* D0 = D + n0 * ds[0];
  const uint16_t* X0 = X + n0 * xs[0];
  const uint16_t* D1 = second ? D0 + ds[0] : nullptr;
  const uint16_t* X1 = second ? X0 + xs[0] : nullptr;
  for (int64_t r = 0; r < sg.rows; ++r) {
    const int64_t o = (sg.h0 + r) * ds[2];
    interleave_row(D0 + o, D1 ? D1 + o : nullptr, ds[3], g.W, g.Co, As + r * g.W * g.Co, db);
  }
  for (int64_t rp = 0; rp < sg.rows + 2 * g.pad; ++rp) {  // the border columns stay zero from the allocation
    const int64_t h = sg.h0 + rp - g.pad;
    const bool inside = h >= 0 && h < g.H;
    const int64_t o = h * xs[2];
    interleave_row(inside ? X0 + o : nullptr, inside && X1 ? X1 + o : nullptr, xs[3], g.W, g.Ci,
                   Bs + (rp * g.Wp + g.pad) * g.Ci, nullptr);
  }
}

void prefetch_segment(Prefetcher& pf, const Geometry& g, const Segment& sg, const uint16_t* D, const int64_t* ds,
                      const uint16_t* X, const int64_t* xs) {
  for (int64_t n = 2 * sg.pair; n < std::min(g.N, 2 * sg.pair + 2); ++n) {
    const int64_t lo = std::max<int64_t>(0, sg.h0 - g.pad), hi = std::min(g.H, sg.h0 + sg.rows + g.pad);
    for (int64_t h = lo; h < hi; ++h) pf.add(X + n * xs[0] + h * xs[2], ((g.W - 1) * xs[3] + g.Ci) * 2);
    for (int64_t h = sg.h0; h < sg.h0 + sg.rows; ++h) pf.add(D + n * ds[0] + h * ds[2], ((g.W - 1) * ds[3] + g.Co) * 2);
  }
}

#endif  // DIFFUSIONLAB_CONV_WGRAD_AVX512

std::vector<at::Tensor> weight_grad(const at::Tensor& dy, const at::Tensor& x, int64_t k) {
  TORCH_CHECK(supported(), "diffusionlab_conv::weight_grad: this build has no AVX512-BF16 (check supported() first)");
  TORCH_CHECK(dy.dim() == 4 && x.dim() == 4, "weight_grad: dy and x must be 4-d [N, C, H, W], got ", dy.sizes(),
              " and ", x.sizes());
  TORCH_CHECK(dy.scalar_type() == at::kBFloat16 && x.scalar_type() == at::kBFloat16,
              "weight_grad: dy and x must be bfloat16, got ", dy.scalar_type(), " and ", x.scalar_type());
  TORCH_CHECK(dy.device().is_cpu() && x.device().is_cpu(), "weight_grad: CPU tensors only");
  TORCH_CHECK(dy.size(0) == x.size(0) && dy.size(2) == x.size(2) && dy.size(3) == x.size(3),
              "weight_grad: a stride-1 'same' convolution keeps N, H, W: dy ", dy.sizes(), " vs x ", x.sizes());
  TORCH_CHECK(k >= 1 && k % 2 == 1, "weight_grad: the kernel size must be odd, got ", k);
  TORCH_CHECK(x.size(1) % 16 == 0, "weight_grad: input channels must be a multiple of 16, got ", x.size(1));
  TORCH_CHECK((x.stride(1) == 1 || x.size(1) == 1) && (dy.stride(1) == 1 || dy.size(1) == 1),
              "weight_grad: dy and x must be channels_last (channel stride 1), got strides ", dy.strides(), " and ",
              x.strides());
  const int64_t taps = k * k, Co = dy.size(1), Ci = x.size(1);
  auto acc = at::zeros({at::get_num_threads(), taps, Co, Ci}, x.options().dtype(at::kFloat));
  auto dbias = at::zeros({at::get_num_threads(), Co}, x.options().dtype(at::kFloat));
#ifdef DIFFUSIONLAB_CONV_WGRAD_AVX512
  Geometry g;
  g.N = x.size(0), g.H = x.size(2), g.W = x.size(3), g.Co = Co, g.Ci = Ci;
  g.pad = (k - 1) / 2, g.Wp = g.W + 2 * g.pad;
  const int64_t target = 512;  // pixels (reduction pairs) per block
  g.rows = std::min<int64_t>(g.H, std::max<int64_t>(1, target / g.W));
  g.segments = std::max<int64_t>(1, target / (g.rows * g.W));
  std::vector<Segment> segs;
  for (int64_t pair = 0; pair < (g.N + 1) / 2; ++pair)
    for (int64_t h0 = 0; h0 < g.H; h0 += g.rows) segs.push_back({pair, h0, std::min(g.rows, g.H - h0)});
  const int64_t nseg = static_cast<int64_t>(segs.size()), nblocks = (nseg + g.segments - 1) / g.segments;
  const uint16_t* D = reinterpret_cast<const uint16_t*>(dy.data_ptr<at::BFloat16>());
  const uint16_t* X = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  const int64_t ds[4] = {dy.stride(0), dy.stride(1), dy.stride(2), dy.stride(3)};
  const int64_t xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  float* acc_all = acc.data_ptr<float>();
  float* db_all = dbias.data_ptr<float>();
  const int cz_full = static_cast<int>(std::min<int64_t>(4, Ci / 16));
  // input channels go in chunks of up to 4 vectors (cz), each chunk's Co in co_tiles register tiles
  auto chunk = [&](int64_t ci0) { return static_cast<int>(std::min<int64_t>(cz_full, (Ci - ci0) / 16)); };
  int64_t tiles = 0;  // register tiles per block, over which the next block's prefetch is spread
  for (int64_t ci0 = 0; ci0 < Ci; ci0 += 16 * chunk(ci0)) tiles += taps * co_tiles(Co, chunk(ci0));
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    float* acc_mine = acc_all + at::get_thread_num() * taps * Co * Ci;
    float* db_mine = db_all + at::get_thread_num() * Co;
    // 64-byte aligned by PyTorch's allocator; B starts zeroed for its border columns
    at::Tensor a_buf = at::empty({g.segments * g.a_size() + 16}, x.options().dtype(at::kInt));
    at::Tensor b_buf = at::zeros({g.segments * g.b_size() + 16}, x.options().dtype(at::kInt));
    uint32_t* A = reinterpret_cast<uint32_t*>(a_buf.data_ptr<int>());
    uint32_t* B = reinterpret_cast<uint32_t*>(b_buf.data_ptr<int>());
    Prefetcher pf;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const Segment* bs = segs.data() + blk * g.segments;
      const int64_t ns = std::min(g.segments, nseg - blk * g.segments);
      for (int64_t s = 0; s < ns; ++s) pack_segment(g, bs[s], D, ds, X, xs, A + s * g.a_size(), B + s * g.b_size(), db_mine);
      pf.reset();
      if (blk + 1 < b1)
        for (int64_t s = 0; s < std::min(g.segments, nseg - (blk + 1) * g.segments); ++s)
          prefetch_segment(pf, g, bs[g.segments + s], D, ds, X, xs);
      const int64_t per_tile = pf.lines / std::max<int64_t>(1, tiles) + 1;
      for (int64_t tap = 0; tap < taps; ++tap) {
        float* out = acc_mine + tap * Co * Ci;
        for (int64_t ci0 = 0; ci0 < Ci;) {
          const int cz = chunk(ci0);
          // Co in co_tiles near-equal tiles (64 = 9 x 6 + 2 x 5, not 10 x 6 + 4): fewer starved small tiles
          const int64_t n = co_tiles(Co, cz);
          for (int64_t i = 0, co0 = 0; i < n; ++i) {
            const int ct = static_cast<int>(Co / n + (i < Co % n));
            pf.some(per_tile);
            tile_fn(ct, cz)(g, bs, ns, A, B, tap / k, tap % k, co0, ci0, out);
            co0 += ct;
          }
          ci0 += 16 * cz;
        }
      }
    }
  });
#endif
  // [threads, k, k, Co, Ci] summed -> [Co, Ci, k, k] stored as [Co][k][k][Ci] (channels_last, like the weight)
  auto dw = acc.sum(0).view({k, k, Co, Ci}).permute({2, 3, 0, 1}).contiguous(at::MemoryFormat::ChannelsLast);
  return {dw, dbias.sum(0)};
}

}  // namespace

TORCH_LIBRARY(diffusionlab_conv, m) {
  m.def("supported() -> bool", &supported);
  m.def("weight_grad(Tensor dy, Tensor x, int k) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(diffusionlab_conv, CPU, m) { m.impl("weight_grad", &weight_grad); }
