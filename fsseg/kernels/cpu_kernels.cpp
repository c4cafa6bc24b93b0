// CPU kernels for x86 CPUs with AVX512-BF16 (Zen 4+, Cooper Lake+), where torch has none fast enough.
//
// 1. bf16_attention / fp32_attention: exact softmax attention of ViT tokens (DINOv2's inference passes).
// 2. bf16_scaled_dot: fp32 dot products of bf16 rows (the 4D correlation's cosines, see below).
// 3. instruction_peak: the cores' fp32 FMA and bf16 dot-product rates (make bench's roofline).
//
// Attention. Why it exists (issue 15): torch's CPU flash-attention kernel reaches about 120-150 GFLOP/s
// on 2 Zen 4 cores for DINOv2-B at 518 in both precisions: in bf16 (no AMX) it is no faster than fp32,
// which made attention half of a bf16 DINOv2 pass, and in fp32 its block products go through MKL's
// sgemm, which on AMD CPUs runs well below the machine's fp32 rate. These kernels compute the same
// function with the CPU's bf16 dot-product instruction (vdpbf16ps) or fp32 FMAs:
//   S = scale * Q K^T      products accumulated in fp32 (never rounded to bf16), kept in log2 units
//                          (times log2 e: the exponential is then 2^x, with no range reduction by ln 2)
//   P = exp(S - rowmax)    fp32; in bf16 rounded to bf16 for the second product (as torch's bf16 kernel);
//                          the row max is taken while the products are in registers
//   O = (P V) / rowsum     fp32 accumulation and fp32 row sums; O rounded to the input type once.
// A query block's whole score rows stay in L2 (no online rescaling: one image has at most a few
// thousand tokens). Both precisions share one implementation: an element type's "word" is what one
// vector lane multiplies (a bf16 pair for vdpbf16ps, one float for an FMA).
//
// Input: qkv [B, N, 3, H, D] contiguous (the output of timm's Attention.qkv, as is), D = 16, 32 or 64
// (DINOv2's heads are 64 wide; fsseg's adapter's 16).
// Output: [B, N, H * D] in the input's type (the layout Attention.proj reads).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <numeric>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kKeyTile = 16;          // keys per score vector
constexpr int64_t kQueryBlock = 24;       // query rows per task: score rows stay in L2
constexpr int64_t kRowsQK = 8;            // rows per Q K^T micro-tile (8 x 2 tiles = 16 accumulators)
constexpr int64_t kAccPV = 24;            // accumulators of a P V micro-tile: rows x (D / 16) vectors
static_assert(kQueryBlock % kRowsQK == 0, "query block");

// bf16: a word is two bf16 values, multiplied pairwise and summed into an fp32 lane (vdpbf16ps).
struct Bf16 {
  using Elem = uint16_t;
  using Word = uint32_t;
  using Vec = __m512i;
  static constexpr int64_t kPerWord = 2;
  static constexpr at::ScalarType kType = at::kBFloat16;
  static constexpr Word kOne = 0x3F803F80u;  // the pair (1, 1)
  // P is rounded to bf16 (relative step 2^-8): a degree-4 exponential (relative error 4.2e-5) is
  // already 90x finer; the fp32 sums of P use the unrounded values
  static constexpr int kExpDegree = 4;
  static Vec load(const Word* p) { return _mm512_loadu_si512(p); }
  static Vec splat(Word w) { return _mm512_set1_epi32(static_cast<int>(w)); }
  static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
  static void store16(Elem* dst, __m512 v) {  // round to nearest even, as torch's float -> bf16
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
  }
};

// fp32: a word is one float (FMA).
struct Fp32 {
  using Elem = float;
  using Word = float;
  using Vec = __m512;
  static constexpr int64_t kPerWord = 1;
  static constexpr at::ScalarType kType = at::kFloat;
  static constexpr Word kOne = 1.0f;
  static constexpr int kExpDegree = 6;  // relative error 1.2e-7, about 1 ulp
  static Vec load(const Word* p) { return _mm512_loadu_ps(p); }
  static Vec splat(Word w) { return _mm512_set1_ps(w); }
  static __m512 madd(__m512 acc, Vec a, Vec b) { return _mm512_fmadd_ps(a, b, acc); }
  static void store16(Elem* dst, __m512 v) { _mm512_storeu_ps(dst, v); }
};

