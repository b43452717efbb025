"""User-facing errors.

Every problem a user can fix (bad file, wrong shape, existing output...) is raised as
:class:`SemSegError` with a one-line message that says what is wrong and how to fix it.
The CLI prints that line and exits with status 2; the napari widgets show it as a notification.
"""

from __future__ import annotations


class SemSegError(ValueError):
    """A problem with the user's input or settings, explained in one line."""


class Cancelled(RuntimeError):
    """Raised inside a job when the user asked it to stop."""


class SemSegWarning(UserWarning):
    """Work goes on, but the result may be wrong: what was seen, with numbers, and the fix.

    The CLI prints it as one ``warning:`` line; napari shows it as a notification.
    """
