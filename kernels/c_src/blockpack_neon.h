/* edgespool x16 packed-weight micro-kernel for aarch64 NEON with the dot-product extension (armv8.2-a+dotprod:
 * cortex-a76 / Pi 5, cortex-a78 / Orin), included by blockpack.h.
 *
 * Same x16 layout as the AVX-512 kernel (blockpack.h); a 64-byte chunk is four 16-byte q registers (rows 0-3,
 * 4-7, 8-11, 12-15 of the group), one int32 lane per row.  `sdot` (vdotq_laneq_s32) multiplies signed bytes: q4_0 /
 * int4 nibbles (0..15) are used as they are with the accumulator starting at -8 x code sum (as on x86); q8_0 /
 * int8 codes are turned back into signed bytes (u8 ^ 0x80) and their accumulator starts at 0.  The 16 activation
 * codes of four chunks sit in one register, a lane per chunk.  Every block's int32 dot is exact and the float
 * steps (convert, scale product, fused multiply-add, block order) are the AVX-512 kernel's per lane.
 * Tiles: decode 2 row groups per call (a 4-group call runs two), prefill 1 row group x up to 2 activation rows. */

#define ES_PACKED 1

#define PKN_DOT(acc, w, x16, c) \
    ((c) == 0 ? vdotq_laneq_s32((acc), (w), (x16), 0) : (c) == 1 ? vdotq_laneq_s32((acc), (w), (x16), 1) \
     : (c) == 2 ? vdotq_laneq_s32((acc), (w), (x16), 2) : vdotq_laneq_s32((acc), (w), (x16), 3))

static inline float32x4_t pkn_f16x4(const uint8_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)p)));
}

/* G row groups x NA activation rows, out[i * ystride + 16 g + r] for the first `valid` rows. */
AI void pkn_tile(const int wt, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                 float *out, long ystride, int valid, const int G, const int NA) {
    const int q4 = wt == W_Q4_0 || wt == W_INT4, i8 = wt == W_INT8;
    const long bb = q4 ? 288 : (i8 ? 512 : 544);
    const long co = i8 ? 0 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    const uint8x16_t m4 = vdupq_n_u8(0x0F), x80 = vdupq_n_u8(0x80);
    float32x4_t y[8][2];
    for (int h = 0; h < 4 * G; h++)
        for (int i = 0; i < NA; i++) y[h][i] = vdupq_n_f32(0.f);
    for (int b = 0; b < nb; b++) {
        int32x4_t acc[8][2];
        float32x4_t vs[8];
        for (int h = 0; h < 4 * G; h++) {
            const uint8_t *blk = base + (h >> 2) * gb + b * bb;
            vs[h] = i8 ? vdupq_n_f32(0.f) : pkn_f16x4(blk + 8 * (h & 3));
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
                    uint8x16_t v = vld1q_u8(base + (h >> 2) * gb + b * bb + co + 64 * c + 16 * (h & 3));
                    int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(v, m4)), hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
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
            }
    }
    for (int h = 0; h < 4 * G; h++) {
        int nv = valid - 4 * h;
        if (nv <= 0) break;
        float32x4_t rs = i8 ? vld1q_f32((const float *)(gp + (h >> 2) * gb) + 4 * (h & 3)) : vdupq_n_f32(0.f);
        for (int i = 0; i < NA; i++) {
            float32x4_t v = i8 ? vmulq_f32(y[h][i], rs) : y[h][i];
            float *o = out + (long)i * ystride + 4 * h;
            if (nv >= 4) vst1q_f32(o, v);
            else {
                float tmp[4];
                vst1q_f32(tmp, v);
                for (int r = 0; r < nv; r++) o[r] = tmp[r];
            }
        }
    }
}
#define PKN_FN(NAME, WT) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4) { \
            pkn_tile(WT, gp, gb, nb, a, so, out, ys, valid, 2, 1); \
            if (valid > 32) pkn_tile(WT, gp + 2 * gb, gb, nb, a, so, out + 32, ys, valid - 32, 2, 1); \
            return; \
        } \
        for (int i0 = 0; i0 < na; i0 += 2) { \
            if (na - i0 >= 2) pkn_tile(WT, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 1, 2); \
            else pkn_tile(WT, gp, gb, nb, a + i0, so + i0, out + (long)i0 * ys, ys, valid, 1, 1); \
        } \
    }
PKN_FN(pk_q8_0, W_Q8_0)
PKN_FN(pk_int8, W_INT8)
PKN_FN(pk_q4_0, W_Q4_0)
PKN_FN(pk_int4, W_INT4)
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
