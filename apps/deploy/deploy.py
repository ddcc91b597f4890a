"""Deploy a bundle to a board: preflight, send only the chunks the board lacks, stage + verify + fsync there, switch
``current`` by an atomic rename; roll back; run or bench the deployed bundle on the board.

Read top to bottom: :func:`connect` -> :func:`deploy` (facts -> :func:`~.preflight.check_fit` -> wheel ->
inventory -> chunks -> stage -> switch) -> :func:`rollback` / :func:`run_remote` / :func:`bench_remote`."""
from __future__ import annotations

import hashlib
import json
import re
import statistics
import time
import zipfile
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import DeployError, OptionError
from ...runtime.bundle.reader import Bundle
from .chunk_plan import MAX_CHUNK, ChunkPlan, plan_bundle
from .preflight import check_fit
from .registry import Device, Registry
from .ssh_session import ConnectionLost, Session

READ_TEST_BYTES = 32 << 20
MAX_INFLIGHT = 256
_WHEEL = re.compile(r"^edgespool-([0-9][A-Za-z0-9.+]*)-[^/]+\.whl$")


def read_test_bytes(text: str) -> int:
    """``--read-test-size``: a size such as 32MiB, or 0 to skip the cold-read test."""
    from ...units import parse_bytes

    return 0 if text.strip().upper() in ("0", "0B") else parse_bytes(text, "--read-test-size")


def connect(dev: Device, registry: Registry, *, accept_new: bool = False) -> Session:
    """Open an ssh session to ``dev`` running the board agent (host key checked against the registry's
    known_hosts)."""
    return Session(dev, registry.known_hosts, accept_new=accept_new)


def board_facts(s: Session, read_test_bytes: int = READ_TEST_BYTES) -> dict[str, Any]:
    """The board's facts (arch, CPU features, glibc, Python, edgespool there, memory, disk, a cold storage read)."""
    res = s.request("facts", read_test_bytes=read_test_bytes)
    out = res["facts"]
    out["device_root"] = s.root
    out["current_release"] = res.get("current")
    return out


@dataclass
class DeployResult:
    """What a deploy did: the release, what moved, how long, what the board said."""

    device: str
    release: str
    switched: bool
    chunks_total: int
    chunks_sent: int
    bytes_total: int
    bytes_sent: int  # bytes of the chunks sent
    payload_sent: int  # what they took on the connection (text files go zlib-coded)
    seconds: float
    crc_checked_tensors: int | None
    wheel: dict[str, Any] | None = None
    previous_release: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def wheel_version(wheel: Path) -> str:
    """The version in an edgespool wheel's file name (the wheel must be a zip with edgespool inside)."""
    m = _WHEEL.match(wheel.name)
    if not m or not wheel.is_file():
        raise OptionError(f"--wheel {wheel}: expected an existing edgespool-VERSION-...whl file")
    with zipfile.ZipFile(wheel) as z:
        if "edgespool/__init__.py" not in z.namelist():
            raise OptionError(f"--wheel {wheel}: no edgespool/__init__.py inside; not an edgespool wheel")
    return m.group(1)


def _install_wheel(s: Session, wheel: Path, facts: dict[str, Any]) -> dict[str, Any]:
    version = wheel_version(wheel)
    data = wheel.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    there = facts.get("edgespool") or {}
    if there.get("version") == version and there.get("wheel_sha256") == sha:
        return {"version": version, "installed": False, "sha256": sha}
    s.put(sha, data)
    res = s.request("install", sha=sha, version=version)
    got = res["edgespool"]
    if got.get("version") != version:
        raise DeployError(f"device {s.dev.name!r}: installed edgespool {version} from {wheel.name} but the board "
                          f"imports {got.get('version')} ({got.get('error') or got.get('file')})")
    facts["edgespool"] = got
    return {"version": version, "installed": True, "sha256": sha, "file": got.get("file")}


def deploy_with_retries(bundle_path: str | Path, dev: Device, registry: Registry, *, retries: int = 2,
                        wait_s: float = 2.0, on_retry: Callable[[int, DeployError], None] | None = None,
                        **kw: Any) -> DeployResult:
    """:func:`deploy`, rerun up to ``retries`` times (``wait_s`` apart, doubling) when the connection drops; each
    rerun resumes from what the board already holds. Refusals (preflight, host key, auth) are not retried."""
    for attempt in range(retries + 1):
        try:
            return deploy(bundle_path, dev, registry, **kw)
        except ConnectionLost as e:
            if attempt == retries:
                raise
            if on_retry:
                on_retry(attempt + 1, e)
            time.sleep(wait_s * 2 ** attempt)
    raise AssertionError("unreachable")


def deploy(bundle_path: str | Path, dev: Device, registry: Registry, *, memory_budget: int | None = None,
           wheel: Path | None = None, keep: int = 3, read_test_bytes: int = READ_TEST_BYTES,
           need_edgespool: bool = False, max_chunk: int = MAX_CHUNK,
           progress: Callable[[int, int], None] | None = None) -> DeployResult:
    """Ship the bundle at ``bundle_path`` to ``dev`` and make it ``current`` there (see the module docstring).
    Chunks the board already has (from an interrupted deploy or a kept release) are not sent again."""
    from ...runtime.cluster.stage_share import open_bundle

    t0 = time.perf_counter()
    bundle = open_bundle(bundle_path)  # a whole bundle, or a pipeline stage's share (deploy --cluster)
    plan = plan_bundle(bundle.path, max_chunk)
    try:
        session = connect(dev, registry)
    except DeployError as e:
        e.bytes_sent = 0  # type: ignore[attr-defined]
        raise
    with session as s:
        try:
            return _deploy_on(s, bundle, plan, dev, t0, memory_budget=memory_budget, window=max_chunk, wheel=wheel,
                              keep=keep,
                              read_test_bytes=read_test_bytes, need_edgespool=need_edgespool, progress=progress)
        except DeployError as e:
            e.bytes_sent = s.bytes_sent  # type: ignore[attr-defined]  # what left this side before the failure
            raise


