"""Command line: `fastrnn info | bench | train | eval | predict`.

    fastrnn info                                  backends, availability and why
    fastrnn bench [--quick|--full] [--modes ...]  kernels against torch.nn and the reference
    fastrnn train TASK [--data PATH] [--out MODEL] [--quick]
    fastrnn eval TASK --model MODEL [--data PATH]
    fastrnn predict TASK --model MODEL "text"
TASK is one of autocomplete, translation, ner, sentiment.
"""
from __future__ import annotations

import argparse
import json
import sys


def _info(a):
    import fastrnn
    print(f"fastrnn {fastrnn.__version__}")
    print("backends (auto-selection: cupy for CuPy arrays, else the highest-priority available "
          "backend for NumPy arrays; FASTRNN_BACKEND or backend= override):")
    for info in fastrnn.backends().values():
        print(f"  {info}")
    return 0


def _bench(a):
    from . import bench
    bench.main_from_args(a)
    return 0


def _task_parser(sub, name, help_, task_options):
    p = sub.add_parser(name, help=help_)
    p.add_argument("task", choices=["autocomplete", "translation", "ner", "sentiment"])
    return p


def _train(a, rest):
    from .tasks import get_task
    mod = get_task(a.task)
    p = argparse.ArgumentParser(prog=f"fastrnn train {a.task}")
    p.add_argument("--data", default=None, help="data file or folder (default: the shared data)")
    p.add_argument("--out", default=None, help=f"where to save the model (default models/{a.task}.npz)")
    p.add_argument("--quick", action="store_true", help="a tiny smoke-run configuration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    mod.add_arguments(p)
    o = vars(p.parse_args(rest))
    data, out, quick, seed = o.pop("data"), o.pop("out"), o.pop("quick"), o.pop("seed")
    progress = not o.pop("no_progress")
    res = mod.train(data=data, out=out, quick=quick, seed=seed, progress=progress, **o)
    print(json.dumps({k: v for k, v in res.items() if k != "history"}, indent=1, default=str))
    return 0


def _eval(a, rest):
    from .tasks import get_task
    mod = get_task(a.task)
    p = argparse.ArgumentParser(prog=f"fastrnn eval {a.task}")
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=None)
    o = vars(p.parse_args(rest))
    res = mod.evaluate(o.pop("model"), data=o.pop("data"))
    print(json.dumps(res, indent=1, default=str))
    return 0


def _predict(a, rest):
    from .tasks import get_task
    mod = get_task(a.task)
    p = argparse.ArgumentParser(prog=f"fastrnn predict {a.task}")
    p.add_argument("--model", required=True)
    p.add_argument("text", nargs="+")
    o = vars(p.parse_args(rest))
    res = mod.predict(o["model"], " ".join(o["text"]))
    print(json.dumps(res, indent=1, ensure_ascii=False, default=str))
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="fastrnn", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="backends and why one is unavailable")
    from . import bench
    bench.add_arguments(sub.add_parser("bench", help="benchmark against torch.nn and the reference"))
    for name, h in (("train", "train a task model"), ("eval", "evaluate a saved task model"),
                    ("predict", "run a saved task model on text")):
        sp = sub.add_parser(name, help=h, add_help=False)
        sp.add_argument("task", choices=["autocomplete", "translation", "ner", "sentiment"])
    a, rest = p.parse_known_args(argv)
    try:
        if a.cmd == "info":
            return _info(a)
        if a.cmd == "bench":
            if rest:
                p.error(f"unrecognized arguments: {' '.join(rest)}")
            return _bench(a)
        return {"train": _train, "eval": _eval, "predict": _predict}[a.cmd](a, rest)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"fastrnn {a.cmd}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
