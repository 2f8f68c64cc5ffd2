"""What every ``ghostedge`` command shares: the Typer app, its consoles, the option types used by several
commands, Enum choices, and the flag each library setting is known by. Commands live in ``commands.py`` and
``commands_deploy.py``; ``cli.py`` assembles them and is the entry point."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Callable, Optional, TypeVar

import typer
from rich.console import Console

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GhostNet from PyTorch to INT8-quantized TensorRT / ONNX Runtime engines, "
                       "with the accuracy cost and the speed-up measured.")
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets.")
app.add_typer(calib_app, name="calib")

out = Console()
err = Console(stderr=True)
state = {"debug": False}

E = TypeVar("E", bound=Enum)

#: the flag of each settings field whose flag is not ``--field-name`` (SettingError messages name fields)
FLAGS = {"eval_dir": "--eval", "trt_version": "--cache-trt-version", "batches": "--batch", "out": "--out"}


def flag_for(setting: str) -> str:
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def choice(enum: type[E]) -> Callable[[str], E]:
    """A typer parser for a str Enum option: the value, or a usage error listing the choices."""
    names = [e.value for e in enum]

    def parse(value: str | E) -> E:
        if isinstance(value, enum):
            return value
        try:
            return enum(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r}: use {', '.join(names[:-1])} or {names[-1]}") from None

    return parse


def choice_option(enum: type[Enum], *decls: str, help: str) -> typer.models.OptionInfo:  # noqa: A002
    """An option taking one of a str Enum's values; --help shows them."""
    return typer.Option(*decls, parser=choice(enum), metavar="<" + "|".join(e.value for e in enum) + ">",
                        help=help)


# model options, shared by every command that loads a checkpoint
WeightsOpt = Annotated[Optional[Path], typer.Option(
    "--weights", help="checkpoint (.safetensors / .pth / .pt); default: the shipped reference model")]
NumClassesOpt = Annotated[Optional[int], typer.Option(
    "--num-classes", help="classes of the checkpoint when it carries no metadata")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")]
PreprocessOpt = Annotated[Optional[str], typer.Option(
    "--preprocess", help="the checkpoint's input, stated once: 'size=128 resize=146 interpolation=bilinear "
                         "norm=imagenet' (or mean=R,G,B std=R,G,B), or a JSON file; default: the sidecar beside "
                         "--weights (NAME.json / config.json), else the checkpoint's metadata")]
ClassesOpt = Annotated[Optional[Path], typer.Option(
    "--classes", help="class names in output order: a text file (one per line) or an ImageFolder folder "
                      "(sorted subfolder names)")]
ThreadsOpt = Annotated[int, typer.Option(help="CPU threads (0 = all cores)")]
# bench options, shared by bench and pipeline
EvalOpt = Annotated[Optional[Path], typer.Option("--eval", help="ImageFolder set for accuracy drift")]
BenchBatchOpt = Annotated[str, typer.Option(help="bench batch sizes, comma-separated")]
BenchImgSizeOpt = Annotated[Optional[int], typer.Option(help="bench input size (default: the model's)")]
SecondsOpt = Annotated[float, typer.Option(help="bench time per engine and batch (when no --iters)")]
MaxEvalImagesOpt = Annotated[int, typer.Option(help="cap on eval images (0 = all)")]
PlotOpt = Annotated[Optional[Path], typer.Option(help="write a PNG plot")]


def model_spec(num_classes: int | None = None, preprocess: str | None = None, classes: Path | None = None):  # noqa: ANN201
    """The command line's description of a checkpoint (a ``ModelSpec``)."""
    from .checkpoint import ModelSpec

    return ModelSpec(num_classes=num_classes, preprocess=preprocess, classes=classes)


def _version(value: bool) -> None:
    if value:
        out.print(f"ghostedge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    state["debug"] = debug


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