// 2^t for t <= 0 (fp32, about 1 ulp): n = round(t), r = t - n in [-1/2, 1/2] (exact), e^(r ln 2) by its
// Taylor series to degree kDegree, times 2^n (scalef: 0 for very negative n, never a NaN).
template <int kDegree>
inline __m512 exp2_nonpositive(__m512 t) {
  static constexpr float c[7] = {1.0f, 0.693147180559945f, 0.240226506959101f, 0.0555041086648216f,
                                 0.00961812910762848f, 0.00133335581464284f, 0.000154035303933816f};
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(t, n);
  __m512 p = _mm512_set1_ps(c[kDegree]);
  for (int k = kDegree - 1; k >= 0; --k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c[k]));
  return _mm512_scalef_ps(p, n);
}

// K of one head -> [tiles][D / kPerWord words][16 keys]: a 16-key tile's word s is one vector.
template <class E, int64_t D>
void pack_keys(const typename E::Elem* qkv, int64_t b, int64_t h, int64_t N, int64_t H, int64_t tiles,
               typename E::Word* out) {
  using Word = typename E::Word;
  constexpr int64_t steps = D / E::kPerWord;
  const int64_t row = 3 * H * D;
  for (int64_t t = 0; t < tiles; ++t)
    for (int64_t j = 0; j < kKeyTile; ++j) {
      const int64_t n = t * kKeyTile + j;
      const typename E::Elem* src = n < N ? qkv + (b * N + n) * row + (H + h) * D : nullptr;
      for (int64_t s = 0; s < steps; ++s) {
        Word w{};
        if (src) std::memcpy(&w, src + s * E::kPerWord, sizeof(Word));
        out[(t * steps + s) * kKeyTile + j] = w;
      }
    }
}

// V of one head -> [padded / kPerWord][D dims] words: word (s, d) holds V[s * kPerWord + e][d] for
// e < kPerWord (bf16: the VNNI layout of P V's right side; fp32: V's rows as they are).
template <class E, int64_t D>
void pack_values(const typename E::Elem* qkv, int64_t b, int64_t h, int64_t N, int64_t H, int64_t steps,
                 typename E::Word* out) {
  const int64_t row = 3 * H * D;
  auto* o = reinterpret_cast<typename E::Elem*>(out);
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t e = 0; e < E::kPerWord; ++e) {
      const int64_t n = s * E::kPerWord + e;
      const typename E::Elem* src = n < N ? qkv + (b * N + n) * row + (2 * H + h) * D : nullptr;
      for (int64_t d = 0; d < D; ++d) o[(s * D + d) * E::kPerWord + e] = src ? src[d] : 0;
    }
}

