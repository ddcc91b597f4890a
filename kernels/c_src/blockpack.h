/* edgespool repacked (row-interleaved) block weights, included by blockdot.c.
 *
 * Layout ("x16"): output rows in groups of 16 (the last group zero-padded); per group, per 32-value block b:
 *   q8_0:  [16 x f16 block scales: 32 B][codes: 8 chunks x 64 B]           = 544 B per block
 *   q4_0:  [16 x f16 block scales: 32 B][codes: 4 chunks x 64 B]           = 288 B per block
 *   int4:  same as q4_0 (the block scales come from the separate f16 scale array)
 *   q4_1:  [16 x f16 d: 32 B][16 x f16 min: 32 B][codes: 4 chunks x 64 B]   = 320 B per block (nibbles as q4_0,
 *          no offset: the min term min x d_x x (activation code sum) is added per block after the int dot)
 *   q5_0:  [16 x f16 d: 32 B][high-bit plane: 16 x u32, row r at byte 4 r: 64 B][nibbles: 4 chunks x 64 B in
 *          q4_0's order] = 352 B per block = 16 x 22 stored (1.00x).  Plane bit 8 k + j of row r = the fifth bit
 *          (qh bit 4 j + k) of the value in byte k of chunk-half j (j < 4: low nibbles of chunk j, values 4 j + k;
 *          j >= 4: high nibbles of chunk j - 4, values 16 + 4 (j - 4) + k = 4 j + k), so one vptestmb of the plane
 *          against the byte constant 1 << j is the 64-bit mask of the chunk-half's fifth bits, added as 16 to the
 *          nibbles with a masked vpaddb; codes are u8 code5 (0..31), offset 16 (value = code5 - 16)
 *   q5_1:  [16 x f16 d: 32 B][16 x f16 min: 32 B][high-bit plane: 64 B, as q5_0's][nibbles: 4 chunks x 64 B]
 *          = 384 B per block = 16 x 24 stored (1.00x): q5_0's 5-bit codes (no offset), q4_1's min term
 *   q4_k:  per 256-value super-block [16 x f16 d: 32 B][16 x f16 dmin: 32 B], then per 32-value sub-block
 *          [16 x u8 6-bit scale][16 x u8 6-bit min][codes: 4 chunks x 64 B in q4_0's nibble order] = 2368 B per
 *          super-block (vs 16 x 144 = 2304 stored: 1.03x); weight = (d x sc) q - (dmin x m), as ggml
 *   q6_k:  per 256-value super-block [16 x f16 d: 32 B], then per 32-value block [16 x i8 scale of values 0-15]
 *          [16 x i8 scale of values 16-31][low 4 bits: 4 chunks x 64 B in q4_0's nibble order][high 2 bits: H0
 *          64 B, H1 64 B] = 3360 B per super-block (1.00x stored; until 2026-12-07 the codes were widened to bytes,
 *          4384 B, and decode read 30% more).  Byte 4 r + k of H0 holds, in bits 2c..2c+1, the top two bits of
 *          value 4 c + k of row r (c = 0..3); H1 the same for values 16 + 4 c + k.  Codes are u8 q6 (0..63),
 *          offset 32; the tile ORs ((H >> 2c) & 3) << 4 into the nibbles; two int32 accumulators per block (one
 *          per 16-value scale), the offset split by the activation's half-block code sums
 *   q3_k:  per 256-value super-block [16 x f16 d: 32 B], then per 32-value block [16 x i8 scale of values 0-15]
 *          [16 x i8 scale of values 16-31] (ggml's 6-bit scales - 32) [L0 64 B][L1 64 B][P 64 B] = 1824 B per
 *          super-block (vs 16 x 110 = 1760 stored: 1.04x).  Byte 4 r + k of L0 holds, in bits 2c..2c+1, the low two
 *          bits (qs) of value 4 c + k of row r, L1 the same for values 16 + 4 c + k; bit c of byte 4 r + k of P is
 *          the third bit (hmask) of value 4 c + k, bit 4 + c that of value 16 + 4 c + k.  Codes are u8 (qs | hmask
 *          << 2) = value + 4 (0..7), offset 4; q6_k's two accumulators per block and half-block offsets
 *   q2_k:  per 256-value super-block [16 x f16 d: 32 B][16 x f16 dmin: 32 B], then per 32-value block [16 x u8
 *          4-bit scales (values 0-15 low nibble, 16-31 high)][16 x u8 4-bit mins, the same][L0 64 B][L1 64 B] in
 *          q3_k's two-bit plane format = 1344 B per super-block (16 x 84 stored: 1.00x).  u8 codes 0..3, no offset:
 *          weight = (d x sc) q - (dmin x m) per 16 values, the min term from the activation's half-block code sums
 *   int8:  a group header of 16 x f32 row scales (64 B), then per block [codes: 8 chunks x 64 B] = 512 B
 * Chunk c holds 4 code bytes of each of the 16 rows, row r at byte 4 r: q8_0 / int8 values 4c..4c+3 stored as
 * u8 (w ^ 0x80 = w + 128); q4_0 / int4 the stored nibble bytes 4c..4c+3 (low nibble = value 4c+k, high nibble =
 * value 16+4c+k: ggml's order).  One 64-byte load is then one int32 lane per row, so `vpdpbusd` with a broadcast
 * 4-byte activation chunk advances 16 rows' dot products at once (no horizontal reduction; llama.cpp's
 * block_q4_0x8 / block_q8_0x4 repacking does the same with 8 / 4 rows).  The u8 offset (128 for the signed codes,
 * 8 for nibbles) comes off exactly: each block's int32 accumulator starts at -offset x (activation block code sum).
 *
 * Micro-kernel: a tile of G row groups (16 G rows) x NA activation rows keeps G x NA int32 block accumulators
 * and G x NA float accumulators in zmm registers; decode (one activation row) runs G = 1 four times (one
 * sequential stream; ES_PK_DG, see ES_PF_BYTES), prefill G = 1 x NA = 8 with the weight group reused by 8 activation rows per load.
 * Compute needs AVX-512 F/BW + VNNI; the layout functions (pack, unpack) are plain C and build everywhere. */

