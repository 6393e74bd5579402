"""Seeded, class-balanced sampling of labelled pixels under a memory budget.

SupCon builds several M×M matrices (≈45 bytes per pair with autograd), so the number
of pixels M fed to it must be bounded. Sampling keeps at most ``max_per_group`` pixels
of each (image, class) group, then, if the total still exceeds ``max_total``, shares
that total between the classes by water-filling (small classes keep all their pixels,
large ones share the rest equally). Draws come from an explicit ``torch.Generator``.
"""

from __future__ import annotations

import torch


def water_fill(counts: list[int], total: int) -> list[int]:
    """Quotas ≤ counts summing to min(total, sum(counts)), as equal as the counts allow."""
    quotas = [0] * len(counts)
    remaining, left = total, len(counts)
    for i in sorted(range(len(counts)), key=lambda j: counts[j]):
        take = min(counts[i], remaining // left)
        quotas[i] = take
        remaining -= take
        left -= 1
    # hand out what integer division left over, one pixel at a time, to groups with room
    for i in sorted(range(len(counts)), key=lambda j: counts[j], reverse=True):
        if remaining <= 0:
            break
        extra = min(counts[i] - quotas[i], remaining)
        quotas[i] += extra
        remaining -= extra
    return quotas


def sample_per_group(groups: torch.Tensor, quotas: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices (sorted) of a uniform random subset with at most ``quotas[g]`` members per group.

    ``groups`` (M,) int64 in [0, G) on the CPU; ``quotas`` (G,) int64.
    """
    m = groups.numel()
    if m == 0:
        return groups.new_zeros(0)
    perm = torch.randperm(m, generator=generator)
    order = perm[torch.argsort(groups[perm], stable=True)]  # grouped, random within group
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups, minlength=quotas.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(m) - starts[sorted_groups]
    keep = order[rank < quotas[sorted_groups]]
    return torch.sort(keep).values


def sample_pixels(
    image_index: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    max_per_class_per_image: int | None,
    max_total: int | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Indices into the kept pixels to feed SupCon; all of them when within budget.

    ``image_index`` and ``labels`` (M,) int64 on the CPU, labels in [0, num_labels).
    """
    idx = torch.arange(labels.numel())
    if max_per_class_per_image is not None:
        groups = image_index * num_labels + labels
        n_groups = int(groups.max()) + 1 if groups.numel() else 0
        if groups.numel() and int(torch.bincount(groups).max()) > max_per_class_per_image:
            quotas = torch.full((n_groups,), max_per_class_per_image, dtype=torch.int64)
            idx = sample_per_group(groups, quotas, generator)
    if max_total is not None and idx.numel() > max_total:
        sub_labels = labels[idx]
        counts = torch.bincount(sub_labels, minlength=num_labels)
        quotas = torch.tensor(water_fill(counts.tolist(), max_total), dtype=torch.int64)
        idx = idx[sample_per_group(sub_labels, quotas, generator)]
    return idx
