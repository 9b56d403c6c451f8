"""The one rule for rejecting a bad setting: a ValueError that names the class, the field and what is expected."""


def check(ok: bool, owner: str, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{owner}.{name} = {value!r} is invalid: expected {expected}.")
