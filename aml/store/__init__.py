"""Memory stores: formats, record views and atomic IO.

Modules, one concern each:

* :mod:`aml.store.atomic`: atomic writes (temp file, fsync, rename, fsync directory);
* :mod:`aml.store.codec`: gzip/zstd/plain, sniffed from magic bytes;
* :mod:`aml.store.timestamps`: parse every timestamp form as aware UTC; write in the writer's style;
* :mod:`aml.store.accessors`: version-aware field access for Loom, Aitor and TinyTroupe data;
* :mod:`aml.store.records`: the :class:`Record` view and its :class:`RecordLocation`;
* :mod:`aml.store.documents`: reading and classifying one file, :class:`DocumentError`;
* :mod:`aml.store.extract`: records from a parsed document;
* :mod:`aml.store.filestore`: :class:`FileStore` and :class:`ScanResult`;
* :mod:`aml.store.storeid`: the store id of a path or URL (the one normaliser);
* :mod:`aml.store.rewrite`: the one way a document is rewritten (splicing its text, in its writer's style);
* :mod:`aml.store.quarantine`: copy a bad document aside, never moving it;
* :mod:`aml.store.loomlock`: Loom's own writer lock (``<file>.lock``), which every aml writer respects.
"""

from aml.store.accessors import ITEM_VERSIONS, ItemVersion, detect_item_version
from aml.store.atomic import TMP_PREFIX, atomic_open, atomic_write, fsync_dir
from aml.store.codec import ENCODINGS, CodecError, Encoding, decode, encode, sniff
from aml.store.documents import (
    DEFAULT_MAX_BYTES,
    NON_AGENT_DIRS,
    Document,
    DocumentError,
    DocumentInfo,
    DocumentKind,
    ErrorCode,
    load_json,
    read_document,
)
from aml.store.extract import records_from_document
from aml.store.filestore import FileStore, ScanResult
from aml.store.quarantine import quarantine
from aml.store.records import COLLECTIONS, Record, RecordLocation, item_size, json_pointer
from aml.store.storeid import normalise_store_id
from aml.store.timestamps import (
    PY_AWARE_STYLE,
    PY_NAIVE_STYLE,
    TS_STYLE,
    TimestampStyle,
    TimestampValue,
    detect_style,
    format_like,
    now_utc,
    parse_timestamp,
    to_utc,
    utc_iso_z,
)

__all__ = [
    "COLLECTIONS",
    "DEFAULT_MAX_BYTES",
    "ENCODINGS",
    "ITEM_VERSIONS",
    "NON_AGENT_DIRS",
    "PY_AWARE_STYLE",
    "PY_NAIVE_STYLE",
    "TMP_PREFIX",
    "TS_STYLE",
    "CodecError",
    "Document",
    "DocumentError",
    "DocumentInfo",
    "DocumentKind",
    "Encoding",
    "ErrorCode",
    "FileStore",
    "ItemVersion",
    "Record",
    "RecordLocation",
    "ScanResult",
    "TimestampStyle",
    "TimestampValue",
    "atomic_open",
    "atomic_write",
    "decode",
    "detect_item_version",
    "detect_style",
    "encode",
    "format_like",
    "fsync_dir",
    "item_size",
    "json_pointer",
    "load_json",
    "normalise_store_id",
    "now_utc",
    "parse_timestamp",
    "quarantine",
    "read_document",
    "records_from_document",
    "sniff",
    "to_utc",
    "utc_iso_z",
]
