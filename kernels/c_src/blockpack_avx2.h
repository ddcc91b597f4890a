/* edgespool x16 packed-weight micro-kernel for AVX2 (+FMA, F16C) builds without AVX-512, included by blockpack.h.
 *
 * Same x16 layout as the AVX-512 kernel (blockpack.h, q6_k's compact one included); a 64-byte chunk is two 32-byte ymm halves (rows 0-7 and
 * 8-15 of the group).  With AVX-VNNI (-mavxvnni) the block dots are `vpdpbusd` ymm on the stored u8 codes exactly
 * as the AVX-512 kernel does; without it, q4_0 / int4 nibbles (0..15) go through `vpmaddubsw` (no saturation:
 * 2 x 15 x 127 < 2^15) + `vpmaddwd`, and q8_0 / int8 codes are turned back into signed bytes (u8 ^ 0x80) and use
 * llama.cpp's sign trick (`vpmaddubsw(|w|, sign(x, w))`, at most 2 x 128 x 127 < 2^15), their int32 accumulator
 * starting at 0 instead of -128 x code sum.  Either way every block's int32 dot is exact and the float steps
 * (cvt, scale product, FMA, block order) are the AVX-512 kernel's per lane: the results are bit-identical to it.
 * Tiles: decode 1 row group (2 halves) per call, 4 in turn (one stream, ES_PK2_DG), prefill 1 row group x up to 4
 * activation rows (8 activation rows run as two tiles): 4 / 8 int32 and float accumulators fit the 16 ymm. */

#define ES_PACKED 1
#ifndef ES_PF_Q8_AVX2
/* the q8_0 / int8 decode tiles prefetch too (0: off, the A/B switch). Unlike the AVX-512 build (36 GB/s a core
 * without it), the AVX2 sign-trick tile read one core's stream at 17.3 GB/s, 24.2 with the 2 KiB prefetch (0.5B
 * shapes, `block_kernel_scaling.py --packed --march=-march=x86-64-v3` on the 2-core Zen 4 VM; 2 threads 32.9 ->
 * 36.8; 1 KiB 21.4, 4 KiB 24.6 / 31.5) */
#define ES_PF_Q8_AVX2 1
#endif
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

/* G row groups (at gp, gp + gb) x NA activation rows, out[i * ystride + 16 g + r] for the first `valid` rows.
 * q4_1 / q4_k add the min term (vm x activation d x code sum) per block, q5_0 ORs its fifth bits (16) into the
 * nibbles from the plane, q4_k reads its per-sub-block 6-bit scales / mins: the AVX-512 kernel's steps per lane. */
