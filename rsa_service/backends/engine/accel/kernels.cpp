// Decode-step kernels for x86 CPUs with AVX-512 (see kernels.py for why): `gemv`, a few rows times a weight, or each
// row times its own expert's weight, each weight row loaded from memory once for all the rows that read it; and
// `decode_attention`, one query token per row against that row's KV cache.
//
// Built just in time by kernels.py (torch.utils.cpp_extension) and registered as `zaya_kernels::*` ops, which the
// compiled decode step calls as extern kernels. The vector code is compiled for AVX-512 (BF16 for bf16) whatever
// the build machine; `supports` says whether this CPU runs it, and the ops refuse otherwise.
//
// Every output is accumulated in fp32 in the same order whichever other rows share the call, so a row's result does
// not depend on its batch.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#define ZAYA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vnni")))

namespace {

// The element types: weights T against input rows X, how many fill one multiply-accumulate into 16 lanes, and the
// lanes as fp32 sums (`sums`).
struct F32 {
  using T = float;
  using X = float;
  static constexpr int64_t lanes = 16;
  ZAYA_AVX512 static __m512 load(const float* p, int64_t n) {
    return n >= lanes ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  ZAYA_AVX512 static __m512 madd(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
  ZAYA_AVX512 static __m512 sums(__m512 acc) { return acc; }
  ZAYA_AVX512 static __m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};

struct BF16 {
  using T = c10::BFloat16;
  using X = c10::BFloat16;
  static constexpr int64_t lanes = 32;  // pairs: _mm512_dpbf16_ps adds w[2i]·x[2i] + w[2i+1]·x[2i+1] to lane i
  ZAYA_AVX512 static __m512bh load(const c10::BFloat16* p, int64_t n) {
    const __m512i v =
        n >= lanes ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << n) - 1), p);
    return reinterpret_cast<const __m512bh&>(v);
  }
  ZAYA_AVX512 static __m512 madd(__m512 acc, __m512bh w, __m512bh x) { return _mm512_dpbf16_ps(acc, w, x); }
  ZAYA_AVX512 static __m512 sums(__m512 acc) { return acc; }
  ZAYA_AVX512 static __m512 load16(const c10::BFloat16* p, __mmask16 m) {  // 16 values widened to fp32
    const __m256i v = _mm512_castsi512_si256(_mm512_maskz_loadu_epi16(static_cast<__mmask32>(m), p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
  }
};

// Int8 weights against input rows quantized to int16 (each row to its own scale, `rows_to_int16`): pairs of
// products summed into int32 lanes by one AVX-512 VNNI instruction, 32 multiply-adds where widening the weights to
// fp32 gives 16 and costs two more instructions; so one core reads the int8 weights at memory speed. The lanes hold
// exact integer sums (no overflow below kMaxInt16Depth) until `sums` turns them into fp32.
struct I8I16 {
  using T = int8_t;
  using X = int16_t;
  static constexpr int64_t lanes = 32;
  ZAYA_AVX512 static __m512i load(const int8_t* p, int64_t n) {
    const __m256i v = n >= lanes ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                 : _mm256_maskz_loadu_epi8(static_cast<__mmask32>((1ull << n) - 1), p);
    return _mm512_cvtepi8_epi16(v);
  }
  ZAYA_AVX512 static __m512i load(const int16_t* p, int64_t n) {
    return n >= lanes ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << n) - 1), p);
  }
  ZAYA_AVX512 static __m512 madd(__m512 acc, __m512i w, __m512i x) {
    return _mm512_castsi512_ps(_mm512_dpwssd_epi32(_mm512_castps_si512(acc), w, x));
  }
  ZAYA_AVX512 static __m512 sums(__m512 acc) { return _mm512_cvtepi32_ps(_mm512_castps_si512(acc)); }
};
// |int16| ≤ 32767 times |int8| ≤ 127, two products a lane per step: up to 8,256 columns cannot overflow an int32.
constexpr int64_t kMaxInt16Depth = 8192;

constexpr int64_t kBlock = 4;  // weight rows per tile
// Weight rows prefetched ahead of the tile: one tile ahead brings one core's stream close to a plain sum's read
// speed; further ahead is slower (benchmarks/README.md).
#ifndef ZAYA_PF
#define ZAYA_PF 4
#endif
constexpr int64_t kPrefetchRows = ZAYA_PF;

