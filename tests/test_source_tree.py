"""Run from the repository root after `pip install .`: the checkout imports itself, `kernels/` as
`pytrain.kernels`, and only an extension built from its own `csrc/`; otherwise one line says what to run."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the repository checkout")


def _cmake_digest(csrc: Path) -> str:
    """csrc/source_hash.cmake's digest, spelled out independently of pytrain._source_tree."""
    files = sorted([*csrc.glob("*.cpp"), *csrc.glob("*.h")], key=lambda p: p.name)
    listing = "".join(f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def test_the_build_stamp_matches_the_sources_it_was_built_from():
    import pytrain._native as native

    stamp = Path(native.__file__).with_name("_native.sources-sha256")
    assert stamp.read_text().strip() == _cmake_digest(ROOT / "csrc")  # CMake's digest == this spelling
    from pytrain._source_tree import sources_sha256

    assert sources_sha256(ROOT / "csrc") == _cmake_digest(ROOT / "csrc")


def test_commands_run_from_the_repo_root():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "pytrain", "env"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.startswith(("pytrain ", "native ")))
    assert lines["pytrain"].rstrip().endswith(f"({ROOT / 'pytrain'})")  # the checkout, not site-packages
    assert "unavailable" not in lines["native"], lines["native"]
    proc = subprocess.run([sys.executable, "-c", "import pytrain.kernels as k, pytrain.kernels.rope as r, pytrain._native as n; "
                           "print(r.__file__); print(n.__file__)"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rope, _ = proc.stdout.split()
    assert Path(rope) == ROOT / "kernels" / "rope.py"


def test_the_checkouts_kernels_folder_hides_no_package_from_the_root(tmp_path, tokenizer_path):
    """From the repository root (first on sys.path for `python -m`/`-c`), `import kernels` is Hugging Face's
    package when it is installed (transformers imports it), never the checkout's kernels/ folder; an exported
    model loads in transformers there."""
    script = textwrap.dedent(f"""
        import importlib.util
        import transformers
        from pytrain.export import export_model
        from pytrain.model import build_model, preset
        config = preset("tiny", vocab_size=600)
        model = build_model(config)
        model.init_weights(seed=0)
        export_model(model, config, {str(tokenizer_path)!r}, {str(tmp_path / "hf")!r})
        transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "hf")!r})
        spec = importlib.util.find_spec("kernels")
        print(spec.origin if spec and spec.origin else "namespace")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin = proc.stdout.strip().splitlines()[-1]
    assert not Path(origin).is_relative_to(ROOT), origin  # a path inside the checkout (not a name sharing its prefix)
    if importlib.util.find_spec("kernels") is not None and importlib.metadata.packages_distributions().get("kernels"):
        assert origin.endswith(os.path.join("kernels", "__init__.py"))  # Hugging Face's, from site-packages


def test_a_stale_or_missing_build_is_one_line_naming_the_fix(tmp_path):
    """A copy of the checkout whose csrc/ was edited after the build: the import refuses the build."""
    import pytrain._native as native

    checkout = tmp_path / "checkout"
    for name in ("pytrain", "kernels", "csrc"):
        shutil.copytree(ROOT / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "CMakeLists.txt", checkout)
    build = checkout / "build" / "tag"
    build.mkdir(parents=True)
    shutil.copy(native.__file__, build)
    (build / "_native.sources-sha256").write_text(_cmake_digest(checkout / "csrc") + "\n")
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONNOUSERSITE": "1"}
    probe = [sys.executable, "-S", "-c", "import sys; sys.path.insert(0, '.'); import pytrain._native as n; print(n.__file__)"]
    proc = subprocess.run(probe, cwd=checkout, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(build)), proc.stderr
    (checkout / "csrc" / "line_index.cpp").write_text((checkout / "csrc" / "line_index.cpp").read_text() + "// edit\n")
    proc = subprocess.run(probe, cwd=checkout, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert (f"the compiled extension ({build}) was built from other csrc/ sources than {checkout}; rebuild it "
            f"with `pip install .`") in proc.stderr
    shutil.rmtree(checkout / "build")
    proc = subprocess.run(probe, cwd=checkout, capture_output=True, text=True, env=env)
    assert f"pytrain._native is not built for the source checkout {checkout}: run `pip install .` there" in proc.stderr
