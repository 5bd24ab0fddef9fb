"""The preprocessed C4 as MLCommons ships it for Llama 3.1 405B, fixed up to the layout the training reads.

The R2 download (``mixtral-8x22b-preprocessed-c4-dataset.uri``) holds, besides what training reads:

- ``c4-train.en_{0..5}_text_document.{bin,idx}``: shards the benchmark does not use (it trains on the last 256 of
  the 1024 C4 shards, merged files 6 and 7; the reference's ``--use_full_dataset`` would read all eight);
- ``c4-validation-small.en_text_document.*`` and ``c4-validation.en_text_document.*``: other validation cuts;
- ``c4-validation-91205-samples.en_text_document.bin`` and ``.idx`` as *directories*, each holding one file
  with a misspelled name, ``c4-validationn-91205-samples.en_text_document.{bin,idx}``.

NVIDIA's ``data_scripts/cleanup.sh`` (mlcommons/training_results_v5.1) deletes the extras and moves the two
validation files up and renames them, through ``_c4-validationn-...`` staging names. This does the same moves,
recognises that script's staging names (so a half-run cleanup is finished, not broken), only deletes when asked,
never overwrites, and is safe to run again. Then it checks what training reads: the two training shards and the
validation set, their ``.idx`` against their ``.bin``, and their sizes against the published files.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from orchestrator.atomic import fsync_dir
from orchestrator.data.consolidate import train_file, validation_file
from orchestrator.data.indexed import IndexedDataset
from orchestrator.data.preprocess_job import dataset_prefix
from orchestrator.mlperf.rules import LLAMA31_405B

TRAIN_PREFIXES = tuple(Path(dataset_prefix("", train_file(k))).name for k in (6, 7))  # the last 256 of 1024 shards
VALIDATION_PREFIX = Path(dataset_prefix("", validation_file(91205))).name
MISSPELLED_PREFIX = "c4-validationn-91205-samples.en_text_document"
STAGING_PREFIX = "_" + MISSPELLED_PREFIX  # cleanup.sh's intermediate name
UNNEEDED_PREFIXES = (
    *(Path(dataset_prefix("", train_file(k))).name for k in range(6)),
    "c4-validation-small.en_text_document",
    Path(dataset_prefix("", validation_file(None))).name,
)
UNUSED_DIR = "unused"
EXTENSIONS = ("bin", "idx")

#: Bytes of the shipped files (NVIDIA's ``expected-mounts-405b.csv``, mlcommons/training_results_v5.1). The
#: validation ``.bin`` is 47,186,855 uint16 tokens, the count the reference README gives for 91,205 documents.
PUBLISHED_SIZES: Mapping[str, int] = {
    "c4-train.en_6_text_document.bin": 47_578_969_786,
    "c4-train.en_6_text_document.idx": 912_172_262,
    "c4-train.en_7_text_document.bin": 47_976_859_012,
    "c4-train.en_7_text_document.idx": 919_464_442,
    "c4-validation-91205-samples.en_text_document.bin": 94_373_710,
    "c4-validation-91205-samples.en_text_document.idx": 1_824_142,
}

Unneeded = Literal["keep", "move", "delete"]


@dataclass(frozen=True)
class DataSpec:
    """What the training needs of the directory."""

    train_prefixes: tuple[str, ...] = TRAIN_PREFIXES
    validation_prefix: str = VALIDATION_PREFIX
    #: File name -> bytes; None skips the comparison (data preprocessed locally may differ in size).
    sizes: Mapping[str, int] | None = field(default_factory=lambda: dict(PUBLISHED_SIZES))
    dtype: type[np.number] = np.uint16  # Mixtral 8x22B vocabulary, 32,000 < 65,500
    validation_documents: int | None = 91205
    #: Megatron builds one epoch of N sequences of L tokens from ``N*L + 1`` tokens (gpt_dataset._get_num_epochs).
    validation_min_tokens: int = LLAMA31_405B.eval_samples * LLAMA31_405B.seq_length + 1


MLPERF_405B = DataSpec()


@dataclass(frozen=True)
class Change:
    action: Literal["move", "rmdir", "delete"]
    path: Path
    target: Path | None = None
    why: str = ""

    def describe(self) -> str:
        what = f"{self.action} {self.path}" + (f" -> {self.target}" if self.target else "")
        return f"{what}  ({self.why})" if self.why else what


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    #: What cannot be fixed safely without a person (nothing is changed while any remain).
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _gib(paths: list[Path]) -> str:
    return f"{sum(p.stat().st_size for p in paths) / 2**30:.1f} GiB"


def _plan_validation_file(root: Path, ext: str, plan: Plan) -> None:
    final = root / f"{VALIDATION_PREFIX}.{ext}"
    staged = root / f"{STAGING_PREFIX}.{ext}"
    loose = root / f"{MISSPELLED_PREFIX}.{ext}"
    if final.is_dir():
        inner = final / f"{MISSPELLED_PREFIX}.{ext}"
        others = sorted(p.name for p in final.iterdir() if p != inner)
        if others:
            plan.problems.append(f"{final} is a directory holding unexpected entries {others}: left untouched")
            return
        if inner.is_file():
            if staged.exists():
                plan.problems.append(f"both {inner} and {staged} exist: which is the validation file is unclear")
                return
            plan.changes.append(Change("move", inner, staged, "shipped inside a directory, with a misspelled name"))
        elif not staged.is_file():
            plan.problems.append(f"{final} is an empty directory and no {staged.name} was found: re-download it")
            return
        plan.changes.append(Change("rmdir", final, why="the directory stands where the file belongs"))
        plan.changes.append(Change("move", staged, final, "its name as the training reads it"))
    elif final.is_file():
        for stray in (staged, loose):
            if stray.exists():
                plan.notes.append(f"{stray} left alone: {final.name} is already in place")
    elif staged.is_file():
        plan.changes.append(Change("move", staged, final, "finish an interrupted fix-up (cleanup.sh's staging name)"))
    elif loose.is_file():
        plan.changes.append(Change("move", loose, final, "misspelled name"))


def plan_fixup(root: str | os.PathLike[str], unneeded: Unneeded = "keep") -> Plan:
    """What to change in ``root`` (nothing is touched): the validation quirks, then the unneeded files."""
    root = Path(root)
    plan = Plan()
    for ext in EXTENSIONS:
        _plan_validation_file(root, ext, plan)
    extra = [root / f"{prefix}.{ext}" for prefix in UNNEEDED_PREFIXES for ext in EXTENSIONS]
    extra = [p for p in extra if p.is_file()]
    if extra and unneeded == "keep":
        plan.notes.append(
            f"{len(extra)} files the benchmark does not read left in place ({_gib(extra)}; en_0..en_5 and other "
            f"validation cuts): --unneeded move puts them in {root / UNUSED_DIR}, --unneeded delete removes them"
        )
    for path in extra if unneeded != "keep" else ():
        if unneeded == "move":
            plan.changes.append(Change("move", path, root / UNUSED_DIR / path.name, "not read by the benchmark"))
        else:
            plan.changes.append(Change("delete", path, why="not read by the benchmark (--unneeded delete)"))
    known = {
        f"{p}.{e}"
        for p in (*TRAIN_PREFIXES, VALIDATION_PREFIX, MISSPELLED_PREFIX, STAGING_PREFIX, *UNNEEDED_PREFIXES)
        for e in EXTENSIONS
    } | {UNUSED_DIR}
    others = sorted(p.name for p in root.iterdir() if p.name not in known)
    if others:
        plan.notes.append(f"other entries left alone: {', '.join(others)}")
    return plan


def apply(changes: list[Change]) -> None:
    """Carry out a plan's changes in order; each is one rename, rmdir or unlink, and nothing is overwritten."""
    for change in changes:
        if change.action == "move":
            assert change.target is not None
            if change.target.exists():
                raise FileExistsError(f"{change.target} exists; refusing to overwrite it with {change.path}")
            change.target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(change.path, change.target)
            fsync_dir(change.target.parent)
        elif change.action == "rmdir":
            os.rmdir(change.path)  # only ever empty: the plan moved its one file out first
        else:
            change.path.unlink()
        fsync_dir(change.path.parent)