// out[j][i] = w[i]·x[j] for NW weight rows of length k and NX input rows: NW·NX accumulators, each weight vector
// loaded once for all NX rows.
// The 16 horizontal sums of a[0..15] as one vector (lane j = Σ a[j]): 15 adds and 30 shuffles, where 16
// _mm512_reduce_add_ps would take ~130 dependent instructions.
ZAYA_AVX512 inline __m512 sum16(const __m512 (&a)[16]) {
  __m512 s[8], t[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a2i 0+2, a2i+1 0+2, a2i 1+3, a2i+1 1+3]
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: that lane's partial sums of a[4i..4i+3]
    const __m512d x = _mm512_castps_pd(s[2 * i]), y = _mm512_castps_pd(s[2 * i + 1]);
    t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 u = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
  const __m512 v = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(u, v, 0x88), _mm512_shuffle_f32x4(u, v, 0xDD));
}

template <typename V, int NW, int NX>
ZAYA_AVX512 inline void tile_step(const typename V::T* w, int64_t k, const typename V::X* const* x, int64_t p,
                                  int64_t n, __m512 (&acc)[NW][NX]) {
  decltype(V::load(x[0], n)) xv[NX];
  for (int j = 0; j < NX; ++j) xv[j] = V::load(x[j] + p, n);
  for (int i = 0; i < NW; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (i + kPrefetchRows) * k + p), _MM_HINT_T0);
    const auto wv = V::load(w + i * k + p, n);
    for (int j = 0; j < NX; ++j) acc[i][j] = V::madd(acc[i][j], wv, xv[j]);
  }
}

template <typename V, int NW, int NX>
ZAYA_AVX512 void tile(const typename V::T* w, int64_t k, const typename V::X* const* x, float* const* out) {
  __m512 acc[NW][NX];
  for (int i = 0; i < NW; ++i)
    for (int j = 0; j < NX; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t full = k - k % V::lanes;
  for (int64_t p = 0; p < full; p += V::lanes) tile_step<V, NW, NX>(w, k, x, p, V::lanes, acc);
  if (full < k) tile_step<V, NW, NX>(w, k, x, full, k - full, acc);  // masked loads for the last partial vector
  for (int i = 0; i < NW; ++i)
    for (int j = 0; j < NX; ++j) acc[i][j] = V::sums(acc[i][j]);
  if constexpr (NW * NX == 16) {  // a full tile: its 16 horizontal sums at once
    alignas(64) float sums[16];
    _mm512_store_ps(sums, sum16(reinterpret_cast<const __m512(&)[16]>(acc)));
    for (int i = 0; i < NW; ++i)
      for (int j = 0; j < NX; ++j) out[j][i] = sums[i * NX + j];
  } else {
    for (int i = 0; i < NW; ++i)
      for (int j = 0; j < NX; ++j) out[j][i] = _mm512_reduce_add_ps(acc[i][j]);
  }
}

// NW weight rows against every input row, four input rows at a time (more would spill the 32 vector registers).
template <typename V, int NW>
ZAYA_AVX512 void tile_rows(const typename V::T* w, int64_t k, const typename V::X* const* x, int64_t rows,
                           float* const* out, int64_t column) {
  float* shifted[4];
  for (int64_t j = 0; j < rows; j += 4) {
    const int64_t nx = rows - j < 4 ? rows - j : 4;
    for (int64_t r = 0; r < nx; ++r) shifted[r] = out[j + r] + column;
    switch (nx) {
      case 1: tile<V, NW, 1>(w, k, x + j, shifted); break;
      case 2: tile<V, NW, 2>(w, k, x + j, shifted); break;
      case 3: tile<V, NW, 3>(w, k, x + j, shifted); break;
      default: tile<V, NW, 4>(w, k, x + j, shifted); break;
    }
  }
}

// out[j][:n] = w [n, k] · x[j] for each of `rows` input rows; weight tiles are split across threads.
template <typename V>
void rows_times_weight(const typename V::T* w, int64_t n, int64_t k, const typename V::X* const* x, int64_t rows,
                       float* const* out) {
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i = b * kBlock;
      if (i + kBlock <= n) {
        tile_rows<V, kBlock>(w + i * k, k, x, rows, out, i);
      } else {
        for (int64_t r = i; r < n; ++r) tile_rows<V, 1>(w + r * k, k, x, rows, out, r);
      }
    }
  });
}

