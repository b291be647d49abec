"""The latency-vs-load plot. matplotlib lives in the benchmark's own virtualenv
(``bench/.venvs/plot``, installed on first use), so the project does not depend on it; this
file runs there as a script on a JSON file of the measured points:

    bench/.venvs/plot/bin/python bench/plot.py points.json docs/benchmark-latency.png

``points.json``: ``{"title": str, "series": {gateway: [[rate, added_p50, added_p99], ...]}}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venvs" / "plot"
COLORS = {"Ki2API": "#1f77b4", "LiteLLM": "#d62728"}


def render(points_file: Path, out: Path) -> None:  # runs inside the plot venv
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(points_file.read_text())
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=110)
    for gateway, rows in data["series"].items():
        if not rows:
            continue
        color = COLORS.get(gateway, "gray")
        rates = [r[0] for r in rows]
        # A negative "added" figure is noise (the direct run had the hiccup): drawn as 0.
        p99 = [max(r[2], 0.0) for r in rows]
        p50 = [max(r[1], 0.0) for r in rows]
        ax.plot(rates, p99, "o-", color=color, label=f"{gateway}, added p99")
        ax.plot(rates, p50, "s--", color=color, alpha=0.6, label=f"{gateway}, added p50")
    for limit in (5, 50):
        ax.axhline(limit, color="gray", linewidth=0.8, linestyle=":")
        ax.annotate(
            f"{limit} ms",
            xy=(0, limit),
            xycoords=("axes fraction", "data"),
            xytext=(4, 3),
            textcoords="offset points",
            fontsize=8,
            color="gray",
        )
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("offered load, requests per second (open loop, Poisson arrivals)")
    ax.set_ylabel("latency added by the gateway, ms (symlog; noise below 0 drawn as 0)")
    ax.set_title(data["title"], fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out)


def ensure_venv() -> Path:
    """The plot venv's python, with matplotlib (installed once)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
    probe = subprocess.run([str(python), "-c", "import matplotlib"], capture_output=True)
    if probe.returncode != 0:
        print(f"installing matplotlib into {VENV} (once) ...", flush=True)
        subprocess.run(
            [str(VENV / "bin" / "pip"), "install", "-q", "matplotlib"],
            check=True,
            capture_output=True,
            timeout=900,
        )
    return python


def plot(points_file: Path, out: Path) -> None:
    """Draw from the main process: run this file in the plot venv."""
    python = ensure_venv()
    subprocess.run(
        [str(python), __file__, str(points_file), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )


if __name__ == "__main__":
    render(Path(sys.argv[1]), Path(sys.argv[2]))
