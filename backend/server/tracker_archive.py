"""Zipped tracker folders uploaded as a job's animation (``flame_param/``, ``checkpoint/``, EMOCA's
``--save_codes`` folders, a VHAP export's ``transforms.json`` ...).

The archive is hostile until proven otherwise: its member count is capped before anything is
decompressed (its declared sizes already were, by ``inputs._upload_suffix``; ``zipfile`` never
reads past a member's declared size), names
that are absolute, climb out with ``..`` or are links are refused, and only the files the tracker
layer reads are unpacked (images, meshes and the like are skipped).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile

from flamediff.server.inputs import InputError

#: Most files one zipped tracker folder may hold, whatever the frame limit.
MAX_ARCHIVE_MEMBERS = 20_000
#: Files a tracker writes per frame at most (EMOCA: shape, exp, pose, tex, detail) with room to spare.
FILES_PER_FRAME = 8
#: Deepest folder nesting accepted inside the archive.
MAX_ARCHIVE_DEPTH = 8
#: What the tracker layer reads; anything else in the archive is skipped.
TRACKER_FILES = (".npz", ".npy", ".pkl", ".pickle", ".pth", ".pt", ".frame", ".tar", ".txt", ".json")
ADVICE = "zip the tracker's per-frame folder as it is (e.g. flame_param/ or checkpoint/), or send one file"


def is_folder_archive(names: list[str]) -> bool:
    """A zip that is neither an ``.npz`` (``.npy`` members, no folders) nor a ``torch.save`` archive;
    EMOCA's folders hold only ``.npy`` files, but in sub-folders."""
    files = [n for n in names if not n.endswith("/")]
    npz = all(n.endswith(".npy") and "/" not in n for n in files)
    torch_archive = any(n.endswith("data.pkl") and n.count("/") == 1 for n in files)
    return bool(files) and not npz and not torch_archive


def _safe_parts(name: str) -> list[str]:
    """The path parts of a member name, or an error for names that could land outside the folder."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise InputError(f"the animation archive holds the unsafe path {name[:120]!r}",
                         "zip the folder with relative names inside it", 422)
    parts = [p for p in parts if p not in ("", ".")]
    if len(parts) > MAX_ARCHIVE_DEPTH:
        raise InputError(f"the animation archive nests {name[:120]!r} more than {MAX_ARCHIVE_DEPTH} folders deep",
                         ADVICE, 422)
    return parts


def archive_member_limit(max_frames: int) -> int:
    """How many files a zipped folder of at most ``max_frames`` frames may hold."""
    return min(MAX_ARCHIVE_MEMBERS, FILES_PER_FRAME * max_frames + 16)


def unpack_tracker_archive(data: bytes, folder: str, max_members: int) -> str:
    """Unpack the tracker files of a zipped folder (its declared sizes already checked) into
    ``folder``; returns the folder to read (the archive's single top folder when it has one)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"the animation archive is not a readable zip ({exc})", ADVICE, 422) from None
    if len(members) > max_members:
        raise InputError(f"the animation archive holds {len(members)} files, more than {max_members}",
                         "send a shorter clip, or only the tracker's parameter files", 413)
    unpacked = []
    for member in members:
        parts = _safe_parts(member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise InputError(f"the animation archive holds a link ({member.filename[:120]!r})", ADVICE, 422)
        if not parts or parts[0] == "__MACOSX" or not parts[-1].lower().endswith(TRACKER_FILES):
            continue
        target = os.path.join(folder, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            with archive.open(member) as source, open(target, "wb") as handle:
                shutil.copyfileobj(source, handle)  # stops at the member's declared size
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise InputError(f"the animation archive's {member.filename[:120]!r} is corrupt ({exc})", ADVICE,
                             422) from None
        unpacked.append(parts)
    if not unpacked:
        raise InputError("the animation archive holds no tracker files (" + ", ".join(TRACKER_FILES) + ")",
                         ADVICE, 422)
    tops = {parts[0] for parts in unpacked}
    single = len(tops) == 1 and all(len(parts) > 1 for parts in unpacked)
    return os.path.join(folder, tops.pop()) if single else folder
