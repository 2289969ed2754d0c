"""The package's one error type. A ValueError, so code that already catches bad arguments catches it."""


class AttentionRefused(ValueError):
    """An attention implementation cannot run this input. The message says why and what can run it."""
