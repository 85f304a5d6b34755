"""``cdred sweep-merge``: one results table from the ``results.csv`` of several sweeps.

A grid is often run in parts: a few tasks or one method at a time, on different machines or work dirs.
Merging their ``results.csv`` files gives the table a reader wants: per task and method the final
evaluation over seeds, the IQM across tasks and one figure per task with every method's curve. A run is
identified by (task, method, seed); the same run in two sources must be the same artifacts (imitate and
eval keys), otherwise the merge stops. The expert and random levels are not in ``results.csv``: the
figures show the curves only, and each source's ``summary.md`` keeps its command, setting and levels.

A source given as ``FOLDER:LABEL`` has LABEL added to its methods' names (``cdred (pixels)``), so that the
same method run in two settings (state and pixels, two machines, two code versions) becomes two curves
of one figure instead of a clash.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdred_pipeline.errors import UsageError
from cdred_pipeline.stages.sweep import (CSV_COLUMNS, METHODS, SweepResult, csv_text, figure_name, method_table, plot_task,
                                         results_lines, sort_key, write_text_atomic)

#: Column parsers of results.csv; an empty cell of an optional column is None.
_INT = ("seed", "env_steps", "episodes")
_FLOAT = ("return", "wall_time_s")
_OPTIONAL_FLOAT = ("success", "normalized_score")


def parse_source(spec: str | Path) -> tuple[Path, str | None]:
    """A SOURCE argument: a sweep folder or results.csv, optionally followed by ``:LABEL``."""
    path = Path(spec)
    if path.exists() or ":" not in str(spec):
        return path, None
    head, _, label = str(spec).rpartition(":")
    if not label.strip() or "," in label:
        raise UsageError(f"{spec}: a label after ':' must be a non-empty name without commas (FOLDER:LABEL)")
    return Path(head), label.strip()


def results_csv(source: Path) -> Path:
    """The results.csv of a sweep folder, or ``source`` itself when it is a file."""
    path = source / "results.csv" if source.is_dir() else source
    if not path.is_file():
        raise UsageError(f"{path} not found: give a sweep folder (it holds results.csv) or a results.csv file")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of one sweep's results.csv with their types; a file of other columns or a bad cell is a
    one-line UsageError naming the file and line."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise UsageError(f"{path} is not a cdred sweep results.csv: its columns are "
                             f"{','.join(reader.fieldnames or ())}, expected {','.join(CSV_COLUMNS)}")
        rows = []
        for line, raw in enumerate(reader, start=2):
            try:
                row: dict[str, Any] = dict(raw)
                row.update({k: int(raw[k]) for k in _INT})
                row.update({k: float(raw[k]) for k in _FLOAT})
                row.update({k: float(raw[k]) if raw[k] != "" else None for k in _OPTIONAL_FLOAT})
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{path} line {line}: {exc}; is it a cdred sweep results.csv?") from None
            if row["point"] not in ("curve", "final"):
                raise UsageError(f"{path} line {line}: point {row['point']!r} is neither curve nor final")
            rows.append(row)
    return rows


def merge_rows(sources: Sequence[tuple[Path, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The rows of every run in the sources, sorted; a run in several sources is taken once when it is the
    same artifacts there, and is a UsageError when it is not."""
    runs: dict[tuple[str, str, int], tuple[Path, set[tuple[str, str]], list[dict[str, Any]]]] = {}
    for path, rows in sources:
        by_run: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for r in rows:
            by_run.setdefault((r["task"], r["method"], r["seed"]), []).append(r)
        for run, run_rows in by_run.items():
            keys = {(r["imitate_key"], r["eval_key"]) for r in run_rows}
            if run not in runs:
                runs[run] = (path, keys, run_rows)
            elif runs[run][1] != keys:
                task, method, seed = run
                raise UsageError(f"{task} {method} seed {seed} is a different run in {runs[run][0]} and in {path} "
                                 f"(imitate/eval keys {sorted(runs[run][1])} against {sorted(keys)}); merge sweeps "
                                 "that share no run, leave one of them out, or label one (FOLDER:LABEL)")
    return sorted((r for _, _, run_rows in runs.values() for r in run_rows), key=sort_key)


def summary_text(name: str, sources: Sequence[tuple[Path, list[dict[str, Any]]]], rows: list[dict[str, Any]],
                 tasks: Sequence[str], methods: Sequence[str]) -> str:
    """summary.md of a merge: the sources (their runs, tasks and methods), the final env steps, the results."""
    lines = [f"# cdred sweep-merge `{name}`", "", "Merged from these sweeps' results.csv (each folder's summary.md "
             "holds the command that made it, its setting and the expert's and random policy's levels):", ""]
    for path, src_rows in sources:
        finals = [r for r in src_rows if r["point"] == "final"]
        lines.append(f"- `{path}`: {len(finals)} runs; tasks {', '.join(dict.fromkeys(r['task'] for r in finals))}; "
                     f"methods {', '.join(dict.fromkeys(r['method'] for r in finals))}")
    finals = [r for r in rows if r["point"] == "final"]
    steps = sorted({r["env_steps"] for r in finals})
    lines += ["", f"{len(finals)} runs; env steps at the final evaluation: {', '.join(map(str, steps))}"
              + (" (the sources differ: compare methods at equal budgets)" if len(steps) > 1 else "") + ".", ""]
    return "\n".join(lines + results_lines(tasks, methods, rows)) + "\n"


def labelled(rows: list[dict[str, Any]], label: str | None) -> list[dict[str, Any]]:
    """The rows with ``label`` added to each method's name (``cdred`` -> ``cdred (label)``); as they are
    without one."""
    return rows if label is None else [{**r, "method": f"{r['method']} ({label})"} for r in rows]


def merge(sources: Sequence[str | Path], out: Path, *, name: str | None = None) -> SweepResult:
    """Merge the sweeps' results.csv files into ``out``: results.csv, summary.md and figures/<task>.png.
    A source ``FOLDER:LABEL`` has LABEL added to its methods' names."""
    specs = [parse_source(s) for s in sources]
    paths = [results_csv(path) for path, _ in specs]
    out = Path(out)
    for p in paths:
        if p.resolve().parent == out.resolve():
            raise UsageError(f"--out {out} is a source of the merge: write the merge to a folder of its own")
    read = [(p, labelled(read_results(p), label)) for p, (_, label) in zip(paths, specs)]
    rows = merge_rows(read)
    finals = [r for r in rows if r["point"] == "final"]
    if not finals:
        raise UsageError(f"no finished run in {', '.join(map(str, paths))}: nothing to merge")
    tasks = tuple(dict.fromkeys(r["task"] for _, src in read for r in src))
    seen = list(dict.fromkeys(r["method"] for _, src in read for r in src))
    order = list(METHODS)  # the registry's order (cdred first), then methods it does not know as they come
    methods = tuple(sorted(seen, key=lambda m: order.index(m) if m in order else len(order)))
    name = name or out.name
    (out / "figures").mkdir(parents=True, exist_ok=True)
    csv_path, summary_path = out / "results.csv", out / "summary.md"
    write_text_atomic(csv_path, csv_text(rows))
    figures = [out / "figures" / figure_name(t) for t in tasks]
    for task, fig in zip(tasks, figures):
        plot_task(fig, task, methods, rows, {}, f"merge {name}")
    write_text_atomic(summary_path, summary_text(name, read, rows, tasks, methods))
    return SweepResult(folder=out, csv=csv_path, summary=summary_path, figures=figures,
                       table=method_table(tasks, methods, rows), failed=[], runs=len(finals))
