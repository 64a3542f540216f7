"""`fastrnn bench`, the package's main command: a quick end-to-end run of one
mode and shape (JSON and table), the table's arithmetic from a result of
known numbers, and the command line."""
import json
import subprocess
import sys

import pytest

from fastrnn import bench


def test_quick_run_writes_the_table_and_json(tmp_path):
    lines = []
    path = tmp_path / "b.json"
    res = bench.run(modes=("rnn_tanh",), shapes=("S1", "S2"), quick=True, reference=True, startup=False,
                    json_path=path, out=lines.append)
    saved = json.loads(path.read_text())
    assert [(r["mode"], r["shape"], r["lengths"]) for r in saved["rows"]] == [
        ("rnn_tanh", "S1", "full"), ("rnn_tanh", "S2", "full"), ("rnn_tanh", "S2", "random")]
    for r in saved["rows"]:
        assert r["fastrnn_train_s"] > 0 and r["fastrnn_fwd_s"] > 0, r
        assert r["gemm_gflops"] > 0, "each row carries the GEMM rate its floor fraction uses"
        assert r["flops_train"] == 6 * r["T"] * r["B"] * r["H"] * (r["I"] + r["H"])   # G = 1
    assert saved["rows"][0]["numpy_train_s"] > 0, "the NumPy reference column ran"
    lrow = saved["rows"][2]
    assert lrow["fastrnn_full_train_s"] > 0, "the random row times the full-length call in its own rounds"
    assert saved["lengths_cost"]["rnn_tanh/S2"] == pytest.approx(
        lrow["fastrnn_train_s"] / lrow["fastrnn_full_train_s"]), "the lengths' cost is the same-rounds ratio"
    text = "\n".join(lines)
    assert "| rnn_tanh | S1 | full |" in text and "| rnn_tanh | S2 | random |" in text, text
    assert res["rows"] == saved["rows"]
    assert saved["timing"] == "rounds" and all(r["timing"] == "rounds" for r in saved["rows"])
    assert "interleaved rounds" in text


def _clocked(monkeypatch, durations):
    """Functions that advance a fake clock by their next duration (cycling
    through durations[name]), and the log of calls."""
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    calls = []
    its = {n: iter(d) for n, d in durations.items()}

    def fn(name):
        def f():
            calls.append(name)
            now[0] += next(its[name])
        return f
    return {n: fn(n) for n in durations}, calls


def test_timeit_rounds_blocks_take_turns_and_open_with_an_untimed_call(monkeypatch):
    # durations in powers of two keep the fake clock exact: a takes 1/1024 s,
    # b 1/128 s, and a block 1/32 / (2 rounds * 2 functions) = 1/128 s
    a, b = 2.0 ** -10, 2.0 ** -7
    fns, calls = _clocked(monkeypatch, {"a": [a] * 1000, "b": [b] * 1000})
    med = bench.timeit_rounds(fns, min_reps=1, min_time=2.0 ** -5, rounds=2, max_reps=1000)
    assert med == {"a": a, "b": b}
    # first one call each (the estimates); then per round and function an
    # untimed call and 1/128 s of timed calls (a: 8, b: 1), b first in round 2
    blocks = {"a": ["a"] * (1 + 8), "b": ["b"] * (1 + 1)}
    assert calls == ["a", "b"] + blocks["a"] + blocks["b"] + blocks["b"] + blocks["a"]


def test_timeit_rounds_medians_leave_out_the_slow_first_calls(monkeypatch):
    # each block's first call (the untimed one) is 5x slower, as after the
    # other library has run: the medians are the steady times
    fns, calls = _clocked(monkeypatch, {"a": ([5.0] + [1.0] * 4) * 100, "b": ([10.0] + [2.0] * 4) * 100})
    med = bench.timeit_rounds(fns, min_reps=5, min_time=0.0, rounds=2, own_warmup_s=100.0)
    assert med == {"a": 1.0, "b": 2.0}


def test_timeit_rounds_long_calls_are_their_own_warmup_and_max_reps_caps(monkeypatch):
    fns, calls = _clocked(monkeypatch, {"a": [1.0] * 100})
    bench.timeit_rounds(fns, min_reps=3, min_time=0.0, rounds=2, own_warmup_s=0.5)
    assert len(calls) == 1 + 3, "no untimed calls for calls of own_warmup_s or more; rounds until min_reps"
    fns, calls = _clocked(monkeypatch, {"a": [1e-3] * 1000})
    bench.timeit_rounds(fns, min_reps=1, min_time=100.0, rounds=4, max_reps=10)
    assert len(calls) - 1 - 4 == 10, "max_reps timed calls in all (in blocks of at most max_reps / rounds)"


def _row(mode, shape, train_s, rate, torch_s=None):
    B, T, I, H = bench.SHAPES[shape]
    r = dict(mode=mode, shape=shape, lengths="full", B=B, T=T, I=I, H=H, fastrnn_train_s=train_s,
             fastrnn_fwd_s=train_s / 3, flops_train=6 * T * B * H * (I + H), gemm_gflops=rate)
    if torch_s is not None:
        r.update(torch_train_s=torch_s, ratio_train=torch_s / train_s, torch_fwd_s=torch_s / 3,
                 ratio_fwd=1.0)
    return r


