"""The one exception type the suite raises for problems a user can fix."""


class ReproduceError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback."""

    exit_code = 1


class StudyError(ReproduceError):
    """An invalid study file; exit code 2 as the issue tracker specifies."""

    exit_code = 2
