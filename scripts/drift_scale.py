"""Drift at scale: peak memory and wall time of ``ghostedge bench ENGINE --eval SET`` at two set sizes, what
the FP32 reference cache saves, and ``ghostedge quantize --eval`` on a 50,000-image set at 224 px.

The sets are symlink trees under --work (never in the repository), the 13,394 Imagenette JPEGs repeated
under new names in their class folders. Each run is a child process; its peak RSS is the kernel's
(``ru_maxrss`` of the child, VmHWM for a partial run). Usage (from the repository root):

    python scripts/drift_scale.py                          # bench at 5,000 and 20,000 images, cache, quantize 50k
    python scripts/drift_scale.py --quantize-seconds 300   # stop the 50,000-image quantize after 5 min (RSS so far)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_set(src: Path, dst: Path, n: int) -> Path:
    """n images as symlinks in ImageFolder layout, cycling over src/{train,val}/<wnid>/*."""
    if dst.is_dir() and sum(1 for _ in dst.rglob("*.JPEG")) == n:
        return dst
    files = sorted(p for p in src.glob("*/*/*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    for i in range(n):
        f = files[i % len(files)]
        d = dst / f.parent.name
        d.mkdir(parents=True, exist_ok=True)
        link = d / f"{i:06d}_{f.name}"
        if not link.is_symlink():
            link.symlink_to(f.resolve())
    return dst


def peak_rss_child(args: list[str], env: dict | None = None) -> tuple[float, float, str, str, float]:
    """(wall s, peak RSS MiB, stdout, stderr, CPU s) of one child process (its own rusage, from wait4)."""
    import tempfile

    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t = time.perf_counter()
        proc = subprocess.Popen(args, stdout=fo, stderr=fe, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"{' '.join(args)} failed:\n{err[-2000:]}")
    return wall, ru.ru_maxrss / 1024, out, err, ru.ru_utime + ru.ru_stime


def vm(pid: int, key: str) -> float:
    try:
        m = re.search(rf"{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) / 1024 if m else float("nan")
    except OSError:
        return float("nan")


QUANTIZE_CHILD = """
import sys, time
from pathlib import Path
from ghostedge.quantize import QuantizeConfig, quantize
from ghostedge.checkpoint import ModelSpec
t0 = time.perf_counter()
shown = {}
def tick(what, done, total):
    if done // 1000 > shown.get(what, -1) or done == total:
        shown[what] = done // 1000
        print(f"{time.perf_counter() - t0:.1f} {what} {done} {total}", flush=True)
quantize(QuantizeConfig(calib=Path("calib"), out=Path(sys.argv[2]), eval_dir=Path(sys.argv[1]), num_images=128,
                        threads=int(sys.argv[3]), spec=ModelSpec(preprocess="size=224 resize=256")), progress=tick)
print(f"{time.perf_counter() - t0:.1f} done", flush=True)
"""


def cache_figures(engine: str, s: Path, n: int, env: dict, threads: int, w: Path) -> None:
    """The drift pass with the FP32 reference computed (and cached), then from the cache."""
    cached = [PY, "-m", "ghostedge", "bench", engine, "--eval", str(s), "--baseline", "none", "--batch", "32",
              "--iters", "3", "--warmup", "1", "--json", "--threads", str(threads)]
    first, second = peak_rss_child(cached, env), peak_rss_child(cached, env)
    e_first, e_second = (json.loads(r[2])["eval_seconds"] for r in (first, second))
    print(f"reference cache ({w / 'cache'}): drift pass on {n} images {e_first:.1f} s computing the FP32 "
          f"reference, {e_second:.1f} s from the cache (said so: {'from the cache' in ' '.join(second[3].split())})",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "imagenette")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ghostedge-drift-scale"))
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--quantize-images", type=int, default=50000, help="0: skip the quantize run")
    ap.add_argument("--quantize-seconds", type=float, default=0, help="stop quantize after this long (0: to the end)")
    ap.add_argument("--skip-cache", action="store_true", help="skip the reference-cache figures")
    ap.add_argument("--threads", type=int, default=1, help="inference threads (1 keeps a shared machine's figures steady)")
    a = ap.parse_args()
    w = a.work
    eng = w / "engines"
    env = {"GHOSTEDGE_CACHE_DIR": str(w / "cache")}
    if not (eng / "ghostnet.int8.ort.onnx").is_file():
        subprocess.run([PY, "-m", "ghostedge", "quantize", "--calib", "calib", "--out", str(eng), "--num-images", "128"],
                       check=True, cwd=ROOT, capture_output=True)
        subprocess.run([PY, "-m", "ghostedge", "build", "--int8", "--backend", "onnxruntime", "--engines", str(eng)],
                       check=True, cwd=ROOT, capture_output=True)
    engine = str(eng / "ghostnet.int8.ort.onnx")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    flags = set(next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split())
    print(f"CPU: {cpu}, {os.cpu_count()} cores; " + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in
                                                             ("avx512_vnni", "avx_vnni", "amx_int8")))
    rows = []
    sizes = sorted(int(s) for s in a.sizes.split(",") if s.strip())
    for n in sizes:
        s = make_set(a.data, w / f"set_{n}", n)
        bench = [PY, "-m", "ghostedge", "bench", engine, "--eval", str(s), "--baseline", "none", "--batch", "32",
                 "--iters", "3", "--warmup", "1", "--json", "--no-reference-cache", "--threads", str(a.threads)]
        wall, rss, out, _, cpu_s = peak_rss_child(bench, env)
        d = json.loads(out)
        rows.append((n, wall, d["eval_seconds"], rss, cpu_s))
        print(f"bench --eval {n:>6} images: wall {wall:6.1f} s (CPU {cpu_s:6.1f} s), drift pass {d['eval_seconds']:6.1f} s "
              f"({n / d['eval_seconds']:.0f} img/s, FP32 reference + INT8 engine), peak RSS {rss:.0f} MiB", flush=True)
    if len(rows) >= 2:
        (n0, w0, e0, r0, c0), (n1, w1, e1, r1, c1) = rows[0], rows[-1]
        print(f"{n1} vs {n0} images (x{n1 / n0:.1f}): peak RSS x{r1 / r0:.2f}; drift pass x{e1 / e0:.2f} "
              f"(per image x{(e1 / n1) / (e0 / n0):.2f}); whole command wall x{w1 / w0:.2f}, CPU x{c1 / c0:.2f}")
    for n in sizes[:1] if not a.skip_cache else []:
        s = w / f"set_{n}"
        cache_figures(engine, s, n, env, a.threads, w)

    if a.quantize_images:
        n = a.quantize_images
        s = make_set(a.data, w / f"set_{n}", n)
        err = open(w / "quantize.stderr", "w")
        proc = subprocess.Popen([PY, "-c", QUANTIZE_CHILD, str(s), str(w / "q224"), str(a.threads)],
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env={**os.environ, **env})
        t0, last = time.time(), ""
        os.set_blocking(proc.stdout.fileno(), False)
        samples = []
        while proc.poll() is None:
            time.sleep(2)
            for ln in proc.stdout.readlines():
                last = ln.strip()
                m = re.match(r"([\d.]+) drift: FP32 \+ INT8 on images (\d+) (\d+)", last)
                if m:
                    samples.append((int(m.group(2)), float(m.group(1)), vm(proc.pid, "VmRSS"), vm(proc.pid, "VmHWM")))
            peak = vm(proc.pid, "VmHWM")
            if a.quantize_seconds and time.time() - t0 > a.quantize_seconds:
                proc.terminate()
                proc.wait()
                break
        rest = proc.stdout.read() or ""
        last = (rest.strip().splitlines() or [last])[-1]
        for done, at, rss, hwm in samples[:: max(1, len(samples) // 8)] + samples[-1:]:
            print(f"  quantize --eval {n} at 224 px: {done:>6} images streamed at {at:6.0f} s, RSS {rss:.0f} MiB, "
                  f"peak so far {hwm:.0f} MiB")
        if len(samples) >= 2:
            (d0, t0s, *_), (d1, t1s, *_) = samples[0], samples[-1]
            rate = (d1 - d0) / (t1s - t0s)
            print(f"  streaming at {rate:.1f} img/s (FP32 reference + Q/DQ estimate, 224 px): all {n} images "
                  f"would take about {n / rate / 60:.0f} min")
        err.close()
        if proc.returncode not in (0, None, -15):
            print((w / "quantize.stderr").read_text()[-2000:])
        print(f"quantize --eval {n} images at 224 px: {'finished' if last.endswith('done') else 'stopped'} after "
              f"{time.time() - t0:.0f} s (last: {last}); peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
