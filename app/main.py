"""Assembles the MLCM dashboard; serve with `mlcm app` (127.0.0.1) or `panel serve app/main.py`."""

from __future__ import annotations

import sys
from pathlib import Path

import panel as pn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `panel serve app/main.py` from a checkout

from app.store import AppState  # noqa: E402
from app.views.dos import DOSView, LabelCard  # noqa: E402
from app.views.materials import MaterialsTable  # noqa: E402


def build_app(state: AppState | None = None) -> pn.template.FastListTemplate:
    state = state or AppState()
    info = state.dataset.info()
    mods = info["modalities"]
    summary = pn.pane.Markdown(
        f"**{info['materials']:,} materials** · structure {mods['structure']:,} · DOS {mods['dos']:,} · "
        f"charge density {mods['charge_density']:,} · all three {info['all_three']:,}"
    )
    return pn.template.FastListTemplate(
        title="MLCM — Multimodal Learning for Crystalline Materials",
        main=[summary, MaterialsTable(state=state), pn.Row(DOSView(state=state), LabelCard(state=state))],
    )


if pn.state.served:
    pn.extension("tabulator")
    build_app().servable()
