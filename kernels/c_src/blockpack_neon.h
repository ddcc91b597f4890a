/* edgespool x16 packed-weight micro-kernel for aarch64 NEON with the dot-product extension (armv8.2-a+dotprod:
 * cortex-a76 / Pi 5, cortex-a78 / Orin), included by blockpack.h.
 *
 * Same x16 layout as the AVX-512 kernel (blockpack.h); a 64-byte chunk is four 16-byte q registers (rows 0-3,
 * 4-7, 8-11, 12-15 of the group), one int32 lane per row.  `sdot` (vdotq_laneq_s32) multiplies signed bytes: q4_0 /
 * int4 nibbles (0..15) are used as they are with the accumulator starting at -8 x code sum (as on x86); q8_0 /
 * int8 codes are turned back into signed bytes (u8 ^ 0x80) and their accumulator starts at 0.  The 16 activation
 * codes of four chunks sit in one register, a lane per chunk.  Every block's int32 dot is exact and the float
 * steps (convert, scale product, fused multiply-add, block order) are the AVX-512 kernel's per lane.
 * Tiles: decode 2 row groups per call (a 4-group call runs two), prefill 1 row group x up to 2 activation rows.
 * Q4_1 / Q5_0 / Q5_1 (min term, fifth-bit plane via vtst) and every K-quant since 2026-12-07, checked under qemu
 * (correctness, not speed). */

#define ES_PACKED 1

#define PKN_DOT(acc, w, x16, c) \
    ((c) == 0 ? vdotq_laneq_s32((acc), (w), (x16), 0) : (c) == 1 ? vdotq_laneq_s32((acc), (w), (x16), 1) \
     : (c) == 2 ? vdotq_laneq_s32((acc), (w), (x16), 2) : vdotq_laneq_s32((acc), (w), (x16), 3))

/* the first nv (> 0) of a tile row's 4 outputs to o */
static inline void pkn_store(float *o, float32x4_t v, int nv) {
    if (nv >= 4) {
        vst1q_f32(o, v);
        return;
    }
    float tmp[4];
    vst1q_f32(tmp, v);
    for (int r = 0; r < nv; r++) o[r] = tmp[r];
}
static inline float32x4_t pkn_f16x4(const uint8_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p)));
}