// acc[r][c] = a[r] . column j of packed tile c, for kRowsQK rows of `steps` words and the two packed
// 16-column tiles at k0 (layout [tile][step][16]): the one micro-kernel of Q K^T and bf16_scaled_dot.
template <class E>
inline __attribute__((always_inline)) void dot_rows_two_tiles(const typename E::Word* a, int64_t steps,
                                                               const typename E::Word* k0, __m512 (&acc)[kRowsQK][2]) {
  for (int r = 0; r < kRowsQK; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const typename E::Word* k1 = k0 + steps * kKeyTile;
  for (int64_t s = 0; s < steps; ++s) {
    const typename E::Vec b0 = E::load(k0 + s * kKeyTile);
    const typename E::Vec b1 = E::load(k1 + s * kKeyTile);
    for (int r = 0; r < kRowsQK; ++r) {
      const typename E::Vec av = E::splat(a[r * steps + s]);
      acc[r][0] = E::madd(acc[r][0], av, b0);
      acc[r][1] = E::madd(acc[r][1], av, b1);
    }
  }
}

// scores[r][0, tiles*16) = scale * log2(e) * Q[r] . K[j] for kRowsQK rows (q: [rows][D / kPerWord words];
// tiles even), and row_max[r] = the largest over the N real keys (the softmax's shift, taken while the
// products are in registers instead of in a second pass over the row).
template <class E, int64_t D>
void scores_micro(const typename E::Word* q, const typename E::Word* kp, int64_t tiles, int64_t N, int64_t ld,
                  float scale, float* scores, float* row_max) {
  constexpr int64_t steps = D / E::kPerWord;
  const __m512 vs = _mm512_set1_ps(scale * 1.44269504088896341f);
  __m512 vmax[kRowsQK];
  for (int r = 0; r < kRowsQK; ++r) vmax[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t t = 0; t < tiles; t += 2) {
    __m512 acc[kRowsQK][2];
    dot_rows_two_tiles<E>(q, steps, kp + t * steps * kKeyTile, acc);
    const int64_t left = N - t * kKeyTile;  // real keys from this tile pair on
    if (left >= 2 * kKeyTile) {
      for (int r = 0; r < kRowsQK; ++r) {
        const __m512 s0 = _mm512_mul_ps(acc[r][0], vs), s1 = _mm512_mul_ps(acc[r][1], vs);
        vmax[r] = _mm512_max_ps(vmax[r], _mm512_max_ps(s0, s1));
        _mm512_storeu_ps(scores + r * ld + t * kKeyTile, s0);
        _mm512_storeu_ps(scores + r * ld + (t + 1) * kKeyTile, s1);
      }
    } else {  // the last pair: padding keys are left out of the max
      const __mmask16 m0 = left >= kKeyTile ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
      const __mmask16 m1 = left > kKeyTile ? static_cast<__mmask16>((1u << (left - kKeyTile)) - 1u) : static_cast<__mmask16>(0);
      for (int r = 0; r < kRowsQK; ++r) {
        const __m512 s0 = _mm512_mul_ps(acc[r][0], vs), s1 = _mm512_mul_ps(acc[r][1], vs);
        vmax[r] = _mm512_mask_max_ps(vmax[r], m0, vmax[r], s0);
        vmax[r] = _mm512_mask_max_ps(vmax[r], m1, vmax[r], s1);
        _mm512_storeu_ps(scores + r * ld + t * kKeyTile, s0);
        _mm512_storeu_ps(scores + r * ld + (t + 1) * kKeyTile, s1);
      }
    }
  }
  for (int r = 0; r < kRowsQK; ++r) row_max[r] = _mm512_reduce_max_ps(vmax[r]);
}

// One score row (log2 units) -> 2^(s - max) over the N real keys in E's type (padding keys get 0);
// returns the fp32 sum.
template <class E>
float softmax_row(const float* s, float max, int64_t N, int64_t padded, typename E::Elem* p) {
  const __m512 m = _mm512_set1_ps(max);
  __m512 vsum = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= N; j += 16) {
    const __m512 e = exp2_nonpositive<E::kExpDegree>(_mm512_sub_ps(_mm512_loadu_ps(s + j), m));
    vsum = _mm512_add_ps(vsum, e);
    E::store16(p + j, e);
  }
  if (j < N) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (N - j)) - 1u);
    const __m512 e = _mm512_maskz_mov_ps(tail, exp2_nonpositive<E::kExpDegree>(_mm512_sub_ps(_mm512_mask_loadu_ps(m, tail, s + j), m)));
    vsum = _mm512_add_ps(vsum, e);
    E::store16(p + j, e);
    j += 16;
  }
  for (; j < padded; j += 16) E::store16(p + j, _mm512_setzero_ps());
  return _mm512_reduce_add_ps(vsum);
}

