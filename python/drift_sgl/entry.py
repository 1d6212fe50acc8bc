"""The scheduler-process entry drift hands to SGLang's launcher.

SGLang starts one scheduler process per TP rank (and, with --dp, through its
DP controller, which forwards this entry). Each process calls
``run_drift_scheduler_process``, which installs ``DriftScheduler`` as SGLang's
``Scheduler`` through SGLang's own hook registry and then runs SGLang's
unchanged process entry.
"""

from __future__ import annotations

import os
from typing import Any

from drift_sgl.config import DriftConfig

SCHEDULER_TARGET = "sglang.srt.managers.scheduler.Scheduler"


def run_drift_scheduler_process(drift_config: DriftConfig, *args: Any, **kwargs: Any) -> Any:
    """Install DriftScheduler in this process, then run SGLang's scheduler entry."""
    if os.environ.get("SGLANG_USE_CPU_ENGINE") == "1":
        from drift_sgl.cpu.environment import quiet_cpu_import_noise

        quiet_cpu_import_noise()  # before the model registry imports its modules
    from sglang.srt.managers import scheduler as sglang_scheduler
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from drift_sgl.scheduler.drift_scheduler import DriftScheduler

    HookRegistry.register(SCHEDULER_TARGET, DriftScheduler.bind(drift_config), HookType.REPLACE)
    # run_scheduler_process calls load_plugins() too, but that is a no-op when
    # this process loaded plugins already; applying here is idempotent.
    HookRegistry.apply_hooks()
    return sglang_scheduler.run_scheduler_process(*args, **kwargs)
