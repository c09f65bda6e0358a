"""What every command shares: library tables and defaults read when first needed, errors as one
line, run folders, output checks, printing a record.

Library names are imported inside functions, and the tables and defaults that the help and the
options' checks show come from :mod:`scoresde.facts`, so ``--help`` and a mistyped option are
answered without importing torch.
"""

from __future__ import annotations

import difflib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import click

from ..facts import default, library, names  # remembered: --help imports no torch

CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Choice(click.Choice):
    """A Choice whose refusal of a mistyped name suggests the nearest ones (``pcc``: ``pc``)."""

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter as err:
            near = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=2)
            if near:
                err.message += f" Did you mean {' or '.join(map(repr, near))}?"
            raise


class LazyChoice(Choice):
    """A Choice of the names (tuple entries or dict keys) of the library table ``table``, read
    when first needed."""

    def __init__(self, table: str):
        super().__init__([])
        self.table = table

    choices = property(lambda self: names(self.table), lambda self, value: None)


class Default:
    """A default read from the library when needed: that of keyword ``name`` of the library
    function ``function``, or (``function`` None) that of the training option ``name``
    (:mod:`scoresde.config`). A click default (called for the value) that ``--help`` shows as
    the value itself."""

    def __init__(self, function: str | None, name: str):
        self.function, self.name = function, name

    def __call__(self):
        if self.function is None:
            return library("config.option_default")(self.name)
        return default(self.function, self.name)

    def __str__(self) -> str:
        return str(self())


def keyword_option(function: str, *flags: str, **attrs):
    """An option (``flags``, as ``click.option``) whose default, shown in the help, is that of
    the keyword named as the option (``--snr``: ``snr``) of the library function ``function``."""
    name = flags[0].lstrip("-").replace("-", "_")
    return click.option(*flags, default=Default(function, name), show_default=True, **attrs)


def train_option(name: str, *flags: str, **attrs):
    """The option of the training option ``name`` (:mod:`scoresde.config`): ``--name`` (or
    ``flags``) with its default, shown in the help unless None, and the click type of its rule
    (an integer or number range, or a choice of a library table); ``attrs`` add or override."""
    from ..config import option_default, option_rule

    rule = option_rule(name)
    kind, low, high = rule["kind"], rule.get("low"), rule.get("high")
    if kind == "choice":
        choices = rule["choices"]
        attrs.setdefault("type", LazyChoice(choices) if isinstance(choices, str) else
                         Choice(choices))
    elif kind == "int":
        attrs.setdefault("type", int if low is None and high is None else click.IntRange(low, high))
    elif kind == "number":
        attrs.setdefault("type", float if low is None and high is None else click.FloatRange(
            low, high, min_open=rule.get("low_open", False),
            max_open=rule.get("high_open", False)))
    if option_default(name) is None:
        attrs.setdefault("default", None)
    else:
        attrs.setdefault("default", Default(None, name))
        attrs.setdefault("show_default", True)
    return click.option(*(flags or [flag(name)]), name, **attrs)


