#pragma once
// philox.h's uniform pairs for several consecutive column pairs of a row at
// once, on the CPU: with AVX2 Philox counters run four at a time in the 64-bit
// lanes of a vector (one _mm256_mul_epu32 does four of the 32 x 32 -> 64
// bit products), otherwise one after the other. Both give the values of
// uniform_pair bit for bit.
#include <cstdint>

#include "cpu_features.h"
#include "philox.h"

namespace rankdistill {

constexpr int64_t kPairsPerBlock = 16;

#ifdef RANKDISTILL_AVX2
// open01_from_bits of four lanes: a 52-bit mantissa m, exactly (m + 0.5) 2^-52;
// m becomes a double through the bits of 2^52 + m.
RD_TARGET_AVX2 inline __m256d open01_from_bits_avx2(__m256i high, __m256i low) {
  const __m256i mantissa = _mm256_or_si256(_mm256_slli_epi64(high, 20), _mm256_srli_epi64(low, 12));
  const __m256i two52_plus_m = _mm256_or_si256(mantissa, _mm256_set1_epi64x(0x4330000000000000));
  const __m256d m = _mm256_sub_pd(_mm256_castsi256_pd(two52_plus_m), _mm256_set1_pd(4503599627370496.0));
  return _mm256_mul_pd(_mm256_add_pd(m, _mm256_set1_pd(0.5)), _mm256_set1_pd(1.0 / 4503599627370496.0));
}

// out[2 j] and out[2 j + 1]: the even and odd uniforms of pair first_pair + j,
// j < kPairsPerBlock. Four groups of four counters run interleaved: one
// group alone would wait on each round's multiply.
RD_TARGET_AVX2 inline void uniform_pairs_avx2(uint64_t seed, uint64_t offset, int64_t row, int64_t first_pair,
                                              double* out) {
  constexpr int kGroups = kPairsPerBlock / 4;
  const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFF);
  const __m256i mul0 = _mm256_set1_epi64x(0xD2511F53u), mul1 = _mm256_set1_epi64x(0xCD9E8D57u);
  __m256i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  for (int g = 0; g < kGroups; ++g) {
    const int64_t pair = first_pair + 4 * g;
    c0[g] = _mm256_setr_epi64x(static_cast<uint32_t>(pair), static_cast<uint32_t>(pair + 1),
                               static_cast<uint32_t>(pair + 2), static_cast<uint32_t>(pair + 3));
    c1[g] = _mm256_set1_epi64x(static_cast<uint32_t>(row));
    c2[g] = _mm256_set1_epi64x(static_cast<uint32_t>(offset));
    c3[g] = _mm256_set1_epi64x(static_cast<uint32_t>(offset >> 32));
  }
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i k0 = _mm256_set1_epi64x(key0), k1 = _mm256_set1_epi64x(key1);
    for (int g = 0; g < kGroups; ++g) {
      const __m256i product0 = _mm256_mul_epu32(mul0, c0[g]), product1 = _mm256_mul_epu32(mul1, c2[g]);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product1, 32), c1[g]), k0);
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(product0, 32), c3[g]), k1);
      c1[g] = _mm256_and_si256(product1, low32);
      c3[g] = _mm256_and_si256(product0, low32);
    }
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  for (int g = 0; g < kGroups; ++g) {
    const __m256d even = open01_from_bits_avx2(c0[g], c1[g]), odd = open01_from_bits_avx2(c2[g], c3[g]);
    // interleave: even0 odd0 even1 odd1 | even2 odd2 even3 odd3
    const __m256d lo = _mm256_unpacklo_pd(even, odd), hi = _mm256_unpackhi_pd(even, odd);
    _mm256_storeu_pd(out + 8 * g, _mm256_permute2f128_pd(lo, hi, 0x20));
    _mm256_storeu_pd(out + 8 * g + 4, _mm256_permute2f128_pd(lo, hi, 0x31));
  }
}

#endif

// out[0 .. 2 num_pairs): the uniforms of pairs first_pair .. first_pair + num_pairs - 1,
// num_pairs <= kPairsPerBlock.
inline void uniform_pairs(uint64_t seed, uint64_t offset, int64_t row, int64_t first_pair, int64_t num_pairs,
                          double* out) {
#ifdef RANKDISTILL_AVX2
  if (num_pairs == kPairsPerBlock && cpu_has_avx2()) {
    uniform_pairs_avx2(seed, offset, row, first_pair, out);
    return;
  }
#endif
  for (int64_t j = 0; j < num_pairs; ++j) {
    const UniformPair u = uniform_pair(seed, offset, row, first_pair + j);
    out[2 * j] = u.even;
    out[2 * j + 1] = u.odd;
  }
}

}  // namespace rankdistill
