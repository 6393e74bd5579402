"""Training step time of each loss setup, side by side: stage 1 MLSM only, MLSM + PSCL
(with and without background pixels in PSCL), stage 2 cross-entropy and NR.

One step = what the trainers' loops do per batch (``training.stage1`` / ``training.stage2``):
forward (under the run's autocast), the loss modules of ``training.losses`` configured
from the config defaults, ``zero_grad``, backward, optimizer (+ scheduler) step. The
forward modules, network builders, loss modules and ``segmentation_loss`` are the
training code's own; only the ~10-line loop body is repeated here. Each setup has its
own network and optimizer and a fixed batch of synthetic patches
(``training.synthetic_dataset.write_dataset``; stage 2 with pseudo-labels and CAMs
written by ``generate_pseudo_labels`` from a random stage-1 network), so data loading is
not timed. Setups alternate step by step so other load hits all alike; the figure is the
median over ``--steps`` steps after ``--warmup``.

Batch sizes default to the config defaults (``Stage1Config``: 16, ``Stage2Config``: 32,
the thesis'); random init, ``small`` preset (the swin-t is ~10× slower on a CPU).

``--encoders`` compares backbones instead (e.g. swin-t, a ViT-S/16 and a ViT-L/16 under
the multi-scale adapter, random weights): stage-1 MLSM+PSCL and stage-2 CE steps with
the encoder trained and frozen (``--freeze-encoder``), side by side. Each encoder and
stage runs in a fresh process (trained and frozen interleaved in it), so one large
network's memory does not stay resident under the next.

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
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import autocast_name, print_table, work_folder  # noqa: E402

from wsi_seg.model import ModelConfig, PsclNet, cams_from_class_maps, load_checkpoint, save_checkpoint  # noqa: E402

from training.config import EncoderTraining, Stage1Config, Stage2Config, load_stage1_config  # noqa: E402
from training.encoder_training import parameter_groups  # noqa: E402
from training.datasets import PatchDataset, open_dataset  # noqa: E402
from training.datasets.pseudo import PseudoLabelDataset, open_pseudo_labels  # noqa: E402
from training.loop import autocast_for  # noqa: E402
from training.losses import GumbelSoftmax, MLSMLoss, NRLoss, PSCLLoss, default_supcon  # noqa: E402
from training.pseudo_labels import generate_pseudo_labels  # noqa: E402
from training.reproducibility import seed_everything  # noqa: E402
from training.stage1 import _Stage1Forward, build_model_config, resolve_data  # noqa: E402
from training.stage2 import _SegmentationForward, segmentation_loss, stage2_network  # noqa: E402
from training.synthetic_dataset import write_dataset  # noqa: E402

Step = Callable[[], dict[str, float]]


@dataclass
class Setup:
    """One timed configuration: a name, its stage, batch size, a step closure, and the
    bytes its parameters and optimizer state hold (after the first step)."""

    name: str
    stage: int
    batch_size: int
    step: Step
    net: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None

    def resident_mib(self) -> float:
        """Parameters + optimizer state, MiB."""
        tensors = list(self.net.parameters()) if self.net is not None else []
        if self.optimizer is not None:
            tensors += [v for st in self.optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
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


STAGE1_SETUPS = (("stage 1 MLSM only", False, True), ("stage 1 MLSM+PSCL", True, True),
                 ("stage 1 MLSM+PSCL, no bkg", True, False))


def stage1_setups(cfg: Stage1Config, device: torch.device, names: tuple[str, ...] | None = None,
                  suffix: str = "") -> tuple[list[Setup], ModelConfig]:
    """MLSM only, MLSM + PSCL, MLSM + PSCL without background (the stage-1 loop body; those in
    ``names`` if given), and the stage-1 model config they use. The optimizer gets the
    training code's parameter groups (``cfg.encoder``: frozen or slower backbone)."""
    data = resolve_data(cfg)
    model_cfg = build_model_config(cfg, data)
    records = data.index.split("train", need_labels=True)[: cfg.batch_size]
    batch = first_batch(PatchDataset(records, data.index.num_classes, seed=data.seed), cfg.batch_size)
    images, labels = batch["image"].to(device), batch["labels"].to(device)
    background = batch["background"].to(device) if data.seed.enabled else None
    autocast, use_scaler = autocast_for(device, cfg.precision)
    setups = []
    for name, pscl_on, with_bkg in STAGE1_SETUPS:
        if names is not None and name not in names:
            continue
        seed_everything(cfg.seed)
        net = PsclNet(model_cfg).to(device).train()
        forward = _Stage1Forward(net)
        opt = torch.optim.SGD(parameter_groups(net, cfg.optim.lr, cfg.encoder), lr=cfg.optim.lr,
                              momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10_000, power=cfg.optim.poly_power)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        mlsm_loss = MLSMLoss()
        pscl_loss = PSCLLoss(
            threshold=cfg.pscl.threshold, include_background=with_bkg,
            gating_threshold=cfg.pscl.gating_threshold if cfg.pscl.gating else None,
            max_pixels_per_class_per_image=cfg.pscl.max_pixels_per_class_per_image,
            max_pixels_total=cfg.pscl.max_pixels_total, loss=default_supcon(cfg.pscl.temperature),
        )

        def step(net=net, forward=forward, opt=opt, sched=sched, scaler=scaler, mlsm_loss=mlsm_loss,
                 pscl_loss=pscl_loss, pscl_on=pscl_on) -> dict[str, float]:
            with autocast:
                logits, class_maps, features = forward(images)
            total = mlsm_loss(logits, labels)
            if pscl_on:
                cams = cams_from_class_maps(class_maps.detach().float())
                pscl = pscl_loss(features.float(), cams, background, image_labels=labels, logits=logits)
                total = total + cfg.pscl.weight * pscl
            loss = total.item()
            opt.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            return {"loss": loss, "pscl_pixels": pscl_loss.last_stats.get("sampled_pixels", 0) if pscl_on else 0}

        setups.append(Setup(name + suffix, 1, cfg.batch_size, step, net, opt))
    return setups, model_cfg


