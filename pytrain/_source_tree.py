"""Make a source checkout importable: `python -m pytrain ...`, `torchrun -m pytrain ...` and
`python -m pytest tests` run from the repository root import `./pytrain`, which holds neither the
compiled `pytrain._native` nor `pytrain.kernels` (the design card keeps `kernels/` and `csrc/` at the top
level; `pip install .` maps them into the installed package).

Only when this package is such a checkout (no `pytrain/kernels` beside it, `kernels/` and `csrc/` at the
root) does `pytrain/__init__.py` install `SourceTreeFinder`, which resolves exactly two names:
- `pytrain.kernels` to the checkout's own `kernels/` folder, as a namespace package: the folder has no
  `__init__.py`, so that from the repository root it cannot shadow Hugging Face's `kernels` package;
- `pytrain._native` to an extension built from *this checkout's* `csrc/`: the persistent build folder
  that `pip install .` leaves in `build/<wheel tag>/`, or an installed pytrain's copy. Each build carries
  `_native.sources-sha256` (written by CMake, see csrc/source_hash.cmake) and is used only when that
  digest equals the digest of `csrc/` here, so edited C++ is never silently run from a stale build;
  otherwise the import fails with one line saying which command fixes it.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
HASH_FILE = "_native.sources-sha256"


def is_source_checkout() -> bool:
    return (not (PACKAGE_DIR / "kernels").exists() and (ROOT / "kernels" / "rms_norm.py").is_file()
            and (ROOT / "csrc").is_dir() and (ROOT / "CMakeLists.txt").is_file())


def sources_sha256(csrc: Path = ROOT / "csrc") -> str:
    """The digest csrc/source_hash.cmake writes: sha256 over "NAME SHA256\\n" of each .cpp/.h, sorted by name."""
    listing = "".join(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n"
                      for path in sorted([*csrc.glob("*.cpp"), *csrc.glob("*.h")], key=lambda p: p.name))
    return hashlib.sha256(listing.encode()).hexdigest()


def _built_extensions():
    """Candidate (folder, extension file) pairs: this checkout's build folders, then installed copies."""
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    folders = sorted((ROOT / "build").glob("*/")) if (ROOT / "build").is_dir() else []
    for entry in sys.path:
        installed = Path(entry or ".").resolve() / "pytrain"
        if installed != PACKAGE_DIR and installed.is_dir():
            folders.append(installed)
    for folder in folders:
        for suffix in suffixes:
            candidate = folder / f"_native{suffix}"
            if candidate.is_file():
                yield folder, candidate
                break


def find_native() -> Path:
    """The extension built from this checkout's csrc/, or an ImportError saying what to run."""
    wanted = sources_sha256()
    stale = []
    for folder, extension in _built_extensions():
        stamp = folder / HASH_FILE
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return extension
        stale.append(str(folder))
    if stale:
        raise ImportError(f"pytrain._native: the compiled extension ({stale[0]}) was built from other csrc/ sources "
                          f"than {ROOT}; rebuild it with `pip install .` (or `pip install -e .`) in {ROOT}",
                          name="pytrain._native")
    raise ImportError(f"pytrain._native is not built for the source checkout {ROOT}: run `pip install .` there "
                      "(it builds the extension with CMake and a C++17 compiler)", name="pytrain._native")


class SourceTreeFinder:
    """A meta-path finder for `pytrain.kernels` and `pytrain._native` in a source checkout."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname == "pytrain.kernels":  # a namespace package (no loader): its modules are found on this path
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
            spec.submodule_search_locations = [str(ROOT / "kernels")]
            return spec
        if fullname == "pytrain._native":
            extension = find_native()
            loader = importlib.machinery.ExtensionFileLoader(fullname, str(extension))
            return importlib.util.spec_from_file_location(fullname, extension, loader=loader)
        return None


def install() -> None:
    if is_source_checkout() and SourceTreeFinder not in sys.meta_path:
        sys.meta_path.insert(0, SourceTreeFinder)
