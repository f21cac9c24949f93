"""How `make test` shares the suite between its two pytest-xdist workers: every end-to-end test
(daemons, webservers, run workers of their own) on one worker, one after another and first, so no
two of them compete for the machine; the other worker takes the unit and resource tests meanwhile.

xdist's own `--dist loadgroup` cannot do it under pytest 9.2: it renames `item._nodeid`, which
pytest no longer reads, so the groups are ignored."""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

END_TO_END = "rivbulk_pipeline_tests/e2e/"


class EndToEndOnOneWorker(LoadScopeScheduling):
    """A unit of work is a test module (its module-scoped fixtures are built once, its tests run in
    order), except that all end-to-end modules are one unit, handed out first: it is the longest."""

    def _split_scope(self, nodeid: str) -> str:
        return END_TO_END if nodeid.startswith(END_TO_END) else nodeid.split("::", 1)[0]

    def _assign_work_unit(self, node) -> None:
        if END_TO_END in self.workqueue:
            self.workqueue.move_to_end(END_TO_END, last=False)
        super()._assign_work_unit(node)


@pytest.hookimpl(tryfirst=True)  # before xdist's own choice
def pytest_xdist_make_scheduler(config: pytest.Config, log) -> EndToEndOnOneWorker:
    return EndToEndOnOneWorker(config, log)
