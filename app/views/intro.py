""""What am I looking at?": a short collapsible introduction at the top of the page.

Open on a first visit; once closed ("Got it" or the card's own toggle) a cookie remembers that, and later
visits start with it collapsed (still one click away). The cookie is written by the browser itself (a JS
callback on the card's ``collapsed`` property) and read from the request when a session starts.
"""

from __future__ import annotations

import panel as pn
import param

from app.state import AppState
from app.views.shortcuts import SHORTCUTS_TEXT

COOKIE = "mlcm_intro"  # "closed" once the introduction was closed, "open" after it was reopened
TITLE = "What am I looking at?"


def intro_markdown(state: AppState) -> str:
    """The introduction, with this dataset's and model's numbers."""
    m = state.explorer.manifest
    dim = m.get("checkpoint", {}).get("embed_dim", 128)
    counts = m.get("counts", {})
    n = counts.get("materials", len(state.frame))
    crystals = counts.get("crystal", n)
    return f"""
**The map.** Each of the {n:,} points is one material. A multimodal model learned a {dim}-dimensional embedding
of each crystal (from its structure, aligned with its density of states and charge density); UMAP flattened
those embeddings to two dimensions, so **nearby points are materials the model finds similar**. The axes
have no units. {crystals:,} materials with a structure are placed by UMAP itself; those with only a DOS or a
charge density sit beside the crystals most similar to them. Colours show what *Colour by* (sidebar) picks:
crystal system, data source, which data a material has, a property, or how unsure the model is; grey points
are not selected or have no value. Labels mark clusters of the map.

**A lasso or box selection** (map toolbar) picks the materials inside it: the selection summary compares their
properties with all materials, the table at the bottom lists them, the DOS plot overlays theirs and the card
describes one. A click on a point (or a table row) shows that material: properties, structure, charge density.
*Find a material* (sidebar) does the same by id, formula or chemical system.

**A target DOS** is a density of states you want: draw it with the mouse (energy relative to the valence-band
maximum or Fermi level, in eV), take a material's, or upload a CSV. **The candidate table** ranks the materials
whose embeddings are most similar to it (*score* = cosine similarity; the ranking is meaningful within one
search, not the absolute values) and plots their stored DOS over the target.

**Where the numbers come from.** Stored properties are DFT values from their source, each named with its unit
and level of theory, e.g. *Band gap (eV, PBE(+U); Materials Project)*: PBE underestimates band gaps, often by
30-50 %. *Predicted properties* on the card are machine-learning estimates (crystal encoders fine-tuned on
Materials Project PBE(+U) labels, an ensemble whose spread is the ± shown) — they estimate what PBE would give,
not experiment. *Validate by DFT* runs a real PBE calculation (GPAW) for a structure.

**Keys** (not while typing in a box): {SHORTCUTS_TEXT}. **Share:** the address bar always holds the selection,
focus, filters, colouring, layers and map view; copy it to share exactly this view.
"""


def intro_collapsed(cookies: dict | None) -> bool:
    """Collapsed on a return visit after the introduction was closed; open on a first visit."""
    return (cookies or {}).get(COOKIE) == "closed"


class IntroView(pn.viewable.Viewer):
    """The collapsible introduction card."""

    state = param.ClassSelector(class_=AppState)

    def __init__(self, cookies: dict | None = None, **params):
        super().__init__(**params)
        if cookies is None:
            cookies = getattr(pn.state, "cookies", None) or {}
        done = pn.widgets.Button(label="Got it, hide this", color="light", css_classes=["mlcm-intro-close"])
        self.card = pn.Card(
            pn.pane.Markdown(intro_markdown(self.state), css_classes=["mlcm-intro-text"], sizing_mode="stretch_width"),
            done, title=TITLE, collapsed=intro_collapsed(cookies), collapsible=True,
            css_classes=["mlcm-intro"], sizing_mode="stretch_width", styles={"font-size": "12.5px"})
        done.on_click(self.close)
        # the browser remembers the reader's choice for the next visit (one year, this site only)
        self.card.jscallback(collapsed=f"""
            document.cookie = '{COOKIE}=' + (cb_obj.collapsed ? 'closed' : 'open')
                              + '; path=/; max-age=31536000; SameSite=Lax';""")

    def close(self, *_) -> None:
        self.card.collapsed = True

    def __panel__(self):
        return self.card
