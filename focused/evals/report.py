"""Eval results on disk and on screen: `results.json`, a markdown table (`results.md`), a terminal table and a PNG
plot (`plot.png`), for one or several checkpoints (FoT and baselines side by side).

Every eval returns an `EvalResults`: one `Series` per (checkpoint, setting), each a curve `y(x)` (passkey: accuracy
vs prompt tokens; perplexity: PPL vs context tokens) with per-point details. `write_report` writes the three files;
results of separate runs of the same eval are put on one plot and one table with

    python -m focused.evals.report --out out/compare out/fot/results.json out/pi/results.json [--overwrite]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

RESULTS_NAME, TABLE_NAME, PLOT_NAME = "results.json", "results.md", "plot.png"
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
# horizontal offset between neighbouring series, as a fraction of an octave (log x) or of the x spacing (linear x)
OFFSET = 0.04
OFFSET_NOTE = "points shifted sideways so equal values stay visible"


@dataclasses.dataclass
class Series:
    """One curve: `y[i]` measured at `x[i]` for one checkpoint (and setting); `details[i]` holds the raw numbers."""

    label: str
    checkpoint: str
    x: list[float]
    y: list[float]
    setting: str = ""
    details: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.label!r} has {len(self.x)} x values but {len(self.y)} y values")

    @property
    def name(self) -> str:
        return f"{self.label} ({self.setting})" if self.setting else self.label


@dataclasses.dataclass
class EvalResults:
    """Everything one eval measured. `metric` names y ("accuracy" is shown in %, anything else with 2 decimals)."""

    eval: str
    metric: str
    x_label: str
    description: str
    series: list[Series]
    higher_is_better: bool = True
    x_log: bool = True
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResults:
        fields = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(fields - set(data) - {"higher_is_better", "x_log", "config"})
        if missing:
            raise ValueError(f"not an eval results file: missing key(s) {missing}")
        values = {k: v for k, v in data.items() if k in fields}
        values["series"] = [Series(**s) for s in data["series"]]
        return cls(**values)


def load_results(path: str | Path) -> EvalResults:
    """Reads a `results.json` written by `write_report`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found")
    try:
        return EvalResults.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path} is not an eval results file: {str(e).splitlines()[0]}") from e


def merge_results(results: Sequence[EvalResults]) -> EvalResults:
    """All series of several runs of the same eval in one `EvalResults` (labels made unique)."""
    if not results:
        raise ValueError("nothing to merge: give at least one results file")
    kinds = sorted({r.eval for r in results})
    if len(kinds) > 1:
        raise ValueError(f"cannot merge results of different evals {kinds}: compare one eval at a time")
    series: list[Series] = []
    taken: set[str] = set()
    for r in results:  # a label seen in an earlier file gets #2, #3, ... (all its settings alike)
        rename = {}
        for label in dict.fromkeys(s.label for s in r.series):
            new, n = label, 1
            while new in taken:
                n += 1
                new = f"{label}#{n}"
            rename[label] = new
        taken.update(rename.values())
        series.extend(dataclasses.replace(s, label=rename[s.label]) for s in r.series)
    return dataclasses.replace(results[0], series=series, config={"merged": [r.config for r in results]})


