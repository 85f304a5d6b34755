"""The ``cdred`` command line: parses options, calls a stage function, prints the outcome.

No logic lives here beyond option parsing and printing; every stage is a plain function in
``cdred_pipeline.stages``. Errors that are the user's to fix (:class:`CdredError`) print one line and
exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cdred_pipeline import __version__
from cdred_pipeline.errors import CdredError


class _Group(click.Group):
    """A click group that turns CdredError into a one-line message and an exit code."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except CdredError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work units are kept; rerun the same command to resume", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdred")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("cdred-runs"),
              show_default=True, envvar="CDRED_WORKDIR", help="Where cached stage artifacts live.")
@click.option("-v", "--verbose", count=True, help="More output (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and final results; no progress bars.")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, workdir: Path, verbose: int, quiet: bool, debug: bool) -> None:
    """cdred: world-model online imitation learning (CDRED) as cached pipeline stages.

    \b
    Stages:  collect-experts -> render-visual -> package -> imitate -> evaluate
    Whole chain: cdred pipeline TASK
    """
    ctx.ensure_object(dict)
    ctx.obj.update(workdir=workdir, verbose=verbose, quiet=quiet, debug=debug)


def _store(ctx: click.Context):
    from cdred_pipeline.artifacts import ArtifactStore

    return ArtifactStore(ctx.obj["workdir"])


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


# ----------------------------------------------------------------------------------------- envs
# (owned by the environment layer)

# ------------------------------------------------------------------------------ status / show
def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _headline(manifest: dict) -> str:
    head = manifest.get("headline") or {}
    if manifest.get("status") == "corrupt":
        return manifest.get("error", "")[:60]
    parts = []
    for k, v in list(head.items())[:3]:
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """List cached artifacts: stage, key, status, age, headline figure."""
    import time

    arts = _store(ctx).list()
    if not arts:
        click.echo(f"no artifacts under {ctx.obj['workdir']}")
        return
    now = time.time()
    click.echo(f"{'stage':<16} {'key':<17} {'status':<9} {'age':>5}  headline")
    for a in arts:
        m = a.manifest
        age = _age(now - float(m.get("updated", m.get("created", now))))
        click.echo(f"{a.stage:<16} {a.key:<17} {m.get('status', '?'):<9} {age:>5}  {_headline(m)}")


@main.command()
@click.argument("key")
@click.pass_context
def show(ctx: click.Context, key: str) -> None:
    """Print one artifact's manifest (KEY may be a unique prefix)."""
    art = _store(ctx).find(key)
    if art.manifest.get("status") == "corrupt":
        raise CdredError(art.manifest["error"])
    click.echo(f"# {art.path}")
    _echo_json(art.manifest)


# ------------------------------------------------------------------------------------- package
# (owned by the dataset issue)

# ----------------------------------------------------------------------------- collect-experts
# (owned by the agent issue)

# ------------------------------------------------------------------------------- render-visual

# ------------------------------------------------------------------------------------- imitate

# ------------------------------------------------------------------------------------ evaluate

# ------------------------------------------------------------------------------------ pipeline


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