def verify(root: str | os.PathLike[str], spec: DataSpec = MLPERF_405B) -> list[str]:
    """Problems with what the training reads from ``root``; an empty list means ready."""
    root = Path(root)
    problems: list[str] = []
    for prefix in (*spec.train_prefixes, spec.validation_prefix):
        files = [root / f"{prefix}.{ext}" for ext in EXTENSIONS]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            problems.extend(f"{p}: missing (or not a regular file)" for p in missing)
            continue
        wrong_size = [
            f"{p}: {p.stat().st_size} bytes, the published file has {spec.sizes[p.name]} (incomplete download? "
            f"--no-size-check for data preprocessed here)"
            for p in files
            if spec.sizes is not None and p.name in spec.sizes and p.stat().st_size != spec.sizes[p.name]
        ]
        if wrong_size:
            problems.extend(wrong_size)
            continue
        try:
            dataset = IndexedDataset(root / prefix)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if dataset.dtype != np.dtype(spec.dtype):
            problems.append(
                f"{files[1]}: tokens are {dataset.dtype}, expected {np.dtype(spec.dtype)} (another tokenizer?)"
            )
        if prefix != spec.validation_prefix:
            continue
        documents = len(dataset.document_indices) - 1
        if spec.validation_documents is not None and documents != spec.validation_documents:
            problems.append(
                f"{files[1]}: {documents} documents; the MLPerf validation set is the first "
                f"{spec.validation_documents} of C4's validation split"
            )
        if dataset.num_tokens < spec.validation_min_tokens:
            problems.append(
                f"{files[0]}: {dataset.num_tokens} tokens; one evaluation pass over {LLAMA31_405B.eval_samples} "
                f"sequences of {LLAMA31_405B.seq_length} needs {spec.validation_min_tokens}"
            )
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, help="PREPROCESSED_PATH: where the dataset was downloaded")
    parser.add_argument("--apply", action="store_true", help="make the changes (default: only report them)")
    parser.add_argument(
        "--unneeded",
        choices=("keep", "move", "delete"),
        default="keep",
        help=f"files training does not read (en_0..en_5, other validation cuts): keep them (default), move them "
        f"into {UNUSED_DIR}/, or delete them",
    )
    parser.add_argument("--no-size-check", action="store_true", help="do not compare sizes with the published files")


def run(args: argparse.Namespace) -> int:
    """0: ready for training; 1: problems (listed); 2: dry run with changes to make (run again with --apply)."""
    root: Path = args.directory
    if not root.is_dir():
        print(f"{root}: not a directory")
        return 1
    plan = plan_fixup(root, args.unneeded)
    print(f"MLPerf Llama 3.1 405B data in {root}")
    for change in plan.changes:
        print(f"  {'' if args.apply else 'would '}{change.describe()}")
    for note in plan.notes:
        print(f"  note: {note}")
    if plan.problems:
        for problem in plan.problems:
            print(f"  problem: {problem}")
        print("nothing changed: fix the problems above by hand, then run this again")
        return 1
    if plan.changes and not args.apply:
        print(f"dry run, nothing changed: run again with --apply to make these {len(plan.changes)} changes")
        return 2
    apply(plan.changes)
    spec = replace(MLPERF_405B, sizes=None) if args.no_size_check else MLPERF_405B
    problems = verify(root, spec)
    for problem in problems:
        print(f"  problem: {problem}")
    if problems:
        return 1
    names = ", ".join(f"{p}.{{bin,idx}}" for p in (*spec.train_prefixes, spec.validation_prefix))
    print(f"ready: {names}")
    return 0
