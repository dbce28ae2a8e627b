"""What `train.py` and `eval.py` share: `--help`, `--verbose`, quiet library output, one-line errors, exit codes.

    python train.py --help                         usage, exit codes, and the configs in configs/ (first docstring line)
    python train.py --config configs/tiny.py --help   every field of that config with its value (overrides applied)

Exit codes: 0 done; 2 a bad config or input, or a run that cannot go on (one `error: ...` line on stderr); 130 / 143
training stopped by SIGINT / SIGTERM after saving a checkpoint. Without `--verbose` the progress bars of HF
`datasets` and the log records of absl (orbax) are hidden: whatever goes wrong is reported in the one error line.

Compiled XLA programs are kept on disk between runs (`compile_cache`: ~/.cache/focused/xla, or $FOCUSED_COMPILE_CACHE;
"off" disables it; JAX's own JAX_COMPILATION_CACHE_DIR wins when set), so a second `eval.py` or `train.py` on the
same shapes skips most of its compile time (mid model: the first 8K `forward_long` 12.3 s cold, 8.3 s warm; the first
`generate` call 14.9 s vs 5.1 s).
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from focused.config import ConfigError, load_config
from focused.training.errors import TrainingError, TrainingInterrupted

EXIT_OK, EXIT_ERROR, EXIT_SIGINT = 0, 2, 130
HELP_FLAGS = ("-h", "--help")
VERBOSE_FLAGS = ("-v", "--verbose")
ERRORS = (ConfigError, FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, TrainingError)
COMPILE_CACHE_ENV = "FOCUSED_COMPILE_CACHE"
COMPILE_CACHE_DEFAULT = Path.home() / ".cache" / "focused" / "xla"
COMPILE_CACHE_MAX_BYTES = 4 << 30  # least recently used programs are evicted beyond this


def compile_cache(environ: dict[str, str] | None = None) -> Path | None:
    """Turns on JAX's persistent compilation cache for this process and returns its folder (None: off, or JAX's
    own JAX_COMPILATION_CACHE_DIR is in charge). Programs that compiled in under a second are not stored."""
    import jax

    environ = os.environ if environ is None else environ
    if environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None
    choice = environ.get(COMPILE_CACHE_ENV, "")
    if choice.lower() in ("off", "0", "none", "false"):
        return None
    folder = Path(choice).expanduser() if choice else COMPILE_CACHE_DEFAULT
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        warnings.warn(f"compile cache {folder} cannot be created ({error}); compiling without it", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    return folder


def wants_help(argv: Sequence[str]) -> bool:
    return any(arg in HELP_FLAGS for arg in argv[1:])


def config_files(directory: Path, kind: str) -> list[tuple[str, str]]:
    """(path, first docstring line) of each config in `directory`: eval configs (`eval_*.py`) for kind "eval",
    the others for kind "train". The files are parsed, not run."""
    out = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_") or path.name.startswith("eval_") != (kind == "eval"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        except (OSError, SyntaxError, UnicodeDecodeError):
            doc = ""
        out.append((_display(path), doc.strip().splitlines()[0] if doc.strip() else ""))
    return out


def _display(path: Path) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def config_fields(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted name, value) of every leaf field, in the config's order; an unset field shows `None (<type>)`."""
    rows = []
    for key in config:
        name = f"{prefix}{key}"
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict):
            rows += config_fields(value, name + ".")
            continue
        text = repr(value)
        if value is None:
            kind = getattr(config.get_ref(key), "get_type", lambda: None)()
            text = f"None ({kind.__name__})" if isinstance(kind, type) else "None"
        rows.append((name, text))
    return rows


