"""Zipped tracker folders uploaded as a job's animation (``flame_param/``, ``checkpoint/``, EMOCA's
``--save_codes`` folders, a VHAP export's ``transforms.json`` ...).

The archive is hostile until proven otherwise: its member count, names and frame count are
checked from the member list before anything is decompressed (its declared sizes already were,
by ``inputs._upload_suffix``; ``zipfile`` never reads past a member's declared size); names that
are absolute, climb out with ``..``, are links, too long or appear twice are refused, and only the
files the tracker layer reads are unpacked (images, meshes and the like are skipped). A full disk
while unpacking is left to the server's 507 handler; a checked name cannot cause any other OSError.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from collections import Counter

from flamediff.formats.trackers import TrackerFormatError, frame_number, member_parts
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


def _member_names(members: list[zipfile.ZipInfo]) -> list[tuple[str, ...]]:
    """Each member's checked parts (:func:`flamediff.formats.trackers.member_parts`, the rule every
    reader of an upload's names uses), refusing links, deep nesting and names that collide (the
    same name twice, or the same but for case, or a file where another member needs a folder)."""
    seen: set[tuple[str, ...]] = set()
    folders: set[tuple[str, ...]] = set()
    names = []
    for member in members:
        try:
            parts = member_parts(member.filename)
        except TrackerFormatError as exc:
            raise InputError(f"the animation archive is refused: {exc}", "zip the folder with short names relative to it",
                             422) from None
        if stat.S_ISLNK(member.external_attr >> 16):
            raise InputError(f"the animation archive holds a link ({member.filename[:120]!r})", ADVICE, 422)
        if len(parts) > MAX_ARCHIVE_DEPTH:
            raise InputError(f"the animation archive nests {member.filename[:120]!r} more than {MAX_ARCHIVE_DEPTH} "
                             "folders deep", ADVICE, 422)
        key = tuple(part.lower() for part in parts)
        if key in seen or key in folders or any(key[:i] in seen for i in range(1, len(key))):
            raise InputError(f"the animation archive holds {member.filename[:120]!r} twice (or a file and a folder "
                             "of that name)", "zip the folder again: every file needs a name of its own", 422)
        seen.add(key)
        folders.update(key[:i] for i in range(1, len(key)))
        names.append(parts)
    return names


def frames_in_listing(names: list[tuple[str, ...]]) -> int:
    """The most numbered entries (``00012.npz``, EMOCA's ``000012_000/``) one folder of the archive
    holds: its frame count, told from the member list before anything is read."""
    numbered: dict[tuple[str, ...], set[str]] = {}
    for parts in names:
        for depth in range(len(parts)):
            if frame_number(parts[depth]) is not None and (depth < len(parts) - 1 or
                                                            parts[depth].lower().endswith(TRACKER_FILES)):
                numbered.setdefault(parts[:depth], set()).add(parts[depth])
    return max((len(entries) for entries in numbered.values()), default=0)


def archive_member_limit(max_frames: int) -> int:
    """How many files a zipped folder of at most ``max_frames`` frames may hold."""
    return min(MAX_ARCHIVE_MEMBERS, FILES_PER_FRAME * max_frames + 16)


def _crowded_folder(members: list[zipfile.ZipInfo]) -> int:
    """The most tracker files one folder of the archive holds: a cheap bound on its frame count, taken
    before any name is parsed (a folder of 20 000 frames is refused in milliseconds)."""
    counts = Counter(member.filename.rpartition("/")[0] for member in members
                     if member.filename.lower().endswith(TRACKER_FILES))
    return max(counts.values(), default=0)


def unpack_tracker_archive(archive: zipfile.ZipFile, folder: str, max_frames: int) -> str:
    """Unpack the tracker files of a zipped folder (its declared sizes already checked) into
    ``folder``; returns the folder to read (the archive's single top folder when it has one).
    Its member count, names and frame count are checked from the member list first."""
    members = [m for m in archive.infolist() if not m.is_dir()]
    max_members = archive_member_limit(max_frames)
    if len(members) > max_members:
        raise InputError(f"the animation archive holds {len(members)} files, more than {max_members}",
                         "send a shorter clip, or only the tracker's parameter files", 413)
    crowded = _crowded_folder(members)
    names = _member_names(members) if crowded <= max_frames else []
    frames = frames_in_listing(names) if names else crowded
    if frames > max_frames:
        raise InputError(f"the animation archive holds {frames} frames, more than {max_frames}",
                         "send a shorter clip (serve's --max-folder-frames sets the limit)", 413)
    unpacked = []
    for member, parts in zip(members, names, strict=True):
        if parts[0] == "__MACOSX" or not parts[-1].lower().endswith(TRACKER_FILES):
            continue
        target = os.path.join(folder, *parts)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        try:
            with archive.open(member) as source, open(target, "xb") as handle:
                shutil.copyfileobj(source, handle)  # stops at the member's declared size
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise InputError(f"the animation archive's {member.filename[:120]!r} is corrupt ({exc})", ADVICE,
                             422) from None
        unpacked.append(parts)
    if not unpacked:
        raise InputError("the animation archive holds no tracker files (" + ", ".join(TRACKER_FILES) + ")",
                         ADVICE, 422)
    tops = {parts[0] for parts in unpacked}
    single = len(tops) == 1 and all(len(parts) > 1 for parts in unpacked)
    return os.path.join(folder, tops.pop()) if single else folder
