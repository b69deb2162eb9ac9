"""jaxmnist.malloc: freed memory kept for the next step. That glibc then reuses a freed block's pages (page faults
counted in a fresh process), which settings $GLIBC_TUNABLES leaves to the user, and a wrong switch. That the
commands apply it: test_distributed's and test_torch_ref_train's CLI runs read `malloc` from their metrics.json."""

import platform
import subprocess
import sys

import pytest

from jaxmnist import malloc

# Allocates 64 MiB, touches it, frees it, allocates and touches 64 MiB again: prints the page faults of the second
# touch. glibc maps such a block on its own and unmaps it on free, so the second touch faults on every page, unless
# freed memory is kept.
REUSE = """
import ctypes, resource, sys
from jaxmnist import malloc
print(malloc.keep_freed_memory(), file=sys.stderr)
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
p = libc.malloc(n); ctypes.memset(p, 1, n); libc.free(p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n); ctypes.memset(p, 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_touch_faults(choice: str) -> tuple[int, str]:
    env = {"PATH": "/usr/bin:/bin", malloc.ENV: choice}
    done = subprocess.run([sys.executable, "-c", REUSE], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout), done.stderr.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; elsewhere nothing changes")
def test_a_freed_block_is_reused_without_page_faults():
    kept, said = second_touch_faults("keep")
    assert said == "True" and kept < 64  # the same pages again (a few for Python's own objects)
    system, said = second_touch_faults("system")
    assert said == "False" and system >= 32  # fresh pages: 16,384 of 4 KiB, or 32 huge ones where THP is always


def test_settings_in_glibc_tunables_are_left_to_them(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append(param)
            return 1

    monkeypatch.setattr(malloc, "_kept", None)
    monkeypatch.setattr(malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(malloc.ctypes, "CDLL", lambda name: Libc())
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=4"}
    assert malloc.keep_freed_memory(env) and malloc.state() == "keep"
    assert calls == [-8, -1]  # arena_max and trim_threshold; mmap_max as the user said
    assert malloc.keep_freed_memory({}) and calls == [-8, -1]  # once per process

    monkeypatch.setattr(malloc, "_kept", None)
    assert not malloc.keep_freed_memory({malloc.ENV: "system"}) and malloc.state() == "system"
    monkeypatch.setattr(malloc, "_kept", None)
    with pytest.raises(ValueError, match=r"\$JAXMNIST_MALLOC is 'keeep': keep \(the default\) or system"):
        malloc.keep_freed_memory({malloc.ENV: "keeep"})


def test_a_wrong_switch_stops_a_command_in_one_line():
    env = {"PATH": "/usr/bin:/bin", malloc.ENV: "huge"}
    done = subprocess.run(
        [sys.executable, "-m", "jaxmnist.data", "--help"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == "error: $JAXMNIST_MALLOC is 'huge': keep (the default) or system\n"