def help_text(argv: Sequence[str], *, doc: str, kind: str, configs_dir: Path) -> str:
    """Usage and the configs in `configs_dir`; with `--config FILE`, every field of that config instead."""
    rest = [arg for arg in argv if arg not in HELP_FLAGS and arg not in VERBOSE_FLAGS]
    if any(arg == "--config" or arg.startswith("--config=") for arg in rest):
        config = load_config(rest)
        rows = config_fields(config)
        width = max((len(name) for name, _ in rows), default=0)
        lines = [f"fields of {_config_arg(rest)} (override any with --config.FIELD=VALUE):"]
        lines += [f"  {name.ljust(width)} = {value}" for name, value in rows]
        return "\n".join(lines)
    lines = [doc.strip(), "", f"configs ({_display(configs_dir)}/):"]
    listed = config_files(configs_dir, kind)
    width = max((len(path) for path, _ in listed), default=0)
    lines += [f"  {path.ljust(width)}  {first}" for path, first in listed]
    return "\n".join(lines)


def _config_arg(argv: Sequence[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return "the config"


def quiet_libraries(datasets_bars: bool = True) -> None:
    """Hides HF datasets' progress bars, absl log records (orbax), and the noise a failed checkpoint write or
    restore leaves behind: asyncio records, 'Event loop is closed', dropped orbax read coroutines and Python's
    never-awaited coroutine warnings (the failure itself is reported as one error line).
    `datasets_bars=False` leaves HF datasets alone (and unimported)."""
    if datasets_bars:
        import datasets

        datasets.disable_progress_bars()
    for name in ("absl", "asyncio"):  # orbax logs through absl; its aborted writes leave asyncio futures behind
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # an aborted orbax write can also drop serialization coroutines unawaited; Python warns when they are collected
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    previous = sys.unraisablehook
    if getattr(previous, "quiets_closed_loops", False):  # installed by an earlier call in this process
        return

    def hook(unraisable: Any) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        code = getattr(unraisable.object, "cr_code", None)  # an orbax read coroutine dropped by a failed restore
        if code is not None and "orbax" in code.co_filename:
            return
        previous(unraisable)

    hook.quiets_closed_loops = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run(
    argv: Sequence[str],
    command: Callable[[ml_collections.ConfigDict], None],
    *,
    doc: str,
    kind: str,
    configs_dir: Path,
    on_keyboard_interrupt: str,
) -> int:
    """Parses `argv` (`[prog, --config FILE, --config.a.b=v, ..., --verbose]`), runs `command(config)` and maps
    the outcome onto an exit code, printing one line on stderr for anything that is not success."""
    try:
        if wants_help(argv):
            print(help_text(argv, doc=doc, kind=kind, configs_dir=configs_dir))
            return EXIT_OK
        verbose = any(arg in VERBOSE_FLAGS for arg in argv[1:])
        if not verbose:
            quiet_libraries()
        config = load_config([arg for arg in argv if arg not in VERBOSE_FLAGS])
        compile_cache()
        command(config)
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(f"error: interrupted; {on_keyboard_interrupt}", file=sys.stderr)
        return EXIT_SIGINT
    except ERRORS as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def run_script(main: Callable[[list[str]], int], argv: Sequence[str]) -> int:
    """Runs an experiment script's `main(argv)`: a stop by SIGINT / SIGTERM (a checkpoint was saved; rerunning
    resumes) and a training error each end in one line on stderr and their exit code."""
    try:
        compile_cache()
        return main(list(argv))
    except TrainingInterrupted as stop:
        print(str(stop), file=sys.stderr)
        return stop.exit_code
    except TrainingError as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return EXIT_ERROR


def experiment_parser(doc: str, *, out: str, out_help: str, smoke_help: str) -> argparse.ArgumentParser:
    """The arguments every experiment script takes: --smoke, --runs, --models, --out, --skip-train, --no-eval and
    --overwrite (extra `--config.X=Y` arguments are the script's to check)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog="extra --config.X=Y: training")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    parser.add_argument("--runs", default="runs", help="parent of the training run directories")
    parser.add_argument("--models", default="models", help="parent of the exported Hugging Face folders")
    parser.add_argument("--out", default=out, help=out_help)
    parser.add_argument("--skip-train", action="store_true", help="export and evaluate the run directories as they are")
    parser.add_argument("--no-eval", action="store_true", help="train and export only")
    parser.add_argument("--overwrite", action="store_true", help="replace existing exports and results")
    return parser
