"""The one progress bar: tqdm, left off the screen when done, silent when progress is off."""

from __future__ import annotations

from typing import Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 enabled: bool = True, unit: str = "img") -> tqdm:
    # disable=None lets tqdm turn itself off where there is no terminal (logs, CI, notebooks
    # without widgets); TQDM_DISABLE in the environment turns every bar off.
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, disable=not enabled or None)
