"""``python -m deploy adapter|model|app|studio --to hf|modelscope|openxlab …``"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from deploy.hubs.base import PublishError
from deploy.publish import HUBS, WHAT, publish, stage
from deploy.stage import StageError
from deploy.studio import ManualSteps
from tuner.jobs import JobError, get_job
from tuner.models import ModelNotFound


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description="Publish to Hugging Face, ModelScope or OpenXLab.")
    parser.add_argument("what", choices=WHAT,
                        help="a job's adapter, its merged model, the chat app, or the studio itself (this repository)")
    parser.add_argument("--to", choices=HUBS, default="hf", dest="hub")
    parser.add_argument("--job", help="the job whose adapter or model is published")
    parser.add_argument("--repo", default="", help="repository id, e.g. alice/alice-assistant")
    parser.add_argument("--model-repo", default="", help="app: the published adapter or model it chats with")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--endpoint", help="the hub's address (default: the client's own)")
    parser.add_argument("--ask-token", action="store_true",
                        help="type the token at a hidden prompt (default: HF_TOKEN, MODELSCOPE_API_TOKEN, "
                             "OPENXLAB_AK/OPENXLAB_SK)")
    parser.add_argument("--hardware", help="studio: the Space's hardware on hf (cpu-basic, t4-small, l4x1, "
                        "a10g-small, ...), resource_configuration of ms_deploy.json on modelscope")
    parser.add_argument("--dry-run", metavar="DIR", help="write the folder that would be pushed, push nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        job = None
        if args.job:
            job = get_job(args.job)
        if args.dry_run:
            folder = stage(args.what, Path(args.dry_run), args.repo, job, args.hub, args.model_repo,
                           args.license, hardware=args.hardware)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            print(f"{folder}: {len(files)} files would be pushed\n  " + "\n  ".join(files))
            return 0
        if not args.repo:
            print("error: --repo is required to publish", file=sys.stderr)
            return 1
        token = getpass.getpass(f"{args.hub} token: ") if args.ask_token else None
        result = publish(args.what, args.hub, args.repo, job=job, token=token, private=args.private,
                         model_repo=args.model_repo, endpoint=args.endpoint, license=args.license,
                         hardware=args.hardware, progress=lambda message: print(message, flush=True))
        print(result.url)
        for warning in getattr(result, "warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    except (PublishError, StageError, JobError, ModelNotFound, ValueError) as error:
        # ManualSteps: nothing was pushed, and the message is what to do instead (not an error of the command's own)
        print(str(error) if isinstance(error, ManualSteps) else f"error: {error}", file=sys.stderr)
        return 1