#define PK_ROWS 16
#define PK_Q5K_SB 2880L /* bytes of a q5_k super-block of 16 rows (64 + 8 x 352) */
#define PK_Q6_SB 3360L /* bytes of a q6_k super-block of 16 rows */
#define PK_Q6_BLK 416L /* bytes of a q6_k 32-value block of 16 rows (after the 16 d's) */
#define PK_Q3_SB 1824L /* bytes of a q3_k super-block of 16 rows */
#define PK_Q3_BLK 224L /* bytes of a q3_k 32-value block of 16 rows (after the 16 d's) */
#define PK_Q2_SB 1344L /* bytes of a q2_k super-block of 16 rows */
#define PK_Q2_BLK 160L /* bytes of a q2_k 32-value block of 16 rows (after the 16 d's and dmin's) */
#define PK_SUPPORTED(wt) ((wt) == W_Q8_0 || (wt) == W_Q4_0 || (wt) == W_INT8 || (wt) == W_INT4 || (wt) == W_Q4_1 || (wt) == W_Q5_0 || (wt) == W_Q5_1 || (wt) == W_Q4_K || (wt) == W_Q5_K || (wt) == W_Q6_K || (wt) == W_Q3_K || (wt) == W_Q2_K)

static long pk_block_bytes(int wt) {
    switch (wt) {
    case W_Q8_0: return 544;
    case W_Q5_0: return 352;
    case W_Q5_1: return 384;
    case W_INT8: return 512;
    case W_Q4_1: return 320;
    case W_Q4_0:
    case W_INT4: return 288;
    default: return 0;
    }
}
static long pk_group_bytes(int wt, int n) {
    if (wt == W_Q4_K) return (long)(n / 256) * 2368;
    if (wt == W_Q5_K) return (long)(n / 256) * PK_Q5K_SB;
    if (wt == W_Q6_K) return (long)(n / 256) * PK_Q6_SB;
    if (wt == W_Q3_K) return (long)(n / 256) * PK_Q3_SB;
    if (wt == W_Q2_K) return (long)(n / 256) * PK_Q2_SB;
    return (wt == W_INT8 ? 64 : 0) + (long)(n / 32) * pk_block_bytes(wt); }

/* Bytes of the packed form of a [rows, n] weight (0: this format has no packed form). */
long es_packed_bytes(int wt, int rows, int n) {
    if (!PK_SUPPORTED(wt) || n % wt_values(wt) || rows <= 0) return 0;
    return (long)((rows + PK_ROWS - 1) / PK_ROWS) * pk_group_bytes(wt, n);
}

/* Whether this build computes from packed weights of type wt (1) or only from the stored layout (0). */
int es_pack_kind(int wt) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return PK_SUPPORTED(wt) ? 1 : 0;
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
    /* blockpack_avx2.h: every x16 format (Q4_1 / Q5_0 / Q4_K / Q6_K since 2026-12-03, Q5_1 since 2026-12-07) */
    return PK_SUPPORTED(wt) ? 1 : 0;
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD) && defined(__aarch64__)
    /* blockpack_neon.h: every x16 format (the K-quants and Q4_1 / Q5_0 / Q5_1 since 2026-12-07) */
    return PK_SUPPORTED(wt) ? 1 : 0;
#else
    (void)wt;
    return 0;
#endif
}

/* Repack a stored [rows, n] weight (rows of row_bytes; int8 / int4 scales of sc_bytes per row) into out
 * (es_packed_bytes bytes).  Returns 0, -1 for a format without a packed form. */
