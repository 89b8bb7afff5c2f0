"""Typed exceptions. Every message names the section, field or setting at fault."""

from __future__ import annotations


class ThawError(Exception):
    """Root of every error thaw raises on purpose."""


class FormatError(ThawError):
    """The file is not a well-formed thaw snapshot (structure, lengths, layout)."""


class ChecksumError(FormatError):
    """Bytes on disk do not match their recorded CRC32C."""

    def __init__(self, where: str, expected: int, actual: int) -> None:
        super().__init__(
            f"CRC32C mismatch in {where}: recorded 0x{expected:08x}, computed 0x{actual:08x}"
        )
        self.where = where
        self.expected = expected
        self.actual = actual


class SchemaError(ThawError):
    """A snapshot's contents are inconsistent (e.g. a prefix node names a missing page)."""


class IdentityMismatch(ThawError):
    """A snapshot does not fit the engine it is restored into."""

    def __init__(self, field: str, snapshot_value: object, engine_value: object) -> None:
        super().__init__(
            f"snapshot does not match the engine: {field} is {snapshot_value!r} in the "
            f"snapshot but {engine_value!r} in the engine"
        )
        self.field = field
        self.snapshot_value = snapshot_value
        self.engine_value = engine_value


class SnapshotIncomplete(ThawError):
    """A strict snapshot would leave out state the engine holds (the message says what)."""


class EngineUnsupported(ThawError):
    """The engine runs in a configuration thaw cannot reach; the message says what to change."""


class MoverUnavailable(ThawError):
    """The requested data mover (native extension, CUDA) is not available here."""


class PathOutsideSnapshotDir(ThawError):
    """A file a server request would open lies outside the directory its operator allowed
    (`thaw.core.confine`); the message names the refusal only, nothing about that file."""


class WeightsInconsistent(ThawError):
    """Loading a snapshot's weights failed partway: the engine holds neither its old weights
    nor the snapshot's, and refuses snapshots until a restore with weights succeeds."""


class ZygoteError(ThawError):
    """The zygote could not start (a preload failed to import) or answer."""


class RemoteError(ThawError):
    """An operation failed in another process (an engine worker, the engine core, a
    scheduler): `type` names the exception raised there, `remote_message` is its message.
    Built by `remote_error`, which makes one of thaw's own errors come back as that class
    too: `except IdentityMismatch` catches an identity mismatch raised in any process."""

    def __init__(self, type_name: str, message: str, text: "str | None" = None) -> None:
        Exception.__init__(self, f"{type_name}: {message}" if text is None else text)
        self.type = type_name
        self.remote_message = message


_REMOTE_CLASSES: dict[type, type] = {}


def remote_error(type_name: str, message: str, text: "str | None" = None) -> RemoteError:
    """The error another process reported (by type name and message), raised here: a
    `RemoteError` that is also the same `ThawError` subclass when it is one of thaw's;
    `text` is its `str()` (default ``"type: message"``)."""
    cls: type = RemoteError
    known = globals().get(type_name)
    if isinstance(known, type) and issubclass(known, ThawError) and not issubclass(known, RemoteError):
        cls = _REMOTE_CLASSES.get(known) or _REMOTE_CLASSES.setdefault(
            known, type(known.__name__, (RemoteError, known), {"__module__": known.__module__}))
    exc = cls.__new__(cls)
    RemoteError.__init__(exc, type_name, message, text)
    return exc


def error_reply(exc: BaseException) -> dict:
    """An exception as a JSON-able reply for another process: ``{"ok": False, "type",
    "message"}``, with its ``traceback`` when it is not one of thaw's own errors."""
    import traceback

    reply = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
    if not isinstance(exc, ThawError):
        reply["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return reply


def rebuild_error(type_name: str, message: str, where: str, detail: str = "") -> ThawError:
    """An error another process reported (by type name and message) as the same ThawError
    type with the same message (`remote_error`); any other type comes back as a `ThawError`
    (and `RemoteError`) whose message names it, `where` it was raised, and `detail` (e.g. its
    traceback)."""
    known = globals().get(type_name)
    if isinstance(known, type) and issubclass(known, ThawError):
        return remote_error(type_name, message, text=message)
    # Another type (an engine's, or a ThawError subclass outside this module): a ThawError
    # here, whose `type` still names it.
    exc = remote_error("ThawError", message, text=f"{where}: {type_name}: {message}" + (f"\n{detail}" if detail else ""))
    exc.type = type_name
    return exc


OS_ERROR_TYPES = frozenset({"FileNotFoundError", "PermissionError", "IsADirectoryError", "NotADirectoryError",
                            "OSError"})


def reply_result(reply: object, where: str) -> object:
    """The result of an ``{"ok", ...}`` reply from another process (`where`, e.g. "in the
    vLLM worker process"), or its error raised: an operating-system error as OSError, a
    ThawError as the same type (`rebuild_error`), anything else as a ThawError naming it."""
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ThawError(f"unexpected reply from {where}: {reply!r:.200}")
    if reply["ok"]:
        return reply["result"]
    if reply["type"] in OS_ERROR_TYPES:
        raise OSError(f"{where}: {reply['message']}")
    raise rebuild_error(reply["type"], reply["message"], where, reply.get("traceback", ""))
