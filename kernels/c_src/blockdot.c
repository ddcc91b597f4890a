#define _GNU_SOURCE
/* edgespool block-quantised linear kernels: y[m, rows] = x[m, n] @ W[rows, n]^T for weights kept in their stored
 * layout (ggml block formats q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k, and edgespool's own int8 / int4 g32).
 *
 * Numerics (llama.cpp's vec_dot): each row of x is rounded to 32-value blocks of int8 codes (d = max|x|/127,
 * q = roundf(x/d), d kept as f16: ggml's quantize_row_q8_0), every weight block is dotted in integers with the activation block(s) it covers and the integer
 * dot is scaled by (weight scale x activation scale) in float.  K-quant sub-blocks use the 32-value activation
 * blocks too (one activation scale per sub-block instead of ggml's one per 256: equal or finer rounding).
 *
 * Weight codes are unpacked to bytes in a small stack buffer and dotted with a per-ISA primitive:
 *   AVX2: vpmaddubsw + vpmaddwd (u8 x s8), AVX-512 VNNI (+VL): vpdpbusd; aarch64 dotprod: sdot; else plain C.
 * Unsigned codes (nibbles, 5-bit, 6-bit) are dotted as unsigned and their offset removed with the activation
 * block's code sum; signed codes (q8_0, int8) use the sign trick (|w| x sign(x, w)).
 *
 * Threads: a persistent pool (es_pool_new); output rows are split into chunks that the caller and the workers
 * claim with one atomic word each, so a descheduled worker never holds the others up (oversubscribed boards).
 * Written for edgespool from the ggml block layouts (ggml-common.h); no ggml code is included. */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX2__)
#include <immintrin.h>
#define ES_ISA "avx2"
#elif defined(__ARM_NEON)
#include <arm_neon.h>
#define ES_ISA "neon"
#else
#define ES_ISA "c"
#endif

enum { W_Q8_0 = 0, W_Q4_0 = 1, W_Q4_1 = 2, W_Q5_0 = 3, W_Q4_K = 4, W_Q5_K = 5, W_Q6_K = 6, W_INT8 = 7, W_INT4 = 8, W_Q5_1 = 9,
       W_Q3_K = 10, W_Q2_K = 11 };
/* values per block of weight type wt: a width must be a multiple of it (K-quants: 256-value super-blocks) */
static inline int wt_values(int wt) {
    return wt == W_Q4_K || wt == W_Q5_K || wt == W_Q6_K || wt == W_Q3_K || wt == W_Q2_K ? 256 : 32;
}

static inline float h2f(const uint8_t *p) {
    _Float16 h;
    memcpy(&h, p, 2);
    return (float)h;
}

/* ---- activation blocks (struct of arrays): d[nb], s[nb] (sum of codes), q[n] ---------------------------- */
typedef struct {
    const int8_t *q;
    const float *d;
    const int32_t *s;
    const float *ds; /* d * s per block (the offset terms, vectorised) */
} act_t;

static void quantize_act(const float *x, int n, int8_t *q, float *d, int32_t *s, float *ds) {
#if defined(__AVX2__)
    /* the same arithmetic 8 lanes at a time (bit-identical codes and scales): roundf's half-away-from-zero is
     * trunc(v) + sign(v) where |v - trunc(v)| >= 0.5 (v - trunc(v) is exact) */
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), half = _mm256_set1_ps(0.5f);
    const __m256 hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f), one = _mm256_set1_ps(1.f);
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(xb + 8 * k);
            m = _mm256_max_ps(m, _mm256_and_ps(v[k], absmask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float amax = _mm_cvtss_f32(m4);
        float db = amax / 127.f, id = db ? 1.f / db : 0.f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i c[4], acc = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            __m256 t = _mm256_mul_ps(v[k], vid);
            __m256 tr = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 up = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(t, tr), absmask), half, _CMP_GE_OQ);
            __m256 sg = _mm256_or_ps(_mm256_andnot_ps(absmask, t), one); /* copysign(1, t) */
            tr = _mm256_add_ps(tr, _mm256_and_ps(up, sg));
            tr = _mm256_min_ps(_mm256_max_ps(tr, lo), hi);
            c[k] = _mm256_cvtps_epi32(tr);
            acc = _mm256_add_epi32(acc, c[k]);
        }
        __m256i p01 = _mm256_packs_epi32(c[0], c[1]), p23 = _mm256_packs_epi32(c[2], c[3]);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi16(p01, p23), 0xD8);
        p = _mm256_shuffle_epi8(p, _mm256_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15,
                                                    0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p);
        __m128i a4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0x4E));
        a4 = _mm_add_epi32(a4, _mm_shuffle_epi32(a4, 0xB1));
        int sum = _mm_cvtsi128_si32(a4);
        d[b] = (float)(_Float16)db;
        s[b] = sum;
        ds[b] = d[b] * (float)sum;
    }
    return;
#endif
    for (int b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.f;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float db = amax / 127.f, id = db ? 1.f / db : 0.f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            int v = (int)roundf(xb[j] * id);
            v = v > 127 ? 127 : (v < -127 ? -127 : v);
            q[32 * b + j] = (int8_t)v;
            sum += v;
        }
        d[b] = (float)(_Float16)db; /* stored as f16, like ggml's block_q8_0 (codes from the f32 scale) */
        s[b] = sum;
        ds[b] = d[b] * (float)sum;
    }
}

/* ---- dot primitives: a "vacc" of int32 lanes whose lane sum is the dot ----------------------------------- */
#if defined(__AVX2__)
typedef __m256i vi;
typedef __m256 vf;
static inline vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline vi dotu(const uint8_t *w, const int8_t *x) { /* 32 u8 (<128) x 32 s8 */
    __m256i a = _mm256_loadu_si256((const __m256i *)w), b = _mm256_loadu_si256((const __m256i *)x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}
static inline vi dots(const int8_t *w, const int8_t *x) { /* 32 s8 x 32 s8 (x in -127..127) */
    __m256i a = _mm256_loadu_si256((const __m256i *)w), b = _mm256_loadu_si256((const __m256i *)x);
    __m256i ua = _mm256_sign_epi8(a, a), sb = _mm256_sign_epi8(b, a);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ua, sb);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), _mm256_set1_epi16(1));
#endif
}
/* lanes 0-3 hold bytes 0-15, lanes 4-7 bytes 16-31: scale the halves separately */
static inline vi vi_scale2(vi v, int s0, int s1) { return _mm256_mullo_epi32(v, _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1)); }
static inline vi vi_scale(vi v, int s) { return _mm256_mullo_epi32(v, _mm256_set1_epi32(s)); }
static inline vi vi_add(vi a, vi b) { return _mm256_add_epi32(a, b); }
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_fma(vi v, float c, vf acc) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(c), acc); }
static inline float vf_sum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#elif defined(__ARM_NEON)
typedef int32x4_t vi;
typedef float32x4_t vf;
static inline vi vi_zero(void) { return vdupq_n_s32(0); }
static inline vi dot16s(int8x16_t a, int8x16_t b, vi acc) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    int16x8_t hi = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}
/* lanes: first vector's 4 lanes cover bytes 0-15; we keep two accumulators folded as (a + b) when unscaled */
static inline vi dots(const int8_t *w, const int8_t *x) {
    return dot16s(vld1q_s8(w + 16), vld1q_s8(x + 16), dot16s(vld1q_s8(w), vld1q_s8(x), vi_zero()));
}
static inline vi dotu(const uint8_t *w, const int8_t *x) { return dots((const int8_t *)w, x); } /* codes < 128 */
static inline vi vi_scale2(vi v, int s0, int s1) { (void)v; (void)s0; (void)s1; return v; } /* unused on NEON */
static inline vi vi_scale(vi v, int s) { return vmulq_n_s32(v, s); }
static inline vi vi_add(vi a, vi b) { return vaddq_s32(a, b); }
static inline vf vf_zero(void) { return vdupq_n_f32(0.f); }
static inline vf vf_fma(vi v, float c, vf acc) { return vmlaq_n_f32(acc, vcvtq_f32_s32(v), c); }
static inline float vf_sum(vf v) { return vaddvq_f32(v); }
#define ES_NEON_SCALE2 1
static inline vi dots_scale2(const int8_t *w, const int8_t *x, int s0, int s1) {
    vi a = dot16s(vld1q_s8(w), vld1q_s8(x), vi_zero());
    vi b = dot16s(vld1q_s8(w + 16), vld1q_s8(x + 16), vi_zero());
    return vaddq_s32(vmulq_n_s32(a, s0), vmulq_n_s32(b, s1));
}
#else
typedef int32_t vi;
typedef float vf;
static inline vi vi_zero(void) { return 0; }
static inline vi dotu(const uint8_t *w, const int8_t *x) {
    int s = 0;
    for (int j = 0; j < 32; j++) s += (int)w[j] * x[j];
    return s;
}
static inline vi dots(const int8_t *w, const int8_t *x) {
    int s = 0;
    for (int j = 0; j < 32; j++) s += (int)w[j] * x[j];
    return s;
}
#define ES_SCALAR_SCALE2 1
static inline vi dots_scale2(const int8_t *w, const int8_t *x, int s0, int s1) {
    int a = 0, b = 0;
    for (int j = 0; j < 16; j++) a += (int)w[j] * x[j];
    for (int j = 16; j < 32; j++) b += (int)w[j] * x[j];
    return a * s0 + b * s1;
}
static inline vi vi_scale(vi v, int s) { return v * s; }
static inline vi vi_add(vi a, vi b) { return a + b; }
static inline vf vf_zero(void) { return 0.f; }
static inline vf vf_fma(vi v, float c, vf acc) { return acc + (float)v * c; }
static inline float vf_sum(vf v) { return v; }
#endif
#if defined(__AVX2__)
static inline vi dotu_r(__m256i a, const int8_t *x) { /* register u8 codes (<128) x 32 s8 */
    __m256i b = _mm256_loadu_si256((const __m256i *)x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
#endif
}
static inline __m256i nib16_r(const uint8_t *qs) { /* 16 bytes -> 32 nibble codes in a register */
    __m128i v = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}
static inline __m256i bits32_r(uint32_t bits) { /* bit j of bits -> 0xFF in byte j */
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits),
                                    _mm256_setr_epi64x(0, 0x0101010101010101LL, 0x0202020202020202LL, 0x0303030303030303LL));
    __m256i sel = _mm256_set1_epi64x(0x8040201008040201LL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}
