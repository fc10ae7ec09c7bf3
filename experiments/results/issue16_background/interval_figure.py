"""Draw ``interval_sweep.png`` from ``interval_sweep.json`` (the lines ``interval_probe.py`` printed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    data = json.loads((HERE / "interval_sweep.json").read_text())
    rows = [r for r in data["variants"] if r["variant"].startswith("3,1,")]
    rows.sort(key=lambda r: int(r["variant"].split(",")[2]))
    hi = [int(r["variant"].split(",")[2]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(hi, [r["ratio"] for r in rows], marker="o", label="γ = 3 for t ≤ t_hi")
    ax1.axhline(2.0, color="grey", ls="--", lw=1, label="goal: 2× the real floor")
    cond = next(r for r in data["variants"] if r["variant"] == "1,1,1000")
    ax1.axhline(cond["ratio"], color="C2", ls=":", lw=1, label="γ = 1 (conditional)")
    ax1.set_xlabel("t_hi (guidance for t ≤ t_hi; 1000 = every t, the book)")
    ax1.set_ylabel("DDIM-50 FID / real floor")
    ax1.legend(fontsize=8)
    ax2.plot(hi, [r["acc"] for r in rows], marker="o", color="C1", label="γ = 3 for t ≤ t_hi")
    ax2.axhline(0.95, color="grey", ls="--", lw=1, label="goal: 0.95")
    ax2.axhline(cond["acc"], color="C2", ls=":", lw=1, label="γ = 1 (conditional)")
    ax2.set_xlabel("t_hi")
    ax2.set_ylabel("cfg_accuracy (shipped judge)")
    ax2.legend(fontsize=8)
    fig.suptitle(f"Shipped step-10 UNet, {data['n']} DDIM-50 samples per point, labels i % 10", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "interval_sweep.png", dpi=110)


if __name__ == "__main__":
    main()
