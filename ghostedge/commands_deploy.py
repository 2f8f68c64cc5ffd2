"""``ghostedge deploy``: the configuration DeepStream and Triton need for an engine (options -> settings -> call).

A sub-app of its own (``cli`` adds it) on the shared ``cli_options``: errors are GhostedgeErrors, which
``cli.run`` prints on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli_options import err, out, print_json
from .errors import GhostedgeError

deploy_app = typer.Typer(no_args_is_help=True, help="Configuration for DeepStream (nvinfer) and Triton Inference "
                                                    "Server from an engine.")
EngineArg = Annotated[Path, typer.Argument(help="engine: .plan, the TensorRT ONNX (engines/ghostnet.int8.onnx), the "
                                                "ONNX Runtime engine (.ort.onnx) or OpenVINO (.xml)")]


def _int_list(spec: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in spec.replace(",", ";").split(";") if x.strip())
    except ValueError:
        raise GhostedgeError(f"{flag} {spec!r}: use class ids separated by ';' (e.g. '0;2')") from None


def _frame(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    w, sep, h = spec.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise GhostedgeError(f"--frame {spec!r}: use WIDTHxHEIGHT, e.g. 1920x1080")
    return int(w), int(h)


def _say_notes(notes: list[str]) -> None:
    for n in notes:
        err.print(f"  note: {n}", highlight=False, markup=False, soft_wrap=True)


@deploy_app.command("deepstream")
def deepstream(
    engine: EngineArg,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the nvinfer config, labels and model")] = Path(
        "deploy/deepstream"),
    mode: Annotated[str, typer.Option(help="primary (whole frames) | secondary (objects of a detector)")] = "primary",
    batch: Annotated[int | None, typer.Option(help="batch-size (default 1 primary, 16 secondary)")] = None,
    threshold: Annotated[float, typer.Option(help="classifier-threshold: the top class's softmax probability")] = 0.5,
    gie_id: Annotated[int | None, typer.Option(help="gie-unique-id (default 1 primary, 2 secondary)")] = None,
    operate_on_gie_id: Annotated[int, typer.Option(help="secondary: the detector's gie-unique-id")] = 1,
    operate_on_class_ids: Annotated[str, typer.Option(help="secondary: the detector's classes to classify, "
                                                           "e.g. '0;2' (default all)")] = "",
    fp16: Annotated[bool, typer.Option("--fp16", help="build an FP32 ONNX as FP16 (network-mode=2)")] = False,
    frame: Annotated[str | None, typer.Option(help="primary: frame size WIDTHxHEIGHT, to print the crop that "
                                                      "reproduces the model card's center crop")] = None,
    tensorrt_version: Annotated[str | None, typer.Option(
        "--tensorrt-version", help="restamp the calibration cache for the TensorRT DeepStream runs on (e.g. 10.3.0)")
    ] = None,
    gpu_id: Annotated[int, typer.Option(help="gpu-id")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Write a DeepStream Gst-nvinfer classifier config (+ labels, model.onnx, calibration cache)."""
    from .deploy.deepstream import DeepStreamSettings, Mode, deploy_deepstream

    if mode not in ("primary", "secondary"):
        raise GhostedgeError(f"--mode {mode!r}: use primary or secondary")
    s = DeepStreamSettings(out=out_dir, mode=Mode(mode), batch=batch, threshold=threshold, gie_id=gie_id,
                           operate_on_gie_id=operate_on_gie_id,
                           operate_on_class_ids=_int_list(operate_on_class_ids, "--operate-on-class-ids"),
                           gpu_id=gpu_id, fp16=fp16, frame=_frame(frame), tensorrt_version=tensorrt_version)
    r = deploy_deepstream(engine, s)
    if json_out:
        print_json({"config": str(r.config), "labels": str(r.labels), "model": str(r.model),
                     "calib_cache": str(r.calib_cache) if r.calib_cache else None, "network_mode": r.network_mode,
                     "net_scale_factor": r.normalisation.net_scale_factor, "offsets": r.normalisation.offsets,
                     "channel_scale": r.normalisation.channel_scale,
                     "max_error_config_only": r.normalisation.max_error_config_only, "notes": r.notes})
        return
    out.print(f"nvinfer config -> {r.config} (network-mode={r.network_mode}, {s.mode.value})", highlight=False)
    _say_notes(r.notes)


@deploy_app.command("triton")
def triton(
    engine: EngineArg,
    out_dir: Annotated[Path, typer.Option("--out", help="the Triton model repository")] = Path("deploy/triton"),
    name: Annotated[str, typer.Option(help="the model's name (its folder in the repository)")] = "ghostnet",
    max_batch: Annotated[int | None, typer.Option(
        help="max_batch_size (default: the engine's build profile max; 32 where none is recorded)")] = None,
    instances: Annotated[int, typer.Option(help="instance_group count")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Write a Triton model repository entry: NAME/config.pbtxt, NAME/labels.txt, NAME/1/model.*."""
    from .deploy.triton import TritonSettings, deploy_triton

    r = deploy_triton(engine, TritonSettings(out=out_dir, name=name, max_batch=max_batch, instances=instances))
    if json_out:
        print_json({"config": str(r.config), "backend": r.backend, "max_batch_size": r.max_batch_size,
                     "files": [str(f) for f in r.files], "notes": r.notes})
        return
    out.print(f"Triton model {name!r} ({r.backend}, max_batch_size {r.max_batch_size}) -> {r.model_dir}",
              highlight=False)
    _say_notes(r.notes)
