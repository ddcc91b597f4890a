"""Tensor-parallel shard bundles (issue 19): board ``rank`` of ``n``'s share of a decoder bundle written as a normal
bundle, so that the board opens it with the ordinary streaming machinery (``plan_memory`` / ``StreamingWeights``
under its own memory budget) and reads only its own bytes.

A shard bundle holds the slices of :func:`edgespool.runtime.cluster.tensor.shard_group` (q/k/v and gate/up by
output rows, wo and down by input columns, stored bytes on the quantisation grid: no re-quantisation), a model
config of ``heads / n``, ``KV heads / n``, ``FFN columns / n`` and a vocabulary of the board's rows ``[lo, hi)`` of
the embedding and of the head (tied models stay tied: the head is the same rows). The manifest's
``tensor_shard`` section says which shard it is (``rank``, ``of``, ``vocab_range``, the whole model's vocabulary,
BOS/EOS ids and the source manifest's checksum); :class:`edgespool.runtime.cluster.tensor_stream.ShardSource`
turns it back into the whole model's interface (a token's embedding is the sum over the boards of their rows, one
allreduce; each board's logits land in its vocabulary columns)."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

from ..errors import BundleError, OptionError
from ..runtime.bundle.manifest_schema import CHECKSUM_KEY
from ..runtime.bundle.names import EMBED, LM_HEAD, group_of, parse_group
from ..runtime.bundle.reader import Bundle
from ..runtime.cluster.tensor import row_slice, shard_config, shard_group, vocab_range
from .bundle_writer import BundleWriter

from ..runtime.cluster.tensor_stream import SECTION


def shard_section(bundle: Bundle, rank: int, n: int) -> dict:
    """The ``tensor_shard`` manifest section of board ``rank`` of ``n``'s shard of ``bundle``."""
    cfg = bundle.config
    return {"rank": rank, "of": n, "vocab_range": list(vocab_range(cfg.vocab_size, rank, n)),
            "vocab_size": cfg.vocab_size, "bos_token_id": cfg.bos_token_id, "eos_token_ids": list(cfg.eos_token_ids),
            "source_checksum": bundle.manifest.get(CHECKSUM_KEY)}


def write_shard_bundle(bundle: Bundle, rank: int, n: int, out_dir: str | os.PathLike, *,
                       overwrite: bool = True) -> Path:
    """Write board ``rank`` of ``n``'s shard of ``bundle`` (a dense decoder without neuron-bundled FFNs) as a
    bundle at ``out_dir``; returns its path. Raises OptionError for a model that does not split ``n`` ways."""
    cfg = bundle.config
    if bundle.kind != "decoder" or cfg is None:
        raise OptionError(f"{bundle.path}: tensor parallel needs a decoder bundle")
    if bundle.manifest.get("ffn_layout") == "bundled":
        raise OptionError(f"{bundle.path}: tensor parallel: neuron-bundled FFNs are not split; re-export with "
                          "--ffn-layout matrix")
    if not 0 <= rank < n:
        raise OptionError(f"tensor shard {rank} of {n}: rank outside 0..{n - 1}")
    lo, hi = vocab_range(cfg.vocab_size, rank, n)
    if hi <= lo:
        raise OptionError(f"tensor parallel over {n} boards: the {cfg.vocab_size}-token vocabulary leaves board "
                          f"{rank} no head rows")
    scfg = replace(shard_config(cfg, n), vocab_size=hi - lo, bos_token_id=None, eos_token_ids=())
    w = BundleWriter(out_dir, scfg, overwrite=overwrite, meta={SECTION: shard_section(bundle, rank, n)})
    try:
        cache: dict[str, dict] = {}
        for name in w.expected_names():
            g = group_of(name)
            if g not in cache:
                cache.clear()  # groups come in layout order: hold one at a time
                cache[g] = shard_group(bundle.read_group(g), parse_group(g).layer, cfg, rank, n)
            t = cache[g][name]
            if name in (EMBED, LM_HEAD):
                t = row_slice(t, lo, hi)
            w.add_tensor(name, t)
        tok = bundle.manifest["tokenizer"]
        tmpl = tok.get("chat_template")
        w.set_tokenizer((bundle.path / tok["file"]).read_text(encoding="utf-8"), bos_token_id=None,
                        eos_token_ids=[], add_bos=bool(tok.get("add_bos")),
                        chat_template=(bundle.path / tmpl).read_text(encoding="utf-8") if tmpl else None,
                        special_tokens=tok.get("special_tokens"))
        return w.finish()
    except BaseException:
        w.abort()
        raise


def shard_bundles(bundle: Bundle, n: int, cache_dir: str | os.PathLike) -> list[Path]:
    """The ``n`` shard bundles of ``bundle`` under ``cache_dir`` (``shard-{rank}-of-{n}``), written once and
    reused while their ``tensor_shard`` section still names this bundle's manifest checksum."""
    base = Path(cache_dir)
    out = []
    for r in range(n):
        p = base / f"shard-{r}-of-{n}"
        if not _current(p, bundle, r, n):
            if p.exists() and not (p / "manifest.json").is_file():
                raise BundleError(f"{p}: exists and is not a shard bundle; remove it or choose another --work")
            if p.exists():
                shutil.rmtree(p)
            write_shard_bundle(bundle, r, n, p)
        out.append(p)
    return out


def _current(path: Path, bundle: Bundle, rank: int, n: int) -> bool:
    if not (path / "manifest.json").is_file():
        return False
    try:
        sec = Bundle(path).manifest.get(SECTION) or {}
    except BundleError:
        return False
    return sec == shard_section(bundle, rank, n)

