"""``clippy_rt.validate.check_positive_int``: the one positive-integer check."""

import pytest

from clippy_rt.errors import ConfigError, InputError
from clippy_rt.validate import check_positive_int


@pytest.mark.parametrize("value", [1, 7, 2**40])
def test_accepts_positive_ints(value):
    assert check_positive_int("n", value) == value


@pytest.mark.parametrize("value", [0, -3, True, False, 1.0, 2.5, "3", None, [1]])
def test_refuses_everything_else_with_name_and_value(value):
    with pytest.raises(InputError, match=rf"^n must be a positive integer, got {value!r}$".replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        check_positive_int("n", value)


def test_upper_bound_and_error_class():
    assert check_positive_int("batch", 8, upper=8) == 8
    with pytest.raises(InputError, match="batch must be a positive integer and at most 8, got 9"):
        check_positive_int("batch", 9, upper=8)
    with pytest.raises(ConfigError, match="heads must be a positive integer"):
        check_positive_int("heads", 0, error=ConfigError)
