"""Print the ratios of one or more `--benchmark-json` files side by side (ranges over runs).

python -m benchmarks.summarize run1.json [run2.json ...]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def ratios(path: str) -> dict[str, tuple[float, float, float]]:
    """`test[param]:key` → (value, baseline, ratio) for every recorded figure."""
    with open(path) as f:
        data = json.load(f)
    found: dict[str, tuple[float, float, float]] = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        for key, ratio in info.items():
            if not key.endswith("_ratio"):
                continue
            name = key[: -len("_ratio")]
            found[f"{bench['name']}:{name}"] = (info[name], info[f"{name}_baseline"], ratio)
    return found


def main(paths: list[str]) -> int:
    runs = [ratios(path) for path in paths]
    rows: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for run in runs:
        for key, figures in run.items():
            rows[key].append(figures)
    width = max((len(key) for key in rows), default=0)
    for key, figures in rows.items():
        values = ", ".join(f"{v:.4g}/{b:.4g}={r:.3f}" for v, b, r in figures)
        low = min(r for _, _, r in figures)
        high = max(r for _, _, r in figures)
        print(f"{key:<{width}}  ratio {low:.3f}..{high:.3f}  ({values})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
