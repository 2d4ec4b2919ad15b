"""Importers: a person's writing in its many shapes (Telegram and WhatsApp exports, text and
Markdown, e-mail, JSON Lines) turned into writing samples (docs/architecture.md: reply or monologue).

`run_import` is what `twin import` and the bot's `/import` call; `parse_file` parses one file
without storing; `render_report` is the summary table.
"""

from loop.importing.base import (
    KNOWN_FORMATS,
    MAX_CONTEXT_TURNS,
    ImporterError,
    ImportFormatError,
    OwnerIdentity,
    OwnerUnknownError,
    ParsedFile,
    Skip,
)
from loop.importing.detect import detect_format, iter_input_files, parse_file
from loop.importing.masking import mask_personal_data
from loop.importing.runner import FileReport, ImportReport, progress_bar, render_report, run_import

__all__ = [
    "KNOWN_FORMATS",
    "MAX_CONTEXT_TURNS",
    "FileReport",
    "ImportFormatError",
    "ImportReport",
    "ImporterError",
    "OwnerIdentity",
    "OwnerUnknownError",
    "ParsedFile",
    "Skip",
    "detect_format",
    "iter_input_files",
    "mask_personal_data",
    "parse_file",
    "progress_bar",
    "render_report",
    "run_import",
]
