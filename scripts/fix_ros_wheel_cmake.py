"""Point the ROS 2 wheels' exported CMake targets at this interpreter's include directories.

The pip wheels of ROS 2 were built in a manylinux container, and their
``*__rosidl_generator_pyExport.cmake`` files name that container's Python and NumPy include
directories. CMake refuses imported targets whose include directories do not exist, so building
any interface package against the wheels fails until those paths name real ones. Rewriting the
venv's own files needs no root and is idempotent.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

# The wheels' build interpreter lived under /opt/python/<tag>/; both its Python headers and its
# NumPy headers appear in one INTERFACE_INCLUDE_DIRECTORIES entry.
_FOREIGN = re.compile(r'INTERFACE_INCLUDE_DIRECTORIES "(/opt/python/[^"]*)"')


def _local_include_dirs() -> str:
    import numpy

    return f"{sysconfig.get_paths()['include']};{numpy.get_include()}"


def fix(prefix: Path) -> int:
    """Rewrite every export file under ``prefix/share``; return how many were changed."""
    replacement = f'INTERFACE_INCLUDE_DIRECTORIES "{_local_include_dirs()}"'
    changed = 0
    for path in sorted((prefix / "share").glob("*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        new = _FOREIGN.sub(replacement, text)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.prefix)
    print(f"fix_ros_wheel_cmake: rewrote {fix(target)} export file(s) under {target}/share")
