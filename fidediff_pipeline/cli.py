"""The ``fidediff`` command line: ``fidediff deblur``, ``fidediff data``, ``fidediff eval``, ...

Each sub-command lives in ``fidediff_pipeline/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order of ``fidediff --help``.
COMMAND_MODULES = [
    "fidediff_pipeline.commands.demo",
    "fidediff_pipeline.commands.deblur",
    "fidediff_pipeline.commands.data",
    "fidediff_pipeline.commands.eval",
    "fidediff_pipeline.commands.push",
    "fidediff_pipeline.commands.export_space",
]


class CLIError(Exception):
    """An error the command line reports as one readable line (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fidediff", description="FideDiff one-step motion deblurring")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .distributed import close_process_group

    finished = False
    try:
        code = int(args.func(args) or 0)
        finished = True
        return code
    except (CLIError, ValueError, FileNotFoundError, OSError) as err:
        from .distributed import error_prefix, should_print_error

        # Under `accelerate launch` every process hits the same input error: the main process prints it once.
        if should_print_error(err):
            print(f"fidediff {args.command}: error: {error_prefix(err)}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # Under `accelerate launch`: every process leaves together (see close_process_group).
        close_process_group(finished)


if __name__ == "__main__":
    sys.exit(main())
