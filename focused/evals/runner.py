"""Runs one eval over several checkpoints and writes its report: what `eval.py` calls.

    results = run(config)     # config: see configs/eval_passkey.py, configs/eval_perplexity.py

Common config keys: `eval` (a name in `EVALS`), `checkpoints` (run directories, step directories, saved models
or Hugging Face folders), `labels` (names in tables and plots; default: the folder names), `tokenizer` ("auto":
the checkpoint's tokenizer.json / tokenizer.model if it has one, also a training run's `tokenizer/`, else the
shipped one), `out_dir`,
`overwrite`, `progress`, `memory` (`MemoryConfig`), plus the eval's own section (`passkey`, `perplexity`, ...).

An eval is a function `evaluate(config, checkpoints) -> EvalResults` that loads each `Checkpoint` in turn
(`model, tokenizer = ckpt.load()`) and returns one `Series` per checkpoint (and setting). Adding one is one line
in `EVALS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from focused.data.tokenizer import Tokenizer, load_tokenizer
from focused.evals import passkey, perplexity
from focused.evals.report import EvalResults, Series, check_writable, write_report
from focused.model.llama import LlamaForCausalLM

EvalFn = Callable[[ml_collections.ConfigDict, Sequence["Checkpoint"]], EvalResults]


def evaluate_dictionary(config: ml_collections.ConfigDict, checkpoints: Sequence[Checkpoint]) -> EvalResults:
    """Dictionary lookup accuracy vs memory size for every checkpoint (the task makes token ids: no tokenizer)."""
    from focused.data.synthetic import load_task
    from focused.evals.dictionary import evaluate_dictionary_from_config

    series = []
    for ckpt in checkpoints:
        found = evaluate_dictionary_from_config(
            ckpt.load_model(),
            config.dictionary.to_dict(),
            config.memory.to_dict(),
            task=load_task(ckpt.path),  # the layout the checkpoint was trained on, if it carries one
            progress=config.progress,
        )
        points = found["results"]
        x = [float(p["memory_tokens"]) for p in points]
        series.append(Series(ckpt.label, ckpt.path, x, [p["accuracy"] for p in points], details=points))
    description = (
        "Dictionary lookup (key-value retrieval): share of queries whose value tokens are all right after N tokens "
        f"of definitions, memory backend {config.memory.backend} (k = {config.memory.top_k})"
    )
    return EvalResults("dictionary", "accuracy", "memory tokens", description, series)


EVALS: dict[str, EvalFn] = {
    "passkey": passkey.evaluate,
    "perplexity": perplexity.evaluate,
    "dictionary": evaluate_dictionary,
}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One model to evaluate: where it is, what to call it, which tokenizer reads its inputs."""

    path: str
    label: str
    tokenizer: str = "auto"

    def load_model(self) -> LlamaForCausalLM:
        """A Hugging Face folder (config.json) through `import_hf`, anything else through `load_model`."""
        path = Path(self.path)
        if (path / "config.json").is_file():
            from focused.convert import import_hf

            return import_hf(path)
        from focused.training.checkpoint import load_model

        return load_model(path)

    def load_tokenizer(self) -> Tokenizer:
        """With "auto": the checkpoint's own tokenizer (HF folder, `<run>/tokenizer/`, a step's run), or the shipped."""
        spec = self.tokenizer
        if spec == "auto":
            from focused.training.checkpoint import find_tokenizer_dir

            own = find_tokenizer_dir(self.path)
            spec = str(own) if own is not None else "focused"
        return load_tokenizer(spec)

    def load(self) -> tuple[LlamaForCausalLM, Tokenizer]:
        """(model, tokenizer), checking that every token id the tokenizer makes has an embedding."""
        model, tokenizer = self.load_model(), self.load_tokenizer()
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} tokens but checkpoint {self.path} only "
                f"{model.config.vocab_size}: set config.tokenizer to the one the model was trained with"
            )
        return model, tokenizer


def resolve_checkpoints(config: ml_collections.ConfigDict) -> list[Checkpoint]:
    """`config.checkpoints` (+ `labels`, `tokenizer`) as `Checkpoint`s; every path must exist."""
    paths = [str(p) for p in config.checkpoints]
    if not paths:
        raise ValueError("config.checkpoints is empty: name at least one run directory, saved model or HF folder")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {', '.join(missing)}")
    labels = [str(label) for label in config.labels] or [_default_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"config.labels has {len(labels)} names for {len(paths)} checkpoints")
    counts: dict[str, int] = {}
    for i, label in enumerate(labels):
        counts[label] = counts.get(label, 0) + 1
        if counts[label] > 1:
            labels[i] = f"{label}#{counts[label]}"
    return [Checkpoint(p, label, config.tokenizer) for p, label in zip(paths, labels, strict=True)]


def _default_label(path: str) -> str:
    """The folder name; for a step directory (`run/checkpoints/<step>`), `run@<step>`."""
    p = Path(path).absolute()
    if p.parent.name == "checkpoints" and p.name.isdigit():
        return f"{p.parent.parent.name}@{p.name}"
    return p.name


def run(config: ml_collections.ConfigDict, *, write: bool = True) -> EvalResults:
    """Runs `config.eval` on every checkpoint and (when `write`) writes results.json, results.md, plot.png into
    `config.out_dir`. An existing results.json is refused unless `config.overwrite`, before anything runs."""
    name = config.eval
    if name not in EVALS:
        raise ValueError(f"unknown eval {name!r}; available: {', '.join(sorted(EVALS))}")
    if write:
        check_writable(config.out_dir, config.overwrite)
    checkpoints = resolve_checkpoints(config)
    results = EVALS[name](config, checkpoints)
    results.config = config.to_dict()
    if write:
        write_report(results, config.out_dir, overwrite=config.overwrite)
    return results