// n int8 values widened (exactly: |w| ≤ 127) into fp32 or bf16, 64 a step.
ZAYA_AVX512 inline __m512 widened16(__m128i v) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v)); }
ZAYA_AVX512 void widen(const int8_t* p, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i v = _mm512_loadu_si512(p + i);
    _mm512_storeu_ps(out + i, widened16(_mm512_extracti32x4_epi32(v, 0)));
    _mm512_storeu_ps(out + i + 16, widened16(_mm512_extracti32x4_epi32(v, 1)));
    _mm512_storeu_ps(out + i + 32, widened16(_mm512_extracti32x4_epi32(v, 2)));
    _mm512_storeu_ps(out + i + 48, widened16(_mm512_extracti32x4_epi32(v, 3)));
  }
  for (; i < n; ++i) out[i] = static_cast<float>(p[i]);
}
ZAYA_AVX512 void widen(const int8_t* p, int64_t n, c10::BFloat16* out) {
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m512i v = _mm512_loadu_si512(p + i);
    const __m512bh low = _mm512_cvtne2ps_pbh(widened16(_mm512_extracti32x4_epi32(v, 1)),
                                             widened16(_mm512_extracti32x4_epi32(v, 0)));
    const __m512bh high = _mm512_cvtne2ps_pbh(widened16(_mm512_extracti32x4_epi32(v, 3)),
                                              widened16(_mm512_extracti32x4_epi32(v, 2)));
    _mm512_storeu_si512(out + i, reinterpret_cast<const __m512i&>(low));
    _mm512_storeu_si512(out + i + 32, reinterpret_cast<const __m512i&>(high));
  }
  for (; i < n; ++i) out[i] = static_cast<c10::BFloat16>(static_cast<float>(p[i]));
}

// Int8 weights against inputs of V's type: each tile's weight rows are widened once into a buffer of that type
// (L1-sized), then multiplied as V's own weights would be, by every input row. The widening is paid once per weight
// row, not once per four input rows: at 16 rows a per-vector widening made the kernel compute-bound, slower than
// the bf16 weights it halves.
template <typename V>
void int8_rows_times_weight(const int8_t* w, int64_t n, int64_t k, const typename V::X* const* x, int64_t rows,
                            float* const* out) {
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t begin, int64_t end) {
    std::vector<typename V::T> widened(kBlock * k);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t i = b * kBlock, count = std::min(kBlock, n - i);
      widen(w + i * k, count * k, widened.data());
      if (count == kBlock) {
        tile_rows<V, kBlock>(widened.data(), k, x, rows, out, i);
      } else {
        for (int64_t r = 0; r < count; ++r) tile_rows<V, 1>(widened.data() + r * k, k, x, rows, out, i + r);
      }
    }
  });
}

// x [B, k] times weight [n, k] (route absent) or times weight[route[b]] [E, n, k] for each row b (rows routed
// outside [0, E) get zeros) → fp32 [B, n]. Each weight matrix hit is read once, for all the rows that use it.
template <typename V, typename W>
at::Tensor gemv_impl(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& route) {
  using X = typename V::X;
  const int64_t k = x.size(1), batch = x.size(0), n = weight.size(-2);
  const int64_t experts = route ? weight.size(0) : 1;
  auto out = at::zeros({batch, n}, x.options().dtype(at::kFloat));
  const X* xp = x.const_data_ptr<X>();
  const W* wp = weight.const_data_ptr<W>();
  float* op = out.mutable_data_ptr<float>();
  at::Tensor routes;
  if (route) routes = route->to(at::kLong).contiguous();
  std::vector<const X*> rows;
  std::vector<float*> outs;
  for (int64_t e = 0; e < experts; ++e) {
    rows.clear();
    outs.clear();
    for (int64_t b = 0; b < batch; ++b) {
      if (!route || routes.const_data_ptr<int64_t>()[b] == e) {
        rows.push_back(xp + b * k);
        outs.push_back(op + b * n);
      }
    }
    if (rows.empty()) continue;
    const auto count = static_cast<int64_t>(rows.size());
    if constexpr (!std::is_same_v<W, typename V::T>) {  // int8 weights widened to V's type
      int8_rows_times_weight<V>(wp + e * n * k, n, k, rows.data(), count, outs.data());
    } else {
      rows_times_weight<V>(wp + e * n * k, n, k, rows.data(), count, outs.data());
    }
  }
  return out;
}


// Every instruction set the kernels use for rows of `dtype`, int8 weights included (byte loads need BW and VL; the
// int16 products against bf16 rows, VNNI, which every CPU with AVX-512 BF16 has).
bool supports(at::ScalarType dtype) {
  const bool base = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl");
  if (dtype == at::kFloat) return base;
  if (dtype == at::kBFloat16) {
    return base && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

// e^x for 16 lanes: 2^n · e^r with n = round(x·log2 e), |r| ≤ ln2/2, e^r by its Taylor series to r^6 (relative
// error < 2e-7, below fp32 softmax noise); 0 below -87 (and for -inf), where fp32 e^x underflows anyway.
ZAYA_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ), _mm512_scalef_ps(p, n));
}

// The lanes of a 16-wide step with `left` values still to go (none when there are none).
inline __mmask16 lanes16(int64_t left) {
  return left >= 16 ? 0xFFFF : left > 0 ? static_cast<__mmask16>((1u << left) - 1) : 0;
}

