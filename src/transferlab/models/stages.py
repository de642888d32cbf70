"""Where a backbone can be cut: its stage groups (what `--unfreeze N` counts) and its chain of
children (what lets a frozen prefix run once and be cached)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TransferlabError


def stage_groups(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of each stage, in forward order, as timm's own `group_matcher` groups them
    (stem, then each stage; the final conv or norm joins the last stage)."""
    named = [n for n, _ in backbone.named_parameters()]
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is not None:
        from timm.models import group_parameters

        groups = [list(v) for v in group_parameters(backbone, matcher(coarse=True)).values()]
        if sorted(n for g in groups for n in g) == sorted(named):
            return groups
    # Without a matcher (or one that misses parameters): each top-level child is a stage.
    groups: dict[str, list[str]] = {}
    for name in named:
        groups.setdefault(name.split(".")[0], []).append(name)
    return list(groups.values())


def last_stages(backbone: nn.Module, count: int | str, option: str = "--unfreeze") -> list[str]:
    """Parameter names of the last `count` stages ('all' for every stage)."""
    groups = stage_groups(backbone)
    if count == "all":
        return [n for g in groups for n in g]
    count = int(count)
    if count > len(groups):
        raise TransferlabError(f"{option} {count}: this backbone has {len(groups)} stages (`transferlab layers` "
                               f"shows them): give 1 to {len(groups)}, or all")
    return [n for g in groups[len(groups) - count:] for n in g] if count > 0 else []


def module_chain(backbone: nn.Module, probe_size: int = 64) -> list[tuple[str, nn.Module]] | None:
    """Children (sequential ones opened one level) whose composition reproduces backbone(x).

    Checked numerically on a random input, so a model whose forward is not a plain chain (a ViT
    adds position embeddings between children) gets None instead of a silently wrong cut.
    """
    chain: list[tuple[str, nn.Module]] = []
    for name, child in backbone.named_children():
        if isinstance(child, nn.Sequential) and len(child) > 0:
            chain += [(f"{name}.{sub}", m) for sub, m in child.named_children()]
        else:
            chain.append((name, child))
    return chain if reproduces(backbone, chain, probe_size) else None


def reproduces(backbone: nn.Module, chain: list[tuple[str, nn.Module]], probe_size: int = 64) -> bool:
    """Whether running `chain` in turn gives backbone(x), on a random input in eval mode."""
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, probe_size, probe_size, generator=torch.Generator().manual_seed(0))
            expected = backbone(x)
            out = x
            for _, module in chain:
                out = module(out)
        return out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-4, atol=1e-5)
    except Exception:  # a model that cannot run the probe this way cannot be cut this way either
        return False
    finally:
        backbone.train(was_training)
