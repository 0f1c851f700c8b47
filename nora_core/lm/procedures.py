"""Generated reasoning data: a prompt, worked steps, and a final "answer: ..." line.

Each procedure maps a random generator to (prompt, response). The loss covers the
response only, so an adapter must learn to carry out the steps, not to echo prompts.

- arithmetic: "a+b*c" or "a*b+c" with single-digit operands; the product comes first,
  as operator precedence requires, then the sum.
- reverse: a random lowercase string, reversed one letter per step; each step rewrites
  the remaining prefix and the letter it moves.
- sort: random lowercase letters in alphabetical order; each step takes the smallest
  remaining letter (selection sort) and lists what is left.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

ANSWER_PREFIX = "answer: "


def arithmetic_example(rng: random.Random) -> tuple[str, str]:
    """Return ("calc a+b*c\\n", worked steps) or the a*b+c form."""
    a, b, c = (rng.randint(0, 9) for _ in range(3))
    if rng.random() < 0.5:
        product = b * c
        steps = [f"{b}*{c}={product}", f"{a}+{product}={a + product}"]
        expression, result = f"{a}+{b}*{c}", a + product
    else:
        product = a * b
        steps = [f"{a}*{b}={product}", f"{product}+{c}={product + c}"]
        expression, result = f"{a}*{b}+{c}", product + c
    return f"calc {expression}\n", "\n".join(steps) + f"\n{ANSWER_PREFIX}{result}"


def reverse_example(rng: random.Random) -> tuple[str, str]:
    """Return ("reverse word\\n", one line per moved letter, then the reversed word)."""
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
    steps = [f"{word[:i]} > {word[i - 1]}" for i in range(len(word), 0, -1)]
    return f"reverse {word}\n", "\n".join(steps) + f"\n{ANSWER_PREFIX}{word[::-1]}"


def sort_example(rng: random.Random) -> tuple[str, str]:
    """Return ("sort l e t t e r s\\n", one line per selected letter, then the sorted list)."""
    letters = [rng.choice(string.ascii_lowercase[:12]) for _ in range(rng.randint(3, 6))]
    remaining = list(letters)
    steps = []
    while remaining:
        smallest = min(remaining)
        remaining.remove(smallest)
        steps.append(f"{smallest} | {' '.join(remaining)}".rstrip())
    return f"sort {' '.join(letters)}\n", "\n".join(steps) + f"\n{ANSWER_PREFIX}{' '.join(sorted(letters))}"


PROCEDURES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "arithmetic": arithmetic_example,
    "reverse": reverse_example,
    "sort": sort_example,
}


def generate_examples(
    procedure: str, n_train: int, n_val: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Generate distinct (prompt, response) examples, split into train and validation.

    No validation prompt appears in the training set, so validation loss measures the
    procedure, not recall of seen examples.

    Args:
        procedure: a key of PROCEDURES.
        n_train: number of training examples.
        n_val: number of validation examples.
        seed: seed of the example generator.

    Raises:
        ValueError: unknown procedure, or fewer distinct examples exist than requested.
    """
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}; choose one of {', '.join(PROCEDURES)}")
    make = PROCEDURES[procedure]
    rng = random.Random(seed)
    requested = n_train + n_val
    examples: dict[str, str] = {}
    attempts = 0
    # Draws repeat once the space is nearly exhausted, so give up after many repeats.
    while len(examples) < requested and attempts < 50 * requested:
        prompt, response = make(rng)
        examples.setdefault(prompt, response)
        attempts += 1
    if len(examples) < requested:
        raise ValueError(
            f"procedure {procedure!r} produced only {len(examples)} distinct examples, fewer than "
            f"n_train + n_val = {requested}; lower n_train or n_val"
        )
    pairs = list(examples.items())
    return pairs[:n_train], pairs[n_train:]


def extract_answer(text: str) -> str | None:
    """Return the text after the last "answer: " up to the line end, or None if absent."""
    position = text.rfind(ANSWER_PREFIX)
    if position < 0:
        return None
    return text[position + len(ANSWER_PREFIX) :].split("\n", 1)[0].strip()
