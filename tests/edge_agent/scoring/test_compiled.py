"""The ahead-of-time feature loop: same numbers as numba's JIT, no numba in the process, safe loading."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent.scoring.compiled import KernelUnavailable, compiled_kernel, load, module_path
from edge_agent.scoring.features import FeatureState, jit_kernel

T0 = 1_795_000_000_000


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build for the module (the first call to compiled_kernel builds it)."""
    directory = tmp_path_factory.mktemp("compiled") / "kernels"
    asyncio.run(compiled_kernel(directory))
    return directory


def _inputs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    slots = rng.integers(0, 50, n)
    t_ms = T0 + np.cumsum(rng.integers(-2_000, 60_000, n))  # out-of-order timestamps included
    temperature = rng.normal(4.0, 3.0, n)
    temperature[rng.random(n) < 0.02] = np.nan  # dropouts
    temperature[100:160] = 5.0  # a stuck run
    return slots, t_ms, temperature


def test_the_compiled_loop_computes_exactly_what_the_jit_build_does(kernel_dir: Path) -> None:
    compiled = FeatureState(kernel=load(module_path(kernel_dir)))
    jit = FeatureState(kernel=jit_kernel())
    slots, t_ms, temperature = _inputs(20_000, seed=3)
    for start in range(0, len(slots), 333):  # batches of uneven size, state carried between them
        part = slice(start, start + 333)
        a = compiled.update_and_features(slots[part], t_ms[part], temperature[part])
        b = jit.update_and_features(slots[part], t_ms[part], temperature[part])
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(compiled.ring_v, jit.ring_v)
    np.testing.assert_array_equal(compiled.istate, jit.istate)


def test_a_process_running_the_compiled_loop_never_loads_numba(kernel_dir: Path) -> None:
    program = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "from edge_agent.agent import EdgeAgent\n"
        "from edge_agent.scoring.compiled import load, module_path\n"
        "from edge_agent.scoring.features import FeatureState\n"
        f"state = FeatureState(kernel=load(module_path(Path({str(kernel_dir)!r}))))\n"
        "rows = state.update_and_features(np.array([0, 0]), np.array([0, 60_000]), np.array([4.0, 5.0]))\n"
        "print(rows[1, 0], 'numba' in sys.modules, 'llvmlite' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1.0", "False", "False"]


def test_an_existing_build_is_loaded_not_rebuilt(kernel_dir: Path) -> None:
    path = module_path(kernel_dir)
    built = path.stat().st_mtime_ns
    asyncio.run(compiled_kernel(kernel_dir))
    assert path.stat().st_mtime_ns == built
    assert [p.name for p in kernel_dir.iterdir()] == [path.name]  # no scratch left behind


def test_a_directory_others_can_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(KernelUnavailable, match="not private to this user"):
        asyncio.run(compiled_kernel(shared))
    assert list(shared.iterdir()) == []  # refused before anything was built or loaded


def test_a_damaged_build_is_refused_with_what_to_do(tmp_path: Path) -> None:
    directory = tmp_path / "kernels"
    directory.mkdir(mode=0o700)
    module_path(directory).write_bytes(b"\x7fELF not really")
    with pytest.raises(KernelUnavailable, match="delete it to have it rebuilt"):
        asyncio.run(compiled_kernel(directory))


def test_a_failed_build_says_it_needs_a_c_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    directory = tmp_path / "kernels"
    with pytest.raises(KernelUnavailable, match="needs a C compiler") as refused:
        asyncio.run(compiled_kernel(directory))
    assert "exit" in str(refused.value)
    assert not module_path(directory).exists()
    assert list(directory.iterdir()) == []  # the scratch directory went with the failed build
