// Fused GroupNorm (+ optional SiLU) forward and backward for channels_last bfloat16 tensors on the CPU.
//
// x, y, grad and dx are [B, C, H, W] tensors stored channels_last, i.e. one [H*W, C] row-major slab per image.
// weight and bias are float32 [C]; mean and rstd are float32 [B, G]. An optional float32 `offset` [B, C] is
// added to x per image and channel before normalising (a UNet's time embedding: GroupNorm(h + temb) without
// materialising the sum); offset = 0 below when it is absent. Statistics and every intermediate are
// float32 (per-channel sums over H*W, combined into groups in double); only the stored outputs are bfloat16,
// rounded to nearest even. One image per task of at::parallel_for, so the op shares PyTorch's thread pool.
//
// Forward, per image b and group g (Cg = C / G channels, N = Cg * H * W values):
//   u = x + offset[b, c];  mean, rstd = mean and 1 / sqrt(var + eps) of the group's u (biased, as nn.GroupNorm)
//   y = (u - mean) * rstd * weight[c] + bias[c];  out = silu ? y * sigmoid(y) : y
// Backward: dy = grad (times silu'(y) = s * (1 + y * (1 - s)) when silu, s = sigmoid(y), y recomputed from x),
//   dbias[c] = sum dy,  dweight[c] = sum dy * (u - mean) * rstd   (over images and positions)
//   du = rstd * weight[c] * dy + c2 * u + c3 with, per group, ds = sum dy * weight * u, db = sum dy * weight,
//   c2 = (db * mean - ds) * rstd^3 / N and c3 = -c2 * mean - db * rstd / N (PyTorch's GroupNorm backward);
//   dx = du and doffset[b, c] = sum over positions of du.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// exp(x) as 2^n * 2^f, |f| <= 1/2, 2^f by its degree-4 Taylor polynomial (relative error < 1e-4, far below
// bfloat16's 4e-3): inline, so the loops vectorise without a call into libm. x is clamped to [-87, 88], so
// sigmoid() below stays exact at its limits (0 and 1) instead of overflowing the exponent bits.
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float t = x * 1.44269504088896341f;
  const float n = std::floor(t + 0.5f);
  const float f = t - n;
  float p = 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float y) { return 1.0f / (1.0f + exp_approx(-y)); }

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define DIFFUSIONLAB_GN_AVX512 1
#include <immintrin.h>

