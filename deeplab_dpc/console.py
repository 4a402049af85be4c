"""What the command-line entry points print: progress, results and real warnings, not TensorFlow's start-up lines.

Every entry point imports ``deeplab_dpc.cli`` before TensorFlow, and that
import calls ``quiet_tensorflow()`` once (the conversion tools reach it through
``tools.conversion_cli``). It does three things, and nothing else:

1. Sets ``TF_CPP_MIN_LOG_LEVEL`` to ``1`` (TensorFlow's C++ warnings and errors
   stay, its INFO lines go) unless the environment already sets it. It must
   be set before TensorFlow is imported.
2. Drops the start-up lines that ``import tensorflow`` writes to file
   descriptor 2 regardless of that level, because they are logged before
   TensorFlow reads it ("WARNING: All log messages before
   absl::InitializeLog() ...", oneDNN, "Could not find cuda drivers", twice:
   two of TensorFlow's libraries each log them), and, on a machine without an
   NVIDIA driver, TensorFlow's expected ``failed call to cuInit`` error. Only
   while ``tensorflow`` is first imported, and only those lines: anything else
   written meanwhile is passed on after the import, and everything is passed
   on if the import fails. With an NVIDIA driver installed a cuInit failure
   is real and is shown.
3. Hides the INFO records of TensorFlow's Python code (its ``tensorflow``
   logger, and absl's logger when the caller is in TensorFlow's package: a
   SavedModel export logs two ~10 KB lines listing renamed signature inputs,
   "Sharding callback duration", "Writing fingerprint"); its warnings and
   errors stay, and so does every record of ours. ``--verbosity=1`` (absl's
   debug level) shows them again.

``DEEPLAB_DPC_VERBOSE=1`` in the environment turns all three off, as does an
explicit ``TF_CPP_MIN_LOG_LEVEL=0``: TensorFlow then prints what it always
prints. No TensorFlow import here: a JAX host without TensorFlow runs this too.

Log records (``ConsoleFormatter``): ``deeplab_dpc.cli`` gives absl's handler
one through ``app.call_after_init``, so only in a process that ``app.run``
started, once absl has put its handler on the root logger. Our records then print as
the search's lines do: an INFO record is its message alone (``step 25/100 loss
0.4113 ...``, not ``I1207 02:53:46.010493 140340254563200 train_lib.py:376]
step 25/100 ...``) and a warning or error starts with its level (``WARNING:
...``, ``ERROR: ...``), a word that stands out among plain lines where absl's
one-letter code is lost in 50 characters of date, thread and file.
TensorFlow's records keep absl's prefix, and so does every record at
``--verbosity=1`` or more (debug: where a line comes from matters there) or
with ``--showprefixforinfo``. Which records show is still absl's
``--verbosity`` (``--verbosity=-1``: warnings and errors only).

Our own progress lines take two helpers from here: ``progress_verbosity`` (a live
bar on a terminal, a line in a file) and ``format_duration`` (``10 min``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import math
import os
import re
import sys
import tempfile
from typing import Callable, Iterable, Iterator

VERBOSE_ENV = "DEEPLAB_DPC_VERBOSE"
DEFAULT_TF_CPP_MIN_LOG_LEVEL = "1"

# Lines that ``import tensorflow`` writes before TensorFlow applies
# TF_CPP_MIN_LOG_LEVEL: absl's pre-initialisation banner, INFO records
# (``I1201 12:00:00.000000  1234 port.cc:153] ...``) and the second line of
# the CPU-feature notice.
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_INFO_RECORD = re.compile(r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")
_CPU_FEATURES_CONTINUATION = "To enable the following instructions:"
# TensorFlow's CUDA build on a machine without a driver: it says so (an INFO
# record), then its first device query logs cuInit's failure as an ERROR.
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT_FAILED = re.compile(r"E\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] failed call to cuInit: ")

_installed = False


def verbose() -> bool:
    """True when the user asked for TensorFlow's full output."""
    flag = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag not in ("", "0", "false", "no") or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0"


def progress_verbosity(stream) -> int:
    """Keras' ``verbose`` for a progress bar written to ``stream``: 1 (live) on a terminal, 2 (one line
    at the end) in a file or pipe, where a live bar is thousands of carriage-return updates."""
    return 1 if hasattr(stream, "isatty") and stream.isatty() else 2


