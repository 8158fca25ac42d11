"""The `make demo` page: each part of the library contributes one section to demo_out/index.html.

A section is a module with ``TITLE`` (str) and ``render(out_dir: Path) -> str`` returning an HTML
fragment; it writes its images under ``out_dir`` and refers to them by relative path. Sections run
on the embedded defaults (toy worlds and shipped checkpoints), offline, on CPU.
"""

from __future__ import annotations

import html
import importlib
import time
from pathlib import Path

from attnsynth.utils.io import atomic_save_png, atomic_write_text

SECTIONS = [
    "attnsynth.toyworld.demo_page",
    "attnsynth.sis.demo_page",
    "attnsynth.shapes_t2i.demo_page",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>attnsynth demo</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }}
img {{ image-rendering: pixelated; border: 1px solid #ccc; }}
figure {{ display: inline-block; margin: 0.4em; text-align: center; font-size: 0.8em; vertical-align: top; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 0.3em 0.6em; }}
</style></head><body>
<h1>attnsynth demo</h1>
<p>Generated offline on the embedded defaults. {toc}</p>
{body}
</body></html>
"""


def figure(out_dir: Path, name: str, image, caption: str, *, scale: int | None = 3) -> str:
    """Save ``image`` (uint8 [H, W, 3]) as ``out_dir/name``; return its ``<figure>`` shown ``scale``× wide (None: as is)."""
    atomic_save_png(out_dir / name, image)
    width = f' width="{image.shape[1] * scale}"' if scale is not None else ""
    return f'<figure><img src="{name}"{width}><figcaption>{caption}</figcaption></figure>'


def build_demo(out_dir: str | Path, sections: list[str] | None = None) -> Path:
    """Render every section into ``out_dir`` and write ``out_dir/index.html``; return its path."""
    from rich.console import Console

    console = Console(stderr=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, toc = [], []
    for index, name in enumerate(sections or SECTIONS):
        module = importlib.import_module(name)
        start = time.perf_counter()
        with console.status(f"demo: {module.TITLE}"):
            fragment = module.render(out_dir)
        console.print(f"demo: {module.TITLE} ({time.perf_counter() - start:.1f} s)")
        anchor = f"s{index}"
        toc.append(f'<a href="#{anchor}">{html.escape(module.TITLE)}</a>')
        parts.append(f'<section id="{anchor}"><h2>{html.escape(module.TITLE)}</h2>\n{fragment}\n</section>')
    page = out_dir / "index.html"
    atomic_write_text(page, PAGE.format(toc=" · ".join(toc), body="\n".join(parts)))
    return page
