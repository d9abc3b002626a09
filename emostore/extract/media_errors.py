"""The one error type of media readers: a file that cannot give what an utterance needs."""

from __future__ import annotations


class MediaError(Exception):
    """Missing, corrupt, truncated or unsupported media, or a segment outside it.

    ``reason`` is one line naming the file and what is wrong; encoders record it against the
    utterance (visible in ``emostore info``) and go on with the next one.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
