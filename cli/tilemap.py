"""``maskc inspect --png``: a picture of the tile map (empty, full, partial), one panel per mask slice."""

from __future__ import annotations

import os
from pathlib import Path

from maskc.cli.errors import UserError
from maskc.runtime.format import Plan, tile_map

MAX_PANELS = 8
COLORS = ("#f4f4f4", "#1f4e79", "#e8912d")  # empty, full, partial


def draw_tile_map(plan: Plan, path: Path) -> None:
    """Write a PNG of the plan's tile classes; needs the optional ``viz`` extra (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'maskc[viz]'") from None
    panels = min(plan.slices, MAX_PANELS)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.6), squeeze=False)
    counts = plan.tile_counts()
    for s, ax in enumerate(axes[0]):
        ax.imshow(tile_map(plan, s), cmap=ListedColormap(COLORS), vmin=0, vmax=2, interpolation="nearest")
        b, h = divmod(s, plan.heads)
        ax.set_title(f"batch {b}, head {h}" if plan.slices > 1 else "tile map", fontsize=10)
        ax.set_xlabel(f"key tile ({plan.block_n} keys)")
        ax.set_ylabel(f"query tile ({plan.block_m} queries)")
    fig.suptitle(
        f"{plan.q_len}x{plan.kv_len}, {plan.block_m}x{plan.block_n} tiles: {counts['tiles_full']} full, "
        f"{counts['tiles_partial']} partial, {counts['tiles_empty']} empty"
        + (f" (first {panels} of {plan.slices} slices)" if plan.slices > panels else ""),
        fontsize=10,
    )
    fig.legend(handles=[Patch(color=c, label=l) for c, l in zip(COLORS, ("empty", "full", "partial"))], loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