class LazyHelp(click.Option):
    """An option whose help is a format string of library values, filled in only when shown.

    ``fields`` maps the names in ``help`` to functions giving their values (e.g. a
    :class:`Default`)."""

    def __init__(self, *args, fields: dict[str, Callable[[], object]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields = fields

    def get_help_record(self, ctx: click.Context):
        template = self.help
        self.help = template.format(**{k: f() for k, f in self.fields.items()})
        try:
            return super().get_help_record(ctx)
        finally:
            self.help = template


def one_line(msg: object) -> str:
    return " ".join(str(msg).split()) or "failed"


class Main(click.Group):
    """A group whose every error is one line on stderr with status 2 (bad input) or 1 (failure)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = bool(os.environ.get("SCORESDE_DEBUG"))
        formatted = warnings.formatwarning
        if not debug:  # the library's warnings as one line each, without a source line
            warnings.formatwarning = _one_line_warning
        try:
            self._run(args, prog_name, complete_var, debug, **extra)
        finally:
            warnings.formatwarning = formatted

    def _run(self, args, prog_name, complete_var, debug: bool, **extra) -> None:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            hint = f" (see '{err.ctx.command_path} --help')" if err.ctx else ""
            self._fail(f"Error: {one_line(err.format_message())}{hint}", 2, debug)
        except click.ClickException as err:
            self._fail(f"Error: {one_line(err.format_message())}", err.exit_code, debug)
        except click.Abort as err:  # click's word for Ctrl-C (or end of input at a prompt)
            stop = err.__cause__ or err.__context__
            if isinstance(stop, KeyboardInterrupt):
                self._fail("Interrupted.", 128 + getattr(stop, "signum", 2), debug)
            self._fail("Aborted.", 1, debug)
        except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
            self._fail(f"Error: {one_line(err)}", 2, debug)
        except KeyboardInterrupt:
            self._fail("Interrupted.", 130, debug)
        except OSError as err:  # the system's word (a full disk, a permission), said once
            where = f": {err.filename}" if err.filename and str(err.filename) not in str(
                err.strerror) else ""
            self._fail(f"Error: {one_line(err.strerror or err)}{where}", 1, debug)
        except Exception as err:  # a runtime failure: one line, status 1
            self._fail(f"Error: {type(err).__name__}: {one_line(err)}", 1, debug)
        sys.exit(rv if isinstance(rv, int) else 0)

    @staticmethod
    def _fail(message: str, code: int, debug: bool) -> None:
        if debug:
            raise
        click.echo(message, err=True)
        sys.exit(code)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {one_line(message)}\n"


# ----- run folders and files ---------------------------------------------------------------------
def pick_run(run: str | None, quiet: bool = False) -> Path:
    """The run folder given, or the most recent under ./runs (saying which on stderr)."""
    path = task(library("runs.find_run"), run)
    if run is None and not quiet and lead():
        click.echo(f"using run {path} (most recent under ./{path.parent})", err=True)
    return path


def new_run_folder(*words: str) -> Path:
    """``./runs/NNNNN-words``, numbered one above the highest existing run."""
    return library("runs.new_run_dir")(library("runs.RUNS"), *words)


def check_out(path: Path, param: str = "--out", **rules) -> Path:
    """``path`` if the command may write it (:func:`scoresde.outputs.check_output` with
    ``rules``); a BadParameter of ``param`` that says why not otherwise."""
    from ..outputs import check_output

    try:
        return check_output(path, **rules)
    except (ValueError, FileExistsError) as err:
        raise click.BadParameter(one_line(err), param_hint=param) from None


def _device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    library("utils.resolve_device")(value)  # a device that is not there is bad input
    return value


def device_option(help: str | None = None):
    """``--device``, checked as soon as it is parsed."""
    return click.option("--device", default="cpu", show_default=True, callback=_device,
                        help=help)


run_option = click.option("--run", default=None, metavar="DIR",
                          help="Run folder [default: most recent].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


def refuse_given(ctx: click.Context, names, why: str) -> None:
    """A usage error ``--NAME WHY`` for the first of ``names`` given on the command line."""
    for name in names:
        if explicit(ctx, name):
            raise click.UsageError(f"{flag(name)} {why}")


def flag(name: str) -> str:
    """The command-line flag of the keyword ``name``: ``batch_size`` is ``--batch-size``."""
    return f"--{name.replace('_', '-')}"


def explicit(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE


def given(ctx: click.Context, names) -> dict:
    """The options among ``names`` given on the command line, with their values."""
    return {k: ctx.params[k] for k in names if explicit(ctx, k)}


def task(function: Callable, *args, **keywords):
    """Call a library task; an :class:`~scoresde.checks.OptionError` becomes the command's
    usage error, naming the option as its flag (``label`` is ``--label``)."""
    from ..checks import OptionError

    try:
        return function(*args, **keywords)
    except OptionError as err:
        if err.option is None:
            raise click.UsageError(one_line(err)) from None
        flags = "/".join(flag(name) for name in err.option.split("/"))
        raise click.BadParameter(str(err), param_hint=flags) from None


def lead() -> bool:
    """Whether this process speaks for the command: always, but under ``torchrun`` rank 0 only."""
    return os.environ.get("RANK", "0") == "0"


def emit(record: dict, as_json: bool, lines: list[str]) -> None:
    """Print (rank 0 alone) the record as strict JSON, or ``lines``."""
    if lead():
        click.echo(library("tasks.reports.strict_json")(record) if as_json else "\n".join(lines))