// 16 channels at a time with AVX-512 (tails masked): bfloat16 <-> float32 by a shift and by vcvtneps2bf16
// (round to nearest even, as float_to_bf16), exp as exp_approx's polynomial scaled by vscalefps, and
// 1 / (1 + e) by vrcp14ps (relative error < 2^-14, below bfloat16's 2^-9).
inline __m512 load_bf16(const uint16_t* p, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

inline void store_bf16(uint16_t* p, __m512 v, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

inline __m512 sigmoid16(__m512 y) {
  const __m512 x = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-88.f)), _mm512_set1_ps(87.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(-1.44269504088896341f));  // log2(e^-y)
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(9.6181291076284772e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(p, n);
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
  return _mm512_rcp14_ps(d);
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// out[k] = act(x[k] * a[k] + b[k]) for k < c, act = SiLU or identity.
inline void affine_row(const uint16_t* x, const float* a, const float* b, uint16_t* out, int64_t c, bool silu) {
  for (int64_t k = 0; k < c; k += 16) {
    const __mmask16 m = tail_mask(c - k);
    __m512 v = _mm512_fmadd_ps(load_bf16(x + k, m), _mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k));
    if (silu) v = _mm512_mul_ps(v, sigmoid16(v));
    store_bf16(out + k, v, m);
  }
}

// The per-image loops below walk the [hw, c] slab in blocks of up to 64 channels (NV vectors of 16, the last
// one masked), every row of a block before the next block, so that the per-channel sums stay in registers
// instead of being loaded and stored for every row. f(std::integral_constant<int, NV>) for nv = 1..4:
template <typename F>
inline void with_vectors(int64_t nv, F&& f) {
  switch (nv) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

// Calls f(k0, masks, nv) for each block of channels [k0, k0 + 16 * nv) of c, with NV = nv as a constant.
template <typename F>
inline void for_channel_blocks(int64_t c, F&& f) {
  for (int64_t k0 = 0; k0 < c; k0 += 64) {
    const int64_t nv = std::min<int64_t>(4, (c - k0 + 15) / 16);
    __mmask16 m[4];
    for (int64_t j = 0; j < 4; ++j) m[j] = j < nv ? tail_mask(c - k0 - 16 * j) : 0;
    with_vectors(nv, [&](auto nvc) { f(k0, m, nvc); });
  }
}

// A block's NV vectors of per-channel floats p[k0 + 16 j ...] (masked), loaded into v or stored from it.
template <int NV>
inline void load_block(const float* p, int64_t k0, const __mmask16* m, __m512 (&v)[NV]) {
  for (int j = 0; j < NV; ++j) v[j] = _mm512_maskz_loadu_ps(m[j], p + k0 + 16 * j);
}

template <int NV>
inline void store_block(float* p, int64_t k0, const __mmask16* m, const __m512 (&v)[NV]) {
  for (int j = 0; j < NV; ++j) _mm512_mask_storeu_ps(p + k0 + 16 * j, m[j], v[j]);
}

// s[k] = sum over rows of (x[p, k] - pivot[k]), ss[k] = the same of its square (group_stats' first pass).
inline void channel_sums_avx512(const uint16_t* xb, const float* pivot, int64_t hw, int64_t c, float* s, float* ss) {
  for_channel_blocks(c, [&](int64_t k0, const __mmask16* m, auto nvc) {
    constexpr int NV = decltype(nvc)::value;
    __m512 piv[NV], sv[NV] = {}, ssv[NV] = {};
    load_block(pivot, k0, m, piv);
    for (int64_t p = 0; p < hw; ++p) {
      const uint16_t* row = xb + p * c + k0;
      for (int j = 0; j < NV; ++j) {
        const __m512 d = _mm512_maskz_sub_ps(m[j], load_bf16(row + 16 * j, m[j]), piv[j]);
        sv[j] = _mm512_add_ps(sv[j], d);
        ssv[j] = _mm512_fmadd_ps(d, d, ssv[j]);
      }
    }
    store_block(s, k0, m, sv);
    store_block(ss, k0, m, ssv);
  });
}

// The backward's first pass over one image: dy = grad (times silu'(y), y = x * a + b, when silu; then kept in
// dy_buf, float32 [hw, c]) and its per-channel sums sdy = sum dy, sdyx = sum dy * x.
template <bool silu>
void backward_sums_avx512(const uint16_t* xb, const uint16_t* gb, const float* a, const float* b, int64_t hw, int64_t c,
                          float* dy_buf, float* sdy, float* sdyx) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for_channel_blocks(c, [&](int64_t k0, const __mmask16* m, auto nvc) {
    constexpr int NV = decltype(nvc)::value;
    __m512 av[NV], bv[NV], sv[NV] = {}, sxv[NV] = {};
    load_block(a, k0, m, av);
    load_block(b, k0, m, bv);
    for (int64_t p = 0; p < hw; ++p) {
      const int64_t at = p * c + k0;
      for (int j = 0; j < NV; ++j) {
        const __m512 v = load_bf16(xb + at + 16 * j, m[j]);
        __m512 d = load_bf16(gb + at + 16 * j, m[j]);
        if constexpr (silu) {  // d * s * (1 + y * (1 - s)), s = sigmoid(y)
          const __m512 y = _mm512_fmadd_ps(v, av[j], bv[j]);
          const __m512 sg = sigmoid16(y);
          d = _mm512_mul_ps(_mm512_mul_ps(d, sg), _mm512_fmadd_ps(y, _mm512_sub_ps(one, sg), one));
          _mm512_mask_storeu_ps(dy_buf + at + 16 * j, m[j], d);
        }
        sv[j] = _mm512_add_ps(sv[j], d);
        sxv[j] = _mm512_fmadd_ps(d, v, sxv[j]);
      }
    }
    store_block(sdy, k0, m, sv);
    store_block(sdyx, k0, m, sxv);
  });
}

// The backward's second pass: du = c1 * dy + c2 * x + c3 (dy from dy_buf when silu, else the gradient itself)
// stored as bfloat16 into dxb, and sdu = its per-channel sums.
template <bool silu>
void backward_dx_avx512(const uint16_t* xb, const uint16_t* gb, const float* dy_buf, const float* c1, const float* c2,
                        const float* c3, int64_t hw, int64_t c, uint16_t* dxb, float* sdu) {
  for_channel_blocks(c, [&](int64_t k0, const __mmask16* m, auto nvc) {
    constexpr int NV = decltype(nvc)::value;
    __m512 c1v[NV], c2v[NV], c3v[NV], su[NV] = {};
    load_block(c1, k0, m, c1v);
    load_block(c2, k0, m, c2v);
    load_block(c3, k0, m, c3v);
    for (int64_t p = 0; p < hw; ++p) {
      const int64_t at = p * c + k0;
      for (int j = 0; j < NV; ++j) {
        const __m512 dy =
            silu ? _mm512_maskz_loadu_ps(m[j], dy_buf + at + 16 * j) : load_bf16(gb + at + 16 * j, m[j]);
        const __m512 du =
            _mm512_fmadd_ps(c1v[j], dy, _mm512_fmadd_ps(c2v[j], load_bf16(xb + at + 16 * j, m[j]), c3v[j]));
        store_bf16(dxb + at + 16 * j, du, m[j]);
        su[j] = _mm512_add_ps(su[j], du);
      }
    }
    store_block(sdu, k0, m, su);
  });
}

#endif

void check_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kBFloat16 && x.dim() == 4,
              "fused GroupNorm expects a CPU bfloat16 [B, C, H, W] tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), "fused GroupNorm expects a channels_last tensor");
  const int64_t c = x.size(1);
  TORCH_CHECK(groups > 0 && c % groups == 0, "fused GroupNorm: ", c, " channels do not split into ", groups, " groups");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == c,
              "fused GroupNorm expects a float32 weight of ", c, " values");
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == c,
              "fused GroupNorm expects a float32 bias of ", c, " values");
}

