"""pytest plugin for the guest-VM test bed.

Every test in tests/guest/ is marked `guest` and gets a booted guest through the module-scoped
`guest` fixture (one VM per test module). A module that needs other options (a TPM, extra files)
overrides the module-scoped `guest_options` fixture. A failing guest test shows the tail of the
guest's serial console in its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.guest.vm import GuestOptions, GuestVM


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/guest/" in item.nodeid:
            item.add_marker(pytest.mark.guest)


@pytest.fixture(scope="module")
def guest_options() -> GuestOptions:
    return GuestOptions()


@pytest.fixture(scope="module")
def guest(guest_options: GuestOptions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuestVM]:
    vm = GuestVM(guest_options, tmp_path_factory.mktemp("guest"))
    vm.start()
    try:
        yield vm
    finally:
        vm.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    vm = getattr(item, "funcargs", {}).get("guest")
    if report.failed and isinstance(vm, GuestVM):
        report.sections.append(("guest serial console", vm.serial_tail()))