def format_duration(seconds: float) -> str:
    """A duration as progress lines write it: ``45 s``, ``10 min``, ``2 h 05 min``; ``?`` for NaN."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def startup_lines_to_keep(lines: Iterable[str]) -> list[str]:
    """The lines of ``import tensorflow``'s stderr that are not start-up noise (see the module doc).

    Lines keep their endings; a cuInit failure is dropped only when TensorFlow
    also said that it found no CUDA driver.
    """
    lines = list(lines)
    no_driver = any(_NO_DRIVER in line for line in lines)
    kept = []
    for line in lines:
        text = line.rstrip("\r\n")
        if (
            text == _BANNER
            or _INFO_RECORD.match(text)
            or text.startswith(_CPU_FEATURES_CONTINUATION)
            or (no_driver and _CUINIT_FAILED.match(text))
        ):
            continue
        kept.append(line)
    return kept


class _StderrFilter:
    """Sends file descriptor 2 to a temporary file until ``close``, then writes on the lines ``keep`` returns."""

    def __init__(self, keep: Callable[[list[str]], list[str]] = startup_lines_to_keep):
        self._keep = keep
        self._saved = None
        try:
            sys.stderr.flush()
            self._file = tempfile.TemporaryFile()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # No usable fd 2 (a daemon, an odd sys.stderr).
            self._restore()

    @property
    def active(self) -> bool:
        return self._saved is not None

    def text(self) -> str:
        self._file.flush()
        self._file.seek(0)
        return self._file.read().decode("utf-8", "replace")

    def close(self, keep_everything: bool = False) -> None:
        if not self.active:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
        lines = self.text().splitlines(keepends=True)
        self._restore()
        out = "".join(lines if keep_everything else self._keep(lines))
        if out:
            os.write(2, out.encode("utf-8", "replace"))

    def _restore(self) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """On the first ``import tensorflow``, runs the package's ``__init__`` under ``_StderrFilter``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        _remove_finder()
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def quiet_exec_module(module):
            del loader.exec_module  # Back to the loader's own method: this runs once.
            stderr = _StderrFilter()
            try:
                exec_module(module)
                if stderr.active and _NO_DRIVER in stderr.text():
                    # No driver: TensorFlow's first device query will log cuInit's
                    # failure as an error. Make that query here, inside the filter.
                    module.config.list_physical_devices("GPU")
            except BaseException:
                stderr.close(keep_everything=True)
                raise
            stderr.close()

        loader.exec_module = quiet_exec_module
        return spec


class _TensorFlowInfoFilter(logging.Filter):
    """Drops TensorFlow's INFO records unless absl's ``--verbosity`` is 1 or more; passes everything else.

    TensorFlow logs through its own ``tensorflow`` logger and, in newer code
    (the SavedModel writer), through absl's: there a record is TensorFlow's
    when the file that logged it lies in TensorFlow's package.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if not _from_tensorflow(record):
            return True
        try:
            from absl import logging as absl_logging  # noqa: PLC0415

            return absl_logging.get_verbosity() >= 1
        except ImportError:
            return False


def _from_tensorflow(record: logging.LogRecord) -> bool:
    return record.name == "tensorflow" or record.name.startswith("tensorflow.") or _in_tensorflow(record.pathname)


class ConsoleFormatter(logging.Formatter):
    """The entry points' format for log records (see the module doc): the message alone below
    WARNING, ``WARNING: message`` (``ERROR: ``, ``CRITICAL: ``) from WARNING up, and ``absl_formatter``'s
    format (absl's prefix) for TensorFlow's records, at ``--verbosity=1`` or more, and whenever
    ``prefix_wanted()`` (``cli``: ``--showprefixforinfo``).
    """

    def __init__(self, absl_formatter: logging.Formatter, prefix_wanted: Callable[[], bool] = lambda: False):
        super().__init__("%(message)s")
        self.absl_formatter = absl_formatter
        self.prefix_wanted = prefix_wanted

    def format(self, record: logging.LogRecord) -> str:
        from absl import logging as absl_logging  # noqa: PLC0415

        if absl_logging.get_verbosity() >= 1 or self.prefix_wanted() or _from_tensorflow(record):
            return self.absl_formatter.format(record)
        message = super().format(record)
        return message if record.levelno < logging.WARNING else f"{record.levelname}: {message}"


def _in_tensorflow(path: str) -> bool:
    tensorflow = sys.modules.get("tensorflow")
    package = os.path.dirname(getattr(tensorflow, "__file__", None) or "")
    return bool(package) and os.path.abspath(path).startswith(package + os.sep)


# The TFLite converter's notices about options that TensorFlow itself sets (logged as warnings).
TFLITE_CONVERTER_NOTICES = (r"\S+\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.$",)


@contextlib.contextmanager
def without_stderr_lines(patterns: Iterable[str]) -> Iterator[None]:
    """Inside the block, drops the lines of file descriptor 2 that match one of ``patterns`` (``re.search``).

    For TensorFlow's C++ code, which writes there directly. The other lines are
    written on when the block ends, all of them if it raises; in verbose mode
    (``DEEPLAB_DPC_VERBOSE=1``) nothing is held back.
    """
    if verbose():
        yield
        return
    compiled = [re.compile(p) for p in patterns]
    stderr = _StderrFilter(lambda lines: [l for l in lines if not any(c.search(l.rstrip("\r\n")) for c in compiled)])
    try:
        yield
    except BaseException:
        stderr.close(keep_everything=True)
        raise
    stderr.close()


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietTensorFlowImport)]


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's start-up and INFO lines off the console (see the module doc). Idempotent."""
    global _installed
    if _installed or verbose():
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_TF_CPP_MIN_LOG_LEVEL)
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    info_filter = _TensorFlowInfoFilter()
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).addFilter(info_filter)
