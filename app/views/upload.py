"""Upload a CIF/POSCAR: Explorer.place puts it on the map, and its nearest crystals become the candidates."""

from __future__ import annotations

import panel as pn
import param

from app.panes import LiveMarkdown
from app.state import AppState, guarded


class UploadView(pn.viewable.Viewer):
    state = param.ClassSelector(class_=AppState)

    def __init__(self, **params):
        super().__init__(**params)
        self._input = pn.widgets.FileInput(accept=".cif,.vasp,.poscar,POSCAR,CONTCAR", multiple=False,
                                           css_classes=["mlcm-cif-upload"])
        self._input.param.watch(self._on_upload, "value")
        self._info = LiveMarkdown(self._text, css_classes=["mlcm-placed"])
        self.state.param.watch(self._on_reset, "resets")

    @guarded("structure upload")
    def _on_upload(self, event):
        if event.new is None:
            return
        self.place(event.new, self._input.filename or "upload.cif")

    def _on_reset(self, *_) -> None:
        """AppState.reset: the file input empty (the same file uploaded again is a new upload)."""
        self._input.param.update(value=None, filename=None)
        self._input.clear()

    def place(self, data: bytes, filename: str) -> dict:
        return self.state.place_upload(data, filename)

    @param.depends("state.placed")
    def _text(self):
        p = self.state.placed
        if not p:
            return "_Upload a CIF or POSCAR (≤ 1 MB) to place it on the map (★) and list its nearest crystals._"
        text = f"Placed **{p['name']}** ({p['formula']}) at ({p['x']:.2f}, {p['y']:.2f}) ★; its nearest crystals are the candidates."
        preds = p.get("predictions")
        if preds:
            text += "\n\nPredicted: " + "; ".join(f"{r['quantity']} {r['predicted']} {r['unit']} ({r['1σ range']})"
                                                  for r in preds)
        return text

    def __panel__(self):
        return pn.Column(self._input, self._info)
