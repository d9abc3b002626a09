"""Models named on the Hugging Face hub, when the hub may be out of reach.

Loading a hub name without a network makes the hub client retry each file for about a minute
before it fails. Here the hub is asked once, with a short timeout (or not at all when
``HF_HUB_OFFLINE`` is set): when it cannot be reached, a name already in the local Hugging Face
cache loads from there, and any other name is refused at once, in one line that says how to
point at a local folder instead.
"""

from __future__ import annotations

import functools
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from emostore.errors import UserError

#: Seconds the hub has to answer before it counts as unreachable.
TIMEOUT_S = 3.0


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (the hub clients' messages run over several)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@functools.cache
def reachable(endpoint: str, timeout: float = TIMEOUT_S) -> bool:
    """Whether ``endpoint`` answers (any HTTP status counts) within ``timeout`` seconds; asked once
    per process."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # no name resolution, refused, timed out, a malformed endpoint
        return False
    return True


def local_or_hub(name: str, *, what: str, also: Iterable[str] = ()) -> str:
    """What to load for ``name``: a local path as it is; a hub name as it is when the hub can be
    reached, else the folder of its copy in the Hugging Face cache (``name`` or one of ``also``,
    other spellings of the same model). A :class:`UserError` saying ``what`` cannot be loaded when
    the hub is out of reach and the cache does not hold it."""
    if Path(name).expanduser().exists():
        return name
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE)
    if not offline and reachable(constants.ENDPOINT):
        return name
    for repo in (name, *also):
        try:
            return str(snapshot_download(repo, local_files_only=True))
        except Exception:  # noqa: BLE001  (not cached, or not a valid repository name)
            continue
    why = "HF_HUB_OFFLINE is set" if offline else f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached"
    folder = f"./models/{name.rstrip('/').split('/')[-1]}"
    raise UserError(f"cannot load {what}: it is not a local folder nor in the Hugging Face cache, and {why}; pass "
                    f"the path of a downloaded model folder instead (e.g. --model {folder}, made with "
                    f"`hf download {name} --local-dir {folder}` where there is a network)")
