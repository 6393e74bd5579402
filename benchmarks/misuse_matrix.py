"""Misuse matrix of ``wsi-seg`` (issue 15): each case run against the real CLI.

Prints one Markdown row per case: exit code, the last line of stderr, and what is left
on disk. Run it against any checkout to compare versions side by side::

    python benchmarks/misuse_matrix.py --work /tmp/m_new
    python benchmarks/misuse_matrix.py --work /tmp/m_old --python OLD_VENV/bin/python

``--python``: the interpreter whose ``wsi_seg`` runs the cases (an environment with the old
checkout installed); the fixtures are made by this one. Cases run in their own folders.

Cases that never end on their own (absurd resolutions, huge sparse slides) are stopped
after ``--timeout`` seconds and reported as such, with the peak size of what they wrote.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

from wsi_seg.synthetic.files import (
    blob_image,
    edited_checkpoint,
    sparse_tiff,
    write_slide,
)

CLI = [sys.executable, "-c", "import sys; from wsi_seg.cli.main import main; sys.exit(main())"]
PY = [sys.executable, "-c"]  # set-up steps, with the same interpreter as the CLI


def tiny_checkpoint(root: Path, **overrides: object) -> Path:
    import torch

    from wsi_seg.model import PsclNet, preset_config, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(PsclNet(preset_config("tiny", stage=1, mpp=0.5)), root)


def disk(root: Path) -> str:
    """What a case left in its folder (top level), with wsi_seg completion flags."""
    items = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("_"):
            continue
        if p.is_dir():
            meta = p / "zarr.json"
            flag = ""
            if meta.exists():
                prov = json.loads(meta.read_text()).get("attributes", {}).get("wsi_seg")
                if prov is not None:
                    flag = " complete" if prov.get("complete") else " incomplete"
            n = sum(1 for _ in p.rglob("*"))
            items.append(f"{p.name}/ ({n} entries{flag})")
        else:
            items.append(f"{p.name} ({p.stat().st_size} B)")
    return ", ".join(items) or "nothing"


def tree_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Matrix:
    def __init__(self, work: Path, timeout: float, hang_timeout: float) -> None:
        self.work, self.timeout, self.hang = work, timeout, hang_timeout
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        fx = work / "_fixtures"
        fx.mkdir()
        self.slide = write_slide(fx / "slide.tif", blob_image(1024))
        self.big = write_slide(fx / "big.tif", blob_image(4096), tile_px=256)
        self.ckpt = tiny_checkpoint(fx / "ckpt")
        self.rows: list[tuple[str, str, str, str]] = []

    def case(self, name: str) -> Path:
        d = self.work / name.replace(" ", "_").replace("/", "_")[:60]
        d.mkdir()
        return d

    def run(self, *args: object, cwd: Path, model: bool = True, timeout: float | None = None,
            stdin_pipe_to: list[str] | None = None) -> tuple[str, str, float]:
        argv = [*CLI, *map(str, args)]
        if model and args and args[0] == "segment":
            argv += ["--model", str(self.ckpt), "--device", "cpu", "--no-progress"]
        t = time.perf_counter()
        try:
            p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout or self.timeout)
            rc, err = str(p.returncode), p.stderr
        except subprocess.TimeoutExpired as exc:
            rc = f"still running after {timeout or self.timeout:.0f} s (killed)"
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return rc, err, time.perf_counter() - t

    def add(self, name: str, rc: str, err: str, where: Path, extra: str = "") -> None:
        lines = [l for l in err.strip().splitlines() if l.strip()]
        msg = lines[-1] if lines else "(nothing on stderr)"
        if len(lines) > 1:
            msg += f" [{len(lines)} lines on stderr]"
        msg = msg.replace(str(self.work), "…").replace("|", "\\|")
        self.rows.append((name, rc, msg[:220], (disk(where) + extra).replace(str(self.work), "…")))
        print(f"| {name} | {rc} | {msg[:220]} | {self.rows[-1][3]} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a case may take")
    ap.add_argument("--hang-timeout", type=float, default=90.0,
                    help="seconds before a case known to run for hours in old versions is stopped")
    ap.add_argument("--only", default="", help="comma-separated case-name prefixes")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the wsi-seg version under test")
    args = ap.parse_args()
    CLI[0] = PY[0] = args.python
    m = Matrix(args.work, args.timeout, args.hang_timeout)
    print("| case | exit | message (last stderr line) | left on disk |\n|---|---|---|---|", flush=True)
    for fn in CASES:
        if not args.only or any(fn.__name__.startswith(p) for p in args.only.split(",")):
            fn(m)


def own_foreign_folder(m: Matrix) -> None:
    d = m.case("overwrite a user folder")
    (d / "results").mkdir()
    (d / "results" / "notes.txt").write_text("my notes")
    rc, err, _ = m.run("segment", m.slide, "--out", "results", "--overwrite", cwd=d)
    m.add("`--out results --overwrite`, results/ holds user files", rc, err, d,
          "; notes.txt " + ("kept" if (d / "results" / "notes.txt").exists() else "DELETED"))


def own_existing_file(m: Matrix) -> None:
    d = m.case("overwrite a file")
    (d / "existing_file").write_text("data")
    rc, err, _ = m.run("segment", m.slide, "--out", "existing_file", "--overwrite", cwd=d)
    m.add("`--out existing_file --overwrite`", rc, err, d)
    rc2, err2, _ = m.run("export", "existing_file.partial", "--geojson", "x.geojson", cwd=d, model=False)
    m.add("… then `export existing_file.partial`", rc2, err2, d)


def own_failed_overwrite(m: Matrix) -> None:
    d = m.case("failed overwrite keeps the old result")
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", cwd=d)
    bad = d / "bad.svs"
    bad.write_bytes(b"\0" * 1000)
    rc, err, _ = m.run("segment", bad, "--out", "o.zarr", "--overwrite", cwd=d)
    m.add("`--overwrite` of a complete result with an unreadable slide", rc, err, d)


def _start_segment(m: Matrix, d: Path) -> tuple[list[str], subprocess.Popen]:
    """Start segmenting the big slide into ``d/o.zarr``; return once it has written progress."""
    base = [*CLI, "segment", str(m.big), "--out", "o.zarr", "--model", str(m.ckpt), "--device", "cpu", "--no-progress"]
    a = subprocess.Popen(base, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prog = d / "o.zarr.partial" / ".wsi_seg_progress"
    t0 = time.time()
    while not (prog.exists() and prog.stat().st_size > 0) and a.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    return base, a


def concurrent(m: Matrix) -> None:
    d = m.case("two runs one out")
    base, a = _start_segment(m, d)
    b = subprocess.run([*base, "--overwrite"], cwd=d, capture_output=True, text=True, timeout=600)
    _, err_a = a.communicate(timeout=600)
    m.add("two runs on one `--out`: the second (`--overwrite`) started while the first runs", str(b.returncode), b.stderr, d)
    m.add("… the first run", str(a.returncode), err_a, d)


def stale_lock(m: Matrix) -> None:
    d = m.case("killed run then rerun")
    _, a = _start_segment(m, d)
    a.send_signal(signal.SIGKILL)
    a.wait()
    rc, err, _ = m.run("segment", m.big, "--out", "o.zarr", cwd=d, timeout=600)
    m.add("rerun after the first run was SIGKILLed (stale lock)", rc, err, d)


def fingerprint_collision(m: Matrix) -> None:
    d = m.case("fingerprint collision")
    # uncompressed tiles: same size, same first and last MiB, different middle
    img_a = blob_image(2048, seed=1)
    img_b = img_a.copy()
    img_b[700:1400, 300:1800] = (60, 20, 90)
    a_path = write_slide(d / "a.tif", img_a, compression=None)
    b_path = write_slide(d / "b.tif", img_b, compression=None, levels=[np.ascontiguousarray(img_a[::4, ::4])])
    same = (a_path.stat().st_size == b_path.stat().st_size
            and a_path.read_bytes()[: 1 << 20] == b_path.read_bytes()[: 1 << 20]
            and a_path.read_bytes()[-(1 << 20):] == b_path.read_bytes()[-(1 << 20):])
    base = [*CLI, "segment", str(a_path), "--out", "o.zarr", "--model", str(m.ckpt), "--device", "cpu", "--no-progress"]
    p = subprocess.Popen(base, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    prog = d / "o.zarr.partial" / ".wsi_seg_progress"
    t0 = time.time()
    while not (prog.exists() and prog.stat().st_size > 0) and p.poll() is None and time.time() - t0 < 120:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    rc, err, _ = m.run("segment", b_path, "--out", "o.zarr", cwd=d, timeout=600)
    m.add(f"resume slide b into an interrupted run of slide a (same size, head and tail: {same})", rc, err, d)


def absurd_72dpi(m: Matrix) -> None:
    d = m.case("72 dpi tiff")
    rgb = blob_image(320)[:250, :300]
    tifffile.imwrite(d / "photo.tif", rgb, tile=(64, 64), photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH", metadata=None)
    rc, err, _ = m.run("segment", "photo.tif", "--out", "o.zarr", cwd=d, timeout=m.hang)
    m.add("300×250 TIFF with a 72-dpi resolution tag (352.8 µm/px)", rc, err, d,
          f"; {tree_bytes(d / 'o.zarr.partial') / 1e6:.1f} MB in o.zarr.partial")


def absurd_mpp(m: Matrix) -> None:
    d = m.case("mpp 1000")
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--mpp", "1000", cwd=d, timeout=m.hang)
    m.add("`--mpp 1000`", rc, err, d, f"; {tree_bytes(d / 'o.zarr.partial') / 1e6:.1f} MB in o.zarr.partial")


def huge_sparse(m: Matrix) -> None:
    d = m.case("huge sparse tiff")
    path = d / "huge.tif"
    n = 1_000_000
    sparse_tiff(path, n)
    size_mb = path.stat().st_size / 1e6
    rc, err, secs = m.run("info", "huge.tif", cwd=d, model=False, timeout=m.hang)
    m.add(f"`info` on a sparse 10⁶×10⁶ px TIFF ({size_mb:.1f} MB on disk)", rc, err, d, f"; {secs:.1f} s")
    rc, err, secs = m.run("segment", "huge.tif", "--out", "o.zarr", cwd=d, timeout=m.hang)
    m.add("`segment` of the same", rc, err, d, f"; {secs:.1f} s")


def unknown_backbone(m: Matrix) -> None:
    d = m.case("unknown backbone")
    ck = edited_checkpoint(m.ckpt, d / "ckpt", backbone="no_such_net_224")
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--model", ck, "--device", "cpu", cwd=d, model=False)
    m.add("checkpoint config names an unknown timm backbone", rc, err, d)


def mpp_inf(m: Matrix) -> None:
    d = m.case("mpp inf")
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--mpp", "inf", cwd=d)
    m.add("`--mpp inf`", rc, err, d)
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--mpp", "nan", cwd=d)
    m.add("`--mpp nan`", rc, err, d)


def broken_pipe(m: Matrix) -> None:
    d = m.case("broken pipe")
    p = subprocess.run(f"{' '.join(map(repr, [*CLI, 'info', str(m.slide)]))} | head -1; echo \"rc=${{PIPESTATUS[0]}}\" >&2",
                       shell=True, executable="/bin/bash", cwd=d, capture_output=True, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    rc = lines[-1].removeprefix("rc=") if lines else "?"
    m.add("`wsi-seg info … | head -1`", rc, "\n".join(lines[:-1]), d)


def long_name(m: Matrix) -> None:
    d = m.case("long output name")
    out = "r" * 245 + ".zarr"
    rc, err, secs = m.run("segment", m.slide, "--out", out, cwd=d)
    m.add("250-character output name", rc, err, d, f"; {secs:.1f} s")


def config_defaults(m: Matrix) -> None:
    for key in ("class_names", "mpp"):
        d = m.case(f"config without {key}")
        ck = edited_checkpoint(m.ckpt, d / "ckpt", **{key: None})
        rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--model", ck, "--device", "cpu", "--no-progress",
                           cwd=d, model=False)
        m.add(f"checkpoint config without `{key}`", rc, err, d)
    d = m.case("patch size 0")
    ck = edited_checkpoint(m.ckpt, d / "ckpt", patch_size_px=0)
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--model", ck, "--device", "cpu", cwd=d, model=False)
    m.add("checkpoint config with `patch_size_px: 0`", rc, err, d)


def mrxs(m: Matrix) -> None:
    d = m.case("mrxs alone")
    (d / "scan.mrxs").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 2000)
    rc, err, _ = m.run("segment", "scan.mrxs", "--out", "o.zarr", cwd=d)
    m.add("`.mrxs` without its companion folder", rc, err, d)


def plain_images(m: Matrix) -> None:
    from PIL import Image

    img = blob_image(1024)
    for ext in ("png", "jpg"):
        d = m.case(f"plain {ext}")
        Image.fromarray(img).save(d / f"patch.{ext}")
        rc, err, _ = m.run("segment", f"patch.{ext}", "--out", "o.zarr", cwd=d)
        m.add(f"`.{ext}` image without `--mpp`", rc, err, d)
        rc, err, _ = m.run("segment", f"patch.{ext}", "--out", "o.zarr", "--mpp", "0.5", cwd=d)
        m.add(f"`.{ext}` image with `--mpp 0.5`", rc, err, d)
    d = m.case("stripped tiff")
    tifffile.imwrite(d / "strips.tif", img, photometric="rgb", rowsperstrip=64, metadata=None)
    rc, err, _ = m.run("segment", "strips.tif", "--out", "o.zarr", "--mpp", "0.5", cwd=d)
    m.add("non-pyramidal stripped TIFF with `--mpp 0.5`", rc, err, d)


# --- issue 22: nothing lost, nothing silently wrong -----------------------------------------
# Set-up steps run in a subprocess too, so they use the version under test (old or new paths).
_CORRECT = """
import sys
try:
    from wsi_seg.result.corrections import save_corrections
    from wsi_seg.result.reader import Result