// s[:n] ← e^(s - max s), in place; returns the sum. Masked-out entries are -inf on entry and 0 on exit.
ZAYA_AVX512 float exp_shifted(float* s, int64_t n) {
  __m512 top = _mm512_set1_ps(-INFINITY);
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes16(n - c);
    top = _mm512_max_ps(top, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, s + c));
  }
  const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const __mmask16 m = lanes16(n - c);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + c), shift));
    _mm512_mask_storeu_ps(s + c, m, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(sum);
}

// A causal block of prefill attention scores, in place: scores [n, group, cols] (dense) of queries at positions
// start..start+n-1 against keys 0..cols-1 become their softmax over the keys each query may see (key ≤ its
// position), and 0 beyond. One pass over each row in the L1 cache instead of a masked fill, a softmax and a fresh
// output. fp32 arithmetic; bf16 scores are read as they are and the probabilities rounded once, as torch's bf16
// softmax does.
template <typename T>
ZAYA_AVX512 void causal_softmax_rows(T* scores, int64_t group, int64_t cols, int64_t start, int64_t begin,
                                     int64_t end) {
  std::vector<float> buffer(std::is_same_v<T, float> ? 0 : cols);
  for (int64_t r = begin; r < end; ++r) {
    T* row = scores + r * cols;
    const int64_t seen = std::min(cols, start + r / group + 1);
    float* s = buffer.data();
    if constexpr (std::is_same_v<T, float>) {
      s = row;
    } else {
      for (int64_t c = 0; c < seen; c += 16) {
        _mm512_mask_storeu_ps(s + c, lanes16(seen - c), BF16::load16(row + c, lanes16(seen - c)));
      }
    }
    const __m512 inverse = _mm512_set1_ps(1.0f / exp_shifted(s, seen));
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 m = lanes16(cols - c);
      const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes16(seen - c), s + c), inverse);  // 0 past `seen`
      if constexpr (std::is_same_v<T, float>) {
        _mm512_mask_storeu_ps(row + c, m, p);
      } else {
        const __m256bh rounded = _mm512_cvtneps_pbh(p);
        _mm256_mask_storeu_epi16(row + c, m, reinterpret_cast<const __m256i&>(rounded));
      }
    }
  }
}

void causal_softmax_(at::Tensor& scores, int64_t start) {
  TORCH_CHECK(scores.device().is_cpu() && supports(scores.scalar_type()),
              "causal_softmax_: fp32 or bf16 CPU scores, on a CPU with the AVX-512 it needs");
  TORCH_CHECK(scores.dim() == 3 && scores.is_contiguous(), "causal_softmax_: dense scores [n, group, cols], got ",
              scores.sizes());
  const int64_t n = scores.size(0), group = scores.size(1), cols = scores.size(2);
  TORCH_CHECK(start >= 0 && start + n <= cols, "causal_softmax_: queries at ", start, "..", start + n - 1,
              " need keys up to their own positions, got ", cols);
  at::parallel_for(0, n * group, 16, [&](int64_t begin, int64_t end) {
    if (scores.scalar_type() == at::kFloat) {
      causal_softmax_rows(scores.mutable_data_ptr<float>(), group, cols, start, begin, end);
    } else {
      causal_softmax_rows(scores.mutable_data_ptr<c10::BFloat16>(), group, cols, start, begin, end);
    }
  });
}

// Values are summed over blocks of this many columns; a block (8-16 KB at head dims 64-128 in bf16) stays in the L1
// cache while each 64-dim slice of it is read.
constexpr int64_t kValueBlock = 64;
// Key and value rows are prefetched this many columns ahead. A head's cache is one sequential stream, but the
// hardware prefetchers stop at every 4 KB page and each page's first lines (and its TLB walk) wait on memory;
// prefetching ahead keeps a long cache streaming at more than twice the speed (benchmarks/README.md).
constexpr int64_t kKeysAhead = 64, kValuesAhead = 32;

// Prefetches the 64-byte lines of [p, p + bytes) that lie before `end` (a prefetch never faults, but a pointer past
// the cache view is not one to form).
ZAYA_AVX512 inline void prefetch(const char* p, int64_t bytes, const char* end) {
  for (const char* line = p; line < p + bytes && line < end; line += 64) _mm_prefetch(line, _MM_HINT_T0);
}

