#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al., SC 2011).
// A draw is a pure function of (seed, offset, row, column): results do not
// depend on how rows are split between threads or blocks, so a seeded
// generator gives the same samples for any thread count.
#include <cfloat>
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
//
// A row's keys are computed from its weights times one power of two, 2^s,
// chosen from the row's largest weight bound (key_scale). Every key of the row
// scales by 2^-s, which keeps their order, and exactly while the keys are
// normal numbers, so weights that never needed the scaling get the same draws
// bit for bit. Unscaled, the keys of float64 weights below about 1e-307
// overflow to -inf (and tie) and those of weights near 1e308 underflow to
// subnormals (and lose precision or tie). The largest bound is brought into
// [2^968, 2^969): the keys nearest zero, |log u| / w >= 2^-53 / 2^969, stay
// normal, and every weight down to about 2^-1987 times the largest keeps a
// finite key (|log u| <= 37). Where every key is normal unscaled anyway
// (sampling.h's needs_key_scale), the scale is left at 1: it would change
// no draw, and the pass over the row that finds it is saved.
struct KeyScale {
  double first = 1.0, second = 1.0;  // 2^s = first * second: s reaches 2042, beyond one double
  RD_HOST_DEVICE double apply(double weight) const { return weight * first * second; }
};

RD_HOST_DEVICE KeyScale key_scale(double largest_bound) {
  // No positive weight (nothing to draw) or an infinite one (the call fails): no scaling.
  if (!(largest_bound > 0.0) || largest_bound == INFINITY) return KeyScale{};
  int exponent;
  std::frexp(largest_bound, &exponent);  // largest_bound in [2^(exponent - 1), 2^exponent)
  const int s = 969 - exponent;          // in [-55, 2042]
  return KeyScale{std::ldexp(1.0, s / 2), std::ldexp(1.0, s - s / 2)};
}

// A positive weight whose key still overflows (a row spanning more than
// 2^1987) gets -DBL_MAX: it stays drawable, after every other column.
RD_HOST_DEVICE double key_from_uniform(double u, double weight, const KeyScale& scale) {
  if (!(weight > 0.0)) return -INFINITY;
  const double key = std::log(u) / scale.apply(weight);
  return key > -DBL_MAX ? key : -DBL_MAX;
}

// The key of one cell; the same value as the CPU's pairwise loop computes.
RD_HOST_DEVICE double sampling_key(uint64_t seed, uint64_t offset, int64_t row, int64_t col, double weight,
                                   const KeyScale& scale) {
  const UniformPair u = uniform_pair(seed, offset, row, col >> 1);
  return key_from_uniform((col & 1) ? u.odd : u.even, weight, scale);
}

}  // namespace rankdistill
