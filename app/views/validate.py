"""Validate a candidate by DFT (GPAW): cost estimate first, then a cancellable background run, then overlay.

Uses ``mlcm_core.dft.engine.gpaw_available`` / ``estimate_cost`` and ``mlcm_core.dft.validate.validate``
(which computes the DOS of the structure with the project's protocol and scores it against the target). One
job at a time per server process (a lock shared by all sessions); the run happens in a thread and the page
polls it once a second; Cancel sets the ``threading.Event`` the engine watches (it kills the worker).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import panel as pn
import param

from app.inputs import UserError
from app.panes import LiveMarkdown
from app.state import AppState, guarded

_JOB_LOCK = threading.Lock()  # one DFT validation at a time in this server process
_GPAW: dict[str, Any] = {}


def gpaw_status() -> str | None:
    """None when GPAW is usable, else why not (checked once per process; it starts a subprocess)."""
    if "status" not in _GPAW:
        from mlcm_core.dft.engine import gpaw_available

        try:
            _GPAW["status"] = gpaw_available()
        except Exception as e:  # noqa: BLE001
            _GPAW["status"] = f"GPAW check failed: {e}"
    return _GPAW["status"]


class ValidateView(pn.viewable.Viewer):
    """Estimate → Run (background) → progress → computed DOS overlaid on the target (TargetDOSView)."""

    state = param.ClassSelector(class_=AppState)
    status = param.String(default="Focus a candidate with a structure and set a target DOS, then estimate the cost.")
    progress = param.Integer(default=0, bounds=(0, 100))
    running = param.Boolean(default=False)
    estimated = param.Boolean(default=False)

    def __init__(self, **params):
        super().__init__(**params)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] = {}
        self._estimate: Any = None
        self._job_id = ""
        self._started = 0.0
        self._periodic = None
        self.state.param.watch(lambda *_: self.param.update(estimated=False), ["focus_id", "target"])

    def _structure(self):
        mid = self.state.focus_id
        if not mid:
            raise UserError("click a candidate (table or map) to validate it")
        if not self.state.has(mid, "has_structure"):
            raise UserError(f"{mid} has no structure to compute")
        if not self.state.target:
            raise UserError("set a target DOS first (draw, a material's DOS or a CSV)")
        return mid, self.state.dataset.structure(mid)

    @guarded("DFT cost estimate")
    def estimate(self, *_):
        why = gpaw_status()
        if why is not None:
            raise UserError(f"GPAW is not available here ({why})")
        from mlcm_core.dft.engine import estimate_cost

        mid, structure = self._structure()
        self._estimate = estimate_cost(structure)
        self._job_id = mid
        self.param.update(estimated=True, status=f"**{mid}**: estimated cost {self._estimate}. Press Run to start.")

    @guarded("DFT validation")
    def run(self, *_):
        if not self.estimated or self._estimate is None:
            raise UserError("estimate the cost first")
        mid, structure = self._structure()
        if mid != self._job_id:
            raise UserError("the focused material changed since the estimate; estimate again")
        if not _JOB_LOCK.acquire(blocking=False):
            raise UserError("another DFT validation is running on this server; wait or cancel it")
        target = np.asarray(self.state.target["dos"], np.float32)
        self._cancel = threading.Event()
        self._result = {"lines": []}
        self._started = time.time()
        self.param.update(running=True, progress=1, status=f"running GPAW on **{mid}** …")

        def job() -> None:
            from mlcm_core.dft.validate import validate

            try:
                res = validate(structure, target, material_id=mid, cancel=self._cancel,
                               report=lambda line: self._result["lines"].append(line))
                self._result["ok"] = {"id": mid, "dos": res.record.dos.total.tolist(), "mae": float(res.mae),
                                      "seconds": float(res.seconds)}
            except Exception as e:  # noqa: BLE001 - reported by poll()
                self._result["error"] = e
            finally:
                _JOB_LOCK.release()

        self._thread = threading.Thread(target=job, name=f"mlcm-validate-{mid}", daemon=True)
        self._thread.start()
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            self._periodic = pn.state.add_periodic_callback(self.poll, period=1000)

    def cancel(self, *_):
        if self.running:
            self._cancel.set()
            self.status = "cancelling …"

    def poll(self) -> None:
        """Update progress from the background job (called every second while it runs)."""
        if not self.running:
            return
        elapsed = time.time() - self._started
        est = max(float(getattr(self._estimate, "seconds", 60.0)), 1.0)
        if self._thread is not None and self._thread.is_alive():
            self.param.update(progress=int(min(99, 100 * elapsed / est)),
                              status=f"running GPAW on **{self._job_id}**: {elapsed:.0f} s of ~{est:.0f} s estimated")
            return
        if self._periodic is not None:
            self._periodic.stop()
            self._periodic = None
        self.running = False
        if "ok" in self._result:
            ok = self._result["ok"]
            self.state.validation = ok
            self.param.update(progress=100, status=f"done: DOS MAE vs target {ok['mae']:.4f} /eV "
                                                    f"({ok['seconds']:.0f} s); computed DOS overlaid (red)")
            self.state.notify(f"DFT validation of {ok['id']} finished: MAE {ok['mae']:.4f}", "success")
        else:
            err = self._result.get("error")
            cancelled = self._cancel.is_set()
            self.param.update(progress=0, status="cancelled" if cancelled else f"failed: {err}")
            self.state.notify("DFT validation cancelled" if cancelled else f"DFT validation failed: {err}",
                              "warning" if cancelled else "error")

    @param.depends("estimated", "running")
    def _run_disabled(self) -> bool:
        return not self.estimated or self.running

    @param.depends("running")
    def _stop_disabled(self) -> bool:
        return not self.running

    def __panel__(self):
        est = pn.widgets.Button(label="Estimate DFT cost", color="default")
        est.on_click(self.estimate)
        run = pn.widgets.Button(label="Run", color="warning", disabled=self._run_disabled)
        run.on_click(self.run)
        stop = pn.widgets.Button(label="Cancel", color="danger", disabled=self._stop_disabled)
        stop.on_click(self.cancel)
        return pn.Column(
            pn.pane.Markdown("Validate the focused candidate by DFT (GPAW, the project's protocol)."),
            pn.Row(est, run, stop),
            pn.indicators.Progress(value=self.param.progress, max=100, width=280, bar_color="warning"),
            LiveMarkdown(self.param.status, css_classes=["mlcm-validate-status"]),
        )