AI void pk2_tile(const int wt, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                 float *out, long ystride, int valid, const int G, const int NA) {
    const int k5 = wt == W_Q5_K, qk = wt == W_Q4_K || k5, q51 = wt == W_Q5_1, q41 = wt == W_Q4_1 || qk || q51;
    const int q5 = wt == W_Q5_0 || q51 || k5, q4 = wt == W_Q4_0 || wt == W_INT4 || q41 || q5, i8 = wt == W_INT8;
    /* q4_k / q5_k: super-block bytes, sub-block bytes, codes in a sub-block (after scales, mins, q5_k's plane) */
    const long sbb = k5 ? PK_Q5K_SB : 2368, sub = k5 ? 352 : 288, kco = k5 ? 96 : 32;
    const long bb = q51 ? 384 : (q5 ? 352 : (q41 ? 320 : (q4 ? 288 : (i8 ? 512 : 544))));
    /* codes after the scales (q4_1's mins, q5_0's plane, q5_1's both); the plane after the scales */
    const long co = i8 ? 0 : (q51 ? 128 : (q41 || q5 ? 64 + 32 * q5 : 32)), po = q51 ? 64 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    const __m256i m4 = _mm256_set1_epi8(0x0F), b16 = _mm256_set1_epi8(0x10);
#ifndef PK2_VNNI
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
#endif
    __m256 y[4][4];
    for (int h = 0; h < 2 * G; h++)
        for (int i = 0; i < NA; i++) y[h][i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i acc[4][4], hp[4];
        if (NA == 1 && (q4 || ES_PF_Q8_AVX2))
            for (int g = 0; g < G; g++)
                pk_prefetch(qk ? base + g * gb + sbb * (b / 8) + 64 + sub * (b % 8) : base + g * gb + b * bb,
                             (int)((bb + 63) / 64), G);
#ifndef PK2_VNNI
        __m256i s16[4][4];
        for (int h = 0; h < 2 * G; h++)
            for (int i = 0; i < NA; i++) s16[h][i] = _mm256_setzero_si256(); /* (set at c = 0; for -Wall) */
#endif
        __m256 vs[4], vm[4];
        for (int h = 0; h < 2 * G; h++) {
            if (qk) { /* block b = sub-block b % 8 of super-block b / 8: [d][dmin] per super-block, [sc][mn] per block */
                const uint8_t *sbp = base + (h >> 1) * gb + sbb * (b / 8), *blk = sbp + 64 + sub * (b % 8);
                if (k5) hp[h] = _mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * (h & 1)));
                __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 8 * (h & 1)))));
                __m256 mn = _mm256_cvtepi32_ps(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 16 + 8 * (h & 1)))));
                vs[h] = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sbp + 16 * (h & 1)))), sc);
                vm[h] = _mm256_sub_ps(_mm256_setzero_ps(),
                                      _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sbp + 32 + 16 * (h & 1)))), mn));
                for (int i = 0; i < NA; i++) acc[h][i] = _mm256_setzero_si256();
                continue;
            }
            const uint8_t *blk = base + (h >> 1) * gb + b * bb;
            vs[h] = i8 ? _mm256_setzero_ps() : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16 * (h & 1))));
            vm[h] = q41 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 32 + 16 * (h & 1)))) : _mm256_setzero_ps();
            if (q5) hp[h] = _mm256_loadu_si256((const __m256i *)(blk + po + 32 * (h & 1)));
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
                    const uint8_t *cp = qk ? base + (h >> 1) * gb + sbb * (b / 8) + 64 + sub * (b % 8) + kco
                                           : base + (h >> 1) * gb + b * bb + co;
                    __m256i v = _mm256_loadu_si256((const __m256i *)(cp + 64 * c + 32 * (h & 1)));
                    __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                    if (q5) { /* plane bit c (low nibbles of chunk c) and bit 4 + c (high nibbles) of each byte -> 16 */
                        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hp[h], 4 - c), b16));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_srli_epi16(hp[h], c), b16));
                    }
                    for (int i = 0; i < NA; i++) {
                        const int8_t *xq = a[i].q + 32 * b + 4 * c;
#ifdef PK2_VNNI
                        acc[h][i] = PK2_DPBUSD(acc[h][i], lo, pk2_bcast(xq));
                        acc[h][i] = PK2_DPBUSD(acc[h][i], hi, pk2_bcast(xq + 16));
#else
                        /* int16 pair sums of several chunks before one vpmaddwd: a vpmaddubsw lane is at most
                         * 2 x 15 x 127 = 3810 for nibbles (8 summed: 30480) and 2 x 31 x 127 = 7874 for Q5_0's
                         * 5-bit codes (4 summed: 31496), below 2^15: the same exact integers, half the multiplies */
                        __m256i pr = _mm256_add_epi16(_mm256_maddubs_epi16(lo, pk2_bcast(xq)),
                                                      _mm256_maddubs_epi16(hi, pk2_bcast(xq + 16)));
                        const int span = q5 ? 1 : 3; /* chunks per int16 sum - 1 */
                        s16[h][i] = (c & span) == 0 ? pr : _mm256_add_epi16(s16[h][i], pr);
                        if ((c & span) == span)
                            acc[h][i] = _mm256_add_epi32(acc[h][i], _mm256_madd_epi16(s16[h][i], _mm256_set1_epi16(1)));
#endif
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
                if (q41) y[h][i] = _mm256_fmadd_ps(vm[h], _mm256_set1_ps(a[i].ds[b]), y[h][i]);
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
/* q6_k's high-bit planes H0 / H1: bits 2c..2c+1 of each byte moved to bits 4-5 (OR'd into the nibbles) */
static inline __m256i pk2_hi2(__m256i h, int c, __m256i m30) { /* ((h >> 2c) & 3) << 4 per byte */
    switch (c) {
    case 0: return _mm256_and_si256(_mm256_slli_epi16(h, 4), m30);
    case 1: return _mm256_and_si256(_mm256_slli_epi16(h, 2), m30);
    case 2: return _mm256_and_si256(h, m30);
    default: return _mm256_and_si256(_mm256_srli_epi16(h, 2), m30);
    }
}
/* The AVX-512 pk_tile_sb per lane (K = 6: q6_k, 3: q3_k, 2: q2_k; codes rebuilt per chunk, two accumulators per
 * block).  Without VNNI the vpmaddubsw pair sums of a block's chunks are summed in int16 before one vpmaddwd:
 * q6_k two chunks at a time (u8 codes <= 63: 2 x 63 x 128 x 2 = 32256 < 2^15), q3_k / q2_k all four (codes <= 7:
 * 7168). */
AI void pk2_tile_sb(const int K, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                    float *out, long ystride, int valid, const int NA) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), m3 = _mm256_set1_epi8(3);
    const __m256i v4 = _mm256_set1_epi8(4), m15 = _mm256_set1_epi32(15);
    const long sbb = K == 6 ? PK_Q6_SB : (K == 3 ? PK_Q3_SB : PK_Q2_SB);
    const long blkb = K == 6 ? PK_Q6_BLK : (K == 3 ? PK_Q3_BLK : PK_Q2_BLK), hdr = K == 2 ? 64 : 32;
    const int off = K == 6 ? 32 : 4, grp = K == 6 ? 2 : 4; /* chunks summed in int16 (no VNNI) */
