"""A user reward for loop tests: an untrained model never answers correctly, so accuracy gives
no signal; this one varies with every response, so advantages (and updates) are non-zero."""


def distinct_chars(response: str, answer, metadata) -> float:
    return len(set(response)) / 10.0


def length_mod3(response: str, answer, metadata) -> float:
    """1 for responses whose length is a multiple of 3: about a fifth of 4-sample groups get one
    reward for all, so dynamic sampling drops groups and draws more."""
    return 1.0 if len(response) % 3 == 0 else 0.0