except ImportError:  # before the engine moved into rooms
    from wsi_seg.corrections import save_corrections
    from wsi_seg.result import Result
out = sys.argv[1]
mask = Result.open(out).mask(0)[:32, :32]
save_corrections(out, (0, 0), mask, (mask % 4) + 1)
"""


def _segment(m: Matrix, d: Path, out: str = "o.zarr") -> None:
    rc, err, _ = m.run("segment", m.slide, "--out", out, cwd=d)
    assert rc == "0", err


def _labels_state(out: Path) -> str:
    return "labels/corrected " + ("kept" if (out / "labels" / "corrected").is_dir() else "GONE")


def overwrite_corrected(m: Matrix) -> None:
    d = m.case("overwrite a corrected result")
    _segment(m, d)
    subprocess.run([*PY, _CORRECT, str(d / "o.zarr")], check=True, capture_output=True, cwd=d)
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--overwrite", cwd=d)
    m.add("`segment --overwrite` of a result holding napari corrections", rc, err, d, "; " + _labels_state(d / "o.zarr"))
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--overwrite", "--discard-corrections", cwd=d)
    m.add("… with `--discard-corrections`", rc, err, d, "; " + _labels_state(d / "o.zarr"))


def two_trainings(m: Matrix) -> None:
    d = m.case("two trainings one out")
    rc, err, _ = m.run("synth-dataset", "data", "--n-train", "8", "--n-val", "2", "--n-test", "0", cwd=d)
    assert rc == "0", err
    base = [*CLI, "train", "--stage", "1", "--data", "data", "--out", "cd", "--preset", "tiny", "--device", "cpu",
            "--epochs", "3", "--batch-size", "4", "--no-progress"]
    a = subprocess.Popen([*base, "--seed", "1"], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    b = subprocess.run([*base, "--seed", "2"], cwd=d, capture_output=True, text=True, timeout=600)
    _, err_a = a.communicate(timeout=600)
    seed = "?"
    if (d / "cd" / "config.yaml").exists():
        seed = next((ln.split(":")[1].strip() for ln in (d / "cd" / "config.yaml").read_text().splitlines()
                     if ln.startswith("seed:")), "?")
    m.add("two `train --stage 1 --out cd` at once (seeds 1, 2): the second", str(b.returncode), b.stderr, d)
    m.add("… the first", str(a.returncode), err_a, d, f"; cd/config.yaml says seed {seed}")


def replaced_leftover(m: Matrix) -> None:
    d = m.case("killed during the overwrite swap")
    _segment(m, d)
    (d / "o.zarr").rename(d / "o.zarr.replaced")  # the state a SIGKILL between the two renames leaves
    rc, err, _ = m.run("report", "o.zarr", "--out", "r.png", cwd=d)
    m.add("only `o.zarr.replaced` left (killed mid-swap), then `report o.zarr`", rc, err, d)


def report_incomplete(m: Matrix) -> None:
    import json as _json

    d = m.case("report an incomplete result")
    _segment(m, d)
    meta = d / "o.zarr" / "zarr.json"
    doc = _json.loads(meta.read_text())
    doc["attributes"]["wsi_seg"]["complete"] = False
    meta.write_text(_json.dumps(doc))
    rc, err, _ = m.run("report", "o.zarr", "--out", "r.png", cwd=d)
    m.add("`report` of an incomplete result", rc, err, d)
    rc, err, _ = m.run("summarize", ".", cwd=d)
    m.add("`summarize` of a folder holding it", rc, err, d)


def nan_weights(m: Matrix) -> None:
    d = m.case("nan weights")
    ck = edited_checkpoint(m.ckpt, d / "ckpt")
    subprocess.run([*PY, "import sys, torch; from safetensors.torch import load_file, save_file; p = sys.argv[1]; "
                    "w = load_file(p); [v.fill_(float('nan')) for v in w.values() if v.is_floating_point()]; "
                    "save_file(w, p)", str(ck / "model.safetensors")], check=True, cwd=d)
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--model", ck, "--device", "cpu", "--no-progress",
                       cwd=d, model=False)
    m.add("checkpoint whose weights are NaN (a diverged training)", rc, err, d)


def many_classes(m: Matrix) -> None:
    d = m.case("300 classes")
    names = [f"c{i}" for i in range(300)]
    colors = [[i % 256, 0, 0] for i in range(300)]
    # a real 300-class network where the version under test builds one; else its config edited
    made = subprocess.run([*PY, "import sys, torch; from wsi_seg.model import PsclNet, preset_config, save_checkpoint; "
                           "torch.manual_seed(0); n = 300; save_checkpoint(PsclNet(preset_config('tiny', stage=1, "
                           "mpp=0.5, class_names=tuple(f'c{i}' for i in range(n)), class_colors=tuple((i % 256, 0, 0) "
                           "for i in range(n)))), sys.argv[1])", str(d / "ckpt")], capture_output=True, cwd=d)
    ck = d / "ckpt" if made.returncode == 0 else edited_checkpoint(m.ckpt, d / "ckpt", class_names=names,
                                                                     class_colors=colors)
    rc, err, _ = m.run("segment", m.slide, "--out", "o.zarr", "--model", ck, "--device", "cpu", "--no-progress",
                       cwd=d, model=False)
    m.add("checkpoint config with 300 classes (the mask is uint8)", rc, err, d)


def _check_dataset(m: Matrix, d: Path, name: str) -> None:
    """``check-dataset`` prints its findings on stdout: the row shows the first problem line."""
    p = subprocess.run([*CLI, "check-dataset", "data", "--no-progress"], cwd=d, capture_output=True, text=True,
                       timeout=m.timeout)
    lines = p.stdout.splitlines()
    found = [ln.strip() for ln in lines[next((i for i, ln in enumerate(lines) if "problem" in ln), len(lines)):]]
    m.add(name, str(p.returncode), "\n".join([*p.stderr.splitlines(), *(found[:2] or ["no problems reported"])]), d)


def bad_training_data(m: Matrix) -> None:
    import numpy as _np
    from PIL import Image

    d = m.case("16-bit image and duplicate rows")
    rc, err, _ = m.run("synth-dataset", "data", "--n-train", "6", "--n-val", "0", "--n-test", "0", "--format", "csv",
                       cwd=d)
    assert rc == "0", err
    first = sorted((d / "data").rglob("*.png"))[0]
    grey16 = (_np.asarray(Image.open(first).convert("L")).astype(_np.uint16) * 257)
    Image.fromarray(grey16).save(first)
    _check_dataset(m, d, "`check-dataset`: one patch is a 16-bit greyscale PNG")
    Image.open(sorted((d / "data").rglob("*.png"))[1]).convert("RGB").save(first)
    csv_path = next((d / "data").rglob("labels.csv"))
    lines = csv_path.read_text().splitlines()
    name, *labels = lines[1].split(",")
    flipped = ",".join([name, *[("0" if v.strip() == "1" else "1") if v.strip() in ("0", "1") else v for v in labels]])
    csv_path.write_text("\n".join([*lines, flipped]) + "\n")
    _check_dataset(m, d, "`check-dataset`: `labels.csv` lists one patch twice with opposite labels")


def absurd_runtime(m: Matrix) -> None:
    d = m.case("absurd batch and workers")
    rc, err, secs = m.run("segment", m.slide, "--out", "o.zarr", "--batch-size", "100000", cwd=d)
    m.add("`--batch-size 100000` (89 tissue patches)", rc, err, d, f"; {secs:.1f} s")
    rc, err, secs = m.run("segment", m.slide, "--out", "p.zarr", "--workers", "1000", cwd=d)
    m.add("`--workers 1000` on 2 CPUs", rc, err, d, f"; {secs:.1f} s")


def truncated_slide(m: Matrix) -> None:
    d = m.case("truncated slide")
    data = m.slide.read_bytes()
    (d / "cut.tif").write_bytes(data[: len(data) // 2])
    rc, err, _ = m.run("segment", "cut.tif", "--out", "o.zarr", cwd=d)
    m.add("a slide cut short (half its bytes)", rc, err, d)


def diverging_training(m: Matrix) -> None:
    import json as _json

    d = m.case("diverging training")
    rc, err, _ = m.run("synth-dataset", "data", "--n-train", "8", "--n-val", "0", "--n-test", "0", cwd=d)
    assert rc == "0", err
    rc, err, _ = m.run("train", "--stage", "1", "--data", "data", "--out", "run", "--preset", "tiny", "--device", "cpu",
                       "--epochs", "2", "--batch-size", "4", "--lr", "1e30", "--momentum", "0.9", "--no-progress", cwd=d)
    record = _json.loads((d / "run" / "run.json").read_text()).get("diverged") if (d / "run" / "run.json").exists() else None
    m.add("`train --lr 1e30` (the loss becomes NaN)", rc, err, d, f"; run.json diverged: {record}")


CASES = [own_foreign_folder, own_existing_file, own_failed_overwrite, concurrent, stale_lock,
         fingerprint_collision, absurd_72dpi, absurd_mpp, huge_sparse, unknown_backbone, mpp_inf,
         broken_pipe, long_name, config_defaults, mrxs, plain_images,
         # issue 22
         overwrite_corrected, two_trainings, replaced_leftover, report_incomplete, nan_weights, many_classes,
         bad_training_data, absurd_runtime, truncated_slide, diverging_training]

if __name__ == "__main__":
    main()