// The offset of image i ([c] floats), or nullptr without one.
const float* offset_row(const std::optional<at::Tensor>& offset, int64_t i, int64_t c) {
  return offset ? offset->data_ptr<float>() + i * c : nullptr;
}

void check_offset(const std::optional<at::Tensor>& offset, const at::Tensor& x) {
  if (!offset) return;
  TORCH_CHECK(offset->scalar_type() == at::kFloat && offset->is_contiguous() && offset->dim() == 2 &&
                  offset->size(0) == x.size(0) && offset->size(1) == x.size(1),
              "fused GroupNorm expects a contiguous float32 offset of shape [", x.size(0), ", ", x.size(1), "], got ",
              offset->scalar_type(), " ", offset->sizes());
}

// Per-channel mean and M2 (sum of squared deviations) of one [hw, c] slab, pivoted on the first row so that
// float32 sums do not cancel, the channel means moved by `off` (may be nullptr); then combined into per-group
// mean / rstd in double (Chan's parallel formula).
void group_stats(const uint16_t* xb, const float* off, int64_t hw, int64_t c, int64_t groups, double eps,
                 float* mean_out, float* rstd_out, std::vector<float>& s, std::vector<float>& ss,
                 std::vector<float>& pivot) {
  for (int64_t k = 0; k < c; ++k) {
    pivot[k] = bf16_to_float(xb[k]);
    s[k] = 0.f;
    ss[k] = 0.f;
  }
  float* __restrict sp = s.data();
  float* __restrict ssp = ss.data();
  const float* __restrict kp = pivot.data();
#ifdef DIFFUSIONLAB_GN_AVX512
  channel_sums_avx512(xb, kp, hw, c, sp, ssp);
#else
  for (int64_t p = 0; p < hw; ++p) {
    const uint16_t* __restrict row = xb + p * c;
#pragma omp simd
    for (int64_t k = 0; k < c; ++k) {
      const float d = bf16_to_float(row[k]) - kp[k];
      sp[k] += d;
      ssp[k] += d * d;
    }
  }
#endif
  const int64_t cg = c / groups;
  auto channel_mean = [&](int64_t k) { return kp[k] + static_cast<double>(sp[k]) / hw + (off ? off[k] : 0.f); };
  for (int64_t g = 0; g < groups; ++g) {
    double mean_sum = 0.0;
    for (int64_t k = g * cg; k < (g + 1) * cg; ++k) mean_sum += channel_mean(k);
    const double gmean = mean_sum / cg;
    double m2 = 0.0;
    for (int64_t k = g * cg; k < (g + 1) * cg; ++k) {
      const double cm2 = ssp[k] - static_cast<double>(sp[k]) * sp[k] / hw;
      m2 += (cm2 > 0.0 ? cm2 : 0.0) + hw * (channel_mean(k) - gmean) * (channel_mean(k) - gmean);
    }
    mean_out[g] = static_cast<float>(gmean);
    rstd_out[g] = static_cast<float>(1.0 / std::sqrt(m2 / (hw * cg) + eps));
  }
}

// a[k] = rstd * weight, b[k] = bias + (off - mean) * a: y = x * a + b for every channel k of one image.
void affine_coefficients(const float* mean, const float* rstd, const float* weight, const float* bias,
                         const float* off, int64_t c, int64_t groups, float* a, float* b) {
  const int64_t cg = c / groups;
  for (int64_t k = 0; k < c; ++k) {
    const int64_t g = k / cg;
    a[k] = rstd[g] * weight[k];
    b[k] = bias[k] + ((off ? off[k] : 0.f) - mean[g]) * a[k];
  }
}

