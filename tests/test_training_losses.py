"""PSCL (thesis eq. 4.4–4.8), its pixel sampling budget, and MLSM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsi_seg.errors import ConfigError

from wsi_seg.model.heads import gate_weights, mask_absent_classes
from wsi_seg.model.predict_rules import PredictRules

from wsi_seg_training.cams import background_at, pixel_pseudo_labels
from wsi_seg_training.losses import MLSMLoss, PSCLLoss, sample_pixels, water_fill


def supcon_eq_4_8(features: torch.Tensor, labels: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Eq. 4.8 written out, over the kept pixels, averaged over anchors with a positive
    (the AvgNonZeroReducer reading of 1/|F̂| the thesis uses)."""
    z = F.normalize(features, dim=1)
    terms = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        terms.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in positives) / len(positives))
    return torch.tensor(sum(terms) / len(terms))


def test_pixel_labels_eq_4_6_by_hand():
    # two classes, 1×3 feature pixels; background channel appended last (label 2)
    cams = torch.tensor([[[[0.9, 0.1, 0.2]], [[0.3, 0.2, 0.6]]]])
    bkg = torch.tensor([[[0.0, 0.24, 0.7]]])
    labels = pixel_pseudo_labels(cams, bkg, threshold=0.25)
    # px0: class 0 (0.9); px1: max 0.24 ≤ τ → -1; px2: background 0.7 beats 0.6
    assert labels.tolist() == [[[0, -1, 2]]]
    assert pixel_pseudo_labels(cams, None, 0.25).tolist() == [[[0, -1, 1]]]


def test_background_seed_is_area_interpolated():
    seed = torch.zeros(1, 4, 4, dtype=torch.bool)
    seed[0, :2, :2] = True
    seed[0, 2:, 2] = True
    assert background_at(seed, (2, 2)).tolist() == [[[1.0, 0.0], [0.0, 0.5]]]


def test_pscl_matches_eq_4_8_written_out():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 2, 3)
    # labels per pixel set through one-hot CAMs; two pixels fall below τ and are dropped
    wanted = torch.tensor([[[0, 1, 0], [2, -1, 1]], [[1, 1, 2], [0, -1, 2]]])
    cams = torch.zeros(2, 2, 2, 3)
    bkg = torch.zeros(2, 2, 3)
    for b, i, j in torch.nonzero(wanted >= 0).tolist():
        if wanted[b, i, j] == 2:
            bkg[b, i, j] = 0.9
        else:
            cams[b, wanted[b, i, j], i, j] = 0.8
    loss_fn = PSCLLoss(max_pixels_per_class_per_image=None, max_pixels_total=None)
    assert torch.equal(loss_fn.pixel_labels(cams, bkg), wanted)
    got = loss_fn(features, cams, bkg)
    flat_f = features.permute(0, 2, 3, 1).reshape(-1, 5)
    flat_l = wanted.reshape(-1)
    ref = supcon_eq_4_8(flat_f[flat_l >= 0], flat_l[flat_l >= 0])
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert loss_fn.last_stats == {"kept_pixels": 10, "sampled_pixels": 10}


def test_pscl_background_option_and_absent_classes():
    cams = torch.tensor([[[[0.9, 0.1, 0.5]], [[0.3, 0.8, 0.1]]]])
    bkg = torch.tensor([[[0.0, 0.0, 0.9]]])
    with_bkg = PSCLLoss(include_background=True).pixel_labels(cams, bkg)
    without = PSCLLoss(include_background=False).pixel_labels(cams, bkg)
    assert with_bkg.tolist() == [[[0, 1, 2]]] and without.tolist() == [[[0, 1, -1]]]
    # class 1 is absent from the image label: its CAM is zeroed before the argmax
    absent = PSCLLoss().pixel_labels(cams, bkg, image_labels=torch.tensor([[1.0, 0.0]]))
    assert absent.tolist() == [[[0, -1, 2]]]
    assert mask_absent_classes(cams, torch.tensor([[0.0, 1.0]]))[0, 0].abs().sum() == 0


