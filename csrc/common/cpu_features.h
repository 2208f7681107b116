#pragma once
// AVX2 code paths on the CPU: functions compiled for AVX2 with a target
// attribute (the rest of the build targets baseline x86-64) and called only
// where the running CPU has it, so the extension still runs on any x86-64.
// RANKDISTILL_NO_AVX2=1 in the environment (read once) turns them off: the
// tests compare both paths on a machine with AVX2.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cstdlib>
#define RANKDISTILL_AVX2 1
#define RD_TARGET_AVX2 __attribute__((target("avx2,popcnt")))

namespace rankdistill {
inline bool cpu_has_avx2() {
  static const bool has = [] {
    const char* off = std::getenv("RANKDISTILL_NO_AVX2");
    const bool disabled = off != nullptr && off[0] != '\0' && !(off[0] == '0' && off[1] == '\0');
    return !disabled && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  }();
  return has;
}
}  // namespace rankdistill
#endif
