"""Compile every CUDA source for sm_90 without a GPU.

What is compiled is exactly the text CuPy's NVRTC sees at run time
(fastrnn._kernels.cuda.loader.source: includes inlined) with the same
options (-std=c++17 -DFRNN_SCALAR=float|double), once per dtype:

* with nvcc, where nvcc is on PATH (CI); ptxas must also report every kernel
  name the backend launches, with no register spills;
* with NVRTC itself through CuPy's bindings, where libnvrtc loads (no device
  is needed to compile).

Each is skipped with its reason where the tool is missing.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DTYPES = ("float32", "float64")


def _loader():
    try:
        from fastrnn._kernels.cuda import loader
        return loader
    except ImportError:
        # A plain checkout that is not pip-installed: load it from kernels/.
        path = Path(__file__).resolve().parents[1] / "kernels" / "cuda" / "loader.py"
        if not path.is_file():
            pytest.skip("fastrnn._kernels.cuda.loader is not importable and kernels/cuda/loader.py is absent")
        spec = importlib.util.spec_from_file_location("_fastrnn_cuda_loader", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


loader = _loader()
CASES = [(name, dt) for name in loader.SOURCES for dt in DTYPES]


def test_sources_inline_cleanly():
    for name in loader.SOURCES:
        text = loader.source(name)
        assert '#include "' not in text.replace('// (#include "', ""), f"{name}: an include was not inlined"
        assert "#include <" not in text, f"{name}: host headers are not available under NVRTC"
        assert "FRNN_SCALAR" in text and 'extern "C"' in text


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("name,dtype", CASES)
def test_nvcc_compiles(name, dtype, tmp_path):
    src = tmp_path / f"{name}_{dtype}.cu"
    src.write_text(loader.source(name), encoding="utf-8")
    cmd = ["nvcc", "-arch=sm_90", "-cubin", "-Xptxas", "-v", "-ftz=true", *loader.options(dtype),
           "-o", str(tmp_path / f"{name}_{dtype}.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"nvcc failed on {name} ({dtype}):\n{log[-6000:]}"
    assert "error" not in log.lower(), log[-6000:]
    entries = set(re.findall(r"Compiling entry function '([A-Za-z0-9_]+)'", log))
    missing = set(loader.kernel_names(name)) - entries
    assert not missing, f"{name} ({dtype}): kernels the backend launches are missing: {sorted(missing)}"
    spills = [ln for ln in log.splitlines() if "spill" in ln and not re.search(r"\b0 bytes spill stores, 0 bytes spill loads", ln)]
    assert not spills, f"{name} ({dtype}): register spills:\n" + "\n".join(spills)


def _nvrtc():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        return nvrtc
    except Exception as exc:  # cupy missing, or libnvrtc not found
        pytest.skip(f"NVRTC is not loadable here: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("name,dtype", CASES)
def test_nvrtc_compiles(name, dtype):
    nvrtc = _nvrtc()
    if "sm_90" not in [f"sm_{a}" for a in nvrtc.getSupportedArchs()]:
        pytest.skip("this NVRTC cannot target sm_90")
    prog = nvrtc.createProgram(loader.source(name), f"{name}.cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, loader.options(dtype) + ("--gpu-architecture=sm_90", "-ftz=true"))
        except nvrtc.NVRTCError as exc:
            pytest.fail(f"NVRTC failed on {name} ({dtype}): {exc}\n{nvrtc.getProgramLog(prog)[-6000:]}")
        assert len(nvrtc.getCUBIN(prog)) > 0
    finally:
        nvrtc.destroyProgram(prog)
