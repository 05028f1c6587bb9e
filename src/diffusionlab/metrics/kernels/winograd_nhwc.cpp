// Winograd convolution (+ bias, optional ReLU) for channels_last float32 tensors on the CPU.
//
// x is [N, C, H, W] stored channels_last (one [H*W, C] slab per image), y is [N, Co, Ho, Wo] likewise, with
// Ho = H + 2 ph - rh + 1 and Wo = W + 2 pw - rw + 1 (stride 1). The output is cut into mh x mw tiles; tile t
// (images, then tile rows, then tile columns) reads the ah x aw input patch at (ty mh - ph, tx mw - pw), with
// ah = mh + rh - 1 and aw = mw + rw - 1 (zero outside the image). Per tile and channel:
//   V = BTh d BTw^T                                  (input transform, [ah, aw] per input channel)
//   M[a, b, :] = V[a, b, :] @ U[a, b]                 (one [C] x [C, Co] product per tile point (a, b))
//   y = act(ATh M ATw^T + bias)                      (output transform, [mh, mw] per output channel)
// with U = Gh g Gw^T the transformed weights, computed by the caller (diffusionlab.metrics.winograd) with the
// matrices BT [a, a], AT [m, a] of a Cook-Toom algorithm F(m, r) in each direction (1 x 1 identities where the
// kernel has one tap). The products M run as one grouped 1x1 convolution per block of tiles through
// at::conv2d (oneDNN), [1, A*C, 1, T] -> [1, A*Co, 1, T] with A = ah * aw groups; the transforms are the loops
// below, 16 channels at a time, each image-tile a task of at::parallel_for (PyTorch's thread pool).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace {

constexpr int L = 16;  // channels per vector; C and Co must be multiples of it

struct Tiling {
  int64_t c, h, w, ph, pw, tiles_h, tiles_w;

  // (image, first input row, first input column) of tile t's patch for tiles of mh x mw outputs
  void locate(int64_t t, int64_t mh, int64_t mw, int64_t& img, int64_t& y0, int64_t& x0) const {
    img = t / (tiles_h * tiles_w);
    y0 = (t / tiles_w) % tiles_h * mh;
    x0 = t % tiles_w * mw;
  }
};

// v[k][a * AW + b][c] = (BTh d BTw^T)[a][b] for tile t0 + k, c < C.
template <int AH, int AW, int MH, int MW>
void input_transform(const float* x, const Tiling& g, const float* bth, const float* btw, int64_t t0,
                     int64_t count, float* v) {
  at::parallel_for(0, count, 8, [&](int64_t begin, int64_t end) {
    float bh[AH][AH], bw[AW][AW];
    std::copy(bth, bth + AH * AH, &bh[0][0]);
    std::copy(btw, btw + AW * AW, &bw[0][0]);
    alignas(64) float d[AH][AW][L];
    alignas(64) float r[AH][AW][L];
    for (int64_t k = begin; k < end; ++k) {
      int64_t img, y0, x0;
      g.locate(t0 + k, MH, MW, img, y0, x0);
      y0 -= g.ph;
      x0 -= g.pw;
      const float* xb = x + img * g.h * g.w * g.c;
      float* vt = v + k * AH * AW * g.c;
      for (int64_t c0 = 0; c0 < g.c; c0 += L) {
        for (int i = 0; i < AH; ++i) {
          const int64_t yy = y0 + i;
          for (int j = 0; j < AW; ++j) {
            const int64_t xx = x0 + j;
            if (yy >= 0 && yy < g.h && xx >= 0 && xx < g.w) {
              const float* src = xb + (yy * g.w + xx) * g.c + c0;
#pragma omp simd
              for (int l = 0; l < L; ++l) d[i][j][l] = src[l];
            } else {
#pragma omp simd
              for (int l = 0; l < L; ++l) d[i][j][l] = 0.f;
            }
          }
        }
        for (int a = 0; a < AH; ++a)
          for (int j = 0; j < AW; ++j) {
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              float acc = 0.f;
              for (int i = 0; i < AH; ++i) acc += bh[a][i] * d[i][j][l];
              r[a][j][l] = acc;
            }
          }
        for (int a = 0; a < AH; ++a)
          for (int b = 0; b < AW; ++b) {
            float* dst = vt + (a * AW + b) * g.c + c0;
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              float acc = 0.f;
              for (int j = 0; j < AW; ++j) acc += bw[b][j] * r[a][j][l];
              dst[l] = acc;
            }
          }
      }
    }
  });
}

