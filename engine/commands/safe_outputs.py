"""Outputs never overwrite inputs: the checks every writing command makes before writing anything.

- ``eval --output`` / ``--per-image``: never a file the command reads (a checkpoint, a test set,
  prediction maps) and never an existing file that an earlier ``eval`` did not write.
- ``predict --output``: never a file it reads; masks in the folder that ``predict`` did not write
  (its manifest lists what it wrote), or a folder holding the input images, need ``--overwrite``.
- ``synth --output``: an empty or new folder only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from engine.config import ConfigError

PREDICT_MANIFEST = ".predict-manifest.json"  # the mask names predict wrote into a folder
EVAL_CSV_HEADERS = ("dataset,method,", "dataset,weights,")  # table CSV (today's and older columns)
PER_IMAGE_CSV_HEADER = "dataset,method,image,"


def _same_or_inside(path: Path, other: Path) -> bool:
    """Whether ``path`` is ``other`` or lies inside the folder ``other`` (symlinks resolved)."""
    path, other = Path(path).resolve(), Path(other).resolve()
    return path == other or other in path.parents


def refuse_inputs(output: Path, inputs: Iterable[Path], flag: str) -> None:
    """Raise ``ConfigError`` when ``output`` is one of ``inputs`` or lies inside an input folder."""
    for source in inputs:
        if source is not None and _same_or_inside(output, source):
            raise ConfigError(f"{flag} {output} would write over {source}, which this command reads; "
                              "choose another path")


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.readline()
    except (OSError, UnicodeDecodeError):
        return ""


def _is_eval_json(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(content, dict) and ("results" in content or all(isinstance(v, dict) for v in content.values()))


def check_eval_outputs(output: Optional[Path], per_image: Optional[Path], inputs: Sequence[Path]) -> None:
    """``eval``'s ``--output FILE.json`` (plus ``FILE.csv`` next to it) and ``--per-image FILE.csv``.

    Raises:
        ConfigError: a path is an input, has the wrong suffix, collides with another output, or is
            an existing file that eval did not write.
    """
    if output is not None:
        output = Path(output)
        if output.suffix.lower() != ".json":
            raise ConfigError(f"--output {output} must name a .json file (the CSV table is written next to it as "
                              f"{output.with_suffix('.csv').name}); e.g. --output {output.with_suffix('.json')}")
        table = output.with_suffix(".csv")
        for path in (output, table):
            refuse_inputs(path, inputs, "--output")
            if path.is_dir():
                raise ConfigError(f"--output {output}: {path} is a folder; choose another file name")
        if output.exists() and not _is_eval_json(output):
            raise ConfigError(f"--output {output} exists and was not written by eval; choose another file name "
                              "(eval only replaces its own JSON results)")
        if table.exists() and not _first_line(table).startswith(EVAL_CSV_HEADERS):
            raise ConfigError(f"--output {output}: {table} exists and was not written by eval; choose another "
                              "--output name")
    if per_image is not None:
        per_image = Path(per_image)
        refuse_inputs(per_image, inputs, "--per-image")
        if output is not None and per_image.resolve() in (output.resolve(), output.with_suffix(".csv").resolve()):
            raise ConfigError(f"--per-image {per_image} is also an --output file; choose another name")
        if per_image.is_dir():
            raise ConfigError(f"--per-image {per_image} is a folder; pass a file name such as "
                              f"{per_image / 'per_image.csv'}")
        if per_image.exists() and not _first_line(per_image).startswith(PER_IMAGE_CSV_HEADER):
            raise ConfigError(f"--per-image {per_image} exists and was not written by eval; choose another file name")


def written_by_predict(folder: Path) -> List[str]:
    """Names of the masks an earlier ``predict`` wrote into ``folder`` (from its manifest)."""
    try:
        names = json.loads((Path(folder) / PREDICT_MANIFEST).read_text(encoding="utf-8")).get("written", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def check_predict_output(output: Path, images: Sequence[Path], names: Sequence[str], overwrite: bool,
                         overlay: bool = False) -> None:
    """``predict --output DIR`` before anything is written.

    Args:
        output: the mask folder.
        images: the input image files.
        names: the mask file names predict will write (one per image).
        overwrite: ``--overwrite`` (replace masks predict did not write; share a folder with the inputs).
        overlay: overlays also go to ``output/overlay``.

    Raises:
        ConfigError: a mask would replace an input file (never allowed), or, without ``overwrite``,
            the folder holds input images or masks an earlier predict did not write.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; predict writes a folder of masks, name a folder")
    inputs = {Path(image).resolve() for image in images}
    targets = [output / name for name in names]
    if overlay:
        targets += [output / "overlay" / (Path(name).stem + ".jpg") for name in names]
    clashing = [target for target in targets if target.resolve() in inputs]
    if clashing:
        raise ConfigError(f"--output {output}: the mask {clashing[0].name} would replace the input image of that "
                          "name; choose another --output folder")
    if overwrite:
        return
    if any(_same_or_inside(image, output) for image in images):
        raise ConfigError(f"--output {output} holds the input images; choose a separate folder for the masks "
                          "(or pass --overwrite to write them next to the images)")
    ours = set(written_by_predict(output))
    foreign = [target for target in targets if target.exists() and target.name not in ours
               and target.parent == output]
    if foreign:
        raise ConfigError(f"--output {output} already holds {foreign[0].name} ({len(foreign)} such file(s)) that "
                          "predict did not write; choose another folder or pass --overwrite to replace them")


def record_predict_output(output: Path, names: Sequence[str]) -> None:
    """Add ``names`` to the folder's manifest (before writing them: an interrupted run still owns them)."""
    output = Path(output)
    known = written_by_predict(output)
    merged = known + [name for name in names if name not in set(known)]
    output.mkdir(parents=True, exist_ok=True)
    temporary = output / f"{PREDICT_MANIFEST}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps({"written": merged}, indent=0) + "\n", encoding="utf-8")
    os.replace(temporary, output / PREDICT_MANIFEST)


def check_synth_output(output: Path) -> None:
    """``synth --output``: a new or empty folder, never a file or a folder with something in it."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; name a new folder for the synthetic set")
    if output.is_dir() and any(output.iterdir()):
        raise ConfigError(f"--output {output} is not empty; synth writes a new dataset, so name a new or empty "
                          "folder (it never mixes its scenes into existing files)")
