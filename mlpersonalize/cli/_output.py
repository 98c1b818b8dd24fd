"""The one output object every command speaks through (like huggingface_hub's ``cli/_output.py``).

Modes: ``human`` (tables on a terminal, tab-separated lines in a pipe), ``json`` (one JSON
document or JSON Lines on stdout) and ``quiet`` (stdout data only, no messages but errors).
stdout carries data only; every message goes to stderr.

Manners (README, "Output"):

- everything a user's file system or batch supplies (file names, labels, paths) passes through
  :func:`names.quote` before it is printed, so an escape sequence or a newline in a name is
  shown as text, never obeyed by the terminal, and TSV / JSON values read back unambiguously;
- off a terminal a successful run prints nothing on stderr unless ``--verbose``; per-file
  warnings become one count; ``--quiet`` silences messages on a terminal too;
- no colour off a terminal (nor with ``NO_COLOR``);
- a closed stdout (``… | head -1``) stops the command quietly: :class:`ClosedOutput`, exit 0.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..names import quote

if TYPE_CHECKING:
    from rich.console import Console


class ClosedOutput(Exception):
    """The reader of stdout went away (EPIPE); app.main ends the run quietly."""


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _quoted(value: Any, backslash: bool = True) -> Any:
    if isinstance(value, str):
        return quote(value, backslash)
    if isinstance(value, dict):
        return {_quoted(k, backslash): _quoted(v, backslash) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_quoted(v, backslash) for v in value]
    return value


def dumps(data: Any, escaped: bool = False) -> str:
    """JSON text whose strings are :func:`names.quote`-d: valid UTF-8, unambiguous names.

    ``escaped``: the strings already went through :func:`names.escape` (prepare's report).
    """
    return json.dumps(_quoted(data, not escaped), ensure_ascii=False, default=_default)


def safe_name(text: str) -> str:
    """A file name or label made printable and unambiguous (names.quote)."""
    return quote(str(text))


def safe_text(text: str) -> str:
    """A message or an already-escaped name made terminal-safe (backslashes kept as they are)."""
    return quote(str(text), backslash=False)


class Output:
    """How this run prints; ``app`` configures it once per command from --json/--quiet/--verbose."""

    def __init__(self) -> None:
        self.mode = "human"
        self.verbose = False
        self.warnings = 0
        self._stdout: Console | None = None
        self._stderr: Console | None = None

    # --- configuration -------------------------------------------------------------------
    def configure(self, json_out: bool = False, quiet: bool = False, verbose: bool = False) -> Output:
        if quiet and verbose:
            raise UsageError("--quiet and --verbose cannot be used together")
        self.mode = "json" if json_out else "quiet" if quiet else "human"
        self.verbose = verbose
        self.warnings = 0
        return self

    @property
    def json(self) -> bool:
        return self.mode == "json"

    @staticmethod
    def stdout_is_terminal() -> bool:
        return sys.stdout.isatty()

    @staticmethod
    def stderr_is_terminal() -> bool:
        return sys.stderr.isatty()

    @property
    def chatty(self) -> bool:
        """Messages on stderr: on a terminal unless --quiet, anywhere with --verbose."""
        return self.verbose or (self.mode != "quiet" and self.stderr_is_terminal())

    @property
    def tables(self) -> bool:
        """Rich tables on stdout: on a terminal, unless --json (--quiet keeps stdout's data)."""
        return self.mode != "json" and self.stdout_is_terminal()

    @property
    def live(self) -> bool:
        """Progress bars on stderr: a terminal, not --quiet, not --json."""
        return self.mode == "human" and self.stderr_is_terminal()

    # --- consoles ------------------------------------------------------------------------
    def stdout_console(self) -> Console:
        # lazy: rich costs 8-18 ms, and only human output needs it
        from rich.console import Console

        class _Stdout(Console):
            def on_broken_pipe(self) -> None:  # rich's own answer is SystemExit(1)
                raise ClosedOutput

        if self._stdout is None or self._stdout.file is not sys.stdout:
            self._stdout = _Stdout(file=sys.stdout, highlight=False, soft_wrap=True)
        return self._stdout

    def stderr_console(self) -> Console:
        # lazy: rich costs 8-18 ms, and only human output needs it
        from rich.console import Console

        if self._stderr is None or self._stderr.file is not sys.stderr:
            self._stderr = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        return self._stderr

    # --- stdout: data ----------------------------------------------------------------------
    def write(self, text: str) -> None:
        """Raw text on stdout, flushed (pipelines see each line as it comes)."""
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError as exc:
            raise ClosedOutput from exc

    def record(self, data: Any, escaped: bool = False) -> None:
        """One JSON document / JSON Lines record on stdout (``escaped``: see :func:`dumps`)."""
        self.write(dumps(data, escaped) + "\n")

    def row(self, *cells: str) -> None:
        """One tab-separated line; every cell is quoted, so tabs and newlines cannot split it."""
        self.write("\t".join(quote(str(cell)) for cell in cells) + "\n")

    def print(self, *renderables: Any) -> None:
        """Rich renderables (tables, Text) on stdout; build them from quoted strings only."""
        try:
            self.stdout_console().print(*renderables, markup=False)
        except BrokenPipeError as exc:
            raise ClosedOutput from exc

    # --- stderr: messages ----------------------------------------------------------------
    def _say(self, message: str) -> None:
        self.stderr_console().print(message, markup=False, highlight=False)

    def note(self, message: str) -> None:
        """An informational message (waiting for a lock, a summary): only when chatty."""
        if self.chatty:
            self._say(message)

    def done(self, message: str) -> None:
        """A success summary; off a terminal only with --verbose."""
        self.note(message)

    def warn(self, message: str) -> None:
        """A per-file warning: shown when chatty, otherwise counted (see :meth:`warned`)."""
        self.warnings += 1
        if self.chatty:
            self._say(f"warning: {message}")

    def problem(self, message: str) -> None:
        """A reason a command fails, shown with its Error line (never hidden, even --quiet)."""
        self._say(f"problem: {message}")


out = Output()


def note(message: str) -> None:
    out.note(message)


def done(message: str) -> None:
    out.done(message)


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 label``, ``2 labels``."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def summarise(items: list[str], limit: int = 10) -> str:
    """A list of names for one line: the first ``limit`` and how many more."""
    shown = ", ".join(quote(item) for item in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
