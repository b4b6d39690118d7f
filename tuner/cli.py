"""``python -m tuner``: every capability of the studio from the command line.

Errors a person can act on are printed as one line each (no traceback) and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tuner import data as tdata
from tuner.models import EMBEDDED_MODEL

EPILOG = """examples:
  python -m tuner data self-cognition --name Alice --out alice.jsonl
  python -m tuner data check alice.jsonl
  python -m tuner train --data alice.jsonl --wait
  python -m tuner chat --job JOB_ID --prompt "Who are you?"
  python -m tuner demo --name Alice        (the whole flow on the embedded model)
  python -m tuner serve --model embedded   (an OpenAI-compatible API on http://127.0.0.1:8000/v1)
"""


class CliError(Exception):
    pass


# data ------------------------------------------------------------------------------------------------

def _column_map(args) -> dict | None:
    if not (args.question_column or args.answer_column):
        return None
    return {"input": args.question_column, "output": args.answer_column, "system": args.system_column}


def cmd_data_check(args) -> int:
    result = tdata.read_data(args.file, args.format, _column_map(args))
    for error in result.errors:
        print(error)
    for skipped in result.skipped:
        print(f"{skipped} (skipped)")
    if not result.ok:
        if not result.errors:
            print(f"{args.file}:0: no records found")
        return 1
    turns = sum(len(r.turns) for r in result.records)
    print(f"{args.file}: format {result.format}, {len(result.records)} records, {turns} turns"
          + (f", {len(result.skipped)} rows skipped" if result.skipped else ""))
    return 0


def cmd_data_convert(args) -> int:
    result = tdata.read_data(args.file, args.format, _column_map(args))
    for error in result.errors:
        print(error)
    if not result.ok:
        return 1
    out = tdata.write_jsonl(result.records, Path(args.out))
    print(f"{out}: {len(result.records)} records in XTuner conversation format (from {result.format})")
    return 0


def cmd_data_self_cognition(args) -> int:
    records = tdata.self_cognition_records(args.name, args.description, args.count, args.seed)
    out = tdata.write_jsonl(records, Path(args.out))
    print(f"{out}: {len(records)} self-cognition records for {args.name}")
    return 0


def cmd_data_replace(args) -> int:
    pairs = {}
    for item in args.replace:
        if "=" not in item:
            raise CliError(f"--replace takes OLD=NEW, got {item!r}")
        old, new = item.split("=", 1)
        pairs[old] = new
    changed = tdata.replace_text(args.file, args.out, pairs)
    print(f"{args.out}: {changed} strings changed")
    return 0


def cmd_data_split(args) -> int:
    result = tdata.read_data(args.file)
    for error in result.errors:
        print(error)
    if not result.ok:
        return 1
    train, test = tdata.split_records(result.records, args.test_ratio, args.seed)
    stem = Path(args.file).with_suffix("")
    train_path = tdata.write_jsonl(train, Path(args.train_out or f"{stem}.train.jsonl"))
    test_path = tdata.write_jsonl(test, Path(args.test_out or f"{stem}.test.jsonl"))
    print(f"{train_path}: {len(train)} records\n{test_path}: {len(test)} records")
    return 0


def cmd_data_stats(args) -> int:
    from transformers import AutoTokenizer

    from tuner.models import guess_template, resolve_model

    result = tdata.read_data(args.file)
    if not result.ok:
        for error in result.errors:
            print(error)
        return 1
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model), trust_remote_code=True)
    stats = tdata.dataset_stats(result.records, tokenizer, args.template or guess_template(args.model),
                                args.max_length)
    print(json.dumps({"records": stats.records, "turns": stats.turns, "mean_tokens": stats.mean,
                      "median_tokens": stats.median, "max_tokens": stats.maximum,
                      "over_max_length": stats.over_max_length, "max_length": stats.max_length}, indent=2))
    return 0


# config and training -----------------------------------------------------------------------------------

def _spec_from_args(args):
    from tuner.spec import spec_for_model

    overrides = {}
    for name in ("template", "method", "precision", "max_length", "batch_size", "accumulative_counts",
                 "max_epochs", "lr", "lora_r", "lora_alpha", "lora_dropout", "save_steps", "evaluation_freq",
                 "system", "deepspeed", "gpus", "seed", "warmup_ratio", "kernels", "optimizer",
                 "offload_activations"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "evaluation_input", None):
        overrides["evaluation_inputs"] = args.evaluation_input
    if getattr(args, "data", None):
        overrides["data_files"] = [str(Path(p).resolve()) for p in args.data]
    return spec_for_model(args.model, **overrides)


def cmd_config(args) -> int:
    from tuner.models import resolve_model
    from tuner.spec import render_config

    spec = _spec_from_args(args)
    text = render_config(spec, Path(args.out).name, model_path=resolve_model(spec.model))
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"{args.out}: XTuner config for {spec.model}. Run: xtuner train {args.out}")
    return 0


def _watch(job, quiet: bool = False) -> int:
    from tuner.jobs import JobState

    shown = 0
    samples = 0
    while True:
        status = job.status()
        progress = job.progress()
        for event in progress.iterations[shown:]:
            if not quiet:
                print(f"iter {event.iteration}/{event.total}  loss {event.loss}  lr {event.lr}  eta {event.eta}",
                      flush=True)
        shown = len(progress.iterations)
        for sample in progress.samples[samples:]:
            if not quiet:
                print(f"  sample after iter {sample.after_iteration}: {sample.question!r} -> {sample.answer!r}")
        samples = len(progress.samples)
        if status.state.finished:
            break
        time.sleep(1)
    print(f"job {job.id}: {status.state.value}" + (f": {status.reason}" if status.reason else ""))
    if status.state == JobState.SUCCEEDED:
        print(f"adapter: {job.adapter_dir}")
        if job.merged_dir.exists():
            print(f"merged model: {job.merged_dir}")
    return 0 if status.state == JobState.SUCCEEDED else 1


def cmd_train(args) -> int:
    from tuner.jobs import create_job, start_job

    if not args.data:
        raise CliError("--data is required: a data file (any supported format; see `data check`)")
    converted = []
    for path in args.data:
        result = tdata.read_data(path)
        if not result.ok:
            for error in result.errors:
                print(error)
            return 1
        if result.format != "xtuner":
            target = Path(path).with_suffix(".xtuner.jsonl")
            tdata.write_jsonl(result.records, target)
            path = target
        converted.append(path)
    args.data = converted
    job = create_job(_spec_from_args(args), args.name or "")
    print(f"job {job.id} in {job.dir}\ncommand: {job.command()}")
    start_job(job, merge_after=args.merge)
    return _watch(job, args.quiet) if args.wait else 0


def cmd_convert(args) -> int:
    from tuner.convert import convert_job
    from tuner.jobs import get_job

    adapter = convert_job(get_job(args.job), Path(args.checkpoint) if args.checkpoint else None)
    print(f"adapter: {adapter}")
    return 0


def cmd_merge(args) -> int:
    from tuner.convert import merge_adapter, merge_job
    from tuner.jobs import get_job

    if args.job:
        merged = merge_job(get_job(args.job), args.max_shard_size, args.device)
    else:
        if not (args.base and args.adapter and args.out):
            raise CliError("merge needs --job, or --base, --adapter and --out")
        merged = merge_adapter(args.base, Path(args.adapter), Path(args.out), Path(args.out).with_suffix(".log"),
                               args.max_shard_size, args.device)
    print(f"merged model: {merged}")
    return 0


def cmd_chat(args) -> int:
    from tuner.chat import GenerationSettings, load_chat_model, stream_reply
    from tuner.jobs import get_job

    kind, model, adapter = "base", args.model, args.adapter
    if args.job:
        job = get_job(args.job)
        if args.merged:
            kind, model = "merged", str(job.merged_dir)
        else:
            kind, adapter = "adapter", job.adapter_dir
    elif adapter:
        kind = "adapter"
        model = "" if args.model == EMBEDDED_MODEL else args.model
    elif args.merged:
        kind = "merged"
    chat = load_chat_model(kind, model, adapter, args.load_in_4bit, args.template or "")
    settings = GenerationSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                                  args.repetition_penalty)
    history: list[tuple[str, str]] = []

    def answer(message: str) -> str:
        printed = ""
        for printed_now in stream_reply(chat, message, history, args.system, settings):
            sys.stdout.write(printed_now[len(printed):])
            sys.stdout.flush()
            printed = printed_now
        print()
        return printed

    if args.prompt:
        for prompt in args.prompt:
            history.append((prompt, answer(prompt)))
        return 0
    print(f"Chatting with {chat.description}. Empty line or Ctrl-D to quit; 'RESET' clears the history.")
    while True:
        try:
            message = input(">>> ").strip()
        except EOFError:
            return 0
        if not message:
            return 0
        if message == "RESET":
            history.clear()
            continue
        history.append((message, answer(message)))


def cmd_serve(args) -> int:
    """The OpenAI-compatible API alone (no page): POST /v1/chat/completions, GET /v1/models."""
    import os

    import uvicorn
    from fastapi import FastAPI

    from tuner.openai_api import bearer_key, build_router, default_catalog, model_ref_for
    from tuner.model_cache import shared_cache

    catalog = {name: model_ref_for(name) for name in args.model} if args.model else None
    if catalog:
        for name, ref in catalog.items():  # before the first request, so it does not wait for the load
            print(f"loading {name} ({ref.kind})", flush=True)
            shared_cache().get(ref.kind, ref.model, ref.adapter)
    key = args.api_key or os.environ.get("TUNER_API_KEY")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(build_router(bearer_key(key) if key else None,
                                    (lambda: catalog) if catalog else default_catalog), prefix="/v1")
    print(f"OpenAI-compatible API on http://{args.host}:{args.port}/v1 "
          f"({'key required' if key else 'no key'}); models: {', '.join(catalog or default_catalog())}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


def cmd_jobs(args) -> int:
    from tuner.jobs import cancel_job, get_job, list_jobs, resume_job

    if args.action == "list":
        for job in list_jobs():
            status = job.status()
            latest = job.progress().latest
            where = f"{latest.iteration}/{latest.total}" if latest else "-"
            print(f"{job.id}\t{status.state.value}\t{where}\t{status.reason}")
        return 0
    if not args.job:
        raise CliError(f"jobs {args.action} needs a job id")
    job = get_job(args.job)
    if args.action == "show":
        status = job.status()
        progress = job.progress()
        print(json.dumps({"id": job.id, "dir": str(job.dir), **status.to_dict(),
                          "iteration": progress.latest.iteration if progress.latest else 0,
                          "total": progress.latest.total if progress.latest else 0,
                          "losses": progress.losses()[-10:],
                          "samples": [s.__dict__ for s in progress.samples[-4:]],
                          "command": job.command()}, indent=2, ensure_ascii=False))
        return 0
    if args.action == "cancel":
        print(f"job {job.id}: {cancel_job(job).state.value}")
        return 0
    if args.action == "resume":
        resume_job(job)
        print(f"job {job.id}: resumed")
        return _watch(job, args.quiet) if args.wait else 0
    if args.action == "watch":
        return _watch(job, args.quiet)
    if args.action == "export":
        from tuner.launch import export_cluster_bundle

        if not args.out:
            raise CliError("jobs export needs --out DIR")
        out = export_cluster_bundle(job, Path(args.out), args.nodes, args.gpus_per_node)
        print(f"{out}: config, data and launch scripts for {args.nodes} node(s); see {out / 'README.md'}")
        return 0
    raise CliError(f"unknown jobs action {args.action}")


def cmd_demo(args) -> int:
    """The whole flow on the embedded model: data → train → adapter → merge → chat."""
    from tuner import paths

    out = paths.datasets_dir() / f"self-cognition-{args.name}.jsonl"
    records = tdata.self_cognition_records(args.name, args.description, args.count)
    tdata.write_jsonl(records, out)
    print(f"data: {out} ({len(records)} records)")
    args.data, args.merge, args.wait, args.quiet = [out], True, True, False
    args.model, args.name = EMBEDDED_MODEL, f"demo-{args.name}"
    if cmd_train(args) != 0:
        return 1
    from tuner.jobs import list_jobs

    job = next(j for j in list_jobs() if j.id.endswith(args.name))
    args.job, args.merged, args.adapter, args.template, args.system = job.id, False, None, None, None
    args.prompt = ["Who are you?", "你是谁？"]
    args.load_in_4bit = False
    return cmd_chat(args)


# parser ---------------------------------------------------------------------------------------------

def _add_table_options(parser) -> None:
    parser.add_argument("--format", choices=tdata.FORMATS, help="skip format detection")
    parser.add_argument("--question-column", help="table column with the questions")
    parser.add_argument("--answer-column", help="table column with the answers")
    parser.add_argument("--system-column", help="table column with a system prompt")


def _add_spec_options(parser) -> None:
    from tuner.spec import DEEPSPEED_CHOICES, METHODS, OPTIMIZERS, PRECISIONS
    from tuner.kernels import KERNEL_CHOICES

    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model: embedded default, local folder or hub id")
    parser.add_argument("--template", help="XTuner prompt template (default: guessed from the model)")
    parser.add_argument("--method", choices=METHODS)
    parser.add_argument("--precision", choices=PRECISIONS)
    for name, kind in (("max-length", int), ("batch-size", int), ("accumulative-counts", int),
                       ("max-epochs", int), ("lr", float), ("lora-r", int), ("lora-alpha", int),
                       ("lora-dropout", float), ("save-steps", int), ("evaluation-freq", int), ("gpus", int),
                       ("seed", int), ("warmup-ratio", float)):
        parser.add_argument(f"--{name}", type=kind, dest=name.replace("-", "_"))
    parser.add_argument("--system", help="system prompt (SYSTEM)")
    parser.add_argument("--evaluation-input", action="append", help="a question asked during training (repeat)")
    parser.add_argument("--deepspeed", choices=DEEPSPEED_CHOICES)
    parser.add_argument("--kernels", choices=KERNEL_CHOICES,
                        help="fused training kernels: liger (Liger Kernel, CUDA), auto (liger where possible), none")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="adamw (torch); adamw_8bit, paged_adamw_8bit: bitsandbytes' 8-bit states (CUDA)")
    parser.add_argument("--offload-activations", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the checkpointed layers' inputs in pinned host memory during a step (CUDA)")


def _add_generation_options(parser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuner", description="Fine-tune a chat assistant with XTuner.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="check, convert, generate, replace, split data sets")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    p = data_verbs.add_parser("check", help="validate a data file: format, records, FILE:LINE errors")
    p.add_argument("file")
    _add_table_options(p)
    p.set_defaults(func=cmd_data_check)
    p = data_verbs.add_parser("convert", help="any supported format → XTuner conversation JSONL")
    p.add_argument("file")
    p.add_argument("--out", required=True)
    _add_table_options(p)
    p.set_defaults(func=cmd_data_convert)
    p = data_verbs.add_parser("self-cognition", help="generate 'I am NAME's assistant' data")
    p.add_argument("--name", required=True)
    p.add_argument("--description", default="")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_self_cognition)
    p = data_verbs.add_parser("replace", help="replace text in every string of a JSON/JSONL file")
    p.add_argument("file")
    p.add_argument("--replace", action="append", required=True, metavar="OLD=NEW")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data_replace)
    p = data_verbs.add_parser("split", help="seeded train/test split")
    p.add_argument("file")
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-out")
    p.add_argument("--test-out")
    p.set_defaults(func=cmd_data_split)
    p = data_verbs.add_parser("stats", help="records, turns, token lengths with the model's tokenizer")
    p.add_argument("file")
    p.add_argument("--model", default=EMBEDDED_MODEL)
    p.add_argument("--template")
    p.add_argument("--max-length", type=int, default=2048)
    p.set_defaults(func=cmd_data_stats)

    p = verbs.add_parser("config", help="write the XTuner config for a model and settings")
    p.add_argument("--out", required=True)
    p.add_argument("--data", action="append", help="training data (XTuner conversation JSONL)")
    _add_spec_options(p)
    p.set_defaults(func=cmd_config)

    p = verbs.add_parser("train", help="start `xtuner train` as a job")
    p.add_argument("--data", action="append", help="training data file (repeat for several)")
    p.add_argument("--name", help="a name for the job")
    p.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base when done")
    _add_spec_options(p)
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("convert", help="a job's checkpoint → Hugging Face adapter (xtuner pth_to_hf)")
    p.add_argument("job")
    p.add_argument("--checkpoint", help="a .pth file (default: the last)")
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("merge", help="merge an adapter into its base model (xtuner convert merge)")
    p.add_argument("--job")
    p.add_argument("--base")
    p.add_argument("--adapter")
    p.add_argument("--out")
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_merge)

    p = verbs.add_parser("chat", help="chat with a base model, a job's adapter, or a merged model")
    p.add_argument("--model", default=EMBEDDED_MODEL)
    p.add_argument("--adapter", help="an adapter folder")
    p.add_argument("--job", help="chat with this job's adapter (or merged model with --merged)")
    p.add_argument("--merged", action="store_true")
    p.add_argument("--template")
    p.add_argument("--system")
    p.add_argument("--prompt", action="append", help="one-shot: answer this and exit (repeat for turns)")
    p.add_argument("--load-in-4bit", action="store_true")
    _add_generation_options(p)
    p.set_defaults(func=cmd_chat)

    p = verbs.add_parser("serve", help="the OpenAI-compatible chat API alone (/v1/chat/completions, /v1/models)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", action="append", default=[],
                   help="serve (and load now) only this: a preset or embedded model, a job id (JOB or JOB:merged), "
                        "a model or adapter folder (repeat for more; default: presets and finished jobs, loaded "
                        "on first use)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $TUNER_API_KEY, else none)")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("jobs", help="list, show, watch, cancel, resume jobs; export one for a cluster")
    p.add_argument("action", choices=("list", "show", "watch", "cancel", "resume", "export"))
    p.add_argument("job", nargs="?")
    p.add_argument("--out", help="export: the folder for the cluster bundle")
    p.add_argument("--nodes", type=int, default=1, help="export: number of machines")
    p.add_argument("--gpus-per-node", type=int, help="export: GPUs per machine (default: the job's)")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = verbs.add_parser("demo", help="the whole flow on the embedded model, end to end")
    p.add_argument("--name", default="Alice")
    p.add_argument("--description", default="")
    p.add_argument("--count", type=int, default=200)
    _add_spec_options(p)
    _add_generation_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tuner.chat import ChatLoadError
    from tuner.convert import ConversionError
    from tuner.jobs import JobError
    from tuner.models import ModelNotFound

    from tuner.xtuner_compat import quiet_known_noise

    quiet_known_noise()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, JobError, ConversionError, ChatLoadError, ModelNotFound, ValueError,
            FileNotFoundError, tdata.DataFormatError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
