"""De-identify a folder of DICOM files: the offline counterpart of the gateway's pipeline."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from rich.progress import Progress

from gateway.deid.engine import Deidentifier, PatientContext
from gateway.deid.errors import QuarantineError
from gateway.deid.guard import assert_no_leaks, identifiers_from_dataset
from gateway.deid.options import DeidOptions

OFFLINE_SOURCE = "offline"


@dataclass(frozen=True, slots=True)
class QuarantinedFile:
    """A file that was not written, and why (the reason never holds a value from the file)."""

    path: Path
    reason: str


@dataclass(slots=True)
class Summary:
    """Outcome of :func:`deidentify_folder`."""

    done: int = 0
    quarantined: list[QuarantinedFile] = field(default_factory=list)

    @property
    def quarantined_count(self) -> int:
        """How many files were not written."""
        return len(self.quarantined)

    def reasons(self) -> Counter[str]:
        """How many files were quarantined for each reason."""
        return Counter(item.reason for item in self.quarantined)


def _input_files(in_dir: Path) -> Iterator[Path]:
    return (path for path in sorted(in_dir.rglob("*")) if path.is_file())


def deidentify_folder(
    in_dir: Path,
    out_dir: Path,
    options: DeidOptions | None,
    secret: bytes,
    progress: bool = True,
    *,
    source: str = OFFLINE_SOURCE,
) -> Summary:
    """De-identify every DICOM file under ``in_dir`` (recursively) into ``out_dir``.

    Outputs are named ``<pseudonymous SOP Instance UID>.dcm``. A file that is not DICOM, is risky
    (burned-in identifiers), fails, or still shows an identifier to the outbound guard is not written
    and is listed in the summary with its reason. Case labels are derived from the patient pseudonym.

    Raises:
        NotADirectoryError: ``in_dir`` is not a directory.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise NotADirectoryError(f"input folder not found: {in_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    deidentifier = Deidentifier(options, secret)
    context = PatientContext(source=source)
    files = list(_input_files(in_dir))
    summary = Summary()
    with Progress(transient=True) if progress else nullcontext() as bar:
        task = bar.add_task("de-identifying", total=len(files)) if bar else None
        for path in files:
            reason = _process_file(path, out_dir, deidentifier, context)
            if reason is None:
                summary.done += 1
            else:
                summary.quarantined.append(QuarantinedFile(path, reason))
            if bar is not None and task is not None:
                bar.advance(task)
    return summary


def _process_file(path: Path, out_dir: Path, deidentifier: Deidentifier, context: PatientContext) -> str | None:
    """Write the de-identified file and return None, or return the reason it was quarantined."""
    try:
        original = dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        return f"unreadable: {type(exc).__name__}"
    options = deidentifier.options
    try:
        identifiers = identifiers_from_dataset(
            original, include_uids=not options.retain_uids, include_institution=not options.retain_institution_id
        )
        result = deidentifier.deidentify(original, context, copy_dataset=False)
        assert_no_leaks(result.dataset, identifiers)
        target = out_dir / f"{result.dataset.SOPInstanceUID}.dcm"
        temporary = target.with_suffix(".tmp")
        dcmwrite(temporary, result.dataset, enforce_file_format=True)
        temporary.replace(target)
    except QuarantineError as exc:
        return exc.reason if not hasattr(exc, "paths") else f"identifier leak at {', '.join(exc.paths)}"
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the folder; the type is the reason
        return f"failed: {type(exc).__name__}"
    return None
