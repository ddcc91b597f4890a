"""The NEON dotprod x16 packed micro-kernel (kernels/c_src/blockpack_neon.h): blockdot.c cross-compiled for
cortex-a76 (armv8.2-a + dotprod, the Pi 5) and run under qemu-aarch64, es_pack + es_linear_packed against a
float64 numpy model of the Q8_0 activation rounding on gguf-py / numpy dequantized weights (correctness only:
qemu says nothing about speed). Shapes are not multiples of 16; decode and prefill batches."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from edgespool.kernels import c_blocks
from test_kernels_blocks import _weight, q8_rounded, rel

HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
void *es_pool_new(int); long es_act_bytes(int, int); const char *es_isa(void); int es_pack_kind(int);
long es_packed_bytes(int, int, int);
int es_pack(int, const uint8_t *, long, const uint8_t *, long, int, int, uint8_t *);
int es_linear_packed(void *, int, const uint8_t *, int, int, const float *, int, float *, uint8_t *, int);
int main(int argc, char **argv) {  /* in: wt rows n m row_bytes sc_bytes, w, sc, x; out: y */
    FILE *f = fopen(argv[1], "rb"); int h[6]; fread(h, 4, 6, f);
    uint8_t *w = malloc((long)h[1] * h[4]), *sc = malloc((long)h[1] * h[5] + 1);
    fread(w, 1, (long)h[1] * h[4], f); fread(sc, 1, (long)h[1] * h[5], f);
    float *x = malloc(4L * h[2] * h[3]); fread(x, 4, (long)h[2] * h[3], f); fclose(f);
    float *y = malloc(4L * h[1] * h[3]); uint8_t *s = aligned_alloc(64, (es_act_bytes(h[2], h[3]) + 127) / 64 * 64);
    uint8_t *pk = aligned_alloc(64, (es_packed_bytes(h[0], h[1], h[2]) + 63) / 64 * 64);
    int rc = es_pack(h[0], w, h[4], h[5] ? sc : 0, h[5], h[1], h[2], pk);
    if (!rc) rc = es_linear_packed(es_pool_new(2), h[0], pk, h[1], h[2], x, h[3], y, s, 2);
    FILE *o = fopen(argv[2], "wb"); fwrite(y, 4, (long)h[1] * h[3], o); fclose(o);
    printf("%s %d %d\n", es_isa(), es_pack_kind(h[0]), rc); return rc;
}
"""


def test_neon_dotprod_packed_under_qemu(tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64") or shutil.which(
        "qemu-aarch64-static")
    if not cc or not qemu:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64")
    (tmp_path / "h.c").write_text(HARNESS)
    exe = tmp_path / "h"
    flags = c_blocks.gcc_flags({"mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"})
    subprocess.run([cc, "-O2", "-static", "-pthread", *flags, "-o", str(exe), str(tmp_path / "h.c"),
                    str(c_blocks.SOURCE), "-lm"], check=True, capture_output=True)
    rng = np.random.default_rng(12)
    for scheme in ("q8_0", "q4_0", "int8", "int4", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "q3_k", "q2_k"):
        shapes = ((45, 288, 1), (45, 288, 5), (301, 224, 1), (19, 96, 3))
        if scheme.endswith("_k"):  # 256-value super-blocks
            shapes = ((45, 512, 1), (45, 512, 5), (301, 256, 1), (19, 768, 3))
        for rows, n, m in shapes:
            w = _weight(rng, scheme, rows, n)
            sc = np.zeros((rows, 0), np.uint8) if w.scale is None else np.ascontiguousarray(w.scale).view(
                np.uint8).reshape(rows, -1)
            data = np.ascontiguousarray(w.data).view(np.uint8).reshape(rows, -1)
            x = rng.standard_normal((m, n)).astype(np.float32)
            inp = tmp_path / "in.bin"
            hdr = [c_blocks.SCHEME_CODES[scheme][0], rows, n, m, data.shape[1], sc.shape[1]]
            inp.write_bytes(np.array(hdr, np.int32).tobytes() + data.tobytes() + sc.tobytes() + x.tobytes())
            p = subprocess.run([qemu, "-cpu", "cortex-a76", str(exe), str(inp), str(tmp_path / "out.bin")],
                               capture_output=True, text=True, timeout=120, check=False)
            assert p.returncode == 0 and p.stdout.split() == ["neon-dotprod+x16", "1", "0"], p.stdout + p.stderr
            y = np.fromfile(tmp_path / "out.bin", np.float32).reshape(m, rows)
            ref = q8_rounded(x) @ w.dequantize().astype(np.float64).T
            assert rel(y, ref) < 2e-6, (scheme, rows, n, m)
