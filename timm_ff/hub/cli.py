"""The ``timm-ff-hub`` / ``python -m timm_ff.hub`` command line: ``push``, ``release``, ``card``.

User errors (bad paths, corrupt runs, Hub failures) print one ``error: ...`` line and exit 2.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..errors import TimmFFError
from ..models._hub_org import HUB_ORG
from .card import model_card
from .publish import _publish
from .release import build_release

__all__ = ['main']


class _UsageError(Exception):
    """A command-line usage error (reported as one ``error:`` line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        raise _UsageError(f'{message} (see --help)')


def _build_parser() -> argparse.ArgumentParser:
    """The ``push`` / ``release`` / ``card`` command line."""
    p = _Parser(prog='python -m timm_ff.hub', description='Publish timm_ff runs as timm models on the Hub.')
    sub = p.add_subparsers(dest='command', required=True, parser_class=_Parser)
    push = sub.add_parser('push', help='publish a finished run folder to ORG/NAME')
    push.add_argument('run_dir', help='finished train_ff.py run folder')
    push.add_argument('repo_id', help='Hub model repo, ORG/NAME')
    push.add_argument('--private', action='store_true', help='create the repo private')
    push.add_argument('--revision', default=None, help='branch to commit to (created if missing)')
    push.add_argument('--dry-run', metavar='DIR', default=None, help='only write the upload folder to DIR')
    rel = sub.add_parser('release', help='upload-ready folders for every hub_configs recipe with a run')
    rel.add_argument('--runs', default='output/train', help='folder holding finished runs')
    rel.add_argument('--out', default='output/release', help='where to write the folders')
    rel.add_argument('--org', default=HUB_ORG, help='Hub organisation of the repos')
    rel.add_argument('--recipes', default=None, help='recipe folder (default: hub_configs/)')
    card = sub.add_parser('card', help='print the model card of a run folder')
    card.add_argument('run_dir', help='run folder')
    card.add_argument('--repo-id', default=None, help='repo the card is for (default HUB_ORG/<folder name>)')
    return p


def _cmd_push(args: argparse.Namespace) -> None:
    """``push``: publish (or, with --dry-run DIR, only write) a run's upload folder."""
    folder, url = _publish(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                           dry_run=args.dry_run is not None, out_dir=args.dry_run, token=None)
    if url is None:
        print(f'dry run: upload folder for {args.repo_id} written to {folder}')
    else:
        print(f'pushed {args.run_dir} to {args.repo_id} ({args.revision or "main"}): {url}')


def _cmd_release(args: argparse.Namespace) -> None:
    """``release``: upload-ready folders for the recipes that have runs; list those that do not."""
    folders = build_release(args.runs, args.out, org=args.org, recipes_dir=args.recipes)
    manifest = json.loads((Path(args.out) / 'release.json').read_text())
    for folder in folders:
        print(f'{args.org}/{folder.name}: {folder}')
    for name in manifest['missing_runs']:
        print(f'no finished run for recipe {name}')
    for why in manifest['rejected_runs'].values():
        print(f'error: {why}')
    print(f'{len(folders)} release folder(s) in {args.out}; upload each with: '
          'hf upload ORG/NAME FOLDER . (or python -m timm_ff.hub push RUN_DIR ORG/NAME)')


def _cmd_card(args: argparse.Namespace) -> None:
    """``card``: print a run's model card."""
    print(model_card(args.run_dir, args.repo_id), end='')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (``timm-ff-hub`` / ``python -m timm_ff.hub``); returns the exit code.

    User errors (bad paths, corrupt runs, Hub failures) print one ``error: ...`` line and return 2.
    """
    try:
        args = _build_parser().parse_args(argv)
        {'push': _cmd_push, 'release': _cmd_release, 'card': _cmd_card}[args.command](args)
    except (_UsageError, TimmFFError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    return 0

