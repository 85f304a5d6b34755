"""The ``cdred`` command line: parses options, calls a stage function, prints the outcome.

No logic lives here beyond option parsing and printing; every stage is a plain function in
``cdred_pipeline.stages``. Errors that are the user's to fix (:class:`CdredError`) print one line and
exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click

from cdred_pipeline import __version__
from cdred_pipeline.envs import OBS_KINDS, RENDER_PROFILES, SUITES, reports_success
from cdred_pipeline.errors import EXIT_CODES, CdredError, UsageError
from cdred_pipeline.executor import apply_threads
from cdred_pipeline.os_errors import as_user_error
from cdred_pipeline.presets import AGENT_PRESETS, PIPELINE_PRESETS
from cdred_pipeline.stages import envs as envs_stage
from cdred_pipeline.stages.collect_experts import POLICIES, CollectConfig
from cdred_pipeline.stages.evaluate import EvalConfig, parse_tremble_list
from cdred_pipeline.stages.imitate import ImitateConfig
from cdred_pipeline.stages.package import EXPORT_FORMATS, IMPORT_FORMATS, import_
from cdred_pipeline.stages.pipeline import EXPERT_POLICIES, PipelineConfig
from cdred_pipeline.stages.render_visual import RenderConfig
from cdred_pipeline.stages.sweep import METHODS, SweepConfig

logger = logging.getLogger(__name__)


def default_of(owner: Any, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``owner`` (or of parameter ``name`` of the function
    ``owner``): every option's default is read from the code it feeds, never typed a second time."""
    if dataclasses.is_dataclass(owner):
        f = {f.name: f for f in dataclasses.fields(owner)}[name]
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        default = f.default
    else:
        default = inspect.signature(owner).parameters[name].default
    if default is dataclasses.MISSING or default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}.{name} has no default")
    return default


def comma_items(text: str) -> list[str]:
    """The stripped items of a comma list; an empty item (``"0.1,,0.2"``, a trailing comma) is an error, not
    skipped, so what runs is exactly what was typed."""
    items = [s.strip() for s in str(text).split(",")]
    if any(not s for s in items):
        raise click.BadParameter(f"{text!r} has an empty item: write the values separated by single commas")
    return items


def distinct(values: tuple, text: str) -> tuple:
    """``values`` when no value repeats, else an error naming the repeated one (a repeated setting would run
    twice and be reported as one)."""
    seen: set = set()
    for v in values:
        if v in seen:
            raise click.BadParameter(f"{text!r} lists {v!r} twice: name each value once")
        seen.add(v)
    return values


def seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` -> (0, 1, 2): at least one seed, each a distinct integer >= 0."""
    try:
        out = tuple(int(s) for s in comma_items(text))
    except ValueError:
        raise click.BadParameter(f"must be a comma list of integers, got {text!r}") from None
    negative = [s for s in out if s < 0]
    if negative:
        raise click.BadParameter(f"seeds are integers >= 0, got {negative[0]} in {text!r}")
    return distinct(out, text)


def tremble_list(text: str) -> tuple[float, ...]:
    """``"0,0.1"`` -> (0.0, 0.1): distinct tremble probabilities in [0, 1] (:func:`parse_tremble_list`)."""
    try:
        return parse_tremble_list(text)
    except UsageError as exc:
        raise click.BadParameter(str(exc)) from None


def name_list(text: str) -> tuple[str, ...]:
    """``"a,b"`` -> ("a", "b"): distinct non-empty names."""
    return distinct(tuple(comma_items(text)), text)


class CommaList(click.ParamType):
    """A comma list option parsed by ``parse``; a tuple (a dataclass default) passes through as it is."""

    name = "list"

    def __init__(self, parse: Callable[[str], tuple]) -> None:
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple:  # noqa: D102
        return tuple(value) if isinstance(value, (tuple, list)) else self.parse(value)


class LazyChoice(click.Choice):
    """The choice set ``module.name``, imported on first use: the agent and reward packages load torch,
    which ``cdred --help``, ``status``, ``show``, ``package`` and ``envs`` do not need."""

    def __init__(self, module: str, name: str) -> None:  # noqa: D107
        self.where = (module, name)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # noqa: D102
        module, name = self.where
        return tuple(getattr(importlib.import_module(module), name))


REWARD_MODES = LazyChoice("cdred_pipeline.reward.config", "MODES")
G_CHOICES = LazyChoice("cdred_pipeline.reward.config", "G_NAMES")
INIT_CHOICES = LazyChoice("cdred_pipeline.reward.config", "INITS")
REWARD_SPACE_CHOICES = LazyChoice("cdred_pipeline.agent.config", "REWARD_SPACES")
TREMBLE_LIST = CommaList(tremble_list)
SEED_LIST = CommaList(seed_list)
NAME_LIST = CommaList(name_list)
SEED = click.IntRange(min=0)
POSITIVE = click.IntRange(min=1)
COUNT = click.IntRange(min=0)


def one_line(text: str) -> str:
    """``text`` on one line (an error is always one line on stderr)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class _Group(click.Group):
    """A click group that turns CdredError and click's own usage errors into a one-line message and an exit
    code of :data:`~cdred_pipeline.errors.EXIT_CODES`."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:  # noqa: D102
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rc = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f" (`{exc.ctx.command_path} --help` lists the options)" if exc.ctx is not None else ""
            click.echo(f"error: {one_line(exc.format_message())}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        sys.exit(rc if isinstance(rc, int) else 0)

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except Exception as exc:  # noqa: BLE001 - only CdredErrors and write failures become one line
            err = as_user_error(exc, (ctx.obj or {}).get("workdir", ".")) or exc
            if not isinstance(err, CdredError) or (ctx.obj and ctx.obj.get("debug")):
                raise
            click.echo(f"error: {one_line(str(err))}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work units are kept; rerun the same command to resume", err=True)
            ctx.exit(130)


_THREADS_HELP = ("CPU threads (torch, at most the cores) of this run and of each worker of --workers or "
                 "--ray-address. 0: OMP_NUM_THREADS when set, else 1, so that a run sharing the cores slows down "
                 "by its share of them; on idle cores more threads are faster (e.g. --threads 2 on an idle "
                 "2-core machine). GPU work is unaffected.")


_EXIT_EPILOG = "\b\nExit codes (docs/cli.md):\n" + "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_CODES.items())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EXIT_EPILOG)
@click.version_option(__version__, prog_name="cdred")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("cdred-runs"),
              show_default=True, envvar="CDRED_WORKDIR", help="Where cached stage artifacts live.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and final results; no progress bars.")
@click.option("-v", "--verbose", count=True, help="Progress messages on stderr: -v INFO, -vv DEBUG (-q wins).")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True, help=_THREADS_HELP)
@click.pass_context
def main(ctx: click.Context, workdir: Path, quiet: bool, verbose: int, debug: bool, threads: int) -> None:
    """cdred: world-model online imitation learning (CDRED) as cached pipeline stages.

    \b
    Stages:  collect-experts -> render-visual -> package -> imitate -> evaluate
    Whole chain: cdred pipeline TASK
    """
    from cdred_pipeline.envs.gl import choose_headless_backend

    ctx.ensure_object(dict)
    setup_logging(verbose, quiet)
    # before anything imports mujoco, which fixes the backend at import
    ctx.obj.update(workdir=workdir, quiet=quiet, debug=debug, threads=apply_threads(threads),
                   gl_default=choose_headless_backend())


def _check_gl(ctx: click.Context, *, rendering: bool = True) -> None:
    """Before a command that runs MuJoCo: a MUJOCO_GL that breaks ``import mujoco`` is a one-line error; when
    the command renders, say once on stderr which backend was chosen for an unset MUJOCO_GL."""
    from cdred_pipeline.envs.gl import check_gl_env

    check_gl_env()
    chosen = ctx.obj.pop("gl_default", None) if rendering else None
    if chosen:
        click.echo(f"note: MUJOCO_GL is unset and there is no display: rendering with MUJOCO_GL={chosen} "
                   "(set MUJOCO_GL to choose another backend)", err=True)


def check_workdir(workdir: Path) -> Path:
    """``--workdir`` as a folder this process can write in, created when missing; a one-line UsageError
    otherwise, before any work starts."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--workdir {workdir}: cannot create it ({exc.strerror or exc}); pass a folder you can "
                         "write in (or set CDRED_WORKDIR)") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir}: not writable; pass a folder you can write in (or set CDRED_WORKDIR)")
    return workdir


def _store(ctx: click.Context, *, write: bool = True) -> Any:
    """The artifact store of ``--workdir`` (checked writable first when the command writes into it)."""
    from cdred_pipeline.artifacts import ArtifactStore

    if write and not ctx.obj.get("workdir_ok"):
        check_workdir(ctx.obj["workdir"])
        ctx.obj["workdir_ok"] = True
    return ArtifactStore(ctx.obj["workdir"], replay=ctx.obj.get("replay"))


def _cached_line(art: Any, started: float) -> str | None:
    """``cached: ...`` when ``art`` was complete before ``started`` (taken from the cache, nothing run now)."""
    if float(art.manifest.get("finished", 0) or 0) >= started:
        return None
    return f"cached: {art.stage}/{art.key} was complete already, nothing run now (--force redoes it)"


def _echo_cached(art: Any, started: float) -> None:
    line = _cached_line(art, started)
    if line:
        click.echo(line)


def _progress(ctx: click.Context) -> bool:
    return not ctx.obj["quiet"]


# --------------------------------------------------------------------------- config files and replays
def setup_logging(verbose: int, quiet: bool) -> None:
    """Progress messages of the ``cdred_pipeline`` loggers (and this module's) as one line each on stderr:
    WARNING by default and with -q, INFO with -v, DEBUG with -vv."""
    level = logging.WARNING if quiet or not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("cdred-cli")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    for name in ("cdred_pipeline", __name__):
        log = logging.getLogger(name)
        for old in [h for h in log.handlers if h.get_name() == "cdred-cli"]:
            log.removeHandler(old)
        log.addHandler(handler)
        log.setLevel(level)


def config_keys(command: click.Command) -> dict[str, str]:
    """Every key a config file of ``command`` may use (option spellings and parameter names, dashes as
    underscores) -> the parameter it sets."""
    keys: dict[str, str] = {}
    for param in command.params:
        if not param.expose_value or param.name is None:
            continue
        for spelling in (param.name, *(o.lstrip("-") for o in param.opts)):
            keys[spelling.replace("-", "_")] = param.name
    return keys


def config_values(data: dict, command: click.Command, where: str) -> dict[str, Any]:
    """A config mapping (a YAML file, a replay record) as ``command``'s default map: keys checked (one-line
    UsageError listing the valid ones), lists written as the comma lists the options parse."""
    keys = config_keys(command)
    unknown = [str(k) for k in data if str(k).replace("-", "_") not in keys]
    if unknown:
        valid = sorted({p.opts[0].lstrip("-") if p.opts else p.name for p in command.params
                        if p.expose_value and p.name})
        raise UsageError(f"{where}: unknown key {unknown[0]!r} for `cdred {command.name}`; valid keys: "
                         f"{', '.join(valid)}")
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            raise UsageError(f"{where}: {k} is a mapping; give a value, a list or a comma string")
        out[keys[str(k).replace("-", "_")]] = ",".join(str(x) for x in v) if isinstance(v, list) else v
    return out


def read_config(path: Path, command: click.Command) -> dict[str, Any]:
    """The default map of ``command`` from the YAML file ``path`` (``option: value`` lines)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path}: not valid YAML ({one_line(str(exc))})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: must be a mapping of option: value lines, got a {type(data).__name__}")
    return config_values(data, command, f"--config {path}")


def _apply_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """``--config FILE``: its values become the command's defaults, so flags on the command line win."""
    if value is None or ctx.resilient_parsing:
        return
    values = read_config(value, ctx.command)
    logger.info("config %s sets %s", value, ", ".join(sorted(values)) or "nothing")
    ctx.default_map = {**(ctx.default_map or {}), **values}


_NOT_REPLAYED = ("force", "workers", "ray_address", "gpus_per_run", "log")
"""Parameters a replay leaves at their defaults: they change where, whether and with which side logs work
runs, never its result."""


def _portable(value: Any) -> Any:
    """A parameter value for a replay record: a path that exists here made absolute (a replay may start in
    another folder), tuples as lists."""
    if isinstance(value, (tuple, list)):
        return [_portable(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and ("/" in value or value.endswith((".pt", ".zarr")))):
        return str(Path(value).resolve()) if Path(value).exists() else str(value)
    return value


def replay_of(ctx: click.Context) -> dict[str, Any]:
    """How to make this command's artifacts again: its name and every setting (``cdred rerun`` replays it)."""
    return {"command": ctx.command.name,
            "params": {k: _portable(v) for k, v in ctx.params.items() if k not in _NOT_REPLAYED}}


def log_option(what: str) -> Callable[[Any], Any]:
    """The ``--log tensorboard|wandb`` option of a stage that trains; ``what`` says which metrics go there."""
    return click.option("--log", type=click.Choice(("tensorboard", "wandb")), multiple=True,
                        help=f"Also log {what} to TensorBoard (<artifact>/tb) or W&B (offline, <workdir>/.wandb); "
                             "repeatable. metrics.jsonl stays the record; not in the cache key. docs/logging.md.")


class StageCommand(click.Command):
    """A stage command: takes ``--config FILE.yaml`` (its options; flags win) and records its settings in the
    manifests it begins, for ``cdred rerun``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D107
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--config"], type=click.Path(exists=True, dir_okay=False, path_type=Path), is_eager=True,
            expose_value=False, callback=_apply_config,
            help="YAML file of option: value lines (dashes or underscores; lists as YAML lists or comma "
                 "strings); options given on the command line win."))

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        ctx.obj["replay"] = replay_of(ctx)  # the store of this command writes it into each manifest it begins
        try:
            return super().invoke(ctx)
        finally:
            ctx.obj.pop("replay", None)


def complete_tasks(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of a task id (or the last item of a comma list of them) from the static task table:
    no env is built."""
    from click.shell_completion import CompletionItem

    from cdred_pipeline.envs.spec import all_task_ids

    head, comma, last = incomplete.rpartition(",")
    try:
        ids = all_task_ids()
    except CdredError:
        return []
    return [CompletionItem(head + comma + t) for t in ids if t.startswith(last)]


# ----------------------------------------------------------------------------------------- envs
@main.command()
@click.argument("task", required=False, shell_complete=complete_tasks)
@click.option("--suite", type=click.Choice(SUITES), default=None,
              help="Only this suite (gym: classic-control and MuJoCo Box-action ids).")
@click.option("--steps", type=click.IntRange(min=1), default=default_of(envs_stage.try_task, "steps"),
              show_default=True, help="With TASK: random-action agent steps to run.")
@click.option("--seed", type=click.IntRange(min=0), default=default_of(envs_stage.try_task, "seed"),
              show_default=True, help="With TASK: reset seed.")
@click.pass_context
def envs(ctx: click.Context, task: str | None, suite: str | None, steps: int, seed: int) -> None:
    """List tasks (obs/action dims, action repeat, episode length, usable here?), or, given TASK,
    build it and step it with random actions."""
    if task is not None:
        _check_gl(ctx, rendering=False)
        click.echo(envs_stage.format_try(envs_stage.try_task(task, steps, seed)))
        return
    rows, notes = envs_stage.task_rows(suite)
    click.echo(envs_stage.format_task_table(rows))
    if _progress(ctx):
        click.echo(f"{len(rows)} tasks")
        for why in notes:
            click.echo(f"note: {why}")


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


def _verdict(store: Any, art: Any) -> str:
    """``ok``, ``damaged: ...`` or ``unlisted`` (a manifest without a file list) for ``status --verify``."""
    if not art.complete:
        return "-"
    if art.manifest.get("files") is None:
        return "unlisted"
    problems = store.problems(art)
    return "ok" if not problems else f"damaged: {problems[0]}" + (f" (+{len(problems) - 1})" if len(problems) > 1 else "")


@main.command()
@click.option("--verify", is_flag=True, help="Also hash every file of every complete artifact against its manifest; "
              "exit 4 when one is damaged.")
@click.pass_context
def status(ctx: click.Context, verify: bool) -> None:
    """List cached artifacts: stage, key, status, age, headline figure (and with --verify, whether each is whole)."""
    import time

    from cdred_pipeline.errors import InputFileError

    store = _store(ctx, write=False)
    arts = store.list()
    if not arts:
        click.echo(f"no artifacts under {ctx.obj['workdir']}")
        return
    now = time.time()
    click.echo(f"{'stage':<16} {'key':<17} {'status':<9} {'age':>5}  " + ("check  " if verify else "") + "headline")
    damaged = []
    for a in arts:
        m = a.manifest
        age = _age(now - float(m.get("updated", m.get("created", now))))
        check = _verdict(store, a) if verify else ""
        damaged += [f"{a.stage}/{a.key}"] if check.startswith("damaged") else []
        click.echo(f"{a.stage:<16} {a.key:<17} {m.get('status', '?'):<9} {age:>5}  " + (f"{check}  " if verify else "")
                   + _headline(m))
    if damaged:
        raise InputFileError(f"{len(damaged)} damaged: {', '.join(damaged)}; rerun their stages with --force")


@main.command()
@click.argument("key")
@click.pass_context
def show(ctx: click.Context, key: str) -> None:
    """Print one artifact's manifest (KEY may be a unique prefix)."""
    art = _store(ctx, write=False).find(key)
    if art.manifest.get("status") == "corrupt":
        raise CdredError(art.manifest["error"])
    click.echo(f"# {art.path}")
    click.echo(json.dumps(art.manifest, indent=2, sort_keys=True, default=str))


def _manifest_of(ctx: click.Context, artifact: str) -> dict:
    """The manifest ARTIFACT names: a manifest file (a copy too), an artifact folder, or a key (prefix) in
    the work dir."""
    from cdred_pipeline.artifacts import MANIFEST, read_manifest_file

    p = Path(artifact)
    if p.is_file() or (p / MANIFEST).is_file():
        return read_manifest_file(p if p.is_file() else p / MANIFEST)
    if "/" in artifact or artifact.endswith(".json"):
        raise UsageError(f"{artifact}: no such manifest file; pass a manifest.json or an artifact key")
    art = _store(ctx, write=False).find(artifact)
    if art.manifest.get("status") == "corrupt":
        raise CdredError(art.manifest["error"])
    return art.manifest


def _replay_params(command: click.Command, manifest: dict) -> dict[str, Any]:
    """The replay record's settings as ``command``'s default map; an input argument recorded as a path that
    is gone here becomes the input's artifact key (the same input, found in this work dir)."""
    params = config_values(manifest["replay"].get("params") or {}, command, f"replay record of {manifest['key']}")
    keys = [k for k in (manifest.get("inputs") or {}).values() if not str(k).startswith("sha256:")]
    for arg in (p for p in command.params if isinstance(p, click.Argument)):
        value = params.get(arg.name)
        if isinstance(value, str) and "/" in value and not Path(value).exists() and len(keys) == 1:
            logger.info("%s is not here: using the input's artifact key %s", value, keys[0])
            params[arg.name] = keys[0]
    return params


@main.command()
@click.argument("artifact")
@click.option("--force", is_flag=True, help="Recompute even when the artifact is complete.")
@click.pass_context
def rerun(ctx: click.Context, artifact: str, force: bool) -> None:
    """Replay the command that made ARTIFACT (an artifact key, or a manifest.json, also a copy) with the same
    settings and inputs: nothing runs when it is complete; a missing or partial one is made (resumed) again
    under the same key."""
    manifest = _manifest_of(ctx, artifact)
    record = manifest.get("replay") or {}
    command = main.get_command(ctx, str(record.get("command")))
    if not isinstance(command, StageCommand):
        raise UsageError(f"{manifest['stage']}/{manifest['key']}: its manifest holds no replay record (made by a "
                         "library call, not a cdred command); rerun the command that made it")
    params = _replay_params(command, manifest)
    if force and "force" in config_keys(command):
        params["force"] = True
    logger.info("replaying %s/%s: cdred %s %s", manifest["stage"], manifest["key"], command.name, params)
    with command.make_context(command.name, [], parent=ctx, default_map=params) as sub:
        command.invoke(sub)
    if _store(ctx, write=False).get(manifest["stage"], manifest["key"]) is None:
        raise CdredError(f"replaying `cdred {command.name}` made no {manifest['stage']}/{manifest['key']}: this cdred "
                         "computes another key for the same settings (a stage version or preset changed); its "
                         "results are under the key printed above")


# ------------------------------------------------------------------------------------- package
@main.group()
def package() -> None:
    """Dataset tools for zarr episode stores: inspect, validate, merge, export, import."""


@package.command("inspect")
@click.argument("dataset")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def package_inspect(ctx: click.Context, dataset: str, as_json: bool) -> None:
    """Episodes, steps, dims, return/success mean ± std, keys, size on disk, compression ratio of DATASET
    (a .zarr path or a demos/render-visual artifact key)."""
    from cdred_pipeline.stages import package as stage

    summary = stage.inspect(dataset, _store(ctx, write=False))
    click.echo(json.dumps(summary, indent=2, sort_keys=True) if as_json else stage.format_summary(summary))


@package.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--quick", is_flag=True, help="Structure only (metadata, lengths, chunk files); skip decoding every chunk.")
def package_validate(path: Path, quick: bool) -> None:
    """Check every layout invariant; print each problem; exit 4 if any."""
    from cdred_pipeline.errors import DatasetError
    from cdred_pipeline.stages import package as stage

    problems = stage.validate_dataset(path, deep=not quick)
    for p in problems:
        click.echo(p)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} problem(s) found")
    click.echo(f"{path}: valid")


@package.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output store (.zarr).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def package_merge(ctx: click.Context, inputs: tuple[Path, ...], out: Path, force: bool) -> None:
    """Concatenate stores of the same task and dims into OUT."""
    from cdred_pipeline.stages import package as stage

    s = stage.merge(list(inputs), out, force=force, progress=_progress(ctx))
    click.echo(f"{out}: {s['episodes']} episodes, {s['steps']} steps from {len(inputs)} datasets")


@package.command("export")
@click.argument("dataset")
@click.option("--format", "fmt", required=True, type=click.Choice(EXPORT_FORMATS), help="Output format.")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Output file (hdf5), folder (parquet, lerobot) or Minari data root (minari).")
@click.option("--dataset-id", default=None, help="minari: dataset id (namespace/name-vN); default cdred/<task>-v0.")
@click.option("--fps", type=click.IntRange(min=1), default=None,
              help="lerobot: frames per second of timestamps and videos (default attrs.env.fps, else 30).")
@click.option("--valid-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="hdf5: share of demos (the last ones) in robomimic's mask/valid; the rest are mask/train "
                   "(default 0.1).")
@click.option("--force", is_flag=True, help="Replace OUT (minari: the dataset under OUT) if it exists.")
@click.pass_context
def package_export(ctx: click.Context, dataset: str, fmt: str, out: Path, dataset_id: str | None, fps: int | None,
                   valid_fraction: float | None, force: bool) -> None:
    """Export DATASET (a .zarr path or a demos/render-visual artifact key) to robomimic HDF5, plain parquet
    tables (pyarrow/pandas), a LeRobot v3.0 dataset or a Minari dataset."""
    from cdred_pipeline.stages import package as stage

    path = stage.dataset_of(dataset, _store(ctx, write=False))
    written = stage.export(path, fmt, out, force=force, dataset_id=dataset_id, fps=fps, valid_fraction=valid_fraction,
                           progress=_progress(ctx))
    click.echo(f"wrote {written}")


@package.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output store (.zarr).")
@click.option("--task", default=None, help="Task id (suite:name); required unless FILE is a cdred export.")
@click.option("--format", "fmt", default=default_of(import_, "fmt"), show_default=True,
              type=click.Choice(IMPORT_FORMATS), help="Input format (auto: by content).")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading a pickle: unpickling runs arbitrary code from the file; only for files you trust.")
@click.option("--minari-root", type=click.Path(path_type=Path), default=None,
              help="minari: data root holding the dataset id FILE (default MINARI_DATASETS_PATH).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def package_import(ctx: click.Context, file: Path, out: Path, task: str | None, fmt: str, trust_pickle: bool,
                   minari_root: Path | None, force: bool) -> None:
    """Import robomimic HDF5, a cdred HDF5/parquet export, a pickled episode list or a Minari dataset (folder,
    or id with --format minari) into a zarr store."""
    from cdred_pipeline.stages import package as stage

    s = stage.import_(file, out, task=task, fmt=fmt, trust_pickle=trust_pickle, force=force, minari_root=minari_root,
                      progress=_progress(ctx))
    if s.get("notice"):
        click.echo(f"warning: {s['notice']}", err=True)
    click.echo(f"{out}: {s['episodes']} episodes, {s['steps']} steps, obs {s['obs_dim']}, action {s['action_dim']}")


# ----------------------------------------------------------------------------- collect-experts
_WORKERS_HELP = ("With --seeds or several tasks: (task, seed) units run in this many local processes "
                 "(or Ray CPUs with --ray-address local).")
_RAY_HELP = ("With --seeds or several tasks: run (task, seed) units as Ray tasks: 'local' (a private Ray on this "
             "machine), 'auto' (the cluster this machine joined) or HOST:PORT. --workdir must be on storage every "
             "node sees.")
_GPUS_HELP = ("With --ray-address: each unit asks Ray for this fraction of one GPU (e.g. 0.125: 8 runs share a GPU); "
              "Ray places it on a node with that much GPU free and shows it only that GPU. Without it every unit sees "
              "every GPU and --device cuda runs on the first.")
gpus_option = click.option("--gpus-per-run", type=click.FloatRange(0, 1, min_open=True), default=None, help=_GPUS_HELP)
_COMPILE_HELP = ("Run the agent's losses as torch.compile kernels (default: the preset's; small compiles where a C++ "
                 "compiler is installed, ~1.6x the updates/s on CPU, results equal to eager within float rounding). "
                 "Not part of the cache key, like --device.")
_NUM_ENVS_HELP = ("Environments stepped together while collecting (expert and random-baseline episodes), one "
                  "policy call per step (the policy prior and MPPI act per env, so that no row depends on the "
                  "others; scripted: per env). Does not change the data: episode i has the same seed, actions and "
                  "states whatever N, so N is not part of the cache key.")


@main.command("collect-experts", cls=StageCommand)
@click.argument("task", shell_complete=complete_tasks)
@click.option("--policy", type=click.Choice(POLICIES), default=None,
              help="Expert source: train TD-MPC2 (default), Meta-World scripted policy, or --checkpoint.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Collect with this cdred agent checkpoint instead of training one.")
@click.option("--preset", type=click.Choice(list(AGENT_PRESETS)), default=default_of(CollectConfig, "preset"),
              show_default=True, help="Agent size preset.")
@click.option("--train-steps", "train_env_steps", type=click.IntRange(min=1),
              default=default_of(CollectConfig, "train_env_steps"), show_default=True,
              help="Env steps of expert training.")
@click.option("--episodes", type=POSITIVE, default=default_of(CollectConfig, "episodes"), show_default=True,
              help="Expert episodes to collect.")
@click.option("--random-episodes", type=COUNT, default=default_of(CollectConfig, "random_episodes"),
              show_default=True, help="Random-policy episodes for the score baseline.")
@click.option("--episode-length", type=POSITIVE, default=default_of(CollectConfig, "episode_length"),
              help="Agent steps per episode (task default if unset).")
@click.option("--seed", type=SEED, default=default_of(CollectConfig, "seed"), show_default=True)
@click.option("--seeds", type=SEED_LIST, default=None,
              help="Comma list of seeds (e.g. 0,1,2): one expert and dataset per (task, seed), through the "
                   "executor (--workers / --ray-address); replaces --seed.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help=_WORKERS_HELP)
@click.option("--ray-address", default=None, help=_RAY_HELP)
@gpus_option
@click.option("--device", default=default_of(CollectConfig, "device"), show_default=True, help="auto | cpu | cuda")
@click.option("--plan/--no-plan", default=default_of(CollectConfig, "plan"),
              help="Act with MPPI planning or the policy prior (preset default).")
@click.option("--num-envs", type=click.IntRange(min=1), default=default_of(CollectConfig, "num_envs"),
              show_default=True, help=_NUM_ENVS_HELP)
@click.option("--compile/--no-compile", default=default_of(CollectConfig, "compile"), help=_COMPILE_HELP)
@log_option("the expert's training metrics")
@click.option("--force", is_flag=True, help="Redo even if a complete artifact exists.")
@click.pass_context
def collect_experts(ctx: click.Context, task: str, policy: str | None, checkpoint: str | None,
                    seeds: tuple[int, ...] | None, workers: int | None, ray_address: str | None,
                    gpus_per_run: float | None, force: bool, **opts: Any) -> None:
    """Train (or load) an expert for TASK and collect its demonstrations into demos.zarr.

    TASK may be a comma list (dmc:cartpole-balance,dmc:reacher-easy): one expert and dataset per
    (task, seed), run through the executor like --seeds, each identical to running it alone.
    """
    from cdred_pipeline.stages import collect_experts as stage

    _check_gl(ctx)  # the datasets carry rendered probe frames
    tasks = stage.parse_tasks(task)  # every id checked before anything runs
    policy = policy or ("checkpoint" if checkpoint else default_of(CollectConfig, "policy"))
    cfg = stage.CollectConfig(task=tasks[0], policy=policy, checkpoint=checkpoint, **opts)
    store = _store(ctx)
    if len(tasks) > 1 or seeds is not None or workers is not None or ray_address is not None or gpus_per_run:
        _collect_units(ctx, cfg, tasks, seeds or (cfg.seed,), workers, ray_address, gpus_per_run, force)
        return
    started = time.time()
    art = stage.run(cfg, store, force=force, progress=_progress(ctx))
    _echo_demos(ctx, cfg, art)
    _echo_cached(art, started)


def _echo_demos(ctx: click.Context, cfg: Any, art: Any) -> None:
    """What collect-experts made: the expert's size, the dataset, expert and random scores, the key."""
    from cdred_pipeline.stages import collect_experts as stage

    expert = _store(ctx).get(stage.EXPERT_STAGE, art.manifest["inputs"]["expert"])
    if expert is not None and expert.manifest.get("agent_params"):
        click.echo(f"expert: TD-MPC2 preset {cfg.preset}, {expert.manifest['agent_params']:,} trainable parameters "
                   f"({expert.path})")
    scores = art.manifest.get("scores", {})
    click.echo(f"demos: {art.path / stage.DATASET_NAME}  ({art.manifest.get('episodes')} episodes, "
               f"{art.manifest.get('steps')} steps)")
    for name in ("expert", "random"):
        s = scores.get(name) or {}
        if s:
            success = f"   success {s['success_rate']:.2f}" if reports_success(cfg.task) else ""
            click.echo(f"  {name:<6} return {s['return_mean']:9.2f} ± {s['return_std']:.2f}{success}")
    click.echo(f"key: {art.key}")


def _collect_units(ctx: click.Context, cfg: Any, tasks: list[str], seeds: tuple[int, ...], workers: int | None,
                   ray_address: str | None, gpus_per_run: float | None, force: bool) -> None:
    """collect-experts over tasks x seeds through the executor; one line per (task, seed)."""
    from cdred_pipeline.executor import executor_for
    from cdred_pipeline.stages import collect_experts as stage

    started = time.time()
    with executor_for(workers, ray_address, gpus_per_run) as ex:
        arts = stage.run_units(cfg, tasks, seeds, _store(ctx), executor=ex, force=force, progress=_progress(ctx))
    units = [(t, s) for t in tasks for s in seeds]
    for (task, seed), art in zip(units, arts):
        s = (art.manifest.get("scores") or {}).get("expert") or {}
        ret = f"expert return {s['return_mean']:9.2f} ± {s['return_std']:.2f}" if s else ""
        who = f"seed {seed}" if len(tasks) == 1 else f"{task} seed {seed}"
        click.echo(f"{who}: {art.path / stage.DATASET_NAME}  ({art.manifest.get('episodes')} episodes, "
                   f"{art.manifest.get('steps')} steps)  {ret}  key: {art.key}"
                   + ("  (cached)" if _cached_line(art, started) else ""))


# ------------------------------------------------------------------------------- render-visual
def _one_line_warnings(prefixes: dict[type[Warning], str]) -> None:
    """Inside ``warnings.catch_warnings()``: print each warning of a category in ``prefixes`` at once, as one
    line on stderr with its prefix (``note:``, ``warning:``); other warnings as Python shows them."""
    import warnings

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        prefix = next((v for k, v in prefixes.items() if issubclass(category, k)), None)
        if prefix is None:
            shown(message, category, *args, **kwargs)
        else:
            click.echo(f"{prefix}: {one_line(str(message))}", err=True)

    for category in prefixes:
        warnings.simplefilter("always", category)
    warnings.showwarning = show


@main.command("render-visual", cls=StageCommand)
@click.argument("dataset")
@click.option("--size", type=int, default=default_of(RenderConfig, "size"), show_default=True,
              help="Image side in pixels (16-512).")
@click.option("--camera", default=default_of(RenderConfig, "camera"),
              help="Camera name or id (default: the task's camera, as make_env uses online).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Render episode ranges in this many local processes, one GL context each (default: this "
                   "process), or Ray CPUs with --ray-address local.")
@click.option("--ray-address", default=None,
              help="Render episode ranges as Ray tasks: 'local' (a private Ray on this machine), 'auto' (the "
                   "cluster this machine joined) or HOST:PORT. The dataset and --workdir must be on storage "
                   "every node sees.")
@click.option("--render-profile", type=click.Choice(RENDER_PROFILES), default=default_of(RenderConfig, "render_profile"),
              help="Render profile (default: the dataset's own, which the online env must use too).")
@click.option("--chunk-episodes", type=COUNT, default=default_of(RenderConfig, "chunk_episodes"), show_default=True,
              help="Episodes per work unit (0 = auto).")
@click.option("--verify/--no-verify", default=default_of(RenderConfig, "verify"), show_default=True,
              help="Re-render the collection-time probe frames and compare their hashes.")
@click.option("--force", is_flag=True, help="Redo even if a complete artifact exists.")
@click.pass_context
def render_visual(ctx: click.Context, dataset: str, workers: int | None, ray_address: str | None, force: bool,
                  **opts: Any) -> None:
    """Render every stored physics state of DATASET (a demos.zarr path or an artifact key) into a new
    pixel dataset: data/rgb/<camera>, exactly the frames the online pixel env shows."""
    import warnings

    from cdred_pipeline.executor import executor_for
    from cdred_pipeline.stages import render_visual as stage

    _check_gl(ctx)
    cfg = stage.RenderConfig(workers=workers or default_of(RenderConfig, "workers"), **opts)
    store = _store(ctx)
    path = stage.resolve_dataset(dataset, store)
    started = time.time()
    with executor_for(workers, ray_address) as ex, warnings.catch_warnings():
        _one_line_warnings({stage.RenderMismatchWarning: "warning", stage.AlreadyRenderedWarning: "note"})
        art = stage.run(cfg, path, store, force=force, progress=_progress(ctx), executor=ex)
    click.echo(stage.summary_line(art, cached=float(art.manifest.get("finished", 0)) < started))


# ------------------------------------------------------------------------------------- imitate
def _imitate_default(name: str) -> Any:
    return default_of(ImitateConfig, name)


@main.command(cls=StageCommand)
@click.argument("dataset")
@click.option("--steps", "env_steps", type=click.IntRange(min=1), default=_imitate_default("env_steps"), show_default=True,
              help="Env steps of online imitation.")
@click.option("--preset", type=click.Choice(list(AGENT_PRESETS)), default=_imitate_default("preset"),
              show_default=True, help="Agent size preset.")
@click.option("--obs", type=click.Choice(OBS_KINDS), default=_imitate_default("obs"), show_default=True,
              help="rgb: learn from pixels (the dataset must come from render-visual).")
@click.option("--reward", type=REWARD_MODES, default=_imitate_default("reward"), show_default=True,
              help="cdred (coupled, Eq. 5) or red (uncoupled ablation, Eq. 3).")
@click.option("--method", default=_imitate_default("method"), show_default=True,
              help="cdred | red (the same as --reward red) | iqmpc (IQ-MPC: inverse soft-Q critic, no learned "
                   "reward) | bc (behavioural cloning of the demos; no env interaction while training). "
                   "docs/baselines.md.")
@click.option("--reward-space", type=REWARD_SPACE_CHOICES, default=_imitate_default("reward_space"),
              show_default=True,
              help="Reward model on world-model latents (paper) or raw observations (Fig. 9 ablation).")
@click.option("--g", "g", type=G_CHOICES, default=_imitate_default("g"), show_default=True,
              help="g in Eq. 5 (exp: the Fig. 11 ablation).")
@click.option("--zeta", type=float, default=_imitate_default("zeta"),
              help="Eq. 5 weight of the expert term against the behavioural one (default: the reward "
                   "preset's, the paper's value).")
@click.option("--alpha", type=float, default=_imitate_default("alpha"),
              help="Eq. 6 weight of the L2 term against the sqrt(1/n) estimator (default: the reward "
                   "preset's, the paper's value).")
@click.option("--sigma", type=float, default=_imitate_default("sigma"),
              help="Eq. 5 decay rate sigma (default: the reward preset's, the paper's 1); with g = identity it "
                   "scales the reward.")
@click.option("--detach-reward-input", is_flag=True, default=_imitate_default("detach_reward_input"),
              help="Stop the predictor loss's gradient into the latent (encoder and dynamics); the paper's "
                   "code lets it flow.")
@click.option("--reward-init", type=INIT_CHOICES, default=_imitate_default("reward_init"), show_default=True,
              help="Scales of the reward model's targets and predictors: the released code's, or rnd: targets "
                   "drawn as RND draws them (every layer orthogonal, gain sqrt 2), predictors at nn.Linear's "
                   "default.")
@click.option("--num-demos", type=POSITIVE, default=_imitate_default("num_demos"),
              help="Use only the first N expert episodes.")
@click.option("--tremble", type=float, default=_imitate_default("tremble"), show_default=True,
              help="Train under tremble noise p.")
@click.option("--seed", type=SEED, default=_imitate_default("seed"), show_default=True)
@click.option("--plan/--no-plan", default=_imitate_default("plan"), show_default=True,
              help="Act with MPPI planning on the CDRED reward (Eq. 17) or the policy prior alone.")
@click.option("--camera", default=_imitate_default("camera"),
              help="Pixel runs: which rendered camera (default: the dataset's).")
@click.option("--eval-every", "eval_every", type=POSITIVE, default=_imitate_default("eval_every"), show_default=True,
              help="Env steps between evaluations.")
@click.option("--eval-episodes", type=COUNT, default=_imitate_default("eval_episodes"), show_default=True)
@click.option("--seed-steps", "seed_agent_steps", type=COUNT, default=_imitate_default("seed_agent_steps"),
              help="Agent steps of random actions before updates start (default max(1000, 5 x episode length)).")
@click.option("--diagnose/--no-diagnose", default=_imitate_default("diagnose"), show_default=True,
              help="Log reward on expert vs random vs current-policy data at each evaluation.")
@click.option("--device", default=_imitate_default("device"), show_default=True, help="auto | cpu | cuda")
@click.option("--compile/--no-compile", default=_imitate_default("compile"), help=_COMPILE_HELP)
@log_option("the training metrics")
@click.option("--force", is_flag=True, help="Redo even if a complete artifact exists.")
@click.pass_context
def imitate(ctx: click.Context, dataset: str, force: bool, **opts: Any) -> None:
    """Learn from DATASET (a demos.zarr or a demos/render-visual artifact key) online with CDRED."""
    from cdred_pipeline.stages import imitate as stage

    _check_gl(ctx, rendering=opts["obs"] == "rgb")
    cfg = stage.ImitateConfig(**opts)
    store = _store(ctx)
    started = time.time()
    art = stage.run(cfg, dataset, store, force=force, progress=_progress(ctx))
    head = art.manifest.get("headline", {})
    score = head.get("normalized_score")
    method = cfg.method
    extra = ", CDRED reward model included" if method in ("cdred", "red") else ""
    click.echo(f"imitation ({method}): {art.path / 'agent.pt'}  ({art.manifest.get('agent_params', 0):,} "
               f"trainable parameters{extra})")
    click.echo(f"  final eval return {head.get('eval_return')}, expert-normalised score "
               f"{'-' if score is None else f'{score:.1f}'}")
    click.echo(f"  curve {art.path / 'curve.png'}, metrics {art.path / 'metrics.jsonl'}")
    click.echo(f"key: {art.key}  (evaluate with `cdred evaluate {art.key} --tremble 0.1`)")
    _echo_cached(art, started)


# ------------------------------------------------------------------------------------ evaluate
@main.command(cls=StageCommand)
@click.argument("agent")
@click.option("--tremble", type=TREMBLE_LIST, default=default_of(EvalConfig, "tremble"), show_default=True,
              help="Tremble probability p in [0, 1], or a comma list to sweep (e.g. 0,0.1,0.2).")
@click.option("--episodes", type=POSITIVE, default=default_of(EvalConfig, "episodes"), show_default=True,
              help="Episodes per seed and p.")
@click.option("--seeds", type=SEED_LIST, default=default_of(EvalConfig, "seeds"), show_default=True,
              help="Comma list of evaluation seeds.")
@click.option("--videos", type=COUNT, default=default_of(EvalConfig, "videos"), show_default=True,
              help="Rollout videos (mp4) to write.")
@click.option("--plan/--no-plan", default=default_of(EvalConfig, "plan"),
              help="Act with MPPI or the policy prior (checkpoint default).")
@click.option("--episode-length", type=POSITIVE, default=default_of(EvalConfig, "episode_length"),
              help="Agent steps per episode (task default if unset).")
@click.option("--device", default=default_of(EvalConfig, "device"), show_default=True, help="auto | cpu | cuda")
@click.option("--scores-from", "scores_from", default=None,
              help="Dataset (path or key) whose stored random/expert scores normalise the returns "
                   "(default: the scores saved in an imitation checkpoint).")
@click.option("--num-envs", type=click.IntRange(min=1), default=default_of(EvalConfig, "num_envs"), show_default=True,
              help="Envs stepped together with one batched policy call per step (MPPI: one plan per env).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Run the (p, seed) blocks in this many local processes (or Ray CPUs with --ray-address local).")
@click.option("--ray-address", default=None,
              help="Run the (p, seed) blocks as Ray tasks: 'local', 'auto' or HOST:PORT.")
@click.option("--force", is_flag=True, help="Redo even if a complete report exists.")
@click.pass_context
def evaluate(ctx: click.Context, agent: str, force: bool, scores_from: str | None, workers: int | None,
             ray_address: str | None, **opts: Any) -> None:
    """Evaluate AGENT (a checkpoint path or an experts/imitate artifact key) under tremble noise."""
    from cdred_pipeline.executor import executor_for
    from cdred_pipeline.stages import evaluate as stage
    from cdred_pipeline.stages.common import dataset_scores

    _check_gl(ctx, rendering=bool(opts["videos"]))
    cfg = stage.EvalConfig(**opts)
    store = _store(ctx)
    scores = dataset_scores(scores_from, store) if scores_from else None
    started = time.time()
    with executor_for(workers, ray_address) as ex:
        art = stage.run(cfg, agent, store, force=force, progress=_progress(ctx), scores=scores, executor=ex)
    click.echo(stage.format_table(art.manifest["aggregates"], success=reports_success(art.manifest["task"])))
    click.echo(f"report: {art.path / 'report.json'}\nplot:   {art.path / 'tremble.png'}")
    videos = sorted((art.path / "videos").glob("*.mp4"))
    if videos:
        click.echo(f"videos: {art.path / 'videos'}  ({len(videos)} mp4)")
    click.echo(f"key:    {art.key}")
    _echo_cached(art, started)


# ------------------------------------------------------------------------------------ pipeline
@main.command(cls=StageCommand)
@click.argument("task", shell_complete=complete_tasks)
@click.option("--preset", type=click.Choice(list(PIPELINE_PRESETS)), default=default_of(PipelineConfig, "preset"),
              show_default=True, help="smoke: seconds (checks an install); quickstart: minutes on 2 CPU cores; "
                                      "cpu: the 100k-step CPU setting; paper: App. A-B (GPU).")
@click.option("--obs", type=click.Choice(OBS_KINDS), default=default_of(PipelineConfig, "obs"), show_default=True)
@click.option("--reward", type=REWARD_MODES, default=default_of(PipelineConfig, "reward"), show_default=True)
@click.option("--tremble", type=TREMBLE_LIST, default=default_of(PipelineConfig, "tremble"), show_default=True,
              help="Evaluation tremble probabilities.")
@click.option("--seed", type=SEED, default=default_of(PipelineConfig, "seed"), show_default=True)
@click.option("--expert-policy", type=click.Choice(EXPERT_POLICIES), default=default_of(PipelineConfig, "expert_policy"),
              help="Expert source (default: scripted for Meta-World, TD-MPC2 otherwise).")
@click.option("--device", default=default_of(PipelineConfig, "device"), show_default=True, help="auto | cpu | cuda")
@log_option("the expert's and the imitation's training metrics")
@click.option("--force", is_flag=True, help="Redo every stage.")
@click.pass_context
def pipeline(ctx: click.Context, task: str, force: bool, **opts: Any) -> None:
    """The whole chain for TASK: collect-experts -> (render-visual) -> imitate -> evaluate, all cached."""
    from cdred_pipeline.stages import pipeline as stage

    _check_gl(ctx)
    cfg = stage.PipelineConfig(task=task, **opts)
    store = _store(ctx)
    result = stage.run(cfg, store, force=force, progress=_progress(ctx))
    click.echo(stage.format_summary(result))


# --------------------------------------------------------------------------------------- sweep
@main.command(cls=StageCommand)
@click.option("--tasks", required=True, type=NAME_LIST, shell_complete=complete_tasks, help="Comma list of task ids (dmc:cartpole-balance,mw:reach-wall).")
@click.option("--seeds", type=SEED_LIST, default=default_of(SweepConfig, "seeds"), show_default=True,
              help="Comma list of run seeds: one imitate + evaluate run per (task, method, seed).")
@click.option("--methods", type=NAME_LIST, default=default_of(SweepConfig, "methods"), show_default=True,
              help=f"Comma list of methods (stages/sweep.py METHODS): {', '.join(METHODS)}.")
@click.option("--preset", type=click.Choice(list(PIPELINE_PRESETS)), default=default_of(SweepConfig, "preset"),
              show_default=True, help="Pipeline preset; its settings make every stage.")
@click.option("--obs", type=click.Choice(OBS_KINDS), default=default_of(SweepConfig, "obs"), show_default=True,
              help="rgb: render each task's demos with render-visual (64x64, the task's camera) and learn every run "
                   "from pixels.")
@click.option("--num-demos", type=click.IntRange(min=1), default=default_of(SweepConfig, "num_demos"),
              help="Demo episodes collected per task and used by every run (default: the preset's).")
@click.option("--env-steps", type=click.IntRange(min=1), default=default_of(SweepConfig, "env_steps"),
              help="Imitation env steps per run (default: the preset's).")
@click.option("--eval-episodes", type=click.IntRange(min=1), default=default_of(SweepConfig, "eval_episodes"),
              help="Episodes of each run's final evaluation, per tremble p (default: 100 for cpu and paper, else "
                   "the preset's).")
@click.option("--expert-seed", type=SEED, default=default_of(SweepConfig, "expert_seed"), show_default=True,
              help="Seed of each task's expert and demos (shared by every method and seed).")
@click.option("--eval-tremble", type=TREMBLE_LIST, default=default_of(SweepConfig, "eval_tremble"), show_default=True,
              help="Tremble p of each run's final evaluation, a comma list that includes 0 (e.g. 0,0.1,0.2,0.3): "
                   "the table under noise goes to tremble.csv, the summary and figures/tremble_<task>.png.")
@click.option("--expert-env-steps", type=click.IntRange(min=1), default=default_of(SweepConfig, "expert_env_steps"),
              help="Env steps of each TD-MPC2 expert's training (default: the preset's; Meta-World's scripted "
                   "experts do not train).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Runs in this many local processes (or Ray CPUs with --ray-address local).")
@click.option("--ray-address", default=None,
              help="Run each run as a Ray task (one CPU each): 'local', 'auto' or HOST:PORT. --workdir must be on "
                   "storage every node sees.")
@gpus_option
@click.option("--device", default=default_of(SweepConfig, "device"), show_default=True, help="auto | cpu | cuda")
@click.option("--name", default=default_of(SweepConfig, "name"), show_default=True,
              help="Output folder: <workdir>/sweeps/<name>/.")
@log_option("every run's training metrics (the experts' and the imitations')")
@click.option("--report-only", is_flag=True,
              help="Write results.csv, summary.md and the figures from the runs already finished in the work dir, "
                   "starting none; the summary lists the runs not made yet (a sweep still running, or partly run).")
@click.pass_context
def sweep(ctx: click.Context, workers: int | None, ray_address: str | None, gpus_per_run: float | None,
          report_only: bool, **opts: Any) -> None:
    """A grid of imitation runs: tasks x methods x seeds, with results.csv, summary.md and figures.

    Each task's expert and demos are made once and shared; each (task, method, seed) is a cached imitate
    run plus a final evaluation. A killed sweep rerun resumes from the cache. Exit code 1 when a run failed
    (after writing everything; summary.md lists the failures).
    """
    from cdred_pipeline.executor import executor_for
    from cdred_pipeline.stages import sweep as stage

    _check_gl(ctx)
    cfg = stage.SweepConfig(**opts)
    store = _store(ctx)
    with executor_for(*((None, None, None) if report_only else (workers, ray_address, gpus_per_run))) as ex:  # nothing to run
        result = stage.run(cfg, store, executor=ex, progress=_progress(ctx), report_only=report_only)
    _echo_sweep_result(result)
    if result.missing:
        click.echo(f"\n{result.missing} of {result.runs} runs are not made yet (listed in {result.summary})")
    if result.failures:
        raise CdredError(f"{result.failures} of {result.runs} runs failed; see {result.summary}")


@main.command("sweep-merge")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the merged results.csv, summary.md and figures/.")
@click.option("--name", default=None, help="Title of the merged summary (default: the --out folder's name).")
def sweep_merge(sources: tuple[str, ...], out: Path, name: str | None) -> None:
    """One table from several sweeps: SOURCES are sweep folders (or their results.csv).

    Runs of a grid made in parts (other tasks, methods or seeds, other work dirs or machines) are merged by
    (task, method, seed) into one results.csv, summary.md (final evaluation over seeds, IQM across tasks)
    and one figure per task. The same run in two sources must be the same artifacts. A source written
    FOLDER:LABEL has LABEL added to its methods' names, to compare one method run in two settings
    (e.g. `state-sweep:state pixel-sweep:pixels`).
    """
    from cdred_pipeline.stages import sweep_merge as stage

    result = stage.merge(sources, out, name=name)
    _echo_sweep_result(result)


def _echo_sweep_result(result: Any) -> None:
    """Where a sweep's (or a merge's) outputs are, then its compact table."""
    from cdred_pipeline.stages.sweep import format_table

    click.echo(f"results: {result.csv}\nsummary: {result.summary}\nfigures: {result.folder / 'figures'} "
               f"({len(result.figures)})\n")
    click.echo(format_table(result))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
