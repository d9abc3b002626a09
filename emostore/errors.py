"""Errors a user can fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or a refused request; the message says what, where and how to fix it."""


#: Errors of storage that cannot be reached (after the storage client's own retries).
UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
               "ServerDisconnectedError", "ConnectionClosedError")


def unreachable_storage(exc: BaseException) -> UserError | None:
    """A one-line error for an object store (or other remote storage) that could not be reached,
    found anywhere in ``exc``'s chain; None for any other error."""
    seen = exc
    while seen is not None:
        if type(seen).__name__ in UNREACHABLE or isinstance(seen, ConnectionError):
            first = str(seen).strip().splitlines()[0][:200] if str(seen).strip() else type(seen).__name__
            return UserError(f"cannot reach the storage ({type(seen).__name__}: {first}); what was finished is "
                             "kept: run the same command again when it is back, and it resumes")
        seen = seen.__cause__ or seen.__context__
    return None
