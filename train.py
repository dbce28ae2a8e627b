"""Train (or continue pre-training) a LLaMA / FoT model.

usage: python train.py --config CONFIG [--config.FIELD=VALUE ...] [--verbose]
       python train.py --config CONFIG --help     every field of CONFIG with its value

Writes config.workdir: checkpoints/<step>/ (orbax), metrics.jsonl, tensorboard/, model_config.json, tokenizer/.
Re-running the same command resumes from the newest checkpoint that restores; a run directory is used by one
training at a time, and a resume with another model config is refused. Ctrl-C (SIGINT) or SIGTERM saves a
checkpoint at the current step and exits; a second Ctrl-C stops at once without saving.

exit status: 0 done; 2 bad config or input, or the run cannot go on (one "error: ..." line on stderr);
             130 stopped by SIGINT, 143 stopped by SIGTERM (a checkpoint was saved: rerun to resume)
--verbose: also show HF datasets' progress bars and library log records
"""

import sys
from pathlib import Path

import ml_collections

from focused import cli


def _train(config: ml_collections.ConfigDict) -> None:
    from focused.training.loop import train

    train(config)


def main(argv: list[str]) -> int:
    return cli.run(
        argv,
        _train,
        doc=__doc__,
        kind="train",
        configs_dir=Path(__file__).resolve().parent / "configs",
        on_keyboard_interrupt="stopped without saving the current step; rerun the same command to resume from the "
        "last checkpoint",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv))