#define ES_REG_UNPACK 1
static inline vi dots_scale2(const int8_t *w, const int8_t *x, int s0, int s1) { return vi_scale2(dots(w, x), s0, s1); }
#endif

/* ---- nibble unpack: 16 bytes -> 32 codes (low nibbles then high nibbles: ggml's order) ------------------- */
static inline void unpack_nib16(const uint8_t *qs, uint8_t *out) {
#if defined(__AVX2__)
    __m128i v = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    _mm_storeu_si128((__m128i *)out, _mm_and_si128(v, m));
    _mm_storeu_si128((__m128i *)(out + 16), _mm_and_si128(_mm_srli_epi16(v, 4), m));
#elif defined(__ARM_NEON)
    uint8x16_t v = vld1q_u8(qs);
    vst1q_u8(out, vandq_u8(v, vdupq_n_u8(0x0F)));
    vst1q_u8(out + 16, vshrq_n_u8(v, 4));
#else
    for (int j = 0; j < 16; j++) { out[j] = qs[j] & 0x0F; out[j + 16] = qs[j] >> 4; }
#endif
}
/* 32 bytes -> low nibbles (32) and high nibbles (32): K-quant sub-block pairs */
static inline void unpack_nib32(const uint8_t *qs, uint8_t *lo, uint8_t *hi) {
#if defined(__AVX2__)
    __m256i v = _mm256_loadu_si256((const __m256i *)qs), m = _mm256_set1_epi8(0x0F);
    _mm256_storeu_si256((__m256i *)lo, _mm256_and_si256(v, m));
    _mm256_storeu_si256((__m256i *)hi, _mm256_and_si256(_mm256_srli_epi16(v, 4), m));
#else
    for (int j = 0; j < 32; j++) { lo[j] = qs[j] & 0x0F; hi[j] = qs[j] >> 4; }
#endif
}

/* ---- one weight row . NA activation rows, per weight format ------------------------------------------------
 * Each weight block is unpacked once and dotted with the same block of every activation row (prefill reuses it
 * NA times).  Two float accumulators per activation row (even / odd block) keep two FMA chains in flight. */
#define MAXNA 8
typedef void (*rowdot_fn)(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, int na, float *out);
#define AI __attribute__((always_inline)) static inline
#define ROWFN(name) \
    static void name(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, int na, float *out) { \
        switch (na) { \
        case 1: name##_b(w, wsc, n, a, out, 1); break; \
        case 2: name##_b(w, wsc, n, a, out, 2); break; \
        case 3: name##_b(w, wsc, n, a, out, 3); break; \
        case 4: name##_b(w, wsc, n, a, out, 4); break; \
        case 5: name##_b(w, wsc, n, a, out, 5); break; \
        case 6: name##_b(w, wsc, n, a, out, 6); break; \
        case 7: name##_b(w, wsc, n, a, out, 7); break; \
        default: name##_b(w, wsc, n, a, out, 8); break; \
        } \
    }
#define ACC_INIT vf acc[MAXNA][2]; float off[MAXNA][2]; \
    for (int i = 0; i < NA; i++) { acc[i][0] = acc[i][1] = vf_zero(); off[i][0] = off[i][1] = 0.f; }
#define ACC_OUT(expr) for (int i = 0; i < NA; i++) out[i] = (expr)
#define BLOCK_LOOP(nb) { int b_ = B8_START; for (; b_ + 1 < (nb); b_ += 2) { STEP(b_, 0) STEP(b_ + 1, 1) } \
    if (b_ < (nb)) STEP(b_, 0) }
#define SUMI(i) vf_sum(_vf_add2(acc[i][0], acc[i][1]))
#define OFFI(i) (off[i][0] + off[i][1])
#if defined(__AVX2__)
AI vf _vf_add2(vf x, vf y) { return _mm256_add_ps(x, y); }
#elif defined(__ARM_NEON)
AI vf _vf_add2(vf x, vf y) { return vaddq_f32(x, y); }
#else
AI vf _vf_add2(vf x, vf y) { return x + y; }
#endif
/* weight block register (AVX2) or buffer (other ISAs) */
#ifdef ES_REG_UNPACK
typedef __m256i wblk;
#define DOTU(wb, x) dotu_r((wb), (x))
#else
typedef struct { uint8_t v[32] __attribute__((aligned(32))); } wblk;
#define DOTU(wb, x) dotu((wb).v, (x))
#endif
AI wblk wb_nib16(const uint8_t *qs) {
#ifdef ES_REG_UNPACK
    return nib16_r(qs);
#else
    wblk r;
    unpack_nib16(qs, r.v);
    return r;
#endif
}
AI wblk wb_nib16_hi(const uint8_t *qs, uint32_t qh) { /* 5-bit codes: nibbles + bit j of qh as bit 4 */
#ifdef ES_REG_UNPACK
    return _mm256_or_si256(nib16_r(qs), _mm256_and_si256(bits32_r(qh), _mm256_set1_epi8(0x10)));
#else
    wblk r;
    unpack_nib16(qs, r.v);
    for (int j = 0; j < 32; j++) r.v[j] |= ((qh >> j) & 1u) << 4;
    return r;
#endif
}
/* K-quant pair p of a 256 block: low / high nibbles of qs[32], with bit (2p / 2p+1) of qh[32] as bit 4 (q5_k) */
AI void wb_kpair(const uint8_t *qs, const uint8_t *qh, int p, wblk *lo, wblk *hi) {
#ifdef ES_REG_UNPACK
    __m256i v = _mm256_loadu_si256((const __m256i *)qs), m4 = _mm256_set1_epi8(0x0F);
    *lo = _mm256_and_si256(v, m4);
    *hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if (qh) {
        __m256i h = _mm256_loadu_si256((const __m256i *)qh), b16 = _mm256_set1_epi8(0x10);
        __m256i u0 = _mm256_set1_epi8((char)(1 << (2 * p))), u1 = _mm256_set1_epi8((char)(2 << (2 * p)));
        *lo = _mm256_or_si256(*lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, u0), u0), b16));
        *hi = _mm256_or_si256(*hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h, u1), u1), b16));
    }
#else
    unpack_nib32(qs, lo->v, hi->v);
    if (qh)
        for (int j = 0; j < 32; j++) {
            lo->v[j] |= ((qh[j] >> (2 * p)) & 1u) << 4;
            hi->v[j] |= ((qh[j] >> (2 * p + 1)) & 1u) << 4;
        }
#endif
}

/* AVX2: 8 blocks at a time.  The 8 integer block dots are reduced to one vector of 8 block sums (hadd tree), so
 * the scales are applied as vectors (weight scales of the 8 blocks x the contiguous activation scales) instead of
 * one broadcast + multiply + FMA per block; the offsets likewise from the contiguous d * s. */
#ifdef ES_REG_UNPACK
AI __m256i sum8(const __m256i *p) {
    __m256i s01 = _mm256_hadd_epi32(p[0], p[1]), s23 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i s45 = _mm256_hadd_epi32(p[4], p[5]), s67 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}
AI __m256i dots_rr(__m256i a, const int8_t *x) {
    __m256i b = _mm256_loadu_si256((const __m256i *)x);
    __m256i ua = _mm256_sign_epi8(a, a), sb = _mm256_sign_epi8(b, a);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), ua, sb);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), _mm256_set1_epi16(1));
#endif
}
enum { K8_Q8_0, K8_INT8, K8_Q4_0, K8_INT4, K8_Q4_1, K8_Q5_0, K8_Q5_1 };
/* blocks [0, n/32 & ~7) of one weight row against NA activation rows; adds into acc8 / off8 */
AI void row8(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, __m256 *acc8, __m256 *off8, const int NA,
             const int K) {
    const int signed_codes = K == K8_Q8_0 || K == K8_INT8;
    for (int b = 0; b < ((n / 32) & ~7); b += 8) {
        __m256i u[8];
        float dw[8], mw[8];
        for (int k = 0; k < 8; k++) {
            int bb = b + k;
            if (K == K8_Q8_0) { u[k] = _mm256_loadu_si256((const __m256i *)(w + 34 * bb + 2)); dw[k] = h2f(w + 34 * bb); }
            if (K == K8_INT8) { u[k] = _mm256_loadu_si256((const __m256i *)(w + 32 * bb)); dw[k] = 1.f; }
            if (K == K8_Q4_0) { u[k] = nib16_r(w + 18 * bb + 2); dw[k] = h2f(w + 18 * bb); }
            if (K == K8_INT4) { u[k] = nib16_r(w + 16 * bb); dw[k] = h2f(wsc + 2 * bb); }
            if (K == K8_Q4_1) { u[k] = nib16_r(w + 20 * bb + 4); dw[k] = h2f(w + 20 * bb); mw[k] = h2f(w + 20 * bb + 2); }
            if (K == K8_Q5_0) {
                uint32_t qh;
                memcpy(&qh, w + 22 * bb + 2, 4);
                u[k] = _mm256_or_si256(nib16_r(w + 22 * bb + 6), _mm256_and_si256(bits32_r(qh), _mm256_set1_epi8(0x10)));
                dw[k] = h2f(w + 22 * bb);
            }
            if (K == K8_Q5_1) { /* [d][m][qh][nibbles]: q5_0's codes, q4_1's min */
                uint32_t qh;
                memcpy(&qh, w + 24 * bb + 4, 4);
                u[k] = _mm256_or_si256(nib16_r(w + 24 * bb + 8), _mm256_and_si256(bits32_r(qh), _mm256_set1_epi8(0x10)));
                dw[k] = h2f(w + 24 * bb), mw[k] = h2f(w + 24 * bb + 2);
            }
        }
        __m256 dwv = _mm256_setr_ps(dw[0], dw[1], dw[2], dw[3], dw[4], dw[5], dw[6], dw[7]);
        __m256 mwv = K == K8_Q4_1 || K == K8_Q5_1 ? _mm256_setr_ps(mw[0], mw[1], mw[2], mw[3], mw[4], mw[5], mw[6], mw[7]) : dwv;
        for (int i = 0; i < NA; i++) {
            __m256i p[8];
            for (int k = 0; k < 8; k++)
                p[k] = signed_codes ? dots_rr(u[k], a[i].q + 32 * (b + k)) : dotu_r(u[k], a[i].q + 32 * (b + k));
            __m256 sc = K == K8_INT8 ? _mm256_loadu_ps(a[i].d + b) : _mm256_mul_ps(dwv, _mm256_loadu_ps(a[i].d + b));
            acc8[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum8(p)), sc, acc8[i]);
            if (!signed_codes) off8[i] = _mm256_fmadd_ps(mwv, _mm256_loadu_ps(a[i].ds + b), off8[i]);
        }
    }
}
#define ROW8(K) __m256 acc8[MAXNA], off8[MAXNA]; \
    for (int i = 0; i < NA; i++) acc8[i] = off8[i] = _mm256_setzero_ps(); \
    row8(w, wsc, n, a, acc8, off8, NA, K); \
    for (int i = 0; i < NA; i++) { acc[i][0] = _mm256_add_ps(acc[i][0], acc8[i]); off[i][0] += vf_sum(off8[i]); }
