"""Command line for Hugging Face conversion.

    python -m focused.convert export --checkpoint PATH --out DIR [--format longllama|llama]
        [--dtype float32|bfloat16|float16] [--max-shard-size 2GB] [--tokenizer DIR | --no-tokenizer] [--overwrite]
    python -m focused.convert import --hf DIR --out DIR [--param-dtype float32|bfloat16|float16]
        [--dtype float32|bfloat16|float16] [--overwrite]

`export` reads anything `focused.training.checkpoint.load_model` accepts (run directory, step directory, saved
model) and writes a Hugging Face folder, with the tokenizer the run was trained with (`<run>/tokenizer/`) unless
`--tokenizer DIR` names another or `--no-tokenizer` is given. `import` reads a Hugging Face folder and writes a
focused saved-model directory (`model_config.json` + `params/`). Written folders get ordinary permissions (the
umask decides, as for any new file). Bad input prints one `error: ...` line and exits with status 2;
nothing is written then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from focused.cli import quiet_libraries
from focused.convert.export import export_hf
from focused.convert.hf import FORMATS, is_empty_dir, parse_size, staging
from focused.convert.load import import_hf
from focused.data.synthetic import TASK_FILE
from focused.model.config import DTYPES
from focused.training.checkpoint import find_tokenizer_dir, load_model, save_model

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), matching the other failures of this command."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m focused.convert", description="Hugging Face import / export of focused models")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    dtypes = sorted(DTYPES)

    export = commands.add_parser("export", help="write a Hugging Face folder from a focused checkpoint")
    export.add_argument("--checkpoint", required=True, help="run directory, step directory or saved model")
    export.add_argument("--out", required=True, help="Hugging Face folder to write")
    export.add_argument("--format", choices=FORMATS, default="longllama", help="config flavour (default longllama)")
    export.add_argument("--dtype", choices=dtypes, default=None, help="tensor dtype (default: the params' dtype)")
    export.add_argument("--max-shard-size", default="2GB", help="shard above this size (default 2GB)")
    export.add_argument(
        "--tokenizer", default=None, help="directory whose tokenizer files to copy (default: the run's tokenizer)"
    )
    export.add_argument("--no-tokenizer", action="store_true", help="write no tokenizer files")
    export.add_argument("--overwrite", action="store_true", help="replace a folder holding another checkpoint")

    imp = commands.add_parser("import", help="write a focused saved model from a Hugging Face folder")
    imp.add_argument("--hf", required=True, help="Hugging Face folder (llama or longllama config.json)")
    imp.add_argument("--out", required=True, help="focused saved-model directory to write")
    imp.add_argument("--param-dtype", choices=dtypes, default="float32", help="parameter dtype (default float32)")
    imp.add_argument("--dtype", choices=dtypes, default="float32", help="compute dtype (default float32)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    return parser


def task_files(checkpoint: str | Path) -> list[Path]:
    """The synthetic-task layout a checkpoint was trained on (run directory or the run above a step directory)."""
    for folder in (Path(checkpoint), Path(checkpoint).parent.parent):
        if (folder / TASK_FILE).is_file():
            return [folder / TASK_FILE]
    return []


def run_export(args: argparse.Namespace) -> Path:
    parse_size(args.max_shard_size)  # fail on a bad size before loading the checkpoint
    tokenizer = args.tokenizer
    if tokenizer is None and not args.no_tokenizer:
        tokenizer = find_tokenizer_dir(args.checkpoint)
    model = load_model(args.checkpoint)
    return export_hf(
        model,
        model.config,
        args.out,
        format=args.format,
        max_shard_size=args.max_shard_size,
        dtype=args.dtype,
        overwrite=args.overwrite,
        tokenizer_dir=None if args.no_tokenizer else tokenizer,
        extra_files=task_files(args.checkpoint),
    )


def run_import(args: argparse.Namespace) -> Path:
    out = Path(args.out).absolute()
    if out.exists() and not is_empty_dir(out) and not args.overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    model = import_hf(args.hf, param_dtype=args.param_dtype, dtype=args.dtype)
    with staging(out) as staged:
        save_model(model, staged.path)
        return staged.publish()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(datasets_bars=False)  # orbax's log records would repeat the one error line below, with a traceback
    try:
        path = run_export(args) if args.command == "export" else run_import(args)
    except (OSError, ValueError) as error:  # FileNotFoundError, FileExistsError, PermissionError, CheckpointError
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