def test_gating_eq_4_4_keeps_background():
    cams = torch.tensor([[[[0.9, 0.1]], [[0.3, 0.8]]]])
    bkg = torch.tensor([[[0.0, 0.5]]])
    logits = torch.tensor([[math.log(0.9 / 0.1), math.log(0.7 / 0.3)]])  # sigmoid 0.9, 0.7
    weights, _ = gate_weights(logits, torch.ones(1, 2, dtype=torch.bool), 0.8)
    gated = cams * weights[:, :, None, None]
    assert torch.equal(gated[0, 0], cams[0, 0]) and gated[0, 1].abs().sum() == 0
    labels = PSCLLoss(gating=PredictRules(gating_threshold=0.8)).pixel_labels(cams, bkg, logits=logits)
    assert labels.tolist() == [[[0, 2]]]  # class 1 gated away; background still takes px 1
    with pytest.raises(ConfigError):
        PSCLLoss(gating=PredictRules(gating_threshold=0.8)).pixel_labels(cams, bkg)


def test_cams_are_detached_and_features_get_gradients():
    torch.manual_seed(0)
    features = torch.randn(2, 4, 3, 3, requires_grad=True)
    cams = torch.rand(2, 3, 3, 3, requires_grad=True)
    loss = PSCLLoss()(features, cams, torch.rand(2, 96, 96) > 0.5)
    loss.backward()
    assert cams.grad is None
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_nothing_kept_gives_a_zero_loss_with_a_graph():
    features = torch.randn(1, 4, 2, 2, requires_grad=True)
    loss = PSCLLoss(threshold=0.5)(features, torch.full((1, 2, 2, 2), 0.1))
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None


def test_sampling_budget_per_class_per_image_and_total():
    gen = torch.Generator().manual_seed(0)
    image = torch.repeat_interleave(torch.arange(3), 300)  # 3 images × 300 pixels
    labels = torch.cat([torch.zeros(250, dtype=torch.long), torch.ones(50, dtype=torch.long)]).repeat(3)
    idx = sample_pixels(image, labels, 5, max_per_class_per_image=100, max_total=None, generator=gen)
    counts = torch.bincount(image[idx] * 5 + labels[idx], minlength=15).view(3, 5)
    assert counts[:, 0].tolist() == [100, 100, 100] and counts[:, 1].tolist() == [50, 50, 50]
    idx = sample_pixels(image, labels, 5, max_per_class_per_image=100, max_total=200, generator=gen)
    assert idx.numel() == 200
    assert torch.bincount(labels[idx]).tolist() == [100, 100]  # water-filled between classes
    assert torch.equal(idx, torch.unique(idx))  # sorted, no repeats


def test_sampling_is_seeded():
    image = torch.zeros(1000, dtype=torch.long)
    labels = torch.randint(0, 3, (1000,), generator=torch.Generator().manual_seed(1))
    draw = lambda s: sample_pixels(image, labels, 3, 50, 120, torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))


def test_water_fill():
    assert water_fill([5, 100, 100], 105) == [5, 50, 50]
    assert water_fill([5, 100, 100], 1000) == [5, 100, 100]
    assert sum(water_fill([7, 7, 7], 10)) == 10


def test_pscl_respects_its_memory_budget():
    torch.manual_seed(0)
    loss_fn = PSCLLoss(threshold=0.0, max_pixels_per_class_per_image=20, max_pixels_total=64)
    loss_fn(torch.randn(4, 8, 16, 16), torch.rand(4, 3, 16, 16), torch.rand(4, 64, 64) > 0.5)
    assert loss_fn.last_stats["kept_pixels"] == 4 * 256
    assert loss_fn.last_stats["sampled_pixels"] == 64
    assert loss_fn.memory_budget_bytes == 50 * 64 * 64


def test_pscl_uses_pml_supcon_with_the_thesis_settings():
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.reducers import AvgNonZeroReducer

    sup = PSCLLoss().loss
    assert sup.temperature == 0.1
    assert isinstance(sup.reducer, AvgNonZeroReducer) and isinstance(sup.distance, CosineSimilarity)
    assert sup.distance.normalize_embeddings


def test_mlsm_is_the_thesis_formula():
    x = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([[1.0, 0.0, 1.0]])
    expected = -(y * F.logsigmoid(x) + (1 - y) * F.logsigmoid(-x)).mean()
    assert MLSMLoss()(x, y).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError):
        MLSMLoss()(x, y[:, :2])