#ifndef PK2_VNNI
    const __m256i one16 = _mm256_set1_epi16(1);
    __m256i p16[2][4], p16b[2][4];
#endif
    __m256 y[2][4];
    (void)gb;
    (void)grp;
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < NA; i++) y[h][i] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m256i acc[2][4], acc2[2][4], p0[2], p1[2], pl[2];
        __m256 vs[2], vs2[2], vm[2], vm2[2];
        const uint8_t *sbp = gp + sbb * (b / 8), *blk = sbp + hdr + blkb * (b % 8);
        if (NA == 1) pk_prefetch(blk, K == 6 ? 7 : (K == 3 ? 4 : 3), 1);
        for (int h = 0; h < 2; h++) {
            __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sbp + 16 * h)));
            if (K == 2) {
                __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sbp + 32 + 16 * h)));
                __m256i sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 8 * h)));
                __m256i mn = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 16 + 8 * h)));
                vs[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_and_si256(sc, m15)));
                vs2[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_srli_epi32(sc, 4)));
                vm[h] = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dm, _mm256_cvtepi32_ps(_mm256_and_si256(mn, m15))));
                vm2[h] = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(dm, _mm256_cvtepi32_ps(_mm256_srli_epi32(mn, 4))));
            } else {
                vs[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 8 * h)))));
                vs2[h] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(
                                              _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 16 + 8 * h)))));
            }
            p0[h] = _mm256_loadu_si256((const __m256i *)(blk + (K == 6 ? 288 : 32) + 32 * h));
            p1[h] = _mm256_loadu_si256((const __m256i *)(blk + (K == 6 ? 352 : 96) + 32 * h));
            if (K == 3) pl[h] = _mm256_loadu_si256((const __m256i *)(blk + 160 + 32 * h));
            for (int i = 0; i < NA; i++) {
                acc[h][i] = _mm256_set1_epi32(K == 2 ? 0 : so[i][b]);
                acc2[h][i] = _mm256_set1_epi32(K == 2 ? 0 : -off * a[i].s[b] - so[i][b]);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int h = 0; h < 2; h++) {
                __m256i lo, hi;
                if (K == 6) {
                    __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 32 + 64 * c + 32 * h));
                    lo = _mm256_or_si256(_mm256_and_si256(v, m4), pk2_hi2(p0[h], c, m30));
                    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), m4), pk2_hi2(p1[h], c, m30));
                } else {
                    lo = _mm256_and_si256(_mm256_srli_epi16(p0[h], 2 * c), m3);
                    hi = _mm256_and_si256(_mm256_srli_epi16(p1[h], 2 * c), m3);
                    if (K == 3) { /* the third bit: bit c / 4 + c of P moved to bit 2 by one 16-bit shift (bits
                                   * crossing from the neighbour byte are masked off) */
                        __m256i t0 = c < 2 ? _mm256_slli_epi16(pl[h], 2 - c) : _mm256_srli_epi16(pl[h], c - 2);
                        lo = _mm256_or_si256(lo, _mm256_and_si256(t0, v4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_srli_epi16(pl[h], c + 2), v4));
                    }
                }
                for (int i = 0; i < NA; i++) {
                    const int8_t *xq = a[i].q + 32 * b + 4 * c;
                    __m256i xb = pk2_bcast(xq), xb2 = pk2_bcast(xq + 16);
#ifdef PK2_VNNI
                    acc[h][i] = PK2_DPBUSD(acc[h][i], lo, xb);
                    acc2[h][i] = PK2_DPBUSD(acc2[h][i], hi, xb2);
#else
                    __m256i pr = _mm256_maddubs_epi16(lo, xb), pr2 = _mm256_maddubs_epi16(hi, xb2);
                    p16[h][i] = c % grp ? _mm256_add_epi16(p16[h][i], pr) : pr;
                    p16b[h][i] = c % grp ? _mm256_add_epi16(p16b[h][i], pr2) : pr2;
                    if (c % grp == grp - 1) {
                        acc[h][i] = _mm256_add_epi32(acc[h][i], _mm256_madd_epi16(p16[h][i], one16));
                        acc2[h][i] = _mm256_add_epi32(acc2[h][i], _mm256_madd_epi16(p16b[h][i], one16));
                    }
#endif
                }
            }
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < NA; i++) {
                __m256 da = _mm256_set1_ps(a[i].d[b]);
                y[h][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[h][i]), _mm256_mul_ps(vs[h], da), y[h][i]);
                y[h][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc2[h][i]), _mm256_mul_ps(vs2[h], da), y[h][i]);
                if (K == 2) {
                    y[h][i] = _mm256_fmadd_ps(vm[h], _mm256_set1_ps(a[i].d[b] * (float)so[i][b]), y[h][i]);
                    y[h][i] = _mm256_fmadd_ps(vm2[h], _mm256_set1_ps(a[i].d[b] * (float)(a[i].s[b] - so[i][b])), y[h][i]);
                }
            }
    }
    for (int h = 0; h < 2; h++) {
        int nv = valid - 8 * h;
        if (nv <= 0) break;
        for (int i = 0; i < NA; i++) {
            float *o = out + (long)i * ystride + 8 * h;
            if (nv >= 8) _mm256_storeu_ps(o, y[h][i]);
            else {
                float tmp[8];
                _mm256_storeu_ps(tmp, y[h][i]);
                for (int r = 0; r < nv; r++) o[r] = tmp[r];
            }
        }
    }
}
#define PK2_SB_FN(NAME, K) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4) { /* four row groups, one at a time */ \
            for (int g = 0; g < 4 && valid > 16 * g; g++) \
                pk2_tile_sb(K, gp + g * gb, gb, nb, a, so, out + 16 * g, ys, valid - 16 * g, 1); \
            return; \
        } \
        for (int i0 = 0; i0 < na; i0 += 2) { /* two activation rows per tile: 4 + 4 int32, 4 float accumulators */ \
            if (na - i0 >= 2) pk2_tile_sb(K, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 2); \
            else pk2_tile_sb(K, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 1); \
        } \
    }
