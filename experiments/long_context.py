"""Long context on real text end to end: perplexity vs memory (FoT against continued plain training, PI and YaRN)
and task-tuned passkey retrieval far past the trained length (FoT against PI).

    python experiments/long_context.py            # the whole experiment (README "Results" gives the wall times)
    python experiments/long_context.py --smoke    # the same pipeline at toy size (about two minutes; CI runs it)

Training (each resumable: rerunning the command continues where it stopped), on the demo text's train split
(focused:demo, split train; the held-out test split is only evaluated on):

    lm_base      configs/lm_base.py      pre-training from scratch
    lm_fot       configs/lm_fot.py       from lm_base: FoT CrossBatch (k = 4, r = 3, stepping), window 256
    lm_plain     configs/lm_plain.py     from lm_base: plain, window 256 (same token budget)
    lm_pi        configs/lm_pi.py        from lm_base: linear position interpolation, local context 1024
    lm_yarn      configs/lm_yarn.py      from lm_base: YaRN, local context 1024
    passkey_copy            from lm_fot: text mixed with copy drills (random words written twice), 1000 steps
    passkey_copy_more       from it: 1000 more steps of the same
    passkey_copy_digits     from it: drills with a number among the words, 400 steps
    passkey_fot             from it: passkey prompts of 48-512 tokens (<= 2 windows), documents aligned
    passkey_pi              from passkey_copy_digits: PI to a 1024-token context, passkey_fot's data and budget
                            (each run <name> is configs/<name>.py)

Each finished run is exported to <models>/<name> (bfloat16, with its tokenizer). Then:

- perplexity (configs/eval_perplexity.py) of lm_fot, lm_plain, lm_pi and lm_yarn on the held-out documents with
  memory of 0 … 64 windows of 256 tokens, each document alone (<out>/perplexity), and 0 … 16 windows with 3
  distractor documents interleaved (<out>/perplexity_distractors);
- passkey retrieval (configs/eval_passkey.py) of passkey_fot and passkey_pi from 256 to 256K tokens, evaluation
  seeds 1000.. (the training prompts come from another generator; focused.data.passkey) (<out>/passkey).

Shipped models and results are never overwritten unless asked: a fresh run refuses at once unless given
`--models DIR --out DIR` or `--overwrite`. Extra `--config.X=Y` arguments apply to every training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from focused.cli import experiment_parser

ROOT = Path(__file__).resolve().parent.parent
# name -> the run it starts from ("" = from scratch); in training order
RUNS = {
    "lm_base": "",
    "lm_fot": "lm_base",
    "lm_plain": "lm_base",
    "lm_pi": "lm_base",
    "lm_yarn": "lm_base",
    "passkey_copy": "lm_fot",
    "passkey_copy_more": "passkey_copy",
    "passkey_copy_digits": "passkey_copy_more",
    "passkey_fot": "passkey_copy_digits",
    "passkey_pi": "passkey_copy_digits",
}
PERPLEXITY_MODELS = ("lm_fot", "lm_plain", "lm_pi", "lm_yarn")
PASSKEY_MODELS = ("passkey_fot", "passkey_pi")
EXPORTED = (*PERPLEXITY_MODELS, *PASSKEY_MODELS)
WINDOW = 256  # the base model's window: the unit of memory sizes for every model
PERPLEXITY = (
    "--config.source.split=test",
    "--config.perplexity.memory_windows=(0,1,2,4,8,16,32,64)",
    "--config.perplexity.score_windows=10",
    "--config.perplexity.num_documents=5",
    "--config.perplexity.batch_size=5",
    f"--config.perplexity.window={WINDOW}",
)
# each document alone with up to 64 windows of memory; with 3 distractor documents interleaved (4x the memory and
# the windows read) up to 16 windows a document: 64 would take ~16x the single setting's time on 2 cores
SETTINGS = {
    "perplexity": ("--config.perplexity.settings=('single',)",),
    "perplexity_distractors": (
        "--config.perplexity.settings=('distractors',)",
        "--config.perplexity.distractors=3",
        "--config.perplexity.memory_windows=(0,1,2,4,8,16)",
    ),
}
PASSKEY = (
    "--config.passkey.lengths=(256,512,1024,2048,4096,8192,16384,32768,65536,131072,262144)",
    "--config.passkey.trials=10",
    "--config.passkey.seed=1000",
)
SMOKE_TRAIN = (
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
    "--config.model.num_hidden_layers=4",  # passkey_fot reads memory in layer 3
    "--config.train.steps=3",
    "--config.train.warmup_steps=1",
    "--config.train.log_every=1",
    "--config.train.save_every=0",
    "--config.train.eval_every=0",
    "--config.train.async_checkpointing=False",
)
SMOKE_PERPLEXITY = (
    "--config.source.split=test",
    "--config.perplexity.memory_windows=(0,1,2)",
    "--config.perplexity.score_windows=1",
    "--config.perplexity.num_documents=2",
    "--config.perplexity.distractors=1",
    "--config.perplexity.batch_size=2",
    f"--config.perplexity.window={WINDOW}",
)
SMOKE_PASSKEY = ("--config.passkey.lengths=(300,600)", "--config.passkey.trials=2", "--config.passkey.seed=1000")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = experiment_parser(
        __doc__,
        out="results",
        out_help="parent of perplexity/, perplexity_distractors/ and passkey/ (results, plots)",
        smoke_help="toy sizes: the whole pipeline in about two minutes",
    )
    parser.add_argument(
        "--only-eval", default="", help="perplexity or passkey: only that evaluation and the runs it needs"
    )
    known, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        parser.error(f"unexpected argument(s) {bad}")
    if known.only_eval not in ("", "perplexity", "passkey"):
        parser.error(f"--only-eval must be perplexity or passkey, got {known.only_eval!r}")
    return known, extra


def train_and_export(name: str, args: argparse.Namespace, extra: list[str]) -> Path:
    """Trains (or resumes) configs/<name>.py into <runs>/<name> from its parent run; exports <models>/<name>."""
    from focused.config import load_config
    from focused.convert.export import export_hf
    from focused.training.checkpoint import find_tokenizer_dir, load_model
    from focused.training.loop import train

    run_dir = Path(args.runs) / name
    parent = str(Path(args.runs) / RUNS[name]) if RUNS[name] else ""
    overrides = [*(SMOKE_TRAIN if args.smoke else ()), *extra]
    overrides += [f"--config.workdir={run_dir}", f"--config.init_from={parent}"]
    if not args.skip_train:
        start = time.perf_counter()
        train(load_config(["train.py", "--config", str(ROOT / "configs" / f"{name}.py"), *overrides]))
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s ({run_dir})", flush=True)
    if name not in EXPORTED:
        return run_dir
    model = load_model(run_dir)
    out = Path(args.models) / name
    return export_hf(
        model, model.config, out, dtype="bfloat16", overwrite=args.overwrite, tokenizer_dir=find_tokenizer_dir(run_dir)
    )


def evaluate(kind: str, args: argparse.Namespace, out: str = "") -> None:
    """The perplexity or passkey eval of the exported models into <out>/<out or kind>."""
    from focused.config import load_config
    from focused.evals.runner import run

    names = PERPLEXITY_MODELS if kind == "perplexity" else PASSKEY_MODELS
    folders = [str(Path(args.models) / n) for n in names]
    overrides = [
        f"--config.checkpoints={tuple(folders)!r}",
        f"--config.labels={tuple(n.split('_')[1] for n in names)!r}",
        f"--config.out_dir={Path(args.out) / (out or kind)}",
        f"--config.overwrite={args.overwrite}",
    ]
    if kind == "perplexity":
        overrides += SMOKE_PERPLEXITY if args.smoke else [*PERPLEXITY, *SETTINGS[out]]
    else:
        overrides += SMOKE_PASSKEY if args.smoke else PASSKEY
    if args.smoke:
        overrides.append("--config.progress=False")
    start = time.perf_counter()
    results = run(load_config(["eval.py", "--config", str(ROOT / "configs" / f"eval_{kind}.py"), *overrides]))
    took = time.perf_counter() - start
    where = Path(args.out) / (out or kind)
    print(f"{out or kind}: {where}/results.md, plot.png ({len(results.series)} series, {took:.0f} s)", flush=True)


def refuse_to_replace(args: argparse.Namespace) -> None:
    """Before any training: a fresh run must not export over the shipped models (or write over the shipped results)
    an hour later; say so now, in one line."""
    if args.overwrite:
        return
    fresh = [n for n in EXPORTED if n in needed_runs(args.only_eval) and not (Path(args.runs) / n).exists()]
    taken = [str(Path(args.models) / n) for n in fresh if (Path(args.models) / n).exists()]
    if fresh and not args.no_eval:
        kinds = {"perplexity": list(SETTINGS), "passkey": ["passkey"], "": [*SETTINGS, "passkey"]}[args.only_eval]
        taken += [str(Path(args.out) / k / "results.json") for k in kinds]
        taken = [t for t in taken if Path(t).exists()]
    if taken:
        raise SystemExit(
            f"error: {', '.join(taken)} already exist (the shipped models and results): train into other folders "
            "with --runs DIR --models DIR --out DIR, or pass --overwrite to replace them"
        )


def needed_runs(kind: str) -> list[str]:
    """The runs an evaluation ("" = both) needs, with the runs they start from, in training order."""
    wanted = set(PERPLEXITY_MODELS if kind == "perplexity" else PASSKEY_MODELS if kind == "passkey" else RUNS)
    for name in list(wanted):
        while RUNS[name]:
            name = RUNS[name]
            wanted.add(name)
    return [name for name in RUNS if name in wanted]


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    start = time.perf_counter()
    refuse_to_replace(args)
    for name in needed_runs(args.only_eval):
        train_and_export(name, args, extra)
    if not args.no_eval and args.only_eval in ("", "perplexity"):
        for out in () if args.smoke else SETTINGS:  # smoke: both settings in one small eval
            evaluate("perplexity", args, out)
        if args.smoke:
            evaluate("perplexity", args)
    if not args.no_eval and args.only_eval in ("", "passkey"):
        evaluate("passkey", args)
    print(f"long-context experiment done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    from focused.cli import run_script

    sys.exit(run_script(main, sys.argv[1:]))