// acc[g][:hd] += Σ_c p[g][c] · v[c][:hd] over columns [c0, c0 + n) for NG query heads of one KV head (p rows `cols`
// apart), 64 dims at a time: each value row slice is loaded once for all NG heads, and the NG × 4 sums are
// independent, so the loop runs at the FMA units' rate rather than one FMA latency per column and slice.
template <typename V, int NG>
ZAYA_AVX512 void weighted_block(const float* p, int64_t cols, int64_t c0, int64_t n, const typename V::T* v,
                                int64_t hd, float* acc) {
  for (int64_t d0 = 0; d0 < hd; d0 += 64) {
    __mmask16 m[4];  // slices past hd are masked off entirely: no memory is touched, their sums stay 0
    for (int j = 0; j < 4; ++j) m[j] = lanes16(hd - d0 - 16 * j);
    __m512 sum[NG][4];
    for (int g = 0; g < NG; ++g)
      for (int j = 0; j < 4; ++j) sum[g][j] = _mm512_maskz_loadu_ps(m[j], acc + g * hd + d0 + 16 * j);
    for (int64_t c = c0; c < c0 + n; ++c) {
      if (c + kValuesAhead < cols)
        prefetch(reinterpret_cast<const char*>(v + (c + kValuesAhead) * hd + d0), 64 * sizeof(typename V::T),
                 reinterpret_cast<const char*>(v + cols * hd));
      __m512 value[4];
      for (int j = 0; j < 4; ++j) value[j] = V::load16(v + c * hd + d0 + 16 * j, m[j]);
      for (int g = 0; g < NG; ++g) {
        const __m512 weight = _mm512_set1_ps(p[g * cols + c]);
        for (int j = 0; j < 4; ++j) sum[g][j] = _mm512_fmadd_ps(weight, value[j], sum[g][j]);
      }
    }
    for (int g = 0; g < NG; ++g)
      for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(acc + g * hd + d0 + 16 * j, m[j], sum[g][j]);
  }
}

// out[g][:hd] = Σ_c p[g][c] · v[c][:hd] / total[g] for the `group` query heads of one KV head, block by block of
// columns, summed in column order; each value row is read from memory once (memory, not these loops, is what bounds
// it: without the prefetch, this order ran no faster than 16-dim slices over all the columns).
template <typename V>
ZAYA_AVX512 void weighted_values(const float* p, int64_t cols, const typename V::T* v, int64_t hd, int64_t group,
                                 const float* total, float* out) {
  std::fill(out, out + group * hd, 0.0f);
  for (int64_t c0 = 0; c0 < cols; c0 += kValueBlock) {
    const int64_t n = cols - c0 < kValueBlock ? cols - c0 : kValueBlock;
    for (int64_t g = 0; g < group; g += 4) {
      const float* pg = p + g * cols;
      float* og = out + g * hd;
      switch (group - g) {
        case 1: weighted_block<V, 1>(pg, cols, c0, n, v, hd, og); break;
        case 2: weighted_block<V, 2>(pg, cols, c0, n, v, hd, og); break;
        case 3: weighted_block<V, 3>(pg, cols, c0, n, v, hd, og); break;
        default: weighted_block<V, 4>(pg, cols, c0, n, v, hd, og); break;
      }
    }
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t d = 0; d < hd; ++d) out[g * hd + d] *= 1.0f / total[g];
}

// s[g][c] = q[g]·k[c] for c < cols and each of the `group` query heads of one KV head (keys as dense rows of hd,
// s rows `cols` apart), sixteen columns at a time; each block of keys is loaded from memory once and read from the
// L1 cache by the other query heads. A last partial block re-reads its final column in the unused slots rather than
// branching.
template <typename V>
ZAYA_AVX512 void scores(const typename V::T* const* q, int64_t group, const typename V::T* k, int64_t hd,
                        int64_t cols, float* s) {
  for (int64_t c0 = 0; c0 < cols; c0 += 16) {
    const int64_t n = cols - c0 < 16 ? cols - c0 : 16;
    const typename V::T* row[16];
    for (int c = 0; c < 16; ++c) row[c] = k + (c0 + (c < n ? c : n - 1)) * hd;
    if (c0 + kKeysAhead < cols)
      prefetch(reinterpret_cast<const char*>(k + (c0 + kKeysAhead) * hd), 16 * hd * sizeof(typename V::T),
               reinterpret_cast<const char*>(k + cols * hd));
    for (int64_t g = 0; g < group; ++g) {
      __m512 acc[16];
      for (int c = 0; c < 16; ++c) acc[c] = _mm512_setzero_ps();
      for (int64_t p = 0; p < hd; p += V::lanes) {
        const auto qv = V::load(q[g] + p, hd - p);
        for (int c = 0; c < 16; ++c) acc[c] = V::madd(acc[c], V::load(row[c] + p, hd - p), qv);
      }
      _mm512_mask_storeu_ps(s + g * cols + c0, static_cast<__mmask16>((1u << n) - 1), sum16(acc));
    }
  }
}

