"""fastrnn.torch under DistributedDataParallel: 2 processes, gloo, localhost.

Each rank takes half of a global batch; DDP averages the gradients of the
per-rank mean losses, which must equal the gradients of one process's mean
loss over the whole batch (float64, to 1e-10).  The workers are this file run
as a script, in subprocesses with hard timeouts, so the test cannot hang.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="fastrnn.torch needs PyTorch (pip install fastrnn[torch])")

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
V, E, H, C, T, GLOBAL_B = 11, 4, 5, 3, 6, 6      # GLOBAL_B splits evenly across ranks
TIMEOUT_S = 120                                   # whole test, workers included


def build_model():
    import fastrnn.torch as frt

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(V, E)
            self.lstm = frt.LSTM(E, H, batch_first=True, bidirectional=True)
            self.gru = frt.GRU(2 * H, H, batch_first=True)
            self.out = torch.nn.Linear(H, C)

        def forward(self, tok):
            y, _ = self.lstm(self.emb(tok))
            y, _ = self.gru(y)
            return self.out(y)

    torch.manual_seed(1234)
    return Tagger().double()


def global_batch():
    g = torch.Generator().manual_seed(99)
    return torch.randint(0, V, (GLOBAL_B, T), generator=g), torch.randint(0, C, (GLOBAL_B, T), generator=g)


def loss_of(model, tok, tag):
    return torch.nn.functional.cross_entropy(model(tok).reshape(-1, C), tag.reshape(-1))


def worker(rank, port, out_dir):
    """One DDP rank: one step on its half of the global batch; saves its gradients."""
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        model = DDP(build_model())
        tok, tag = global_batch()
        per = GLOBAL_B // WORLD
        part = slice(rank * per, (rank + 1) * per)
        loss = loss_of(model, tok[part], tag[part])
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.module.named_parameters()}
        torch.save({"loss": loss.item(), "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_ranks_match_single_process(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(port), str(tmp_path)], env=env,
                              cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(WORLD)]
    logs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            logs.append(out)
    except subprocess.TimeoutExpired:
        pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"DDP rank {rank} exit code {p.returncode}; its output:\n{log[-4000:]}"

    # the single-process reference: same seed, the whole batch, mean loss
    torch.set_num_threads(1)
    model = build_model()
    tok, tag = global_batch()
    full = loss_of(model, tok, tag)
    full.backward()
    want = {n: p.grad for n, p in model.named_parameters()}

    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    mean_loss = sum(r["loss"] for r in ranks) / WORLD
    assert abs(mean_loss - full.item()) < 1e-10, f"mean of rank losses {mean_loss} vs full-batch loss {full.item()}"
    for r, res in enumerate(ranks):
        assert set(res["grads"]) == set(want), f"rank {r} parameter names {sorted(res['grads'])}"
        for n, g in want.items():
            torch.testing.assert_close(res["grads"][n], g, rtol=1e-9, atol=1e-10,
                                       msg=lambda m, n=n, r=r: f"rank {r} DDP grad of {n} vs single process: {m}")


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
