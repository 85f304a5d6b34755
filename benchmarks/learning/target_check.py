"""The imitation learning target read off an eval curve: >= 90% of the expert's return from some
evaluation within 100k env steps to the end of the run (used by imitation_learning.py).

    python benchmarks/learning/target_check.py      # self-check on made-up curves (a second)
"""

from __future__ import annotations

from typing import Any


def target_check(rows: list[dict[str, Any]], expert_return: float, *, fraction: float = 0.9,
                 within_env_steps: int = 100_000) -> dict[str, Any]:
    """The imitation learning target on an eval curve (``imitate.read_metrics`` rows): the curve reaches ``fraction``
    of the expert's return within ``within_env_steps`` and stays there until the end of the run.

    Read as: some evaluation at or before ``within_env_steps`` from which every evaluation to the end is
    at or above the threshold, confirmed by at least one later evaluation (a run that gets there only
    at its last evaluation has not shown that it stays). An earlier hit followed by a dip is reported
    (``first_env_step``, ``worst_after_first``), not hidden. Assumes a positive expert return.

    Returns {threshold, first_env_step, settled_env_step, met, best, worst_after_first,
    worst_after_first_env_step, final, final_env_step}; the env steps are None where there is none.
    """
    if not rows:
        raise ValueError("target_check needs at least one evaluation row")
    thr = fraction * float(expert_return)
    rets = [(int(r["env_step"]), float(r["eval_return_mean"])) for r in rows]
    first = next((s for s, v in rets if s <= within_env_steps and v >= thr), None)
    k = len(rets)  # start of the trailing run of evaluations at or above the threshold
    while k > 0 and rets[k - 1][1] >= thr:
        k -= 1
    settled = rets[k][0] if k <= len(rets) - 2 and rets[k][0] <= within_env_steps else None
    after = [(s, v) for s, v in rets if first is not None and s >= first]
    worst = min(after, key=lambda sv: sv[1]) if after else (None, None)
    return {"threshold": thr, "first_env_step": first, "settled_env_step": settled, "met": settled is not None,
            "best": max(v for _, v in rets), "worst_after_first": worst[1], "worst_after_first_env_step": worst[0],
            "final": rets[-1][1], "final_env_step": rets[-1][0]}


def describe_target(check: dict[str, Any], expert_return: float) -> str:
    """One line for a person: whether ``target_check`` holds and, if not, where the curve falls short."""
    def ret(v: float) -> str:
        return f"{v:.1f} ({100 * v / expert_return:.1f}%)"

    thr, first, settled = f"{check['threshold']:.1f}", check["first_env_step"], check["settled_env_step"]
    dip = (f"{ret(check['worst_after_first'])} at {check['worst_after_first_env_step'] // 1000}k"
           if first is not None else "")
    if check["met"]:
        line = f"met: at or above {thr} from {settled // 1000}k env steps to the end, final {ret(check['final'])}"
        if first < settled:
            line += f" (first reached at {first // 1000}k, then down to {dip})"
        return line
    if first is None:
        return f"not met: never reached {thr} in time; best {ret(check['best'])}"
    if first == check["final_env_step"]:
        return f"not met: reached {thr} only at the last evaluation, {ret(check['final'])}: run longer to tell"
    line = f"not met: reached {thr} at {first // 1000}k env steps, fell to {dip}, final {ret(check['final'])}"
    if check["final"] >= check["threshold"]:
        line += " (above it again at the end, but only from the last evaluation or after the deadline)"
    return line


def _curve(*returns: float) -> list[dict[str, Any]]:
    return [{"env_step": 10_000 * (i + 1), "eval_return_mean": r} for i, r in enumerate(returns)]


#: (returns every 10k env steps, first env step at or above 90% of 1000 in time, start of the settled run)
CASES = [
    ((100, 500, 910, 950, 905, 990), 30_000, 30_000),   # reaches 90% at 30k and never drops below
    ((100, 950, 600, 950, 960), 20_000, 40_000),        # a dip after the first hit, then stays from 40k
    ((100, 950, 600, 950), 20_000, None),               # back above only at the last evaluation
    ((100, 899.9, 899.9), None, None),                  # just short of 90% of 1000
    ((100,) * 10 + (1000, 1000), None, None),           # only after 100k env steps: too late
    ((100,) * 9 + (1000,), 100_000, None),              # reached at the last evaluation: stays unshown
]


def self_check() -> None:
    """Assert the reading of the target on :data:`CASES` and the wording of its one-line description."""
    for returns, first, settled in CASES:
        check = target_check(_curve(*returns), 1000.0)
        assert abs(check["threshold"] - 900.0) < 1e-9, check
        assert check["first_env_step"] == first and check["settled_env_step"] == settled, (returns, check)
        assert check["met"] is (settled is not None), check
        line = describe_target(check, 1000.0)
        assert line.startswith("met:" if check["met"] else "not met:") and "900.0" in line, line
        if first is not None and first != settled and first < 100_000:
            assert "600.0 (60.0%) at 30k" in line, line  # the dip after the first hit is named, met or not
        if first == 100_000:
            assert "only at the last evaluation" in line, line
        print(f"{str(returns):<48} {line}")
    print("target_check: all cases hold")


if __name__ == "__main__":
    self_check()
