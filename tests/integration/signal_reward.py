"""A user reward for loop tests: an untrained model never answers correctly, so accuracy gives
no signal; this one varies with every response, so advantages (and updates) are non-zero."""


def distinct_chars(response: str, answer, metadata) -> float:
    return len(set(response)) / 10.0