// The outputs of tiles t0 .. t0 + count - 1: act(ATh M ATw^T + bias), m[k][a * AW + b][co], written to y with
// `stride` floats between pixels (co, or more when y is a channel slice of a wider tensor); parts of a tile
// past the output's last row or column are not written.
template <int AH, int AW, int MH, int MW>
void output_transform(const float* m, const Tiling& g, int64_t co, int64_t stride, int64_t ho, int64_t wo,
                      const float* ath, const float* atw, const float* bias, bool relu, int64_t t0, int64_t count,
                      float* y) {
  at::parallel_for(0, count, 8, [&](int64_t begin, int64_t end) {
    float ah[MH][AH], aw[MW][AW];
    std::copy(ath, ath + MH * AH, &ah[0][0]);
    std::copy(atw, atw + MW * AW, &aw[0][0]);
    alignas(64) float r[MH][AW][L];
    for (int64_t k = begin; k < end; ++k) {
      int64_t img, y0, x0;
      g.locate(t0 + k, MH, MW, img, y0, x0);
      const float* mt = m + k * AH * AW * co;
      float* yb = y + img * ho * wo * stride;
      for (int64_t c0 = 0; c0 < co; c0 += L) {
        for (int i = 0; i < MH; ++i)
          for (int b = 0; b < AW; ++b) {
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              float acc = 0.f;
              for (int a = 0; a < AH; ++a) acc += ah[i][a] * mt[(a * AW + b) * co + c0 + l];
              r[i][b][l] = acc;
            }
          }
        for (int i = 0; i < MH && y0 + i < ho; ++i)
          for (int j = 0; j < MW && x0 + j < wo; ++j) {
            float* dst = yb + ((y0 + i) * wo + x0 + j) * stride + c0;
#pragma omp simd
            for (int l = 0; l < L; ++l) {
              float acc = bias[c0 + l];
              for (int b = 0; b < AW; ++b) acc += aw[j][b] * r[i][b][l];
              dst[l] = relu && acc < 0.f ? 0.f : acc;
            }
          }
      }
    }
  });
}

template <int AH, int AW, int MH, int MW>
void run(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& bt_h,
         const at::Tensor& bt_w, const at::Tensor& at_h, const at::Tensor& at_w, const Tiling& g, int64_t ho,
         int64_t wo, bool relu, int64_t block, float* y, int64_t stride) {
  constexpr int64_t A = AH * AW;
  const int64_t co = u.size(0) / A, tiles = x.size(0) * g.tiles_h * g.tiles_w;
  auto v = at::empty({std::min(block, tiles), A * g.c}, x.options());
  for (int64_t t0 = 0; t0 < tiles; t0 += block) {
    const int64_t count = std::min(block, tiles - t0);
    input_transform<AH, AW, MH, MW>(x.data_ptr<float>(), g, bt_h.data_ptr<float>(), bt_w.data_ptr<float>(), t0,
                                    count, v.data_ptr<float>());
    // [count, A*C] rows are a channels_last [1, A*C, 1, count] image: one pixel per tile
    auto pixels = v.narrow(0, 0, count).view({1, 1, count, A * g.c}).permute({0, 3, 1, 2});
    auto m = at::conv2d(pixels, u, std::nullopt, at::IntArrayRef({1, 1}), at::IntArrayRef({0, 0}),
                        at::IntArrayRef({1, 1}), A)
                 .contiguous(at::MemoryFormat::ChannelsLast);  // [1, A*Co, 1, count]: [count, A, Co] in memory
    output_transform<AH, AW, MH, MW>(m.data_ptr<float>(), g, co, stride, ho, wo, at_h.data_ptr<float>(),
                                     at_w.data_ptr<float>(), bias.data_ptr<float>(), relu, t0, count, y);
  }
}

void check_matrix(const at::Tensor& t, int64_t rows, int64_t cols, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 2 && t.size(0) == rows &&
                  t.size(1) == cols,
              "Winograd conv: ", name, " must be a contiguous float32 [", rows, ", ", cols, "] matrix, got ",
              t.scalar_type(), " ", t.sizes());
}

// Writes the result to channels [offset, offset + Co) of y, a channels_last float32 [N, C_total, Ho, Wo] tensor
// (the whole of a new tensor in conv, a concatenation's slot in conv_into).
void conv_to(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& bt_h,
             const at::Tensor& bt_w, const at::Tensor& at_h, const at::Tensor& at_w, int64_t ph, int64_t pw,
             bool relu, int64_t block, const at::Tensor* out, int64_t offset) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 &&
                  x.is_contiguous(at::MemoryFormat::ChannelsLast),
              "Winograd conv expects a CPU float32 channels_last [N, C, H, W] tensor, got ", x.scalar_type(), " ",
              x.sizes());
  const int64_t ah = bt_h.size(0), aw = bt_w.size(0), mh = at_h.size(0), mw = at_w.size(0);
  const int64_t rh = ah - mh + 1, rw = aw - mw + 1, c = x.size(1), a = ah * aw;
  check_matrix(bt_h, ah, ah, "bt_h");
  check_matrix(bt_w, aw, aw, "bt_w");
  check_matrix(at_h, mh, ah, "at_h");
  check_matrix(at_w, mw, aw, "at_w");
  TORCH_CHECK(c % L == 0, "Winograd conv: ", c, " input channels, not a multiple of ", L);
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.dim() == 4 && u.size(0) % (a * L) == 0 && u.size(1) == c &&
                  u.size(2) == 1 && u.size(3) == 1 && u.is_contiguous(at::MemoryFormat::ChannelsLast),
              "Winograd conv: transformed weights must be float32 channels_last [", a, " * Co, ", c,
              ", 1, 1] with Co a multiple of ", L, ", got ", u.sizes());
  const int64_t co = u.size(0) / a;
  TORCH_CHECK(bias.scalar_type() == at::kFloat && bias.is_contiguous() && bias.numel() == co,
              "Winograd conv: bias must be contiguous float32 [", co, "]");
  TORCH_CHECK(block > 0 && ph >= 0 && pw >= 0 && ph < rh && pw < rw, "Winograd conv: bad block or padding");
  const int64_t ho = x.size(2) + 2 * ph - rh + 1, wo = x.size(3) + 2 * pw - rw + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "Winograd conv: input ", x.sizes(), " is smaller than the kernel");
  const Tiling g{c, x.size(2), x.size(3), ph, pw, (ho + mh - 1) / mh, (wo + mw - 1) / mw};
  const at::Tensor& y = *out;
  TORCH_CHECK(y.scalar_type() == at::kFloat && y.dim() == 4 && y.size(0) == x.size(0) && y.size(2) == ho &&
                  y.size(3) == wo && offset >= 0 && offset + co <= y.size(1) &&
                  y.is_contiguous(at::MemoryFormat::ChannelsLast),
              "Winograd conv: out must be a channels_last float32 [", x.size(0), ", >= ", offset + co, ", ", ho,
              ", ", wo, "] tensor, got ", y.scalar_type(), " ", y.sizes());
