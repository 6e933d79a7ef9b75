"""The dataset component's user-fixable error."""

from automodel._shared.errors import UserError


class DatasetError(UserError):
    """A problem with a dataset the user can fix: a missing file, split or column, a malformed row, a bad option."""