#define B8_START ((n / 32) & ~7)
#else
#define ROW8(K)
#define B8_START 0
#endif

AI void row_q8_0_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    ACC_INIT
    ROW8(K8_Q8_0)
#define STEP(b, P) { const uint8_t *wb = w + 34 * (b); float dw = h2f(wb); \
        for (int i = 0; i < NA; i++) acc[i][P] = vf_fma(dots((const int8_t *)(wb + 2), a[i].q + 32 * (b)), dw * a[i].d[b], acc[i][P]); }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i));
}
ROWFN(row_q8_0)
AI void row_int8_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    ACC_INIT
    ROW8(K8_INT8)
#define STEP(b, P) { for (int i = 0; i < NA; i++) acc[i][P] = vf_fma(dots((const int8_t *)w + 32 * (b), a[i].q + 32 * (b)), a[i].d[b], acc[i][P]); }
    BLOCK_LOOP(n / 32)
#undef STEP
    float s;
    memcpy(&s, wsc, 4);
    ACC_OUT(SUMI(i) * s);
}
ROWFN(row_int8)
AI void row_q4_0_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    ACC_INIT
    ROW8(K8_Q4_0)
#define STEP(b, P) { const uint8_t *wb = w + 18 * (b); float dw = h2f(wb); wblk u = wb_nib16(wb + 2); \
        for (int i = 0; i < NA; i++) { float dd = dw * a[i].d[b]; \
            acc[i][P] = vf_fma(DOTU(u, a[i].q + 32 * (b)), dd, acc[i][P]); off[i][P] += dd * (float)a[i].s[b]; } }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i) - 8.f * OFFI(i));
}
ROWFN(row_q4_0)
AI void row_int4_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    ACC_INIT
    ROW8(K8_INT4)
#define STEP(b, P) { float dw = h2f(wsc + 2 * (b)); wblk u = wb_nib16(w + 16 * (b)); \
        for (int i = 0; i < NA; i++) { float dd = dw * a[i].d[b]; \
            acc[i][P] = vf_fma(DOTU(u, a[i].q + 32 * (b)), dd, acc[i][P]); off[i][P] += dd * (float)a[i].s[b]; } }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i) - 8.f * OFFI(i));
}
ROWFN(row_int4)
AI void row_q4_1_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    ACC_INIT
    ROW8(K8_Q4_1)
#define STEP(b, P) { const uint8_t *wb = w + 20 * (b); float dw = h2f(wb), mw = h2f(wb + 2); wblk u = wb_nib16(wb + 4); \
        for (int i = 0; i < NA; i++) { acc[i][P] = vf_fma(DOTU(u, a[i].q + 32 * (b)), dw * a[i].d[b], acc[i][P]); \
            off[i][P] += mw * a[i].d[b] * (float)a[i].s[b]; } }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i) + OFFI(i));
}
ROWFN(row_q4_1)
AI void row_q5_0_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    ACC_INIT
    ROW8(K8_Q5_0)
#define STEP(b, P) { const uint8_t *wb = w + 22 * (b); uint32_t qh; memcpy(&qh, wb + 2, 4); float dw = h2f(wb); \
        wblk u = wb_nib16_hi(wb + 6, qh); \
        for (int i = 0; i < NA; i++) { float dd = dw * a[i].d[b]; \
            acc[i][P] = vf_fma(DOTU(u, a[i].q + 32 * (b)), dd, acc[i][P]); off[i][P] += dd * (float)a[i].s[b]; } }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i) - 16.f * OFFI(i));
}
ROWFN(row_q5_0)
AI void row_q5_1_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    ACC_INIT
    ROW8(K8_Q5_1)
#define STEP(b, P) { const uint8_t *wb = w + 24 * (b); uint32_t qh; memcpy(&qh, wb + 4, 4); \
        float dw = h2f(wb), mw = h2f(wb + 2); wblk u = wb_nib16_hi(wb + 8, qh); \
        for (int i = 0; i < NA; i++) { acc[i][P] = vf_fma(DOTU(u, a[i].q + 32 * (b)), dw * a[i].d[b], acc[i][P]); \
            off[i][P] += mw * a[i].d[b] * (float)a[i].s[b]; } }
    BLOCK_LOOP(n / 32)
