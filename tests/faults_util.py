"""Helpers of the fault tests: damage a torch.save file the way a bad disk or a bad copy does."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path


def flip_tensor_byte(path: Path, member_suffix: str = "") -> str:
    """Flip one bit in the middle of the largest tensor-data member of a ``torch.save`` zip; returns its name.

    Only the data changes (headers and the central directory stay intact), so ``torch.load`` still loads the
    file: the damage is silent unless the members' CRC-32s are checked.
    """
    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename and i.filename.endswith(member_suffix)]
    info = max(members, key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return info.filename