std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                const std::optional<at::Tensor>& offset, int64_t groups, double eps, bool silu) {
  check_inputs(x, weight, bias, groups);
  check_offset(offset, x);
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  auto y = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto mean = at::empty({n, groups}, x.options().dtype(at::kFloat));
  auto rstd = at::empty({n, groups}, x.options().dtype(at::kFloat));
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>());
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* meanp = mean.data_ptr<float>();
  float* rstdp = rstd.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(c), ss(c), pivot(c), a(c), b(c);
    for (int64_t i = begin; i < end; ++i) {
      const uint16_t* xb = xp + i * hw * c;
      uint16_t* __restrict yb = yp + i * hw * c;
      const float* off = offset_row(offset, i, c);
      group_stats(xb, off, hw, c, groups, eps, meanp + i * groups, rstdp + i * groups, s, ss, pivot);
      affine_coefficients(meanp + i * groups, rstdp + i * groups, wp, bp, off, c, groups, a.data(), b.data());
      const float* __restrict ap = a.data();
      const float* __restrict bcp = b.data();
      for (int64_t p = 0; p < hw; ++p) {
        const uint16_t* __restrict row = xb + p * c;
        uint16_t* __restrict out = yb + p * c;
#ifdef DIFFUSIONLAB_GN_AVX512
        affine_row(row, ap, bcp, out, c, silu);
#else
        if (silu) {
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) {
            const float v = bf16_to_float(row[k]) * ap[k] + bcp[k];
            out[k] = float_to_bf16(v * sigmoid(v));
          }
        } else {
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) out[k] = float_to_bf16(bf16_to_float(row[k]) * ap[k] + bcp[k]);
        }
#endif
      }
    }
  });
  return {y, mean, rstd};
}

std::vector<at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& weight, const at::Tensor& bias,
                                 const std::optional<at::Tensor>& offset, int64_t groups, bool silu) {
  check_inputs(x, weight, bias, groups);
  check_offset(offset, x);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == at::kBFloat16 &&
                  grad.is_contiguous(at::MemoryFormat::ChannelsLast),
              "fused GroupNorm backward expects a channels_last bfloat16 gradient shaped like the input");
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3), cg = c / groups;
  auto dx = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  auto dweight_per_image = at::empty({n, c}, weight.options());
  auto dbias_per_image = at::empty({n, c}, weight.options());
  auto doffset = at::empty({offset ? n : 0, c}, weight.options());
  const auto* gp = reinterpret_cast<const uint16_t*>(grad.data_ptr<at::BFloat16>());
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>());
  auto* dxp = reinterpret_cast<uint16_t*>(dx.data_ptr<at::BFloat16>());
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const float* meanp = mean.data_ptr<float>();
  const float* rstdp = rstd.data_ptr<float>();
  float* dwp = dweight_per_image.data_ptr<float>();
  float* dbp = dbias_per_image.data_ptr<float>();
  float* dop = doffset.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    // dy of the whole image (float32 [hw, c]) is kept between the two passes so exp runs once per value.
    std::vector<float> dy_buf(silu ? hw * c : 0), a(c), b(c), sdy(c), sdyx(c), sdu(c), c1(c), c2(c), c3(c);
    for (int64_t i = begin; i < end; ++i) {
      const uint16_t* xb = xp + i * hw * c;
      const uint16_t* gb = gp + i * hw * c;
      uint16_t* __restrict dxb = dxp + i * hw * c;
      const float* gmean = meanp + i * groups;
      const float* grstd = rstdp + i * groups;
      const float* off = offset_row(offset, i, c);
      affine_coefficients(gmean, grstd, wp, bp, off, c, groups, a.data(), b.data());
      float* __restrict sdyp = sdy.data();
      float* __restrict sdyxp = sdyx.data();
      const float* __restrict ap = a.data();
      const float* __restrict bcp = b.data();
#ifdef DIFFUSIONLAB_GN_AVX512
      (silu ? backward_sums_avx512<true> : backward_sums_avx512<false>)(xb, gb, ap, bcp, hw, c, dy_buf.data(), sdyp,
                                                                         sdyxp);
#else
      for (int64_t k = 0; k < c; ++k) sdyp[k] = sdyxp[k] = 0.f;
      for (int64_t p = 0; p < hw; ++p) {
        const uint16_t* __restrict xrow = xb + p * c;
        const uint16_t* __restrict grow = gb + p * c;
        if (silu) {
          float* __restrict dyrow = dy_buf.data() + p * c;
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) {
            const float v = bf16_to_float(xrow[k]);
            const float yv = v * ap[k] + bcp[k];
            const float sg = sigmoid(yv);
            const float d = bf16_to_float(grow[k]) * sg * (1.f + yv * (1.f - sg));
            dyrow[k] = d;
            sdyp[k] += d;
            sdyxp[k] += d * v;
          }
        } else {
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) {
            const float d = bf16_to_float(grow[k]);
            sdyp[k] += d;
            sdyxp[k] += d * bf16_to_float(xrow[k]);
          }
        }
      }
