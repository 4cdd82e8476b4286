"""The driver's exit codes, which say whether a sweep ran and whether its trials failed (`--help`, README)."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    BAD_INPUT = 2
    UNAVAILABLE = 3
    SOME_FAILED = 4
    ALL_FAILED = 5
    INTERRUPTED = 130


MEANING = {
    Exit.OK: "every trial finished with a label (normal, reversed or undecided)",
    Exit.BAD_INPUT: "invalid space file, or nothing sound to resume (one line says why); nothing ran",
    Exit.UNAVAILABLE: "the MLflow tracking server does not answer; nothing ran",
    Exit.SOME_FAILED: "the sweep finished and its statistics are written, but some trials failed",
    Exit.ALL_FAILED: "the sweep finished, but every trial failed",
    Exit.INTERRUPTED: "interrupted with trials unfinished: continue with --resume",
}


def help_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code.value:<4} {MEANING[code]}" for code in Exit)


def for_labels(labels: list[str]) -> Exit:
    """A finished sweep's code from its trials' labels: did any, or all, fail?"""
    failed = sum(label == "failed" for label in labels)
    if failed and failed == len(labels):
        return Exit.ALL_FAILED
    return Exit.SOME_FAILED if failed else Exit.OK
