// Decode-step products with weights kept in the GGUF block formats they were loaded from (Q4_1, Q8_0).
//
// y = x @ W.T for a few rows of x, where W is held in llama.cpp's block formats (scales as fp32 here): blocks of 32
// weights along a row, each Q4_1 block as 4-bit codes q with an fp16 scale d and minimum m (w = d * q + m), each Q8_0
// block as int8 codes with an fp16 scale (w = d * q). The kernel rebuilds each weight in registers with the same fp32
// arithmetic transformers' GGUF loader uses (d * q is exact in fp32, so one rounding in both places: the weights are
// bit for bit the model's) and multiplies in fp32: only the order of the sums differs from F.linear. It reads 4.8x
// fewer bytes than the fp32 weights, which is what binds a decode step on a CPU.
//
// Built by torch.utils.cpp_extension on first use (tuneforge/cpu/gguf_blocks.py), for the CPU it runs on (-march=native).
// Without AVX-512 `built_with_avx512()` is false and tuneforge keeps the fp32 path.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define TF_AVX512 1
#endif

namespace {

#ifdef TF_AVX512
const __m512 kCodes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);

// The 32 weights of block b of an output row, as two vectors of 16 (elements 0-15 and 16-31).
struct Q41 {
  const uint8_t* codes;  // (N, K / 2): byte j of a block holds element j (low nibble) and j + 16 (high nibble)
  const float* scales;   // (N, K / 32, 2): d, m
  int64_t blocks;
  inline void weights(int64_t o, int64_t b, __m512& w0, __m512& w1) const {
    const __m512i codes32 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(codes + (o * blocks + b) * 16)));
    const float* s = scales + (o * blocks + b) * 2;
    // The block's 16 possible weights d * q + m, q = 0..15; each lane's low 4 bits pick its weight from them: 1.4x
    // the speed of converting every code (bench/generate.py's kernel figures in BENCHMARKS.md).
    const __m512 table = _mm512_fmadd_ps(_mm512_set1_ps(s[0]), kCodes, _mm512_set1_ps(s[1]));
    w0 = _mm512_permutexvar_ps(codes32, table);
    w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(codes32, 4), table);
  }
};

struct Q80 {
  const int8_t* codes;  // (N, K)
  const float* scales;  // (N, K / 32)
  int64_t blocks;
  inline void weights(int64_t o, int64_t b, __m512& w0, __m512& w1) const {
    const int8_t* q = codes + (o * blocks + b) * 32;
    const __m512 d = _mm512_set1_ps(scales[o * blocks + b]);
    w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)q))));
    w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + 16)))));
  }
};

// R rows of x (row stride K) times output rows [o0, o1); two output rows at a time share each load of x.
template <int R, typename Format>
void rows(const Format& f, const float* x, int64_t K, float* y, int64_t N, int64_t o0, int64_t o1) {
  int64_t o = o0;
  for (; o + 2 <= o1; o += 2) {
    __m512 a0[R], a1[R];
    for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < f.blocks; ++b) {
      __m512 w00, w01, w10, w11;
      f.weights(o, b, w00, w01);
      f.weights(o + 1, b, w10, w11);
      const float* xb = x + b * 32;
      for (int r = 0; r < R; ++r) {
        const __m512 x0 = _mm512_loadu_ps(xb + r * K), x1 = _mm512_loadu_ps(xb + r * K + 16);
        a0[r] = _mm512_fmadd_ps(x0, w00, a0[r]);
        a1[r] = _mm512_fmadd_ps(x0, w10, a1[r]);
        a0[r] = _mm512_fmadd_ps(x1, w01, a0[r]);
        a1[r] = _mm512_fmadd_ps(x1, w11, a1[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      y[r * N + o] = _mm512_reduce_add_ps(a0[r]);
      y[r * N + o + 1] = _mm512_reduce_add_ps(a1[r]);
    }
  }
  for (; o < o1; ++o) {  // an odd output row left over
    __m512 a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm512_setzero_ps();
    for (int64_t b = 0; b < f.blocks; ++b) {
      __m512 w0, w1;
      f.weights(o, b, w0, w1);
      for (int r = 0; r < R; ++r) {
        a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + b * 32), w0, a[r]);
        a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + r * K + b * 32 + 16), w1, a[r]);
      }
    }
    for (int r = 0; r < R; ++r) y[r * N + o] = _mm512_reduce_add_ps(a[r]);
  }
}

template <typename Format>
torch::Tensor product(const Format& f, const torch::Tensor& x, int64_t N) {
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // Each thread takes a share of the output rows and streams their codes once for all rows of x, 8 at a time.
  at::parallel_for(0, N, 32, [&](int64_t o0, int64_t o1) {
    int64_t r = 0;
    for (; r + 8 <= M; r += 8) rows<8>(f, xp + r * K, K, yp + r * N, N, o0, o1);
    if (r + 4 <= M) rows<4>(f, xp + r * K, K, yp + r * N, N, o0, o1), r += 4;
    if (r + 2 <= M) rows<2>(f, xp + r * K, K, yp + r * N, N, o0, o1), r += 2;
    if (r < M) rows<1>(f, xp + r * K, K, yp + r * N, N, o0, o1);
  });
  return y;
}
#endif

