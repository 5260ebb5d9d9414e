"""Models built in code, seeded, saved once and loaded back with ``from_pretrained``: the tiny
one for tests and the laptop, the full SD-Turbo architecture with random weights for timing."""