// One token per row against that row's cache: q [B, nh, hd], keys and values [B, nkv, K, hd] (views into the cache:
// any row and head strides, columns dense), mask [B, 1, 1, K] → [B, nh·hd]. Query head j reads KV head j / (nh/nkv).
// Scores as fp32 dot products (the scale applied after), an fp32 softmax over the columns the mask allows, fp32 sums.
template <typename V>
at::Tensor attention_impl(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                          const at::Tensor& mask, double scale) {
  using T = typename V::T;
  const int64_t batch = q.size(0), heads = q.size(1), hd = q.size(2), kv_heads = keys.size(1), cols = keys.size(2);
  const int64_t group = heads / kv_heads;
  auto out = at::empty({batch, heads * hd}, q.options().dtype(at::kFloat));
  const T* qp = q.const_data_ptr<T>();
  const T* kp = keys.const_data_ptr<T>();
  const T* vp = values.const_data_ptr<T>();
  const bool* mp = mask.const_data_ptr<bool>();
  float* op = out.mutable_data_ptr<float>();
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer, total(group);
    std::vector<const T*> queries(group);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kv_heads, h = task % kv_heads;
      for (int64_t g = 0; g < group; ++g) queries[g] = qp + (b * heads + h * group + g) * hd;
      // Columns past the last one the mask allows are never read (decode masks are a prefix of the columns).
      const bool* allowed = mp + b * mask.stride(0);
      int64_t limit = cols;
      while (limit > 0 && !allowed[(limit - 1) * mask.stride(3)]) --limit;
      buffer.resize(group * limit);
      scores<V>(queries.data(), group, kp + b * keys.stride(0) + h * keys.stride(1), hd, limit, buffer.data());
      for (int64_t g = 0; g < group; ++g) {
        float* row = buffer.data() + g * limit;
        for (int64_t c = 0; c < limit; ++c)
          row[c] = allowed[c * mask.stride(3)] ? row[c] * static_cast<float>(scale) : -INFINITY;
        total[g] = exp_shifted(row, limit);
      }
      weighted_values<V>(buffer.data(), limit, vp + b * values.stride(0) + h * values.stride(1), hd, group,
                         total.data(), op + (b * heads + h * group) * hd);
    }
  });
  return out.to(q.scalar_type());
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& mask, double scale) {
  TORCH_CHECK(q.device().is_cpu() && keys.device().is_cpu() && values.device().is_cpu(), "decode_attention: CPU only");
  TORCH_CHECK(q.scalar_type() == keys.scalar_type() && q.scalar_type() == values.scalar_type(),
              "decode_attention: dtypes differ");
  TORCH_CHECK(supports(q.scalar_type()), "decode_attention: this CPU lacks AVX-512 for ", q.scalar_type());
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 4 && keys.sizes() == values.sizes() && keys.size(0) == q.size(0) &&
                  keys.size(3) == q.size(2) && q.size(1) % keys.size(1) == 0,
              "decode_attention: shapes ", q.sizes(), ", ", keys.sizes(), ", ", values.sizes());
  TORCH_CHECK(keys.stride(3) == 1 && keys.stride(2) == keys.size(3) && values.stride(3) == 1 &&
                  values.stride(2) == values.size(3),
              "decode_attention: each head's columns must be dense rows");
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.dim() == 4 && mask.size(0) == q.size(0) &&
                  mask.size(3) == keys.size(2),
              "decode_attention: mask [B, 1, 1, K] bool");
  const auto qc = q.contiguous();
  return q.scalar_type() == at::kFloat ? attention_impl<F32>(qc, keys, values, mask, scale)
                                       : attention_impl<BF16>(qc, keys, values, mask, scale);
}

// values [..., n, k] int8 times scale [..., n] → fp32 or bf16 weights for a library GEMM, rows split across threads:
// memory speed, where ATen's conversion and multiply pass through fp32 temporaries, several times slower.
template <typename T>
ZAYA_AVX512 void dequantize_rows(const int8_t* values, const float* scale, int64_t k, int64_t begin, int64_t end,
                                 T* out) {
  for (int64_t r = begin; r < end; ++r) {
    const __m512 s = _mm512_set1_ps(scale[r]);
    for (int64_t c = 0; c < k; c += 16) {
      const __mmask16 m = lanes16(k - c);
      const __m128i q = _mm_maskz_loadu_epi8(m, values + r * k + c);
      const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
      if constexpr (std::is_same_v<T, float>) {
        _mm512_mask_storeu_ps(out + r * k + c, m, v);
      } else {
        const __m256bh h = _mm512_cvtneps_pbh(v);
        _mm256_mask_storeu_epi16(out + r * k + c, m, reinterpret_cast<const __m256i&>(h));
      }
    }
  }
}

// max |row[:k]| of an fp32 or bf16 row.
template <typename V>
ZAYA_AVX512 float largest_magnitude(const typename V::T* row, int64_t k) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t c = 0; c < k; c += 16) top = _mm512_max_ps(top, _mm512_abs_ps(V::load16(row + c, lanes16(k - c))));
  return _mm512_reduce_max_ps(top);
}

