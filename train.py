"""Train (or continue pre-training) a LLaMA / FoT model.

python train.py --config configs/tiny.py [--config.train.steps=100 ...]
"""

import sys

from focused.config import ConfigError, load_config
from focused.training.loop import TrainingError, train


def main(argv: list[str]) -> int:
    try:
        config = load_config(argv)
        train(config)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
