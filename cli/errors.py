"""The CLI's one error type: something the user can fix, reported as one line with exit status 2."""

import click


class UserError(click.ClickException):
    """An error the user can fix: one ``Error: ...`` line, exit status 2, no traceback."""

    exit_code = 2
