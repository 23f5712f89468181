"""lm-evaluation-harness tasks inside ``dso eval`` (``eval.lm_eval_tasks=[...]``): the loaded model,
steered by the run's artifact at every strength, through :class:`~dso_cli.integrations.lm_eval.DsoLM`;
one ``eval.csv`` row per task and strength, every metric in ``eval_lm_eval.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dso_cli.errors import DsoError

PRIMARY = ("acc", "acc_norm", "exact_match", "f1", "mcc")  # the metric shown as capability_acc, first found


def task_manager(include_path: str | None, tasks: Sequence[str] = ()) -> Any:
    """lm-eval's task index (with ``include_path``'s YAML tasks); one line if lm-eval is not installed.

    When ``include_path`` alone holds every one of ``tasks``, only it is indexed: indexing lm-eval's
    thousands of built-in task files takes about 9 s on a CPU and is done only when a task needs them."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise DsoError("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'dso-cli[lm-eval]'") from None
    if include_path and tasks:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            return local
    return TaskManager(include_path=include_path)


def check_tasks(tasks: Sequence[str], include_path: str | None) -> Any:
    """The task manager, after checking that every task is known (before any model loads)."""
    manager = task_manager(include_path, tasks)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" (with eval.lm_eval_include_path={include_path})" if include_path else ""
        raise DsoError(f"unknown lm-eval task {unknown[0]!r}{where}; a local task needs eval.lm_eval_include_path=DIR")
    return manager


def split_metrics(results: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's ``{"acc,none": v, "acc_stderr,none": se}`` as rows ``metric, filter, value, stderr``."""
    rows = []
    for key, value in results.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue
        stderr = results.get(f"{metric}_stderr,{filt}")
        rows.append({"metric": metric, "filter": filt, "value": float(value),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) else float("nan")})  # fmt: skip
    return rows


def harness_rows(
    loaded: Any,
    artifact: Any,
    strengths: Sequence[float],
    tasks: Sequence[str],
    manager: Any,
    *,
    limit: int | None = None,
    batch_size: int = 8,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(eval rows, metric rows)`` of ``tasks`` at every strength (artifact None: the base model)."""
    from lm_eval import simple_evaluate

    from dso_cli.integrations.lm_eval import DsoLM

    eval_rows, metric_rows = [], []
    for strength in strengths:
        lm = DsoLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, artifact=artifact, strength=strength,
                   batch_size=batch_size)  # fmt: skip
        try:
            out = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False)
        finally:
            lm.close()
        for task, results in (out or {}).get("results", {}).items():
            metrics = split_metrics(results)
            metric_rows += [{"task": task, "alpha": strength, **m} for m in metrics]
            primary = next((m for name in PRIMARY for m in metrics if m["metric"] == name), None)
            row: dict[str, Any] = {"benchmark": f"lm_eval/{task}", "split": "lm_eval", "alpha": strength}
            if primary is not None:
                row |= {"capability_acc": primary["value"], "capability_acc_se": primary["stderr"]}
            eval_rows.append(row)
    return eval_rows, metric_rows
