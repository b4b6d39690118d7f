"""Data sets: read and validate any supported format, generate self-cognition data, replace, split, measure, store."""

from tuner.data.readers import FORMATS, detect_format, read_data
from tuner.data.records import Conversation, DataError, DataFormatError, ReadResult, Turn
from tuner.data.replace import replace_text
from tuner.data.self_cognition import IDENTITY_PROBES_EN, IDENTITY_PROBES_ZH, self_cognition_records
from tuner.data.split import split_records
from tuner.data.stats import DatasetStats, dataset_stats
from tuner.data.tables import is_table_path, table_headers
from tuner.data.store import (dataset_meta, dataset_path, list_datasets, read_jsonl_records, safe_dataset_name,
                              save_dataset, write_jsonl)

__all__ = [
    "FORMATS", "detect_format", "read_data",
    "Conversation", "DataError", "DataFormatError", "ReadResult", "Turn",
    "replace_text",
    "IDENTITY_PROBES_EN", "IDENTITY_PROBES_ZH", "self_cognition_records",
    "split_records",
    "DatasetStats", "dataset_stats",
    "is_table_path", "table_headers",
    "dataset_meta", "dataset_path", "list_datasets", "read_jsonl_records", "safe_dataset_name", "save_dataset",
    "write_jsonl",
]