#undef STEP
    ACC_OUT(SUMI(i) + OFFI(i));
}
ROWFN(row_q5_1)
static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}
/* q4_k (bpb 144, qh NULL) and q5_k (bpb 176, qh at 16, qs at 48): d, dmin, 12 bytes of 6-bit scales/mins */
AI void row_k45(const uint8_t *w, int n, const act_t *a, float *out, const int NA, const int five) {
    ACC_INIT
    const int bpb = five ? 176 : 144;
    for (int B = 0; B < n / 256; B++, w += bpb) {
        float d = h2f(w), dmin = h2f(w + 2);
        const uint8_t *sc = w + 4, *qh = five ? w + 16 : 0, *qs = w + (five ? 48 : 16);
        for (int p = 0; p < 4; p++) {
            int s0, m0, s1, m1, b = 8 * B + 2 * p;
            scale_min_k4(2 * p, sc, &s0, &m0);
            scale_min_k4(2 * p + 1, sc, &s1, &m1);
            wblk lo, hi;
            wb_kpair(qs + 32 * p, qh, p, &lo, &hi);
            float f0 = d * (float)s0, f1 = d * (float)s1, g0 = dmin * (float)m0, g1 = dmin * (float)m1;
            for (int i = 0; i < NA; i++) {
                acc[i][0] = vf_fma(DOTU(lo, a[i].q + 32 * b), f0 * a[i].d[b], acc[i][0]);
                acc[i][1] = vf_fma(DOTU(hi, a[i].q + 32 * (b + 1)), f1 * a[i].d[b + 1], acc[i][1]);
                off[i][p & 1] += g0 * a[i].d[b] * (float)a[i].s[b] + g1 * a[i].d[b + 1] * (float)a[i].s[b + 1];
            }
        }
    }
    ACC_OUT(SUMI(i) - OFFI(i));
}
AI void row_q4_k_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    row_k45(w, n, a, out, NA, 0);
}
ROWFN(row_q4_k)
AI void row_q5_k_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    row_k45(w, n, a, out, NA, 1);
}
ROWFN(row_q5_k)
AI void row_q6_k_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    int8_t q[128] __attribute__((aligned(32)));
    ACC_INIT
    for (int B = 0; B < n / 256; B++, w += 210) {
        const uint8_t *ql = w, *qh = w + 128;
        const int8_t *sc = (const int8_t *)(w + 192);
        float d = h2f(w + 208);
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8) {
            /* 128 values: q[l], q[l+32], q[l+64], q[l+96] for l < 32 (ggml's dequantize_row_q6_K order) */
            for (int l = 0; l < 32; l++) {
                q[l] = (int8_t)(((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                q[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                q[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                q[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
            for (int k = 0; k < 4; k++) { /* 32 values, scales sc[2k] (first 16) and sc[2k+1] (last 16) */
                int b = 8 * B + 4 * h + k;
                for (int i = 0; i < NA; i++)
                    acc[i][k & 1] = vf_fma(dots_scale2(q + 32 * k, a[i].q + 32 * b, sc[2 * k], sc[2 * k + 1]),
                                           d * a[i].d[b], acc[i][k & 1]);
            }
        }
    }
    ACC_OUT(SUMI(i));
}
ROWFN(row_q6_k)
/* q3_k (110 bytes a super-block: hmask[32], qs[64], 12 bytes of 6-bit scales, f16 d) and q2_k (84 bytes:
 * scales[16] = 4-bit scale | 4-bit min << 4, qs[64], f16 d, f16 dmin): decoded per 128 values into int8 codes (as
 * q6_k is), sub-blocks of 16 with their own scale (ggml's dequantize_row_q3_K / _q2_K order: 32-value block j of
 * half h takes bits 2j of qs[32h + l], l < 32, and scales 8h + 2j, 8h + 2j + 1) */
static inline void q3k_scales(const uint8_t *p, int8_t *sc) {
    uint32_t aux[4], tmp;
    memcpy(aux, p, 12);
    tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & 0x0f0f0f0fu) | (((tmp >> 4) & 0x03030303u) << 4);
    aux[3] = ((aux[1] >> 4) & 0x0f0f0f0fu) | (((tmp >> 6) & 0x03030303u) << 4);
    aux[0] = (aux[0] & 0x0f0f0f0fu) | (((tmp >> 0) & 0x03030303u) << 4);
    aux[1] = (aux[1] & 0x0f0f0f0fu) | (((tmp >> 2) & 0x03030303u) << 4);
    memcpy(sc, aux, 16);
    for (int j = 0; j < 16; j++) sc[j] = (int8_t)(sc[j] - 32);
}
AI void row_q3_k_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    int8_t q[128] __attribute__((aligned(32)));
    int8_t sc[16];
    ACC_INIT
    for (int B = 0; B < n / 256; B++, w += 110) {
        const uint8_t *hm = w, *qs = w + 32;
        q3k_scales(w + 96, sc);
        float d = h2f(w + 108);
        for (int h = 0; h < 2; h++, qs += 32) {
#ifdef ES_REG_UNPACK /* codes in registers: bits 2j of qs, minus 4 where hmask's bit 4h + j is clear */
            const __m256i qv = _mm256_loadu_si256((const __m256i *)qs), hv = _mm256_loadu_si256((const __m256i *)hm);
            for (int j = 0; j < 4; j++) {
                __m256i c = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), _mm256_set1_epi8(3));
                __m256i clear = _mm256_cmpeq_epi8(_mm256_and_si256(hv, _mm256_set1_epi8((char)(1u << (4 * h + j)))),
                                                  _mm256_setzero_si256());
                c = _mm256_sub_epi8(c, _mm256_and_si256(clear, _mm256_set1_epi8(4)));
                int b = 8 * B + 4 * h + j, s0 = sc[8 * h + 2 * j], s1 = sc[8 * h + 2 * j + 1];
                for (int i = 0; i < NA; i++)
                    acc[i][j & 1] = vf_fma(vi_scale2(dots_rr(c, a[i].q + 32 * b), s0, s1), d * a[i].d[b],
                                           acc[i][j & 1]);
            }
            continue;
#endif
            for (int j = 0; j < 4; j++) {
                const uint8_t m = (uint8_t)(1u << (4 * h + j));
                for (int l = 0; l < 32; l++)
                    q[32 * j + l] = (int8_t)(((qs[l] >> (2 * j)) & 3) - ((hm[l] & m) ? 0 : 4));
            }
            for (int j = 0; j < 4; j++) {
                int b = 8 * B + 4 * h + j;
                for (int i = 0; i < NA; i++)
                    acc[i][j & 1] = vf_fma(dots_scale2(q + 32 * j, a[i].q + 32 * b, sc[8 * h + 2 * j],
                                                       sc[8 * h + 2 * j + 1]), d * a[i].d[b], acc[i][j & 1]);
            }
        }
    }
    ACC_OUT(SUMI(i));
}
ROWFN(row_q3_k)
static const int8_t ES_ONES32[32] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                                                   1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
AI void row_q2_k_b(const uint8_t *w, const uint8_t *wsc, int n, const act_t *a, float *out, const int NA) {
    (void)wsc;
    int8_t q[128] __attribute__((aligned(32)));
    ACC_INIT
    for (int B = 0; B < n / 256; B++, w += 84) {
        const uint8_t *sc = w, *qs = w + 16;
        float d = h2f(w + 80), dmin = h2f(w + 82);
        for (int h = 0; h < 2; h++, qs += 32) {
#ifdef ES_REG_UNPACK
            const __m256i qv = _mm256_loadu_si256((const __m256i *)qs), ones = _mm256_set1_epi8(1);
            for (int j = 0; j < 4; j++) {
                __m256i c = _mm256_and_si256(_mm256_srli_epi16(qv, 2 * j), _mm256_set1_epi8(3));
                int b = 8 * B + 4 * h + j, s0 = sc[8 * h + 2 * j], s1 = sc[8 * h + 2 * j + 1];
                for (int i = 0; i < NA; i++) {
                    acc[i][0] = vf_fma(vi_scale2(dotu_r(c, a[i].q + 32 * b), s0 & 15, s1 & 15), d * a[i].d[b],
                                       acc[i][0]);
                    acc[i][1] = vf_fma(vi_scale2(dotu_r(ones, a[i].q + 32 * b), s0 >> 4, s1 >> 4),
                                       -dmin * a[i].d[b], acc[i][1]);
                }
            }
            continue;
#endif
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) q[32 * j + l] = (int8_t)((qs[l] >> (2 * j)) & 3);
            for (int j = 0; j < 4; j++) {
                int b = 8 * B + 4 * h + j, s0 = sc[8 * h + 2 * j], s1 = sc[8 * h + 2 * j + 1];
                for (int i = 0; i < NA; i++) { /* d * scale * code - dmin * min, per 16 values */
                    acc[i][0] = vf_fma(dots_scale2(q + 32 * j, a[i].q + 32 * b, s0 & 15, s1 & 15), d * a[i].d[b],
                                       acc[i][0]);
                    acc[i][1] = vf_fma(dots_scale2(ES_ONES32, a[i].q + 32 * b, s0 >> 4, s1 >> 4),
                                       -dmin * a[i].d[b], acc[i][1]);
                }
            }
        }
    }
    ACC_OUT(SUMI(i));
}
ROWFN(row_q2_k)

static rowdot_fn rowdot_of(int wt) {
    switch (wt) {
    case W_Q8_0: return row_q8_0;
    case W_Q4_0: return row_q4_0;
    case W_Q4_1: return row_q4_1;
    case W_Q5_0: return row_q5_0;
    case W_Q5_1: return row_q5_1;
    case W_Q4_K: return row_q4_k;
    case W_Q5_K: return row_q5_k;
    case W_Q6_K: return row_q6_k;
    case W_Q3_K: return row_q3_k;
    case W_Q2_K: return row_q2_k;
    case W_INT8: return row_int8;
    case W_INT4: return row_int4;
    default: return 0;
    }
}

#include "blockpack.h"

/* ---- thread pool ------------------------------------------------------------------------------------------- */
/* Workers spin on a generation counter for a while after each job (the next linear of a decode step comes within
 * tens of microseconds; waking a thread blocked on a condition variable costs ~50-100 us on a VM), then block. */
#define ES_SPIN_NS 200000L
#define ES_MAX_SEG 4
typedef struct {
    rowdot_fn fn;
    const uint8_t *w, *wsc;
    long row_bytes, sc_bytes;
    int rows, n, m, nth;
    const int8_t *q;
    const float *d;
    const int32_t *s;
    const float *ds;
    float *y;
    int wt, packed; /* packed: w is the x16 layout of blockpack.h */
    const int32_t *so; /* packed: -offset x code sum per activation block */
    /* fused packed job (es_linear_packed_multi): nseg weights of one input; global chunk c belongs to the segment
     * with ch0 <= c < next ch0 and covers rows (c - ch0) x chunk.. of it */
    int nseg;
    struct { const uint8_t *w; float *y; const int32_t *so; int rows, wt, chunk, ch0; } seg[ES_MAX_SEG];
    /* a generic job (activation rounding, attention, SiLU x up): task(j, i0, i1) runs items [i0, i1) of rows,
     * tchunk items per claim; ctx is the task's arguments */
    void (*task)(const void *j, int i0, int i1);
    const void *ctx;
    int tchunk;
    unsigned dmask; /* packed decode (one activation row): bit wt set = format wt's interleaved form (pool's dmask) */
} job_t;

typedef struct {
    pthread_mutex_t mu;
    pthread_mutex_t run_mu; /* one job at a time: held by the caller that posts and runs it (pool_try_run) */
    pthread_cond_t go;
    pthread_t *tid;
    int nworkers;
    _Atomic int stop, sleeping, done;
    _Atomic long gen;
    /* work claims: (gen << 32) | (chunks << 16) | next chunk; a claim succeeds only for the current job */
    _Atomic unsigned long long claim;
    job_t job;
    int chunk_rows;
    unsigned dmask; /* bit wt: format wt's packed decode tiles take the interleaved form (es_pool_decode_form) */
} pool_t;

typedef struct {
    pool_t *p;
    int ith;
} warg_t;

static inline void cpu_relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* Prefill cache blocking: a tile of weight rows (about ES_ROW_TILE_BYTES of stored weights, kept in L1/L2) is
 * run against each group of MAXNA activation rows in turn, so every activation group is read from cache once per
 * tile instead of once per weight row (m x n activation bytes per weight row otherwise stream from L2). */
#ifndef ES_ROW_TILE_BYTES
#define ES_ROW_TILE_BYTES 16384
#endif
#ifndef ES_PACK_TILE_BYTES
#define ES_PACK_TILE_BYTES 131072
#endif
#ifdef ES_PACKED
/* Rows [r0, r1) (r0 a multiple of 16) of a packed job: decode as tiles of 4 row groups, prefill as tiles of
 * ES_PACK_TILE_BYTES of row groups (in L2) against each group of MAXNA activation rows in turn. */
