"""``abstain review sync``: the review queue ↔ Label Studio (extra ``review``)."""

from __future__ import annotations

import argparse
import os
import sys

from serve.cli.argtypes import POSITIVE_INT
from serve.errors import AbstainError, MissingExtraError


def _sync(args: argparse.Namespace) -> int:
    from serve.feedback.labelstudio import LabelStudio, sync
    from serve.feedback.store import Store

    location = args.store or os.environ.get("ABSTAIN_DATABASE_URL") or os.environ.get("ABSTAIN_STATE_DIR")
    if not location:
        raise AbstainError("no decision store: pass --store STATE_DIR|postgresql://… (the server's "
                           "--state-dir or --database-url)")
    token = args.token or os.environ.get("LABEL_STUDIO_API_KEY")
    if not token:
        raise AbstainError("no Label Studio token: pass --token (Account & Settings → Access Token) "
                           "or set LABEL_STUDIO_API_KEY")
    try:
        import httpx  # noqa: F401
    except ImportError:
        raise AbstainError("review sync needs httpx: pip install 'abstain[review]'") from None
    store = Store(location)
    try:
        ls = LabelStudio(args.label_studio, token)
        report = sync(store, ls, args.project, args.model, tuple(args.kind), args.limit)
        if args.webhook:
            if not args.webhook_secret:
                raise AbstainError("--webhook needs --webhook-secret (the server's --review-webhook-secret)")
            ls.add_webhook(report.project, args.webhook, args.webhook_secret)
    finally:
        store.close()
    print(report.line())
    return 0


def register_review(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("review", help="review queue tools (Label Studio sync)",
                       description="Tools for the human-review loop: `abstain review sync` pushes "
                       "pending deferred and audit items to Label Studio as pre-annotated tasks and "
                       "pulls finished annotations back as feedback.")
    rsub = p.add_subparsers(dest="review_command", required=True, metavar="COMMAND")
    s = rsub.add_parser("sync", help="push pending deferred/audit items to Label Studio as tasks "
                        "and pull finished annotations back as feedback (idempotent, resumable)")
    s.add_argument("--label-studio", required=True, metavar="URL", help="e.g. http://localhost:8080")
    s.add_argument("--token", help="Label Studio API token (or $LABEL_STUDIO_API_KEY)")
    s.add_argument("--project", required=True, help="project id or title (a new title is created)")
    s.add_argument("--model", required=True, help="model name whose queue to sync")
    s.add_argument("--store", help="the server's --state-dir or --database-url "
                   "(default $ABSTAIN_DATABASE_URL or $ABSTAIN_STATE_DIR)")
    s.add_argument("--kind", action="append", choices=("deferred", "audit"),
                   help="queue(s) to push (default both)")
    s.add_argument("--limit", type=POSITIVE_INT, default=1000,
                   help="items per queue per run (default: 1000)")
    s.add_argument("--webhook", metavar="URL", help="also register this server URL + "
                   "/v1/review/labelstudio as the project's annotation webhook")
    s.add_argument("--webhook-secret", help="shared secret sent in the webhook header")

    def handler(args: argparse.Namespace) -> int:
        args.kind = args.kind or ["deferred", "audit"]
        return _sync(args)

    s.set_defaults(handler=handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="abstain")
    register_review(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AbstainError as err:
        print(f"abstain review: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _needs_review_extra() -> AbstainError | None:
    """`review` talks to Label Studio over HTTP: it needs the ``review`` extra (httpx)."""
    import importlib.util

    if importlib.util.find_spec("httpx") is None:
        return MissingExtraError("review", "httpx")
    return None


register_review.unavailable = _needs_review_extra  # type: ignore[attr-defined]