def _deploy_on(s: Session, bundle: Bundle, plan: ChunkPlan, dev: Device, t0: float, *, memory_budget: int | None,
               window: int, wheel: Path | None, keep: int, read_test_bytes: int, need_edgespool: bool,
               progress: Callable[[int, int], None] | None) -> DeployResult:
    rid = plan.release_id
    facts = board_facts(s, read_test_bytes)
    inv = s.request("inventory")
    have = set(inv["have"])
    # one chunk per distinct hash (a bundle may repeat identical ranges, e.g. zero padding)
    missing: dict[str, Any] = {}
    for c in plan.chunks:
        if c.sha256 not in have:
            missing.setdefault(c.sha256, c)
    to_send = 0 if rid in inv["releases"] else sum(c.size for c in missing.values())
    fit = check_fit(bundle, facts, dev.name, bytes_to_send=to_send, bundle_bytes=plan.nbytes,
                    memory_budget=memory_budget, need_edgespool=need_edgespool and wheel is None)
    wheel_info = _install_wheel(s, wheel, facts) if wheel is not None else None
    sent = 0
    if rid not in inv["releases"]:
        done = 0
        inflight: deque[int] = deque()  # sizes of the chunks sent and not yet acknowledged
        for c in missing.values():
            # a window of at most `window` unacknowledged bytes (and MAX_INFLIGHT replies, which must fit the
            # board's pipe): a cut connection loses at most that much
            while inflight and (sum(inflight) + c.size > window or len(inflight) >= MAX_INFLIGHT):
                s.collect()
                done += inflight.popleft()
                if progress:
                    progress(done, to_send)
            s.put_nowait(c.sha256, plan.read(c), compress=c.path != bundle.weights_path.name)
            inflight.append(c.size)
            sent += 1
        while inflight:
            s.collect()
            done += inflight.popleft()
        staged = s.request("stage", rid=rid, files=plan.to_wire(),
                           meta={"bundle": bundle.path.name, "deployed_at": time.time()})
        crc = staged.get("crc_checked_tensors")
    else:
        crc = None
    prev = inv.get("current")
    sw = s.request("switch", rid=rid, keep=keep, verify=crc is None)
    bytes_sent = s.bytes_sent
    s.request("bye")
    return DeployResult(dev.name, rid, sw["current"] == rid, len(plan.chunks), sent, plan.nbytes, bytes_sent,
                        s.payload_sent, time.perf_counter() - t0, crc, wheel_info, prev, facts, fit.to_dict())


def rollback(dev: Device, registry: Registry) -> dict[str, Any]:
    """Point ``current`` back at the release deployed before it (verified first)."""
    with connect(dev, registry) as s:
        res = s.request("rollback")
        s.request("bye")
    return {"device": dev.name, "current": res["current"], "previous": res["previous"], "history": res["history"]}


def releases(dev: Device, registry: Registry) -> dict[str, Any]:
    """The releases kept on the board and which one is current."""
    with connect(dev, registry) as s:
        inv = s.request("inventory")
        s.request("bye")
    return {"device": dev.name, "current": inv["current"], "history": inv["history"], "releases": inv["releases"]}


def run_remote(s: Session, args: list[str], on_output: Callable[[str, str], None],
               path_args: tuple[int, ...] = (1,)) -> dict[str, Any]:
    """Run ``python -m edgespool ARGS`` on the board (``args[i]`` for i in ``path_args`` are paths under the device
    root), passing every piece of its output to ``on_output(stream, text)`` as it arrives; returns the exit code
    and the board-side wall time."""
    last: dict[str, Any] = {}
    for frame in s.stream("exec", args=args, path_args=list(path_args)):
        if "stream" in frame:
            on_output(frame["stream"], frame["data"])
        else:
            last = frame
    return {"exit": last["exit"], "seconds": last["seconds"]}


_BENCH_KEYS = ("load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "bytes_read_per_token")


def bench_remote(s: Session, bench_args: list[str], *, repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """``edgespool bench current <bench_args> --json`` on the board: ``warmup`` runs discarded, then ``repeats``
    timed runs (like TVM's time_evaluator); the board's governor/temperature/throttling read before and after.
    Returns every run, the median of the headline figures, and the thermal readings."""
    if repeats < 1 or warmup < 0:
        raise OptionError("--repeat must be >= 1 and --warmup >= 0")
    before = s.request("thermal")["thermal"]
    runs = []
    for i in range(warmup + repeats):
        out: list[str] = []
        err: list[str] = []
        res = run_remote(s, ["bench", "current", *bench_args, "--json"],
                         lambda st, d: (out if st == "stdout" else err).append(d))
        if res["exit"] != 0:
            tail = "".join(err).strip().splitlines()[-1:] or ["no output"]
            raise DeployError(f"device {s.dev.name!r}: `edgespool bench` on the board exited {res['exit']}: {tail[0]}")
        try:
            doc = json.loads("".join(out))
        except ValueError:
            raise DeployError(f"device {s.dev.name!r}: `edgespool bench --json` printed no JSON") from None
        if i >= warmup:
            runs.append(doc)
    after = s.request("thermal")["thermal"]
    median = {k: statistics.median([r[k] for r in runs if r.get(k) is not None])
              for k in _BENCH_KEYS if any(r.get(k) is not None for r in runs)}
    return {"repeats": repeats, "warmup": warmup, "median": median, "runs": runs,
            "thermal_before": before, "thermal_after": after}
