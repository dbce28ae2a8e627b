"""Evaluate checkpoints (FoT and baselines) on one eval: passkey retrieval, perplexity vs memory, dictionary lookup.

usage: python eval.py --config CONFIG --config.checkpoints="('runs/a','runs/b')" --config.out_dir=DIR
           [--config.FIELD=VALUE ...] [--verbose]
       python eval.py --config CONFIG --help     every field of CONFIG with its value

Checkpoints are run directories, step directories (runs/a/checkpoints/300), saved models or Hugging Face folders.
Writes results.json, results.md and plot.png into config.out_dir (existing results are kept unless
--config.overwrite=True) and prints the table.

exit status: 0 done; 2 bad config, a missing or unreadable checkpoint, or existing results (one "error: ..." line)
--verbose: also show HF datasets' progress bars and library log records
"""

import sys
from pathlib import Path

import ml_collections

from focused import cli


def _evaluate(config: ml_collections.ConfigDict) -> None:
    from focused.evals.report import terminal_table
    from focused.evals.runner import run

    results = run(config)
    print(terminal_table(results))
    print(f"wrote results.json, results.md, plot.png to {config.out_dir}")


def main(argv: list[str]) -> int:
    return cli.run(
        argv,
        _evaluate,
        doc=__doc__,
        kind="eval",
        configs_dir=Path(__file__).resolve().parent / "configs",
        on_keyboard_interrupt="nothing was written",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