static void run_packed(const job_t *j, int r0, int r1) {
    int nb = j->n / 32, g0 = r0 / PK_ROWS, g1 = (r1 + PK_ROWS - 1) / PK_ROWS;
    long gb = pk_group_bytes(j->wt, j->n);
    pk_fn fn = pk_of(j->wt);
    act_t a[MAXNA];
    const int32_t *so[MAXNA];
    if (j->m == 1) {
        a[0] = (act_t){j->q, j->d, j->s, j->ds};
        so[0] = j->so;
        int g = g0;
        for (; g + 4 <= g1; g += 4)
            fn(j->w + g * gb, gb, nb, a, so, j->y + (long)g * PK_ROWS, j->rows, r1 - g * PK_ROWS,
               (j->dmask >> j->wt) & 1 ? 2 : 1, 1);
        for (; g < g1; g++)
            fn(j->w + g * gb, gb, nb, a, so, j->y + (long)g * PK_ROWS, j->rows, r1 - g * PK_ROWS, 0, 1);
        return;
    }
    int tile = (int)(ES_PACK_TILE_BYTES / gb);
    if (tile < 1) tile = 1;
#ifdef ES_AMX
    /* q8_0 / int8 on AMX (blockpack_amx.h): 16 activation rows a tile; the rows left over below */
    const int amx = (j->wt == W_Q8_0 || j->wt == W_INT8) && j->m >= 16 && amx_on();
    if (amx) amx_config();
#endif
    for (int t0 = g0; t0 < g1; t0 += tile) {
        int t1 = t0 + tile < g1 ? t0 + tile : g1;
        int i0 = 0;
#ifdef ES_AMX
        if (amx)
            for (; i0 + 16 <= j->m; i0 += 16)
                for (int g = t0; g < t1; g++)
                    amx_tile_q8(j->wt, j->w + g * gb, nb, j->q + (long)i0 * j->n, j->n, j->d + (long)i0 * nb,
                                j->so + (long)i0 * nb, j->y + (long)i0 * j->rows + (long)g * PK_ROWS, j->rows,
                                r1 - g * PK_ROWS);
#endif
        for (; i0 < j->m; i0 += MAXNA) {
            int na = j->m - i0 < MAXNA ? j->m - i0 : MAXNA;
            for (int i = 0; i < na; i++) {
                long ii = i0 + i;
                a[i] = (act_t){j->q + ii * j->n, j->d + ii * nb, j->s + ii * nb, j->ds + ii * nb};
                so[i] = j->so + ii * nb;
            }
            for (int g = t0; g < t1; g++)
                fn(j->w + g * gb, gb, nb, a, so, j->y + (long)i0 * j->rows + (long)g * PK_ROWS, j->rows,
                   r1 - g * PK_ROWS, 0, na);
        }
    }
#ifdef ES_AMX
    if (amx) _tile_release();
#endif
}
#endif
static void run_rows(const job_t *j, int r0, int r1) {
#ifdef ES_PACKED
    if (j->packed) {
        run_packed(j, r0, r1);
        return;
    }
#endif
    int nb = j->n / 32;
    act_t a[MAXNA];
    float o[MAXNA];
    int tile = j->m <= MAXNA ? 1 : (int)(ES_ROW_TILE_BYTES / (j->row_bytes > 0 ? j->row_bytes : 1));
    if (tile < 1) tile = 1;
    for (int t0 = r0; t0 < r1; t0 += tile) {
        int t1 = t0 + tile < r1 ? t0 + tile : r1;
        for (int i0 = 0; i0 < j->m; i0 += MAXNA) {
            int na = j->m - i0 < MAXNA ? j->m - i0 : MAXNA;
            for (int i = 0; i < na; i++) {
                long ii = i0 + i;
                a[i] = (act_t){j->q + ii * j->n, j->d + ii * nb, j->s + ii * nb, j->ds + ii * nb};
            }
            for (int r = t0; r < t1; r++) {
                const uint8_t *wr = j->w + (long)r * j->row_bytes, *sr = j->wsc ? j->wsc + (long)r * j->sc_bytes : 0;
                j->fn(wr, sr, j->n, a, na, o);
                for (int i = 0; i < na; i++) j->y[(long)(i0 + i) * j->rows + r] = o[i];
            }
        }
    }
}

/* Claim and run chunks of job `g` until none is left (any thread; a late or descheduled worker finds the job
 * done and claims nothing, so the others never wait for it). */
static void work_chunks(pool_t *p, const job_t *j, long g, int chunk_rows) {
    for (;;) {
        unsigned long long c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((long)(c >> 32) != (g & 0xFFFFFFFFL)) return;
        unsigned nch = (unsigned)(c >> 16) & 0xFFFF, idx = (unsigned)c & 0xFFFF;
        if (idx >= nch) return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue;
        if (j->task) {
            int i0 = (int)idx * j->tchunk, i1 = i0 + j->tchunk < j->rows ? i0 + j->tchunk : j->rows;
            j->task(j, i0, i1);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            continue;
        }
        if (j->nseg) { /* a fused job: the chunk's segment as a one-weight job */
            int k = j->nseg - 1;
            while (k > 0 && (int)idx < j->seg[k].ch0) k--;
            job_t js = *j;
            js.w = j->seg[k].w, js.y = j->seg[k].y, js.so = j->seg[k].so, js.rows = j->seg[k].rows;
            js.wt = j->seg[k].wt;
            int r0 = ((int)idx - j->seg[k].ch0) * j->seg[k].chunk;
            int r1 = r0 + j->seg[k].chunk < js.rows ? r0 + j->seg[k].chunk : js.rows;
            run_rows(&js, r0, r1);
            atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
            continue;
        }
        int r0 = (int)idx * chunk_rows, r1 = r0 + chunk_rows < j->rows ? r0 + chunk_rows : j->rows;
        run_rows(j, r0, r1);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    warg_t *wa = (warg_t *)arg;
    pool_t *p = wa->p;
    long seen = 0;
    for (;;) {
        long t0 = now_ns();
        int k = 0;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen && !atomic_load(&p->stop)) {
            cpu_relax();
            if (++k % 64 == 0 && now_ns() - t0 > ES_SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                atomic_fetch_add(&p->sleeping, 1);
                while (atomic_load(&p->gen) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->go, &p->mu);
                atomic_fetch_sub(&p->sleeping, 1);
                pthread_mutex_unlock(&p->mu);
            }
        }
        if (atomic_load(&p->stop)) break;
        seen = atomic_load_explicit(&p->gen, memory_order_acquire);
        job_t j = p->job; /* may be torn if the job is already over and the next one being posted: then no claim
                             for `seen` can succeed, so the copy is never used */
        int chunk_rows = p->chunk_rows;
        work_chunks(p, &j, seen, chunk_rows);
    }
    free(wa);
    return 0;
}

void *es_pool_new(int nthreads) {
    pool_t *p = (pool_t *)calloc(1, sizeof(pool_t));
    if (!p) return 0;
    pthread_mutex_init(&p->mu, 0);
    pthread_mutex_init(&p->run_mu, 0);
    pthread_cond_init(&p->go, 0);
    p->nworkers = nthreads > 1 ? nthreads - 1 : 0;
    p->tid = (pthread_t *)calloc(p->nworkers ? p->nworkers : 1, sizeof(pthread_t));
    for (int i = 0; i < p->nworkers; i++) {
        warg_t *wa = (warg_t *)malloc(sizeof(warg_t));
        wa->p = p;
        wa->ith = i + 1;
        pthread_create(&p->tid[i], 0, worker, wa);
    }
    return p;
}

/* The decode form of the pool's packed one-row products of format wt: 1 = one row-group stream a tile
 * (ES_PF_BYTES ahead; the default, faster on Zen 4), 4 = the call's four row groups interleaved in one tile
 * (ES_PF_BYTES_IL ahead; faster on an Intel Xeon core at one thread; AVX2 builds: two streams). Both give
 * bit-identical results; q3_k / q2_k and NEON have one form. form <= 0 only reads it; returns the form. Set it
 * between jobs (not while another thread runs one on this pool). */
int es_pool_decode_form(void *vp, int wt, int form) {
    pool_t *p = (pool_t *)vp;
    if (!p || wt < 0 || wt > 31) return 1;
    if (form == 1) p->dmask &= ~(1u << wt);
    else if (form == 4) p->dmask |= 1u << wt;
    return (p->dmask >> wt) & 1 ? 4 : 1;
}

void es_pool_free(void *vp) {
    pool_t *p = (pool_t *)vp;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nworkers; i++) pthread_join(p->tid[i], 0);
    pthread_mutex_destroy(&p->run_mu);
    free(p->tid);
    free(p);
}

/* Run job j split into chunks of about rows / (4 x nth) rows (>= 16, multiples of 4; packed: whole 16-row
 * groups) on the caller + workers.  The caller holds p->run_mu. */
static void pool_run(pool_t *p, const job_t *j) {
    int chunk = (j->rows + 4 * j->nth - 1) / (4 * j->nth);
    chunk = chunk < 16 ? 16 : (chunk + 3) & ~3;
    if (j->packed) { /* whole row groups (was: whole 64-row tiles, which split SmolLM2's 576 rows 384 / 192) */
        int groups = (j->rows + PK_ROWS - 1) / PK_ROWS;
        chunk = PK_ROWS * ((groups + 4 * j->nth - 1) / (4 * j->nth));
    }
    if (j->task) chunk = j->tchunk;
    int nch = (j->rows + chunk - 1) / chunk;
    while (nch > 0xFFFF) { chunk *= 2; nch = (j->rows + chunk - 1) / chunk; }
    long g = atomic_load(&p->gen) + 1;
    job_t jj = *j; /* the caller runs chunks of this copy, the workers of p->job (the same) */
    jj.tchunk = chunk;
    if (jj.nseg) { /* fused: each segment in whole row groups, about 4 x nth chunks over all of them */
        int groups = (jj.rows + PK_ROWS - 1) / PK_ROWS, per = (groups + 4 * jj.nth - 1) / (4 * jj.nth);
        nch = 0;
        for (int k = 0; k < jj.nseg; k++) {
            int gk = (jj.seg[k].rows + PK_ROWS - 1) / PK_ROWS, ck = per < gk ? per : gk;
            jj.seg[k].chunk = PK_ROWS * ck;
            jj.seg[k].ch0 = nch;
            nch += (gk + ck - 1) / ck;
        }
    }
    p->job = jj;
    p->chunk_rows = chunk;
    atomic_store(&p->done, 0);
    atomic_store_explicit(&p->claim, ((unsigned long long)(g & 0xFFFFFFFFL) << 32) | ((unsigned long long)nch << 16),
                          memory_order_release);
    atomic_store_explicit(&p->gen, g, memory_order_release);
    if (atomic_load(&p->sleeping)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
    }
    work_chunks(p, &jj, g, chunk);
    int k = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < nch) { /* chunks a worker is running now */
        cpu_relax();
        if (++k % 1024 == 0) sched_yield();
    }
}

