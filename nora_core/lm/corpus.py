"""The bundled Shakespeare corpus: twelve plays as plain ASCII text under data/shakespeare.

The bundled model is pre-trained on the six tragedies, and the style-shift task adapts it
to the six comedies. Each play is split by position: the last `val_fraction` of its text
is held out for validation, so no validation window overlaps a training window.
"""

from __future__ import annotations

from pathlib import Path

import torch

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
SHAKESPEARE_DIR = DATA_DIR / "shakespeare"

TRAGEDIES = ("hamlet", "macbeth", "romeo_and_juliet", "julius_caesar", "othello", "lear")
COMEDIES = (
    "as_you_like_it",
    "much_ado_about_nothing",
    "merchant_of_venice",
    "midsummer_nights_dream",
    "tempest",
    "twelfth_night",
)
DEFAULT_VAL_FRACTION = 0.1


def read_play(name: str) -> str:
    """Return the full text of one bundled play.

    Args:
        name: file stem of the play, one of TRAGEDIES or COMEDIES.
    """
    if name not in TRAGEDIES + COMEDIES:
        raise ValueError(
            f"unknown play {name!r}; choose one of {', '.join(TRAGEDIES + COMEDIES)}"
        )
    path = SHAKESPEARE_DIR / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"play text missing: {path} (the data/shakespeare folder is incomplete)")
    return path.read_text(encoding="utf-8")


def split_train_val(text: str, val_fraction: float = DEFAULT_VAL_FRACTION) -> tuple[str, str]:
    """Split a text by position into (train, validation); validation is the tail.

    Args:
        text: the whole text.
        val_fraction: share of characters held out at the end, in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


def load_play_splits(
    names: tuple[str, ...], val_fraction: float = DEFAULT_VAL_FRACTION
) -> tuple[list[str], list[str]]:
    """Return the train parts and the validation parts of the named plays, one string each."""
    train_parts, val_parts = [], []
    for name in names:
        train, val = split_train_val(read_play(name), val_fraction)
        train_parts.append(train)
        val_parts.append(val)
    return train_parts, val_parts


class WindowSampler:
    """Random fixed-length windows from several token sequences, never crossing a boundary.

    Each valid window start in any segment is equally likely, so longer segments
    contribute proportionally more windows.
    """

    def __init__(self, segments: list[torch.Tensor], window: int) -> None:
        lengths = torch.tensor([len(s) for s in segments], dtype=torch.long)
        if window < 2:
            raise ValueError(f"window must be at least 2 tokens, got {window}")
        starts_per_segment = (lengths - window + 1).clamp(min=0)  # (S,)
        if int(starts_per_segment.sum()) == 0:
            raise ValueError(
                f"every text segment is shorter than the window of {window} tokens "
                f"(longest: {int(lengths.max()) if len(lengths) else 0}); lower seq_len or use more text"
            )
        self.segments = segments
        self.window = window
        self.cumulative_starts = torch.cumsum(starts_per_segment, dim=0)  # (S,)

    def sample(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """Draw `batch_size` windows as a (B, window) LongTensor."""
        total = int(self.cumulative_starts[-1])
        flat = torch.randint(0, total, (batch_size,), generator=generator)  # (B,)
        segment_index = torch.searchsorted(self.cumulative_starts, flat, right=True)  # (B,)
        previous = torch.cat([torch.zeros(1, dtype=torch.long), self.cumulative_starts])[segment_index]
        offsets = flat - previous  # (B,)
        rows = [
            self.segments[int(s)][int(o) : int(o) + self.window]
            for s, o in zip(segment_index, offsets)
        ]
        return torch.stack(rows)  # (B, window)


def tiled_windows(segments: list[torch.Tensor], window: int, max_windows: int) -> torch.Tensor:
    """Cut consecutive non-overlapping windows from the segments, at most `max_windows`.

    Windows are taken round-robin across segments so a small `max_windows` still
    covers every segment. Returns a (N, window) LongTensor.
    """
    per_segment = [[s[i : i + window] for i in range(0, len(s) - window + 1, window)] for s in segments]
    rows: list[torch.Tensor] = []
    depth = 0
    while len(rows) < max_windows and any(depth < len(p) for p in per_segment):
        for windows in per_segment:
            if depth < len(windows) and len(rows) < max_windows:
                rows.append(windows[depth])
        depth += 1
    if not rows:
        raise ValueError(
            f"the validation text is shorter than one window of {window} tokens; "
            "lower seq_len or use more text"
        )
    return torch.stack(rows)  # (N, window)
