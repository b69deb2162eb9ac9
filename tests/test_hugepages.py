"""jaxmnist.hugepages: which processes restart themselves with huge pages, and with what $GLIBC_TUNABLES. That the
real commands do (same pid, the record says so): tests/test_torch_ref_train.py's CLI test and test_distributed's
runs read `hugepages` from the metrics.json of `python -m torch_ref.train` and `python -m jaxmnist.train`."""

import pytest

from jaxmnist import hugepages


@pytest.mark.parametrize(
    "current, new",
    [
        (None, "glibc.malloc.hugetlb=1"),
        ("", "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", None),  # the user said: leave it
        ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=2", None),
    ],
)
def test_tunables_add_huge_pages_unless_already_set(current, new):
    assert hugepages.tunables(current) == new


@pytest.mark.parametrize(
    "argv, argv0, command",
    [
        (["python", "-m", "jaxmnist.train", "--epochs", "1"], "-m", True),
        (["python", "-u", "-X", "importtime", "-m", "torch_ref.train"], "-m", True),
        (["/venv/bin/python", "/venv/bin/jaxmnist-train", "--preset", "fast"], "/venv/bin/jaxmnist-train", True),
        (["/venv/bin/python", "/venv/bin/torch-ref-train"], "/venv/bin/torch-ref-train", True),
        (["python", "-m", "pytest", "-m", "jaxmnist.train"], "-m", False),  # pytest's -m is a marker
        (["python", "-c", "import x", "-m", "jaxmnist.train"], "-c", False),
        (["python", "scripts/bench.py", "-m", "jaxmnist.train"], "scripts/bench.py", False),
        (["python", "-W", "ignore", "-m", "jaxmnist.data"], "-m", True),
        (["python"], "", False),
    ],
)
def test_only_this_projects_commands_restart(argv, argv0, command):
    assert hugepages.is_command(argv, argv0) == command


def test_wanted_needs_the_switch_the_kernel_and_glibc(monkeypatch, tmp_path):
    monkeypatch.setattr(hugepages, "_glibc_at_least", lambda *v: True)
    thp = tmp_path / "enabled"
    monkeypatch.setattr(hugepages, "THP", thp)
    env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", hugepages.ENV: "1"}
    for mode in ("always [madvise] never", "[always] madvise never"):
        thp.write_text(mode + "\n")
        assert hugepages.wanted(env) == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.wanted({**env, hugepages.ENV: "0"}) is None
    assert hugepages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) is None  # off unless asked for
    thp.write_text("always madvise [never]\n")
    assert hugepages.kernel_mode() == "never" and hugepages.wanted(env) is None
    thp.unlink()
    assert hugepages.kernel_mode() is None and hugepages.wanted(env) is None  # no THP: nothing to ask for
    thp.write_text("[madvise]\n")
    monkeypatch.setattr(hugepages, "_glibc_at_least", lambda *v: False)  # glibc < 2.35 ignores the tunable
    assert hugepages.wanted(env) is None


def test_active_reads_the_environment():
    assert hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"})
    assert not hugepages.active({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) and not hugepages.active({})
