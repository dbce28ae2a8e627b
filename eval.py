"""Evaluate checkpoints (FoT and baselines) on one eval: passkey retrieval or perplexity vs memory size.

python eval.py --config configs/eval_passkey.py --config.checkpoints="('runs/tiny_fot','runs/tiny_pi')" \
    --config.out_dir=out/passkey [--config.overwrite=True ...]

Writes results.json, results.md and plot.png into config.out_dir and prints the table.
"""

import sys

from focused.config import ConfigError, load_config
from focused.evals.report import terminal_table
from focused.evals.runner import run


def main(argv: list[str]) -> int:
    try:
        config = load_config(argv)
        results = run(config)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(terminal_table(results))
    print(f"wrote results.json, results.md, plot.png to {config.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
