"""Property card of the focused material: known labels with source and level of theory, and hints."""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param

from app.store import AppState


class PropertyCard(pn.viewable.Viewer):
    """Identity, modalities, known labels (value, unit, theory, source) and the Explorer's uncertainty hints.

    Predicted properties (the Explorer's fine-tuned ensembles) sit beside the stored label of the same quantity;
    without property heads the card says why rather than showing nothing.
    """

    state = param.ClassSelector(class_=AppState)

    def material(self, focus: str, ids: list[str]) -> str:
        return focus or (ids[-1] if ids else "")

    def hints(self, mid: str) -> dict:
        f = self.state.frame
        row = f[f["id"] == mid]
        if row.empty:
            return {}
        r = row.iloc[0]
        return {"map position": f"({r['x']:.2f}, {r['y']:.2f})",
                "materials in its map region": int(r["region_count"]),
                "modality disagreement": ("n/a (one modality)" if not np.isfinite(r["disagreement"])
                                          else f"{r['disagreement']:.3f}")}


    def _card(self, ids: list[str], focus: str = ""):
        mid = self.material(focus, ids)
        if not mid:
            return pn.pane.Markdown("**Properties**: click a material on the map or in a table.",
                                    css_classes=["mlcm-card"])
        t = self.state.indexed
        if mid not in t.index:
            return pn.pane.Markdown(f"unknown material {mid}")
        row = t.loc[mid]
        nsites = row["nsites"] if pd.notna(row["nsites"]) else "?"
        mods = ", ".join(m for m, c in (("structure", "has_structure"), ("DOS", "has_dos"),
                                        ("charge density", "has_charge_density")) if bool(row[c])) or "none"
        head = (f"### {mid} {row['formula'] or ''}\n{row['source']} · {nsites} sites · "
                f"{row['spacegroup_symbol'] or 'no structure'} · {row['crystal_system'] or ''} · split **{row['split']}**  \n"
                f"modalities: {mods}")
        card = self.state.label_card(mid)
        hints = " · ".join(f"{k}: {v}" for k, v in self.hints(mid).items())
        if self.state.has(mid, "has_structure"):
            preds, note = self.state.predictions(material_id=mid)
        else:
            preds, note = None, "none: the material has no structure (predictions start from a crystal)"
        pred_md = (f"**Predicted properties**: {note}" if preds is None else
                   f"**Predicted properties** ± ensemble spread ({note}):")
        parts = [pn.pane.Markdown(head),
                 pn.pane.DataFrame(card.assign(value=card["value"].map(lambda v: f"{v:.4g}")), index=False,
                                   sizing_mode="stretch_width", escape=True, border=0,
                                   styles={"font-size": "12px"}) if len(card) else
                 pn.pane.Markdown("_no stored labels for this material_"),
                 pn.pane.Markdown(f"**Uncertainty hints** (relative): {hints}"),
                 pn.pane.Markdown(pred_md)]
        if preds is not None:
            parts.append(pn.pane.DataFrame(preds, index=False, sizing_mode="stretch_width", escape=True, border=0,
                                           styles={"font-size": "12px"}, css_classes=["mlcm-predictions"]))
        return pn.Column(*parts, css_classes=["mlcm-card"], sizing_mode="stretch_width")

    def __panel__(self):
        return pn.panel(pn.bind(self._card, self.state.param.selected_ids, self.state.param.focus_id))


LabelCard = PropertyCard