void check(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scales, int64_t N, int64_t per) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.size(1) % 32 == 0,
              "x must be a contiguous fp32 matrix whose row length is a multiple of 32");
  TORCH_CHECK(codes.is_contiguous() && codes.numel() == N * x.size(1) / per, "codes do not match x and N");
  TORCH_CHECK(scales.scalar_type() == torch::kFloat && scales.is_contiguous(), "scales must be contiguous fp32");
}

}  // namespace

bool built_with_avx512() {
#ifdef TF_AVX512
  return true;
#else
  return false;
#endif
}

torch::Tensor q4_1_linear(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, int64_t N) {
  check(x, codes, scales, N, 2);
  TORCH_CHECK(scales.numel() == N * x.size(1) / 16, "Q4_1 needs a scale and a minimum per 32 weights");
#ifdef TF_AVX512
  return product(Q41{codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), x.size(1) / 32}, x, N);
#else
  TORCH_CHECK(false, "built without AVX-512");
#endif
}

torch::Tensor q8_0_linear(torch::Tensor x, torch::Tensor codes, torch::Tensor scales, int64_t N) {
  check(x, codes, scales, N, 1);
  TORCH_CHECK(scales.numel() == N * x.size(1) / 32, "Q8_0 needs a scale per 32 weights");
#ifdef TF_AVX512
  return product(Q80{codes.data_ptr<int8_t>(), scales.data_ptr<float>(), x.size(1) / 32}, x, N);
#else
  TORCH_CHECK(false, "built without AVX-512");
#endif
}


// The codes and scales of a weight that is exactly Q4_1 (or Q8_0) blocks, found in one pass; empty if any block is
// not. llama.cpp's quantisers give a block's minimum code 0 and maximum code 15 (Q4_1), or its largest magnitude
// code +-127 (Q8_0), so each block's d and m follow from its extremes and every weight is then checked.
// `block(b, v)` writes block b's codes and scales from its 32 weights v and says whether they give v back exactly.
template <typename Block>
std::vector<torch::Tensor> find_blocks(const torch::Tensor& w, torch::Tensor codes, torch::Tensor scales, Block block) {
  const float* wp = w.data_ptr<float>();
  std::atomic<bool> exact{true};
  at::parallel_for(0, w.numel() / 32, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1 && exact.load(std::memory_order_relaxed); ++b) {
      if (!block(b, wp + b * 32)) exact = false;
    }
  });
  if (!exact) return {};
  return {codes, scales};
}

void check_weight(const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kFloat && w.is_contiguous() && w.size(1) % 32 == 0,
              "w must be a contiguous fp32 matrix whose row length is a multiple of 32");
}

std::vector<torch::Tensor> q4_1_blocks(torch::Tensor w) {
  check_weight(w);
  auto codes = torch::empty({w.size(0), w.size(1) / 2}, w.options().dtype(torch::kByte));
  auto scales = torch::empty({w.size(0), w.size(1) / 32, 2}, w.options());
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* sp = scales.data_ptr<float>();
  return find_blocks(w, codes, scales, [&](int64_t b, const float* v) {
    float lo = v[0], hi = v[0];
    for (int j = 1; j < 32; ++j) lo = std::min(lo, v[j]), hi = std::max(hi, v[j]);
    const float d = static_cast<float>(c10::Half((hi - lo) / 15.0f));
    if (static_cast<float>(c10::Half(lo)) != lo) return false;
    uint8_t q[32];
    for (int j = 0; j < 32; ++j) {
      const float c = d > 0 ? std::nearbyint((v[j] - lo) / d) : 0.0f;
      q[j] = static_cast<uint8_t>(std::min(15.0f, std::max(0.0f, c)));
      if (d * q[j] + lo != v[j]) return false;
    }
    for (int j = 0; j < 16; ++j) cp[b * 16 + j] = q[j] | (q[j + 16] << 4);
    sp[b * 2] = d, sp[b * 2 + 1] = lo;
    return true;
  });
}

std::vector<torch::Tensor> q8_0_blocks(torch::Tensor w) {
  check_weight(w);
  auto codes = torch::empty({w.size(0), w.size(1)}, w.options().dtype(torch::kChar));
  auto scales = torch::empty({w.size(0), w.size(1) / 32}, w.options());
  int8_t* cp = codes.data_ptr<int8_t>();
  float* sp = scales.data_ptr<float>();
  return find_blocks(w, codes, scales, [&](int64_t b, const float* v) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(v[j]));
    const float d = amax / 127.0f;
    if (static_cast<float>(c10::Half(d)) != d) return false;
    for (int j = 0; j < 32; ++j) {
      const float c = d > 0 ? std::nearbyint(v[j] / d) : 0.0f;
      cp[b * 32 + j] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, c)));
      if (d * cp[b * 32 + j] != v[j]) return false;
    }
    sp[b] = d;
    return true;
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("built_with_avx512", &built_with_avx512, "whether the products below are compiled in");
  m.def("q4_1_linear", &q4_1_linear, "x @ W.T for W in Q4_1 blocks");
  m.def("q8_0_linear", &q8_0_linear, "x @ W.T for W in Q8_0 blocks");
  m.def("q4_1_blocks", &q4_1_blocks, "codes and scales of a weight that is exactly Q4_1 blocks; [] if it is not");
  m.def("q8_0_blocks", &q8_0_blocks, "codes and scales of a weight that is exactly Q8_0 blocks; [] if it is not");
}
