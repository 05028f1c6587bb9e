// The vector units' peak on one core: a loop of independent multiply-adds with nothing else in it.
// Prints one line per instruction this build has: "<name> <GFLOP/s> <ns per instruction>", the best of three
// runs of argv[1] iterations (default 50,000,000; the first run also brings the core up to its clock).
//   fma_ymm / fma_zmm: float32 fused multiply-add on 8 / 16 lanes (2 FLOP per lane)
//   dpbf16_zmm: vdpbf16ps, 16 lanes x 2 bfloat16 products summed into float32 (4 FLOP per lane)
// 12 accumulators hide the instructions' latency; empty asm statements keep the compiler from folding the
// loop (one operand changes every pass, as far as it knows) or narrowing it (every lane of the sums is used).
// AMX tiles, where a CPU has them, are not measured here.

#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

long iters = 50000000;
constexpr int kAcc = 12;

template <typename V, typename Step>
void measure(const char* name, double flop_per_instr, V zero, V a, V b, Step step) {
  double best = 1e30;
  for (int run = 0; run < 3; ++run) {
    V acc[kAcc];
    for (int i = 0; i < kAcc; ++i) {
      acc[i] = zero;
      asm volatile("" : "+v"(acc[i]));  // opaque starting values: twelve sums, not one computed once and copied
    }
    const auto t0 = std::chrono::steady_clock::now();
    for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
      for (int i = 0; i < kAcc; ++i) acc[i] = step(acc[i], a, b);
      asm volatile("" : "+v"(a));
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int i = 0; i < kAcc; ++i) asm volatile("" : : "v"(acc[i]));  // every lane of every sum is kept
    best = s < best ? s : best;
  }
  const double n = static_cast<double>(iters) * kAcc;
  std::printf("%s %.1f %.4f\n", name, n * flop_per_instr / best / 1e9, best / n * 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1) iters = std::atol(argv[1]);
#if defined(__AVX2__) && defined(__FMA__)
  measure("fma_ymm", 16.0, _mm256_setzero_ps(), _mm256_set1_ps(1.0001f), _mm256_set1_ps(0.9999f),
          [](__m256 c, __m256 x, __m256 y) { return _mm256_fmadd_ps(c, x, y); });
#endif
#if defined(__AVX512F__)
  measure("fma_zmm", 32.0, _mm512_setzero_ps(), _mm512_set1_ps(1.0001f), _mm512_set1_ps(0.9999f),
          [](__m512 c, __m512 x, __m512 y) { return _mm512_fmadd_ps(c, x, y); });
#endif
#if defined(__AVX512BF16__)
  measure("dpbf16_zmm", 64.0, _mm512_setzero_ps(), _mm512_castsi512_ps(_mm512_set1_epi16(0x3f80)),
          _mm512_castsi512_ps(_mm512_set1_epi16(0x3c00)), [](__m512 c, __m512 x, __m512 y) {
            return _mm512_dpbf16_ps(c, (__m512bh)_mm512_castps_si512(x), (__m512bh)_mm512_castps_si512(y));
          });
#endif
  return 0;
}
