"""Draw the figures `python -m bench --plot DIR` kept: `python -m bench.plot DIR`.

- scale.png: for map, compare and convert, the seconds of vhdtool and qemu-img against the
  virtual size (log-log), empty disks solid, 1% full dashed;
- ratios.png: the table of ratios vhdtool/qemu-img at each size, coloured by how far from parity;
- commit.png: merge and umount --commit against qemu-img commit, as bars.

Each picture is titled with the date and load average of its run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

WORKS = ("map", "compare", "convert")


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _stamp(doc: dict[str, Any]) -> str:
    return f"{doc['date']}, load average {doc['load']:.1f}"


def plot_scale(doc: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fills = list(dict.fromkeys(r["fill"] for r in rows))
    fig, axes = plt.subplots(1, len(WORKS), figsize=(4.2 * len(WORKS), 3.6), sharey=True)
    for ax, work in zip(axes, WORKS, strict=True):
        for fill, style in zip(fills, ("-", "--"), strict=False):
            picked = sorted((r for r in rows if r["work"] == work and r["fill"] == fill), key=lambda r: r["size_gib"])
            sizes = [r["size_gib"] for r in picked]
            ax.plot(sizes, [r["vhdtool"] for r in picked], style, marker="o", color="C0", label=f"vhdtool, {fill}")
            ax.plot(sizes, [r["qemu_img"] for r in picked], style, marker="s", color="C1", label=f"qemu-img, {fill}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(work)
        ax.set_xlabel("virtual size (GiB)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("seconds, whole command")
    axes[-1].legend(fontsize="small")
    fig.suptitle(f"Disk-size sweep: dynamic VHDs made by qemu-img ({_stamp(doc)})")
    fig.tight_layout()
    out = [folder / "scale.png"]
    fig.savefig(out[0], dpi=80)
    plt.close(fig)

    columns = sorted({(r["size_gib"], r["fill"]) for r in rows}, key=lambda k: (fills.index(k[1]), k[0]))
    ratios = {(r["work"], r["size_gib"], r["fill"]): r["vhdtool"] / r["qemu_img"] for r in rows if r["qemu_img"]}
    cells = [[f"{ratios[(w, g, f)]:.1f}x" if (w, g, f) in ratios else "" for g, f in columns] for w in WORKS]
    colours = [[_colour(ratios.get((w, g, f))) for g, f in columns] for w in WORKS]
    fig, ax = plt.subplots(figsize=(1.1 * len(columns) + 1.5, 0.45 * len(WORKS) + 1.2))
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        cellColours=colours,
        rowLabels=list(WORKS),
        colLabels=[f"{g} GiB\n{f}" for g, f in columns],
        loc="center",
        cellLoc="center",
    )
    table.scale(1, 1.6)
    ax.set_title(f"vhdtool / qemu-img, wall time ({_stamp(doc)})", fontsize="medium")
    fig.tight_layout()
    out.append(folder / "ratios.png")
    fig.savefig(out[1], dpi=80)
    plt.close(fig)
    return out


def _colour(ratio: float | None) -> str:
    if ratio is None:
        return "white"
    return "#c8e6c9" if ratio <= 1.0 else "#fff9c4" if ratio <= 6.0 else "#ffcdd2"


def plot_commit(doc: dict[str, Any], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    labels = [r["work"] for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["vhdtool"] for r in rows], 0.4, label="vhdtool", color="C0")
    ax.bar([i + 0.2 for i in x], [r["qemu_img"] for r in rows], 0.4, label="qemu-img commit -t writeback", color="C1")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("seconds")
    ax.legend(fontsize="small")
    ax.set_title(f"Committing {doc['size_mib']} MiB ({_stamp(doc)})", fontsize="medium")
    fig.tight_layout()
    out = folder / "commit.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return [out]


def plot(folder: str | Path) -> list[Path]:
    """Draw every picture whose figures are in ``folder``; the paths of the pictures."""
    folder = Path(folder)
    drawn: list[Path] = []
    scale = _load(folder, "scale")
    if scale is not None:
        drawn += plot_scale(scale, folder)
    commit = _load(folder, "commit")
    if commit is not None:
        drawn += plot_commit(commit, folder)
    return drawn


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.plot DIR")
    for picture in plot(sys.argv[1]):
        print(f"drew {picture}")
