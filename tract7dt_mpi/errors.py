"""Exception types and process exit codes shared by every part of tract7dt-mpi.

Anything a user can fix (config, input files, columns, headers) raises :class:`InputError` with a
one-line message naming the file, key or column and what was expected; the CLI prints it once and
exits with :data:`EXIT_INPUT` on every rank.
"""

EXIT_OK = 0             #: every task finished
EXIT_ABORT = 1          #: internal error; the communicator was aborted
EXIT_INPUT = 2          #: bad config, bad input or bad usage
EXIT_RESUMABLE = 3      #: stopped early (signal or deadline); run again with --resume
EXIT_TASK_FAILURES = 4  #: finished, but some tasks failed (see the journal and the summary)


class Tract7dtError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = EXIT_ABORT


class InputError(Tract7dtError):
    """A problem with the user's config or input files (one-line, user-facing message)."""

    exit_code = EXIT_INPUT


class ConfigError(InputError):
    """Unknown key, wrong type or bad value in the YAML config (message names the dotted key)."""


class NotBuiltError(Tract7dtError):
    """A command or option that this version does not implement yet."""

    exit_code = EXIT_ABORT
