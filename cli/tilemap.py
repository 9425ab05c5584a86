"""``maskc inspect --png``: a picture of the tile map (empty, full, partial), one panel per mask slice.

The axes count whole tiles, the title is wrapped to the figure's width, and a reordered plan's map
says that it shows the tiles the kernels visit: those of the mask with its tokens renumbered.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from maskc.cli.errors import UserError
from maskc.runtime.format import Plan, atomic_path, tile_map

MAX_PANELS = 8
COLORS = ("#f4f4f4", "#1f4e79", "#e8912d")  # empty, full, partial


def draw_tile_map(plan: Plan, path: Path) -> None:
    """Write a PNG of the plan's tile classes; needs the optional ``viz`` extra (matplotlib)."""
    fig = tile_map_figure(plan)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        _pyplot().close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'maskc[viz]'") from None
    return plt


def tile_map_figure(plan: Plan) -> Any:
    """The figure of the plan's tile map: a panel per slice (the first :data:`MAX_PANELS`)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    panels = min(plan.slices, MAX_PANELS)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.6), squeeze=False)
    counts = plan.tile_counts()
    order = ", reordered" if plan.reordered else ""
    for s, ax in enumerate(axes[0]):
        ax.imshow(tile_map(plan, s), cmap=ListedColormap(COLORS), vmin=0, vmax=2, interpolation="nearest")
        b, h = divmod(s, plan.heads)
        ax.set_title(f"batch {b}, head {h}" if plan.slices > 1 else "tile map", fontsize=10)
        ax.set_xlabel(f"key tile ({plan.block_n} keys{order})")
        ax.set_ylabel(f"query tile ({plan.block_m} queries{order})")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))
    title = (f"{plan.q_len}x{plan.kv_len}, {plan.block_m}x{plan.block_n} tiles: {counts['tiles_full']:,} full, "
             f"{counts['tiles_partial']:,} partial, {counts['tiles_empty']:,} empty"
             + (f" (first {panels} of {plan.slices} slices)" if plan.slices > panels else "")
             + ("; the tiles of the tokens reordered (RCM), as the kernels visit them" if plan.reordered else ""))
    top = _fit_title(fig, title)
    fig.legend(handles=[Patch(color=c, label=l) for c, l in zip(COLORS, ("empty", "full", "partial"))], loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.07, 1, top))
    return fig


def _fit_title(fig: Any, title: str) -> float:
    """Set the title, wrapped until it fits the figure's width; return the figure fraction left
    below it."""
    renderer = fig.canvas.get_renderer()
    text = fig.suptitle(title, fontsize=10)
    width = len(title)
    while text.get_window_extent(renderer).width > 0.96 * fig.bbox.width and width > 10:
        width = int(width * 0.9)
        text.set_text(textwrap.fill(title, width))
    return (text.get_window_extent(renderer).y0 - 8) / fig.bbox.height
