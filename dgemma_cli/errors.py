"""Every failure a user can cause ends here as one line on stderr and a non-zero exit code."""

from __future__ import annotations

import errno
import sys

import typer
from dgemma_runtime import DgemmaError, OptionError

EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageProblem(DgemmaError):
    """The command line asks for something impossible (exit 2, like a bad flag)."""


def _say(message: str) -> None:
    sys.stderr.write(f"dgemma: error: {message}\n")
    sys.stderr.flush()


def run_guarded(app: typer.Typer) -> int:
    """Run the Typer app and map every expected failure to (one line, exit code)."""
    try:
        result = app(standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except (UsageProblem, OptionError) as exc:
        _say(str(exc))
        return EXIT_USAGE
    except DgemmaError as exc:
        _say(str(exc))
        return EXIT_FAILURE
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (`| head`): nothing left to say
        return EXIT_FAILURE
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            _say(f"no space left on device{f' ({exc.filename})' if exc.filename else ''}")
        else:
            _say(f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}")
        return EXIT_FAILURE
    except MemoryError:
        _say("out of memory: try a smaller model, a quantized variant, or a shorter --max-new-tokens")
        return EXIT_FAILURE
    except Exception as exc:
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # Click's usage errors (Typer vendors Click)
            ctx = getattr(exc, "ctx", None)
            _say(f"{exc.format_message()} (see '{ctx.command_path if ctx else 'dgemma'} --help')")
            return exc.exit_code
        if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            _say(
                "GPU out of memory: try a quantized variant (diffusiongemma:26b-fp8 or :26b-nvfp4), "
                "a shorter --max-new-tokens, or --device cpu"
            )
            return EXIT_FAILURE
        raise
