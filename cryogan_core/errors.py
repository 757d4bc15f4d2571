"""Errors that reach the user as one clear line (no traceback)."""


class InputError(Exception):
    """Bad user input: a file, column, row or value that cannot be used.

    The message is a single line that names the offending file, column, row or value,
    e.g. ``particles.star: column rlnDefocusU is missing``. Command-line entry points
    catch it, print ``ERROR: <message>`` and exit with status 1 (jobs also write
    ``RELION_JOB_EXIT_FAILURE``).
    """