/* All of job j on the calling thread (each segment of a fused job in turn). */
static void run_serial(const job_t *j) {
    if (j->task) {
        j->task(j, 0, j->rows);
        return;
    }
    if (!j->nseg) {
        run_rows(j, 0, j->rows);
        return;
    }
    for (int k = 0; k < j->nseg; k++) {
        job_t js = *j;
        js.nseg = 0, js.w = j->seg[k].w, js.y = j->seg[k].y, js.so = j->seg[k].so, js.rows = j->seg[k].rows;
        js.wt = j->seg[k].wt;
        run_rows(&js, 0, js.rows);
    }
}

/* Run job j on the pool, or all of it on the calling thread when another thread is running a job on this pool
 * right now (two Python threads on one BlockKernels: the pool holds one job at a time; never wait for it). */
static void pool_try_run(pool_t *p, const job_t *j) {
    if (pthread_mutex_trylock(&p->run_mu) != 0) {
        run_serial(j);
        return;
    }
    pool_run(p, j);
    pthread_mutex_unlock(&p->run_mu);
}

#ifdef ES_PACKED
/* -offset x code sum per activation block for a packed weight of type wt into so (q6_k / q3_k: of values 0-15
 * only; pk_tile_sb derives the other half's from s; q2_k: the half sum itself). */
static void packed_offsets(int wt, const int8_t *q, const int32_t *s, long nbm, int32_t *so) {
    int off = (wt == W_Q8_0 || wt == W_INT8) ? 128
              : wt == W_Q5_0 ? 16 : (wt == W_Q4_1 || wt == W_Q5_1 || wt == W_Q4_K || wt == W_Q5_K ? 0 : 8);
    /* q4_1 / q5_1 / q4_k / q5_k: a min term instead of an offset */
    if (wt == W_Q6_K || wt == W_Q3_K || wt == W_Q2_K) { /* u8 codes q6 = value + 32, q3 = value + 4 (blockpack.h);
                                                         * q2_k: no offset, so is the half code sum itself */
        const int o = wt == W_Q6_K ? 32 : (wt == W_Q3_K ? 4 : -1);
        for (long k = 0; k < nbm; k++) {
            int32_t h = 0;
            for (int t = 0; t < 16; t++) h += q[32 * k + t];
            so[k] = -o * h;
        }
        return;
    }
    for (long k = 0; k < nbm; k++) so[k] = -off * s[k];
}
#endif

/* Rounding m activation rows to Q8_0 blocks (and, for packed weights, the offsets of nso weight types) split over
 * the pool in row ranges: serial on one core it was ~15% of a 1-thread prefill GEMM and did not shrink with
 * threads.  Every row is rounded by quantize_act alone, so the result is the same for any split. */
typedef struct {
    const float *x;
    int n, nso;
    int8_t *q;
    float *d, *ds;
    int32_t *s;
    int sowt[ES_MAX_SEG];
    int32_t *so[ES_MAX_SEG];
} round_ctx_t;

static void round_task(const void *vj, int i0, int i1) {
    const round_ctx_t *c = (const round_ctx_t *)((const job_t *)vj)->ctx;
    int n = c->n, nb = n / 32;
    for (int i = i0; i < i1; i++) {
        long o = (long)i * nb;
        quantize_act(c->x + (long)i * n, n, c->q + (long)i * n, c->d + o, c->s + o, c->ds + o);
#ifdef ES_PACKED
        for (int k = 0; k < c->nso; k++) packed_offsets(c->sowt[k], c->q + (long)i * n, c->s + o, nb, c->so[k] + o);
#endif
    }
}

static void pool_try_run(pool_t *p, const job_t *j);

static void round_rows(pool_t *p, int nth, const round_ctx_t *c, int m) {
    job_t j;
    memset(&j, 0, sizeof j);
    j.task = round_task, j.ctx = c, j.rows = m, j.nth = nth;
    if (!p || nth <= 1 || m < 2 || (long)m * c->n < 32768) {
        round_task(&j, 0, m);
        return;
    }
    int per = (m + 4 * nth - 1) / (4 * nth);
    j.tchunk = per < 1 ? 1 : per;
    pool_try_run(p, &j);
}

/* Bytes of activation scratch es_linear needs for m rows of n values. */
long es_act_bytes(int n, int m) { return (long)m * (n + (n / 32) * 16); }

/* y[m, rows] = x[m, n] @ W^T.  w: row-major stored rows of row_bytes; wsc: per-row scales of sc_bytes (int8: f32,
 * int4: f16 per 32) or NULL; scratch: es_act_bytes(n, m) bytes, 8-byte aligned.  Returns 0, or -1 for an unknown
 * weight type or a width that is not a multiple of the block. */
int es_linear(void *vp, int wt, const uint8_t *w, long row_bytes, const uint8_t *wsc, long sc_bytes, int rows,
              int n, const float *x, int m, float *y, uint8_t *scratch, int nthreads) {
    pool_t *p = (pool_t *)vp;
    rowdot_fn fn = rowdot_of(wt);
    if (!fn || n % wt_values(wt) || rows <= 0 || m <= 0) return -1;
    int nb = n / 32;
    float *d = (float *)scratch;
    int32_t *s = (int32_t *)(scratch + (long)m * nb * 4);
    float *ds = (float *)(scratch + (long)m * nb * 8);
    int8_t *q = (int8_t *)(scratch + (long)m * nb * 16);
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    if (!p) nth = 1;
    round_ctx_t rc = {x, n, 0, q, d, ds, s, {0}, {0}};
    round_rows(p, nth, &rc, m);
    if ((long)rows * row_bytes * m < 32768 || rows < 8 * nth) nth = 1; /* too small to split */
    job_t j = {fn, w, wsc, row_bytes, sc_bytes, rows, n, m, nth, q, d, s, ds, y, wt, 0, 0, 0, {{0}}};
    if (nth == 1) {
        run_rows(&j, 0, rows);
        return 0;
    }
    pool_try_run(p, &j);
    return 0;
}


/* es_linear for a weight packed by es_pack (blockpack.h): y[m, rows] = x[m, n] @ W^T.  Returns 0, or -1 when
 * this build has no packed kernel for wt (es_pack_kind) or the shape does not fit. */
int es_linear_packed(void *vp, int wt, const uint8_t *packed, int rows, int n, const float *x, int m, float *y,
                     uint8_t *scratch, int nthreads) {
#ifdef ES_PACKED
    pool_t *p = (pool_t *)vp;
    if (!es_pack_kind(wt) || n % wt_values(wt) || rows <= 0 || m <= 0) return -1;
    int nb = n / 32;
    float *d = (float *)scratch;
    int32_t *s = (int32_t *)(scratch + (long)m * nb * 4);
    float *ds = (float *)(scratch + (long)m * nb * 8);
    int32_t *so = (int32_t *)(scratch + (long)m * nb * 12);
    int8_t *q = (int8_t *)(scratch + (long)m * nb * 16);
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    if (!p) nth = 1;
    round_ctx_t rc = {x, n, 1, q, d, ds, s, {wt}, {so}};
    round_rows(p, nth, &rc, m);
    long wbytes = es_packed_bytes(wt, rows, n);
    if (wbytes * m < 32768) nth = 1; /* too small to split */
    else if (rows < 32 * nth) nth = rows / 32 > 1 ? rows / 32 : 1; /* >= 2 row groups a thread (was: nth = 1, which
                                                                       ran 896-row matrices on one of 16 threads) */
    job_t j = {0, packed, 0, 0, 0, rows, n, m, nth, q, d, s, ds, y, wt, 1, so, 0, {{0}}};
    j.dmask = p ? p->dmask : 0;
    if (nth == 1) {
        run_rows(&j, 0, rows);
        return 0;
    }
    pool_try_run(p, &j);
    return 0;
#else
    (void)vp; (void)wt; (void)packed; (void)rows; (void)n; (void)x; (void)m; (void)y; (void)scratch; (void)nthreads;
    return -1;
#endif
}

/* Bytes of scratch es_linear_packed_multi needs for `count` weights and m rows of n values. */
long es_multi_act_bytes(int n, int m, int count) { return es_act_bytes(n, m) + (long)count * m * (n / 32) * 4; }

/* Several packed weights of one input in one pool dispatch (q / k / v, gate / up): y_k[m, rows_k] = x[m, n] @
 * W_k^T for k < count (<= ES_MAX_SEG), x rounded to Q8_0 blocks once.  Each weight's result is exactly what
 * es_linear_packed gives for it alone (same activation blocks, same tiles).  scratch: es_multi_act_bytes.
 * Returns 0, or -1 when some weight has no packed kernel here or the shapes do not fit (nothing computed). */
int es_linear_packed_multi(void *vp, int count, const int *wt, const uint8_t *const *packed, const int *rows, int n,
                           const float *x, int m, float *const *y, uint8_t *scratch, int nthreads) {
#ifdef ES_PACKED
    pool_t *p = (pool_t *)vp;
    if (count < 1 || count > ES_MAX_SEG || m <= 0) return -1;
    long total = 0, wbytes = 0;
    for (int k = 0; k < count; k++) {
        if (!es_pack_kind(wt[k]) || n % wt_values(wt[k]) || rows[k] <= 0) return -1;
        total += rows[k];
        wbytes += es_packed_bytes(wt[k], rows[k], n);
    }
    int nb = n / 32;
    float *d = (float *)scratch;
    int32_t *s = (int32_t *)(scratch + (long)m * nb * 4);
    float *ds = (float *)(scratch + (long)m * nb * 8);
    int8_t *q = (int8_t *)(scratch + (long)m * nb * 16);
    int32_t *so0 = (int32_t *)(scratch + es_act_bytes(n, m));
    job_t j = {0, 0, 0, 0, 0, (int)total, n, m, 1, q, d, s, ds, 0, 0, 1, 0, count, {{0}}, 0, 0, 0, p ? p->dmask : 0};
    round_ctx_t rc = {x, n, 0, q, d, ds, s, {0}, {0}};
    for (int k = 0; k < count; k++) {
        int32_t *so = so0 + (long)k * m * nb;
        int same = -1;
        for (int e = 0; e < k; e++)
            if (wt[e] == wt[k]) same = e;
        if (same >= 0) so = (int32_t *)j.seg[same].so; /* one offset array per weight type */
        else rc.sowt[rc.nso] = wt[k], rc.so[rc.nso++] = so;
        j.seg[k].w = packed[k], j.seg[k].y = y[k], j.seg[k].so = so, j.seg[k].rows = rows[k], j.seg[k].wt = wt[k];
    }
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    if (!p) nth = 1;
    round_rows(p, nth, &rc, m);
    if (!p || wbytes * m < 32768) nth = 1;
    else if (total < 32 * nth) nth = (int)(total / 32) > 1 ? (int)(total / 32) : 1;
    j.nth = nth;
    if (nth == 1) {
        run_serial(&j);
        return 0;
    }
    pool_try_run(p, &j);
    return 0;
#else
    (void)vp; (void)count; (void)wt; (void)packed; (void)rows; (void)n; (void)x; (void)m; (void)y; (void)scratch;
    (void)nthreads;
    return -1;
#endif
}

