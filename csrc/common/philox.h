#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al., SC 2011).
// A draw is a pure function of (seed, offset, row, column): results do not
// depend on how rows are split between threads or blocks, so a seeded
// generator gives the same samples for any thread count.
#include <cmath>
#include <cstdint>

#include "macros.h"

namespace rankdistill {

struct Philox4x32 {
  uint32_t v[4];
};

RD_HOST_DEVICE uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

RD_HOST_DEVICE Philox4x32 philox4x32_10(Philox4x32 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo32(kMul0, counter.v[0], &hi0);
    const uint32_t lo1 = mulhilo32(kMul1, counter.v[2], &hi1);
    counter = Philox4x32{{hi1 ^ counter.v[1] ^ key0, lo1, hi0 ^ counter.v[3] ^ key1, lo0}};
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// Two uniform doubles in the open interval (0, 1), with 52 random bits each
// (m + 0.5 is exact in a double), for the column pair (2 * pair, 2 * pair + 1)
// of `row` in draw number `offset` under `seed`: one Philox call serves two
// columns. Rows and pairs fit in 32 bits (the launchers check it), so no two
// cells share a counter.
struct UniformPair {
  double even, odd;
};

RD_HOST_DEVICE double open01_from_bits(uint32_t high, uint32_t low) {
  const uint64_t mantissa = (static_cast<uint64_t>(high) << 20) | (low >> 12);
  return (static_cast<double>(mantissa) + 0.5) * (1.0 / 4503599627370496.0);  // 2^-52
}

RD_HOST_DEVICE UniformPair uniform_pair(uint64_t seed, uint64_t offset, int64_t row, int64_t pair) {
  const Philox4x32 bits = philox4x32_10(
      Philox4x32{{static_cast<uint32_t>(pair), static_cast<uint32_t>(row), static_cast<uint32_t>(offset),
                  static_cast<uint32_t>(offset >> 32)}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return UniformPair{open01_from_bits(bits.v[0], bits.v[1]), open01_from_bits(bits.v[2], bits.v[3])};
}

// Successive sampling without replacement with probabilities proportional to
// w is the same as keeping the k largest keys log(u) / w, u ~ U(0, 1)
// (Efraimidis & Spirakis, 2006). Non-positive weights never get drawn.
RD_HOST_DEVICE double key_from_uniform(double u, double weight) {
  return weight > 0.0 ? std::log(u) / weight : -INFINITY;
}

// The key of one cell; the same value as the CPU's pairwise loop computes.
RD_HOST_DEVICE double sampling_key(uint64_t seed, uint64_t offset, int64_t row, int64_t col, double weight) {
  const UniformPair u = uniform_pair(seed, offset, row, col >> 1);
  return key_from_uniform((col & 1) ? u.odd : u.even, weight);
}

}  // namespace rankdistill
