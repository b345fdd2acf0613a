"""Keyboard shortcuts: "/" search box, Esc clear the selection, "l" lasso tool, "r" reset the map view, "?" help.

One invisible ``JSComponent`` listens to the page's keys. What happens in the browser only (moving the keyboard
focus to the search box, switching the map's Bokeh toolbar to the lasso) is done there; the rest is a message
to the server, where the map view acts (``MapView.clear``, ``MapView.reset_view``). No key does anything while
the keyboard is in a text box, a menu or a button (the key is typed, not interpreted), or with Ctrl/Alt/Meta.
"""

from __future__ import annotations

from collections.abc import Callable

from panel.custom import JSComponent

SHORTCUTS = {"/": "focus the search box", "Esc": "clear the selection", "l": "lasso tool on the map",
             "r": "reset the map view (the whole map)", "?": "open the introduction (this list)"}
SHORTCUTS_TEXT = " · ".join(f"`{k}` {v}" for k, v in SHORTCUTS.items())


class Shortcuts(JSComponent):
    """Page-wide key handler; ``actions`` maps a server-side action ("clear", "reset", "help") to a callable."""

    _esm = """
function deepAll(root, test, out = []) {  // elements under root, through Panel's shadow roots
  for (const e of root.querySelectorAll('*')) {
    if (test(e)) out.push(e);
    if (e.shadowRoot) deepAll(e.shadowRoot, test, out);
  }
  return out;
}
function typing(e) {
  const t = e.composedPath()[0];
  if (!t || !t.tagName) return false;
  const tag = t.tagName.toUpperCase();
  return t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT', 'BUTTON'].includes(tag);
}
function within(cls) {  // the elements inside an element of css class cls
  const hosts = deepAll(document, (e) => e.classList && e.classList.contains(cls));
  return (test) => hosts.flatMap((h) => deepAll(h.shadowRoot || h, test).concat(h.shadowRoot ? deepAll(h, test) : []));
}
function mapTools() {  // the Bokeh tools of the embedding map (its plot's title starts "Embedding map")
  const seen = new Set(); let tools = [];
  function walk(v) {
    if (!v || seen.has(v)) return; seen.add(v);
    const m = v.model;
    if (m && m.title && m.title.text && m.title.text.startsWith('Embedding map') && m.toolbar) tools = m.toolbar.tools;
    for (const k of (v.child_views || (v.children ? [...v.children()] : []))) walk(k);
  }
  if (window.Bokeh && Bokeh.index) for (const v of Object.values(Bokeh.index)) walk(v);
  return tools;
}
export function render({ model, el }) {
  el.style.display = 'none';
  const onKey = (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented || typing(e)) return;
    if (e.key === '/') {
      const box = within('mlcm-find-box')((x) => x.tagName === 'INPUT')[0];
      if (box) { e.preventDefault(); box.focus(); box.select(); }
    } else if (e.key === 'Escape') {
      model.send_msg('clear');
    } else if (e.key === 'l' || e.key === 'L') {
      const lasso = mapTools().find((t) => t.constructor.__name__ === 'LassoSelectTool');
      if (lasso) { e.preventDefault(); lasso.active = true; }  // the toolbar deactivates the pan tool
    } else if (e.key === 'r' || e.key === 'R') {
      e.preventDefault(); model.send_msg('reset');
    } else if (e.key === '?') {
      e.preventDefault(); model.send_msg('help');
    }
  };
  document.addEventListener('keydown', onKey);
  model.on('remove', () => document.removeEventListener('keydown', onKey));
}
"""

    def __init__(self, actions: dict[str, Callable[[], None]] | None = None, **params):
        super().__init__(height=0, width=0, margin=0, **params)
        self.actions = dict(actions or {})  # not a parameter: parameters are sent to the browser
        self.pressed: list[str] = []  # the server-side actions run so far

    def _handle_msg(self, data) -> None:
        action = self.actions.get(str(data))
        if action is not None:
            self.pressed.append(str(data))
            action()