def test_render_uses_each_rows_gemm_rate():
    rows = [_row("rnn_tanh", "S4", 0.1, 100.0, torch_s=0.2), _row("gru", "S4", 0.1, 200.0)]
    result = dict(machine=dict(cpu="x", cpus=2, numpy="n", numba="m", torch="t"), gemm_gflops=100.0,
                  rows=rows)
    text = bench.render(result)
    assert "sgemm floor rate 100-200 GFLOP/s" in text, text
    want = [r["flops_train"] / (r["gemm_gflops"] * 1e9) / r["fastrnn_train_s"] for r in rows]
    got = []
    for line in text.splitlines():
        if line.startswith("| rnn_tanh | S4") or line.startswith("| gru | S4"):
            got.append(float(line.split("|")[7]))
    assert got == pytest.approx(want, abs=0.006), (got, want)
    assert "| rnn_tanh | S4 | full | 100.00 | 200.00 | 2.00 |" in text


def test_the_header_names_the_kernels_blas_core():
    from fastrnn import _threads
    info = bench.machine_info()
    assert info["kernels_blas"] == _threads.blas_core()
    base = dict(machine=dict(cpu="x", cpus=2, numpy="n", numba="m", torch=None), gemm_gflops=100.0, rows=[])
    assert "kernels' OpenBLAS: Haswell kernels;" in bench.render(
        dict(base, machine=dict(base["machine"], kernels_blas="Haswell")))
    assert "kernels' OpenBLAS" not in bench.render(base)


def test_the_header_names_what_the_kernels_were_tuned_by():
    # Numba's target, the packed block's width and the L2 size (numba_cpu's
    # bounds follow the last two), from this machine, in the JSON and the header
    from fastrnn import _threads
    from fastrnn._kernels.cpu import packed
    info = bench.machine_info()
    assert info["vector_lanes"] == packed._LANES
    assert info["l2_bytes"] == _threads.cache_bytes(2, None)
    assert isinstance(info["numba_target"], str) and info["numba_target"]
    base = dict(machine=dict(cpu="x", cpus=2, numpy="n", numba="m", torch=None), gemm_gflops=100.0, rows=[])
    text = bench.render(dict(base, machine=dict(base["machine"], numba_target="znver3", vector_lanes=8,
                                                l2_bytes=512 << 10)))
    assert "; Numba target znver3, 8-lane blocks, L2 512 KB;" in text, text
    assert "Numba target" not in bench.render(base) and "L2" not in bench.render(base)


def test_render_startup_table_with_and_without_the_threaded_columns():
    base = dict(machine=dict(cpu="x", cpus=2, numpy="n", numba="m", torch=None), gemm_gflops=100.0, rows=[])
    tiny = dict(import_s=0.1, cold_first_call_s=12.0, warm_first_call_s=0.7)
    text = bench.render(dict(base, startup={"lstm": tiny}))
    assert "| lstm | 0.10 | 12.0 | 0.70 | - | - |" in text, text
    text = bench.render(dict(base, startup={"gru": dict(tiny, cold_threaded_call_s=25.0,
                                                         warm_threaded_call_s=0.9)}))
    assert "| gru | 0.10 | 12.0 | 0.70 | 25.0 | 0.90 |" in text, text


def test_numba_floor_is_a_cold_then_a_cached_call():
    fl = bench.numba_floor()     # raises unless the second process loaded the cache
    assert fl["cold_first_call_s"] > 0 and fl["warm_first_call_s"] > 0, fl
    base = dict(machine=dict(cpu="x", cpus=2, numpy="n", numba="m", torch=None), gemm_gflops=100.0, rows=[])
    text = bench.render(dict(base, startup={"lstm": dict(import_s=0.1, cold_first_call_s=12.0,
                                                         warm_first_call_s=0.7)},
                             numba_floor=dict(cold_first_call_s=1.5, warm_first_call_s=0.9)))
    assert "cold 1.50 s, warm 0.90 s" in text, text


def test_command_line_help_and_info():
    out = subprocess.run([sys.executable, "-m", "fastrnn", "bench", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--full" in out.stdout and "--quick" in out.stdout, out.stderr
    out = subprocess.run([sys.executable, "-m", "fastrnn", "info"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "numba" in out.stdout and "numpy" in out.stdout, out.stdout


def test_fused_step_comparison_runs_both_forms_and_restores_the_bounds(monkeypatch):
    # benchmarks/bench_fused_step.py: both forward parts run and are timed,
    # the backend's bounds are as they were afterwards, and a bad shape is
    # named in the error
    import importlib.util
    import pathlib
    from fastrnn import _threads
    from fastrnn._backends import numba_cpu
    from fastrnn._kernels.cpu import lstm
    path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fused_step.py"
    spec = importlib.util.spec_from_file_location("bench_fused_step", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ran = []
    for name in ("lstm_forward_fused_rows_part", "lstm_forward_rows_part"):
        real = getattr(lstm, name)
        monkeypatch.setattr(lstm, name, lambda i, nth, *a, _r=real, _n=name: (ran.append(_n), _r(i, nth, *a)))
    monkeypatch.setattr(numba_cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(numba_cpu, "TINY_WORK", 0)
    monkeypatch.setattr(numba_cpu, "_torch_threads", lambda: 1)
    before = (numba_cpu.ROWS_MODES, numba_cpu.ROWS_MAX_WHH_BYTES, numba_cpu.FUSED_STEP_MAX_BYTES)
    out = mod.compare("4x5x3x6", 2, lengths=True)
    assert set(out) == {"fused_fw", "fused_fb", "unfused_fw", "unfused_fb"}
    assert all(len(v) == 2 and all(t > 0 for t in v) for v in out.values())
    if _threads.available_threads() >= 2:
        assert set(ran) == {"lstm_forward_fused_rows_part", "lstm_forward_rows_part"}, set(ran)
    assert (numba_cpu.ROWS_MODES, numba_cpu.ROWS_MAX_WHH_BYTES, numba_cpu.FUSED_STEP_MAX_BYTES) == before
    with pytest.raises(SystemExit, match="BxTxIxH"):
        mod.compare("S9", 1)
