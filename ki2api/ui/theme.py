"""The page's look: a Gradio theme plus a little CSS for the header, banners and metrics."""

from __future__ import annotations

import gradio as gr

THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="violet",
    neutral_hue="slate",
    # Local fonts only: no request to Google Fonts (blocked in some regions, slow offline).
    font=["system-ui", "-apple-system", "Segoe UI", "PingFang SC", "Microsoft YaHei", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto; width: 100%; }
#ki-header { align-items: center; gap: 12px; }
#ki-header h1 { margin: 0; font-size: 1.9rem; }
#ki-brand { flex-grow: 1; }
#ki-lang { max-width: 260px; }
#ki-tagline p { font-size: 1.02rem; color: var(--body-text-color-subdued); margin-top: 0; }
.ki-banner { border-radius: 10px; padding: 10px 16px !important; }
.ki-banner p, .ki-banner li { margin: 2px 0; }
#ki-demo { background: #fff7e6; border: 1px solid #f5c26b; color: #5c3b00; }
#ki-setup, #ki-no-accounts { background: #fdecec; border: 1px solid #ef9a9a; color: #6b1010; }
#ki-metrics p { font-size: 0.9rem; color: var(--body-text-color-subdued); margin: 4px 2px; }
#ki-using p { font-size: 0.88rem; }
.ki-bottom { align-items: flex-end; }
.ki-muted p { font-size: 0.9rem; color: var(--body-text-color-subdued); }
#ki-footer p { text-align: center; font-size: 0.85rem; color: var(--body-text-color-subdued); }
@media (max-width: 480px) { #ki-header h1 { font-size: 1.5rem; } }
/* Phones: nothing may be wider than the screen. Flex items default to their content's width
   (a code line, a table); let them shrink, and let tables and code scroll in their own box. */
.gradio-container .main, .gradio-container .contain, .gradio-container .wrap,
.gradio-container .codemirror-wrapper, .gradio-container .table-wrap { min-width: 0; }
#ki-summary table { display: block; overflow-x: auto; width: max-content; max-width: 100%; }
#ki-summary th, #ki-summary td, #ki-accounts th { white-space: nowrap; }
#ki-accounts th span { white-space: nowrap; word-break: keep-all; }
/* The key and usage tables: short cells, one line each; the table scrolls in its box. */
#ki-keys th, #ki-keys td, #ki-usage th, #ki-usage td { white-space: nowrap; }
#ki-keys th span, #ki-usage th span { white-space: nowrap; word-break: keep-all; }
/* A long block label (the Connect snippets' titles on a phone) wraps before the block's
   buttons (download, copy) instead of running under them. */
.gradio-container .block:has(> .icon-button-wrapper) > label { max-width: calc(100% - 64px); }
/* A time label on the plot's last tick may reach past the chart's edge: show it whole. */
#ki-plot svg.marks, #ki-usage-plot svg.marks { overflow: visible; }
/* CodeMirror sizes the line numbers of an editor it has not seen on screen (a hidden tab, below
   the fold) from a guessed line height; give each number its line's real height instead (the
   snippets never wrap). The hidden first element only measures the gutter's width. */
.cm-gutters .cm-gutterElement:not([style*="hidden"]) { height: auto !important; }
"""
