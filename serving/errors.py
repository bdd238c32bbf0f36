"""The one error type for a client's mistake, carrying a short reason tag for metrics.

It subclasses KServe's :class:`kserve.errors.InvalidInput`, so KServe's own handlers map it to
HTTP 400 (REST) and ``INVALID_ARGUMENT`` (gRPC) with the message as the error text. The wire
format's own :class:`~garbage.core.protocol.ProtocolError` becomes one in :func:`as_rejection`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from kserve.errors import InvalidInput

from garbage.core.protocol import ProtocolError

# Reason tags, the values of the ``reason`` label of ``garbage_rejected_requests_total``.
REASONS = (
    "malformed_json",  # the body is not JSON
    "bad_request",  # JSON of the wrong structure for the protocol
    "payload_too_large",  # body / tensor data over the body limit (max_body_bytes)
    "incomplete_body",  # the client went away or timed out before its body was in
    "too_complex",  # JSON with more objects and arrays than the instance limit can need
    "too_many_instances",  # more images than --max-instances
    "invalid_base64",  # a b64 / JSON BYTES element that is not base64
    "empty",  # an image of 0 bytes
    "file_too_large",  # an encoded file or pixel image over --max-image-bytes
    "not_an_image",  # bytes Pillow cannot identify
    "format",  # an image format outside --allowed-formats
    "too_large",  # an image over --max-image-pixels or --max-image-side (decompression bomb)
    "aspect_ratio",  # an image longer than --max-aspect-ratio times its width
    "corrupt",  # a truncated or corrupt image
    "bad_tensor_name",  # an input or requested output the model does not have
    "bad_dtype",  # a tensor of the wrong datatype
    "bad_shape",  # a tensor whose shape is wrong or disagrees with its data
    "bad_tensor_data",  # tensor contents that cannot be read (out of range, malformed)
)


class InputRejected(InvalidInput):
    """A request the server will not process; ``kind`` is one of :data:`REASONS`."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@contextmanager
def as_rejection() -> Iterator[None]:
    """Raise a :class:`ProtocolError` of the block as :class:`InputRejected`: same message, tag.

    Raises:
        InputRejected: The block raised a ``ProtocolError``.
    """
    try:
        yield
    except ProtocolError as e:
        raise InputRejected(str(e), e.reason) from e
