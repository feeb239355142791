"""User-facing errors: anything raised as `UserError` ends the CLI with exit code 2 and one paragraph."""

from __future__ import annotations

import difflib
import re


class UserError(Exception):
    """A mistake in what the user gave us (recipe, key, value, file). Printed without a traceback."""


class NonFiniteLoss(UserError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def suggest(name: str, choices) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown(kind: str, name: str, choices) -> UserError:
    """Error for an unknown name, listing the valid choices and the closest one."""
    choices = sorted(choices)
    return UserError(
        f"Unknown {kind} '{name}'.{suggest(name, choices)} Valid choices: {', '.join(choices)}."
    )


_UNSAFE = re.compile(r"allow_pickle|weights_only|pickle\.load|unsafely", re.I)


def scrub(text) -> str:
    """A library's error text without the sentences advising to unpickle (numpy's `allow_pickle=`,
    torch's `weights_only=False`): deepstep never loads a file that way, so it never suggests it."""
    sentences = re.split(r"(?<=[.!?])\s+", str(text).strip())
    return " ".join(s for s in sentences if not _UNSAFE.search(s)).strip() or "unreadable"