#define DIFFUSIONLAB_WINO_CASE(AH, AW, MH, MW)                                                   \
  if (ah == AH && aw == AW && mh == MH && mw == MW) {                                            \
    run<AH, AW, MH, MW>(x, u, bias, bt_h, bt_w, at_h, at_w, g, ho, wo, relu, block,            \
                        y.data_ptr<float>() + offset, y.size(1));                                \
    return;                                                                                      \
  }
  // F(4x4, 3x3), F(4x4, 5x5), F(6x6, 3x3), F(1x4, 1x7), F(4x1, 7x1), F(1x4, 1x3), F(4x1, 3x1)
  DIFFUSIONLAB_WINO_CASE(6, 6, 4, 4)
  DIFFUSIONLAB_WINO_CASE(8, 8, 4, 4)
  DIFFUSIONLAB_WINO_CASE(8, 8, 6, 6)
  DIFFUSIONLAB_WINO_CASE(1, 10, 1, 4)
  DIFFUSIONLAB_WINO_CASE(10, 1, 4, 1)
  DIFFUSIONLAB_WINO_CASE(1, 6, 1, 4)
  DIFFUSIONLAB_WINO_CASE(6, 1, 4, 1)
#undef DIFFUSIONLAB_WINO_CASE
  TORCH_CHECK(false, "Winograd conv: no kernel for ", mh, "x", mw, " output tiles of a ", rh, "x", rw, " kernel");
}

}  // namespace

at::Tensor conv(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& bt_h,
                const at::Tensor& bt_w, const at::Tensor& at_h, const at::Tensor& at_w, int64_t ph, int64_t pw,
                bool relu, int64_t block) {
  TORCH_CHECK(x.dim() == 4 && u.dim() == 4 && at_h.dim() == 2 && at_w.dim() == 2 && bt_h.dim() == 2 &&
                  bt_w.dim() == 2,
              "Winograd conv: x and u must be 4-d, the transforms 2-d");
  const int64_t ho = x.size(2) + 2 * ph - (bt_h.size(0) - at_h.size(0)),
                wo = x.size(3) + 2 * pw - (bt_w.size(0) - at_w.size(0));
  const int64_t a = bt_h.size(0) * bt_w.size(0);
  TORCH_CHECK(ho > 0 && wo > 0 && a > 0, "Winograd conv: input ", x.sizes(), " is smaller than the kernel");
  auto y = at::empty({x.size(0), u.size(0) / a, ho, wo}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  conv_to(x, u, bias, bt_h, bt_w, at_h, at_w, ph, pw, relu, block, &y, 0);
  return y;
}

void conv_into(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias, const at::Tensor& bt_h,
               const at::Tensor& bt_w, const at::Tensor& at_h, const at::Tensor& at_w, int64_t ph, int64_t pw,
               bool relu, int64_t block, const at::Tensor& out, int64_t offset) {
  conv_to(x, u, bias, bt_h, bt_w, at_h, at_w, ph, pw, relu, block, &out, offset);
}

TORCH_LIBRARY(diffusionlab_wino, m) {
  m.def(
      "conv(Tensor x, Tensor u, Tensor bias, Tensor bt_h, Tensor bt_w, Tensor at_h, Tensor at_w, int ph, int pw, "
      "bool relu, int block) -> Tensor");
  m.def(
      "conv_into(Tensor x, Tensor u, Tensor bias, Tensor bt_h, Tensor bt_w, Tensor at_h, Tensor at_w, int ph, "
      "int pw, bool relu, int block, Tensor(a!) out, int offset) -> ()");
}

TORCH_LIBRARY_IMPL(diffusionlab_wino, CPU, m) {
  m.impl("conv", &conv);
  m.impl("conv_into", &conv_into);
}