// out[r][0:D] = (P[r] V) * inv_sum[r] for kRows rows (p: rows of `ld` words; vp: packed V of `steps` words):
// kRows x D / 16 accumulators (6 x 4 for D = 64, 24 x 1 for D = 16).
template <class E, int64_t D>
void values_micro(const typename E::Word* p, int64_t ld, const typename E::Word* vp, int64_t steps,
                  const float* inv_sum, typename E::Elem* const* out) {
  constexpr int kVecs = D / 16, kRows = kAccPV / kVecs;
  __m512 acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kVecs; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t s = 0; s < steps; ++s) {
    const typename E::Word* v = vp + s * D;
    typename E::Vec b[kVecs];
    for (int c = 0; c < kVecs; ++c) b[c] = E::load(v + 16 * c);
    for (int r = 0; r < kRows; ++r) {
      const typename E::Vec a = E::splat(p[r * ld + s]);
      for (int c = 0; c < kVecs; ++c) acc[r][c] = E::madd(acc[r][c], a, b[c]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    if (out[r] == nullptr) continue;  // a padding row of the last block
    const __m512 inv = _mm512_set1_ps(inv_sum[r]);
    for (int c = 0; c < kVecs; ++c) E::store16(out[r] + 16 * c, _mm512_mul_ps(acc[r][c], inv));
  }
}

template <class E, int64_t D>
at::Tensor attention(const at::Tensor& x, int64_t num_heads, double scale) {
  using Elem = typename E::Elem;
  using Word = typename E::Word;
  static_assert(sizeof(Word) == 4, "words are 32-bit");
  static_assert(D % 16 == 0 && kAccPV % (D / 16) == 0 && kQueryBlock % (kAccPV / (D / 16)) == 0, "head size");
  constexpr int64_t qk_steps = D / E::kPerWord;  // words per head row
  constexpr int64_t rows_pv = kAccPV / (D / 16);
  const int64_t B = x.size(0), N = x.size(1), H = num_heads;
  // keys padded with zeros to an even number of 16-key tiles (the micro-kernel's two); softmax skips them
  const int64_t tiles = 2 * ((N + 2 * kKeyTile - 1) / (2 * kKeyTile)), padded = tiles * kKeyTile;
  const int64_t pv_steps = padded / E::kPerWord, head_words = padded * qk_steps;
  const int64_t blocks = (N + kQueryBlock - 1) / kQueryBlock;
  const Elem* src = static_cast<const Elem*>(x.data_ptr());
  at::Tensor keys = at::empty({B * H, head_words}, x.options().dtype(at::kInt));
  at::Tensor values = at::empty({B * H, head_words}, x.options().dtype(at::kInt));
  at::Tensor out = at::empty({B, N, H * D}, x.options());
  Word* kp = static_cast<Word*>(keys.data_ptr());
  Word* vp = static_cast<Word*>(values.data_ptr());
  Elem* dst = static_cast<Elem*>(out.data_ptr());
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      pack_keys<E, D>(src, bh / H, bh % H, N, H, tiles, kp + bh * head_words);
      pack_values<E, D>(src, bh / H, bh % H, N, H, pv_steps, vp + bh * head_words);
    }
  });
  const int64_t row = 3 * H * D;
  at::parallel_for(0, B * H * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Word> q(kQueryBlock * qk_steps), probs(kQueryBlock * pv_steps);
    std::vector<float> scores(kQueryBlock * padded), inv_sum(kQueryBlock), row_max(kQueryBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks, b = bh / H, h = bh % H, n0 = (task % blocks) * kQueryBlock;
      for (int64_t r = 0; r < kQueryBlock; ++r) {  // the block's queries, zero rows past N
        const int64_t n = n0 + r;
        if (n < N) std::memcpy(&q[r * qk_steps], src + (b * N + n) * row + h * D, D * sizeof(Elem));
        else std::memset(&q[r * qk_steps], 0, D * sizeof(Elem));
      }
      const Word* k = kp + bh * head_words;
      for (int64_t r = 0; r < kQueryBlock; r += kRowsQK)
        scores_micro<E, D>(&q[r * qk_steps], k, tiles, N, padded, static_cast<float>(scale), &scores[r * padded], &row_max[r]);
      for (int64_t r = 0; r < kQueryBlock; ++r)
        inv_sum[r] = 1.0f / softmax_row<E>(&scores[r * padded], row_max[r], N, padded, reinterpret_cast<Elem*>(&probs[r * pv_steps]));
      for (int64_t r = 0; r < kQueryBlock; r += rows_pv) {
        Elem* rows[rows_pv];
        for (int64_t i = 0; i < rows_pv; ++i) {
          const int64_t n = n0 + r + i;
          rows[i] = n < N ? dst + (b * N + n) * H * D + h * D : nullptr;
        }
        values_micro<E, D>(&probs[r * pv_steps], pv_steps, vp + bh * head_words, pv_steps, &inv_sum[r], rows);
      }
    }
  });
  return out;
}

// checks, then the instantiation for the head size (D = qkv's width / (3 * heads))
template <class E>
at::Tensor attention_any_head(const at::Tensor& qkv, int64_t num_heads, double scale, const char* name) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == E::kType, name, ": needs a ", E::kType, " CPU tensor");
  TORCH_CHECK(num_heads > 0 && qkv.dim() == 3 && qkv.size(2) % (3 * num_heads) == 0,
              name, ": qkv must be [B, N, 3 * heads * head size], got ", qkv.sizes(), " for ", num_heads, " heads");
  const int64_t head = qkv.size(2) / (3 * num_heads);
  const at::Tensor x = qkv.contiguous();
  switch (head) {
    case 16: return attention<E, 16>(x, num_heads, scale);
    case 32: return attention<E, 32>(x, num_heads, scale);
    case 64: return attention<E, 64>(x, num_heads, scale);
    default: TORCH_CHECK(false, name, ": head size must be 16, 32 or 64, got ", head);
  }
}

