"""The benchmark chart, drawn with matplotlib (the optional `bench` extra, which `make bench` installs).

Horizontal bars, one group per operation: each configuration's median cost as a ratio to `none`
(no BPF-LSM programs), with the rounds' spread as error bars (the lowest and highest round's ratio
to none's median), and a line at 1.0 (as cheap as none).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed (install the `bench` extra: `pip install -e '.[bench]'`)."""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # the median ratio
    low: float  # the lowest round's ratio
    high: float  # the highest round's ratio
    color: str


def bar_chart(title: str, groups: Sequence[tuple[str, Sequence[Bar]]], reference: float = 1.0) -> bytes:
    """A PNG: one horizontal bar per configuration, grouped under each heading, error bars for the
    spread, the median printed after each bar (as `1.23x`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to memory
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ChartUnavailable(f"the benchmark chart needs matplotlib ({exc}); pip install -e '.[bench]'") from None
    rows = sum(len(bars) + 1 for _, bars in groups)
    fig, ax = plt.subplots(figsize=(9, 0.38 * rows + 1.2), dpi=110)
    y = 0.0
    ticks: list[float] = []
    labels: list[str] = []
    for heading, bars in groups:
        ax.text(0, y, heading, fontweight="bold", va="center", ha="left", transform=ax.get_yaxis_transform())
        y += 1
        for bar in bars:
            ax.barh(y, bar.value, color=bar.color, height=0.7,
                    xerr=[[max(0.0, bar.value - bar.low)], [max(0.0, bar.high - bar.value)]], capsize=3,
                    error_kw={"elinewidth": 1, "ecolor": "#333333"})
            ax.text(max(bar.high, bar.value) * 1.01 + 0.02, y, f"{bar.value:.2f}x", va="center", fontsize=8)
            ticks.append(y)
            labels.append(bar.label)
            y += 1
    ax.axvline(reference, color="#888888", linewidth=1, linestyle="--")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_ylim(y - 0.4, -0.6)
    ax.set_xlabel("cost relative to no BPF-LSM programs (median of rounds; bars: lowest to highest round)")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()
