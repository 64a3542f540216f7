"""Smoke test of benchmarks/bench_torch_training.py, the torch.nn comparison
the README's issue-5 numbers come from: a --quick run (tiny sizes) must
produce its three tables and JSON, with the derived columns computed from
the measured ones."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_torch_training",
                                                  ROOT / "benchmarks" / "bench_torch_training.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_tables_and_derived_columns(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "r.json"
    # --threads 0: leave torch's and the BLAS libraries' thread counts as
    # they are (the run would otherwise set them for the rest of the session)
    res = bench.main(["--quick", "--threads", "0", "--out", str(out)])
    text = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["shapes"] == res["shapes"]
    assert set(res["training"]) == {"lstm", "gru"}
    for cell, r in res["training"].items():
        assert r["speedup"] == pytest.approx(r["fastrnn"]["steps_per_s"] / r["torch"]["steps_per_s"])
    (row,) = res["shapes"]
    assert row["floor_ms"] > 0 and row["torch_ms"] > 0 and row["fastrnn_ms"] > 0 and row["raw_ms"] > 0
    assert row["speedup"] == pytest.approx(row["torch_ms"] / row["fastrnn_ms"])
    # the ceiling: torch.nn's time over the GEMM floor
    assert row["ceiling"] == pytest.approx(row["torch_ms"] / row["floor_ms"])
    assert row["fastrnn_floor_fraction"] == pytest.approx(row["floor_ms"] / row["fastrnn_ms"])
    header = next(line for line in text.splitlines() if line.startswith("| cell | shape"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    line = next(line for line in text.splitlines() if line.startswith("| lstm | tiny"))
    vals = [c.strip() for c in line.strip("|").split("|")]
    assert len(vals) == len(cols)
    assert vals[cols.index("ceiling")] == f"{row['ceiling']:.2f}x"
    assert vals[cols.index("speedup")] == f"{row['speedup']:.2f}x"
    # the overhead is the median of paired (module - raw) round differences
    o = res["overhead"]["forward"]
    assert f"| **wrapper overhead** (fastrnn.torch.LSTM - raw) | **{o['overhead_us']:.1f}** |" in text
