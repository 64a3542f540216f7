"""The backend registry: availability with reasons, auto-selection, overrides,
and errors (never a silent fallback)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import dispatch


def test_backends_report_availability_and_reason():
    info = fastrnn.backends()
    assert set(info) >= {"numpy", "numba", "cupy"}
    assert info["numpy"].available and info["numba"].available
    for name, i in info.items():
        assert isinstance(i.reason, str) and i.reason, f"{name}: a reason must be given"
    if not info["cupy"].available:
        assert info["cupy"].reason   # e.g. "cupy is not installed" / no device


def test_auto_selects_numba_for_numpy_arrays(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.select(None, "numpy", "lstm", np.dtype("float32")).name == "numba"


def test_env_override(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "numpy")
    assert dispatch.select(None, "numpy", "gru", np.dtype("float64")).name == "numpy"
    monkeypatch.setenv(dispatch.ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match=r"\$FASTRNN_BACKEND: expected one of"):
        fastrnn.rnn_forward("gru", np.zeros((2, 1, 3)), [np.zeros((6, 3)), np.zeros((6, 2)), None, None])


def test_explicit_argument_beats_env(monkeypatch):
    monkeypatch.setenv(dispatch.ENV_VAR, "numpy")
    assert dispatch.select("numba", "numpy", "gru", np.dtype("float64")).name == "numba"


def test_unknown_backend_argument():
    with pytest.raises(ValueError, match=r"backend=: expected one of 'numpy', 'numba', 'cupy'"):
        fastrnn.rnn_forward("gru", np.zeros((2, 1, 3)), [np.zeros((6, 3)), np.zeros((6, 2)), None, None],
                            backend="tpu")


def test_unavailable_backend_is_an_error_with_reason():
    info = fastrnn.backends()["cupy"]
    if info.available:
        pytest.skip("cupy is available here")
    with pytest.raises(RuntimeError, match=r"backend 'cupy' is unavailable: .+"):
        fastrnn.rnn_forward("gru", np.zeros((2, 1, 3)), [np.zeros((6, 3)), np.zeros((6, 2)), None, None],
                            backend="cupy")


def test_broken_backend_is_reported_not_hidden():
    dispatch.register("broken_test", "fastrnn.no_such_module:BACKEND")
    try:
        info = fastrnn.backends()["broken_test"]
        assert not info.available
        assert "no_such_module" in info.reason
        with pytest.raises(RuntimeError, match="broken_test' is unavailable: import of"):
            dispatch.get("broken_test")
    finally:
        dispatch._REGISTRY.pop("broken_test")
        dispatch._LOADED.pop("broken_test", None)
        dispatch._PROBED.pop("broken_test", None)


def test_import_is_light():
    """`import fastrnn` imports neither numba, torch nor cupy."""
    code = ("import sys, fastrnn; bad = [m for m in ('numba', 'torch', 'cupy') if m in sys.modules];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported at `import fastrnn`: {out.stdout.strip()}"


class _Fake:
    name = "fake_test"
    priority = 1000
    modes = ("gru",)
    dtypes = ("float64",)
    array_module_name = "numpy"

    def probe(self):
        return True, "test double"


def test_auto_selection_cache_follows_registry_and_env(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    key = (None, "numpy", "gru", np.dtype("float64"))
    assert dispatch.select(*key).name == "numba"          # cached from here on
    import types
    mod = types.ModuleType("fastrnn_fake_backend_test")
    mod.BACKEND = _Fake()
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    dispatch.register("fake_test", f"{mod.__name__}:BACKEND")
    try:
        assert dispatch.select(*key).name == "fake_test", "register() must invalidate the cached choice"
        assert dispatch.select(None, "numpy", "lstm", np.dtype("float64")).name == "numba", \
            "the fake backend does not run lstm"
        monkeypatch.setenv(dispatch.ENV_VAR, "numpy")
        assert dispatch.select(*key).name == "numpy", "$FASTRNN_BACKEND must win over a cached choice"
    finally:
        for d in (dispatch._REGISTRY, dispatch._LOADED, dispatch._PROBED):
            d.pop("fake_test", None)
        dispatch._AUTO.clear()
    monkeypatch.delenv(dispatch.ENV_VAR)
    assert dispatch.select(*key).name == "numba"


def test_env_var_read_at_each_call_through_os_environ(monkeypatch):
    """$FASTRNN_BACKEND is read per call from os.environ's own mapping
    (dispatch._env_backend): a plain assignment, a deletion and an empty
    value all count at the next call, as with os.environ.get."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    key = (None, "numpy", "gru", np.dtype("float64"))
    auto = dispatch.select(*key).name
    try:
        os.environ[dispatch.ENV_VAR] = "numpy"
        assert dispatch._env_backend() == "numpy"
        assert dispatch.select(*key).name == "numpy"
        os.environ[dispatch.ENV_VAR] = ""
        assert dispatch.select(*key).name == auto, "an empty value means unset"
        os.environ[dispatch.ENV_VAR] = "no_such_backend"
        with pytest.raises(ValueError, match=r"\$FASTRNN_BACKEND: expected one of"):
            dispatch.select(*key)
    finally:
        os.environ.pop(dispatch.ENV_VAR, None)
    assert dispatch._env_backend() is None
    assert dispatch.select(*key).name == auto