/* exp(z) for z clamped to [-80, 87]: a branch-free Cephes-style polynomial the compiler vectorises (range reduction
 * by ln 2 through the 1.5 x 2^23 rounding trick, degree-6 polynomial, 2^n by integer arithmetic; within 2 ulp);
 * the SiLU x up and the attention softmax use it (glibc's scalar expf / tanhf ran 5-30 ns a value). */
static inline float es_exp_clamped(float z) {
    z = z > 87.f ? 87.f : z;
    z = z < -80.f ? -80.f : z;
    float t = z * 1.44269504088896341f + 12582912.f; /* 1.5 x 2^23: t's low mantissa bits hold round(z / ln 2) */
    float n = t - 12582912.f;
    int32_t ti, ei;
    memcpy(&ti, &t, 4);
    float r = z - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.f;
    ei = (ti - 0x4B400000 + 127) << 23; /* 2^n, n in [-115, 126] */
    float sc;
    memcpy(&sc, &ei, 4);
    return p * sc;
}

/* ---- prefill attention (causal GQA, float32), threaded ------------------------------------------------------
 * One work item = (query row t, KV head hk): its G = nh / nkv query heads against keys lo..hi-1 (hi = past + t + 1
 * capped at S, lo = hi - window when a sliding window is set), K row read once for all G heads; scores, softmax
 * (row max subtracted, expf, normalised) and the weighted V sum per head, like kernels/attention.py's numpy
 * reference (float32; only the summation order of the dot products differs).  Items are claimed in small chunks,
 * so the causal triangle's uneven rows balance over the threads.  TVM's CPU prefill kernel ran on one thread. */
typedef struct {
    const float *q, *K, *V;
    float *o;
    long sk, sv; /* K / V head strides in floats (rows are D floats apart) */
    int nh, nkv, D, S, past, window;
    float scale;
    _Atomic int failed; /* a worker could not allocate its score buffer */
} attn_ctx_t;

#if defined(__AVX2__) && defined(__FMA__)
/* out[j][d] = sum over k of p[j][k] V[k][d] for the G heads of one KV head, D in chunks of 8 W floats: the chunk's
 * G x W accumulators stay in registers over all L keys and each V row chunk is loaded once for the G heads (was: one
 * head at a time, the output row re-read and re-stored per key).  Per element the same FMAs in the same key order. */
AI void attn_pv(const float *p, int L, const float *V, int D, int G, float *out, const int W) {
    for (int d0 = 0; d0 < D; d0 += 8 * W) {
        __m256 acc[12][2];
        for (int j = 0; j < G; j++)
            for (int w = 0; w < W; w++) acc[j][w] = _mm256_setzero_ps();
        for (int k = 0; k < L; k++) {
            const float *vr = V + (long)k * D + d0;
            __m256 v[2];
            for (int w = 0; w < W; w++) v[w] = _mm256_loadu_ps(vr + 8 * w);
            for (int j = 0; j < G; j++) {
                __m256 pj = _mm256_broadcast_ss(p + (long)j * L + k);
                for (int w = 0; w < W; w++) acc[j][w] = _mm256_fmadd_ps(pj, v[w], acc[j][w]);
            }
        }
        for (int j = 0; j < G; j++)
            for (int w = 0; w < W; w++) _mm256_storeu_ps(out + (long)j * D + d0 + 8 * w, acc[j][w]);
    }
}
#endif

#if defined(__AVX512F__)
/* attn_pv with 16-float registers (32 of them: up to 12 heads x 2 or 24 x 1) */
AI void attn_pv512(const float *p, int L, const float *V, int D, int G, float *out, const int W) {
    for (int d0 = 0; d0 < D; d0 += 16 * W) {
        __m512 acc[24][2];
        for (int j = 0; j < G; j++)
            for (int w = 0; w < W; w++) acc[j][w] = _mm512_setzero_ps();
        for (int k = 0; k < L; k++) {
            const float *vr = V + (long)k * D + d0;
            __m512 v[2];
            for (int w = 0; w < W; w++) v[w] = _mm512_loadu_ps(vr + 16 * w);
            for (int j = 0; j < G; j++) {
                __m512 pj = _mm512_set1_ps(p[(long)j * L + k]);
                for (int w = 0; w < W; w++) acc[j][w] = _mm512_fmadd_ps(pj, v[w], acc[j][w]);
            }
        }
        for (int j = 0; j < G; j++)
            for (int w = 0; w < W; w++) _mm512_storeu_ps(out + (long)j * D + d0 + 16 * w, acc[j][w]);
    }
}
#endif

static void attn_task(const void *vj, int i0, int i1) {
    attn_ctx_t *c = (attn_ctx_t *)((const job_t *)vj)->ctx;
    int G = c->nh / c->nkv, D = c->D;
    float *sc = (float *)malloc(sizeof(float) * (size_t)G * (size_t)(c->S > 0 ? c->S : 1));
    if (!sc) {
        atomic_store(&c->failed, 1);
        return;
    }
    for (int it = i0; it < i1; it++) {
        int t = it / c->nkv, hk = it % c->nkv, h0 = hk * G;
        int hi = c->past + t + 1 < c->S ? c->past + t + 1 : c->S;
        int lo = c->window > 0 && hi - c->window > 0 ? hi - c->window : 0;
        int L = hi - lo;
        const float *qt = c->q + ((long)t * c->nh + h0) * D;
        const float *Kh = c->K + hk * c->sk, *Vh = c->V + hk * c->sv;
        int k = lo;
#if defined(__AVX512F__)
        if (D % 16 == 0) /* as the AVX2 loop below with 16-float loads, each accumulator folded to 8 lanes first */
            for (; k + 8 <= hi; k += 8)
                for (int j = 0; j < G; j++) {
                    const float *qj = qt + (long)j * D, *kr = Kh + (long)k * D;
                    __m512 z[8];
                    for (int e = 0; e < 8; e++) z[e] = _mm512_setzero_ps();
                    for (int d = 0; d < D; d += 16) {
                        __m512 qv = _mm512_loadu_ps(qj + d);
                        for (int e = 0; e < 8; e++) z[e] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kr + (long)e * D + d), z[e]);
                    }
                    __m256 a[8];
                    for (int e = 0; e < 8; e++)
                        a[e] = _mm256_add_ps(_mm512_castps512_ps256(z[e]),
                                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z[e]), 1)));
                    __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
                    __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
                    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
                    __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                             _mm256_permute2f128_ps(h0123, h4567, 0x31));
                    _mm256_storeu_ps(sc + (long)j * L + (k - lo), _mm256_mul_ps(r, _mm256_set1_ps(c->scale)));
                }
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if (D % 8 == 0) /* 8 keys at a time per head: 8 accumulators, one transposing reduction per 8 scores */
            for (; k + 8 <= hi; k += 8)
                for (int j = 0; j < G; j++) {
                    const float *qj = qt + (long)j * D, *kr = Kh + (long)k * D;
                    __m256 a[8];
                    for (int e = 0; e < 8; e++) a[e] = _mm256_setzero_ps();
                    for (int d = 0; d < D; d += 8) {
                        __m256 qv = _mm256_loadu_ps(qj + d);
                        for (int e = 0; e < 8; e++) a[e] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kr + (long)e * D + d), a[e]);
                    }
                    __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
                    __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
                    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
                    __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                             _mm256_permute2f128_ps(h0123, h4567, 0x31));
                    _mm256_storeu_ps(sc + (long)j * L + (k - lo), _mm256_mul_ps(r, _mm256_set1_ps(c->scale)));
                }
#endif
        for (; k < hi; k++) {
            const float *kr = Kh + (long)k * D;
            for (int j = 0; j < G; j++) {
                const float *qj = qt + (long)j * D;
                float a8[8] = {0, 0, 0, 0, 0, 0, 0, 0}, tail = 0.f;
                int d = 0;
                for (; d + 8 <= D; d += 8)
                    for (int l = 0; l < 8; l++) a8[l] += qj[d + l] * kr[d + l];
                for (; d < D; d++) tail += qj[d] * kr[d];
                float dot = ((a8[0] + a8[4]) + (a8[1] + a8[5])) + ((a8[2] + a8[6]) + (a8[3] + a8[7])) + tail;
                sc[(long)j * L + (k - lo)] = dot * c->scale;
            }
        }
        for (int j = 0; j < G; j++) { /* softmax: row max, the vectorised exp, 8 partial sums, normalised */
            float *sj = sc + (long)j * L, mx = -INFINITY, s8[8] = {0, 0, 0, 0, 0, 0, 0, 0}, m8[8];
            int k = 0;
            for (int l = 0; l < 8; l++) m8[l] = -INFINITY;
            for (; k + 8 <= L; k += 8) /* 8 running maxima (exact in any order), one max chain per 8 scores */
                for (int l = 0; l < 8; l++) m8[l] = sj[k + l] > m8[l] ? sj[k + l] : m8[l];
            for (int l = 0; l < 8; l++) mx = m8[l] > mx ? m8[l] : mx;
            for (; k < L; k++) mx = sj[k] > mx ? sj[k] : mx;
            for (int k = 0; k < L; k++) sj[k] = es_exp_clamped(sj[k] - mx);
            k = 0;
            for (; k + 8 <= L; k += 8)
                for (int l = 0; l < 8; l++) s8[l] += sj[k + l];
            float sum = ((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7]));
            for (; k < L; k++) sum += sj[k];
            float inv = 1.f / sum;
            for (int k = 0; k < L; k++) sj[k] *= inv;
        }
        float *ob = c->o + ((long)t * c->nh + h0) * D;