#endif
      if (off)  // sum dy * u = sum dy * x + offset * sum dy
        for (int64_t k = 0; k < c; ++k) sdyxp[k] += off[k] * sdyp[k];
      for (int64_t g = 0; g < groups; ++g) {
        double ds = 0.0, db = 0.0;
        for (int64_t k = g * cg; k < (g + 1) * cg; ++k) {
          ds += static_cast<double>(sdyxp[k]) * wp[k];
          db += static_cast<double>(sdyp[k]) * wp[k];
          dwp[i * c + k] = (sdyxp[k] - gmean[g] * sdyp[k]) * grstd[g];
          dbp[i * c + k] = sdyp[k];
        }
        const double r = grstd[g], m = gmean[g], inv_n = 1.0 / static_cast<double>(cg * hw);
        const double k2 = (db * m - ds) * r * r * r * inv_n;
        const double k3 = -k2 * m - db * r * inv_n;
        for (int64_t k = g * cg; k < (g + 1) * cg; ++k) {  // per channel, so the loops below run over all of them
          c1[k] = grstd[g] * wp[k];
          c2[k] = static_cast<float>(k2);
          c3[k] = static_cast<float>(k3 + k2 * (off ? off[k] : 0.f));  // c2 * u + c3 = c2 * x + (c3 + c2 * off)
        }
      }
      const float* __restrict c1p = c1.data();
      const float* __restrict c2p = c2.data();
      const float* __restrict c3p = c3.data();
      float* __restrict sdup = sdu.data();
#ifdef DIFFUSIONLAB_GN_AVX512
      (silu ? backward_dx_avx512<true> : backward_dx_avx512<false>)(xb, gb, dy_buf.data(), c1p, c2p, c3p, hw, c, dxb,
                                                                     sdup);
#else
      for (int64_t k = 0; k < c; ++k) sdup[k] = 0.f;
      for (int64_t p = 0; p < hw; ++p) {
        const uint16_t* __restrict xrow = xb + p * c;
        uint16_t* __restrict out = dxb + p * c;
        if (silu) {
          const float* __restrict dyrow = dy_buf.data() + p * c;
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) {
            const float du = c1p[k] * dyrow[k] + c2p[k] * bf16_to_float(xrow[k]) + c3p[k];
            out[k] = float_to_bf16(du);
            sdup[k] += du;
          }
        } else {
          const uint16_t* __restrict grow = gb + p * c;
#pragma omp simd
          for (int64_t k = 0; k < c; ++k) {
            const float du = c1p[k] * bf16_to_float(grow[k]) + c2p[k] * bf16_to_float(xrow[k]) + c3p[k];
            out[k] = float_to_bf16(du);
            sdup[k] += du;
          }
        }
      }
#endif
      if (off) std::memcpy(dop + i * c, sdup, sizeof(float) * c);
    }
  });
  return {dx, dweight_per_image.sum(0), dbias_per_image.sum(0), doffset};
}

// How many distinct threads at::parallel_for runs `tasks` one-task chunks on: the forward and backward split
// their images this way. 1 means the build lost OpenMP (at::parallel_for is a header template: compiled
// without -fopenmp it runs serially whatever torch.get_num_threads() says).
int64_t parallel_threads(int64_t tasks) {
  std::vector<int64_t> owner(tasks > 0 ? tasks : 0, -1);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) owner[i] = at::get_thread_num();
  });
  std::sort(owner.begin(), owner.end());
  return std::unique(owner.begin(), owner.end()) - owner.begin();
}

}  // namespace

TORCH_LIBRARY(diffusionlab_gn, m) {
  m.def("parallel_threads(int tasks) -> int", &parallel_threads);
  m.def("forward(Tensor x, Tensor weight, Tensor bias, Tensor? offset, int groups, float eps, bool silu) -> Tensor[]");
  m.def(
      "backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor weight, Tensor bias, Tensor? offset, "
      "int groups, bool silu) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(diffusionlab_gn, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
