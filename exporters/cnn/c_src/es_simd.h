/* Dual 16-bit MAC primitives of the CMSIS-NN-style kernels. On Armv7E-M (Cortex-M4/M7, __ARM_FEATURE_DSP) they are
   the ACLE intrinsics (one SXTB16 / SMLAD / SMLABB / SMLATB instruction each); elsewhere (the host build) plain C
   with the same integer results, so the host build checks the very arithmetic the MCU runs. */
#ifndef ES_SIMD_H
#define ES_SIMD_H
#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define ES_SXTB16(x) ((uint32_t)__sxtb16((x)))                    /* (int16)b0 | (int16)b2 << 16 */
static inline uint32_t ES_SXTB16_ROR8(uint32_t x) {  /* (int16)b1 | (int16)b3 << 16, one instruction */
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
#define ES_SMLAD(x, y, a) __smlad((x), (y), (a))                  /* a + xl*yl + xh*yh (16x16 signed) */
#define ES_SMLABB(x, y, a) __smlabb((x), (y), (a))                /* a + xl*yl */
#define ES_SMLATB(x, y, a) __smlatb((x), (y), (a))                /* a + xh*yl */
#define ES_SMLABT(x, y, a) __smlabt((x), (y), (a))                /* a + xl*yh */
#define ES_SMLATT(x, y, a) __smlatt((x), (y), (a))                /* a + xh*yh */
#else
static inline uint32_t ES_SXTB16(uint32_t x) {
    return (uint32_t)(uint16_t)(int16_t)(int8_t)(x & 0xFF) | ((uint32_t)(uint16_t)(int16_t)(int8_t)((x >> 16) & 0xFF) << 16);
}
static inline uint32_t ES_SXTB16_ROR8(uint32_t x) { return ES_SXTB16((x >> 8) | (x << 24)); }
static inline int32_t es_lo16(uint32_t x) { return (int16_t)(x & 0xFFFF); }
static inline int32_t es_hi16(uint32_t x) { return (int16_t)(x >> 16); }
static inline int32_t ES_SMLAD(uint32_t x, uint32_t y, int32_t a) {
    return (int32_t)((uint32_t)a + (uint32_t)(es_lo16(x) * es_lo16(y)) + (uint32_t)(es_hi16(x) * es_hi16(y)));
}
static inline int32_t ES_SMLABB(uint32_t x, uint32_t y, int32_t a) { return (int32_t)((uint32_t)a + (uint32_t)(es_lo16(x) * es_lo16(y))); }
static inline int32_t ES_SMLATB(uint32_t x, uint32_t y, int32_t a) { return (int32_t)((uint32_t)a + (uint32_t)(es_hi16(x) * es_lo16(y))); }
static inline int32_t ES_SMLABT(uint32_t x, uint32_t y, int32_t a) { return (int32_t)((uint32_t)a + (uint32_t)(es_lo16(x) * es_hi16(y))); }
static inline int32_t ES_SMLATT(uint32_t x, uint32_t y, int32_t a) { return (int32_t)((uint32_t)a + (uint32_t)(es_hi16(x) * es_hi16(y))); }
#endif

/* 32-bit loads from any address (Cortex-M4/M7 do unaligned LDR; gcc turns the memcpy into one). */
static inline uint32_t es_rd32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t es_pack16(int32_t lo, int32_t hi) { return (uint32_t)(uint16_t)lo | ((uint32_t)(uint16_t)hi << 16); }

/* clamp(rint_half_even(v) + zp, lo, hi) with float32 v: the executor's requantisation. On an FPU target one VCVTR
   (FPSCR rounding mode = round to nearest even, the reset default); elsewhere a branchy round-half-even. */
static inline int8_t es_requant(float v, int32_t zp, int32_t lo, int32_t hi) {
    int32_t i;
#if defined(__ARM_FP) && (__ARM_FP & 4)
    /* VCVTR saturates to int32; clamping i to [lo - zp, hi - zp] before adding zp then equals the host path's
       (clamp |v| to 2^30, round, add zp, clamp to [lo, hi]) for every float v. */
    float r;
    __asm__("vcvtr.s32.f32 %0, %1" : "=t"(r) : "t"(v));
    __asm__("vmov %0, %1" : "=r"(i) : "t"(r));
    i = i < lo - zp ? lo - zp : i;
    i = i > hi - zp ? hi - zp : i;
    return (int8_t)(i + zp);
#else
    if (v > 1073741824.0f) v = 1073741824.0f;
    if (v < -1073741824.0f) v = -1073741824.0f;
    i = (int32_t)v;
    if (v < 0.0f && (float)i != v) i--;
    float d = v - (float)i;
    if (d > 0.5f || (d == 0.5f && (i & 1))) i++;
    i += zp;
    return (int8_t)(i < lo ? lo : (i > hi ? hi : i));
#endif
}
#endif