def _format(metric: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric == "accuracy":
        return f"{100 * value:.1f}%"
    return f"{value:.2f}"


def _format_x(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _short(x: float) -> str:
    """Tick labels: 512, 2K, 256K, 1M."""
    for size, suffix in ((1 << 20, "M"), (1 << 10, "K")):
        if x >= size:
            return f"{x / size:g}{suffix}"
    return _format_x(x)


def _grid(results: EvalResults) -> tuple[list[float], list[list[str]]]:
    """Columns = every x of any series (sorted); one row of formatted cells per series."""
    xs = sorted({x for s in results.series for x in s.x})
    rows = []
    for s in results.series:
        values = dict(zip(s.x, s.y, strict=True))
        rows.append([s.name, *(_format(results.metric, values.get(x)) for x in xs)])
    return xs, rows


def title(results: EvalResults) -> str:
    """`passkey: accuracy vs prompt tokens`; the eval's name is left out when it is the metric's
    (`perplexity vs context tokens`, not `perplexity: perplexity vs ...`)."""
    what = f"{results.metric} vs {results.x_label}"
    return what if results.eval == results.metric else f"{results.eval}: {what}"


def markdown_table(results: EvalResults) -> str:
    """`results.md`: a title, the protocol in one paragraph, and one table (rows: checkpoints, columns: x)."""
    xs, rows = _grid(results)
    better = "higher" if results.higher_is_better else "lower"
    header = ["checkpoint", *(_format_x(x) for x in xs)]
    lines = [
        f"# {title(results)}",
        "",
        f"{results.description} ({better} is better)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *(["---:"] * len(xs))]) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def terminal_table(results: EvalResults) -> str:
    """The same table, aligned in plain text for a terminal."""
    xs, rows = _grid(results)
    header = [f"{results.metric} \\ {results.x_label}", *(_format_x(x) for x in xs)]
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for n, row in enumerate(table):
        cells = [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def shifted_x(results: EvalResults) -> list[list[float]]:
    """The x values each series is drawn at: series i of n is shifted by (i - (n-1)/2) * OFFSET (in octaves on a log
    axis, in units of the smallest x spacing on a linear one), so series with equal values do not hide each other.
    The tables and results.json keep the true x."""
    n = len(results.series)
    xs = sorted({x for s in results.series for x in s.x})
    gaps = [b - a for a, b in itertools.pairwise(xs) if b > a]
    step = min(gaps) if gaps else 1.0
    out = []
    for i, s in enumerate(results.series):
        shift = (i - (n - 1) / 2) * OFFSET if n > 1 else 0.0
        if results.x_log:
            out.append([x * 2**shift if x > 0 else x for x in s.x])
        else:
            out.append([x + shift * step for x in s.x])
    return out


def figure(results: EvalResults) -> Figure:
    """The plot: one line per series; one colour and marker per checkpoint, one line style per setting; log-2 x
    axis. Series are shifted slightly sideways (`shifted_x`) and the legend says so."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    checkpoints = list(dict.fromkeys(s.label for s in results.series))
    settings = list(dict.fromkeys(s.setting for s in results.series))
    n = len(results.series)
    for i, (s, xs) in enumerate(zip(results.series, shifted_x(results), strict=True)):
        points = sorted(zip(xs, s.y, strict=True))
        ys = [100 * y if results.metric == "accuracy" else y for _, y in points]
        which = checkpoints.index(s.label)
        ax.plot(
            [x for x, _ in points],
            ys,
            marker=MARKERS[which % len(MARKERS)],
            markersize=7 - 3 * i / max(n - 1, 1),  # later series smaller, so a point on top of another shows both
            color=f"C{which % 10}",
            linestyle=LINESTYLES[settings.index(s.setting) % len(LINESTYLES)],
            label=s.name,
            alpha=0.85,
        )
    if results.x_log:
        ax.set_xscale("log", base=2)
    xs = sorted({x for s in results.series for x in s.x})
    if 0 < len(xs) <= 12:
        ax.set_xticks(xs)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _short(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(results.x_label)
    ax.set_ylabel("accuracy (%)" if results.metric == "accuracy" else results.metric)
    if results.metric == "accuracy":
        ax.set_ylim(-3, 103)
    ax.set_title(title(results))
    ax.grid(True, alpha=0.3)
    if results.series:
        ax.legend(fontsize="small", title=OFFSET_NOTE if n > 1 else None, title_fontsize="x-small")
    return fig


def plot(results: EvalResults, path: str | Path) -> Path:
    """Writes `figure(results)` as a PNG (`plot.png`)."""
    path = Path(path)
    figure(results).savefig(path, dpi=120)
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_writable(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuses an `out_dir` that already holds results unless `overwrite` (checked before any eval runs)."""
    out_dir = Path(out_dir)
    if (out_dir / RESULTS_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out_dir / RESULTS_NAME} already exists: pick another out_dir or pass overwrite=True")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"out_dir {out_dir} exists and is not a directory")
    return out_dir


def write_report(results: EvalResults, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Writes `results.json`, `results.md` and `plot.png` into `out_dir`; returns their paths."""
    out_dir = check_writable(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / RESULTS_NAME, "md": out_dir / TABLE_NAME, "png": out_dir / PLOT_NAME}
    _write_atomic(paths["md"], markdown_table(results))
    plot(results, paths["png"])
    _write_atomic(paths["json"], json.dumps(results.to_dict(), indent=1, default=_json_default) + "\n")
    return paths


def _json_default(value: Any) -> Any:
    """numpy scalars / arrays and tuples inside details and configs."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to results.json")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focused.evals.report", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="results.json files of the same eval")
    parser.add_argument("--out", required=True, help="folder for the combined results.json, results.md, plot.png")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    args = parser.parse_args(argv)
    try:
        merged = merge_results([load_results(p) for p in args.results])
        paths = write_report(merged, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(terminal_table(merged))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
