"""Issue 13, defects 1, 7 and part of 11: a user's files are never lost by `export -o` / `demo --out`.

Outputs are replaced only when they are edgespool bundles (manifest magic checked, not just a file named
manifest.json), atomically (old aside, new in, old deleted), stale staging folders are cleaned, and `-o .`, `-o`
under a file and `-o` a symlink are refused up front with one line naming the option.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_synth_bundle
from edgespool.apps.cli import cli
from edgespool.errors import OptionError
from edgespool.exporters import bundle_writer
from edgespool.exporters.bundle_writer import (
    check_output_path,
    clean_stale_staging,
    is_bundle_dir,
)
from edgespool.runtime.bundle.reader import Bundle
from edgespool import units


def _user_folder(root: Path, manifest: str | None = '{"name": "my app"}') -> Path:
    d = root / "myapp"
    (d / "src").mkdir(parents=True)
    (d / "thesis.tex").write_text("precious")
    (d / "src" / "main.c").write_text("int main(){}")
    if manifest is not None:
        (d / "manifest.json").write_text(manifest)
    return d


def _intact(d: Path) -> bool:
    return (d / "thesis.tex").read_text() == "precious" and (d / "src" / "main.c").exists()


@pytest.mark.parametrize("manifest", ['{"name": "my app"}', '{"magic": "edgespool-bundle-not"}', "not json",
                                      '["edgespool-bundle"]', None])
def test_force_never_replaces_a_folder_that_is_not_a_bundle(tmp_path, manifest):
    user = _user_folder(tmp_path, manifest)
    with pytest.raises(OptionError, match="not a bundle; refusing to overwrite"):
        check_output_path(user, overwrite=True)
    with pytest.raises(OptionError, match="not a bundle"):
        bundle_writer.BundleFiles(user, overwrite=True)
    assert _intact(user)
    assert not any(p.name.startswith(".myapp.") for p in tmp_path.iterdir())


def test_cli_export_force_into_user_folder_is_refused_before_reading_the_source(tmp_path):
    user = _user_folder(tmp_path)
    r = CliRunner().invoke(cli, ["export", str(tmp_path / "no-such-model.gguf"), "-o", str(user), "--force"])
    assert r.exit_code == 1
    assert "--output/-o" in r.output and "not a bundle" in r.output and "internal error" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert _intact(user)


def test_demo_out_refuses_a_user_folder(tmp_path):
    user = _user_folder(tmp_path)
    r = CliRunner().invoke(cli, ["demo", "--synthetic", "--out", str(user)])
    assert r.exit_code == 1 and "--out" in r.output and "not a bundle" in r.output
    assert _intact(user)


def test_dot_file_parent_and_symlink_outputs_are_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    for o in (".", str(tmp_path), str(tmp_path.parent), "x/.."):
        with pytest.raises(OptionError, match="current directory"):
            check_output_path(o, overwrite=True)
    f = tmp_path / "afile"
    f.write_text("data")
    with pytest.raises(OptionError, match="not a directory"):
        check_output_path(f / "bundle", overwrite=True)
    with pytest.raises(OptionError, match="not a directory"):
        check_output_path(f / "deeper" / "bundle", overwrite=True)
    real = make_synth_bundle(tmp_path / "real").path
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OptionError, match="symbolic link"):
        check_output_path(link, overwrite=True)
    for args in (["-o", "."], ["-o", str(f / "b")], ["-o", str(link), "--force"]):
        r = CliRunner().invoke(cli, ["export", "missing.gguf", *args])
        assert r.exit_code == 1 and "internal error" not in r.output and r.output.startswith("error: --output/-o")
    assert f.read_text() == "data" and is_bundle_dir(real)


def test_force_replaces_a_real_bundle_atomically(tmp_path, monkeypatch):
    out = tmp_path / "b"
    make_synth_bundle(out, quant="f32")
    assert is_bundle_dir(out)
    seen = []
    real_replace = os.replace

    def spy(a, b):
        seen.append((Path(a).name, Path(b).name, out.exists()))
        return real_replace(a, b)

    monkeypatch.setattr(bundle_writer.os, "replace", spy)
    from conftest import SMALL
    from edgespool.exporters.compress import QuantPolicy
    from edgespool.exporters.export import export_model
    from edgespool.exporters.synth import synth_demo_model

    export_model(synth_demo_model(**SMALL), out, policy=QuantPolicy(quant="int8"), overwrite=True, onnx=False,
                 kernels=False, progress=False)
    # old bundle renamed aside first (while it still existed), then the staged one renamed in
    assert [s[1] for s in seen] == [f".b.old-{os.getpid()}", "b"]
    assert seen[0][2] is True
    assert Bundle(out).manifest["quant"]["quant"] == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_kill_between_the_renames_leaves_the_old_bundle_recoverable(tmp_path):
    """A kill after the old bundle went aside and before the new one came in: the next export restores it."""
    out = tmp_path / "b"
    make_synth_bundle(out, quant="f32")
    # simulate a dead exporter: the old bundle set aside by pid 2^22+7 (not alive), no bundle at out
    dead = 4194311
    assert not units.pid_alive(dead)
    os.replace(out, tmp_path / f".b.old-{dead}")
    (tmp_path / f".b.partial-{dead}").mkdir()
    (tmp_path / f".b.partial-{dead}" / "weights.bin").write_bytes(b"\0" * 100)
    done = clean_stale_staging(out)
    assert len(done) == 2 and is_bundle_dir(out) and Bundle(out).config is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_killed_exports_leave_no_staging_folders_behind(tmp_path):
    out = tmp_path / "bundle"
    code = ("import os,sys; sys.path.insert(0, %r)\n"
            "from conftest import make_synth_bundle\n"
            "from edgespool.exporters import bundle_writer as bw\n"
            "orig = bw.BundleFiles.publish\n"
            "def die(self, m): os._exit(9)\n"
            "bw.BundleFiles.publish = die\n"
            "make_synth_bundle(%r)\n") % (str(Path(__file__).parent), str(out))
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, cwd=Path(__file__).parent)
        assert r.returncode == 9, r.stderr.decode()[-500:]
    stale = [p.name for p in tmp_path.iterdir() if p.name.startswith(".bundle.partial-")]
    assert len(stale) == 1  # each export removed the staging folder the killed one before it left ...
    make_synth_bundle(out)  # ... and the next export removes the last one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_staging_of_a_live_export_is_left_alone(tmp_path):
    out = tmp_path / "b"
    live = tmp_path / f".b.partial-{os.getppid()}"
    live.mkdir()
    other = tmp_path / ".c.partial-4194311"
    other.mkdir()
    clean_stale_staging(out)
    assert live.exists() and other.exists()


def test_a_big_or_deeply_nested_manifest_is_not_a_bundle(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    assert not is_bundle_dir(d)
    (d / "manifest.json").write_text(json.dumps({"magic": "edgespool-bundle"}))
    assert is_bundle_dir(d)