PK2_SB_FN(pk_q6_k, 6)
PK2_SB_FN(pk_q3_k, 3)
PK2_SB_FN(pk_q2_k, 2)
#ifndef ES_PK2_DG
#define ES_PK2_DG 1 /* decode row groups per tile (2: the pre-2026-12-07 form; see ES_PF_BYTES) */
#endif
#define PK2_NA(WT, P, O, V, NA) pk2_tile(WT, gp, gb, nb, (P), (O), out + (long)(P - a) * ys, ys, V, 1, NA)
#define PK2_FN(NAME, WT) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4 == 2) { /* the interleaved form (the pool's decode form 4): two row-group streams a tile */ \
            for (int g = 0; g < 4 && valid > 16 * g; g += 2) \
                pk2_tile(WT, gp + g * gb, gb, nb, a, so, out + 16 * g, ys, valid - 16 * g, 2, 1); \
            return; \
        } \
        if (g4) { \
            for (int g = 0; g < 4 && valid > 16 * g; g += ES_PK2_DG) \
                pk2_tile(WT, gp + g * gb, gb, nb, a, so, out + 16 * g, ys, valid - 16 * g, ES_PK2_DG, 1); \
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
PK2_FN(pk_q4_1, W_Q4_1)
PK2_FN(pk_q5_0, W_Q5_0)
PK2_FN(pk_q5_1, W_Q5_1)
PK2_FN(pk_q5_k, W_Q5_K)
PK2_FN(pk_q4_k, W_Q4_K)
typedef void (*pk_fn)(const uint8_t *, long, int, const act_t *, const int32_t *const *, float *, long, int, int, int);
static pk_fn pk_of(int wt) {
    switch (wt) {
    case W_Q8_0: return pk_q8_0;
    case W_INT8: return pk_int8;
    case W_Q4_0: return pk_q4_0;
    case W_INT4: return pk_int4;
    case W_Q4_1: return pk_q4_1;
    case W_Q5_0: return pk_q5_0;
    case W_Q5_1: return pk_q5_1;
    case W_Q5_K: return pk_q5_k;
    case W_Q4_K: return pk_q4_k;
    case W_Q6_K: return pk_q6_k;
    case W_Q3_K: return pk_q3_k;
    case W_Q2_K: return pk_q2_k;
    default: return 0;
    }
}
