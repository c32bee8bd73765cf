"""V2 binary tensor bodies as the payload logger delivers them: found, split and decoded.

With the V2 binary tensor extension a client sends a JSON header followed by the raw bytes
of the tensors that carry ``parameters.binary_data_size`` instead of ``data``; the header's
length travels in the request header ``Inference-Header-Content-Length`` (kserve v0.20.0
``python/kserve/kserve/protocol/rest/v2_endpoints.py`` → ``dataplane.py``
``decode_inference_request`` → ``infer_type.py`` ``InferRequest.from_bytes``; a response
asked for with ``binary_data_output`` is laid out the same way, ``InferResponse.to_rest``).
KServe's payload logger forwards the raw body unchanged and the request's Content-Type,
but not that header: ``pkg/logger/handler.go`` (v0.20.0) copies only the request headers
named in the logger's ``metadataHeaders`` into the ``Ce-Metadata`` extension, and a
response event carries the *request's* metadata (the response's own header is never
logged). So the sink finds the header's end itself:

* a request whose ``Ce-Metadata`` lists ``Inference-Header-Content-Length`` uses that
  length;
* otherwise the body must start with one JSON object (the header) holding ``inputs``
  (request) or ``outputs`` (response); its end is where the JSON value ends, and the
  tensors' ``binary_data_size`` values must add up to exactly the bytes after it.

Element encodings are those of ``infer_type.py`` (v0.20.0): fixed-size datatypes are
little-endian numbers (``BOOL`` one byte), ``BYTES`` elements are a 4-byte little-endian
length and the bytes (``serialize_byte_tensor`` / ``deserialize_bytes_tensor``). A BYTES
element must be UTF-8 text, since records are JSON text.

:func:`decode_binary_body` returns the body with every binary tensor turned into a JSON
``data`` list, so the rest of the sink treats it as a JSON body; it returns ``None`` for a
body that is not a binary-extension body at all, and raises :class:`BinaryBodyError` with a
reason for one that is but cannot be decoded (the sink then quarantines the raw event).
This is its own module because it is pure byte layout, apart from what a body means.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

from driftloop.serving.sink_bodies import SinkError, parse_json

#: struct codes of the fixed-size V2 datatypes (little-endian, infer_type.py / numpy_codec.py).
STRUCT_CODES = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q",
                "UINT8": "B", "UINT16": "H", "UINT32": "I", "UINT64": "Q",
                "FP16": "e", "FP32": "f", "FP64": "d"}
#: The request header with the JSON part's length (kserve constants.py, lower-cased there).
JSON_LENGTH_HEADER = "inference-header-content-length"


class BinaryBodyError(Exception):
    """A V2 binary-extension body that cannot be decoded; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def declared_json_length(metadata: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` a ``Ce-Metadata`` value carries, if any.

    ``Ce-Metadata`` is the JSON of a Go ``map[string][]string`` of request headers
    (``pkg/logger/worker.go`` v0.20.0, ``json.Marshal(logReq.Metadata)``); names are Go's
    canonical form, compared here without case.
    """
    if not metadata:
        return None
    try:
        doc = json.loads(metadata)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, Mapping):
        return None
    for name, values in doc.items():
        if str(name).lower() != JSON_LENGTH_HEADER:
            continue
        value = values[0] if isinstance(values, list) and values else values
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    return None


def _header_end(body: bytes) -> int | None:
    """Where the leading JSON value of ``body`` ends (a byte offset), or None."""
    # surrogateescape maps each byte that is not UTF-8 to one code point and back, so the
    # header's length in bytes is exact whatever the binary tail holds.
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip())
    try:
        _, end = json.JSONDecoder().raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return len(text[:end].encode("utf-8", "surrogateescape"))


def _elements(raw: bytes, datatype: str, count: int, where: str) -> list[Any]:
    if datatype == "BYTES":
        values: list[Any] = []
        offset = 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BinaryBodyError(f"{where}: a BYTES element's length prefix is cut off")
            (size,) = struct.unpack_from("<I", raw, offset)
            offset += 4
            if offset + size > len(raw):
                raise BinaryBodyError(f"{where}: BYTES element {len(values)} runs past the "
                                      "tensor's binary_data_size")
            try:
                values.append(raw[offset:offset + size].decode("utf-8"))
            except UnicodeDecodeError:
                raise BinaryBodyError(f"{where}: BYTES element {len(values)} is not UTF-8 "
                                      "text") from None
            offset += size
        if len(values) != count:
            raise BinaryBodyError(f"{where}: shape needs {count} BYTES elements, the binary "
                                  f"data has {len(values)}")
        return values
    code = STRUCT_CODES[datatype]
    needed = count * struct.calcsize(code)
    if len(raw) != needed:
        raise BinaryBodyError(f"{where}: shape needs {needed} bytes of {datatype}, "
                              f"binary_data_size is {len(raw)}")
    return list(struct.unpack(f"<{count}{code}", raw))


def _decode(body: bytes, length: int, tensors_key: str) -> dict[str, Any]:
    try:
        header = parse_json(body[:length], "binary body header")
    except SinkError as exc:
        raise BinaryBodyError(str(exc)) from None
    tensors = header.get(tensors_key) if isinstance(header, dict) else None
    if not isinstance(tensors, list):
        raise BinaryBodyError(f"binary body header.{tensors_key}: required, a list of tensors")
    offset = length
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, dict):
            raise BinaryBodyError(f"{tensors_key}[{i}]: expected a tensor object")
        where = f"{tensors_key}[{tensor.get('name', i)}]"
        params = tensor.get("parameters")
        if not isinstance(params, dict) or "binary_data_size" not in params:
            continue  # a JSON tensor (``data``) in a binary body
        size, shape, datatype = params["binary_data_size"], tensor.get("shape"), \
            tensor.get("datatype")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BinaryBodyError(f"{where}.parameters.binary_data_size: expected a "
                                  "non-negative integer")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise BinaryBodyError(f"{where}.shape: expected a list of non-negative integers")
        if datatype != "BYTES" and datatype not in STRUCT_CODES:
            raise BinaryBodyError(f"{where}.datatype: {json.dumps(datatype)[:40]} is not a V2 "
                                  "datatype")
        if offset + size > len(body):
            raise BinaryBodyError(f"{where}: binary_data_size is {size} bytes, only "
                                  f"{len(body) - offset} are left in the body")
        tensor["data"] = _elements(body[offset:offset + size], datatype, math.prod(shape),
                                   where)
        offset += size
        rest = {k: v for k, v in params.items() if k != "binary_data_size"}
        if rest:
            tensor["parameters"] = rest
        else:
            del tensor["parameters"]
    if offset != len(body):
        raise BinaryBodyError(f"{len(body) - offset} bytes after the last binary tensor "
                              f"(JSON header of {length} bytes)")
    return header


def decode_binary_body(body: bytes, tensors_key: str,
                       declared_length: int | None = None) -> dict[str, Any] | None:
    """Decode a V2 binary-extension body into its JSON form (binary tensors as ``data``).

    Args:
        body: The event's raw body.
        tensors_key: ``inputs`` for a request event, ``outputs`` for a response event.
        declared_length: The JSON header's length from ``Ce-Metadata``, if it was logged.

    Returns:
        The decoded body, or ``None`` when ``body`` is not a binary-extension body (no
        declared length and no leading JSON object with ``tensors_key`` before more bytes).

    Raises:
        BinaryBodyError: It is one, but its header or a tensor does not fit.
    """
    if declared_length is not None:
        if not 0 < declared_length <= len(body):
            raise BinaryBodyError(f"Ce-Metadata {JSON_LENGTH_HEADER}: {declared_length} is "
                                  f"not within the body's {len(body)} bytes")
        return _decode(body, declared_length, tensors_key)
    end = _header_end(body)
    if end is None or end >= len(body):
        return None
    try:
        head = json.loads(body[:end])
    except (ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or tensors_key not in head:
        return None
    return _decode(body, end, tensors_key)


__all__ = ["JSON_LENGTH_HEADER", "STRUCT_CODES", "BinaryBodyError", "declared_json_length",
           "decode_binary_body"]