// Rows of fp32 or bf16 weights [rows, k] → int8 values and fp32 scales, as `quantize.quantize_into` computes them
// (max |w| / 127, 1 for a zero row; w / scale rounded half to even): the same bytes in one pass where ATen takes several.
template <typename V>
ZAYA_AVX512 void quantize_weight_rows(const typename V::T* source, int64_t k, int64_t begin, int64_t end,
                                      int8_t* values, float* scale) {
  for (int64_t r = begin; r < end; ++r) {
    const typename V::T* row = source + r * k;
    const float step = largest_magnitude<V>(row, k) / 127.0f;
    scale[r] = step > 0 ? step : 1.0f;
    const __m512 divisor = _mm512_set1_ps(scale[r]);
    for (int64_t c = 0; c < k; c += 16) {
      const __mmask16 m = lanes16(k - c);
      const __m512 q = _mm512_roundscale_ps(_mm512_div_ps(V::load16(row + c, m), divisor), _MM_FROUND_TO_NEAREST_INT);
      const __m512 bounded = _mm512_min_ps(_mm512_max_ps(q, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
      _mm_mask_storeu_epi8(values + r * k + c, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(bounded)));
    }
  }
}

void quantize_into(const at::Tensor& source, at::Tensor& values, at::Tensor& scale) {
  TORCH_CHECK(source.device().is_cpu() && values.device().is_cpu() && scale.device().is_cpu(),
              "quantize_into: CPU tensors only");
  TORCH_CHECK(values.scalar_type() == at::kChar && scale.scalar_type() == at::kFloat,
              "quantize_into: int8 values and fp32 scales");
  TORCH_CHECK(source.scalar_type() == at::kFloat || source.scalar_type() == at::kBFloat16,
              "quantize_into: fp32 or bf16 source, not ", source.scalar_type());
  TORCH_CHECK(supports(source.scalar_type()), "quantize_into: this CPU lacks AVX-512 for ", source.scalar_type());
  TORCH_CHECK(values.sizes() == source.sizes() && scale.sizes() == source.sizes().slice(0, source.dim() - 1) &&
                  values.is_contiguous() && scale.is_contiguous(),
              "quantize_into: source ", source.sizes(), ", values ", values.sizes(), ", scale ", scale.sizes());
  const auto src = source.contiguous();
  const int64_t k = src.size(-1), rows = src.numel() / std::max<int64_t>(k, 1);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    int8_t* vp = values.mutable_data_ptr<int8_t>();
    float* sp = scale.mutable_data_ptr<float>();
    if (src.scalar_type() == at::kFloat) {
      quantize_weight_rows<F32>(src.const_data_ptr<float>(), k, begin, end, vp, sp);
    } else {
      quantize_weight_rows<BF16>(src.const_data_ptr<c10::BFloat16>(), k, begin, end, vp, sp);
    }
  });
}

at::Tensor dequantize(const at::Tensor& values, const at::Tensor& scale, at::ScalarType dtype) {
  TORCH_CHECK(values.device().is_cpu() && values.scalar_type() == at::kChar, "dequantize: int8 CPU values");
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "dequantize: to fp32 or bf16, not ", dtype);
  TORCH_CHECK(supports(dtype), "dequantize: this CPU lacks the AVX-512 instructions for ", dtype);
  const auto rows_shape = values.sizes().slice(0, values.dim() - 1);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.sizes() == rows_shape, "dequantize: values ", values.sizes(),
              " need fp32 scales of shape ", rows_shape);
  const auto v = values.contiguous();
  const auto sc = scale.contiguous();
  auto out = at::empty(v.sizes(), v.options().dtype(dtype));
  const int64_t k = v.size(-1), rows = v.numel() / std::max<int64_t>(k, 1);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    const int8_t* vp = v.const_data_ptr<int8_t>();
    const float* sp = sc.const_data_ptr<float>();
    if (dtype == at::kFloat) {
      dequantize_rows(vp, sp, k, begin, end, out.mutable_data_ptr<float>());
    } else {
      dequantize_rows(vp, sp, k, begin, end, out.mutable_data_ptr<c10::BFloat16>());
    }
  });
  return out;
}

// Each bf16 row to int16 at its own scale (max |x| ↦ 32767, rounded to nearest): finer than bf16's own rounding for
// every value within 2^7 of the row's largest, so the products keep what bf16 had.
ZAYA_AVX512 void rows_to_int16(const c10::BFloat16* x, int64_t rows, int64_t k, int16_t* q, float* scales) {
  for (int64_t b = 0; b < rows; ++b) {
    const c10::BFloat16* row = x + b * k;
    const float largest = largest_magnitude<BF16>(row, k);
    const float scale = largest > 0 ? largest / 32767.0f : 1.0f;
    const __m512 inverse = _mm512_set1_ps(1.0f / scale);
    for (int64_t c = 0; c < k; c += 16) {
      const __mmask16 m = lanes16(k - c);
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(BF16::load16(row + c, m), inverse));
      _mm256_mask_storeu_epi16(q + b * k + c, m, _mm512_cvtsepi32_epi16(v));
    }
    scales[b] = scale;
  }
}

