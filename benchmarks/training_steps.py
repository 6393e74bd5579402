"""Training step time of each loss setup, side by side: stage 1 MLSM only, MLSM + PSCL
(with and without background pixels in PSCL), stage 2 cross-entropy and NR.

One step = ``Trainer.train_step`` of the trainers themselves (``wsi_seg_training.stage1`` /
``wsi_seg_training.stage2``): their ``step`` (forward under the run's autocast, the losses of
``wsi_seg_training.losses`` configured from the config defaults), then backward, optimizer (+
scheduler) step. Each setup is a trainer of its own (network, optimizer) and a fixed
batch of synthetic patches (``wsi_seg_training.synthetic_dataset.write_dataset``; stage 2 with
pseudo-labels and CAMs written by ``generate_pseudo_labels`` from a random stage-1
network), so data loading is not timed. Setups alternate step by step so other load
hits all alike; the figure is the median over ``--steps`` steps after ``--warmup``.

Batch sizes default to the config defaults (``Stage1Config``: 16, ``Stage2Config``: 32,
the thesis'); random init, ``small`` preset (the swin-t is ~10× slower on a CPU).

``--encoders`` compares backbones instead (e.g. swin-t, a ViT-S/16 and a ViT-L/16 under
the multi-scale adapter, random weights): stage-1 MLSM+PSCL and stage-2 CE steps with
the encoder trained and frozen (``--freeze-encoder``), side by side. Each encoder and
stage runs in a fresh process (trained and frozen interleaved in it), so one large
network's memory does not stay resident under the next; each case's rows are printed
as soon as it is done.

Memory per step: the peak above what was resident before the step (activations,
gradients, temporaries) — on CUDA ``max_memory_allocated``, on the CPU the RSS
high-water mark (``VmHWM``, reset before every step through ``/proc/self/clear_refs``);
"weights+opt" is the size of the parameters and optimizer state.

    python benchmarks/training_steps.py --work /tmp/wsi_bench
    python benchmarks/training_steps.py --batch-size 8 --steps 20
    python benchmarks/training_steps.py --quick
    python benchmarks/training_steps.py --encoders swin-t,vit-s16,vit-l16 --batch-size 2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import autocast_name, print_table, work_folder  # noqa: E402
from wsi_seg_training.config import Stage1Config, Stage2Config, load_config  # noqa: E402
from wsi_seg_training.datasets import PatchDataset  # noqa: E402
from wsi_seg_training.datasets.pseudo import PseudoLabelDataset  # noqa: E402
from wsi_seg_training.loop import autocast_for  # noqa: E402
from wsi_seg_training.pseudo_labels import generate_pseudo_labels  # noqa: E402
from wsi_seg_training.stage1 import Stage1Trainer  # noqa: E402
from wsi_seg_training.stage2 import Stage2Trainer  # noqa: E402
from wsi_seg_training.synthetic_dataset import write_dataset  # noqa: E402
from wsi_seg_training.trainer import Trainer  # noqa: E402

from wsi_seg.model import PsclNet, save_checkpoint  # noqa: E402

Step = Callable[[], dict[str, float]]


@dataclass
class Setup:
    """One timed configuration: a name, its stage, batch size, a step closure and its trainer."""

    name: str
    stage: int
    batch_size: int
    step: Step
    trainer: Trainer | None = None

    def resident_mib(self) -> float:
        """Parameters + optimizer state of the trainer, MiB."""
        if self.trainer is None:
            return float("nan")
        tensors = list(self.trainer.net.parameters())
        tensors += [v for st in self.trainer.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20


class StepMemory:
    """Peak memory of one step above what was resident before it (MiB)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start = 0.0

    @staticmethod
    def _status(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        return float("nan")

    def begin(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = self._status("VmRSS:")
        except OSError:
            self.start = float("nan")

    def peak(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self.start
        try:
            return self._status("VmHWM:") - self.start
        except OSError:
            return float("nan")


def make_dataset(work: Path, n_train: int, seed: int) -> Path:
    """Synthetic LUAD-layout patches (2–4 classes each, so PSCL has pixels to contrast)."""
    root = work / f"train_steps_data_{n_train}_s{seed}"
    done = root / ".complete"  # written last: an interrupted write is redone, not reused
    if not done.is_file():
        write_dataset(root, n_train=n_train, n_val=2, n_test=2, seed=seed, classes_per_patch=(2, 4))
        done.write_text("ok\n")
    return root


def first_batch(dataset: torch.utils.data.Dataset, batch_size: int) -> dict[str, torch.Tensor]:
    return next(iter(DataLoader(dataset, batch_size=batch_size, shuffle=False)))


def _setup(name: str, stage: int, trainer: Trainer, device: torch.device, batch: dict[str, torch.Tensor]) -> Setup:
    """A prepared trainer, set up (network built and seeded) to step on ``batch``."""
    trainer.setup(device)
    return Setup(name, stage, trainer.cfg.batch_size, lambda: trainer.train_step(batch), trainer)


STAGE1_SETUPS = (("stage 1 MLSM only", False, True), ("stage 1 MLSM+PSCL", True, True),
                 ("stage 1 MLSM+PSCL, no bkg", True, False))


def stage1_setups(cfg: Stage1Config, device: torch.device, names: tuple[str, ...] | None = None,
                  suffix: str = "") -> tuple[list[Setup], Stage1Trainer]:
    """MLSM only, MLSM + PSCL, MLSM + PSCL without background (those in ``names`` if
    given): stage-1 trainers of ``cfg`` with PSCL switched; the last trainer (its model
    config makes stage 2's init)."""
    setups = []
    for name, pscl_on, with_bkg in STAGE1_SETUPS:
        if names is not None and name not in names:
            continue
        pscl = replace(cfg.pscl, enabled=pscl_on, include_background=with_bkg)
        trainer = Stage1Trainer(replace(cfg, pscl=pscl))
        trainer.prepare()
        records = trainer.data.index.split("train", need_labels=True)[: cfg.batch_size]
        batch = first_batch(PatchDataset(records, trainer.data.index.num_classes, background_seed=trainer.data.background_seed),
                            cfg.batch_size)
        setups.append(_setup(name + suffix, 1, trainer, device, batch))
    return setups, trainer


def stage2_setups(data_dir: Path, work: Path, stage1: Stage1Trainer, cfg: Stage2Config,
                  device: torch.device, names: tuple[str, ...] = ("ce", "nr"), suffix: str = "") -> list[Setup]:
    """CE and NR (those in ``names``): stage-2 trainers on pseudo-labels of a random
    stage-1 network."""
    torch.manual_seed(cfg.seed)
    tag = stage1.model_cfg.preset or stage1.model_cfg.backbone
    ckpt = save_checkpoint(PsclNet(stage1.model_cfg), work / f"train_steps_stage1_{tag}")
    pl_dir = work / f"train_steps_pseudo_labels_{tag}"
    generate_pseudo_labels(ckpt, data_dir, pl_dir, device=str(device), overwrite=True, progress=False)
    cfg = replace(cfg, init=str(ckpt), data=replace(cfg.data, path=str(data_dir), pseudo_labels=str(pl_dir)))
    setups = []
    for name in names:
        trainer = Stage2Trainer(replace(cfg, loss=replace(cfg.loss, name=name)))
        trainer.prepare()
        records = trainer.labels.records[: cfg.batch_size]
        batch = first_batch(PseudoLabelDataset(records, trainer.index.num_classes, with_cams=name == "nr"),
                            cfg.batch_size)
        setups.append(_setup(f"stage 2 {name.upper()}{suffix}", 2, trainer, device, batch))
    return setups


def time_steps(setups: list[Setup], steps: int, warmup: int, device: torch.device | None = None
               ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    """(seconds of each timed step, mean PSCL pixels sampled per step, largest step memory
    in MiB) per setup; setups alternate step by step; warm-up steps are dropped."""
    times: dict[str, list[float]] = {s.name: [] for s in setups}
    pixels: dict[str, list[float]] = {s.name: [] for s in setups}
    memory: dict[str, list[float]] = {s.name: [] for s in setups}
    mem = StepMemory(device or torch.device("cpu"))
    for i in range(warmup + steps):
        for s in setups:
            mem.begin()
            t = time.perf_counter()
            stats = s.step()
            elapsed = time.perf_counter() - t
            if i >= warmup:
                times[s.name].append(elapsed)
                pixels[s.name].append(stats.get("pscl_pixels", 0))
                memory[s.name].append(mem.peak())
    return times, {k: statistics.mean(v) for k, v in pixels.items()}, {k: max(v) for k, v in memory.items()}


def encoder_case(preset: str, stage: int, batch: int, steps: int, warmup: int, device_name: str, precision: str,
                 seed: int, threads: int, work: str) -> list[dict[str, object]]:
    """One encoder and stage, trained and frozen interleaved (run in a fresh process)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    data_dir = make_dataset(Path(work), batch, seed)
    setups: list[Setup] = []
    for freeze in (False, True):
        suffix = ", frozen" if freeze else ", trained"
        common = {"data.path": str(data_dir), "out": str(Path(work) / "unused_run"), "batch_size": batch,
                  "data.workers": 0, "device": device_name, "precision": precision, "progress": False,
                  "seed": seed, "encoder.freeze": freeze}
        cfg1 = load_config(Stage1Config, None, {**common, "model.preset": preset, "model.pretrained": "none"})
        if stage == 1:
            setups += stage1_setups(cfg1, device, names=("stage 1 MLSM+PSCL",), suffix=suffix)[0]
        else:
            stage1 = Stage1Trainer(cfg1)
            stage1.prepare()
            cfg2 = load_config(Stage2Config, None, common)
            setups += stage2_setups(data_dir, Path(work), stage1, cfg2, device, names=("ce",), suffix=suffix)
    times, _, memory = time_steps(setups, steps, warmup, device)
    rows = []
    for s in setups:
        net = s.trainer.net
        rows.append({
            "encoder": preset, "backbone": s.trainer.net.cfg.backbone, "setup": s.name, "stage": stage,
            "batch": batch, "s_step": statistics.median(times[s.name]),
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "trainable_m": sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6,
            "resident_mib": s.resident_mib(), "step_mib": memory[s.name],
        })
    return rows


def compare_encoders(args: argparse.Namespace) -> None:
    """The ``--encoders`` table: each (encoder, stage) in a fresh process, trained vs frozen."""
    import multiprocessing as mp

    presets = [p.strip() for p in args.encoders.split(",") if p.strip()]
    batch = args.batch_size or 2
    ctx = mp.get_context("spawn")
    rows: list[dict[str, object]] = []
    with work_folder(args.work) as work:
        for preset in presets:
            for stage in (1, 2):
                t0 = time.perf_counter()
                with ctx.Pool(1) as pool:
                    got = pool.apply(encoder_case, (preset, stage, batch, args.steps, args.warmup, args.device,
                                                    args.precision, args.seed, args.threads, str(work)))
                rows += got
                print(f"{preset} stage {stage}: done in {time.perf_counter() - t0:.0f} s", flush=True)
                for r in got:
                    print("  " + json.dumps(r), flush=True)
    resolved = autocast_name(autocast_for(torch.device(args.device), args.precision)[0])
    print(f"\nrandom init, device {args.device}, precision {args.precision} = {resolved}, "
          f"{args.threads or torch.get_num_threads()} torch threads, batch {batch} of 224-px synthetic patches, "
          f"median of {args.steps} steps after {args.warmup} warm-up, trained/frozen interleaved")
    trained = {(r["encoder"], r["stage"]): r for r in rows if str(r["setup"]).endswith("trained")}
    print_table(["encoder", "backbone", "setup", "params M", "trained M", "s/step", "images/s",
                 "weights+opt MiB", "step MiB", "time vs trained"],
                [[r["encoder"], r["backbone"], r["setup"], f"{r['params_m']:.1f}", f"{r['trainable_m']:.1f}",
                  f"{r['s_step']:.3f}", r["batch"] / r["s_step"], f"{r['resident_mib']:.0f}", f"{r['step_mib']:.0f}",
                  r["s_step"] / trained[(r["encoder"], r["stage"])]["s_step"]] for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="folder for the synthetic data (kept and reused)")
    ap.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--encoders", default="", metavar="PRESETS",
                    help="compare these presets (comma-separated, e.g. swin-t,vit-s16,vit-l16), encoder trained "
                         "vs frozen, instead of the loss setups (default batch 2)")
    ap.add_argument("--batch-size", type=int, default=0, help="both stages (0: the config defaults)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setup")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.warmup = args.batch_size or 4, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.encoders:
        compare_encoders(args)
        return
    bs1 = args.batch_size or Stage1Config().batch_size
    bs2 = args.batch_size or Stage2Config().batch_size
    with work_folder(args.work) as work:
        t0 = time.perf_counter()
        data_dir = make_dataset(work, max(bs1, bs2), args.seed)
        overrides = {"data.path": str(data_dir), "out": str(work / "unused_run"), "model.preset": args.preset,
                     "batch_size": bs1, "data.workers": 0, "device": args.device, "precision": args.precision,
                     "progress": False, "seed": args.seed}
        cfg1 = load_config(Stage1Config, None, overrides)
        cfg2 = load_config(Stage2Config, None, {**{k: v for k, v in overrides.items() if k != "model.preset"},
                                                "batch_size": bs2})
        device = torch.device(args.device)
        setups, stage1 = stage1_setups(cfg1, device)
        setups += stage2_setups(data_dir, work, stage1, cfg2, device)
        print(f"data and networks ready in {time.perf_counter() - t0:.0f} s; timing {args.warmup} + {args.steps} "
              f"steps per setup …", flush=True)
        times, pixels, memory = time_steps(setups, args.steps, args.warmup, device)
    med = {name: statistics.median(v) for name, v in times.items()}
    ref = {1: med["stage 1 MLSM only"], 2: med["stage 2 CE"]}
    resolved = autocast_name(autocast_for(torch.device(args.device), args.precision)[0])
    print(f"\npreset {args.preset} (random init), device {args.device}, precision {args.precision} = {resolved}, "
          f"{torch.get_num_threads()} torch threads, 224-px synthetic patches, median of {args.steps} steps "
          f"after {args.warmup} warm-up, setups interleaved")
    print_table(
        ["setup", "batch", "s/step", "min s", "max s", "images/s", "PSCL pixels", "step MiB", "vs stage ref"],
        [[s.name, s.batch_size, f"{med[s.name]:.3f}", f"{min(times[s.name]):.3f}", f"{max(times[s.name]):.3f}",
          s.batch_size / med[s.name], f"{pixels[s.name]:.0f}" if pixels[s.name] else "",
          f"{memory[s.name]:.0f}", med[s.name] / ref[s.stage]] for s in setups],
    )
    print("stage ref: stage 1 MLSM only / stage 2 CE")
    print(f"ratio PSCL/MLSM-only = {med['stage 1 MLSM+PSCL'] / ref[1]:.2f} (target ≤ 1.3); "
          f"without background in PSCL = {med['stage 1 MLSM+PSCL, no bkg'] / ref[1]:.2f}")
    print(f"ratio NR/CE = {med['stage 2 NR'] / ref[2]:.2f}")


if __name__ == "__main__":
    main()
