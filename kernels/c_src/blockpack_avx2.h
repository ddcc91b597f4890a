/* edgespool x16 packed-weight micro-kernel for AVX2 (+FMA, F16C) builds without AVX-512, included by blockpack.h.
 *
 * Same x16 layout as the AVX-512 kernel (blockpack.h); a 64-byte chunk is two 32-byte ymm halves (rows 0-7 and
 * 8-15 of the group).  With AVX-VNNI (-mavxvnni) the block dots are `vpdpbusd` ymm on the stored u8 codes exactly
 * as the AVX-512 kernel does; without it, q4_0 / int4 nibbles (0..15) go through `vpmaddubsw` (no saturation:
 * 2 x 15 x 127 < 2^15) + `vpmaddwd`, and q8_0 / int8 codes are turned back into signed bytes (u8 ^ 0x80) and use
 * llama.cpp's sign trick (`vpmaddubsw(|w|, sign(x, w))`, at most 2 x 128 x 127 < 2^15), their int32 accumulator
 * starting at 0 instead of -128 x code sum.  Either way every block's int32 dot is exact and the float steps
 * (cvt, scale product, FMA, block order) are the AVX-512 kernel's per lane: the results are bit-identical to it.
 * Tiles: decode 2 row groups (4 halves) per call (a 4-group call runs two), prefill 1 row group x up to 4
 * activation rows (8 activation rows run as two tiles): 4 / 8 int32 and float accumulators fit the 16 ymm. */

#define ES_PACKED 1
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define PK2_VNNI 1
#endif
static inline __m256i pk2_bcast(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}
#ifdef PK2_VNNI
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define PK2_DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#else
#define PK2_DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#endif
#else
/* acc += per-int32-lane dot of 4 u8 (u) x 4 s8 (s); exact for |u * s| pair sums < 2^15 */
static inline __m256i pk2_dpbusd(__m256i acc, __m256i u, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
#define PK2_DPBUSD(acc, u, s) pk2_dpbusd((acc), (u), (s))
#endif

/* G row groups (at gp, gp + gb) x NA activation rows, out[i * ystride + 16 g + r] for the first `valid` rows. */
AI void pk2_tile(const int wt, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                 float *out, long ystride, int valid, const int G, const int NA) {
    const int q4 = wt == W_Q4_0 || wt == W_INT4, i8 = wt == W_INT8;
    const long bb = q4 ? 288 : (i8 ? 512 : 544);
    const long co = i8 ? 0 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
#ifndef PK2_VNNI
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
#endif
    __m256 y[4][4];
    for (int h = 0; h < 2 * G; h++)
        for (int i = 0; i < NA; i++) y[h][i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i acc[4][4];
        __m256 vs[4];
        for (int h = 0; h < 2 * G; h++) {
            const uint8_t *blk = base + (h >> 1) * gb + b * bb;
            vs[h] = i8 ? _mm256_setzero_ps() : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16 * (h & 1))));
            for (int i = 0; i < NA; i++)
#ifdef PK2_VNNI
                acc[h][i] = _mm256_set1_epi32(so[i][b]);
#else
                acc[h][i] = q4 ? _mm256_set1_epi32(so[i][b]) : _mm256_setzero_si256();
#endif
        }
        if (q4) {
            for (int c = 0; c < 4; c++)
                for (int h = 0; h < 2 * G; h++) {
                    __m256i v = _mm256_loadu_si256(
                        (const __m256i *)(base + (h >> 1) * gb + b * bb + co + 64 * c + 32 * (h & 1)));
                    __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    for (int i = 0; i < NA; i++) {
                        const int8_t *xq = a[i].q + 32 * b + 4 * c;
                        acc[h][i] = PK2_DPBUSD(acc[h][i], lo, pk2_bcast(xq));
                        acc[h][i] = PK2_DPBUSD(acc[h][i], hi, pk2_bcast(xq + 16));
                    }
                }
        } else {
            for (int c = 0; c < 8; c++)
                for (int h = 0; h < 2 * G; h++) {
                    __m256i v = _mm256_loadu_si256(
                        (const __m256i *)(base + (h >> 1) * gb + b * bb + co + 64 * c + 32 * (h & 1)));
#ifdef PK2_VNNI
                    for (int i = 0; i < NA; i++)
                        acc[h][i] = PK2_DPBUSD(acc[h][i], v, pk2_bcast(a[i].q + 32 * b + 4 * c));
#else
                    __m256i ws = _mm256_xor_si256(v, x80), wa = _mm256_abs_epi8(ws);
                    for (int i = 0; i < NA; i++)
                        acc[h][i] = PK2_DPBUSD(acc[h][i], wa, _mm256_sign_epi8(pk2_bcast(a[i].q + 32 * b + 4 * c), ws));
#endif
                }
        }
        for (int h = 0; h < 2 * G; h++)
            for (int i = 0; i < NA; i++) {
                __m256 t = _mm256_cvtepi32_ps(acc[h][i]), da = _mm256_set1_ps(a[i].d[b]);
                y[h][i] = i8 ? _mm256_fmadd_ps(t, da, y[h][i]) : _mm256_fmadd_ps(t, _mm256_mul_ps(vs[h], da), y[h][i]);
            }
    }
    for (int h = 0; h < 2 * G; h++) {
        int nv = valid - 8 * h;
        if (nv <= 0) break;
        __m256 rs = i8 ? _mm256_loadu_ps((const float *)(gp + (h >> 1) * gb) + 8 * (h & 1)) : _mm256_setzero_ps();
        for (int i = 0; i < NA; i++) {
            __m256 v = i8 ? _mm256_mul_ps(y[h][i], rs) : y[h][i];
            float *o = out + (long)i * ystride + 8 * h;
            if (nv >= 8) _mm256_storeu_ps(o, v);
            else {
                float tmp[8];
                _mm256_storeu_ps(tmp, v);
                for (int r = 0; r < nv; r++) o[r] = tmp[r];
            }
        }
    }
}
#define PK2_NA(WT, P, O, V, NA) pk2_tile(WT, gp, gb, nb, (P), (O), out + (long)(P - a) * ys, ys, V, 1, NA)
#define PK2_FN(NAME, WT) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4) { \
            pk2_tile(WT, gp, gb, nb, a, so, out, ys, valid, 2, 1); \
            if (valid > 32) pk2_tile(WT, gp + 2 * gb, gb, nb, a, so, out + 32, ys, valid - 32, 2, 1); \
            return; \
        } \
        for (int i0 = 0; i0 < na; i0 += 4) { \
            const act_t *p = a + i0; \
            const int32_t *const *o = so + i0; \
            switch (na - i0 < 4 ? na - i0 : 4) { \
            case 1: PK2_NA(WT, p, o, valid, 1); break; \
            case 2: PK2_NA(WT, p, o, valid, 2); break; \
            case 3: PK2_NA(WT, p, o, valid, 3); break; \
            default: PK2_NA(WT, p, o, valid, 4); break; \
            } \
        } \
    }
PK2_FN(pk_q8_0, W_Q8_0)
PK2_FN(pk_int8, W_INT8)
PK2_FN(pk_q4_0, W_Q4_0)
PK2_FN(pk_int4, W_INT4)
typedef void (*pk_fn)(const uint8_t *, long, int, const act_t *, const int32_t *const *, float *, long, int, int, int);
static pk_fn pk_of(int wt) {
    switch (wt) {
    case W_Q8_0: return pk_q8_0;
    case W_INT8: return pk_int8;
    case W_Q4_0: return pk_q4_0;
    case W_INT4: return pk_int4;
    default: return 0;
    }
}