int es_pack(int wt, const uint8_t *w, long row_bytes, const uint8_t *wsc, long sc_bytes, int rows, int n,
            uint8_t *out) {
    if (!es_packed_bytes(wt, rows, n)) return -1;
    int nb = n / 32;
    long gb = pk_group_bytes(wt, n), bb = pk_block_bytes(wt);
    memset(out, 0, (size_t)es_packed_bytes(wt, rows, n));
    for (int r = 0; r < rows; r++) {
        const uint8_t *wr = w + (long)r * row_bytes, *sr = wsc ? wsc + (long)r * sc_bytes : 0;
        uint8_t *g = out + (long)(r / PK_ROWS) * gb;
        int l = r % PK_ROWS;
        if (wt == W_INT8) memcpy(g + 4 * l, sr, 4);
        if (wt == W_Q4_K || wt == W_Q5_K) {
            const int k5 = wt == W_Q5_K;
            const long sbb = k5 ? PK_Q5K_SB : 2368, sub = k5 ? 352 : 288, kco = k5 ? 96 : 32;
            for (int sb = 0; sb < nb / 8; sb++) {
                const uint8_t *src = wr + (k5 ? 176 : 144) * sb, *q = src + 4, *qh = src + 16, *qs = src + 16 + 32 * k5;
                uint8_t *sbp = g + sbb * sb;
                memcpy(sbp + 2 * l, src, 2);
                memcpy(sbp + 32 + 2 * l, src + 2, 2);
                for (int j = 0; j < 8; j++) {
                    uint8_t *blk = sbp + 64 + sub * j;
                    blk[l] = j < 4 ? q[j] & 63 : (uint8_t)((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
                    blk[16 + l] = j < 4 ? q[j + 4] & 63 : (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
                    for (int v = 0; v < 16; v++) {
                        uint8_t a = qs[32 * (j / 2) + v], c = qs[32 * (j / 2) + v + 16];
                        int sh = (j & 1) * 4;
                        blk[kco + 64 * (v / 4) + 4 * l + v % 4] = (uint8_t)(((a >> sh) & 15) | (((c >> sh) & 15) << 4));
                    }
                    if (k5) { /* fifth bit of value V of sub-block j = qh[V] bit j -> plane bit 8 (V % 4) + V / 4 */
                        uint32_t pl = 0;
                        for (int V = 0; V < 32; V++) pl |= (uint32_t)((qh[V] >> j) & 1) << (8 * (V % 4) + V / 4);
                        memcpy(blk + 32 + 4 * l, &pl, 4);
                    }
                }
            }
            continue;
        }
        if (wt == W_Q6_K) {
            for (int sb = 0; sb < nb / 8; sb++) {
                const uint8_t *src = wr + 210 * sb, *ql = src, *qh = src + 128;
                uint8_t *sbp = g + PK_Q6_SB * sb;
                memcpy(sbp + 2 * l, src + 208, 2);
                for (int j = 0; j < 8; j++) {
                    uint8_t *blk = sbp + 32 + PK_Q6_BLK * j;
                    blk[l] = src[192 + 2 * j];
                    blk[16 + l] = src[192 + 2 * j + 1];
                    for (int t = 0; t < 32; t++) {
                        int v = 32 * j + t, h = v / 128, r = v % 128, k = r / 32, ll = r % 32;
                        int q6 = ((ql[64 * h + ll + (k & 1) * 32] >> ((k >> 1) * 4)) & 15) |
                                 (((qh[32 * h + ll] >> (2 * k)) & 3) << 4);
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        blk[32 + 64 * c + 4 * l + kk] |= (uint8_t)((q6 & 15) << (4 * half));
                        blk[288 + 64 * half + 4 * l + kk] |= (uint8_t)((q6 >> 4) << (2 * c));
                    }
                }
            }
            continue;
        }
        if (wt == W_Q2_K) {
            for (int sb = 0; sb < nb / 8; sb++) {
                const uint8_t *src = wr + 84 * sb, *sc = src, *qs = src + 16;
                uint8_t *sbp = g + PK_Q2_SB * sb;
                memcpy(sbp + 2 * l, src + 80, 2);
                memcpy(sbp + 32 + 2 * l, src + 82, 2);
                for (int j = 0; j < 8; j++) {
                    uint8_t *blk = sbp + 64 + PK_Q2_BLK * j;
                    blk[l] = (uint8_t)((sc[2 * j] & 15) | ((sc[2 * j + 1] & 15) << 4));
                    blk[16 + l] = (uint8_t)((sc[2 * j] >> 4) | ((sc[2 * j + 1] >> 4) << 4));
                    for (int t = 0; t < 32; t++) {
                        int q2 = (qs[32 * (j / 4) + t] >> (2 * (j % 4))) & 3;
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        blk[32 + 64 * half + 4 * l + kk] |= (uint8_t)(q2 << (2 * c));
                    }
                }
            }
            continue;
        }
        if (wt == W_Q3_K) {
            for (int sb = 0; sb < nb / 8; sb++) {
                const uint8_t *src = wr + 110 * sb, *hm = src, *qs = src + 32;
                uint8_t *sbp = g + PK_Q3_SB * sb;
                int8_t sc[16];
                q3k_scales(src + 96, sc);
                memcpy(sbp + 2 * l, src + 108, 2);
                for (int j = 0; j < 8; j++) {
                    uint8_t *blk = sbp + 32 + PK_Q3_BLK * j;
                    blk[l] = (uint8_t)sc[2 * j];
                    blk[16 + l] = (uint8_t)sc[2 * j + 1];
                    for (int t = 0; t < 32; t++) {
                        int q2 = (qs[32 * (j / 4) + t] >> (2 * (j % 4))) & 3, hb = (hm[t] >> j) & 1;
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        blk[32 + 64 * half + 4 * l + kk] |= (uint8_t)(q2 << (2 * c));
                        blk[160 + 4 * l + kk] |= (uint8_t)(hb << (c + 4 * half));
                    }
                }
            }
            continue;
        }
        for (int b = 0; b < nb; b++) {
            uint8_t *blk = g + (wt == W_INT8 ? 64 : 0) + (long)b * bb;
            if (wt == W_Q8_0 || wt == W_INT8) {
                const uint8_t *src = wt == W_Q8_0 ? wr + 34 * b + 2 : wr + 32 * b;
                uint8_t *codes = wt == W_Q8_0 ? blk + 32 : blk;
                if (wt == W_Q8_0) memcpy(blk + 2 * l, wr + 34 * b, 2);
                for (int c = 0; c < 8; c++)
                    for (int k = 0; k < 4; k++) codes[64 * c + 4 * l + k] = (uint8_t)(src[4 * c + k] ^ 0x80);
            } else if (wt == W_Q5_0 || wt == W_Q5_1) {
                const int q51 = wt == W_Q5_1;
                const uint8_t *src = wr + (q51 ? 24 : 22) * b;
                uint32_t qh, pl = 0;
                memcpy(blk + 2 * l, src, 2);
                if (q51) memcpy(blk + 32 + 2 * l, src + 2, 2);
                memcpy(&qh, src + 2 + 2 * q51, 4);
                for (int j = 0; j < 8; j++)
                    for (int k = 0; k < 4; k++) pl |= ((qh >> (4 * j + k)) & 1u) << (8 * k + j);
                memcpy(blk + 32 + 32 * q51 + 4 * l, &pl, 4);
                for (int c = 0; c < 4; c++) memcpy(blk + 96 + 32 * q51 + 64 * c + 4 * l, src + 6 + 2 * q51 + 4 * c, 4);
            } else if (wt == W_Q4_1) {
                memcpy(blk + 2 * l, wr + 20 * b, 2);
                memcpy(blk + 32 + 2 * l, wr + 20 * b + 2, 2);
                for (int c = 0; c < 4; c++) memcpy(blk + 64 + 64 * c + 4 * l, wr + 20 * b + 4 + 4 * c, 4);
            } else {
                const uint8_t *src = wt == W_Q4_0 ? wr + 18 * b + 2 : wr + 16 * b;
                memcpy(blk + 2 * l, wt == W_Q4_0 ? wr + 18 * b : sr + 2 * b, 2);
                for (int c = 0; c < 4; c++) memcpy(blk + 32 + 64 * c + 4 * l, src + 4 * c, 4);
            }
        }
    }
    return 0;
}

/* The stored-layout bytes of rows idx[0..count) of a packed [rows, n] weight: out_w rows of out_row_bytes,
 * int8 / int4 scales into out_sc rows of out_sc_bytes (the inverse of es_pack).  Returns 0 or -1. */
int es_unpack_rows(int wt, const uint8_t *packed, int rows, int n, const int64_t *idx, int count, uint8_t *out_w,
                   long out_row_bytes, uint8_t *out_sc, long out_sc_bytes) {
    if (!es_packed_bytes(wt, rows, n)) return -1;
    int nb = n / 32;
    long gb = pk_group_bytes(wt, n), bb = pk_block_bytes(wt);
    for (int t = 0; t < count; t++) {
        int64_t r = idx[t];
        if (r < 0 || r >= rows) return -1;
        const uint8_t *g = packed + (long)(r / PK_ROWS) * gb;
        int l = (int)(r % PK_ROWS);
        uint8_t *wr = out_w + (long)t * out_row_bytes, *sr = out_sc ? out_sc + (long)t * out_sc_bytes : 0;
        if (wt == W_INT8) memcpy(sr, g + 4 * l, 4);
        if (wt == W_Q4_K || wt == W_Q5_K) {
            const int k5 = wt == W_Q5_K;
            const long sbb = k5 ? PK_Q5K_SB : 2368, sub = k5 ? 352 : 288, kco = k5 ? 96 : 32;
            for (int sb = 0; sb < nb / 8; sb++) {
                uint8_t *dst = wr + (k5 ? 176 : 144) * sb, *q = dst + 4, *qh = dst + 16, *qs = dst + 16 + 32 * k5;
                const uint8_t *sbp = g + sbb * sb;
                uint8_t sc[8], mn[8];
                memcpy(dst, sbp + 2 * l, 2);
                memcpy(dst + 2, sbp + 32 + 2 * l, 2);
                memset(qs, 0, 128);
                if (k5) memset(qh, 0, 32);
                for (int j = 0; j < 8; j++) {
                    const uint8_t *blk = sbp + 64 + sub * j;
                    sc[j] = blk[l];
                    mn[j] = blk[16 + l];
                    if (k5) {
                        uint32_t pl;
                        memcpy(&pl, blk + 32 + 4 * l, 4);
                        for (int V = 0; V < 32; V++) qh[V] |= (uint8_t)(((pl >> (8 * (V % 4) + V / 4)) & 1) << j);
                    }
                    for (int v = 0; v < 16; v++) {
                        uint8_t byte = blk[kco + 64 * (v / 4) + 4 * l + v % 4];
                        int sh = (j & 1) * 4;
                        qs[32 * (j / 2) + v] |= (uint8_t)((byte & 15) << sh);
                        qs[32 * (j / 2) + v + 16] |= (uint8_t)((byte >> 4) << sh);
                    }
                }
                for (int j = 0; j < 4; j++) {
                    q[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
                    q[j + 4] = (uint8_t)((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
                    q[j + 8] = (uint8_t)((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
                }
            }
            continue;
        }
        if (wt == W_Q6_K) {
            for (int sb = 0; sb < nb / 8; sb++) {
                uint8_t *dst = wr + 210 * sb, *ql = dst, *qh = dst + 128;
                const uint8_t *sbp = g + PK_Q6_SB * sb;
                memcpy(dst + 208, sbp + 2 * l, 2);
                memset(dst, 0, 192);
                for (int j = 0; j < 8; j++) {
                    const uint8_t *blk = sbp + 32 + PK_Q6_BLK * j;
                    dst[192 + 2 * j] = blk[l];
                    dst[192 + 2 * j + 1] = blk[16 + l];
                    for (int t = 0; t < 32; t++) {
                        int v = 32 * j + t, h = v / 128, rr = v % 128, k = rr / 32, ll = rr % 32;
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        int q6 = ((blk[32 + 64 * c + 4 * l + kk] >> (4 * half)) & 15) |
                                 (((blk[288 + 64 * half + 4 * l + kk] >> (2 * c)) & 3) << 4);
                        ql[64 * h + ll + (k & 1) * 32] |= (uint8_t)((q6 & 15) << ((k >> 1) * 4));
                        qh[32 * h + ll] |= (uint8_t)(((q6 >> 4) & 3) << (2 * k));
                    }
                }
            }
            continue;
        }
        if (wt == W_Q2_K) {
            for (int sb = 0; sb < nb / 8; sb++) {
                uint8_t *dst = wr + 84 * sb, *sc = dst, *qs = dst + 16;
                const uint8_t *sbp = g + PK_Q2_SB * sb;
                memset(dst, 0, 80);
                memcpy(dst + 80, sbp + 2 * l, 2);
                memcpy(dst + 82, sbp + 32 + 2 * l, 2);
                for (int j = 0; j < 8; j++) {
                    const uint8_t *blk = sbp + 64 + PK_Q2_BLK * j;
                    sc[2 * j] = (uint8_t)((blk[l] & 15) | ((blk[16 + l] & 15) << 4));
                    sc[2 * j + 1] = (uint8_t)((blk[l] >> 4) | ((blk[16 + l] >> 4) << 4));
                    for (int t = 0; t < 32; t++) {
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        int q2 = (blk[32 + 64 * half + 4 * l + kk] >> (2 * c)) & 3;
                        qs[32 * (j / 4) + t] |= (uint8_t)(q2 << (2 * (j % 4)));
                    }
                }
            }
            continue;
        }
        if (wt == W_Q3_K) { /* ggml's 12-byte scale packing (quantize_row_q3_K_ref) from the 16 scales + 32 */
            for (int sb = 0; sb < nb / 8; sb++) {
                uint8_t *dst = wr + 110 * sb, *hm = dst, *qs = dst + 32, *scp = dst + 96;
                const uint8_t *sbp = g + PK_Q3_SB * sb;
                memset(dst, 0, 108);
                memcpy(dst + 108, sbp + 2 * l, 2);
                for (int j = 0; j < 8; j++) {
                    const uint8_t *blk = sbp + 32 + PK_Q3_BLK * j;
                    for (int e = 0; e < 2; e++) {
                        int jj = 2 * j + e, L = ((int)(int8_t)blk[16 * e + l] + 32) & 63;
                        scp[jj % 8] |= (uint8_t)((L & 15) << (jj < 8 ? 0 : 4));
                        scp[8 + jj % 4] |= (uint8_t)((L >> 4) << (2 * (jj / 4)));
                    }
                    for (int t = 0; t < 32; t++) {
                        int half = t / 16, c = (t % 16) / 4, kk = t % 4;
                        int q2 = (blk[32 + 64 * half + 4 * l + kk] >> (2 * c)) & 3;
                        int hb = (blk[160 + 4 * l + kk] >> (c + 4 * half)) & 1;
                        qs[32 * (j / 4) + t] |= (uint8_t)(q2 << (2 * (j % 4)));
                        hm[t] |= (uint8_t)(hb << j);
                    }
                }
            }
            continue;
        }
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = g + (wt == W_INT8 ? 64 : 0) + (long)b * bb;
            if (wt == W_Q8_0 || wt == W_INT8) {
                uint8_t *dst = wt == W_Q8_0 ? wr + 34 * b + 2 : wr + 32 * b;
                const uint8_t *codes = wt == W_Q8_0 ? blk + 32 : blk;
                if (wt == W_Q8_0) memcpy(wr + 34 * b, blk + 2 * l, 2);
                for (int c = 0; c < 8; c++)
                    for (int k = 0; k < 4; k++) dst[4 * c + k] = (uint8_t)(codes[64 * c + 4 * l + k] ^ 0x80);
            } else if (wt == W_Q5_0 || wt == W_Q5_1) {
                const int q51 = wt == W_Q5_1;
                uint8_t *dst = wr + (q51 ? 24 : 22) * b;
                uint32_t qh = 0, pl;
                memcpy(dst, blk + 2 * l, 2);
                if (q51) memcpy(dst + 2, blk + 32 + 2 * l, 2);
                memcpy(&pl, blk + 32 + 32 * q51 + 4 * l, 4);
                for (int j = 0; j < 8; j++)
                    for (int k = 0; k < 4; k++) qh |= ((pl >> (8 * k + j)) & 1u) << (4 * j + k);
                memcpy(dst + 2 + 2 * q51, &qh, 4);
                for (int c = 0; c < 4; c++) memcpy(dst + 6 + 2 * q51 + 4 * c, blk + 96 + 32 * q51 + 64 * c + 4 * l, 4);
            } else if (wt == W_Q4_1) {
                memcpy(wr + 20 * b, blk + 2 * l, 2);
                memcpy(wr + 20 * b + 2, blk + 32 + 2 * l, 2);
                for (int c = 0; c < 4; c++) memcpy(wr + 20 * b + 4 + 4 * c, blk + 64 + 64 * c + 4 * l, 4);
            } else {
                uint8_t *dst = wt == W_Q4_0 ? wr + 18 * b + 2 : wr + 16 * b;
                memcpy(wt == W_Q4_0 ? wr + 18 * b : sr + 2 * b, blk + 2 * l, 2);
                for (int c = 0; c < 4; c++) memcpy(dst + 4 * c, blk + 32 + 64 * c + 4 * l, 4);
            }
        }
    }
    return 0;
}

#if defined(__AVX2__)
#ifndef ES_PF_BYTES
/* software prefetch distance of the x86 one-row (decode) tiles of the 4-bit formats and q6_k (and AVX2 q8_0 /
 * int8: ES_PF_Q8_AVX2), bytes ahead in the row-group stream; 0: off. Since 2026-12-07 a decode tile reads ONE
 * stream (ES_PK_DG / ES_Q6_DG / ES_PK2_DG = 1: the four row groups of a call one after the other, which are
 * contiguous, instead of 4 (AVX-512) or 2 (AVX2) interleaved streams a row group apart), and 6 KiB ahead beat
 * 2 KiB there. One core of the Zen 4 VM (block_kernel_scaling --packed --prompt 16, 1.5B shapes, GB/s, two runs):
 * AVX-512 4 streams + 2 KiB (the old default) -> 1 stream + 6 KiB: q4_k 29.5-31.7 -> 39.0-39.8, q6_k 28.5-29.3 ->
 * 38.8-39.7, q4_0 32.7-33.8 -> 36.8-37.6, q5_0 27.1-34.3 -> 38.1-38.4, q8_0 (no prefetch) 36.9-38.1 -> 40.7-41.5;
 * 2 threads q4_k 38.4-39.2 -> 46.7-47.2, q6_k 37.4-38.3 -> 45.4-48.2, q8_0 47.3-48.2 -> 49.6-50.3. AVX2 build
 * (-march=x86-64-v3, on that AVX-512 core): q4_k 24.1-24.6 -> 36.0-37.9, q8_0 28.6-28.7 -> 36.7-38.3, q4_0
 * 27.9-28.7 -> 36.2-37.9, q5_0 26.3-27.3 -> 35.3-35.4, q6_k 28.7-31.0 -> 35.4-37.1. 1 stream + 2 KiB sat between;
 * 8 KiB = 6 KiB; the AVX-512 q8_0 still loses ~5% with a prefetch (ES_PF_Q8). Not measured on Intel cores. */
#define ES_PF_BYTES 6144
#endif
#ifndef ES_PF_BYTES_IL
/* the prefetch distance of the interleaved decode form (G > 1 row-group streams a tile: the pool's decode form 4,
 * es_pool_decode_form), the pre-2026-12-07 default that measured faster on an Intel Xeon core at 1 thread */
#define ES_PF_BYTES_IL 2048
#endif
/* the `lines` cache lines from `p` + the prefetch distance of a decode tile of G row-group streams (one
 * activation row): ES_PF_BYTES for one stream, ES_PF_BYTES_IL for interleaved streams */
AI void pk_prefetch(const uint8_t *p, int lines, const int G) {
    const long dist = G > 1 ? ES_PF_BYTES_IL : ES_PF_BYTES;
    if (dist <= 0) return;
    for (int l = 0; l < lines; l++) _mm_prefetch((const char *)p + dist + 64 * l, _MM_HINT_T0);
}
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define ES_PACKED 1
#ifndef ES_PF_Q8
#define ES_PF_Q8 0 /* AVX-512 q8_0 / int8 decode prefetch: off (1: ~5% slower, see ES_PF_BYTES) */
#endif
static inline __m512i pk_bcast(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}
/* G row groups (at gp, gp + gb, ...) x NA activation rows: out[i * ystride + 16 g + r] for the first `valid`
 * rows of the tile.  so[i][b] = -offset x code sum of activation row i's block b. */
AI void pk_tile(const int wt, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                float *out, long ystride, int valid, const int G, const int NA) {
    const int k5 = wt == W_Q5_K, qk = wt == W_Q4_K || k5, q51 = wt == W_Q5_1, q41 = wt == W_Q4_1 || qk || q51;
    const int q5 = wt == W_Q5_0 || q51 || k5, q4 = wt == W_Q4_0 || wt == W_INT4 || q41 || q5, i8 = wt == W_INT8;
    const long bb = q51 ? 384 : (q5 ? 352 : (q41 ? 320 : (q4 ? 288 : (i8 ? 512 : 544))));
    /* codes after the scales (q4_1's mins, q5_0's plane, q5_1's both); the plane after the scales */
    const long co = i8 ? 0 : (q51 ? 128 : (q41 || q5 ? 64 + 32 * q5 : 32)), po = q51 ? 64 : 32;
    /* q4_k / q5_k: super-block bytes, sub-block bytes, codes in a sub-block (after scales, mins, q5_k's plane) */
    const long sbb = k5 ? PK_Q5K_SB : 2368, sub = k5 ? 352 : 288, kco = k5 ? 96 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    const __m512i m4 = _mm512_set1_epi8(0x0F), v16 = _mm512_set1_epi8(16);
    __m512 y[4][MAXNA];
    for (int g = 0; g < G; g++)
        for (int i = 0; i < NA; i++) y[g][i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i acc[4][MAXNA], hp[4];
        __m512 vs[4], vm[4];
        if (NA == 1 && (q4 || ES_PF_Q8))
            for (int g = 0; g < G; g++)
                pk_prefetch(qk ? base + g * gb + sbb * (b / 8) + 64 + sub * (b % 8) : base + g * gb + b * bb,
                            (int)((bb + 63) / 64), G);
        if (q5)
            for (int g = 0; g < G; g++)
                hp[g] = _mm512_loadu_si512((const void *)(qk ? base + g * gb + sbb * (b / 8) + 64 + sub * (b % 8) + 32
                                                             : base + g * gb + b * bb + po));
        if (qk) { /* q4_k: block b = sub-block b % 8 of super-block b / 8; codes at 32 after the 6-bit scales */
            for (int g = 0; g < G; g++) {
                const uint8_t *sbp = base + g * gb + sbb * (b / 8), *blk = sbp + 64 + sub * (b % 8);
                __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk)));
                __m512 mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 16))));
                vs[g] = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sbp)), sc);
                vm[g] = _mm512_sub_ps(_mm512_setzero_ps(),
                                      _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sbp + 32))), mn));
                for (int i = 0; i < NA; i++) acc[g][i] = _mm512_setzero_si512();
            }
        } else
        for (int g = 0; g < G; g++) {
            const uint8_t *blk = base + g * gb + b * bb;
            vs[g] = i8 ? _mm512_setzero_ps() : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
            vm[g] = q41 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 32))) : _mm512_setzero_ps();
            for (int i = 0; i < NA; i++) acc[g][i] = _mm512_set1_epi32(so[i][b]);
        }
        if (q4) {
            for (int c = 0; c < 4; c++)
                for (int g = 0; g < G; g++) {
                    const uint8_t *cp = qk ? base + g * gb + sbb * (b / 8) + 64 + sub * (b % 8) + kco + 64 * c
                                           : base + g * gb + b * bb + co + 64 * c;
                    __m512i v = _mm512_loadu_si512((const void *)cp);
                    __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    if (q5) { /* the fifth bits of chunk-halves c (low nibbles) and c + 4 (high) from the plane */
                        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(hp[g], _mm512_set1_epi8((char)(1 << c))),
                                                  lo, v16);
                        hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(hp[g], _mm512_set1_epi8((char)(16 << c))),
                                                  hi, v16);
                    }
                    for (int i = 0; i < NA; i++) {
                        const int8_t *xq = a[i].q + 32 * b + 4 * c;
                        acc[g][i] = _mm512_dpbusd_epi32(acc[g][i], lo, pk_bcast(xq));
                        acc[g][i] = _mm512_dpbusd_epi32(acc[g][i], hi, pk_bcast(xq + 16));
                    }
                }
        } else {
            for (int c = 0; c < 8; c++)
                for (int g = 0; g < G; g++) {
                    __m512i v = _mm512_loadu_si512((const void *)(base + g * gb + b * bb + co + 64 * c));
                    for (int i = 0; i < NA; i++)
                        acc[g][i] = _mm512_dpbusd_epi32(acc[g][i], v, pk_bcast(a[i].q + 32 * b + 4 * c));
                }
        }
        for (int g = 0; g < G; g++)
            for (int i = 0; i < NA; i++) {
                __m512 t = _mm512_cvtepi32_ps(acc[g][i]), da = _mm512_set1_ps(a[i].d[b]);
                y[g][i] = i8 ? _mm512_fmadd_ps(t, da, y[g][i]) : _mm512_fmadd_ps(t, _mm512_mul_ps(vs[g], da), y[g][i]);
                if (q41) y[g][i] = _mm512_fmadd_ps(vm[g], _mm512_set1_ps(a[i].ds[b]), y[g][i]);
            }
    }
    for (int g = 0; g < G; g++) {
        __m512 rs = i8 ? _mm512_loadu_ps((const float *)(gp + g * gb)) : _mm512_setzero_ps();
        int nv = valid - 16 * g;
        if (nv <= 0) break;
        for (int i = 0; i < NA; i++) {
            __m512 v = i8 ? _mm512_mul_ps(y[g][i], rs) : y[g][i];
            float *o = out + (long)i * ystride + 16 * g;
            if (nv >= 16) _mm512_storeu_ps(o, v);
            else _mm512_mask_storeu_ps(o, (__mmask16)((1u << nv) - 1u), v);
        }
    }
}
/* q6_k's high-bit planes: bits 2c..2c+1 of each byte moved to bits 4-5 (OR'd into the nibbles) */
AI __m512i pk_hi2(__m512i h, int c, __m512i m30) { /* ((h >> 2c) & 3) << 4 per byte */
    switch (c) {
    case 0: return _mm512_and_si512(_mm512_slli_epi16(h, 4), m30);
    case 1: return _mm512_and_si512(_mm512_slli_epi16(h, 2), m30);
    case 2: return _mm512_and_si512(h, m30);
    default: return _mm512_and_si512(_mm512_srli_epi16(h, 2), m30);
    }
}
#ifndef ES_Q6_DG
#define ES_Q6_DG 1 /* decode row groups per q6_k tile (4: the pre-2026-12-07 form; see ES_PF_BYTES) */
#endif
/* Two accumulators per 32-value block (values 0-15 / 16-31, each with its own scale): q6_k (K = 6: u8 codes =
 * nibble | ((H >> 2c) & 3) << 4, offset 32), q3_k (K = 3: two-bit planes L0 / L1 + the third-bit plane P, offset
 * 4) and q2_k (K = 2: two-bit planes, no offset, 4-bit scales and mins, the min term from the half-block code
 * sums).  so = -offset x (code sum of values 0-15) for q6_k / q3_k, that half code sum itself for q2_k. */