at::Tensor bf16_attention(const at::Tensor& qkv, int64_t num_heads, double scale) {
  return attention_any_head<Bf16>(qkv, num_heads, scale, "bf16_attention");
}

at::Tensor fp32_attention(const at::Tensor& qkv, int64_t num_heads, double scale) {
  return attention_any_head<Fp32>(qkv, num_heads, scale, "fp32_attention");
}

// ---------------------------------------------------------------------------------------------
// bf16_scaled_dot: out[b, i, j] = row_scale[b, i] * col_scale[b, j] * sum_c a[b, i, c] * b[b, j, c]
// with a, b bf16 and every product and sum in fp32 (vdpbf16ps products of bf16 are exact in fp32):
// the same numbers as an fp32 matmul of the bf16 values, at the bf16 rate. torch has no CPU matmul
// of bf16 inputs with an fp32 result (mm's out_dtype is CUDA-only), and a bf16 result would round
// the correlation's cosines to 8 bits (FS-DINO's 4D correlation, fsseg/models/correlation.py).
constexpr int64_t kColumnChunk = 128;  // 8 column tiles: a chunk of packed b (C=768: 192 KiB) stays in L2
constexpr int64_t kRowBlock = 64;      // rows per task

// b rows [n0, n0 + 128) of one batch -> [tiles][pairs][16] words (zero columns past n).
void pack_columns(const uint32_t* b, int64_t n, int64_t pairs, int64_t n0, uint32_t* out) {
  for (int64_t t = 0; t < kColumnChunk / kKeyTile; ++t)
    for (int64_t j = 0; j < kKeyTile; ++j) {
      const int64_t col = n0 + t * kKeyTile + j;
      const uint32_t* src = col < n ? b + col * pairs : nullptr;
      for (int64_t p = 0; p < pairs; ++p) out[(t * pairs + p) * kKeyTile + j] = src ? src[p] : 0u;
    }
}

// acc for kRowsQK rows x 2 column tiles of the packed chunk, then scaled and stored (valid columns only).
void dot_micro(const uint32_t* a, int64_t pairs, const uint32_t* packed, int64_t t, const float* rs,
               const float* cs, int64_t cols, float* out, int64_t ld, int64_t rows) {
  __m512 acc[kRowsQK][2];
  dot_rows_two_tiles<Bf16>(a, pairs, packed + t * pairs * kKeyTile, acc);
  for (int c = 0; c < 2; ++c) {
    const int64_t left = cols - (t + c) * kKeyTile;
    if (left <= 0) break;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
    const __m512 csv = _mm512_maskz_loadu_ps(m, cs + (t + c) * kKeyTile);
    for (int r = 0; r < rows; ++r)
      _mm512_mask_storeu_ps(out + r * ld + (t + c) * kKeyTile, m,
                            _mm512_mul_ps(_mm512_mul_ps(acc[r][c], csv), _mm512_set1_ps(rs[r])));
  }
}