/* G row groups x NA activation rows, out[i * ystride + 16 g + r] for the first `valid` rows. */
AI void pkn_tile(const int wt, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                 float *out, long ystride, int valid, const int G, const int NA) {
    const int q51 = wt == W_Q5_1, q41 = wt == W_Q4_1 || q51, q5 = wt == W_Q5_0 || q51;
    const int q4 = wt == W_Q4_0 || wt == W_INT4 || q41 || q5, i8 = wt == W_INT8;
    const long bb = q51 ? 384 : (q5 ? 352 : (q41 ? 320 : (q4 ? 288 : (i8 ? 512 : 544))));
    /* codes after the scales (q4_1's mins, q5_0's plane, q5_1's both); the plane after the scales */
    const long co = i8 ? 0 : (q51 ? 128 : (q41 || q5 ? 64 + 32 * q5 : 32)), po = q51 ? 64 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), x80 = vdupq_n_u8(0x80), v16 = vdupq_n_u8(16);
    float32x4_t y[8][2];
    for (int h = 0; h < 4 * G; h++)
        for (int i = 0; i < NA; i++) y[h][i] = vdupq_n_f32(0.f);
    for (int b = 0; b < nb; b++) {
        int32x4_t acc[8][2];
        float32x4_t vs[8], vm[8];
        for (int h = 0; h < 4 * G; h++) {
            const uint8_t *blk = base + (h >> 2) * gb + b * bb;
            vs[h] = i8 ? vdupq_n_f32(0.f) : pkn_f16x4(blk + 8 * (h & 3));
            vm[h] = q41 ? pkn_f16x4(blk + 32 + 8 * (h & 3)) : vdupq_n_f32(0.f);
            for (int i = 0; i < NA; i++) acc[h][i] = vdupq_n_s32(q4 ? so[i][b] : 0);
        }
        if (q4) {
            int8x16_t xl[2], xh[2];
            for (int i = 0; i < NA; i++) {
                xl[i] = vld1q_s8(a[i].q + 32 * b);
                xh[i] = vld1q_s8(a[i].q + 32 * b + 16);
            }
            for (int c = 0; c < 4; c++)
                for (int h = 0; h < 4 * G; h++) {
                    const uint8_t *blk = base + (h >> 2) * gb + b * bb;
                    uint8x16_t v = vld1q_u8(blk + co + 64 * c + 16 * (h & 3));
                    uint8x16_t ul = vandq_u8(v, m4), uh = vshrq_n_u8(v, 4);
                    if (q5) { /* the fifth bits of chunk-halves c (low nibbles) and c + 4 (high) from the plane */
                        uint8x16_t pl = vld1q_u8(blk + po + 16 * (h & 3));
                        ul = vorrq_u8(ul, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(1u << c))), v16));
                        uh = vorrq_u8(uh, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(16u << c))), v16));
                    }
                    int8x16_t lo = vreinterpretq_s8_u8(ul), hi = vreinterpretq_s8_u8(uh);
                    for (int i = 0; i < NA; i++) {
                        acc[h][i] = PKN_DOT(acc[h][i], lo, xl[i], c);
                        acc[h][i] = PKN_DOT(acc[h][i], hi, xh[i], c);
                    }
                }
        } else {
            for (int c = 0; c < 8; c++) {
                int8x16_t xc[2];
                for (int i = 0; i < NA; i++) xc[i] = vld1q_s8(a[i].q + 32 * b + 16 * (c >> 2));
                for (int h = 0; h < 4 * G; h++) {
                    uint8x16_t v = vld1q_u8(base + (h >> 2) * gb + b * bb + co + 64 * c + 16 * (h & 3));
                    int8x16_t ws = vreinterpretq_s8_u8(veorq_u8(v, x80));
                    for (int i = 0; i < NA; i++) acc[h][i] = PKN_DOT(acc[h][i], ws, xc[i], c & 3);
                }
            }
        }
        for (int h = 0; h < 4 * G; h++)
            for (int i = 0; i < NA; i++) {
                float32x4_t t = vcvtq_f32_s32(acc[h][i]), da = vdupq_n_f32(a[i].d[b]);
                y[h][i] = i8 ? vfmaq_f32(y[h][i], t, da) : vfmaq_f32(y[h][i], t, vmulq_f32(vs[h], da));
                if (q41) y[h][i] = vfmaq_f32(y[h][i], vm[h], vdupq_n_f32(a[i].ds[b]));
            }
    }
    for (int h = 0; h < 4 * G; h++) {
        int nv = valid - 4 * h;
        if (nv <= 0) break;
        float32x4_t rs = i8 ? vld1q_f32((const float *)(gp + (h >> 2) * gb) + 4 * (h & 3)) : vdupq_n_f32(0.f);
        for (int i = 0; i < NA; i++)
            pkn_store(out + (long)i * ystride + 4 * h, i8 ? vmulq_f32(y[h][i], rs) : y[h][i], nv);
    }
}
static inline float32x4_t pkn_u8x4(const uint8_t *p) { /* 4 bytes -> 4 floats (unsigned) */
    uint32_t v;
    memcpy(&v, p, 4);
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(v))))));
}
static inline float32x4_t pkn_s8x4(const uint8_t *p) { /* 4 bytes -> 4 floats (signed) */
    uint32_t v;
    memcpy(&v, p, 4);
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(v))))));
}
static inline float32x4_t pkn_nib4(const uint8_t *p, int hi) { /* 4 bytes' low (hi 0) / high nibbles -> floats */
    uint32_t v;
    memcpy(&v, p, 4);
    uint8x8_t b = vreinterpret_u8_u32(vdup_n_u32(v));
    b = hi ? vshr_n_u8(b, 4) : vand_u8(b, vdup_n_u8(15));
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
}
/* The K-quant tiles (K = 4: q4_k, 5: q5_k, 6: q6_k, 3: q3_k, 2: q2_k): the AVX-512 pk_tile / pk_tile_sb steps per
 * 4-row lane group.  q4_k / q5_k: per 32-value sub-block a 6-bit scale and min per row, nibble codes (q5_k's fifth
 * bit from its plane through vtst), acc from 0, y += acc x (d sc) d_x + (-dmin mn) x d_x s_x.  q6_k / q3_k / q2_k:
 * two accumulators per block (values 0-15 / 16-31) with their scales; codes as signed bytes (<= 63): q6_k nibble |
 * ((H >> 2c) & 3) << 4 (a per-byte vshl with a signed count), q3_k the two-bit planes + the third bit (vtst), q2_k
 * the two-bit planes; accumulators from so = -off x (half code sum) and -off x s - so (q6_k 32, q3_k 4), q2_k from
 * 0 with the min term of its half code sums (so). */