AI void pk_tile_sb(const int K, const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so,
                   float *out, long ystride, int valid, const int G, const int NA) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8(3);
    const __m512i v4 = _mm512_set1_epi8(4), m15 = _mm512_set1_epi32(15);
    const long sbb = K == 6 ? PK_Q6_SB : (K == 3 ? PK_Q3_SB : PK_Q2_SB);
    const long blkb = K == 6 ? PK_Q6_BLK : (K == 3 ? PK_Q3_BLK : PK_Q2_BLK), hdr = K == 2 ? 64 : 32;
    const int off = K == 6 ? 32 : 4;
    __m512 y[4][MAXNA];
    for (int g = 0; g < G; g++)
        for (int i = 0; i < NA; i++) y[g][i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i acc[4][MAXNA], acc2[4][MAXNA], p0[4], p1[4], pl[4];
        __m512 vs[4], vs2[4], vm[4], vm2[4];
        const long bo = sbb * (b / 8), ko = hdr + blkb * (b % 8);
        if (NA == 1)
            for (int g = 0; g < G; g++) pk_prefetch(gp + g * gb + bo + ko, K == 6 ? 7 : (K == 3 ? 4 : 3), G);
        for (int g = 0; g < G; g++) {
            const uint8_t *sbp = gp + g * gb + bo, *blk = sbp + ko;
            __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)sbp));
            if (K == 2) {
                __m512 dm = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sbp + 32)));
                __m512i sc = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk));
                __m512i mn = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 16)));
                vs[g] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(sc, m15)));
                vs2[g] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_srli_epi32(sc, 4)));
                vm[g] = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_and_si512(mn, m15))));
                vm2[g] = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(dm, _mm512_cvtepi32_ps(_mm512_srli_epi32(mn, 4))));
            } else {
                vs[g] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)blk))));
                vs2[g] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 16)))));
            }
            /* q6_k: the high-bit planes H0 / H1; q3_k / q2_k: the two-bit planes L0 / L1 (+ q3_k's P) */
            p0[g] = _mm512_loadu_si512((const void *)(blk + (K == 6 ? 288 : 32)));
            p1[g] = _mm512_loadu_si512((const void *)(blk + (K == 6 ? 352 : 96)));
            if (K == 3) pl[g] = _mm512_loadu_si512((const void *)(blk + 160));
            for (int i = 0; i < NA; i++) {
                acc[g][i] = _mm512_set1_epi32(K == 2 ? 0 : so[i][b]);
                acc2[g][i] = _mm512_set1_epi32(K == 2 ? 0 : -off * a[i].s[b] - so[i][b]);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int g = 0; g < G; g++) {
                __m512i lo, hi;
                if (K == 6) {
                    __m512i v = _mm512_loadu_si512((const void *)(gp + g * gb + bo + ko + 32 + 64 * c));
                    lo = _mm512_or_si512(_mm512_and_si512(v, m4), pk_hi2(p0[g], c, m30));
                    hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), m4), pk_hi2(p1[g], c, m30));
                } else {
                    lo = _mm512_and_si512(_mm512_srli_epi16(p0[g], 2 * c), m3);
                    hi = _mm512_and_si512(_mm512_srli_epi16(p1[g], 2 * c), m3);
                    if (K == 3) {
                        lo = _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(pl[g], _mm512_set1_epi8((char)(1 << c))), lo, v4);
                        hi = _mm512_mask_add_epi8(hi, _mm512_test_epi8_mask(pl[g], _mm512_set1_epi8((char)(16 << c))), hi, v4);
                    }
                }
                for (int i = 0; i < NA; i++) {
                    const int8_t *xq = a[i].q + 32 * b + 4 * c;
                    acc[g][i] = _mm512_dpbusd_epi32(acc[g][i], lo, pk_bcast(xq));
                    acc2[g][i] = _mm512_dpbusd_epi32(acc2[g][i], hi, pk_bcast(xq + 16));
                }
            }
        for (int g = 0; g < G; g++)
            for (int i = 0; i < NA; i++) {
                __m512 da = _mm512_set1_ps(a[i].d[b]);
                y[g][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[g][i]), _mm512_mul_ps(vs[g], da), y[g][i]);
                y[g][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc2[g][i]), _mm512_mul_ps(vs2[g], da), y[g][i]);
                if (K == 2) {
                    y[g][i] = _mm512_fmadd_ps(vm[g], _mm512_set1_ps(a[i].d[b] * (float)so[i][b]), y[g][i]);
                    y[g][i] = _mm512_fmadd_ps(vm2[g], _mm512_set1_ps(a[i].d[b] * (float)(a[i].s[b] - so[i][b])), y[g][i]);
                }
            }
    }
    for (int g = 0; g < G; g++) {
        int nv = valid - 16 * g;
        if (nv <= 0) break;
        for (int i = 0; i < NA; i++) {
            float *o = out + (long)i * ystride + 16 * g;
            if (nv >= 16) _mm512_storeu_ps(o, y[g][i]);
            else _mm512_mask_storeu_ps(o, (__mmask16)((1u << nv) - 1u), y[g][i]);
        }
    }
}
#define PK_NA_CASES(TILE, WT, G) \
    switch (na) { \
    case 1: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 1); break; \
    case 2: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 2); break; \
    case 3: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 3); break; \
    case 4: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 4); break; \
    case 5: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 5); break; \
    case 6: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 6); break; \
    case 7: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 7); break; \
    default: TILE(WT, gp, gb, nb, a, so, out, ys, valid, G, 8); break; \
    }