at::Tensor bf16_scaled_dot(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_scale,
                           const at::Tensor& col_scale) {
  TORCH_CHECK(a.device().is_cpu() && a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16,
              "bf16_scaled_dot: a and b must be bf16 CPU tensors");
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(2) && a.size(2) % 2 == 0,
              "bf16_scaled_dot: a [B, M, C] and b [B, N, C] with even C, got ", a.sizes(), " and ", b.sizes());
  const int64_t B = a.size(0), M = a.size(1), N = b.size(1), C = a.size(2), pairs = C / 2;
  const at::Tensor av = a.contiguous(), bv = b.contiguous();
  const at::Tensor rs = row_scale.to(at::kFloat).contiguous().view({B, M});
  const at::Tensor cs = col_scale.to(at::kFloat).contiguous().view({B, N});
  const int64_t chunks = (N + kColumnChunk - 1) / kColumnChunk, row_blocks = (M + kRowBlock - 1) / kRowBlock;
  at::Tensor packed = at::empty({B, chunks, kColumnChunk * pairs}, av.options().dtype(at::kInt));
  at::Tensor out = at::empty({B, M, N}, av.options().dtype(at::kFloat));
  const uint32_t* ap = reinterpret_cast<const uint32_t*>(av.data_ptr<at::BFloat16>());
  const uint32_t* bp = reinterpret_cast<const uint32_t*>(bv.data_ptr<at::BFloat16>());
  uint32_t* pk = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
  const float* rsp = rs.data_ptr<float>();
  const float* csp = cs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      pack_columns(bp + (i / chunks) * N * pairs, N, pairs, (i % chunks) * kColumnChunk, pk + i * kColumnChunk * pairs);
  });
  at::parallel_for(0, B * row_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> rows_buf(kRowsQK * pairs);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / row_blocks, m0 = (task % row_blocks) * kRowBlock;
      const int64_t m1 = std::min(M, m0 + kRowBlock);
      for (int64_t c = 0; c < chunks; ++c) {
        const uint32_t* chunk = pk + (bi * chunks + c) * kColumnChunk * pairs;
        const int64_t n0 = c * kColumnChunk, cols = std::min(kColumnChunk, N - n0);
        for (int64_t r0 = m0; r0 < m1; r0 += kRowsQK) {
          const int64_t rows = std::min<int64_t>(kRowsQK, m1 - r0);
          const uint32_t* arows = ap + (bi * M + r0) * pairs;
          if (rows < kRowsQK) {  // last rows of the block: zero-padded copy
            std::fill(rows_buf.begin(), rows_buf.end(), 0u);
            std::memcpy(rows_buf.data(), arows, rows * pairs * sizeof(uint32_t));
            arows = rows_buf.data();
          }
          for (int64_t t = 0; t * kKeyTile < cols; t += 2)
            dot_micro(arows, pairs, chunk, t, rsp + bi * M + r0, csp + bi * N + n0, cols, op + (bi * M + r0) * N + n0,
                      N, rows);
        }
      }
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// instruction_peak: the cores' multiply-add rate (bench's roofline): every thread runs `iterations`
// rounds of 12 independent register-only multiply-adds (enough to hide the instruction's latency),
// fp32 FMAs (32 FLOP per 512-bit instruction) or bf16 dot products (vdpbf16ps: 64 FLOP), and the
// result is the FLOPs of all threads over the wall time. No memory traffic: a matmul can approach
// this rate but not pass it, and the ratio of the two rates bounds what bf16 can gain over fp32.
template <class E>
float multiply_add_rounds(int64_t iterations) {
  // twelve named accumulators (an array would be kept on the stack and reloaded every round)
  const typename E::Vec one = E::splat(E::kOne);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0,
         a9 = a0, a10 = a0, a11 = a0;
  for (int64_t it = 0; it < iterations; ++it) {
    a0 = E::madd(a0, one, one); a1 = E::madd(a1, one, one); a2 = E::madd(a2, one, one);
    a3 = E::madd(a3, one, one); a4 = E::madd(a4, one, one); a5 = E::madd(a5, one, one);
    a6 = E::madd(a6, one, one); a7 = E::madd(a7, one, one); a8 = E::madd(a8, one, one);
    a9 = E::madd(a9, one, one); a10 = E::madd(a10, one, one); a11 = E::madd(a11, one, one);
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7),
                     "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));  // no folding of the rounds
  }
  const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                   _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  return _mm512_reduce_add_ps(_mm512_add_ps(sum, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11))));
}

double instruction_peak(bool bf16, int64_t iterations) {
  TORCH_CHECK(iterations > 0, "instruction_peak: iterations must be positive");
  const int threads = at::get_num_threads();
  std::vector<float> sink(threads);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      sink[t] = bf16 ? multiply_add_rounds<Bf16>(iterations) : multiply_add_rounds<Fp32>(iterations);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  TORCH_CHECK(std::isfinite(std::accumulate(sink.begin(), sink.end(), 0.0f)), "instruction_peak: overflow");
  const double flop_per_instruction = bf16 ? 64.0 : 32.0;
  return threads * iterations * 12.0 * flop_per_instruction / seconds / 1e9;
}

}  // namespace

// the op schemas are defined in cpu_kernels.py (with their FLOP formulas), before this library loads
TORCH_LIBRARY_IMPL(fsseg_kernels, CPU, m) {
  m.impl("bf16_attention", &bf16_attention);
  m.impl("fp32_attention", &fp32_attention);
  m.impl("bf16_scaled_dot", &bf16_scaled_dot);
}

// no tensor argument: registered for every dispatch key (CompositeExplicitAutograd)
TORCH_LIBRARY_IMPL(fsseg_kernels, CompositeExplicitAutograd, m) {
  m.impl("instruction_peak", &instruction_peak);
}
