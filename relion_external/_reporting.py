"""What RELION sees of a running External job besides its outputs: the log and the exit files.

RELION redirects a local job's stdout and stderr to ``run.out`` and ``run.err`` and shows
them in the GUI's two log panes (protocol §1.4), and learns that the job ended only from
the exit files it polls for (protocol §2.1). Shared by the command-line parser
(:mod:`relion_external._args`) and the job context (:mod:`relion_external._job`).
"""

from __future__ import annotations

import sys

from loguru import logger

__all__ = ["ABORT_NOW", "EXIT_ABORTED", "EXIT_FAILURE", "EXIT_SUCCESS", "configure_logging", "print_error_line"]

# File names: RELION src/pipeline_control.h:31-34 (identical in 3.1/4.0/5.0), protocol §2.1.
EXIT_SUCCESS = "RELION_JOB_EXIT_SUCCESS"
EXIT_FAILURE = "RELION_JOB_EXIT_FAILURE"
EXIT_ABORTED = "RELION_JOB_EXIT_ABORTED"
ABORT_NOW = "RELION_JOB_ABORT_NOW"

_LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss} | {level: <7} | {message}"


def configure_logging(verbose: bool = False) -> None:
    """Send loguru INFO (DEBUG if ``verbose``) lines to stdout and WARNING+ to stderr.

    RELION redirects stdout/stderr of a local run to ``run.out``/``run.err`` (protocol §1.4)
    and shows them in the GUI's two log panes, so warnings appear in the red pane. Colours
    are off (the sinks are files). Replaces any earlier loguru handlers.
    """
    warning_no = logger.level("WARNING").no
    logger.remove()
    logger.add(
        sys.stdout,
        level="DEBUG" if verbose else "INFO",
        format=_LOG_FORMAT,
        colorize=False,
        filter=lambda record: record["level"].no < warning_no,
    )
    logger.add(sys.stderr, level="WARNING", format=_LOG_FORMAT, colorize=False)


def print_error_line(message: str) -> None:
    """Write ``ERROR: <message>`` as exactly one line on stderr (newlines become spaces).

    RELION shows stderr in the GUI's red pane (protocol §1.4); one line per failure is what
    the user reads there, next to ``RELION_JOB_EXIT_FAILURE``.
    """
    one_line = " ".join(str(message).split())
    sys.stderr.write(f"ERROR: {one_line}\n")
    sys.stderr.flush()