// out [B, n] *= row_scale[b] (if given) · scale[n], or scale[route[b]][n] with a route (rows routed outside [0, E)
// hold zeros, whichever scale they meet).
void apply_scales(at::Tensor& out, const float* row_scale, const at::Tensor& scale,
                  const std::optional<at::Tensor>& route) {
  const int64_t batch = out.size(0), n = out.size(1), experts = route ? scale.size(0) : 1;
  const auto routes = route ? route->to(at::kLong).contiguous() : at::Tensor();
  const auto scales = scale.contiguous();
  float* op = out.mutable_data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t e = route ? std::clamp<int64_t>(routes.const_data_ptr<int64_t>()[b], 0, experts - 1) : 0;
    const float* s = scales.const_data_ptr<float>() + e * n;
    const float r = row_scale ? row_scale[b] : 1.0f;
    for (int64_t i = 0; i < n; ++i) op[b * n + i] *= r * s[i];
  }
}

// See gemv_impl; returns x's dtype (the fp32 sums rounded once). An int8 weight takes fp32 scales, one per weight
// row ([n], or [E, n] with a route), applied to the sums; against bf16 rows it goes through I8I16.
at::Tensor gemv(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& route,
                const std::optional<at::Tensor>& scale) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "gemv: CPU tensors only");
  const bool int8 = weight.scalar_type() == at::kChar;
  TORCH_CHECK(int8 || x.scalar_type() == weight.scalar_type(), "gemv: x and weight dtypes differ");
  TORCH_CHECK(int8 == scale.has_value(), "gemv: scales go with int8 weights, and only with them");
  TORCH_CHECK(supports(x.scalar_type()), "gemv: this CPU lacks the AVX-512 instructions for ", x.scalar_type());
  TORCH_CHECK(weight.dim() == (route ? 3 : 2) && x.size(-1) == weight.size(-1), "gemv: shapes ", x.sizes(), " and ",
              weight.sizes(), route ? " with a route" : "");
  const auto rows_shape = weight.sizes().slice(0, weight.dim() - 1);
  TORCH_CHECK(!int8 || (scale->scalar_type() == at::kFloat && scale->sizes() == rows_shape), "gemv: int8 weight ",
              weight.sizes(), " needs fp32 scales of shape ", rows_shape);
  const auto flat = x.reshape({-1, x.size(-1)}).contiguous();
  TORCH_CHECK(!route || (route->dim() == 1 && route->size(0) == flat.size(0)), "gemv: one route per row");
  const auto w = weight.contiguous();
  const bool fp32 = flat.scalar_type() == at::kFloat;
  at::Tensor out;
  if (int8 && !fp32 && flat.size(1) <= kMaxInt16Depth) {
    auto rows = at::empty(flat.sizes(), flat.options().dtype(at::kShort));
    std::vector<float> row_scales(flat.size(0));
    rows_to_int16(flat.const_data_ptr<c10::BFloat16>(), flat.size(0), flat.size(1), rows.mutable_data_ptr<int16_t>(),
                  row_scales.data());
    out = gemv_impl<I8I16, int8_t>(rows, w, route);
    apply_scales(out, row_scales.data(), *scale, route);
  } else if (int8) {
    out = fp32 ? gemv_impl<F32, int8_t>(flat, w, route) : gemv_impl<BF16, int8_t>(flat, w, route);
    apply_scales(out, nullptr, *scale, route);
  } else {
    out = fp32 ? gemv_impl<F32, float>(flat, w, route) : gemv_impl<BF16, c10::BFloat16>(flat, w, route);
  }
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(-2);
  return out.to(x.scalar_type()).view(sizes);
}

}  // namespace

TORCH_LIBRARY(zaya_kernels, m) {
  m.def("supports(ScalarType dtype) -> bool", &supports);
  m.def("gemv(Tensor x, Tensor weight, Tensor? route=None, Tensor? scale=None) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor keys, Tensor values, Tensor mask, float scale) -> Tensor");
  m.def("dequantize(Tensor values, Tensor scale, ScalarType dtype) -> Tensor");
  m.def("quantize_into(Tensor source, Tensor(a!) values, Tensor(b!) scale) -> ()");
  m.def("causal_softmax_(Tensor(a!) scores, int start) -> ()");
}

TORCH_LIBRARY_IMPL(zaya_kernels, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("decode_attention", &decode_attention);
  m.impl("dequantize", &dequantize);
  m.impl("quantize_into", &quantize_into);
  m.impl("causal_softmax_", &causal_softmax_);
}
