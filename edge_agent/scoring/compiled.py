"""The rolling-feature loop built ahead of time by numba, so that the agent's process never loads numba.

numba's JIT needs numba and LLVM in the process: about 65 MB of the agent's resident memory, measured
by importing it (BENCHMARKS.md, agent drain). The same loop, :func:`edge_agent.scoring.kernels.update`,
compiled ahead of time with ``numba.pycc``, is a plain extension module that needs only NumPy.

- **When and where.** Built once per machine and source version, in a child process
  (``python -m edge_agent.scoring.compiled DIR``), into the agent's ``kernel_dir``. The file name carries a
  digest of the loop's source, numba's version, the Python ABI and the machine, so a changed loop or an
  upgraded numba gets a new build and a stale one is never loaded. A build takes about 10 s of CPU and
  needs a C compiler; it is written under a temporary name and renamed, so two agents building at once,
  or a build killed half-way, leave no partial module.
- **Generic CPU.** The build targets the architecture's baseline, not this CPU's extensions, so a cache
  directory copied to an older gateway of the same architecture still runs.
- **Trust.** An extension module runs with the agent's rights, so it is loaded only from a directory
  owned by the agent's user that nobody else can write to.
- **Fallback.** When the module cannot be built or loaded, :func:`compiled_kernel` raises
  :class:`KernelUnavailable` saying why; the agent logs it and runs numba's JIT build instead (the same
  numbers, more memory).

``numba.pycc`` is marked for deprecation upstream; when it goes, this module is the one place to change
(the JIT fallback keeps the agent running meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import platform
import stat
import sys
import sysconfig
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

from edge_agent.scoring import features
from edge_agent.scoring.features import UpdateKernel

#: How long a build may take before it is given up (the loop compiles in about 10 s on a gateway core).
DEFAULT_BUILD_TIMEOUT_S = 300.0
_OUTPUT_LIMIT = 2000


class KernelUnavailable(Exception):
    """The ahead-of-time module cannot be built or loaded here; ``str()`` says why and what to do."""


def module_name() -> str:
    """The module's name: ``rolling_`` and a digest of everything its machine code depends on."""
    digest = hashlib.sha256()
    here = Path(features.__file__).parent
    for source in ("kernels.py", "features.py"):  # by path: importing kernels would load numba
        digest.update((here / source).read_bytes())
    for part in (metadata.version("numba"), sys.implementation.cache_tag, platform.machine()):
        digest.update(b"\0" + part.encode())
    return f"rolling_{digest.hexdigest()[:16]}"


def module_path(directory: Path) -> Path:
    """Where the build for this source and toolchain lives in ``directory``."""
    return directory / f"{module_name()}{sysconfig.get_config_var('EXT_SUFFIX')}"


def build(directory: Path) -> Path:
    """Compile the module into ``directory`` (this imports numba: run it in a child process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's pending-deprecation notice, see the module doc
        from numba.pycc.cc import CC  # noqa: PLC0415 - only the build child loads numba

        from edge_agent.scoring import kernels  # noqa: PLC0415 - the same

    target = module_path(directory)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".build-") as scratch:
        cc = CC(module_name())  # type: ignore[no-untyped-call]  # numba leaves it unannotated
        cc.output_dir = scratch
        cc.verbose = False
        cc.export("update", kernels.UPDATE_SIGNATURE)(kernels.update.py_func)  # type: ignore[no-untyped-call]
        cc.compile()
        (Path(scratch) / target.name).replace(target)
    return target


def _check_directory(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelUnavailable(
            f"{directory} is not private to this user (owner uid {info.st_uid}, mode "
            f"{stat.filemode(info.st_mode)}): a module there could run as the agent. Give the agent its "
            "own kernel_dir (mode 0700), or chmod go-w it"
        )


def load(path: Path) -> UpdateKernel:
    """Import a built module and return its loop."""
    spec = importlib.util.spec_from_file_location(path.name.split(".")[0], path)
    if spec is None or spec.loader is None:
        raise KernelUnavailable(f"{path} is not an extension module")
    try:
        module = importlib.util.module_from_spec(spec)  # an extension module is loaded here
        spec.loader.exec_module(module)
    except ImportError as exc:
        raise KernelUnavailable(f"cannot load {path}: {exc}; delete it to have it rebuilt") from exc
    update: UpdateKernel = module.update
    return update


async def compiled_kernel(directory: Path, *, timeout_s: float = DEFAULT_BUILD_TIMEOUT_S) -> UpdateKernel:
    """The ahead-of-time loop from ``directory``, built there first if this version has no build yet."""
    _check_directory(directory)
    path = module_path(directory)
    if not path.exists():
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, str(directory),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout_s):
                output, _ = await child.communicate()
        except TimeoutError:
            child.kill()
            await child.wait()
            raise KernelUnavailable(f"building {path.name} took longer than {timeout_s:g} s") from None
        if child.returncode != 0 or not path.exists():
            tail = output.decode(errors="replace").strip()[-_OUTPUT_LIMIT:]
            raise KernelUnavailable(
                f"building {path.name} failed (exit {child.returncode}); it needs a C compiler (Debian: "
                f"apt install gcc python3-dev): {tail}"
            )
    return load(path)


if __name__ == "__main__":
    _check_directory(Path(sys.argv[1]))
    print(build(Path(sys.argv[1])))
