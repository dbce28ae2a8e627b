"""Dictionary lookup end to end (issue: "a FoT model retrieves key-value pairs from 16M tokens of memory").

Trains the three models of the experiment, exports them as Hugging Face folders that carry their task layout,
evaluates accuracy vs memory size (64 … 16M tokens of definitions, FAISS flat with k = 32 above 64K tokens) and
writes the table (results.md), the numbers (results.json) and the plot (plot.png):

    python experiments/dictionary_lookup.py            # the full experiment (see README "Results" for wall times)
    python experiments/dictionary_lookup.py --smoke    # the same pipeline at toy size (about a minute; CI runs it)

    models: configs/dict_lookup_fot.py       FoT: memory layer + CrossBatch with the d curriculum
            configs/dict_lookup_d1.py        the distraction ablation: the same model trained with d = 1 only
            configs/dict_lookup_baseline.py  no memory layers, a window of two pages

FoT and d1 then continue for `--continue-steps` (300) steps with 256 rows, FoT at r = 127, and FoT for another 300
with 512 rows at r = 255 (CONTINUATIONS below); they are exported from their last continuation.

Training resumes where a previous invocation stopped (each run directory keeps its checkpoints), so a long run can
be interrupted and restarted with the same command; `--skip-train` evaluates whatever the run directories hold.
Extra `--config.X=Y` arguments are applied to every training config, curriculum stages included (e.g. a model
size); `--final.X=Y` only to each model's own last stage (e.g. `--final.train.steps=8000`). `--only` picks models,
`--tag` names a variant (its run, stage and model folders get the suffix; `--stages-tag` starts it from another
variant's stages), `--stages-only` / `--no-eval` stop early: experiments/dictionary_gpu.sh runs the parts in
parallel on one GPU this way.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from focused.cli import experiment_parser

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("dict_lookup_fot", "dict_lookup_d1", "dict_lookup_baseline")
# The curriculum every model goes through before its own config (the last stage): 1-letter keys over 16 letters
# are learned in ~250 steps from scratch, and each later stage starts from the previous one (`init_from`; the
# vocabulary is the final one throughout, values first, so every id keeps its meaning). From scratch, 2-letter
# keys over 16 letters sat at the key-free level for 675+ steps; started from the 1-letter model, 95% in 100.
# Stages use CrossBatch r = 1 (the query row sees its own definitions); distractors come in the last stage.
# Each stage: (name, task layout, steps, documents per batch). Stages with 8 definitions per page train on 64
# documents per step (with 32, stage 1 sat at the key-free level for 400 steps); later ones on 32.
STAGES = (
    ("keys1", {"key_len": 1, "key_letters": 16, "page_len": 16}, 400, 64),
    ("keys2", {"key_len": 2, "key_letters": 16, "page_len": 24}, 300, 64),
    ("keys3", {"key_len": 3, "key_letters": 16, "page_len": 32}, 300, 64),
    ("letters64", {"key_len": 3, "key_letters": 64, "page_len": 64}, 300, 32),
)
# The d = 1 ablation differs from FoT only in its last stage (the curriculum stages all run at r = 1), so it starts
# from FoT's stages, trained once: both models leave the curriculum with the same weights.
STAGE_OWNER = {"dict_lookup_d1": "dict_lookup_fot"}
# After its own config, each memory model continues in stages, each a warm restart with cosine decay on a new data
# stream. Stage 1: twice the rows and (FoT) twice the reach, 256 rows = 128 documents, r = 127, half the peak LR, data
# seed 1. On validation documents (eval seed 2000) FoT went 86.7 / 53.1 / 10.9% -> 88.3 / 64.8 / 25.0% at 256K / 1M /
# 4M tokens of memory (about 2 h here); the d = 1 ablation gets the same steps and rows at r = 1 (about 5 min).
# Stage 2 (FoT only): 512 rows, r = 255, peak LR 3e-4, data seed 2, the flash kernel (CrossBatch memory read in
# place: 2 GiB instead of 13.6 GiB). On eval seed 2001 it took 256K / 1M from 91.9 / 58.2% to 95.1 / 80.9% at step
# 250 (about 3 h here). Each stage: (run-folder suffix, overrides).
CONTINUATION_TRAIN = (
    "--config.data.batch_size=256",
    "--config.train.learning_rate=5e-4",
    "--config.train.warmup_steps=30",
    "--config.train.log_every=10",
    "--config.train.save_every=50",
    "--config.data.seed=1",
    "--config.seed=1",
)
WIDER = (
    "--config.data.batch_size=512",
    "--config.train.learning_rate=3e-4",
    "--config.train.warmup_steps=30",
    "--config.train.log_every=5",
    "--config.train.save_every=25",
    "--config.data.seed=2",
    "--config.seed=2",
    "--config.model.attention_impl=flash",
)
FOT_REACH = ("--config.fot.initial_range=-1",)
CONTINUATIONS = {
    "dict_lookup_fot": (
        (".continued", (*CONTINUATION_TRAIN, *FOT_REACH, "--config.fot.cross_batch_range=127")),
        (".continued2", (*WIDER, *FOT_REACH, "--config.fot.cross_batch_range=255")),
    ),
    "dict_lookup_d1": ((".continued", CONTINUATION_TRAIN),),
}
SMOKE_TRAIN = (
    "--config.model.hidden_size=32",
    "--config.model.intermediate_size=64",
    "--config.model.num_attention_heads=2",
    "--config.model.num_key_value_heads=1",
    "--config.model.head_dim=16",
    "--config.data.batch_size=8",
    "--config.train.steps=4",
    "--config.train.warmup_steps=1",
    "--config.train.log_every=2",
    "--config.train.save_every=0",
    "--config.train.async_checkpointing=False",
    "--config.fot.switch_accuracy=-1",
    "--config.fot.switch_step=2",
)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = experiment_parser(
        __doc__,
        out="results/dictionary",
        out_help="where results.json/md and plot.png go",
        smoke_help="toy sizes: the whole pipeline in about a minute",
    )
    parser.add_argument("--sizes", default="", help="memory sizes in tokens, comma-separated (default: the eval's)")
    parser.add_argument("--trials", type=int, default=0, help="documents per size (default: the eval config's)")
    parser.add_argument("--only", default="", help="comma-separated models to train, export and evaluate")
    parser.add_argument("--stages-only", action="store_true", help="train the curriculum stages, nothing else")
    parser.add_argument(
        "--continue-steps", type=int, default=300, help="steps of the memory models' continuation (0: none)"
    )
    parser.add_argument("--tag", default="", help="suffix of a variant's run, stage and model folders")
    parser.add_argument("--stages-tag", default=None, help="tag of the curriculum stages to start from (--tag)")
    known, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--config.", "--final."))]
    if bad:
        parser.error(f"unexpected argument(s) {bad}")
    unknown = [m for m in known.only.split(",") if m and m not in MODELS]
    if unknown:
        parser.error(f"--only: unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    if known.stages_tag is None:
        known.stages_tag = known.tag
    return known, extra


def stage_overrides(name: str, task: dict, steps: int, documents: int) -> list[str]:
    """`--config.X=Y` for one curriculum stage: the task layout, a window of one page (two for the model without
    memory, which must hold definitions and queries), r = 1 and no switch, `steps` steps."""
    task = {"key_groups": 0, "min_defs": 0, **task}
    pages = 2 if name == "dict_lookup_baseline" else 1
    window = pages * task["page_len"]
    out = [f"--config.data.synthetic.{k}={v}" for k, v in task.items()]
    out += [f"--config.model.max_position_embeddings={window}", f"--config.model.last_context_length={window // 2}"]
    out += [f"--config.data.batch_size={documents * (2 // pages)}"]  # memory models: 2 rows per document
    # Warmup 100: stage 1 learned in ~200 steps on seeds 0 and 1; with warmup 20 it sat at the key-free level for 400.
    out += [f"--config.train.steps={steps}", f"--config.train.warmup_steps={min(100, steps)}"]
    out += ["--config.train.schedule=constant"]
    if pages == 1:
        out += ["--config.fot.cross_batch_range=1", "--config.fot.initial_range=-1", "--config.fot.switch_accuracy=-1"]
    return out


def train_and_export(name: str, args: argparse.Namespace, extra: list[str]) -> Path | None:
    """Trains (or resumes) configs/<name>.py through the curriculum into <runs>/<name>, exports <models>/<name>."""
    from focused.config import load_config
    from focused.convert.export import export_hf
    from focused.data.synthetic import TASK_FILE, load_task
    from focused.training.checkpoint import load_model
    from focused.training.loop import train

    run_dir = Path(args.runs) / f"{name}{args.tag}"
    config_file = str(ROOT / "configs" / f"{name}.py")
    # --config.X=Y: every stage; --final.X=Y: the model's own (last) stage only
    common = [*(SMOKE_TRAIN if args.smoke else ()), *(a for a in extra if a.startswith("--config."))]
    final = [a.replace("--final.", "--config.", 1) for a in extra if a.startswith("--final.")]
    stages = (STAGES[:1] if name == MODELS[0] else ()) if args.smoke else STAGES  # smoke: one stage, one model
    previous = ""
    for i, (stage, task, steps, documents) in enumerate(stages):
        stage_dir = Path(args.runs) / f"{STAGE_OWNER.get(name, name)}{args.stages_tag}.stages" / f"{i + 1}_{stage}"
        steps, documents = (4, 4) if args.smoke else (steps, documents)
        overrides = [*common, *stage_overrides(name, task, steps, documents)]
        overrides += [f"--config.workdir={stage_dir}", f"--config.init_from={previous}"]
        # a finished stage is only read (so several variants can start from it at once)
        if not args.skip_train and not (stage_dir / "checkpoints" / str(steps)).is_dir():
            start = time.perf_counter()
            train(load_config(["train.py", "--config", config_file, *overrides]))
            print(f"{name} stage {stage}: trained in {time.perf_counter() - start:.0f} s ({stage_dir})", flush=True)
        previous = str(stage_dir)
    if args.stages_only:
        return None
    overrides = [*common, *final, f"--config.workdir={run_dir}", f"--config.init_from={previous}"]
    config = load_config(["train.py", "--config", config_file, *overrides])
    if not args.skip_train:
        start = time.perf_counter()
        train(config)
        print(f"{name}: trained in {time.perf_counter() - start:.0f} s ({run_dir})", flush=True)
    run_dir = continue_training(name, run_dir, args, common)
    if load_task(run_dir) is None:
        raise SystemExit(f"error: {run_dir} carries no {TASK_FILE}: it was not trained on the dictionary task")
    model = load_model(run_dir)
    out = Path(args.models) / f"{name}{args.tag}"
    return export_hf(model, model.config, out, overwrite=args.overwrite, extra_files=[run_dir / TASK_FILE])


def continue_training(name: str, run_dir: Path, args: argparse.Namespace, common: list[str]) -> Path:
    """Trains the continuation stages of a memory model (CONTINUATIONS), each from the previous one, into
    `<run_dir><suffix>`, and returns the run to export; other models (and `--continue-steps=0`) export `run_dir`."""
    if args.continue_steps <= 0:
        return run_dir
    from focused.config import load_config
    from focused.training.loop import train

    previous = run_dir
    for suffix, stage in CONTINUATIONS.get(name, ()):
        out = run_dir.with_name(f"{run_dir.name}{suffix}")
        steps = 2 if args.smoke else args.continue_steps
        overrides = [*common, *stage, f"--config.train.steps={steps}", f"--config.workdir={out}"]
        overrides.append(f"--config.init_from={previous}")
        if args.smoke:  # toy batch: 4 documents, r = 3
            overrides += ["--config.data.batch_size=8", "--config.train.save_every=0", "--config.train.warmup_steps=1"]
            overrides += ["--config.fot.cross_batch_range=3"] if any("cross_batch_range" in a for a in stage) else []
        if args.skip_train and not out.is_dir():
            raise SystemExit(f"error: {out} does not exist: train it (drop --skip-train) or pass --continue-steps=0")
        if not args.skip_train:
            start = time.perf_counter()
            train(load_config(["train.py", "--config", str(ROOT / "configs" / f"{name}.py"), *overrides]))
            print(f"{name}: continued in {time.perf_counter() - start:.0f} s ({out})", flush=True)
        previous = out
    return previous


def evaluate(folders: list[Path], args: argparse.Namespace) -> None:
    from focused.config import load_config
    from focused.evals.runner import run

    overrides = [
        f"--config.checkpoints={tuple(str(f) for f in folders)!r}",
        f"--config.labels={tuple(f.name.removeprefix('dict_lookup_') for f in folders)!r}",
        f"--config.out_dir={args.out}",
        f"--config.memory.index.values_path={Path(args.out) / 'memmap'}",
        f"--config.overwrite={args.overwrite}",
    ]
    if args.smoke:  # 1 and 4 pages on the device, 16 pages through a flat FAISS index
        overrides += ["--config.dictionary.sizes=(64,256,1024)", "--config.dictionary.device_up_to=256"]
        overrides += ["--config.dictionary.trials=2", "--config.progress=False"]
    if args.sizes:
        overrides.append(f"--config.dictionary.sizes=({args.sizes},)")
    if args.trials:
        overrides.append(f"--config.dictionary.trials={args.trials}")
    results = run(load_config(["eval.py", "--config", str(ROOT / "configs" / "eval_dictionary.py"), *overrides]))
    print(f"results: {args.out}/results.md, {args.out}/plot.png ({len(results.series)} models)")


def refuse_to_replace(names: list[str], args: argparse.Namespace) -> None:
    """Before any training: a model that is not trained yet must not be exported over a shipped model (or its
    results written over shipped results) hours later; say so now, in one line."""
    if args.overwrite or args.skip_train:
        return
    fresh = [n for n in names if not (Path(args.runs) / f"{n}{args.tag}").exists()]
    taken = [
        str(Path(args.models) / f"{n}{args.tag}") for n in fresh if (Path(args.models) / f"{n}{args.tag}").exists()
    ]
    if fresh and not (args.stages_only or args.no_eval) and (Path(args.out) / "results.json").exists():
        taken.append(str(Path(args.out) / "results.json"))
    if taken:
        raise SystemExit(
            f"error: {', '.join(taken)} already exist (the shipped models and results): train into other folders "
            "with --models DIR --out DIR, or pass --overwrite to replace them"
        )


def main(argv: list[str]) -> int:
    args, extra = parse_args(argv)
    start = time.perf_counter()
    names = [m for m in args.only.split(",") if m] or list(MODELS)
    refuse_to_replace(names, args)
    folders = [train_and_export(name, args, extra) for name in names]
    if not (args.stages_only or args.no_eval):
        evaluate([f for f in folders if f is not None], args)
    print(f"dictionary lookup experiment done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    from focused.cli import run_script

    sys.exit(run_script(main, sys.argv[1:]))