#ifndef ES_PK_DG
#define ES_PK_DG 1 /* decode row groups per tile (4: the pre-2026-12-07 form; see ES_PF_BYTES) */
#endif
/* The entry of format WT through tile TILE (pk_tile, or pk_tile_sb with K for WT): decode (g4 = 1) DG row groups
 * per tile over the call's four; decode in the interleaved form (g4 = 2, the pool's decode form 4) IL row-group
 * streams in one tile (IL = 1: that format has one form); prefill one row group x na activation rows */
#define PK_FN(NAME, TILE, WT, DG, IL) \
    static void NAME(const uint8_t *gp, long gb, int nb, const act_t *a, const int32_t *const *so, float *out, \
                     long ys, int valid, int g4, int na) { \
        if (g4 == 2 && IL > 1) TILE(WT, gp, gb, nb, a, so, out, ys, valid, IL, 1); \
        else if (g4) { \
            for (int g = 0; g < 4 && valid > 16 * g; g += DG) \
                TILE(WT, gp + g * gb, gb, nb, a, so, out + 16 * g, ys, valid - 16 * g, DG, 1); \
        } else PK_NA_CASES(TILE, WT, 1) \
    }
PK_FN(pk_q6_k, pk_tile_sb, 6, ES_Q6_DG, 4)
PK_FN(pk_q3_k, pk_tile_sb, 3, 1, 1)
PK_FN(pk_q2_k, pk_tile_sb, 2, 1, 1)
PK_FN(pk_q8_0, pk_tile, W_Q8_0, ES_PK_DG, 4)
PK_FN(pk_int8, pk_tile, W_INT8, ES_PK_DG, 4)
PK_FN(pk_q4_0, pk_tile, W_Q4_0, ES_PK_DG, 4)
PK_FN(pk_int4, pk_tile, W_INT4, ES_PK_DG, 4)
PK_FN(pk_q4_1, pk_tile, W_Q4_1, ES_PK_DG, 4)
PK_FN(pk_q4_k, pk_tile, W_Q4_K, ES_PK_DG, 4)
PK_FN(pk_q5_0, pk_tile, W_Q5_0, ES_PK_DG, 4)
PK_FN(pk_q5_1, pk_tile, W_Q5_1, ES_PK_DG, 4)
PK_FN(pk_q5_k, pk_tile, W_Q5_K, ES_PK_DG, 4)
typedef void (*pk_fn)(const uint8_t *, long, int, const act_t *, const int32_t *const *, float *, long, int, int, int);
static pk_fn pk_of(int wt) {
    switch (wt) {
    case W_Q8_0: return pk_q8_0;
    case W_INT8: return pk_int8;
    case W_Q4_0: return pk_q4_0;
    case W_INT4: return pk_int4;
    case W_Q4_1: return pk_q4_1;
    case W_Q4_K: return pk_q4_k;
    case W_Q6_K: return pk_q6_k;
    case W_Q3_K: return pk_q3_k;
    case W_Q2_K: return pk_q2_k;
    case W_Q5_0: return pk_q5_0;
    case W_Q5_1: return pk_q5_1;
    case W_Q5_K: return pk_q5_k;
    default: return 0;
    }
}
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#include "blockpack_amx.h"
#endif
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include "blockpack_avx2.h"
#elif defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD) && defined(__aarch64__)
#include "blockpack_neon.h"
#endif
