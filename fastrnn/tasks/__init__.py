"""The four classic NLP tasks on fastrnn, plus the naive feed-forward baseline.

Every task module (autocomplete, translation, ner, sentiment) has the same
interface, which the CLI (`fastrnn train|eval|predict TASK`) drives:

    add_arguments(parser)          task-specific command-line options
    train(*, data=None, out=None, quick=False, seed=0, progress=True, **options) -> dict
        trains on `data` (a file or folder; None means the shared data), saves
        the best model to `out`, returns {"metrics": {...}, "seconds": s,
        "tokens_per_s": r, "history": {...}, "model": path}
    evaluate(model, *, data=None, **options) -> dict     metrics on the dev split
    predict(model, text, **options) -> JSON-serialisable result
"""
import importlib

TASKS = {
    "autocomplete": "fastrnn.tasks.autocomplete",
    "translation": "fastrnn.tasks.translation",
    "ner": "fastrnn.tasks.ner",
    "sentiment": "fastrnn.tasks.sentiment",
}


def get_task(name):
    """The task module ``name``; ValueError naming the valid tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {name!r}")
    return importlib.import_module(TASKS[name])