#if defined(__AVX512F__)
        if (D % 32 == 0 && G <= 12) attn_pv512(sc, L, Vh + (long)lo * D, D, G, ob, 2);
        else if (D % 16 == 0 && G <= 24) attn_pv512(sc, L, Vh + (long)lo * D, D, G, ob, 1);
        else
#endif
#if defined(__AVX2__) && defined(__FMA__)
        if (D % 16 == 0 && G <= 6) attn_pv(sc, L, Vh + (long)lo * D, D, G, ob, 2);
        else if (D % 8 == 0 && G <= 12) attn_pv(sc, L, Vh + (long)lo * D, D, G, ob, 1);
        else
#endif
        for (int j = 0; j < G; j++) {
            const float *sj = sc + (long)j * L;
            float *out = ob + (long)j * D;
            for (int d = 0; d < D; d++) out[d] = 0.f;
            for (int k = 0; k < L; k++) {
                const float *vr = Vh + (long)(lo + k) * D;
                float pk = sj[k];
                for (int d = 0; d < D; d++) out[d] += pk * vr[d];
            }
        }
    }
    free(sc);
}

/* o[T, nh, D] = causal GQA of q[T, nh, D] (query row t at key index past + t) over K / V [nkv, S, D] (head stride
 * sk / sv floats, rows contiguous), scores times scale, keys within `window` of the query when window > 0.
 * Returns 0, -1 for shapes that do not fit (nh not a multiple of nkv, a query that sees no key), -2 when out of
 * memory for the score rows (the caller falls back). */
int es_attention_prefill(void *vp, const float *q, const float *K, long sk, const float *V, long sv, float *o, int T,
                         int nh, int nkv, int D, int S, float scale, int past, int window, int nthreads) {
    pool_t *p = (pool_t *)vp;
    if (T <= 0 || nkv <= 0 || nh % nkv || D <= 0 || S <= 0 || past < 0 || past + 1 > S) return -1;
    if (window > 0 && past + T - window >= S) return -1;
    attn_ctx_t c = {q, K, V, o, sk, sv, nh, nkv, D, S, past, window, scale, 0};
    job_t j;
    memset(&j, 0, sizeof j);
    j.task = attn_task, j.ctx = &c, j.rows = T * nkv;
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    j.nth = nth;
    if (!p || nth == 1 || T * nkv < 2) {
        attn_task(&j, 0, j.rows);
        return atomic_load(&c.failed) ? -2 : 0;
    }
    int per = j.rows / (16 * nth);
    j.tchunk = per < 1 ? 1 : per;
    pool_try_run(p, &j);
    return atomic_load(&c.failed) ? -2 : 0;
}

/* x[T, heads, D] rotated in place with tables cos / sin [T, D] like kernels/rope.py apply_rope (x * cos +
 * rotate_half(x) * sin: two products, then the add), split over the pool in rows of one head. */
typedef struct { float *x; const float *cos, *sin; int heads, D; } rope_ctx_t;

#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off"))) /* numpy's order: no product-add fused into an FMA */
#endif
static void rope_task(const void *vj, int i0, int i1) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const rope_ctx_t *c = (const rope_ctx_t *)((const job_t *)vj)->ctx;
    int D = c->D, half = D / 2;
    float tmp[1024];
    for (int r = i0; r < i1; r++) {
        float *xh = c->x + (long)r * D;
        const float *cs = c->cos + (long)(r / c->heads) * D, *sn = c->sin + (long)(r / c->heads) * D;
        for (int j = 0; j < D; j++) tmp[j] = xh[j];
        for (int j = 0; j < half; j++) {
            float a = tmp[j] * cs[j], b = -tmp[j + half] * sn[j];
            xh[j] = a + b;
        }
        for (int j = half; j < D; j++) {
            float a = tmp[j] * cs[j], b = tmp[j - half] * sn[j];
            xh[j] = a + b;
        }
    }
}

/* Returns 0, or -1 for a head size the row buffer cannot hold (odd or > 1024: the caller uses numpy). */
int es_rope(void *vp, float *x, const float *cos, const float *sin, int T, int heads, int D, int nthreads) {
    pool_t *p = (pool_t *)vp;
    if (D <= 0 || D > 1024 || D % 2 || T <= 0 || heads <= 0) return -1;
    rope_ctx_t c = {x, cos, sin, heads, D};
    job_t j;
    memset(&j, 0, sizeof j);
    j.task = rope_task, j.ctx = &c, j.rows = T * heads, j.tchunk = 1;
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    j.nth = nth;
    if (!p || nth == 1 || j.rows < 64) {
        rope_task(&j, 0, j.rows);
        return 0;
    }
    j.tchunk = j.rows / (4 * nth) > 1 ? j.rows / (4 * nth) : 1;
    pool_try_run(p, &j);
    return 0;
}

/* out[i] = silu(g[i]) x u[i] for i < count, silu(x) = x / (1 + exp(-x)), split over the pool in ranges of 4096
 * values.  exp is a branch-free Cephes-style polynomial (range reduction by ln 2, degree-6 polynomial, the exponent
 * put in by integer arithmetic; argument clamped to [-80, 87] so nothing overflows or goes subnormal; silu(x) = 0
 * below x = -87, where x e^x < 1e-36) that the compiler
 * vectorises for the target (AVX2 / AVX-512 / NEON): glibc's scalar tanhf / expf ran 15 ns a value here and ~30 on
 * the GPU machine's host, 20-40x numpy's vectorised tanh.  Within 2 ulp of exp; relative error of silu ~3e-7,
 * more accurate than the numpy reference x (0.5 (1 + tanh(x / 2))) (whose 1 + tanh loses digits for x < -8). */
typedef struct { const float *g, *u; float *out; } silu_ctx_t;

static void silu_task(const void *vj, int i0, int i1) {
    const silu_ctx_t *c = (const silu_ctx_t *)((const job_t *)vj)->ctx;
    long a = (long)i0 * 4096, b = (long)i1 * 4096, n = ((const job_t *)vj)->m;
    if (b > n) b = n;
    const float *restrict u = c->u;
    if (c->out == c->g) { /* in place (the caller's fresh gate output): no new pages to fault in */
        float *restrict io = c->out;
        for (long i = a; i < b; i++) {
            float x = io[i], y = x / (1.f + es_exp_clamped(-x)) * u[i];
            io[i] = x < -87.f ? 0.f : y;
        }
        return;
    }
    const float *restrict g = c->g;
    float *restrict out = c->out;
    for (long i = a; i < b; i++) {
        float x = g[i], y = x / (1.f + es_exp_clamped(-x)) * u[i];
        out[i] = x < -87.f ? 0.f : y;
    }
}

/* 1: this library's es_silu_mul is the vectorised polynomial (libraries before 2026-12-07: scalar tanhf, slower
 * than numpy below 4 threads, so the Python side keeps numpy there) */
int es_silu_poly(void) { return 1; }

void es_silu_mul(void *vp, const float *g, const float *u, float *out, long count, int nthreads) {
    pool_t *p = (pool_t *)vp;
    silu_ctx_t c = {g, u, out};
    job_t j;
    memset(&j, 0, sizeof j);
    j.task = silu_task, j.ctx = &c, j.m = (int)count, j.rows = (int)((count + 4095) / 4096), j.tchunk = 1;
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    j.nth = nth;
    if (!p || nth == 1 || j.rows < 2) {
        silu_task(&j, 0, j.rows);
        return;
    }
    j.tchunk = j.rows / (4 * nth) > 1 ? j.rows / (4 * nth) : 1;
    pool_try_run(p, &j);
}

/* The instruction set the kernels of this build run on, and "+x16" when it has x16 packed kernels (blockpack.h;
 * which formats: es_pack_kind): "avx512-vnni+x16" (zmm vpdpbusd), "avx2+avx-vnni+x16" (ymm vpdpbusd),
 * "avx2+x16" (vpmaddubsw; also AVX-512 builds without VNNI, which run the AVX2 kernels), "avx2" (no FMA/F16C),
 * "neon-dotprod+x16", "neon", "c"; "avx512-vnni+amx+x16" where an AMX build's self-check passed (es_amx). */
const char *es_isa(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) /* blockpack.h's zmm kernel */
#ifdef ES_AMX
    if (amx_on()) return "avx512-vnni+amx+x16"; /* q8_0 / int8 prefill tiles on AMX (blockpack_amx.h) */
#endif
    return "avx512-vnni+x16";
#elif defined(ES_PACKED) && defined(PK2_VNNI) /* blockpack_avx2.h */
    return "avx2+avx-vnni+x16";
#elif defined(ES_PACKED) && defined(__AVX2__)
    return "avx2+x16";
#elif defined(ES_PACKED) && defined(__aarch64__) /* blockpack_neon.h */
    return "neon-dotprod+x16";
#else
    return ES_ISA;
#endif
}

/* 1 when this build runs the q8_0 / int8 prefill on AMX tiles here (an AMX build, an AMX CPU, the kernel's
 * permission, the self-check passed, no EDGESPOOL_AMX=0), else 0. */
int es_amx(void) {
#ifdef ES_AMX
    return amx_on();
#else
    return 0;
#endif
}

#include "decoder_layer.h" /* es_decoder_layer: one decode row through a whole decoder layer */
