"""Rendering: rich tables for the terminal, Markdown reports, PNG plots. JSON is the source of truth."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .backends.registry import all_backends, strip_engine_suffix
from .errors import GhostedgeError, atomic_path, write_text_atomic


def _f(v: float | None, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def _i(v: int | None) -> str:
    return "-" if v is None else str(v)


def _speed_rows(result: dict) -> list[dict]:
    """The timed rows: the PyTorch baseline (when it was timed), then the engines."""
    base = result.get("baseline")
    return ([base] if base and base.get("throughput") else []) + result["engines"]


def engine_label(r: dict) -> str:
    """A short label for terminal tables: 'int8 ort', 'fp16 trt', 'fp32 ov', 'pytorch'."""
    if r.get("backend") == "torch":
        return "pytorch"
    known = all_backends()
    short = known[r["backend"]].label if r.get("backend") in known else r.get("backend", "?")
    name = strip_engine_suffix(Path(r["path"]).name)
    stem = name.replace("ghostnet.", "").replace("ghostnet", "")
    label = f"{r.get('precision', '?')} {short}"
    if stem and stem != r.get("precision"):
        label += f" {stem[:10]}"
    return label


def bench_tables(result: dict) -> list[Table]:
    """Terminal tables that stay readable at 80 columns: short labels and headers, nothing wrapped."""
    rows = _speed_rows(result)
    env = result["environment"]
    t = Table(title=f"Speed, {result['img_size']} px, {env.get('threads')} threads, {env.get('cpu')}",
              title_justify="left")
    for c in ("engine", "batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "vs torch"):
        t.add_column(c, justify="left" if c == "engine" else "right", no_wrap=True)
    for r in rows:
        for b, thr in r["throughput"].items():
            lat = r["latency_ms"][b]
            sp = r.get("speedup_vs_baseline", {}).get(b)
            t.add_row(engine_label(r), b, _f(thr, 1), _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]),
                      "1.00x" if r is result.get("baseline") else (f"{sp:.2f}x" if sp else "-"))
    tables = [t]
    if result.get("eval"):
        a = Table(title=f"Accuracy vs FP32 PyTorch, {result['eval']}", title_justify="left")
        for c in ("engine", "top-1", "top-5", "drop", "agree %", "KL", "lost", "won"):
            a.add_column(c, justify="left" if c == "engine" else "right", no_wrap=True)
        b = result.get("baseline") or {}
        if b.get("top1") is not None:
            a.add_row("pytorch", _f(b["top1"]), _f(b["top5"]), "-", "-", "-", "-", "-")
        for r in result["engines"]:
            a.add_row(engine_label(r), _f(r.get("top1")), _f(r.get("top5")), _f(r.get("top1_drop_pts")),
                      _f(r.get("agreement")), _f(r.get("kl"), 4),
                      _i(r.get("fp32_right_engine_wrong")), _i(r.get("fp32_wrong_engine_right")))
        a.caption = "drop in points; lost / won: images FP32 got right and the engine wrong, and the reverse"
        tables.append(a)
    cc = result.get("calibration_check")
    if cc:
        c = Table(title=f"Not drift: agreement on {cc['images']}", title_justify="left")
        for col in ("engine", "agree %", "KL"):
            c.add_column(col, justify="left" if col == "engine" else "right", no_wrap=True)
        for r in result["engines"]:
            c.add_row(engine_label(r), _f(r.get("calibration_agreement")), _f(r.get("calibration_kl"), 4))
        c.caption = cc["note"]
        tables.append(c)
    return tables


def print_bench(result: dict, console: Console) -> None:
    for t in bench_tables(result):
        console.print(t)
    g = result.get("gate")
    if g:
        console.print(f"gate --max-drop {g['max_drop']}: " + ("[red]FAILED[/] " + "; ".join(g["failed"])
                                                             if g["failed"] else "[green]passed[/]"))


def bench_markdown(result: dict) -> str:
    env = result["environment"]
    lines = ["# ghostedge bench report", "",
             f"- input: {result['img_size']} px, batches {', '.join(map(str, result['batches']))}",
             f"- machine: {env.get('cpu')} ({env.get('threads')} threads)"
             + (f", GPU {env['gpu']}" if env.get("gpu") else "")
             + (f", nvpmodel {env['nvpmodel']}" if env.get("nvpmodel") else ""),
             f"- CPU flags: {' '.join(env.get('cpu_flags') or []) or '-'}",
             f"- runtimes: onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, torch {env.get('torch')}",
             "",
             "## Speed", "", "| engine | backend | precision | batch | images/s | p50 ms | p90 ms | p99 ms | speed-up vs FP32 PyTorch |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = _speed_rows(result)
    for r in rows:
        for b, thr in r["throughput"].items():
            lat = r["latency_ms"][b]
            sp = r.get("speedup_vs_baseline", {}).get(b)
            lines.append(f"| {Path(r['path']).name} | {r['backend']} | {r['precision']} | {b} | {thr:.1f} | "
                         f"{lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} | "
                         f"{'baseline' if r is result.get('baseline') else (f'{sp:.2f}x' if sp else '-')} |")
    if result.get("eval"):
        lines += ["", f"## Accuracy vs FP32 PyTorch ({result['eval']})", "",
                  "| engine | top-1 % | top-5 % | drop pts | agreement % | cosine | KL | FP32 right, engine wrong | FP32 wrong, engine right |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        b = result.get("baseline") or {}
        if b.get("top1") is not None:
            lines.append(f"| pytorch fp32 | {b['top1']:.2f} | {b['top5']:.2f} | - | - | - | - | - | - |")
        for r in result["engines"]:
            lines.append(f"| {Path(r['path']).name} | {_f(r.get('top1'))} | {_f(r.get('top5'))} | "
                         f"{_f(r.get('top1_drop_pts'))} | {_f(r.get('agreement'))} | {_f(r.get('cosine'), 5)} | "
                         f"{_f(r.get('kl'), 5)} | {_i(r.get('fp32_right_engine_wrong'))} | "
                         f"{_i(r.get('fp32_wrong_engine_right'))} |")
        lost = [(Path(r["path"]).name, c) for r in result["engines"] for c in r.get("classes_lost_most") or []]
        if lost:
            lines += ["", "Classes that lost most: " + "; ".join(f"{e}: {c['class']} -{c['drop_pts']} pts"
                                                                  for e, c in lost[:6])]
    choices = [(Path(r["path"]).name, r["cpu_choice"]) for r in result["engines"] if r.get("cpu_choice")]
    if choices:
        lines += ["", "## CPU engine choice", ""]
        for name, c in choices:
            im = c.get("images") or {}
            line = (f"- {name}: {c['chosen']} on {c.get('cpu')} ({'VNNI' if c.get('vnni') else 'no VNNI'}), checked "
                    f"on {im.get('real', '?')} held-out + {im.get('synthetic', '?')} synthetic images")
            if c.get("shortfall"):
                s = c["shortfall"]
                line += (f"; **no candidate kept the Q/DQ estimate's accuracy**: the most faithful was kept, "
                         f"{s['shortfall_pts']:.2f} pt short ({s['reason']})")
            lines.append(line)
    g = result.get("gate")
    if g:
        lines += ["", f"Gate --max-drop {g['max_drop']}: " + ("FAILED: " + "; ".join(g["failed"])
                                                             if g["failed"] else "passed")]
    cc = result.get("calibration_check")
    if cc:
        lines += ["", f"## Not a drift estimate: agreement on {cc['images']}", "", cc["note"][0].upper() + cc["note"][1:]
                  + ".", "", "| engine | agreement % with FP32 | KL |", "|---|---:|---:|"]
        lines += [f"| {Path(r['path']).name} | {_f(r.get('calibration_agreement'))} | {_f(r.get('calibration_kl'), 5)} |"
                  for r in result["engines"]]
    return "\n".join(lines) + "\n"


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise GhostedgeError("--plot needs matplotlib: pip install matplotlib") from None


def bench_plot(result: dict, dst: Path) -> Path:
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _speed_rows(result)
    has_acc = any(r.get("top1") is not None or r.get("agreement") is not None for r in result["engines"])
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(11 if has_acc else 6, 4.2), squeeze=False)
    ax = axes[0][0]
    color = {id(r): f"C{i}" for i, r in enumerate(rows)}  # one colour per engine in both panels
    for r in rows:
        bs = [int(b) for b in r["throughput"]]
        ax.plot(bs, list(r["throughput"].values()), marker="o", color=color[id(r)], label=engine_label(r))
    ax.set_xlabel("batch")
    ax.set_ylabel("images/s")
    ax.set_xscale("log", base=2)
    ax.set_title(f"Throughput ({result['img_size']} px)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if has_acc:
        ax2 = axes[0][1]
        key = "top1" if any(r.get("top1") is not None for r in result["engines"]) else "agreement"
        markers = dict(zip(result["batches"], "osD^v<>ph*"))
        b = result.get("baseline") or {}
        points = [(r, r.get(key)) for r in result["engines"]]
        if key == "top1" and b.get("top1") is not None and b.get("throughput"):
            points.append((b, b["top1"]))
        for r, acc in points:
            if acc is None:
                continue
            xs = [r["throughput"][str(bt)] for bt in result["batches"] if str(bt) in r["throughput"]]
            ax2.plot(xs, [acc] * len(xs), color=color.get(id(r)), alpha=0.4, lw=1)
            for bt in result["batches"]:
                if str(bt) in r["throughput"]:
                    ax2.scatter(r["throughput"][str(bt)], acc, marker=markers[bt], s=50, color=color.get(id(r)))
            ax2.annotate(engine_label(r), (max(xs), acc), fontsize=8, xytext=(4, 4), textcoords="offset points")
        for bt, mk in markers.items():
            ax2.scatter([], [], marker=mk, color="grey", label=f"batch {bt}")
        ax2.legend(fontsize=8, loc="lower right")
        ax2.set_xlabel("images/s")
        ax2.set_ylabel("top-1 %" if key == "top1" else "top-1 agreement with FP32 %")
        ax2.set_title("Accuracy against speed")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(dst) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return dst


def write_markdown(result: dict, dst: Path) -> Path:
    return write_text_atomic(dst, bench_markdown(result))