AI void pkn_tile_k(const int K, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                   float *out, long ystride, int valid, const int G, const int NA) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m30 = vdupq_n_u8(0x30), m3 = vdupq_n_u8(3), v4 = vdupq_n_u8(4);
    const uint8x16_t v16 = vdupq_n_u8(16);
    const int two = K == 6 || K == 3 || K == 2, off = K == 6 ? 32 : 4;
    const long sbb = K == 4 ? 2368 : K == 5 ? PK_Q5K_SB : K == 6 ? PK_Q6_SB : K == 3 ? PK_Q3_SB : PK_Q2_SB;
    const long blkb = K == 4 ? 288 : K == 5 ? 352 : K == 6 ? PK_Q6_BLK : K == 3 ? PK_Q3_BLK : PK_Q2_BLK;
    const long hdr = K == 6 || K == 3 ? 32 : 64;
    float32x4_t y[8][2];
    for (int h = 0; h < 4 * G; h++)
        for (int i = 0; i < NA; i++) y[h][i] = vdupq_n_f32(0.f);
    for (int b = 0; b < nb; b++) {
        int32x4_t acc[8][2], acc2[8][2];
        float32x4_t vs[8], vs2[8], vm[8], vm2[8];
        int8x16_t xl[2], xh[2];
        for (int i = 0; i < NA; i++) {
            xl[i] = vld1q_s8(a[i].q + 32 * b);
            xh[i] = vld1q_s8(a[i].q + 32 * b + 16);
        }
        for (int h = 0; h < 4 * G; h++) {
            const uint8_t *sbp = gp + (h >> 2) * gb + sbb * (b / 8), *blk = sbp + hdr + blkb * (b % 8);
            const int r4 = 4 * (h & 3);
            float32x4_t d = pkn_f16x4(sbp + 2 * r4);
            if (K == 6 || K == 3) {
                vs[h] = vmulq_f32(d, pkn_s8x4(blk + r4));
                vs2[h] = vmulq_f32(d, pkn_s8x4(blk + 16 + r4));
            } else if (K == 2) {
                float32x4_t dm = pkn_f16x4(sbp + 32 + 2 * r4);
                vs[h] = vmulq_f32(d, pkn_nib4(blk + r4, 0));
                vs2[h] = vmulq_f32(d, pkn_nib4(blk + r4, 1));
                vm[h] = vnegq_f32(vmulq_f32(dm, pkn_nib4(blk + 16 + r4, 0)));
                vm2[h] = vnegq_f32(vmulq_f32(dm, pkn_nib4(blk + 16 + r4, 1)));
            } else {
                vs[h] = vmulq_f32(d, pkn_u8x4(blk + r4));
                vs2[h] = vnegq_f32(vmulq_f32(pkn_f16x4(sbp + 32 + 2 * r4), pkn_u8x4(blk + 16 + r4)));
            }
            for (int i = 0; i < NA; i++) {
                acc[h][i] = vdupq_n_s32(K == 6 || K == 3 ? so[i][b] : 0);
                acc2[h][i] = vdupq_n_s32(K == 6 || K == 3 ? -off * a[i].s[b] - so[i][b] : 0);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int h = 0; h < 4 * G; h++) {
                const uint8_t *blk = gp + (h >> 2) * gb + sbb * (b / 8) + hdr + blkb * (b % 8);
                const int r16 = 16 * (h & 3);
                uint8x16_t lo, hi;
                if (K == 3 || K == 2) { /* two-bit planes L0 / L1: bits 2c..2c+1 of each byte */
                    const int8x16_t sh = vdupq_n_s8((int8_t)(-2 * c));
                    lo = vandq_u8(vshlq_u8(vld1q_u8(blk + 32 + r16), sh), m3);
                    hi = vandq_u8(vshlq_u8(vld1q_u8(blk + 96 + r16), sh), m3);
                    if (K == 3) {
                        uint8x16_t pl = vld1q_u8(blk + 160 + r16);
                        lo = vorrq_u8(lo, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(1u << c))), v4));
                        hi = vorrq_u8(hi, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(16u << c))), v4));
                    }
                } else {
                    uint8x16_t v = vld1q_u8(blk + (K == 5 ? 96 : 32) + 64 * c + r16);
                    lo = vandq_u8(v, m4);
                    hi = vshrq_n_u8(v, 4);
                    if (K == 6) { /* ((H >> 2c) & 3) << 4 = (H << (4 - 2c)) & 0x30 (a negative count shifts right) */
                        const int8x16_t sh = vdupq_n_s8((int8_t)(4 - 2 * c));
                        lo = vorrq_u8(lo, vandq_u8(vshlq_u8(vld1q_u8(blk + 288 + r16), sh), m30));
                        hi = vorrq_u8(hi, vandq_u8(vshlq_u8(vld1q_u8(blk + 352 + r16), sh), m30));
                    }
                    if (K == 5) { /* the fifth bits from the plane, as q5_0's */
                        uint8x16_t pl = vld1q_u8(blk + 32 + r16);
                        lo = vorrq_u8(lo, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(1u << c))), v16));
                        hi = vorrq_u8(hi, vandq_u8(vtstq_u8(pl, vdupq_n_u8((uint8_t)(16u << c))), v16));
                    }
                }
                for (int i = 0; i < NA; i++) {
                    acc[h][i] = PKN_DOT(acc[h][i], vreinterpretq_s8_u8(lo), xl[i], c);
                    if (two) acc2[h][i] = PKN_DOT(acc2[h][i], vreinterpretq_s8_u8(hi), xh[i], c);
                    else acc[h][i] = PKN_DOT(acc[h][i], vreinterpretq_s8_u8(hi), xh[i], c);
                }
            }
        for (int h = 0; h < 4 * G; h++)
            for (int i = 0; i < NA; i++) {
                float32x4_t da = vdupq_n_f32(a[i].d[b]);
                y[h][i] = vfmaq_f32(y[h][i], vcvtq_f32_s32(acc[h][i]), vmulq_f32(vs[h], da));
                if (two) y[h][i] = vfmaq_f32(y[h][i], vcvtq_f32_s32(acc2[h][i]), vmulq_f32(vs2[h], da));
                else y[h][i] = vfmaq_f32(y[h][i], vs2[h], vdupq_n_f32(a[i].ds[b]));
                if (K == 2) {
                    y[h][i] = vfmaq_f32(y[h][i], vm[h], vdupq_n_f32(a[i].d[b] * (float)so[i][b]));
                    y[h][i] = vfmaq_f32(y[h][i], vm2[h], vdupq_n_f32(a[i].d[b] * (float)(a[i].s[b] - so[i][b])));
                }
            }
    }
    for (int h = 0; h < 4 * G && valid > 4 * h; h++)
        for (int i = 0; i < NA; i++) pkn_store(out + (long)i * ystride + 4 * h, y[h][i], valid - 4 * h);
}
/* The entry of format WT through tile TILE (pkn_tile, or pkn_tile_k with K for WT): decode two row groups per
 * tile (a 4-group call runs two), prefill one row group x up to 2 activation rows */