def stage2_setups(data_dir: Path, work: Path, stage1_cfg: ModelConfig, cfg: Stage2Config,
                  device: torch.device, names: tuple[str, ...] = ("ce", "nr"), suffix: str = "") -> list[Setup]:
    """CE and NR (those in ``names``): the stage-2 loop body, on pseudo-labels of a random
    stage-1 network; parameter groups as in training (``cfg.encoder``)."""
    torch.manual_seed(cfg.seed)
    tag = stage1_cfg.preset or stage1_cfg.backbone
    ckpt = save_checkpoint(PsclNet(stage1_cfg), work / f"train_steps_stage1_{tag}")
    pl_dir = work / f"train_steps_pseudo_labels_{tag}"
    generate_pseudo_labels(ckpt, data_dir, pl_dir, device=str(device), overwrite=True, progress=False)
    index = open_dataset(data_dir)
    records = open_pseudo_labels(pl_dir, index, need_cams=True).records[: cfg.batch_size]
    batch = first_batch(PseudoLabelDataset(records, index.num_classes, with_cams=True), cfg.batch_size)
    images = batch["image"].to(device)
    init = load_checkpoint(ckpt)
    autocast, use_scaler = autocast_for(device, cfg.precision)
    setups = []
    for name in names:
        seed_everything(cfg.seed)
        net = stage2_network(init).to(device)
        net.cam_head.requires_grad_(False)
        net.train()
        forward = _SegmentationForward(net)
        opt = torch.optim.AdamW(parameter_groups(net, cfg.optim.lr, cfg.encoder), lr=cfg.optim.lr,
                                weight_decay=cfg.optim.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        nr = NRLoss(probabilities=GumbelSoftmax(tau=cfg.loss.gumbel_tau)) if name == "nr" else None

        def step(forward=forward, opt=opt, scaler=scaler, name=name, nr=nr) -> dict[str, float]:
            with autocast:
                logits = forward(images)
            loss = segmentation_loss(name, logits, batch, device, nr)
            value = loss.item()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            return {"loss": value}

        setups.append(Setup(f"stage 2 {name.upper()}{suffix}", 2, cfg.batch_size, step, net, opt))
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
    model_cfg = None
    for freeze in (False, True):
        suffix = ", frozen" if freeze else ", trained"
        cfg1 = load_stage1_config(None, {
            "data.path": str(data_dir), "out": str(Path(work) / "unused_run"), "model.preset": preset,
            "batch_size": batch, "data.workers": 0, "device": device_name, "precision": precision,
            "progress": False, "seed": seed, "encoder.freeze": freeze})
        if stage == 1:
            got, model_cfg = stage1_setups(cfg1, device, names=("stage 1 MLSM+PSCL",), suffix=suffix)
        else:
            model_cfg = build_model_config(cfg1, resolve_data(cfg1))
            cfg2 = Stage2Config(batch_size=batch, device=device_name, precision=precision, seed=seed,
                                encoder=EncoderTraining(freeze=freeze))
            got = stage2_setups(data_dir, Path(work), model_cfg, cfg2, device, names=("ce",), suffix=suffix)
        setups += got
    times, _, memory = time_steps(setups, steps, warmup, device)
    rows = []
    for s in setups:
        net = s.net
        rows.append({
            "encoder": preset, "backbone": model_cfg.backbone if model_cfg else "", "setup": s.name,
            "stage": stage, "batch": batch, "s_step": statistics.median(times[s.name]),
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
    resolved = autocast_name(autocast_for(torch.device(args.device), args.precision)[0])
    print(f"\nrandom init, device {args.device}, precision {args.precision} = {resolved}, "
          f"{args.threads or torch.get_num_threads()} torch threads, batch {batch} of 224-px synthetic patches, "
          f"median of {args.steps} steps after {args.warmup} warm-up, trained/frozen interleaved")
    by_key = {(r["encoder"], r["stage"], str(r["setup"]).endswith("frozen")): r for r in rows}
    table = []
    for r in rows:
        trained = by_key[(r["encoder"], r["stage"], False)]
        table.append([r["encoder"], r["backbone"], r["setup"], f"{r['params_m']:.1f}", f"{r['trainable_m']:.1f}",
                      f"{r['s_step']:.3f}", r["batch"] / r["s_step"], f"{r['resident_mib']:.0f}",
                      f"{r['step_mib']:.0f}", r["s_step"] / trained["s_step"]])
    print_table(["encoder", "backbone", "setup", "params M", "trained M", "s/step", "images/s",
                 "weights+opt MiB", "step MiB", "time vs trained"], table)


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
        cfg1 = load_stage1_config(None, overrides)
        cfg2 = Stage2Config(batch_size=bs2, device=args.device, precision=args.precision, seed=args.seed)
        device = torch.device(args.device)
        setups, model_cfg = stage1_setups(cfg1, device)
        setups += stage2_setups(data_dir, work, model_cfg, cfg2, device)
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
