"""`--push-to-hub REPO_ID [--private] [--revision BRANCH] [--commit-message TEXT]`, shared by every command that
writes a model: checked before any work (`check_hub_arguments`), pushed once the output is published
(`push_output`, on the main process only)."""

import argparse

from ..common.errors import LeanbertError
from ..publishing import check_access, push_folder
from ..training import process_state


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Hugging Face Hub", "publish the output (model, code, tokenizer, reports, "
                                                          "model card) in one commit once it is written")
    group.add_argument("--push-to-hub", metavar="REPO_ID",
                       help="Hub model repository ('user/model'), created if missing; needs a token with write "
                            "access (`hf auth login` or HF_TOKEN)")
    group.add_argument("--private", action="store_true",
                       help="create the repository private (an existing public one is refused)")
    group.add_argument("--revision", metavar="BRANCH", help="push to this branch, created from main if missing")
    group.add_argument("--commit-message", help="the commit's message (default: what was written, by which command)")


def check_hub_arguments(args: argparse.Namespace) -> None:
    """Refuse a push that cannot succeed (id, branch, token, the Hub's answer to it) before any work."""
    if args.push_to_hub is None:
        given = [flag for flag, value in (("--private", args.private), ("--revision", args.revision),
                                          ("--commit-message", args.commit_message)) if value]
        if given:
            raise LeanbertError(f"{given[0]} is used only with --push-to-hub")
        return
    check_access(args.push_to_hub, revision=args.revision, private=args.private)


def push_output(args: argparse.Namespace, folder) -> dict | None:
    """Push the published output `folder` if asked (main process only); the push's summary, else None."""
    if args.push_to_hub is None:
        return None
    if not process_state().is_main_process:
        return None
    pushed = push_folder(folder, args.push_to_hub, private=args.private, revision=args.revision,
                         commit_message=args.commit_message)
    return {key: pushed[key] for key in ("repo_id", "url", "commit_url", "commit")}