#define PKN_FN(NAME, TILE, WT) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4) { \
            TILE(WT, gp, gb, nb, a, so, out, ys, valid, 2, 1); \
            if (valid > 32) TILE(WT, gp + 2 * gb, gb, nb, a, so, out + 32, ys, valid - 32, 2, 1); \
            return; \
        } \
        for (int i0 = 0; i0 < na; i0 += 2) { \
            if (na - i0 >= 2) TILE(WT, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 1, 2); \
            else TILE(WT, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 1, 1); \
        } \
    }
PKN_FN(pk_q4_k, pkn_tile_k, 4)
PKN_FN(pk_q5_k, pkn_tile_k, 5)
PKN_FN(pk_q6_k, pkn_tile_k, 6)
PKN_FN(pk_q3_k, pkn_tile_k, 3)
PKN_FN(pk_q2_k, pkn_tile_k, 2)
PKN_FN(pk_q8_0, pkn_tile, W_Q8_0)
PKN_FN(pk_int8, pkn_tile, W_INT8)
PKN_FN(pk_q4_0, pkn_tile, W_Q4_0)
PKN_FN(pk_int4, pkn_tile, W_INT4)
PKN_FN(pk_q4_1, pkn_tile, W_Q4_1)
PKN_FN(pk_q5_0, pkn_tile, W_Q5_0)
PKN_FN(pk_q5_1, pkn_tile, W_Q5_1)
typedef void (*pk_fn)(const uint8_t *, long, int, const act_t *, const int32_t *const *, float *, long, int, int, int);
static pk_fn pk_of(int wt) {
    switch (wt) {
    case W_Q8_0: return pk_q8_0;
    case W_INT8: return pk_int8;
    case W_Q4_0: return pk_q4_0;
    case W_INT4: return pk_int4;
    case W_Q4_K: return pk_q4_k;
    case W_Q5_K: return pk_q5_k;
    case W_Q6_K: return pk_q6_k;
    case W_Q3_K: return pk_q3_k;
    case W_Q2_K: return pk_q2_k;
    case W_Q4_1: return pk_q4_1;
    case W_Q5_0: return pk_q5_0;
    case W_Q5_1: return pk_q5_1;
    default: return 0;
    }
}
