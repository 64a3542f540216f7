"""Which kernel set SciPy's OpenBLAS (the kernels' big GEMMs) runs: fastrnn
loads it with OPENBLAS_CORETYPE=Haswell on AMD Zen 4 unless the user chose
(fastrnn/_threads.py, ZEN4_CORE), and leaves the environment as it was."""
import json
import os
import subprocess
import sys

import pytest

from fastrnn import _threads

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl

processor\t: 1
vendor_id\t: AuthenticAMD
"""


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def test_is_zen4_reads_vendor_family_and_avx512():
    assert _threads.is_zen4(ZEN4)
    # Zen 3: the same family, no AVX-512 (OpenBLAS already picks its Zen kernels)
    assert not _threads.is_zen4(ZEN4.replace(" avx512f avx512dq avx512bw avx512vl", ""))
    # Zen 5 (family 26: full-width AVX-512) and Intel: OpenBLAS's own choice
    assert not _threads.is_zen4(ZEN4.replace("cpu family\t: 25", "cpu family\t: 26"))
    assert not _threads.is_zen4(ZEN4.replace("AuthenticAMD", "GenuineIntel"))
    # a flag that merely starts with avx512f is not avx512f
    assert not _threads.is_zen4(ZEN4.replace("avx512f ", "avx512fp16 "))
    assert not _threads.is_zen4("")


def test_a_user_setting_is_never_overridden(monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")
    assert _threads.blas_core_for_this_cpu() is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    want = _threads.ZEN4_CORE if _threads.is_zen4(_cpuinfo()) else None
    assert _threads.blas_core_for_this_cpu() == want


PROBE = """
import json, os, sys
{pre}
import fastrnn
from fastrnn import _threads
fastrnn.backends()
print(json.dumps(dict(core=_threads.blas_core(), env=os.environ.get("OPENBLAS_CORETYPE"))))
"""


def _probe(pre="", env_core=None):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if env_core is not None:
        env["OPENBLAS_CORETYPE"] = env_core
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_threads.available_threads()       # loads SciPy's OpenBLAS, so blas_core() can answer
needs_zen4_openblas = pytest.mark.skipif(
    not (_threads.is_zen4(_cpuinfo()) and _threads.blas_core()),
    reason="needs AMD Zen 4 and an OpenBLAS that reports its core (openblas_get_corename)")


@needs_zen4_openblas
def test_zen4_loads_the_haswell_kernels_and_restores_the_environment():
    r = _probe()
    assert r == {"core": "Haswell", "env": None}


@needs_zen4_openblas
def test_the_user_choice_stands_and_stays_in_the_environment():
    r = _probe(env_core="SkylakeX")
    assert r == {"core": "SkylakeX", "env": "SkylakeX"}


@needs_zen4_openblas
def test_a_library_already_loaded_keeps_its_own_choice():
    # scipy.linalg imported first: OpenBLAS chose at that load (SkylakeX on Zen 4)
    r = _probe(pre="import scipy.linalg")
    assert r == {"core": "SkylakeX", "env": None}


@needs_zen4_openblas
def test_the_torch_team_made_first_keeps_fastrnns_choice():
    # torch_team's compiled member imports scipy.linalg when it compiles or
    # loads; the runner loads SciPy's OpenBLAS fastrnn's way before that
    pytest.importorskip("torch", reason="the team is torch's")
    pre = ("import torch\nfrom fastrnn._backends import torch_team\n"
           "torch_team.runner()\n")
    r = _probe(pre=pre)
    assert r == {"core": "Haswell", "env": None}
